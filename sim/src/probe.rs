//! The coordinator's HTTP API as an operator's tools use it (SPEC §9): readiness, the
//! event log, and latency probes that run while outcomes are being ingested.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

#[derive(Debug, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub repo: String,
    pub kind: String,
    pub refs: Vec<RefUpdate>,
}

#[derive(Debug, Deserialize)]
pub struct RefUpdate {
    pub name: String,
    pub new: Option<String>,
}

#[derive(Deserialize)]
struct Events {
    events: Vec<Event>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Result<Self> {
        Self::with_base(format!("http://{addr}"))
    }

    fn with_base(base: String) -> Result<Self> {
        let client = reqwest::Client::builder()
            // The API answers one request per connection.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { client, base })
    }

    /// GET `path`: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("GET {path}: reading the body"))?;
        Ok((status, body.to_vec()))
    }

    async fn get_ok(&self, path: &str) -> Result<Vec<u8>> {
        let (status, body) = self.get(path).await?;
        if status != 200 {
            bail!(
                "GET {path}: {status} {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        Ok(body)
    }

    pub async fn healthy(&self) -> bool {
        matches!(self.get("/healthz").await, Ok((200, _)))
    }

    /// The value of one metric line (name with labels, exactly as `/metrics` prints it).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let body = self.get_ok("/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("/metrics has no {series}"))
    }

    /// Every series of `/metrics` (name with labels, exactly as printed) → its value.
    pub async fn metrics(&self) -> Result<Metrics> {
        let body = self.get_ok("/metrics").await?;
        Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
    }

    /// Events after `since`, at most `limit`, waiting up to `wait` for one to appear.
    pub async fn events(&self, since: u64, limit: usize, wait: u64) -> Result<Vec<Event>> {
        let mut path = format!("/api/events?since={since}&limit={limit}");
        if wait > 0 {
            path.push_str(&format!("&wait={wait}"));
        }
        let body = self.get_ok(&path).await?;
        let e: Events = serde_json::from_slice(&body).context("decoding /api/events")?;
        Ok(e.events)
    }

    /// Every event after `since`, page by page.
    pub async fn all_events_since(&self, mut since: u64) -> Result<Vec<Event>> {
        let mut all = Vec::new();
        loop {
            let page = self.events(since, 10_000, 0).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                return Ok(all);
            };
            since = last;
            all.extend(page);
        }
    }
}

/// One scrape of `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Metrics(std::collections::HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of one series (name with labels, exactly as printed), 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum of every series of the metric `name` (all its label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
            .map(|(_, v)| v)
            .sum()
    }

    /// `first label's value → value` of the metric `name` (summed over its other labels).
    pub fn by_label(&self, name: &str) -> std::collections::BTreeMap<String, f64> {
        let mut by = std::collections::BTreeMap::new();
        for (s, v) in &self.0 {
            let Some(labels) = s
                .strip_prefix(name)
                .and_then(|l| l.strip_prefix('{'))
                .and_then(|l| l.strip_suffix('}'))
            else {
                continue;
            };
            // The first label's value; series that differ only in later labels (such as
            // `trigger` on `gitmirror_fetches_total`) are summed.
            let first = labels.split(',').next().unwrap_or_default();
            let Some((_, value)) = first.split_once('=') else {
                continue;
            };
            *by.entry(value.trim_matches('"').to_owned()).or_insert(0.0) += *v;
        }
        by
    }
}

/// The requests whose latency is measured while outcomes are ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Probe {
    Status,
    Metrics,
    Repo,
    Listing,
    EventsLongPoll,
}

impl Probe {
    pub const ALL: [Probe; 5] = [
        Probe::Status,
        Probe::Metrics,
        Probe::Repo,
        Probe::Listing,
        Probe::EventsLongPoll,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Probe::Status => "GET /api/status",
            Probe::Metrics => "GET /metrics",
            Probe::Repo => "GET /api/repos/{id}",
            Probe::Listing => "GET /api/repos?limit=100",
            Probe::EventsLongPoll => "GET /api/events?wait (long-poll)",
        }
    }
}

/// Latencies of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub request: &'static str,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// [`run`] on a thread of its own, with its own runtime and HTTP client, as an operator's
/// tool is a process of its own. On the simulator's runtime a probe's request waited
/// behind the simulated workers' tasks: with 1,000 of them ingesting, that put up to
/// ~60 ms on the measured p99 of `/api/status` that the coordinator did not cause (a
/// `curl` beside it measured p99 31 ms where the probe said 94 ms; docs/scale.md,
/// fifteenth session).
pub fn spawn(
    api: &Api,
    probe: Probe,
    repos: u32,
    seq: u64,
    gap: Duration,
    stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<Result<Latency>>> {
    let base = api.base.clone();
    std::thread::Builder::new()
        .name("api-probe".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a probe's runtime")?;
            rt.block_on(async move {
                let api = Api::with_base(base)?;
                Ok(run(api, probe, repos, seq, gap, stop).await)
            })
        })
}

/// The figures of probes started by [`spawn`], once each has seen its stop.
pub async fn join(probes: Vec<std::thread::JoinHandle<Result<Latency>>>) -> Result<Vec<Latency>> {
    tokio::task::spawn_blocking(move || {
        probes
            .into_iter()
            .map(|p| {
                p.join()
                    .map_err(|_| anyhow::anyhow!("an API probe panicked"))?
                    .context("an API probe failed")
            })
            .collect()
    })
    .await?
}

/// Run `probe` in a loop, `gap` apart, until `stop` turns true. `repos` picks random
/// repo ids; `seq` is the newest event seq to long-poll after.
async fn run(
    api: Api,
    probe: Probe,
    repos: u32,
    mut seq: u64,
    gap: Duration,
    mut stop: watch::Receiver<bool>,
) -> Latency {
    let mut samples: Vec<f64> = Vec::new();
    let mut errors = 0;
    let mut last_error = None;
    while !*stop.borrow() {
        let path = match probe {
            Probe::Status => "/api/status".to_owned(),
            Probe::Metrics => "/metrics".to_owned(),
            Probe::Repo => format!(
                "/api/repos/{}",
                crate::index::repo_id(rand::random_range(0..repos.max(1)))
            ),
            Probe::Listing => "/api/repos?limit=100".to_owned(),
            Probe::EventsLongPoll => format!("/api/events?since={seq}&limit=10000&wait=10"),
        };
        let start = Instant::now();
        let got = tokio::select! {
            r = api.get(&path) => r,
            _ = stop.changed() => break,
        };
        let took = start.elapsed().as_secs_f64() * 1000.0;
        match got {
            Ok((200, body)) => {
                samples.push(took);
                if probe == Probe::EventsLongPoll
                    && let Ok(e) = serde_json::from_slice::<Events>(&body)
                    && let Some(last) = e.events.last()
                {
                    seq = seq.max(last.seq);
                }
            }
            Ok((status, body)) => {
                errors += 1;
                last_error = Some(format!(
                    "{status} {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ));
            }
            Err(e) => {
                errors += 1;
                last_error = Some(format!("{e:#}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(gap) => {}
            _ = stop.changed() => break,
        }
    }
    samples.sort_by(f64::total_cmp);
    Latency {
        request: probe.label(),
        samples: samples.len(),
        p50_ms: percentile(&samples, 0.50),
        p99_ms: percentile(&samples, 0.99),
        max_ms: samples.last().copied().unwrap_or(0.0),
        errors,
        last_error,
    }
}

/// Nearest-rank percentile of sorted samples (0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_series_and_summed_by_name() {
        let m = Metrics::parse(
            "# HELP gitmirror_repos Repos.\n# TYPE gitmirror_repos gauge\n\
             gitmirror_repos{state=\"pending\"} 7\n\
             gitmirror_repos{state=\"failing\"} 3\n\
             gitmirror_repos_never_mirrored 10\n\
             gitmirror_event_seq 42\n",
        );
        assert_eq!(m.get("gitmirror_repos{state=\"pending\"}"), 7.0);
        assert_eq!(m.get("gitmirror_event_seq"), 42.0);
        assert_eq!(m.get("gitmirror_missing"), 0.0);
        assert_eq!(m.sum("gitmirror_repos"), 10.0);
        assert_eq!(m.by_label("gitmirror_repos").get("failing"), Some(&3.0));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
