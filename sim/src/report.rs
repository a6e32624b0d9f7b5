//! The figures of one run: one table for a person, or JSON.

use crate::probe::Latency;
use serde::Serialize;
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
    /// `None` when no coordinator ran (`--index-only`).
    pub coordinator_rss_peak_mib: Option<f64>,
    pub state_dir_mib: Option<f64>,
    /// Phases that did not complete, each with where it broke.
    pub problems: Vec<String>,
}

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

fn secs(v: f64) -> String {
    format!("{v:.2} s")
}

impl Report {
    /// One table: figure, value, the goal at 1M repos / 1,000 workers.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |f: &str, v: String, g: &str| rows.push((f.into(), v, g.into()));
        row(
            "run",
            format!(
                "{} repos, {} workers, {:.0} outcomes/s offered, {:.1} % with changes",
                self.repos,
                self.workers,
                self.rate,
                self.change_share * 100.0
            ),
            "",
        );
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
                "≤ 10 s",
            );
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
            row(
                "balance: max / fair share (min)",
                format!("{:.3} ({:.3})", a.balance_max, a.balance_min),
                "≤ 1.15",
            );
        }
        if let Some(i) = &self.ingest {
            row(
                "outcomes ingested (acked)",
                format!(
                    "{:.0} /s ({} in {:.1} s, {} throttled)",
                    i.outcomes_per_sec, i.outcomes_acked, i.secs, i.throttled
                ),
                "≥ 10,000 /s",
            );
            row(
                "events ingested (durable)",
                format!(
                    "{:.0} /s ({} events for {} changes, {} missing)",
                    i.events_per_sec, i.events, i.changes_sent, i.changes_missing
                ),
                "every change",
            );
            for l in &i.api {
                let mut v = format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples",
                    l.p50_ms, l.p99_ms, l.max_ms, l.samples
                );
                if l.errors > 0 {
                    let _ = write!(v, ", {} errors", l.errors);
                }
                v.push(')');
                row(&format!("{} while ingesting", l.request), v, "p99 ≤ 50 ms");
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
                "≤ 15 s",
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
        if let Some(rss) = self.coordinator_rss_peak_mib {
            row(
                "coordinator RSS (peak)",
                format!("{rss:.0} MiB"),
                "≤ 1.5 GB",
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
