//! `GET /api/repos/{id}/refs` on the coordinator's side, without sockets (SPEC §12).

use super::*;
use crate::fleet::ReposFile;
use crate::index::Entry;
use crate::registry::{Introduction, Registry};
use gitmirror_wire::{HeldRepo, Holdings};

const REPO: &str = "a/abc/abc";

fn intro(n: u128, protocol: u32) -> Introduction<'static> {
    Introduction {
        uuid: Uuid::from_u128(n),
        previous_id: None,
        name: "w",
        weight: 1.0,
        software: "test",
        protocol,
        serve_url_base: None,
        addr: None,
    }
}

/// A fleet of one repo and one worker of `protocol` that reports a mirror of it when
/// `mirrored`.
fn fleet(protocol: u32, mirrored: bool) -> (Fleet, Uuid) {
    let entry = Entry {
        id: REPO.into(),
        url: "git://h/abc".into(),
        index: "idx".into(),
        metadata: None,
    };
    let mut f = Fleet::new(
        Duration::from_secs(4),
        Registry::new(10),
        ReposFile::default(),
        [entry],
    );
    let w = intro(1, protocol);
    f.connect(&w, 1_000).unwrap();
    let held = Holdings {
        repos: vec![HeldRepo {
            id: REPO.into(),
            url: "git://h/abc".into(),
            mirrored,
        }],
    };
    f.holdings(w.uuid, &held, 1_000);
    if mirrored {
        fetched(&mut f, w.uuid, &[REPO.to_owned()]);
    }
    (f, w.uuid)
}

/// `worker` reports a successful fetch of each of `repos` (a claim alone is not believed).
fn fetched(f: &mut Fleet, worker: Uuid, repos: &[String]) {
    let outcomes: Vec<gitmirror_wire::Outcome> = repos
        .iter()
        .zip(1..)
        .map(|(r, report_id)| gitmirror_wire::Outcome {
            report_id,
            repo: r.clone(),
            url: String::new(),
            finished_ms: 1_000,
            duration_ms: 1,
            result: gitmirror_wire::FetchResult::Fetched,
            changes: Vec::new(),
            ref_count: 0,
            refs_digest: 0,
            next_due_ms: 60_000,
        })
        .collect();
    let report = f.outcomes(worker, &outcomes, 1_000);
    f.recorded(worker, report.upto);
}

fn status(r: Result<Target, Answer>) -> (u16, String) {
    match r {
        Ok(t) => (200, t.label),
        Err(a) => (a.status, String::from_utf8_lossy(&a.body).into_owned()),
    }
}

#[test]
fn spec_12_refs_go_to_a_connected_holder_with_a_mirror() {
    let (f, w) = fleet(gitmirror_wire::PROTOCOL_VERSION, true);
    let t = target(&f, REPO, |_| true).unwrap();
    assert_eq!(t.uuid, w);
    assert_eq!(t.label, "worker 0 (w)");

    let (code, body) = status(target(&f, "x/y/z", |_| true));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("x/y/z"), "{body}");

    let (code, body) = status(target(&f, REPO, |_| false));
    assert_eq!(code, 503, "not connected: {body}");
    assert!(body.contains("no connected worker"), "{body}");
}

#[test]
fn spec_12_refs_of_a_repo_not_mirrored_yet_or_on_an_old_worker_are_503() {
    let (f, _) = fleet(gitmirror_wire::PROTOCOL_VERSION, false);
    let (code, body) = status(target(&f, REPO, |_| true));
    assert_eq!(code, 503, "{body}");

    let (f, _) = fleet(gitmirror_wire::MIN_PROTOCOL_VERSION, true);
    let (code, body) = status(target(&f, REPO, |_| true));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("protocol 2"), "{body}");
}

/// SPEC §12 with §5's make-before-break: while a new owner clones, the old holder with the
/// complete mirror is asked.
#[test]
fn spec_12_refs_come_from_the_old_holder_while_the_new_owner_clones() {
    let entries = (0..20).map(|i| Entry {
        id: format!("r/p{i}/n{i}"),
        url: format!("git://h/{i}"),
        index: "idx".into(),
        metadata: None,
    });
    let mut f = Fleet::new(
        Duration::from_secs(4),
        Registry::new(10),
        ReposFile::default(),
        entries,
    );
    let (a, b) = (intro(1, 3), intro(2, 3));
    f.connect(&a, 1_000).unwrap();
    let all = Holdings {
        repos: (0..20)
            .map(|i| HeldRepo {
                id: format!("r/p{i}/n{i}"),
                url: format!("git://h/{i}"),
                mirrored: true,
            })
            .collect(),
    };
    f.holdings(a.uuid, &all, 1_000);
    let ids: Vec<String> = all.repos.iter().map(|h| h.id.clone()).collect();
    fetched(&mut f, a.uuid, &ids);
    f.connect(&b, 1_000).unwrap();
    f.holdings(b.uuid, &Holdings { repos: vec![] }, 1_000);
    let moved: Vec<String> = f
        .repos()
        .iter()
        .filter(|(_, r)| r.owner == Some(b.uuid))
        .map(|(id, _)| id.to_string())
        .collect();
    assert!(!moved.is_empty(), "the new worker owns some repos");
    for id in &moved {
        let t = target(&f, id, |_| true).unwrap();
        assert_eq!(
            t.uuid, a.uuid,
            "{id}: the holder with a mirror, not the cloning owner"
        );
        // Without that holder connected, nobody can answer.
        let (code, _) = status(target(&f, id, |u| *u == b.uuid));
        assert_eq!(code, 503, "{id}");
    }
}

#[test]
fn spec_12_refs_limit_and_cursor_are_checked() {
    let r = RefsRequest::parse(REPO.into(), None, None).unwrap();
    assert_eq!((r.after, r.limit), (None, DEFAULT_LIMIT));
    let r = RefsRequest::parse(REPO.into(), Some("refs/heads/x"), Some("10000")).unwrap();
    assert_eq!(
        (r.after.as_deref(), r.limit),
        (Some("refs/heads/x"), 10_000)
    );
    assert_eq!(
        RefsRequest::parse(REPO.into(), Some(""), None)
            .unwrap()
            .after,
        None
    );
    for bad in ["0", "10001", "-1", "x", "1.5"] {
        let a = RefsRequest::parse(REPO.into(), None, Some(bad)).unwrap_err();
        assert_eq!(a.status, 400, "{bad}");
        assert!(String::from_utf8_lossy(&a.body).contains("limit="), "{bad}");
    }
}

fn target_of(n: u128) -> Target {
    Target {
        uuid: Uuid::from_u128(n),
        id: n as u32,
        label: format!("worker {n} (w)"),
    }
}

fn request(after: Option<&str>, limit: u32) -> RefsRequest {
    RefsRequest {
        repo: REPO.into(),
        after: after.map(str::to_owned),
        limit,
    }
}

fn sent(msg: CoordMsg) -> RefsQuery {
    match msg {
        CoordMsg::RefsQuery(q) => q,
        other => panic!("sent {other:?}"),
    }
}

fn waiting(reply: Reply) -> oneshot::Receiver<Reply> {
    match reply {
        Reply::Await {
            answer,
            deadline,
            late,
        } => {
            assert_eq!(deadline, DEADLINE);
            assert_eq!(late.status, 504);
            let body = String::from_utf8_lossy(&late.body).into_owned();
            assert!(
                body.contains("worker 1 (w)"),
                "504 names the worker: {body}"
            );
            answer
        }
        _ => panic!("not awaited"),
    }
}

fn json(mut rx: oneshot::Receiver<Reply>) -> (u16, serde_json::Value) {
    let a = rx.try_recv().unwrap().finish();
    (a.status, serde_json::from_slice(&a.body).unwrap())
}

fn refs(n: usize) -> std::collections::BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("refs/heads/b{i:03}"), format!("{i:040x}")))
        .collect()
}

#[test]
fn spec_12_a_refs_page_answers_its_query_as_json() {
    let mut qs = RefsQueries::default();
    let now = Instant::now();
    let (msg, reply) = qs.ask(&target_of(1), request(None, 2), now).unwrap();
    let q = sent(msg);
    assert_eq!((q.repo.as_str(), q.limit), (REPO, 2));
    let rx = waiting(reply);
    let page = refs_page::page(&q, &refs(5));
    qs.answer(Uuid::from_u128(1), page).unwrap();
    assert!(qs.is_empty());
    let (code, v) = json(rx);
    assert_eq!(code, 200);
    assert_eq!(
        v,
        serde_json::json!({
            "repo": REPO,
            "worker": 1,
            "refs": [
                {"name": "refs/heads/b000", "id": format!("{:040x}", 0)},
                {"name": "refs/heads/b001", "id": format!("{:040x}", 1)},
            ],
            "next": "refs/heads/b001",
        })
    );

    // The worker's error (e.g. it no longer holds the repo) is a 503 naming it.
    let (msg, reply) = qs.ask(&target_of(1), request(None, 2), now).unwrap();
    let q = sent(msg);
    let rx = waiting(reply);
    let why = "this worker does not hold a/abc/abc".to_owned();
    qs.answer(Uuid::from_u128(1), refs_page::error(&q, why))
        .unwrap();
    let (code, v) = json(rx);
    assert_eq!(code, 503);
    assert_eq!(v["worker"], 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("worker 1 (w): this worker does not hold")
    );
}

#[test]
fn spec_12_hostile_refs_pages_are_protocol_errors() {
    let mut qs = RefsQueries::default();
    let now = Instant::now();
    let (msg, reply) = qs
        .ask(&target_of(1), request(Some("refs/heads/b001"), 2), now)
        .unwrap();
    let q = sent(msg);
    let _rx = waiting(reply);
    let good = refs_page::page(&q, &refs(5));

    // Never sent.
    let mut p = good.clone();
    p.query = 99;
    assert!(qs.answer(Uuid::from_u128(1), p).is_err());
    // Sent to another worker.
    assert!(qs.answer(Uuid::from_u128(2), good.clone()).is_err());
    // For another repo.
    let mut p = good.clone();
    p.repo = "x/y/z".into();
    assert!(qs.answer(Uuid::from_u128(1), p).is_err());
    // More than asked for, and not after the cursor.
    let mut p = good.clone();
    p.refs = refs_page::page(
        &RefsQuery {
            after: None,
            limit: 5,
            ..q.clone()
        },
        &refs(5),
    )
    .refs;
    assert!(qs.answer(Uuid::from_u128(1), p).is_err());
    // None of those answered the query; the right page still does.
    assert_eq!(qs.len(), 1);
    qs.answer(Uuid::from_u128(1), good.clone()).unwrap();
    // Twice: the second is late, not a violation.
    assert_eq!(qs.answer(Uuid::from_u128(1), good), Ok(()));
}

#[test]
fn spec_12_refs_queries_end_with_their_worker_or_their_waiter() {
    let mut qs = RefsQueries::default();
    let now = Instant::now();
    let (_, reply) = qs.ask(&target_of(1), request(None, 10), now).unwrap();
    let rx1 = waiting(reply);
    let (msg, reply) = qs.ask(&target_of(2), request(None, 10), now).unwrap();
    let q2 = sent(msg);
    let rx2 = match reply {
        Reply::Await { answer, .. } => answer,
        _ => panic!("not awaited"),
    };
    qs.lost(Uuid::from_u128(1));
    let (code, v) = json(rx1);
    assert_eq!(code, 503);
    assert!(v["error"].as_str().unwrap().contains("disconnected"), "{v}");
    assert_eq!(qs.len(), 1, "the other worker's query stays");

    // The HTTP side gave up (504): the query is forgotten, a late page is dropped quietly.
    drop(rx2);
    qs.expire(now);
    assert!(qs.is_empty());
    assert_eq!(
        qs.answer(Uuid::from_u128(2), refs_page::page(&q2, &refs(1))),
        Ok(())
    );

    // Past the deadline without an answer: forgotten too.
    let (_, reply) = qs.ask(&target_of(1), request(None, 10), now).unwrap();
    let _rx = waiting(reply);
    qs.expire(now + DEADLINE + Duration::from_millis(1));
    assert!(qs.is_empty());
}

#[test]
fn spec_12_refs_queries_waiting_are_bounded() {
    let mut qs = RefsQueries::default();
    let now = Instant::now();
    let mut keep = Vec::new();
    for _ in 0..MAX_PENDING {
        let (_, reply) = qs.ask(&target_of(1), request(None, 10), now).unwrap();
        keep.push(reply);
    }
    let Err(a) = qs.ask(&target_of(1), request(None, 10), now) else {
        panic!("over the bound");
    };
    assert_eq!(a.status, 503);
    drop(keep);
    assert!(
        qs.ask(&target_of(1), request(None, 10), now).is_ok(),
        "room again"
    );
}
