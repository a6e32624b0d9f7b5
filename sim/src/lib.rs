//! `gitmirror-sim` (SPEC §12 "Simulator"): a real `gitmirrord` process on a generated
//! index, W simulated workers in this process speaking the real protocol over real QUIC,
//! and the figures of docs/scale.md.
//!
//! A run is a sequence of phases, each waiting for a condition with a deadline. A phase
//! that misses its deadline is a finding, not a crash: the report names where it broke
//! (with the swarm's state) and the run goes on where it can.
//!
//! - `assign` (always): the coordinator starts on an empty index and every worker joins;
//!   then the index's branch moves to the commit with N entries and the coordinator is
//!   told to poll (SIGHUP). Measured: index read → every repo held by a worker, balance,
//!   and the clone wave (each worker reports every new repo cloned, unpaced).
//! - `ingest`: fetch outcomes at the set rate, a set share moving a ref, while five API
//!   requests are timed in loops; afterwards every change is looked up in `/api/events`.
//! - `restart`: `kill -9` of the coordinator and a new start → every worker re-attached.
//! - `kill`: a worker's socket goes silent → its repos held by others.
//! - `join`: a new worker → it holds its share, and the hand-off completes.
//! - `budget` (SPEC §18): the coordinator runs with `host_limits` of `--host-budget`
//!   connections for the host of every simulated URL; every worker wants 4 fetches
//!   running there at once (each 100–600 ms), within the share the coordinator gives it.
//!   Measured: the most fetches running at once by the simulator's own count, and the
//!   coordinator's sum of what workers report (`gitmirror_host_in_use`); both must stay
//!   within the budget.

pub mod coordinator;
pub mod daemon;
pub mod index;
pub mod probe;
pub mod real;
pub mod report;
pub mod socket;
pub mod swarm;
pub mod worker;

use anyhow::{Context, Result, bail};
use coordinator::{Coordinator, Liveness};
use probe::{Api, Probe};
use report::Report;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::{Shared, Swarm};
use tokio::sync::watch;

/// How often conditions are looked at.
const POLL: Duration = Duration::from_millis(10);
/// How often a long wait says where it stands.
const PROGRESS: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ingest,
    Restart,
    Kill,
    Join,
    Budget,
}

impl Phase {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ingest" => Phase::Ingest,
            "restart" => Phase::Restart,
            "kill" => Phase::Kill,
            "join" => Phase::Join,
            "budget" => Phase::Budget,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub repos: u32,
    pub workers: usize,
    /// Fetch outcomes per second offered fleet-wide during `ingest`.
    pub rate: f64,
    /// Share of fetch outcomes that move a ref.
    pub change_share: f64,
    /// Length of the `ingest` phase.
    pub duration: Duration,
    /// Phases after `assign`, in order.
    pub phases: Vec<Phase>,
    /// Where the index, the coordinator's state and its log go; a temp dir (removed at
    /// the end) when `None`. A complete index of the same size there is reused.
    pub work_dir: Option<PathBuf>,
    /// The `gitmirrord` binary; found next to this program when `None`.
    pub gitmirrord: Option<PathBuf>,
    pub liveness: Liveness,
    /// Deadline of each wait; missing it is reported as a problem.
    pub timeout: Duration,
    /// Pause between two requests of one API probe.
    pub probe_gap: Duration,
    /// Workers killed in the `kill` phase.
    pub kill: usize,
    /// Unacknowledged outcomes one worker may have in flight; by default 50,000 over the
    /// workers, within 100..=5,000.
    pub window: Option<usize>,
    /// Build (or find) the index and stop there.
    pub index_only: bool,
    /// Run `workers` real `gitmirror-worker` processes instead of simulated workers, on
    /// an index whose upstreams refuse connections (see [`real`]).
    pub real_workers: bool,
    /// The `gitmirror-worker` binary; found like `gitmirrord` when `None`.
    pub worker_bin: Option<PathBuf>,
    /// The real workers' `fetch.min_interval`; their default (60 s) when `None`.
    pub worker_min_interval: Option<Duration>,
    /// Run the real workers under `nice -n N`: on a machine they share with the
    /// coordinator, so that it gets the CPU it would have on a machine of its own.
    pub worker_nice: Option<i32>,
    /// The `budget` phase's connections for the simulated upstream host (SPEC §18).
    pub host_budget: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            repos: 2_000,
            workers: 10,
            rate: 10_000.0,
            change_share: 0.01,
            duration: Duration::from_secs(10),
            phases: vec![Phase::Ingest, Phase::Restart, Phase::Kill, Phase::Join],
            work_dir: None,
            gitmirrord: None,
            liveness: Liveness {
                keepalive: Duration::from_secs(1),
                suspect_after: Duration::from_secs(3),
                dead_after: Duration::from_secs(4),
            },
            timeout: Duration::from_secs(300),
            probe_gap: Duration::from_millis(100),
            kill: 1,
            window: None,
            index_only: false,
            real_workers: false,
            worker_bin: None,
            worker_min_interval: None,
            worker_nice: None,
            host_budget: 200,
        }
    }
}

/// `gitmirrord` next to the running program (or next to `target/<profile>/deps/` for a
/// test), or `$GITMIRROR_BIN_DIR/gitmirrord`.
pub fn find_gitmirrord() -> Result<PathBuf> {
    find_binary("gitmirrord")
}

/// The binary `name` of this workspace, looked for where [`find_gitmirrord`] looks.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("GITMIRROR_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_owned());
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_owned());
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no {name} binary in {}: build it (`cargo build -p {name}`) or pass its path",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The work dir (a temp dir when none was given; kept alive by the returned guard) and
/// the index of `opts.repos` entries in it, built unless an earlier run left it there.
async fn prepare(
    opts: &Options,
    upstreams: index::Upstreams,
) -> Result<(Option<tempfile::TempDir>, PathBuf, index::Built)> {
    let (tmp, work) = match &opts.work_dir {
        Some(d) => (None, d.clone()),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("gitmirror-sim-")
                .tempdir()
                .context("creating a temp dir")?;
            let path = tmp.path().to_owned();
            (Some(tmp), path)
        }
    };
    let index_path = work.join(upstreams.dir_name(opts.repos));
    let repos = opts.repos;
    let built = tokio::task::spawn_blocking(move || {
        let built = index::ensure(&index_path, repos, upstreams)?;
        index::publish(&index_path, false)?;
        Ok::<_, anyhow::Error>(built)
    })
    .await??;
    tracing::info!(
        "index of {repos} entries at {} ({})",
        built.path.display(),
        built.took.map_or("reused".into(), |t| format!(
            "built in {:.1} s",
            t.as_secs_f64()
        ))
    );
    Ok((tmp, work, built))
}

/// What the phases work with.
struct Run<'a> {
    opts: &'a Options,
    coord: Coordinator,
    shared: Arc<Shared>,
    swarm: Swarm,
    api: Api,
    index: PathBuf,
}

/// Run the simulation and return its figures. An error means it could not start (no
/// binary, no git, no ports); a phase that breaks is listed in `Report::problems`.
pub async fn run(opts: &Options) -> Result<Report> {
    gitmirror_common::install_crypto_provider();
    if opts.repos == 0 || opts.workers == 0 {
        bail!("--repos and --workers must be at least 1");
    }
    if opts.real_workers {
        return real::run(opts).await;
    }
    let bin = match &opts.gitmirrord {
        Some(b) => b.clone(),
        None => find_gitmirrord()?,
    };
    let (_tmp, work, built) = prepare(opts, index::Upstreams::Invalid).await?;
    let index_path = built.path.clone();
    let repos = opts.repos;

    let mut report = Report {
        repos,
        workers: opts.workers,
        rate: opts.rate,
        change_share: opts.change_share,
        suspect_after_secs: opts.liveness.suspect_after.as_secs_f64(),
        dead_after_secs: opts.liveness.dead_after.as_secs_f64(),
        index_build_secs: built.took.map(|t| t.as_secs_f64()),
        ..Report::default()
    };
    if opts.index_only {
        return Ok(report);
    }

    let max_workers = opts.workers + opts.phases.iter().filter(|p| **p == Phase::Join).count() + 8;
    let coord = Coordinator::new(
        &bin,
        &work.join("coordinator"),
        &index_path,
        max_workers,
        opts.liveness,
        opts.phases
            .contains(&Phase::Budget)
            .then_some(opts.host_budget),
    )?;
    let token = coord.join_token()?;
    let transport = gitmirror_common::trust::transport(worker::KEEPALIVE, worker::IDLE_TIMEOUT)?;
    let client_config = gitmirror_common::trust::client_config(&token, None, transport)?;
    let window = opts
        .window
        .unwrap_or((50_000 / opts.workers).clamp(100, 5_000));
    let shared = Arc::new(Shared::new(repos, coord.quic, token, client_config, window));
    let api = Api::new(coord.http)?;
    let mut r = Run {
        opts,
        coord,
        shared: shared.clone(),
        swarm: Swarm::new(shared),
        api,
        index: index_path,
    };

    match r.assign().await {
        Ok(a) => report.assign = Some(a),
        Err(e) => report.problems.push(format!("assign: {e:#}")),
    }
    if report.assign.is_some() {
        for phase in &opts.phases {
            let broke = match phase {
                Phase::Ingest => r.ingest().await.map(|f| report.ingest = Some(f)),
                Phase::Restart => r.restart().await.map(|f| report.restart = Some(f)),
                Phase::Kill => r.kill().await.map(|f| report.kill = Some(f)),
                Phase::Join => r.join().await.map(|f| report.join = Some(f)),
                Phase::Budget => r.budget().await.map(|f| report.budget = Some(f)),
            };
            if let Err(e) = broke {
                report
                    .problems
                    .push(format!("{phase:?}: {e:#}").to_lowercase());
                if r.coord.check_running().is_err() {
                    break;
                }
            }
        }
    }
    if let Some(k) = &mut report.kill {
        k.bound_secs = (opts.liveness.suspect_after + opts.liveness.dead_after).as_secs_f64() + 2.0;
    }
    report.coordinator_rss_peak_mib = Some(r.coord.peak_rss_mib());
    report.state_dir_mib = Some(r.coord.state_dir_bytes() as f64 / (1024.0 * 1024.0));
    r.swarm.stop().await;
    r.coord.kill9();
    Ok(report)
}

impl Run<'_> {
    /// The swarm's state, for a message saying where a wait broke.
    fn state(&self) -> String {
        let s = &self.shared;
        let c = &s.counters;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "assigned {}/{}, held twice {}, to clone {}, unacknowledged {}, synced workers {}/{}, welcomes {}, failed connects {}, outcomes acked {}",
            s.assigned(),
            s.repos,
            s.multi(),
            s.unmirrored(),
            s.outstanding(),
            s.synced(),
            self.swarm.live_count(),
            n(&c.welcomes),
            n(&c.failed_connects),
            n(&c.outcomes_acked),
        )
    }

    /// Wait until `cond` holds; the instant it did. Fails at the deadline or when the
    /// coordinator has exited.
    async fn until(&mut self, what: &str, mut cond: impl FnMut(&Self) -> bool) -> Result<Instant> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut next_note = Instant::now() + PROGRESS;
        loop {
            if cond(self) {
                return Ok(Instant::now());
            }
            if Instant::now() > next_note {
                tracing::info!("waiting for {what}: {}", self.state());
                next_note += PROGRESS;
            }
            self.coord.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {} s ({})",
                    self.opts.timeout.as_secs(),
                    self.state()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn all_assigned(&self) -> bool {
        self.shared.assigned() == i64::from(self.shared.repos)
    }

    fn all_synced(&self) -> bool {
        self.shared.synced() == self.swarm.live_count() as i64
    }

    /// SPEC §18: every worker wants 4 fetches at once on the one limited host for
    /// `duration`; the simulator counts what runs, and reads what the coordinator sums
    /// from the workers' reports, every 100 ms.
    async fn budget(&mut self) -> Result<report::Budget> {
        use std::sync::atomic::Ordering::SeqCst;
        let shared = self.shared.clone();
        let b = &shared.budget;
        let series = format!(
            "gitmirror_host_in_use{{host=\"{}\",kind=\"connections\"}}",
            worker::BUDGET_HOST
        );
        let (started0, served0) = (b.started.load(SeqCst), b.workers_served.load(SeqCst));
        b.max_in_flight.store(0, SeqCst);
        let t0 = Instant::now();
        b.demand.store(4, SeqCst);
        let end = t0 + self.opts.duration;
        let (mut reported_max, mut granted_max, mut samples) = (0.0f64, 0u64, 0u64);
        let mut full_at: Option<f64> = None;
        while Instant::now() < end {
            self.coord.check_running()?;
            if let Ok(m) = self.api.metrics().await {
                let v = m.get(&series);
                reported_max = reported_max.max(v);
                samples += 1;
                if full_at.is_none() && v >= f64::from(self.opts.host_budget) * 0.9 {
                    full_at = Some(t0.elapsed().as_secs_f64());
                }
            }
            if let Ok((200, body)) = self.api.get("/api/status").await
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
            {
                let g = v["hosts"][0]["granted_connections"].as_u64().unwrap_or(0);
                granted_max = granted_max.max(g);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.demand.store(0, SeqCst);
        self.until("every budgeted fetch finished", |r| {
            r.shared.budget.in_flight.load(SeqCst) == 0
        })
        .await?;
        let secs = t0.elapsed().as_secs_f64();
        let f = report::Budget {
            budget: self.opts.host_budget,
            workers: self.swarm.live_count(),
            secs,
            max_in_flight: u64::try_from(b.max_in_flight.load(SeqCst)).unwrap_or(0),
            max_reported_in_use: reported_max as u64,
            max_granted: granted_max,
            reported_samples: samples,
            fetches: b.started.load(SeqCst) - started0,
            workers_served: b.workers_served.load(SeqCst) - served0,
            near_full_secs: full_at,
        };
        if f.max_in_flight > u64::from(f.budget) || f.max_reported_in_use > u64::from(f.budget) {
            bail!(
                "the budget of {} connections was exceeded: {} running at once by the simulator's count, {} by the coordinator's",
                f.budget,
                f.max_in_flight,
                f.max_reported_in_use
            );
        }
        Ok(f)
    }

    async fn assign(&mut self) -> Result<report::Assign> {
        let start = Instant::now();
        self.coord.start()?;
        for _ in 0..self.opts.workers {
            self.swarm.spawn();
        }
        let deadline = start + self.opts.timeout;
        while !self.api.healthy().await {
            self.coord.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "gitmirrord did not answer /healthz within {} s",
                    self.opts.timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let ready = start.elapsed();
        self.until("every worker joined", Self::all_synced).await?;
        let joined = start.elapsed();

        // The index gets its entries now: from here on the clock runs.
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index::publish(&index, true)).await??;
        let t0 = Instant::now();
        self.coord.hangup()?;
        let assigned = self
            .until("every repo assigned", Self::all_assigned)
            .await?;
        let fair = f64::from(self.shared.repos) / self.swarm.live_count() as f64;
        let held: Vec<usize> = self.swarm.live().map(|m| m.view.held()).collect();
        let settled = self
            .until("every repo reported cloned", |r| r.shared.settled())
            .await?;
        let first_clone = self
            .shared
            .first_clone_secs()
            .map(|s| self.shared.epoch() + Duration::from_secs_f64(s))
            .unwrap_or(t0);
        let clones = self
            .shared
            .counters
            .clones_acked
            .load(std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            "{} workers joined in {:.1} s; all {} repos assigned {:.2} s after the index commit",
            self.opts.workers,
            joined.as_secs_f64(),
            self.shared.repos,
            (assigned - t0).as_secs_f64()
        );
        Ok(report::Assign {
            ready_secs: ready.as_secs_f64(),
            workers_joined_secs: joined.as_secs_f64(),
            all_assigned_secs: (assigned - t0).as_secs_f64(),
            all_mirrored_secs: (settled - t0).as_secs_f64(),
            clone_outcomes_per_sec: clones as f64
                / settled.duration_since(first_clone).as_secs_f64().max(1e-3),
            balance_max: held.iter().copied().max().unwrap_or(0) as f64 / fair,
            balance_min: held.iter().copied().min().unwrap_or(0) as f64 / fair,
        })
    }

    async fn ingest(&mut self) -> Result<report::Ingest> {
        use std::sync::atomic::Ordering::SeqCst;
        let seq0 = self.api.metric("gitmirror_event_seq").await? as u64;
        let c = &self.shared.counters;
        let (acked0, throttled0) = (c.outcomes_acked.load(SeqCst), c.throttled.load(SeqCst));
        self.shared.record_changes(true);
        let live = self.swarm.live_count();
        let (stop_tx, stop_rx) = watch::channel(false);
        let probes = Probe::ALL
            .iter()
            .map(|&p| {
                probe::spawn(
                    &self.api,
                    p,
                    self.shared.repos,
                    seq0,
                    self.opts.probe_gap,
                    stop_rx.clone(),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("starting the API probes")?;
        let t0 = Instant::now();
        self.shared
            .set_fetching(self.opts.rate, live, self.opts.change_share);
        let end = t0 + self.opts.duration;
        while Instant::now() < end {
            self.coord.check_running()?;
            tokio::time::sleep(POLL.max(Duration::from_millis(100))).await;
        }
        self.shared.set_fetching(0.0, live, 0.0);
        let _ = stop_tx.send(true);
        let drained = self
            .until("every outcome acknowledged", |r| {
                r.shared.outstanding() == 0
            })
            .await?;
        self.shared.record_changes(false);
        let api = probe::join(probes).await?;
        let secs = (drained - t0).as_secs_f64();
        let c = &self.shared.counters;
        let acked = c.outcomes_acked.load(SeqCst) - acked0;
        let changes = self.shared.recorded_changes();
        let events = self.api.all_events_since(seq0).await?;
        let announced: HashSet<(u32, u32)> = events
            .iter()
            .filter(|e| e.kind == "updated")
            .flat_map(|e| e.refs.iter())
            .filter_map(|r| r.new.as_deref().and_then(worker::parse_object_id))
            .collect();
        let missing = changes.iter().filter(|c| !announced.contains(c)).count();
        Ok(report::Ingest {
            secs,
            outcomes_acked: acked,
            outcomes_per_sec: acked as f64 / secs.max(1e-3),
            throttled: c.throttled.load(SeqCst) - throttled0,
            changes_sent: changes.len(),
            events: events.len(),
            events_per_sec: events.len() as f64 / secs.max(1e-3),
            changes_missing: missing,
            api,
        })
    }

    async fn restart(&mut self) -> Result<report::Restart> {
        let before: Vec<u64> = self.swarm.live().map(|m| m.view.sessions()).collect();
        let t0 = Instant::now();
        self.coord.kill9();
        // The exit waits for a system call in progress (an fsync): part of the figure.
        tracing::info!(
            "coordinator killed and reaped in {:.2} s; starting it again",
            t0.elapsed().as_secs_f64()
        );
        self.coord.start()?;
        let reattached = self
            .until("every worker re-attached", |r| {
                r.swarm
                    .live()
                    .zip(&before)
                    .all(|(m, b)| m.view.sessions() > *b && m.view.synced())
            })
            .await?;
        let live = self.swarm.live_count() as f64;
        let deadline = t0 + self.opts.timeout;
        loop {
            let alive = self.api.metric("gitmirror_workers{state=\"alive\"}").await;
            let unassigned = self
                .api
                .metric("gitmirror_repos{state=\"unassigned\"}")
                .await;
            if let (Ok(a), Ok(u)) = (&alive, &unassigned)
                && *a == live
                && *u == 0.0
                && self.all_assigned()
            {
                break;
            }
            self.coord.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the coordinator did not show every worker alive and no repo unassigned within {} s (alive {alive:?}, unassigned {unassigned:?}; {})",
                    self.opts.timeout.as_secs(),
                    self.state()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(report::Restart {
            reattached_secs: (reattached - t0).as_secs_f64(),
            all_assigned_secs: t0.elapsed().as_secs_f64(),
        })
    }

    async fn kill(&mut self) -> Result<report::Kill> {
        let victims: Vec<usize> = self
            .swarm
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.killed)
            .map(|(k, _)| k)
            .take(
                self.opts
                    .kill
                    .min(self.swarm.live_count().saturating_sub(1)),
            )
            .collect();
        if victims.is_empty() {
            bail!("no worker to kill: at least two are needed");
        }
        let t0 = Instant::now();
        let mut orphaned = 0;
        for k in &victims {
            orphaned += self.swarm.kill(*k).await;
        }
        let reassigned = self
            .until("the killed workers' repos reassigned", Self::all_assigned)
            .await?;
        self.until("the new holders reported their clones", |r| {
            r.shared.settled()
        })
        .await?;
        Ok(report::Kill {
            killed: victims.len(),
            repos_orphaned: orphaned,
            reassigned_secs: (reassigned - t0).as_secs_f64(),
            bound_secs: 0.0,
        })
    }

    async fn join(&mut self) -> Result<report::Join> {
        let t0 = Instant::now();
        self.swarm.spawn();
        let k = self.swarm.members.len() - 1;
        let synced = self
            .until("the new worker joined", |r| {
                r.swarm.members.get(k).is_some_and(|m| m.view.synced())
            })
            .await?;
        let done = self
            .until("the hand-off to the new worker", |r| {
                r.shared.multi() == 0 && r.shared.settled()
            })
            .await?;
        let moved = self.swarm.members.get(k).map_or(0, |m| m.view.held());
        Ok(report::Join {
            moved,
            ideal: f64::from(self.shared.repos) / self.swarm.live_count() as f64,
            synced_secs: (synced - t0).as_secs_f64(),
            handoff_secs: (done - t0).as_secs_f64(),
        })
    }
}
