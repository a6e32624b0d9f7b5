//! SPEC §18 in the simulator, small (the 1,000-worker figures are in docs/scale.md): a
//! real `gitmirrord` with `host_limits` of 20 connections for the host of every simulated
//! repo, and 100 simulated workers that each want 4 fetches running there at once. The
//! fleet never runs more than 20 by the simulator's own count, nor by the coordinator's
//! sum of the workers' reports, and the shares rotate (every worker gets to fetch).
//!
//! Needs the `gitmirrord` binary: `cargo build --bins` or `GITMIRROR_BIN_DIR`.

use gitmirror_sim::{Options, Phase, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_18_simulated_fleet_never_exceeds_the_host_budget() {
    let opts = Options {
        repos: 1_000,
        workers: 100,
        duration: Duration::from_secs(4),
        phases: vec![Phase::Budget],
        host_budget: 20,
        timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let report = run(&opts).await.expect("the simulator starts");
    eprintln!("{}", report.table());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let b = report.budget.as_ref().expect("budget figures");
    assert!(b.max_in_flight <= 20, "{b:?}");
    assert!(b.max_reported_in_use <= 20, "{b:?}");
    assert!(b.max_granted <= 20, "{b:?}");
    // The budget is used, not just respected.
    assert!(b.max_in_flight >= 10, "{b:?}");
    assert!(b.reported_samples > 0 && b.fetches > 20, "{b:?}");
    assert!(b.workers_served >= 50, "shares rotate: {b:?}");
}
