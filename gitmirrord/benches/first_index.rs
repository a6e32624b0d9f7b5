//! A coordinator that lost its state meets a fleet that kept its mirrors (SPEC §12): the
//! workers connect and report their holdings before the index is read, so every held id
//! is unknown and remembered; then the index's first content arrives in parts and each
//! new repo takes up the claims on it. The apply's cost should grow with the repos, not
//! with repos × workers.
//!
//! `cargo bench -p gitmirrord --bench first_index [-- REPOS WORKERS...]` (default 200000
//! repos, 10, 100 and 1000 workers, every repo held by one worker) prints, per worker
//! count, the seconds to apply the index in parts of 65,536 (as the poller sends them).
//! Plain `main`: one line per size is the figure.

use gitmirror_wire::{HeldRepo, Holdings};
use gitmirrord::fleet::{Fleet, ReposFile};
use gitmirrord::index::{Delta, Entry};
use gitmirrord::registry::{Introduction, Registry};
use std::time::{Duration, Instant};
use uuid::Uuid;

const NOW: i64 = 1_800_000_000_000;
const PART: usize = 65_536;

fn entry(i: usize) -> Entry {
    Entry {
        id: format!("p/project{}/repo-{i:07}", i / 3),
        url: format!("https://git.example.org/project{}/repo-{i}.git", i / 3),
        index: "main".into(),
        metadata: None,
    }
}

fn run(repos: usize, workers: usize) -> f64 {
    let mut registry = Registry::new(workers as u32 + 8);
    let names: Vec<String> = (0..workers).map(|w| format!("worker-{w}")).collect();
    for (w, name) in names.iter().enumerate() {
        let intro = Introduction {
            uuid: Uuid::from_u128(w as u128 + 1),
            previous_id: None,
            name,
            weight: 1.0,
            software: "bench",
            protocol: gitmirror_wire::PROTOCOL_VERSION,
            serve_url_base: None,
            addr: None,
        };
        if let Err(e) = registry.admit(&intro, NOW) {
            eprintln!("cannot admit worker {w}: {e:?}");
        }
    }
    let mut fleet = Fleet::new(
        Duration::from_secs(60),
        registry,
        ReposFile::default(),
        std::iter::empty(),
    );
    for w in 0..workers {
        let held = (w..repos)
            .step_by(workers)
            .map(|i| {
                let e = entry(i);
                HeldRepo {
                    id: e.id,
                    url: e.url,
                    mirrored: true,
                }
            })
            .collect();
        drop(fleet.holdings(
            Uuid::from_u128(w as u128 + 1),
            &Holdings { repos: held },
            NOW,
        ));
    }
    let entries: Vec<Entry> = (0..repos).map(entry).collect();
    let parts: Vec<Delta> = entries
        .chunks(PART)
        .map(|c| Delta {
            added: c.to_vec(),
            removed: Vec::new(),
            changed: Vec::new(),
        })
        .collect();
    let n = parts.len();
    let t = Instant::now();
    for (i, part) in parts.iter().enumerate() {
        drop(fleet.apply_index_part(part, i + 1 == n));
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (repos, workers) = match args.split_first() {
        Some((r, w)) if !w.is_empty() => (*r, w.to_vec()),
        Some((r, _)) => (*r, vec![10, 100, 1000]),
        None => (200_000, vec![10, 100, 1000]),
    };
    println!("first index content after every worker reported unknown holdings");
    println!("{:>9} {:>8} {:>12}", "repos", "workers", "apply (s)");
    for w in workers {
        let s = run(repos, w);
        println!("{repos:>9} {w:>8} {s:>12.3}");
    }
}
