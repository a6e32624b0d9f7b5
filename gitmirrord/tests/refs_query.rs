//! SPEC §12 `GET /api/repos/{id}/refs` through the whole coordinator in-process, with a
//! hand-written worker over loopback QUIC: the query reaches the holder, its page comes
//! back as JSON, and pages that are not answers to a query close the connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, TestWorker, http_raw};
use gitmirror_wire::{CoordMsg, HeldRepo, RefEntry, RefsPage, RefsQuery, WorkerMsg};
use std::net::SocketAddr;
use uuid::Uuid;

const REPO: &str = "a/abc/abc";

/// A worker that holds a complete mirror of [`REPO`] (so it owns it and may be asked).
async fn holder(c: &Coordinator, uuid: u128, protocol: u32) -> TestWorker {
    let (mut w, _) =
        TestWorker::join_speaking(c.quic, &c.token, Uuid::from_u128(uuid), protocol).await;
    w.holdings(vec![HeldRepo {
        id: REPO.into(),
        url: "https://example.org/abc.git".into(),
        mirrored: true,
    }])
    .await;
    // A claimed mirror is verified by a fetch (issue 10): the coordinator asks for one
    // (`FetchNow`), and the worker reports it.
    let fetched = common::outcome(
        1,
        REPO,
        gitmirror_wire::FetchResult::Fetched,
        &[("refs/heads/m", None, Some("aa"))],
    );
    w.send(&WorkerMsg::Outcomes(gitmirror_wire::OutcomeBatch {
        outcomes: vec![fetched],
    }))
    .await
    .unwrap();
    // Asked only once the holdings and the fetch made it the owner with a mirror.
    common::eventually(15, "the repo mirrored by the new connection", || async {
        let (_, v) = c.get_json(&format!("/api/repos/{REPO}")).await;
        let workers = c.get_json("/api/workers").await.1;
        let alive = workers
            .as_array()
            .is_some_and(|ws| ws.iter().any(|x| x["state"] == "alive"));
        (v["state"] == "mirrored" && alive).then_some(())
    })
    .await;
    w
}

/// The next `RefsQuery`, skipping assignments (acknowledged) and anything else.
async fn next_query(w: &mut TestWorker) -> RefsQuery {
    loop {
        match w.recv().await.unwrap() {
            CoordMsg::RefsQuery(q) => return q,
            CoordMsg::Assign(d) => w.send(&WorkerMsg::AssignAck { seq: d.seq }).await.unwrap(),
            _ => {}
        }
    }
}

fn get(http: SocketAddr, path: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    tokio::spawn(async move { http_raw(http, raw.as_bytes()).await })
}

fn page(q: &RefsQuery, names: &[&str]) -> RefsPage {
    RefsPage {
        query: q.query,
        repo: q.repo.clone(),
        refs: names
            .iter()
            .map(|n| RefEntry {
                name: (*n).into(),
                id: "e5a2f01".into(),
            })
            .collect(),
        next: None,
        error: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_refs_are_asked_of_the_holder_and_hostile_pages_close_it() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let mut w = holder(&c, 7, gitmirror_wire::PROTOCOL_VERSION).await;

    let asked = get(
        c.http,
        &format!("/api/repos/{REPO}/refs?after=refs%2Fheads%2Fa&limit=2"),
    );
    let q = next_query(&mut w).await;
    assert_eq!(
        (q.repo.as_str(), q.after.as_deref(), q.limit),
        (REPO, Some("refs/heads/a"), 2)
    );
    let mut p = page(&q, &["refs/heads/b", "refs/heads/c"]);
    p.next = Some("refs/heads/c".into());
    w.send(&WorkerMsg::RefsPage(p)).await.unwrap();
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "repo": REPO, "worker": 0, "next": "refs/heads/c",
            "refs": [{"name": "refs/heads/b", "id": "e5a2f01"},
                     {"name": "refs/heads/c", "id": "e5a2f01"}],
        })
    );

    // A page of another repo closes the connection; the waiting request is told at once.
    let asked = get(c.http, &format!("/api/repos/{REPO}/refs"));
    let q = next_query(&mut w).await;
    assert_eq!(q.limit, 1000, "the default limit");
    let mut p = page(&q, &["refs/heads/x"]);
    p.repo = "z/zlib/zlib".into();
    w.send(&WorkerMsg::RefsPage(p)).await.unwrap();
    assert!(w.closed().await.contains("protocol error"));
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("worker 0"), "{body}");

    // A page nobody asked for closes the connection too.
    let mut w = holder(&c, 7, gitmirror_wire::PROTOCOL_VERSION).await;
    let unasked = page(
        &RefsQuery {
            query: 1_000_000,
            repo: REPO.into(),
            after: None,
            limit: 10,
        },
        &[],
    );
    w.send(&WorkerMsg::RefsPage(unasked)).await.unwrap();
    assert!(w.closed().await.contains("protocol error"));

    // A protocol-2 holder is never asked: 503 naming its protocol.
    let _old = holder(&c, 7, gitmirror_wire::MIN_PROTOCOL_VERSION).await;
    let (status, body) = common::eventually(15, "the protocol-2 holder", || async {
        let (s, b) = c.get(&format!("/api/repos/{REPO}/refs")).await;
        (s == 503 && b.contains("protocol 2")).then_some((s, b))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = c.get("/api/repos/no/such/repo/refs").await;
    assert_eq!(status, 404);
    c.stop().await.1.unwrap();
}

/// A holder that never answers: after the 10 s deadline the request gets `504` naming the
/// worker, and the coordinator kept serving meanwhile (the loop did not wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_a_silent_holder_makes_a_504_naming_it() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let mut w = holder(&c, 9, gitmirror_wire::PROTOCOL_VERSION).await;
    let asked = get(c.http, &format!("/api/repos/{REPO}/refs"));
    let q = next_query(&mut w).await;
    assert_eq!(q.repo, REPO);
    // While the query waits, the API answers.
    let (status, _) = c.get("/api/status").await;
    assert_eq!(status, 200);
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 504, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["worker"], 0);
    assert!(v["error"].as_str().unwrap().contains("worker 0"), "{body}");
    // The page that comes too late is dropped, not a protocol error: the same connection
    // answers the next query (its frames arrive in order, so the late one came first).
    w.send(&WorkerMsg::RefsPage(page(&q, &[]))).await.unwrap();
    let asked = get(c.http, &format!("/api/repos/{REPO}/refs"));
    let q2 = next_query(&mut w).await;
    assert!(q2.query > q.query);
    w.send(&WorkerMsg::RefsPage(page(&q2, &["refs/heads/m"])))
        .await
        .unwrap();
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    c.stop().await.1.unwrap();
}
