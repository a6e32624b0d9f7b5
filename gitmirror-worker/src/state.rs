//! Worker state (SPEC §6, §10): the persisted identity, the repos held with the refs last
//! reported for each, and the outbox of outcomes the coordinator has not acknowledged yet.
//!
//! Both files go through `common::statefile`: crash-safe writes, and a file that does not
//! decode stops the daemon instead of being replaced with defaults.

use gitmirror_common::statefile::{self, StateError};
use gitmirror_wire::{FailureClass, FetchResult, HeldRepo, Outcome, RefChange};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const IDENTITY_FILE: &str = "identity.json";
pub const REPOS_FILE: &str = "repos.json";
const IDENTITY_KIND: &str = "worker-identity";
const REPOS_KIND: &str = "worker-repos";
const VERSION: u32 = 1;
const MODE: u32 = 0o644;

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

/// One held repo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repo {
    pub url: String,
    /// A complete mirror exists at the final path.
    pub mirrored: bool,
    /// Refs as last reported (in the outbox or acknowledged); changes are computed against
    /// these, never against the mirror's refs before a fetch (design.md).
    pub refs: Refs,
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
    /// adaptive interval (SPEC §7.2). Absent in files written before it existed.
    #[serde(default)]
    pub last_change_ms: Option<i64>,
    /// Last maintenance pass (repack, stale locks) and last connectivity check (Unix ms).
    #[serde(default)]
    pub last_maintenance_ms: Option<i64>,
    #[serde(default)]
    pub last_verify_ms: Option<i64>,
}

impl Repo {
    pub fn new(url: String, mirrored: bool) -> Self {
        Self {
            url,
            mirrored,
            refs: Refs::new(),
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
        }
    }
}

/// A mirror still to be removed from disk (persisted so a crash does not leave it behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposal {
    /// Delete the mirror.
    Delete,
    /// Move the mirror to `.trash/`.
    Trash,
}

/// Everything in `repos.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repos {
    pub repos: BTreeMap<String, Repo>,
    /// Outcomes not yet acknowledged, in `report_id` order.
    pub outbox: Vec<Outcome>,
    pub next_report_id: u64,
    /// Mirrors dropped by the coordinator whose removal from disk is not done yet.
    pub disposals: BTreeMap<String, Disposal>,
}

impl Default for Repos {
    fn default() -> Self {
        Self {
            repos: BTreeMap::new(),
            outbox: Vec::new(),
            next_report_id: 1,
            disposals: BTreeMap::new(),
        }
    }
}

impl Repos {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(REPOS_FILE)
    }

    /// Load `repos.json`; empty state when the file does not exist yet.
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        Ok(statefile::read_json(&Self::path(state_dir), REPOS_KIND, VERSION)?.unwrap_or_default())
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        statefile::write_json(&Self::path(state_dir), REPOS_KIND, VERSION, self, MODE)
    }

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
        let id = self.next_report_id;
        self.next_report_id += 1;
        outcome.report_id = id;
        if is_replaceable(&outcome) {
            self.outbox
                .retain(|o| o.repo != outcome.repo || !is_replaceable(o));
        }
        self.outbox.push(outcome);
        id
    }

    /// Forget outcomes the coordinator has recorded. Returns how many were dropped.
    pub fn acknowledge(&mut self, upto: u64) -> usize {
        let before = self.outbox.len();
        self.outbox.retain(|o| o.report_id > upto);
        before - self.outbox.len()
    }
}

fn is_replaceable(o: &Outcome) -> bool {
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
        assert_eq!(s.outbox[0].report_id, 2);
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
            .iter()
            .map(|o| (o.repo.as_str(), o.changes.len()))
            .collect();
        assert_eq!(kinds, vec![("r", 1), ("r", 0), ("r", 1), ("other", 0)]);
        assert!(s.outbox.windows(2).all(|w| w[0].report_id < w[1].report_id));
    }

    #[test]
    fn spec_10_round_trip_and_corruption_is_loud() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(Identity::load_or_create(d.path()).unwrap(), id);
        let mut s = Repos::default();
        s.repos
            .insert("a/abc/abc".into(), Repo::new("git://h/abc".into(), true));
        s.push_outcome(outcome("a/abc/abc", FetchResult::Cloned, vec![]));
        s.save(d.path()).unwrap();
        assert_eq!(Repos::load(d.path()).unwrap(), s);
        std::fs::write(Repos::path(d.path()), "gitmirror-state worker-repos v1\n{").unwrap();
        let e = Repos::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("repos.json"), "{e}");
        // A file written before the schedule fields existed still loads.
        std::fs::write(
            Repos::path(d.path()),
            r#"gitmirror-state worker-repos v1
{"repos":{"a/abc/abc":{"url":"git://h/abc","mirrored":true,"refs":{},"announced":true,
"last_fetch_ms":1,"last_success_ms":1,"failures":0,"failing":null,"next_due_ms":5,
"waiting_reported":false}},"outbox":[],"next_report_id":3,"disposals":{}}"#,
        )
        .unwrap();
        let old = Repos::load(d.path()).unwrap();
        assert_eq!(old.repos["a/abc/abc"].last_change_ms, None);
        assert_eq!(old.next_report_id, 3);
        std::fs::write(Repos::path(d.path()), "gitmirror-state worker-repos v1\n{").unwrap();
        let e = Repos::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("repos.json"), "{e}");
    }
}
