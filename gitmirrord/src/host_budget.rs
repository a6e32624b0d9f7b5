//! Fleet-wide upstream budgets (SPEC §18): each limited host's budget split into shares
//! for the workers, and hosts paused for the whole fleet after a rate-limit answer.
//!
//! Pure: limits, the workers' reports (demand per limited host, rate-limit answers) and
//! `now` in; per-worker `HostBudgets` messages and views out. Cost per rebalance is
//! O(workers × limited hosts); no repo is ever looked at (workers count their own due and
//! running fetches).
//!
//! The one invariant: for every limited host, the sum over workers of `bound` (what a
//! worker may be using now, given everything it was told and has acknowledged) never
//! exceeds the host's `connections`. A share only grows out of budget nobody is bound to;
//! a shrunk share stays bound until the worker reports, after applying it, that it runs
//! no more than the new share. docs/design.md "Fleet-wide upstream budgets" has the
//! argument in full.

use gitmirror_wire::{HostBudgets, HostDemand, HostPause, HostShare};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The longest pause one rate-limit answer can cause (SPEC §18: bounded per answer).
pub const MAX_PAUSE_MS: u64 = 3_600_000;
/// Hosts paused at once at most: a rogue worker cannot grow the coordinator's memory or
/// every worker's `HostBudgets` without bound by naming made-up hosts.
pub const MAX_PAUSED_HOSTS: usize = 1024;

/// A later report moves an existing pause only when it extends it by this much (SPEC §18:
/// the fleet hears of a pause within a second).
const EXTEND_MIN_MS: i64 = 1_000;
/// Longest host name kept from a report (DNS names are at most 253 bytes).
const MAX_HOST_LEN: usize = 255;

/// One `host_limits` entry (validated by `config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostLimit {
    /// A host name, or a suffix starting with `.` (`.github.com` covers `github.com` and
    /// every name ending in `.github.com`).
    pub host: String,
    pub connections: Option<u32>,
    pub per_minute: Option<u32>,
}

/// A worker's standing for one limited host.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// Due + running fetches the worker reported.
    demand: u32,
    running: u32,
    started_last_minute: u32,
    /// The connection share decided for it (sent, or to be sent).
    grant: u32,
    /// The connection share last sent, and the `seq` of the message that changed it.
    sent: u32,
    sent_seq: u64,
    /// What the worker may be using now: the invariant sums these.
    bound: u32,
    per_minute: u32,
    /// Since when it has wanted some and had no share: when there are more workers with
    /// demand than connections, the longest waiting come first (nobody starves).
    waiting_since: Option<i64>,
}

#[derive(Debug)]
struct Worker {
    connected: bool,
    /// When the connection was lost; the share stays bound until `release_ms` after it.
    lost_at: Option<i64>,
    /// One slot per limit, in the order of `limits`.
    slots: Vec<Slot>,
    /// Something this worker has not been told yet.
    needs_send: bool,
    /// It was sent a `HostBudgets` once: from then on it hears every change, the end of
    /// the last limit or pause included. A fleet with neither sends none at all.
    told: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    pub until_ms: i64,
}

/// A new pause, for the coordinator's one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    pub host: String,
    pub until_ms: i64,
}

/// One host in `/api/status`'s `hosts` and the metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostView {
    pub host: String,
    /// The budget (`host_limits`), if the host is limited.
    pub connections: Option<u32>,
    pub per_minute: Option<u32>,
    /// Shares granted to workers, summed.
    pub granted_connections: u32,
    /// Fetches running on it, summed from the workers' reports.
    pub in_use_connections: u32,
    /// Fetches started on it in the last minute, summed from the workers' reports.
    pub in_use_per_minute: u32,
    /// Workers with a share or demand.
    pub workers: u32,
    /// Paused for the whole fleet until then (Unix ms).
    pub paused_until_ms: Option<i64>,
}

#[derive(Debug)]
pub struct Budgets {
    limits: Vec<HostLimit>,
    workers: HashMap<Uuid, Worker>,
    paused: BTreeMap<String, Pause>,
    seq: u64,
    /// How long a worker keeps its shares without the coordinator (sent to it).
    lease_ms: u64,
    /// How long after a worker's connection is lost its share is freed: longer than the
    /// lease (see design.md).
    release_ms: i64,
    /// After a restart, shares grow only from `hold_until` on: workers not yet back may
    /// still use the shares the previous process gave them, for at most a lease.
    hold_until: i64,
    dirty: bool,
}

impl Budgets {
    /// `restarted`: the coordinator ran before (workers may still hold shares it gave).
    pub fn new(limits: Vec<HostLimit>, release_ms: u64, now: i64, restarted: bool) -> Self {
        let lease_ms = release_ms / 2;
        Self {
            limits,
            workers: HashMap::new(),
            paused: BTreeMap::new(),
            seq: 0,
            lease_ms,
            release_ms: i64::try_from(release_ms).unwrap_or(i64::MAX),
            hold_until: if restarted {
                now.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX))
            } else {
                now
            },
            dirty: false,
        }
    }

    pub fn limits(&self) -> &[HostLimit] {
        &self.limits
    }

    /// Whether there is anything to tell workers at all.
    pub fn active(&self) -> bool {
        !self.limits.is_empty() || !self.paused.is_empty()
    }

    /// New `host_limits` (SIGHUP). Slots of a host that stays keep their bounds, so a
    /// smaller budget takes effect as workers acknowledge, never by forgetting what they
    /// hold; a new host starts with no shares.
    pub fn set_limits(&mut self, limits: Vec<HostLimit>) {
        if limits == self.limits {
            return;
        }
        for w in self.workers.values_mut() {
            let mut slots = Vec::with_capacity(limits.len());
            for l in &limits {
                let old = self.limits.iter().position(|o| o.host == l.host);
                slots.push(old.map(|i| w.slots[i].clone()).unwrap_or_default());
            }
            w.slots = slots;
            w.needs_send = true;
        }
        self.limits = limits;
        self.dirty = true;
    }

    /// A worker (re)connected. Returns false for a worker of protocol < 6, which gets no
    /// budgets and so is not limited by them.
    pub fn connected(&mut self, uuid: Uuid, protocol: u32) -> bool {
        if protocol < 6 {
            return false;
        }
        let n = self.limits.len();
        let w = self.workers.entry(uuid).or_insert_with(|| Worker {
            connected: true,
            lost_at: None,
            slots: vec![Slot::default(); n],
            needs_send: true,
            told: false,
        });
        w.connected = true;
        w.lost_at = None;
        w.needs_send = true;
        self.dirty = true;
        true
    }

    /// The worker's connection is gone: it gets no new share, and what it holds stays
    /// bound until `release_ms` later (it may go on fetching meanwhile, SPEC §6).
    pub fn lost(&mut self, uuid: Uuid, now: i64) {
        if let Some(w) = self.workers.get_mut(&uuid) {
            w.connected = false;
            w.lost_at = Some(now);
            for s in &mut w.slots {
                s.demand = 0;
            }
            self.dirty = true;
        }
    }

    /// A `HostDemand` report. Hosts the coordinator did not name are ignored.
    pub fn demand(&mut self, uuid: Uuid, d: &HostDemand) {
        let Some(w) = self.workers.get_mut(&uuid) else {
            return;
        };
        if !d.hosts.is_empty() && !w.told {
            // It holds budgets this process never sent (a restart, or its entry released
            // while it was away): it must hear the current ones, "none" included, or it
            // keeps the old ones (or the zero shares of an expired lease) for good.
            w.told = true;
            w.needs_send = true;
        }
        for load in &d.hosts {
            let Some(i) = self.limits.iter().position(|l| l.host == load.host) else {
                continue;
            };
            let s = &mut w.slots[i];
            s.demand = load.due.saturating_add(load.running);
            s.running = load.running;
            s.started_last_minute = load.started_last_minute;
            if s.sent_seq > 0 && d.seen >= s.sent_seq {
                // It applies `sent` (or a larger grant not sent yet: counted already).
                s.bound = s.sent.max(s.grant).max(load.running);
            } else {
                // Not yet: whatever it says it holds (a restarted coordinator learns the
                // previous one's shares so) stays bound, as does what we gave.
                s.bound = s
                    .bound
                    .max(load.running)
                    .max(load.share.unwrap_or(0))
                    .max(s.grant);
            }
        }
        self.dirty = true;
    }

    /// A rate-limit answer reported by a worker: pause `host` for the fleet, at most
    /// [`MAX_PAUSE_MS`] from now; a later, shorter answer never shortens it. Returns the
    /// pause when it is new (for one log line), `None` when it extends one or is refused.
    pub fn rate_limited(&mut self, host: &str, retry_after_ms: u64, now: i64) -> Option<Paused> {
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty()
            || host.len() > MAX_HOST_LEN
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        {
            return None;
        }
        let wait = i64::try_from(retry_after_ms.min(MAX_PAUSE_MS)).unwrap_or(0);
        if wait == 0 {
            // A reset time already past: nothing to pause.
            return None;
        }
        let until = now.saturating_add(wait);
        self.expire(now);
        if let Some(p) = self.paused.get_mut(&host) {
            // Every worker throttled at once reports, each a few ms later than the last:
            // only an extension of a second or more is news worth telling the fleet.
            if until >= p.until_ms.saturating_add(EXTEND_MIN_MS) {
                p.until_ms = until;
                self.mark_all();
            }
            return None;
        }
        if self.paused.len() >= MAX_PAUSED_HOSTS {
            return None;
        }
        self.paused.insert(host.clone(), Pause { until_ms: until });
        self.mark_all();
        Some(Paused {
            host,
            until_ms: until,
        })
    }

    fn mark_all(&mut self) {
        for w in self.workers.values_mut() {
            w.needs_send = true;
        }
    }

    fn expire(&mut self, now: i64) {
        self.paused.retain(|_, p| p.until_ms > now);
    }

    /// Periodic work: free the shares of workers lost longer than `release_ms`, rebalance
    /// when something changed, and return the messages to send.
    pub fn tick(&mut self, now: i64) -> Vec<(Uuid, HostBudgets)> {
        let before = self.workers.len();
        let release = self.release_ms;
        self.workers
            .retain(|_, w| w.lost_at.is_none_or(|t| now.saturating_sub(t) < release));
        if self.workers.len() != before {
            self.dirty = true;
        }
        self.expire(now);
        if self.dirty {
            self.dirty = false;
            for i in 0..self.limits.len() {
                self.rebalance(i, now);
            }
        }
        self.take_sends(now)
    }

    /// Messages for every connected worker with news (pauses are pushed at once by the
    /// caller after a report).
    pub fn take_sends(&mut self, now: i64) -> Vec<(Uuid, HostBudgets)> {
        let mut out = Vec::new();
        let active = self.active();
        let mut uuids: Vec<Uuid> = self
            .workers
            .iter()
            .filter(|(_, w)| w.connected && w.needs_send && (active || w.told))
            .map(|(u, _)| *u)
            .collect();
        uuids.sort();
        for uuid in uuids {
            self.seq += 1;
            let seq = self.seq;
            let msg = self.message(uuid, seq, now);
            if let Some(w) = self.workers.get_mut(&uuid) {
                w.needs_send = false;
                w.told = true;
                for s in &mut w.slots {
                    if s.grant != s.sent || s.sent_seq == 0 {
                        s.sent = s.grant;
                        s.sent_seq = seq;
                    }
                }
            }
            out.push((uuid, msg));
        }
        out
    }

    fn message(&self, uuid: Uuid, seq: u64, now: i64) -> HostBudgets {
        let slots = self.workers.get(&uuid).map(|w| &w.slots[..]).unwrap_or(&[]);
        let limits = self
            .limits
            .iter()
            .zip(slots)
            .map(|(l, s)| HostShare {
                host: l.host.clone(),
                connections: l.connections.map(|_| s.grant),
                per_minute: l.per_minute.map(|_| s.per_minute),
            })
            .collect();
        let paused = self
            .paused
            .iter()
            .filter(|(_, p)| p.until_ms > now)
            .map(|(h, p)| HostPause {
                host: h.clone(),
                remaining_ms: u64::try_from(p.until_ms - now).unwrap_or(0),
            })
            .collect();
        HostBudgets {
            seq,
            lease_ms: self.lease_ms,
            limits,
            paused,
        }
    }

    /// Split limit `i` among the workers by demand, within what nobody is bound to.
    fn rebalance(&mut self, i: usize, now: i64) {
        let limit = self.limits[i].clone();
        // Demanders in order: those waiting for a share longest first (when there are
        // more of them than connections, the shares rotate), then most demand, then uuid.
        for w in self.workers.values_mut() {
            let s = &mut w.slots[i];
            if s.demand == 0 || s.grant > 0 {
                s.waiting_since = None;
            } else if s.waiting_since.is_none() {
                s.waiting_since = Some(now);
            }
        }
        let mut order: Vec<(Uuid, u32, i64)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.connected && w.slots[i].demand > 0)
            .map(|(u, w)| {
                let s = &w.slots[i];
                (*u, s.demand, s.waiting_since.unwrap_or(i64::MAX))
            })
            .collect();
        order.sort_by(|a, b| a.2.cmp(&b.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
        let order: Vec<(Uuid, u32)> = order.into_iter().map(|(u, d, _)| (u, d)).collect();
        let demands: Vec<u32> = order.iter().map(|(_, d)| *d).collect();

        if let Some(rate) = limit.per_minute {
            // A worker whose connection is lost goes on at its rate until its lease ends:
            // its share stays reserved until it is released. A rate, unlike connections,
            // is not capped by demand: what is not reserved goes to those who want any.
            let reserved: u32 = self
                .workers
                .values()
                .filter(|w| !w.connected)
                .map(|w| w.slots[i].per_minute)
                .fold(0, u32::saturating_add);
            let shares: HashMap<Uuid, u32> = order
                .iter()
                .map(|(u, _)| *u)
                .zip(split_rate(rate.saturating_sub(reserved), &demands))
                .collect();
            for (u, w) in &mut self.workers {
                if !w.connected {
                    continue;
                }
                let share = shares.get(u).copied().unwrap_or(0);
                if w.slots[i].per_minute != share {
                    w.slots[i].per_minute = share;
                    if w.connected {
                        w.needs_send = true;
                    }
                }
            }
        }

        let Some(budget) = limit.connections else {
            return;
        };
        let targets: HashMap<Uuid, u32> = order
            .iter()
            .map(|(u, _)| *u)
            .zip(split(budget, &demands))
            .collect();
        // Shrinks first: they free nothing now (the old share stays bound until the
        // worker acknowledges), but they must not wait for the growth below.
        for (u, w) in &mut self.workers {
            let target = targets.get(u).copied().unwrap_or(0);
            let s = &mut w.slots[i];
            if target < s.grant {
                s.grant = target;
                if w.connected {
                    w.needs_send = true;
                }
            }
        }
        let bound: u64 = self
            .workers
            .values()
            .map(|w| u64::from(w.slots[i].bound))
            .sum();
        let mut free = if now < self.hold_until {
            0
        } else {
            u64::from(budget).saturating_sub(bound)
        };
        for (u, _) in &order {
            let target = targets.get(u).copied().unwrap_or(0);
            let Some(w) = self.workers.get_mut(u) else {
                continue;
            };
            let s = &mut w.slots[i];
            if target <= s.grant {
                continue;
            }
            // Up to its own bound costs nothing; beyond it, only what is free.
            let extra_wanted = u64::from(target.saturating_sub(s.bound));
            let extra = extra_wanted.min(free);
            free -= extra;
            let new_bound = s.bound + u32::try_from(extra).unwrap_or(0);
            let grant = target.min(new_bound);
            if grant > s.grant {
                s.grant = grant;
                s.bound = s.bound.max(grant);
                w.needs_send = true;
            }
        }
    }

    /// Sum of what workers may be using, per limited host (the invariant's left side).
    #[cfg(test)]
    pub fn bound_total(&self, host: &str) -> u32 {
        let Some(i) = self.limits.iter().position(|l| l.host == host) else {
            return 0;
        };
        self.workers.values().map(|w| w.slots[i].bound).sum()
    }

    /// Limited and paused hosts, for `/api/status`, the page and the metrics.
    /// O(workers × limited hosts + paused hosts).
    pub fn view(&self, now: i64) -> Vec<HostView> {
        let mut out: Vec<HostView> = self
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut v = HostView {
                    host: l.host.clone(),
                    connections: l.connections,
                    per_minute: l.per_minute,
                    granted_connections: 0,
                    in_use_connections: 0,
                    in_use_per_minute: 0,
                    workers: 0,
                    paused_until_ms: self
                        .paused
                        .get(&l.host)
                        .map(|p| p.until_ms)
                        .filter(|&t| t > now),
                };
                for w in self.workers.values() {
                    let s = &w.slots[i];
                    v.granted_connections += s.grant;
                    v.in_use_connections += s.running;
                    v.in_use_per_minute += s.started_last_minute;
                    if s.grant > 0 || s.demand > 0 {
                        v.workers += 1;
                    }
                }
                v
            })
            .collect();
        for (h, p) in &self.paused {
            if p.until_ms <= now {
                continue;
            }
            if !out.iter().any(|v| &v.host == h) {
                out.push(HostView {
                    host: h.clone(),
                    connections: None,
                    per_minute: None,
                    granted_connections: 0,
                    in_use_connections: 0,
                    in_use_per_minute: 0,
                    workers: 0,
                    paused_until_ms: Some(p.until_ms),
                });
            }
        }
        out
    }
}

/// Split a rate over workers with `demands` (in the order of preference): as [`split`],
/// then what demand left over is spread over them all (a rate nobody uses holds nothing,
/// and a share capped by the fetches due now would starve a worker between reports).
fn split_rate(rate: u32, demands: &[u32]) -> Vec<u32> {
    let mut t = split(rate, demands);
    let n = u32::try_from(t.len()).unwrap_or(u32::MAX);
    if n == 0 {
        return t;
    }
    let left = rate.saturating_sub(t.iter().fold(0u32, |a, x| a.saturating_add(*x)));
    for (k, x) in t.iter_mut().enumerate() {
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        *x += left / n + u32::from(k < left % n);
    }
    t
}

/// Split `budget` over workers with `demands` (in the order of preference): each gets at least 1
/// while the budget lasts, then the rest in proportion to demand, never more than its
/// demand. Integers; the sum never exceeds `budget`.
fn split(budget: u32, demands: &[u32]) -> Vec<u32> {
    let mut t = vec![0u32; demands.len()];
    let mut left = budget;
    for x in &mut t {
        if left == 0 {
            break;
        }
        *x = 1;
        left -= 1;
    }
    while left > 0 {
        let want: u64 = demands
            .iter()
            .zip(&t)
            .map(|(d, x)| u64::from(d.saturating_sub(*x)))
            .sum();
        if want == 0 {
            break;
        }
        let mut given = 0u32;
        for (d, x) in demands.iter().zip(t.iter_mut()) {
            let gap = u64::from(d.saturating_sub(*x));
            let extra = u32::try_from(gap.min(gap * u64::from(left) / want)).unwrap_or(0);
            *x += extra;
            given += extra;
        }
        if given == 0 {
            // Less left than the proportions round to: one each, most demand first.
            for (d, x) in demands.iter().zip(t.iter_mut()) {
                if left == 0 {
                    break;
                }
                if *x < *d {
                    *x += 1;
                    left -= 1;
                }
            }
        } else {
            left -= given;
        }
    }
    t
}

#[cfg(test)]
mod tests;
