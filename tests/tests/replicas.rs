//! Issue 12 (SPEC §13): replicas in a real fleet, must-show M2. A real `git daemon`
//! upstream, a real coordinator with `replicas: 2`, three real workers with `peer_listen`.

use gitmirror_tests::daemons::str_field;
use gitmirror_tests::events::{Change, tally};
use gitmirror_tests::git::{repo_name, try_git, try_mirror_refs};
use gitmirror_tests::{Fleet, GitDaemon, free_udp_port, poll_until};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);
const REPOS: usize = 6;

/// Repo id → its refs (`git ls-remote`).
type RefsOf = BTreeMap<String, BTreeMap<String, String>>;

/// A worker with `peer_listen` on a free port, started, its plane listening.
fn add_peer_worker(fleet: &mut Fleet) -> usize {
    let port = free_udp_port();
    let i = fleet.create_worker_with(1.0, |y| format!("{y}peer_listen: 127.0.0.1:{port}\n"));
    fleet.workers[i].start();
    fleet.workers[i]
        .proc
        .wait_log(0, "peer plane listening", WITHIN);
    i
}

/// `replicas: 2`, three peer workers, then `REPOS` real repos (a few commits each) in the
/// index: the planes listen before any outcome, so every refs hash is kept.
fn replicated_fleet(daemon: &GitDaemon, label: &str) -> Fleet {
    let repos = daemon.repo_set(label, REPOS);
    for id in repos.keys() {
        for _ in 0..2 {
            daemon.commit(repo_name(id), &branch_of(&daemon.ls_remote(repo_name(id))));
        }
    }
    let mut fleet = Fleet::start_with(label, &BTreeMap::new(), 0, |y, _| {
        format!("{y}replicas: 2\n")
    });
    let ws: Vec<usize> = (0..3).map(|_| add_peer_worker(&mut fleet)).collect();
    fleet.wait_alive(&ws, WITHIN);
    for (id, url) in &repos {
        fleet.index.put_url(id, url);
    }
    fleet.index.commit("the repos");
    fleet.repos = repos;
    fleet
}

/// The first branch of a ref map.
fn branch_of(refs: &BTreeMap<String, String>) -> String {
    refs.keys()
        .find_map(|r| r.strip_prefix("refs/heads/"))
        .expect("a branch")
        .to_owned()
}

/// Per repo: the workers (indexes into `fleet.workers`, not `skip`) that `GET
/// /api/repos/{id}` lists as verified holders, once every repo has exactly two and both
/// hold a mirror whose refs equal `want`'s.
fn two_verified_copies(
    fleet: &Fleet,
    want: &RefsOf,
    skip: Option<usize>,
) -> Option<BTreeMap<String, Vec<usize>>> {
    let ids = fleet.api_ids().ok()?;
    let mut out = BTreeMap::new();
    for id in fleet.repos.keys() {
        let r: Value = fleet.coord.repo(id).ok()?;
        let holders: Vec<usize> = r["holders"]
            .as_array()?
            .iter()
            .filter_map(|h| ids.get(&h.as_u64()?).copied())
            .collect();
        if holders.len() != 2 || holders.iter().any(|h| Some(*h) == skip) {
            return None;
        }
        if r["replicas"] != 2 || r["worker"].as_u64() != r["holders"][0].as_u64() {
            return None;
        }
        for h in &holders {
            let p = fleet.workers[*h].mirror_path(id);
            if try_mirror_refs(&p).ok().as_ref() != want.get(id) {
                return None;
            }
        }
        out.insert(id.clone(), holders);
    }
    Some(out)
}

fn upstream_refs(fleet: &Fleet, daemon: &GitDaemon) -> RefsOf {
    fleet
        .repos
        .keys()
        .map(|id| (id.clone(), daemon.ls_remote(repo_name(id))))
        .collect()
}

/// Every ref value the upstream had, as `(repo, ref, oid)`.
fn made(states: &[&RefsOf]) -> Vec<Change> {
    let mut set = BTreeSet::new();
    for s in states {
        for (id, refs) in *s {
            for (name, oid) in refs {
                if name.starts_with("refs/") {
                    set.insert((id.clone(), name.clone(), oid.clone()));
                }
            }
        }
    }
    set.into_iter().collect()
}

/// Every repo on two workers, then one upstream commit made and fetched: both holders
/// have it, and it is one event. Returns the upstream states (before, after).
fn replicate_and_change(fleet: &Fleet, daemon: &GitDaemon) -> (RefsOf, RefsOf) {
    let before = upstream_refs(fleet, daemon);
    let copies = poll_until(WITHIN, "every repo on two verified holders", || {
        two_verified_copies(fleet, &before, None)
    });
    let on_disk: BTreeSet<usize> = copies.values().flatten().copied().collect();
    assert!(on_disk.len() >= 2, "{copies:?}");
    for (id, hs) in &copies {
        assert_ne!(hs[0], hs[1], "{id}: two distinct workers");
    }
    poll_until(WITHIN, "one event for each repo's first mirror", || {
        let events = fleet.coord.all_events().ok()?;
        let repos: BTreeSet<String> = events.iter().map(|e| str_field(e, "repo")).collect();
        (repos.len() == REPOS).then_some(())
    });
    // One upstream change, fetched now.
    let id = fleet.repos.keys().next().unwrap().clone();
    let branch = branch_of(&before[&id]);
    let oid = daemon.commit(repo_name(&id), &branch);
    let (code, body) = fleet
        .coord
        .post(&format!("/api/repos/{id}/fetch"), "")
        .unwrap();
    assert!((200..300).contains(&code), "{code} {body}");
    let after = upstream_refs(fleet, daemon);
    assert_eq!(after[&id][&format!("refs/heads/{branch}")], oid);
    poll_until(WITHIN, "both holders with the change", || {
        two_verified_copies(fleet, &after, None)
    });
    let events = fleet.coord.all_events().unwrap();
    let t = tally(&events, &made(&[&before, &after]));
    assert!(
        t.lost.is_empty() && t.duplicated.is_empty() && t.unexpected.is_empty(),
        "{t:?}\n{events:#?}"
    );
    let carrying: Vec<&Value> = events
        .iter()
        .filter(|e| {
            str_field(e, "repo") == id
                && e["refs"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["new"] == oid.as_str()))
        })
        .collect();
    assert_eq!(carrying.len(), 1, "one event for the change: {events:#?}");
    (before, after)
}

/// Must-show M2, first half (SPEC §13): `replicas: 2` on three workers: every repo is
/// mirrored on two of them (the API's verified holders, the mirrors on their disks); an
/// upstream change reaches both and is exactly one event.
#[test]
fn spec_13_replicas_two_on_three_workers_one_event() {
    let daemon = GitDaemon::start();
    let fleet = replicated_fleet(&daemon, "repl-one");
    replicate_and_change(&fleet, &daemon);
    // The followers copied from the primaries rather than cloning from the upstream.
    let copied = fleet
        .workers
        .iter()
        .filter(|w| w.proc.log().contains("copied from a peer"))
        .count();
    assert!(copied >= 1, "followers copy from peers");
    let status = fleet.coord.status().unwrap();
    assert_eq!(status["repos"]["under_replicated"], 0, "{status}");
    let (_, metrics) = fleet.coord.get("/metrics").unwrap();
    assert!(
        metrics.contains("\ngitmirror_under_replicated_repos 0\n"),
        "{metrics}"
    );
    let workers = fleet.coord.workers().unwrap();
    assert!(
        workers.iter().all(|w| w["peer"] == true),
        "every worker's plane listens: {workers:?}"
    );
}

/// Must-show M2, second half (SPEC §13): then the upstream goes offline and one holder
/// is killed with kill -9: every repo is back on two live verified holders (the third
/// worker seeded from the survivor), refs equal to the upstream's, `git fsck` clean, and
/// no event lost or duplicated.
#[test]
fn spec_13_upstream_offline_kill9_holder_restores_two_copies() {
    let daemon = GitDaemon::start();
    let fleet = replicated_fleet(&daemon, "repl-kill");
    let (before, after) = replicate_and_change(&fleet, &daemon);
    drop(daemon);
    // The worker holding the most repos.
    let copies = two_verified_copies(&fleet, &after, None).unwrap();
    let victim = (0..fleet.workers.len())
        .max_by_key(|w| copies.values().filter(|hs| hs.contains(w)).count())
        .unwrap();
    fleet.workers[victim].kill();
    let copies = poll_until(
        WITHIN,
        "every repo back on two live verified holders, from peers",
        || two_verified_copies(&fleet, &after, Some(victim)),
    );
    for (id, hs) in &copies {
        for h in hs {
            let p = fleet.workers[*h].mirror_path(id);
            try_git(["-C", p.to_str().unwrap(), "fsck", "--no-progress"])
                .unwrap_or_else(|e| panic!("{id} on worker {h}: fsck: {e}"));
        }
    }
    let status = fleet.coord.status().unwrap();
    assert_eq!(status["repos"]["under_replicated"], 0, "{status}");
    let events = fleet.coord.all_events().unwrap();
    let t = tally(&events, &made(&[&before, &after]));
    assert!(
        t.lost.is_empty() && t.duplicated.is_empty() && t.unexpected.is_empty(),
        "{t:?}\n{events:#?}"
    );
}
