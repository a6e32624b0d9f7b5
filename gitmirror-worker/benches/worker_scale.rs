//! Worker at scale (issue 9 item 8, SPEC §12): a real worker (`gitmirror_worker::run`)
//! holding N repos whose upstreams refuse connections (a loopback port nobody listens on),
//! so every attempt fails fast and each failure is an outcome to persist and report.
//!
//! The coordinator is the worker tests' fake one (the real TLS, handshake and protocol;
//! `tests/common/coord.rs`): it assigns all N repos in one delta and acknowledges outcomes
//! as a real coordinator would. For each N (a separate process each, so the peak RSS is
//! that size's alone) it prints outcomes persisted per second (they are sent only once
//! durable, so received = persisted) over the first `GITMIRROR_BENCH_SECS` seconds
//! (default 20) or N outcomes, and the process's VmHWM (worker plus the small fake
//! coordinator). Goals: rate at 100k within 1.5x of the rate at 1k; RSS <= 128 MB at 100k.
//! It prints figures; it does not fail on them.
//!
//! `cargo bench -p gitmirror-worker --bench worker_scale`
//! (`GITMIRROR_BENCH_SIZES=1000,10000,100000`, `GITMIRROR_BENCH_CONCURRENCY=16`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::coord::FakeCoordinator;
use common::harness::{Event, Inbox, config, fetch_section, start};
use gitmirror_common::units::FreeSpace;
use gitmirror_wire::{CoordMsg, WorkerMsg};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    if let Ok(n) = std::env::var("GITMIRROR_BENCH_ONE") {
        let n: usize = n.parse().unwrap();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(one(n));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for n in env_or("GITMIRROR_BENCH_SIZES", "1000,10000,100000").split(',') {
        let st = std::process::Command::new(&exe)
            .env("GITMIRROR_BENCH_ONE", n.trim())
            .status()
            .unwrap();
        assert!(st.success(), "size {n}");
    }
}

fn vm(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn one(n: usize) {
    let window = Duration::from_secs(env_or("GITMIRROR_BENCH_SECS", "20").parse().unwrap());
    let concurrency: usize = env_or("GITMIRROR_BENCH_CONCURRENCY", "16").parse().unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let mut fetch = fetch_section(Duration::from_secs(3600), Duration::from_secs(6 * 3600));
    fetch.concurrency = concurrency;
    fetch.per_host_concurrency = concurrency;
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch,
        FreeSpace::Bytes(0),
    );
    let worker = start(cfg);
    let mut inbox = Inbox::accept(&coord, 0).await;
    let ids: Vec<String> = (0..n).map(|i| format!("r/{}/r{i}", i % 1000)).collect();
    let urls: Vec<String> = (0..n)
        .map(|i| format!("git://127.0.0.1:{refused}/r{i}"))
        .collect();
    let pairs: Vec<(&str, &str)> = ids
        .iter()
        .map(String::as_str)
        .zip(urls.iter().map(String::as_str))
        .collect();
    // What the fake coordinator holds for the assignment, before the worker gets it.
    let before_kb = vm("VmRSS:");
    let t_assign = Instant::now();
    inbox.assign(&pairs).await;
    let mut acked = false;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut count = 0usize;
    let mut upto = 0u64;
    let deadline = Instant::now() + window + Duration::from_secs(120);
    while count < n {
        if first.is_some_and(|f| f.elapsed() >= window) {
            break;
        }
        let Some(ev) = inbox.next(deadline).await else {
            break;
        };
        match ev {
            Event::Outcome(t, o) => {
                first.get_or_insert(t);
                last = t;
                count += 1;
                upto = upto.max(o.report_id);
                if count.is_multiple_of(500) {
                    inbox.send(CoordMsg::OutcomeAck { upto }).await;
                }
            }
            Event::Other(WorkerMsg::AssignAck { .. }) => {
                acked = true;
                println!(
                    "  {n} repos: assignment persisted and acknowledged in {:.2} s",
                    t_assign.elapsed().as_secs_f64()
                );
            }
            _ => {}
        }
    }
    assert!(acked, "assignment acknowledged");
    let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    println!(
        "worker holding {n} repos (refused upstreams, concurrency {concurrency}): {count} outcomes persisted in {secs:.1} s = {:.0}/s; VmHWM {} MB, VmRSS {} MB (of which {} MB before the assignment was sent)",
        count as f64 / secs.max(1e-9),
        vm("VmHWM:") / 1024,
        vm("VmRSS:") / 1024,
        before_kb / 1024,
    );
    worker.stop().await;
}
