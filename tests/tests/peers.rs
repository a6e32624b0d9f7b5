//! Issue 12 (SPEC §13): the peer plane in a real fleet.

use gitmirror_tests::{Fleet, GitDaemon, free_udp_port, poll_until};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

/// Step S2, the plumbing (C2): every protocol-7 worker gets the fleet CA from the
/// coordinator over the pinned channel and saves it as `fleet-ca.pem` (the coordinator's
/// `ca-cert.pem`, byte for byte); only the worker with `peer_listen` listens.
#[test]
fn spec_13_workers_get_the_fleet_ca_and_only_peer_listen_listens() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("peers-ca", 4);
    let mut fleet = Fleet::start("peers-ca", &repos, 0);
    let port = free_udp_port();
    let a = fleet.create_worker_with(1.0, |y| format!("{y}peer_listen: 127.0.0.1:{port}\n"));
    fleet.workers[a].start();
    let b = fleet.add_worker(1.0);
    fleet.wait_alive(&[a, b], WITHIN);
    let ca = std::fs::read_to_string(fleet.coord.state_dir.join("ca-cert.pem")).unwrap();
    for i in [a, b] {
        let saved = fleet.workers[i].state_dir.join("fleet-ca.pem");
        poll_until(WITHIN, "the fleet CA saved by the worker", || {
            std::fs::read_to_string(&saved).ok().filter(|s| *s == ca)
        });
    }
    fleet.workers[a]
        .proc
        .wait_log(0, "peer plane listening", WITHIN);
    assert!(!fleet.workers[b].proc.log().contains("peer plane listening"));
}

/// A worker of `fleet` with `peer_listen` on a free port, started.
fn add_peer_worker(fleet: &mut Fleet) -> usize {
    fleet.add_peer_worker(1.0, WITHIN)
}

/// Must-show M1 (SPEC §13 hand-over, issue 12 step S2): two workers mirror real repos;
/// the upstream goes offline; a third worker joins, and every repo the ring moves to it
/// is mirrored there from its peers: refs equal to the upstream's, `git fsck` clean, with
/// the upstream still offline. The repos are one project folder with pools on, so this is
/// also issue 13's "pool members survive a hand-over" (SPEC §14): the holders serve pool
/// members, and the copies join the new worker's pool.
#[test]
fn spec_13_join_with_upstream_offline_mirrors_from_peers() {
    use gitmirror_tests::git::{try_git, try_ls_remote, try_mirror_refs};
    use gitmirror_tests::mirror_refs;
    let daemon = GitDaemon::start();
    let repos = daemon.repo_set("peers-m1", 24);
    // An empty index first: the planes listen before any outcome, so the coordinator
    // keeps every repo's refs hash from the first clone on.
    let mut fleet = Fleet::start("peers-m1", &std::collections::BTreeMap::new(), 0);
    let a = add_peer_worker(&mut fleet);
    let b = add_peer_worker(&mut fleet);
    fleet.wait_alive(&[a, b], WITHIN);
    for (id, url) in &repos {
        fleet.index.put_url(id, url);
    }
    fleet.index.commit("the repos");
    fleet.repos = repos.clone();
    fleet.wait_settled(WITHIN);
    // The repos are one project folder, and pools are on: the holders serve pool members
    // (issue 13: pool members survive a hand-over).
    let pooled = |fleet: &Fleet, i: usize| {
        repos
            .keys()
            .filter(|id| {
                fleet.workers[i]
                    .mirror_path(id)
                    .join("objects/info/alternates")
                    .exists()
            })
            .count()
    };
    poll_until(WITHIN, "the holders' mirrors in their pools", || {
        (pooled(&fleet, a) + pooled(&fleet, b) == repos.len()).then_some(())
    });
    let upstream: std::collections::BTreeMap<String, _> = repos
        .iter()
        .map(|(id, url)| (id.clone(), gitmirror_tests::ls_remote(url)))
        .collect();
    drop(daemon);
    for url in repos.values() {
        assert!(try_ls_remote(url).is_err(), "the upstream is offline");
    }
    // A fetch that ended just before the upstream went away may still be reported: each
    // holder's reports come in order, so once each has a repo failing against the offline
    // upstream, its earlier transfers are counted.
    poll_until(
        WITHIN,
        "a fetch failed against the offline upstream on each holder",
        || {
            let ids = fleet.api_ids().ok()?;
            ids.iter()
                .filter(|(_, i)| [a, b].contains(*i))
                .all(|(wid, _)| {
                    fleet
                        .coord
                        .json(&format!("/api/repos?worker={wid}&state=failing&limit=1"))
                        .ok()
                        .and_then(|p| p["repos"].as_array().map(|r| !r.is_empty()))
                        == Some(true)
                })
                .then_some(())
        },
    );
    // Transfer bytes by source (SPEC §13): the first clones came from the upstream.
    let bytes = |fleet: &Fleet, source: &str| {
        fleet
            .coord
            .metric("gitmirror_transfer_bytes_total", &[("source", source)])
            .unwrap()
    };
    let from_upstream = bytes(&fleet, "upstream");
    assert!(from_upstream > 0.0, "the first clones' bytes");
    assert_eq!(bytes(&fleet, "peer"), 0.0);
    let c = add_peer_worker(&mut fleet);
    fleet.wait_alive(&[a, b, c], WITHIN);
    let moved = poll_until(
        WITHIN,
        "the repos the ring gives the new worker mirrored there",
        || {
            let ids = fleet.api_ids().ok()?;
            let owners = fleet.coord.owners().ok()?;
            let mine: Vec<String> = owners
                .iter()
                .filter(|(_, w)| w.and_then(|w| ids.get(&w)) == Some(&c))
                .map(|(id, _)| id.clone())
                .collect();
            (!mine.is_empty()
                && mine.iter().all(|id| {
                    let p = fleet.workers[c].mirror_path(id);
                    fleet.workers[c].has_mirror(id)
                        && try_mirror_refs(&p).ok().as_ref() == upstream.get(id)
                }))
            .then_some(mine)
        },
    );
    for id in &moved {
        let p = fleet.workers[c].mirror_path(id);
        assert_eq!(mirror_refs(&p), upstream[id], "{id}");
        try_git(["-C", p.to_str().unwrap(), "fsck", "--no-progress"])
            .unwrap_or_else(|e| panic!("{id}: fsck: {e}"));
    }
    let log = fleet.workers[c].proc.log();
    assert!(log.contains("copied from a peer"), "{log}");
    // The copies are counted as peer bytes; nothing more came from the upstream.
    poll_until(WITHIN, "the copies' bytes under source=\"peer\"", || {
        (bytes(&fleet, "peer") > 0.0).then_some(())
    });
    assert_eq!(bytes(&fleet, "upstream"), from_upstream);
    // The copies join the new worker's pool of the project in the background.
    if moved.len() >= 2 {
        poll_until(WITHIN, "the copies in the new worker's pool", || {
            (pooled(&fleet, c) == moved.len()).then_some(())
        });
        for id in &moved {
            let p = fleet.workers[c].mirror_path(id);
            try_git(["-C", p.to_str().unwrap(), "fsck", "--no-progress"])
                .unwrap_or_else(|e| panic!("{id} pooled: fsck: {e}"));
        }
    }
    eprintln!(
        "{} of {} repos moved to the new worker, all from peers",
        moved.len(),
        repos.len()
    );
}
