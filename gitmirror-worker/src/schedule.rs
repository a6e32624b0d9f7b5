//! When each held repo is fetched next, and how many fetches run at once (SPEC §7.2–§7.4).
//!
//! For now the interval is fixed at `fetch.min_interval` after a success, with a capped
//! exponential backoff after failures; the adaptive interval of §7.2 replaces
//! [`Schedule::after_success`] later without touching the rest.
//!
//! No clock and no I/O: times are Unix milliseconds passed in by the caller.

use crate::config::FetchSection;
use gitmirror_wire::FailureClass;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Longest backoff after transient failures (SPEC §7.3).
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// A gone upstream is probed once a day (SPEC §7.3).
pub const GONE_PROBE: Duration = Duration::from_secs(24 * 3600);

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
    /// Waiting repos in the order they should start.
    queue: BTreeSet<(Rank, i64, String)>,
    queued: HashMap<String, (Rank, i64)>,
    /// Running repo → its upstream host.
    running: HashMap<String, String>,
    per_host_running: HashMap<String, usize>,
    /// Asked for while running: queue urgently again when it finishes.
    rerun: HashSet<String>,
}

impl Schedule {
    pub fn new(fetch: &FetchSection) -> Self {
        Self {
            concurrency: fetch.concurrency.max(1),
            per_host: fetch.per_host_concurrency.max(1),
            min_interval: fetch.min_interval,
            queue: BTreeSet::new(),
            queued: HashMap::new(),
            running: HashMap::new(),
            per_host_running: HashMap::new(),
            rerun: HashSet::new(),
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

    pub fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    /// When the next repo that is not yet due becomes due, if any. Repos already due but
    /// held back by a limit start when something finishes.
    pub fn next_wake(&self, now_ms: i64) -> Option<i64> {
        self.queue
            .range((Rank::Due, now_ms.saturating_add(1), String::new())..)
            .next()
            .map(|(_, d, _)| *d)
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
        let mut full_hosts: HashSet<String> = HashSet::new();
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
            if admit(id) {
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

    /// Next attempt after a success.
    pub fn after_success(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(ms(self.min_interval))
    }

    /// Next attempt after the `failures`-th failure in a row: exponential from
    /// `min_interval`, capped at 6 h; a gone upstream once a day.
    pub fn after_failure(&self, now_ms: i64, failures: u32, class: FailureClass) -> i64 {
        if class == FailureClass::Gone {
            return now_ms.saturating_add(ms(GONE_PROBE));
        }
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        let backoff = self
            .min_interval
            .saturating_mul(factor)
            .min(MAX_BACKOFF.max(self.min_interval));
        now_ms.saturating_add(ms(backoff))
    }
}

fn ms(d: Duration) -> i64 {
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

    #[test]
    fn spec_7_3_backoff() {
        let s = sched(1, 1);
        assert_eq!(s.after_success(0), 60_000);
        assert_eq!(s.after_failure(0, 1, FailureClass::Transient), 60_000);
        assert_eq!(s.after_failure(0, 2, FailureClass::Transient), 120_000);
        assert_eq!(s.after_failure(0, 3, FailureClass::Local), 240_000);
        assert_eq!(
            s.after_failure(0, 40, FailureClass::Transient),
            6 * 3_600_000
        );
        assert_eq!(s.after_failure(0, 1, FailureClass::Gone), 24 * 3_600_000);
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of_url("https://GitHub.com/a/b.git"), "github.com");
        assert_eq!(host_of_url("git://127.0.0.1:9418/abc"), "127.0.0.1");
        assert_eq!(host_of_url("git@gitee.com:a/b.git"), "gitee.com");
        assert_eq!(host_of_url("/srv/git/abc"), "");
    }
}
