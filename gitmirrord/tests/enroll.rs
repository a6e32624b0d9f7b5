//! Per-worker certificates over real QUIC (SPEC §17; issue 10 finding 1, build item 1):
//! the join token only enrolls; an enrolled uuid is spoken for by its certificate alone;
//! `workers remove` revokes; `enroll: manual` waits for `workers approve`; workers of
//! older protocols are admitted by the token until they enroll.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, REPOS, TestWorker, cert_of, hello};
use gitmirror_wire::{CoordMsg, RefuseCode, WorkerMsg};
use uuid::Uuid;

/// Send `Hello` for `uuid` on `w` and return the answer.
async fn say_hello(w: &mut TestWorker, c: &Coordinator, uuid: Uuid, protocol: u32) -> CoordMsg {
    let mut h = hello(uuid, &c.token.secret);
    h.protocol = protocol;
    w.send(&WorkerMsg::Hello(h)).await.unwrap();
    w.recv().await.unwrap()
}

fn refusal(msg: &CoordMsg) -> (RefuseCode, String) {
    match msg {
        CoordMsg::Refused(r) => (r.code, r.message.clone()),
        other => panic!("expected Refused, got {other:?}"),
    }
}

async fn worker_json(c: &Coordinator, uuid: Uuid) -> serde_json::Value {
    let (_, workers) = c.get_json("/api/workers").await;
    workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["uuid"] == uuid.to_string())
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

// Issue 10 finding 1 / SPEC §17: before certificates, anyone with the join token could
// connect as an existing worker's uuid and replace it (the coordinator closed the real
// worker's connection as REPLACED). Now the token only enrolls: the first connection of
// uuid 7 gets a certificate, and from then on the token no longer speaks for uuid 7 — nor
// does another worker's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_17_a_stolen_token_cannot_replace_an_enrolled_worker() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let honest_uuid = Uuid::from_u128(7);
    let (mut honest, honest_id) = TestWorker::join(c.quic, &c.token, honest_uuid).await;
    assert!(
        cert_of(&c.token, honest_uuid).is_some(),
        "the first connection enrolled it"
    );
    honest.holdings(vec![]).await;
    assert_eq!(honest.next_assign().await.upsert.len(), REPOS.len());
    assert_eq!(worker_json(&c, honest_uuid).await["enrolled"], true);

    // The thief: the right secret and the honest worker's uuid, no certificate.
    let mut thief = TestWorker::open(c.quic, &c.token).await;
    let answer = say_hello(
        &mut thief,
        &c,
        honest_uuid,
        gitmirror_wire::PROTOCOL_VERSION,
    )
    .await;
    let (code, message) = refusal(&answer);
    assert_eq!(code, RefuseCode::Enrolled, "{message}");
    assert!(message.contains("only its certificate"), "{message}");
    assert!(thief.closed().await.contains("only its certificate"));
    // An older-protocol thief gets the same answer, in a code it can read.
    let mut old = TestWorker::open(c.quic, &c.token).await;
    let (code, _) = refusal(&say_hello(&mut old, &c, honest_uuid, 3).await);
    assert_eq!(code, RefuseCode::BadSecret);

    // A worker enrolled in its own right presents its certificate but claims uuid 7.
    let other_uuid = Uuid::from_u128(8);
    let (other, _) = TestWorker::join(c.quic, &c.token, other_uuid).await;
    drop(other);
    let mut forger =
        TestWorker::open_with(c.quic, &c.token, cert_of(&c.token, other_uuid).as_ref()).await;
    let (code, message) = refusal(&say_hello(&mut forger, &c, honest_uuid, 4).await);
    assert_eq!(code, RefuseCode::Revoked, "{message}");

    // The honest connection was never replaced: it still talks (a report is
    // acknowledged on it), and it is alive.
    honest.report(Vec::new()).await;
    assert_eq!(worker_json(&c, honest_uuid).await["state"], "alive");

    // It reconnects with its certificate: a plain Welcome, same id, no new certificate.
    let before = cert_of(&c.token, honest_uuid);
    drop(honest);
    let (_again, id) = TestWorker::join(c.quic, &c.token, honest_uuid).await;
    assert_eq!(id, honest_id);
    assert_eq!(cert_of(&c.token, honest_uuid), before);
    c.stop().await.1.unwrap();
}

// SPEC §17: a worker that never received its certificate (the coordinator died while
// sending it; the fingerprint was saved first) is not locked out: until the worker shows
// it kept the certificate (its first Holdings, or presenting it), the token enrolls it
// again. Found by the coordinator restart suite, which kills the coordinator right after a
// worker joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_17_an_enrollment_never_received_is_repeated() {
    let c = Coordinator::start("").await;
    let uuid = Uuid::from_u128(61);
    let mut lost = TestWorker::open(c.quic, &c.token).await;
    let answer = say_hello(&mut lost, &c, uuid, 4).await;
    assert!(matches!(answer, CoordMsg::Enrolled(_)), "{answer:?}");
    drop(lost); // the answer "never arrived": the certificate is not kept
    let (dir, stopped) = c.stop().await;
    stopped.unwrap();
    let c = Coordinator::start_in(dir, "").await;
    let (mut w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    assert!(cert_of(&c.token, uuid).is_some(), "enrolled again");
    w.holdings(vec![]).await;
    w.next_assign().await;
    // Confirmed: now only the certificate speaks for it.
    let mut thief = TestWorker::open(c.quic, &c.token).await;
    let (code, _) = refusal(&say_hello(&mut thief, &c, uuid, 4).await);
    assert_eq!(code, RefuseCode::Enrolled);
    c.stop().await.1.unwrap();
}

// SPEC §17 with §4.1: rotating the join secret stops enrollments with the old token, but
// an enrolled worker needs no token: its certificate still speaks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_17_a_rotated_secret_does_not_cut_off_enrolled_workers() {
    let c = Coordinator::start("").await;
    let uuid = Uuid::from_u128(21);
    drop(TestWorker::join(c.quic, &c.token, uuid).await);
    gitmirror_common::trust::rotate_secret(&c.state_dir).unwrap();
    let (_w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    let mut new = TestWorker::open(c.quic, &c.token).await;
    let (code, _) = refusal(&say_hello(&mut new, &c, Uuid::from_u128(22), 4).await);
    assert_eq!(code, RefuseCode::BadSecret);
    c.stop().await.1.unwrap();
}

// SPEC §17 `workers remove` revokes the certificate, closes the connection and moves the
// repos at once; neither the certificate nor the token speaks for the uuid until
// `workers approve`, after which the token enrolls it anew. The decision survives a
// restart (it is in the registry before the API answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_17_remove_revokes_and_approve_lets_it_enroll_again() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (a_uuid, b_uuid) = (Uuid::from_u128(31), Uuid::from_u128(32));
    let (mut a, _) = TestWorker::join(c.quic, &c.token, a_uuid).await;
    a.holdings(vec![]).await;
    a.next_assign().await;
    let (mut b, b_id) = TestWorker::join(c.quic, &c.token, b_uuid).await;
    b.holdings(vec![]).await;
    b.next_assign().await;

    let (status, body) = c.post(&format!("/api/workers/{a_uuid}/remove")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], true);
    assert!(
        a.closed().await.contains("removed"),
        "a's connection closed"
    );
    let aj = worker_json(&c, a_uuid).await;
    assert_eq!(
        (aj["removed"].clone(), aj["state"].clone()),
        (true.into(), "dead".into())
    );
    // Every repo goes to b now, not after dead_after (the default 5 minutes).
    common::eventually(10, "every repo owned by b", || async {
        let (_, repos) = c.get_json("/api/repos").await;
        let all = repos["repos"].as_array().unwrap();
        (all.len() == REPOS.len() && all.iter().all(|r| r["worker"] == b_id)).then_some(())
    })
    .await;

    // Neither its certificate nor the token speaks for it, even after a restart.
    let (dir, stopped) = c.stop().await;
    stopped.unwrap();
    let c = Coordinator::start_in(dir, "").await;
    let mut with_cert =
        TestWorker::open_with(c.quic, &c.token, cert_of(&c.token, a_uuid).as_ref()).await;
    let (code, message) = refusal(&say_hello(&mut with_cert, &c, a_uuid, 4).await);
    assert_eq!(code, RefuseCode::Revoked, "{message}");
    assert!(message.contains("workers approve"), "{message}");
    let mut with_token = TestWorker::open(c.quic, &c.token).await;
    let (code, _) = refusal(&say_hello(&mut with_token, &c, a_uuid, 4).await);
    assert_eq!(code, RefuseCode::Revoked);

    // Approved: the token enrolls it once, with a new certificate.
    let old_cert = cert_of(&c.token, a_uuid);
    let (status, body) = c.post(&format!("/api/workers/{a_uuid}/approve")).await;
    assert_eq!(status, 200, "{body}");
    let mut w = TestWorker::open(c.quic, &c.token).await;
    let answer = say_hello(&mut w, &c, a_uuid, 4).await;
    assert!(
        matches!(answer, CoordMsg::Enrolled(_)),
        "approved: enrolled again, got {answer:?}"
    );
    common::welcomed(&c.token, a_uuid, &answer);
    assert_ne!(cert_of(&c.token, a_uuid), old_cert);
    assert_eq!(worker_json(&c, a_uuid).await["removed"], false);
    // Its Holdings show it kept the certificate.
    w.holdings(vec![]).await;
    w.next_assign().await;
    // Once: a second token connection for it is refused again.
    let mut again = TestWorker::open(c.quic, &c.token).await;
    let (code, _) = refusal(&say_hello(&mut again, &c, a_uuid, 4).await);
    assert_eq!(code, RefuseCode::Enrolled);

    // Bad requests name the problem.
    assert_eq!(c.post("/api/workers/not-a-uuid/remove").await.0, 400);
    assert_eq!(c.get(&format!("/api/workers/{a_uuid}/remove")).await.0, 405);
    c.stop().await.1.unwrap();
}

// SPEC §17 `enroll: manual`: a new worker with a valid token is refused as pending and
// listed, until `workers approve`; then it enrolls. Workers enrolled before are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_17_manual_enrollment_waits_for_approval() {
    let c = Coordinator::start("enroll: manual\n").await;
    let uuid = Uuid::from_u128(41);
    for _ in 0..2 {
        let mut w = TestWorker::open(c.quic, &c.token).await;
        let (code, message) = refusal(&say_hello(&mut w, &c, uuid, 4).await);
        assert_eq!(code, RefuseCode::Pending, "{message}");
        assert!(
            message.contains(&format!("workers approve {uuid}")),
            "{message}"
        );
    }
    let (status, pending) = c.get_json("/api/workers/pending").await;
    assert_eq!(status, 200);
    let listed = pending.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{pending}");
    assert_eq!(listed[0]["uuid"], uuid.to_string());
    assert_eq!(listed[0]["attempts"], 2);
    assert_eq!(worker_json(&c, uuid).await, serde_json::Value::Null);

    assert_eq!(c.post(&format!("/api/workers/{uuid}/approve")).await.0, 200);
    let (_, pending) = c.get_json("/api/workers/pending").await;
    assert_eq!(pending.as_array().unwrap().len(), 0);
    let (_w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    assert!(cert_of(&c.token, uuid).is_some());
    assert_eq!(worker_json(&c, uuid).await["enrolled"], true);
    c.stop().await.1.unwrap();
}

// SPEC §12 "Upgrades" with §17: a protocol-3 worker cannot enroll and is admitted by the
// token while its uuid is not enrolled; its first protocol-4 connection enrolls it, and
// from then on the token (any protocol) no longer speaks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_an_older_worker_is_admitted_until_it_enrolls() {
    let c = Coordinator::start("").await;
    let uuid = Uuid::from_u128(51);
    for _ in 0..2 {
        let (_w, _) = TestWorker::join_speaking(c.quic, &c.token, uuid, 3).await;
        assert!(cert_of(&c.token, uuid).is_none());
        assert_eq!(worker_json(&c, uuid).await["enrolled"], false);
    }
    let (mut w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    assert!(cert_of(&c.token, uuid).is_some(), "upgraded: enrolled");
    w.holdings(vec![]).await;
    w.next_assign().await;
    let mut old = TestWorker::open(c.quic, &c.token).await;
    let (code, _) = refusal(&say_hello(&mut old, &c, uuid, 3).await);
    assert_eq!(
        code,
        RefuseCode::BadSecret,
        "protocol 3 reads Enrolled as BadSecret"
    );
    c.stop().await.1.unwrap();
}
