//! Worker state (SPEC §6, §10): the persisted identity, the repos held with the refs last
//! reported for each, and the outbox of outcomes the coordinator has not acknowledged yet.
//!
//! Both files go through `common::statefile`: crash-safe writes, and a file that does not
//! decode stops the daemon instead of being replaced with defaults.

use gitmirror_common::statefile::{self, StateError};
use gitmirror_wire::{FailureClass, FetchResult, HeldRepo, Outcome, RefChange};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const IDENTITY_FILE: &str = "identity.json";
pub const REPOS_FILE: &str = "repos.json";
const IDENTITY_KIND: &str = "worker-identity";
const REPOS_KIND: &str = "worker-repos";
const VERSION: u32 = 1;
pub(crate) const MODE: u32 = 0o644;

/// Ref name → hex object id.
pub type Refs = BTreeMap<String, String>;

/// Who this worker is, across restarts (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub uuid: Uuid,
    /// The id the coordinator gave last time.
    pub worker_id: Option<u32>,
}

impl Identity {
    /// Load `identity.json`, creating a new identity on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join(IDENTITY_FILE);
        if let Some(id) = statefile::read_json(&path, IDENTITY_KIND, VERSION)? {
            return Ok(id);
        }
        let id = Self {
            uuid: Uuid::new_v4(),
            worker_id: None,
        };
        id.save(state_dir)?;
        tracing::info!(uuid = %id.uuid, path = %path.display(), "created a new worker identity");
        Ok(id)
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        statefile::write_json(
            &state_dir.join(IDENTITY_FILE),
            IDENTITY_KIND,
            VERSION,
            self,
            MODE,
        )
    }
}

/// One held repo, as the worker keeps it in memory and journals it. The refs last
/// reported are not here: they live on disk (`store`) and are read for the fetch that needs
/// them; their count and digest are enough for everything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repo {
    pub url: String,
    /// A complete mirror exists at the final path.
    pub mirrored: bool,
    /// Number and digest (`gitmirror_wire::refs`) of the refs last reported.
    #[serde(default)]
    pub ref_count: u32,
    #[serde(default)]
    pub refs_digest: u64,
    /// A successful outcome (`Cloned`) has been reported for this repo; later successes are
    /// `Fetched`.
    pub announced: bool,
    pub last_fetch_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    /// Consecutive failures.
    pub failures: u32,
    /// Class of the last failure while failing, for one log line per state change.
    pub failing: Option<FailureClass>,
    /// Unix ms of the next planned attempt.
    pub next_due_ms: i64,
    /// `Waiting{disk}` has been reported since the last attempt.
    pub waiting_reported: bool,
    /// When upstream last changed, as far as this worker knows (Unix ms): the last fetch
    /// that found new refs, or for a new clone its newest branch commit. Drives the
    /// adaptive interval (SPEC §7.2).
    #[serde(default)]
    pub last_change_ms: Option<i64>,
    /// Last maintenance pass (repack, stale locks) and last connectivity check (Unix ms).
    #[serde(default)]
    pub last_maintenance_ms: Option<i64>,
    #[serde(default)]
    pub last_verify_ms: Option<i64>,
    /// The coordinator asked for the refs in full (`CoordMsg::Relist`; design.md "Published
    /// refs and relists"): the next successful fetch reports every ref as a change from
    /// no refs.
    #[serde(default)]
    pub relist: bool,
}

impl Repo {
    pub fn new(url: String, mirrored: bool) -> Self {
        Self {
            url,
            mirrored,
            ref_count: 0,
            refs_digest: refs_digest(&Refs::new()),
            announced: false,
            last_fetch_ms: None,
            last_success_ms: None,
            failures: 0,
            failing: None,
            next_due_ms: 0,
            waiting_reported: false,
            last_change_ms: None,
            last_maintenance_ms: None,
            last_verify_ms: None,
            relist: false,
        }
    }

    /// Record `refs` as the ones last reported (their count and digest).
    pub fn set_refs(&mut self, refs: &Refs) {
        self.ref_count = u32::try_from(refs.len()).unwrap_or(u32::MAX);
        self.refs_digest = refs_digest(refs);
    }
}

/// A mirror still to be removed from disk (persisted so a crash does not leave it behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposal {
    /// Delete the mirror (journaled by releases before issue 10; now every drop trashes).
    Delete,
    /// Move the mirror to `.trash/`.
    Trash,
}

/// The worker's state in memory: held repos, outbox, disposals.
#[derive(Debug, Clone, PartialEq)]
pub struct Repos {
    pub repos: BTreeMap<String, Repo>,
    /// Outcomes not yet acknowledged, by `report_id`.
    pub outbox: BTreeMap<u64, Outcome>,
    /// Per repo, the report id of its replaceable outcome in the outbox (see
    /// [`Repos::push_outcome`]), so replacing one costs a lookup, not a scan.
    replaceable: HashMap<String, u64>,
    pub next_report_id: u64,
    /// Mirrors dropped by the coordinator whose removal from disk is not done yet.
    pub disposals: BTreeMap<String, Disposal>,
}

impl Default for Repos {
    fn default() -> Self {
        Self {
            repos: BTreeMap::new(),
            outbox: BTreeMap::new(),
            replaceable: HashMap::new(),
            next_report_id: 1,
            disposals: BTreeMap::new(),
        }
    }
}

impl Repos {
    /// What the coordinator needs after a reconnect to send the difference.
    pub fn holdings(&self) -> Vec<HeldRepo> {
        self.repos
            .iter()
            .map(|(id, r)| HeldRepo {
                id: id.clone(),
                url: r.url.clone(),
                mirrored: r.mirrored,
            })
            .collect()
    }

    /// Queue an outcome, giving it the next report id. An outcome that carries no
    /// information beyond "latest state" replaces an older one of the same kind for that
    /// repo, so the outbox stays bounded while the coordinator is away; outcomes with ref
    /// changes or a first clone are always kept.
    pub fn push_outcome(&mut self, mut outcome: Outcome) -> u64 {
        outcome.report_id = self.next_report_id;
        let id = outcome.report_id;
        self.insert_outcome(outcome);
        id
    }

    /// Put an outcome that already has its report id into the outbox (replaying the
    /// journal does this for every one it finds).
    pub fn insert_outcome(&mut self, outcome: Outcome) {
        let id = outcome.report_id;
        self.next_report_id = self.next_report_id.max(id.saturating_add(1));
        if is_replaceable(&outcome)
            && let Some(old) = self.replaceable.insert(outcome.repo.clone(), id)
            && old != id
        {
            self.outbox.remove(&old);
        }
        self.outbox.insert(id, outcome);
    }

    /// Forget outcomes the coordinator has recorded. Returns how many were dropped.
    pub fn acknowledge(&mut self, upto: u64) -> usize {
        let kept = self.outbox.split_off(&upto.saturating_add(1));
        let dropped = std::mem::replace(&mut self.outbox, kept);
        for o in dropped.values() {
            if self.replaceable.get(&o.repo) == Some(&o.report_id) {
                self.replaceable.remove(&o.repo);
            }
        }
        dropped.len()
    }
}

/// `repos.json` of format v1 (the release before the journal): every repo with its refs.
/// Read only to migrate it (`store`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReposV1 {
    pub repos: BTreeMap<String, RepoV1>,
    pub outbox: Vec<Outcome>,
    pub next_report_id: u64,
    pub disposals: BTreeMap<String, Disposal>,
}

/// One repo of [`ReposV1`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoV1 {
    pub url: String,
    pub mirrored: bool,
    pub refs: Refs,
    pub announced: bool,
    pub last_fetch_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub failures: u32,
    pub failing: Option<FailureClass>,
    pub next_due_ms: i64,
    pub waiting_reported: bool,
    #[serde(default)]
    pub last_change_ms: Option<i64>,
    #[serde(default)]
    pub last_maintenance_ms: Option<i64>,
    #[serde(default)]
    pub last_verify_ms: Option<i64>,
}

impl ReposV1 {
    pub const KIND: &'static str = REPOS_KIND;
    pub const VERSION: u32 = 1;

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(REPOS_FILE)
    }

    /// Load `repos.json` v1; `None` when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, StateError> {
        statefile::read_json(&Self::path(state_dir), Self::KIND, Self::VERSION)
    }

    /// Split into the v2 in-memory state and the refs of each repo.
    pub fn upgrade(self) -> (Repos, BTreeMap<String, Refs>) {
        let mut state = Repos::default();
        let mut all_refs = BTreeMap::new();
        for (id, r) in self.repos {
            let mut repo = Repo {
                url: r.url,
                mirrored: r.mirrored,
                ref_count: 0,
                refs_digest: 0,
                announced: r.announced,
                last_fetch_ms: r.last_fetch_ms,
                last_success_ms: r.last_success_ms,
                failures: r.failures,
                failing: r.failing,
                next_due_ms: r.next_due_ms,
                waiting_reported: r.waiting_reported,
                last_change_ms: r.last_change_ms,
                last_maintenance_ms: r.last_maintenance_ms,
                last_verify_ms: r.last_verify_ms,
                relist: false,
            };
            repo.set_refs(&r.refs);
            if !r.refs.is_empty() {
                all_refs.insert(id.clone(), r.refs);
            }
            state.repos.insert(id, repo);
        }
        for o in self.outbox {
            state.insert_outcome(o);
        }
        state.next_report_id = state.next_report_id.max(self.next_report_id);
        state.disposals = self.disposals;
        (state, all_refs)
    }
}

/// Apply reported changes to `refs`.
pub fn apply_changes(refs: &mut Refs, changes: &[RefChange]) {
    for c in changes {
        match &c.new {
            Some(new) => {
                refs.insert(c.name.clone(), new.clone());
            }
            None => {
                refs.remove(&c.name);
            }
        }
    }
}

pub fn is_replaceable(o: &Outcome) -> bool {
    o.changes.is_empty() && !matches!(o.result, FetchResult::Cloned)
}

/// The digest of a ref set that outcomes carry (`gitmirror_wire::refs`).
pub fn refs_digest(refs: &Refs) -> u64 {
    gitmirror_wire::refs::digest(refs.iter().map(|(n, o)| (n.as_str(), o.as_str())))
}

/// Changes from `old` (refs last reported) to `new` (refs now), sorted by ref name.
pub fn ref_changes(old: &Refs, new: &Refs) -> Vec<RefChange> {
    let mut out = Vec::new();
    for (name, oid) in new {
        match old.get(name) {
            Some(prev) if prev == oid => {}
            prev => out.push(RefChange {
                name: name.clone(),
                old: prev.cloned(),
                new: Some(oid.clone()),
            }),
        }
    }
    for (name, oid) in old {
        if !new.contains_key(name) {
            out.push(RefChange {
                name: name.clone(),
                old: Some(oid.clone()),
                new: None,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(pairs: &[(&str, &str)]) -> Refs {
        pairs
            .iter()
            .map(|(n, o)| (n.to_string(), o.to_string()))
            .collect()
    }

    fn outcome(repo: &str, result: FetchResult, changes: Vec<RefChange>) -> Outcome {
        Outcome {
            report_id: 0,
            repo: repo.into(),
            url: "u".into(),
            finished_ms: 0,
            duration_ms: 0,
            result,
            changes,
            ref_count: 0,
            refs_digest: 0,
            next_due_ms: 0,
        }
    }

    #[test]
    fn spec_8_changes_against_reported_refs() {
        let old = refs(&[
            ("refs/heads/a", "1"),
            ("refs/heads/b", "2"),
            ("refs/tags/t", "3"),
        ]);
        let new = refs(&[
            ("refs/heads/a", "1"),
            ("refs/heads/b", "9"),
            ("refs/heads/c", "4"),
        ]);
        let c = ref_changes(&old, &new);
        assert_eq!(
            c,
            vec![
                RefChange {
                    name: "refs/heads/b".into(),
                    old: Some("2".into()),
                    new: Some("9".into())
                },
                RefChange {
                    name: "refs/heads/c".into(),
                    old: None,
                    new: Some("4".into())
                },
                RefChange {
                    name: "refs/tags/t".into(),
                    old: Some("3".into()),
                    new: None
                },
            ]
        );
        assert!(ref_changes(&new, &new).is_empty());
        // A first clone lists every ref with no old value.
        assert!(
            ref_changes(&Refs::new(), &new)
                .iter()
                .all(|c| c.old.is_none() && c.new.is_some())
        );
    }

    #[test]
    fn outbox_ids_increase_and_acks_drop_them() {
        let mut s = Repos::default();
        let a = s.push_outcome(outcome("r", FetchResult::Cloned, vec![]));
        let b = s.push_outcome(outcome("r", FetchResult::Fetched, vec![]));
        assert_eq!((a, b), (1, 2));
        assert_eq!(s.acknowledge(1), 1);
        assert_eq!(s.outbox.len(), 1);
        assert_eq!(s.outbox.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(s.acknowledge(5), 1);
        assert_eq!(s.next_report_id, 3);
    }

    #[test]
    fn outbox_stays_bounded_but_keeps_changes() {
        let mut s = Repos::default();
        let change = RefChange {
            name: "refs/heads/a".into(),
            old: None,
            new: Some("1".into()),
        };
        s.push_outcome(outcome("r", FetchResult::Cloned, vec![change.clone()]));
        for _ in 0..100 {
            s.push_outcome(outcome("r", FetchResult::Fetched, vec![]));
            s.push_outcome(outcome(
                "r",
                FetchResult::Failed {
                    class: FailureClass::Transient,
                    message: "x".into(),
                },
                vec![],
            ));
        }
        s.push_outcome(outcome("r", FetchResult::Fetched, vec![change]));
        s.push_outcome(outcome("other", FetchResult::Fetched, vec![]));
        let kinds: Vec<_> = s
            .outbox
            .values()
            .map(|o| (o.repo.as_str(), o.changes.len()))
            .collect();
        assert_eq!(kinds, vec![("r", 1), ("r", 0), ("r", 1), ("other", 0)]);
        assert!(s.outbox.iter().all(|(k, o)| *k == o.report_id));
    }

    #[test]
    fn spec_10_identity_round_trip_and_v1_corruption_is_loud() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(Identity::load_or_create(d.path()).unwrap(), id);
        // A v1 file written before the schedule fields existed still loads.
        std::fs::write(
            ReposV1::path(d.path()),
            r#"gitmirror-state worker-repos v1
{"repos":{"a/abc/abc":{"url":"git://h/abc","mirrored":true,"refs":{"refs/heads/a":"1"},"announced":true,
"last_fetch_ms":1,"last_success_ms":1,"failures":0,"failing":null,"next_due_ms":5,
"waiting_reported":false}},"outbox":[],"next_report_id":3,"disposals":{}}"#,
        )
        .unwrap();
        let (state, refs) = ReposV1::load(d.path()).unwrap().unwrap().upgrade();
        assert_eq!(state.repos["a/abc/abc"].last_change_ms, None);
        assert_eq!(state.repos["a/abc/abc"].ref_count, 1);
        assert_eq!(refs["a/abc/abc"].len(), 1);
        assert_eq!(state.next_report_id, 3);
        std::fs::write(
            ReposV1::path(d.path()),
            "gitmirror-state worker-repos v1\n{",
        )
        .unwrap();
        let e = ReposV1::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("repos.json"), "{e}");
    }
}
