//! Fault suite against the journal formats (SPEC §10, §12): `kill -9` of the real daemons
//! inside compactions of their repo state (and of the event log's checkpoints), and inside
//! the migration of release-1 state dirs. `GITMIRROR_FAULTS=long` runs 10× the kills;
//! `GITMIRROR_SEED=<n>` replays the moments of a run (the seed is printed).
//!
//! Compaction is made frequent with `GITMIRROR_COMPACT_AT=1` (`common::journal::compact_at`):
//! both daemons then fold their journal into a new snapshot as soon as it outgrows the
//! snapshot. Most kills are *armed*: the test watches the state dir and kills as soon as a
//! compaction's temp file appears; the others land at random moments. Where each kill
//! landed is read from the files it left (a temp file: inside a snapshot or journal
//! write; a journal of an older generation than the snapshot: between the two renames).

use gitmirror_tests::daemons::SETTLE;
use gitmirror_tests::events::{Change, tally, triples};
use gitmirror_tests::git::repo_name;
use gitmirror_tests::{Fleet, GitDaemon, Rng, figure, ls_remote, rounds, tail, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const SUITE: &str = "formats";

/// Which daemon a loop kills.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Victim {
    Worker,
    Coordinator,
}

impl Victim {
    fn name(self) -> &'static str {
        match self {
            Victim::Worker => "worker",
            Victim::Coordinator => "coordinator",
        }
    }
}

/// Temp files of an interrupted whole-file write (`common::journal::write_whole`) of the
/// repo snapshot or a fresh journal in `dir`.
fn compaction_temps(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".repos.snapshot.tmp") || n.starts_with(".repos.journal.tmp"))
        .collect()
}

/// The generation in the first record (`Start`) of a `common::journal` record file: JSON
/// (worker) or postcard (coordinator, `Start` is variant 0, then a varint).
fn first_generation(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let body = &bytes[bytes.iter().position(|b| *b == b'\n')? + 1..];
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let payload = body.get(8..8 + len)?;
    if payload.first() == Some(&b'{') {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        return v["Start"]["generation"].as_u64();
    }
    if payload.first() != Some(&0) {
        return None;
    }
    let (mut n, mut shift) = (0u64, 0);
    for b in &payload[1..] {
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
        shift += 7;
    }
    None
}

/// Where a kill landed, read from what it left in `state_dir`.
#[derive(Debug, PartialEq)]
enum Landed {
    /// A snapshot or fresh journal was being written (its temp file is there).
    InsideWrite,
    /// The new snapshot was in place, the new journal not yet.
    BetweenRenames,
    Elsewhere,
}

fn landed(state_dir: &Path) -> Landed {
    if !compaction_temps(state_dir).is_empty() {
        return Landed::InsideWrite;
    }
    let snap = first_generation(&state_dir.join("repos.snapshot"));
    let jour = first_generation(&state_dir.join("repos.journal"));
    match (snap, jour) {
        (Some(s), Some(j)) if j < s => Landed::BetweenRenames,
        _ => Landed::Elsewhere,
    }
}

/// Kill `proc` as soon as a compaction temp file shows in `dir` (polled every 200 µs), or
/// at `deadline`. Returns whether the temp file was seen.
fn kill_armed(proc: &gitmirror_tests::Proc, dir: &Path, deadline: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !compaction_temps(dir).is_empty() {
            proc.kill();
            return true;
        }
        if start.elapsed() >= deadline {
            proc.kill();
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The kill -9 loop of [`spec_12_kill_9_during_worker_compaction_loses_nothing`] and
/// [`spec_12_kill_9_during_coordinator_compaction_loses_nothing`].
fn compaction_loop(victim: Victim) {
    let label = format!("compact-{}", victim.name());
    let mut rng = Rng::seeded(&format!("kill -9 during {} compaction", victim.name()));
    let seed = rng.seed;
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set(&label, 12);
    // Event segments of 2 KiB close every few events, so event checkpoints are written
    // (and killed) too.
    let mut fleet = Fleet::start_with(&label, &repos, 0, |yaml, _| {
        format!("{yaml}events: {{segment_bytes: 2K}}\n")
    });
    fleet.coord.proc.set_env("GITMIRROR_COMPACT_AT", "1");
    if victim == Victim::Coordinator {
        // Started by the fleet without the knob: once more with it.
        let status = fleet.coord.proc.terminate(Duration::from_secs(20));
        assert!(status.is_some_and(|s| s.success()), "coordinator stop: {status:?}");
        fleet.coord.start_ready();
    }
    let w = fleet.create_worker(1.0);
    fleet.workers[w].proc.set_env("GITMIRROR_COMPACT_AT", "1");
    fleet.workers[w].start();
    fleet.wait_alive(&[0], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();

    let mut made: Vec<Change> = Vec::new();
    for (id, url) in &repos {
        for (name, oid) in ls_remote(url) {
            made.push((id.clone(), name, oid));
        }
    }
    let ids: Vec<String> = repos.keys().cloned().collect();
    let mut pending: BTreeMap<String, Change> = BTreeMap::new();
    let confirm = |fleet: &Fleet, pending: &mut BTreeMap<String, Change>| {
        if let Ok(events) = fleet.coord.all_events() {
            let seen: BTreeSet<Change> = events.iter().flat_map(triples).collect();
            pending.retain(|_, c| !seen.contains(c));
        }
    };
    // Commit to 1–3 repos without a pending change, asking for a fetch now.
    let commit_some = |fleet: &Fleet,
                       rng: &mut Rng,
                       pending: &mut BTreeMap<String, Change>,
                       made: &mut Vec<Change>| {
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
            // 202, or 503 while a daemon restarts: either is fine.
            let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
        }
    };

    let (proc, state_dir) = match victim {
        Victim::Worker => (&fleet.workers[w].proc, fleet.workers[w].state_dir.clone()),
        Victim::Coordinator => (&fleet.coord.proc, fleet.coord.state_dir.clone()),
    };
    let initial = made.len();
    let kills = rounds(10, 100);
    let (mut armed, mut inside, mut between, mut torn, mut checkpoints) = (0, 0, 0, 0, 0);
    for round in 0..kills {
        confirm(&fleet, &mut pending);
        commit_some(&fleet, &mut rng, &mut pending, &mut made);
        // Two rounds in three wait for a compaction; the others kill at a random moment.
        let how = if rng.below(3) < 2 {
            armed += 1;
            let seen = kill_armed(proc, &state_dir, Duration::from_secs(8));
            format!("armed (temp file seen: {seen})")
        } else {
            std::thread::sleep(rng.millis(100, 2500));
            proc.kill();
            "at random".to_owned()
        };
        let at = landed(&state_dir);
        match at {
            Landed::InsideWrite => inside += 1,
            Landed::BetweenRenames => between += 1,
            Landed::Elsewhere => {}
        }
        let in_checkpoint = victim == Victim::Coordinator
            && std::fs::read_dir(state_dir.join("events")).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".checkpoint"))
            });
        checkpoints += usize::from(in_checkpoint);
        // Down for up to a second, with upstream changes meanwhile.
        commit_some(&fleet, &mut rng, &mut pending, &mut made);
        std::thread::sleep(rng.millis(0, 1000));
        let mark = proc.log_mark();
        // SPEC §10: the state loads after a kill at any moment.
        match victim {
            Victim::Worker => {
                proc.start();
                proc.wait_log(mark, "connected to the coordinator", Duration::from_secs(30));
            }
            Victim::Coordinator => fleet.coord.start_ready(),
        }
        let log = proc.log_since(mark);
        torn += usize::from(log.contains("dropping a torn record"));
        assert!(
            proc.exited().is_none(),
            "{} exited after restart {}:\n{}",
            victim.name(),
            round + 1,
            tail(&log, 20)
        );
        for id in &ids {
            assert!(
                fleet.workers[w].has_mirror(id),
                "mirror of {id} missing after kill {}",
                round + 1
            );
        }
        eprintln!(
            "round {}: kill {how}, landed {at:?}{}, {} changes made, {} not yet events",
            round + 1,
            if in_checkpoint {
                " (and inside an event checkpoint)"
            } else {
                ""
            },
            made.len() - initial,
            pending.len()
        );
    }

    // Quiet now: every change an event, then a barrier change per repo (a re-sent
    // duplicate would be in the log before it).
    wait_for(
        Duration::from_secs(90),
        "every change made seen as an event",
        || {
            confirm(&fleet, &mut pending);
            pending
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("not yet events: {pending:?}"))
        },
    );
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

    let events = fleet.coord.all_events().unwrap();
    let t = tally(&events, &made);
    let key = |k: &str| format!("{}_compaction.{k}", victim.name());
    figure(SUITE, &key("seed"), seed);
    figure(SUITE, &key("kills"), kills);
    figure(SUITE, &key("armed_kills"), armed);
    figure(SUITE, &key("kills_inside_a_snapshot_write"), inside);
    figure(SUITE, &key("kills_between_snapshot_and_journal"), between);
    if victim == Victim::Coordinator {
        figure(SUITE, &key("kills_inside_an_event_checkpoint"), checkpoints);
    }
    figure(SUITE, &key("torn_tails_dropped"), torn);
    figure(SUITE, &key("ref_changes_made"), made.len() - initial);
    figure(SUITE, &key("events"), events.len());
    figure(SUITE, &key("lost"), t.lost.len());
    figure(SUITE, &key("duplicated"), t.duplicated.len());
    assert!(t.lost.is_empty(), "changes never seen as events: {:#?}", t.lost);
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
    assert!(
        inside + between > 0,
        "no kill landed inside a compaction in {kills} kills ({armed} armed; seed {seed})"
    );
}

// SPEC §12 "State files" (a journal compacted into a versioned snapshot; a torn tail
// dropped with one warning), §10 (after `kill -9` at any moment the worker restarts into
// a consistent state), §8 (every change one event: outcomes are durable before they are
// sent, unacknowledged ones re-sent and deduplicated). The worker is killed `rounds(10,
// 100)` times, mostly inside a compaction of its `repos.snapshot`/`repos.journal`.
#[test]
fn spec_12_kill_9_during_worker_compaction_loses_nothing() {
    compaction_loop(Victim::Worker);
}

// SPEC §12 "State files", §10, §8: the same against the coordinator's repo state
// (`repos.snapshot`/`repos.journal`) and its event log's checkpoints.
#[test]
fn spec_12_kill_9_during_coordinator_compaction_loses_nothing() {
    compaction_loop(Victim::Coordinator);
}
