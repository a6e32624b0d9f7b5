//! A steady fleet: one coordinator, three workers, an index of 50+ repos served by a real
//! `git daemon`. Mirroring, freshness, index deltas and index validation.
//!
//! Each test has its own fleet (index, coordinator, workers, temp dirs); the upstream git
//! daemon is shared, with repo names distinct per test.

use gitmirror_tests::daemons::{Owners, SETTLE, str_field};
use gitmirror_tests::git::{remote_url, repo_name, try_mirror_refs};
use gitmirror_tests::{
    Fleet, GitDaemon, fetch_deadline, ls_remote, mark_mirror, same_mirror, wait_for,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Some repo owned by worker `worker`.
fn some_repo_of(owners: &Owners, worker: usize) -> String {
    owners
        .iter()
        .find(|&(_, &w)| w == worker)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("worker {worker} owns nothing: {owners:?}"))
}

// SPEC §5 (every repo assigned to exactly one live worker), §7.1 (bare mirror at
// `<mirror_dir>/<id>.git`, origin = upstream, refs = upstream), §9 (status API).
#[test]
fn every_repo_is_mirrored_exactly_once() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("once", 50);
    let fleet = Fleet::start("once", &repos, 3);
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));

    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    for i in 0..3 {
        let n = Fleet::owned_by(&owners, i).len();
        assert!(n > 0, "w{i} owns no repo: {owners:?}");
        let api = fleet.api_worker(i).unwrap();
        assert_eq!(
            api["repos"].as_u64(),
            Some(n as u64),
            "w{i} in /api/workers: {api}"
        );
        assert_eq!(str_field(&api, "state"), "alive");
    }

    // The status summary agrees.
    let status = fleet.coord.status().unwrap();
    assert_eq!(status["server_status"], "running", "{status}");
    assert_eq!(status["worker_count"], 3, "{status}");
    assert_eq!(status["repos"]["total"], 50, "{status}");
    assert_eq!(status["repos"]["mirrored"], 50, "{status}");

    // One repo explained (SPEC §9 `GET /api/repos/{id}`), id with slashes.
    let id = repos.keys().next().unwrap();
    let r = fleet.coord.repo(id).unwrap();
    assert_eq!(str_field(&r, "id"), *id, "{r}");
    assert_eq!(str_field(&r, "url"), repos[id], "{r}");
    assert_eq!(str_field(&r, "state"), "mirrored", "{r}");
    let owner_api = fleet.api_worker(owners[id]).unwrap()["id"].clone();
    assert_eq!(r["worker"], owner_api, "{r}");
    assert_eq!(r["refs"].as_u64(), Some(4), "four refs upstream: {r}");
    assert!(r["last_success"].is_string(), "{r}");
}

// SPEC §7.2 (a changed upstream is fetched within its interval), §7.1 (refs mirrored with
// pruning), §8 (a fetch that changes refs produces an `updated` event).
#[test]
fn upstream_changes_reach_the_mirror_within_the_fetch_interval() {
    let daemon = GitDaemon::shared();
    let created = Instant::now();
    let repos = daemon.repo_set("fresh", 50);
    let fleet = Fleet::start("fresh", &repos, 3);
    let owners = fleet.wait_settled(SETTLE);

    // Three kinds of change, on repos of different workers where possible.
    let a = some_repo_of(&owners, 0);
    let b = some_repo_of(&owners, 1);
    let c = some_repo_of(&owners, 2);
    let old_master = daemon.ls_remote(repo_name(&a))["refs/heads/master"].clone();
    let new_master = daemon.commit(repo_name(&a), "master");
    let dev_b = daemon.ls_remote(repo_name(&b))["refs/heads/dev"].clone();
    daemon.set_ref(repo_name(&b), "refs/heads/feature", &dev_b);
    daemon.delete_ref(repo_name(&c), "refs/heads/dev");

    let deadline = fetch_deadline(created);
    let changed = Instant::now();
    for id in [&a, &b, &c] {
        let path = fleet.workers[owners[id]].mirror_path(id);
        let upstream = ls_remote(&repos[id]);
        wait_for(deadline, &format!("{id} to match upstream"), || {
            let mine = try_mirror_refs(&path)?;
            if mine == upstream {
                Ok(())
            } else {
                Err(format!("mirror {mine:?} vs upstream {upstream:?}"))
            }
        });
    }

    eprintln!(
        "changes mirrored {:.1} s after the commits (deadline {deadline:?})",
        changed.elapsed().as_secs_f64()
    );

    // The master change is an `updated` event with old and new ids.
    wait_for(
        Duration::from_secs(10),
        "updated event for the commit",
        || {
            let events = fleet.coord.events(0)?;
            events
                .iter()
                .find(|e| {
                    str_field(e, "repo") == a
                        && str_field(e, "kind") == "updated"
                        && e["refs"].as_array().is_some_and(|refs| {
                            refs.iter().any(|r| {
                                r["name"] == "refs/heads/master"
                                    && r["old"] == old_master.as_str()
                                    && r["new"] == new_master.as_str()
                            })
                        })
                })
                .map(|_| ())
                .ok_or_else(|| format!("events for {a}: {:?}", events_of(&events, &a)))
        },
    );
}

fn events_of<'a>(events: &'a [Value], repo: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| str_field(e, "repo") == repo)
        .collect()
}

// SPEC §3.3 (an index commit is applied as a delta of added, removed and re-pointed
// entries), §7.1 (removed repos go to `.trash/`; a new URL is fetched into the kept mirror).
#[test]
fn index_commit_is_applied_as_a_delta() {
    let daemon = GitDaemon::shared();
    let mut repos = daemon.repo_set("delta", 55);
    let added = daemon.repo_set("deltanew", 3);
    // The new target of a re-pointed entry: same branch names, different commits.
    let alt_url = daemon.create_repo("deltaalt-r00");
    let mut fleet = Fleet::start("delta", &repos, 3);
    let owners = fleet.wait_settled(SETTLE);

    // Mark every mirror so a re-clone anywhere shows.
    let inodes: BTreeMap<String, u64> = owners
        .iter()
        .map(|(id, &w)| (id.clone(), mark_mirror(&fleet.workers[w].mirror_path(id))))
        .collect();

    // Remove 2 of 55 (under the default 5 % purge protection), add 3, re-point 1.
    let ids: Vec<String> = repos.keys().cloned().collect();
    let removed = [ids[3].clone(), ids[40].clone()];
    let repointed = ids[20].clone();
    for id in &removed {
        fleet.index.remove(id);
        repos.remove(id);
    }
    for (id, url) in &added {
        fleet.index.put_url(id, url);
        repos.insert(id.clone(), url.clone());
    }
    fleet.index.put_url(&repointed, &alt_url);
    repos.insert(repointed.clone(), alt_url.clone());
    fleet.index.commit("add 3, remove 2, re-point 1");
    fleet.repos = repos;

    // Everything settles on the new set; the re-pointed repo now has the alternate refs.
    let after = wait_for(SETTLE, "delta applied", || {
        let after = fleet.settled()?;
        fleet.check_mirrors(&after)?;
        Ok(after)
    });
    assert_eq!(
        ls_remote(&alt_url),
        try_mirror_refs(&fleet.workers[after[&repointed]].mirror_path(&repointed)).unwrap()
    );
    assert_eq!(
        remote_url(&fleet.workers[after[&repointed]].mirror_path(&repointed)).unwrap(),
        alt_url
    );

    // Only the delta moved: every kept repo (the re-pointed one included) has its owner,
    // its directory and the marker.
    for (id, inode) in &inodes {
        if removed.contains(id) {
            continue;
        }
        assert_eq!(after[id], owners[id], "{id} changed owner");
        same_mirror(&fleet.workers[after[id]].mirror_path(id), *inode)
            .unwrap_or_else(|e| panic!("{id} was re-cloned: {e}"));
    }
    for id in added.keys() {
        assert!(after.contains_key(id), "{id} not mirrored");
    }

    // Removed repos: gone from every final path, moved into their owner's `.trash/`.
    // (The API forgets them at once; the workers act on the drop order just after.)
    for id in &removed {
        let owner = &fleet.workers[owners[id]];
        let url = daemon.url(repo_name(id));
        let upstream = ls_remote(&url);
        wait_for(Duration::from_secs(10), &format!("{id} in .trash"), || {
            if let Some(w) = fleet.workers.iter().find(|w| w.has_mirror(id)) {
                return Err(format!("still mirrored on {}", w.name));
            }
            let trash = owner.trash();
            trash
                .iter()
                .find(|p| {
                    remote_url(p).ok().as_deref() == Some(url.as_str())
                        && try_mirror_refs(p).ok().as_ref() == Some(&upstream)
                })
                .map(|_| ())
                .ok_or_else(|| format!("{} .trash holds {trash:?}", owner.name))
        });
    }
}

// SPEC §3.2 (each bad entry rejected on its own, listed with a reason; the good ones load).
#[test]
fn bad_index_entries_are_listed_and_good_ones_mirror() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("valid", 50);
    let good_url = repos.values().next().unwrap().clone();
    let pwned = std::env::temp_dir().join(format!("gitmirror-e2e-pwned-{}", std::process::id()));
    let bad: Vec<(&str, String)> = vec![
        ("x/broken/yaml", "url: [unclosed\n".into()),
        ("x/broken/nourl", "submit: true\n".into()),
        ("x/broken/emptyurl", "url: ''\n".into()),
        ("x/broken/notstring", "url: 42\n".into()),
        (
            "x/broken/ext",
            format!("url: \"ext::sh -c touch% {}\"\n", pwned.display()),
        ),
        ("x/broken/extnospace", "url: ext::false\n".into()),
        ("x/broken/fd", "url: fd::3\n".into()),
        ("x/broken/dash", "url: \"-uevil\"\n".into()),
        ("x/broken/file", "url: file:///srv/git/x.git\n".into()),
        ("x/broken/local", "url: /srv/git/x.git\n".into()),
        (
            "x/broken/space",
            "url: \"git://127.0.0.1:1/a b.git\"\n".into(),
        ),
        ("x/-bad/repo", format!("url: {good_url}\n")),
        ("x/broken/we$rd", format!("url: {good_url}\n")),
    ];

    let fleet = Fleet::start("badidx", &repos, 3);
    for (path, content) in &bad {
        fleet.index.put(path, content);
    }
    fleet.index.commit("bad entries");

    let owners = fleet.wait_settled(SETTLE);
    assert_eq!(owners.len(), 50);
    let index = wait_for(Duration::from_secs(20), "bad entries listed", || {
        let all = fleet.coord.index_status()?;
        let test = all
            .iter()
            .find(|i| str_field(i, "name") == "test")
            .ok_or_else(|| format!("no index named test: {all:?}"))?
            .clone();
        let listed: BTreeSet<String> = test["rejected"]
            .as_array()
            .map(|r| r.iter().map(|e| str_field(e, "path")).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = bad
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !listed.contains(*p))
            .collect();
        if missing.is_empty() {
            Ok(test)
        } else {
            Err(format!("not rejected yet: {missing:?}; index: {test}"))
        }
    });
    assert_eq!(index["entries"], 50, "{index}");
    for r in index["rejected"].as_array().unwrap() {
        let path = str_field(r, "path");
        assert!(
            bad.iter().any(|(p, _)| *p == path),
            "a good entry was rejected: {r}"
        );
        assert!(!str_field(r, "reason").trim().is_empty(), "no reason: {r}");
    }
    assert!(!pwned.exists(), "the ext:: URL was executed");
    for r in index["rejected"].as_array().unwrap() {
        eprintln!("rejected {}: {}", r["path"], r["reason"]);
    }
}

// The checks above can fail: faults injected by hand into a settled fleet are caught by
// `Fleet::settled`, `Fleet::check_mirrors` and `same_mirror`. (A smaller fleet: this tests
// the harness, not the daemons.)
#[test]
fn fleet_checks_detect_injected_faults() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("fault", 6);
    let fleet = Fleet::start("fault", &repos, 2);
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();

    let (id, &owner) = owners.iter().next().unwrap();
    let other = 1 - owner;
    let mirror = fleet.workers[owner].mirror_path(id);

    // A second final-path mirror on a non-owner.
    let copy = fleet.workers[other].mirror_path(id);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    gitmirror_tests::git([
        "clone",
        "-q",
        "--bare",
        mirror.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    let err = fleet.settled().unwrap_err();
    assert!(err.contains("non-owner"), "{err}");
    std::fs::remove_dir_all(&copy).unwrap();

    // A mirror whose refs differ from upstream (checked at once, before a fetch repairs it).
    let gd = mirror.to_str().unwrap();
    let dev = gitmirror_tests::git(["--git-dir", gd, "rev-parse", "refs/heads/dev"]);
    gitmirror_tests::git(["--git-dir", gd, "update-ref", "refs/heads/injected", &dev]);
    let err = fleet.check_mirrors(&owners).unwrap_err();
    assert!(err.contains("differ from upstream"), "{err}");

    // A re-cloned mirror: marker gone.
    let ino = mark_mirror(&mirror);
    same_mirror(&mirror, ino).unwrap();
    std::fs::remove_file(mirror.join(gitmirror_tests::MARKER)).unwrap();
    assert!(same_mirror(&mirror, ino).is_err());
}
