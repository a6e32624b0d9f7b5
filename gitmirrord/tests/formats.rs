//! Checked-in samples of every state format this release writes still load (STYLE habit 3,
//! SPEC §10): `tests/data/state-v1/` holds a registry, repo statuses and an event log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, TestWorker};
use gitmirror_wire::{CoordMsg, FetchResult, Outcome, OutcomeBatch, RefChange, WorkerMsg};
use std::path::Path;
use uuid::Uuid;

fn copy_samples(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v1");
    std::fs::create_dir_all(to).unwrap();
    for f in ["registry.json", "repos.json", "events.log"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn outcome(report_id: u64) -> Outcome {
    Outcome {
        report_id,
        repo: "a/abc/abc".into(),
        url: "https://example.org/abc.git".into(),
        finished_ms: 1_800_000_100_000,
        duration_ms: 5,
        result: FetchResult::Fetched,
        changes: vec![RefChange {
            name: "refs/heads/master".into(),
            old: Some("e5a2f01".into()),
            new: Some("9fceb02".into()),
        }],
        ref_count: 12,
        refs_digest: 0x5eed,
        next_due_ms: 1_800_000_160_000,
    }
}

/// SPEC §10: v1 state restores workers (as suspect), ids, repo statuses and events; the
/// event log's report ids win over an older registry (a crash between the two writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_state_files_load() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(&dir.path().join("state"));
    let c = Coordinator::start_in(dir, "").await;
    c.wait_for_repos().await;

    let (_, w) = c.get_json("/api/workers/0").await;
    assert_eq!(w["name"], "mirror1");
    assert_eq!(
        w["state"], "suspect",
        "known workers start suspect after a restart"
    );
    assert_eq!(w["disk_free_bytes"], 1_000_000);
    let (_, r) = c.get_json("/api/repos/a/abc/abc").await;
    assert_eq!(r["state"], "mirrored");
    assert_eq!(r["worker"], 0);
    assert_eq!(r["fetches"], 3);
    assert_eq!(r["last_error"]["class"], "transient");
    assert_eq!(r["clone_url"], "git://mirror1.example.org/a/abc/abc.git");
    let (_, r) = c.get_json("/api/repos/z/zlib/zlib").await;
    assert_eq!(r["state"], "gone");
    // SPEC §12: the v1 event log was migrated to segments and kept beside.
    assert!(c.state_dir.join("events.log.v1.bak").exists());
    assert!(!c.state_dir.join("events.log").exists());
    let (_, ev) = c.get_json("/api/events").await;
    assert_eq!(ev["events"][0]["seq"], 1);
    assert_eq!(ev["events"][0]["ref_count"], 1);
    assert_eq!(ev["events"][0]["kind"], "cloned");
    assert!(
        ev["events"][0].get("src").is_none(),
        "bookkeeping stays out of the API"
    );

    // The worker comes back: same id; report 40 is in the log already (a duplicate),
    // report 41 becomes event 2.
    let (mut w, id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(42)).await;
    assert_eq!(id, 0);
    w.holdings(Vec::new()).await;
    w.send(&WorkerMsg::Outcomes(OutcomeBatch {
        outcomes: vec![outcome(40), outcome(41)],
    }))
    .await
    .unwrap();
    loop {
        match w.recv().await.unwrap() {
            CoordMsg::Assign(_) => {}
            m => {
                assert_eq!(m, CoordMsg::OutcomeAck { upto: 41 });
                break;
            }
        }
    }
    let (_, ev) = c.get_json("/api/events?since=1").await;
    let events = ev["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["seq"], 2);
    assert_eq!(events[0]["kind"], "updated");
    c.stop().await.1.unwrap();
}
