//! Indexes of upstream repos (SPEC §3): layout, `DEFAULTS`, validation, polling, deltas
//! and purge protection.
//!
//! Each index has an *applied* state: the entries the coordinator works from, the newest
//! commit read, its rejections and a held update. It is persisted in `<dir>/applied.state`
//! whenever it changes, so a restart starts from the same entries and an already applied
//! commit causes no work. The *effective* set is the applied entries of all indexes, the
//! first listed index winning a duplicate id; it is not kept as a copy, only the ids each
//! index loses to an earlier one (see docs/design.md, "Index read at scale").

mod layout;
mod source;
pub mod validate;

use gitmirror_common::statefile::{self, StateError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

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
    /// `credentials` for private index URLs (SPEC §16); replaced on SIGHUP, re-read when
    /// a file changes.
    pub credentials: gitmirror_common::credentials::SharedCredentials,
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
    /// Every other key of the entry (after `DEFAULTS`), uninterpreted: the JSON object's
    /// text, shared by entries with the same keys (`None` when there are none). A map per
    /// repo cost ~700 MB at 1M repos; [`Entry::metadata_map`] decodes it when shown.
    pub metadata: Option<Arc<str>>,
}

impl Entry {
    /// The metadata as keys (checked when read or loaded, so it always decodes).
    pub fn metadata_map(&self) -> Map<String, Json> {
        decode_metadata(self.metadata.as_deref())
    }
}

/// Metadata text (as [`Entry::metadata`] holds it) as keys; empty for none.
pub fn decode_metadata(text: Option<&str>) -> Map<String, Json> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// A valid entry as the applied state keeps it, keyed by its id in [`Entries`]: about
/// 100 bytes at 1M entries where an [`Entry`] takes near 1 KB. The index name is where it
/// is kept; the metadata is its keys as JSON text, shared between entries with the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub url: Box<str>,
    /// `None` when the entry has no other keys.
    pub metadata: Option<Arc<str>>,
}

/// One index's entries by id.
pub type Entries = BTreeMap<Box<str>, Stored>;

impl Stored {
    /// The metadata as keys. The text was checked when read or loaded (see `load_state`),
    /// so it always decodes.
    pub fn metadata_map(&self) -> Map<String, Json> {
        decode_metadata(self.metadata.as_deref())
    }

    fn entry(&self, id: &str, index: &str) -> Entry {
        Entry {
            id: id.to_owned(),
            url: String::from(&*self.url),
            index: index.to_owned(),
            metadata: self.metadata.clone(),
        }
    }
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

    /// Entries added, changed and removed.
    pub fn len(&self) -> usize {
        self.added.len() + self.removed.len() + self.changed.len()
    }

    /// This delta as parts of at most `max` entries each (at least one part), to be
    /// applied in order: removals first, then changes, then additions. A removed id that
    /// is also added or changed is left out (applying the whole delta ignores it too), so
    /// no part removes a repo that a later part brings back. A 1M-entry index arriving
    /// whole held the main loop for 8.5 s (docs/scale.md "Index deltas in parts").
    pub fn into_parts(self, max: usize) -> Vec<Delta> {
        let max = max.max(1);
        if self.len() <= max {
            return vec![self];
        }
        let Delta {
            added,
            removed,
            changed,
        } = self;
        // A whole index is 1M additions and no removal: no set of every id then (it was
        // ~0.2 s on the poller before the first part went out).
        let removed: Vec<String> = if removed.is_empty() {
            removed
        } else {
            let updated: std::collections::HashSet<&str> = added
                .iter()
                .chain(&changed)
                .map(|e| e.id.as_str())
                .collect();
            removed
                .into_iter()
                .filter(|id| !updated.contains(id.as_str()))
                .collect()
        };
        // Each part's lists sized once (an entry is ~100 bytes: grown by doubling, a part
        // of 65,536 was copied over and over).
        let total = removed.len() + changed.len() + added.len();
        let mut parts: Vec<Delta> = (0..total.div_ceil(max)).map(|_| Delta::default()).collect();
        let pos = spread(removed, 0, max, &mut parts, |d| &mut d.removed);
        let pos = spread(changed, pos, max, &mut parts, |d| &mut d.changed);
        spread(added, pos, max, &mut parts, |d| &mut d.added);
        parts
    }
}

/// Put `items` at positions `start..` of a delta cut in parts of `max` (part `k` holds
/// positions `k * max..(k + 1) * max`), into the list `list` picks; the next position.
fn spread<T>(
    items: Vec<T>,
    start: usize,
    max: usize,
    parts: &mut [Delta],
    list: impl Fn(&mut Delta) -> &mut Vec<T>,
) -> usize {
    let mut pos = start;
    let mut left = items.len();
    let mut items = items.into_iter();
    while left > 0 {
        let k = pos / max;
        let take = ((k + 1) * max - pos).min(left);
        let Some(part) = parts.get_mut(k) else { break };
        let v = list(part);
        v.reserve_exact(take);
        v.extend(items.by_ref().take(take));
        pos += take;
        left -= take;
    }
    pos
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

/// The applied state file: header line, postcard-encoded [`Applied`], CRC-32 of it.
const STATE_FILE: &str = "applied.state";
const STATE_KIND: &str = "index";
/// v3: the v2 payload (postcard) compressed as one LZ4 block; v2 files are migrated.
const STATE_VERSION: u32 = 3;
/// The uncompressed format of the previous release.
const STATE_V2: u32 = 2;
/// The JSON state of releases before; migrated at start and kept as `applied.json.v1.bak`.
const V1_FILE: &str = "applied.json";
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
    #[serde(deserialize_with = "entries_in_bulk")]
    entries: Entries,
    rejected: Vec<Rejected>,
    held: Option<Held>,
}

/// The entries as saved (in id order) collected first and built in bulk: serde's
/// `BTreeMap` inserts each one, a search comparing ids with long common prefixes along
/// the path (~4 % of a 1M start's CPU). The same map either way, duplicates included
/// (the last of a key wins).
fn entries_in_bulk<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Entries;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of index entries")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
            // The length is the file's word: reserve no more than a fleet's worth.
            let mut pairs = Vec::with_capacity(m.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(pair) = m.next_entry::<Box<str>, Stored>()? {
                pairs.push(pair);
            }
            Ok(pairs.into_iter().collect())
        }
    }
    d.deserialize_map(Pairs)
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
    /// Per index, the ids it has that an earlier index provides, with that index's name:
    /// with them, the effective set needs no copy of the entries.
    conflicts: BTreeMap<String, BTreeMap<Box<str>, String>>,
    /// Entries each index contributes to the effective set.
    provided: HashMap<String, usize>,
    /// The order of indexes the effective set was last worked out in.
    merged_order: Vec<String>,
    /// `set_sources` was called: the next poll re-merges even if no index changed.
    sources_changed: bool,
}

impl Indexes {
    /// Load the applied state from `settings.dir` (a corrupt state file is an error).
    pub fn open(sources: Vec<IndexSource>, settings: IndexSettings) -> Result<Self, IndexError> {
        check_names(&sources)?;
        statefile::ensure_dir(&settings.dir)?;
        source::write_git_config(&settings.dir, &sources)?;
        let applied = load_state(&settings.dir)?;
        let mut me = Self {
            sources,
            settings,
            applied,
            runtime: HashMap::new(),
            conflicts: BTreeMap::new(),
            provided: HashMap::new(),
            merged_order: Vec::new(),
            sources_changed: false,
        };
        // Conflicts were logged when they arose, before the restart.
        me.merged_order = me.order();
        me.remerge(false);
        Ok(me)
    }

    /// The applied, merged entries (first index wins on a duplicate id), index by index in
    /// the configured order and by id within each. Built as they are taken.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.merged_order.iter().flat_map(move |name| {
            let lost = self.conflicts.get(name);
            let entries = self.applied.indexes.get(name).map(|st| &st.entries);
            entries
                .into_iter()
                .flatten()
                .filter(move |(id, _)| !lost.is_some_and(|l| l.contains_key(*id)))
                .map(move |(id, e)| e.entry(id, name))
        })
    }

    /// The effective entry with id `id`, if any.
    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.merged_order.iter().find_map(|name| {
            let st = self.applied.indexes.get(name)?;
            st.entries.get(id).map(|e| e.entry(id, name))
        })
    }

    /// The number of effective entries.
    pub fn len(&self) -> usize {
        self.provided.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pull every index that is due (all of them when `force`), re-read it if its commit
    /// changed, and return the change to the applied set. Blocking: runs git.
    ///
    /// A failing index keeps its last good entries; the failure is in `status()`. An error
    /// is returned only when the new applied state cannot be saved, and then nothing is
    /// applied (the next poll tries again).
    pub fn poll(&mut self, force: bool) -> Result<Delta, IndexError> {
        // The new state of each index that changed; a no-op poll stages nothing.
        let mut staged: BTreeMap<String, Option<IndexState>> = BTreeMap::new();
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
                    let (entries, rejected) = (parsed.entries, parsed.rejected);
                    let new =
                        self.update(&source.name, &source.url, Some(commit), entries, rejected);
                    staged.insert(source.name.clone(), new);
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
            let new = self.update(&name, &url, None, Entries::new(), Vec::new());
            staged.insert(name, new);
        }
        self.commit_state(staged)
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
        let configured = self.sources.iter().any(|s| s.name == name);
        // A copy of this one index only; accepting is rare.
        let mut st = state.clone();
        if let Some(held) = st.held.take() {
            for id in &held.removals {
                st.entries.remove(id.as_str());
            }
        }
        let new = (configured || !st.entries.is_empty()).then_some(st);
        let delta = self.commit_state(BTreeMap::from([(name.to_owned(), new)]))?;
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
                let lost = self.conflicts.get(&name).into_iter().flatten();
                rejected.extend(lost.map(|(id, winner)| conflict(id, winner)));
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
        // git trusts the new local index paths by name (safe.directory).
        if let Err(e) = source::write_git_config(&self.settings.dir, &self.sources) {
            warn!(
                "index git config not rewritten, a new local index owned by another user may be refused: {e}"
            );
        }
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
        let (credentials, problem) = self.settings.credentials.fresh("credentials");
        if let Some(e) = problem {
            warn!(
                "a credentials file changed but cannot be used; keeping the loaded credentials: {e}"
            );
        }
        let t = Instant::now();
        let fetched = source::fetch(source, &self.settings.dir, credentials.find(&source.url))?;
        let fetch_s = t.elapsed().as_secs_f64();
        let unchanged = self.applied.indexes.get(&source.name).is_some_and(|s| {
            s.commit.as_deref() == Some(fetched.commit())
                && s.url == source.url
                && s.reader == self.reader()
        });
        if unchanged {
            return Ok(None);
        }
        let commit = fetched.commit().to_owned();
        let t = Instant::now();
        let parsed = match self.read_changes(source, &fetched) {
            Some(parsed) => parsed,
            None => {
                let mut parser = layout::Parser::new(self.settings.allow_file_urls);
                fetched.read(&mut parser)?;
                parser.finish()
            }
        };
        for r in parsed.rejected.iter().take(MAX_LOGGED_REJECTIONS) {
            warn!(
                index = source.name,
                commit,
                path = r.path,
                // The reason may quote the entry's URL (SPEC §9).
                reason = ?crate::redact::text(&r.reason),
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
            fetch_s,
            read_s = t.elapsed().as_secs_f64(),
            "index read"
        );
        Ok(Some((commit, parsed)))
    }

    /// The entries of the fetched commit of `source` from the applied ones and the files
    /// that changed since the applied commit; `None` when it has to be read whole (no
    /// applied commit, other rules, a held update, a changed `DEFAULTS`, a failed diff).
    fn read_changes(
        &self,
        source: &IndexSource,
        fetched: &source::Fetched,
    ) -> Option<layout::Parsed> {
        let old = self.applied.indexes.get(&source.name)?;
        // An index without entries has nothing to diff against: every path would be a
        // change, and `git diff-tree` ran ~0.5 s at 1M before the read gave up on it.
        if old.url != source.url
            || old.reader != self.reader()
            || old.held.is_some()
            || old.entries.is_empty()
        {
            return None;
        }
        let mut parser = layout::Parser::new(self.settings.allow_file_urls);
        // Past half the applied entries (the sim's first commit after an empty one: 1M),
        // the whole read, on every core, costs less than the changes one by one.
        let most = (old.entries.len() / 2).max(source::MIN_SPLIT);
        let paths = match fetched.read_changes(old.commit.as_deref()?, most, &mut parser) {
            Ok(paths) => paths?,
            Err(e) => {
                info!(index = source.name, "reading the index whole: {e}");
                return None;
            }
        };
        let changed = parser.finish();
        let touched: BTreeSet<String> = paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let mut entries = old.entries.clone();
        for id in &touched {
            entries.remove(id.as_str());
        }
        let mut rejected: Vec<Rejected> = old
            .rejected
            .iter()
            .filter(|r| !touched.contains(&r.path))
            .cloned()
            .collect();
        for (id, e) in changed.entries {
            match entries.entry(id) {
                std::collections::btree_map::Entry::Occupied(o) => rejected.push(Rejected {
                    path: o.key().to_string(),
                    reason: "duplicate id".into(),
                }),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
            }
        }
        // The DEFAULTS read again for these entries keep their rejections from before.
        rejected.extend(
            changed
                .rejected
                .into_iter()
                .filter(|r| touched.contains(&r.path)),
        );
        rejected.sort_by(|a, b| a.path.cmp(&b.path));
        Some(layout::Parsed { entries, rejected })
    }

    /// The new state of index `name` (`None`: it goes), holding back a large removal.
    fn update(
        &self,
        name: &str,
        url: &str,
        commit: Option<String>,
        entries: Entries,
        rejected: Vec<Rejected>,
    ) -> Option<IndexState> {
        let Some(old) = self.applied.indexes.get(name) else {
            // The first load has nothing to protect.
            return commit.is_some().then(|| IndexState {
                url: url.to_owned(),
                commit,
                reader: self.reader(),
                entries,
                rejected,
                held: None,
            });
        };
        let removals: Vec<String> = old
            .entries
            .keys()
            .filter(|id| !entries.contains_key(*id))
            .map(|id| id.to_string())
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
                if let Some((id, e)) = old.entries.get_key_value(id.as_str()) {
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
            return None;
        }
        Some(IndexState {
            url: url.to_owned(),
            commit,
            reader: self.reader(),
            entries,
            rejected,
            held,
        })
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

    /// Make the `staged` states of indexes applied (`None`: the index goes), save them, and
    /// return the change of the effective set (which a new order of sources alone can
    /// change too). Costs the entries that changed, unless the order of indexes did.
    fn commit_state(
        &mut self,
        mut staged: BTreeMap<String, Option<IndexState>>,
    ) -> Result<Delta, IndexError> {
        staged.retain(|name, new| self.applied.indexes.get(name) != new.as_ref());
        if staged.is_empty() && !self.sources_changed {
            return Ok(Delta::default());
        }
        // Swap the new states in, keeping the old ones for the delta and to undo a failed
        // save: the applied state is never copied whole.
        let mut olds: BTreeMap<String, Option<IndexState>> = BTreeMap::new();
        for (name, new) in staged {
            let old = match new {
                Some(st) => self.applied.indexes.insert(name.clone(), st),
                None => self.applied.indexes.remove(&name),
            };
            olds.insert(name, old);
        }
        let t = Instant::now();
        if !olds.is_empty() && self.order() == self.merged_order {
            return self.save_and_remerge(olds, t);
        }
        if !olds.is_empty()
            && let Err(e) = save_state(&self.settings.dir, &self.applied)
        {
            self.put_back(olds);
            return Err(e.into());
        }
        self.sources_changed = false;
        if !olds.is_empty() {
            debug!(secs = t.elapsed().as_secs_f64(), "index state saved");
        }
        let new_order = self.order();
        let old_order = std::mem::replace(&mut self.merged_order, new_order);
        if old_order != self.merged_order {
            let delta = self.full_delta(&olds, &old_order);
            self.remerge(true);
            return Ok(delta);
        }
        Ok(remerge_changes(
            &self.applied,
            &self.merged_order,
            &mut self.provided,
            &mut self.conflicts,
            &olds,
        ))
    }

    /// Undo [`Indexes::commit_state`]'s swap after a failed save: the old states back.
    fn put_back(&mut self, olds: BTreeMap<String, Option<IndexState>>) {
        for (name, old) in olds {
            match old {
                Some(st) => self.applied.indexes.insert(name, st),
                None => self.applied.indexes.remove(&name),
            };
        }
    }

    /// The usual poll (some index changed, the order of indexes did not): the durable save
    /// and the delta side by side (a whole 1M-entry index: ~0.8 s and ~0.4 s). The delta
    /// goes out only once the save is done; a failed save undoes the change.
    fn save_and_remerge(
        &mut self,
        olds: BTreeMap<String, Option<IndexState>>,
        t: Instant,
    ) -> Result<Delta, IndexError> {
        let Self {
            settings,
            applied,
            merged_order,
            provided,
            conflicts,
            ..
        } = self;
        let applied: &Applied = applied;
        let (saved, delta) = std::thread::scope(|s| {
            let save = s.spawn(|| save_state(&settings.dir, applied));
            let delta = remerge_changes(applied, merged_order, provided, conflicts, &olds);
            let saved = save.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (saved, delta)
        });
        if let Err(e) = saved {
            self.put_back(olds);
            // Which index provides each id, as it was.
            self.remerge(false);
            return Err(e.into());
        }
        self.sources_changed = false;
        debug!(secs = t.elapsed().as_secs_f64(), "index state saved");
        Ok(delta)
    }

    /// The delta when the order of indexes changed: every id is looked at.
    fn full_delta(
        &self,
        olds: &BTreeMap<String, Option<IndexState>>,
        old_order: &[String],
    ) -> Delta {
        let applied = &self.applied.indexes;
        let before = |name: &str| match olds.get(name) {
            Some(old) => old.as_ref(),
            None => applied.get(name),
        };
        let mut ids: BTreeSet<&str> = BTreeSet::new();
        for name in old_order {
            ids.extend(
                before(name)
                    .into_iter()
                    .flat_map(|st| st.entries.keys())
                    .map(|k| &**k),
            );
        }
        for st in applied.values() {
            ids.extend(st.entries.keys().map(|k| &**k));
        }
        let mut delta = Delta::default();
        for id in ids {
            let was = winner(old_order, &before, id);
            let is = winner(&self.merged_order, &|n: &str| applied.get(n), id);
            add_to_delta(&mut delta, id, was, is);
        }
        delta
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

    /// Work out from the whole applied state which index provides each id.
    fn remerge(&mut self, log_new_conflicts: bool) {
        let mut conflicts: BTreeMap<String, BTreeMap<Box<str>, String>> = BTreeMap::new();
        let mut provided: HashMap<String, usize> = HashMap::new();
        let applied = &self.applied.indexes;
        for (k, name) in self.merged_order.iter().enumerate() {
            let Some(state) = applied.get(name) else {
                continue;
            };
            let earlier = &self.merged_order[..k];
            let mut count = 0;
            for id in state.entries.keys() {
                let first = earlier.iter().find(|n| {
                    applied
                        .get(*n)
                        .is_some_and(|st| st.entries.contains_key(id))
                });
                match first {
                    Some(first) => {
                        let lost = conflicts.entry(name.clone()).or_default();
                        lost.insert(id.clone(), first.clone());
                    }
                    None => count += 1,
                }
            }
            if count > 0 {
                provided.insert(name.clone(), count);
            }
        }
        if log_new_conflicts {
            for (name, lost) in &conflicts {
                for (id, first) in lost {
                    let old = self.conflicts.get(name).and_then(|l| l.get(id));
                    if old != Some(first) {
                        log_conflict(name, id, first);
                    }
                }
            }
        }
        self.conflicts = conflicts;
        self.provided = provided;
    }
}

/// Log that index `name` loses `id` to index `first`.
fn log_conflict(name: &str, id: &str, first: &str) {
    let r = conflict(id, first);
    warn!(
        index = name,
        path = r.path,
        reason = r.reason,
        "index entry rejected"
    );
}

/// The rejection of an id that index `winner`, listed earlier, provides.
fn conflict(id: &str, winner: &str) -> Rejected {
    Rejected {
        path: id.to_owned(),
        reason: format!("conflict: id already provided by index {winner}"),
    }
}

/// The first index in `order` whose state (by `state`) has `id`, and its entry.
fn winner<'a>(
    order: &'a [String],
    state: &dyn Fn(&str) -> Option<&'a IndexState>,
    id: &str,
) -> Option<(&'a str, &'a Stored)> {
    order
        .iter()
        .find_map(|name| Some((name.as_str(), state(name)?.entries.get(id)?)))
}

/// Record in `delta` how the effective entry `id` went from `was` to `is`.
fn add_to_delta(
    delta: &mut Delta,
    id: &str,
    was: Option<(&str, &Stored)>,
    is: Option<(&str, &Stored)>,
) {
    match (was, is) {
        (None, Some((index, e))) => delta.added.push(e.entry(id, index)),
        (Some(_), None) => delta.removed.push(id.to_owned()),
        (Some(w), Some((index, e))) if w != (index, e) => delta.changed.push(e.entry(id, index)),
        _ => {}
    }
}

/// Add to `ids` the ids added, removed or changed from `old` to `new`.
fn changed_ids<'a>(old: &'a Entries, new: &'a Entries, ids: &mut Vec<&'a str>) {
    walk_changes(old, new, |id, _, _| ids.push(id));
}

/// Call `f` with each id added, removed or changed from `old` to `new`, and its entry in
/// each: one walk of both (they are sorted), so a re-read of a large index costs no
/// look-ups.
fn walk_changes<'a>(
    old: &'a Entries,
    new: &'a Entries,
    mut f: impl FnMut(&'a str, Option<&'a Stored>, Option<&'a Stored>),
) {
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let (id, was, is) = match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some(&(x, e)), None) => (x, Some(e), None),
            (None, Some(&(y, g))) => (y, None, Some(g)),
            (Some(&(x, e)), Some(&(y, g))) => match x.cmp(y) {
                std::cmp::Ordering::Less => (x, Some(e), None),
                std::cmp::Ordering::Greater => (y, None, Some(g)),
                std::cmp::Ordering::Equal => (x, Some(e), Some(g)),
            },
        };
        if was.is_some() {
            a.next();
        }
        if is.is_some() {
            b.next();
        }
        if was != is {
            f(id, was, is);
        }
    }
}

/// The applied state of release 1 (`applied.json`), read once to migrate it.
#[derive(Deserialize)]
struct AppliedV1 {
    indexes: BTreeMap<String, IndexStateV1>,
}

#[derive(Deserialize)]
struct IndexStateV1 {
    url: String,
    commit: Option<String>,
    reader: String,
    entries: BTreeMap<String, EntryV1>,
    rejected: Vec<Rejected>,
    held: Option<Held>,
}

/// An entry as `applied.json` v1 kept it.
#[derive(Deserialize)]
struct EntryV1 {
    url: String,
    #[serde(default)]
    metadata: Map<String, Json>,
}

/// Load the applied state of `dir`: `applied.state`, or a release-1 `applied.json`
/// migrated into it (kept as `applied.json.v1.bak`), or nothing.
fn load_state(dir: &Path) -> Result<Applied, StateError> {
    let path = dir.join(STATE_FILE);
    let v1 = dir.join(V1_FILE);
    let bak = dir.join(format!("{V1_FILE}.v1.bak"));
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|source| StateError::Io {
            action: "rename into",
            path: to.to_owned(),
            source,
        })
    };
    if let Some((applied, version)) = read_state(&path)? {
        if v1.exists() {
            // A migration stopped between writing the new file and keeping the old aside.
            rename(&v1, &bak)?;
        }
        if version == STATE_V2 {
            // Kept aside first (a copy: until the new file is in place the old one stays
            // where it is, so a crash here migrates again at the next start).
            let bak = dir.join(format!("{STATE_FILE}.v{STATE_V2}.bak"));
            std::fs::copy(&path, &bak)
                .and_then(|_| std::fs::File::open(&bak)?.sync_all())
                .map_err(|source| StateError::Io {
                    action: "copy into",
                    path: bak.clone(),
                    source,
                })?;
            save_state(dir, &applied)?;
            info!(
                path = %path.display(),
                "index state migrated to format v{STATE_VERSION}; the old file is kept as {}",
                bak.display()
            );
        }
        return Ok(applied);
    }
    let Some(old) = statefile::read_json::<AppliedV1>(&v1, STATE_KIND, 1)? else {
        return Ok(Applied::default());
    };
    let mut interned: HashMap<String, Arc<str>> = HashMap::new();
    let mut applied = Applied::default();
    for (name, st) in old.indexes {
        let entries = st
            .entries
            .into_iter()
            .map(|(id, e)| {
                let metadata = (!e.metadata.is_empty()).then(|| {
                    let text = Json::Object(e.metadata).to_string();
                    interned
                        .entry(text)
                        .or_insert_with_key(|t| t.as_str().into())
                        .clone()
                });
                let stored = Stored {
                    url: e.url.into(),
                    metadata,
                };
                (id.into_boxed_str(), stored)
            })
            .collect();
        let state = IndexState {
            url: st.url,
            commit: st.commit,
            reader: st.reader,
            entries,
            rejected: st.rejected,
            held: st.held,
        };
        applied.indexes.insert(name, state);
    }
    save_state(dir, &applied)?;
    rename(&v1, &bak)?;
    info!(
        from = %v1.display(),
        to = %path.display(),
        "index state migrated to format v{STATE_VERSION}; the old file is kept as {}",
        bak.display()
    );
    Ok(applied)
}

fn header() -> String {
    format!("gitmirror-state {STATE_KIND} v{STATE_VERSION}\n")
}

/// The most an LZ4 block expands to (each input byte can stand for at most 255 output
/// bytes): a declared size past it is a damaged file, not an allocation to make.
fn lz4_max_out(compressed: usize) -> usize {
    compressed.saturating_mul(255).saturating_add(64)
}

/// Bring the effective set up to date after the indexes in `olds` changed (same order
/// of indexes): only the ids whose entry changed in one of them are looked at.
fn remerge_changes(
    applied: &Applied,
    merged_order: &[String],
    provided: &mut HashMap<String, usize>,
    conflicts: &mut BTreeMap<String, BTreeMap<Box<str>, String>>,
    olds: &BTreeMap<String, Option<IndexState>>,
) -> Delta {
    match remerge_one(&applied.indexes, merged_order, provided, conflicts, olds) {
        Some(delta) => delta,
        None => remerge_general(applied, merged_order, provided, conflicts, olds),
    }
}

/// [`remerge_changes`] for any indexes: each changed id looked up in every index.
fn remerge_general(
    applied: &Applied,
    merged_order: &[String],
    provided: &mut HashMap<String, usize>,
    conflicts: &mut BTreeMap<String, BTreeMap<Box<str>, String>>,
    olds: &BTreeMap<String, Option<IndexState>>,
) -> Delta {
    let applied = &applied.indexes;
    let before = |name: &str| match olds.get(name) {
        Some(old) => old.as_ref(),
        None => applied.get(name),
    };
    let after = |name: &str| applied.get(name);
    // A vector sorted once rather than a set: a first read gives 1M ids, in order.
    let mut ids: Vec<&str> = Vec::new();
    let none = Entries::new();
    for (name, old) in olds {
        let old = old.as_ref().map_or(&none, |st| &st.entries);
        let new = applied.get(name).map_or(&none, |st| &st.entries);
        changed_ids(old, new, &mut ids);
    }
    ids.sort_unstable();
    ids.dedup();
    let order = merged_order;
    let mut delta = Delta::default();
    for id in ids {
        let was = winner(order, &before, id);
        let is = winner(order, &after, id);
        add_to_delta(&mut delta, id, was, is);
        if let Some((name, _)) = was
            && let Some(n) = provided.get_mut(name)
        {
            *n = n.saturating_sub(1);
        }
        if let Some((name, _)) = is {
            *provided.entry(name.to_owned()).or_default() += 1;
        }
        // Who loses this id to whom, afresh.
        let mut lost_before: Vec<(String, String)> = Vec::new();
        for (name, lost) in conflicts.iter_mut() {
            if let Some(w) = lost.remove(id) {
                lost_before.push((name.clone(), w));
            }
        }
        if let Some((first, _)) = is {
            for name in order.iter().filter(|n| n.as_str() != first) {
                if !after(name).is_some_and(|st| st.entries.contains_key(id)) {
                    continue;
                }
                let known = lost_before.iter().any(|(n, w)| n == name && w == first);
                if !known {
                    log_conflict(name, id, first);
                }
                conflicts
                    .entry(name.clone())
                    .or_default()
                    .insert(id.into(), first.to_owned());
            }
        }
    }
    conflicts.retain(|_, lost| !lost.is_empty());
    provided.retain(|_, n| *n > 0);
    delta
}

/// [`remerge_changes`] when the one index that changed is the only one and nothing is in
/// conflict (the usual fleet): each changed id's old and new entry come from the walk of
/// both entry maps, where the general case looks each up again by id in every index
/// (two B-tree searches an id, most of the ~0.4 s a 1M-entry first read spent here).
/// `None` when the case is not this one.
fn remerge_one(
    applied: &BTreeMap<String, IndexState>,
    merged_order: &[String],
    provided: &mut HashMap<String, usize>,
    conflicts: &BTreeMap<String, BTreeMap<Box<str>, String>>,
    olds: &BTreeMap<String, Option<IndexState>>,
) -> Option<Delta> {
    let ([only], 1) = (merged_order, olds.len()) else {
        return None;
    };
    let old = olds.get(only)?;
    if !conflicts.is_empty() {
        return None;
    }
    let none = Entries::new();
    let old = old.as_ref().map_or(&none, |st| &st.entries);
    let new = applied.get(only).map_or(&none, |st| &st.entries);
    let name = only.as_str();
    let mut delta = Delta::default();
    let (mut gained, mut lost) = (0usize, 0usize);
    walk_changes(old, new, |id, was, is| {
        gained += usize::from(was.is_none());
        lost += usize::from(is.is_none());
        add_to_delta(
            &mut delta,
            id,
            was.map(|e| (name, e)),
            is.map(|e| (name, e)),
        );
    });
    let n = provided.entry(only.clone()).or_default();
    *n = (*n + gained).saturating_sub(lost);
    provided.retain(|_, n| *n > 0);
    Some(delta)
}

/// Write the applied state crash-safely: header line, postcard, CRC-32 (little-endian).
fn save_state(dir: &Path, applied: &Applied) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let payload = postcard::to_stdvec(applied).map_err(|e| StateError::Io {
        action: "encode",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    // Compressed: a 1M-entry index is ~108 MB of postcard and ~15 MB as LZ4, and the
    // save (with its fsync) comes before the index's delta goes out (docs/scale.md).
    let compressed = lz4_flex::block::compress_prepend_size(&payload);
    drop(payload);
    let mut bytes = header().into_bytes();
    bytes.extend_from_slice(&compressed);
    bytes.extend_from_slice(&crc32fast::hash(&compressed).to_le_bytes());
    drop(compressed);
    statefile::write_atomic(&path, &bytes, 0o600)
}

/// Read `applied.state` with its format version (v3, or v2 of the previous release);
/// `Ok(None)` when it does not exist. Anything that does not check out stops the daemon
/// naming the file (it is written whole, so there is no torn tail).
fn read_state(path: &Path) -> Result<Option<(Applied, u32)>, StateError> {
    let Some(bytes) = statefile::read_if_exists(path)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let v2 = format!("gitmirror-state {STATE_KIND} v{STATE_V2}\n");
    let (head, version) = if bytes.starts_with(v2.as_bytes()) {
        (v2.len(), STATE_V2)
    } else {
        let head =
            gitmirror_common::journal::check_header(path, &bytes, STATE_KIND, STATE_VERSION)?;
        (head, STATE_VERSION)
    };
    let body = bytes.get(head..).unwrap_or_default();
    let Some((data, crc)) = body.split_last_chunk::<4>() else {
        return Err(corrupt("too short".into()));
    };
    if crc32fast::hash(data) != u32::from_le_bytes(*crc) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let inflated;
    let data = if version == STATE_V2 {
        data
    } else {
        let Some((size, block)) = data.split_first_chunk::<4>() else {
            return Err(corrupt("too short".into()));
        };
        let size = u32::from_le_bytes(*size) as usize;
        if size > lz4_max_out(block.len()) {
            return Err(corrupt(format!(
                "declares {size} bytes, more than {} bytes of LZ4 can hold",
                block.len()
            )));
        }
        inflated = lz4_flex::block::decompress(block, size).map_err(|e| corrupt(e.to_string()))?;
        if inflated.len() != size {
            return Err(corrupt(format!(
                "declares {size} bytes, holds {}",
                inflated.len()
            )));
        }
        inflated.as_slice()
    };
    let mut applied: Applied = postcard::from_bytes(data).map_err(|e| corrupt(e.to_string()))?;
    // Share equal metadata again, and check each text once: a bad one stops here.
    let mut interned: HashMap<Arc<str>, ()> = HashMap::new();
    for st in applied.indexes.values_mut() {
        for e in st.entries.values_mut() {
            let Some(text) = &e.metadata else { continue };
            if let Some((shared, ())) = interned.get_key_value(text) {
                e.metadata = Some(shared.clone());
                continue;
            }
            match serde_json::from_str::<Json>(text) {
                Ok(Json::Object(_)) => {}
                _ => {
                    return Err(corrupt(format!(
                        "metadata of an entry is not JSON keys: {text}"
                    )));
                }
            }
            interned.insert(text.clone(), ());
        }
    }
    Ok(Some((applied, version)))
}

/// Fetch index `source` into `dir` without reading it: benchmarks time git's copy apart.
#[doc(hidden)]
pub fn prefetch(source: &IndexSource, dir: &Path) -> Result<(), String> {
    source::fetch(source, dir, None).map(|_| ())
}

/// Bytes the applied state takes in `dir` (for benchmarks and docs/scale.md).
#[doc(hidden)]
pub fn state_bytes(dir: &Path) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries: &[(String, String)]) -> IndexState {
        IndexState {
            url: "file:///idx".into(),
            commit: Some("c".into()),
            reader: "r".into(),
            entries: entries
                .iter()
                .map(|(id, url)| {
                    let stored = Stored {
                        url: url.as_str().into(),
                        metadata: None,
                    };
                    (Box::from(id.as_str()), stored)
                })
                .collect(),
            rejected: Vec::new(),
            held: None,
        }
    }

    proptest::proptest! {
        // SPEC §3.3: one index changing alone gives the delta and the per-index counts of
        // the general merge, whatever it adds, drops and changes (ids from a small space,
        // so that old and new overlap).
        #[test]
        fn one_index_remerge_is_the_general_one(
            old in proptest::collection::btree_map("[a-c]/[a-c]{1,3}/[a-c]{1,3}", "[xy]", 0..40),
            new in proptest::collection::btree_map("[a-c]/[a-c]{1,3}/[a-c]{1,3}", "[xy]", 0..40),
            was_there in proptest::bool::ANY,
        ) {
            let old: Vec<_> = old.into_iter().collect();
            let new: Vec<_> = new.into_iter().collect();
            let order = vec!["idx".to_owned()];
            let mut applied = Applied::default();
            applied.indexes.insert("idx".into(), state(&new));
            let olds = BTreeMap::from([("idx".to_owned(), was_there.then(|| state(&old)))]);
            let before = if was_there { old.len() } else { 0 };
            let mut p1 = HashMap::from([("idx".to_owned(), before)]);
            p1.retain(|_, n| *n > 0);
            let mut p2 = p1.clone();
            let mut conflicts = BTreeMap::new();
            let fast = remerge_one(&applied.indexes, &order, &mut p1, &BTreeMap::new(), &olds);
            let slow = remerge_general(&applied, &order, &mut p2, &mut conflicts, &olds);
            proptest::prop_assert_eq!(fast, Some(slow));
            proptest::prop_assert_eq!(p1, p2);
            proptest::prop_assert!(conflicts.is_empty());
        }
    }
}
