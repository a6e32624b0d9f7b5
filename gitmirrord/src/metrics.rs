//! `GET /metrics` (SPEC §9): the Prometheus text format 0.0.4.
//!
//! Fetch counters ([`FetchStats`]) count since the process started, as Prometheus
//! expects of a `_total`; gauges and the staleness histogram come from the counters the
//! [`Census`] keeps up to date, so a scrape never walks the repos. [`render`] is a pure
//! function of its inputs (no fleet: it depends on the census, not the other way round),
//! so the output is tested without sockets.
//!
//! Staleness: for each repo, now minus the last time it was confirmed equal to upstream,
//! which is its last successful fetch or clone. Repos never mirrored have no such time:
//! they are not in the histogram but counted by `gitmirror_repos_never_mirrored`. Ages are
//! counted to the second within the last hour, to the minute beyond (census.rs).

use crate::census::{Census, FetchStats, Histogram, OUTCOMES};
use crate::fleet::RepoState;
use crate::index::IndexStatus;
use crate::registry::{Registry, WorkerState};
use std::collections::BTreeMap;
use std::fmt::Write;

fn histogram(h: &Histogram, w: &mut Writer, name: &str) {
    for (le, n) in h.cumulative() {
        w.sample(&format!("{name}_bucket"), &[("le", &number(le))], n as f64);
    }
    w.sample(&format!("{name}_sum"), &[], h.sum());
    w.sample(&format!("{name}_count"), &[], h.count() as f64);
}

/// Push hooks (SPEC §15), for `gitmirror_hook_*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookMetrics {
    /// Calls by result (`matched`, `unmatched`, refusals by reason).
    pub results: Vec<(&'static str, u64)>,
    /// Push-triggered fetches asked of workers.
    pub fetches: u64,
    /// Repos inside their `hooks_min_gap` (a push there waits for the gap's end).
    pub gaps_open: usize,
}

/// One webhook's delivery state, for `gitmirror_webhook_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookMetric {
    pub url: String,
    /// Events after the webhook's cursor.
    pub pending: u64,
    pub failures: u64,
    /// Events dropped by retention before delivery (SPEC §12).
    pub skipped: u64,
}

/// One live worker's load, for the `gitmirror_worker_*` series (issue 16): labelled by
/// worker id only, so their number is bounded by the workers, never by repos.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSeries {
    pub id: u32,
    pub fetches_running: Option<u32>,
    /// Protocol 5 workers only (`WorkerMsg::Load`).
    pub load: Option<gitmirror_wire::WorkerLoad>,
    pub disk_free_bytes: Option<u64>,
    /// Seconds since its last outcome was applied (since the coordinator started).
    pub last_outcome_age_secs: Option<f64>,
}

/// The fleet's counters at scrape time: copied on the main loop in O(workers + buckets),
/// rendered elsewhere.
#[derive(Debug, Clone)]
pub struct FleetCounts {
    workers: Vec<(&'static str, usize)>,
    /// Workers not dead, by id.
    per_worker: Vec<WorkerSeries>,
    repos: Vec<(&'static str, usize)>,
    /// Failing and gone repos by their last error's class, every class named.
    failing: Vec<(String, usize)>,
    fetches: FetchStats,
    staleness: Histogram,
    never_mirrored: u64,
    /// Planned moves admitted (in flight) and waiting for room (SPEC §5, plan C4).
    planned_moves: (usize, usize),
    /// Repos with replicas short of their placement (SPEC §13).
    under_replicated: usize,
}

impl FleetCounts {
    pub fn take(registry: &Registry, census: &Census, fetches: &FetchStats, now_ms: i64) -> Self {
        FleetCounts {
            workers: [WorkerState::Alive, WorkerState::Suspect, WorkerState::Dead]
                .into_iter()
                .map(|s| (s.as_str(), registry.iter().filter(|w| w.state == s).count()))
                .collect(),
            per_worker: {
                let mut v: Vec<WorkerSeries> = registry
                    .iter()
                    .filter(|w| w.state != WorkerState::Dead)
                    .map(|w| WorkerSeries {
                        id: w.id,
                        fetches_running: w.active_fetches,
                        load: w.load.clone(),
                        disk_free_bytes: w.disk_free_bytes,
                        last_outcome_age_secs: w
                            .last_outcome_ms
                            .map(|t| now_ms.saturating_sub(t).max(0) as f64 / 1000.0),
                    })
                    .collect();
                v.sort_by_key(|w| w.id);
                v
            },
            repos: RepoState::ALL
                .into_iter()
                .map(|s| (s.as_str(), census.in_state(s)))
                .collect(),
            failing: {
                use crate::fleet::ErrorClass as C;
                let by = census.failing_by_class();
                [C::Transient, C::RateLimited, C::Gone, C::Local, C::Auth]
                    .into_iter()
                    .map(|c| {
                        let n = by
                            .iter()
                            .find(|(k, _)| *k == Some(c))
                            .map_or(0, |(_, n)| *n);
                        (crate::history::error_class_name(c), n)
                    })
                    .collect()
            },
            fetches: fetches.clone(),
            staleness: census.staleness(now_ms),
            never_mirrored: census.never_mirrored(),
            planned_moves: (0, 0),
            under_replicated: census.under_replicated(),
        }
    }

    /// The gate's counts ([`crate::fleet::Fleet::planned_moves`]).
    pub fn with_planned_moves(mut self, planned: (usize, usize)) -> Self {
        self.planned_moves = planned;
        self
    }
}

/// Everything [`render`] shows: counters only, so a scrape costs O(workers + indexes).
pub struct Inputs<'a> {
    pub fleet: FleetCounts,
    pub uptime_secs: u64,
    pub index: &'a [IndexStatus],
    /// `(index, result)` → polls since start.
    pub index_polls: &'a BTreeMap<(String, String), u64>,
    pub event_seq: u64,
    /// Event kind → events appended since start.
    pub events: &'a BTreeMap<&'static str, u64>,
    pub webhooks: &'a [WebhookMetric],
    /// Outcome batches applied whose acknowledgement waits for the event log.
    pub batches_waiting: usize,
    /// Push-hook counters (SPEC §15).
    pub hooks: &'a HookMetrics,
    /// Limited and paused upstream hosts (SPEC §18).
    pub hosts: &'a [crate::host_budget::HostView],
    /// Fork pools, summed over the workers' reports (SPEC §14).
    pub pools: crate::pools::FleetPools,
    /// Bytes workers received for their clones and fetches, by source (SPEC §13).
    pub transfer: TransferBytes,
}

/// Bytes the workers' successful clones and fetches received since the coordinator
/// started (`Outcomes7.transfer_bytes`), by where they came from: the upstream or a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferBytes {
    pub upstream: u64,
    pub peer: u64,
}

impl TransferBytes {
    /// Count one outcome's bytes. O(1).
    pub fn add(&mut self, source: gitmirror_wire::TransferSource, bytes: u64) {
        let slot = match source {
            gitmirror_wire::TransferSource::Upstream => &mut self.upstream,
            gitmirror_wire::TransferSource::Peer(_) => &mut self.peer,
        };
        *slot = slot.saturating_add(bytes);
    }
}

/// `gitmirror_transfer_bytes_total{source}` (SPEC §13).
fn transfer_bytes(t: &TransferBytes, w: &mut Writer) {
    w.family(
        "gitmirror_transfer_bytes_total",
        "counter",
        "Bytes the workers' successful clones and fetches received since the coordinator started, by source: the upstream, or a peer's copy (SPEC §13; workers of protocol 7).",
    );
    for (source, n) in [("upstream", t.upstream), ("peer", t.peer)] {
        w.sample(
            "gitmirror_transfer_bytes_total",
            &[("source", source)],
            n as f64,
        );
    }
}

/// Render the whole exposition.
pub fn render(i: &Inputs<'_>) -> String {
    let mut w = Writer::default();

    w.family(
        "gitmirror_up",
        "gauge",
        "Whether the coordinator is serving (always 1).",
    );
    w.sample("gitmirror_up", &[], 1.0);
    w.family(
        "gitmirror_build_info",
        "gauge",
        "The running coordinator's version (always 1).",
    );
    w.sample(
        "gitmirror_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    w.family(
        "gitmirror_uptime_seconds",
        "gauge",
        "Seconds since the coordinator started.",
    );
    w.sample("gitmirror_uptime_seconds", &[], i.uptime_secs as f64);

    w.family(
        "gitmirror_workers",
        "gauge",
        "Known workers by liveness state.",
    );
    for (state, n) in &i.fleet.workers {
        w.sample("gitmirror_workers", &[("state", state)], *n as f64);
    }

    per_worker(&i.fleet.per_worker, &mut w);

    w.family(
        "gitmirror_pool_members",
        "gauge",
        "Mirrors that borrow from a fork pool, over the workers of protocol 8 (SPEC §14).",
    );
    w.sample("gitmirror_pool_members", &[], i.pools.members as f64);
    w.family(
        "gitmirror_pool_saved_bytes",
        "gauge",
        "Estimated disk the fork pools save: per worker, its average pool's pack bytes once per member beyond each pool's first (each member, plain, would hold about its pool).",
    );
    w.sample(
        "gitmirror_pool_saved_bytes",
        &[],
        i.pools.saved_bytes as f64,
    );

    w.family("gitmirror_repos", "gauge", "Repos in the indexes by state.");
    for (state, n) in &i.fleet.repos {
        w.sample("gitmirror_repos", &[("state", state)], *n as f64);
    }

    w.family(
        "gitmirror_under_replicated_repos",
        "gauge",
        "Repos with replicas whose verified holders are fewer than min(replicas, live non-drained workers) (SPEC §13).",
    );
    w.sample(
        "gitmirror_under_replicated_repos",
        &[],
        i.fleet.under_replicated as f64,
    );

    w.family(
        "gitmirror_repos_failing",
        "gauge",
        "Failing and gone repos by the last error's class (auth: a credential entry matched and the upstream refused it, SPEC §16).",
    );
    for (class, n) in &i.fleet.failing {
        w.sample("gitmirror_repos_failing", &[("class", class)], *n as f64);
    }

    transfer_bytes(&i.transfer, &mut w);

    let stats = &i.fleet.fetches;
    w.family(
        "gitmirror_fetches_total",
        "counter",
        "Fetch outcomes reported by workers since the coordinator started, by outcome and by what made the fetch (trigger: schedule, push, manual, index, handover).",
    );
    for o in OUTCOMES {
        for t in crate::events::Trigger::ALL {
            let t = t.as_str();
            w.sample(
                "gitmirror_fetches_total",
                &[("outcome", o), ("trigger", t)],
                stats.count_by(o, t) as f64,
            );
        }
    }
    w.family(
        "gitmirror_hook_requests_total",
        "counter",
        "Push-hook calls (SPEC §15) since the coordinator started: matched or unmatched, or refused by reason.",
    );
    for (result, n) in &i.hooks.results {
        w.sample(
            "gitmirror_hook_requests_total",
            &[("result", result)],
            *n as f64,
        );
    }
    w.family(
        "gitmirror_hook_fetches_total",
        "counter",
        "Push-triggered fetches asked of workers (after coalescing per hooks_min_gap).",
    );
    w.sample("gitmirror_hook_fetches_total", &[], i.hooks.fetches as f64);
    w.family(
        "gitmirror_hook_gaps_open",
        "gauge",
        "Repos inside their hooks_min_gap: a push for one of them is fetched at the gap's end.",
    );
    w.sample("gitmirror_hook_gaps_open", &[], i.hooks.gaps_open as f64);
    w.family(
        "gitmirror_fetch_duration_seconds",
        "histogram",
        "Duration of fetches and clones (failed ones included) as reported by workers.",
    );
    histogram(stats.duration(), &mut w, "gitmirror_fetch_duration_seconds");

    let staleness = &i.fleet.staleness;
    let never = i.fleet.never_mirrored;
    w.family(
        "gitmirror_staleness_seconds",
        "histogram",
        "Per repo: seconds since its mirror was last confirmed equal to upstream (its last successful fetch). Repos never mirrored are in gitmirror_repos_never_mirrored instead.",
    );
    histogram(staleness, &mut w, "gitmirror_staleness_seconds");
    w.family(
        "gitmirror_repos_never_mirrored",
        "gauge",
        "Repos with no successful fetch yet (not in gitmirror_staleness_seconds).",
    );
    w.sample("gitmirror_repos_never_mirrored", &[], never as f64);

    w.family(
        "gitmirror_planned_moves_pending",
        "gauge",
        "Planned moves (join, drain, weight change, placement switch) not done yet: admitted (the destination was told to clone; at most 256 per worker) or waiting (the old owner keeps the repo until the destination has room).",
    );
    let (admitted, waiting) = i.fleet.planned_moves;
    w.sample(
        "gitmirror_planned_moves_pending",
        &[("state", "admitted")],
        admitted as f64,
    );
    w.sample(
        "gitmirror_planned_moves_pending",
        &[("state", "waiting")],
        waiting as f64,
    );

    w.family(
        "gitmirror_events_total",
        "counter",
        "Ref-change events recorded since the coordinator started, by kind.",
    );
    for kind in ["cloned", "updated", "removed"] {
        let n = i.events.get(kind).copied().unwrap_or(0);
        w.sample("gitmirror_events_total", &[("kind", kind)], n as f64);
    }
    w.family(
        "gitmirror_outcome_batches_waiting",
        "gauge",
        "Outcome batches applied whose acknowledgement waits for their events (or an earlier batch's) to be durable.",
    );
    w.sample(
        "gitmirror_outcome_batches_waiting",
        &[],
        i.batches_waiting as f64,
    );
    w.family(
        "gitmirror_event_seq",
        "gauge",
        "Sequence number of the newest event in the event log (0 when empty).",
    );
    w.sample("gitmirror_event_seq", &[], i.event_seq as f64);

    w.family(
        "gitmirror_index_polls_total",
        "counter",
        "Index polls since the coordinator started, by index and result (changed, unchanged, error).",
    );
    for ((index, result), n) in i.index_polls {
        w.sample(
            "gitmirror_index_polls_total",
            &[("index", index), ("result", result)],
            *n as f64,
        );
    }
    w.family(
        "gitmirror_index_entries",
        "gauge",
        "Repo entries each index provides.",
    );
    for s in i.index {
        w.sample(
            "gitmirror_index_entries",
            &[("index", &s.name)],
            s.entries as f64,
        );
    }
    w.family(
        "gitmirror_index_rejected_entries",
        "gauge",
        "Entries of each index rejected by validation (listed by GET /api/index).",
    );
    for s in i.index {
        w.sample(
            "gitmirror_index_rejected_entries",
            &[("index", &s.name)],
            s.rejected.len() as f64,
        );
    }
    w.family(
        "gitmirror_index_held_removals",
        "gauge",
        "Removals held back by purge protection, per index (0 when none).",
    );
    for s in i.index {
        let n = s.held.as_ref().map_or(0, |h| h.removals);
        w.sample(
            "gitmirror_index_held_removals",
            &[("index", &s.name)],
            n as f64,
        );
    }

    w.family(
        "gitmirror_webhook_pending",
        "gauge",
        "Events not yet acknowledged by each webhook.",
    );
    for h in i.webhooks {
        w.sample(
            "gitmirror_webhook_pending",
            &[("url", &h.url)],
            h.pending as f64,
        );
    }
    w.family(
        "gitmirror_webhook_failures_total",
        "counter",
        "Failed webhook delivery attempts since the coordinator started.",
    );
    for h in i.webhooks {
        w.sample(
            "gitmirror_webhook_failures_total",
            &[("url", &h.url)],
            h.failures as f64,
        );
    }
    w.family(
        "gitmirror_webhook_skipped_events_total",
        "counter",
        "Events dropped by retention before the webhook acknowledged them, since the coordinator started.",
    );
    for h in i.webhooks {
        w.sample(
            "gitmirror_webhook_skipped_events_total",
            &[("url", &h.url)],
            h.skipped as f64,
        );
    }
    hosts(i.hosts, &mut w);
    w.out
}

/// SPEC §18: one sample per limited or paused host (paused hosts are bounded by
/// `host_budget::MAX_PAUSED_HOSTS`).
fn hosts(hosts: &[crate::host_budget::HostView], w: &mut Writer) {
    w.family(
        "gitmirror_host_paused",
        "gauge",
        "1 while the upstream host is paused for the whole fleet after a rate-limit answer (SPEC §18).",
    );
    for h in hosts {
        let paused = if h.paused_until_ms.is_some() {
            1.0
        } else {
            0.0
        };
        w.sample("gitmirror_host_paused", &[("host", &h.host)], paused);
    }
    w.family(
        "gitmirror_host_budget",
        "gauge",
        "The fleet-wide budget of a limited upstream host (host_limits): kind connections (at once) or per_minute (fetches started).",
    );
    for h in hosts {
        for (kind, v) in [("connections", h.connections), ("per_minute", h.per_minute)] {
            if let Some(v) = v {
                w.sample(
                    "gitmirror_host_budget",
                    &[("host", &h.host), ("kind", kind)],
                    f64::from(v),
                );
            }
        }
    }
    w.family(
        "gitmirror_host_in_use",
        "gauge",
        "Use of a limited upstream host summed from the workers' reports: kind connections (fetches running) or per_minute (fetches started in the last minute).",
    );
    for h in hosts {
        if h.connections.is_none() && h.per_minute.is_none() {
            continue;
        }
        w.sample(
            "gitmirror_host_in_use",
            &[("host", &h.host), ("kind", "connections")],
            f64::from(h.in_use_connections),
        );
        w.sample(
            "gitmirror_host_in_use",
            &[("host", &h.host), ("kind", "per_minute")],
            f64::from(h.in_use_per_minute),
        );
    }
}

/// The `gitmirror_worker_*` families: one sample per live worker that reported the value.
fn per_worker(workers: &[WorkerSeries], w: &mut Writer) {
    type Get = fn(&WorkerSeries) -> Option<f64>;
    let families: [(&str, &str, Get); 6] = [
        (
            "gitmirror_worker_fetch_queue",
            "Fetches and clones due on the worker and waiting for a slot (protocol 5 workers).",
            |s| s.load.as_ref().map(|l| f64::from(l.queued_fetches)),
        ),
        (
            "gitmirror_worker_fetches_running",
            "Fetches and clones running on the worker.",
            |s| s.fetches_running.map(f64::from),
        ),
        (
            "gitmirror_worker_fetch_concurrency",
            "The worker's fetch.concurrency: the most fetches and clones that run at once (protocol 5 workers).",
            |s| s.load.as_ref().map(|l| f64::from(l.fetch_concurrency)),
        ),
        (
            "gitmirror_worker_disk_free_bytes",
            "Free bytes on the worker's mirror file system.",
            |s| s.disk_free_bytes.map(|b| b as f64),
        ),
        (
            "gitmirror_worker_disk_min_free_bytes",
            "The worker's disk.min_free in bytes: below it no new clone starts (protocol 5 workers).",
            |s| s.load.as_ref().map(|l| l.disk_min_free_bytes as f64),
        ),
        (
            "gitmirror_worker_last_outcome_age_seconds",
            "Seconds since the coordinator last applied a fetch outcome of the worker (absent before its first since the coordinator started).",
            |s| s.last_outcome_age_secs,
        ),
    ];
    for (name, help, get) in families {
        w.family(name, "gauge", help);
        for s in workers {
            if let Some(v) = get(s) {
                w.sample(name, &[("worker", &s.id.to_string())], v);
            }
        }
    }
}

/// A float as Prometheus writes it.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// Label values escape `\`, `"` and newlines; HELP text escapes `\` and newlines.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v, true));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 100.0, f64::NAN] {
            h.observe(v);
        }
        let mut w = Writer::default();
        histogram(&h, &mut w, "x");
        assert_eq!(
            w.out,
            "x_bucket{le=\"1\"} 2\nx_bucket{le=\"10\"} 3\nx_bucket{le=\"+Inf\"} 4\nx_sum 106.5\nx_count 4\n"
        );
    }

    // SPEC §18: the host families, one sample per limited or paused host.
    #[test]
    fn spec_13_transfer_bytes_by_source() {
        use gitmirror_wire::TransferSource;
        let mut t = TransferBytes::default();
        t.add(TransferSource::Upstream, 1000);
        t.add(TransferSource::Peer(3), 200);
        t.add(TransferSource::Peer(4), 30);
        t.add(TransferSource::Upstream, u64::MAX);
        assert_eq!(
            t,
            TransferBytes {
                upstream: u64::MAX,
                peer: 230
            }
        );
        let mut w = Writer::default();
        transfer_bytes(
            &TransferBytes {
                upstream: 7,
                peer: 0,
            },
            &mut w,
        );
        let out = w.out;
        assert!(
            out.contains("# TYPE gitmirror_transfer_bytes_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("gitmirror_transfer_bytes_total{source=\"upstream\"} 7\n"),
            "{out}"
        );
        assert!(
            out.contains("gitmirror_transfer_bytes_total{source=\"peer\"} 0\n"),
            "{out}"
        );
    }

    #[test]
    fn spec_18_host_metrics() {
        let v = |host: &str, connections, paused| crate::host_budget::HostView {
            host: host.into(),
            connections,
            per_minute: None,
            granted_connections: 2,
            in_use_connections: 2,
            in_use_per_minute: 7,
            workers: 1,
            paused_until_ms: paused,
        };
        let mut w = Writer::default();
        hosts(
            &[
                v("github.com", Some(200), None),
                v("gitee.com", None, Some(5)),
            ],
            &mut w,
        );
        let out = w.out;
        assert!(
            out.contains("gitmirror_host_paused{host=\"github.com\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("gitmirror_host_paused{host=\"gitee.com\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gitmirror_host_budget{host=\"github.com\",kind=\"connections\"} 200\n"),
            "{out}"
        );
        assert!(
            !out.contains("gitmirror_host_budget{host=\"gitee.com\""),
            "{out}"
        );
        assert!(
            out.contains("gitmirror_host_in_use{host=\"github.com\",kind=\"connections\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("gitmirror_host_in_use{host=\"github.com\",kind=\"per_minute\"} 7\n"),
            "{out}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut w = Writer::default();
        w.sample("m", &[("url", "a\"b\\c\nd")], 2.0);
        assert_eq!(w.out, "m{url=\"a\\\"b\\\\c\\nd\"} 2\n");
    }
}
