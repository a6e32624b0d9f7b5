//! The assignment state machine (SPEC §5, §6; design.md "Assignment and hand-off").
//!
//! Pure: inputs are index deltas, workers connecting (and reporting their holdings),
//! disconnecting, outcome batches and the time; outputs are the [`AssignDelta`]s to send.
//! No sockets, no clock of its own, so it is tested on a virtual clock.
//!
//! Per repo the fleet keeps the owner (the ring's choice among live workers) and the
//! *holders*: workers that hold or have been told to hold the repo, each with whether it
//! has a complete mirror. A worker's target set is the repos it owns plus those it holds
//! whose owner has no complete mirror yet (make before break). Holders are only recorded
//! for workers in sync (connected and past their `Holdings`); a worker that reconnects
//! reports what it holds and gets the difference.

use crate::census::{Census, Facts, FetchStats};
use crate::events::{EventDraft, EventKind, PublishedRefs, RefUpdate, Trigger, apply_published};
use crate::index::{Delta, Entry};
use crate::published;
use crate::registry::{
    Introduction, NoFreeId, Registry, RegistryFile, WorkerRecord, WorkerState, bounded,
};
use crate::replicas::ReplicaSet;
use crate::ring::{self, KeyBuf, Member, Placement};
use gitmirror_wire::{
    AssignDelta, DropOrder, DropReason, FailureClass, FetchResult, Holdings, Outcome, RepoSpec,
    WorkerStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

mod gate;
use gate::Gate;
pub use gate::PLANNED_PER_WORKER;

/// State file kind and version of `repos.json` (v1, migrated by [`crate::repo_store`]).
pub const REPOS_KIND: &str = "repos";
pub const REPOS_VERSION: u32 = 1;

/// Limits of one delta, far below the 16 MiB frame limit.
const DELTA_MAX_ITEMS: usize = 10_000;
const DELTA_MAX_BYTES: usize = 4 << 20;
/// Longest error message kept per repo.
const MAX_ERROR_LEN: usize = 2000;

/// A delta to send to one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub worker: Uuid,
    pub delta: AssignDelta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    Transient,
    RateLimited,
    Gone,
    Local,
    /// SPEC §16: a credential entry matched and the upstream refused it.
    Auth,
}

impl From<FailureClass> for ErrorClass {
    fn from(c: FailureClass) -> Self {
        match c {
            FailureClass::Transient => Self::Transient,
            FailureClass::RateLimited => Self::RateLimited,
            FailureClass::Gone => Self::Gone,
            FailureClass::Local => Self::Local,
            FailureClass::Auth => Self::Auth,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub class: ErrorClass,
    pub message: String,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LastResult {
    Ok,
    Failed(ErrorClass),
    Waiting(String),
}

/// What the owner last reported about a repo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoStatus {
    /// The worker the counters below belong to (the owner at the time).
    pub by: Option<Uuid>,
    pub last_fetch_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_change_ms: Option<i64>,
    pub next_due_ms: Option<i64>,
    /// Attempts by `by`.
    pub fetches: u64,
    /// Failed attempts by `by`.
    pub failures: u64,
    /// Boxed: most repos have none, and a repo record is 1M times in memory.
    pub last_error: Option<Box<LastError>>,
    pub refs: Option<u32>,
    pub last_result: Option<LastResult>,
    /// Digest of the refs published in events for this repo (`gitmirror_wire::refs`), kept
    /// across owners: a new owner's clone with the same digest is a hand-off, not news.
    /// `None` until the first clone is published.
    #[serde(default)]
    pub published: Option<u64>,
    /// The published values of the refs an outcome batch changes (`events::PublishedRefs`;
    /// absent: not published): a fetch's change of a ref to the value already published
    /// for it is not news, whatever other refs did since. Not saved with the status:
    /// the event log holds them and `run` loads them for one batch
    /// ([`Fleet::set_published_refs`]). `None` while unknown (no event for the repo yet, or
    /// not loaded); then the digest alone decides.
    #[serde(skip)]
    pub published_refs: Option<Box<PublishedRefs>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoState {
    Unassigned,
    Pending,
    Mirrored,
    Failing,
    Gone,
    Waiting,
}

impl RepoState {
    pub const ALL: [RepoState; 6] = [
        Self::Unassigned,
        Self::Pending,
        Self::Mirrored,
        Self::Failing,
        Self::Gone,
        Self::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unassigned => "unassigned",
            Self::Pending => "pending",
            Self::Mirrored => "mirrored",
            Self::Failing => "failing",
            Self::Gone => "gone",
            Self::Waiting => "waiting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Repo {
    /// Shared with the census (for `worker:url`).
    pub url: Arc<str>,
    /// Shared by every repo of the index.
    pub index: Arc<str>,
    /// The index entry's other keys as JSON text, shared between repos ([`Entry::metadata`]).
    pub metadata: Option<Arc<str>>,
    pub owner: Option<Uuid>,
    /// The owner's winning score (`ring::Ring::owner_scored`), so that a joining worker
    /// scores only itself against it; `+inf` while unknown (the next full scan sets it).
    pub owner_score: f64,
    /// Workers holding (or told to hold) the repo → whether they have a complete mirror.
    pub holders: Holders,
    pub status: RepoStatus,
    /// The placement of a repo with more than one replica (SPEC §13); `None` for R = 1
    /// (a repo pays one pointer for it). Then `owner` is the *primary*: the first member
    /// of the placement holding a verified copy ([`reconcile`]).
    pub replica: Option<Box<ReplicaSet>>,
}

impl Repo {
    pub fn state(&self) -> RepoState {
        let Some(owner) = self.owner else {
            return RepoState::Unassigned;
        };
        if self.status.by == Some(owner) {
            match &self.status.last_result {
                Some(LastResult::Ok) => return RepoState::Mirrored,
                Some(LastResult::Failed(ErrorClass::Gone)) => return RepoState::Gone,
                Some(LastResult::Failed(_)) => return RepoState::Failing,
                Some(LastResult::Waiting(_)) => return RepoState::Waiting,
                None => {}
            }
        }
        if self.holders.mirrored(&owner) == Some(true) {
            RepoState::Mirrored
        } else {
            RepoState::Pending
        }
    }

    /// What the census counts of this repo.
    pub fn facts(&self) -> Facts {
        let state = self.state();
        Facts {
            state,
            owner: self.owner,
            url: self.url.clone(),
            last_success_ms: self.status.last_success_ms,
            failed_ms: match state {
                RepoState::Failing | RepoState::Gone => {
                    Some(self.status.last_error.as_ref().map_or(0, |e| e.time_ms))
                }
                _ => None,
            },
            holders: self.holders.keys().copied().collect(),
            failed_class: match state {
                RepoState::Failing | RepoState::Gone => {
                    self.status.last_error.as_ref().map(|e| e.class)
                }
                _ => None,
            },
            under_replicated: self
                .replica
                .as_ref()
                .is_some_and(|rs| self.verified_in_placement(rs) < rs.placement.len()),
        }
    }

    /// How many members of the placement hold a verified copy.
    fn verified_in_placement(&self, rs: &ReplicaSet) -> usize {
        rs.placement
            .iter()
            .filter(|u| self.holders.mirrored(u) == Some(true))
            .count()
    }

    /// The verified holders, the primary first (SPEC §13 `holders`).
    pub fn verified_holders(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = self
            .holders
            .iter()
            .filter(|(_, m)| *m)
            .map(|(u, _)| *u)
            .collect();
        v.sort_by_key(|u| Some(*u) != self.owner);
        v
    }

    /// Replicas wanted (1 for a repo without a [`ReplicaSet`]).
    pub fn replicas(&self) -> u8 {
        self.replica.as_ref().map_or(1, |rs| rs.want)
    }

    /// The workers the repo is placed on (the owner alone at R = 1).
    pub fn placement(&self) -> Vec<Uuid> {
        match &self.replica {
            Some(rs) => rs.placement.clone(),
            None => self.owner.into_iter().collect(),
        }
    }

    /// Whether `w` is in the placement but not the primary: a follower (SPEC §13).
    pub fn is_follower(&self, w: &Uuid) -> bool {
        self.owner != Some(*w)
            && self
                .replica
                .as_ref()
                .is_some_and(|rs| rs.placement.contains(w))
    }
}

/// A repo's holders: worker → whether it has a complete mirror. Nearly always one or two
/// (the owner, and the old owner during a hand-off), so a sorted vector of exactly that
/// many, not a map whose first node alone takes ~200 bytes (design.md "API and fleet at
/// scale"), kept inline for the usual single holder (no allocation of its own: one
/// malloc per repo was ~2 % of a 1M index apply).
///
/// A holder is believed mirrored only once it reported a successful clone or fetch made
/// after it was told to hold the repo (issue 10; design.md "Trust (issue 10)"): a pending
/// holder keeps the highest report id the coordinator had from it then, and only a success
/// with a higher id verifies it. A claim (`Holdings`) can lower the flag, never raise it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holders(smallvec::SmallVec<[(Uuid, Hold); 1]>);

/// One holder's state: [`Hold::MIRRORED`], or pending with the report id a success must
/// pass. A `u64`, not an enum, so that an entry stays 24 bytes (one small allocation for
/// the usual single holder, as the `bool` it replaces).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold(u64);

impl Hold {
    pub const MIRRORED: Hold = Hold(u64::MAX);

    /// Pending: a success with a report id above `mark` verifies it.
    pub fn pending(mark: u64) -> Hold {
        Hold(mark.min(u64::MAX - 1))
    }

    pub fn is_mirrored(self) -> bool {
        self == Self::MIRRORED
    }
}

impl Holders {
    fn find(&self, w: &Uuid) -> Result<usize, usize> {
        self.0.binary_search_by(|(u, _)| u.cmp(w))
    }

    /// Whether `w` holds the repo, and then whether it is believed mirrored.
    pub fn mirrored(&self, w: &Uuid) -> Option<bool> {
        self.find(w)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, h)| h.is_mirrored())
    }

    pub fn contains_key(&self, w: &Uuid) -> bool {
        self.find(w).is_ok()
    }

    pub fn insert(&mut self, w: Uuid, hold: Hold) {
        match self.find(&w) {
            Ok(i) => {
                if let Some(e) = self.0.get_mut(i) {
                    e.1 = hold;
                }
            }
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (w, hold));
            }
        }
    }

    /// `w` reported a success with `report_id`: it is mirrored if that was after it was
    /// told to hold the repo. Whether it is mirrored now.
    pub fn verify(&mut self, w: &Uuid, report_id: u64) -> bool {
        let Ok(i) = self.find(w) else {
            return false;
        };
        match self.0.get_mut(i) {
            Some((_, h)) => {
                if h.is_mirrored() || report_id > h.0 {
                    *h = Hold::MIRRORED;
                }
                h.is_mirrored()
            }
            None => false,
        }
    }

    pub fn remove(&mut self, w: &Uuid) -> Option<Hold> {
        let i = self.find(w).ok()?;
        let (_, h) = self.0.remove(i);
        self.0.shrink_to_fit();
        Some(h)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Uuid> + '_ {
        self.0.iter().map(|(u, _)| u)
    }

    /// Each holder and whether it is believed mirrored.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, bool)> + '_ {
        self.0.iter().map(|(u, h)| (u, h.is_mirrored()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Uuid, Hold)> for Holders {
    fn from_iter<I: IntoIterator<Item = (Uuid, Hold)>>(it: I) -> Self {
        let mut h = Holders::default();
        for (u, m) in it {
            h.insert(u, m);
        }
        h
    }
}

/// Saved form of one repo ([`crate::repo_store`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRepo {
    pub owner: Option<Uuid>,
    pub holders: Vec<SavedHolder>,
    pub status: RepoStatus,
    /// The state when saved, for people reading the file; recomputed on load.
    #[serde(default)]
    pub state: Option<RepoState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedHolder {
    pub uuid: Uuid,
    pub mirrored: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReposFile {
    pub repos: BTreeMap<String, SavedRepo>,
}

/// What a connecting worker got.
#[derive(Debug)]
pub struct Joined {
    pub id: u32,
    /// A new uuid → id binding: persist the registry before answering.
    pub new_id: bool,
    pub sends: Vec<Outgoing>,
}

/// What [`Fleet::set_drained`] did.
#[derive(Debug)]
pub struct Drain {
    /// False when the worker already was as asked.
    pub changed: bool,
    /// Repos that leave it (drain): they move make before break.
    pub moving: usize,
    pub sends: Vec<Outgoing>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DrainError {
    #[error("no such worker")]
    Unknown,
    #[error(
        "worker {id} is the last live worker that is not drained: draining it would leave every repo unassigned; undrain or add another worker first"
    )]
    LastMember { id: u32 },
}

/// Where an outcome's copy came from and whether its refs are the ones the coordinator
/// expects (SPEC §13, protocol 7 `Outcomes7`; design.md "Replicas").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Copied from a peer (source `Peer`), not fetched from the upstream.
    pub peer: bool,
    /// Its refs SHA-256 equals the one held for the repo; `None` when either is unknown.
    pub matches: Option<bool>,
}

/// Result of an outcome batch.
#[derive(Debug, Default)]
pub struct OutcomeReport {
    /// Events to append durably before acknowledging; once they are (or are not), the
    /// caller says so with this batch number ([`Fleet::durable`], [`Fleet::not_durable`]).
    pub events: Vec<EventDraft>,
    pub batch: u64,
    /// Acknowledge up to here once the events are durable.
    pub upto: u64,
    pub sends: Vec<Outgoing>,
    /// Repos this worker should relist (`CoordMsg::Relist`).
    pub relists: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Upsert(String),
    Drop(DropReason),
}

/// A fetch the coordinator asked for ([`Fleet::asked`]).
#[derive(Debug, Clone, Copy)]
struct Asked {
    worker: Uuid,
    trigger: Trigger,
    at_ms: i64,
}

/// Pending per-worker changes of the input being processed.
#[derive(Debug, Default)]
struct Outbox {
    /// Workers connected and past `Holdings`: the only ones that get deltas.
    synced: foldhash::HashSet<Uuid>,
    /// Per worker, the operations on repos in the order they came; a later one on a repo
    /// replaces an earlier when [`Fleet::flush`] sorts them by id. A list, not a map by id:
    /// a whole index pushes 1M of them, and the maps' growth and hashing were ~15 % of
    /// the apply on the main loop.
    ops: foldhash::HashMap<Uuid, Vec<(String, Op)>>,
    /// Per worker, the highest outcome report id received: a repo it is told to hold now
    /// is verified only by a success reported after this ([`Holders`]).
    seen: HashMap<Uuid, u64>,
    /// Copies claimed by workers never told to hold them while the repo's owner had no
    /// verified copy (a holder back from dead during a hand-over): dropped once the owner
    /// is verified ([`reconcile`]). Believed as nothing else; at most [`STALE_MAX`].
    stale: foldhash::HashMap<String, Vec<Uuid>>,
}

/// The most repos [`Outbox::stale`] remembers; claims past it go at the claimant's next
/// connection, as they did before.
const STALE_MAX: usize = 65_536;

impl Outbox {
    /// What a success of `worker` must pass to verify a repo it is told to hold now.
    fn mark(&self, worker: &Uuid) -> u64 {
        self.seen.get(worker).copied().unwrap_or(0)
    }

    fn saw(&mut self, worker: Uuid, report_id: u64) {
        let s = self.seen.entry(worker).or_insert(0);
        *s = (*s).max(report_id);
    }

    /// Remember `worker`'s copy of `repo` to drop once the owner's copy is verified.
    fn remember_stale(&mut self, worker: Uuid, repo: &str) {
        if self.stale.len() >= STALE_MAX && !self.stale.contains_key(repo) {
            return;
        }
        let ws = self.stale.entry(repo.to_owned()).or_default();
        if !ws.contains(&worker) {
            ws.push(worker);
        }
    }

    /// The drops of the stale copies of `repo`, once its owner's copy is verified.
    fn drop_stale(&mut self, repo: &str, holders: &Holders, owner: Uuid) {
        if self.stale.is_empty() {
            return;
        }
        for w in self.stale.remove(repo).unwrap_or_default() {
            if w != owner && !holders.contains_key(&w) {
                self.push(w, repo, Op::Drop(DropReason::Moved));
            }
        }
    }

    /// Room for `n` more operations for `worker` (when it gets deltas).
    fn reserve(&mut self, worker: Uuid, n: usize) {
        if n > 0 && self.synced.contains(&worker) {
            self.ops.entry(worker).or_default().reserve(n);
        }
    }

    fn push(&mut self, worker: Uuid, repo: &str, op: Op) {
        if self.synced.contains(&worker) {
            self.ops
                .entry(worker)
                .or_default()
                .push((repo.to_owned(), op));
        }
    }
}

/// Bring a repo's holders in line with its owner (see the module docs).
fn reconcile(id: &str, repo: &mut Repo, out: &mut Outbox) {
    if repo.replica.is_some() {
        reconcile_replicas(id, repo, out);
        return;
    }
    let Some(owner) = repo.owner else {
        return;
    };
    if !repo.holders.contains_key(&owner) && out.synced.contains(&owner) {
        repo.holders.insert(owner, Hold::pending(out.mark(&owner)));
        out.push(owner, id, Op::Upsert(String::from(&*repo.url)));
    }
    if repo.holders.mirrored(&owner) == Some(true) {
        let others: Vec<Uuid> = repo
            .holders
            .keys()
            .copied()
            .filter(|h| *h != owner)
            .collect();
        for h in others {
            repo.holders.remove(&h);
            out.push(h, id, Op::Drop(DropReason::Moved));
        }
        out.drop_stale(id, &repo.holders, owner);
    }
}

/// [`reconcile`] for a repo with replicas (SPEC §13, design.md "Replicas"). The primary
/// is the first placement member holding a verified copy; while none does, a verified
/// holder outside the placement (the old primary, make before break), else the first
/// member. Followers are told to hold the repo once the primary's copy is verified (so they
/// are seeded from it, not from the upstream); holders outside the placement go once every
/// member is verified. A primary that changes is told so by an upsert (its role is read
/// from the fleet when the delta is sent), as is the one it replaces if it stays a holder.
fn reconcile_replicas(id: &str, repo: &mut Repo, out: &mut Outbox) {
    let Some(rs) = repo.replica.as_deref() else {
        return;
    };
    let placement = rs.placement.clone();
    let verified = |r: &Repo, u: &Uuid| r.holders.mirrored(u) == Some(true);
    let primary = placement
        .iter()
        .find(|u| verified(repo, u))
        .copied()
        .or_else(|| repo.owner.filter(|o| verified(repo, o)))
        .or_else(|| placement.first().copied());
    let old = repo.owner;
    repo.owner = primary;
    if old != primary {
        for w in [primary, old].into_iter().flatten() {
            if repo.holders.contains_key(&w) {
                out.push(w, id, Op::Upsert(String::from(&*repo.url)));
            }
        }
    }
    let Some(primary) = primary else {
        return;
    };
    let seeded = verified(repo, &primary);
    for w in &placement {
        if repo.holders.contains_key(w) || !out.synced.contains(w) {
            continue;
        }
        if *w == primary || seeded {
            repo.holders.insert(*w, Hold::pending(out.mark(w)));
            out.push(*w, id, Op::Upsert(String::from(&*repo.url)));
        }
    }
    if placement.iter().all(|w| verified(repo, w)) {
        let others: Vec<Uuid> = repo
            .holders
            .keys()
            .copied()
            .filter(|h| !placement.contains(h))
            .collect();
        for h in others {
            repo.holders.remove(&h);
            out.push(h, id, Op::Drop(DropReason::Moved));
        }
    }
}

/// Index of each member by uuid.
fn member_index(members: &[Member]) -> HashMap<Uuid, usize> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.uuid, i))
        .collect()
}

/// Live workers (alive or suspect; drained ones included).
fn live_set(registry: &Registry) -> HashSet<Uuid> {
    registry
        .iter()
        .filter(|w| w.state.is_live())
        .map(|w| w.uuid)
        .collect()
}

/// The number of repos of `id`'s project folder ([`ring::folder`]) in `repos`: a range of
/// the ordered map, O(folder), no allocation.
fn folder_len(repos: &BTreeMap<Arc<str>, Box<Repo>>, id: &str) -> usize {
    let f = ring::folder(id);
    if f.len() == id.len() {
        return 1;
    }
    folder_count(repos, f)
}

/// The number of repos in `repos` whose folder is `f` (`<first>/<project>/`).
fn folder_count(repos: &BTreeMap<Arc<str>, Box<Repo>>, f: &str) -> usize {
    repos
        .range::<str, _>((std::ops::Bound::Included(f), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(f))
        .filter(|(k, _)| ring::folder(k) == f)
        .count()
}

/// Each repo's folder length in map order under `project` placement (one pass); empty
/// under `repo`, where the key is the id whatever the folder ([`len_at`]).
fn folder_lens(placement: Placement, repos: &BTreeMap<Arc<str>, Box<Repo>>) -> Vec<u32> {
    match placement {
        Placement::Repo => Vec::new(),
        Placement::Project => ring::folder_lens(repos.keys().map(|k| &**k)),
    }
}

fn len_at(lens: &[u32], i: usize) -> usize {
    lens.get(i).map_or(1, |&n| n as usize)
}

/// Where owner changes land: the deltas, the census and the repos to save.
struct OwnerMoves<'a> {
    members: &'a [Member],
    out: &'a mut Outbox,
    census: &'a mut Census,
    unsaved: &'a mut foldhash::HashSet<Arc<str>>,
    gate: &'a mut Gate,
    /// Live workers (alive or suspect, drained ones included): a move off one of them
    /// that holds a verified copy is planned ([`gate`]).
    live: &'a HashSet<Uuid>,
}

impl OwnerMoves<'_> {
    /// Give the repo the ring's choice (`scored`: index into the members and the winning
    /// score; `None` when there is no member). A move is reconciled, recounted and saved;
    /// a planned move to a destination without room waits in the [`Gate`] (the repo keeps
    /// its owner, `owner_score` is the target's).
    fn set(&mut self, id: &Arc<str>, repo: &mut Repo, scored: Option<(usize, f64)>) {
        if repo.replica.is_some() {
            // Placed by [`Fleet::place_replicated`].
            return;
        }
        let target = scored
            .and_then(|(i, _)| self.members.get(i))
            .map(|m| m.uuid);
        repo.owner_score = scored.map_or(f64::INFINITY, |(_, s)| s);
        if target == repo.owner {
            self.gate.unwait(id);
            return;
        }
        let planned = repo
            .owner
            .is_some_and(|o| self.live.contains(&o) && repo.holders.mirrored(&o) == Some(true));
        let clone_to = target.filter(|t| planned && repo.holders.mirrored(t) != Some(true));
        if let Some(t) = clone_to
            && !self.gate.has_room(&t)
        {
            self.gate.wait(id, t);
            return;
        }
        self.gate.unwait(id);
        if let Some(old) = repo.owner {
            self.gate.release(&old, id);
        }
        let before = repo.facts();
        repo.owner = target;
        reconcile(id, repo, self.out);
        if let Some(t) = clone_to
            && repo.holders.mirrored(&t) != Some(true)
        {
            self.gate.admit(t, id);
        }
        self.census.update(id, &before, &repo.facts());
        self.unsaved.insert(id.clone());
    }
}

/// Whether [`reconcile`] would change anything of the repo.
fn needs_reconcile(repo: &Repo, out: &Outbox) -> bool {
    if repo.replica.is_some() {
        return true;
    }
    let Some(owner) = repo.owner else {
        return false;
    };
    match repo.holders.mirrored(&owner) {
        None => out.synced.contains(&owner),
        Some(true) => repo.holders.len() > 1,
        Some(false) => false,
    }
}

/// A repo as the repo store saves it.
fn saved_repo(r: &Repo) -> SavedRepo {
    SavedRepo {
        owner: r.owner,
        holders: r
            .holders
            .iter()
            .map(|(u, m)| SavedHolder {
                uuid: *u,
                mirrored: m,
            })
            .collect(),
        status: r.status.clone(),
        state: Some(r.state()),
    }
}

/// The one copy of an index name (there are a handful).
fn intern(names: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(n) = names.iter().find(|n| &***n == name) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(name);
    names.push(n.clone());
    n
}

/// Holders (live workers only) and status of a saved repo.
fn restore(saved: Option<SavedRepo>, registry: &Registry) -> (Option<Uuid>, Holders, RepoStatus) {
    match saved {
        Some(s) => (
            s.owner,
            s.holders
                .into_iter()
                .filter(|h| registry.get(&h.uuid).is_some_and(|w| w.state.is_live()))
                // What was saved was verified then (or pending: any success verifies).
                .map(|h| {
                    let hold = if h.mirrored {
                        Hold::MIRRORED
                    } else {
                        Hold::pending(0)
                    };
                    (h.uuid, hold)
                })
                .collect(),
            s.status,
        ),
        None => (None, Holders::default(), RepoStatus::default()),
    }
}

/// Repos workers hold that the fleet does not know, while the index has no content yet:
/// remembered to be matched against its first delta. Kept by id, so that each repo of
/// that delta (every repo, for a coordinator that lost its state) finds its claims in one
/// look-up; looking through every worker's claims for each was 1M repos × 1,000 workers
/// of hash look-ups on the main loop (`first_index` bench).
#[derive(Default)]
struct UnknownHeld {
    /// id → the workers that claim it, each with the URL and flag it reported.
    by_id: foldhash::HashMap<String, Vec<(Uuid, String, bool)>>,
    /// worker → the ids it claimed (some may have been taken since).
    by_worker: HashMap<Uuid, Vec<String>>,
}

impl UnknownHeld {
    fn insert(&mut self, worker: Uuid, id: &str, url: &str, mirrored: bool) {
        let claims = self.by_id.entry(id.to_owned()).or_default();
        match claims.iter_mut().find(|(w, ..)| *w == worker) {
            Some(c) => *c = (worker, url.to_owned(), mirrored),
            None => {
                claims.push((worker, url.to_owned(), mirrored));
                self.by_worker
                    .entry(worker)
                    .or_default()
                    .push(id.to_owned());
            }
        }
    }

    /// A worker's claims are void (it reconnected, or left). O(its claims).
    fn forget(&mut self, worker: &Uuid) {
        for id in self.by_worker.remove(worker).unwrap_or_default() {
            if let Some(claims) = self.by_id.get_mut(&id) {
                claims.retain(|(w, ..)| w != worker);
                if claims.is_empty() {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// The claims on `id`, removed: (worker, URL, mirrored).
    fn take(&mut self, id: &str) -> Vec<(Uuid, String, bool)> {
        self.by_id.remove(id).unwrap_or_default()
    }

    /// Every claim left, emptied: (worker, id).
    fn take_all(&mut self) -> Vec<(Uuid, String)> {
        self.by_worker.clear();
        self.by_id
            .drain()
            .flat_map(|(id, claims)| claims.into_iter().map(move |(w, ..)| (w, id.clone())))
            .collect()
    }
}

/// An index part of at least this many repos, all new, has them counted by the census on
/// a thread of its own ([`Fleet::apply_index_part_scored`]).
const PARALLEL_COUNT: usize = 4096;

/// New repos handed to the counting thread at a time.
const COUNT_BATCH: usize = 2048;

/// What placing a new repo of an index part touches, the census apart (so that the census
/// can count the part's new repos on another thread meanwhile).
struct Placing<'a> {
    members: &'a [Member],
    registry: &'a Registry,
    saved: &'a mut HashMap<String, SavedRepo>,
    unknown_held: &'a mut UnknownHeld,
    out: &'a mut Outbox,
    fetch_now: &'a mut Vec<(Uuid, String)>,
    replicated: &'a mut HashSet<Arc<str>>,
    repos: &'a mut BTreeMap<Arc<str>, Box<Repo>>,
    unsaved: &'a mut foldhash::HashSet<Arc<str>>,
}

impl Placing<'_> {
    /// Put the new repo `e` in the fleet with its owner (`scored`: index into the members
    /// and score) and replicas; its id and facts, for the census.
    fn add(
        &mut self,
        e: &Entry,
        index: Arc<str>,
        scored: Option<(usize, f64)>,
        replica: Option<Box<ReplicaSet>>,
    ) -> (Arc<str>, crate::census::Facts) {
        let owner = scored
            .and_then(|(i, _)| self.members.get(i))
            .map(|m| m.uuid);
        let owner_score = scored.map_or(f64::INFINITY, |(_, s)| s);
        let (_, mut holders, status) = restore(self.saved.remove(&e.id), self.registry);
        // Held before the index was read: believed as [`Fleet::holdings`] believes a claim
        // (only from a holder or the owner, never raised).
        for (w, url, mirrored) in self.unknown_held.take(&e.id) {
            let holds = holders.mirrored(&w);
            if holds.is_none() && owner != Some(w) {
                continue;
            }
            if holds.is_none() || (holds == Some(true) && !mirrored) {
                holders.insert(w, Hold::pending(self.out.mark(&w)));
            }
            if mirrored && owner == Some(w) && holds != Some(true) {
                self.fetch_now.push((w, e.id.clone()));
            }
            if url != e.url {
                self.out.push(w, &e.id, Op::Upsert(e.url.clone()));
            }
        }
        let key: Arc<str> = Arc::from(e.id.as_str());
        if replica.is_some() {
            self.replicated.insert(key.clone());
        }
        let repo = self.repos.entry(key.clone()).or_insert(Box::new(Repo {
            url: Arc::from(e.url.as_str()),
            index,
            metadata: e.metadata.clone(),
            owner,
            owner_score,
            holders,
            status,
            replica,
        }));
        reconcile(&e.id, repo, self.out);
        let after = repo.facts();
        self.unsaved.insert(key.clone());
        (key, after)
    }
}

/// A start's saved records applied to the repos ([`Fleet::restorer`]).
pub struct Restorer<'a> {
    /// `None` before the index has applied entries: records are kept aside then.
    by_id: Option<foldhash::HashMap<&'a str, &'a mut Repo>>,
    saved: &'a mut HashMap<String, SavedRepo>,
    registry: &'a Registry,
    placement: Placement,
    resized: &'a mut HashSet<String>,
}

impl Restorer<'_> {
    /// One record of the repo store, in file order (`None`: the repo was removed).
    /// Holders are kept only when they are live workers. Records of repos the index no
    /// longer has are dropped (removed while we were down), unless the index has no
    /// applied entries yet: then they wait for its first content.
    pub fn restore(&mut self, id: String, saved: Option<SavedRepo>) {
        let Some(by_id) = &mut self.by_id else {
            match saved {
                Some(s) => self.saved.insert(id, s),
                None => self.saved.remove(&id),
            };
            return;
        };
        let Some(repo) = by_id.get_mut(id.as_str()) else {
            if saved.is_some() && self.placement == Placement::Project {
                self.resized.insert(ring::folder(&id).to_owned());
            }
            return;
        };
        // The saved owner, so that recomputing the owners changes (and saves) only repos
        // whose owner really moved.
        let (owner, holders, status) = restore(saved, self.registry);
        repo.owner = owner;
        repo.holders = holders;
        repo.status = status;
        repo.owner_score = f64::INFINITY;
    }
}

pub struct Fleet {
    dead_after_ms: i64,
    registry: Registry,
    /// Ids are shared with the census's ordered sets.
    /// Boxed: B-tree nodes are often half full, and a half-empty slot of a pointer costs
    /// far less than one of a whole repo (design.md "API and fleet at scale").
    repos: BTreeMap<Arc<str>, Box<Repo>>,
    /// Counts and ordered id sets, updated with every change of a repo's [`Facts`].
    census: Census,
    /// Index names, shared by their repos.
    index_names: Vec<Arc<str>>,
    /// Live workers in uuid order, as the ring sees them.
    members: Vec<Member>,
    /// Bumped with every new `members` ([`Fleet::members_generation`]).
    members_gen: u64,
    /// Every repo's owner has been computed for `members` (so the next change of the live
    /// set can be applied incrementally).
    owners_known: bool,
    out: Outbox,
    /// Whether the index has been loaded: until then, unknown held repos are left alone
    /// rather than trashed, and remembered here (worker → repo → (url, mirrored)) to be
    /// matched against the first index delta.
    index_ready: bool,
    unknown_held: UnknownHeld,
    /// Saved repo statuses waiting for the first index content (when the index had no
    /// applied entries at start, e.g. its state was reset).
    saved: HashMap<String, SavedRepo>,
    registry_dirty: bool,
    /// Repos changed since the last save (saved as they are then, or removed when gone):
    /// a save costs O(changed), never O(repos).
    unsaved: foldhash::HashSet<Arc<str>>,
    /// Digests published by events not durable yet ([`Fleet::outcomes_from`]), by repo:
    /// the batch whose events they wait for, and the digest once those are durable.
    /// Outcomes are judged against these first; `RepoStatus::published` holds only what
    /// durable events published. Only repos with events in flight, so small.
    in_flight: foldhash::HashMap<Arc<str>, (u64, Option<u64>)>,
    /// The number of the next outcome batch ([`OutcomeReport::batch`]).
    next_batch: u64,
    /// Outcome counters and durations since start, for `GET /metrics`.
    stats: FetchStats,
    /// Each repo's last outcomes and events, and the per-minute series, for the pages.
    history: crate::history::History,
    /// Repos whose owner was asked to relist its refs, and when ([`crate::published`]).
    /// Only repos in that state, so small; an entry is dropped when the relist arrives.
    relists: HashMap<Arc<str>, i64>,
    /// The member fingerprint the repo store last recorded for the saved owners (`None`:
    /// none, or unset before a move: [`crate::repo_store::Changes`]).
    saved_owners: Option<u64>,
    /// Repos whose owner claims a complete mirror not yet verified: it is asked to fetch
    /// them now ([`Fleet::take_fetch_now`]).
    fetch_now: Vec<(Uuid, String)>,
    /// Fetches the coordinator asked for (push hooks, the API), by repo: the next outcome
    /// of the repo from that worker carries the trigger (design.md "Push hooks").
    asked: HashMap<Arc<str>, Asked>,
    /// When `asked` was last swept of expired asks (at most once a tenth of their TTL).
    asked_swept_ms: i64,
    /// The index entries of blocked repos ([`Registry::blocked`]), kept aside rather
    /// than applied, so an unblock brings a repo the index still lists back at once.
    blocked_entries: HashMap<String, Entry>,
    /// What the ring hashes ([`Placement::key`]), fixed for the life of the fleet (a
    /// switch happens at start: `crate::state::resolve_placement`).
    placement: Placement,
    /// The owner function ([`ring::Hashing`]), fixed likewise (`crate::state::resolve_hashing`).
    hashing: ring::Hashing,
    /// Under `project`: folders whose length may have changed while the coordinator was
    /// down (a saved record the index no longer lists), so their saved owners are
    /// rescored at start ([`Fleet::finish_start`]).
    resized: HashSet<String>,
    /// Planned moves admitted and waiting (SPEC §5 make before break, plan C4).
    gate: Gate,
    /// `replicas` and `indexes[].replicas` (SPEC §13), fixed for the life of the fleet.
    replicas: crate::replicas::Settings,
    /// Ids of the repos with more than one replica (empty when R = 1 everywhere).
    replicated: HashSet<Arc<str>>,
    /// Each worker's zone as its last `PeerInfo` said (SPEC §13), for the placement.
    zones: HashMap<Uuid, Arc<str>>,
    /// Connected workers whose peer plane listens (`PeerInfo` with a port): `peer` in
    /// `/api/workers`.
    peer_planes: HashSet<Uuid>,
}

/// `Repo::owner_score` of a repo the repo store had no record of, during a start: its
/// saved owner (none) cannot be trusted whatever the members ([`Fleet::finish_start`]).
const NOT_RESTORED: f64 = f64::NAN;

/// How often an owner is asked again to relist a repo whose reports still diverge from
/// what was published (the request may have been lost with a connection).
const RELIST_AGAIN_MS: i64 = 10_000;

impl Fleet {
    /// Build the fleet from the saved registry and repo statuses and the applied index
    /// entries, as a start does ([`Fleet::from_entries`], [`Fleet::restorer`],
    /// [`Fleet::finish_start`]); owners are recomputed.
    pub fn new(
        dead_after: Duration,
        registry: Registry,
        saved: ReposFile,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Self {
        let mut fleet = Fleet::from_entries(dead_after, registry, entries);
        let mut restorer = fleet.restorer();
        for (id, s) in saved.repos {
            restorer.restore(id, Some(s));
        }
        fleet.finish_start(None);
        fleet
    }

    /// A start's first step: the repos of the applied index entries, no status yet. Then
    /// the saved records ([`Fleet::restorer`]), the published digests
    /// ([`Fleet::restore_published`]) and [`Fleet::finish_start`]. In steps so that the
    /// saved status streams from its file into the repos, never held twice (at 1M repos a
    /// map of it cost ~500 MB and a third of the start).
    pub fn from_entries(
        dead_after: Duration,
        registry: Registry,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Self {
        let mut index_names = Vec::new();
        let mut blocked_entries = HashMap::new();
        // Bulk-built from a vector: the applied entries come in id order per index, so the
        // sort is a merge of a few runs, not a million B-tree inserts with string compares.
        let repos: BTreeMap<Arc<str>, Box<Repo>> = entries
            .into_iter()
            .filter_map(|e| {
                if registry.blocked(&e.id).is_some() {
                    blocked_entries.insert(e.id.clone(), e);
                    return None;
                }
                Some(e)
            })
            .map(|e| {
                let repo = Repo {
                    url: Arc::from(e.url),
                    index: intern(&mut index_names, &e.index),
                    metadata: e.metadata,
                    owner: None,
                    owner_score: NOT_RESTORED,
                    holders: Holders::default(),
                    status: RepoStatus::default(),
                    replica: None,
                };
                (Arc::from(e.id), Box::new(repo))
            })
            .collect();
        Fleet {
            dead_after_ms: dead_after.as_millis().min(i64::MAX as u128) as i64,
            placement: registry.placement(),
            hashing: registry.hashing(),
            resized: HashSet::new(),
            gate: Gate::default(),
            registry,
            // Blocked entries count: the index was read even if it lists only those.
            index_ready: !repos.is_empty() || !blocked_entries.is_empty(),
            repos,
            census: Census::default(),
            index_names,
            members: Vec::new(),
            members_gen: 0,
            owners_known: false,
            out: Outbox::default(),
            unknown_held: UnknownHeld::default(),
            saved: HashMap::new(),
            registry_dirty: false,
            unsaved: foldhash::HashSet::default(),
            in_flight: foldhash::HashMap::default(),
            next_batch: 1,
            stats: FetchStats::default(),
            history: crate::history::History::default(),
            relists: HashMap::new(),
            saved_owners: None,
            fetch_now: Vec::new(),
            asked: HashMap::new(),
            asked_swept_ms: i64::MIN,
            blocked_entries,
            replicas: crate::replicas::Settings::default(),
            replicated: HashSet::new(),
            zones: HashMap::new(),
            peer_planes: HashSet::new(),
        }
    }

    /// A start's second step: the repo store's records ([`Restorer::restore`]). The repos
    /// are looked up by a hash of their id built once (~50 MB at 1M repos, 2M buckets of
    /// 25 bytes, dropped with the restorer), not by a B-tree search a record, which
    /// compared ids with long common prefixes along each path (a third of a 1M start's
    /// CPU, docs/scale.md "twelfth session").
    pub fn restorer(&mut self) -> Restorer<'_> {
        let by_id = self.index_ready.then(|| {
            let mut m = foldhash::HashMap::with_capacity_and_hasher(
                self.repos.len(),
                foldhash::fast::RandomState::default(),
            );
            m.extend(self.repos.iter_mut().map(|(id, r)| (&**id, &mut **r)));
            m
        });
        Restorer {
            by_id,
            saved: &mut self.saved,
            registry: &self.registry,
            placement: self.placement,
            resized: &mut self.resized,
        }
    }

    /// A start's third step: the digests of the refs last published per repo, from the
    /// event log (SPEC §10). The log is appended before an outcome is acknowledged, the
    /// repo status only every few seconds, so after `kill -9` the saved digest can predate
    /// the last events: a failover clone of refs already announced would then look like
    /// news and be published twice. The refs one by one stay in the event log and are read
    /// when an outcome needs them.
    pub fn restore_published(&mut self, digests: &HashMap<String, u64>) {
        if self.index_ready {
            // One walk of the repos with a hash look-up each: a B-tree search per digest
            // compared ids along the whole path (~1 s of a 1M start).
            for (id, repo) in self.repos.iter_mut() {
                if let Some(digest) = digests.get(&**id) {
                    repo.status.published = Some(*digest);
                }
            }
            return;
        }
        for (id, digest) in digests {
            if let Some(repo) = self.repos.get_mut(id.as_str()) {
                repo.status.published = Some(*digest);
            } else {
                self.saved
                    .entry(id.to_owned())
                    .or_insert_with(|| SavedRepo {
                        owner: None,
                        holders: Vec::new(),
                        status: RepoStatus::default(),
                        state: None,
                    })
                    .status
                    .published = Some(*digest);
            }
        }
    }

    /// A start's last step: the census, and the owners. When the saved owners were
    /// computed for the member set the registry restored (`saved_owners`, the repo
    /// store's fingerprint), they are kept and each repo's winning score is one hash;
    /// otherwise every repo is scored. Returns whether the saved owners were kept.
    pub fn finish_start(&mut self, saved_owners: Option<u64>) -> bool {
        self.saved_owners = saved_owners;
        let members = self.live_members();
        let placement = self.placement;
        let keep = saved_owners.is_some() && saved_owners == Some(self.fingerprint(&members));
        let ring = ring::Ring::with(self.hashing, &members);
        // Under rendezvous a restored owner's winning score is one hash; under `points` it
        // is four searches of the owner's points (~1 s at 1M repos, most of it cache
        // misses), so it stays unknown (+inf) until a member joins: the join scores such a
        // repo afresh ([`Fleet::recompute_single_owners`]), once, off the restart's path.
        let eager = self.hashing == ring::Hashing::Rendezvous;
        let index = member_index(&members);
        let lens = if keep && eager {
            folder_lens(placement, &self.repos)
        } else {
            Vec::new()
        };
        let mut buf = KeyBuf::default();
        // Repos whose saved owner cannot stand: no record, or an owner not in the ring.
        let mut todo: Vec<Arc<str>> = Vec::new();
        for (n, (id, repo)) in self.repos.iter_mut().enumerate() {
            let restored = !repo.owner_score.is_nan();
            repo.owner_score = f64::INFINITY;
            // A planned move in flight when the state was saved (its owner pending, an
            // old holder verified) is admitted again: the gate's count survives a restart.
            if let Some(o) = repo.owner
                && repo.holders.mirrored(&o) == Some(false)
                && repo.holders.iter().any(|(h, m)| m && *h != o)
            {
                self.gate.admit(o, id);
            }
            if !keep {
                continue;
            }
            match repo.owner.map(|o| index.get(&o)) {
                Some(Some(&i)) if restored => {
                    if eager {
                        let key = placement.key(id, len_at(&lens, n), &mut buf);
                        repo.owner_score = ring.score(key, i).unwrap_or(f64::INFINITY);
                    }
                }
                None if restored && members.is_empty() => {}
                _ => todo.push(id.clone()),
            }
        }
        self.census = Census::from_facts(self.repos.iter().map(|(id, r)| (id, r.facts())));
        if !keep {
            self.recompute_owners();
            return false;
        }
        self.members = members;
        self.members_gen += 1;
        self.owners_known = true;
        let resized = std::mem::take(&mut self.resized);
        if placement == Placement::Project {
            // A folder that gained or lost repos while we were down may have changed its
            // split (SPEC §14): its saved owners are rescored with the rest.
            let mut folders: BTreeSet<String> = resized.into_iter().collect();
            folders.extend(todo.iter().map(|id| ring::folder(id).to_owned()));
            let mut more: BTreeSet<Arc<str>> = BTreeSet::new();
            for f in &folders {
                more.extend(
                    self.repos
                        .range::<str, _>((
                            std::ops::Bound::Included(f.as_str()),
                            std::ops::Bound::Unbounded,
                        ))
                        .take_while(|(k, _)| k.starts_with(f.as_str()))
                        .map(|(k, _)| k.clone()),
                );
            }
            for id in &todo {
                more.remove(id);
            }
            todo.extend(more);
        }
        let items: Vec<(&str, u32)> = todo
            .iter()
            .map(|id| (&**id, folder_len(&self.repos, id) as u32))
            .collect();
        let owners = ring.owners_placed(placement, &items);
        drop(items);
        let live = live_set(&self.registry);
        let mut moves = OwnerMoves {
            members: &self.members,
            out: &mut self.out,
            census: &mut self.census,
            unsaved: &mut self.unsaved,
            gate: &mut self.gate,
            live: &live,
        };
        for (id, scored) in todo.iter().zip(owners) {
            if let Some(repo) = self.repos.get_mut(id) {
                moves.set(id, repo, scored);
            }
        }
        self.place_replicated(None);
        true
    }

    /// The replica settings (SPEC §13), before [`Fleet::finish_start`] (after
    /// [`Fleet::restorer`]): each repo of an index with more than one replica gets a
    /// [`ReplicaSet`], placed by the start. O(repos) once, and nothing when R = 1
    /// everywhere.
    pub fn set_replicas(&mut self, settings: crate::replicas::Settings) {
        if settings.any_replicated() {
            for (id, repo) in self.repos.iter_mut() {
                let want = settings.for_index(&repo.index);
                if want > 1 {
                    repo.replica = Some(Box::new(ReplicaSet {
                        want,
                        placement: Vec::new(),
                    }));
                    self.replicated.insert(id.clone());
                }
            }
        }
        self.replicas = settings;
    }

    /// A worker's zone (its `PeerInfo`, SPEC §13). A change of a member's zone places
    /// every replicated repo again (O(replicated repos × W log W); nothing at R = 1).
    pub fn set_zone(&mut self, uuid: Uuid, zone: Option<&str>) -> Vec<Outgoing> {
        let old = self.zones.get(&uuid).map(|z| &**z);
        if old == zone {
            return Vec::new();
        }
        match zone {
            Some(z) => self.zones.insert(uuid, Arc::from(z)),
            None => self.zones.remove(&uuid),
        };
        if self.replicated.is_empty() || !self.members.iter().any(|m| m.uuid == uuid) {
            return Vec::new();
        }
        self.place_replicated(None);
        self.flush()
    }

    /// Whether `uuid`'s peer plane listens (its last `PeerInfo` on this connection).
    pub fn set_peer_plane(&mut self, uuid: Uuid, listening: bool) {
        if listening {
            self.peer_planes.insert(uuid);
        } else {
            self.peer_planes.remove(&uuid);
        }
    }

    pub fn has_peer_plane(&self, uuid: &Uuid) -> bool {
        self.peer_planes.contains(uuid)
    }

    /// The zone of each member as a number for [`ring::Ring::top_r`] (a member without a
    /// zone is its own).
    fn zone_numbers(&self, members: &[Member]) -> Vec<u32> {
        let mut names: Vec<&str> = Vec::new();
        members
            .iter()
            .enumerate()
            .map(|(i, m)| match self.zones.get(&m.uuid) {
                Some(z) => match names.iter().position(|n| *n == &**z) {
                    Some(p) => p as u32,
                    None => {
                        names.push(z);
                        (names.len() - 1) as u32
                    }
                },
                None => u32::MAX - i as u32,
            })
            .collect()
    }

    /// Place the replicated repos (`only`: these; `None`: all of them) on the top R of the
    /// live members (SPEC §13); a changed placement is reconciled, recounted and saved.
    /// O(repos placed × W log W); the caller does it on a membership or zone change, for
    /// the replicated repos only (design.md "Replicas": the cost at 1M).
    fn place_replicated(&mut self, only: Option<&[Arc<str>]>) {
        if self.replicated.is_empty() {
            return;
        }
        let members = &self.members;
        let ring = ring::Ring::with(self.hashing, members);
        let zones = self.zone_numbers(members);
        let ids: Vec<Arc<str>> = match only {
            Some(ids) => ids.to_vec(),
            None => self.replicated.iter().cloned().collect(),
        };
        let mut buf = KeyBuf::default();
        for id in ids {
            let len = match self.placement {
                Placement::Repo => 1,
                Placement::Project => folder_len(&self.repos, &id),
            };
            let Some(repo) = self.repos.get_mut(&id) else {
                continue;
            };
            let Some(rs) = repo.replica.as_deref() else {
                continue;
            };
            let key = self.placement.key(&id, len, &mut buf);
            let top: Vec<Uuid> = ring
                .top_r(key, usize::from(rs.want), &zones)
                .into_iter()
                .filter_map(|i| members.get(i).map(|m| m.uuid))
                .collect();
            if top == rs.placement && repo.owner.is_some_and(|o| top.contains(&o)) {
                continue;
            }
            let before = repo.facts();
            if let Some(rs) = repo.replica.as_deref_mut() {
                rs.placement = top;
            }
            reconcile(&id, repo, &mut self.out);
            self.census.update(&id, &before, &repo.facts());
            self.unsaved.insert(id);
        }
    }

    /// The fingerprint of the saved owners for `members`: [`ring::owners_fingerprint`],
    /// mixed with the replica settings when some repo has replicas (a switch either way
    /// rescores at start). Zones are not in it: they place only replicated repos, which a
    /// start places again whatever was saved.
    fn fingerprint(&self, members: &[Member]) -> u64 {
        let f = ring::owners_fingerprint(self.placement, self.hashing, members);
        if !self.replicas.any_replicated() {
            return f;
        }
        ring::replicas_fingerprint(f, &self.replicas.describe())
    }

    // ----- inputs -----

    /// The member set to score index parts for ahead of the loop ([`crate::scorer`]):
    /// only under `repo` placement, where a repo's owner depends on its id and the members
    /// alone. Changes when [`Fleet::members_generation`] does.
    pub fn scoring_snapshot(&self) -> Option<crate::scorer::Snapshot> {
        (self.placement == Placement::Repo && !self.members.is_empty()).then(|| {
            crate::scorer::Snapshot {
                fp: ring::fingerprint(&self.members),
                ring: ring::Ring::with(self.hashing, &self.members),
            }
        })
    }

    /// Bumped whenever the member set the owners are computed for is replaced.
    pub fn members_generation(&self) -> u64 {
        self.members_gen
    }

    /// Apply an index delta: new repos get an owner, re-pointed URLs are upserted to their
    /// holders, removed repos are dropped from every holder.
    pub fn apply_index(&mut self, delta: &Delta) -> Vec<Outgoing> {
        self.apply_index_part(delta, true)
    }

    /// Apply one part of an index delta ([`Delta::into_parts`]); `last` marks the part
    /// after which the fleet has the whole index content. Until then a start's saved
    /// status and the holdings of repos not yet seen are kept for the later parts.
    pub fn apply_index_part(&mut self, delta: &Delta, last: bool) -> Vec<Outgoing> {
        self.apply_index_part_scored(delta, last, None)
    }

    /// [`Fleet::apply_index_part`] with the owners of its entries scored ahead
    /// ([`crate::scorer`]); they are used only if scored for the current members.
    pub fn apply_index_part_scored(
        &mut self,
        delta: &Delta,
        last: bool,
        scored: Option<&crate::scorer::Scored>,
    ) -> Vec<Outgoing> {
        let kept;
        let (delta, scored) = if self.registry.blocked_all().is_empty() {
            (delta, scored)
        } else {
            // Scores are for the part as it came.
            kept = self.set_blocked_aside(delta);
            (&kept, None)
        };
        let was_ready = self.index_ready;
        self.index_ready |= last;
        // Ids both removed and listed (only needed when something is removed: a whole
        // index is 1M additions and no removal).
        let updated: BTreeSet<&str> = if delta.removed.is_empty() {
            BTreeSet::new()
        } else {
            delta
                .added
                .iter()
                .chain(&delta.changed)
                .map(|e| e.id.as_str())
                .collect()
        };
        // Under `project`, the length of each folder the delta touches, before it and after
        // it (one range count each): a folder whose split changes has its other repos
        // rescored below (SPEC §14).
        let placement = self.placement;
        let mut folders: HashMap<&str, (usize, usize)> = HashMap::new();
        if placement == Placement::Project {
            let touched = delta.removed.iter().map(String::as_str).chain(
                delta
                    .added
                    .iter()
                    .chain(&delta.changed)
                    .map(|e| e.id.as_str())
                    .filter(|id| !self.repos.contains_key(*id)),
            );
            for id in touched {
                let f = ring::folder(id);
                if !folders.contains_key(f) {
                    let n = folder_len(&self.repos, id);
                    folders.insert(f, (n, n));
                }
            }
        }
        for id in &delta.removed {
            if updated.contains(id.as_str()) {
                continue;
            }
            if let Some((key, repo)) = self.repos.remove_entry(id.as_str()) {
                self.replicated.remove(&key);
                self.census.remove(&key, &repo.facts());
                self.unsaved.insert(key);
                self.gate.unwait(id);
                if let Some(o) = repo.owner {
                    self.gate.release(&o, id);
                }
                if let Some(f) = folders.get_mut(ring::folder(id)) {
                    f.1 = f.1.saturating_sub(1);
                }
                for h in repo.holders.keys() {
                    self.out
                        .push(*h, id, Op::Drop(DropReason::RemovedFromIndex));
                }
            }
        }
        let ring = ring::Ring::with(self.hashing, &self.members);
        // The owners of the new repos first, on every core (a whole index arrives at once).
        let listed = || {
            delta
                .added
                .iter()
                .chain(&delta.changed)
                .map(|e| e.id.as_str())
        };
        // Ids listed twice in the delta count once. In strictly ascending order (the parts
        // of a whole index) none repeats an earlier one, and no set of them is needed (a
        // hashed insert per id was ~5 % of a 1M apply); else the set is sized for the
        // part (grown from empty, its rehashes were ~3 %).
        let ascending = listed().zip(listed().skip(1)).all(|(a, b)| a < b);
        let mut seen = (!ascending)
            .then(|| foldhash::HashSet::with_capacity_and_hasher(delta.len(), Default::default()));
        self.unsaved.reserve(delta.len());
        // Per entry, whether it is the first listing of a repo not in the fleet: the loop
        // below then inserts it without searching for it again (a whole index is 1M new
        // repos, and a search of the repo table is ~20 string compares). An id past the
        // table's last is new without a search: the parts of a whole index come in order.
        let last_id = self.repos.last_key_value().map(|(k, _)| k.clone());
        let mut first_new: Vec<bool> = Vec::with_capacity(delta.len());
        // Sized for the part (collected from a filter, it grew one reallocation at a time:
        // ~6 % of a 1M apply).
        let mut new_ids: Vec<&str> = Vec::with_capacity(delta.len());
        for id in listed() {
            let absent = last_id.as_deref().is_none_or(|l| id > l) || !self.repos.contains_key(id);
            let new = absent && seen.as_mut().is_none_or(|s| s.insert(id));
            first_new.push(new);
            if new {
                new_ids.push(id);
            }
        }
        drop(seen);
        // Each new repo's folder as it will be once the delta is in (only `project`
        // placement counts folders).
        if !folders.is_empty() {
            for id in &new_ids {
                if let Some(f) = folders.get_mut(ring::folder(id)) {
                    f.1 += 1;
                }
            }
        }
        let ahead = scored.filter(|s| {
            placement == Placement::Repo
                && s.owners.len() == first_new.len()
                && s.fp == ring::fingerprint(&self.members)
        });
        let owners: Vec<Option<(usize, f64)>> = match ahead {
            Some(s) => s
                .owners
                .iter()
                .zip(&first_new)
                .filter(|(_, new)| **new)
                .map(|(o, _)| *o)
                .collect(),
            None => {
                let items: Vec<(&str, u32)> = new_ids
                    .iter()
                    .map(|id| {
                        let len = folders.get(ring::folder(id)).map_or(1, |f| f.1);
                        (*id, len as u32)
                    })
                    .collect();
                ring.owners_placed(placement, &items)
            }
        };
        // Each owner's list of operations sized once for its new repos (grown one push at
        // a time, its reallocations were ~5 % of a 1M apply).
        let mut per_owner = vec![0usize; self.members.len()];
        for (i, _) in owners.iter().flatten() {
            if let Some(n) = per_owner.get_mut(*i) {
                *n += 1;
            }
        }
        for (m, n) in self.members.iter().zip(per_owner) {
            self.out.reserve(m.uuid, n);
        }
        let mut new_owners = new_ids.iter().zip(owners).peekable();
        let mut buf = KeyBuf::default();
        let zones = if self.replicas.any_replicated() {
            self.zone_numbers(&self.members)
        } else {
            Vec::new()
        };
        let mut index: Option<Arc<str>> = None;
        let Fleet {
            census,
            index_names,
            members,
            out,
            unknown_held,
            saved,
            unsaved,
            fetch_now,
            replicas,
            replicated,
            repos,
            registry,
            ..
        } = self;
        // A new repo's owner (scored ahead, or now) and replicas.
        let mut owner_of = |e: &Entry, index: &str, repos: &BTreeMap<Arc<str>, Box<Repo>>| {
            let scored = match new_owners.peek() {
                Some((id, o)) if **id == e.id => {
                    let o = *o;
                    new_owners.next();
                    o
                }
                _ => {
                    ring.owner_scored(placement.key(&e.id, folder_len(repos, &e.id) + 1, &mut buf))
                }
            };
            // SPEC §13: a repo with replicas is placed on the top R ([`reconcile_replicas`]
            // picks its primary).
            let want = replicas.for_index(index);
            let replica = (want > 1).then(|| {
                let len = folders.get(ring::folder(&e.id)).map_or(1, |f| f.1);
                let key = placement.key(&e.id, len, &mut buf);
                Box::new(ReplicaSet {
                    want,
                    placement: ring
                        .top_r(key, usize::from(want), &zones)
                        .into_iter()
                        .filter_map(|i| members.get(i).map(|m| m.uuid))
                        .collect(),
                })
            });
            (scored, replica)
        };
        let mut interned = |name: &str| match &index {
            Some(n) if **n == *name => n.clone(),
            _ => index.insert(intern(index_names, name)).clone(),
        };
        let listing = delta.added.iter().chain(&delta.changed);
        let mut placing = Placing {
            members,
            registry,
            saved,
            unknown_held,
            out,
            fetch_now,
            replicated,
            repos,
            unsaved,
        };
        if new_ids.len() >= PARALLEL_COUNT && first_new.iter().all(|new| *new) {
            // A part of new repos only (a whole index comes so): the census counts them on
            // a thread of its own, a batch at a time, while this one places the next (the
            // census was a third of the apply, and the loop's apply is the critical path of
            // a whole index: docs/scale.md, fifteenth session). Counting in batches is
            // counting all at once ([`Census::add_all`]).
            std::thread::scope(|s| {
                let (tx, rx) = std::sync::mpsc::channel::<Vec<(Arc<str>, crate::census::Facts)>>();
                let counting = s.spawn(move || rx.into_iter().for_each(|b| census.add_all(b)));
                let mut batch = Vec::with_capacity(COUNT_BATCH);
                for e in listing {
                    let index = interned(&e.index);
                    let (scored, replica) = owner_of(e, &index, placing.repos);
                    batch.push(placing.add(e, index, scored, replica));
                    if batch.len() == COUNT_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(COUNT_BATCH));
                        // The receiver lives until every batch is sent.
                        let _ = tx.send(full);
                    }
                }
                let _ = tx.send(batch);
                drop(tx);
                if let Err(p) = counting.join() {
                    std::panic::resume_unwind(p);
                }
            });
        } else {
            // The new repos' census entries, added together ([`Census::add_all`]) before
            // any census change of a repo already in the fleet.
            let mut to_count: Vec<(Arc<str>, crate::census::Facts)> =
                Vec::with_capacity(new_ids.len());
            for (e, new) in listing.zip(first_new.iter().copied()) {
                let index = interned(&e.index);
                // One search finds an existing repo with its key (a whole index is 1M new
                // repos: four searches per repo were an eighth of the apply in `memcmp`).
                let id = e.id.as_str();
                if !new && !to_count.is_empty() {
                    census.add_all(std::mem::take(&mut to_count));
                }
                if !new
                    && let Some((key, repo)) = placing
                        .repos
                        .range_mut::<str, _>((
                            std::ops::Bound::Included(id),
                            std::ops::Bound::Included(id),
                        ))
                        .next()
                {
                    let before = repo.facts();
                    if *repo.url != *e.url {
                        repo.url = Arc::from(e.url.as_str());
                        for h in repo.holders.keys() {
                            placing.out.push(*h, &e.id, Op::Upsert(e.url.clone()));
                        }
                    }
                    repo.index = index;
                    repo.metadata = e.metadata.clone();
                    reconcile(&e.id, repo, placing.out);
                    let after = repo.facts();
                    placing.unsaved.insert(key.clone());
                    census.update(key, &before, &after);
                    continue;
                }
                let (scored, replica) = owner_of(e, &index, placing.repos);
                to_count.push(placing.add(e, index, scored, replica));
            }
            census.add_all(to_count);
        }
        // A folder that crossed a split boundary: its other repos change key (half of
        // each bucket when it grows past a power of two).
        for (f, (before, after)) in folders {
            if !f.ends_with('/') {
                continue; // an id that is its own folder
            }
            debug_assert_eq!(after, folder_count(&self.repos, f), "{f}");
            if ring::split_bits(before) == ring::split_bits(after) {
                continue;
            }
            let live = live_set(&self.registry);
            let mut moves = OwnerMoves {
                members: &self.members,
                out: &mut self.out,
                census: &mut self.census,
                unsaved: &mut self.unsaved,
                gate: &mut self.gate,
                live: &live,
            };
            for (id, repo) in self
                .repos
                .range_mut::<str, _>((std::ops::Bound::Included(f), std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(f))
                .filter(|(k, _)| ring::folder(k) == f)
            {
                let scored = ring.owner_scored(placement.key(id, after, &mut buf));
                moves.set(id, repo, scored);
            }
        }
        if !was_ready && last {
            self.saved.clear();
            // The first index content: what workers hold beyond it has left the index.
            for (w, id) in self.unknown_held.take_all() {
                self.out
                    .push(w, &id, Op::Drop(DropReason::RemovedFromIndex));
            }
        }
        self.flush()
    }

    /// A worker passed the handshake. Until its `Holdings` arrive it gets no deltas.
    /// A suspect worker coming back moves nothing; a new or dead one joins (repos that hash
    /// to it move there, make before break); a new weight is a planned move too.
    pub fn connect(&mut self, intro: &Introduction<'_>, now_ms: i64) -> Result<Joined, NoFreeId> {
        let a = self.registry.admit(intro, now_ms)?;
        let weight = self.registry.weight_for(intro.weight);
        if weight < intro.weight {
            tracing::warn!(
                "worker {} ({}) announced weight {}; clamped to max_worker_weight {weight}",
                a.id,
                intro.name,
                intro.weight
            );
        }
        self.out.synced.remove(&intro.uuid);
        self.registry_dirty = true;
        if let Some(old) = a.evicted {
            tracing::info!(
                "worker id {} of long-dead worker {old} now belongs to {} ({})",
                a.id,
                intro.uuid,
                intro.name
            );
        }
        let recompute = match a.previous {
            Some(WorkerState::Alive) => {
                tracing::info!(
                    "worker {} ({}) reconnected; the older connection is replaced",
                    a.id,
                    intro.name
                );
                a.weight_changed
            }
            Some(WorkerState::Suspect) => {
                tracing::info!(
                    "worker {} ({}): suspect → alive; nothing moves",
                    a.id,
                    intro.name
                );
                a.weight_changed
            }
            Some(WorkerState::Dead) => {
                tracing::info!(
                    "worker {} ({}): dead → alive; it joins again",
                    a.id,
                    intro.name
                );
                true
            }
            None => {
                tracing::info!("worker {} ({}) joined as {}", a.id, intro.name, intro.uuid);
                true
            }
        };
        if a.weight_changed {
            tracing::info!("worker {} ({}) has a new weight {weight}", a.id, intro.name,);
        }
        if recompute {
            self.recompute_owners();
        }
        Ok(Joined {
            id: a.id,
            new_id: a.new_id,
            sends: self.flush(),
        })
    }

    /// The worker's `Holdings`: record what it has, then send it the delta to its target
    /// set (always one delta, possibly empty, so it knows it is in sync).
    pub fn holdings(&mut self, uuid: Uuid, holdings: &Holdings, now_ms: i64) -> Vec<Outgoing> {
        let last_report = match self.registry.get_mut(&uuid) {
            Some(w) if w.state == WorkerState::Alive => {
                w.last_seen_ms = now_ms;
                w.last_report_id
            }
            _ => return Vec::new(),
        };
        self.out.synced.insert(uuid);
        self.out.saw(uuid, last_report);
        self.unknown_held.forget(&uuid);
        let held: foldhash::HashMap<&str, &gitmirror_wire::HeldRepo> =
            holdings.repos.iter().map(|h| (h.id.as_str(), h)).collect();
        // Held repos the fleet does not know, found by the one search below (a restart at
        // 1M repos searches the B-tree a million times: a second search each was a third
        // of the re-attachment's CPU, most of it comparing ids).
        let mut unknown: Vec<&gitmirror_wire::HeldRepo> = Vec::new();
        // The repos this can change: those it reports, those it held before and those it
        // owns (O(held), not O(repos): a restart at 1M repos reconnects 1,000 workers).
        // Most of them are as the coordinator left them (a reconnection): one look-up each
        // finds that, and only the others are changed, recounted and saved.
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        for h in &holdings.repos {
            let Some((id, repo)) = self.repos.get_key_value(h.id.as_str()) else {
                unknown.push(h);
                continue;
            };
            // A follower is placed there too (SPEC §13): its claim is believed as the
            // owner's (a copy to verify, not a stranger's).
            let owner = repo.owner == Some(uuid) || repo.is_follower(&uuid);
            let holds = repo.holders.mirrored(&uuid);
            if holds.is_none() && !owner {
                // Never told to hold it: the claim is not believed (issue 10). Once the
                // owner's copy is verified, this one goes (to the worker's trash).
                if repo
                    .owner
                    .is_some_and(|o| repo.holders.mirrored(&o) == Some(true))
                {
                    self.out.push(uuid, id, Op::Drop(DropReason::Moved));
                } else if repo.replica.is_none() {
                    // Not yet: it goes when the owner's copy is verified.
                    self.out.remember_stale(uuid, id);
                }
                continue;
            }
            // A claim can lower the flag, never raise it: a complete mirror the owner
            // claims but has not shown is fetched now, and that success verifies it.
            if repo.is_follower(&uuid) {
                // A follower's role and sources live in its memory only, and its copy is
                // verified by a follow order (its refs hashed against the primary's), not
                // by an upstream fetch: a follow order on every connection.
                self.out
                    .push(uuid, id, Op::Upsert(String::from(&*repo.url)));
            } else if h.mirrored && owner && holds != Some(true) {
                self.fetch_now.push((uuid, id.to_string()));
            } else if !h.mirrored
                && repo.owner == Some(uuid)
                && holds == Some(false)
                && repo
                    .holders
                    .keys()
                    .any(|w| *w != uuid && repo.holders.mirrored(w) == Some(true))
            {
                // An owner back with its copy still to make while another worker holds a
                // verified one (a hand-over cut by its restart): the assignment again, so
                // that it is named the holders again (they live in its memory only, SPEC
                // §13). O(such repos) a connection.
                self.out
                    .push(uuid, id, Op::Upsert(String::from(&*repo.url)));
            } else if h.mirrored
                && !owner
                && holds == Some(true)
                && repo.replica.is_none()
                && let Some(o) = repo.owner
                && repo.holders.mirrored(&o) == Some(false)
            {
                // A verified holder back while the owner's copy is still to make (a
                // hand-over from it cut by its restart: its grants died with it): the
                // owner is assigned the repo again, which names this holder and grants
                // it anew ([`crate::handover`]). O(such repos) a connection.
                self.out.push(o, id, Op::Upsert(String::from(&*repo.url)));
            }
            if holds.is_none()
                || (holds == Some(true) && !h.mirrored)
                || *h.url != *repo.url
                || needs_reconcile(repo, &self.out)
            {
                touched.insert(id.clone());
            }
        }
        // Replicated repos placed on it that it does not hold yet (a joining follower:
        // the placement was made before it was in sync). O(replicated repos) a
        // connection, nothing at R = 1.
        touched.extend(
            self.replicated
                .iter()
                .filter(|id| {
                    !held.contains_key(&***id)
                        && self.repos.get(&***id).is_some_and(|r| {
                            r.placement().contains(&uuid) && !r.holders.contains_key(&uuid)
                        })
                })
                .cloned(),
        );
        touched.extend(
            self.census
                .held_by(uuid)
                .chain(self.census.owned_urls(uuid).map(|(id, _)| id))
                .filter(|id| !held.contains_key(&***id))
                .cloned(),
        );
        // Per repo: what it holds, then the repo's reconciliation.
        for id in &touched {
            let Some(repo) = self.repos.get_mut(id) else {
                continue;
            };
            let before = repo.facts();
            match held.get(&**id) {
                Some(h) => {
                    match repo.holders.mirrored(&uuid) {
                        Some(true) if h.mirrored => {}
                        Some(false) => {}
                        _ => repo
                            .holders
                            .insert(uuid, Hold::pending(self.out.mark(&uuid))),
                    }
                    if *h.url != *repo.url {
                        self.out
                            .push(uuid, id, Op::Upsert(String::from(&*repo.url)));
                    }
                }
                None => {
                    repo.holders.remove(&uuid);
                }
            }
            reconcile(id, repo, &mut self.out);
            self.census.update(id, &before, &repo.facts());
        }
        self.unsaved.extend(touched);
        for h in unknown {
            if self.index_ready {
                self.out
                    .push(uuid, &h.id, Op::Drop(DropReason::RemovedFromIndex));
            } else {
                self.unknown_held.insert(uuid, &h.id, &h.url, h.mirrored);
            }
        }
        self.out.ops.entry(uuid).or_default();
        self.flush()
    }

    /// The worker's connection is gone: alive → suspect. Nothing moves yet.
    pub fn disconnect(&mut self, uuid: Uuid, now_ms: i64) {
        self.out.synced.remove(&uuid);
        self.peer_planes.remove(&uuid);
        self.asked.retain(|_, a| a.worker != uuid);
        self.unknown_held.forget(&uuid);
        if self.registry.lost(&uuid, now_ms) {
            self.registry_dirty = true;
            if let Some(w) = self.registry.get(&uuid) {
                tracing::warn!(
                    "worker {} ({}): alive → suspect (connection lost); dead in {} unless it reconnects",
                    w.id,
                    w.name,
                    humantime::format_duration(Duration::from_millis(self.dead_after_ms as u64))
                );
            }
        }
    }

    /// Advance the clock: suspects past `dead_after` are dead and their repos move at once.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Outgoing> {
        let overdue = self.registry.overdue(now_ms, self.dead_after_ms);
        if overdue.is_empty() {
            return Vec::new();
        }
        for uuid in &overdue {
            self.registry.mark_dead(uuid, now_ms);
            if let Some(w) = self.registry.get(uuid) {
                let n = self.census.owned(uuid);
                tracing::warn!(
                    "worker {} ({}): suspect → dead; its {n} repos are reassigned",
                    w.id,
                    w.name
                );
            }
            self.forget_holdings(uuid);
        }
        self.registry_dirty = true;
        self.recompute_owners();
        self.flush()
    }

    /// A dead or removed worker holds nothing the fleet counts on.
    fn forget_holdings(&mut self, uuid: &Uuid) {
        self.out.synced.remove(uuid);
        let held: Vec<Arc<str>> = self.census.held_by(*uuid).cloned().collect();
        for id in &held {
            if let Some(repo) = self.repos.get_mut(id) {
                let before = repo.facts();
                repo.holders.remove(uuid);
                self.census.update(id, &before, &repo.facts());
            }
        }
        self.unsaved.extend(held);
    }

    /// `gitmirrord workers remove` (SPEC §17): its certificate is revoked, it is dead at
    /// once and its repos move now (its mirrors stay on its disk). `false`: a uuid the
    /// fleet never knew, now kept out too. The caller closes its connection.
    pub fn remove_worker(&mut self, uuid: Uuid, now_ms: i64) -> (bool, Vec<Outgoing>) {
        let was_live = self.registry.get(&uuid).is_some_and(|w| w.state.is_live());
        let known = self.registry.get(&uuid).is_some();
        self.registry.remove(uuid, now_ms);
        self.registry_dirty = true;
        self.unknown_held.forget(&uuid);
        if let Some(w) = self.registry.get(&uuid) {
            let n = self.census.owned(&uuid);
            tracing::warn!(
                "worker {} ({}) removed by an operator: its certificate is revoked and its {n} repos are reassigned",
                w.id,
                w.name
            );
        }
        self.forget_holdings(&uuid);
        if was_live {
            self.recompute_owners();
        }
        (known, self.flush())
    }

    /// `POST /api/workers/{id}/drain|undrain` (SPEC §5 planned move): a drained worker
    /// stays connected but leaves the ring; its repos go to the ring's next choice make
    /// before break (it keeps fetching them until their new owner reports them mirrored,
    /// then is told to drop them). Undraining is a join. Costs what a leave or a join
    /// costs ([`Fleet::recompute_owners`]): the repos it owns, or one challenge a repo.
    pub fn set_drained(&mut self, uuid: Uuid, drained: bool) -> Result<Drain, DrainError> {
        let Some(w) = self.registry.get(&uuid) else {
            return Err(DrainError::Unknown);
        };
        let (id, name, live) = (w.id, w.name.clone(), w.state.is_live());
        if drained && !w.drained && live && !self.registry.members().any(|m| m.uuid != uuid) {
            return Err(DrainError::LastMember { id });
        }
        if self.registry.set_drained(&uuid, drained) != Some(true) {
            return Ok(Drain {
                changed: false,
                moving: 0,
                sends: Vec::new(),
            });
        }
        self.registry_dirty = true;
        let moving = if drained { self.census.owned(&uuid) } else { 0 };
        if drained {
            tracing::warn!(
                "worker {id} ({name}) drained by an operator: its {moving} repos move to other workers, make before break"
            );
        } else {
            tracing::warn!(
                "worker {id} ({name}) undrained by an operator: it takes its share again"
            );
        }
        self.recompute_owners();
        Ok(Drain {
            changed: true,
            moving,
            sends: self.flush(),
        })
    }

    /// `POST /api/repos/{id}/block` (a takedown, issue 16): every holder is told to drop
    /// the repo (as a removal from the index: to the worker's trash), the repo leaves the
    /// fleet, and index entries for it are set aside until [`Fleet::unblock`]. A worker
    /// that still reports it afterwards is told to drop it again ([`Fleet::holdings`]
    /// treats it as not in the index). `false`: it was blocked already.
    pub fn block(&mut self, id: &str, b: crate::registry::Blocked) -> (bool, Vec<Outgoing>) {
        if !self.registry.block(id, b) {
            return (false, Vec::new());
        }
        self.registry_dirty = true;
        if let Some((key, repo)) = self.repos.remove_entry(id) {
            self.census.remove(&key, &repo.facts());
            self.unsaved.insert(key);
            self.gate.unwait(id);
            if let Some(o) = repo.owner {
                self.gate.release(&o, id);
            }
            let mut told: BTreeSet<Uuid> = repo.holders.keys().copied().collect();
            told.extend(repo.owner);
            for h in told {
                self.out.push(h, id, Op::Drop(DropReason::RemovedFromIndex));
            }
            self.blocked_entries.insert(
                id.to_owned(),
                Entry {
                    id: id.to_owned(),
                    url: String::from(&*repo.url),
                    index: repo.index.to_string(),
                    metadata: repo.metadata.clone(),
                },
            );
        }
        for (w, ..) in self.unknown_held.take(id) {
            self.out.push(w, id, Op::Drop(DropReason::RemovedFromIndex));
        }
        self.fetch_now.retain(|(_, r)| r != id);
        self.asked.remove(id);
        self.relists.remove(id);
        (true, self.flush())
    }

    /// Lift a block. A repo the index still lists comes back at once (as an index
    /// addition: a new owner, a clone); otherwise it comes back when an index lists it.
    /// `None`: it was not blocked.
    pub fn unblock(&mut self, id: &str) -> Option<(bool, Vec<Outgoing>)> {
        self.registry.unblock(id)?;
        self.registry_dirty = true;
        let sends = match self.blocked_entries.remove(id) {
            // Between the parts of a first index content: as one more part.
            Some(e) => self.apply_index_part(
                &Delta {
                    added: vec![e],
                    removed: Vec::new(),
                    changed: Vec::new(),
                },
                self.index_ready,
            ),
            None => Vec::new(),
        };
        Some((self.repos.contains_key(id), sends))
    }

    /// A blocked repo's index entry, if an index lists it.
    pub fn blocked_entry(&self, id: &str) -> Option<&Entry> {
        self.blocked_entries.get(id)
    }

    /// The delta without blocked repos: their entries are kept aside (added or changed)
    /// or forgotten (removed).
    fn set_blocked_aside(&mut self, delta: &Delta) -> Delta {
        for id in &delta.removed {
            if self.registry.blocked(id).is_some() {
                self.blocked_entries.remove(id);
            }
        }
        let mut keep = |entries: &[Entry]| -> Vec<Entry> {
            let mut v = Vec::with_capacity(entries.len());
            for e in entries {
                if self.registry.blocked(&e.id).is_some() {
                    tracing::info!(repo = %e.id, index = %e.index, "index entry skipped: blocked");
                    self.blocked_entries.insert(e.id.clone(), e.clone());
                } else {
                    v.push(e.clone());
                }
            }
            v
        };
        let added = keep(&delta.added);
        let changed = keep(&delta.changed);
        Delta {
            added,
            changed,
            removed: delta.removed.clone(),
        }
    }

    /// `gitmirrord workers approve`: the join token may enroll `uuid` once.
    pub fn approve_worker(&mut self, uuid: Uuid) {
        self.registry.approve(uuid);
        self.registry_dirty = true;
    }

    /// `uuid` enrolled with the certificate of fingerprint `fp` (after [`Fleet::connect`]).
    pub fn enrolled(&mut self, uuid: &Uuid, fp: String) {
        self.registry.enrolled(uuid, fp);
        self.registry_dirty = true;
    }

    /// `uuid` showed it kept its certificate (it presented it, or sent `Holdings` after
    /// `Enrolled`, which a worker does only once the certificate is on its disk).
    pub fn cert_confirmed(&mut self, uuid: &Uuid) {
        if self.registry.cert_confirmed(uuid) {
            self.registry_dirty = true;
        }
    }

    /// A batch of outcomes. Duplicates (`report_id` at or below the last recorded one)
    /// are skipped but still acknowledged. Call [`Fleet::recorded`] once the returned
    /// events are durable.
    pub fn outcomes(&mut self, uuid: Uuid, outcomes: &[Outcome], now_ms: i64) -> OutcomeReport {
        self.outcomes_from(uuid, outcomes, &[], now_ms)
    }

    /// [`Fleet::outcomes`] with each outcome's [`Provenance`] (`provenance[i]` for
    /// `outcomes[i]`; missing ones are upstream results of unknown hash).
    pub fn outcomes_from(
        &mut self,
        uuid: Uuid,
        outcomes: &[Outcome],
        provenance: &[Provenance],
        now_ms: i64,
    ) -> OutcomeReport {
        let Some(w) = self.registry.get_mut(&uuid) else {
            return OutcomeReport::default();
        };
        w.last_seen_ms = now_ms;
        if outcomes.iter().any(|o| o.report_id > w.last_report_id) {
            w.last_outcome_ms = Some(now_ms);
        }
        let worker_id = w.id;
        let mut seen = w.last_report_id;
        let mut report = OutcomeReport {
            upto: seen,
            batch: self.next_batch,
            ..Default::default()
        };
        self.next_batch += 1;
        for (i, o) in outcomes.iter().enumerate() {
            let prov = provenance.get(i).copied().unwrap_or_default();
            report.upto = report.upto.max(o.report_id);
            if o.report_id <= seen {
                continue;
            }
            if let Some((id, _)) = self.repos.get_key_value(o.repo.as_str()) {
                self.unsaved.insert(id.clone());
            }
            seen = o.report_id;
            let success = matches!(o.result, FetchResult::Cloned | FetchResult::Fetched);
            let leads = success && !prov.peer && self.leads_after(uuid, &o.repo);
            if leads {
                // Its upstream result makes it the primary (the first verified member of
                // the placement): promoted first, so that this result is judged and
                // published as the primary's (else a clone told to a primary that a join
                // then put second would never be published).
                self.promote(uuid, &o.repo, o.report_id);
            }
            let published = self
                .repos
                .get(o.repo.as_str())
                .is_none_or(|r| r.owner == Some(uuid));
            if !published || prov.peer {
                // A follower's result, or a copy from a peer (SPEC §13, C6): never an
                // event, a relist, a change time or a fetch count.
                self.apply_copy(uuid, worker_id, o, prov);
            } else if let Some(e) = self.apply_outcome(
                uuid,
                worker_id,
                o,
                now_ms,
                report.batch,
                &mut report.relists,
            ) {
                report.events.push(e);
            }
            self.out.saw(uuid, o.report_id);
        }
        report.sends = self.flush();
        report
    }

    /// Whether a success of `w` makes it the primary of replicated `id` although it is not
    /// now: it is in the placement and no member before it holds a verified copy.
    fn leads_after(&self, w: Uuid, id: &str) -> bool {
        let Some(repo) = self.repos.get(id) else {
            return false;
        };
        let Some(rs) = &repo.replica else {
            return false;
        };
        if repo.owner == Some(w) || !repo.holders.contains_key(&w) {
            return false;
        }
        rs.placement
            .iter()
            .take_while(|u| **u != w)
            .all(|u| repo.holders.mirrored(u) != Some(true))
            && rs.placement.contains(&w)
    }

    /// Verify `w`'s copy of `id` and reconcile (which makes it the primary).
    fn promote(&mut self, w: Uuid, id: &str, report_id: u64) {
        let Some(key) = self.repos.get_key_value(id).map(|(k, _)| k.clone()) else {
            return;
        };
        let Some(repo) = self.repos.get_mut(id) else {
            return;
        };
        let before = repo.facts();
        repo.holders.verify(&w, report_id);
        reconcile(id, repo, &mut self.out);
        self.census.update(&key, &before, &repo.facts());
    }

    /// A result that does not publish ([`Fleet::outcomes_from`]): a success verifies the
    /// holder only when its refs hash is the one held for the repo (an upstream result of
    /// unknown hash, from a fleet without peers or a worker below protocol 7, still does).
    fn apply_copy(&mut self, uuid: Uuid, worker_id: u32, o: &Outcome, prov: Provenance) {
        if !matches!(o.result, FetchResult::Cloned | FetchResult::Fetched) {
            return;
        }
        let Some((key, repo)) = self.repos.get_key_value(o.repo.as_str()) else {
            return;
        };
        if !repo.holders.contains_key(&uuid) {
            tracing::info!(repo = %o.repo, "worker {worker_id} reported a result for a repo it was not told to hold; ignored");
            return;
        }
        let verify = match prov.matches {
            Some(m) => m,
            None => !prov.peer,
        };
        if !verify {
            tracing::debug!(repo = %o.repo, "worker {worker_id}'s copy does not hash to the refs held for the repo (yet): not verified");
            return;
        }
        let key = key.clone();
        let Some(repo) = self.repos.get_mut(o.repo.as_str()) else {
            return;
        };
        let before = repo.facts();
        repo.holders.verify(&uuid, o.report_id);
        reconcile(&o.repo, repo, &mut self.out);
        if repo.holders.mirrored(&uuid) == Some(true) {
            self.gate.release(&uuid, &o.repo);
        }
        self.census.update(&key, &before, &repo.facts());
    }

    /// Apply one outcome to the repo's status; returns the event it makes, if any.
    ///
    /// Events (design.md "Events"): only the repo's current owner makes them. During a
    /// hand-off the old holder keeps fetching; its outcomes update the holders and the
    /// change time, but the same upstream change also reaches the new owner's mirror,
    /// whose clone or fetch reports it, so one upstream change gives one event. A clone
    /// whose refs equal the refs already published for the repo (a planned hand-off or a
    /// failover with no upstream change) makes no event: see [`RepoStatus::published`].
    fn apply_outcome(
        &mut self,
        uuid: Uuid,
        worker_id: u32,
        o: &Outcome,
        now_ms: i64,
        batch: u64,
        relists: &mut Vec<String>,
    ) -> Option<EventDraft> {
        let success = matches!(o.result, FetchResult::Cloned | FetchResult::Fetched);
        let cloned = matches!(o.result, FetchResult::Cloned);
        let changed = success && !o.changes.is_empty();
        // Protocol 2 workers cannot be asked to relist (`published::judge`).
        let can_relist = self.registry.get(&uuid).is_some_and(|w| w.protocol >= 3);
        let attempted = !matches!(o.result, FetchResult::Waiting { .. });
        let asked = match self.asked.get(o.repo.as_str()) {
            Some(a) if a.worker == uuid && attempted => {
                let a = *a;
                self.asked.remove(o.repo.as_str());
                (now_ms.saturating_sub(a.at_ms) <= Self::ASK_TTL_MS).then_some(a.trigger)
            }
            _ => None,
        };
        let Some((key, repo)) = self.repos.get_key_value(o.repo.as_str()) else {
            // Removed from the index meanwhile: no owner, so no event.
            self.stats.record_as(o, asked.unwrap_or_default());
            return None;
        };
        let st = &repo.status;
        // What is published, durable or about to be.
        let published = self.in_flight.get(key).map_or(st.published, |f| f.1);
        let trigger = asked.unwrap_or(if repo.owner != Some(uuid) {
            Trigger::Schedule
        } else if st.by.is_some_and(|b| b != uuid) {
            Trigger::Handover
        } else if cloned && published.is_none() && st.last_success_ms.is_none() {
            Trigger::Index
        } else {
            Trigger::Schedule
        });
        self.stats.record_as(o, trigger);
        let (key, before) = (key.clone(), repo.facts());
        self.history.outcome(&key, worker_id, o, now_ms);
        let repo = self.repos.get_mut(o.repo.as_str())?;
        let by_owner = repo.owner == Some(uuid);
        if success {
            repo.holders.verify(&uuid, o.report_id);
        }
        let st = &mut repo.status;
        let mut publish = false;
        let mut whole = cloned;
        let mut news: Vec<&gitmirror_wire::RefChange> = Vec::new();
        if by_owner {
            if st.by != Some(uuid) {
                *st = RepoStatus {
                    by: Some(uuid),
                    last_success_ms: st.last_success_ms,
                    last_change_ms: st.last_change_ms,
                    published: st.published,
                    published_refs: st.published_refs.take(),
                    ..RepoStatus::default()
                };
            }
            st.next_due_ms = Some(o.next_due_ms);
            match &o.result {
                FetchResult::Waiting { reason } => {
                    st.last_result = Some(LastResult::Waiting(bounded(reason, MAX_ERROR_LEN)));
                }
                result => {
                    st.fetches += 1;
                    st.last_fetch_ms = Some(o.finished_ms);
                    st.refs = Some(o.ref_count);
                    if let FetchResult::Failed { class, message } = result {
                        st.failures += 1;
                        let class = ErrorClass::from(*class);
                        st.last_error = Some(Box::new(LastError {
                            class,
                            message: bounded(message, MAX_ERROR_LEN),
                            time_ms: o.finished_ms,
                        }));
                        st.last_result = Some(LastResult::Failed(class));
                    } else {
                        st.last_success_ms = Some(o.finished_ms);
                        st.last_result = Some(LastResult::Ok);
                    }
                }
            }
            if success {
                let j = published::judge(published, st.published_refs.as_deref(), o, can_relist);
                if j.whole {
                    self.relists.remove(o.repo.as_str());
                }
                if j.relist {
                    let again = self
                        .relists
                        .get(o.repo.as_str())
                        .is_none_or(|asked| now_ms.saturating_sub(*asked) >= RELIST_AGAIN_MS);
                    if again {
                        tracing::info!(
                            repo = %o.repo,
                            "worker {worker_id} reported refs that differ from the published ones in a way its changes do not explain; asking it to relist"
                        );
                        self.relists.insert(key.clone(), now_ms);
                        relists.push(o.repo.clone());
                    }
                }
                whole = j.whole;
                if !j.news.is_empty() {
                    // Published once its event is durable (`durable`); judged against
                    // from now on.
                    self.in_flight.insert(key.clone(), (batch, j.published));
                    apply_published(
                        st.published_refs.get_or_insert_with(Box::default),
                        if whole {
                            EventKind::Cloned
                        } else {
                            EventKind::Updated
                        },
                        j.news.iter().map(|c| (c.name.as_str(), c.new.as_deref())),
                    );
                } else {
                    match self.in_flight.get_mut(&key) {
                        Some(f) => f.1 = j.published,
                        None => st.published = j.published,
                    }
                    if changed {
                        tracing::debug!(
                            repo = %o.repo,
                            "worker {worker_id} reported refs already published: no event"
                        );
                    }
                }
                publish = !j.news.is_empty();
                news = j.news;
            }
        }
        // A fetch that changed refs saw upstream change, whoever holds the mirror; a clone
        // only counts when it is news.
        if (changed && !cloned) || publish {
            st.last_change_ms = Some(st.last_change_ms.unwrap_or(0).max(o.finished_ms));
        }
        if success {
            reconcile(&o.repo, repo, &mut self.out);
            // A planned move completed: room for the next one to this worker.
            if repo.holders.mirrored(&uuid) == Some(true) {
                self.gate.release(&uuid, &o.repo);
            }
        }
        self.census.update(&key, &before, &repo.facts());
        if !publish {
            return None;
        }
        let kind = if whole {
            EventKind::Cloned
        } else if o.ref_count == 0 && o.changes.iter().all(|c| c.new.is_none()) {
            EventKind::Removed
        } else {
            EventKind::Updated
        };
        Some(EventDraft {
            time_ms: o.finished_ms,
            repo: o.repo.clone(),
            // The index's URL: a worker is not believed about where a repo lives.
            url: String::from(&*repo.url),
            worker: worker_id,
            kind,
            trigger,
            refs: news
                .into_iter()
                .map(|c| RefUpdate {
                    name: c.name.clone(),
                    old: c.old.clone(),
                    new: c.new.clone(),
                })
                .collect(),
            source: uuid,
            report_id: o.report_id,
        })
    }

    /// Follow orders (SPEC §13): `primary`'s changes of `repos` are durable; every other
    /// holder of each (its followers, in sync) is sent an upsert, which goes out as an
    /// `Assign7` naming the verified holders and the refs hash to copy
    /// ([`crate::handover::Handover::plan`]). O(R) a repo; repos without replicas, or
    /// whose primary is another worker by now, are skipped.
    pub fn follow(&mut self, primary: Uuid, repos: &[String]) -> Vec<Outgoing> {
        for id in repos {
            let Some(repo) = self.repos.get(id.as_str()) else {
                continue;
            };
            if repo.owner != Some(primary) || repo.replica.is_none() {
                continue;
            }
            let url = String::from(&*repo.url);
            let followers: Vec<Uuid> = repo
                .holders
                .keys()
                .copied()
                .filter(|h| *h != primary)
                .collect();
            for h in followers {
                self.out.push(h, id, Op::Upsert(url.clone()));
            }
        }
        self.flush()
    }

    /// Events up to `upto` from this worker are durable: later copies are duplicates.
    pub fn recorded(&mut self, uuid: Uuid, upto: u64) {
        if let Some(w) = self.registry.get_mut(&uuid)
            && upto > w.last_report_id
        {
            w.last_report_id = upto;
            self.registry_dirty = true;
        }
    }

    /// The events of outcome `batch` for `repos` are durable: what they publish is
    /// published. A repo with a later batch's events in flight keeps waiting for those.
    pub fn durable<'a>(&mut self, batch: u64, repos: impl IntoIterator<Item = &'a str>) {
        for id in repos {
            let Some((key, (b, digest))) = self.in_flight.remove_entry(id) else {
                continue;
            };
            if b != batch {
                self.in_flight.insert(key, (b, digest));
                continue;
            }
            if let Some(r) = self.repos.get_mut(id) {
                r.status.published = digest;
                self.unsaved.insert(key);
            }
        }
    }

    /// The events of outcome `batch` for `repos` could not be made durable (the outcomes
    /// are not acknowledged and will be sent again): what they would have published is
    /// dropped, so the outcomes sent again are judged against what durable events
    /// published, and are news again. A later batch's events in flight for the same repo
    /// stay: they are judged to be published on top of this one's, and if they become
    /// durable the re-sent outcome's changes are placed against them (or relisted).
    pub fn not_durable<'a>(&mut self, batch: u64, repos: impl IntoIterator<Item = &'a str>) {
        for id in repos {
            if self.in_flight.get(id).is_some_and(|(b, _)| *b == batch) {
                self.in_flight.remove(id);
            }
            // The per-batch ref values those events set go too.
            if let Some(r) = self.repos.get_mut(id) {
                r.status.published_refs = None;
            }
        }
    }

    /// Repos whose published digest waits for its events to be durable.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Hand the fleet the published refs of `id` for the next outcome batch (`None`
    /// forgets them afterwards): see [`RepoStatus::published_refs`].
    pub fn set_published_refs(&mut self, id: &str, refs: Option<PublishedRefs>) {
        if let Some(r) = self.repos.get_mut(id) {
            r.status.published_refs = refs.map(Box::new);
        }
    }

    /// Raise the recorded report ids to what the event log holds (after a crash the log may
    /// be ahead of `registry.json`).
    pub fn merge_report_ids(&mut self, ids: &HashMap<Uuid, u64>) {
        for (uuid, id) in ids {
            self.recorded(*uuid, *id);
        }
    }

    pub fn worker_status(&mut self, uuid: Uuid, s: &WorkerStatus, now_ms: i64) {
        if let Some(w) = self.registry.get_mut(&uuid) {
            w.disk_free_bytes = Some(s.disk_free_bytes);
            w.disk_total_bytes = Some(s.disk_total_bytes);
            w.disk_low = s.disk_low;
            w.active_fetches = Some(s.active_fetches);
            w.status = bounded(&s.summary, 500);
            w.last_seen_ms = now_ms;
            self.registry_dirty = true;
        }
    }

    /// Protocol 5 `Load`: kept for the per-worker series of `/metrics` (issue 16).
    pub fn worker_load(&mut self, uuid: Uuid, load: gitmirror_wire::WorkerLoad, now_ms: i64) {
        if let Some(w) = self.registry.get_mut(&uuid) {
            w.load = Some(load);
            w.last_seen_ms = now_ms;
        }
    }

    /// The worker applied deltas up to `seq`. Returns false for a `seq` never sent.
    pub fn assign_ack(&mut self, uuid: Uuid, seq: u64) -> bool {
        match self.registry.get_mut(&uuid) {
            Some(w) if seq < w.next_seq => {
                w.acked_seq = w.acked_seq.max(seq);
                true
            }
            _ => false,
        }
    }

    // ----- internals -----

    /// Owners after the live set changed. Rendezvous hashing lets this cost O(repos) per
    /// join or death instead of O(repos × workers) (SPEC §12: 10⁹ scores at 1M × 1,000):
    /// members that left only move the repos they owned, and a repo's owner after members
    /// joined is the best of its old owner and the newcomers. A weight change, or owners not
    /// yet computed, takes the full scan. The result is the same owners either way.
    fn recompute_owners(&mut self) {
        let before = (self.owners_known, self.members.clone());
        self.recompute_single_owners();
        // Replicated repos (SPEC §13): placed again on any change of the members, all of
        // them (design.md "Replicas": O(replicated repos × W log W) per join or leave).
        if !self.replicated.is_empty() && before != (true, self.members.clone()) {
            self.place_replicated(None);
        }
    }

    fn recompute_single_owners(&mut self) {
        let members = self.live_members();
        let old: HashMap<Uuid, f64> = self.members.iter().map(|m| (m.uuid, m.weight)).collect();
        let now: HashMap<Uuid, f64> = members.iter().map(|m| (m.uuid, m.weight)).collect();
        let reweighted = members.iter().any(|m| {
            old.get(&m.uuid)
                .is_some_and(|w| w.to_bits() != m.weight.to_bits())
        });
        let left: Vec<Uuid> = old
            .keys()
            .filter(|u| !now.contains_key(u))
            .copied()
            .collect();
        let joined: Vec<usize> = (0..members.len())
            .filter(|&i| !old.contains_key(&members[i].uuid))
            .collect();
        let incremental = self.owners_known && !reweighted;
        self.members = members;
        self.members_gen += 1;
        self.owners_known = true;
        if incremental && left.is_empty() && joined.is_empty() {
            return;
        }
        let members = &self.members;
        // Members prepared once, not once per repo (W hashes and an allocation each).
        let ring = ring::Ring::with(self.hashing, members);
        let index = member_index(members);
        // Repos of members that left (and repos without an owner): a full scan each.
        let mut orphans: Vec<Arc<str>> = Vec::new();
        for u in &left {
            // Nothing more is admitted to it; repos waiting for it are scored again.
            self.gate.forget(u);
            if incremental {
                orphans.extend(self.gate.waiting_for(u));
            }
        }
        if incremental {
            for u in &left {
                orphans.extend(self.census.owned_urls(*u).map(|(id, _)| id.clone()));
            }
            orphans.extend(self.census.unowned().cloned());
        }
        let live = live_set(&self.registry);
        let mut moves = OwnerMoves {
            members,
            out: &mut self.out,
            census: &mut self.census,
            unsaved: &mut self.unsaved,
            gate: &mut self.gate,
            live: &live,
        };
        let placement = self.placement;
        // Folder lengths only for the walks of every repo below (a death alone moves the
        // dead worker's repos: O(its repos), each folder counted on its own).
        let lens = if !incremental || !joined.is_empty() {
            folder_lens(placement, &self.repos)
        } else {
            Vec::new()
        };
        let mut buf = KeyBuf::default();
        if !incremental {
            let ids: Vec<Arc<str>> = self.repos.keys().cloned().collect();
            let items: Vec<(&str, u32)> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (&**id, len_at(&lens, i) as u32))
                .collect();
            let owners = ring.owners_placed(placement, &items);
            drop(items);
            for ((id, repo), scored) in self.repos.iter_mut().zip(owners) {
                moves.set(id, repo, scored);
            }
            return;
        }
        for id in orphans {
            let len = folder_len(&self.repos, &id);
            if let Some(repo) = self.repos.get_mut(&id) {
                moves.set(
                    &id,
                    repo,
                    ring.owner_scored(placement.key(&id, len, &mut buf)),
                );
            }
        }
        // Newcomers challenge every repo's owner: one hash a repo against its stored
        // winning score (scored afresh where it is unknown).
        if !joined.is_empty() {
            for (i, (id, repo)) in self.repos.iter_mut().enumerate() {
                if repo.replica.is_some() {
                    continue;
                }
                // The ring's choice: the owner, or the destination a planned move waits for.
                let target = moves.gate.target(id).or(repo.owner);
                let Some(owner) = target.and_then(|o| index.get(&o).copied()) else {
                    continue; // handled above: it had no owner
                };
                let key = placement.key(id, len_at(&lens, i), &mut buf);
                let mut best = if repo.owner_score.is_finite() {
                    (owner, repo.owner_score)
                } else {
                    match ring.owner_scored(key) {
                        Some(s) => s,
                        None => continue,
                    }
                };
                for &n in &joined {
                    let incumbent = members.get(best.0).map_or(Uuid::nil(), |m| m.uuid);
                    if let Some(score) = ring.challenge(key, n, best.1, incumbent) {
                        best = (n, score);
                    }
                }
                moves.set(id, repo, Some(best));
            }
        }
    }

    /// Admit planned moves waiting for destinations that got room (their mirrored reports
    /// came, or moves left): O(admitted) amortised, never a walk of the repos.
    fn refill(&mut self) {
        for dest in self.gate.take_freed() {
            while let Some(id) = self.gate.next_for(&dest) {
                let Some(repo) = self.repos.get_mut(&id) else {
                    continue;
                };
                let before = repo.facts();
                repo.owner = Some(dest);
                reconcile(&id, repo, &mut self.out);
                if repo.holders.mirrored(&dest) != Some(true) {
                    self.gate.admit(dest, &id);
                }
                self.census.update(&id, &before, &repo.facts());
                self.unsaved.insert(id);
            }
        }
    }

    /// Turn the pending operations into numbered deltas for workers in sync.
    fn flush(&mut self) -> Vec<Outgoing> {
        self.refill();
        // In worker order, so that the sends are the same for the same input.
        let mut ops: Vec<_> = std::mem::take(&mut self.out.ops).into_iter().collect();
        ops.sort_unstable_by_key(|(w, _)| *w);
        let mut sends = Vec::new();
        for (worker, mut ops) in ops {
            if !self.out.synced.contains(&worker) {
                continue;
            }
            // Stable: a repo's operations stay in the order they came, and the last wins.
            ops.sort_by(|a, b| a.0.cmp(&b.0));
            ops.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
            let mut delta = AssignDelta {
                seq: 0,
                upsert: Vec::new(),
                drop: Vec::new(),
            };
            let mut bytes = 0usize;
            let mut chunks = Vec::new();
            for (id, op) in ops {
                let size = id.len() + 16 + if let Op::Upsert(u) = &op { u.len() } else { 0 };
                if delta.upsert.len() + delta.drop.len() >= DELTA_MAX_ITEMS
                    || (bytes + size > DELTA_MAX_BYTES && bytes > 0)
                {
                    chunks.push(std::mem::replace(
                        &mut delta,
                        AssignDelta {
                            seq: 0,
                            upsert: Vec::new(),
                            drop: Vec::new(),
                        },
                    ));
                    bytes = 0;
                }
                bytes += size;
                match op {
                    Op::Upsert(url) => delta.upsert.push(RepoSpec { id, url }),
                    Op::Drop(reason) => delta.drop.push(DropOrder { id, reason }),
                }
            }
            chunks.push(delta);
            for mut d in chunks {
                d.seq = self.registry.take_seq(&worker);
                sends.push(Outgoing { worker, delta: d });
            }
            self.registry_dirty = true;
        }
        sends
    }

    // ----- queries -----

    /// The coordinator starts serving now: suspect workers restored from the registry get
    /// their whole `dead_after` from this moment ([`Registry::grace_suspects`]).
    pub fn serving_from(&mut self, now_ms: i64) {
        self.registry.grace_suspects(now_ms);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn worker(&self, uuid: &Uuid) -> Option<&WorkerRecord> {
        self.registry.get(uuid)
    }

    pub fn repos(&self) -> &BTreeMap<Arc<str>, Box<Repo>> {
        &self.repos
    }

    pub fn repo(&self, id: &str) -> Option<&Repo> {
        self.repos.get(id).map(|r| &**r)
    }

    /// Counts and ordered id sets, kept up to date (O(1) or one page per query).
    pub fn census(&self) -> &Census {
        &self.census
    }

    /// Whether the kept census equals one rebuilt from every repo: O(repos), for tests
    /// and benchmarks.
    /// The live (alive or suspect) workers as ring members.
    fn live_members(&self) -> Vec<Member> {
        self.registry
            .members()
            .map(|w| Member {
                uuid: w.uuid,
                weight: w.weight,
            })
            .collect()
    }

    /// Whether every repo's owner is the full ring's choice over the live workers (the
    /// incremental recompute must agree with it; for tests).
    pub fn owners_are_exact(&self) -> bool {
        let members = self.live_members();
        let ring = ring::Ring::with(self.hashing, &members);
        let lens = folder_lens(self.placement, &self.repos);
        let mut buf = KeyBuf::default();
        let zones = self.zone_numbers(&members);
        self.repos.iter().enumerate().all(|(i, (id, r))| {
            let key = self.placement.key(id, len_at(&lens, i), &mut buf);
            if let Some(rs) = &r.replica {
                let top: Vec<Uuid> = ring
                    .top_r(key, usize::from(rs.want), &zones)
                    .into_iter()
                    .map(|i| members[i].uuid)
                    .collect();
                return top == rs.placement;
            }
            let target = self.gate.target(id).or(r.owner);
            target == ring.owner(key).and_then(|i| members.get(i)).map(|m| m.uuid)
        })
    }

    /// Planned moves in flight (admitted: told to clone, not mirrored yet) and waiting
    /// for room (SPEC §5, plan C4): `gitmirror_planned_moves_pending`.
    pub fn planned_moves(&self) -> (usize, usize) {
        self.gate.pending()
    }

    /// Planned moves admitted to `worker` and not yet mirrored there.
    pub fn planned_moves_to(&self, worker: &Uuid) -> usize {
        self.gate.admitted_to(worker)
    }

    /// The destination a planned move of `id` waits for (its owner is still the old one).
    pub fn waiting_for(&self, id: &str) -> Option<Uuid> {
        self.gate.target(id)
    }

    /// The fingerprint the saved owners may carry: the members' when every owner is the
    /// ring's choice, none while planned moves wait (then a restart scores every repo and
    /// rebuilds the gate from the saved owners and holders).
    fn owners_fp(&self) -> Option<u64> {
        (self.owners_known && !self.gate.any_waiting()).then(|| self.fingerprint(&self.members))
    }

    /// The placement in force.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn census_is_exact(&self) -> bool {
        self.census == Census::from_facts(self.repos.iter().map(|(id, r)| (id, r.facts())))
    }

    /// Each repo's last outcomes and events, and the per-minute series.
    pub fn history(&self) -> &crate::history::History {
        &self.history
    }

    pub fn history_mut(&mut self) -> &mut crate::history::History {
        &mut self.history
    }

    /// Outcomes counted since start (duplicates excluded).
    pub fn fetch_stats(&self) -> &FetchStats {
        &self.stats
    }

    /// Whether the worker is connected and in sync.
    pub fn is_synced(&self, uuid: &Uuid) -> bool {
        self.out.synced.contains(uuid)
    }

    /// Up to `limit` repo ids after `after`, in id order, with whether more follow.
    pub fn page_all(&self, after: Option<&str>, limit: usize) -> crate::census::IdPage {
        let range = match after {
            Some(a) => self
                .repos
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.repos.range::<str, _>(..),
        };
        crate::census::take_page(range.map(|(id, _)| id), limit)
    }

    /// One line for `systemctl status`: O(workers).
    pub fn summary(&self) -> String {
        let alive = self
            .registry
            .iter()
            .filter(|w| w.state == WorkerState::Alive)
            .count();
        format!(
            "{alive} workers alive, {} repos, {} failing",
            self.census.total(),
            self.census.in_state(RepoState::Failing)
        )
    }

    /// Most fetches remembered as asked for; beyond, they read as `schedule`.
    pub const MAX_ASKED: usize = 100_000;

    /// An ask older than this is forgotten when the report comes (the fetch is due
    /// within a second; a report this late is not the one asked for).
    pub const ASK_TTL_MS: i64 = 600_000;

    /// The coordinator asks `worker`, the owner of `repo`, to fetch it for `trigger` (it
    /// sends `FetchNow`) at `now_ms`.
    pub fn asked(&mut self, repo: &str, worker: Uuid, trigger: Trigger, now_ms: i64) {
        let Some((id, r)) = self.repos.get_key_value(repo) else {
            return;
        };
        if r.owner != Some(worker) {
            return;
        }
        // Full: sweep the expired, but not on every ask (a sweep that frees nothing would
        // be repeated by each one, a walk of 100k on the main loop per request).
        if self.asked.len() >= Self::MAX_ASKED
            && now_ms.saturating_sub(self.asked_swept_ms) >= Self::ASK_TTL_MS / 10
        {
            self.asked_swept_ms = now_ms;
            self.asked
                .retain(|_, a| now_ms.saturating_sub(a.at_ms) <= Self::ASK_TTL_MS);
        }
        if self.asked.len() < Self::MAX_ASKED || self.asked.contains_key(repo) {
            let a = Asked {
                worker,
                trigger,
                at_ms: now_ms,
            };
            self.asked.insert(id.clone(), a);
        }
    }

    // ----- persistence -----

    /// Whether registry / repos changed since the last call.
    /// Whether the registry changed since the last call.
    /// `CoordMsg::FetchNow` to send: (worker, repo).
    pub fn take_fetch_now(&mut self) -> Vec<(Uuid, String)> {
        std::mem::take(&mut self.fetch_now)
    }

    pub fn take_registry_dirty(&mut self) -> bool {
        std::mem::take(&mut self.registry_dirty)
    }

    /// The repos changed since the last call, as the repo store's records (O(changed)).
    /// Repos changed since they were last taken for the repo store.
    pub fn unsaved_len(&self) -> usize {
        self.unsaved.len()
    }

    /// Whether the store's owner fingerprint is behind the members with nothing else to
    /// save (a change of members that moved no repo).
    pub fn owners_unsaved(&self) -> bool {
        self.unsaved.is_empty() && self.saved_owners != self.owners_fp()
    }

    /// The saved form of up to `limit` repos changed since they were last taken.
    pub fn take_repo_changes(&mut self, limit: usize) -> crate::repo_store::Changes {
        let ids: Vec<Arc<str>> = if self.unsaved.len() <= limit {
            std::mem::take(&mut self.unsaved).into_iter().collect()
        } else {
            let ids: Vec<Arc<str>> = self.unsaved.iter().take(limit).cloned().collect();
            for id in &ids {
                self.unsaved.remove(id);
            }
            ids
        };
        let repos = ids
            .into_iter()
            .map(|id| {
                let saved = self.repos.get(&id).map(|r| saved_repo(r));
                (id.to_string(), saved)
            })
            .collect();
        // Every owner in memory is the ring's choice over the current members (a change of
        // the members recomputes them at once). The store's fingerprint is unset before
        // the first records of a move and set once the last of them is taken.
        let now = self.owners_fp();
        let mut changes = crate::repo_store::Changes {
            repos,
            unset_owners: false,
            owners: None,
        };
        if now != self.saved_owners {
            if self.saved_owners.is_some() {
                changes.unset_owners = true;
                self.saved_owners = None;
            }
            if self.unsaved.is_empty() && now.is_some() {
                changes.owners = now;
                self.saved_owners = now;
            }
        }
        changes
    }

    pub fn registry_file(&self) -> RegistryFile {
        self.registry.to_file()
    }

    pub fn repos_file(&self) -> ReposFile {
        ReposFile {
            repos: self
                .repos
                .iter()
                .map(|(id, r)| (id.to_string(), saved_repo(r)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
