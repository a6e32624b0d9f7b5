//! Indexes of upstream repos (SPEC §3): layout, `DEFAULTS`, validation, polling, deltas
//! and purge protection.
//!
//! Each index has an *applied* state: the entries the coordinator works from, the newest
//! commit read, its rejections and a held update. It is persisted in
//! `<dir>/applied.json` whenever it changes, so a restart starts from the same entries
//! and an already applied commit causes no work. The *effective* set merges the applied
//! entries of all indexes, the first listed index winning a duplicate id.

mod layout;
mod source;
pub mod validate;

use gitmirror_common::statefile;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no index named {0:?}")]
    Unknown(String),
    #[error("index {0:?} has no held update")]
    NothingHeld(String),
    #[error(transparent)]
    State(#[from] gitmirror_common::statefile::StateError),
    #[error("index name {name:?} is not usable: {reason}")]
    InvalidName { name: String, reason: String },
}

/// The applied state file.
const STATE_FILE: &str = "applied.json";
const STATE_KIND: &str = "index";
const STATE_VERSION: u32 = 1;
/// Rejections logged per index commit; the rest are counted (all are in `status()`).
const MAX_LOGGED_REJECTIONS: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Applied {
    indexes: BTreeMap<String, IndexState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IndexState {
    url: String,
    /// The newest commit read; its entries are applied except held removals.
    /// `None` once the index left the configuration.
    commit: Option<String>,
    /// How the entries were read ([`Indexes::reader`]); a commit read differently is
    /// read again.
    reader: String,
    entries: BTreeMap<String, Entry>,
    rejected: Vec<Rejected>,
    held: Option<Held>,
}

/// Removals held back by purge protection (SPEC §3.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Held {
    commit: Option<String>,
    /// Ids still in `entries` that the newest commit no longer has.
    removals: Vec<String>,
    /// The index's applied repos when the update was held.
    total: usize,
}

impl Held {
    fn view(&self) -> HeldUpdate {
        HeldUpdate {
            commit: self.commit.clone(),
            removals: self.removals.len(),
            total: self.total,
            percent: percent(self.removals.len(), self.total),
        }
    }
}

fn percent(part: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

/// What is known of an index between polls (not persisted).
#[derive(Debug, Default)]
struct Runtime {
    /// `None`: due now.
    next_due: Option<Instant>,
    last_poll_ms: Option<i64>,
    last_error: Option<String>,
}

/// All configured indexes and the entry set applied so far.
pub struct Indexes {
    sources: Vec<IndexSource>,
    settings: IndexSettings,
    applied: Applied,
    runtime: HashMap<String, Runtime>,
    /// The effective set: the applied entries of all indexes, first listed wins.
    merged: BTreeMap<String, Entry>,
    /// Per index, the ids it provides that an earlier index already provides.
    conflicts: BTreeMap<String, Vec<Rejected>>,
    /// Entries each index contributes to `merged`.
    provided: HashMap<String, usize>,
    /// `set_sources` was called: the next poll re-merges even if no index changed.
    sources_changed: bool,
}

impl Indexes {
    /// Load the applied state from `settings.dir` (a corrupt state file is an error).
    pub fn open(sources: Vec<IndexSource>, settings: IndexSettings) -> Result<Self, IndexError> {
        check_names(&sources)?;
        statefile::ensure_dir(&settings.dir)?;
        source::write_git_config(&settings.dir)?;
        let applied: Applied =
            statefile::read_json(&settings.dir.join(STATE_FILE), STATE_KIND, STATE_VERSION)?
                .unwrap_or_default();
        let mut me = Self {
            sources,
            settings,
            applied,
            runtime: HashMap::new(),
            merged: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            provided: HashMap::new(),
            sources_changed: false,
        };
        // Conflicts were logged when they arose, before the restart.
        me.remerge(false);
        Ok(me)
    }

    /// The applied, merged entries (first index wins on a duplicate id).
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.merged
    }

    /// Pull every index that is due (all of them when `force`), re-read it if its commit
    /// changed, and return the change to the applied set. Blocking: runs git.
    ///
    /// A failing index keeps its last good entries; the failure is in `status()`. An error
    /// is returned only when the new applied state cannot be saved, and then nothing is
    /// applied (the next poll tries again).
    pub fn poll(&mut self, force: bool) -> Result<Delta, IndexError> {
        // Cloned only when something changes: a no-op poll of a large index stays cheap.
        let mut next: Option<Applied> = None;
        let now = Instant::now();
        for source in self.sources.clone() {
            let rt = self.runtime.entry(source.name.clone()).or_default();
            if !force && rt.next_due.is_some_and(|due| due > now) {
                continue;
            }
            rt.next_due = Some(now + source.poll_interval);
            rt.last_poll_ms = Some(gitmirror_common::now_ms());
            match self.pull(&source) {
                Ok(None) => self.record(&source.name, None),
                Ok(Some((commit, parsed))) => {
                    self.record(&source.name, None);
                    let next = next.get_or_insert_with(|| self.applied.clone());
                    let (entries, rejected) = (parsed.entries, parsed.rejected);
                    self.update(
                        next,
                        &source.name,
                        &source.url,
                        Some(commit),
                        entries,
                        rejected,
                    );
                }
                Err(e) => self.record(&source.name, Some(e)),
            }
        }
        // Indexes dropped from the configuration: all their entries go (purge protected).
        // One whose removal is already held waits for `accept`.
        let dropped: Vec<(String, String)> = self
            .applied
            .indexes
            .iter()
            .filter(|(name, _)| !self.sources.iter().any(|s| &s.name == *name))
            .filter(|(_, st)| !(st.commit.is_none() && st.held.is_some()))
            .map(|(name, st)| (name.clone(), st.url.clone()))
            .collect();
        for (name, url) in dropped {
            let next = next.get_or_insert_with(|| self.applied.clone());
            self.update(next, &name, &url, None, BTreeMap::new(), Vec::new());
        }
        self.commit_state(next)
    }

    /// Time until the next index is due for a poll.
    pub fn next_poll_in(&self) -> Duration {
        let now = Instant::now();
        let dropped_pending =
            self.applied.indexes.iter().any(|(name, st)| {
                st.held.is_none() && !self.sources.iter().any(|s| &s.name == name)
            });
        if dropped_pending {
            return Duration::ZERO;
        }
        self.sources
            .iter()
            .map(
                |s| match self.runtime.get(&s.name).and_then(|rt| rt.next_due) {
                    Some(due) => due.saturating_duration_since(now),
                    None => Duration::ZERO,
                },
            )
            .min()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Apply the held update of index `name`.
    pub fn accept(&mut self, name: &str) -> Result<Delta, IndexError> {
        let Some(state) = self.applied.indexes.get(name) else {
            return Err(if self.sources.iter().any(|s| s.name == name) {
                IndexError::NothingHeld(name.to_owned())
            } else {
                IndexError::Unknown(name.to_owned())
            });
        };
        let Some(held) = &state.held else {
            return Err(IndexError::NothingHeld(name.to_owned()));
        };
        let removals = held.removals.len();
        let mut next = self.applied.clone();
        let configured = self.sources.iter().any(|s| s.name == name);
        if let Some(st) = next.indexes.get_mut(name) {
            if let Some(held) = st.held.take() {
                for id in &held.removals {
                    st.entries.remove(id);
                }
            }
            if !configured && st.entries.is_empty() {
                next.indexes.remove(name);
            }
        }
        let delta = self.commit_state(Some(next))?;
        info!(index = name, removals, "held index removals accepted");
        Ok(delta)
    }

    pub fn status(&self) -> Vec<IndexStatus> {
        let empty = Runtime::default();
        self.order()
            .into_iter()
            .map(|name| {
                let state = self.applied.indexes.get(&name);
                let rt = self.runtime.get(&name).unwrap_or(&empty);
                let url = match self.sources.iter().find(|s| s.name == name) {
                    Some(s) => s.url.clone(),
                    None => state.map(|s| s.url.clone()).unwrap_or_default(),
                };
                let mut rejected = state.map(|s| s.rejected.clone()).unwrap_or_default();
                rejected.extend(self.conflicts.get(&name).into_iter().flatten().cloned());
                IndexStatus {
                    url,
                    commit: state.and_then(|s| s.commit.clone()),
                    last_poll: rt.last_poll_ms.map(gitmirror_common::rfc3339_ms),
                    last_error: rt.last_error.clone(),
                    entries: self.provided.get(&name).copied().unwrap_or(0),
                    rejected,
                    held: state.and_then(|s| s.held.as_ref()).map(Held::view),
                    name,
                }
            })
            .collect()
    }

    /// Replace the list of sources (config reload). Takes effect at the next poll.
    /// A source with an unusable or repeated name is left out and logged; validate
    /// names with [`validate::index_name`] when checking the config.
    pub fn set_sources(&mut self, sources: Vec<IndexSource>) {
        let mut kept: Vec<IndexSource> = Vec::new();
        for s in sources {
            if let Err(reason) = validate::index_name(&s.name) {
                warn!(index = s.name, "index left out: {reason}");
            } else if kept.iter().any(|k| k.name == s.name) {
                warn!(index = s.name, "index left out: the name is listed twice");
            } else {
                kept.push(s);
            }
        }
        for s in &kept {
            // A new or changed source is polled at once.
            if self.sources.iter().find(|old| old.name == s.name) != Some(s) {
                self.runtime.remove(&s.name);
            }
        }
        self.runtime
            .retain(|name, _| kept.iter().any(|s| &s.name == name));
        // The effective set follows at the next poll, which reports the change.
        self.sources = kept;
        self.sources_changed = true;
    }

    /// What, besides the commit, decides the entries read from it: a restart with another
    /// `allow_file_urls` or a release with other rules re-reads the same commit.
    fn reader(&self) -> String {
        format!(
            "layout v{}, allow_file_urls={}",
            layout::VERSION,
            self.settings.allow_file_urls
        )
    }

    /// Fetch one index; when its commit changed, read and parse it.
    fn pull(&self, source: &IndexSource) -> Result<Option<(String, layout::Parsed)>, String> {
        let fetched = source::fetch(source, &self.settings.dir)?;
        let unchanged = self.applied.indexes.get(&source.name).is_some_and(|s| {
            s.commit.as_deref() == Some(fetched.commit())
                && s.url == source.url
                && s.reader == self.reader()
        });
        if unchanged {
            return Ok(None);
        }
        let commit = fetched.commit().to_owned();
        let files = fetched.into_files()?;
        let parsed = layout::parse(&source.name, &files, self.settings.allow_file_urls);
        for r in parsed.rejected.iter().take(MAX_LOGGED_REJECTIONS) {
            warn!(
                index = source.name,
                commit,
                path = r.path,
                reason = r.reason,
                "index entry rejected"
            );
        }
        if parsed.rejected.len() > MAX_LOGGED_REJECTIONS {
            warn!(
                index = source.name,
                commit,
                "{} more index entries rejected; all are listed by GET /api/index",
                parsed.rejected.len() - MAX_LOGGED_REJECTIONS
            );
        }
        info!(
            index = source.name,
            commit,
            entries = parsed.entries.len(),
            rejected = parsed.rejected.len(),
            "index read"
        );
        Ok(Some((commit, parsed)))
    }

    /// Stage the new content of index `name` in `next`, holding back a large removal.
    fn update(
        &self,
        next: &mut Applied,
        name: &str,
        url: &str,
        commit: Option<String>,
        entries: BTreeMap<String, Entry>,
        rejected: Vec<Rejected>,
    ) {
        let Some(old) = next.indexes.get(name) else {
            // The first load has nothing to protect.
            if commit.is_some() {
                let state = IndexState {
                    url: url.to_owned(),
                    commit,
                    reader: self.reader(),
                    entries,
                    rejected,
                    held: None,
                };
                next.indexes.insert(name.to_owned(), state);
            }
            return;
        };
        let removals: Vec<String> = old
            .entries
            .keys()
            .filter(|id| !entries.contains_key(*id))
            .cloned()
            .collect();
        let total = old.entries.len();
        let limit = self.settings.purge_protect_percent;
        let held = if !removals.is_empty() && percent(removals.len(), total) > limit {
            Some(Held {
                commit: commit.clone(),
                removals,
                total,
            })
        } else {
            None
        };
        let mut entries = entries;
        if let Some(h) = &held {
            for id in &h.removals {
                if let Some(e) = old.entries.get(id) {
                    entries.insert(id.clone(), e.clone());
                }
            }
            if old.held.as_ref() != Some(h) {
                warn!(
                    index = name,
                    commit = h
                        .commit
                        .as_deref()
                        .unwrap_or("(index removed from the configuration)"),
                    "index update would remove {} of {} repos ({:.1}%, more than purge_protect_percent {limit}%); \
                     the removals are held. To accept them: POST /api/index/{name}/accept, or raise \
                     purge_protect_percent",
                    h.removals.len(),
                    h.total,
                    percent(h.removals.len(), h.total),
                );
            }
        } else if old.held.is_some() {
            info!(index = name, "held index removals are no longer pending");
        }
        if commit.is_none() && held.is_none() {
            next.indexes.remove(name);
            return;
        }
        let state = IndexState {
            url: url.to_owned(),
            commit,
            reader: self.reader(),
            entries,
            rejected,
            held,
        };
        next.indexes.insert(name.to_owned(), state);
    }

    /// Note the outcome of polling index `name`; log only changes of state.
    fn record(&mut self, name: &str, error: Option<String>) {
        let rt = self.runtime.entry(name.to_owned()).or_default();
        match (&rt.last_error, &error) {
            (None, Some(e)) => warn!(
                index = name,
                error = e,
                "index poll failed; keeping its last good entries"
            ),
            (Some(old), Some(e)) if old != e => {
                warn!(
                    index = name,
                    error = e,
                    "index poll still failing, differently"
                )
            }
            (Some(_), None) => info!(index = name, "index poll works again"),
            _ => {}
        }
        rt.last_error = error;
    }

    /// Save `next` if it differs, make it the applied state and return the change of the
    /// effective set (which a new order of sources alone can change too).
    fn commit_state(&mut self, next: Option<Applied>) -> Result<Delta, IndexError> {
        match next {
            Some(next) if next != self.applied => {
                let path = self.settings.dir.join(STATE_FILE);
                statefile::write_json(&path, STATE_KIND, STATE_VERSION, &next, 0o600)?;
                self.applied = next;
            }
            _ if !self.sources_changed => return Ok(Delta::default()),
            _ => {}
        }
        self.sources_changed = false;
        let before = std::mem::take(&mut self.merged);
        self.remerge(true);
        Ok(diff(&before, &self.merged))
    }

    /// Configured indexes in order, then those only in the applied state (by name).
    fn order(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sources.iter().map(|s| s.name.clone()).collect();
        for name in self.applied.indexes.keys() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// Recompute the effective set from the applied state.
    fn remerge(&mut self, log_new_conflicts: bool) {
        let mut merged: BTreeMap<String, Entry> = BTreeMap::new();
        let mut conflicts: BTreeMap<String, Vec<Rejected>> = BTreeMap::new();
        let mut provided: HashMap<String, usize> = HashMap::new();
        for name in self.order() {
            let Some(state) = self.applied.indexes.get(&name) else {
                continue;
            };
            for (id, e) in &state.entries {
                if let Some(winner) = merged.get(id) {
                    let reason = format!("conflict: id already provided by index {}", winner.index);
                    conflicts.entry(name.clone()).or_default().push(Rejected {
                        path: id.clone(),
                        reason,
                    });
                } else {
                    *provided.entry(name.clone()).or_default() += 1;
                    merged.insert(id.clone(), e.clone());
                }
            }
        }
        if log_new_conflicts {
            for (name, list) in &conflicts {
                for r in list {
                    if !self.conflicts.get(name).is_some_and(|old| old.contains(r)) {
                        warn!(
                            index = name,
                            path = r.path,
                            reason = r.reason,
                            "index entry rejected"
                        );
                    }
                }
            }
        }
        self.merged = merged;
        self.conflicts = conflicts;
        self.provided = provided;
    }
}

/// Fetch index `source` into `dir` without reading it: benchmarks time git's copy apart.
#[doc(hidden)]
pub fn prefetch(source: &IndexSource, dir: &std::path::Path) -> Result<(), String> {
    source::fetch(source, dir).map(|_| ())
}

/// Bytes the applied state takes in `dir` (for benchmarks and docs/scale.md).
#[doc(hidden)]
pub fn state_bytes(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join(STATE_FILE)).map_or(0, |m| m.len())
}

fn check_names(sources: &[IndexSource]) -> Result<(), IndexError> {
    let mut seen = BTreeSet::new();
    for s in sources {
        validate::index_name(&s.name).map_err(|reason| IndexError::InvalidName {
            name: s.name.clone(),
            reason,
        })?;
        if !seen.insert(s.name.as_str()) {
            return Err(IndexError::InvalidName {
                name: s.name.clone(),
                reason: "listed twice".into(),
            });
        }
    }
    Ok(())
}

/// The change from `before` to `after`, each list sorted by id.
fn diff(before: &BTreeMap<String, Entry>, after: &BTreeMap<String, Entry>) -> Delta {
    let mut delta = Delta::default();
    for (id, e) in after {
        match before.get(id) {
            None => delta.added.push(e.clone()),
            Some(old) if old != e => delta.changed.push(e.clone()),
            Some(_) => {}
        }
    }
    delta.removed = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .cloned()
        .collect();
    delta
}
