//! Indexes of upstream repos (SPEC §3): layout, `DEFAULTS`, validation, polling, deltas
//! and purge protection.
//!
//! INTERFACE STUB: bodies to be written; the public types and signatures are the contract
//! the rest of the coordinator codes against.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One configured index (`indexes:` in the coordinator config).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSource {
    pub name: String,
    /// Any git URL, a local git repository path, or a plain local directory.
    pub url: String,
    pub branch: Option<String>,
    pub poll_interval: Duration,
}

/// Settings that apply to all indexes.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    /// Where index checkouts and the applied state live (`<state_dir>/index`).
    pub dir: PathBuf,
    pub allow_file_urls: bool,
    /// Removals above this share of one index's repos are held back (SPEC §3.4).
    pub purge_protect_percent: f64,
}

/// A valid repo entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The repo id, e.g. `a/abc/abc`.
    pub id: String,
    /// The fetch URL (first element when the entry lists several).
    pub url: String,
    /// Name of the index it came from.
    pub index: String,
    /// Every other key of the entry (after `DEFAULTS`), uninterpreted.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An entry that was rejected, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

/// What changed in the effective (merged, applied) set of entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub added: Vec<Entry>,
    /// Repo ids removed.
    pub removed: Vec<String>,
    /// Entries whose URL (or metadata) changed.
    pub changed: Vec<Entry>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// `GET /api/index` view of one index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStatus {
    pub name: String,
    pub url: String,
    pub commit: Option<String>,
    pub last_poll: Option<String>,
    pub last_error: Option<String>,
    pub entries: usize,
    pub rejected: Vec<Rejected>,
    /// A held update (SPEC §3.4), if any.
    pub held: Option<HeldUpdate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldUpdate {
    pub commit: Option<String>,
    pub removals: usize,
    pub total: usize,
    pub percent: f64,
}

/// All configured indexes and the entry set applied so far.
pub struct Indexes {
    _private: (),
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no index named {0:?}")]
    Unknown(String),
    #[error("index {0:?} has no held update")]
    NothingHeld(String),
    #[error(transparent)]
    State(#[from] gitmirror_common::statefile::StateError),
}

impl Indexes {
    /// Load the applied state from `settings.dir` (a corrupt state file is an error).
    pub fn open(_sources: Vec<IndexSource>, _settings: IndexSettings) -> Result<Self, IndexError> {
        Ok(Self { _private: () })
    }

    /// The applied, merged entries (first index wins on a duplicate id).
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        static EMPTY: BTreeMap<String, Entry> = BTreeMap::new();
        &EMPTY
    }

    /// Pull every index that is due (all of them when `force`), re-read it if its commit
    /// changed, and return the change to the applied set. Blocking: runs git.
    pub fn poll(&mut self, _force: bool) -> Result<Delta, IndexError> {
        Ok(Delta::default())
    }

    /// Time until the next index is due for a poll.
    pub fn next_poll_in(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Apply the held update of index `name`.
    pub fn accept(&mut self, name: &str) -> Result<Delta, IndexError> {
        Err(IndexError::NothingHeld(name.to_owned()))
    }

    pub fn status(&self) -> Vec<IndexStatus> {
        Vec::new()
    }

    /// Replace the list of sources (config reload). Takes effect at the next poll.
    pub fn set_sources(&mut self, _sources: Vec<IndexSource>) {}
}
