//! The coordinator in-process over loopback QUIC with a hand-written worker (SPEC §4, §5,
//! §6, §8, §9 `POST …/fetch`). `run` serves on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, REPOS, TestWorker, eventually, hello, outcome, quic_connect};
use gitmirror_wire::{
    CoordMsg, FetchResult, HeldRepo, Outcome, OutcomeBatch, PROTOCOL_VERSION, RefChange,
    RefuseCode, WorkerMsg, close_code,
};
use uuid::Uuid;

fn cloned(report_id: u64, repo: &str) -> Outcome {
    Outcome {
        report_id,
        repo: repo.into(),
        url: "https://example.org/abc.git".into(),
        finished_ms: 1_800_000_000_000,
        duration_ms: 5,
        result: FetchResult::Cloned,
        changes: vec![RefChange {
            name: "refs/heads/master".into(),
            old: None,
            new: Some("e5a2f01".into()),
        }],
        ref_count: 1,
        refs_digest: gitmirror_wire::refs::digest([("refs/heads/master", "e5a2f01")]),
        next_due_ms: 1_800_000_060_000,
    }
}

async fn next_assign(w: &mut TestWorker) -> gitmirror_wire::AssignDelta {
    loop {
        match w.recv().await.unwrap() {
            CoordMsg::Assign(d) => return d,
            CoordMsg::OutcomeAck { .. } => continue,
            other => panic!("expected Assign, got {other:?}"),
        }
    }
}

/// SPEC §4.1, §4.2, §5, §8, §9: a worker with the right token is welcomed, gets its
/// assignment as a delta, reports a clone (an event, acknowledged once durable), a resent
/// outcome makes no second event, and `POST …/fetch` reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_token_gets_welcome_assignment_and_events() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut w, id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(42)).await;
    assert_eq!(id, 0);
    w.holdings(vec![]).await;
    let d = next_assign(&mut w).await;
    let mut got: Vec<&str> = d.upsert.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, REPOS.to_vec(), "the only worker gets every repo");
    assert!(d.drop.is_empty());
    w.send(&WorkerMsg::AssignAck { seq: d.seq }).await.unwrap();

    let batch = WorkerMsg::Outcomes(OutcomeBatch {
        outcomes: vec![cloned(1, "a/abc/abc")],
    });
    w.send(&batch).await.unwrap();
    assert_eq!(w.recv().await.unwrap(), CoordMsg::OutcomeAck { upto: 1 });
    let (s, v) = c.get_json("/api/events?since=0").await;
    assert_eq!(s, 200);
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["kind"], "cloned");
    assert_eq!(events[0]["worker"], 0);
    assert_eq!(events[0]["repo"], "a/abc/abc");
    assert_eq!(
        events[0]["refs"][0],
        serde_json::json!({"name":"refs/heads/master","old":null,"new":"e5a2f01"})
    );
    // Resent (e.g. after a reconnect): acknowledged, no second event.
    w.send(&batch).await.unwrap();
    assert_eq!(w.recv().await.unwrap(), CoordMsg::OutcomeAck { upto: 1 });
    let (_, v) = c.get_json("/api/events?since=0").await;
    assert_eq!(v["events"].as_array().unwrap().len(), 1);

    let (_, repo) = c.get_json("/api/repos/a/abc/abc").await;
    assert_eq!(repo["state"], "mirrored");
    assert_eq!(repo["worker"], 0);
    assert_eq!(repo["clone_url"], "git://mirror.example.org/a/abc/abc.git");
    let (_, workers) = c.get_json("/api/workers").await;
    assert_eq!(workers[0]["state"], "alive");
    assert_eq!(workers[0]["repos"], 3);
    assert_eq!(
        workers[0]["addr"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );

    // SPEC §9: POST …/fetch from loopback reaches the owner.
    let (s, v) = c.post("/api/repos/l/linux/linux-next/fetch").await;
    assert_eq!((s, &v["worker"]), (202, &serde_json::json!(0)));
    assert_eq!(
        w.recv().await.unwrap(),
        CoordMsg::FetchNow {
            repo: "l/linux/linux-next".into()
        }
    );
    let (s, _) = c.post("/api/repos/x/y/z/fetch").await;
    assert_eq!(s, 404);

    // SPEC §6: connection lost → suspect, then dead after dead_after; repos unassigned.
    w.conn.close(0u32.into(), b"bye");
    eventually(10, "suspect", || async {
        (c.worker_state(0).await == "suspect").then_some(())
    })
    .await;
    eventually(15, "dead", || async {
        (c.worker_state(0).await == "dead").then_some(())
    })
    .await;
    let (_, st) = c.get_json("/api/status").await;
    assert_eq!(st["repos"]["unassigned"], 3);
    let (s, _) = c.post("/api/repos/a/abc/abc/fetch").await;
    assert_eq!(s, 409, "unassigned");
    let (_, r) = c.stop().await;
    r.unwrap();
}

/// SPEC §12 "Upgrades" and "Wire": a worker of the previous protocol version is welcomed
/// in its own version and served with whole `Holdings`; a current worker's holdings in
/// parts and an outcome whose ref changes span several frames arrive whole: one event
/// listing every change, acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_previous_protocol_and_chunked_lists() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let old = gitmirror_wire::MIN_PROTOCOL_VERSION;
    let (mut w2, _) = TestWorker::join_speaking(c.quic, &c.token, Uuid::from_u128(2), old).await;
    w2.holdings(vec![]).await;
    let d = next_assign(&mut w2).await;
    assert_eq!(
        d.upsert.len(),
        REPOS.len(),
        "the only worker gets every repo"
    );
    let mut specs = d.upsert;
    specs.sort_by(|a, b| a.id.cmp(&b.id));
    w2.conn.close(0u32.into(), b"bye");

    // The same uuid again, now speaking the current version, holding two repos in parts.
    let (mut w3, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(2)).await;
    let held: Vec<HeldRepo> = specs[..2]
        .iter()
        .map(|s| HeldRepo {
            id: s.id.clone(),
            url: s.url.clone(),
            mirrored: false,
        })
        .collect();
    for (i, r) in held.iter().enumerate() {
        let part = gitmirror_wire::HoldingsPart {
            repos: vec![r.clone()],
            last: i + 1 == held.len(),
        };
        w3.send(&WorkerMsg::HoldingsPart(part)).await.unwrap();
    }
    let d = next_assign(&mut w3).await;
    let got: Vec<&str> = d.upsert.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        got,
        vec![specs[2].id.as_str()],
        "the holdings arrived whole: only the third is new"
    );

    let mut big = cloned(1, "a/abc/abc");
    big.changes = (0..5000)
        .map(|i| RefChange {
            name: format!("refs/changes/{i:05}/{}", "x".repeat(300)),
            old: None,
            new: Some(format!("{i:040x}")),
        })
        .collect();
    big.ref_count = 5000;
    big.refs_digest = gitmirror_wire::refs::apply(0, &big.changes);
    let frames = gitmirror_wire::outcome_frames(vec![big.clone()]);
    assert!(
        frames
            .iter()
            .any(|m| matches!(m, WorkerMsg::OutcomeChanges(_))),
        "the outcome is split"
    );
    for f in &frames {
        w3.send(f).await.unwrap();
    }
    loop {
        match w3.recv().await.unwrap() {
            CoordMsg::OutcomeAck { upto } => {
                assert_eq!(upto, 1);
                break;
            }
            CoordMsg::Assign(_) => continue,
            other => panic!("expected OutcomeAck, got {other:?}"),
        }
    }
    let (_, v) = c.get_json("/api/events?since=0").await;
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let names: Vec<&str> = events[0]["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let sent: Vec<&str> = big.changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, sent, "every change, in order, once");
    let (_, r) = c.stop().await;
    r.unwrap();
}

/// SPEC §4.1: a wrong secret is refused with a clear message, both as `Refused` and as
/// the close reason; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() {
    let c = Coordinator::start("").await;
    let mut w = TestWorker::open(c.quic, &c.token).await;
    w.send(&WorkerMsg::Hello(hello(
        Uuid::from_u128(1),
        "not-the-secret",
    )))
    .await
    .unwrap();
    match w.recv().await.unwrap() {
        CoordMsg::Refused(r) => {
            assert_eq!(r.code, RefuseCode::BadSecret);
            assert!(r.message.contains("wrong join token"), "{}", r.message);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let why = w.closed().await;
    assert!(why.contains("wrong join token"), "{why}");
    assert_eq!(c.get("/healthz").await.0, 200);
    let (_, id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(2)).await;
    assert_eq!(id, 0);
    c.stop().await.1.unwrap();
}

/// SPEC §4.1: a token pinning another certificate fails the TLS handshake, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_refused_by_the_worker() {
    let c = Coordinator::start("").await;
    let mut token = c.token.clone();
    token.cert_sha256[0] ^= 0xff;
    let err = quic_connect(c.quic, &token)
        .await
        .expect_err("handshake must fail");
    eprintln!("wrong pin: {err}");
    assert!(
        err.contains("certificate does not match the join token"),
        "{err}"
    );
    assert_eq!(c.get("/healthz").await.0, 200);
    c.stop().await.1.unwrap();
}

/// SPEC §4.2: a version mismatch is refused with a message naming both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_names_both_versions() {
    let c = Coordinator::start("").await;
    let mut w = TestWorker::open(c.quic, &c.token).await;
    let mut h = hello(Uuid::from_u128(1), &c.token.secret);
    h.protocol = PROTOCOL_VERSION + 6;
    w.send(&WorkerMsg::Hello(h)).await.unwrap();
    let CoordMsg::Refused(r) = w.recv().await.unwrap() else {
        panic!("expected Refused")
    };
    assert_eq!(r.code, RefuseCode::VersionMismatch);
    assert!(
        r.message.contains(&format!("protocol {PROTOCOL_VERSION}")),
        "{}",
        r.message
    );
    assert!(
        r.message
            .contains(&format!("speaks {}", PROTOCOL_VERSION + 6)),
        "{}",
        r.message
    );
    let why = w.closed().await;
    assert!(why.contains("version mismatch"), "{why}");
    c.stop().await.1.unwrap();
}

/// SPEC §4.2: a frame header above 16 MiB closes that connection with PROTOCOL_ERROR,
/// before any allocation; the server lives on. So does garbage after Welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_close_only_that_connection() {
    let c = Coordinator::start("").await;
    let mut w = TestWorker::open(c.quic, &c.token).await;
    w.send_raw(&(16u32 * 1024 * 1024 + 1).to_le_bytes())
        .await
        .unwrap();
    let why = w.closed().await;
    eprintln!("oversized: {why}");
    assert!(
        why.contains(&format!("{}", close_code::PROTOCOL_ERROR)) && why.contains("exceeds"),
        "{why}"
    );

    let (mut w2, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(9)).await;
    w2.send_raw(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).await.unwrap();
    let why = w2.closed().await;
    assert!(why.contains("undecodable"), "{why}");

    let (mut w3, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(10)).await;
    w3.send(&WorkerMsg::Hello(hello(
        Uuid::from_u128(10),
        &c.token.secret,
    )))
    .await
    .unwrap();
    let why = w3.closed().await;
    assert!(why.contains("second Hello"), "{why}");
    assert_eq!(c.get("/healthz").await.0, 200);
    c.stop().await.1.unwrap();
}

/// SPEC §6: a second connection with the same uuid replaces the first; no repo moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_uuid_replaces_the_older_connection() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut a, id_a) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(5)).await;
    a.holdings(vec![]).await;
    next_assign(&mut a).await;
    let (mut b, id_b) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(5)).await;
    assert_eq!(id_a, id_b);
    let why = a.closed().await;
    assert!(why.contains(&format!("{}", close_code::REPLACED)), "{why}");
    let held = REPOS
        .iter()
        .map(|id| HeldRepo {
            id: (*id).into(),
            url: String::new(),
            mirrored: true,
        })
        .collect();
    b.holdings(held).await;
    let d = next_assign(&mut b).await;
    // Same repos; only the URLs differ from what it claims, so they are upserted.
    assert!(d.drop.is_empty());
    assert_eq!(c.worker_state(id_b).await, "alive");
    c.stop().await.1.unwrap();
}

/// SPEC §2.1 max_workers: a worker beyond the limit is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_workers_is_refused() {
    let c = Coordinator::start("max_workers: 1\n").await;
    let (_a, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(1)).await;
    let mut b = TestWorker::open(c.quic, &c.token).await;
    b.send(&WorkerMsg::Hello(hello(
        Uuid::from_u128(2),
        &c.token.secret,
    )))
    .await
    .unwrap();
    let CoordMsg::Refused(r) = b.recv().await.unwrap() else {
        panic!("expected Refused")
    };
    assert_eq!(r.code, RefuseCode::NoFreeId);
    assert!(r.message.contains("max_workers"), "{}", r.message);
    c.stop().await.1.unwrap();
}

/// SPEC §6, §10: ids survive a coordinator restart; a worker back in time keeps its repos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_ids_and_moves_nothing() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut a, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(7)).await;
    let (mut b, id_b) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(8)).await;
    assert_eq!(id_b, 1);
    a.holdings(vec![]).await;
    b.holdings(vec![]).await;
    let da = next_assign(&mut a).await;
    let db = next_assign(&mut b).await;
    // Their clones are reported (a claimed mirror alone is not believed, issue 10).
    for (w, d) in [(&mut a, &da), (&mut b, &db)] {
        let cloned = d.upsert.iter().zip(1..).map(|(r, id)| {
            outcome(
                id,
                &r.id,
                FetchResult::Cloned,
                &[("refs/heads/main", None, Some("aa"))],
            )
        });
        w.report(cloned.collect()).await;
    }
    let (_, owners_before) = c.get_json("/api/repos").await;
    let (dir, r) = c.stop().await;
    r.unwrap();

    let c = Coordinator::start_in(dir, "").await;
    let (_, w) = c.get_json("/api/workers").await;
    assert_eq!(w[0]["state"], "suspect");
    assert_eq!(w[1]["state"], "suspect");
    // Worker 8 comes back first, then 7: each keeps its id and nothing moves.
    let (mut b, id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(8)).await;
    assert_eq!(id, 1);
    let held = |d: &gitmirror_wire::AssignDelta| {
        d.upsert
            .iter()
            .map(|r| HeldRepo {
                id: r.id.clone(),
                url: r.url.clone(),
                mirrored: true,
            })
            .collect::<Vec<_>>()
    };
    b.holdings(held(&db)).await;
    let d = next_assign(&mut b).await;
    assert!(d.upsert.is_empty() && d.drop.is_empty(), "{d:?}");
    let (mut a, id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(7)).await;
    assert_eq!(id, 0);
    a.holdings(held(&da)).await;
    let d = next_assign(&mut a).await;
    assert!(d.upsert.is_empty() && d.drop.is_empty(), "{d:?}");
    let (_, owners_after) = c.get_json("/api/repos").await;
    let owners = |v: &serde_json::Value| {
        v["repos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["worker"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(owners(&owners_before), owners(&owners_after));
    let (_, st) = c.get_json("/api/status").await;
    assert_eq!(st["repos"]["mirrored"], 3);
    c.stop().await.1.unwrap();
}

/// SPEC §18 over QUIC: with `host_limits`, a current worker gets its `HostBudgets` before
/// its first assignment, acknowledges it with `HostDemand` and is granted a share; a
/// worker of protocol 5 gets none (it is not limited by the budget: the coordinator logs
/// so at its join) and its first message is the assignment, as before.
/// SPEC §13 (issue 12, C2): a worker of protocol 7 gets the fleet CA (the coordinator's
/// `ca-cert.pem`) right after `Welcome`, before any assignment; a worker of protocol 6
/// gets no peer plane and its first message is the assignment, as before. (Seen failing
/// with the plane sent to protocol 6 workers too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_peer_plane_goes_to_protocol_7_workers_only() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut old, _) = TestWorker::join_speaking(c.quic, &c.token, Uuid::from_u128(5), 6).await;
    old.holdings(vec![]).await;
    match old.recv_any().await.unwrap() {
        CoordMsg::Assign(_) => {}
        other => panic!("a protocol 6 worker got {other:?}"),
    }
    let (mut w, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(6)).await;
    let plane = match w.recv_any().await.unwrap() {
        CoordMsg::PeerPlane(p) => p,
        other => panic!("expected PeerPlane first, got {other:?}"),
    };
    let ca = std::fs::read_to_string(c.state_dir.join(gitmirror_common::ca::CA_CERT_FILE)).unwrap();
    assert_eq!(plane.ca_cert_pem, ca);
    assert!(plane.lease_ms > 0);
    c.stop().await.1.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_18_budgets_go_to_protocol_6_workers_only() {
    let c = Coordinator::start("host_limits: [{host: example.org, connections: 3}]\n").await;
    c.wait_for_repos().await;
    let (mut old, _) = TestWorker::join_speaking(c.quic, &c.token, Uuid::from_u128(5), 5).await;
    old.holdings(vec![]).await;
    match old.recv().await.unwrap() {
        CoordMsg::Assign(_) => {}
        other => panic!("a protocol 5 worker got {other:?}"),
    }
    let (mut w, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(6)).await;
    let first = match w.recv().await.unwrap() {
        CoordMsg::HostBudgets(b) => b,
        other => panic!("expected HostBudgets first, got {other:?}"),
    };
    assert_eq!(first.limits.len(), 1);
    assert_eq!(first.limits[0].host, "example.org");
    assert_eq!(first.limits[0].connections, Some(0), "no demand yet");
    w.send(&WorkerMsg::HostDemand(gitmirror_wire::HostDemand {
        seen: first.seq,
        hosts: vec![gitmirror_wire::HostLoad {
            host: "example.org".into(),
            due: 5,
            running: 0,
            started_last_minute: 0,
            share: Some(0),
        }],
    }))
    .await
    .unwrap();
    let granted = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let CoordMsg::HostBudgets(b) = w.recv().await.unwrap()
                && b.limits[0].connections == Some(3)
            {
                return b;
            }
        }
    })
    .await
    .expect("a share within 10 s");
    assert!(granted.seq > first.seq);
    let (_, status) = c.get_json("/api/status").await;
    assert_eq!(status["hosts"][0]["host"], "example.org", "{status}");
    assert_eq!(status["hosts"][0]["granted_connections"], 3, "{status}");
}
