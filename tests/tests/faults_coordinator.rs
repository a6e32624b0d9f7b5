//! Fault suite: the coordinator `kill -9`ed and restarted again and again while upstream
//! repos change. `GITMIRROR_FAULTS=long` runs 100 crashes instead of 10;
//! `GITMIRROR_SEED=<n>` replays the moments of a run (the seed is printed).

use gitmirror_tests::daemons::SETTLE;
use gitmirror_tests::events::{Change, tally, triples};
use gitmirror_tests::git::repo_name;
use gitmirror_tests::{Fleet, GitDaemon, Rng, Signal, figure, ls_remote, rounds, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SUITE: &str = "coordinator-crash-loop";

/// Panics when a worker process has exited (SPEC §6: a worker never exits because its
/// coordinator is away).
fn assert_workers_running(fleet: &Fleet, when: &str) {
    for w in &fleet.workers {
        assert!(
            w.proc.exited().is_none(),
            "{} exited {when}: {:?}",
            w.name,
            w.proc.exited()
        );
    }
}

// SPEC §10 (after `kill -9` at any moment the coordinator restarts into a consistent
// state and loses no acknowledged event), §6 (workers never exit when the coordinator is
// away and reconnect; a worker that misses `dead_after` fails over and comes back as a
// join), §8 (every fetch that changes refs is one event: unacknowledged outcomes are
// resent, duplicates dropped; sequence numbers gap-free), §5 (at the end every repo has
// exactly one owner, mirrored by it alone, refs equal to upstream).
//
// The coordinator is killed `rounds(10, 100)` times at seeded random moments: while
// workers reconnect, report, fetch and clone; upstream commits land before, during and
// between crashes, some with `POST /api/repos/{id}/fetch`. A repo gets a new commit only
// after its previous one is seen as an event, so every change is one a fetch can see.
#[test]
fn coordinator_crash_loop_loses_and_repeats_no_event() {
    let mut rng = Rng::seeded("coordinator crash loop");
    let seed = rng.seed;
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("crashloop", 24);
    // Segments of 2 KiB: a few events each, so segments close and checkpoints of the
    // published refs are written (and killed mid-way) throughout (SPEC §12).
    let fleet = Fleet::start_with("crashloop", &repos, 3, |yaml, _| {
        format!("{yaml}events: {{segment_bytes: 2K}}\n")
    });
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();

    // The refs each repo was created with are changes too: each is in one `cloned` event.
    let mut made: Vec<Change> = Vec::new();
    for (id, url) in &repos {
        for (name, oid) in ls_remote(url) {
            made.push((id.clone(), name, oid));
        }
    }
    let ids: Vec<String> = repos.keys().cloned().collect();
    // Repo → the change made to it that is not yet seen as an event.
    let mut pending: BTreeMap<String, Change> = BTreeMap::new();

    // Drop the pending changes that are events now (when the coordinator answers).
    let confirm = |fleet: &Fleet, pending: &mut BTreeMap<String, Change>| {
        if let Ok(events) = fleet.coord.all_events() {
            let seen: BTreeSet<Change> = events.iter().flat_map(triples).collect();
            pending.retain(|_, c| !seen.contains(c));
        }
    };
    // Commit to 1–3 repos without a pending change; ask for some to be fetched now.
    let commit_some = |fleet: &Fleet,
                       rng: &mut Rng,
                       pending: &mut BTreeMap<String, Change>,
                       made: &mut Vec<Change>,
                       up: bool| {
        for _ in 0..=rng.below(3) {
            let free: Vec<&String> = ids.iter().filter(|id| !pending.contains_key(*id)).collect();
            if free.is_empty() {
                return;
            }
            let id = free[rng.below(free.len() as u64) as usize].clone();
            let branch = if rng.below(3) == 0 { "dev" } else { "master" };
            let oid = daemon.commit(repo_name(&id), branch);
            let change = (id.clone(), format!("refs/heads/{branch}"), oid);
            made.push(change.clone());
            pending.insert(id.clone(), change);
            if up && rng.below(2) == 0 {
                // 202, or 503 while the owner is reconnecting: either is fine here.
                let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
            }
        }
    };

    let initial = made.len();
    let mut stops = 0usize;
    let kills = rounds(10, 100);
    for round in 0..kills {
        // Up for 0.2–3 s, with commits at its start and in its middle.
        let up = rng.millis(200, 3000);
        confirm(&fleet, &mut pending);
        commit_some(&fleet, &mut rng, &mut pending, &mut made, true);
        std::thread::sleep(up / 2);
        confirm(&fleet, &mut pending);
        commit_some(&fleet, &mut rng, &mut pending, &mut made, true);
        std::thread::sleep(up - up / 2);

        // In a third of the rounds a worker is away across the crash (SIGSTOP): back
        // within `dead_after` of the restart it resumes; later, it was declared dead, its
        // repos failed over, and it comes back as a join and re-sends what it fetched.
        let away = (rng.below(3) == 0).then(|| rng.below(fleet.workers.len() as u64) as usize);
        if let Some(v) = away {
            fleet.workers[v].proc.signal(Signal::STOP);
            stops += 1;
        }
        fleet.coord.kill();
        assert_workers_running(&fleet, &format!("after coordinator kill {}", round + 1));
        // Down for 0–2 s, with commits while it is down.
        commit_some(&fleet, &mut rng, &mut pending, &mut made, false);
        std::thread::sleep(rng.millis(0, 2000));
        fleet.coord.start_ready();
        assert_workers_running(&fleet, &format!("after coordinator restart {}", round + 1));
        let mut note = String::new();
        if let Some(v) = away {
            // Away for 0–7 s more: a restarted coordinator gives it `dead_after` (4 s).
            let more = rng.millis(0, 7000);
            commit_some(&fleet, &mut rng, &mut pending, &mut made, true);
            std::thread::sleep(more);
            fleet.workers[v].proc.signal(Signal::CONT);
            note = format!(", w{v} away until {more:?} after the restart");
        }
        eprintln!(
            "round {}: up {up:?}{note}, {} changes made, {} not yet events",
            round + 1,
            made.len() - initial,
            pending.len()
        );
    }

    // Quiet now: every worker back, every change an event, every repo mirrored once.
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(45));
    wait_for(
        Duration::from_secs(90),
        "every change made seen as an event",
        || {
            confirm(&fleet, &mut pending);
            assert_workers_running(&fleet, "while waiting for the last events");
            pending
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("not yet events: {pending:?}"))
        },
    );
    // A barrier: one more change to every repo, asked to be fetched now. Each worker
    // resends its unacknowledged outcomes when it connects, before any later outcome, so
    // once these are events, a duplicate from an earlier resend would be in the log too.
    for id in &ids {
        let oid = daemon.commit(repo_name(id), "master");
        let change = (id.clone(), "refs/heads/master".to_owned(), oid);
        made.push(change.clone());
        pending.insert(id.clone(), change);
        let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
    }
    wait_for(
        Duration::from_secs(60),
        "the barrier changes seen as events",
        || {
            confirm(&fleet, &mut pending);
            pending
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("not yet events: {pending:?}"))
        },
    );
    let owners = fleet.wait_settled(SETTLE);
    wait_for(Duration::from_secs(30), "mirrors equal upstream", || {
        fleet.check_mirrors(&owners)
    });
    assert_eq!(
        fleet.settled().unwrap(),
        owners,
        "owners changed while the mirrors were checked"
    );
    assert_workers_running(&fleet, "at the end");

    let commits = made.len() - initial;
    let events = fleet.coord.all_events().unwrap();
    let t = tally(&events, &made);
    figure(SUITE, "seed", seed);
    figure(SUITE, "coordinator_kills", kills);
    figure(SUITE, "workers_stopped_across_a_crash", stops);
    figure(SUITE, "ref_changes_made", commits);
    figure(SUITE, "events", events.len());
    figure(SUITE, "lost", t.lost.len());
    figure(SUITE, "duplicated", t.duplicated.len());
    assert!(
        t.lost.is_empty(),
        "changes never seen as events: {:#?}",
        t.lost
    );
    assert!(
        t.duplicated.is_empty(),
        "changes in more than one event (seed {seed}): {:#?}",
        t.duplicated
    );
    assert!(
        t.unexpected.is_empty(),
        "events carry ref values never made upstream: {:#?}",
        t.unexpected
    );
    assert!(
        t.empty.is_empty(),
        "events that carry nothing new (seqs {:?}, seed {seed})",
        t.empty
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "event sequence numbers are not 1..N");
}
