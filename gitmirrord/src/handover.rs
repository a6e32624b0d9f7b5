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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Entry;
    use crate::registry::{Introduction, Registry};
    use gitmirror_wire::{FetchResult, Holdings, Outcome};
    use std::time::Duration;

    // SPEC §13 replicas: the primary's upsert says `Primary` with nothing to copy; a
    // follower's says `Follower`, names the primary (first) and the refs hash, and the
    // primary is granted the follower's certificate; a follow order for a repo the
    // follower holds verified still names them.
    #[test]
    fn spec_13_followers_are_told_their_role_sources_and_hash() {
        let entries = (0..8).map(|i| Entry {
            id: format!("r/p{i}/n{i}"),
            url: format!("https://example.org/{i}.git"),
            index: "idx".into(),
            metadata: None,
        });
        let mut f = Fleet::from_entries(Duration::from_secs(4), Registry::new(10), entries);
        f.set_replicas(crate::replicas::Settings {
            default: 2,
            per_index: Default::default(),
        });
        f.finish_start(None);
        for n in 1..=2u128 {
            let intro = Introduction {
                uuid: Uuid::from_u128(n),
                previous_id: None,
                name: "w",
                weight: 1.0,
                software: "test",
                protocol: gitmirror_wire::PROTOCOL_VERSION,
                serve_url_base: None,
                addr: None,
            };
            f.connect(&intro, 0).unwrap();
            f.enrolled(&Uuid::from_u128(n), format!("fp{n}"));
            f.holdings(Uuid::from_u128(n), &Holdings { repos: Vec::new() }, 0);
        }
        let (id, primary) = f
            .repos()
            .iter()
            .map(|(id, r)| (id.to_string(), r.owner.unwrap()))
            .next()
            .unwrap();
        let follower = Uuid::from_u128(3 - primary.as_u128());
        let outcome = Outcome {
            report_id: 1,
            repo: id.clone(),
            url: String::new(),
            finished_ms: 1,
            duration_ms: 1,
            result: FetchResult::Cloned,
            changes: Vec::new(),
            ref_count: 1,
            refs_digest: 7,
            next_due_ms: 2,
        };
        let mut h = Handover::default();
        h.record(Arc::from(id.as_str()), [9; 32]);
        f.outcomes(primary, &[outcome], 1);
        // Its clone is durable: the follow order.
        let sends = f.follow(primary, std::slice::from_ref(&id));
        let peer_of = |u: &Uuid| {
            Some(PeerEntry {
                worker_id: f.worker(u)?.id,
                uuid: *u,
                fingerprint: f.worker(u)?.cert.clone()?,
                addr: "127.0.0.1:1".into(),
                zone: None,
            })
        };
        let to_follower = sends
            .iter()
            .find(|s| s.worker == follower && s.delta.upsert.iter().any(|u| u.id == id))
            .expect("a follow order to the follower");
        let plan = h.plan(&f, follower, &to_follower.delta, peer_of).unwrap();
        let spec = plan.delta.upsert.iter().find(|u| u.id == id).unwrap();
        assert_eq!(spec.role, RepoRole::Follower);
        assert_eq!(spec.sources, vec![f.worker(&primary).unwrap().id]);
        assert_eq!(spec.expect, Some([9; 32]));
        let fp = f.worker(&follower).unwrap().cert.clone().unwrap();
        assert_eq!(plan.grants[&primary][0].fingerprint, fp);
        // The primary's own upsert (a promotion, say): its role, nothing to copy.
        let plan = h
            .plan(&f, primary, &to_follower.delta, peer_of)
            .expect("a replicated repo's role is always said");
        let spec = plan.delta.upsert.iter().find(|u| u.id == id).unwrap();
        assert_eq!(spec.role, RepoRole::Primary);
        assert!(spec.sources.is_empty() && spec.expect.is_none());
    }
}
