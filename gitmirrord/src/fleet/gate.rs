//! The gate of planned moves (SPEC §5 make before break at scale; plan fork-pools C4).
//!
//! A planned move (a join, a drain, a weight change, a placement switch, a folder split)
//! asks the destination to clone a repo the old owner still serves. Unbounded, a switch of
//! a 1M fleet makes every destination clone its whole new share before any scheduled
//! fetch, and doubles disk everywhere at once. So each destination takes at most
//! [`PLANNED_PER_WORKER`] planned moves at a time (*admitted*: told to clone, not yet
//! reported mirrored); the other repos it should own *wait*: they keep their old owner
//! (who keeps fetching and serving them) and sit in the destination's queue, admitted as
//! its mirrored reports free room. A move off a dead owner, or of a repo its owner has no
//! verified copy of, is not planned: it bypasses the gate.
//!
//! Owners stay a pure function of (placement key, live members, weights) as *targets*:
//! a waiting repo's target is recorded here, its owner is the old one. Nothing here is
//! saved: while repos wait, the saved owners carry no member fingerprint, so a restart
//! scores every repo again and the gate is rebuilt from the saved owners and holders
//! (who holds what is in them).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use uuid::Uuid;

/// Most planned moves admitted to one destination at a time.
pub const PLANNED_PER_WORKER: usize = 256;

#[derive(Debug, Default)]
pub struct Gate {
    /// Destination → repos it was told to clone by a planned move, not yet mirrored there.
    admitted: HashMap<Uuid, HashSet<Arc<str>>>,
    /// Repo → the destination it waits for (its owner is still the old one).
    waiting: HashMap<Arc<str>, Uuid>,
    /// Destination → repos waiting for it, oldest first. May hold stale entries (a repo
    /// whose target changed since, or that left): skipped when popped, so a refill costs
    /// O(admitted) amortised, never a walk of the repos.
    queues: HashMap<Uuid, VecDeque<Arc<str>>>,
    /// Destinations that got room since the last refill.
    freed: HashSet<Uuid>,
}

impl Gate {
    /// Whether `dest` can take one more planned move.
    pub fn has_room(&self, dest: &Uuid) -> bool {
        self.admitted.get(dest).map_or(0, HashSet::len) < PLANNED_PER_WORKER
    }

    /// `id` moves to `dest` by a planned move that is not complete yet.
    pub fn admit(&mut self, dest: Uuid, id: &Arc<str>) {
        self.admitted.entry(dest).or_default().insert(id.clone());
    }

    /// `id` is no longer a planned move in flight to `dest` (it is mirrored there, it
    /// left, or its owner changed): room for the next.
    pub fn release(&mut self, dest: &Uuid, id: &str) {
        if let Some(set) = self.admitted.get_mut(dest)
            && set.remove(id)
        {
            if set.is_empty() {
                self.admitted.remove(dest);
            }
            self.freed.insert(*dest);
        }
    }

    /// `id` waits for `dest` (replacing any earlier target).
    pub fn wait(&mut self, id: &Arc<str>, dest: Uuid) {
        if self.waiting.insert(id.clone(), dest) != Some(dest) {
            self.queues.entry(dest).or_default().push_back(id.clone());
        }
    }

    /// `id` waits no more (its target is its owner again, it moved, or it left).
    pub fn unwait(&mut self, id: &str) {
        self.waiting.remove(id);
    }

    /// The destination `id` waits for.
    pub fn target(&self, id: &str) -> Option<Uuid> {
        // Asked once per repo by a join's walk: no hashing while nothing waits.
        if self.waiting.is_empty() {
            return None;
        }
        self.waiting.get(id).copied()
    }

    /// Repos waiting for `dest`, e.g. to score them again when it leaves.
    pub fn waiting_for(&self, dest: &Uuid) -> Vec<Arc<str>> {
        self.waiting
            .iter()
            .filter(|(_, d)| *d == dest)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// `w` left the ring: nothing is admitted to it any more; repos waiting for it are
    /// scored again by the caller ([`Gate::waiting_for`]).
    pub fn forget(&mut self, w: &Uuid) {
        self.admitted.remove(w);
        self.queues.remove(w);
        self.freed.remove(w);
    }

    /// Destinations with room and a queue, cleared.
    pub fn take_freed(&mut self) -> Vec<Uuid> {
        let freed: Vec<Uuid> = self.freed.drain().collect();
        freed
            .into_iter()
            .filter(|w| self.queues.get(w).is_some_and(|q| !q.is_empty()))
            .collect()
    }

    /// The next repo still waiting for `dest`, if it has room; stale entries are dropped.
    pub fn next_for(&mut self, dest: &Uuid) -> Option<Arc<str>> {
        if !self.has_room(dest) {
            return None;
        }
        let q = self.queues.get_mut(dest)?;
        while let Some(id) = q.pop_front() {
            if self.waiting.get(&id) == Some(dest) {
                self.waiting.remove(&id);
                return Some(id);
            }
        }
        self.queues.remove(dest);
        None
    }

    /// Planned moves admitted (in flight) and waiting.
    pub fn pending(&self) -> (usize, usize) {
        (
            self.admitted.values().map(HashSet::len).sum(),
            self.waiting.len(),
        )
    }

    /// Planned moves admitted to `dest`.
    pub fn admitted_to(&self, dest: &Uuid) -> usize {
        self.admitted.get(dest).map_or(0, HashSet::len)
    }

    /// Whether any repo waits (then the owners are not all the ring's choice).
    pub fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}
