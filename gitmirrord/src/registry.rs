//! The worker registry: who the workers are, their ids and liveness (SPEC §5, §6).
//!
//! A worker is known by the uuid it persists. The registry gives it an id in
//! `0..max_workers` that survives restarts of both sides, and tracks its state
//! `alive → suspect → dead`. Everything here is plain data driven by the caller's clock;
//! [`crate::fleet`] decides what a state change means for assignments.

use crate::enrollment::Standing;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// State file kind and version of `registry.json`.
pub const KIND: &str = "registry";
/// 2: per-worker certificates (`cert`, `removed`, `approved`); a v1 file is migrated at
/// the first start ([`crate::state::load_registry`]) and kept as `registry.json.v1.bak`.
/// 3: drained workers (`drained`) and blocked repos (`blocked`, issue 16); a v2 file is
/// read as v3 with none of either and kept as `registry.json.v2.bak`. An older release
/// refuses a v3 file rather than forgetting a takedown.
/// 4: the placement in force (`placement`, SPEC §14); a v3 file is read as `repo` (the
/// owners it was written with) and kept as `registry.json.v3.bak`.
pub const VERSION: u32 = 4;

/// After a restart, assignment sequence numbers resume this far above the saved value, so
/// that a crash between sending deltas and saving the registry never repeats a `seq`.
pub const SEQ_RESTART_GAP: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Alive,
    Suspect,
    Dead,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
        }
    }

    /// Alive and suspect workers take a share of repos.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Dead)
    }
}

/// One worker as the coordinator remembers it (persisted in `registry.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub uuid: Uuid,
    pub id: u32,
    pub name: String,
    pub weight: f64,
    pub state: WorkerState,
    /// When `state` last changed (Unix ms).
    pub state_since_ms: i64,
    /// Peer address of the current or last connection.
    pub addr: Option<String>,
    /// Last time the worker was heard from (Unix ms).
    pub last_seen_ms: i64,
    pub software: String,
    pub serve_url_base: Option<String>,
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub disk_low: bool,
    /// The worker's own one-line summary.
    pub status: String,
    /// `seq` of the next assignment delta to this worker.
    pub next_seq: u64,
    /// Highest `seq` the worker acknowledged.
    pub acked_seq: u64,
    /// Highest outcome `report_id` durably recorded; lower or equal ones are duplicates.
    pub last_report_id: u64,
    /// Protocol version of the current or last connection (not saved: set on connect).
    #[serde(skip)]
    pub protocol: u32,
    /// Fingerprint of the certificate enrolled for this uuid (SPEC §17): only it speaks
    /// for the worker. `None`: registered before certificates, or by an older worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// `cert` was sent but the worker has not shown yet that it kept it (its first
    /// `Holdings` after `Enrolled`, or a connection presenting it): until then the token
    /// may enroll the uuid again, so a worker that never got its certificate (the
    /// coordinator died while sending it) is not locked out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cert_pending: bool,
    /// Fetches and clones running, from its last `Status` (not saved).
    #[serde(skip)]
    pub active_fetches: Option<u32>,
    /// Its last `Load` (protocol 5; not saved, cleared on connect).
    #[serde(skip)]
    pub load: Option<gitmirror_wire::WorkerLoad>,
    /// When an outcome of it was last applied (Unix ms; not saved).
    #[serde(skip)]
    pub last_outcome_ms: Option<i64>,
    /// Drained by an operator (SPEC §5 planned move): connected, but out of the ring
    /// (weight 0 for assignment) until undrained. Survives restarts of both sides.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

/// A repo an operator blocked (a takedown, issue 16): its mirrors are dropped fleet-wide
/// and the index cannot bring it back until it is unblocked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub reason: String,
    /// When it was blocked (Unix ms).
    pub at_ms: i64,
    /// Who asked: the API caller as the coordinator saw it.
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "all {max} worker ids are held by live workers; raise max_workers or remove a worker (a dead worker's id is reused)"
)]
pub struct NoFreeId {
    pub max: u32,
}

/// What [`Registry::admit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub id: u32,
    /// The state before this connection; `None` for a worker never seen (or forgotten).
    pub previous: Option<WorkerState>,
    /// A new uuid → id binding was made (persist it at once).
    pub new_id: bool,
    /// The weight differs from the one the worker had before.
    pub weight_changed: bool,
    /// The uuid of a long-dead worker whose id was taken over.
    pub evicted: Option<Uuid>,
}

/// The saved form.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryFile {
    pub workers: Vec<WorkerRecord>,
    /// Uuids an operator removed (`gitmirrord workers remove`): nothing speaks for them
    /// until they are approved again.
    #[serde(default)]
    pub removed: Vec<Uuid>,
    /// Uuids an operator approved (`gitmirrord workers approve`) that have not enrolled
    /// since: the join token may enroll them once.
    #[serde(default)]
    pub approved: Vec<Uuid>,
    /// Blocked repos by id (v3).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked: BTreeMap<String, Blocked>,
    /// The placement the saved owners were computed under (v4; `None`: a fresh state
    /// directory, nothing placed yet). Only a `placement` set in the configuration
    /// changes it ([`crate::state::resolve_placement`]).
    #[serde(default)]
    pub placement: Option<crate::ring::Placement>,
    /// The owner function the saved owners were computed with (`None`: a state directory
    /// of an earlier release, or a fresh one; [`crate::state::resolve_hashing`] tells them
    /// apart by `placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing: Option<crate::ring::Hashing>,
}

#[derive(Debug, Clone)]
pub struct Registry {
    max_workers: u32,
    /// A worker's weight is what it announces, up to this (SPEC §17).
    max_weight: f64,
    workers: BTreeMap<Uuid, WorkerRecord>,
    removed: BTreeSet<Uuid>,
    approved: BTreeSet<Uuid>,
    blocked: BTreeMap<String, Blocked>,
    placement: Option<crate::ring::Placement>,
    hashing: Option<crate::ring::Hashing>,
}

/// What a worker says about itself when it connects.
#[derive(Debug, Clone)]
pub struct Introduction<'a> {
    pub uuid: Uuid,
    pub previous_id: Option<u32>,
    pub name: &'a str,
    pub weight: f64,
    pub software: &'a str,
    /// The protocol version of its `Hello`.
    pub protocol: u32,
    pub serve_url_base: Option<&'a str>,
    pub addr: Option<String>,
}

impl Registry {
    pub fn new(max_workers: u32) -> Self {
        Self {
            max_workers,
            max_weight: crate::config::DEFAULT_MAX_WORKER_WEIGHT,
            workers: BTreeMap::new(),
            removed: BTreeSet::new(),
            approved: BTreeSet::new(),
            blocked: BTreeMap::new(),
            placement: None,
            hashing: None,
        }
    }

    /// Restore a saved registry after a coordinator restart: workers that were alive are
    /// now suspect (their connection is gone) and get `dead_after` to come back before
    /// anything moves; `state_since` restarts now for them.
    pub fn restore(max_workers: u32, file: RegistryFile, now_ms: i64) -> Self {
        let mut workers = BTreeMap::new();
        for mut w in file.workers {
            if w.state == WorkerState::Alive {
                w.state = WorkerState::Suspect;
                w.state_since_ms = now_ms;
            }
            if w.state == WorkerState::Suspect {
                w.state_since_ms = w.state_since_ms.max(now_ms);
            }
            w.next_seq = w.next_seq.saturating_add(SEQ_RESTART_GAP);
            workers.insert(w.uuid, w);
        }
        Self {
            max_workers,
            max_weight: crate::config::DEFAULT_MAX_WORKER_WEIGHT,
            workers,
            removed: file.removed.into_iter().collect(),
            approved: file.approved.into_iter().collect(),
            blocked: file.blocked,
            placement: file.placement,
            hashing: file.hashing,
        }
    }

    /// The placement in force (`repo` until one is set: the owners of earlier releases).
    pub fn placement(&self) -> crate::ring::Placement {
        self.placement.unwrap_or(crate::ring::Placement::Repo)
    }

    /// Set the placement in force (at start, before the fleet is built).
    pub fn with_placement(mut self, placement: crate::ring::Placement) -> Self {
        self.placement = Some(placement);
        self
    }

    /// The owner function in force (rendezvous until one is set: earlier releases').
    pub fn hashing(&self) -> crate::ring::Hashing {
        self.hashing.unwrap_or(crate::ring::Hashing::Rendezvous)
    }

    /// Set the owner function in force (at start, before the fleet is built).
    pub fn with_hashing(mut self, hashing: crate::ring::Hashing) -> Self {
        self.hashing = Some(hashing);
        self
    }

    /// Clamp announced weights at `max` (saved ones too: a registry written before the
    /// clamp may hold a larger one).
    pub fn with_max_weight(mut self, max: f64) -> Self {
        self.max_weight = max;
        for w in self.workers.values_mut() {
            w.weight = w.weight.min(max);
        }
        self
    }

    /// The weight a worker announcing `announced` gets.
    pub fn weight_for(&self, announced: f64) -> f64 {
        announced.min(self.max_weight)
    }

    pub fn to_file(&self) -> RegistryFile {
        RegistryFile {
            workers: self.workers.values().cloned().collect(),
            removed: self.removed.iter().copied().collect(),
            approved: self.approved.iter().copied().collect(),
            blocked: self.blocked.clone(),
            placement: self.placement,
            hashing: self.hashing,
        }
    }

    /// What the registry knows about `uuid`, for [`crate::enrollment::decide`].
    pub fn standing(&self, uuid: &Uuid) -> Standing<'_> {
        if self.removed.contains(uuid) {
            return Standing::Removed;
        }
        match self.workers.get(uuid) {
            None => Standing::Unknown,
            Some(w) => match &w.cert {
                Some(fp) if w.cert_pending => Standing::Enrolling(fp),
                Some(fp) => Standing::Enrolled(fp),
                None => Standing::Legacy,
            },
        }
    }

    pub fn is_approved(&self, uuid: &Uuid) -> bool {
        self.approved.contains(uuid)
    }

    /// `workers approve`: the join token may enroll `uuid` once (a new worker under
    /// `enroll: manual`, a removed one, or one that lost its certificate).
    pub fn approve(&mut self, uuid: Uuid) {
        self.removed.remove(&uuid);
        self.approved.insert(uuid);
    }

    /// `uuid` enrolled with the certificate of fingerprint `fp`: from now on only it
    /// speaks for the worker. Call after [`Registry::admit`].
    pub fn enrolled(&mut self, uuid: &Uuid, fp: String) {
        self.approved.remove(uuid);
        if let Some(w) = self.workers.get_mut(uuid) {
            w.cert = Some(fp);
            w.cert_pending = true;
        }
    }

    /// The worker showed it kept its certificate: from now on only it speaks for the
    /// uuid, and an approval it did not need is spent (left standing, it would let any
    /// token holder enroll as this uuid later and lock the real worker out). `true` when
    /// that changed something.
    pub fn cert_confirmed(&mut self, uuid: &Uuid) -> bool {
        let spent = self.approved.remove(uuid);
        match self.workers.get_mut(uuid) {
            Some(w) if w.cert_pending => {
                w.cert_pending = false;
                true
            }
            _ => spent,
        }
    }

    /// `workers remove`: forget the certificate (revoking it) and keep the uuid out until
    /// it is approved again. The caller moves its repos (it is marked dead).
    pub fn remove(&mut self, uuid: Uuid, now_ms: i64) -> bool {
        self.approved.remove(&uuid);
        let known = match self.workers.get_mut(&uuid) {
            Some(w) => {
                w.cert = None;
                w.cert_pending = false;
                if w.state != WorkerState::Dead {
                    w.state = WorkerState::Dead;
                    w.state_since_ms = now_ms;
                }
                true
            }
            None => false,
        };
        self.removed.insert(uuid) || known
    }

    pub fn is_removed(&self, uuid: &Uuid) -> bool {
        self.removed.contains(uuid)
    }

    pub fn get(&self, uuid: &Uuid) -> Option<&WorkerRecord> {
        self.workers.get(uuid)
    }

    pub fn get_mut(&mut self, uuid: &Uuid) -> Option<&mut WorkerRecord> {
        self.workers.get_mut(uuid)
    }

    pub fn by_id(&self, id: u32) -> Option<&WorkerRecord> {
        self.workers.values().find(|w| w.id == id)
    }

    /// All workers, in uuid order.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    /// Mark a worker drained or not; returns whether that changed anything (`None`: no
    /// such worker).
    pub fn set_drained(&mut self, uuid: &Uuid, drained: bool) -> Option<bool> {
        let w = self.workers.get_mut(uuid)?;
        Some(std::mem::replace(&mut w.drained, drained) != drained)
    }

    /// Live workers that take a share of repos: alive or suspect, not drained.
    pub fn members(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.live().filter(|w| !w.drained)
    }

    pub fn blocked(&self, id: &str) -> Option<&Blocked> {
        self.blocked.get(id)
    }

    pub fn blocked_all(&self) -> &BTreeMap<String, Blocked> {
        &self.blocked
    }

    /// Record a block; returns false when the repo was already blocked (the first
    /// reason and time are kept).
    pub fn block(&mut self, id: &str, b: Blocked) -> bool {
        if self.blocked.contains_key(id) {
            return false;
        }
        self.blocked.insert(id.to_owned(), b);
        true
    }

    pub fn unblock(&mut self, id: &str) -> Option<Blocked> {
        self.blocked.remove(id)
    }

    /// Alive and suspect workers, in uuid order.
    pub fn live(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values().filter(|w| w.state.is_live())
    }

    /// A worker connected and passed the handshake: give it its id and mark it alive.
    pub fn admit(&mut self, intro: &Introduction<'_>, now_ms: i64) -> Result<Admitted, NoFreeId> {
        if let Some(w) = self.workers.get_mut(&intro.uuid)
            && w.id < self.max_workers
        {
            let previous = Some(w.state);
            let weight = intro.weight.min(self.max_weight);
            let weight_changed = w.weight != weight;
            Self::refresh(w, intro, weight, now_ms);
            return Ok(Admitted {
                id: w.id,
                previous,
                new_id: false,
                weight_changed,
                evicted: None,
            });
        }
        // A known uuid whose id no longer fits (max_workers was lowered) is re-admitted.
        self.workers.remove(&intro.uuid);
        let taken: std::collections::BTreeSet<u32> = self.workers.values().map(|w| w.id).collect();
        let free = |id: u32| id < self.max_workers && !taken.contains(&id);
        let mut evicted = None;
        let id = if let Some(p) = intro.previous_id.filter(|&p| free(p)) {
            p
        } else if let Some(id) = (0..self.max_workers).find(|&i| free(i)) {
            id
        } else {
            // Reuse the id of the worker that has been dead the longest.
            let oldest = self
                .workers
                .values()
                .filter(|w| w.state == WorkerState::Dead && w.id < self.max_workers)
                .min_by_key(|w| (w.state_since_ms, w.id))
                .map(|w| (w.uuid, w.id));
            let Some((old, id)) = oldest else {
                return Err(NoFreeId {
                    max: self.max_workers,
                });
            };
            self.workers.remove(&old);
            evicted = Some(old);
            id
        };
        let mut w = WorkerRecord {
            uuid: intro.uuid,
            id,
            name: String::new(),
            weight: self.weight_for(intro.weight),
            state: WorkerState::Alive,
            state_since_ms: now_ms,
            addr: None,
            last_seen_ms: now_ms,
            software: String::new(),
            protocol: 0,
            serve_url_base: None,
            disk_free_bytes: None,
            disk_total_bytes: None,
            disk_low: false,
            status: String::new(),
            next_seq: 1,
            acked_seq: 0,
            last_report_id: 0,
            cert: None,
            cert_pending: false,
            active_fetches: None,
            load: None,
            last_outcome_ms: None,
            drained: false,
        };
        let weight = w.weight;
        Self::refresh(&mut w, intro, weight, now_ms);
        self.workers.insert(intro.uuid, w);
        Ok(Admitted {
            id,
            previous: None,
            new_id: true,
            weight_changed: false,
            evicted,
        })
    }

    fn refresh(w: &mut WorkerRecord, intro: &Introduction<'_>, weight: f64, now_ms: i64) {
        if w.state != WorkerState::Alive {
            w.state = WorkerState::Alive;
            w.state_since_ms = now_ms;
        }
        w.name = bounded(intro.name, 200);
        w.weight = weight;
        w.software = bounded(intro.software, 200);
        w.protocol = intro.protocol;
        w.load = None;
        w.serve_url_base = intro.serve_url_base.map(|s| bounded(s, 1000));
        w.addr = intro.addr.clone();
        w.last_seen_ms = now_ms;
    }

    /// The connection is gone: alive → suspect.
    pub fn lost(&mut self, uuid: &Uuid, now_ms: i64) -> bool {
        match self.workers.get_mut(uuid) {
            Some(w) if w.state == WorkerState::Alive => {
                w.state = WorkerState::Suspect;
                w.state_since_ms = now_ms;
                w.last_seen_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Suspects whose `dead_after` has run out by `now_ms`.
    /// Restart the clock of every suspect worker at `now_ms`. Called when the coordinator
    /// starts serving: loading a large state can take longer than `dead_after`, and a
    /// worker must get `dead_after` from the moment it can reconnect, not from when the
    /// registry file was read (SPEC §6, §10).
    pub fn grace_suspects(&mut self, now_ms: i64) {
        for w in self.workers.values_mut() {
            if w.state == WorkerState::Suspect {
                w.state_since_ms = w.state_since_ms.max(now_ms);
            }
        }
    }

    pub fn overdue(&self, now_ms: i64, dead_after_ms: i64) -> Vec<Uuid> {
        self.workers
            .values()
            .filter(|w| {
                w.state == WorkerState::Suspect
                    && now_ms.saturating_sub(w.state_since_ms) >= dead_after_ms
            })
            .map(|w| w.uuid)
            .collect()
    }

    pub fn mark_dead(&mut self, uuid: &Uuid, now_ms: i64) {
        if let Some(w) = self.workers.get_mut(uuid) {
            w.state = WorkerState::Dead;
            w.state_since_ms = now_ms;
        }
    }

    /// Take the next assignment `seq` for this worker.
    pub fn take_seq(&mut self, uuid: &Uuid) -> u64 {
        match self.workers.get_mut(uuid) {
            Some(w) => {
                let s = w.next_seq;
                w.next_seq = w.next_seq.saturating_add(1);
                s
            }
            None => 0,
        }
    }
}

/// Cut a peer-supplied string to at most `max` bytes on a character boundary.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intro(n: u128, previous_id: Option<u32>) -> Introduction<'static> {
        Introduction {
            uuid: Uuid::from_u128(n),
            previous_id,
            name: "w",
            weight: 1.0,
            software: "t",
            protocol: gitmirror_wire::PROTOCOL_VERSION,
            serve_url_base: None,
            addr: None,
        }
    }

    // SPEC §17: an approval the worker did not need (it came back with its certificate)
    // does not stay open for a token holder to enroll as its uuid afterwards.
    #[test]
    fn spec_17_an_unused_approval_is_spent_when_the_certificate_is_shown() {
        let mut r = Registry::new(3);
        let u = Uuid::from_u128(1);
        r.admit(&intro(1, None), 0).unwrap();
        r.enrolled(&u, "fp".into());
        assert!(r.cert_confirmed(&u));
        r.approve(u);
        assert!(r.is_approved(&u));
        assert!(
            r.cert_confirmed(&u),
            "the spent approval is a change to save"
        );
        assert!(!r.is_approved(&u));
        assert!(!r.cert_confirmed(&u));
    }

    // SPEC §6: ids survive, lowest free id, longest-dead reuse, NoFreeId.
    #[test]
    fn ids_lowest_free_then_longest_dead_then_refused() {
        let mut r = Registry::new(3);
        assert_eq!(r.admit(&intro(1, None), 0).unwrap().id, 0);
        assert_eq!(r.admit(&intro(2, None), 0).unwrap().id, 1);
        assert_eq!(r.admit(&intro(3, None), 0).unwrap().id, 2);
        let e = r.admit(&intro(4, None), 0).unwrap_err();
        assert!(e.to_string().contains("all 3 worker ids"), "{e}");
        // Known uuid keeps its id.
        let a = r.admit(&intro(2, None), 5).unwrap();
        assert_eq!(
            (a.id, a.new_id, a.previous),
            (1, false, Some(WorkerState::Alive))
        );
        // Two die; the one dead longest gives up its id.
        r.lost(&Uuid::from_u128(3), 10);
        r.mark_dead(&Uuid::from_u128(3), 20);
        r.lost(&Uuid::from_u128(1), 30);
        r.mark_dead(&Uuid::from_u128(1), 40);
        let a = r.admit(&intro(4, None), 50).unwrap();
        assert_eq!((a.id, a.evicted), (2, Some(Uuid::from_u128(3))));
        assert!(r.get(&Uuid::from_u128(3)).is_none());
    }

    #[test]
    fn previous_id_is_reclaimed_when_free() {
        let mut r = Registry::new(10);
        assert_eq!(r.admit(&intro(1, Some(7)), 0).unwrap().id, 7);
        assert_eq!(r.admit(&intro(2, Some(7)), 0).unwrap().id, 0);
        assert_eq!(r.admit(&intro(3, Some(70)), 0).unwrap().id, 1);
    }

    #[test]
    fn restore_makes_alive_workers_suspect_and_skips_seq() {
        let mut r = Registry::new(3);
        r.admit(&intro(1, None), 0).unwrap();
        r.take_seq(&Uuid::from_u128(1));
        let r2 = Registry::restore(3, r.to_file(), 100);
        let w = r2.get(&Uuid::from_u128(1)).unwrap();
        assert_eq!(w.state, WorkerState::Suspect);
        assert_eq!(w.state_since_ms, 100);
        assert_eq!(w.next_seq, 2 + SEQ_RESTART_GAP);
    }

    /// SPEC §6, §10: a worker restored as suspect gets its whole `dead_after` from the
    /// moment the coordinator serves, however long loading the state took (at 1M repos the
    /// simulator saw every worker declared dead 30 ms after a restart without this).
    #[test]
    fn restored_suspects_get_dead_after_from_serving() {
        let mut r = Registry::new(3);
        r.admit(&intro(1, None), 0).unwrap();
        let mut r2 = Registry::restore(3, r.to_file(), 100);
        // Loading took 20 s, longer than a dead_after of 4 s.
        assert_eq!(r2.overdue(20_100, 4_000).len(), 1);
        r2.grace_suspects(20_100);
        assert!(r2.overdue(20_100 + 3_999, 4_000).is_empty());
        assert_eq!(r2.overdue(20_100 + 4_000, 4_000).len(), 1);
    }

    #[test]
    fn bounded_cuts_on_char_boundary() {
        assert_eq!(bounded("héllo", 2), "h");
        assert_eq!(bounded("abc", 5), "abc");
    }
}
