//! Events and what is built on them, on a coordinator run in-process with hand-written
//! QUIC workers: owner-only events during a hand-off (SPEC §5, §8), the `wait=` long-poll
//! of `GET /api/events` (SPEC §9), webhook delivery (SPEC §8) and `GET /metrics` (SPEC §9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, HookReceiver, REPOS, TestWorker, eventually, http_raw, outcome};
use gitmirror_wire::{FailureClass, FetchResult};
use gitmirrord::ring::{Hashing, Member, Ring};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const W1: Uuid = Uuid::from_u128(0x1111);

/// A worker that has joined, synced, and holds what it was assigned.
async fn joined(c: &Coordinator, uuid: Uuid) -> (TestWorker, Vec<String>) {
    let (mut w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    w.holdings(vec![]).await;
    let d = w.next_assign().await;
    let ids = d.upsert.iter().map(|r| r.id.clone()).collect();
    (w, ids)
}

/// Clone every repo with worker `W1`: three `cloned` events, seq 1..=3.
async fn clone_all(c: &Coordinator) -> TestWorker {
    c.wait_for_repos().await;
    let (mut w, ids) = joined(c, W1).await;
    assert_eq!(ids.len(), REPOS.len());
    let outcomes = REPOS
        .iter()
        .enumerate()
        .map(|(i, id)| {
            outcome(
                i as u64 + 1,
                id,
                FetchResult::Cloned,
                &[("refs/heads/main", None, Some("aaaa"))],
            )
        })
        .collect();
    w.report(outcomes).await;
    w
}

async fn events(c: &Coordinator, since: u64) -> Vec<serde_json::Value> {
    let (s, v) = c.get_json(&format!("/api/events?since={since}")).await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// SPEC §5, §8 (design.md "Events"): during a planned hand-off the old holder's outcomes
/// make no event; the new owner's clone of unchanged refs makes none either; a change
/// during the hand-off gives exactly one event, from the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_off_events_come_from_the_owner_only() {
    let c = Coordinator::start("").await;
    let mut w1 = clone_all(&c).await;
    assert_eq!(events(&c, 0).await.len(), 3);

    // A second worker whose uuid takes over at least two repos (but not all), by the owner
    // function of a fresh coordinator (`points`).
    let w2_uuid = (2..1000u128)
        .map(|n| Uuid::from_u128(n << 64))
        .find(|u| {
            let members = [
                Member {
                    uuid: W1,
                    weight: 1.0,
                },
                Member {
                    uuid: *u,
                    weight: 1.0,
                },
            ];
            let ring = Ring::with(Hashing::Points, &members);
            let moved = REPOS
                .iter()
                .filter(|id| ring.owner(id).map(|i| members[i].uuid) == Some(*u))
                .count();
            moved >= 2 && moved < REPOS.len()
        })
        .unwrap();
    let (mut w2, moved) = joined(&c, w2_uuid).await;
    assert!(moved.len() >= 2, "{moved:?}");

    // The old holder sees upstream change on the second moved repo: acknowledged (its
    // status changes), but no event.
    w1.report(vec![outcome(
        10,
        &moved[1],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("aaaa"), Some("bbbb"))],
    )])
    .await;
    assert_eq!(events(&c, 3).await, Vec::<serde_json::Value>::new());
    let (_, r) = c.get_json(&format!("/api/repos/{}", moved[1])).await;
    assert!(r["last_change"].is_string(), "{r}");

    // The new owner clones. The first repo did not change since its event: no event.
    // The second did (unpublished `bbbb`): one event, from the new owner.
    w2.report(vec![outcome(
        1,
        &moved[0],
        FetchResult::Cloned,
        &[("refs/heads/main", None, Some("aaaa"))],
    )])
    .await;
    assert_eq!(
        events(&c, 3).await,
        Vec::<serde_json::Value>::new(),
        "a hand-off clone of the published refs is not news"
    );
    w2.report(vec![outcome(
        2,
        &moved[1],
        FetchResult::Cloned,
        &[("refs/heads/main", None, Some("bbbb"))],
    )])
    .await;
    let new = events(&c, 3).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["seq"], 4);
    assert_eq!(new[0]["repo"], moved[1].as_str());
    assert_eq!(new[0]["kind"], "cloned");
    assert_ne!(new[0]["worker"], 0, "the new owner's event");
    c.stop().await.1.unwrap();
}

/// SPEC §9 `GET /api/events?wait=`: answers as soon as an event arrives, and with an
/// empty list at the deadline; `wait` is validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_on_the_event_or_at_the_deadline() {
    let c = Coordinator::start("").await;
    let mut w = clone_all(&c).await;

    // An event after `since` already exists: no waiting.
    let t = Instant::now();
    let (s, body) = c.get("/api/events?since=2&wait=30").await;
    assert_eq!(s, 200);
    assert!(t.elapsed() < common::PROMPTLY, "{:?}", t.elapsed());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"][0]["seq"], 3);

    // Nothing new: a short wait ends empty at its deadline.
    let t = Instant::now();
    let (s, body) = c.get("/api/events?since=3&wait=1").await;
    let took = t.elapsed();
    assert_eq!((s, body.as_str()), (200, r#"{"events":[]}"#));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(1) + common::PROMPTLY,
        "{took:?}"
    );

    // A waiting poll answers as soon as the event is durable.
    let http = c.http;
    let poll = tokio::spawn(async move {
        let (s, body) = http_raw(
            http,
            b"GET /api/events?since=3&wait=20 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        (s, body, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // let the poll start waiting
    assert!(
        !poll.is_finished(),
        "the long-poll answered without an event"
    );
    w.report(vec![outcome(
        4,
        REPOS[0],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("aaaa"), Some("cccc"))],
    )])
    .await;
    let acked = Instant::now();
    let (s, body, answered) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, 200);
    assert!(
        answered.saturating_duration_since(acked) < common::PROMPTLY,
        "answered {:?} after the event",
        answered.saturating_duration_since(acked)
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["seq"], 4);
    assert_eq!(v["events"][0]["kind"], "updated");

    for bad in ["wait=soon", "wait=-1", "wait=NaN"] {
        let (s, e) = c.get_json(&format!("/api/events?since=0&{bad}")).await;
        assert_eq!(s, 400, "{bad}: {e}");
    }
    c.stop().await.1.unwrap();
}

/// SPEC §9: long-polls are bounded and never take the slots other clients need; a poll
/// longer than the 10 s request-read deadline is answered, not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_and_outlive_the_read_deadline() {
    use tokio::io::AsyncWriteExt;
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let http = c.http;
    let long = tokio::spawn(async move {
        let t = Instant::now();
        let r = http_raw(
            http,
            b"GET /api/events?since=0&wait=11 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        (r, t.elapsed())
    });
    // Fill every long-poll slot (one is the 11 s poll above).
    let hold = || async {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /api/events?since=0&wait=30 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let mut held = Vec::new();
    for _ in 0..gitmirrord::http::MAX_LONG_POLLS - 1 {
        held.push(hold().await);
    }
    // The next long-poll is refused at once with Retry-After. A probe that arrives before
    // the server has taken in every held poll gets a slot itself (it waits only 1 s), and a
    // held poll arriving meanwhile is the one refused: such a held poll is opened again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = loop {
        for s in held.iter_mut() {
            let mut b = [0u8; 1];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), s.peek(&mut b)).await
            {
                *s = hold().await; // answered (refused) or closed: not holding a slot
            }
        }
        let head = common::http_head(http, b"GET /api/events?wait=1 HTTP/1.1\r\n\r\n").await;
        if head.starts_with("HTTP/1.1 503") {
            break head;
        }
        assert!(
            Instant::now() < deadline,
            "no long-poll refused for want of slots: {head}"
        );
    };
    assert!(head.contains("Retry-After: 1"), "{head}");
    // ...while ordinary requests are served as usual.
    let t = Instant::now();
    assert_eq!(c.get("/api/status").await.0, 200);
    assert_eq!(c.get("/healthz").await.0, 200);
    assert!(t.elapsed() < common::PROMPTLY, "{:?}", t.elapsed());

    let ((s, body), took) = tokio::time::timeout(Duration::from_secs(20), long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s, body.as_str()),
        (200, r#"{"events":[]}"#),
        "after {took:?}"
    );
    assert!(took >= Duration::from_secs(10), "{took:?}");
    drop(held);
    c.stop().await.1.unwrap();
}

/// SPEC §8: a webhook gets every event in order, the exact JSON of `/api/events`, signed
/// with HMAC-SHA256 when a secret is set; failed attempts are retried (same event, not
/// skipped); the cursor survives a restart, so acknowledged events are not sent again and
/// new ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_in_order_signed_with_retries_across_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let receiver = HookReceiver::start(2);
    let plain = HookReceiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook-secret");
    std::fs::write(&secret_file, "s3cret-key\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "webhooks:\n  - url: {}\n    secret_file: {}\n  - url: {}\n",
        receiver.url(),
        secret_file.display(),
        plain.url()
    );
    let c = Coordinator::start_in(dir, &extra).await;
    let w = clone_all(&c).await;
    let want = events(&c, 0).await;
    assert_eq!(want.len(), 3);

    let got = eventually(20, "three events acknowledged by the webhook", || async {
        let ok = receiver.accepted();
        (ok.len() >= 3).then_some(ok)
    })
    .await;
    let all = receiver.seen();
    assert_eq!(all.len(), 5, "two failures, three successes: {all:#?}");
    assert_eq!(
        [all[0].seq(), all[1].seq(), all[2].seq()],
        [1, 1, 1],
        "the failed event is retried, not skipped"
    );
    for (d, e) in got.iter().zip(&want) {
        assert_eq!(
            &d.json(),
            e,
            "the body is the event as /api/events shows it"
        );
        assert_eq!(d.path, "/hook");
        assert_eq!(d.header("content-type"), Some("application/json"));
        assert_eq!(
            d.header("x-gitmirror-event-seq"),
            Some(e["seq"].to_string().as_str())
        );
        let sig = format!(
            "sha256={}",
            common::hmac_sha256_hex(b"s3cret-key", d.body.as_bytes())
        );
        assert_eq!(d.header("x-gitmirror-signature"), Some(sig.as_str()));
    }
    let plain_got = eventually(20, "the second webhook", || async {
        let ok = plain.accepted();
        (ok.len() >= 3).then_some(ok)
    })
    .await;
    assert_eq!(
        plain_got.iter().map(|d| d.seq()).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(plain_got[0].header("x-gitmirror-signature").is_none());

    // Restart: the cursors were saved; only new events go out.
    drop(w);
    let (dir, r) = c.stop().await;
    r.unwrap();
    assert!(dir.path().join("state/webhooks.json").exists());
    let c = Coordinator::start_in(dir, &extra).await;
    c.wait_for_repos().await;
    let (mut w, _) = joined(&c, W1).await;
    w.report(vec![outcome(
        4,
        REPOS[1],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("aaaa"), Some("dddd"))],
    )])
    .await;
    eventually(20, "event 4 delivered after the restart", || async {
        receiver
            .accepted()
            .iter()
            .any(|d| d.seq() == 4)
            .then_some(())
    })
    .await;
    let seqs: Vec<u64> = receiver.accepted().iter().map(|d| d.seq()).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "nothing repeated, nothing skipped");
    eventually(20, "event 4 at the second webhook", || async {
        (plain.accepted().len() == 4).then_some(())
    })
    .await;
    // Metrics show nothing pending once delivered.
    eventually(10, "no webhook event pending", || async {
        let (_, m) = c.get("/metrics").await;
        let pending: Vec<String> = m
            .lines()
            .filter(|l| l.starts_with("gitmirror_webhook_pending{"))
            .map(str::to_owned)
            .collect();
        assert_eq!(pending.len(), 2, "{m}");
        pending.iter().all(|l| l.ends_with(" 0")).then_some(())
    })
    .await;
    c.stop().await.1.unwrap();
}

// ----- GET /metrics -----

/// A sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the Prometheus text format 0.0.4 strictly enough to catch mistakes: HELP and
/// TYPE once per family and before its samples, metric and label names by the grammar,
/// quoted and escaped label values, float values, histogram buckets cumulative with the
/// `+Inf` bucket equal to `_count`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
        chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
    }
    fn value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            v => v.parse().map_err(|_| format!("bad value {v:?}")),
        }
    }
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| err("HELP without text".into()))?;
            if !is_name(name, true) || helps.insert(name.into(), ()).is_some() {
                return Err(err("bad or repeated HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err("TYPE without kind".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err(format!("unknown type {kind}")));
            }
            if samples.iter().any(|s: &Sample| s.name.starts_with(name)) {
                return Err(err("TYPE after samples".into()));
            }
            if types.insert(name.into(), kind.into()).is_some() {
                return Err(err("repeated TYPE".into()));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line".into()));
        }
        // name{labels} value
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(err("bad metric name".into()));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end: usize;
            loop {
                let start = chars
                    .peek()
                    .map(|(i, _)| *i)
                    .ok_or_else(|| err("open labels".into()))?;
                if r[start..].starts_with('}') {
                    end = start + 1;
                    break;
                }
                let eq = r[start..]
                    .find('=')
                    .ok_or_else(|| err("label without =".into()))?
                    + start;
                let lname = &r[start..eq];
                if !is_name(lname, false) {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                if !r[eq + 1..].starts_with('"') {
                    return Err(err("unquoted label value".into()));
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                    chars.next();
                }
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, '\\')) => v.push('\\'),
                            Some((_, '"')) => v.push('"'),
                            _ => return Err(err("bad escape".into())),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => v.push(c),
                        None => return Err(err("unterminated label value".into())),
                    }
                }
                if labels.insert(lname.to_owned(), v).is_some() {
                    return Err(err("repeated label".into()));
                }
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((i, '}')) => {
                        end = *i + 1;
                        break;
                    }
                    _ => return Err(err("expected , or }".into())),
                }
            }
            rest = &r[end..];
        }
        let v = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        if v.contains(' ') {
            return Err(err("timestamps are not expected".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helps.contains_key(family) {
            return Err(err(format!("sample of {family} before its HELP/TYPE")));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value(v).map_err(err)?,
        });
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .collect();
        let count = samples
            .iter()
            .find(|s| s.name == format!("{family}_count"))
            .ok_or(format!("{family}: no _count"))?;
        let last = buckets.last().ok_or(format!("{family}: no buckets"))?;
        if last.labels.get("le").map(String::as_str) != Some("+Inf") || last.value != count.value {
            return Err(format!(
                "{family}: +Inf bucket {last:?} != count {}",
                count.value
            ));
        }
        if buckets.windows(2).any(|w| w[0].value > w[1].value) {
            return Err(format!("{family}: buckets not cumulative"));
        }
    }
    Ok(samples)
}

/// The sum of the samples of `name` with `labels` (others, such as `trigger`, summed over).
fn get_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    assert!(!matching.is_empty(), "no sample {name}{labels:?}");
    matching.iter().sum()
}

#[test]
fn the_checker_can_fail() {
    for bad in [
        "x 1\n",
        "# HELP x h\n# TYPE x gauge\nx{a=b} 1\n",
        "# HELP x h\n# TYPE x gauge\nx 1 2 3\n",
        "# HELP x h\n# TYPE x gauge\nx{a=\"b} 1\n",
        "# HELP x h\n# TYPE x gauge\n# TYPE x gauge\nx 1\n",
        "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_sum 1\nx_count 1\n",
        "# HELP x h\n# TYPE x gauge\nx one\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad:?}");
    }
    let ok = parse_exposition(
        "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\",u=\"a\\\"\\\\\"} 1\nx_bucket{le=\"+Inf\"} 2\nx_sum 3.5\nx_count 2\n",
    )
    .unwrap();
    assert_eq!(ok[0].labels["u"], "a\"\\");
}

/// SPEC §9 `GET /metrics`: the Prometheus text format, with the series the operator needs,
/// whose values follow what happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_follow_the_fleet() {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let head = common::http_head(c.http, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let scrape = || async {
        let (s, text) = c.get("/metrics").await;
        assert_eq!(s, 200);
        parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let m = scrape().await;
    assert_eq!(get_value(&m, "gitmirror_up", &[]), 1.0);
    assert_eq!(
        get_value(
            &m,
            "gitmirror_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_repos", &[("state", "unassigned")]),
        3.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_workers", &[("state", "alive")]),
        0.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_fetches_total", &[("outcome", "cloned")]),
        0.0
    );
    assert_eq!(get_value(&m, "gitmirror_event_seq", &[]), 0.0);
    assert_eq!(get_value(&m, "gitmirror_repos_never_mirrored", &[]), 3.0);
    assert_eq!(get_value(&m, "gitmirror_staleness_seconds_count", &[]), 0.0);
    assert_eq!(
        get_value(&m, "gitmirror_index_entries", &[("index", "test")]),
        3.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_index_rejected_entries", &[("index", "test")]),
        0.0
    );
    let polls = |m: &[Sample]| -> f64 {
        m.iter()
            .filter(|s| s.name == "gitmirror_index_polls_total")
            .map(|s| s.value)
            .sum()
    };
    let polls_before = polls(&m);
    assert!(polls_before >= 1.0, "the first poll is counted");

    // A worker clones two repos and fails on the third.
    let (mut w, _) = joined(&c, W1).await;
    w.report(vec![
        outcome(
            1,
            REPOS[0],
            FetchResult::Cloned,
            &[("refs/heads/main", None, Some("aa"))],
        ),
        outcome(
            2,
            REPOS[1],
            FetchResult::Cloned,
            &[("refs/heads/main", None, Some("bb"))],
        ),
        outcome(
            3,
            REPOS[2],
            FetchResult::Failed {
                class: FailureClass::Gone,
                message: "not found".into(),
            },
            &[],
        ),
    ])
    .await;
    let m = scrape().await;
    assert_eq!(
        get_value(&m, "gitmirror_workers", &[("state", "alive")]),
        1.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_repos", &[("state", "mirrored")]),
        2.0
    );
    assert_eq!(get_value(&m, "gitmirror_repos", &[("state", "gone")]), 1.0);
    assert_eq!(
        get_value(&m, "gitmirror_repos", &[("state", "unassigned")]),
        0.0
    );
    // SPEC §7.3, §16: failing repos by class, each class present.
    assert_eq!(
        get_value(&m, "gitmirror_repos_failing", &[("class", "gone")]),
        1.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_repos_failing", &[("class", "auth")]),
        0.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_fetches_total", &[("outcome", "cloned")]),
        2.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_fetches_total", &[("outcome", "failed_gone")]),
        1.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_fetch_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_fetch_duration_seconds_sum", &[]),
        4.5
    );
    assert_eq!(
        get_value(
            &m,
            "gitmirror_fetch_duration_seconds_bucket",
            &[("le", "1")]
        ),
        0.0
    );
    assert_eq!(
        get_value(
            &m,
            "gitmirror_fetch_duration_seconds_bucket",
            &[("le", "2.5")]
        ),
        3.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_events_total", &[("kind", "cloned")]),
        2.0
    );
    assert_eq!(get_value(&m, "gitmirror_event_seq", &[]), 2.0);
    // Every batch was acknowledged: none waits for the event log.
    assert_eq!(get_value(&m, "gitmirror_outcome_batches_waiting", &[]), 0.0);
    assert_eq!(get_value(&m, "gitmirror_repos_never_mirrored", &[]), 1.0);
    assert_eq!(get_value(&m, "gitmirror_staleness_seconds_count", &[]), 2.0);
    assert_eq!(
        get_value(&m, "gitmirror_staleness_seconds_bucket", &[("le", "60")]),
        2.0,
        "just fetched"
    );
    // SPEC §16: the same repo now refused while a credential matched → class auth.
    w.report(vec![outcome(
        4,
        REPOS[2],
        FetchResult::Failed {
            class: FailureClass::Auth,
            message: "HTTP 403 (credential https://git.example.org/)".into(),
        },
        &[],
    )])
    .await;
    let m = scrape().await;
    assert_eq!(
        get_value(&m, "gitmirror_repos_failing", &[("class", "auth")]),
        1.0
    );
    assert_eq!(
        get_value(&m, "gitmirror_repos_failing", &[("class", "gone")]),
        0.0
    );
    // Polls keep being counted (poll_interval is 1 s).
    eventually(10, "more index polls", || async {
        (polls(&scrape().await) > polls_before).then_some(())
    })
    .await;
    // The worker goes away: suspect.
    drop(w);
    eventually(10, "a suspect worker in the metrics", || async {
        (get_value(
            &scrape().await,
            "gitmirror_workers",
            &[("state", "suspect")],
        ) == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(c.post("/metrics").await.0, 405);
    c.stop().await.1.unwrap();
}

/// Small segments and a small size limit, so segments close and retention drops them.
const SMALL_LOG: &str = "events: {segment_bytes: 1K, max_bytes: 4K}\n";

/// Report fetches of `REPOS[0]` moving `refs/heads/main` through new values until the log
/// has dropped its first segments; returns the next report id.
async fn fill_past_retention(c: &Coordinator, w: &mut TestWorker, mut report: u64) -> u64 {
    let mut prev = "aaaa".to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let new = format!("{report:04x}");
        w.report(vec![outcome(
            report,
            REPOS[0],
            FetchResult::Fetched,
            &[("refs/heads/main", Some(&prev), Some(&new))],
        )])
        .await;
        report += 1;
        prev = new;
        let (s, v) = c.get_json("/api/events?since=0&limit=1").await;
        assert_eq!(s, 200, "{v}");
        if v["events"][0]["seq"].as_u64().unwrap() > 1 && report > 40 {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "retention never dropped a segment"
        );
    }
}

/// SPEC §12 "Event retention": whole segments past `events.max_bytes` are dropped; a
/// `since` before the oldest kept event answers 410 with `oldest_seq`, no `since` and
/// `since=0` start at it; every event carries `ref_count`; a webhook whose cursor fell
/// behind skips to the oldest kept event and counts the skipped ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_retention_answers_410_and_webhooks_skip() {
    let c = Coordinator::start(SMALL_LOG).await;
    let mut w = clone_all(&c).await;
    fill_past_retention(&c, &mut w, 10).await;
    let (_, v) = c.get_json("/api/events?limit=1").await;
    let oldest = v["events"][0]["seq"].as_u64().unwrap();
    assert!(oldest > 1);
    assert_eq!(v["events"][0]["ref_count"], 1);
    assert_eq!(v["events"][0]["refs"].as_array().unwrap().len(), 1);
    let (s, v) = c.get_json("/api/events?since=1").await;
    assert_eq!(s, 410, "{v}");
    assert_eq!(v["oldest_seq"], oldest);
    assert!(v["error"].as_str().unwrap().contains("retention"), "{v}");
    let (s, v) = c
        .get_json(&format!("/api/events?since={}", oldest - 1))
        .await;
    assert_eq!((s, v["events"][0]["seq"].as_u64()), (200, Some(oldest)));
    drop(w);
    let (dir, r) = c.stop().await;
    r.unwrap();
    let segments = std::fs::read_dir(dir.path().join("state/events"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments >= 2, "{segments} segments");

    // A webhook that acknowledged nothing yet: its cursor (0) is behind retention.
    let hook = HookReceiver::start(0);
    std::fs::write(
        dir.path().join("state/webhooks.json"),
        format!(
            "gitmirror-state webhooks v1\n{{\"cursors\":{{\"{}\":0}}}}\n",
            hook.url()
        ),
    )
    .unwrap();
    let extra = format!("{SMALL_LOG}webhooks:\n  - url: {}\n", hook.url());
    let c = Coordinator::start_in(dir, &extra).await;
    let (_, v) = c.get_json("/api/events?limit=1").await;
    let oldest = v["events"][0]["seq"].as_u64().unwrap();
    let (_, last) = c.get_json("/api/events?since=0&limit=1000").await;
    let last = last["events"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let got = eventually(20, "the kept events delivered", || async {
        let ok = hook.accepted();
        (ok.len() as u64 > last - oldest).then_some(ok)
    })
    .await;
    let seqs: Vec<u64> = got.iter().map(|d| d.seq()).collect();
    assert_eq!(seqs, (oldest..=last).collect::<Vec<_>>());
    let (_, text) = c.get("/metrics").await;
    let samples = parse_exposition(&text).unwrap();
    let url = gitmirrord::webhook::redact(&hook.url());
    assert_eq!(
        get_value(
            &samples,
            "gitmirror_webhook_skipped_events_total",
            &[("url", &url)]
        ),
        (oldest - 1) as f64
    );
    c.stop().await.1.unwrap();
}

/// SPEC §8, §12: the refs already published stay known across a restart though they are
/// not kept in memory (they are read from the checkpoint and the later segments): a
/// report of a change that was already published is no event, a new value of that ref is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_published_refs_are_read_back_after_a_restart() {
    let c = Coordinator::start(SMALL_LOG).await;
    let mut w = clone_all(&c).await;
    let next = fill_past_retention(&c, &mut w, 10).await;
    let last = c.get_json("/api/events?limit=1000").await.1["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let value = last["refs"][0]["new"].as_str().unwrap().to_owned();
    let old = last["refs"][0]["old"].as_str().unwrap().to_owned();
    let seq = last["seq"].as_u64().unwrap();
    drop(w);
    let (dir, r) = c.stop().await;
    r.unwrap();
    let c = Coordinator::start_in(dir, SMALL_LOG).await;
    c.wait_for_repos().await;
    let (mut w, _) = joined(&c, W1).await;
    // The same change again (as a re-sent report under a new id would be), from a mirror
    // whose whole ref set differs from the published one (so the digest alone would call
    // it news): no event.
    let mut again = outcome(
        next,
        REPOS[0],
        FetchResult::Fetched,
        &[("refs/heads/main", Some(&old), Some(&value))],
    );
    again.refs_digest ^= 1;
    w.report(vec![again]).await;
    let (_, v) = c.get_json(&format!("/api/events?since={seq}")).await;
    assert_eq!(
        v["events"],
        serde_json::json!([]),
        "a published value again"
    );
    // Another repo's clone refs, published at the start, are known too.
    let mut again = outcome(
        next + 1,
        REPOS[1],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("0000"), Some("aaaa"))],
    );
    again.refs_digest ^= 1;
    w.report(vec![again]).await;
    let (_, v) = c.get_json(&format!("/api/events?since={seq}")).await;
    assert_eq!(v["events"], serde_json::json!([]), "a cloned value again");
    w.report(vec![outcome(
        next + 2,
        REPOS[0],
        FetchResult::Fetched,
        &[("refs/heads/main", Some(&value), Some("ffff"))],
    )])
    .await;
    let (_, v) = c.get_json(&format!("/api/events?since={seq}")).await;
    assert_eq!(v["events"][0]["seq"], seq + 1);
    assert_eq!(v["events"][0]["refs"][0]["new"], "ffff");
    c.stop().await.1.unwrap();
}

/// SPEC §12: a clone of a repo with more refs than `events.max_refs` (default 10,000) is
/// one event with `ref_count` and no list; the next fetch changing 10 of them lists exactly
/// those 10; the refs the big clone published are known before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_an_event_with_more_refs_than_max_refs_lists_only_the_count() {
    const N: usize = 30_000;
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut w, _) = joined(&c, W1).await;
    let names: Vec<String> = (0..N).map(|i| format!("refs/changes/{i:06}/1")).collect();
    let clone: Vec<(&str, Option<&str>, Option<&str>)> = names
        .iter()
        .map(|n| (n.as_str(), None, Some("1111")))
        .collect();
    w.report(vec![outcome(1, REPOS[0], FetchResult::Cloned, &clone)])
        .await;
    let ev = events(&c, 0).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["kind"], "cloned");
    assert_eq!(ev[0]["ref_count"], N);
    assert_eq!(ev[0]["refs"], serde_json::json!([]));

    let changed: Vec<(&str, Option<&str>, Option<&str>)> = names[..10]
        .iter()
        .map(|n| (n.as_str(), Some("1111"), Some("2222")))
        .collect();
    w.report(vec![outcome(2, REPOS[0], FetchResult::Fetched, &changed)])
        .await;
    let ev = events(&c, 1).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["ref_count"], 10);
    let listed: Vec<&str> = ev[0]["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        names[..10].iter().map(String::as_str).collect::<Vec<_>>()
    );

    // A report of a ref at the value the big clone published is no event, from a
    // mirror whose whole set differs (so only the per-ref record can tell).
    let stale = |id: u64| {
        let mut o = outcome(
            id,
            REPOS[0],
            FetchResult::Fetched,
            &[(names[N - 1].as_str(), Some("0000"), Some("1111"))],
        );
        o.refs_digest ^= 1;
        o
    };
    w.report(vec![stale(3)]).await;
    assert_eq!(events(&c, 2).await, Vec::<serde_json::Value>::new());
    drop(w);
    let (dir, r) = c.stop().await;
    r.unwrap();
    let c = Coordinator::start_in(dir, "").await;
    c.wait_for_repos().await;
    let (mut w, _) = joined(&c, W1).await;
    w.report(vec![stale(4)]).await;
    assert_eq!(events(&c, 2).await, Vec::<serde_json::Value>::new());
    c.stop().await.1.unwrap();
}
