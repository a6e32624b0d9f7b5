//! `kill -9` of the coordinator while the workers run.

use gitmirror_tests::daemons::{DEAD_AFTER_TOTAL, SETTLE, str_field};
use gitmirror_tests::git::{repo_name, try_mirror_refs};
use gitmirror_tests::{Fleet, GitDaemon, fetch_deadline, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// name → (id, uuid) of every worker the API lists.
fn identities(workers: &[Value]) -> BTreeMap<String, (Value, Value)> {
    workers
        .iter()
        .map(|w| (str_field(w, "name"), (w["id"].clone(), w["uuid"].clone())))
        .collect()
}

// SPEC §6 (a worker that loses its coordinator keeps fetching, reconnects with backoff at
// most 30 s apart, never exits), §10 (a restarted coordinator comes back consistent: same
// workers, ids, uuids), §5 (owners are a pure function of the live set), §8 (outcomes not
// acknowledged before the crash are resent: the change made while it was down becomes an
// event).
#[test]
fn workers_outlive_a_coordinator_crash_and_reconnect() {
    let daemon = GitDaemon::shared();
    let created = Instant::now();
    let repos = daemon.repo_set("coord", 50);
    let fleet = Fleet::start("coord", &repos, 3);
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    let before = identities(&fleet.coord.workers().unwrap());
    assert_eq!(before.len(), 3, "{before:?}");

    let events_before = fleet.coord.events(0).unwrap();
    assert!(!events_before.is_empty());
    fleet.coord.kill();

    // While it is down, an upstream change still reaches the mirror.
    let id = repos.keys().nth(7).unwrap().clone();
    let new = daemon.commit(repo_name(&id), "master");
    let path = fleet.workers[owners[&id]].mirror_path(&id);
    wait_for(
        fetch_deadline(created),
        "the change fetched while the coordinator is down",
        || {
            let refs = try_mirror_refs(&path)?;
            if refs.get("refs/heads/master") == Some(&new) {
                Ok(())
            } else {
                Err(format!("{refs:?}"))
            }
        },
    );
    for w in &fleet.workers {
        assert!(
            w.proc.is_running(),
            "{} exited without its coordinator: {:?}",
            w.name,
            w.proc.exited()
        );
    }

    // Same config: same ports, same state dir.
    fleet.coord.start_ready();
    // Reconnect backoff is capped at 30 s (SPEC §6).
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(45));
    let after = identities(&fleet.coord.workers().unwrap());
    assert_eq!(
        after, before,
        "worker identities changed across the restart"
    );
    let owners_after = fleet.wait_settled(SETTLE);
    assert_eq!(owners_after, owners, "owners changed across the restart");
    fleet.check_mirrors(&owners_after).unwrap();

    // SPEC §10: no acknowledged event is lost; they keep their numbers.
    let events_after = fleet.coord.events(0).unwrap();
    assert!(
        events_after.len() >= events_before.len()
            && events_after[..events_before.len()] == events_before[..],
        "events before the crash are not a prefix of those after: {} before, {} after",
        events_before.len(),
        events_after.len()
    );

    // The outcome fetched while it was down arrives as an event.
    wait_for(
        Duration::from_secs(20),
        "event for the change made while down",
        || {
            let events = fleet.coord.events(0)?;
            let hit = events.iter().any(|e| {
                str_field(e, "repo") == id
                    && e["refs"].as_array().is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r["name"] == "refs/heads/master" && r["new"] == new.as_str())
                    })
            });
            if hit {
                Ok(())
            } else {
                let mine: Vec<&Value> = events
                    .iter()
                    .filter(|e| str_field(e, "repo") == id)
                    .collect();
                Err(format!("events for {id}: {mine:?}"))
            }
        },
    );
}

// SPEC §6 and §10: a coordinator restarted from its state must not trust the persisted
// "alive": a worker that does not come back is declared dead after `dead_after` and its
// repos move to the workers that did.
#[test]
fn worker_missing_after_coordinator_restart_is_declared_dead() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("absent", 30);
    let fleet = Fleet::start("absent", &repos, 3);
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let before = fleet.wait_settled(SETTLE);

    fleet.coord.kill();
    fleet.workers[2].kill();
    fleet.coord.start_ready();
    fleet.wait_alive(&[0, 1], Duration::from_secs(45));
    wait_for(
        DEAD_AFTER_TOTAL + Duration::from_secs(20),
        "the absent worker declared dead",
        || {
            let w = fleet.api_worker(2)?;
            (str_field(&w, "state") == "dead")
                .then_some(())
                .ok_or_else(|| w.to_string())
        },
    );
    let after = fleet.wait_settled(SETTLE);
    for (id, &owner) in &before {
        if owner == 2 {
            assert_ne!(after[id], 2, "{id}");
        } else {
            assert_eq!(after[id], owner, "{id} moved although its owner lives");
        }
    }
}

// SPEC §12 "Upgrades": a coordinator restart keeps its QUIC stateless-reset key, so a worker
// whose packets reach the new process is told at once that its connection is gone (a
// stateless reset) instead of waiting for its idle timeout. The idle timeout here is long
// (suspect_after 30 s) so that only a recognised reset can end the old connection early.
#[test]
fn spec_12_restart_resets_worker_connections_at_once() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("reset", 2);
    let fleet = Fleet::start_with("reset", &repos, 1, |yaml, _| {
        yaml.replace("suspect_after: 3s", "suspect_after: 30s")
    });
    fleet.wait_alive(&[0], Duration::from_secs(30));
    let worker = &fleet.workers[0].proc;
    let mark = worker.log_mark();
    fleet.coord.kill();
    fleet.coord.start_ready();
    let line = worker.wait_log(
        mark,
        "lost the connection to the coordinator",
        Duration::from_secs(60),
    );
    assert!(
        line.contains("reset by peer"),
        "the old connection ended by something other than a stateless reset: {line}"
    );
    fleet.wait_alive(&[0], Duration::from_secs(30));
}
