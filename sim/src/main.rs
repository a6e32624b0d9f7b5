//! `gitmirror-sim`: runs a real coordinator against a generated index and many simulated
//! workers over real QUIC, and prints the figures (docs/scale.md "Simulator").

use clap::Parser;
use gitmirror_sim::coordinator::Liveness;
use gitmirror_sim::{Options, Phase};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gitmirror-sim",
    version,
    about = "Run a real gitmirrord on a generated index with many simulated workers and print its figures"
)]
struct Cli {
    /// Index entries (repos).
    #[arg(long, short = 'n', default_value_t = 2_000)]
    repos: u32,
    /// Simulated workers.
    #[arg(long, short = 'w', default_value_t = 10)]
    workers: usize,
    /// Run this many real `gitmirror-worker` processes instead of simulated workers, on
    /// an index whose upstreams refuse connections (docs/scale.md "100k repos, 4 real
    /// workers"). Phases: ingest, restart, kill.
    #[arg(long, value_name = "N", conflicts_with = "workers")]
    real_workers: Option<usize>,
    /// The real workers' `fetch.min_interval`, seconds (default: theirs, 60 s).
    #[arg(long, value_name = "SECS", requires = "real_workers")]
    worker_min_interval: Option<f64>,
    /// Run the real workers under `nice -n N` (0..=19): 10, as the packaged
    /// gitmirror-worker.service runs them (`Nice=10`), so that the coordinator they share
    /// the machine with comes first; 0 runs them at the coordinator's priority.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    worker_nice: i32,
    /// The gitmirror-worker binary (default: next to this program).
    #[arg(long, value_name = "PATH")]
    gitmirror_worker: Option<PathBuf>,
    /// Fetch outcomes per second offered fleet-wide in the ingest phase.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Share of fetch outcomes that carry a ref change (0..1).
    #[arg(long, default_value_t = 0.01)]
    change_share: f64,
    /// Seconds of the ingest phase (and of the budget phase).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections of the budget phase's `host_limits` for the simulated host (SPEC §18).
    #[arg(long, default_value_t = 200)]
    host_budget: u32,
    /// Phases after `assign`, comma-separated: ingest, restart, kill, join, budget [default:
    /// ingest,restart,kill,join; with real workers ingest,restart].
    #[arg(long, value_delimiter = ',')]
    phases: Option<Vec<String>>,
    /// Keep the index, coordinator state and log here (a complete index of the same size
    /// is reused); default: a temp dir removed at the end.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The gitmirrord binary (default: next to this program).
    #[arg(long, value_name = "PATH")]
    gitmirrord: Option<PathBuf>,
    /// Coordinator `liveness.suspect_after`, seconds [default: 3, with real workers 20].
    #[arg(long)]
    suspect_after: Option<f64>,
    /// Coordinator `liveness.dead_after`, seconds [default: 4, with real workers 60].
    #[arg(long)]
    dead_after: Option<f64>,
    /// Coordinator `liveness.keepalive_interval`, seconds [default: 1, with real workers 5].
    #[arg(long)]
    keepalive: Option<f64>,
    /// Deadline of each wait, seconds; a phase that misses it is reported as a problem.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Workers killed in the kill phase.
    #[arg(long, default_value_t = 1)]
    kill: usize,
    /// Milliseconds between two requests of one API probe.
    #[arg(long, default_value_t = 100)]
    probe_gap_ms: u64,
    /// Unacknowledged outcomes one worker may have in flight (default: 50,000 / workers,
    /// within 100..=5,000).
    #[arg(long)]
    window: Option<usize>,
    /// Only build the index in --work-dir (for later runs to reuse), then stop.
    #[arg(long)]
    index_only: bool,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn secs(v: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("--{flag} {v}: {e}"))
}

fn options(cli: Cli) -> Result<(Options, bool), String> {
    let real = cli.real_workers.is_some();
    let default_phases = if real {
        "ingest,restart"
    } else {
        "ingest,restart,kill,join"
    };
    let phases = cli
        .phases
        .clone()
        .unwrap_or_else(|| default_phases.split(',').map(str::to_owned).collect())
        .iter()
        .filter(|p| !p.is_empty() && *p != "assign")
        .map(|p| {
            Phase::parse(p).ok_or_else(|| {
                format!("--phases: unknown phase {p:?} (ingest, restart, kill, join, budget)")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(0.0..=1.0).contains(&cli.change_share) {
        return Err(format!(
            "--change-share {} is not within 0..1",
            cli.change_share
        ));
    }
    // Simulated workers get short liveness so that the kill phase is short; real worker
    // processes on a busy machine get the coordinator's defaults (SPEC §2.1).
    let (ka, sa, da) = if real {
        (5.0, 20.0, 60.0)
    } else {
        (1.0, 3.0, 4.0)
    };
    let opts = Options {
        repos: cli.repos,
        workers: cli.real_workers.unwrap_or(cli.workers),
        real_workers: real,
        worker_bin: cli.gitmirror_worker,
        worker_nice: (cli.worker_nice > 0).then_some(cli.worker_nice),
        host_budget: cli.host_budget,
        worker_min_interval: cli
            .worker_min_interval
            .map(|v| secs(v, "worker-min-interval"))
            .transpose()?,
        rate: cli.rate.max(0.0),
        change_share: cli.change_share,
        duration: secs(cli.duration, "duration")?,
        phases,
        work_dir: cli.work_dir,
        gitmirrord: cli.gitmirrord,
        liveness: Liveness {
            keepalive: secs(cli.keepalive.unwrap_or(ka), "keepalive")?,
            suspect_after: secs(cli.suspect_after.unwrap_or(sa), "suspect-after")?,
            dead_after: secs(cli.dead_after.unwrap_or(da), "dead-after")?,
        },
        timeout: secs(cli.timeout, "timeout")?,
        probe_gap: Duration::from_millis(cli.probe_gap_ms),
        kill: cli.kill,
        window: cli.window,
        index_only: cli.index_only,
    };
    Ok((opts, cli.json))
}

fn main() -> ExitCode {
    let (opts, json) = match options(Cli::parse()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gitmirror-sim: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitmirror-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(gitmirror_sim::run(&opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitmirror-sim: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("gitmirror-sim: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.table());
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
