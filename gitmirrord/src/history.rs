//! What the operator's pages show beyond the census (issue 16; design.md "Operator's
//! view"): each repo's last outcomes and events, and outcomes and events per minute over
//! the last hour. Kept in memory since the coordinator started, bounded per repo and in
//! total, so a million repos cannot grow it past a fixed size (SPEC §12).
//!
//! Recording costs O(1) amortized per outcome or event; reading one repo's history is a
//! lookup; the per-minute series are 60 fixed slots.

use crate::events::{Event, EventKind, RefUpdate};
use crate::fleet::ErrorClass;
use crate::page::cut;
use gitmirror_wire::{FetchResult, Outcome};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Outcomes kept per repo.
pub const OUTCOMES_PER_REPO: usize = 10;
/// Outcomes kept in all (the oldest go first): ~100 bytes each.
pub const OUTCOMES_TOTAL: usize = 200_000;
/// Events kept per repo.
pub const EVENTS_PER_REPO: usize = 5;
/// Events kept in all.
pub const EVENTS_TOTAL: usize = 50_000;
/// Ref changes kept per event.
pub const REFS_PER_EVENT: usize = 5;
/// Longest error message kept (characters).
const MAX_MESSAGE: usize = 300;
/// Minutes of the per-minute series.
pub const MINUTES: usize = 60;

/// One fetch outcome as the repo page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRecord {
    pub finished_ms: i64,
    pub duration_ms: u64,
    /// The worker's id.
    pub worker: u32,
    pub class: OutcomeClass,
    /// `cloned`/`fetched` for a success; the error or the wait reason otherwise.
    pub detail: String,
    pub changes: usize,
}

/// One event as the repo page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: u64,
    pub time: String,
    pub worker: u32,
    pub kind: EventKind,
    /// What made the fetch (SPEC §15).
    pub trigger: crate::events::Trigger,
    pub ref_count: u64,
    /// The first [`REFS_PER_EVENT`] changes.
    pub refs: Vec<RefUpdate>,
}

/// Per repo the last `per` items, and at most `total` in all: a queue of every push in
/// order evicts the oldest item of the whole store (an entry whose item was already pushed
/// out of its repo's own queue evicts nothing, so the store holds at most `total`).
#[derive(Debug)]
struct Bounded<T> {
    per_repo: HashMap<Arc<str>, VecDeque<(u64, T)>>,
    order: VecDeque<(u64, Arc<str>)>,
    next: u64,
    per: usize,
    total: usize,
}

impl<T> Bounded<T> {
    fn new(per: usize, total: usize) -> Self {
        Self {
            per_repo: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            per,
            total,
        }
    }

    fn push(&mut self, repo: &Arc<str>, item: T) {
        let n = self.next;
        self.next += 1;
        // Most repos have one or two records: grow from one, not VecDeque's default.
        let q = self
            .per_repo
            .entry(repo.clone())
            .or_insert_with(|| VecDeque::with_capacity(1));
        q.push_back((n, item));
        if q.len() > self.per {
            q.pop_front();
        }
        self.order.push_back((n, repo.clone()));
        while self.order.len() > self.total {
            let Some((old, r)) = self.order.pop_front() else {
                break;
            };
            if let Some(q) = self.per_repo.get_mut(&r) {
                if q.front().is_some_and(|(f, _)| *f == old) {
                    q.pop_front();
                }
                if q.is_empty() {
                    self.per_repo.remove(&r);
                }
            }
        }
    }

    /// Newest first.
    fn of(&self, repo: &str) -> impl Iterator<Item = &T> + '_ {
        self.per_repo
            .get(repo)
            .into_iter()
            .flat_map(|q| q.iter().rev().map(|(_, t)| t))
    }

    fn len(&self) -> usize {
        self.per_repo.values().map(VecDeque::len).sum()
    }
}

/// Counts per minute over the last [`MINUTES`] minutes, per label: each slot remembers
/// its minute, so a stale slot reads as zero.
#[derive(Debug, Clone)]
pub struct PerMinute<K> {
    slots: Vec<(i64, Vec<(K, u64)>)>,
}

impl<K: Clone> Default for PerMinute<K> {
    fn default() -> Self {
        Self {
            slots: vec![(i64::MIN, Vec::new()); MINUTES],
        }
    }
}

impl<K: Clone + PartialEq> PerMinute<K> {
    pub fn add(&mut self, time_ms: i64, label: K) {
        let m = time_ms.div_euclid(60_000);
        let Some(slot) = self.slots.get_mut(m.rem_euclid(MINUTES as i64) as usize) else {
            return;
        };
        if slot.0 > m {
            // Older than the minute the slot holds now: out of the window.
            return;
        }
        if slot.0 != m {
            *slot = (m, Vec::new());
        }
        match slot.1.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => slot.1.push((label, 1)),
        }
    }

    /// The last [`MINUTES`] minutes up to the one holding `now_ms`, oldest first: per
    /// minute the counts by label.
    pub fn series(&self, now_ms: i64) -> Vec<Vec<(K, u64)>> {
        let now_m = now_ms.div_euclid(60_000);
        (0..MINUTES as i64)
            .rev()
            .map(|back| {
                let m = now_m - back;
                self.slots
                    .get(m.rem_euclid(MINUTES as i64) as usize)
                    .filter(|s| s.0 == m)
                    .map(|s| s.1.clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// What became of a fetch, as the pages group outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeClass {
    Ok,
    Waiting,
    Failed(ErrorClass),
}

impl OutcomeClass {
    pub fn of(r: &FetchResult) -> Self {
        match r {
            FetchResult::Cloned | FetchResult::Fetched => Self::Ok,
            FetchResult::Waiting { .. } => Self::Waiting,
            FetchResult::Failed { class, .. } => Self::Failed(ErrorClass::from(*class)),
        }
    }

    /// `ok`, `waiting`, or the failure class as `/api/repos/{id}` spells it.
    pub fn name(self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::Waiting => "waiting".into(),
            Self::Failed(c) => error_class_name(c),
        }
    }
}

/// An error class's API name (`rate-limited`, …): its serde name, the one spelling.
pub fn error_class_name(c: ErrorClass) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The store.
#[derive(Debug)]
pub struct History {
    outcomes: Bounded<OutcomeRecord>,
    events: Bounded<EventRecord>,
    outcomes_per_minute: PerMinute<OutcomeClass>,
    events_per_minute: PerMinute<()>,
}

impl Default for History {
    fn default() -> Self {
        Self::with_bounds(
            OUTCOMES_PER_REPO,
            OUTCOMES_TOTAL,
            EVENTS_PER_REPO,
            EVENTS_TOTAL,
        )
    }
}

impl History {
    pub fn with_bounds(
        outcomes_per_repo: usize,
        outcomes_total: usize,
        events_per_repo: usize,
        events_total: usize,
    ) -> Self {
        Self {
            outcomes: Bounded::new(outcomes_per_repo, outcomes_total),
            events: Bounded::new(events_per_repo, events_total),
            outcomes_per_minute: PerMinute::default(),
            events_per_minute: PerMinute::default(),
        }
    }

    /// A non-duplicate outcome from worker `worker` for the repo `id`.
    /// An outcome, counted in the per-minute series at `now_ms` (the coordinator's clock:
    /// a worker's clock running ahead would take over a slot and drop the real counts).
    pub fn outcome(&mut self, id: &Arc<str>, worker: u32, o: &Outcome, now_ms: i64) {
        let class = OutcomeClass::of(&o.result);
        let detail = match &o.result {
            FetchResult::Cloned => "cloned".to_owned(),
            FetchResult::Fetched => "fetched".to_owned(),
            FetchResult::Failed { message, .. } => cut(&crate::redact::text(message), MAX_MESSAGE),
            FetchResult::Waiting { reason } => cut(&crate::redact::text(reason), MAX_MESSAGE),
        };
        self.outcomes_per_minute.add(now_ms, class);
        self.outcomes.push(
            id,
            OutcomeRecord {
                finished_ms: o.finished_ms,
                duration_ms: o.duration_ms,
                worker,
                class,
                detail,
                changes: o.changes.len(),
            },
        );
    }

    /// A durable event, at `now_ms` (the per-minute series count when it was published).
    pub fn event(&mut self, e: &Event, now_ms: i64) {
        self.events_per_minute.add(now_ms, ());
        let id: Arc<str> = Arc::from(e.repo.as_str());
        self.events.push(
            &id,
            EventRecord {
                seq: e.seq,
                time: e.time.clone(),
                worker: e.worker,
                kind: e.kind,
                trigger: e.trigger,
                ref_count: e.ref_count.max(e.refs.len() as u64),
                refs: e.refs.iter().take(REFS_PER_EVENT).cloned().collect(),
            },
        );
    }

    /// The repo's last outcomes, newest first.
    pub fn outcomes_of(&self, id: &str) -> impl Iterator<Item = &OutcomeRecord> + '_ {
        self.outcomes.of(id)
    }

    /// The repo's last events, newest first.
    pub fn events_of(&self, id: &str) -> impl Iterator<Item = &EventRecord> + '_ {
        self.events.of(id)
    }

    pub fn outcomes_per_minute(&self, now_ms: i64) -> Vec<Vec<(OutcomeClass, u64)>> {
        self.outcomes_per_minute.series(now_ms)
    }

    pub fn events_per_minute(&self, now_ms: i64) -> Vec<u64> {
        self.events_per_minute
            .series(now_ms)
            .into_iter()
            .map(|m| m.iter().map(|(_, n)| n).sum())
            .collect()
    }

    /// Outcomes and events held (for tests and the benchmark).
    pub fn len(&self) -> (usize, usize) {
        (self.outcomes.len(), self.events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitmirror_wire::FailureClass;

    fn outcome(repo: &str, t: i64, result: FetchResult) -> Outcome {
        Outcome {
            report_id: 1,
            repo: repo.into(),
            url: "git://h/r".into(),
            finished_ms: t,
            duration_ms: 1500,
            result,
            changes: vec![],
            ref_count: 0,
            refs_digest: 0,
            next_due_ms: 0,
        }
    }

    // Issue 16 item 1: the history is bounded per repo and in total (SPEC §12, 1M repos).
    #[test]
    fn issue16_history_is_bounded_per_repo_and_in_total() {
        let mut h = History::with_bounds(3, 10, 2, 4);
        let a: Arc<str> = Arc::from("a/b/a");
        for t in 0..5 {
            h.outcome(&a, 1, &outcome("a/b/a", t, FetchResult::Fetched), t);
        }
        let times: Vec<i64> = h.outcomes_of("a/b/a").map(|o| o.finished_ms).collect();
        assert_eq!(times, [4, 3, 2], "newest first, three kept");
        // Many repos: never more than the total, the oldest repos' records go first.
        for i in 0..100 {
            let id: Arc<str> = Arc::from(format!("x/y/{i}"));
            h.outcome(
                &id,
                1,
                &outcome(&id, 100 + i, FetchResult::Fetched),
                100 + i,
            );
        }
        assert!(h.len().0 <= 10, "{:?}", h.len());
        assert_eq!(h.outcomes_of("a/b/a").count(), 0);
        assert_eq!(h.outcomes_of("x/y/99").count(), 1);
        assert_eq!(h.outcomes_of("x/y/90").count(), 1);
        assert_eq!(h.outcomes_of("x/y/89").count(), 0);
        assert!(h.outcomes.per_repo.len() <= 10);
    }

    #[test]
    fn outcomes_carry_class_and_redacted_message() {
        let mut h = History::default();
        let a: Arc<str> = Arc::from("a/b/a");
        h.outcome(
            &a,
            2,
            &outcome(
                "a/b/a",
                7,
                FetchResult::Failed {
                    class: FailureClass::RateLimited,
                    message: "fetching https://u:secret@h/r failed".into(),
                },
            ),
            7,
        );
        let o = h.outcomes_of("a/b/a").next().unwrap();
        assert_eq!(o.class.name(), "rate-limited");
        assert!(!o.detail.contains("secret"), "{}", o.detail);
        assert_eq!(o.worker, 2);
    }

    // Issue 16 item 1: the outcomes plot counts by the coordinator's clock; a worker whose
    // clock runs a day ahead neither hides the fleet's counts nor is lost.
    #[test]
    fn issue16_outcomes_per_minute_by_the_coordinators_clock() {
        let mut h = History::default();
        let a: Arc<str> = Arc::from("a/b/a");
        let now = 1_000 * 60_000;
        let ahead = now + 86_400_000;
        h.outcome(&a, 1, &outcome("a/b/a", ahead, FetchResult::Fetched), now);
        h.outcome(&a, 2, &outcome("a/b/a", now, FetchResult::Fetched), now);
        let s = h.outcomes_per_minute(now);
        let total: u64 = s[MINUTES - 1].iter().map(|(_, n)| n).sum();
        assert_eq!(total, 2);
        assert_eq!(h.outcomes_of("a/b/a").next().unwrap().finished_ms, now);
    }

    // Issue 16 item 2: outcomes per minute by class over the last hour; older minutes and
    // reused slots read as zero.
    #[test]
    fn issue16_per_minute_series_covers_the_last_hour() {
        let mut p = PerMinute::default();
        let now = 1_000 * 60_000 + 30_000;
        p.add(now, "ok");
        p.add(now - 1000, "ok");
        p.add(now - 60_000, "transient");
        p.add(now - 59 * 60_000, "ok");
        p.add(now - 60 * 60_000, "gone"); // an hour back: out of the window
        let s = p.series(now);
        assert_eq!(s.len(), MINUTES);
        assert_eq!(s[59], vec![("ok", 2)]);
        assert_eq!(s[58], vec![("transient", 1)]);
        assert_eq!(s[0], vec![("ok", 1)]);
        let total: u64 = s.iter().flatten().map(|(_, n)| n).sum();
        assert_eq!(total, 4);
    }
}
