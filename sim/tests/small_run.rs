//! A small simulator run (SPEC §12 "Simulator"): a real `gitmirrord`, 2,000 repos and 10
//! simulated workers through every phase. It checks that the run completes and that its
//! figures are sane; it times nothing (speed figures are for `gitmirror-sim` runs recorded
//! in docs/scale.md).
//!
//! Needs the `gitmirrord` binary: `cargo build --bins` (nextest's workspace run builds it)
//! or `GITMIRROR_BIN_DIR`.

use gitmirror_sim::{Options, Phase, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_simulator_small_run_completes_with_sane_figures() {
    let opts = Options {
        repos: 2_000,
        workers: 10,
        rate: 2_000.0,
        change_share: 0.05,
        duration: Duration::from_secs(3),
        phases: vec![Phase::Ingest, Phase::Restart, Phase::Kill, Phase::Join],
        // Generous: a loaded CI machine must not turn slowness into a failure.
        timeout: Duration::from_secs(120),
        ..Options::default()
    };
    let report = run(&opts).await.expect("the simulator starts");
    eprintln!("{}", report.table());
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let assign = report.assign.as_ref().expect("assign figures");
    assert!(assign.all_assigned_secs > 0.0);
    // 200 repos per worker: rendezvous hashing stays well inside 1.5× (SPEC §5 says
    // 1.10× from 1,000 repos per worker on).
    assert!(
        assign.balance_max >= 1.0 && assign.balance_max < 1.5,
        "{}",
        assign.balance_max
    );
    assert!(assign.balance_min > 0.5, "{}", assign.balance_min);
    assert!(assign.clone_outcomes_per_sec > 0.0);

    let ingest = report.ingest.as_ref().expect("ingest figures");
    assert!(ingest.outcomes_acked > 0);
    assert!(ingest.changes_sent > 0, "5 % of the outcomes move a ref");
    // Every change became an event, and nothing else did (no clones in this phase).
    assert_eq!(ingest.changes_missing, 0);
    assert_eq!(ingest.events, ingest.changes_sent);
    assert_eq!(ingest.api.len(), 5);
    for l in &ingest.api {
        assert!(
            l.samples > 0,
            "{} was never answered: {:?}",
            l.request,
            l.last_error
        );
        assert_eq!(l.errors, 0, "{}: {:?}", l.request, l.last_error);
        assert!(l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms, "{l:?}");
    }

    let restart = report.restart.as_ref().expect("restart figures");
    assert!(restart.reattached_secs <= restart.all_assigned_secs);

    let kill = report.kill.as_ref().expect("kill figures");
    assert_eq!(kill.killed, 1);
    assert!(kill.repos_orphaned > 0, "the killed worker held repos");
    assert!(kill.reassigned_secs > 0.0);

    let join = report.join.as_ref().expect("join figures");
    assert!(join.moved > 0, "the new worker took repos over");

    assert!(report.coordinator_rss_peak_mib.is_some_and(|m| m > 0.0));
    assert!(report.state_dir_mib.is_some_and(|m| m > 0.0));
    let json = serde_json::to_value(&report).expect("the report serialises");
    assert_eq!(json["repos"], 2_000);
}

/// The same with real `gitmirror-worker` processes (`--real-workers`): 2,000 repos whose
/// upstreams refuse connections, 2 workers, ingest and a coordinator restart. Needs the
/// `gitmirror-worker` binary too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_simulator_real_workers_small_run_completes_with_sane_figures() {
    let opts = Options {
        repos: 2_000,
        workers: 2,
        real_workers: true,
        duration: Duration::from_secs(3),
        // Due again soon after a failure, so outcomes keep coming during the window.
        worker_min_interval: Some(Duration::from_secs(1)),
        phases: vec![Phase::Ingest, Phase::Restart],
        liveness: gitmirror_sim::coordinator::Liveness {
            keepalive: Duration::from_secs(1),
            suspect_after: Duration::from_secs(20),
            dead_after: Duration::from_secs(60),
        },
        timeout: Duration::from_secs(120),
        ..Options::default()
    };
    let report = run(&opts).await.expect("the simulator starts");
    eprintln!("{}", report.table());
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let assign = report.assign.as_ref().expect("assign figures");
    assert!(assign.all_assigned_secs > 0.0);
    assert!(
        assign.balance_max >= 1.0 && assign.balance_max < 1.5,
        "{}",
        assign.balance_max
    );

    let real = report.real.as_ref().expect("real-worker figures");
    assert_eq!(real.worker_config, ["fetch.min_interval: 1000ms"]);
    assert!(real.first_outcome_secs.is_some());
    let ingest = report.ingest.as_ref().expect("ingest figures");
    assert!(ingest.outcomes_acked > 0, "the workers reported outcomes");
    // Every upstream refuses connections: only transient failures, and so no events.
    assert_eq!(
        real.outcomes_by_kind.keys().collect::<Vec<_>>(),
        ["failed_transient"],
        "{:?}",
        real.outcomes_by_kind
    );
    assert_eq!(ingest.events, 0);
    assert!(real.peak_outcomes_per_sec >= ingest.outcomes_per_sec);
    assert_eq!(ingest.api.len(), 4, "status, metrics, one repo, a listing");
    for l in &ingest.api {
        assert!(
            l.samples > 0,
            "{} was never answered: {:?}",
            l.request,
            l.last_error
        );
        assert_eq!(l.errors, 0, "{}: {:?}", l.request, l.last_error);
    }

    let restart = report.restart.as_ref().expect("restart figures");
    assert!(restart.reattached_secs <= restart.all_assigned_secs);

    assert_eq!(real.workers.len(), 2);
    assert_eq!(
        real.workers.iter().map(|w| w.repos).sum::<usize>(),
        2_000,
        "the workers own every repo after the restart: {:?}",
        real.workers
    );
    for w in &real.workers {
        assert!(w.peak_rss_mib > 0.0, "{w:?}");
        assert!(w.state_dir_mib > 0.0, "{w:?}");
    }
    assert!(report.coordinator_rss_peak_mib.is_some_and(|m| m > 0.0));
    assert!(report.table().contains("≥ 2,000 /s"), "the 100k goals");
}
