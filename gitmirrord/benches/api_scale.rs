//! Coordinator API cost against fleet size (SPEC §12: status, metrics and the page cost
//! O(workers + indexes), a repo is a lookup, a listing is a page).
//!
//! `cargo bench -p gitmirrord --bench api_scale [-- SIZES]` builds a fleet in-process for
//! each size (default 10000,100000,1000000 repos) on 100 workers, gives the repos a mix of
//! states through real outcome batches, and times each request as the main loop answers it
//! (`loop`) and with its encoding (`total`), median and p99 over many runs. The figures
//! should be flat in N. It also prints the fleet's resident memory per repo (exact only
//! for the first size of a run: later ones reuse memory the allocator kept).
//! Plain `main` rather than criterion: one table across sizes is the figure that matters.

use gitmirror_wire::{FailureClass, FetchResult, Holdings, Outcome};
use gitmirrord::api::{IdsPage, RepoFilter, View};
use gitmirrord::fleet::{Fleet, Hold, Holders, RepoState, ReposFile};
use gitmirrord::index::Entry;
use gitmirrord::metrics::{FleetCounts, Inputs};
use gitmirrord::page::{PageInputs, render};
use gitmirrord::registry::{Introduction, Registry};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use uuid::Uuid;

const WORKERS: u128 = 100;

/// One way of answering a request; returns a size so the work is not optimised away.
type Job<'a> = Box<dyn Fn() -> usize + 'a>;
const NOW: i64 = 1_800_000_000_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn entry(i: usize) -> Entry {
    let project = format!("project{}", i / 3);
    let first = &project[..1];
    Entry {
        id: format!("{first}/{project}/repo-{i}"),
        url: format!("https://git.example.org/{project}/repo-{i}.git"),
        index: "main".into(),
        metadata: None,
    }
}

fn build(n: usize) -> Fleet {
    let mut registry = Registry::new(1000);
    let names: Vec<String> = (0..WORKERS).map(|w| format!("worker-{w}")).collect();
    for w in 0..WORKERS {
        let intro = Introduction {
            uuid: Uuid::from_u128(w + 1),
            previous_id: None,
            name: &names[w as usize],
            weight: 1.0,
            software: "bench",
            protocol: gitmirror_wire::PROTOCOL_VERSION,
            serve_url_base: Some("git://mirror.example.org"),
            addr: Some("10.0.0.1:1".into()),
        };
        if registry.admit(&intro, NOW).is_err() {
            eprintln!("cannot admit worker {w}");
        }
    }
    let mut fleet = Fleet::new(
        Duration::from_secs(60),
        registry,
        ReposFile::default(),
        (0..n).map(entry),
    );
    // Every worker is in sync (so each repo has its owner as holder, as in a running
    // fleet), then reports each of its repos: 90 % fetched, 8 % failing, 1 % gone, 1 %
    // waiting, with successes spread over the last week (the staleness histogram).
    for w in 0..WORKERS {
        drop(fleet.holdings(Uuid::from_u128(w + 1), &Holdings { repos: Vec::new() }, NOW));
    }
    let mut batches: BTreeMap<Uuid, Vec<Outcome>> = BTreeMap::new();
    for (i, (id, r)) in fleet.repos().iter().enumerate() {
        let Some(owner) = r.owner else { continue };
        let result = match i % 100 {
            0..=7 => FetchResult::Failed {
                class: FailureClass::Transient,
                message: "connection refused".into(),
            },
            8 => FetchResult::Failed {
                class: FailureClass::Gone,
                message: "repository not found".into(),
            },
            9 => FetchResult::Waiting {
                reason: "disk low".into(),
            },
            _ => FetchResult::Fetched,
        };
        let b = batches.entry(owner).or_default();
        b.push(Outcome {
            report_id: b.len() as u64 + 1,
            repo: id.to_string(),
            url: r.url.to_string(),
            finished_ms: NOW - (i as i64 * 7919) % (7 * 86_400_000),
            duration_ms: 120,
            result,
            changes: Vec::new(),
            ref_count: 12,
            refs_digest: 0,
            next_due_ms: NOW + 600_000,
        });
    }
    for (w, b) in batches {
        let _ = fleet.outcomes(w, &b, NOW);
    }
    fleet
}

/// Median and p99 of `runs` timings of `f`, in microseconds.
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort_unstable();
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// Bytes per repo of a one-holder set: the map it was, the vector it is.
fn holder_sets() {
    const N: usize = 1_000_000;
    // Both kept until the end: freed memory would be reused by the second and hide it.
    let before = rss_bytes();
    let vecs: Vec<Holders> = (0..N)
        .map(|i| Holders::from_iter([(Uuid::from_u128(i as u128 % 100), Hold::MIRRORED)]))
        .collect();
    let vec_bytes = rss_bytes().saturating_sub(before) as f64 / N as f64;
    let before = rss_bytes();
    let maps: Vec<BTreeMap<Uuid, bool>> = (0..N)
        .map(|i| BTreeMap::from([(Uuid::from_u128(i as u128 % 100), true)]))
        .collect();
    let map_bytes = rss_bytes().saturating_sub(before) as f64 / N as f64;
    black_box((&vecs, &maps));
    println!(
        "one-holder set, RSS per repo (24 B of it inline in Repo): BTreeMap<Uuid, bool> {map_bytes:.0} B, Holders {vec_bytes:.0} B"
    );
}

fn main() {
    // Alone: memory freed by one measurement is reused by the next and hides it (run one
    // size per process for the fleet's bytes-per-repo figure too).
    if std::env::args().any(|a| a == "--holders") {
        holder_sets();
        return;
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| {
            a.split(',')
                .filter_map(|s| s.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    println!(
        "{:>9} {:<34} {:>11} {:>11} {:>11} {:>11}",
        "repos", "request (100 workers)", "loop p50", "loop p99", "total p50", "total p99"
    );
    println!(
        "size_of Repo {} B (RepoStatus {} B)",
        std::mem::size_of::<gitmirrord::fleet::Repo>(),
        std::mem::size_of::<gitmirrord::fleet::RepoStatus>()
    );
    for n in sizes {
        let before = rss_bytes();
        let built = Instant::now();
        let fleet = build(n);
        let build_s = built.elapsed().as_secs_f64();
        let per_repo = rss_bytes().saturating_sub(before) as f64 / n as f64;
        let view = View {
            fleet: &fleet,
            now_ms: NOW,
            uptime_secs: 1,
            url_limit: 10_000,
        };
        let some_id = fleet
            .repos()
            .keys()
            .nth(n / 2)
            .map(|k| k.to_string())
            .unwrap_or_default();
        let worker = fleet.registry().by_id(7).map_or(0, |w| w.id);
        let rows: Vec<(&str, Job<'_>, Job<'_>)> = vec![
            (
                "GET /api/status",
                Box::new(|| black_box(view.status(Vec::new())).workers.len()),
                Box::new(|| serde_json::to_vec(&view.status(Vec::new())).map_or(0, |v| v.len())),
            ),
            (
                "GET /metrics",
                Box::new(|| {
                    black_box(FleetCounts::take(
                        fleet.registry(),
                        fleet.census(),
                        fleet.fetch_stats(),
                        NOW,
                    ));
                    1
                }),
                Box::new(|| {
                    let polls = BTreeMap::new();
                    gitmirrord::metrics::render(&Inputs {
                        fleet: FleetCounts::take(
                            fleet.registry(),
                            fleet.census(),
                            fleet.fetch_stats(),
                            NOW,
                        ),
                        uptime_secs: 1,
                        index: &[],
                        index_polls: &polls,
                        event_seq: 0,
                        events: &BTreeMap::new(),
                        webhooks: &[],
                        batches_waiting: 0,
                        hooks: &Default::default(),
                        hosts: &[],
                        pools: Default::default(),
                        transfer: Default::default(),
                    })
                    .len()
                }),
            ),
            (
                "GET / (HTML page)",
                Box::new(|| {
                    render(
                        &fleet,
                        &PageInputs {
                            now_ms: NOW,
                            uptime_secs: 1,
                            recent: &[],
                            last_seq: 0,
                            index: &[],
                            webhooks: &[],
                            hosts: &[],
                            max_interval_secs: 86_400,
                            max_interval_from: "the worker default",
                        },
                    )
                    .len()
                }),
                Box::new(|| 0),
            ),
            (
                "GET /repos/{id} (HTML page)",
                Box::new(|| {
                    gitmirrord::repo_page::render(
                        &fleet,
                        &some_id,
                        &gitmirrord::repo_page::RepoPageInputs {
                            now_ms: NOW,
                            uptime_secs: 1,
                            max_interval_secs: 86_400,
                            max_interval_from: "the worker default",
                            pools: &Default::default(),
                        },
                    )
                    .map_or(0, |h| h.len())
                }),
                Box::new(|| 0),
            ),
            (
                "GET /repos?q=p/project1 (search page)",
                Box::new(|| {
                    gitmirrord::repo_page::search(
                        &fleet,
                        "p/project1",
                        None,
                        &Default::default(),
                        None,
                    )
                    .len()
                }),
                Box::new(|| 0),
            ),
            (
                "GET /api/repos/{id}",
                Box::new(|| usize::from(black_box(view.repo(&some_id)).is_some())),
                Box::new(|| serde_json::to_vec(&view.repo(&some_id)).map_or(0, |v| v.len())),
            ),
            (
                "GET /api/repos?limit=100",
                Box::new(|| {
                    view.repos(&RepoFilter {
                        limit: 100,
                        after: Some(some_id.clone()),
                        ..Default::default()
                    })
                    .repos
                    .len()
                }),
                Box::new(|| {
                    serde_json::to_vec(&view.repos(&RepoFilter {
                        limit: 100,
                        after: Some(some_id.clone()),
                        ..Default::default()
                    }))
                    .map_or(0, |v| v.len())
                }),
            ),
            (
                "GET /api/repos?state=failing&worker=7",
                Box::new(|| {
                    view.repos(&RepoFilter {
                        state: Some(RepoState::Failing),
                        worker: Some(worker),
                        limit: 100,
                        ..Default::default()
                    })
                    .repos
                    .len()
                }),
                Box::new(|| {
                    serde_json::to_vec(&view.repos(&RepoFilter {
                        state: Some(RepoState::Failing),
                        worker: Some(worker),
                        limit: 100,
                        ..Default::default()
                    }))
                    .map_or(0, |v| v.len())
                }),
            ),
            (
                "GET /api/workers/7?limit=100",
                Box::new(|| {
                    view.worker(
                        worker,
                        &IdsPage {
                            after: None,
                            limit: 100,
                        },
                    )
                    .map_or(0, |w| w.repo_ids.len())
                }),
                Box::new(|| {
                    serde_json::to_vec(&view.worker(
                        worker,
                        &IdsPage {
                            after: None,
                            limit: 100,
                        },
                    ))
                    .map_or(0, |v| v.len())
                }),
            ),
        ];
        for (name, on_loop, total) in &rows {
            let runs = 200;
            let (l50, l99) = time(runs, || {
                black_box(on_loop());
            });
            let (t50, t99) = time(runs, || {
                black_box(total());
            });
            let fmt = |us: f64| format!("{us:.0} µs");
            let (t50, t99) = if total() == 0 {
                ("(on loop)".to_owned(), String::new())
            } else {
                (fmt(t50), fmt(t99))
            };
            println!(
                "{n:>9} {name:<34} {:>11} {:>11} {t50:>11} {t99:>11}",
                fmt(l50),
                fmt(l99)
            );
        }
        println!(
            "{n:>9} fleet built in {build_s:.1} s; RSS {:.0} bytes/repo; census exact: {}",
            per_repo,
            fleet.census_is_exact()
        );
        drop(rows);
        drop(fleet);
    }
}
