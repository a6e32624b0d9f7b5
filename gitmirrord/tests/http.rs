//! The HTTP API of a coordinator run in-process (SPEC §9): each endpoint's shape, errors,
//! and the bounds (head, body, connections, slow clients).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, REPOS, TestWorker, http_head, http_raw};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// SPEC §9 GET /api/status, /healthz, /api/workers, /api/index, /api/events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_endpoints_have_their_shapes() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (s, body) = c.get("/healthz").await;
    assert_eq!((s, body.as_str()), (200, "ok\n"));

    let (s, raw) = c.get("/api/status").await;
    assert_eq!(s, 200);
    assert!(
        raw.starts_with(r#"{"server_status":"running","worker_count":0,"worker:url":{}"#),
        "the prototype's first three keys: {raw}"
    );
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for key in ["version", "uptime_secs", "workers", "repos", "index"] {
        assert!(v.get(key).is_some(), "{key} in {raw}");
    }
    assert_eq!(
        v["repos"],
        serde_json::json!({"total":3,"mirrored":0,"pending":0,"failing":0,"gone":0,"unassigned":3,"waiting":0})
    );
    assert_eq!(v["index"][0]["name"], "test");
    assert_eq!(v["index"][0]["entries"], 3);

    let (s, w) = c.get_json("/api/workers").await;
    assert_eq!((s, w), (200, serde_json::json!([])));
    let (s, e) = c.get_json("/api/workers/0").await;
    assert_eq!(s, 404);
    assert!(e["error"].as_str().unwrap().contains("no worker"));
    assert_eq!(c.get_json("/api/workers/abc").await.0, 404);

    let (s, idx) = c.get_json("/api/index").await;
    assert_eq!(s, 200);
    let idx0 = &idx[0];
    for key in [
        "name",
        "url",
        "commit",
        "last_poll",
        "last_error",
        "entries",
        "rejected",
        "held",
    ] {
        assert!(idx0.get(key).is_some(), "{key} in {idx}");
    }

    let (s, ev) = c.get_json("/api/events?since=0&limit=10").await;
    assert_eq!((s, ev), (200, serde_json::json!({"events": []})));
    assert_eq!(c.get_json("/api/events?since=x").await.0, 400);
    c.stop().await.1.unwrap();
}

/// SPEC §9 GET /api/repos (paging, filters) and GET /api/repos/{id} with slashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_endpoints() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (s, page) = c.get_json("/api/repos?limit=2&offset=1").await;
    assert_eq!(s, 200);
    assert_eq!(page["total"], 3);
    assert_eq!(page["offset"], 1);
    assert_eq!(page["limit"], 2);
    let ids: Vec<&str> = page["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, REPOS[1..].to_vec(), "sorted by id");
    assert_eq!(
        page["repos"][0],
        serde_json::json!({"id":"l/linux/linux-next","url":"https://example.org/linux-next.git",
            "index":"test","worker":null,"state":"unassigned","last_success":null,"refs":null})
    );
    let (_, p) = c.get_json("/api/repos").await;
    assert_eq!(p["limit"], 100);
    let (_, p) = c.get_json("/api/repos?limit=999999").await;
    assert_eq!(p["limit"], 10_000);
    let (_, p) = c.get_json("/api/repos?state=pending").await;
    assert_eq!(p["total"], 0);
    let (_, p) = c.get_json("/api/repos?state=unassigned").await;
    assert_eq!(p["total"], 3);
    let (_, p) = c.get_json("/api/repos?worker=0").await;
    assert_eq!(p["total"], 0);
    assert_eq!(c.get_json("/api/repos?state=sleepy").await.0, 400);
    assert_eq!(c.get_json("/api/repos?limit=-1").await.0, 400);

    let (s, r) = c.get_json("/api/repos/a/abc/abc").await;
    assert_eq!(s, 200);
    assert_eq!(r["id"], "a/abc/abc");
    assert_eq!(r["url"], "https://example.org/abc.git");
    assert_eq!(r["worker"], serde_json::Value::Null);
    assert_eq!(r["clone_url"], serde_json::Value::Null);
    assert_eq!(r["state"], "unassigned");
    for key in [
        "index",
        "last_fetch",
        "last_success",
        "last_change",
        "next_due",
        "fetches",
        "failures",
        "last_error",
        "refs",
        "metadata",
        "holders",
    ] {
        assert!(r.get(key).is_some(), "{key} in {r}");
    }
    // Encoded slashes work too.
    assert_eq!(c.get_json("/api/repos/a%2Fabc%2Fabc").await.0, 200);
    assert_eq!(c.get_json("/api/repos/x/y/z").await.0, 404);
    assert_eq!(c.get_json("/api/repos/a/abc").await.0, 404);
    c.stop().await.1.unwrap();
}

/// SPEC §9: unknown paths 404, wrong methods 405 (with Allow), errors are JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods() {
    let c = Coordinator::start("").await;
    let (s, e) = c.get_json("/nope").await;
    assert_eq!(s, 404);
    assert!(e["error"].is_string());
    assert_eq!(c.get_json("/api/metricsx").await.0, 404);
    let (s, e) = c.post("/api/status").await;
    assert_eq!(s, 405);
    assert!(e["error"].as_str().unwrap().contains("GET"));
    let head = http_head(c.http, b"DELETE /api/repos/a/abc/abc HTTP/1.1\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 405") && head.contains("Allow: GET"),
        "{head}"
    );
    let head = http_head(c.http, b"GET /api/repos/a/abc/abc/fetch HTTP/1.1\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 405") && head.contains("Allow: POST"),
        "{head}"
    );
    assert_eq!(c.get_json("/api/index/test/accept").await.0, 405);
    c.stop().await.1.unwrap();
}

/// SPEC §9 POST …/fetch and POST /api/index/{name}/accept from loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_from_loopback() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (s, e) = c.post("/api/repos/a/abc/abc/fetch").await;
    assert_eq!(s, 409, "no worker owns it: {e}");
    assert_eq!(c.post("/api/repos/q/q/q/fetch").await.0, 404);
    let (s, e) = c.post("/api/index/test/accept").await;
    assert_eq!(s, 409, "nothing held: {e}");
    assert_eq!(c.post("/api/index/nosuch/accept").await.0, 404);
    c.stop().await.1.unwrap();
}

/// SPEC §9: bodies and heads are bounded; a lying Content-Length does no harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits() {
    let c = Coordinator::start("").await;
    let big = format!(
        "POST /api/repos/a/abc/abc/fetch HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    let (s, body) = c.request(big.as_bytes()).await;
    assert_eq!(s, 413, "{body}");
    let (s, _) = c
        .request(b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\nabc")
        .await;
    assert_eq!(s, 413);
    let (s, _) = c
        .request(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    assert_eq!(s, 411);
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40 * 1024));
    let (s, _) = c.request(long.as_bytes()).await;
    assert_eq!(s, 431);
    let (s, _) = c.request(b"garbage\r\n\r\n").await;
    assert_eq!(s, 400);
    // A body within the limit is fine.
    let ok = b"POST /api/index/test/accept HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(c.request(ok).await.0, 409);
    assert_eq!(c.get("/healthz").await.0, 200);
    c.stop().await.1.unwrap();
}

/// SPEC §9: a slow client cannot stall the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stall_others() {
    let c = Coordinator::start("").await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(c.http).await.unwrap();
        s.write_all(b"GET /api/status HTTP/1.1\r\nHo")
            .await
            .unwrap();
        slow.push(s);
    }
    let t = Instant::now();
    let (s, _) = c.get("/api/status").await;
    assert_eq!(s, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Past the connection limit new clients get a quick 503, not a hang.
    for _ in 0..60 {
        let s = tokio::net::TcpStream::connect(c.http).await.unwrap();
        slow.push(s);
    }
    let (s, _) = http_raw(c.http, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(s == 503 || s == 200, "{s}");
    drop(slow);
    common::eventually(15, "slots to free up", || async {
        (c.get("/healthz").await.0 == 200).then_some(())
    })
    .await;
    c.stop().await.1.unwrap();
}

/// SPEC §12 Listings: `/api/repos` pages by cursor (`after=`, `next`), with filters;
/// `/api/workers/{id}` pages its `repo_ids` the same way; `worker:url` stops at
/// `status_url_limit` URLs and says so; `offset` stays accepted but bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_listings_page_by_cursor() {
    let c = Coordinator::start("status_url_limit: 2\n").await;
    c.wait_for_repos().await;

    // Unfiltered, two by two: a cursor, then the last page without one.
    let (s, p) = c.get_json("/api/repos?limit=2").await;
    assert_eq!(s, 200);
    assert_eq!(p["total"], 3);
    assert_eq!(p["next"], REPOS[1]);
    let (_, p) = c
        .get_json(&format!("/api/repos?limit=2&after={}", REPOS[1]))
        .await;
    let ids: Vec<&str> = p["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![REPOS[2]]);
    assert_eq!(p["next"], serde_json::Value::Null);
    // A cursor need not name an existing repo: ids sort as strings.
    let (_, p) = c.get_json("/api/repos?after=b&state=unassigned").await;
    assert_eq!(p["repos"].as_array().unwrap().len(), 2);
    assert_eq!(p["total"], 3, "total counts every match, not only the page");
    assert_eq!(c.get_json("/api/repos?offset=100001").await.0, 400);

    // One worker owns every repo.
    let (mut w, id) = TestWorker::join(c.quic, &c.token, uuid::Uuid::from_u128(7)).await;
    w.holdings(vec![]).await;
    common::eventually(10, "the repos to be assigned", || async {
        let (_, v) = c.get_json(&format!("/api/repos?worker={id}")).await;
        (v["total"] == REPOS.len()).then_some(())
    })
    .await;
    let (_, p) = c
        .get_json(&format!("/api/repos?worker={id}&state=pending&limit=1"))
        .await;
    assert_eq!(p["total"], 3);
    assert_eq!(p["repos"][0]["id"], REPOS[0]);
    assert_eq!(p["next"], REPOS[0]);

    let (s, d) = c.get_json(&format!("/api/workers/{id}?limit=2")).await;
    assert_eq!(s, 200);
    assert_eq!(d["repos"], 3);
    assert_eq!(d["repo_ids"], serde_json::json!(REPOS[..2]));
    assert_eq!(d["next"], REPOS[1]);
    let (_, d) = c
        .get_json(&format!("/api/workers/{id}?after={}", REPOS[1]))
        .await;
    assert_eq!(d["repo_ids"], serde_json::json!(REPOS[2..]));
    assert_eq!(d["next"], serde_json::Value::Null);

    let (_, s) = c.get_json("/api/status").await;
    let urls = s["worker:url"][id.to_string()].as_array().unwrap();
    assert_eq!(urls.len(), 2, "{s}");
    assert_eq!(s["worker:url_truncated"], true);
    c.stop().await.1.unwrap();
}
