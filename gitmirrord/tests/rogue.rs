//! Issue 10 finding 1, over real QUIC: a worker with a stolen join token is believed only
//! about itself (SPEC §17; design.md "A worker is believed only about itself").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, REPOS, TestWorker, eventually, hello, outcome};
use gitmirror_wire::{CoordMsg, FetchResult, HeldRepo, WorkerMsg, close_code};
use uuid::Uuid;

/// Messages to `w` up to the acknowledgement of one more outcome: everything the
/// coordinator sent it before handling that outcome (one ordered stream).
async fn drain_until_ack(w: &mut TestWorker, report_id: u64) -> Vec<CoordMsg> {
    w.send(&WorkerMsg::Outcomes(gitmirror_wire::OutcomeBatch {
        outcomes: vec![outcome(
            report_id,
            REPOS[0],
            FetchResult::Fetched,
            &[("refs/heads/main", Some("aa"), Some("aa"))],
        )],
    }))
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        match w.recv().await.unwrap() {
            CoordMsg::OutcomeAck { upto } if upto >= report_id => return seen,
            m => seen.push(m),
        }
    }
}

/// A claim of every repo, from a URL of the claimant's choosing.
fn claim_all() -> Vec<HeldRepo> {
    REPOS
        .iter()
        .map(|id| HeldRepo {
            id: (*id).into(),
            url: "https://evil.example/x.git".into(),
            mirrored: true,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_f1_a_rogue_worker_with_a_stolen_token_destroys_nothing() {
    let c = Coordinator::start("max_worker_weight: 2\n").await;
    c.wait_for_repos().await;

    // The honest worker clones every repo; the coordinator has seen the clones.
    let (mut honest, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(7)).await;
    honest.holdings(vec![]).await;
    let d = honest.next_assign().await;
    assert_eq!(d.upsert.len(), REPOS.len());
    let clones = d.upsert.iter().zip(1..).map(|(r, id)| {
        outcome(
            id,
            &r.id,
            FetchResult::Cloned,
            &[("refs/heads/main", None, Some("aa"))],
        )
    });
    honest.report(clones.collect()).await;
    eventually(10, "every repo mirrored", || async {
        let (_, st) = c.get_json("/api/status").await;
        (st["repos"]["mirrored"] == REPOS.len()).then_some(())
    })
    .await;

    // The rogue: the stolen token, a weight of 1e300, a claim of every repo.
    let rogue_uuid = Uuid::from_u128(0x0bad);
    let mut rogue = TestWorker::open(c.quic, &c.token).await;
    let mut h = hello(rogue_uuid, &c.token.secret);
    h.weight = 1e300;
    rogue.send(&WorkerMsg::Hello(h)).await.unwrap();
    let reply = rogue.recv().await.unwrap();
    let rogue_id = common::welcomed(&c.token, rogue_uuid, &reply)
        .unwrap_or_else(|| panic!("expected Welcome, got {reply:?}"));
    rogue.holdings(claim_all()).await;
    rogue.next_assign().await;

    let (_, workers) = c.get_json("/api/workers").await;
    let rogue_api = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == rogue_id)
        .unwrap()
        .clone();
    assert_eq!(rogue_api["weight"], 2.0, "clamped at max_worker_weight");

    // Nothing the claim did reaches the honest worker as a drop.
    for m in drain_until_ack(&mut honest, 100).await {
        if let CoordMsg::Assign(d) = &m {
            assert!(d.drop.is_empty(), "honest worker told to drop: {d:?}");
        }
    }
    let (_, repos) = c.get_json("/api/repos").await;
    let owned_by_rogue: Vec<String> = repos["repos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["worker"] == rogue_id)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !owned_by_rogue.is_empty() && owned_by_rogue.len() < REPOS.len(),
        "the fixed uuids split the repos: {owned_by_rogue:?}"
    );
    for id in &owned_by_rogue {
        let (_, r) = c.get_json(&format!("/api/repos/{id}")).await;
        assert_eq!(r["state"], "pending", "{id}: a claim is not a mirror: {r}");
    }

    // Fabricated changes of every repo: events only for those it owns, with the index's
    // URL.
    let (_, before) = c.get_json("/api/events?since=0").await;
    let seq0 = before["events"]
        .as_array()
        .unwrap()
        .last()
        .map_or(0, |e| e["seq"].as_u64().unwrap());
    let fabricated = REPOS.iter().zip(1..).map(|(id, n)| {
        outcome(
            n,
            id,
            FetchResult::Fetched,
            &[("refs/heads/main", Some("aa"), Some("ff"))],
        )
    });
    rogue.report(fabricated.collect()).await;
    let (_, after) = c.get_json(&format!("/api/events?since={seq0}")).await;
    let events = after["events"].as_array().unwrap();
    for e in events {
        let repo = e["repo"].as_str().unwrap();
        assert!(
            owned_by_rogue.iter().any(|id| id == repo),
            "an event for a repo the rogue does not own: {e}"
        );
        let name = repo.rsplit('/').next().unwrap();
        assert_eq!(e["url"], format!("https://example.org/{name}.git"), "{e}");
    }
    c.stop().await.1.unwrap();
}

/// SPEC §4.2 and §17, over real QUIC: a worker says what it holds once per connection,
/// before anything about its repos. Outcomes before the holdings, or a second holdings
/// (each would make the coordinator go through every repo the worker claims again, on
/// the loop that answers the fleet), close that connection with a protocol error naming
/// what came; another worker's connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_4_2_holdings_once_and_first_or_the_connection_closes() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut bystander, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(1)).await;
    bystander.holdings(vec![]).await;

    let (mut early, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(2)).await;
    early
        .send(&WorkerMsg::Outcomes(gitmirror_wire::OutcomeBatch {
            outcomes: vec![outcome(1, REPOS[0], FetchResult::Cloned, &[])],
        }))
        .await
        .unwrap();
    let why = early.closed().await;
    assert!(
        why.contains(&close_code::PROTOCOL_ERROR.to_string())
            && why.contains("Outcomes before the worker's Holdings"),
        "{why}"
    );

    let (mut twice, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(3)).await;
    twice.holdings(claim_all()).await;
    twice.holdings(claim_all()).await;
    let why = twice.closed().await;
    assert!(
        why.contains(&close_code::PROTOCOL_ERROR.to_string()) && why.contains("a second Holdings"),
        "{why}"
    );

    // The bystander's connection still carries its reports.
    drain_until_ack(&mut bystander, 1).await;
    assert!(bystander.conn.close_reason().is_none());
    c.stop().await.1.unwrap();
}
