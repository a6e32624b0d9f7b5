//! Event log at scale (SPEC §12; docs/scale.md "Event log"): durable append rate with
//! group commit (one write and one fsync per append call, as the coordinator makes one per
//! outcome batch), and the time `since` takes to find an event in a log of 1M and 10M
//! events, plus the time to open such a log (checkpoint + replay of the last segment).
//!
//! `cargo bench -p gitmirrord --bench event_log` (`EVENTS=1000000` for one size only,
//! `BENCH_DIR=/path` for where the logs are written; default the system temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark program

use gitmirrord::events::{EventDraft, EventKind, EventLog, EventOptions, RefUpdate};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Distinct repos the events are spread over.
const REPOS: u64 = 100_000;

fn draft(i: u64) -> EventDraft {
    EventDraft {
        time_ms: 1_800_000_000_000 + i as i64,
        repo: format!("r/repo{}/repo{}", i % REPOS, i % REPOS),
        url: format!("https://git.example.org/repo{}.git", i % REPOS),
        worker: (i % 1000) as u32,
        kind: EventKind::Updated,
        trigger: Default::default(),
        refs: vec![RefUpdate {
            name: "refs/heads/main".into(),
            old: Some(format!("{:040x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
            new: Some(format!(
                "{:040x}",
                (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )),
        }],
        source: Uuid::from_u128((i % 1000) as u128),
        report_id: i,
    }
}

fn options() -> EventOptions {
    EventOptions {
        max_bytes: u64::MAX,
        ..EventOptions::default()
    }
}

/// Durable appends of `batch` events per call for about `for_how_long`: events/s.
fn append_rate(log: &mut EventLog, next: &mut u64, batch: u64, for_how_long: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_how_long {
        let drafts = (*next..*next + batch).map(draft).collect();
        log.append(drafts).unwrap();
        *next += batch;
        n += batch;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let sizes: Vec<u64> = std::env::var("EVENTS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("EVENTS: numbers"))
        .collect();
    let base = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("event log bench (segments of 64 MiB, events spread over {REPOS} repos)");
    for &size in &sizes {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let mut log = EventLog::open_with(dir.path(), options()).unwrap();
        let mut next = 1u64;
        let mut rates = Vec::new();
        for batch in [1u64, 10, 100, 1000] {
            rates.push((
                batch,
                append_rate(&mut log, &mut next, batch, Duration::from_secs(3)),
            ));
        }
        // Fill up to `size` in big batches (still one fsync each).
        let fill = Instant::now();
        let filled_from = next;
        while next <= size {
            let end = (next + 10_000).min(size + 1);
            log.append((next..end).map(draft).collect()).unwrap();
            next = end;
        }
        let fill_secs = fill.elapsed().as_secs_f64();
        let last = log.last_seq();
        // `since` at spread positions, each answered with 100 events.
        let mut times = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let since = x % last;
            let t = Instant::now();
            let got = log.since(since, 100).unwrap();
            times.push(t.elapsed());
            assert_eq!(got[0].seq, since + 1);
        }
        times.sort();
        let bytes = log.bytes();
        drop(log);
        let t = Instant::now();
        let log = EventLog::open_with(dir.path(), options()).unwrap();
        let open = t.elapsed();
        assert_eq!(log.last_seq(), last);
        println!(
            "{last} events, {:.1} GiB of segments:",
            bytes as f64 / (1u64 << 30) as f64
        );
        for (batch, rate) in rates {
            println!("  durable append, {batch:>4} events per fsync: {rate:>9.0} events/s");
        }
        if next > filled_from {
            println!(
                "  fill in batches of 10000: {:.0} events/s",
                (next - filled_from) as f64 / fill_secs
            );
        }
        println!(
            "  since=N&limit=100 at random N: median {:?}, p99 {:?}, max {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
        println!("  open (checkpoint + replay after it): {open:?}");
    }
}
