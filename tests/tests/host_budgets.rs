//! SPEC §18, issue 17 "must show": fleet-wide upstream budgets with the real binaries.
//! Three workers mirror repos served by `git http-backend` behind a counting proxy (in
//! this test) that delays every answer and records how many requests it holds at once:
//!
//! - with `host_limits: [{host: 127.0.0.1, connections: 2}]` it never holds more than 2
//!   while every repo gets cloned (seen failing with the `host_limits` line removed:
//!   "at most 2 at once, saw 11", and 8 in a second run; 3 workers × 4 per host);
//! - after it answers one request 429 `Retry-After: 5`, no worker sends it anything from
//!   one second after that answer until the window ends, and then every worker fetches
//!   again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The worker's test server (http-backend), shared rather than copied.
#[allow(dead_code)]
#[path = "../../gitmirror-worker/tests/common/http.rs"]
mod httpgit;

use gitmirror_tests::daemons::{Fleet, Owners, SETTLE};
use gitmirror_tests::git::{create_bare_repo, repo_id};
use gitmirror_tests::{TestDir, wait_for};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the proxy answered.
#[derive(Debug, Clone)]
struct Req {
    at: Instant,
    path: String,
    status: u16,
}

#[derive(Default)]
struct ProxyState {
    in_flight: usize,
    max_in_flight: usize,
    log: Vec<Req>,
    /// Answer the next request 429 with this `Retry-After` (seconds).
    refuse_next: Option<u64>,
    refused_at: Option<Instant>,
    /// What was in flight when the most was (paths, for the failure message).
    open: Vec<String>,
    at_max: Vec<String>,
}

/// A counting, delaying HTTP proxy in front of one backend (each request on its own
/// connection: the backend answers `Connection: close`).
struct Proxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    fn start(backend: u16, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                {
                    let mut s = st.lock().unwrap();
                    s.in_flight += 1;
                    s.max_in_flight = s.max_in_flight.max(s.in_flight);
                }
                std::thread::spawn(move || {
                    let at = Instant::now();
                    let mut done = false;
                    let answered = relay(conn, backend, delay, &st, &mut done);
                    if !done {
                        end_count(&st);
                    }
                    let mut s = st.lock().unwrap();
                    if let Ok((path, status)) = answered {
                        s.log.push(Req { at, path, status });
                    }
                });
            }
        });
        Self { port, state }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }
}

/// Read one request, wait `delay`, pass it to the backend and its answer back. Returns
/// the request's path and the status answered.
fn relay(
    mut client: TcpStream,
    backend: u16,
    delay: Duration,
    state: &Mutex<ProxyState>,
    done: &mut bool,
) -> std::io::Result<(String, u16)> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    reader.read_line(&mut head)?;
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&h);
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    {
        let mut s = state.lock().unwrap();
        s.open.push(path.clone());
        if s.open.len() >= s.at_max.len() {
            s.at_max = s.open.clone();
        }
    }
    answer(
        &mut client,
        &head,
        &body,
        &path,
        backend,
        delay,
        state,
        done,
    )
}

/// One connection fewer in flight.
fn end_count(state: &Mutex<ProxyState>) {
    state.lock().unwrap().in_flight -= 1;
}

/// The request for `path` no longer counts as in flight.
fn end(state: &Mutex<ProxyState>, path: &str) {
    let mut s = state.lock().unwrap();
    if let Some(i) = s.open.iter().position(|p| *p == path) {
        s.open.remove(i);
    }
}

#[allow(clippy::too_many_arguments)]
fn answer(
    client: &mut TcpStream,
    head: &str,
    body: &[u8],
    path: &str,
    backend: u16,
    delay: Duration,
    state: &Mutex<ProxyState>,
    done: &mut bool,
) -> std::io::Result<(String, u16)> {
    let path = path.to_owned();
    let refuse = {
        let mut s = state.lock().unwrap();
        let r = s.refuse_next.take();
        if r.is_some() {
            s.refused_at = Some(Instant::now());
        }
        r
    };
    if let Some(secs) = refuse {
        *done = true;
        end_count(state);
        end(state, &path);
        write!(
            client,
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        client.flush()?;
        return Ok((path, 429));
    }
    std::thread::sleep(delay);
    let mut up = TcpStream::connect(("127.0.0.1", backend))?;
    up.write_all(head.as_bytes())?;
    up.write_all(b"\r\n")?;
    up.write_all(body)?;
    up.flush()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    // The request ends (for the count) before its last byte goes out: the client cannot
    // have its whole answer, and start the next request, before that. Counting until
    // after the write let a descheduled thread of this proxy count a finished request
    // beside the next one (seen once in five runs: 3 with 2 in flight).
    let (most, last) = answer.split_at(answer.len().saturating_sub(1));
    client.write_all(most)?;
    client.flush()?;
    *done = true;
    end_count(state);
    end(state, &path);
    client.write_all(last)?;
    client.flush()?;
    let status = String::from_utf8_lossy(&answer[..answer.len().min(20)])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((path, status))
}

/// `n` bare repos named `<prefix><i>` under `up`, served through a proxy; the index's
/// entries (id → URL through the proxy).
fn upstream(
    t: &TestDir,
    prefix: &str,
    n: usize,
    delay: Duration,
) -> (Proxy, BTreeMap<String, String>) {
    let up = t.sub("upstream");
    for i in 0..n {
        create_bare_repo(&up.join(format!("{prefix}{i}")), &format!("{prefix}{i}"));
    }
    let backend = httpgit::HttpGit::start(&up);
    // The server lives as long as the process: its threads hold what they need.
    let port = backend.port;
    std::mem::forget(backend);
    let proxy = Proxy::start(port, delay);
    let repos = (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            (repo_id(&name), proxy.url(&name))
        })
        .collect();
    (proxy, repos)
}

fn mirrored(fleet: &Fleet, n: u64) -> Result<serde_json::Value, String> {
    let s = fleet.coord.status()?;
    if s["repos"]["mirrored"].as_u64() == Some(n) {
        Ok(s)
    } else {
        Err(format!("mirrored: {}", s["repos"]))
    }
}

// SPEC §18: with a budget of 2 connections for the upstream host, the three workers
// together never hold more than 2 requests open at it, and every repo gets cloned.
#[test]
fn spec_18_fleet_never_exceeds_the_host_connection_budget() {
    let t = TestDir::new("hb-conns");
    let (proxy, repos) = upstream(&t, "budget", 12, Duration::from_millis(300));
    let fleet = Fleet::start_with("hb-conns", &repos, 3, |yaml, _| {
        format!("{yaml}host_limits: [{{host: 127.0.0.1, connections: 2}}]\n")
    });
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let status = wait_for(Duration::from_secs(180), "all 12 repos cloned", || {
        mirrored(&fleet, 12)
    });
    assert!(
        proxy.max_in_flight() <= 2,
        "at most 2 at once, saw {} ({:?})",
        proxy.max_in_flight(),
        proxy.state.lock().unwrap().at_max
    );
    // The API names the budget (SPEC §18, §9) and the metrics carry it.
    let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(hosts.len(), 1, "{status}");
    assert_eq!(hosts[0]["host"], "127.0.0.1", "{status}");
    assert_eq!(hosts[0]["connections"], 2, "{status}");
    assert!(hosts[0]["paused_until_ms"].is_null(), "{status}");
    let (_, metrics) = fleet.coord.get("/metrics").unwrap();
    assert!(
        metrics.contains("gitmirror_host_budget{host=\"127.0.0.1\",kind=\"connections\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gitmirror_host_paused{host=\"127.0.0.1\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("gitmirror_host_in_use{host=\"127.0.0.1\",kind=\"connections\"}"));
    let (_, page) = fleet.coord.get("/").unwrap();
    assert!(page.contains("id=\"hosts\"") && page.contains("127.0.0.1"));
}

// SPEC §18: one 429 `Retry-After: 5` to one worker pauses the host for the whole fleet:
// from a second after the answer until the window ends nothing reaches it; then every
// worker fetches again. One log line for the pause.
#[test]
fn spec_18_one_rate_limit_answer_pauses_the_host_for_the_whole_fleet() {
    let t = TestDir::new("hb-429");
    // 30 repos so that each of the three workers (random uuids) owns some: with 6, one
    // owned none about one run in four; with 30, about once in 60,000.
    let (proxy, repos) = upstream(&t, "pause", 30, Duration::from_millis(50));
    let fleet = Fleet::start("hb-429", &repos, 3);
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let owners: Owners = fleet.wait_settled(SETTLE);
    for w in 0..3 {
        assert!(
            owners.values().any(|&o| o == w),
            "w{w} owns nothing: {owners:?}"
        );
    }
    wait_for(Duration::from_secs(120), "all 30 repos cloned", || {
        mirrored(&fleet, 30)
    });
    // Fetches go on every `min_interval` (2 s): the next request gets the 429.
    let mark = fleet.coord.proc.log_mark();
    proxy.state.lock().unwrap().refuse_next = Some(5);
    let refused_at = wait_for(Duration::from_secs(30), "a request answered 429", || {
        proxy
            .state
            .lock()
            .unwrap()
            .refused_at
            .ok_or("not yet".to_owned())
    });
    let window_end = refused_at + Duration::from_secs(5);
    // The pause shows while it lasts (API and metrics): looked for until the window ends
    // (a loaded machine may take a while to carry the report), not after.
    let window_left = window_end.saturating_duration_since(Instant::now());
    wait_for(window_left, "the pause in /api/status", || {
        let s = fleet.coord.status()?;
        let paused = s["hosts"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["host"] == "127.0.0.1"))
            .map(|h| !h["paused_until_ms"].is_null());
        if paused == Some(true) {
            Ok(())
        } else {
            Err(s["hosts"].to_string())
        }
    });
    let (_, metrics) = fleet.coord.get("/metrics").unwrap();
    // (Read while paused unless this machine stalled for seconds: then it says 0.)
    if Instant::now() < window_end {
        assert!(
            metrics.contains("gitmirror_host_paused{host=\"127.0.0.1\"} 1\n"),
            "{metrics}"
        );
    }
    // Then every worker fetches one of its repos after the window.
    wait_for(
        Duration::from_secs(60),
        "every worker fetching again after the window",
        || {
            let log = proxy.log();
            let mut fetched = [false; 3];
            for r in log.iter().filter(|r| r.at >= window_end && r.status == 200) {
                let name = r
                    .path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("");
                if let Some(&w) = owners.get(&repo_id(name)) {
                    fetched[w] = true;
                }
            }
            if fetched.iter().all(|f| *f) {
                Ok(())
            } else {
                Err(format!("fetched after the window: {fetched:?}"))
            }
        },
    );
    let quiet_from = refused_at + Duration::from_secs(1);
    // The pause ends 5 s after the 429 as each daemon saw it, in whole Unix milliseconds
    // (the coordinator's end, the worker's `now` plus what remains): the fetches held
    // back all start then, which this proxy's clock may place a few milliseconds before
    // its own refused_at + 5 s. Seen once in CI: 12 requests of all three workers within
    // 8 ms inside the window, read here as that release (their times after the 429 were
    // not printed then; they are now). A fetch during the pause comes seconds early.
    let quiet_until = window_end - Duration::from_millis(100);
    let during: Vec<Req> = proxy
        .log()
        .into_iter()
        .filter(|r| r.at >= quiet_from && r.at < quiet_until)
        .collect();
    let after_429: Vec<(String, Duration)> = during
        .iter()
        .map(|r| (r.path.clone(), r.at - refused_at))
        .collect();
    assert!(
        during.is_empty(),
        "requests reached the host during the fleet-wide pause (path, time after the 429): {after_429:?}"
    );
    let log = fleet.coord.proc.log_since(mark);
    let lines = log
        .lines()
        .filter(|l| l.contains("paused for the whole fleet"))
        .count();
    assert_eq!(lines, 1, "one log line per pause:\n{log}");
}
