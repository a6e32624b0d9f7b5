//! Hand-over from peers, the coordinator's side (SPEC §13, issue 12 step S2; design.md
//! "Peer plane"): the refs hash each repo's owner last reported, and, when a repo is
//! assigned to a worker of protocol 7 that does not hold it yet, the verified holder it
//! may copy it from, what that copy must hash to, and the grant the holder needs to serve
//! it. Pure: the main loop gives it the fleet and the peer planes it knows, and sends what
//! it returns.
//!
//! Cost: nothing for a fleet where no worker listens for peers (no hash is kept);
//! otherwise one hash per repo (~70 bytes) and O(upserts × holders) per assignment change.
//! An `Assign7` is the fleet's delta (≤ 10,000 items, ≤ 4 MiB) plus ~40 bytes an upsert
//! (role, sources, hash): still far below the 16 MiB frame limit.

use crate::fleet::Fleet;
use gitmirror_wire::{
    AssignDelta, AssignDelta7, PeerEntry, PeerGrant, RefsSha256, RepoRole, RepoSpec7,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

/// How long a holder keeps serving a grant once it lost the coordinator (milliseconds).
pub const LEASE_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct Handover {
    /// Refs SHA-256 of each repo as its owner last reported it (`Outcomes7`).
    refs: HashMap<Arc<str>, RefsSha256>,
}

/// An assignment change as protocol 7 says it, with what goes to others for it.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub delta: AssignDelta7,
    /// Directory entries of the holders named in `delta` (for the receiving worker).
    pub peers: Vec<PeerEntry>,
    /// Per holder: serve these repos to the receiving worker's certificate.
    pub grants: BTreeMap<Uuid, Vec<PeerGrant>>,
}

impl Handover {
    /// The owner of `id` reported a success that left refs hashing to `sha`.
    pub fn record(&mut self, id: Arc<str>, sha: RefsSha256) {
        self.refs.insert(id, sha);
    }

    /// `id` left the index.
    pub fn forget(&mut self, id: &str) {
        self.refs.remove(id);
    }

    pub fn expect(&self, id: &str) -> Option<RefsSha256> {
        self.refs.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// `delta` for worker `to`: each upserted repo that `to` does not hold mirrored (or
    /// follows: SPEC §13 replicas, the follow orders) and that another worker holds
    /// verified, with a listening peer plane (`peer_of`) and a known refs hash, names
    /// that holder as its source; a replicated repo says `to`'s role. `None` when no repo of `delta`
    /// has one (the plain `Assign` says the same) or `to` has no certificate (a holder
    /// could not tell it from anyone else).
    pub fn plan(
        &self,
        fleet: &Fleet,
        to: Uuid,
        delta: &AssignDelta,
        peer_of: impl Fn(&Uuid) -> Option<PeerEntry>,
    ) -> Option<Plan> {
        if self.refs.is_empty() || delta.upsert.is_empty() {
            return None;
        }
        let fingerprint = fleet.worker(&to)?.cert.clone()?;
        let mut peers: BTreeMap<u32, PeerEntry> = BTreeMap::new();
        let mut grants: BTreeMap<Uuid, Vec<PeerGrant>> = BTreeMap::new();
        let mut any = false;
        let upsert = delta
            .upsert
            .iter()
            .map(|s| {
                let mut spec = RepoSpec7 {
                    id: s.id.clone(),
                    url: s.url.clone(),
                    role: RepoRole::Primary,
                    sources: Vec::new(),
                    expect: None,
                    next_due_ms: None,
                };
                let Some(repo) = fleet.repo(&s.id) else {
                    return spec;
                };
                // SPEC §13 replicas: every worker but the primary follows; a role is news
                // to the worker even with nothing to copy (a promotion).
                if repo.replica.is_some() {
                    any = true;
                    if repo.owner != Some(to) {
                        spec.role = RepoRole::Follower;
                    }
                }
                let Some(expect) = self.expect(&s.id) else {
                    return spec;
                };
                if repo.holders.mirrored(&to) == Some(true) && spec.role == RepoRole::Primary {
                    return spec;
                }
                // The owner first (it made the hash), then the other verified holders.
                let mut holders: Vec<Uuid> = repo
                    .holders
                    .iter()
                    .filter(|(u, mirrored)| *mirrored && **u != to)
                    .map(|(u, _)| *u)
                    .collect();
                holders.sort_by_key(|u| Some(*u) != repo.owner);
                for h in holders {
                    let Some(entry) = peer_of(&h) else { continue };
                    spec.sources.push(entry.worker_id);
                    grants.entry(h).or_default().push(PeerGrant {
                        repo: s.id.clone(),
                        fingerprint: fingerprint.clone(),
                    });
                    peers.entry(entry.worker_id).or_insert(entry);
                }
                if !spec.sources.is_empty() {
                    spec.expect = Some(expect);
                    any = true;
                }
                spec
            })
            .collect();
        any.then(|| Plan {
            delta: AssignDelta7 {
                seq: delta.seq,
                upsert,
                drop: delta.drop.clone(),
            },
            peers: peers.into_values().collect(),
            grants,
        })
    }
}
