//! Index layout details (SPEC §3.1), several indexes, and SIGHUP polling (§3.3, §11).
//! Small fleets of one worker: the index is the subject here.

use gitmirror_tests::daemons::{SETTLE, str_field};
use gitmirror_tests::{Fleet, GitDaemon, Signal, wait_for, yaml_path};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

// SPEC §3.1: entries at exactly three components; `url` as a string or a list (first is
// the fetch URL); other keys kept as metadata; `DEFAULTS` at any level, nearest wins key by
// key, the entry's own keys win; other depths, README* and dot-directories ignored (not
// rejected).
#[test]
fn layout_defaults_and_metadata() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("lay", 2);
    let ids: Vec<&String> = repos.keys().collect();
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let fleet = Fleet::start("layout", &BTreeMap::new(), 1);
    let ix = &fleet.index;
    ix.put("DEFAULTS", "owner: top\nsubmit: top-submit\n");
    ix.put(
        "l/lay/DEFAULTS",
        "submit: project-submit\npkgbuild_repo: pkg-lay\n",
    );
    ix.put(&a, &format!("url: {}\nsubmit: own-submit\n", repos[&a]));
    ix.put(
        &b,
        &format!(
            "url:\n  - {}\n  - https://example.invalid/other.git\n",
            repos[&b]
        ),
    );
    ix.put("l/README", "not an entry\n");
    ix.put("l/lay/README.md", "not an entry either\n");
    ix.put("l/lay/too/deep", "url: git://127.0.0.1:1/deep.git\n");
    ix.put("toplevel", "url: git://127.0.0.1:1/top.git\n");
    ix.put(".github/x/y", "url: git://127.0.0.1:1/dot.git\n");
    ix.commit("layout");

    let mut fleet = fleet;
    fleet.repos = repos.clone();
    fleet.wait_settled(SETTLE);

    let ra = fleet.coord.repo(&a).unwrap();
    let rb = fleet.coord.repo(&b).unwrap();
    assert_eq!(str_field(&rb, "url"), repos[&b], "first list element: {rb}");
    let meta = |r: &Value, k: &str| r["metadata"][k].as_str().map(str::to_owned);
    assert_eq!(meta(&ra, "submit").as_deref(), Some("own-submit"), "{ra}");
    assert_eq!(
        meta(&ra, "pkgbuild_repo").as_deref(),
        Some("pkg-lay"),
        "{ra}"
    );
    assert_eq!(meta(&ra, "owner").as_deref(), Some("top"), "{ra}");
    assert_eq!(
        meta(&rb, "submit").as_deref(),
        Some("project-submit"),
        "{rb}"
    );

    let index = &fleet.coord.index_status().unwrap()[0];
    assert_eq!(index["entries"], 2, "{index}");
    assert_eq!(
        index["rejected"].as_array().map(Vec::len),
        Some(0),
        "ignored files must not be rejected: {index}"
    );
}

// SPEC §3.1 (several indexes; a repo id in two is taken from the first listed and reported
// as a conflict for the other), §2.1 (an index `url` may be a plain local directory,
// re-read each poll).
#[test]
fn second_index_plain_directory_and_conflicts() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("dup", 2);
    let ids: Vec<String> = repos.keys().cloned().collect();
    let conflict_url = daemon.create_repo("dupother-r00");
    // The first index holds ids[0]; the second, a plain directory, holds ids[0] (another
    // URL) and ids[1].
    let first: BTreeMap<String, String> = [(ids[0].clone(), repos[&ids[0]].clone())].into();
    let mut fleet = Fleet::start_with("twoidx", &first, 1, |yaml, root| {
        let dir = root.join("plain-index");
        for (id, url) in [(&ids[0], &conflict_url), (&ids[1], &repos[&ids[1]])] {
            let p = dir.join(id);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("url: {url}\n")).unwrap();
        }
        yaml.replace(
            "allow_file_urls:",
            &format!(
                "  - name: second\n    url: {}\n    poll_interval: 1s\nallow_file_urls:",
                yaml_path(&dir)
            ),
        )
    });
    fleet.repos = repos.clone();
    fleet.wait_settled(SETTLE);
    let r0 = fleet.coord.repo(&ids[0]).unwrap();
    assert_eq!(str_field(&r0, "index"), "test", "{r0}");
    assert_eq!(str_field(&r0, "url"), repos[&ids[0]], "{r0}");
    let r1 = fleet.coord.repo(&ids[1]).unwrap();
    assert_eq!(str_field(&r1, "index"), "second", "{r1}");
    let all = fleet.coord.index_status().unwrap();
    let second = all
        .iter()
        .find(|i| str_field(i, "name") == "second")
        .unwrap_or_else(|| panic!("no index second: {all:?}"));
    assert!(
        second.to_string().contains(ids[0].as_str()),
        "the conflict on {} is not reported for index second: {second}",
        ids[0]
    );

    // Re-read each poll: a new file in the plain directory, no commit.
    let extra = daemon.repo_set("dupnew", 1);
    let root = fleet.root.path().join("plain-index");
    for (id, url) in &extra {
        let p = root.join(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("url: {url}\n")).unwrap();
    }
    fleet.repos.extend(extra);
    fleet.wait_settled(SETTLE);
}

// SPEC §11 / §3.3: SIGHUP polls the indexes now. The poll interval is an hour, so only the
// signal explains the new entry being applied.
#[test]
fn sighup_polls_the_index_now() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("hup", 3);
    let mut fleet = Fleet::start_with("sighup", &repos, 1, |yaml, _| {
        yaml.replace("poll_interval: 1s", "poll_interval: 1h")
    });
    fleet.wait_settled(SETTLE);
    let extra = daemon.repo_set("hupnew", 1);
    for (id, url) in &extra {
        fleet.index.put_url(id, url);
    }
    fleet.index.commit("one more");
    fleet.coord.proc.signal(Signal::HUP);
    let id = extra.keys().next().unwrap().clone();
    wait_for(Duration::from_secs(10), "new entry after SIGHUP", || {
        fleet.coord.repo(&id).map(|_| ())
    });
    fleet.repos.extend(extra);
    fleet.wait_settled(SETTLE);
}
