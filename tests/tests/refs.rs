//! SPEC §12 "Event retention": `GET /api/repos/{id}/refs?after=&limit=` pages a repo's refs
//! as its holder last reported them, end to end: the real coordinator asks the real worker
//! holding a mirror of a repo served by `git daemon`.

use gitmirror_tests::git::{add_change_refs, repo_name};
use gitmirror_tests::{Fleet, GitDaemon, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Refs besides the four every test repo has: enough for several pages of 1,000.
const EXTRA: usize = 2_500;

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every ref of `id` through the API, `limit` at a time, following `next`; checks each
/// page's shape on the way. Err while the coordinator cannot answer yet.
fn page_through(
    fleet: &Fleet,
    id: &str,
    limit: usize,
) -> Result<(BTreeMap<String, String>, usize, Value), String> {
    let mut refs = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/api/repos/{id}/refs?limit={limit}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        let (status, body) = fleet.coord.get(&path)?;
        if status != 200 {
            return Err(format!("{path}: {status} {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        pages += 1;
        assert_eq!(v["repo"], id, "{v}");
        let page = v["refs"].as_array().unwrap();
        assert!(page.len() <= limit, "{} refs for limit {limit}", page.len());
        let mut last: Option<&str> = after.as_deref();
        for r in page {
            let name = r["name"].as_str().unwrap();
            assert!(
                last.is_none_or(|l| name > l),
                "sorted, after the cursor: {name}"
            );
            last = Some(name);
            refs.insert(name.to_owned(), r["id"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(n) => {
                assert_eq!(Some(n), last, "next is the page's last ref");
                after = Some(n.to_owned());
            }
            None => return Ok((refs, pages, v)),
        }
        assert!(pages <= 1_000_000, "paging does not end");
    }
}

#[test]
fn spec_12_refs_of_a_mirrored_repo_page_like_git_ls_remote() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("refspage", 1);
    let (id, _) = repos.iter().next().unwrap();
    let name = repo_name(id).to_owned();
    add_change_refs(&daemon.repo_path(&name), EXTRA);
    let upstream = daemon.ls_remote(&name);
    assert_eq!(upstream.len(), EXTRA + 4, "upstream refs");
    let fleet = Fleet::start("refspage", &repos, 1);
    fleet.wait_alive(&[0], Duration::from_secs(120));

    // The worker answers once its clone is reported (a repo without a mirror yet is 503).
    let (refs, pages, last) =
        wait_for(Duration::from_secs(300), "the refs through the API", || {
            let got = page_through(&fleet, id, 1000)?;
            if got.0 == upstream {
                Ok(got)
            } else {
                Err(format!(
                    "{} refs listed, {} upstream",
                    got.0.len(),
                    upstream.len()
                ))
            }
        });
    assert_eq!(refs, upstream);
    assert_eq!(pages, (EXTRA + 4).div_ceil(1000));
    assert!(last["next"].is_null());
    let owner = fleet.coord.repo(id).unwrap()["worker"].clone();
    assert_eq!(last["worker"], owner, "the owner answered");

    // A moved ref shows once the fetch that saw it is reported.
    let new = daemon.commit(&name, "dev");
    let (code, _) = fleet
        .coord
        .post(&format!("/api/repos/{id}/fetch"), "")
        .unwrap();
    assert_eq!(code, 202);
    let (dev, _, _) = wait_for(
        Duration::from_secs(120),
        "the moved ref in the refs",
        || {
            let got = page_through(&fleet, id, 10_000)?;
            if got.0.get("refs/heads/dev") == Some(&new) {
                Ok(got)
            } else {
                Err("refs/heads/dev not moved yet".into())
            }
        },
    );
    assert_eq!(dev, daemon.ls_remote(&name));

    // Bad parameters are 400 naming the parameter; an unknown repo is 404.
    for bad in ["0", "10001", "many"] {
        let (code, body) = fleet
            .coord
            .get(&format!("/api/repos/{id}/refs?limit={bad}"))
            .unwrap();
        assert_eq!(code, 400, "limit={bad}: {body}");
        assert!(body.contains("limit="), "{body}");
    }
    let (code, body) = fleet.coord.get("/api/repos/no/such/repo/refs").unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, _) = fleet
        .coord
        .post(&format!("/api/repos/{id}/refs"), "")
        .unwrap();
    assert_eq!(code, 405);
}

/// Figures for docs/scale.md, not a pass/fail test: a repo of 200,000 refs paged through
/// the API at the largest `limit`. Run with
/// `cargo nextest run -p gitmirror-tests --test refs --run-ignored only --no-capture`.
#[test]
#[ignore]
fn spec_12_refs_pages_of_two_hundred_thousand_refs_figures() {
    const BIG: usize = 200_000;
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("refsbig", 1);
    let (id, _) = repos.iter().next().unwrap();
    let name = repo_name(id).to_owned();
    add_change_refs(&daemon.repo_path(&name), BIG);
    let upstream = daemon.ls_remote(&name);
    let fleet = Fleet::start("refsbig", &repos, 1);
    fleet.wait_alive(&[0], Duration::from_secs(120));
    wait_for(Duration::from_secs(600), "the clone reported", || {
        let (code, body) = fleet.coord.get(&format!("/api/repos/{id}/refs?limit=1"))?;
        (code == 200).then_some(()).ok_or(format!("{code} {body}"))
    });
    let mut times = Vec::new();
    let mut total = 0;
    let mut after: Option<String> = None;
    let started = Instant::now();
    loop {
        let mut path = format!("/api/repos/{id}/refs?limit=10000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        let t = Instant::now();
        let (code, body) = fleet.coord.get(&path).unwrap();
        times.push(t.elapsed());
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        total += v["refs"].as_array().unwrap().len();
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let all = started.elapsed();
    assert_eq!(total, upstream.len());
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // A one-ref page: what reading the repo's refs costs the worker, whatever the page.
    let mut small: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let (code, body) = fleet
                .coord
                .get(&format!("/api/repos/{id}/refs?limit=1"))
                .unwrap();
            assert_eq!(code, 200, "{body}");
            t.elapsed()
        })
        .collect();
    small.sort();
    println!(
        "refs of one repo of {} refs, limit=1: p50 {:.0} ms",
        upstream.len(),
        ms(small[2])
    );
    println!(
        "refs of one repo of {} refs, limit=10000: {} pages in {:.0} ms; per page p50 {:.0} ms, max {:.0} ms",
        upstream.len(),
        times.len(),
        ms(all),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
    );
}
