//! Trigger-to-event latency (SPEC §8, §9): a coordinator with its embedded worker
//! (`local_worker:`) mirrors a repo served by a real `git daemon` on loopback. 100 times:
//! commit upstream, `POST /api/repos/{id}/fetch`, and long-poll
//! `GET /api/events?since=…&wait=5` until the event carrying the new commit appears. Prints
//! the median and p99 of trigger → event; the target is a median under 200 ms.
//!
//! `cargo bench -p gitmirrord --bench trigger_latency` (`ROUNDS=20` for fewer rounds).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark program

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPO_ID: &str = "b/bench/bench";
const TARGET_MEDIAN: Duration = Duration::from_millis(200);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@localhost")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@localhost")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct GitDaemon(Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Long-poll until an event for the repo whose refs include `sha`; returns its seq.
async fn wait_event(api: SocketAddr, mut since: u64, sha: &str, deadline: Instant) -> u64 {
    loop {
        assert!(Instant::now() < deadline, "no event with {sha} in time");
        let (s, body) = http(
            api,
            &format!("GET /api/events?since={since}&wait=5 HTTP/1.1\r\nHost: b\r\n\r\n"),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for e in v["events"].as_array().unwrap() {
            since = e["seq"].as_u64().unwrap();
            let hit = e["repo"] == REPO_ID
                && e["refs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["new"].as_str() == Some(sha));
            if hit {
                return since;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it short.
    let quick = std::env::args().any(|a| a == "--test") || std::env::args().all(|a| a != "--bench");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 3 } else { 100 });
    gitmirror_common::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // Upstream: a bare repo served by git daemon, and a work tree that pushes to it.
    let srv = root.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git(
        root,
        &[
            "init",
            "-q",
            "--bare",
            srv.join("bench.git").to_str().unwrap(),
        ],
    );
    let work = root.join("work");
    git(
        root,
        &["init", "-q", "-b", "master", work.to_str().unwrap()],
    );
    git(
        &work,
        &[
            "remote",
            "add",
            "origin",
            srv.join("bench.git").to_str().unwrap(),
        ],
    );
    let commit = |n: usize| -> String {
        std::fs::write(work.join("f"), format!("{n}\n")).unwrap();
        git(&work, &["add", "f"]);
        git(&work, &["commit", "-q", "-m", &format!("c{n}")]);
        git(&work, &["push", "-q", "origin", "master"]);
        git(&work, &["rev-parse", "HEAD"])
    };
    commit(0);
    let port = free_port();
    let _daemon = GitDaemon(
        Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", srv.display()),
                srv.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "git daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let index = root.join("index");
    std::fs::create_dir_all(index.join("b/bench")).unwrap();
    std::fs::write(
        index.join(REPO_ID),
        format!("url: git://127.0.0.1:{port}/bench.git\n"),
    )
    .unwrap();
    let text = format!(
        "state_dir: {}\nindexes: [{{name: bench, url: {}, poll_interval: 60s}}]\n\
         local_worker:\n  mirror_dir: {}\n  name: bench\n",
        root.join("state").display(),
        index.display(),
        root.join("mirrors").display()
    );
    let cfg = gitmirrord::Config::parse(&root.join("gitmirrord.yaml"), &text).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let quic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let http_sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = http_sock.local_addr().unwrap();
        let (handle, ctl) = gitmirrord::control();
        let task = tokio::spawn(gitmirrord::run(
            cfg,
            gitmirrord::Listeners {
                quic,
                http: http_sock,
                hooks: None,
            },
            ctl,
        ));
        // The first clone.
        let head = git(&work, &["rev-parse", "HEAD"]);
        let mut seq = wait_event(api, 0, &head, Instant::now() + Duration::from_secs(60)).await;

        let mut samples = Vec::with_capacity(rounds);
        for n in 1..=rounds {
            let sha = commit(n);
            let t0 = Instant::now();
            let (s, body) = http(
                api,
                &format!(
                    "POST /api/repos/{REPO_ID}/fetch HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(s, 202, "{body}");
            seq = wait_event(api, seq, &sha, t0 + Duration::from_secs(30)).await;
            samples.push(t0.elapsed());
        }
        handle.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

        samples.sort();
        let median = percentile(&samples, 0.5);
        let p99 = percentile(&samples, 0.99);
        println!(
            "trigger_latency: {rounds} rounds of commit → POST fetch → event (local_worker, git daemon on loopback)"
        );
        println!(
            "  min {:>7.1} ms\n  median {:>4.1} ms  (target < {} ms: {})\n  p99 {:>7.1} ms\n  max {:>7.1} ms",
            samples[0].as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0,
            TARGET_MEDIAN.as_millis(),
            if median < TARGET_MEDIAN { "met" } else { "NOT met" },
            p99.as_secs_f64() * 1000.0,
            samples[samples.len() - 1].as_secs_f64() * 1000.0,
        );
    });
}
