//! Issue 12 must-show M3 (SPEC §13): faults of the peer plane in a real fleet. A real
//! `git daemon` upstream, a real coordinator, workers with `peer_listen`; kill -9 of
//! either side of a hand-over while the pack is on the wire, a holder whose copy is
//! damaged on disk. Each ends with no partial or corrupt mirror, the repo converged (refs
//! equal the upstream's, `git fsck` clean, `.tmp` empty) and every upstream change in
//! exactly one event.
//!
//! Plain mirrors (`fetch.pools: false`): the transfer under test is one repo's pack, not
//! a pool's background migration racing the kill (M1 in `peers.rs` covers pools).

use gitmirror_tests::events::{Change, tally};
use gitmirror_tests::git::{try_git, try_ls_remote, try_mirror_refs};
use gitmirror_tests::{Fleet, GitDaemon, daemons::SETTLE, ls_remote, poll_until, wait_for};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(60);
/// The big repo: 24 files of 3 MiB of random bytes (~72 MiB of pack), enough for a
/// transfer between two workers on loopback to be seen while it runs.
const BIG_FILES: usize = 24;
const BIG_FILE_SIZE: usize = 3 << 20;
/// Bytes of a new copy that must be in the receiver's `.tmp` before a kill counts as
/// "mid-transfer" (the transfer started; the rest of the pack is still to come).
const STARTED: u64 = 1 << 20;
/// The joining worker's weight: the ring moves (almost surely) every repo to it.
const JOINER_WEIGHT: f64 = 1000.0;

/// The worker config's `fetch:` section with pools off.
fn plain(yaml: String) -> String {
    yaml.replacen("fetch:\n", "fetch:\n  pools: false\n", 1)
}

/// An upstream with one big repo and two small ones (one project), a coordinator and one
/// holder `a` with `peer_listen` that mirrored them all from the upstream.
struct Setup {
    daemon: GitDaemon,
    fleet: Fleet,
    a: usize,
    big: String,
    big_name: String,
    small: Vec<(String, String)>,
    /// Every ref value the test made upstream, for [`tally`].
    made: Vec<Change>,
    /// Bytes of the big repo's incompressible content: the least a pack of it weighs.
    big_pack: u64,
}

/// [`Setup`] with a big repo of `big_files` files of [`BIG_FILE_SIZE`].
fn setup(label: &str, big_files: usize) -> Setup {
    let daemon = GitDaemon::start();
    let big_name = format!("{label}-big");
    let big_url = daemon.create_big_repo(&big_name, big_files, BIG_FILE_SIZE, 12);
    let mut repos = BTreeMap::new();
    let big = gitmirror_tests::git::repo_id(&big_name);
    repos.insert(big.clone(), big_url);
    let mut small = Vec::new();
    for name in daemon.create_repos(label, 2) {
        let id = gitmirror_tests::git::repo_id(&name);
        repos.insert(id.clone(), daemon.url(&name));
        small.push((id, name));
    }
    // Incompressible: any transfer of the repo carries at least this.
    let big_pack = (big_files * BIG_FILE_SIZE) as u64;
    // An empty index first: the plane listens before any outcome, so the coordinator
    // keeps each repo's refs hash from the first clone on (as M1).
    let mut fleet = Fleet::start(label, &BTreeMap::new(), 0);
    let a = fleet.create_peer_worker_with(1.0, plain);
    fleet.workers[a].start();
    fleet.workers[a]
        .proc
        .wait_log(0, "peer plane listening", WITHIN);
    fleet.wait_alive(&[a], WITHIN);
    for (id, url) in &repos {
        fleet.index.put_url(id, url);
    }
    fleet.index.commit("the repos");
    fleet.repos = repos;
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    let made = upstream_changes(&fleet.repos);
    wait_events(&fleet, &made);
    Setup {
        daemon,
        fleet,
        a,
        big,
        big_name,
        small,
        made,
        big_pack,
    }
}

/// Every `(repo, ref, oid)` the upstream serves now.
fn upstream_changes(repos: &BTreeMap<String, String>) -> Vec<Change> {
    let mut made = Vec::new();
    for (id, url) in repos {
        for (name, oid) in ls_remote(url) {
            if name != "HEAD" {
                made.push((id.clone(), name, oid));
            }
        }
    }
    made
}

/// Wait until the events carry every change of `made`; then none may be duplicated or
/// unexpected (SPEC §8: each upstream change in exactly one event).
fn wait_events(fleet: &Fleet, made: &[Change]) {
    let t = wait_for(WITHIN, "every upstream change in an event", || {
        let events = fleet.coord.all_events()?;
        let t = tally(&events, made);
        if t.lost.is_empty() {
            Ok(t)
        } else {
            Err(format!("lost: {:?}", t.lost))
        }
    });
    assert!(t.duplicated.is_empty(), "duplicated: {:?}", t.duplicated);
    assert!(t.unexpected.is_empty(), "unexpected: {:?}", t.unexpected);
}

/// Bytes in the files under `dir` (0 when it does not exist).
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Entries of the worker's `.tmp`.
fn tmp_entries(fleet: &Fleet, i: usize) -> Vec<PathBuf> {
    std::fs::read_dir(fleet.workers[i].work_dir(".tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Pids of the running `git upload-pack` children of process `pid` (the holder's
/// transfers: it runs one per copy it serves).
fn upload_packs(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces, so after the last ')'.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("upload-pack") {
            found.push(child);
        }
    }
    found
}

/// What was seen the moment the transfer was proven to be running.
struct MidTransfer {
    /// The receiver's new copy in its `.tmp`, and its size then.
    tmp: PathBuf,
    bytes: u64,
}

/// Poll (every 5 ms) until the holder `h` runs a `git upload-pack` for a copy and the
/// receiver `r` has at least [`STARTED`] bytes of a new copy in its `.tmp`, and no mirror
/// of `id` yet: the pack is on the wire. Panics if the copy completes first.
fn wait_mid_transfer(fleet: &Fleet, h: usize, r: usize, id: &str) -> MidTransfer {
    let start = Instant::now();
    let pid = fleet.workers[h].proc.pid().expect("the holder runs");
    loop {
        assert!(
            !fleet.workers[r].has_mirror(id),
            "the copy of {id} completed before a kill could land mid-transfer (make the repo bigger)"
        );
        if !upload_packs(pid).is_empty() {
            let copy = tmp_entries(fleet, r)
                .into_iter()
                .map(|p| (dir_size(&p), p))
                .max();
            if let Some((bytes, tmp)) = copy
                && bytes >= STARTED
            {
                return MidTransfer { tmp, bytes };
            }
        }
        assert!(
            start.elapsed() < WITHIN,
            "no transfer of {id} seen within {WITHIN:?}; receiver log:\n{}",
            gitmirror_tests::tail(&fleet.workers[r].proc.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The coordinator's owner of `id` is worker `i`, which has a mirror of `id` whose refs
/// equal `want`.
fn converged(fleet: &Fleet, i: usize, id: &str, want: &BTreeMap<String, String>) -> Option<()> {
    let ids = fleet.api_ids().ok()?;
    let owner = fleet.coord.owners().ok()?.get(id).copied()??;
    (ids.get(&owner) == Some(&i)
        && fleet.workers[i].has_mirror(id)
        && try_mirror_refs(&fleet.workers[i].mirror_path(id))
            .ok()
            .as_ref()
            == Some(want))
    .then_some(())
}

fn fsck(fleet: &Fleet, i: usize, id: &str) {
    let p = fleet.workers[i].mirror_path(id);
    try_git([
        "-C",
        p.to_str().unwrap(),
        "fsck",
        "--no-progress",
        "--strict",
    ])
    .unwrap_or_else(|e| panic!("{id} on {}: fsck: {e}", fleet.workers[i].name));
}

/// The log lines of worker `i` since `mark` saying a copy of `id` from a peer failed.
fn copy_failures(fleet: &Fleet, i: usize, mark: usize, id: &str) -> Vec<String> {
    fleet.workers[i]
        .proc
        .log_since(mark)
        .lines()
        .filter(|l| l.contains("copy from a peer failed") && l.contains(id))
        .map(str::to_owned)
        .collect()
}

/// One commit upstream on `master` of the big repo and of each small one, added to
/// `made`; then the events must carry each exactly once.
fn change_upstream_and_count_events(s: &mut Setup) {
    let mut names = vec![(s.big.clone(), s.big_name.clone())];
    names.extend(s.small.iter().cloned());
    for (id, name) in names {
        let oid = s.daemon.commit(&name, "master");
        s.made.push((id, "refs/heads/master".to_owned(), oid));
    }
    wait_events(&s.fleet, &s.made);
}

/// SPEC §13 fault: kill -9 of the holder while its pack is on the wire. The receiver
/// keeps no partial mirror (the upstream is offline, so none at all); once the upstream
/// is back and the holder restarted, the repo converges on the receiver and every
/// upstream change is in exactly one event.
#[test]
fn spec_13_kill9_holder_mid_transfer() {
    let mut s = setup("kh", BIG_FILES);
    let upstream = ls_remote(&s.fleet.repos[&s.big]);
    s.daemon.stop();
    assert!(try_ls_remote(&s.fleet.repos[&s.big]).is_err(), "offline");
    let b = s.fleet.create_peer_worker_with(JOINER_WEIGHT, plain);
    s.fleet.workers[b].start();
    let mid = wait_mid_transfer(&s.fleet, s.a, b, &s.big);
    let failures =
        |s: &Setup| -> Option<u64> { s.fleet.coord.repo(&s.big).ok()?["failures"].as_u64() };
    let failed_before = failures(&s).expect("the big repo's failures");
    s.fleet.workers[s.a].kill();
    eprintln!(
        "killed the holder with {} of {} bytes in the receiver's {}",
        mid.bytes,
        s.big_pack,
        mid.tmp.display()
    );
    // Landed mid-transfer: the receiver's copy failed (not finished before the kill).
    poll_until(WITHIN, "the receiver's copy failed", || {
        (!copy_failures(&s.fleet, b, 0, &s.big).is_empty()).then_some(())
    });
    let path = s.fleet.workers[b].mirror_path(&s.big);
    // No partial mirror: none at its path, then or while the upstream stays offline.
    // The attempt the kill landed in fell back to the upstream and failed: one more
    // failure reported (the worker logs only the first of a run of failures, which was
    // when the holder was busy before the transfer).
    poll_until(
        WITHIN,
        "the receiver's upstream fallback failed too",
        || failures(&s).filter(|&n| n > failed_before).map(drop),
    );
    assert!(!path.exists(), "a partial mirror at {}", path.display());
    // The upstream back: the repo converges on the receiver. Then the holder restarts
    // and drops its copies (the new owner's being verified by then; a holder that
    // returns before that keeps them until its next reconnect, design.md "Peer plane …
    // S5").
    s.daemon.restart();
    poll_until(
        WITHIN,
        "the big repo on the receiver, refs equal upstream",
        || converged(&s.fleet, b, &s.big, &upstream),
    );
    for (id, _) in &s.small {
        let want = ls_remote(&s.fleet.repos[id]);
        poll_until(WITHIN, &format!("{id} on the receiver"), || {
            converged(&s.fleet, b, id, &want)
        });
    }
    s.fleet.workers[s.a].start();
    let owners = s.fleet.wait_settled(SETTLE);
    s.fleet.check_mirrors(&owners).unwrap();
    fsck(&s.fleet, b, &s.big);
    poll_until(WITHIN, "the receiver's .tmp empty", || {
        tmp_entries(&s.fleet, b).is_empty().then_some(())
    });
    // A restart of the receiver starts from a clean `.tmp` too.
    assert!(s.fleet.workers[b].proc.terminate(WITHIN).is_some());
    s.fleet.workers[b].start();
    s.fleet.wait_alive(&[b], WITHIN);
    assert!(tmp_entries(&s.fleet, b).is_empty());
    change_upstream_and_count_events(&mut s);
}

/// SPEC §13 fault: kill -9 of the receiver while the pack is on the wire. What it left is
/// only in `.tmp` (no mirror at the final path), which its next start removes; restarted,
/// it has no mirror while the upstream is offline, and converges once it is back (refs,
/// fsck, `.tmp` empty); every upstream change is in exactly one event. The
/// `upstream` series of `gitmirror_transfer_bytes_total` counts the first clone and the
/// receiver's clone (at least the big repo's content each).
#[test]
fn spec_13_kill9_receiver_mid_transfer() {
    let mut s = setup("kr", BIG_FILES);
    let upstream = ls_remote(&s.fleet.repos[&s.big]);
    let metric = |fleet: &Fleet, source: &str| {
        fleet
            .coord
            .metric("gitmirror_transfer_bytes_total", &[("source", source)])
            .unwrap()
    };
    // The first clones were counted as upstream bytes (the big pack at least).
    let upstream_bytes = metric(&s.fleet, "upstream");
    assert!(
        upstream_bytes >= s.big_pack as f64,
        "upstream bytes {upstream_bytes} < the big pack {}",
        s.big_pack
    );
    assert_eq!(metric(&s.fleet, "peer"), 0.0);
    s.daemon.stop();
    let b = s.fleet.create_peer_worker_with(JOINER_WEIGHT, plain);
    s.fleet.workers[b].start();
    let mid = wait_mid_transfer(&s.fleet, s.a, b, &s.big);
    s.fleet.workers[b].kill();
    let path = s.fleet.workers[b].mirror_path(&s.big);
    // Landed mid-transfer: started (bytes in `.tmp`), not finished (no mirror).
    assert!(!path.exists(), "the copy completed before the kill");
    assert!(mid.tmp.exists(), "the kill leaves the partial copy in .tmp");
    eprintln!(
        "killed the receiver with {} of {} bytes in {}",
        mid.bytes,
        s.big_pack,
        mid.tmp.display()
    );
    // Restarted: the partial copy is removed at the start, and the coordinator names the
    // holders again (an owner back before its copy is assigned it again, with its
    // sources: `fleet::tests::spec_13_owner_back_before_its_copy_is_assigned_again`), so
    // the repo comes from the peer with the upstream still offline.
    s.fleet.workers[b].start();
    poll_until(WITHIN, "the receiver's leftover removed", || {
        (!mid.tmp.exists()).then_some(())
    });
    poll_until(
        WITHIN,
        "the big repo on the receiver from its peer, upstream offline, refs equal upstream",
        || converged(&s.fleet, b, &s.big, &upstream),
    );
    fsck(&s.fleet, b, &s.big);
    poll_until(WITHIN, "the receiver's .tmp empty", || {
        tmp_entries(&s.fleet, b).is_empty().then_some(())
    });
    poll_until(WITHIN, "the receiver's copy counted as peer bytes", || {
        (metric(&s.fleet, "peer") >= s.big_pack as f64).then_some(())
    });
    // The big repo did not come from the (offline) upstream: that would count its pack
    // again. A fetch of the holder's that was on the wire when the upstream stopped may
    // still count its ref advertisement (a few hundred bytes, seen in CI).
    let from_upstream = metric(&s.fleet, "upstream") - upstream_bytes;
    assert!(
        from_upstream < s.big_pack as f64,
        "{from_upstream} bytes came from the (offline) upstream"
    );
    s.daemon.restart();
    let owners = s.fleet.wait_settled(SETTLE);
    s.fleet.check_mirrors(&owners).unwrap();
    change_upstream_and_count_events(&mut s);
    // The holder's upload-pack for the killed asker ended too (at the latest when its
    // connection timed out).
    let pid = s.fleet.workers[s.a].proc.pid().unwrap();
    poll_until(WITHIN, "no upload-pack left on the holder", || {
        upload_packs(pid).is_empty().then_some(())
    });
}

/// SPEC §13 fault: a holder whose copy is damaged on disk is not believed. One small
/// repo's refs changed locally (its refs hash no longer the one the coordinator
/// expects), the other's pack file truncated. With the upstream offline the receiver
/// tries the holder, refuses both and has no mirror of either; with the upstream back it
/// clones them from there: refs equal the upstream's, fsck clean.
#[test]
fn spec_13_holder_with_corrupt_copy_is_not_believed() {
    let mut s = setup("hc", 1);
    let (moved, truncated) = (s.small[0].0.clone(), s.small[1].0.clone());
    // Offline first: no fetch of the holder's may repair what is damaged next.
    s.daemon.stop();
    let holder = &s.fleet.workers[s.a];
    // Refs changed locally: master set back to its parent (an object it has).
    let m = holder.mirror_path(&moved);
    let m = m.to_str().unwrap();
    let dev = try_git(["--git-dir", m, "rev-parse", "refs/heads/dev"]).unwrap();
    try_git([
        "--git-dir",
        m,
        "update-ref",
        "refs/heads/master",
        dev.trim(),
    ])
    .unwrap();
    // A truncated pack: every pack of the mirror cut to half.
    let packs = holder.mirror_path(&truncated).join("objects/pack");
    let mut cut = 0;
    for e in std::fs::read_dir(&packs).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pack") {
            let len = std::fs::metadata(&p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len / 2).unwrap();
            cut += 1;
        }
    }
    assert!(cut > 0, "no pack in {}", packs.display());
    let b = s.fleet.create_peer_worker_with(JOINER_WEIGHT, plain);
    s.fleet.workers[b].start();
    // Served and refused by the receiver (a `busy` answer, the holder's per-peer limit,
    // does not count: the receiver asks again at its next attempt).
    for id in [&moved, &truncated] {
        poll_until(
            WITHIN,
            &format!("the receiver refused the copy of {id}"),
            || {
                let path = s.fleet.workers[b].mirror_path(id);
                assert!(
                    !path.exists(),
                    "{id}: installed a copy from the damaged holder"
                );
                copy_failures(&s.fleet, b, 0, id)
                    .iter()
                    .any(|l| !l.contains("busy"))
                    .then_some(())
            },
        );
    }
    let failures = [
        copy_failures(&s.fleet, b, 0, &moved),
        copy_failures(&s.fleet, b, 0, &truncated),
    ];
    eprintln!("the receiver refused: {failures:#?}");
    for id in [&moved, &truncated] {
        let path = s.fleet.workers[b].mirror_path(id);
        assert!(!path.exists(), "{id}: a mirror from the damaged holder");
    }
    // The upstream back: both come from it, whole.
    s.daemon.restart();
    for (id, _) in &s.small {
        let want = ls_remote(&s.fleet.repos[id]);
        poll_until(
            WITHIN,
            &format!("{id} on the receiver from the upstream"),
            || converged(&s.fleet, b, id, &want),
        );
        fsck(&s.fleet, b, id);
    }
    poll_until(WITHIN, "the receiver's .tmp empty", || {
        tmp_entries(&s.fleet, b).is_empty().then_some(())
    });
    change_upstream_and_count_events(&mut s);
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .expect("base64 certificate")
}

/// SPEC §13 attack: a real enrolled worker asks another for a repo the coordinator did
/// not grant it (it owns none of the holder's repos, and no hand-over is under way), with
/// its own certificate and key from its state dir, through the worker's own peer client:
/// refused `NOT_GRANTED`, nothing served. The same request with a certificate of another
/// CA does not get past the TLS handshake.
#[test]
fn spec_13_unassigned_asker_is_refused_in_a_fleet() {
    use gitmirror_common::trust::WorkerCert;
    use gitmirror_worker::peer::{Holder, PeerClient};
    let daemon = GitDaemon::start();
    let repos = daemon.repo_set("ua", 4);
    let mut fleet = Fleet::start("ua", &BTreeMap::new(), 0);
    let w0 = fleet.add_peer_worker(1.0, WITHIN);
    let w1 = fleet.add_peer_worker(1.0, WITHIN);
    fleet.wait_alive(&[w0, w1], WITHIN);
    for (id, url) in &repos {
        fleet.index.put_url(id, url);
    }
    fleet.index.commit("the repos");
    fleet.repos = repos;
    let owners = fleet.wait_settled(SETTLE);
    let (id, &h) = owners.iter().next().expect("a repo");
    let k = if h == w0 { w1 } else { w0 };
    assert!(!fleet.workers[k].has_mirror(id));
    let holder_cert = WorkerCert::load(&fleet.workers[h].state_dir)
        .unwrap()
        .expect("the holder's certificate");
    let asker_cert = WorkerCert::load(&fleet.workers[k].state_dir)
        .unwrap()
        .expect("the asker's certificate");
    let config = std::fs::read_to_string(&fleet.workers[h].config).unwrap();
    let listen = config
        .lines()
        .find_map(|l| l.strip_prefix("peer_listen: "))
        .expect("the holder's peer_listen");
    let holder = Holder {
        addr: listen.trim().parse().unwrap(),
        fingerprint: gitmirror_common::ca::fingerprint(&pem_der(&holder_cert.cert_pem)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = PeerClient::new(asker_cert, Duration::from_secs(60)).unwrap();
        let e = client
            .open(&holder, id)
            .await
            .expect_err("an unassigned asker is refused");
        assert!(e.message.contains("not granted"), "{e}");
        // Another CA: a certificate for a made-up worker, with a key of its own.
        let dir = tempfile::tempdir().unwrap();
        let other = gitmirror_common::ca::Ca::load_or_create(dir.path()).unwrap();
        let issued = other.issue("5a3c0f00-0000-4000-8000-000000000002").unwrap();
        let forged = PeerClient::new(
            WorkerCert {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            },
            Duration::from_secs(60),
        )
        .unwrap();
        let e = forged
            .open(&holder, id)
            .await
            .expect_err("a certificate of another CA is refused");
        // TLS 1.3: the holder checks the client's certificate after the asker's side of
        // the handshake is done, and closes the connection; no refusal frame (which
        // would mean the request reached the grant check), no transfer.
        // Depending on timing the asker sees the handshake fail, the connection lost
        // before the first frame, or the stream refused at opening.
        assert!(
            !e.message.contains(&format!("refused {id}"))
                && ["connecting to", "connection lost", "handshake failed"]
                    .iter()
                    .any(|w| e.message.contains(w)),
            "refused at the TLS handshake, before any request: {e}"
        );
    });
    assert!(!fleet.workers[k].has_mirror(id));
}
