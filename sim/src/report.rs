//! The figures of one run: one table for a person, or JSON.

use crate::probe::Latency;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub repos: u32,
    pub workers: usize,
    /// Fetch outcomes per second offered fleet-wide in the ingest phase.
    pub rate: f64,
    pub change_share: f64,
    pub suspect_after_secs: f64,
    pub dead_after_secs: f64,
    /// Building the index; `None` when an earlier run's index was reused.
    pub index_build_secs: Option<f64>,
    pub assign: Option<Assign>,
    pub ingest: Option<Ingest>,
    pub restart: Option<Restart>,
    pub kill: Option<Kill>,
    pub join: Option<Join>,
    pub budget: Option<Budget>,
    /// `None` when no coordinator ran (`--index-only`).
    pub coordinator_rss_peak_mib: Option<f64>,
    pub state_dir_mib: Option<f64>,
    /// Set when real worker processes ran instead of simulated ones (`--real-workers`).
    pub real: Option<Real>,
    /// Phases that did not complete, each with where it broke.
    pub problems: Vec<String>,
}

/// What a run with real `gitmirror-worker` processes adds. Their upstreams refuse
/// connections, so every outcome is a failed attempt and the ingest figures come from the
/// coordinator's counters (`gitmirror_fetches_total`), not from the workers.
#[derive(Debug, Default, Serialize)]
pub struct Real {
    /// Worker config keys set beyond the defaults (e.g. `fetch.min_interval: 1s`).
    pub worker_config: Vec<String>,
    /// The workers ran under `nice -n` this.
    pub worker_nice: Option<i32>,
    /// The coordinator's peak RSS when every repo was assigned (before any outcome load).
    pub coordinator_rss_at_assign_mib: Option<f64>,
    /// Index commit → the coordinator counted the first fetch outcome.
    pub first_outcome_secs: Option<f64>,
    /// Index commit → the coordinator had counted as many outcomes as there are repos
    /// (every repo attempted once, if none twice); `None` if not within the ingest window.
    pub every_repo_attempted_secs: Option<f64>,
    /// Highest rate over any second of the window ([`peak_rate`]).
    pub peak_outcomes_per_sec: f64,
    /// Outcomes counted in the ingest window by `outcome` label.
    pub outcomes_by_kind: BTreeMap<String, f64>,
    /// (seconds into the ingest window, outcomes counted since it began), ~0.25 s apart.
    pub series: Vec<(f64, f64)>,
    /// CPU the coordinator used in the ingest window, in cores (CPU seconds per second).
    pub coordinator_cpu_cores: Option<f64>,
    /// The same for all workers together.
    pub workers_cpu_cores: Option<f64>,
    /// The machine's 1-minute load average when the ingest window began and ended.
    pub load_average: Option<(f64, f64)>,
    pub workers: Vec<RealWorker>,
}

#[derive(Debug, Default, Serialize)]
pub struct RealWorker {
    pub name: String,
    /// Repos it owns at the end (`/api/workers`).
    pub repos: usize,
    /// Highest `VmHWM` of its processes.
    pub peak_rss_mib: f64,
    pub state_dir_mib: f64,
}

/// The goal column: the figures at 1M repos / 1,000 simulated workers, or at 100k
/// repos with 4 real workers.
struct Goals {
    all_assigned: &'static str,
    outcomes: &'static str,
    restart: &'static str,
    rss: &'static str,
    balance: &'static str,
    api: fn(&str) -> &'static str,
}

const GOALS_SIM: Goals = Goals {
    all_assigned: "≤ 10 s",
    outcomes: "≥ 10,000 /s",
    restart: "≤ 15 s",
    rss: "≤ 1.5 GB",
    balance: "≤ 1.15",
    api: |_| "p99 ≤ 50 ms",
};

const GOALS_REAL: Goals = Goals {
    all_assigned: "≤ 3 s",
    outcomes: "≥ 2,000 /s",
    restart: "≤ 5 s",
    rss: "≤ 256 MB",
    // SPEC §5: up to 100 workers with 1,000 repos or more each.
    balance: "≤ 1.10",
    api: |request| {
        if request == crate::probe::Probe::Repo.label() {
            "p99 ≤ 10 ms"
        } else {
            "p99 ≤ 50 ms"
        }
    },
};

#[derive(Debug, Default, Serialize)]
pub struct Assign {
    /// Coordinator started → `/healthz` answers.
    pub ready_secs: f64,
    /// Coordinator started → every worker joined (welcomed and sent its first delta).
    pub workers_joined_secs: f64,
    /// Index commit published (SIGHUP) → every repo of the index held by a simulated worker.
    pub all_assigned_secs: f64,
    /// Index commit published → every repo reported cloned and acknowledged.
    pub all_mirrored_secs: f64,
    /// Clone outcomes acknowledged per second, unpaced (first clone sent → last acknowledged).
    pub clone_outcomes_per_sec: f64,
    /// Most repos one worker holds / repos ÷ workers.
    pub balance_max: f64,
    /// Fewest repos one worker holds / repos ÷ workers.
    pub balance_min: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Ingest {
    /// Offering outcomes began → the last one offered was acknowledged.
    pub secs: f64,
    pub outcomes_acked: u64,
    pub outcomes_per_sec: f64,
    /// Outcomes the rate asked for that were not made because a worker's window of
    /// unacknowledged outcomes was full.
    pub throttled: u64,
    pub changes_sent: usize,
    /// Events of the phase read back from `/api/events`.
    pub events: usize,
    pub events_per_sec: f64,
    /// Changes sent that no event announced.
    pub changes_missing: usize,
    pub api: Vec<Latency>,
}

#[derive(Debug, Default, Serialize)]
pub struct Restart {
    /// `kill -9` → every worker welcomed again and sent its delta.
    pub reattached_secs: f64,
    /// `kill -9` → the coordinator's `/metrics` also shows every worker alive and no
    /// repo unassigned.
    pub all_assigned_secs: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Kill {
    pub killed: usize,
    pub repos_orphaned: usize,
    /// Power cut → every orphaned repo held by another worker.
    pub reassigned_secs: f64,
    /// `suspect_after + dead_after + 2 s`, the goal.
    pub bound_secs: f64,
}

/// The `budget` phase (SPEC §18).
#[derive(Debug, Default, Serialize)]
pub struct Budget {
    /// `host_limits` connections of the simulated upstream host.
    pub budget: u32,
    pub workers: usize,
    pub secs: f64,
    /// Most fetches running at once on the host, by the simulator's own count.
    pub max_in_flight: u64,
    /// Most the coordinator summed from the workers' reports (`gitmirror_host_in_use`).
    pub max_reported_in_use: u64,
    /// Most connections granted at once, summed (`/api/status` `hosts`).
    pub max_granted: u64,
    pub reported_samples: u64,
    /// Fetches started on the host in the phase.
    pub fetches: u64,
    /// Workers that got to run at least one of them.
    pub workers_served: u64,
    /// Phase start → the coordinator's sum first reached 90 % of the budget.
    pub near_full_secs: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Join {
    /// Repos the new worker took.
    pub moved: usize,
    /// repos ÷ live workers after the join.
    pub ideal: f64,
    /// New worker started → it holds its share (make before break: old holders too).
    pub synced_secs: f64,
    /// New worker started → it reported them cloned and every old holder dropped them.
    pub handoff_secs: f64,
}

/// Mean rate in each `width`-second slice of a cumulative series (seconds, count): the
/// last sample at or before each slice's end against the one before its start.
pub fn buckets(series: &[(f64, f64)], width: f64) -> Vec<f64> {
    let Some(&(end, _)) = series.last() else {
        return Vec::new();
    };
    let at = |t: f64| {
        series
            .iter()
            .take_while(|(s, _)| *s <= t + 1e-9)
            .last()
            .copied()
            .unwrap_or((0.0, 0.0))
    };
    let mut out = Vec::new();
    let mut lo = 0.0;
    while lo < end - 1e-9 {
        let (t0, c0) = at(lo);
        let (t1, c1) = at((lo + width).min(end));
        out.push(if t1 > t0 { (c1 - c0) / (t1 - t0) } else { 0.0 });
        lo += width;
    }
    out
}

/// Highest rate of a cumulative series (seconds, count) over spans of at least `span`
/// seconds: from each sample to the first one `span` or more later.
pub fn peak_rate(series: &[(f64, f64)], span: f64) -> f64 {
    let mut peak: f64 = 0.0;
    for (i, &(t0, c0)) in series.iter().enumerate() {
        if let Some(&(t1, c1)) = series[i..].iter().find(|(t, _)| *t - t0 >= span) {
            peak = peak.max((c1 - c0) / (t1 - t0));
        }
    }
    peak
}

fn secs(v: f64) -> String {
    format!("{v:.2} s")
}

impl Report {
    /// One table: figure, value, the goal (at 1M repos / 1,000 simulated
    /// workers, or at 100k repos / 4 real workers).
    pub fn table(&self) -> String {
        let goals = if self.real.is_some() {
            &GOALS_REAL
        } else {
            &GOALS_SIM
        };
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |f: &str, v: String, g: &str| rows.push((f.into(), v, g.into()));
        match &self.real {
            None => row(
                "run",
                format!(
                    "{} repos, {} workers, {:.0} outcomes/s offered, {:.1} % with changes",
                    self.repos,
                    self.workers,
                    self.rate,
                    self.change_share * 100.0
                ),
                "",
            ),
            Some(r) => row(
                "run",
                format!(
                    "{} repos, {} real workers{}, upstreams refusing connections, worker config: {}",
                    self.repos,
                    self.workers,
                    r.worker_nice
                        .map_or(String::new(), |n| format!(" (nice {n})")),
                    if r.worker_config.is_empty() {
                        "defaults".to_owned()
                    } else {
                        r.worker_config.join(", ")
                    }
                ),
                "",
            ),
        }
        row(
            "index build (git)",
            self.index_build_secs.map_or("reused".into(), secs),
            "",
        );
        if let Some(a) = &self.assign {
            row("start → API ready", secs(a.ready_secs), "");
            row(
                "start → all workers joined",
                secs(a.workers_joined_secs),
                "",
            );
            row(
                "index commit → read, all repos assigned",
                secs(a.all_assigned_secs),
                goals.all_assigned,
            );
            if self.real.is_none() {
                row(
                    "index commit → all repos cloned (acked)",
                    secs(a.all_mirrored_secs),
                    "",
                );
                row(
                    "clone outcomes ingested (unpaced)",
                    format!("{:.0} /s", a.clone_outcomes_per_sec),
                    "",
                );
            }
            row(
                "balance: max / fair share (min)",
                format!("{:.3} ({:.3})", a.balance_max, a.balance_min),
                goals.balance,
            );
        }
        if let Some(r) = &self.real {
            let at = |v: Option<f64>| v.map_or("not within the ingest window".into(), secs);
            row(
                "index commit → first outcome ingested",
                at(r.first_outcome_secs),
                "",
            );
            row(
                "index commit → as many outcomes as repos",
                at(r.every_repo_attempted_secs),
                "",
            );
            if let (Some(a), Some(b)) = (r.first_outcome_secs, r.every_repo_attempted_secs) {
                // The first wave: every repo is new and due at once, so nothing but the
                // workers' and the coordinator's pace sets this rate.
                row(
                    "first wave: as many outcomes as repos",
                    format!(
                        "{:.0} /s ({} in {:.2} s)",
                        f64::from(self.repos) / (b - a).max(1e-3),
                        self.repos,
                        b - a
                    ),
                    goals.outcomes,
                );
            }
        }
        if let Some(i) = &self.ingest {
            match &self.real {
                None => {
                    row(
                        "outcomes ingested (acked)",
                        format!(
                            "{:.0} /s ({} in {:.1} s, {} throttled)",
                            i.outcomes_per_sec, i.outcomes_acked, i.secs, i.throttled
                        ),
                        goals.outcomes,
                    );
                    row(
                        "events ingested (durable)",
                        format!(
                            "{:.0} /s ({} events for {} changes, {} missing)",
                            i.events_per_sec, i.events, i.changes_sent, i.changes_missing
                        ),
                        "every change",
                    );
                }
                Some(r) => {
                    row(
                        "outcomes ingested, fleet-wide (counters)",
                        format!(
                            "{:.0} /s ({} in {:.1} s; peak {:.0} /s)",
                            i.outcomes_per_sec, i.outcomes_acked, i.secs, r.peak_outcomes_per_sec
                        ),
                        goals.outcomes,
                    );
                    let cores = |c: Option<f64>| c.map_or("?".into(), |c| format!("{c:.2}"));
                    row(
                        "… CPU in the window, cores: coordinator (workers)",
                        format!(
                            "{} ({}); load average {}",
                            cores(r.coordinator_cpu_cores),
                            cores(r.workers_cpu_cores),
                            r.load_average
                                .map_or("?".into(), |(a, b)| format!("{a:.1} → {b:.1}"))
                        ),
                        "",
                    );
                    row(
                        "… per 10 s of the window",
                        buckets(&r.series, 10.0)
                            .iter()
                            .map(|v| format!("{v:.0}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        "",
                    );
                }
            }
            for l in &i.api {
                let mut v = format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples",
                    l.p50_ms, l.p99_ms, l.max_ms, l.samples
                );
                if l.errors > 0 {
                    let _ = write!(v, ", {} errors", l.errors);
                }
                v.push(')');
                row(
                    &format!("{} while ingesting", l.request),
                    v,
                    (goals.api)(l.request),
                );
            }
        }
        if let Some(r) = &self.restart {
            row(
                "kill -9 coordinator → all workers re-attached",
                secs(r.reattached_secs),
                "",
            );
            row(
                "kill -9 coordinator → all re-attached and assigned",
                secs(r.all_assigned_secs),
                goals.restart,
            );
        }
        if let Some(k) = &self.kill {
            row(
                "worker killed → its repos reassigned",
                format!(
                    "{} ({} repos of {} worker(s))",
                    secs(k.reassigned_secs),
                    k.repos_orphaned,
                    k.killed
                ),
                &format!("≤ {:.1} s (suspect + dead + 2 s)", k.bound_secs),
            );
        }
        if let Some(j) = &self.join {
            row(
                "worker joined → holds its share",
                format!(
                    "{} ({} repos, ideal {:.0})",
                    secs(j.synced_secs),
                    j.moved,
                    j.ideal
                ),
                "≤ 1.05 × ideal moved",
            );
            row("worker joined → hand-off done", secs(j.handoff_secs), "");
        }
        if let Some(b) = &self.budget {
            row(
                "host budget: most fetches at once (sim / coordinator's sum)",
                format!(
                    "{} / {} of {} ({} workers, {} fetches in {:.1} s, {} workers served, most granted {})",
                    b.max_in_flight,
                    b.max_reported_in_use,
                    b.budget,
                    b.workers,
                    b.fetches,
                    b.secs,
                    b.workers_served,
                    b.max_granted
                ),
                "≤ budget",
            );
            row(
                "host budget: phase start → coordinator's sum at 90 %",
                b.near_full_secs.map_or("never".into(), secs),
                "",
            );
        }
        if let Some(rss) = self.coordinator_rss_peak_mib {
            let at_assign = self
                .real
                .as_ref()
                .and_then(|r| r.coordinator_rss_at_assign_mib)
                .map_or(String::new(), |m| {
                    format!(" ({m:.0} MiB when all were assigned)")
                });
            row(
                "coordinator RSS (peak)",
                format!("{rss:.0} MiB{at_assign}"),
                goals.rss,
            );
        }
        for w in self.real.iter().flat_map(|r| &r.workers) {
            row(
                &format!("worker {} RSS (peak)", w.name),
                format!(
                    "{:.0} MiB (holds {} repos, state dir {:.1} MiB)",
                    w.peak_rss_mib, w.repos, w.state_dir_mib
                ),
                "",
            );
        }
        if let Some(size) = self.state_dir_mib {
            row("state dir size", format!("{size:.1} MiB"), "");
        }

        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (f, v, g) in &rows {
            let pad0 = w0 - f.chars().count();
            let pad1 = w1 - v.chars().count();
            let _ = writeln!(out, "{f}{}  {v}{}  {g}", " ".repeat(pad0), " ".repeat(pad1));
        }
        // After the table, so a long reason does not widen every row.
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM  {p}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_give_the_rate_of_each_slice() {
        let series = [
            (0.0, 0.0),
            (5.0, 500.0),
            (10.0, 1000.0),
            (15.0, 1000.0),
            (20.0, 1000.0),
        ];
        assert_eq!(buckets(&series, 10.0), [100.0, 0.0]);
        assert_eq!(buckets(&series[..3], 5.0), [100.0, 100.0]);
        assert!(buckets(&[], 10.0).is_empty());
    }

    #[test]
    fn peak_rate_spans_at_least_the_given_time() {
        // A burst of 300 in 0.25 s inside an otherwise idle second: over a whole second
        // that is 300 /s, not the 1,200 /s of the quarter.
        let series = [
            (0.0, 0.0),
            (0.25, 0.0),
            (0.5, 300.0),
            (1.0, 300.0),
            (1.5, 300.0),
        ];
        assert_eq!(peak_rate(&series, 1.0), 300.0);
        assert_eq!(peak_rate(&series, 0.25), 1200.0);
        assert_eq!(peak_rate(&series[..2], 1.0), 0.0, "no span long enough");
    }
}
