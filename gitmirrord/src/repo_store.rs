//! The repos' saved status (owner, holders, last results): `repos.snapshot` and
//! `repos.journal` in the state dir (SPEC §10, §12 "State files"; design.md "Coordinator
//! repo state, journaled").
//!
//! The main loop hands the writer thread the records of the repos that changed since the
//! last save (O(changed), never O(repos)); the thread appends them to the journal with one
//! fsync per batch. Once the journal is bigger than the snapshot (and at least
//! [`COMPACT_AT`]), the thread folds it into a new snapshot by streaming the old one, so
//! neither the loop nor the thread ever holds every repo's record. Both files begin with a
//! `Start{generation}` record; a journal of an older generation than the snapshot (a crash
//! in the middle of a compaction) is already folded in and is replaced. `repos.json` of
//! the previous release is migrated at the first start and kept as `repos.json.v1.bak`.

use crate::fleet::{REPOS_KIND, REPOS_VERSION, ReposFile, SavedRepo};
use gitmirror_common::journal::{self, Appender, WholeWriter};
use gitmirror_common::statefile::{self, StateError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const SNAPSHOT_FILE: &str = "repos.snapshot";
pub const JOURNAL_FILE: &str = "repos.journal";
/// The whole-file format of the previous release.
pub const V1_FILE: &str = "repos.json";
const SNAPSHOT_KIND: &str = "coordinator-repos-snapshot";
const JOURNAL_KIND: &str = "coordinator-repos-journal";
const VERSION: u32 = 2;
const MODE: u32 = 0o640;
/// The journal is folded into a new snapshot once it is this big and bigger than the
/// snapshot: compaction costs a fraction of the appends it saves.
pub const COMPACT_AT: u64 = 64 << 20;

/// One record of the snapshot or the journal (postcard: a million of them are read at
/// every start, and JSON was 470 bytes a repo; variants are only ever appended, any other
/// change is a new file version with a migration).
/// Short-lived (encoded or decoded one at a time), so the size difference does not matter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
enum Record {
    /// First record of both files.
    Start { generation: u64 },
    /// A repo's saved status (replaces any earlier record of it).
    Put { id: String, repo: SavedRepo },
    /// The repo left every index.
    Remove { id: String },
    /// The saved owners are the ring's choice over the members with this
    /// [`crate::ring::fingerprint`] (`None`: they may not be; a start recomputes them).
    /// Written as `None` before a batch that moves owners and with the new fingerprint after
    /// it, so a batch cut short leaves `None`.
    Owners { members: Option<u64> },
}

/// A change for the journal: `None` removes the repo.
pub type Change = (String, Option<SavedRepo>);

/// What a save holds: changed repos and, when the owners' member set changed, the
/// fingerprint records around them: `unset_owners` writes "not a ring's choice" before the
/// repos (the first part of a move), `owners` the new fingerprint after them (once the
/// last repo of the move is in).
#[derive(Debug, Default)]
pub struct Changes {
    pub repos: Vec<Change>,
    pub unset_owners: bool,
    pub owners: Option<u64>,
}

fn encode(r: &Record) -> Vec<u8> {
    // Plain data (strings, numbers, options, vectors) always encodes.
    postcard::to_stdvec(r).unwrap_or_default()
}

fn decode(path: &Path, offset: u64, payload: &[u8]) -> Result<Record, StateError> {
    postcard::from_bytes(payload).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("the record at byte offset {offset} does not decode: {e}"),
    })
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(SNAPSHOT_FILE), dir.join(JOURNAL_FILE))
}

/// Write a snapshot of `generation` holding `repos`, then an empty journal of it.
fn write_fresh(dir: &Path, generation: u64, repos: &ReposFile) -> Result<(), StateError> {
    let (snap, jour) = paths(dir);
    let start = encode(&Record::Start { generation });
    let mut w = WholeWriter::create(&snap, SNAPSHOT_KIND, VERSION, MODE)?;
    w.push(&start)?;
    for (id, repo) in &repos.repos {
        w.push(&encode(&Record::Put {
            id: id.clone(),
            repo: repo.clone(),
        }))?;
    }
    w.commit()?;
    journal::write_whole(&jour, JOURNAL_KIND, VERSION, [start.as_slice()], MODE)?;
    Ok(())
}

/// Where replayed records go, in file order: `Some` saves a repo's status, `None` removes
/// it (a later record of a repo replaces an earlier one). Start-up hands them straight to
/// the fleet, so the saved status of every repo is never held twice.
pub type Sink<'a> = dyn FnMut(String, Option<SavedRepo>) + 'a;

fn apply(sink: &mut Sink<'_>, owners: &mut Option<u64>, record: Record) {
    match record {
        Record::Start { .. } => {}
        Record::Put { id, repo } => sink(id, Some(repo)),
        Record::Remove { id } => sink(id, None),
        Record::Owners { members } => *owners = members,
    }
}

/// Per repo changed since the last compaction, the offset of its last journal record,
/// keyed by a 128-bit hash of the repo id: 1M ids as strings were ~60 MB of the
/// coordinator's RSS after a clone wave (docs/scale.md). Two ids of one fleet sharing a
/// 128-bit xxh3 is not a case to plan for (~10⁻²⁶ at 1M).
type Since = HashMap<u128, u64>;

fn since_key(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// What reading the files gives.
struct Loaded {
    generation: u64,
    journal_end: u64,
    torn_at: Option<u64>,
    /// The journal is of an older generation, or missing: write it afresh.
    journal_stale: bool,
    /// The offset of each repo's last record in the journal, for the next compaction.
    since: Since,
    /// The last `Owners` record's fingerprint.
    owners: Option<u64>,
}

fn replay(snap: &Path, jour: &Path, sink: &mut Sink<'_>) -> Result<Loaded, StateError> {
    let corrupt = |path: &Path, detail: String| StateError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut owners = None;
    let mut generation = None;
    journal::for_each_record(snap, SNAPSHOT_KIND, VERSION, |offset, payload| {
        let record = decode(snap, offset, payload)?;
        if generation.is_none() {
            let Record::Start { generation: g } = record else {
                return Err(corrupt(
                    snap,
                    "it does not begin with a Start record".into(),
                ));
            };
            generation = Some(g);
        }
        apply(sink, &mut owners, record);
        Ok(())
    })?;
    let generation = generation.ok_or_else(|| corrupt(snap, "it holds no records".into()))?;
    let mut loaded = Loaded {
        generation,
        journal_end: 0,
        torn_at: None,
        journal_stale: true,
        since: HashMap::new(),
        owners,
    };
    let Some(contents) = journal::read(jour, JOURNAL_KIND, VERSION, true)? else {
        return Ok(loaded);
    };
    let mut records = contents.records();
    let first = match records.next() {
        Some((offset, payload)) => Some(decode(jour, offset, payload)?),
        None => None,
    };
    match first {
        Some(Record::Start { generation: g }) if g == generation => {
            for (offset, payload) in records {
                let record = decode(jour, offset, payload)?;
                if let Record::Put { id, .. } | Record::Remove { id } = &record {
                    loaded.since.insert(since_key(id), offset);
                }
                apply(sink, &mut loaded.owners, record);
            }
            loaded.journal_stale = false;
            loaded.journal_end = contents.end;
            loaded.torn_at = contents.torn_at;
        }
        // Folded into the snapshot already (a crash during compaction).
        Some(Record::Start { generation: g }) if g < generation => {}
        // Cut before its Start record was complete: nothing in it yet.
        None if contents.torn_at.is_some() || contents.is_empty() => {}
        _ => {
            return Err(corrupt(
                jour,
                format!(
                    "it does not begin with the Start record of generation {generation} (the snapshot's)"
                ),
            ));
        }
    }
    Ok(loaded)
}

/// Read the saved repo status as the coordinator would at start, changing nothing (for
/// tests and tools; a `repos.json` of v1 is read as such).
pub fn load(dir: &Path) -> Result<ReposFile, StateError> {
    let (snap, jour) = paths(dir);
    if !snap.exists() {
        return Ok(
            statefile::read_json(&dir.join(V1_FILE), REPOS_KIND, REPOS_VERSION)?
                .unwrap_or_default(),
        );
    }
    let mut repos = ReposFile::default();
    replay(&snap, &jour, &mut collect(&mut repos))?;
    Ok(repos)
}

/// A sink that gathers the records into a [`ReposFile`] (tests and tools).
pub fn collect(repos: &mut ReposFile) -> impl FnMut(String, Option<SavedRepo>) + '_ {
    |id, saved| match saved {
        Some(s) => {
            repos.repos.insert(id, s);
        }
        None => {
            repos.repos.remove(&id);
        }
    }
}

/// What [`open`] found besides the records.
pub struct Opened {
    pub store: RepoStore,
    /// The member-set fingerprint the saved owners were computed for, if they are a ring's.
    pub owners: Option<u64>,
}

/// Open the repo state of `dir`: migrate a v1 `repos.json`, replay snapshot and journal
/// into `sink` (dropping a torn journal tail with one warning) and start the writer
/// thread. Blocking.
pub fn open(dir: &Path, sink: &mut Sink<'_>) -> Result<Opened, StateError> {
    open_with(dir, journal::compact_at(COMPACT_AT), sink)
}

/// [`open`], compacting once the journal passes `compact_at` bytes and the snapshot's size.
pub fn open_with(dir: &Path, compact_at: u64, sink: &mut Sink<'_>) -> Result<Opened, StateError> {
    let (snap, jour) = paths(dir);
    for p in [&snap, &jour] {
        let n = journal::remove_leftovers(p);
        if n > 0 {
            tracing::info!(path = %p.display(), count = n, "removed the temp file of an interrupted state write");
        }
    }
    let v1 = dir.join(V1_FILE);
    let bak = dir.join(format!("{V1_FILE}.v{REPOS_VERSION}.bak"));
    if !snap.exists() {
        let old: Option<ReposFile> = statefile::read_json(&v1, REPOS_KIND, REPOS_VERSION)?;
        let n = old.as_ref().map_or(0, |r| r.repos.len());
        write_fresh(dir, 1, &old.unwrap_or_default())?;
        if v1.exists() {
            tracing::info!(from = %v1.display(), to = %snap.display(), repos = n, "migrated the repo state to format v2 (snapshot and journal)");
        }
    }
    if v1.exists() {
        // Migrated (now, or before a crash that came ahead of this rename).
        std::fs::rename(&v1, &bak).map_err(io("rename to .v1.bak", &v1))?;
        tracing::info!(path = %bak.display(), "kept the v1 repo state file beside the new one");
    }
    let mut loaded = replay(&snap, &jour, sink)?;
    if let Some(at) = loaded.torn_at {
        tracing::warn!(path = %jour.display(), offset = at, "dropping a torn record at the end of the journal (the coordinator stopped in the middle of writing it)");
    }
    let mut journal_end = loaded.journal_end;
    if loaded.journal_stale {
        let start = encode(&Record::Start {
            generation: loaded.generation,
        });
        journal::write_whole(&jour, JOURNAL_KIND, VERSION, [start.as_slice()], MODE)?;
        journal_end = std::fs::metadata(&jour).map_err(io("stat", &jour))?.len();
        loaded.since.clear();
    }
    let writer = Writer {
        dir: dir.to_owned(),
        appender: Appender::open(&jour, journal_end)?,
        generation: loaded.generation,
        snapshot_len: std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0),
        compact_at,
        since: loaded.since,
        owners: loaded.owners,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = queued.clone();
    let thread = std::thread::Builder::new()
        .name("repo-state-writer".into())
        .spawn(move || writer.run(rx, &taken))
        .map_err(io("start the writer thread for", &jour))?;
    Ok(Opened {
        store: RepoStore {
            tx: Some(tx),
            thread: Some(thread),
            queued,
        },
        owners: loaded.owners,
    })
}

enum Msg {
    Changes(Changes),
    /// Answered once everything queued before it is durable (or failed).
    Sync(std::sync::mpsc::SyncSender<Result<(), String>>),
}

/// The main loop's handle on the files.
pub struct RepoStore {
    tx: Option<std::sync::mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Batches of changes sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
}

impl RepoStore {
    /// Queue changes for the journal. Never blocks; a failed write is logged by the writer
    /// and retried with the next batch.
    pub fn save(&self, changes: Changes) {
        if changes.repos.is_empty() && !changes.unset_owners && changes.owners.is_none() {
            return;
        }
        if let Some(tx) = &self.tx {
            self.queued.fetch_add(1, Ordering::Relaxed);
            if tx.send(Msg::Changes(changes)).is_err() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(
                    "the repo state writer has stopped; repo status is no longer saved"
                );
            }
        }
    }

    /// Batches handed to [`RepoStore::save`] that the writer has not taken yet. The main
    /// loop sends more only while this is small: changes it holds back stay in the fleet's
    /// set of unsaved repos, one entry per repo however often it changes, instead of
    /// piling up here as records while the disk is slower than a clone wave.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Wait until everything queued is durable (blocking: call it off the runtime).
    pub fn sync(&self) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .ok_or("the repo state writer has stopped")?
            .send(Msg::Sync(tx))
            .map_err(|_| "the repo state writer has stopped")?;
        rx.recv()
            .map_err(|_| "the repo state writer has stopped".to_owned())?
    }

    /// Write what is queued and stop the writer thread (blocking).
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RepoStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The thread that owns the files.
struct Writer {
    dir: PathBuf,
    appender: Appender,
    generation: u64,
    snapshot_len: u64,
    compact_at: u64,
    /// The offset of each repo's last record in the journal since the last compaction
    /// (the records stay on disk: holding them was ~250 bytes a repo at 1M).
    since: Since,
    /// The fingerprint of the last `Owners` record written.
    owners: Option<u64>,
}

/// A batch of changes for one write (changes that failed join the next one).
#[derive(Default)]
struct Batch {
    repos: HashMap<String, Option<SavedRepo>>,
    unset_owners: bool,
    owners: Option<u64>,
}

impl Batch {
    fn add(&mut self, c: Changes) {
        self.repos.extend(c.repos);
        if c.unset_owners {
            // A new move: an earlier set fingerprint is not true of these repos.
            self.unset_owners = true;
            self.owners = None;
        }
        if c.owners.is_some() {
            self.owners = c.owners;
        }
    }
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Msg>, queued: &AtomicUsize) {
        // Changes that failed to write, tried again with the next batch (a repo's newer
        // record replaces its older one, so this stays bounded by the repos).
        let mut retry = Batch::default();
        let mut last_error: Option<String> = None;
        while let Ok(first) = rx.recv() {
            let mut syncs = Vec::new();
            let mut batch = std::mem::take(&mut retry);
            let mut take = |m: Msg| match m {
                Msg::Changes(c) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    batch.add(c);
                }
                Msg::Sync(tx) => syncs.push(tx),
            };
            take(first);
            // Group commit: everything queued meanwhile goes with one fsync.
            while let Ok(m) = rx.try_recv() {
                take(m);
            }
            let result = self.write(&batch);
            match &result {
                Ok(()) => {
                    if last_error.take().is_some() {
                        tracing::info!(path = %self.appender.path().display(), "repo state is being saved again");
                    }
                }
                Err(e) => {
                    if last_error.is_none() {
                        tracing::error!(
                            "cannot save the repo state (retried with the next save): {e}"
                        );
                    }
                    last_error = Some(e.to_string());
                    retry = batch;
                }
            }
            for s in syncs {
                let _ = s.send(match &last_error {
                    None => Ok(()),
                    Some(e) => Err(e.clone()),
                });
            }
            if result.is_ok()
                && self.appender.len() > self.compact_at.max(self.snapshot_len)
                && let Err(e) = self.compact()
            {
                tracing::error!(
                    "cannot compact the repo state (the journal keeps growing until it works): {e}"
                );
            }
        }
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StateError> {
        if batch.repos.is_empty() && !batch.unset_owners && batch.owners.is_none() {
            return Ok(());
        }
        // Owners moving: marked unknown first, so a batch cut short is not taken for the
        // new member set's (nor the old one's).
        let mark = |members| (None, encode(&Record::Owners { members }));
        let mut encoded = Vec::with_capacity(batch.repos.len() + 2);
        if batch.unset_owners {
            encoded.push(mark(None));
        }
        for (id, repo) in &batch.repos {
            let record = match repo {
                Some(repo) => Record::Put {
                    id: id.clone(),
                    repo: repo.clone(),
                },
                None => Record::Remove { id: id.clone() },
            };
            encoded.push((Some(id), encode(&record)));
        }
        if let Some(owners) = batch.owners {
            encoded.push(mark(Some(owners)));
        }
        let offsets = self
            .appender
            .append(encoded.iter().map(|(_, e)| e.as_slice()))?;
        self.appender.sync()?;
        for ((id, _), offset) in encoded.iter().zip(offsets) {
            if let Some(id) = id {
                self.since.insert(since_key(id), offset);
            }
        }
        if batch.unset_owners {
            self.owners = None;
        }
        if batch.owners.is_some() {
            self.owners = batch.owners;
        }
        Ok(())
    }

    /// Fold the journal into a new snapshot (streaming the old one) and start a new
    /// journal.
    fn compact(&mut self) -> Result<(), StateError> {
        let (snap, jour) = paths(&self.dir);
        let generation = self.generation + 1;
        let start = encode(&Record::Start { generation });
        let mut w = WholeWriter::create(&snap, SNAPSHOT_KIND, VERSION, MODE)?;
        w.push(&start)?;
        journal::for_each_record(&snap, SNAPSHOT_KIND, VERSION, |offset, payload| {
            match decode(&snap, offset, payload)? {
                Record::Put { id, .. } if !self.since.contains_key(&since_key(&id)) => {
                    w.push(payload)?;
                }
                _ => {}
            }
            Ok(())
        })?;
        // Then each repo's last journal record, if it is a put.
        journal::for_each_record(&jour, JOURNAL_KIND, VERSION, |offset, payload| {
            if let Record::Put { id, .. } = decode(&jour, offset, payload)?
                && self.since.get(&since_key(&id)) == Some(&offset)
            {
                w.push(payload)?;
            }
            Ok(())
        })?;
        if let Some(members) = self.owners {
            w.push(&encode(&Record::Owners {
                members: Some(members),
            }))?;
        }
        w.commit()?;
        journal::write_whole(&jour, JOURNAL_KIND, VERSION, [start.as_slice()], MODE)?;
        let end = std::fs::metadata(&jour).map_err(io("stat", &jour))?.len();
        self.appender = Appender::open(&jour, end)?;
        self.generation = generation;
        self.snapshot_len = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        self.since.clear();
        tracing::debug!(path = %snap.display(), bytes = self.snapshot_len, "compacted the repo state");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{RepoStatus, SavedHolder};
    use uuid::Uuid;

    fn open_all_with(dir: &Path, compact_at: u64) -> Result<(ReposFile, RepoStore), StateError> {
        let mut repos = ReposFile::default();
        let opened = open_with(dir, compact_at, &mut collect(&mut repos))?;
        Ok((repos, opened.store))
    }

    fn open_all(dir: &Path) -> Result<(ReposFile, RepoStore), StateError> {
        open_all_with(dir, COMPACT_AT)
    }

    fn changes(repos: Vec<Change>) -> Changes {
        Changes {
            repos,
            unset_owners: false,
            owners: None,
        }
    }

    fn saved(n: u128) -> SavedRepo {
        SavedRepo {
            owner: Some(Uuid::from_u128(n)),
            holders: vec![SavedHolder {
                uuid: Uuid::from_u128(n),
                mirrored: true,
            }],
            status: RepoStatus {
                fetches: n as u64,
                ..RepoStatus::default()
            },
            state: None,
        }
    }

    fn fetches(r: &ReposFile) -> Vec<(String, u64)> {
        r.repos
            .iter()
            .map(|(id, s)| (id.clone(), s.status.fetches))
            .collect()
    }

    // SPEC §12 "State files": changes are appended, survive a reopen, and compaction
    // (forced small here) keeps every repo's latest record and drops removed ones.
    #[test]
    fn spec_12_changes_survive_reopen_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        let (repos, mut store) = open_all_with(d.path(), 1).unwrap();
        assert!(repos.repos.is_empty());
        store.save(changes(
            (0..50)
                .map(|i| (format!("r{i:02}"), Some(saved(i))))
                .collect(),
        ));
        store.save(changes(vec![
            ("r07".into(), None),
            ("r08".into(), Some(saved(800))),
        ]));
        store.sync().unwrap();
        store.save(changes(vec![("r09".into(), Some(saved(900)))]));
        store.close();
        let back = load(d.path()).unwrap();
        assert_eq!(back.repos.len(), 49);
        assert!(!back.repos.contains_key("r07"));
        assert_eq!(back.repos["r08"].status.fetches, 800);
        assert_eq!(back.repos["r09"].status.fetches, 900);
        // Compacted (journal ≥ 1 byte and bigger than the snapshot): the journal is short.
        let jour = std::fs::metadata(d.path().join(JOURNAL_FILE))
            .unwrap()
            .len();
        let snap = std::fs::metadata(d.path().join(SNAPSHOT_FILE))
            .unwrap()
            .len();
        assert!(jour < snap, "journal {jour} B, snapshot {snap} B");
        let (reopened, _store) = open_all(d.path()).unwrap();
        assert_eq!(fetches(&reopened), fetches(&back));
    }

    // SPEC §12 (coordinator memory): the main loop sends repo status only while few
    // batches wait for the writer, so `queued` must count each batch until the writer has
    // taken it, and come back to zero.
    #[test]
    fn spec_12_queued_counts_batches_until_the_writer_takes_them() {
        let d = tempfile::tempdir().unwrap();
        let (_, store) = open_all(d.path()).unwrap();
        assert_eq!(store.queued(), 0);
        for b in 0..20u128 {
            store.save(changes(
                (0..100)
                    .map(|i| (format!("r{b}-{i}"), Some(saved(i))))
                    .collect(),
            ));
        }
        // An empty batch is not sent, so not counted.
        store.save(changes(vec![]));
        assert!(store.queued() <= 20, "{}", store.queued());
        store.sync().unwrap();
        assert_eq!(store.queued(), 0);
    }

    // SPEC §12 "State files": records journaled before a restart are kept by the first
    // compaction after it.
    #[test]
    fn spec_12_compaction_after_a_restart_keeps_the_older_journal() {
        let d = tempfile::tempdir().unwrap();
        let (_, mut store) = open_all(d.path()).unwrap();
        store.save(changes(vec![("a".into(), Some(saved(1)))]));
        store.close();
        let (_, mut store) = open_all_with(d.path(), 1).unwrap();
        store.save(changes(vec![("b".into(), Some(saved(2)))]));
        store.close();
        let back = load(d.path()).unwrap();
        assert_eq!(fetches(&back), [("a".into(), 1), ("b".into(), 2)]);
    }

    // SPEC §10: every field of a repo's status comes back as it was saved.
    #[test]
    fn spec_10_a_full_status_round_trips() {
        use crate::fleet::{ErrorClass, LastError, LastResult, RepoState};
        let full = SavedRepo {
            owner: Some(Uuid::from_u128(7)),
            holders: vec![
                SavedHolder {
                    uuid: Uuid::from_u128(7),
                    mirrored: false,
                },
                SavedHolder {
                    uuid: Uuid::from_u128(9),
                    mirrored: true,
                },
            ],
            status: RepoStatus {
                by: Some(Uuid::from_u128(7)),
                last_fetch_ms: Some(1),
                last_success_ms: Some(2),
                last_change_ms: Some(3),
                next_due_ms: Some(-4),
                fetches: 5,
                failures: 6,
                last_error: Some(Box::new(LastError {
                    class: ErrorClass::RateLimited,
                    message: "slow down ✓".into(),
                    time_ms: 8,
                })),
                refs: Some(9),
                last_result: Some(LastResult::Waiting("disk".into())),
                published: Some(u64::MAX),
                published_refs: None,
            },
            state: Some(RepoState::Waiting),
        };
        let bytes = encode(&Record::Put {
            id: "a/b/c".into(),
            repo: full.clone(),
        });
        match decode(Path::new("x"), 0, &bytes).unwrap() {
            Record::Put { id, repo } => {
                assert_eq!(id, "a/b/c");
                assert_eq!(format!("{repo:?}"), format!("{full:?}"));
            }
            other => panic!("{other:?}"),
        }
    }

    // SPEC §12 "State files": a torn journal tail is dropped with one warning; a damaged
    // record elsewhere stops the daemon naming the file.
    #[test]
    fn spec_12_torn_tail_dropped_corruption_named() {
        let d = tempfile::tempdir().unwrap();
        let (_, mut store) = open_all(d.path()).unwrap();
        store.save(changes(vec![("a".into(), Some(saved(1)))]));
        store.sync().unwrap();
        store.save(changes(vec![("b".into(), Some(saved(2)))]));
        store.close();
        let jour = d.path().join(JOURNAL_FILE);
        let full = std::fs::read(&jour).unwrap();
        std::fs::write(&jour, &full[..full.len() - 3]).unwrap();
        let (repos, _store) = open_all(d.path()).unwrap();
        assert_eq!(repos.repos.keys().collect::<Vec<_>>(), ["a"]);
        drop(_store);
        let snap = d.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&snap).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&snap, &bytes).unwrap();
        let e = open_all(d.path()).err().unwrap();
        assert!(e.to_string().contains(SNAPSHOT_FILE), "{e}");
    }

    // SPEC §12 (restart at scale): the member fingerprint of the saved owners survives a
    // reopen and a compaction; a batch moving owners cut short leaves none, so a start
    // recomputes them rather than trusting half a move.
    #[test]
    fn spec_12_owner_fingerprint_is_kept_and_a_torn_move_clears_it() {
        let d = tempfile::tempdir().unwrap();
        let owners_at = |dir: &Path| {
            let mut repos = ReposFile::default();
            let o = open_with(dir, COMPACT_AT, &mut collect(&mut repos)).unwrap();
            (o.owners, repos.repos.len())
        };
        let (_, mut store) = open_all(d.path()).unwrap();
        store.save(Changes {
            repos: vec![("a".into(), Some(saved(1)))],
            unset_owners: true,
            owners: Some(5),
        });
        store.close();
        assert_eq!(owners_at(d.path()), (Some(5), 1));
        // Plain changes leave it; a compaction carries it into the snapshot.
        let (_, mut store) = open_all_with(d.path(), 1).unwrap();
        store.save(changes(vec![("b".into(), Some(saved(2)))]));
        store.save(changes(vec![("c".into(), Some(saved(3)))]));
        store.close();
        assert_eq!(owners_at(d.path()), (Some(5), 3));
        let snap = d.path().join(SNAPSHOT_FILE);
        let mut in_snapshot = Vec::new();
        journal::for_each_record(&snap, SNAPSHOT_KIND, VERSION, |offset, payload| {
            if let Record::Owners { members } = decode(&snap, offset, payload)? {
                in_snapshot.push(members);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(in_snapshot, [Some(5)], "compacted into the snapshot");
        // A move cut before its closing record: the repos written stay, the owners do not.
        let (_, mut store) = open_all(d.path()).unwrap();
        store.save(Changes {
            repos: vec![("d".into(), Some(saved(4)))],
            unset_owners: true,
            owners: Some(6),
        });
        store.close();
        let jour = d.path().join(JOURNAL_FILE);
        let full = std::fs::read(&jour).unwrap();
        std::fs::write(&jour, &full[..full.len() - 2]).unwrap();
        assert_eq!(owners_at(d.path()), (None, 4));
    }

    // SPEC §12 "State files": a crash after a compaction's snapshot and before its new
    // journal leaves a journal of the older generation, already folded in: replaced, and
    // nothing is applied twice or lost.
    #[test]
    fn spec_12_crash_inside_compaction() {
        let d = tempfile::tempdir().unwrap();
        let (_, mut store) = open_all(d.path()).unwrap();
        store.save(changes(vec![("a".into(), Some(saved(1)))]));
        store.close();
        let old_journal = std::fs::read(d.path().join(JOURNAL_FILE)).unwrap();
        let (_, mut store) = open_all_with(d.path(), 1).unwrap();
        store.save(changes(vec![
            ("b".into(), Some(saved(2))),
            ("a".into(), None),
        ]));
        store.close();
        // Put the generation-1 journal back, as if the new one was never written.
        std::fs::write(d.path().join(JOURNAL_FILE), old_journal).unwrap();
        let (repos, _store) = open_all(d.path()).unwrap();
        assert_eq!(repos.repos.keys().collect::<Vec<_>>(), ["b"]);
    }

    // SPEC §12 "State files": `repos.json` of the previous release is migrated at the
    // first start and kept as `repos.json.v1.bak`.
    #[test]
    fn spec_12_v1_repos_json_is_migrated_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut old = ReposFile::default();
        old.repos.insert("x/y/z".into(), saved(5));
        statefile::write_json(
            &d.path().join(V1_FILE),
            REPOS_KIND,
            REPOS_VERSION,
            &old,
            0o640,
        )
        .unwrap();
        assert_eq!(fetches(&load(d.path()).unwrap()), [("x/y/z".into(), 5)]);
        let (repos, _store) = open_all(d.path()).unwrap();
        assert_eq!(fetches(&repos), [("x/y/z".into(), 5)]);
        assert!(!d.path().join(V1_FILE).exists());
        assert!(d.path().join("repos.json.v1.bak").exists());
    }
}
