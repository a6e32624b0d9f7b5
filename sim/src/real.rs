//! `--real-workers N` (issue 9, "100k repos, 4 real workers, failing upstreams"): the real
//! `gitmirrord` and N real `gitmirror-worker` processes, joined with the coordinator's
//! join token, on a generated index whose every upstream is a loopback port that refuses
//! connections ([`index::Upstreams::Refused`]). Every fetch fails at once and each failure
//! is an outcome the worker persists and reports, so the workers' own pace (their
//! schedule, `fetch.concurrency`, their state journal) sets the load the coordinator gets.
//!
//! The workers are not this program's, so every figure comes from the coordinator's
//! `/metrics` (`gitmirror_repos`, `gitmirror_workers`, `gitmirror_fetches_total`) and
//! `/api/workers`, and from `/proc` for the peak RSS of each process. Phases:
//!
//! - `assign` (always): the coordinator starts on an empty index, every worker joins; the
//!   index moves to N entries (SIGHUP) → no repo unassigned.
//! - `ingest`: from the first outcome counted, `duration` seconds of the outcome counters
//!   sampled about once a second while the status, metrics, repo and listing requests are
//!   timed in loops (no events long-poll: failed attempts make no events).
//! - `restart`: `kill -9` of the coordinator and a new start → every worker alive again
//!   and no repo unassigned.
//! - `kill`: `kill -9` of one worker → it is dead and its repos owned by the others.

use crate::coordinator::Coordinator;
use crate::daemon::{Daemon, du, load_average, yaml_path};
use crate::index;
use crate::probe::{self, Api, Metrics, Probe};
use crate::report::{self, Real, RealWorker, Report};
use crate::{Options, Phase, find_binary, find_gitmirrord, prepare};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the coordinator's counters are looked at while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How often the counters are sampled in the ingest window: the first wave at 100k lasts
/// 5–7 s, so its end is placed to within this.
const SAMPLE: Duration = Duration::from_millis(250);
/// How often a long wait says where it stands.
const PROGRESS: Duration = Duration::from_secs(30);
/// The probes of the ingest phase: the requests of the 100k table.
const PROBES: [Probe; 4] = [Probe::Status, Probe::Metrics, Probe::Repo, Probe::Listing];

/// One `gitmirror-worker` process with its own config, mirror dir and state dir.
pub struct Worker {
    pub name: String,
    pub state_dir: PathBuf,
    pub process: Daemon,
    /// Killed on purpose (the kill phase): not expected to run.
    pub killed: bool,
}

impl Worker {
    /// Write the config of worker `name` in `dir` (emptied first).
    pub fn new(
        bin: &Path,
        dir: &Path,
        name: &str,
        coord: &Coordinator,
        token: &str,
        fetch: &[String],
        nice: Option<i32>,
    ) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let state_dir = dir.join("state");
        let config = dir.join("gitmirror-worker.yaml");
        // Upstreams refuse connections, so nothing is written: the free-space floor is
        // set low, or a full build machine (5 % free) makes every clone wait.
        let mut yaml = format!(
            "coordinator: {quic}\n\
             join_token: {token}\n\
             mirror_dir: {mirror}\n\
             state_dir: {state}\n\
             name: {name}\n\
             log_level: info\n\
             disk: {{min_free: 64MiB}}\n",
            quic = coord.quic,
            token = serde_json::Value::String(token.to_owned()),
            mirror = yaml_path(&dir.join("mirrors")),
            state = yaml_path(&state_dir),
            name = serde_json::Value::String(name.to_owned()),
        );
        if !fetch.is_empty() {
            yaml.push_str("fetch:\n");
            for line in fetch {
                yaml.push_str(&format!("  {line}\n"));
            }
        }
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        let mut args: Vec<std::ffi::OsString> = vec!["--config".into(), config.into_os_string()];
        // `nice` execs the worker, so the child's pid stays the worker's.
        let bin = match nice {
            Some(n) => {
                let mut a: Vec<std::ffi::OsString> =
                    vec!["-n".into(), n.to_string().into(), bin.into()];
                a.append(&mut args);
                args = a;
                Path::new("nice")
            }
            None => bin,
        };
        let process = Daemon::new(
            &format!("gitmirror-worker {name}"),
            bin,
            args,
            dir.join("gitmirror-worker.log"),
        );
        Ok(Self {
            name: name.to_owned(),
            state_dir,
            process,
            killed: false,
        })
    }
}

/// The fleet as the coordinator's `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default)]
struct Fleet {
    alive: f64,
    dead: f64,
    repos: f64,
    unassigned: f64,
    entries: f64,
    outcomes: f64,
}

impl Fleet {
    fn of(m: &Metrics) -> Self {
        Self {
            alive: m.get("gitmirror_workers{state=\"alive\"}"),
            dead: m.get("gitmirror_workers{state=\"dead\"}"),
            repos: m.sum("gitmirror_repos"),
            unassigned: m.get("gitmirror_repos{state=\"unassigned\"}"),
            entries: m.sum("gitmirror_index_entries"),
            outcomes: m.sum("gitmirror_fetches_total"),
        }
    }

    /// Every repo of an index of `n` entries owned by a worker.
    fn all_assigned(&self, n: u32) -> bool {
        let n = f64::from(n);
        self.entries == n && self.repos == n && self.unassigned == 0.0
    }
}

#[derive(Deserialize)]
struct WorkerView {
    name: String,
    state: String,
    repos: usize,
}

struct Run<'a> {
    opts: &'a Options,
    coord: Coordinator,
    workers: Vec<Worker>,
    api: Api,
    index: PathBuf,
    /// When the index commit was published (SIGHUP).
    committed: Option<Instant>,
    real: Real,
}

/// Run the coordinator with `opts.workers` real workers and return the figures.
pub async fn run(opts: &Options) -> Result<Report> {
    if let Some(p) = opts.phases.iter().find(|p| **p == Phase::Join) {
        bail!("phase {p:?} is not available with real workers (ingest, restart, kill are)");
    }
    let bin = match &opts.gitmirrord {
        Some(b) => b.clone(),
        None => find_gitmirrord()?,
    };
    let worker_bin = match &opts.worker_bin {
        Some(b) => b.clone(),
        None => find_binary("gitmirror-worker")?,
    };
    tokio::task::spawn_blocking(index::check_refused).await??;
    let (_tmp, work, built) = prepare(opts, index::Upstreams::Refused).await?;
    let mut report = Report {
        repos: opts.repos,
        workers: opts.workers,
        suspect_after_secs: opts.liveness.suspect_after.as_secs_f64(),
        dead_after_secs: opts.liveness.dead_after.as_secs_f64(),
        index_build_secs: built.took.map(|t| t.as_secs_f64()),
        ..Report::default()
    };
    if opts.index_only {
        return Ok(report);
    }

    let coord = Coordinator::new(
        &bin,
        &work.join("coordinator"),
        &built.path,
        opts.workers + 8,
        opts.liveness,
        None,
    )?;
    let token = coord.join_token_text()?;
    let fetch: Vec<String> = opts
        .worker_min_interval
        .map(|d| format!("min_interval: {}ms", d.as_millis()))
        .into_iter()
        .collect();
    let workers = (0..opts.workers)
        .map(|k| {
            let name = format!("real-{k}");
            Worker::new(
                &worker_bin,
                &work.join(format!("worker-{k}")),
                &name,
                &coord,
                &token,
                &fetch,
                opts.worker_nice,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let api = Api::new(coord.http)?;
    let mut r = Run {
        opts,
        coord,
        workers,
        api,
        index: built.path.clone(),
        real: Real {
            worker_config: fetch.iter().map(|l| format!("fetch.{l}")).collect(),
            worker_nice: opts.worker_nice,
            ..Real::default()
        },
        committed: None,
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
                // Real workers' budgets are what tests/tests/host_budgets.rs shows.
                Phase::Join | Phase::Budget => Ok(()),
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
    let owned = r.worker_views().await.unwrap_or_default();
    for w in &r.workers {
        r.real.workers.push(RealWorker {
            name: w.name.clone(),
            repos: owned
                .iter()
                .find(|v| v.name == w.name)
                .map_or(0, |v| v.repos),
            peak_rss_mib: w.process.peak_rss_mib(),
            state_dir_mib: du(&w.state_dir) as f64 / (1024.0 * 1024.0),
        });
    }
    report.coordinator_rss_peak_mib = Some(r.coord.peak_rss_mib());
    report.state_dir_mib = Some(r.coord.state_dir_bytes() as f64 / (1024.0 * 1024.0));
    for w in &mut r.workers {
        w.process.kill9();
    }
    r.coord.kill9();
    report.real = Some(std::mem::take(&mut r.real));
    Ok(report)
}

impl Run<'_> {
    /// Every worker process still running and the coordinator too.
    fn check_running(&mut self) -> Result<()> {
        self.coord.check_running()?;
        for w in self.workers.iter_mut().filter(|w| !w.killed) {
            w.process.check_running()?;
        }
        Ok(())
    }

    /// Scrape `/metrics` until `cond` holds of it; the instant it did and the scrape.
    /// Failed scrapes (a coordinator starting) count as "not yet".
    async fn until(
        &mut self,
        what: &str,
        cond: impl Fn(&Fleet) -> bool,
    ) -> Result<(Instant, Fleet)> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut next_note = Instant::now() + PROGRESS;
        let mut last: Result<Fleet> = Err(anyhow::anyhow!("no answer yet"));
        loop {
            if let Ok(m) = self.api.metrics().await {
                let f = Fleet::of(&m);
                if cond(&f) {
                    return Ok((Instant::now(), f));
                }
                last = Ok(f);
            }
            if Instant::now() > next_note {
                tracing::info!("waiting for {what}: {last:?}");
                next_note += PROGRESS;
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {} s (last seen: {last:?})",
                    self.opts.timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// CPU seconds used so far by the coordinator and by all workers together.
    fn cpu(&self) -> (Option<f64>, Option<f64>) {
        let workers = self
            .workers
            .iter()
            .filter(|w| !w.killed)
            .map(|w| w.process.cpu_secs())
            .sum::<Option<f64>>();
        (self.coord.cpu_secs(), workers)
    }

    async fn worker_views(&self) -> Result<Vec<WorkerView>> {
        let (status, body) = self.api.get("/api/workers").await?;
        if status != 200 {
            bail!("GET /api/workers: {status}");
        }
        serde_json::from_slice(&body).context("decoding /api/workers")
    }

    async fn assign(&mut self) -> Result<report::Assign> {
        let start = Instant::now();
        self.coord.start()?;
        for w in &mut self.workers {
            w.process.start()?;
        }
        let n = self.opts.workers as f64;
        let (ready, _) = self.until("/metrics to answer", |_| true).await?;
        let (joined, _) = self.until("every worker joined", |f| f.alive == n).await?;

        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index::publish(&index, true)).await??;
        let t0 = Instant::now();
        self.committed = Some(t0);
        self.coord.hangup()?;
        let repos = self.opts.repos;
        let (assigned, _) = self
            .until("every repo assigned", |f| f.all_assigned(repos))
            .await?;
        self.real.coordinator_rss_at_assign_mib = self.coord.current_hwm_mib();
        let fair = f64::from(repos) / n;
        let held: Vec<usize> = self.worker_views().await?.iter().map(|w| w.repos).collect();
        tracing::info!(
            "{} workers joined in {:.1} s; all {repos} repos assigned {:.2} s after the index commit",
            self.opts.workers,
            (joined - start).as_secs_f64(),
            (assigned - t0).as_secs_f64()
        );
        Ok(report::Assign {
            ready_secs: (ready - start).as_secs_f64(),
            workers_joined_secs: (joined - start).as_secs_f64(),
            all_assigned_secs: (assigned - t0).as_secs_f64(),
            balance_max: held.iter().copied().max().unwrap_or(0) as f64 / fair,
            balance_min: held.iter().copied().min().unwrap_or(0) as f64 / fair,
            ..report::Assign::default()
        })
    }

    async fn ingest(&mut self) -> Result<report::Ingest> {
        let committed = self.committed.context("the index was never published")?;
        let (first, _) = self
            .until("the first outcome", |f| f.outcomes > 0.0)
            .await?;
        if self.real.first_outcome_secs.is_none() {
            self.real.first_outcome_secs = Some((first - committed).as_secs_f64());
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let probes = PROBES
            .iter()
            .map(|&p| {
                probe::spawn(
                    &self.api,
                    p,
                    self.opts.repos,
                    0,
                    self.opts.probe_gap,
                    stop_rx.clone(),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("starting the API probes")?;
        let cpu0 = self.cpu();
        let load0 = load_average();
        let m0 = self.api.metrics().await?;
        let t0 = Instant::now();
        let f0 = Fleet::of(&m0).outcomes;
        let seq0 = m0.get("gitmirror_event_seq");
        let end = t0 + self.opts.duration;
        let mut series = vec![(0.0, 0.0)];
        let (t_end, m_end) = loop {
            tokio::time::sleep(SAMPLE.min(end.saturating_duration_since(Instant::now()))).await;
            self.check_running()?;
            let m = self.api.metrics().await?;
            let now = Instant::now();
            let f = Fleet::of(&m);
            series.push(((now - t0).as_secs_f64(), f.outcomes - f0));
            if self.real.every_repo_attempted_secs.is_none()
                && f.outcomes >= f64::from(self.opts.repos)
            {
                self.real.every_repo_attempted_secs = Some((now - committed).as_secs_f64());
            }
            if now >= end {
                break (now, m);
            }
        };
        let cpu1 = self.cpu();
        let window = (t_end - t0).as_secs_f64().max(1e-3);
        let per_sec = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / window);
        self.real.coordinator_cpu_cores = per_sec(cpu0.0, cpu1.0);
        self.real.workers_cpu_cores = per_sec(cpu0.1, cpu1.1);
        self.real.load_average = load0.zip(load_average());
        let _ = stop_tx.send(true);
        let api = probe::join(probes).await?;
        let secs = (t_end - t0).as_secs_f64();
        let outcomes = Fleet::of(&m_end).outcomes - f0;
        let before = m0.by_label("gitmirror_fetches_total");
        self.real.outcomes_by_kind = m_end
            .by_label("gitmirror_fetches_total")
            .into_iter()
            .map(|(k, v)| {
                let d = v - before.get(&k).copied().unwrap_or(0.0);
                (k, d)
            })
            .filter(|(_, d)| *d > 0.0)
            .collect();
        self.real.peak_outcomes_per_sec = report::peak_rate(&series, 1.0);
        self.real.series = series;
        let events = (m_end.get("gitmirror_event_seq") - seq0).max(0.0) as usize;
        Ok(report::Ingest {
            secs,
            outcomes_acked: outcomes as u64,
            outcomes_per_sec: outcomes / secs.max(1e-3),
            events,
            events_per_sec: events as f64 / secs.max(1e-3),
            api,
            ..report::Ingest::default()
        })
    }

    /// Workers not killed on purpose.
    fn live(&self) -> f64 {
        self.workers.iter().filter(|w| !w.killed).count() as f64
    }

    async fn restart(&mut self) -> Result<report::Restart> {
        let n = self.live();
        let repos = self.opts.repos;
        let t0 = Instant::now();
        self.coord.kill9();
        self.coord.start()?;
        // Restored workers are suspect until they reconnect (registry), so "alive" is
        // "re-attached".
        let (reattached, _) = self
            .until("every worker re-attached", |f| f.alive == n)
            .await?;
        let (assigned, _) = self
            .until("every worker re-attached and every repo assigned", |f| {
                f.alive == n && f.all_assigned(repos)
            })
            .await?;
        Ok(report::Restart {
            reattached_secs: (reattached - t0).as_secs_f64(),
            all_assigned_secs: (assigned - t0).as_secs_f64(),
        })
    }

    async fn kill(&mut self) -> Result<report::Kill> {
        let n = self.live();
        if n < 2.0 {
            bail!("no worker to kill: at least two are needed");
        }
        let repos = self.opts.repos;
        let views = self.worker_views().await?;
        let victim = self
            .workers
            .iter_mut()
            .find(|w| !w.killed)
            .context("no live worker")?;
        let orphaned = views
            .iter()
            .find(|v| v.name == victim.name && v.state == "alive")
            .map_or(0, |v| v.repos);
        let t0 = Instant::now();
        victim.process.kill9();
        victim.killed = true;
        let (reassigned, _) = self
            .until("the killed worker's repos reassigned", |f| {
                f.dead >= 1.0 && f.alive == n - 1.0 && f.all_assigned(repos)
            })
            .await?;
        Ok(report::Kill {
            killed: 1,
            repos_orphaned: orphaned,
            reassigned_secs: (reassigned - t0).as_secs_f64(),
            bound_secs: 0.0,
        })
    }
}
