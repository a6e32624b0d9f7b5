//! Fault suite against the journal formats (SPEC §10, §12): `kill -9` of the real daemons
//! inside compactions of their repo state (and of the event log's checkpoints), and inside
//! the migration of release-1 state dirs. `GITMIRROR_FAULTS=long` runs 10× the kills;
//! `GITMIRROR_SEED=<n>` replays the moments of a run (the seed is printed).
//!
//! Compaction is made frequent with `GITMIRROR_COMPACT_AT=1` (`common::journal::compact_at`):
//! both daemons then fold their journal into a new snapshot as soon as it outgrows the
//! snapshot. Most kills are *armed*: the test watches the state dir and kills as soon as a
//! compaction's temp file appears; the others land at random moments. Where each kill
//! landed is read from the files it left (the snapshot's temp file: inside its write; the
//! journal's temp file, or a journal of an older generation than the snapshot: after the
//! snapshot's rename, before the new journal's). After the random kills the journal's
//! tail is torn as a kill in the middle of an append leaves it.
//!
//! Migrations: release-1 state dirs are generated big enough that migrating them takes
//! most of a second, and each daemon is killed inside it; the restarted result is
//! compared with a clean migration and with the old files. Last, the state dirs this
//! release writes (`tests/data/state-v3/`, checked in) and those of the release before
//! (`state-v2/`) must load with nothing lost.

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
    /// The new snapshot was being written (its temp file is there).
    InsideSnapshotWrite,
    /// The new snapshot was in place, the new journal not yet (being written, or not
    /// begun): the old journal is of an older generation.
    AfterSnapshotRename,
    Elsewhere,
}

fn temp_of(dir: &Path, file: &str) -> bool {
    compaction_temps(dir)
        .iter()
        .any(|n| n.starts_with(&format!(".{file}.tmp")))
}

fn landed(state_dir: &Path) -> Landed {
    if temp_of(state_dir, "repos.snapshot") {
        return Landed::InsideSnapshotWrite;
    }
    if temp_of(state_dir, "repos.journal") {
        return Landed::AfterSnapshotRename;
    }
    let snap = first_generation(&state_dir.join("repos.snapshot"));
    let jour = first_generation(&state_dir.join("repos.journal"));
    match (snap, jour) {
        (Some(s), Some(j)) if j < s => Landed::AfterSnapshotRename,
        _ => Landed::Elsewhere,
    }
}

/// Append what a crash in the middle of an append leaves: a frame header announcing 200
/// bytes and only 50 of them (`common::journal`'s framing).
fn tear_journal(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let mut torn = 200u32.to_le_bytes().to_vec();
    torn.extend(0xdead_beefu32.to_le_bytes());
    torn.extend([b'x'; 50]);
    f.write_all(&torn).unwrap();
}

/// Append half an event record, without its newline, to the newest event segment.
fn tear_event_segment(state_dir: &Path) {
    use std::io::Write;
    let dir = state_dir.join("events");
    let last = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    f.write_all(b"0badc0de {\"seq\":").unwrap();
}

/// Kill `proc` as soon as `seen()` (polled every 200 µs), or at `deadline`, calling
/// `nudge` every 500 ms meanwhile. Returns whether it was seen.
fn kill_armed(
    proc: &gitmirror_tests::Proc,
    seen: impl Fn() -> bool,
    nudge: impl Fn(),
    deadline: Duration,
) -> bool {
    let start = Instant::now();
    let mut nudged = start;
    loop {
        if seen() {
            proc.kill();
            return true;
        }
        if start.elapsed() >= deadline {
            proc.kill();
            return false;
        }
        if nudged.elapsed() >= Duration::from_millis(500) {
            nudge();
            nudged = Instant::now();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The event log's checkpoint being written (`gitmirrord/src/events/checkpoint.rs`).
fn checkpoint_temp(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("events")).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".checkpoint"))
    })
}

/// The kill -9 loop of [`spec_12_kill_9_during_worker_compaction_loses_nothing`] and
/// [`spec_12_kill_9_during_coordinator_compaction_loses_nothing`].
fn compaction_loop(victim: Victim) {
    let label = format!("compact-{}", victim.name());
    let mut rng = Rng::seeded(&format!("kill -9 during {} compaction", victim.name()));
    let seed = rng.seed;
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set(&label, 12);
    // Small event segments close every event or few, so event checkpoints are written
    // (and killed) too.
    let segment = if victim == Victim::Coordinator {
        "512"
    } else {
        "2K"
    };
    let mut fleet = Fleet::start_with(&label, &repos, 0, |yaml, _| {
        format!("{yaml}events: {{segment_bytes: {segment}}}\n")
    });
    fleet.coord.proc.set_env("GITMIRROR_COMPACT_AT", "1");
    if victim == Victim::Coordinator {
        // Started by the fleet without the knob: once more with it.
        let status = fleet.coord.proc.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "coordinator stop: {status:?}"
        );
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
    let planned = rounds(8, 80);
    let (mut armed, mut inside, mut between, mut torn, mut checkpoints) = (0, 0, 0, 0, 0);
    // Whether a kill armed on a compaction lands inside the snapshot's write or after its
    // rename is timing: the short form has one or two tries at each, so it goes on (a
    // dozen rounds at most) until both windows were hit.
    let mut round = 0;
    while round < planned || ((inside == 0 || between == 0) && round < planned + 12) {
        confirm(&fleet, &mut pending);
        commit_some(&fleet, &mut rng, &mut pending, &mut made);
        // Two rounds in three wait for a compaction: on its snapshot's temp file or on its
        // new journal's (then the snapshot is in place and the old journal stale); for the
        // coordinator, every other such round waits for an event checkpoint instead. The
        // third kills at a random moment and then tears the journal's tail as a kill in
        // the middle of an append would.
        let deadline = Duration::from_secs(20);
        // Fetches asked meanwhile keep outcomes (and so journal records) coming.
        let nudge = || {
            for id in &ids {
                let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
            }
        };
        // The snapshot's temp file is where a kill lands inside the write; the journal's
        // comes after the snapshot's rename. Past the planned rounds, the window missing.
        let snapshot = if round < planned {
            round % 2 == 0
        } else {
            inside == 0
        };
        let file = if snapshot {
            "repos.snapshot"
        } else {
            "repos.journal"
        };
        let phase = if round < planned { round % 3 } else { 0 };
        let mut tore = false;
        let how = if phase == 0 || (phase == 1 && victim == Victim::Worker) {
            armed += 1;
            let seen = kill_armed(proc, || temp_of(&state_dir, file), nudge, deadline);
            format!("armed on a compaction's {file} (seen: {seen})")
        } else if phase == 1 {
            armed += 1;
            // Checkpoints follow events, which fetches alone do not make: a shorter wait.
            let seen = kill_armed(proc, || checkpoint_temp(&state_dir), nudge, deadline / 2);
            format!("armed on an event checkpoint (seen: {seen})")
        } else {
            std::thread::sleep(rng.millis(100, 2500));
            proc.kill();
            tore = true;
            "at random, then the journal's tail torn".to_owned()
        };
        let at = landed(&state_dir);
        // A journal left stale by a compaction is replaced unread: only a live one is torn.
        tore &= at == Landed::Elsewhere;
        if tore {
            tear_journal(&state_dir.join("repos.journal"));
            if victim == Victim::Coordinator {
                tear_event_segment(&state_dir);
            }
        }
        match at {
            Landed::InsideSnapshotWrite => inside += 1,
            Landed::AfterSnapshotRename => between += 1,
            Landed::Elsewhere => {}
        }
        let in_checkpoint = victim == Victim::Coordinator && checkpoint_temp(&state_dir);
        checkpoints += usize::from(in_checkpoint);
        // Down for up to a second, with upstream changes meanwhile.
        commit_some(&fleet, &mut rng, &mut pending, &mut made);
        std::thread::sleep(rng.millis(0, 1000));
        let mark = proc.log_mark();
        // SPEC §10: the state loads after a kill at any moment.
        match victim {
            Victim::Worker => {
                proc.start();
                proc.wait_log(
                    mark,
                    "connected to the coordinator",
                    Duration::from_secs(30),
                );
            }
            Victim::Coordinator => fleet.coord.start_ready(),
        }
        let log = proc.log_since(mark);
        let warned = log.matches("dropping a torn record").count();
        if tore {
            // SPEC §12: a torn tail is dropped with one warning naming file and offset
            // (the coordinator: its repo journal and its event segment).
            let want = if victim == Victim::Coordinator { 2 } else { 1 };
            assert_eq!(
                warned,
                want,
                "torn tails after kill {}:\n{}",
                round + 1,
                tail(&log, 20)
            );
            torn += 1;
        }
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
        // Nothing published twice or out of order so far (what is not an event yet may
        // still be in flight: the end checks that nothing was lost).
        let events = fleet.coord.all_events().unwrap();
        let t = tally(&events, &made);
        assert!(
            t.duplicated.is_empty() && t.unexpected.is_empty() && t.empty.is_empty(),
            "after kill {} (seed {seed}): {t:?}",
            round + 1
        );
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "after kill {}",
            round + 1
        );
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
        round += 1;
    }
    let kills = round;

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
    figure(SUITE, &key("kills_after_the_snapshot_rename"), between);
    if victim == Victim::Coordinator {
        figure(SUITE, &key("kills_inside_an_event_checkpoint"), checkpoints);
    }
    figure(SUITE, &key("torn_tails_injected_and_dropped"), torn);
    figure(SUITE, &key("ref_changes_made"), made.len() - initial);
    figure(SUITE, &key("events"), events.len());
    figure(SUITE, &key("lost"), t.lost.len());
    figure(SUITE, &key("duplicated"), t.duplicated.len());
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
    assert!(
        inside > 0 && between > 0,
        "kills inside a snapshot write: {inside}, after its rename: {between} (of {kills}, \
         {armed} armed; seed {seed}); both windows must be hit"
    );
    // A checkpoint is written in milliseconds: an armed kill lands inside about every
    // other time, so only the long form's dozens of tries must show one.
    if victim == Victim::Coordinator && gitmirror_tests::long_form() {
        assert!(
            checkpoints > 0,
            "no kill landed inside an event checkpoint (seed {seed})"
        );
    }
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

/// Release 1's worker state (`repos.json` v1, as `gitmirror-worker/tests/data/state-v1/`)
/// with `n` repos of 3 refs and 3 outcomes in the outbox, all due far in
/// the future and on upstreams that refuse connections (nothing fetches during the test).
fn worker_v1_state(state_dir: &Path, n: usize) -> Vec<u8> {
    use serde_json::json;
    std::fs::create_dir_all(state_dir).unwrap();
    std::fs::write(
        state_dir.join("identity.json"),
        "gitmirror-state worker-identity v1\n{\"uuid\":\"6f1c2a7e-3b0d-4c55-9a8e-1d2f3c4b5a69\",\"worker_id\":2}\n",
    )
    .unwrap();
    let oid = |i: usize, k: usize| format!("{:040x}", (i as u128) * 7 + k as u128 + 1);
    let id = |i: usize| format!("m/mig{i}/mig{i}");
    let mut repos = serde_json::Map::new();
    for i in 0..n {
        repos.insert(
            id(i),
            json!({
                "url": format!("git://127.0.0.1:9/mig{i}"), "mirrored": true,
                "refs": {"refs/heads/main": oid(i, 0), "refs/heads/dev": oid(i, 1),
                         "refs/tags/v1": oid(i, 2)},
                "announced": true, "last_fetch_ms": 1_764_633_600_000i64,
                "last_success_ms": 1_764_633_600_000i64, "failures": 0, "failing": null,
                "next_due_ms": 4_000_000_000_000i64, "waiting_reported": false,
                "last_change_ms": 1_764_547_200_000i64, "last_maintenance_ms": null,
                "last_verify_ms": null
            }),
        );
    }
    let outbox: Vec<serde_json::Value> = (0..3)
        .map(|k| {
            json!({
                "report_id": 41 + k, "repo": id(k), "url": format!("git://127.0.0.1:9/mig{k}"),
                "finished_ms": 1_764_633_600_000i64, "duration_ms": 812, "result": "Fetched",
                "changes": [{"name": "refs/heads/main", "old": null, "new": oid(k, 0)}],
                "ref_count": 3, "refs_digest": 1, "next_due_ms": 4_000_000_000_000i64
            })
        })
        .collect();
    let body = json!({"repos": repos, "outbox": outbox, "next_report_id": 44,
                      "disposals": {}});
    let mut bytes = b"gitmirror-state worker-repos v1\n".to_vec();
    bytes.extend(serde_json::to_vec(&body).unwrap());
    bytes.push(b'\n');
    std::fs::write(state_dir.join("repos.json"), &bytes).unwrap();
    bytes
}

/// Where a kill during a migration landed, from the files it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum MigrationStage {
    /// Nothing written yet (starting, or reading the old file).
    NothingWritten,
    /// A new file was being written (its temp file is there).
    Writing,
    /// The new files in place, the old one not yet renamed to `.v1.bak`.
    BeforeBackup,
    /// The migration was complete.
    Done,
}

/// What a worker state holds from release 1's file: per repo its URL and the refs last
/// reported, the outcomes queued then (report ids below 44). A started
/// worker goes on to try its repos (whose upstreams refuse), which changes schedules and
/// queues new outcomes; those are not the migration's doing.
#[derive(PartialEq)]
struct FromV1 {
    repos: BTreeMap<String, String>,
    refs: BTreeMap<String, BTreeMap<String, String>>,
    outbox: Vec<String>,
    next_report_id_kept: bool,
}

fn from_v1(s: &gitmirror_worker::store::Saved) -> FromV1 {
    FromV1 {
        repos: s
            .state
            .repos
            .iter()
            .map(|(id, r)| (id.clone(), r.url.clone()))
            .collect(),
        refs: s
            .refs
            .iter()
            .map(|(id, r)| {
                let r = r
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (id.clone(), r)
            })
            .collect(),
        outbox: s
            .state
            .outbox
            .values()
            .filter(|o| o.report_id < 44)
            .map(|o| format!("{o:?}"))
            .collect(),
        next_report_id_kept: s.state.next_report_id >= 44,
    }
}

/// Where `a` and `b` differ (the first few entries), for a failure message.
fn diff(a: &FromV1, b: &FromV1) -> String {
    let mut out = Vec::new();
    let first = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| {
        x.iter()
            .filter(|(k, v)| y.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v:?} vs {:?}", y.get(k)))
            .chain(
                y.keys()
                    .filter(|k| !x.contains_key(*k))
                    .map(|k| format!("{k}: only in the second")),
            )
            .take(3)
            .collect::<Vec<_>>()
    };
    out.extend(first(&a.repos, &b.repos));
    let refs = |m: &BTreeMap<String, BTreeMap<String, String>>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.clone(), format!("{v:?}")))
            .collect()
    };
    out.extend(first(&refs(&a.refs), &refs(&b.refs)));
    if a.outbox != b.outbox {
        out.push(format!("outbox {:?} vs {:?}", a.outbox, b.outbox));
    }
    if a.next_report_id_kept != b.next_report_id_kept {
        out.push("next report id went back".into());
    }
    out.join("\n")
}

/// A worker `name` under `root` (not started).
fn worker_on(root: &Path, name: &str, coord_udp: u16, token: &str) -> gitmirror_tests::Worker {
    gitmirror_tests::Worker::new(&root.join(name), name, coord_udp, token, 1.0)
}

// SPEC §12 "State files" (a daemon upgraded over older state files migrates them at
// start, keeping the old file as `<name>.v<N>.bak`), §10 (after `kill -9` at any moment
// it restarts into a consistent state). A release-1 worker state of 5,000 repos is
// migrated by the real worker, killed at moments inside the migration (armed on its temp
// file, on the new snapshot being in place, and at random within the time a clean
// migration takes), restarted; its state must then equal a clean migration's, which must
// hold every repo, ref and outcome of the old file; the backup must be the old
// file byte for byte, and a later start must not migrate again. (Compared: what came
// from the old file, see [`from_v1`].)
#[test]
fn spec_12_kill_9_during_worker_migration_loses_nothing() {
    use gitmirror_worker::store::Saved;
    let mut rng = Rng::seeded("kill -9 during worker migration");
    let root = gitmirror_tests::TestDir::new("migrate-worker");
    let n = 5_000;
    // A coordinator that is never started: its join token, and a port nobody answers.
    let index = gitmirror_tests::Index::create(&root.path().join("index"));
    index.put_url("x/xx/xx", "git://127.0.0.1:9/xx");
    index.commit("one entry");
    let coord = gitmirror_tests::Coordinator::new(&root.path().join("coordinator"), index.path());
    let token = coord.join_token();

    // What the old file holds, read as release 2 reads it, before any start.
    let v1_dir = root.path().join("v1");
    let v1_bytes = worker_v1_state(&v1_dir, n);
    let old = Saved::load(&v1_dir).unwrap();
    assert_eq!(old.state.repos.len(), n);

    let start_migrated = |w: &gitmirror_tests::Worker| -> Duration {
        let mark = w.proc.log_mark();
        let t = Instant::now();
        w.start();
        w.proc.wait_log(
            mark,
            "connecting to the coordinator",
            Duration::from_secs(60),
        );
        t.elapsed()
    };
    let stop = |w: &gitmirror_tests::Worker| {
        let status = w.proc.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "worker stop: {status:?}"
        );
    };
    let bak = |w: &gitmirror_tests::Worker| w.state_dir.join("repos.json.v1.bak");

    // A clean migration: the reference.
    let clean_w = worker_on(root.path(), "clean", coord.udp_port, &token);
    worker_v1_state(&clean_w.state_dir, n);
    let took = start_migrated(&clean_w);
    stop(&clean_w);
    let clean = Saved::load(&clean_w.state_dir).unwrap();
    let (clean, old) = (from_v1(&clean), from_v1(&old));
    assert!(
        clean == old,
        "a clean migration lost or changed repos, refs or outcomes:\n{}",
        diff(&clean, &old)
    );
    assert_eq!(std::fs::read(bak(&clean_w)).unwrap(), v1_bytes);

    let kills = rounds(4, 40);
    let mut stages: BTreeMap<MigrationStage, usize> = BTreeMap::new();
    for round in 0..kills {
        let w = worker_on(root.path(), &format!("k{round}"), coord.udp_port, &token);
        worker_v1_state(&w.state_dir, n);
        let snap = w.state_dir.join("repos.snapshot");
        let v1 = w.state_dir.join("repos.json");
        w.start();
        // Armed on the snapshot's temp file, armed on the snapshot in place before the
        // backup, or at a random moment of a clean migration's time.
        let how = match round % 3 {
            0 => {
                kill_armed(
                    &w.proc,
                    || !compaction_temps(&w.state_dir).is_empty(),
                    || {},
                    took * 3,
                );
                "armed on the temp file"
            }
            1 => {
                kill_armed(&w.proc, || snap.exists() && v1.exists(), || {}, took * 3);
                "armed on the snapshot in place"
            }
            _ => {
                std::thread::sleep(rng.millis(0, took.as_millis() as u64));
                w.kill();
                "at random"
            }
        };
        let stage = if !compaction_temps(&w.state_dir).is_empty() {
            MigrationStage::Writing
        } else if !v1.exists() {
            MigrationStage::Done
        } else if snap.exists() {
            MigrationStage::BeforeBackup
        } else {
            MigrationStage::NothingWritten
        };
        *stages.entry(stage).or_default() += 1;
        eprintln!("round {}: kill {how}, landed {stage:?}", round + 1);
        // Restarted, it completes the migration; stopped, its state is the clean one.
        start_migrated(&w);
        stop(&w);
        let got = from_v1(&Saved::load(&w.state_dir).unwrap());
        assert!(
            got == clean,
            "round {}: state differs from a clean migration:\n{}",
            round + 1,
            diff(&got, &clean)
        );
        assert_eq!(std::fs::read(bak(&w)).unwrap(), v1_bytes, "backup changed");
        assert!(!v1.exists());
        // SPEC §12: migrated once; a later start does not migrate again.
        let mark = w.proc.log_mark();
        start_migrated(&w);
        let log = w.proc.log_since(mark);
        stop(&w);
        assert!(
            !log.contains("migrated the worker state") && !log.contains("kept the v1 state"),
            "a later start migrated again:\n{log}"
        );
        assert!(from_v1(&Saved::load(&w.state_dir).unwrap()) == clean);
        std::fs::remove_dir_all(&w.dir).unwrap();
    }
    let inside = stages.get(&MigrationStage::Writing).copied().unwrap_or(0)
        + stages
            .get(&MigrationStage::BeforeBackup)
            .copied()
            .unwrap_or(0);
    figure(SUITE, "worker_migration.seed", rng.seed);
    figure(SUITE, "worker_migration.repos", n);
    figure(SUITE, "worker_migration.clean_ms", took.as_millis());
    figure(SUITE, "worker_migration.kills", kills);
    figure(SUITE, "worker_migration.kills_inside", inside);
    for (stage, count) in &stages {
        figure(SUITE, &format!("worker_migration.landed.{stage:?}"), count);
    }
    figure(SUITE, "worker_migration.lost", 0);
    assert!(
        inside > 0,
        "no kill landed inside the migration: {stages:?} (seed {})",
        rng.seed
    );
}

/// Release 1's coordinator state (as `gitmirrord/tests/data/state-v1/` and `index-v1/`): a
/// registry with one worker, `repos.json` v1 with the repos of `ids`, `events.log` v1 with
/// `events` events over them (a `cloned` event for each, then `updated` ones, each moving
/// `main` on), and `index/applied.json` v1 for the index at `index`. Returns the bytes of
/// `repos.json`, `events.log` and `applied.json`.
fn coordinator_v1_state(
    state_dir: &Path,
    ids: &[String],
    events: usize,
    index: &Path,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use serde_json::json;
    std::fs::create_dir_all(state_dir).unwrap();
    let uuid = "00000000-0000-0000-0000-00000000002a";
    let registry = json!({"workers": [{"uuid": uuid, "id": 0, "name": "mirror1", "weight": 1.0,
        "state": "alive", "state_since_ms": 1_800_000_000_000i64, "addr": "192.0.2.10:40000",
        "last_seen_ms": 1_800_000_000_000i64, "software": "gitmirror-worker 0.1.0",
        "serve_url_base": "git://mirror1.example.org/", "disk_free_bytes": 1_000_000,
        "disk_total_bytes": 2_000_000, "disk_low": false, "status": "idle", "next_seq": 12,
        "acked_seq": 11, "last_report_id": events}]});
    std::fs::write(
        state_dir.join("registry.json"),
        format!("gitmirror-state registry v1\n{registry}\n"),
    )
    .unwrap();
    let mut repos = serde_json::Map::new();
    for (i, id) in ids.iter().enumerate() {
        repos.insert(
            id.clone(),
            json!({"owner": uuid, "holders": [{"uuid": uuid, "mirrored": true}],
            "status": {"by": uuid, "last_fetch_ms": 1_800_000_000_000i64,
                "last_success_ms": 1_800_000_000_000i64, "last_change_ms": 1_799_999_000_000i64,
                "next_due_ms": 1_800_000_060_000i64, "fetches": 3 + i, "failures": 1,
                "last_error": {"class": "transient", "message": "connection reset",
                    "time_ms": 1_799_999_500_000i64},
                "refs": 2, "last_result": "ok"},
            "state": "mirrored"}),
        );
    }
    let repos = format!("gitmirror-state repos v1\n{}\n", json!({ "repos": repos })).into_bytes();
    std::fs::write(state_dir.join("repos.json"), &repos).unwrap();
    let mut log = b"gitmirror-state events v1\n".to_vec();
    let mut tip: BTreeMap<&str, String> = BTreeMap::new();
    for seq in 1..=events {
        let id = &ids[(seq - 1) % ids.len()];
        let new = format!("{seq:040x}");
        let (kind, refs) = match tip.insert(id, new.clone()) {
            None => (
                "cloned",
                json!([{"name": "refs/heads/main", "old": null, "new": new},
                       {"name": "refs/tags/v1", "old": null, "new": new}]),
            ),
            Some(old) => (
                "updated",
                json!([{"name": "refs/heads/main", "old": old, "new": new}]),
            ),
        };
        let line = json!({"seq": seq, "time": "2027-01-15T08:00:00Z", "repo": id,
            "url": format!("git://127.0.0.1:9/{}", repo_name(id)), "worker": 0, "kind": kind,
            "refs": refs, "src": uuid, "report": seq});
        log.extend(line.to_string().into_bytes());
        log.push(b'\n');
    }
    std::fs::write(state_dir.join("events.log"), &log).unwrap();
    // The index's applied entries as release 1 kept them (no commit: read afresh).
    let entries: serde_json::Map<String, serde_json::Value> = ids
        .iter()
        .map(|id| {
            let url = format!("git://127.0.0.1:9/{}", repo_name(id));
            let e = json!({"id": id, "url": url, "index": "test", "metadata": {}});
            (id.clone(), e)
        })
        .collect();
    let applied = json!({"indexes": {"test": {"url": index.to_str().unwrap(), "commit": null,
        "reader": "layout v1, allow_file_urls=false", "entries": entries, "rejected": [],
        "held": {"commit": null, "removals": [], "total": 0}}}});
    let applied = format!("gitmirror-state index v1\n{applied}\n").into_bytes();
    std::fs::create_dir_all(state_dir.join("index")).unwrap();
    std::fs::write(state_dir.join("index/applied.json"), &applied).unwrap();
    (repos, log, applied)
}

/// What a coordinator shows of its migrated state: every event, and per repo the status
/// fields that came from `repos.json` (the owner's liveness, which changes with time
/// while its worker stays away, is left out).
fn coordinator_view(
    c: &gitmirror_tests::Coordinator,
    ids: &[String],
) -> (Vec<serde_json::Value>, Vec<String>) {
    let events = c.all_events().unwrap();
    let repos = ids
        .iter()
        .map(|id| {
            // `/healthz` answers before the index is read: wait for the repo.
            let r = wait_for(Duration::from_secs(30), "the repo in the index", || {
                c.repo(id)
            });
            let keep = [
                "id",
                "url",
                "fetches",
                "failures",
                "last_error",
                "refs",
                "last_fetch",
                "last_success",
                "last_change",
            ];
            keep.iter()
                .map(|k| format!("{k}={}", r[*k]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (events, repos)
}

// SPEC §12 "State files" and "Event retention" (the event log kept in segments with a
// checkpoint; older state files migrated at start and kept as `<name>.v<N>.bak`), §10.
// A release-1 coordinator state dir (registry, `repos.json` v1 of 20 repos, `events.log`
// v1 of 20,000 events, the index's `applied.json` v1) is migrated by the real coordinator, killed at moments inside the
// migration (armed on `events.migrating/`, on the repo snapshot's temp file, on the
// segments in place before the backup, and at random within a clean migration's time),
// restarted: every event (the same as a clean migration's and as the old log's), every
// repo's status, the three `.v1.bak` files byte for byte, and no second migration.
#[test]
fn spec_12_kill_9_during_coordinator_migration_loses_nothing() {
    let mut rng = Rng::seeded("kill -9 during coordinator migration");
    let root = gitmirror_tests::TestDir::new("migrate-coordinator");
    let ids: Vec<String> = (0..20).map(|i| format!("m/mig/mig-{i:02}")).collect();
    let n_events = 20_000;
    let index = gitmirror_tests::Index::create(&root.path().join("index"));
    for id in &ids {
        index.put_url(id, &format!("git://127.0.0.1:9/{}", repo_name(id)));
    }
    index.commit("the migrated repos");
    // The registry's worker never comes back; a long `dead_after` keeps it suspect (not
    // dead, which would reassign its repos and reset their counters) on a slow machine.
    let coordinator = |name: &str| {
        gitmirror_tests::Coordinator::with_yaml(&root.path().join(name), |udp, http, state| {
            gitmirror_tests::Coordinator::standard_yaml(udp, http, state, index.path())
                .replace("dead_after: 4s", "dead_after: 1h")
        })
    };
    let start_ready = |c: &gitmirror_tests::Coordinator| -> Duration {
        let t = Instant::now();
        c.start_ready();
        t.elapsed()
    };
    let stop = |c: &gitmirror_tests::Coordinator| {
        let status = c.proc.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "coordinator stop: {status:?}"
        );
    };

    // A clean migration: the reference, checked against the old files.
    let clean_c = coordinator("clean");
    let (repos_v1, events_v1, applied_v1) =
        coordinator_v1_state(&clean_c.state_dir, &ids, n_events, index.path());
    let took = start_ready(&clean_c);
    let clean = coordinator_view(&clean_c, &ids);
    stop(&clean_c);
    assert_eq!(clean.0.len(), n_events, "events lost by a clean migration");
    for (e, line) in clean.0.iter().zip(events_v1.split(|b| *b == b'\n').skip(1)) {
        let old: serde_json::Value = serde_json::from_slice(line).unwrap();
        for k in ["seq", "repo", "kind", "refs", "url", "time"] {
            assert_eq!(
                e[k], old[k],
                "event {} differs in {k} from the old log",
                old["seq"]
            );
        }
    }
    for r in &clean.1 {
        assert!(
            r.contains("fetches=") && r.contains("\"connection reset\""),
            "{r}"
        );
    }

    let kills = rounds(4, 40);
    let mut stages: BTreeMap<MigrationStage, usize> = BTreeMap::new();
    for round in 0..kills {
        let c = coordinator(&format!("k{round}"));
        coordinator_v1_state(&c.state_dir, &ids, n_events, index.path());
        let s = c.state_dir.clone();
        let work = s.join("events.migrating");
        let (segments, log_v1) = (s.join("events"), s.join("events.log"));
        c.start();
        let how = match round % 4 {
            0 => {
                // Some way into the conversion of the event log.
                kill_armed(&c.proc, || work.exists(), || {}, took * 3);
                std::thread::sleep(rng.millis(0, took.as_millis() as u64 / 2));
                c.kill();
                "inside the event log's conversion"
            }
            1 => {
                kill_armed(
                    &c.proc,
                    || !compaction_temps(&s).is_empty(),
                    || {},
                    took * 3,
                );
                "armed on the repo snapshot's temp file"
            }
            2 => {
                kill_armed(
                    &c.proc,
                    || segments.exists() && log_v1.exists(),
                    || {},
                    took * 3,
                );
                "armed on the segments in place before the backup"
            }
            _ => {
                std::thread::sleep(rng.millis(0, took.as_millis() as u64));
                c.kill();
                "at random"
            }
        };
        let stage = if work.exists() || !compaction_temps(&s).is_empty() {
            MigrationStage::Writing
        } else if !log_v1.exists() && !s.join("repos.json").exists() {
            MigrationStage::Done
        } else if segments.exists() || s.join("repos.snapshot").exists() {
            MigrationStage::BeforeBackup
        } else {
            MigrationStage::NothingWritten
        };
        *stages.entry(stage).or_default() += 1;
        eprintln!("round {}: kill {how}, landed {stage:?}", round + 1);
        start_ready(&c);
        let got = coordinator_view(&c, &ids);
        stop(&c);
        assert!(
            got.0 == clean.0,
            "round {}: events differ from a clean migration",
            round + 1
        );
        assert_eq!(
            got.1,
            clean.1,
            "round {}: repos differ from a clean migration",
            round + 1
        );
        assert_eq!(
            std::fs::read(s.join("repos.json.v1.bak")).unwrap(),
            repos_v1
        );
        assert_eq!(
            std::fs::read(s.join("events.log.v1.bak")).unwrap(),
            events_v1
        );
        assert_eq!(
            std::fs::read(s.join("index/applied.json.v1.bak")).unwrap(),
            applied_v1
        );
        assert!(s.join("index/applied.state").exists() && !s.join("index/applied.json").exists());
        assert!(!work.exists() && !log_v1.exists() && !s.join("repos.json").exists());
        // SPEC §12: migrated once; a later start does not migrate again.
        let mark = c.proc.log_mark();
        start_ready(&c);
        let log = c.proc.log_since(mark);
        assert!(coordinator_view(&c, &ids).0 == clean.0);
        stop(&c);
        assert!(
            !log.contains("migrated"),
            "a later start migrated again:\n{log}"
        );
        std::fs::remove_dir_all(&c.dir).unwrap();
    }
    let inside = stages.get(&MigrationStage::Writing).copied().unwrap_or(0)
        + stages
            .get(&MigrationStage::BeforeBackup)
            .copied()
            .unwrap_or(0);
    figure(SUITE, "coordinator_migration.seed", rng.seed);
    figure(SUITE, "coordinator_migration.events", n_events);
    figure(
        SUITE,
        "coordinator_migration.clean_start_ms",
        took.as_millis(),
    );
    figure(SUITE, "coordinator_migration.kills", kills);
    figure(SUITE, "coordinator_migration.kills_inside", inside);
    for (stage, count) in &stages {
        figure(
            SUITE,
            &format!("coordinator_migration.landed.{stage:?}"),
            count,
        );
    }
    figure(SUITE, "coordinator_migration.lost", 0);
    figure(SUITE, "coordinator_migration.duplicated", 0);
    assert!(
        inside > 0,
        "no kill landed inside the migration: {stages:?} (seed {})",
        rng.seed
    );
}

/// The state dirs a release's daemons wrote (`tests/data/state-v<N>/`, made by
/// [`write_release_state_fixture`]): `coordinator/` and `worker/` state dirs, and the
/// events and repo statuses the coordinator showed when they were written.
fn fixture_dir(generation: u32) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/state-v{generation}"))
}

/// The state dir generation this release writes: v3 since the index state is compressed
/// (v2 installs migrate it, docs/design.md "Index read at scale").
const CURRENT_STATE: u32 = 3;

/// Upstream commit times of the fixture (2027-01-15): fixed, so its object ids are too.
const FIXTURE_TIME: u64 = 1_800_000_000;

/// The fixture's upstreams, served by `daemon` (`advanced`: with the change the fixture's
/// run made after the first clones). Repo id → URL.
fn fixture_upstreams(daemon: &GitDaemon, advanced: bool) -> BTreeMap<String, String> {
    let mut repos = BTreeMap::new();
    for i in 0..3 {
        let name = format!("fixture-r{i:02}");
        let path = daemon.repo_path(&name);
        gitmirror_tests::git::create_fixed_repo(&path, &name, FIXTURE_TIME);
        if advanced {
            fixture_change(&path, &name);
        }
        repos.insert(gitmirror_tests::git::repo_id(&name), daemon.url(&name));
    }
    repos
}

fn fixture_change(path: &Path, name: &str) -> String {
    let msg = format!("fixture change of {name}");
    gitmirror_tests::git::commit_fixed(path, "master", &msg, FIXTURE_TIME + 60)
}

/// The state files of each daemon in the fixture (the coordinator's identity included, so
/// the join token and worker registration carry over; the index clone is not state).
const COORDINATOR_FILES: &[&str] = &[
    "ca-cert.pem",
    "ca-key.pem",
    "registry.json",
    "repos.snapshot",
    "repos.journal",
    "index/applied.state",
    "tls-key.pem",
    "tls-cert.pem",
    "join-secret",
    "quic-reset-key",
];
const WORKER_FILES: &[&str] = &[
    "identity.json",
    "repos.snapshot",
    "repos.journal",
    "fleet-ca.pem",
    "worker-cert.pem",
    "worker-key.pem",
];
/// Fields of `GET /api/repos/{id}` that a restart must keep (before any worker reports).
const KEPT_REPO_FIELDS: &[&str] = &["id", "refs", "fetches", "last_success", "last_change"];

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (f, t) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&f, &t);
        } else {
            std::fs::copy(&f, &t).unwrap_or_else(|err| panic!("copy {}: {err}", f.display()));
        }
    }
}

/// Writes `tests/data/state-v<CURRENT_STATE>/` with the daemons of this release: a coordinator and one
/// worker (compacting often) mirror three upstreams with fixed object ids, then each
/// upstream changes once;
/// both stop (SIGTERM) and their state files are copied. Run by hand, once per release
/// whose formats change (docs/design.md "Fault suite: compaction and migration"):
/// `cargo nextest run -p gitmirror-tests --test faults_formats --run-ignored only`.
#[test]
#[ignore = "writes the checked-in fixture; run by hand"]
fn write_release_state_fixture() {
    let daemon = GitDaemon::start();
    let repos = fixture_upstreams(&daemon, false);
    // Small segments: the fixture holds closed segments and a checkpoint.
    let mut fleet = Fleet::start_with("fixture", &repos, 0, |yaml, _| {
        format!("{yaml}events: {{segment_bytes: 1K}}\n")
    });
    // Compactions as soon as a journal outgrows its snapshot: the fixture holds snapshots
    // with repos in them and journals with records after them.
    fleet.coord.proc.set_env("GITMIRROR_COMPACT_AT", "1");
    assert!(
        fleet
            .coord
            .proc
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    fleet.coord.start_ready();
    let w = fleet.create_worker(1.0);
    fleet.workers[w].proc.set_env("GITMIRROR_COMPACT_AT", "1");
    fleet.workers[w].start();
    fleet.wait_alive(&[0], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    let mut want = Vec::new();
    for id in repos.keys() {
        let name = repo_name(id);
        want.push((id.clone(), fixture_change(&daemon.repo_path(name), name)));
        let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
    }
    let events = wait_for(Duration::from_secs(60), "the changes as events", || {
        let events = fleet.coord.all_events()?;
        let seen: BTreeSet<(String, String)> = events
            .iter()
            .flat_map(triples)
            .map(|(repo, _, new)| (repo, new))
            .collect();
        want.iter()
            .all(|c| seen.contains(c))
            .then_some(events)
            .ok_or_else(|| "not yet".to_owned())
    });
    // The worker reports every fetch; stopped first, its last outcomes are in.
    let w = &fleet.workers[0];
    assert!(
        w.proc
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    let statuses: Vec<serde_json::Value> = repos
        .keys()
        .map(|id| fleet.coord.repo(id).unwrap())
        .collect();
    let events_now = fleet.coord.all_events().unwrap();
    assert_eq!(
        events_now.len(),
        events.len(),
        "events while stopping the worker"
    );
    assert!(
        fleet
            .coord
            .proc
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );

    let out = fixture_dir(CURRENT_STATE);
    let _ = std::fs::remove_dir_all(&out);
    for (from, files, to) in [
        (
            &fleet.coord.state_dir,
            COORDINATOR_FILES,
            out.join("coordinator"),
        ),
        (&w.state_dir, WORKER_FILES, out.join("worker")),
    ] {
        for f in files {
            let t = to.join(f);
            std::fs::create_dir_all(t.parent().unwrap()).unwrap();
            std::fs::copy(from.join(f), &t).unwrap_or_else(|e| panic!("copy {f}: {e}"));
        }
    }
    copy_tree(
        &fleet.coord.state_dir.join("events"),
        &out.join("coordinator/events"),
    );
    std::fs::write(out.join("expected-events.json"), pretty(&events_now)).unwrap();
    std::fs::write(out.join("expected-repos.json"), pretty(&statuses)).unwrap();
    eprintln!("wrote {} ({} events)", out.display(), events_now.len());
}

/// Pretty JSON, newline-terminated.
fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

/// `Ok` when `got` are exactly the `written` events: the same number, and every field each
/// had when written the same (a later release may add fields to the event JSON).
fn kept_events(got: &[serde_json::Value], written: &[serde_json::Value]) -> Result<(), String> {
    if got.len() != written.len() {
        return Err(format!("{} events, {} written", got.len(), written.len()));
    }
    for (g, w) in got.iter().zip(written) {
        for (k, v) in w.as_object().into_iter().flatten() {
            if &g[k] != v {
                return Err(format!("event {}: {k} is {}, was {v}", w["seq"], g[k]));
            }
        }
    }
    Ok(())
}

// SPEC §10 (state begins with a format version and loads after an upgrade), §12 (a
// daemon upgraded over older state files migrates them; start-up loads the checkpoint and
// the segments after it), §8 (no event lost or repeated). The state dirs that this
// release's daemons wrote (`tests/data/state-v3/`, checked in) are loaded by the daemons
// being tested: the coordinator shows every event and repo status as it did; the worker
// comes back as the same worker, re-clones its mirrors (the fixture has none) without an
// event (the refs are the published ones), and one more change per repo is exactly one
// new event, numbered on from the fixture's. A future format bump must keep this passing
// (docs/design.md "Fault suite: compaction and migration").
#[test]
fn spec_12_state_dir_of_the_current_release_loads_with_nothing_lost() {
    load_release_state(CURRENT_STATE, &[]);
}

// The same for the state dirs of the release before (`tests/data/state-v2/`, what
// installed fleets have on disk): the files whose format changed since migrate, each
// kept beside as `.v2.bak`, and nothing else does.
#[test]
fn spec_12_state_dir_of_the_previous_release_migrates_with_nothing_lost() {
    load_release_state(2, &["index/applied.state"]);
}

/// Start today's daemons on the fixture of `generation`; `migrated`: the coordinator's
/// files that must migrate (each kept as `<file>.v<generation>.bak`).
fn load_release_state(generation: u32, migrated: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    let fixture = fixture_dir(generation);
    let read_json = |name: &str| -> Vec<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(fixture.join(name)).unwrap()).unwrap()
    };
    let (expected_events, expected_repos) = (
        read_json("expected-events.json"),
        read_json("expected-repos.json"),
    );
    let daemon = GitDaemon::start();
    let repos = fixture_upstreams(&daemon, true);
    let root = gitmirror_tests::TestDir::new("release-state");
    let index = gitmirror_tests::Index::create(&root.path().join("index"));
    for (id, url) in &repos {
        index.put_url(id, url);
    }
    index.commit("the fixture's repos");
    // A long `dead_after`: the fixture's worker stays suspect (its repos and their
    // counters where they were) until it connects, however slow the machine.
    let coord = gitmirror_tests::Coordinator::with_yaml(
        &root.path().join("coordinator"),
        |udp, http, st| {
            gitmirror_tests::Coordinator::standard_yaml(udp, http, st, index.path())
                .replace("dead_after: 4s", "dead_after: 1h")
        },
    );
    copy_tree(&fixture.join("coordinator"), &coord.state_dir);
    // A checkout does not keep modes; the daemons keep secrets 0600.
    // (`ca-key.pem` from generation 3 on: the state-v2 fixture predates enrollment.)
    for f in ["tls-key.pem", "join-secret", "quic-reset-key", "ca-key.pem"] {
        let p = coord.state_dir.join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    coord.start_ready();
    // The fixture's repos were placed by rendezvous hashing, which its registry does not
    // name: the upgraded coordinator keeps and records it, so no repo moves (design.md
    // "Owner function: points on a circle").
    let registry = std::fs::read_to_string(coord.state_dir.join("registry.json")).unwrap();
    assert!(
        registry.contains("\"hashing\":\"rendezvous\""),
        "the owner function is not kept: {registry}"
    );
    kept_events(&coord.all_events().unwrap(), &expected_events)
        .unwrap_or_else(|e| panic!("the events differ from what was written: {e}"));
    for want in &expected_repos {
        let id = want["id"].as_str().unwrap();
        // `/healthz` answers before the index is read: wait for the repo.
        let got = wait_for(Duration::from_secs(30), "the repo in the index", || {
            coord.repo(id)
        });
        for k in KEPT_REPO_FIELDS {
            assert_eq!(got[*k], want[*k], "{id}: {k} differs from what was written");
        }
    }
    let token = coord.join_token();
    let w =
        gitmirror_tests::Worker::new(&root.path().join("w0"), "w0", coord.udp_port, &token, 1.0);
    copy_tree(&fixture.join("worker"), &w.state_dir);
    for f in ["worker-key.pem", "worker-cert.pem"] {
        let p = w.state_dir.join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let mark = w.proc.log_mark();
    w.start();
    w.proc.wait_log(
        mark,
        "connected to the coordinator",
        Duration::from_secs(30),
    );
    let workers = coord.workers().unwrap();
    assert_eq!(workers.len(), 1, "the worker enrolled anew: {workers:?}");
    assert_eq!(workers[0]["name"], "w0");
    // Its mirrors are re-cloned from upstream (same refs as published: no event).
    wait_for(
        Duration::from_secs(60),
        "mirrors equal upstream, reported",
        || {
            for (id, url) in &repos {
                let mirror = gitmirror_tests::git::try_mirror_refs(&w.mirror_path(id))?;
                if mirror != ls_remote(url) {
                    return Err(format!("{id}: mirror differs"));
                }
                let r = coord.repo(id)?;
                let before = expected_repos
                    .iter()
                    .find(|r| r["id"] == id.as_str())
                    .unwrap();
                if r["fetches"].as_u64() <= before["fetches"].as_u64() {
                    return Err(format!("{id}: no new outcome yet"));
                }
            }
            Ok(())
        },
    );
    kept_events(&coord.all_events().unwrap(), &expected_events)
        .unwrap_or_else(|e| panic!("after the re-clones: {e}"));
    // One more change per repo: exactly one event each, numbered on.
    let mut made = Vec::new();
    for id in repos.keys() {
        let oid = daemon.commit(repo_name(id), "master");
        made.push((id.clone(), "refs/heads/master".to_owned(), oid));
        let _ = coord.post(&format!("/api/repos/{id}/fetch"), "");
    }
    let events = wait_for(Duration::from_secs(60), "the new changes as events", || {
        let events = coord.all_events()?;
        let seen: BTreeSet<Change> = events.iter().flat_map(triples).collect();
        made.iter()
            .all(|c| seen.contains(c))
            .then_some(events)
            .ok_or_else(|| "not yet".to_owned())
    });
    let new = &events[expected_events.len()..];
    assert_eq!(new.len(), made.len(), "new events: {new:#?}");
    let t = tally(new, &made);
    assert!(
        t.lost.is_empty() && t.duplicated.is_empty() && t.unexpected.is_empty(),
        "{t:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    for f in migrated {
        let bak = coord.state_dir.join(format!("{f}.v{generation}.bak"));
        assert_eq!(
            std::fs::read(&bak).unwrap_or_default(),
            std::fs::read(fixture.join("coordinator").join(f)).unwrap(),
            "{} keeps the file as it was",
            bak.display()
        );
    }
    let coord_log = coord.proc.log();
    assert_eq!(
        coord_log.matches("migrated").count(),
        migrated.len(),
        "the coordinator's migrations: {coord_log}"
    );
    let worker_log = w.proc.log();
    assert!(
        !worker_log.contains("migrated"),
        "the worker's state dir was migrated"
    );
    for log in [coord_log, worker_log] {
        assert!(
            !log.contains("torn"),
            "a cleanly stopped state dir had a torn tail"
        );
    }
    figure(
        SUITE,
        &format!("release_state_v{generation}.events_kept"),
        expected_events.len(),
    );
    figure(
        SUITE,
        &format!("release_state_v{generation}.repos"),
        repos.len(),
    );
    figure(SUITE, &format!("release_state_v{generation}.lost"), 0);
    figure(SUITE, &format!("release_state_v{generation}.duplicated"), 0);
}
