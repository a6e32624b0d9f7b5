//! Event webhooks (SPEC §8), against a small HTTP receiver run by the test.

use gitmirror_tests::daemons::SETTLE;
use gitmirror_tests::git::repo_name;
use gitmirror_tests::{Fleet, GitDaemon, wait_for, yaml_path};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One POST the receiver saw: signature header, body, and the status it answered.
#[derive(Debug, Clone)]
struct Delivery {
    signature: Option<String>,
    body: String,
    status: u16,
}

/// An HTTP receiver that fails the first `fail_first` requests with 500, then answers 200.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut count = 0;
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let status = if count < fail_first { 500 } else { 200 };
                        count += 1;
                        if let Some(d) = serve(stream, status) {
                            seen2.lock().unwrap().push(d);
                        }
                    }
                    // Accept pace of a non-blocking listener, not a wait for a condition.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: TcpStream, status: u16) -> Option<Delivery> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let signature = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-gitmirror-signature")
            .then(|| v.trim().to_owned())
    });
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(Delivery {
        signature,
        body,
        status,
    })
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn seq(d: &Delivery) -> u64 {
    serde_json::from_str::<Value>(&d.body)
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or_else(|| panic!("webhook body is not one event: {}", d.body))
}

/// A coordinator without workers whose one webhook posts to `receiver`, signed with
/// `secret` (kept in a 0600 file).
fn with_webhook(
    label: &str,
    repos: &BTreeMap<String, String>,
    receiver: &Receiver,
    secret: &[u8],
) -> Fleet {
    Fleet::start_with(label, repos, 0, |yaml, root| {
        let path = root.join("hook-secret");
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "{yaml}webhooks:\n  - url: http://127.0.0.1:{}/hook\n    secret_file: {}\n",
            receiver.port,
            yaml_path(&path)
        )
    })
}

// SPEC §8: webhooks get the same JSON as the events API, by POST, signed with
// `X-Gitmirror-Signature: sha256=<HMAC>`, retried until acknowledged (2xx), in order, from
// a durable cursor (a restart does not deliver acknowledged events again).
#[test]
fn webhooks_deliver_signed_events_in_order_with_retries() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("hook", 5);
    let receiver = Receiver::start(2);
    let secret = b"webhook-test-secret";
    let mut fleet = with_webhook("hook", &repos, &receiver, secret);
    fleet.add_worker(1.0);
    fleet.wait_settled(SETTLE);
    let events = fleet.coord.wait_events(5, Duration::from_secs(30));
    assert_eq!(events.len(), 5, "{events:?}");

    let accepted = wait_for(Duration::from_secs(30), "5 events acknowledged", || {
        let seen = receiver.seen();
        let ok: Vec<Delivery> = seen.iter().filter(|d| d.status == 200).cloned().collect();
        (ok.len() >= 5).then_some(ok).ok_or_else(|| {
            format!(
                "{} deliveries, {} acknowledged",
                seen.len(),
                ok_count(&seen)
            )
        })
    });
    let all = receiver.seen();
    // The two failed attempts were the first event, retried, not skipped.
    assert_eq!(
        seq(&all[0]),
        seq(&all[2]),
        "retry is not of the same event: {all:#?}"
    );
    assert_eq!(seq(&all[1]), seq(&all[2]));
    let seqs: Vec<u64> = accepted.iter().map(seq).collect();
    let want: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs, want,
        "acknowledged deliveries out of order or repeated"
    );
    for (d, e) in accepted.iter().zip(&events) {
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(&body, e, "webhook body differs from the events API");
        let expected = format!("sha256={}", hmac_hex(secret, d.body.as_bytes()));
        assert_eq!(
            d.signature.as_deref(),
            Some(expected.as_str()),
            "signature of {}",
            d.body
        );
    }

    // Graceful restart (the cursor is saved at shutdown), then one more event: only it is
    // delivered.
    let before = receiver.seen().len();
    fleet
        .coord
        .proc
        .terminate(Duration::from_secs(10))
        .expect("coordinator did not stop on SIGTERM");
    fleet.coord.start_ready();
    fleet.wait_alive(&[0], Duration::from_secs(45));
    let id = repos.keys().next().unwrap();
    daemon.commit(repo_name(id), "master");
    let (status, body) = fleet
        .coord
        .post(&format!("/api/repos/{id}/fetch"), "")
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let new = wait_for(Duration::from_secs(30), "the new event delivered", || {
        let seen = receiver.seen();
        let after: Vec<Delivery> = seen[before..]
            .iter()
            .filter(|d| d.status == 200)
            .cloned()
            .collect();
        after
            .iter()
            .any(|d| {
                serde_json::from_str::<Value>(&d.body)
                    .is_ok_and(|v| v["repo"] == id.as_str() && v["kind"] == "updated")
            })
            .then_some(after.clone())
            .ok_or_else(|| format!("after restart: {after:?}"))
    });
    let seqs: Vec<u64> = new.iter().map(seq).collect();
    assert_eq!(seqs, vec![6], "after the restart: {new:#?}");
}

fn ok_count(seen: &[Delivery]) -> usize {
    seen.iter().filter(|d| d.status == 200).count()
}

/// The events holding `(repo, ref, new oid)`.
fn events_with(events: &[Value], repo: &str, refname: &str, new: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| {
            e["repo"] == repo
                && e["refs"].as_array().is_some_and(|refs| {
                    refs.iter().any(|r| r["name"] == refname && r["new"] == new)
                })
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

// SPEC §8, §6, §10: every upstream ref change in a run with a worker crash and a
// coordinator crash in the middle appears in /api/events exactly once, with sequence
// numbers in order and without gaps; the webhook receiver gets every event with a valid
// signature (at least once: a crash may repeat what was sent after the last saved
// cursor), none missing.
#[test]
fn every_change_is_one_event_and_reaches_the_webhook_across_crashes() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("crashev", 6);
    let receiver = Receiver::start(0);
    let secret = b"crash-secret";
    let mut fleet = with_webhook("crashev", &repos, &receiver, secret);
    fleet.add_worker(1.0);
    fleet.add_worker(1.0);
    fleet.wait_settled(SETTLE);

    let ids: Vec<String> = repos.keys().cloned().collect();
    let mut changes: Vec<(String, String)> = Vec::new();
    // One commit per repo, asked to be fetched at once.
    let commit_all = |fleet: &Fleet| -> Vec<(String, String)> {
        ids.iter()
            .map(|id| {
                let oid = daemon.commit(repo_name(id), "master");
                let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
                (id.clone(), oid)
            })
            .collect()
    };
    // Wait until each change is an event before the next commit to that repo (a change
    // overwritten before any fetch saw it is not one anybody could have seen).
    let seen_as_events = |fleet: &Fleet, made: &[(String, String)]| {
        wait_for(Duration::from_secs(60), "the changes as events", || {
            let events = fleet.coord.events(0)?;
            let missing: Vec<_> = made
                .iter()
                .filter(|(id, oid)| events_with(&events, id, "refs/heads/master", oid).is_empty())
                .collect();
            missing
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("missing {missing:?}"))
        });
    };

    let made = commit_all(&fleet);
    seen_as_events(&fleet, &made);
    changes.extend(made);
    // A worker killed right after new upstream commits: whatever it fetched but did not
    // report is reported after its restart (against the refs it last reported).
    let made = commit_all(&fleet);
    fleet.workers[0].kill();
    fleet.workers[0].start();
    fleet.wait_alive(&[0, 1], Duration::from_secs(45));
    seen_as_events(&fleet, &made);
    changes.extend(made);
    // The coordinator killed with outcomes in flight.
    let made = commit_all(&fleet);
    fleet.coord.kill();
    fleet.coord.start_ready();
    fleet.wait_alive(&[0, 1], Duration::from_secs(45));
    seen_as_events(&fleet, &made);
    changes.extend(made);
    let made = commit_all(&fleet);
    seen_as_events(&fleet, &made);
    changes.extend(made);

    let events = wait_for(Duration::from_secs(60), "every change as an event", || {
        let events = fleet.coord.events(0)?;
        let missing: Vec<_> = changes
            .iter()
            .filter(|(id, oid)| events_with(&events, id, "refs/heads/master", oid).is_empty())
            .collect();
        missing
            .is_empty()
            .then_some(events)
            .ok_or_else(|| format!("missing {missing:?}"))
    });
    for (id, oid) in &changes {
        let seqs = events_with(&events, id, "refs/heads/master", oid);
        assert_eq!(seqs.len(), 1, "{id} → {oid} in events {seqs:?}");
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, want,
        "sequence numbers in order, none missing or repeated"
    );

    let last = *seqs.last().unwrap();
    let delivered = wait_for(Duration::from_secs(60), "every event delivered", || {
        let ok: Vec<Delivery> = receiver
            .seen()
            .into_iter()
            .filter(|d| d.status == 200)
            .collect();
        let got: std::collections::BTreeSet<u64> = ok.iter().map(seq).collect();
        (got.len() as u64 == last && got.iter().copied().eq(1..=last))
            .then_some(ok)
            .ok_or_else(|| format!("delivered {got:?} of 1..={last}"))
    });
    for d in &delivered {
        let s = seq(d);
        let expected = format!("sha256={}", hmac_hex(secret, d.body.as_bytes()));
        assert_eq!(
            d.signature.as_deref(),
            Some(expected.as_str()),
            "signature of {s}"
        );
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(&body, &events[(s - 1) as usize], "webhook body of {s}");
    }
    // In order: after the crash, delivery may resume from an earlier saved cursor, so an
    // event can come twice, but each event's first delivery follows the one before it.
    let firsts: Vec<u64> = {
        let mut seen = std::collections::BTreeSet::new();
        delivered
            .iter()
            .map(seq)
            .filter(|s| seen.insert(*s))
            .collect()
    };
    assert_eq!(firsts, want, "first deliveries in sequence order");
}
