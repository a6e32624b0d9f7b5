//! Counters and ordered id sets of the fleet, kept up to date as repos change, so that
//! status, `/metrics`, the HTML page and filtered listings cost O(workers + indexes) or one
//! page, never a walk of every repo (SPEC §12; design.md "API and fleet at scale").
//!
//! The fleet tells the census each repo's [`Facts`] before and after every change; the
//! census derives nothing from repos itself. [`Census::from_facts`] rebuilds it from
//! scratch, which the fleet's tests compare against the kept one after random operations.
//!
//! Also here, because both the fleet (which records) and `/metrics` (which renders) need
//! them and neither should depend on the other: [`Histogram`] and [`FetchStats`].

use crate::fleet::RepoState;
use gitmirror_wire::{FailureClass, FetchResult, Outcome};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use uuid::Uuid;

/// The `outcome` label values of `gitmirror_fetches_total`, all present from the start.
pub const OUTCOMES: [&str; 8] = [
    "cloned",
    "fetched",
    "failed_transient",
    "failed_rate_limited",
    "failed_gone",
    "failed_local",
    "failed_auth",
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

/// A histogram over fixed buckets.
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
        self.observe_n(v, 1);
    }

    /// `n` observations of `v`.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        if !v.is_finite() || n == 0 {
            return;
        }
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += n;
        }
        self.sum += v * n as f64;
        self.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, cumulative count)`, the last bound being `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0;
        self.counts.iter().enumerate().map(move |(i, c)| {
            acc += c;
            (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc)
        })
    }
}

/// Fetch outcomes since the process started (every non-duplicate outcome, from any holder).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchStats {
    by_outcome: BTreeMap<&'static str, u64>,
    /// `(outcome, trigger)` → outcomes (SPEC §15 `gitmirror_fetches_total{trigger}`).
    by_trigger: BTreeMap<(&'static str, &'static str), u64>,
    duration: Histogram,
}

impl Default for FetchStats {
    fn default() -> Self {
        Self {
            by_outcome: OUTCOMES.iter().map(|o| (*o, 0)).collect(),
            by_trigger: BTreeMap::new(),
            duration: Histogram::new(&FETCH_DURATION_BUCKETS),
        }
    }
}

impl FetchStats {
    pub fn record(&mut self, o: &Outcome) {
        self.record_as(o, crate::events::Trigger::Schedule);
    }

    /// Count `o`, a fetch made for `trigger`.
    pub fn record_as(&mut self, o: &Outcome, trigger: crate::events::Trigger) {
        let label = match &o.result {
            FetchResult::Cloned => "cloned",
            FetchResult::Fetched => "fetched",
            FetchResult::Failed { class, .. } => match class {
                FailureClass::Transient => "failed_transient",
                FailureClass::RateLimited => "failed_rate_limited",
                FailureClass::Gone => "failed_gone",
                FailureClass::Local => "failed_local",
                FailureClass::Auth => "failed_auth",
            },
            FetchResult::Waiting { .. } => "waiting",
        };
        *self.by_outcome.entry(label).or_insert(0) += 1;
        *self
            .by_trigger
            .entry((label, trigger.as_str()))
            .or_insert(0) += 1;
        // A waiting repo was not attempted: it has no duration.
        if !matches!(o.result, FetchResult::Waiting { .. }) {
            self.duration.observe(o.duration_ms as f64 / 1000.0);
        }
    }

    pub fn count(&self, outcome: &str) -> u64 {
        self.by_outcome.get(outcome).copied().unwrap_or(0)
    }

    /// Outcomes of `outcome` made for `trigger`.
    pub fn count_by(&self, outcome: &str, trigger: &str) -> u64 {
        self.by_trigger
            .iter()
            .find(|((o, t), _)| *o == outcome && *t == trigger)
            .map_or(0, |(_, n)| *n)
    }

    pub fn duration(&self) -> &Histogram {
        &self.duration
    }
}

/// What the census knows of one repo: everything a count, a filter or the failing list
/// depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub state: RepoState,
    pub owner: Option<Uuid>,
    /// Kept beside the owner's ids, so `worker:url` reads URLs without a lookup each.
    pub url: Arc<str>,
    pub last_success_ms: Option<i64>,
    /// The last error's time, for repos failing or gone (the page lists newest first).
    pub failed_ms: Option<i64>,
    /// Workers holding (or told to hold) the repo, so a worker's connection and death
    /// visit its repos only (O(held), not O(repos)). Inline: one or two holders, no
    /// allocation per repo counted.
    pub holders: smallvec::SmallVec<[Uuid; 2]>,
    /// The last error's class, for repos failing or gone (the page groups them by it).
    pub failed_class: Option<crate::fleet::ErrorClass>,
    /// A repo with replicas (SPEC §13) whose verified holders in its placement are fewer
    /// than the placement (min(R, live non-drained workers)).
    pub under_replicated: bool,
}

const STATES: usize = RepoState::ALL.len();
/// Staleness up to an hour is counted to the second, beyond to the minute (the buckets
/// past an hour are whole hours, so a minute is within 1/60 of the smallest of them).
const FINE_SPAN_S: i64 = 3600;
const COARSE_SPAN_MIN: i64 = 7 * 24 * 60 + 1;

/// Repos with a successful fetch, by when, for the staleness histogram: two maps of
/// counts so a scrape reads at most an hour of seconds and a week of minutes.
#[derive(Debug, Clone, Default, PartialEq)]
struct SuccessTimes {
    by_second: BTreeMap<i64, u32>,
    by_minute: BTreeMap<i64, u32>,
    count: u64,
    /// Sum of the times (ms), for the histogram's `_sum`.
    sum_ms: i128,
}

fn bump(m: &mut BTreeMap<i64, u32>, k: i64, add: bool) {
    if add {
        *m.entry(k).or_insert(0) += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl SuccessTimes {
    fn change(&mut self, t: i64, add: bool) {
        bump(&mut self.by_second, t.div_euclid(1000), add);
        bump(&mut self.by_minute, t.div_euclid(60_000), add);
        if add {
            self.count += 1;
            self.sum_ms += i128::from(t);
        } else {
            self.count -= 1;
            self.sum_ms -= i128::from(t);
        }
    }

    fn histogram(&self, now_ms: i64) -> Histogram {
        let mut h = Histogram::new(&STALENESS_BUCKETS);
        let now_s = now_ms.div_euclid(1000);
        // Exact seconds from a minute boundary a little over an hour back; whole minutes
        // before that, each counted at its middle.
        let cut_min = (now_s - FINE_SPAN_S).div_euclid(60) - 1;
        let mut seen = 0u64;
        for (s, n) in self.by_second.range(cut_min * 60..) {
            h.observe_n((now_s - s).max(0) as f64, u64::from(*n));
            seen += u64::from(*n);
        }
        let week_min = now_s.div_euclid(60) - COARSE_SPAN_MIN;
        for (m, n) in self.by_minute.range(week_min..cut_min) {
            h.observe_n((now_s - m * 60 - 30) as f64, u64::from(*n));
            seen += u64::from(*n);
        }
        // Older than a week: past the last bucket.
        h.observe_n(1e12, self.count.saturating_sub(seen));
        // The exact sum, not the bucketed one.
        h.sum = (i128::from(now_ms) * i128::from(self.count) - self.sum_ms) as f64 / 1000.0;
        h
    }
}

/// A repo id in the census's ordered sets: ordered exactly as its text, but compared by
/// its first eight bytes as one big-endian integer before the rest. An index apply inserts
/// ids in ascending order, and an insert at a B-tree's end compares with every key on the
/// rightmost path: as `Arc<str>` each compare was a `memcmp` call, ~17 % of a 1M-entry
/// apply on the main loop (docs/scale.md, thirteenth session); ids of a worker's set
/// nearly always differ within eight bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Id(Arc<str>);

/// The first eight bytes of `b` (zero-padded) as a big-endian integer: for two strings
/// whose heads differ, the heads order them as their text does (a zero pad sorts first,
/// like the end of a shorter string); equal heads say nothing.
fn head(b: &[u8]) -> u64 {
    match b.first_chunk::<8>() {
        Some(h) => u64::from_be_bytes(*h),
        None => {
            let mut h = [0u8; 8];
            h[..b.len()].copy_from_slice(b);
            u64::from_be_bytes(h)
        }
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        head(a).cmp(&head(b)).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Look-ups by `&str`: the same order and equality as the text's.
impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The kept counters and sets. `Arc<str>` ids are shared with the fleet's repo table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    total: usize,
    by_state: [usize; STATES],
    /// Owner → the repos it owns, per state: counts, and id → URL.
    owned: foldhash::HashMap<Uuid, Owned>,
    state_ids: BTreeSet<(RepoState, Id)>,
    /// Failing and gone repos, newest failure first.
    failing: BTreeSet<(Reverse<i64>, Arc<str>)>,
    success: SuccessTimes,
    /// Per holder, the repos it holds or was told to hold. Unordered (its readers visit
    /// them all, or collect them into an ordered set): a hashed insert, where an ordered
    /// set keyed by `(holder, id)` took ~20 string compares, 16 % of a 1M index apply on
    /// the main loop.
    held: foldhash::HashMap<Uuid, foldhash::HashSet<Arc<str>>>,
    /// Failing and gone repos by the last error's class, and by upstream host (with the
    /// hosts ranked by that count), for the page's groups (issue 16).
    failing_classes: Vec<(Option<crate::fleet::ErrorClass>, usize)>,
    failing_hosts: HashMap<Arc<str>, usize>,
    failing_host_rank: BTreeSet<(Reverse<usize>, Arc<str>)>,
    /// Bumped when a worker's set of owned (id, URL) changes, so that what is built from
    /// `owned` (the status's `worker:url`) can be kept until it changes.
    owner_urls_gen: Generation,
    /// Bumped when only the state of an owned repo changes: the same URLs in another
    /// order (`owned` groups them by state). An outcome of a failing fleet does this
    /// at every report, so `worker:url` may follow it a little later.
    owner_order_gen: Generation,
    /// Repos with [`Facts::under_replicated`] (`/api/status` `under_replicated`).
    under_replicated: usize,
}

/// What one worker owns, per state ([`slot`]). One small map per worker and state, not
/// one fleet-wide set keyed by `(owner, state, id)`: half the bytes an owned repo (no
/// owner and state per key; ~40 MiB at 1M), one hash look-up per change for counts and
/// ids together, and a shorter search (~3 % of a 1M index apply: inserts in id order
/// still compare with every key on the tree's rightmost path).
#[derive(Debug, Clone, Default, PartialEq)]
struct Owned {
    counts: [usize; STATES],
    ids: [BTreeMap<Id, Arc<str>>; STATES],
}

impl Owned {
    fn is_empty(&self) -> bool {
        self.counts.iter().all(|n| *n == 0) && self.ids.iter().all(BTreeMap::is_empty)
    }
}

/// A change counter that a recount does not compare ([`Census`] equality is about content).
#[derive(Debug, Clone, Copy, Default)]
pub struct Generation(u64);

impl PartialEq for Generation {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Add `run` (keys not in it) to an ordered set or map that is `empty` or not: an empty
/// one is built from the run in bulk (an owner's first repos; `collect` sorts a run in
/// order in one pass), a filled one takes an insert per key. Merging into a filled one
/// (`append`) compares every key already there: merging any run of a sixteenth of its set
/// or more doubled a 1M-entry apply.
fn fill<S: Extend<T> + FromIterator<T>, T>(set: &mut S, empty: bool, run: Vec<T>) {
    if empty {
        *set = run.into_iter().collect();
    } else {
        set.extend(run);
    }
}

fn slot(s: RepoState) -> usize {
    RepoState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

/// One page of ids in id order, and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPage {
    pub ids: Vec<Arc<str>>,
    pub more: bool,
}

impl Census {
    /// Rebuild from every repo's facts (O(repos); for start-up and tests). The ordered
    /// sets are built in bulk from sorted vectors: a million single B-tree inserts with
    /// string compares took seconds of a 1M-repo start.
    pub fn from_facts<'a>(repos: impl IntoIterator<Item = (&'a Arc<str>, Facts)>) -> Self {
        let mut c = Census::default();
        // Per state, ids in id order: chained in state order they are already sorted.
        let mut state_ids: [Vec<(RepoState, Id)>; STATES] = Default::default();
        // Per owner and state, (id, URL) in id order.
        type Runs = [Vec<(Id, Arc<str>)>; STATES];
        let mut owner_ids: foldhash::HashMap<Uuid, Runs> = Default::default();
        let mut failing = Vec::new();
        for (id, f) in repos {
            let s = slot(f.state);
            c.total += 1;
            if let Some(n) = c.by_state.get_mut(s) {
                *n += 1;
            }
            if let Some(v) = state_ids.get_mut(s) {
                v.push((f.state, Id(id.clone())));
            }
            if let Some(o) = f.owner {
                if let Some(n) = c.owned.entry(o).or_default().counts.get_mut(s) {
                    *n += 1;
                }
                if let Some(v) = owner_ids.entry(o).or_default().get_mut(s) {
                    v.push((Id(id.clone()), f.url.clone()));
                }
            }
            if let Some(t) = f.failed_ms {
                failing.push((Reverse(t), id.clone()));
                c.failing_groups(&f, true);
            }
            if let Some(t) = f.last_success_ms {
                c.success.change(t, true);
            }
            for h in &f.holders {
                c.held.entry(*h).or_default().insert(id.clone());
            }
            c.under_replicated += usize::from(f.under_replicated);
        }
        // `from_iter` sorts (cheaply: the runs come in order) and builds in bulk. The ids
        // of all states interleaved were one long sort with string compares (~5 % of a
        // 1M start).
        c.state_ids = state_ids.into_iter().flatten().collect();
        for (o, runs) in owner_ids {
            let owned = c.owned.entry(o).or_default();
            for (map, run) in owned.ids.iter_mut().zip(runs) {
                *map = run.into_iter().collect();
            }
        }
        c.failing = failing.into_iter().collect();
        c
    }

    pub fn add(&mut self, id: &Arc<str>, f: &Facts) {
        self.change(id, f, true);
    }

    /// [`Census::add`] for many repos at once (the new repos of an index part; none of
    /// them in the census yet): the ordered sets are filled one owner and one state at a
    /// time (each set's rightmost path stays in cache; an empty one is built in bulk), and
    /// each held set is sized once for the part. `bench_index_apply_1m`: 3.6–5.4 s against
    /// 4.2–6.3 s adding one repo at a time (docs/scale.md, fourteenth session).
    pub fn add_all(&mut self, repos: Vec<(Arc<str>, Facts)>) {
        type Runs = [Vec<(Id, Arc<str>)>; STATES];
        let mut states: [Vec<(RepoState, Id)>; STATES] = Default::default();
        // Sized from the owners and holders known so far, each run for an even share of
        // the batch (grown from empty, rehashes and reallocations were a fifth of this).
        // With none known yet (the first part of a first index) runs grow as they fill:
        // an even share of one would size every owner's run for the whole batch.
        let known = self.owned.len().max(self.held.len());
        let share = match known {
            0 => 0,
            k => repos.len().div_ceil(k) + repos.len().div_ceil(k) / 4,
        };
        let mut owners: foldhash::HashMap<Uuid, Runs> =
            foldhash::HashMap::with_capacity_and_hasher(known, Default::default());
        let mut held: foldhash::HashMap<Uuid, Vec<Arc<str>>> =
            foldhash::HashMap::with_capacity_and_hasher(known, Default::default());
        for (id, f) in repos {
            self.count(&f, true);
            let s = slot(f.state);
            if let Some(v) = states.get_mut(s) {
                v.push((f.state, Id(id.clone())));
            }
            if let Some(o) = f.owner {
                self.owner_urls_gen.0 += 1;
                if let Some(v) = owners.entry(o).or_default().get_mut(s) {
                    if v.capacity() == 0 {
                        v.reserve(share);
                    }
                    v.push((Id(id.clone()), f.url.clone()));
                }
            }
            self.failing_entry(&id, &f, true);
            self.failing_groups(&f, true);
            self.success_entry(&f, true);
            self.under(&f, true);
            for h in &f.holders {
                let v = held.entry(*h).or_default();
                if v.capacity() == 0 {
                    v.reserve(share);
                }
                v.push(id.clone());
            }
        }
        for run in states {
            let empty = self.state_ids.is_empty();
            fill(&mut self.state_ids, empty, run);
        }
        for (o, runs) in owners {
            let owned = self.owned.entry(o).or_default();
            for (map, run) in owned.ids.iter_mut().zip(runs) {
                let empty = map.is_empty();
                fill(map, empty, run);
            }
        }
        for (h, ids) in held {
            let set = self.held.entry(h).or_default();
            set.reserve(ids.len());
            set.extend(ids);
        }
    }

    pub fn remove(&mut self, id: &Arc<str>, f: &Facts) {
        self.change(id, f, false);
    }

    pub fn update(&mut self, id: &Arc<str>, before: &Facts, after: &Facts) {
        // Only the parts whose keys moved: an outcome usually changes one time (a failure
        // its error time, a success its success time), and each ordered set touched is a
        // removal and an insertion with string compares.
        if (before.state, before.owner) != (after.state, after.owner) {
            self.count(before, false);
            self.count(after, true);
        }
        if before.state != after.state {
            self.state_ids.remove(&(before.state, Id(id.clone())));
            self.state_ids.insert((after.state, Id(id.clone())));
        }
        if (before.owner, &before.url) != (after.owner, &after.url) {
            self.owner_urls_gen.0 += 1;
            self.owner_entry(id, before, false);
            self.owner_entry(id, after, true);
        } else if before.state != after.state && before.owner.is_some() {
            self.owner_order_gen.0 += 1;
            self.owner_entry(id, before, false);
            self.owner_entry(id, after, true);
        }
        if before.failed_ms != after.failed_ms {
            self.failing_entry(id, before, false);
            self.failing_entry(id, after, true);
        }
        let group = |f: &Facts| (f.failed_ms.is_some(), f.failed_class, f.url.clone());
        if group(before) != group(after) {
            self.failing_groups(before, false);
            self.failing_groups(after, true);
        }
        if before.last_success_ms != after.last_success_ms {
            self.success_entry(before, false);
            self.success_entry(after, true);
        }
        if before.holders != after.holders {
            self.held_entries(id, before, false);
            self.held_entries(id, after, true);
        }
        if before.under_replicated != after.under_replicated {
            self.under(before, false);
            self.under(after, true);
        }
    }

    fn under(&mut self, f: &Facts, add: bool) {
        if f.under_replicated {
            if add {
                self.under_replicated += 1;
            } else {
                self.under_replicated = self.under_replicated.saturating_sub(1);
            }
        }
    }

    /// Repos with replicas short of their placement (SPEC §13): a counter, O(1).
    pub fn under_replicated(&self) -> usize {
        self.under_replicated
    }

    fn change(&mut self, id: &Arc<str>, f: &Facts, add: bool) {
        self.count(f, add);
        if add {
            self.state_ids.insert((f.state, Id(id.clone())));
        } else {
            self.state_ids.remove(&(f.state, Id(id.clone())));
        }
        if f.owner.is_some() {
            self.owner_urls_gen.0 += 1;
        }
        self.owner_entry(id, f, add);
        self.failing_entry(id, f, add);
        self.failing_groups(f, add);
        self.success_entry(f, add);
        self.held_entries(id, f, add);
        self.under(f, add);
    }

    /// The failing counts by class and by host, for a repo failing or gone.
    fn failing_groups(&mut self, f: &Facts, add: bool) {
        if f.failed_ms.is_none() {
            return;
        }
        let step = |n: &mut usize| {
            if add {
                *n += 1
            } else {
                *n = n.saturating_sub(1)
            }
        };
        match self
            .failing_classes
            .iter_mut()
            .find(|(c, _)| *c == f.failed_class)
        {
            Some((_, n)) => step(n),
            None if add => {
                // In class order, so that a recount compares equal.
                let rank = |c: Option<crate::fleet::ErrorClass>| c.map_or(0, |c| c as u8 + 1);
                let at = self
                    .failing_classes
                    .partition_point(|(c, _)| rank(*c) < rank(f.failed_class));
                self.failing_classes.insert(at, (f.failed_class, 1));
            }
            None => {}
        }
        self.failing_classes.retain(|(_, n)| *n > 0);
        let host = upstream_host(&f.url);
        let before = self.failing_hosts.get(host).copied().unwrap_or(0);
        let after = if add {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        let key: Arc<str> = match self.failing_hosts.get_key_value(host) {
            Some((k, _)) => k.clone(),
            None => Arc::from(host),
        };
        if before > 0 {
            self.failing_host_rank
                .remove(&(Reverse(before), key.clone()));
        }
        if after > 0 {
            self.failing_host_rank.insert((Reverse(after), key.clone()));
            self.failing_hosts.insert(key, after);
        } else {
            self.failing_hosts.remove(host);
        }
    }

    /// The total, per-state and per-owner counts.
    fn count(&mut self, f: &Facts, add: bool) {
        let s = slot(f.state);
        let step = |n: &mut usize| {
            if add {
                *n += 1
            } else {
                *n = n.saturating_sub(1)
            }
        };
        step(&mut self.total);
        if let Some(n) = self.by_state.get_mut(s) {
            step(n);
        }
        if let Some(o) = f.owner {
            let owned = self.owned.entry(o).or_default();
            if let Some(n) = owned.counts.get_mut(s) {
                step(n);
            }
            if owned.is_empty() {
                self.owned.remove(&o);
            }
        }
    }

    fn owner_entry(&mut self, id: &Arc<str>, f: &Facts, add: bool) {
        let Some(o) = f.owner else { return };
        let owned = self.owned.entry(o).or_default();
        let Some(map) = owned.ids.get_mut(slot(f.state)) else {
            return;
        };
        if add {
            map.insert(Id(id.clone()), f.url.clone());
        } else {
            map.remove(&**id);
            if owned.is_empty() {
                self.owned.remove(&o);
            }
        }
    }

    fn failing_entry(&mut self, id: &Arc<str>, f: &Facts, add: bool) {
        if let Some(t) = f.failed_ms {
            if add {
                self.failing.insert((Reverse(t), id.clone()));
            } else {
                self.failing.remove(&(Reverse(t), id.clone()));
            }
        }
    }

    fn success_entry(&mut self, f: &Facts, add: bool) {
        if let Some(t) = f.last_success_ms {
            self.success.change(t, add);
        }
    }

    fn held_entries(&mut self, id: &Arc<str>, f: &Facts, add: bool) {
        for h in &f.holders {
            if add {
                self.held.entry(*h).or_default().insert(id.clone());
            } else if let Some(ids) = self.held.get_mut(h) {
                ids.remove(id);
                if ids.is_empty() {
                    self.held.remove(h);
                }
            }
        }
    }

    // ----- counts -----

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn in_state(&self, s: RepoState) -> usize {
        self.by_state.get(slot(s)).copied().unwrap_or(0)
    }

    /// Repos the worker owns.
    pub fn owned(&self, worker: &Uuid) -> usize {
        self.owned.get(worker).map_or(0, |o| o.counts.iter().sum())
    }

    /// Repos the worker owns in one state.
    pub fn owned_in(&self, worker: &Uuid, s: RepoState) -> usize {
        self.owned
            .get(worker)
            .and_then(|o| o.counts.get(slot(s)).copied())
            .unwrap_or(0)
    }

    /// Repos never fetched successfully.
    pub fn never_mirrored(&self) -> u64 {
        (self.total as u64).saturating_sub(self.success.count)
    }

    /// Staleness (now minus last success) of every repo fetched successfully at least once.
    pub fn staleness(&self, now_ms: i64) -> Histogram {
        self.success.histogram(now_ms)
    }

    // ----- ordered sets -----

    /// Failing and gone repos by the last error's class (`None`: no error recorded).
    pub fn failing_by_class(&self) -> &[(Option<crate::fleet::ErrorClass>, usize)] {
        &self.failing_classes
    }

    /// Upstream hosts with failing or gone repos, most first (ties by name).
    pub fn failing_by_host(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.failing_host_rank.iter().map(|(n, h)| (&**h, n.0))
    }

    /// Hosts with failing or gone repos.
    pub fn failing_hosts(&self) -> usize {
        self.failing_hosts.len()
    }

    /// Failing and gone repos, newest failure first.
    pub fn failing(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.failing.iter().map(|(_, id)| id)
    }

    /// Repos without an owner (state `unassigned`), in id order.
    pub fn unowned(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.state_ids
            .range((RepoState::Unassigned, Id(Arc::from("")))..)
            .take_while(|(st, _)| *st == RepoState::Unassigned)
            .map(|(_, id)| &id.0)
    }

    /// Up to `limit` repos in `state` after `after` (by id).
    pub fn page_in_state(&self, s: RepoState, after: Option<&str>, limit: usize) -> IdPage {
        let start = match after {
            Some(a) => Bound::Excluded((s, Id(Arc::from(a)))),
            None => Bound::Included((s, Id(Arc::from("")))),
        };
        take_page(
            self.state_ids
                .range((start, Bound::Unbounded))
                .take_while(|(st, _)| *st == s)
                .map(|(_, id)| &id.0),
            limit,
        )
    }

    fn owner_range<'a>(
        &'a self,
        o: Uuid,
        s: RepoState,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>)> + 'a {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.owned
            .get(&o)
            .and_then(|owned| owned.ids.get(slot(s)))
            .into_iter()
            .flat_map(move |m| m.range::<str, _>((start, Bound::Unbounded)))
            .map(|(id, url)| (&id.0, url))
    }

    /// Up to `limit` repos the worker owns after `after` (by id), optionally in one state.
    pub fn page_owned(
        &self,
        o: Uuid,
        s: Option<RepoState>,
        after: Option<&str>,
        limit: usize,
    ) -> IdPage {
        if let Some(s) = s {
            return take_page(self.owner_range(o, s, after).map(|(id, _)| id), limit);
        }
        // Merge the per-state runs: at most limit + 1 from each, so a page costs
        // O(states × limit), whatever the worker owns.
        let mut ids: Vec<&Arc<str>> = RepoState::ALL
            .iter()
            .flat_map(|s| {
                self.owner_range(o, *s, after)
                    .map(|(id, _)| id)
                    .take(limit.saturating_add(1))
            })
            .collect();
        ids.sort_unstable();
        take_page(ids.into_iter(), limit)
    }

    /// The repos the worker holds or was told to hold, in no particular order.
    pub fn held_by(&self, w: Uuid) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.held.get(&w).into_iter().flatten()
    }

    /// Every repo the worker owns with its URL, grouped by state (for `worker:url`, which
    /// is bounded by the caller).
    /// Changes whenever the URLs [`Census::owned_urls`] yields for any worker may have.
    pub fn owner_urls_generation(&self) -> u64 {
        self.owner_urls_gen.0
    }

    /// Changes whenever only their order may have (a repo changed state).
    pub fn owner_order_generation(&self) -> u64 {
        self.owner_order_gen.0
    }

    pub fn owned_urls(&self, o: Uuid) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> + '_ {
        RepoState::ALL
            .iter()
            .flat_map(move |s| self.owner_range(o, *s, None))
    }
}

/// The host of an upstream URL (`https://user@host:port/p` → `host:port`, `git@host:p` →
/// `host`), or `local` for a path.
pub fn upstream_host(url: &str) -> &str {
    let (rest, scp) = match url.split_once("://") {
        Some((_, rest)) => (rest, false),
        None if url.starts_with('/') || url.starts_with('.') => return "local",
        None => (url, true),
    };
    let end = if scp {
        rest.find(':').unwrap_or(rest.len())
    } else {
        rest.find('/').unwrap_or(rest.len())
    };
    let authority = rest.get(..end).unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() { "local" } else { host }
}

/// Take `limit` ids and note whether another follows.
pub fn take_page<'a>(mut it: impl Iterator<Item = &'a Arc<str>>, limit: usize) -> IdPage {
    let ids: Vec<Arc<str>> = it.by_ref().take(limit).cloned().collect();
    let more = it.next().is_some();
    IdPage { ids, more }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: RepoState, owner: u128, success: Option<i64>) -> Facts {
        Facts {
            state,
            url: Arc::from("u"),
            owner: (owner > 0).then(|| Uuid::from_u128(owner)),
            last_success_ms: success,
            failed_ms: matches!(state, RepoState::Failing | RepoState::Gone).then_some(5),
            holders: (owner > 0)
                .then(|| Uuid::from_u128(owner))
                .into_iter()
                .collect(),
            failed_class: matches!(state, RepoState::Failing | RepoState::Gone)
                .then_some(crate::fleet::ErrorClass::Transient),
            under_replicated: false,
        }
    }

    #[test]
    fn histogram_counts_n_at_once() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        h.observe_n(5.0, 3);
        h.observe(100.0);
        assert_eq!(
            h.cumulative().collect::<Vec<_>>(),
            vec![(1.0, 0), (10.0, 3), (f64::INFINITY, 4)]
        );
        assert_eq!(h.sum(), 115.0);
    }

    #[test]
    fn counts_and_pages_follow_updates() {
        let ids: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("a/b/r{i}"))).collect();
        let mut c = Census::default();
        for id in &ids {
            c.add(id, &facts(RepoState::Pending, 1, None));
        }
        c.update(
            &ids[3],
            &facts(RepoState::Pending, 1, None),
            &facts(RepoState::Failing, 1, None),
        );
        c.update(
            &ids[4],
            &facts(RepoState::Pending, 1, None),
            &facts(RepoState::Mirrored, 2, Some(0)),
        );
        assert_eq!(c.total(), 10);
        assert_eq!(c.in_state(RepoState::Pending), 8);
        assert_eq!(c.owned(&Uuid::from_u128(1)), 9);
        assert_eq!(c.owned_in(&Uuid::from_u128(1), RepoState::Failing), 1);
        assert_eq!(c.never_mirrored(), 9);
        assert_eq!(c.failing().collect::<Vec<_>>(), vec![&ids[3]]);
        let p = c.page_owned(Uuid::from_u128(1), None, Some("a/b/r1"), 3);
        assert_eq!(p.ids, vec![ids[2].clone(), ids[3].clone(), ids[5].clone()]);
        assert!(p.more);
        let p = c.page_in_state(RepoState::Pending, Some("a/b/r7"), 5);
        assert_eq!(p.ids, vec![ids[8].clone(), ids[9].clone()]);
        assert!(!p.more);
        let rebuilt = Census::from_facts(ids.iter().enumerate().map(|(i, id)| {
            (
                id,
                match i {
                    3 => facts(RepoState::Failing, 1, None),
                    4 => facts(RepoState::Mirrored, 2, Some(0)),
                    _ => facts(RepoState::Pending, 1, None),
                },
            )
        }));
        assert_eq!(c, rebuilt);
    }

    // SPEC §9 /metrics staleness: to the second within the hour, to the minute beyond.
    #[test]
    fn staleness_buckets_match_a_direct_count() {
        let now = 10_000_000_000i64;
        let ages_s = [
            0i64, 59, 60, 61, 299, 3599, 3600, 3601, 3700, 7000, 86_000, 700_000,
        ];
        let mut c = Census::default();
        let ids: Vec<Arc<str>> = (0..ages_s.len())
            .map(|i| Arc::from(format!("a/b/{i}")))
            .collect();
        for (id, a) in ids.iter().zip(ages_s) {
            c.add(id, &facts(RepoState::Mirrored, 1, Some(now - a * 1000)));
        }
        let mut direct = Histogram::new(&STALENESS_BUCKETS);
        for a in ages_s {
            direct.observe(a as f64);
        }
        let kept = c.staleness(now);
        assert_eq!(
            kept.cumulative().collect::<Vec<_>>(),
            direct.cumulative().collect::<Vec<_>>()
        );
        assert_eq!(kept.count(), ages_s.len() as u64);
        assert_eq!(kept.sum(), direct.sum());
    }

    // Issue 16 item 2: failing repos grouped by class and by upstream host, kept as repos
    // change, equal to a recount.
    #[test]
    fn issue16_failing_groups_follow_updates() {
        use crate::fleet::ErrorClass;
        assert_eq!(
            upstream_host("https://u:p@git.example:8443/a/b"),
            "git.example:8443"
        );
        assert_eq!(upstream_host("git@github.com:a/b.git"), "github.com");
        assert_eq!(upstream_host("/srv/git/a"), "local");
        let failing = |url: &str, class| Facts {
            url: Arc::from(url),
            failed_class: Some(class),
            ..facts(RepoState::Failing, 1, None)
        };
        let ids: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("a/b/{i}"))).collect();
        let mut c = Census::default();
        let all = [
            failing("https://h1/x", ErrorClass::Transient),
            failing("https://h1/y", ErrorClass::Gone),
            failing("https://h2/z", ErrorClass::Transient),
            facts(RepoState::Mirrored, 1, Some(0)),
        ];
        for (id, f) in ids.iter().zip(&all) {
            c.add(id, f);
        }
        assert_eq!(
            c.failing_by_host().collect::<Vec<_>>(),
            [("h1", 2), ("h2", 1)]
        );
        let mut classes = c.failing_by_class().to_vec();
        classes.sort_by_key(|(_, n)| *n);
        assert_eq!(
            classes,
            [
                (Some(ErrorClass::Gone), 1),
                (Some(ErrorClass::Transient), 2)
            ]
        );
        // One recovers, one moves host.
        let mirrored = facts(RepoState::Mirrored, 1, Some(1));
        c.update(&ids[0], &all[0], &mirrored);
        let moved = failing("https://h2/y", ErrorClass::Gone);
        c.update(&ids[1], &all[1], &moved);
        assert_eq!(c.failing_by_host().collect::<Vec<_>>(), [("h2", 2)]);
        assert_eq!(c.failing_hosts(), 1);
        let rebuilt =
            Census::from_facts(
                ids.iter()
                    .zip([mirrored, moved, all[2].clone(), all[3].clone()]),
            );
        assert_eq!(
            c.failing_by_host().collect::<Vec<_>>(),
            rebuilt.failing_by_host().collect::<Vec<_>>()
        );
        assert_eq!(c.failing_hosts, rebuilt.failing_hosts);
    }

    proptest::proptest! {
        // The census's ordered sets keep the id order of the API's pages: `Id` orders as
        // the text does, whatever the lengths, shared heads and bytes (NUL included).
        #[test]
        fn id_orders_as_its_text(
            a in "[a/\\x00-\\x02]{0,12}",
            b in "[a/\\x00-\\x02]{0,12}",
            tail in "[a-c]{0,4}",
        ) {
            for (x, y) in [(a.clone(), b.clone()), (a.clone() + &tail, a.clone()), (b.clone(), b.clone() + &tail)] {
                let (ix, iy) = (Id(Arc::from(x.as_str())), Id(Arc::from(y.as_str())));
                proptest::prop_assert_eq!(ix.cmp(&iy), x.as_str().cmp(y.as_str()), "{:?} {:?}", x, y);
                proptest::prop_assert_eq!(ix == iy, x == y);
            }
        }

        // SPEC §12: new repos counted together (an index part) give the census of adding
        // them one by one, whether their runs are merged or inserted (runs short and long
        // beside what the sets already hold), and pages read the same ids.
        #[test]
        fn adding_together_is_adding_one_by_one(
            repos in proptest::collection::btree_map(
                "[a-c]{1,3}/[a-c]{1,4}",
                (0usize..RepoState::ALL.len(), 0u128..4, proptest::option::of(0i64..5_000)),
                0..120,
            ),
            cut in 0usize..120,
            part in 1usize..40,
        ) {
            let all: Vec<(Arc<str>, Facts)> = repos
                .into_iter()
                .map(|(id, (s, o, t))| {
                    let state = RepoState::ALL.get(s).copied().unwrap_or(RepoState::Mirrored);
                    let mut f = facts(state, o, t);
                    f.url = Arc::from(format!("https://h{o}/{id}").as_str());
                    (Arc::from(id.as_str()), f)
                })
                .collect();
            let mut one = Census::default();
            for (id, f) in &all {
                one.add(id, f);
            }
            let cut = cut.min(all.len());
            let mut together = Census::default();
            for (id, f) in &all[..cut] {
                together.add(id, f);
            }
            for chunk in all[cut..].chunks(part) {
                together.add_all(chunk.to_vec());
            }
            proptest::prop_assert_eq!(&together, &one);
            for w in 0..4u128 {
                let w = Uuid::from_u128(w);
                proptest::prop_assert_eq!(
                    together.owned_urls(w).collect::<Vec<_>>(),
                    one.owned_urls(w).collect::<Vec<_>>()
                );
                let mut a: Vec<_> = together.held_by(w).collect();
                let mut b: Vec<_> = one.held_by(w).collect();
                a.sort();
                b.sort();
                proptest::prop_assert_eq!(a, b);
            }
        }
    }
}
