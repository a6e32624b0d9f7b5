//! When each held repo is fetched next, and how many fetches run at once (SPEC §7.2–§7.4).
//!
//! - After a success the next fetch is due after about half the time since upstream last
//!   changed, clamped to `[fetch.min_interval, fetch.max_interval]`, ±10 % jitter: a repo
//!   committed to every few seconds is fetched every `min_interval`, a dormant one every
//!   `max_interval`.
//! - After failures: exponential backoff from `min_interval`, capped at 6 h; a gone
//!   upstream is probed once a day; a rate-limited upstream *host* is paused as long as it
//!   asked, and nothing on that host starts meanwhile (per-host limits apply as usual
//!   once it resumes).
//! - New repos and operator requests start before everything that is merely due.
//!
//! No clock and no I/O: times are Unix milliseconds passed in by the caller. The jitter's
//! random numbers come from a seedable generator so tests are repeatable.

use crate::config::FetchSection;
use gitmirror_wire::FailureClass;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Longest backoff after transient failures (SPEC §7.3).
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// A gone upstream is probed once a day (SPEC §7.3).
pub const GONE_PROBE: Duration = Duration::from_secs(24 * 3600);
/// How long a host that answered 429 without `Retry-After` is left alone.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait a `Retry-After` is obeyed for; a longer one is cut to this.
pub const MAX_RATE_LIMIT_WAIT: Duration = MAX_BACKOFF;
/// ±10 % (SPEC §7.2).
const JITTER: f64 = 0.10;

/// New repos and operator requests come before everything that is merely due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Rank {
    Urgent,
    Due,
}

#[derive(Debug)]
pub struct Schedule {
    concurrency: usize,
    per_host: usize,
    min_interval: Duration,
    max_interval: Duration,
    /// Waiting repos in the order they should start.
    queue: BTreeSet<(Rank, i64, String)>,
    queued: HashMap<String, (Rank, i64)>,
    /// Running repo → its upstream host.
    running: HashMap<String, String>,
    per_host_running: HashMap<String, usize>,
    /// Asked for while running: queue urgently again when it finishes.
    rerun: HashSet<String>,
    /// Upstream hosts that asked us to wait (rate limited): host → Unix ms it may resume.
    paused: HashMap<String, i64>,
    /// This worker's shares of the fleet-wide host budgets (SPEC §18), on top of
    /// `per_host`: a host under a limit counts against it with every other host under it.
    budgets: Vec<HostBudget>,
    rng: StdRng,
}

/// One limited host (a name, or a `.suffix`) as the coordinator's `HostBudgets` gave it.
#[derive(Debug)]
pub struct HostBudget {
    pub host: String,
    /// Fetches at once; `None`: not limited so.
    pub connections: Option<usize>,
    /// Fetches started per minute; `None`: not limited so.
    pub per_minute: Option<u32>,
    /// Token bucket for `per_minute`: tokens and when they were counted (Unix ms).
    tokens: f64,
    tokens_at: i64,
    /// Starts in the last minute (Unix ms), for the coordinator's `in_use`.
    starts: std::collections::VecDeque<i64>,
}

/// Most starts remembered per limited host (for "started in the last minute").
const MAX_STARTS_KEPT: usize = 100_000;
/// Queued repos looked at when counting the demand of limited hosts: enough to weigh
/// shares, and bounded work on the loop.
const MAX_DEMAND_SCAN: usize = 10_000;

impl HostBudget {
    /// A bucket holds at most five seconds' worth (at least one fetch).
    fn capacity(&self) -> f64 {
        self.per_minute
            .map_or(0.0, |r| (f64::from(r) / 12.0).max(1.0))
    }

    fn refill(&mut self, now_ms: i64) {
        if let Some(r) = self.per_minute {
            let dt = now_ms.saturating_sub(self.tokens_at).max(0) as f64;
            self.tokens = (self.tokens + dt * f64::from(r) / 60_000.0).min(self.capacity());
        }
        self.tokens_at = now_ms;
    }

    /// When the next token is there, if the bucket is empty and refills at all.
    fn next_token(&self) -> Option<i64> {
        let r = self.per_minute.filter(|r| *r > 0)?;
        if self.tokens >= 1.0 {
            return None;
        }
        let wait = ((1.0 - self.tokens) * 60_000.0 / f64::from(r)).ceil() as i64;
        Some(self.tokens_at.saturating_add(wait.max(1)))
    }
}

/// Whether `host` falls under the limit written `pattern` (the coordinator's rule).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(pattern),
        None => host == pattern,
    }
}

impl Schedule {
    pub fn new(fetch: &FetchSection) -> Self {
        Self::with_seed(fetch, rand::random())
    }

    /// Apply new fetch limits and interval bounds (SIGHUP). Running work is not touched;
    /// the new limits govern what starts next, the new bounds the next plans.
    pub fn set_limits(&mut self, fetch: &FetchSection) {
        self.concurrency = fetch.concurrency.max(1);
        self.per_host = fetch.per_host_concurrency.max(1);
        self.min_interval = fetch.min_interval;
        self.max_interval = fetch.max_interval.max(fetch.min_interval);
    }

    /// A schedule whose jitter is repeatable.
    pub fn with_seed(fetch: &FetchSection, seed: u64) -> Self {
        Self {
            concurrency: fetch.concurrency.max(1),
            per_host: fetch.per_host_concurrency.max(1),
            min_interval: fetch.min_interval,
            max_interval: fetch.max_interval.max(fetch.min_interval),
            queue: BTreeSet::new(),
            queued: HashMap::new(),
            running: HashMap::new(),
            per_host_running: HashMap::new(),
            rerun: HashSet::new(),
            paused: HashMap::new(),
            budgets: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Plan `id` for `due_ms` (replacing an earlier plan). Ignored while it runs.
    pub fn plan(&mut self, id: &str, due_ms: i64) {
        self.insert(id, Rank::Due, due_ms);
    }

    /// Put `id` at the head of the queue: a new repo or `FetchNow`. If it is running, it
    /// runs again as soon as it finishes.
    pub fn plan_urgent(&mut self, id: &str, now_ms: i64) {
        if self.running.contains_key(id) {
            self.rerun.insert(id.to_owned());
        } else {
            self.insert(id, Rank::Urgent, now_ms);
        }
    }

    fn insert(&mut self, id: &str, rank: Rank, due_ms: i64) {
        if self.running.contains_key(id) {
            return;
        }
        if let Some((r, d)) = self.queued.get(id).copied() {
            // An urgent plan is not demoted by an ordinary one.
            if r == Rank::Urgent && rank == Rank::Due {
                return;
            }
            self.queue.remove(&(r, d, id.to_owned()));
        }
        self.queue.insert((rank, due_ms, id.to_owned()));
        self.queued.insert(id.to_owned(), (rank, due_ms));
    }

    /// Stop planning `id` (dropped). A running operation still has to [`finish`](Self::finish).
    pub fn forget(&mut self, id: &str) {
        if let Some((r, d)) = self.queued.remove(id) {
            self.queue.remove(&(r, d, id.to_owned()));
        }
        self.rerun.remove(id);
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Repos due by `now_ms` that have not started: urgent ones and those whose due time
    /// passed (held back by a concurrency limit, a paused host or low disk). O(waiting).
    pub fn waiting(&self, now_ms: i64) -> usize {
        // Urgent sorts before Due: everything before the first Due entry after now.
        self.queue
            .range(..(Rank::Due, now_ms.saturating_add(1), String::new()))
            .count()
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    /// When the next repo that is not yet due becomes due, or a paused host resumes, if
    /// ever. Repos already due but held back by a concurrency limit start when something
    /// finishes.
    pub fn next_wake(&self, now_ms: i64) -> Option<i64> {
        let due = self
            .queue
            .range((Rank::Due, now_ms.saturating_add(1), String::new())..)
            .next()
            .map(|(_, d, _)| *d);
        let resume = self.paused.values().copied().filter(|&t| t > now_ms).min();
        // An empty token bucket refills: look again then (only matters with work waiting).
        let token = self.budgets.iter().filter_map(HostBudget::next_token).min();
        let resume = match (resume, token) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (due, resume) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `host` asked us to wait (rate limited) until `until_ms`: nothing on it starts before
    /// then. A later pause extends an earlier one, never shortens it. Returns the
    /// resulting resume time.
    pub fn pause_host(&mut self, host: &str, until_ms: i64) -> i64 {
        let t = self.paused.entry(host.to_owned()).or_insert(until_ms);
        *t = (*t).max(until_ms);
        *t
    }

    /// When `host` may be contacted again, if it is paused now.
    pub fn paused_until(&self, host: &str, now_ms: i64) -> Option<i64> {
        self.paused.get(host).copied().filter(|&t| t > now_ms)
    }

    /// The coordinator's `HostBudgets` (SPEC §18): these shares replace the previous ones.
    /// A bucket of a host that stays keeps its tokens; a new one starts with one token.
    pub fn set_budgets(&mut self, shares: &[gitmirror_wire::HostShare], now_ms: i64) {
        let mut old = std::mem::take(&mut self.budgets);
        for s in shares {
            let mut b = match old.iter().position(|b| b.host == s.host) {
                Some(i) => old.swap_remove(i),
                None => HostBudget {
                    host: s.host.clone(),
                    connections: None,
                    per_minute: None,
                    tokens: 1.0,
                    tokens_at: now_ms,
                    starts: std::collections::VecDeque::new(),
                },
            };
            b.refill(now_ms);
            b.connections = s.connections.map(|c| c as usize);
            b.per_minute = s.per_minute;
            b.tokens = b.tokens.min(b.capacity().max(1.0));
            self.budgets.push(b);
        }
    }

    /// No share any more (the coordinator has been gone longer than the lease): nothing
    /// new starts on a limited host until the next `HostBudgets`.
    pub fn suspend_budgets(&mut self) {
        for b in &mut self.budgets {
            if b.connections.is_some() {
                b.connections = Some(0);
            }
            if b.per_minute.is_some() {
                b.per_minute = Some(0);
                b.tokens = 0.0;
            }
        }
    }

    pub fn has_budgets(&self) -> bool {
        !self.budgets.is_empty()
    }

    /// The limit `host` falls under: an exact name before the longest suffix.
    fn budget_of(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.budgets.iter().position(|b| b.host == host) {
            return Some(i);
        }
        self.budgets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.host.starts_with('.') && host_matches(&b.host, host))
            .max_by_key(|(_, b)| b.host.len())
            .map(|(i, _)| i)
    }

    /// Demand and use of each limited host, for `HostDemand`: running fetches, due ones
    /// waiting (counting at most [`MAX_DEMAND_SCAN`] queued repos), starts in the last
    /// minute, and the connection share in force.
    pub fn host_loads(
        &mut self,
        now_ms: i64,
        mut host_of: impl FnMut(&str) -> String,
    ) -> Vec<gitmirror_wire::HostLoad> {
        let n = self.budgets.len();
        let mut running = vec![0u32; n];
        for host in self.running.values() {
            if let Some(i) = self.budget_of(host) {
                running[i] += 1;
            }
        }
        let mut due = vec![0u32; n];
        if n > 0 {
            for (_, _, id) in self
                .queue
                .range(..(Rank::Due, now_ms.saturating_add(1), String::new()))
                .take(MAX_DEMAND_SCAN)
            {
                if let Some(i) = self.budget_of(&host_of(id)) {
                    due[i] += 1;
                }
            }
        }
        self.budgets
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                while b.starts.front().is_some_and(|t| *t <= now_ms - 60_000) {
                    b.starts.pop_front();
                }
                gitmirror_wire::HostLoad {
                    host: b.host.clone(),
                    due: due[i],
                    running: running[i],
                    started_last_minute: u32::try_from(b.starts.len()).unwrap_or(u32::MAX),
                    share: b.connections.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
                }
            })
            .collect()
    }

    /// Start what is due, within the limits: at most `concurrency` at once, at most
    /// `per_host_concurrency` per upstream host, never two on one repo. `admit` may hold a
    /// repo back (busy with something else, or a clone while disk is low); it stays queued.
    pub fn start_ready(
        &mut self,
        now_ms: i64,
        mut host_of: impl FnMut(&str) -> String,
        mut admit: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let mut started: Vec<(String, String)> = Vec::new();
        if self.running.len() >= self.concurrency {
            return Vec::new();
        }
        self.paused.retain(|_, until| *until > now_ms);
        // Paused hosts are treated like hosts at their limit: their repos wait, queued.
        let mut full_hosts: HashSet<String> = self.paused.keys().cloned().collect();
        // SPEC §18: fetches running under each limited host, and its tokens.
        let mut budget_running = vec![0usize; self.budgets.len()];
        for host in self.running.values() {
            if let Some(i) = self.budget_of(host) {
                budget_running[i] += 1;
            }
        }
        for b in &mut self.budgets {
            b.refill(now_ms);
        }
        for (rank, due, id) in &self.queue {
            if *rank == Rank::Due && *due > now_ms {
                break;
            }
            if self.running.len() + started.len() >= self.concurrency {
                break;
            }
            let host = host_of(id);
            if full_hosts.contains(&host) {
                continue;
            }
            let on_host = self.per_host_running.get(&host).copied().unwrap_or(0)
                + started.iter().filter(|(_, h)| *h == host).count();
            if on_host >= self.per_host {
                full_hosts.insert(host);
                continue;
            }
            let budget = self.budget_of(&host);
            if let Some(i) = budget {
                let b = &self.budgets[i];
                let at_share = b.connections.is_some_and(|c| budget_running[i] >= c);
                let no_token = b.per_minute.is_some() && b.tokens < 1.0;
                if at_share || no_token {
                    full_hosts.insert(host);
                    continue;
                }
            }
            if admit(id) {
                if let Some(i) = budget {
                    budget_running[i] += 1;
                    let b = &mut self.budgets[i];
                    if b.per_minute.is_some() {
                        b.tokens -= 1.0;
                    }
                    if b.starts.len() >= MAX_STARTS_KEPT {
                        b.starts.pop_front();
                    }
                    b.starts.push_back(now_ms);
                }
                started.push((id.clone(), host));
            }
        }
        for (id, host) in &started {
            if let Some((r, d)) = self.queued.remove(id) {
                self.queue.remove(&(r, d, id.clone()));
            }
            *self.per_host_running.entry(host.clone()).or_default() += 1;
            self.running.insert(id.clone(), host.clone());
        }
        started.into_iter().map(|(id, _)| id).collect()
    }

    /// `id` finished; plan it for `next_due_ms`, or not at all (`None`, e.g. dropped).
    pub fn finish(&mut self, id: &str, next_due_ms: Option<i64>, now_ms: i64) {
        if let Some(host) = self.running.remove(id)
            && let Some(n) = self.per_host_running.get_mut(&host)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_host_running.remove(&host);
            }
        }
        let rerun = self.rerun.remove(id);
        match next_due_ms {
            Some(_) if rerun => self.insert(id, Rank::Urgent, now_ms),
            Some(due) => self.insert(id, Rank::Due, due),
            None => {}
        }
    }

    /// Next attempt after a success: about half the time since upstream last changed
    /// (`last_change_ms`), clamped to `[min_interval, max_interval]`, ±10 % (SPEC §7.2).
    pub fn after_success(&mut self, now_ms: i64, last_change_ms: i64) -> i64 {
        let age = u64::try_from(now_ms.saturating_sub(last_change_ms)).unwrap_or(0);
        let half = Duration::from_millis(age / 2);
        let base = half.clamp(self.min_interval, self.max_interval);
        let wait = self.jitter(base, self.min_interval, self.max_interval);
        now_ms.saturating_add(ms(wait))
    }

    /// Next attempt after the `failures`-th failure in a row: exponential from
    /// `min_interval`, capped at 6 h; a gone upstream once a day; a refused credential
    /// at `max_interval` (SPEC §16: the operator fixes it, and a changed secret file
    /// brings the repo forward at once); all ±10 %. (A rate-limited repo waits for its
    /// host: see [`Schedule::pause_host`].)
    pub fn after_failure(&mut self, now_ms: i64, failures: u32, class: FailureClass) -> i64 {
        let wait = if class == FailureClass::Gone {
            self.jitter(GONE_PROBE, Duration::ZERO, Duration::MAX)
        } else if class == FailureClass::Auth {
            self.jitter(self.max_interval, self.min_interval, self.max_interval)
        } else {
            let factor = 1u32
                .checked_shl(failures.saturating_sub(1).min(30))
                .unwrap_or(u32::MAX);
            let cap = MAX_BACKOFF.max(self.min_interval);
            let base = self.min_interval.saturating_mul(factor).min(cap);
            self.jitter(base, self.min_interval, cap)
        };
        now_ms.saturating_add(ms(wait))
    }

    /// Uniform in `[0.9 × base, 1.1 × base]`, kept within `[lo, hi]`: a repo at the floor
    /// waits a little longer, one at the ceiling a little less, so neither bunches up.
    fn jitter(&mut self, base: Duration, lo: Duration, hi: Duration) -> Duration {
        let scale = |f: f64| Duration::try_from_secs_f64(base.as_secs_f64() * f).unwrap_or(base);
        let low = scale(1.0 - JITTER).max(lo);
        let high = scale(1.0 + JITTER).min(hi);
        if high <= low {
            return low;
        }
        let (l, h) = (low.as_millis(), high.as_millis());
        let picked = self.rng.random_range(l..=h);
        Duration::from_millis(u64::try_from(picked).unwrap_or(u64::MAX))
    }
}

/// How long a rate-limited host is left alone: what it asked for, or a default, at most
/// [`MAX_RATE_LIMIT_WAIT`].
pub fn rate_limit_wait(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
        .min(MAX_RATE_LIMIT_WAIT)
}

/// `d` in milliseconds, as the schedule's Unix-ms times count.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The upstream host of a git URL, for the per-host limit (local paths share one "host").
pub fn host_of_url(url: &str) -> String {
    match gix::url::parse(gix::bstr::BStr::new(url)) {
        Ok(u) => u.host().map(|h| h.to_ascii_lowercase()).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_18_hosts_match_exactly_or_by_suffix() {
        assert!(host_matches("github.com", "github.com"));
        assert!(!host_matches("github.com", "api.github.com"));
        assert!(host_matches(".github.com", "api.github.com"));
        assert!(host_matches(".github.com", "github.com"));
        assert!(!host_matches(".github.com", "notgithub.com"));
    }

    fn sched(concurrency: usize, per_host: usize) -> Schedule {
        Schedule::new(&FetchSection {
            concurrency,
            per_host_concurrency: per_host,
            min_interval: Duration::from_secs(60),
            ..FetchSection::default()
        })
    }

    /// Repo ids are "<host>/<n>" in these tests.
    fn host(id: &str) -> String {
        id.split('/').next().unwrap_or_default().to_owned()
    }

    /// Issue 16 per-worker series: the queue depth counts what is due and not started
    /// (urgent or past due), not what is planned for later nor what runs.
    #[test]
    fn waiting_counts_due_repos_that_have_not_started() {
        let mut s = sched(1, 1);
        s.plan("a/1", 100);
        s.plan("b/1", 200);
        s.plan("c/1", 5_000);
        s.plan_urgent("d/1", 150);
        assert_eq!(s.waiting(99), 1, "only the urgent one is due");
        assert_eq!(s.waiting(200), 3, "a due time equal to now is due");
        assert_eq!(s.start_ready(200, host, |_| true).len(), 1);
        assert_eq!(s.waiting(200), 2, "the one started is running, not waiting");
        assert_eq!(s.waiting(10_000), 3);
    }

    /// SIGHUP (SPEC §11): new limits govern what starts next.
    #[test]
    fn reloaded_limits_apply_to_what_starts_next() {
        let mut s = sched(1, 1);
        for id in ["a/1", "b/1", "c/1"] {
            s.plan(id, 0);
        }
        assert_eq!(s.start_ready(10, host, |_| true), vec!["a/1"]);
        s.set_limits(&FetchSection {
            concurrency: 3,
            per_host_concurrency: 1,
            ..FetchSection::default()
        });
        assert_eq!(s.start_ready(10, host, |_| true), vec!["b/1", "c/1"]);
    }

    #[test]
    fn spec_7_4_concurrency_and_per_host_limits() {
        let mut s = sched(3, 2);
        for id in ["a/1", "a/2", "a/3", "b/1", "b/2"] {
            s.plan(id, 0);
        }
        let started = s.start_ready(10, host, |_| true);
        assert_eq!(started, vec!["a/1", "a/2", "b/1"]);
        assert!(
            s.start_ready(10, host, |_| true).is_empty(),
            "concurrency is full"
        );
        s.finish("a/1", Some(1000), 10);
        // a is still at its limit of 2 only if a/2 runs: a/2 runs, a/1 finished → a/3 may go.
        assert_eq!(s.start_ready(10, host, |_| true), vec!["a/3"]);
        s.finish("b/1", Some(1000), 10);
        assert_eq!(s.start_ready(10, host, |_| true), vec!["b/2"]);
        assert_eq!(s.running(), 3);
    }

    #[test]
    fn spec_7_4_never_two_on_one_repo() {
        let mut s = sched(4, 4);
        s.plan("a/1", 0);
        assert_eq!(s.start_ready(0, host, |_| true), vec!["a/1"]);
        s.plan("a/1", 0);
        s.plan_urgent("a/1", 0);
        assert!(s.start_ready(0, host, |_| true).is_empty());
        // The request made while running is honoured right after.
        s.finish("a/1", Some(60_000), 5);
        assert_eq!(s.start_ready(5, host, |_| true), vec!["a/1"]);
    }

    #[test]
    fn spec_7_2_new_and_requested_repos_first() {
        let mut s = sched(1, 1);
        s.plan("a/old", 0);
        s.plan_urgent("b/new", 100);
        assert_eq!(s.start_ready(200, host, |_| true), vec!["b/new"]);
        s.finish("b/new", Some(10_000), 200);
        s.plan_urgent("c/asked", 300);
        assert_eq!(s.start_ready(300, host, |_| true), vec!["c/asked"]);
    }

    #[test]
    fn not_due_waits_and_wake_time_is_known() {
        let mut s = sched(2, 2);
        s.plan("a/1", 5000);
        s.plan("b/1", 3000);
        assert!(s.start_ready(1000, host, |_| true).is_empty());
        assert_eq!(s.next_wake(1000), Some(3000));
        assert_eq!(s.start_ready(3000, host, |_| true), vec!["b/1"]);
        assert_eq!(s.next_wake(3000), Some(5000));
    }

    #[test]
    fn admit_holds_back_without_losing_the_plan() {
        let mut s = sched(2, 2);
        s.plan_urgent("a/clone", 0);
        s.plan("b/fetch", 0);
        assert_eq!(
            s.start_ready(0, host, |id| id != "a/clone"),
            vec!["b/fetch"]
        );
        assert_eq!(s.start_ready(0, host, |_| true), vec!["a/clone"]);
    }

    #[test]
    fn forget_removes_the_plan() {
        let mut s = sched(2, 2);
        s.plan("a/1", 0);
        s.forget("a/1");
        assert!(s.start_ready(0, host, |_| true).is_empty());
        s.plan("a/2", 0);
        s.start_ready(0, host, |_| true);
        s.forget("a/2");
        s.finish("a/2", None, 0);
        assert_eq!(s.running(), 0);
        assert!(s.start_ready(0, host, |_| true).is_empty());
    }

    const MIN: i64 = 60_000;
    const H: i64 = 3_600_000;

    /// Every value of `f` over many draws lies in `[lo, hi]`, and the spread is used.
    fn within(mut f: impl FnMut() -> i64, lo: i64, hi: i64) {
        let draws: Vec<i64> = (0..200).map(|_| f()).collect();
        let (min, max) = (*draws.iter().min().unwrap(), *draws.iter().max().unwrap());
        assert!(min >= lo && max <= hi, "{min}..{max} not within {lo}..{hi}");
        assert!(max - min > (hi - lo) / 2, "jitter spreads: {min}..{max}");
    }

    #[test]
    fn spec_7_2_interval_is_half_the_time_since_the_last_change() {
        let mut s = Schedule::with_seed(
            &FetchSection {
                min_interval: Duration::from_secs(60),
                max_interval: Duration::from_secs(24 * 3600),
                ..FetchSection::default()
            },
            7,
        );
        let now = 1_000 * H;
        // Changed 10 h ago: about 5 h, ±10 %.
        within(
            || s.after_success(now, now - 10 * H) - now,
            4 * H + 30 * MIN,
            5 * H + 30 * MIN,
        );
        // Changed just now (or the clock says the future): the floor, jittered upwards.
        within(|| s.after_success(now, now) - now, MIN, MIN + MIN / 10);
        within(|| s.after_success(now, now + H) - now, MIN, MIN + MIN / 10);
        // Dormant for a year: the ceiling, jittered downwards.
        within(
            || s.after_success(now, now - 365 * 24 * H) - now,
            24 * H - 24 * H / 10,
            24 * H,
        );
    }

    #[test]
    fn spec_7_2_busy_repos_are_fetched_more_often_than_dormant_ones() {
        // Simulated: one repo changes every 2 s, one never; min 1 s, max 60 s.
        let mut s = Schedule::with_seed(
            &FetchSection {
                min_interval: Duration::from_secs(1),
                max_interval: Duration::from_secs(60),
                ..FetchSection::default()
            },
            1,
        );
        let (mut busy, mut dormant) = (0, 0);
        let (mut busy_due, mut dormant_due) = (0i64, 0i64);
        for t in (0..600_000i64).step_by(100) {
            if t >= busy_due {
                busy += 1;
                let last_change = t - t % 2000;
                busy_due = s.after_success(t, last_change);
            }
            if t >= dormant_due {
                dormant += 1;
                dormant_due = s.after_success(t, -3_600_000);
            }
        }
        assert!(busy > 10 * dormant, "busy {busy}, dormant {dormant}");
    }

    #[test]
    fn spec_7_3_backoff() {
        let mut s = Schedule::with_seed(
            &FetchSection {
                min_interval: Duration::from_secs(60),
                ..FetchSection::default()
            },
            3,
        );
        let t = FailureClass::Transient;
        within(|| s.after_failure(0, 1, t), MIN, MIN + MIN / 10);
        within(
            || s.after_failure(0, 2, t),
            2 * MIN * 9 / 10,
            2 * MIN * 11 / 10,
        );
        within(
            || s.after_failure(0, 3, FailureClass::Local),
            4 * MIN * 9 / 10,
            4 * MIN * 11 / 10,
        );
        within(|| s.after_failure(0, 40, t), 6 * H * 9 / 10, 6 * H);
        within(
            || s.after_failure(0, 1, FailureClass::Gone),
            24 * H * 9 / 10,
            24 * H * 11 / 10,
        );
    }

    /// SPEC §16: a refused credential is retried at `max_interval`, not backed off nor
    /// probed daily like `gone`.
    #[test]
    fn spec_16_auth_failure_retries_at_max_interval() {
        let mut s = Schedule::with_seed(
            &FetchSection {
                min_interval: Duration::from_secs(60),
                max_interval: Duration::from_secs(2 * 3600),
                ..FetchSection::default()
            },
            3,
        );
        for failures in [1, 5] {
            within(
                || s.after_failure(0, failures, FailureClass::Auth),
                2 * H * 9 / 10,
                2 * H,
            );
        }
    }

    #[test]
    fn spec_7_3_rate_limited_host_is_paused_and_composes_with_per_host_limits() {
        let mut s = sched(4, 2);
        for id in ["a/1", "a/2", "a/3", "b/1"] {
            s.plan(id, 0);
        }
        assert_eq!(s.pause_host("a", 5_000), 5_000);
        assert_eq!(s.pause_host("a", 3_000), 5_000, "never shortened");
        assert_eq!(s.paused_until("a", 100), Some(5_000));
        assert_eq!(s.start_ready(100, host, |_| true), vec!["b/1"]);
        assert_eq!(s.next_wake(100), Some(5_000), "wake when the host resumes");
        assert!(s.start_ready(4_999, host, |_| true).is_empty());
        // Resumed: the per-host limit (2) applies as usual.
        assert_eq!(s.start_ready(5_000, host, |_| true), vec!["a/1", "a/2"]);
        assert_eq!(s.paused_until("a", 5_000), None);
        // A 429 seen by a running fetch pauses the host while others of it still run.
        s.pause_host("a", 9_000);
        s.finish("a/1", Some(20_000), 6_000);
        assert!(s.start_ready(6_000, host, |_| true).is_empty(), "a/3 waits");
        assert_eq!(s.start_ready(9_000, host, |_| true), vec!["a/3"]);
        // Urgent requests wait for the host too.
        s.pause_host("b", 12_000);
        s.finish("b/1", Some(100_000), 9_500);
        s.plan_urgent("b/1", 9_500);
        assert!(s.start_ready(9_500, host, |_| true).is_empty());
        assert_eq!(s.start_ready(12_000, host, |_| true), vec!["b/1"]);
        assert_eq!(rate_limit_wait(None), DEFAULT_RATE_LIMIT_WAIT);
        assert_eq!(
            rate_limit_wait(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            rate_limit_wait(Some(Duration::from_secs(10 * 24 * 3600))),
            MAX_RATE_LIMIT_WAIT
        );
    }

    // SPEC §18: a connection share caps fetches under a limited host (all names under a
    // suffix together), on top of per_host_concurrency; per_minute is a token bucket;
    // suspended shares start nothing; demand counts due and running.
    #[test]
    fn spec_18_budget_shares_limit_what_starts() {
        use gitmirror_wire::HostShare;
        let mut s = sched(10, 4);
        for id in ["a1", "a2", "a3", "b1", "b2", "c1"] {
            s.plan(id, 0);
        }
        // a* on api.gh, b* on gh, c* elsewhere.
        let host = |id: &str| match &id[..1] {
            "a" => "api.gh".to_owned(),
            "b" => "gh".to_owned(),
            _ => "other".to_owned(),
        };
        s.set_budgets(
            &[HostShare {
                host: ".gh".into(),
                connections: Some(2),
                per_minute: None,
            }],
            0,
        );
        let loads = s.host_loads(0, host);
        assert_eq!(
            (loads[0].due, loads[0].running, loads[0].share),
            (5, 0, Some(2))
        );
        let started = s.start_ready(0, host, |_| true);
        let under: Vec<_> = started.iter().filter(|id| !id.starts_with('c')).collect();
        assert_eq!(under.len(), 2, "{started:?}");
        assert!(started.contains(&"c1".to_owned()));
        let loads = s.host_loads(0, host);
        assert_eq!(
            (loads[0].due, loads[0].running, loads[0].started_last_minute),
            (3, 2, 2)
        );
        // Shrunk to 1: nothing starts until running falls below it.
        s.set_budgets(
            &[HostShare {
                host: ".gh".into(),
                connections: Some(1),
                per_minute: None,
            }],
            0,
        );
        s.finish(under[0], Some(1_000_000), 0);
        assert!(s.start_ready(1, host, |_| true).is_empty());
        // Suspended (lease over): nothing, even with a free slot.
        s.finish(
            &started
                .iter()
                .find(|id| !id.starts_with('c') && *id != under[0])
                .unwrap()
                .clone(),
            Some(1_000_000),
            2,
        );
        s.suspend_budgets();
        assert!(s.start_ready(3, host, |_| true).is_empty());
        // per_minute 60: one token to begin with, then one a second.
        s.set_budgets(
            &[HostShare {
                host: ".gh".into(),
                connections: None,
                per_minute: Some(60),
            }],
            10_000,
        );
        assert_eq!(s.start_ready(10_000, host, |_| true).len(), 1);
        assert!(s.start_ready(10_500, host, |_| true).is_empty());
        assert_eq!(s.next_wake(10_500), Some(11_000));
        assert_eq!(s.start_ready(11_000, host, |_| true).len(), 1);
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of_url("https://GitHub.com/a/b.git"), "github.com");
        assert_eq!(host_of_url("git://127.0.0.1:9418/abc"), "127.0.0.1");
        assert_eq!(host_of_url("git@gitee.com:a/b.git"), "gitee.com");
        assert_eq!(host_of_url("/srv/git/abc"), "");
    }
}
