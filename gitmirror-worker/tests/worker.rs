//! The whole worker (`run`) against a test coordinator over loopback QUIC and real git
//! served by `git daemon` (SPEC §4, §6, §7, §8, §10).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::harness::{config, fetch_section, start};

use common::coord::{FakeCoordinator, STEP};
use common::{GitDaemon, Upstream, git, ls_remote};
use gitmirror_common::units::FreeSpace;
use gitmirror_wire::{
    AssignDelta, CoordMsg, DropOrder, DropReason, FailureClass, FetchResult, JoinToken, Outcome,
    RepoSpec, WorkerMsg,
};
use gitmirror_worker::FetchSection;
use gitmirror_worker::mirror::Mirrors;
use gitmirror_worker::state::{Identity, Repo, Repos};
use gitmirror_worker::store::Saved;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const REPO: &str = "a/abc/abc";

/// A fetch section with the given `min_interval` and fetch timeout.
fn fetch(min_interval: Duration, timeout: Duration) -> FetchSection {
    FetchSection {
        timeout,
        ..fetch_section(min_interval, Duration::from_secs(3600))
    }
}

/// Poll the state file until `f` finds what it wants.
async fn state_until<T>(state_dir: &Path, what: &str, mut f: impl FnMut(&Repos) -> Option<T>) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(s) = Saved::load(state_dir)
            && let Some(t) = f(&s.state)
        {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn outcome_for(msg: WorkerMsg, repo: &str, pred: impl Fn(&Outcome) -> bool) -> Option<Outcome> {
    match msg {
        WorkerMsg::Outcomes(b) => b.outcomes.into_iter().find(|o| o.repo == repo && pred(o)),
        _ => None,
    }
}

/// SPEC §4, §6, §8, design.md "Conversation": Hello → Welcome → Holdings; an assignment is
/// persisted before it is acknowledged; the clone is reported as `Cloned` with every ref;
/// `FetchNow` fetches at once and reports the change; after a reconnect the worker keeps
/// its uuid and id, reports its holdings and resends what was not acknowledged; a drop
/// moves the mirror to the trash; the worker stops within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_6_conversation_with_the_coordinator() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    // A long interval: only FetchNow makes the second fetch happen.
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch(Duration::from_secs(3600), Duration::from_secs(60)),
        FreeSpace::Bytes(0),
    );
    let worker = start(cfg);

    let mut s = coord.accept(7).await;
    assert_eq!(s.hello.previous_id, None);
    assert_eq!(s.hello.name, "test-worker");
    assert_eq!(s.hello.weight, 1.0);
    assert_eq!(s.hello.software, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        s.hello.serve_url_base.as_deref(),
        Some("git://mirror.example.org/")
    );
    let uuid = s.hello.uuid;
    match s.recv().await {
        WorkerMsg::Holdings(h) => assert!(h.repos.is_empty(), "{h:?}"),
        other => panic!("expected Holdings first, got {other:?}"),
    }

    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: vec![RepoSpec {
            id: REPO.into(),
            url: url.clone(),
        }],
        drop: vec![],
    }))
    .await;
    let seq = s
        .recv_until(|m| {
            if let WorkerMsg::AssignAck { seq } = m {
                Some(seq)
            } else {
                None
            }
        })
        .await;
    assert_eq!(seq, 1);
    assert!(
        Saved::load(&state_dir)
            .unwrap()
            .state
            .repos
            .contains_key(REPO),
        "persisted before the ack"
    );

    let cloned = s.recv_until(|m| outcome_for(m, REPO, |_| true)).await;
    assert_eq!(cloned.result, FetchResult::Cloned);
    assert_eq!(cloned.url, url);
    let expected = ls_remote(&url);
    assert_eq!(cloned.ref_count as usize, expected.len());
    assert_eq!(cloned.changes.len(), expected.len());
    for c in &cloned.changes {
        assert_eq!(c.old, None);
        assert_eq!(c.new.as_ref(), expected.get(&c.name));
    }
    // The outcome was in the persisted outbox before it was sent.
    let saved = Saved::load(&state_dir).unwrap().state;
    assert!(saved.outbox.contains_key(&cloned.report_id));
    let mirror = root.path().join("repos/a/abc/abc.git");
    assert!(git(&mirror, &["remote", "-v"]).contains(&url));
    s.send(CoordMsg::OutcomeAck {
        upto: cloned.report_id,
    })
    .await;

    let old_main = expected["refs/heads/main"].clone();
    let new_main = upstream.commit("new upstream work");
    let asked = Instant::now();
    s.send(CoordMsg::FetchNow { repo: REPO.into() }).await;
    let fetched = s
        .recv_until(|m| outcome_for(m, REPO, |o| o.result == FetchResult::Fetched))
        .await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "FetchNow is served at once"
    );
    assert_eq!(fetched.changes.len(), 1, "{:?}", fetched.changes);
    assert_eq!(fetched.changes[0].name, "refs/heads/main");
    assert_eq!(fetched.changes[0].old.as_deref(), Some(old_main.as_str()));
    assert_eq!(fetched.changes[0].new.as_deref(), Some(new_main.as_str()));
    assert!(fetched.report_id > cloned.report_id);

    // The coordinator restarts before acknowledging that outcome.
    s.close();
    let mut s = coord.accept(7).await;
    assert_eq!(s.hello.uuid, uuid, "the identity survives reconnects");
    assert_eq!(s.hello.previous_id, Some(7));
    match s.recv().await {
        WorkerMsg::Holdings(h) => {
            assert_eq!(h.repos.len(), 1);
            assert_eq!(
                (
                    h.repos[0].id.as_str(),
                    h.repos[0].url.as_str(),
                    h.repos[0].mirrored
                ),
                (REPO, url.as_str(), true)
            );
        }
        other => panic!("expected Holdings first, got {other:?}"),
    }
    let resent = s
        .recv_until(|m| outcome_for(m, REPO, |o| o.report_id == fetched.report_id))
        .await;
    assert_eq!(resent, fetched);
    s.send(CoordMsg::OutcomeAck {
        upto: fetched.report_id,
    })
    .await;
    state_until(&state_dir, "the acknowledged outbox to be empty", |st| {
        st.outbox.is_empty().then_some(())
    })
    .await;

    // SPEC §8: `Relist` fetches at once and reports every ref as a
    // change from none; the refs last reported start again from that list, so a branch
    // deleted upstream is simply absent (not a deletion), and the next fetch with no
    // upstream change reports nothing.
    git(&upstream.dir, &["branch", "-D", "dev"]);
    s.send(CoordMsg::Relist { repo: REPO.into() }).await;
    let relisted = s
        .recv_until(|m| outcome_for(m, REPO, |o| o.report_id > fetched.report_id))
        .await;
    assert_eq!(relisted.result, FetchResult::Fetched);
    let now_upstream = ls_remote(&url);
    assert!(!now_upstream.contains_key("refs/heads/dev"));
    let listed: std::collections::BTreeMap<String, String> = relisted
        .changes
        .iter()
        .map(|c| {
            assert_eq!(c.old, None, "a relist lists changes from no refs: {c:?}");
            (c.name.clone(), c.new.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(listed, now_upstream);
    assert_eq!(
        gitmirror_wire::refs::base(relisted.refs_digest, &relisted.changes),
        0,
        "the coordinator recognises a relist by its base"
    );
    s.send(CoordMsg::OutcomeAck {
        upto: relisted.report_id,
    })
    .await;
    s.send(CoordMsg::FetchNow { repo: REPO.into() }).await;
    let quiet = s
        .recv_until(|m| outcome_for(m, REPO, |o| o.report_id > relisted.report_id))
        .await;
    assert!(quiet.changes.is_empty(), "{:?}", quiet.changes);
    assert_eq!(quiet.refs_digest, relisted.refs_digest);
    s.send(CoordMsg::OutcomeAck {
        upto: quiet.report_id,
    })
    .await;

    // SPEC §12 (`GET /api/repos/{id}/refs`): pages of the refs last reported, sorted by
    // name, following `next`; a repo not held is an error page.
    let mut paged = std::collections::BTreeMap::new();
    let mut after = None;
    for query in 1u64.. {
        let q = gitmirror_wire::RefsQuery {
            query,
            repo: REPO.into(),
            after: after.clone(),
            limit: 2,
        };
        s.send(CoordMsg::RefsQuery(q.clone())).await;
        let page = s
            .recv_until(|m| match m {
                WorkerMsg::RefsPage(p) if p.query == query => Some(p),
                _ => None,
            })
            .await;
        assert_eq!(gitmirror_wire::refs_page::check(&q, &page), Ok(()));
        assert_eq!(page.error, None);
        assert!(page.refs.len() <= 2);
        paged.extend(page.refs.into_iter().map(|e| (e.name, e.id)));
        after = page.next;
        if after.is_none() {
            break;
        }
        assert!(query < 100, "paging does not end");
    }
    assert_eq!(paged, now_upstream);
    s.send(CoordMsg::RefsQuery(gitmirror_wire::RefsQuery {
        query: 1000,
        repo: "x/not/held".into(),
        after: None,
        limit: 10,
    }))
    .await;
    let unknown = s
        .recv_until(|m| match m {
            WorkerMsg::RefsPage(p) if p.query == 1000 => Some(p),
            _ => None,
        })
        .await;
    assert!(unknown.refs.is_empty());
    assert!(
        unknown
            .error
            .as_deref()
            .is_some_and(|e| e.contains("x/not/held")),
        "{unknown:?}"
    );

    s.send(CoordMsg::Assign(AssignDelta {
        seq: 2,
        upsert: vec![],
        drop: vec![DropOrder {
            id: REPO.into(),
            reason: DropReason::RemovedFromIndex,
        }],
    }))
    .await;
    let seq = s
        .recv_until(|m| {
            if let WorkerMsg::AssignAck { seq } = m {
                Some(seq)
            } else {
                None
            }
        })
        .await;
    assert_eq!(seq, 2);
    common::wait_for("the mirror to move to the trash", STEP, || !mirror.exists());
    let trash: Vec<_> = std::fs::read_dir(root.path().join("repos.trash"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(trash.len(), 1);
    assert!(
        trash[0].to_string_lossy().starts_with("a_abc_abc-"),
        "{trash:?}"
    );

    let id: Identity = gitmirror_common::statefile::read_json(
        &state_dir.join("identity.json"),
        "worker-identity",
        1,
    )
    .unwrap()
    .unwrap();
    assert_eq!((id.uuid, id.worker_id), (uuid, Some(7)));
    worker.stop().await;
}

/// SPEC §6, §7.1, §8, §10: with no coordinator at all the worker still starts, removes
/// `.tmp` leftovers, treats a complete mirror the state missed as mirrored (a fetch, not a
/// clone), re-clones a mirror that vanished, and reports changes against the refs last
/// reported even when the mirror moved on before a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_6_works_without_coordinator_and_reconciles_after_a_crash() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let mirrors = Mirrors::new(root.path().join("repos"));
    mirrors.prepare().unwrap();
    let no = AtomicBool::new(false);

    // "a": cloned and reported; then fetched again, but the worker crashed before reporting.
    let reported = mirrors.clone_new("a/crash/crash", &url, &no).unwrap().refs;
    let old_main = reported["refs/heads/main"].clone();
    let new_main = upstream.commit("fetched, never reported");
    mirrors.fetch("a/crash/crash", &url, &no).unwrap();
    // "c": renamed into place, but the crash came before the state said so.
    mirrors.clone_new("c/done/done", &url, &no).unwrap();
    let c_inode = std::fs::metadata(mirrors.path("c/done/done"))
        .unwrap()
        .ino();
    // "v": the state says mirrored, but the directory is gone.
    let mut saved = Saved::default();
    let mut a = Repo::new(url.clone(), true);
    a.set_refs(&reported);
    a.announced = true;
    saved.state.repos.insert("a/crash/crash".into(), a);
    saved
        .state
        .repos
        .insert("c/done/done".into(), Repo::new(url.clone(), false));
    let mut v = Repo::new(url.clone(), true);
    v.set_refs(&reported);
    v.announced = true;
    saved.state.repos.insert("v/gone/gone".into(), v);
    for id in ["a/crash/crash", "v/gone/gone"] {
        saved.refs.insert(id.into(), reported.clone());
    }
    std::fs::create_dir_all(&state_dir).unwrap();
    saved.save(&state_dir).unwrap();
    // A half clone left by the crash, and one left in the temp directory of the release
    // before issue 10 (inside the mirror directory), which is swept too.
    let leftover = root.path().join("repos.tmp/c_half-1-0.git");
    std::fs::create_dir_all(leftover.join("objects")).unwrap();
    let old_leftover = root.path().join("repos/.tmp/c_half-1-0.git");
    std::fs::create_dir_all(old_leftover.join("objects")).unwrap();

    // Nothing listens on this port.
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let token = JoinToken::new(b"no such coordinator", "c2VjcmV0");
    let cfg = config(
        nowhere,
        token,
        root.path(),
        fetch(Duration::from_secs(3600), Duration::from_secs(60)),
        FreeSpace::Bytes(0),
    );
    let worker = start(cfg);

    let outbox = state_until(&state_dir, "an outcome for each repo", |st| {
        let ids: Vec<&str> = st.outbox.values().map(|o| o.repo.as_str()).collect();
        ["a/crash/crash", "c/done/done", "v/gone/gone"]
            .iter()
            .all(|r| ids.contains(r))
            .then(|| st.outbox.clone())
    })
    .await;
    assert!(!leftover.exists(), ".tmp leftovers removed at start");
    assert!(
        !root.path().join("repos/.tmp").exists(),
        "the old .tmp inside the mirror directory is gone"
    );
    let get = |r: &str| outbox.values().find(|o| o.repo == r).unwrap().clone();

    let a = get("a/crash/crash");
    assert_eq!(a.result, FetchResult::Fetched);
    assert_eq!(a.changes.len(), 1, "{:?}", a.changes);
    assert_eq!(a.changes[0].old.as_deref(), Some(old_main.as_str()));
    assert_eq!(a.changes[0].new.as_deref(), Some(new_main.as_str()));

    let c = get("c/done/done");
    assert_eq!(c.result, FetchResult::Cloned, "first report of this repo");
    assert_eq!(
        std::fs::metadata(mirrors.path("c/done/done"))
            .unwrap()
            .ino(),
        c_inode,
        "fetched, not cloned again"
    );

    let v = get("v/gone/gone");
    assert_eq!(v.result, FetchResult::Fetched);
    assert!(
        mirrors.path("v/gone/gone").join("objects").is_dir(),
        "vanished mirror cloned again"
    );
    assert_eq!(v.changes.len(), 1, "{:?}", v.changes);
    let st = Saved::load(&state_dir).unwrap().state;
    assert!(st.repos.values().all(|r| r.mirrored));
    worker.stop().await;
}

/// SPEC §7.5: below `disk.min_free` no clone starts (reported once as `Waiting{disk}`, and
/// the status says so) while fetches of existing mirrors go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_7_5_low_disk_holds_clones_not_fetches() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let mirrors = Mirrors::new(root.path().join("repos"));
    mirrors.prepare().unwrap();
    let refs = mirrors
        .clone_new(REPO, &url, &AtomicBool::new(false))
        .unwrap()
        .refs;
    let mut saved = Saved::default();
    let mut held = Repo::new(url.clone(), true);
    held.set_refs(&refs);
    held.announced = true;
    saved.state.repos.insert(REPO.into(), held);
    saved.refs.insert(REPO.into(), refs);
    std::fs::create_dir_all(&state_dir).unwrap();
    saved.save(&state_dir).unwrap();

    // 100 % free required: never met on a real filesystem. The lower limit that aborts
    // fetches (`disk.abort_free`, default half of this) is off: it has its own tests.
    let mut cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch(Duration::from_secs(1), Duration::from_secs(60)),
        FreeSpace::Percent(100.0),
    );
    cfg.disk.abort_free = Some(FreeSpace::Bytes(0));
    let worker = start(cfg);
    let mut s = coord.accept(0).await;
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: vec![RepoSpec {
            id: "n/new/new".into(),
            url: url.clone(),
        }],
        drop: vec![],
    }))
    .await;
    let mut waiting = 0;
    let mut fetched = 0;
    let mut disk_low_status = false;
    // Fetches of the held repo go on (every second); watch a few of them.
    while fetched < 3 || !disk_low_status {
        match s.recv().await {
            WorkerMsg::Outcomes(b) => {
                for o in b.outcomes {
                    match (o.repo.as_str(), &o.result) {
                        ("n/new/new", FetchResult::Waiting { reason }) => {
                            assert_eq!(reason, "disk");
                            waiting += 1;
                        }
                        (REPO, FetchResult::Fetched) => fetched += 1,
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
            }
            WorkerMsg::Status(st) => {
                assert!(st.disk_low, "{st:?}");
                assert!(st.summary.contains("disk low"), "{}", st.summary);
                disk_low_status = true;
            }
            _ => {}
        }
    }
    assert_eq!(waiting, 1, "Waiting is reported once");
    assert!(!mirrors.exists("n/new/new"));
    worker.stop().await;
}

/// Issue 16 per-worker series: with its `Status` the worker sends a protocol 5 `Load`
/// naming its queue, `fetch.concurrency` and `disk.min_free` in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_worker_reports_its_load_with_its_status() {
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch(Duration::from_secs(3600), Duration::from_secs(60)),
        FreeSpace::Bytes(3 << 20),
    );
    cfg.fetch.concurrency = 5;
    let worker = start(cfg);
    let mut s = coord.accept(0).await;
    let mut status_seen = false;
    let load = s
        .recv_until(|m| match m {
            WorkerMsg::Status(_) => {
                status_seen = true;
                None
            }
            WorkerMsg::Load(l) => Some(l),
            _ => None,
        })
        .await;
    assert!(status_seen, "Load follows a Status");
    assert_eq!(load.fetch_concurrency, 5);
    assert_eq!(load.disk_min_free_bytes, 3 << 20);
    assert_eq!(load.queued_fetches, 0, "nothing held, nothing due");
    worker.stop().await;
}

/// SPEC §7.3, §2.2 `fetch.timeout`: a fetch that runs too long is stopped and reported as a
/// transient failure; the mirror stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_7_3_fetch_timeout_is_a_transient_failure() {
    // An upstream that accepts and then says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for conn in silent.incoming().flatten() {
            h.lock().unwrap().push(conn);
        }
    });
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch(Duration::from_secs(3600), Duration::from_secs(1)),
        FreeSpace::Bytes(0),
    );
    let worker = start(cfg);
    let mut s = coord.accept(0).await;
    let started = Instant::now();
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: vec![RepoSpec {
            id: "s/silent/silent".into(),
            url: format!("git://127.0.0.1:{port}/silent"),
        }],
        drop: vec![],
    }))
    .await;
    let o = s
        .recv_until(|m| outcome_for(m, "s/silent/silent", |_| true))
        .await;
    match &o.result {
        FetchResult::Failed {
            class: FailureClass::Transient,
            message,
        } => assert!(message.contains("timed out"), "{message}"),
        other => panic!("expected a transient timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !root.path().join("repos/s/silent/silent.git").exists(),
        "no half clone at the final path"
    );
    // Let the abandoned clone's connection die so its thread ends.
    held.lock().unwrap().clear();
    worker.stop().await;
}

/// SPEC §7.1: an upsert with a new URL is followed by fetching the kept mirror from it (no
/// re-clone); a drop after a move to another worker deletes the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_7_1_url_change_and_moved_drop_through_the_worker() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch(Duration::from_secs(3600), Duration::from_secs(60)),
        FreeSpace::Bytes(0),
    );
    let worker = start(cfg);
    let mut s = coord.accept(1).await;
    let assign = |seq, url: &str| {
        CoordMsg::Assign(AssignDelta {
            seq,
            upsert: vec![RepoSpec {
                id: REPO.into(),
                url: url.into(),
            }],
            drop: vec![],
        })
    };
    s.send(assign(1, &daemon.url("abc"))).await;
    s.recv_until(|m| outcome_for(m, REPO, |o| o.result == FetchResult::Cloned))
        .await;
    let mirror = root.path().join("repos/a/abc/abc.git");
    let inode = std::fs::metadata(&mirror).unwrap().ino();

    std::fs::rename(&upstream.dir, up.path().join("moved")).unwrap();
    let new_url = daemon.url("moved");
    s.send(assign(2, &new_url)).await;
    let o = s
        .recv_until(|m| outcome_for(m, REPO, |o| o.url == new_url))
        .await;
    assert_eq!(o.result, FetchResult::Fetched);
    assert!(o.changes.is_empty(), "{:?}", o.changes);
    assert_eq!(
        std::fs::metadata(&mirror).unwrap().ino(),
        inode,
        "kept, not cloned again"
    );
    assert!(git(&mirror, &["remote", "-v"]).contains(&new_url));

    s.send(CoordMsg::Assign(AssignDelta {
        seq: 3,
        upsert: vec![],
        drop: vec![DropOrder {
            id: REPO.into(),
            reason: DropReason::Moved,
        }],
    }))
    .await;
    // The mirror and its then-empty parent directories go, into the trash: a repo handed
    // over is trashed, not deleted (issue 10; design.md "Where we differ from SPEC").
    let parent = root.path().join("repos/a");
    common::wait_for("the moved repo's mirror to leave its path", STEP, || {
        !parent.exists()
    });
    let trashed: Vec<_> = std::fs::read_dir(root.path().join("repos.trash"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(trashed.len(), 1, "{trashed:?}");
    assert!(
        git(&trashed[0], &["remote", "-v"]).contains(&new_url),
        "{trashed:?}"
    );
    worker.stop().await;
}
