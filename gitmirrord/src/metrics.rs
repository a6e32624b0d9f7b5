//! `GET /metrics` (SPEC §9): the Prometheus text format 0.0.4.
//!
//! Counters kept here ([`FetchStats`]) count since the process started, as Prometheus
//! expects of a `_total`; gauges and the staleness histogram are computed from the
//! fleet's state at scrape time. [`render`] is a pure function of its inputs, so the
//! output is tested without sockets.
//!
//! Staleness: for each repo, now minus the last time it was confirmed equal to upstream,
//! which is its last successful fetch or clone. Repos never mirrored have no such time:
//! they are not in the histogram but counted by `gitmirror_repos_never_mirrored`.

use crate::fleet::{Fleet, RepoState};
use crate::index::IndexStatus;
use crate::registry::WorkerState;
use gitmirror_wire::{FailureClass, FetchResult, Outcome};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The `outcome` label values of `gitmirror_fetches_total`, all present from the start.
pub const OUTCOMES: [&str; 7] = [
    "cloned",
    "fetched",
    "failed_transient",
    "failed_rate_limited",
    "failed_gone",
    "failed_local",
    "waiting",
];

/// Upper bounds (seconds) of the fetch duration buckets.
pub const FETCH_DURATION_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Upper bounds (seconds) of the staleness buckets: a minute to a week.
pub const STALENESS_BUCKETS: [f64; 11] = [
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0,
];

/// A cumulative histogram over fixed buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn write(&self, w: &mut Writer, name: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = match self.bounds.get(i) {
                Some(b) => number(*b),
                None => "+Inf".into(),
            };
            w.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
        }
        w.sample(&format!("{name}_sum"), &[], self.sum);
        w.sample(&format!("{name}_count"), &[], self.count as f64);
    }
}

/// Fetch outcomes since the process started (every non-duplicate outcome, from any holder).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchStats {
    by_outcome: BTreeMap<&'static str, u64>,
    duration: Histogram,
}

impl Default for FetchStats {
    fn default() -> Self {
        Self {
            by_outcome: OUTCOMES.iter().map(|o| (*o, 0)).collect(),
            duration: Histogram::new(&FETCH_DURATION_BUCKETS),
        }
    }
}

impl FetchStats {
    pub fn record(&mut self, o: &Outcome) {
        let label = match &o.result {
            FetchResult::Cloned => "cloned",
            FetchResult::Fetched => "fetched",
            FetchResult::Failed { class, .. } => match class {
                FailureClass::Transient => "failed_transient",
                FailureClass::RateLimited => "failed_rate_limited",
                FailureClass::Gone => "failed_gone",
                FailureClass::Local => "failed_local",
            },
            FetchResult::Waiting { .. } => "waiting",
        };
        *self.by_outcome.entry(label).or_insert(0) += 1;
        // A waiting repo was not attempted: it has no duration.
        if !matches!(o.result, FetchResult::Waiting { .. }) {
            self.duration.observe(o.duration_ms as f64 / 1000.0);
        }
    }

    pub fn count(&self, outcome: &str) -> u64 {
        self.by_outcome.get(outcome).copied().unwrap_or(0)
    }
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

/// Everything [`render`] needs besides the fleet.
pub struct Inputs<'a> {
    pub now_ms: i64,
    pub uptime_secs: u64,
    pub index: &'a [IndexStatus],
    /// `(index, result)` → polls since start.
    pub index_polls: &'a BTreeMap<(String, String), u64>,
    pub event_seq: u64,
    /// Event kind → events appended since start.
    pub events: &'a BTreeMap<&'static str, u64>,
    pub webhooks: &'a [WebhookMetric],
}

/// Render the whole exposition.
pub fn render(fleet: &Fleet, i: &Inputs<'_>) -> String {
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
    for state in [WorkerState::Alive, WorkerState::Suspect, WorkerState::Dead] {
        let n = fleet.registry().iter().filter(|w| w.state == state).count();
        w.sample("gitmirror_workers", &[("state", state.as_str())], n as f64);
    }

    w.family("gitmirror_repos", "gauge", "Repos in the indexes by state.");
    let counts = fleet.state_counts();
    for state in RepoState::ALL {
        let n = counts.get(&state).copied().unwrap_or(0);
        w.sample("gitmirror_repos", &[("state", state.as_str())], n as f64);
    }

    let stats = fleet.fetch_stats();
    w.family(
        "gitmirror_fetches_total",
        "counter",
        "Fetch outcomes reported by workers since the coordinator started.",
    );
    for o in OUTCOMES {
        w.sample(
            "gitmirror_fetches_total",
            &[("outcome", o)],
            stats.count(o) as f64,
        );
    }
    w.family(
        "gitmirror_fetch_duration_seconds",
        "histogram",
        "Duration of fetches and clones (failed ones included) as reported by workers.",
    );
    stats
        .duration
        .write(&mut w, "gitmirror_fetch_duration_seconds");

    let mut staleness = Histogram::new(&STALENESS_BUCKETS);
    let mut never = 0u64;
    for r in fleet.repos().values() {
        match r.status.last_success_ms {
            Some(t) => staleness.observe((i.now_ms - t).max(0) as f64 / 1000.0),
            None => never += 1,
        }
    }
    w.family(
        "gitmirror_staleness_seconds",
        "histogram",
        "Per repo: seconds since its mirror was last confirmed equal to upstream (its last successful fetch). Repos never mirrored are in gitmirror_repos_never_mirrored instead.",
    );
    staleness.write(&mut w, "gitmirror_staleness_seconds");
    w.family(
        "gitmirror_repos_never_mirrored",
        "gauge",
        "Repos with no successful fetch yet (not in gitmirror_staleness_seconds).",
    );
    w.sample("gitmirror_repos_never_mirrored", &[], never as f64);

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
    w.out
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
        h.write(&mut w, "x");
        assert_eq!(
            w.out,
            "x_bucket{le=\"1\"} 2\nx_bucket{le=\"10\"} 3\nx_bucket{le=\"+Inf\"} 4\nx_sum 106.5\nx_count 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut w = Writer::default();
        w.sample("m", &[("url", "a\"b\\c\nd")], 2.0);
        assert_eq!(w.out, "m{url=\"a\\\"b\\\\c\\nd\"} 2\n");
    }
}
