//! The worker's state on disk (SPEC §10, §12): a snapshot and an append-only journal of
//! checksummed records (`common::journal`), written by one thread with group commit.
//!
//! - `repos.snapshot` holds the whole state at one moment: every repo, the refs last
//!   reported for each, the outbox, the disposals. It is only ever written whole (temp,
//!   fsync, rename) by a compaction.
//! - `repos.journal` holds what changed since: a repo put or removed, an outcome queued
//!   (its ref changes update that repo's reported refs), an acknowledgement, a disposal.
//!   Persisting one of them costs an append in proportion to it.
//!
//! Both begin with a `Start{generation}` record. A compaction writes the snapshot of the
//! next generation and then a fresh journal of that generation; a journal older than the
//! snapshot (a crash between the two) is already folded in and is replaced. Every record
//! is idempotent (puts, absolute ref values, acks by id), so a batch appended twice after
//! a failed fsync replays to the same state.
//!
//! The loop keeps the repos and the outbox in memory (no refs); the writer thread keeps
//! its own compact copy (encoded records) to write snapshots from, and where on disk each
//! repo's refs are, so a fetch can read the refs it diffs against ([`RefsReader`]).
//!
//! `repos.json` of v1 (the previous release) is migrated at the first start and kept as
//! `repos.json.v1.bak`.

use crate::state::{Disposal, MODE, Refs, Repo, Repos, ReposV1, apply_changes, is_replaceable};
use gitmirror_common::journal::{self, Appender, WholeWriter};
use gitmirror_common::statefile::StateError;
use gitmirror_wire::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub const SNAPSHOT_FILE: &str = "repos.snapshot";
pub const JOURNAL_FILE: &str = "repos.journal";
const SNAPSHOT_KIND: &str = "worker-repos-snapshot";
const JOURNAL_KIND: &str = "worker-repos-journal";
const VERSION: u32 = 2;
/// The journal is folded into a new snapshot once it is this big and bigger than the
/// snapshot itself: the cost of compaction stays a fraction of the appends it saves.
const COMPACT_AT: u64 = 16 << 20;
/// Records written per batch at most (one fsync each batch).
const MAX_BATCH_RECORDS: usize = 50_000;
/// Records encoded and appended at a time within a batch.
const WRITE_CHUNK: usize = 1000;
/// After a failed write, the batch is tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One record of the snapshot or journal (JSON; variants are only ever appended).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Record {
    /// First record of both files.
    Start { generation: u64 },
    /// Snapshot: the next report id.
    NextReportId(u64),
    /// A repo is held, with these settings (replaces any earlier record of it).
    Repo { id: String, repo: Repo },
    /// A repo is no longer held; its reported refs are forgotten.
    Remove { id: String },
    /// Journal: an outcome queued in the outbox; its changes are now the repo's reported refs.
    Outcome(Outcome),
    /// Outcomes up to this report id were acknowledged.
    Ack { upto: u64 },
    /// A mirror awaits removal (`Some`), or no longer does (`None`).
    Disposal {
        id: String,
        disposal: Option<Disposal>,
    },
    /// Snapshot: the refs last reported for a repo, in full.
    Refs { id: String, refs: Refs },
    /// Snapshot: an outcome in the outbox (its changes are already in `Refs`).
    Outbox(Outcome),
}

fn encode(r: &Record) -> Vec<u8> {
    // Plain data (strings, numbers, maps with string keys) always encodes.
    serde_json::to_vec(r).unwrap_or_default()
}

fn decode(path: &Path, offset: u64, payload: &[u8]) -> Result<Record, StateError> {
    serde_json::from_slice(payload).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("the record at byte offset {offset} does not decode: {e}"),
    })
}

/// Which file a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileId {
    Snapshot,
    Journal,
}

/// Where one piece of a repo's reported refs is: a `Refs` record (the whole set) or an
/// `Outcome` record (changes to apply on top).
#[derive(Debug, Clone, Copy)]
struct Span {
    file: FileId,
    offset: u64,
}

/// Where every repo's reported refs are, and the open files to read them from. Replaced
/// whole by a compaction; readers keep the old files open until they are done.
struct RefsIndex {
    snapshot: Arc<File>,
    snapshot_path: PathBuf,
    journal: Arc<File>,
    journal_path: PathBuf,
    spans: HashMap<String, Vec<Span>>,
}

/// Reads the refs last reported for a repo (blocking: call it off the runtime).
#[derive(Clone)]
pub struct RefsReader {
    index: Arc<Mutex<RefsIndex>>,
}

/// `map_err` for an I/O error on `path`.
fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RefsReader {
    /// The refs last reported for `id` (empty when none were).
    pub fn load(&self, id: &str) -> Result<Refs, StateError> {
        let (spans, files) = {
            let index = lock(&self.index);
            let Some(spans) = index.spans.get(id) else {
                return Ok(Refs::new());
            };
            (
                spans.clone(),
                [
                    (index.snapshot.clone(), index.snapshot_path.clone()),
                    (index.journal.clone(), index.journal_path.clone()),
                ],
            )
        };
        let mut refs = Refs::new();
        for span in spans {
            let (file, path) = match span.file {
                FileId::Snapshot => &files[0],
                FileId::Journal => &files[1],
            };
            let payload = journal::read_record_at(file, path, span.offset)?;
            match decode(path, span.offset, &payload)? {
                Record::Refs { refs: all, .. } => refs = all,
                Record::Outcome(o) => apply_changes(&mut refs, &o.changes),
                _ => {
                    return Err(StateError::Corrupt {
                        path: path.clone(),
                        detail: format!(
                            "the record at byte offset {} holds no refs of {id}",
                            span.offset
                        ),
                    });
                }
            }
        }
        Ok(refs)
    }
}

/// The writer's copy of the state: records as they would go into a snapshot.
#[derive(Default)]
struct Folded {
    generation: u64,
    next_report_id: u64,
    /// Each held repo's settings, postcard-encoded, exactly sized (a growing `Vec` held up
    /// to twice the ~70 bytes: at 100k repos, megabytes of a worker's 128 MB).
    repos: HashMap<String, Box<[u8]>>,
    /// report id → (repo, replaceable, encoded `Outbox` record).
    outbox: BTreeMap<u64, (String, bool, Vec<u8>)>,
    replaceable: HashMap<String, u64>,
    disposals: HashMap<String, Disposal>,
}

impl Folded {
    /// Apply one record; `at` is where it is, for the refs index.
    fn apply(&mut self, record: &Record, at: Span, spans: &mut HashMap<String, Vec<Span>>) {
        match record {
            Record::Start { generation } => self.generation = *generation,
            Record::NextReportId(n) => self.next_report_id = self.next_report_id.max(*n),
            Record::Repo { id, repo } => {
                // Compact (a fifth of the JSON): this copy exists for every held repo.
                let encoded = postcard::to_stdvec(repo)
                    .unwrap_or_default()
                    .into_boxed_slice();
                match self.repos.get_mut(id) {
                    Some(slot) => *slot = encoded,
                    None => {
                        self.repos.insert(id.clone(), encoded);
                    }
                }
            }
            Record::Remove { id } => {
                self.repos.remove(id);
                spans.remove(id);
            }
            Record::Outcome(o) | Record::Outbox(o) => {
                if matches!(record, Record::Outcome(_)) && !o.changes.is_empty() {
                    spans.entry(o.repo.clone()).or_default().push(at);
                }
                let id = o.report_id;
                self.next_report_id = self.next_report_id.max(id.saturating_add(1));
                let replaceable = is_replaceable(o);
                if replaceable
                    && let Some(old) = self.replaceable.insert(o.repo.clone(), id)
                    && old != id
                {
                    self.outbox.remove(&old);
                }
                self.outbox.insert(
                    id,
                    (
                        o.repo.clone(),
                        replaceable,
                        encode(&Record::Outbox(o.clone())),
                    ),
                );
            }
            Record::Ack { upto } => {
                let kept = self.outbox.split_off(&upto.saturating_add(1));
                for (id, (repo, replaceable, _)) in std::mem::replace(&mut self.outbox, kept) {
                    if replaceable && self.replaceable.get(&repo) == Some(&id) {
                        self.replaceable.remove(&repo);
                    }
                }
            }
            Record::Disposal { id, disposal } => match disposal {
                Some(d) => {
                    self.disposals.insert(id.clone(), *d);
                }
                None => {
                    self.disposals.remove(id);
                }
            },
            Record::Refs { id, .. } => {
                spans.insert(id.clone(), vec![at]);
            }
        }
    }
}

/// Apply one record to the loop's state.
fn apply_to_state(state: &mut Repos, record: Record) {
    match record {
        Record::Start { .. } | Record::Refs { .. } => {}
        Record::NextReportId(n) => state.next_report_id = state.next_report_id.max(n),
        Record::Repo { id, repo } => {
            state.repos.insert(id, repo);
        }
        Record::Remove { id } => {
            state.repos.remove(&id);
        }
        Record::Outcome(o) | Record::Outbox(o) => state.insert_outcome(o),
        Record::Ack { upto } => {
            state.acknowledge(upto);
        }
        Record::Disposal { id, disposal } => match disposal {
            Some(d) => {
                state.disposals.insert(id, d);
            }
            None => {
                state.disposals.remove(&id);
            }
        },
    }
}

/// Records that recreate `state` with `refs` (a snapshot's contents after its `Start`).
fn snapshot_records(state: &Repos, refs: &BTreeMap<String, Refs>) -> Vec<Record> {
    let mut out = vec![Record::NextReportId(state.next_report_id)];
    for (id, repo) in &state.repos {
        out.push(Record::Repo {
            id: id.clone(),
            repo: repo.clone(),
        });
        if let Some(r) = refs.get(id).filter(|r| !r.is_empty()) {
            out.push(Record::Refs {
                id: id.clone(),
                refs: r.clone(),
            });
        }
    }
    out.extend(state.outbox.values().cloned().map(Record::Outbox));
    out.extend(state.disposals.iter().map(|(id, d)| Record::Disposal {
        id: id.clone(),
        disposal: Some(*d),
    }));
    out
}

/// The state files of `state_dir`.
fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join(SNAPSHOT_FILE), state_dir.join(JOURNAL_FILE))
}

/// Write a snapshot of `generation` holding `records`, then an empty journal of it.
fn write_fresh(state_dir: &Path, generation: u64, records: &[Record]) -> Result<(), StateError> {
    let (snap, jour) = paths(state_dir);
    let start = encode(&Record::Start { generation });
    let encoded: Vec<Vec<u8>> = records.iter().map(encode).collect();
    journal::write_whole(
        &snap,
        SNAPSHOT_KIND,
        VERSION,
        std::iter::once(start.as_slice()).chain(encoded.iter().map(Vec::as_slice)),
        MODE,
    )?;
    journal::write_whole(&jour, JOURNAL_KIND, VERSION, [start.as_slice()], MODE)?;
    Ok(())
}

/// The whole persisted state, refs included: for tests and tools. The worker itself never
/// holds every repo's refs at once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Saved {
    pub state: Repos,
    pub refs: BTreeMap<String, Refs>,
}

impl Saved {
    /// Read the state dir as the worker would at start, without changing anything (a v1
    /// `repos.json` is read as such; a torn journal tail is ignored).
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let (snap, jour) = paths(state_dir);
        if !snap.exists() {
            return Ok(match ReposV1::load(state_dir)? {
                Some(v1) => {
                    let (state, refs) = v1.upgrade();
                    Self { state, refs }
                }
                None => Self::default(),
            });
        }
        let loaded = replay(&snap, &jour)?;
        let reader = RefsReader {
            index: Arc::new(Mutex::new(loaded.index)),
        };
        let mut refs = BTreeMap::new();
        for id in loaded.state.repos.keys() {
            let r = reader.load(id)?;
            if !r.is_empty() {
                refs.insert(id.clone(), r);
            }
        }
        Ok(Self {
            state: loaded.state,
            refs,
        })
    }

    /// Replace the state dir's repo state with this one (a new snapshot, empty journal).
    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        write_fresh(state_dir, 1, &snapshot_records(&self.state, &self.refs))
    }
}

/// What replaying the files gives.
struct Loaded {
    state: Repos,
    folded: Folded,
    index: RefsIndex,
    /// Where the journal's good records end, and a torn tail after them.
    journal_end: u64,
    torn_at: Option<u64>,
    /// The journal was stale or missing and must be written afresh.
    journal_stale: bool,
}

fn replay(snap: &Path, jour: &Path) -> Result<Loaded, StateError> {
    let corrupt = |path: &Path, detail: String| StateError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let snapshot = journal::read(snap, SNAPSHOT_KIND, VERSION, false)?
        .ok_or_else(|| corrupt(snap, "it vanished while being read".into()))?;
    let mut state = Repos::default();
    let mut folded = Folded::default();
    let mut spans = HashMap::new();
    let mut generation = None;
    for (offset, payload) in snapshot.records() {
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
        let at = Span {
            file: FileId::Snapshot,
            offset,
        };
        folded.apply(&record, at, &mut spans);
        apply_to_state(&mut state, record);
    }
    let generation = generation.ok_or_else(|| corrupt(snap, "it holds no records".into()))?;
    let contents = journal::read(jour, JOURNAL_KIND, VERSION, true)?;
    let mut journal_end = 0;
    let mut torn_at = None;
    let mut journal_stale = true;
    if let Some(contents) = contents {
        let mut records = contents.records();
        let first = match records.next() {
            Some((offset, payload)) => Some(decode(jour, offset, payload)?),
            None => None,
        };
        match first {
            Some(Record::Start { generation: g }) if g == generation => {
                journal_stale = false;
                journal_end = contents.end;
                torn_at = contents.torn_at;
                for (offset, payload) in records {
                    let record = decode(jour, offset, payload)?;
                    let at = Span {
                        file: FileId::Journal,
                        offset,
                    };
                    folded.apply(&record, at, &mut spans);
                    apply_to_state(&mut state, record);
                }
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
    }
    folded.generation = generation;
    let open = |p: &Path| File::open(p).map(Arc::new);
    let snapshot_file = open(snap).map_err(|e| StateError::Io {
        action: "open",
        path: snap.to_owned(),
        source: e,
    })?;
    // A stale journal is replaced before anything reads from it.
    let journal_file = if journal_stale {
        snapshot_file.clone()
    } else {
        open(jour).map_err(|e| StateError::Io {
            action: "open",
            path: jour.to_owned(),
            source: e,
        })?
    };
    Ok(Loaded {
        state,
        folded,
        index: RefsIndex {
            snapshot: snapshot_file,
            snapshot_path: snap.to_owned(),
            journal: journal_file,
            journal_path: jour.to_owned(),
            spans,
        },
        journal_end,
        torn_at,
        journal_stale,
    })
}

/// Open the state in `state_dir`: migrate a v1 `repos.json`, replay snapshot and journal
/// (dropping a torn journal tail with one warning), and start the writer thread. Blocking.
pub fn open(state_dir: &Path) -> Result<(Repos, Store), StateError> {
    open_with(state_dir, journal::compact_at(COMPACT_AT))
}

/// [`open`], compacting once the journal passes `compact_at` bytes (and the snapshot's
/// size).
pub fn open_with(state_dir: &Path, compact_at: u64) -> Result<(Repos, Store), StateError> {
    let (snap, jour) = paths(state_dir);
    for p in [&snap, &jour] {
        let n = journal::remove_leftovers(p);
        if n > 0 {
            tracing::info!(path = %p.display(), count = n, "removed the temp file of an interrupted state write");
        }
    }
    let v1 = ReposV1::path(state_dir);
    let bak = state_dir.join(format!("{}.v1.bak", crate::state::REPOS_FILE));
    if !snap.exists() {
        match ReposV1::load(state_dir)? {
            Some(old) => {
                let (state, refs) = old.upgrade();
                write_fresh(state_dir, 1, &snapshot_records(&state, &refs))?;
                tracing::info!(from = %v1.display(), to = %snap.display(), repos = state.repos.len(), "migrated the worker state to format v2 (snapshot and journal)");
            }
            None => write_fresh(
                state_dir,
                1,
                &snapshot_records(&Repos::default(), &BTreeMap::new()),
            )?,
        }
    }
    if v1.exists() {
        // Migrated (now, or before a crash that came ahead of this rename).
        std::fs::rename(&v1, &bak).map_err(|e| StateError::Io {
            action: "rename to .v1.bak",
            path: v1.clone(),
            source: e,
        })?;
        tracing::info!(path = %bak.display(), "kept the v1 state file beside the new one");
    }
    let mut loaded = replay(&snap, &jour)?;
    if let Some(at) = loaded.torn_at {
        tracing::warn!(path = %jour.display(), offset = at, "dropping a torn record at the end of the journal (the worker stopped in the middle of writing it)");
    }
    if loaded.journal_stale {
        let start = encode(&Record::Start {
            generation: loaded.folded.generation,
        });
        journal::write_whole(&jour, JOURNAL_KIND, VERSION, [start.as_slice()], MODE)?;
        loaded.journal_end = std::fs::metadata(&jour)
            .map_err(|e| StateError::Io {
                action: "stat",
                path: jour.clone(),
                source: e,
            })?
            .len();
        loaded.index.journal = Arc::new(File::open(&jour).map_err(|e| StateError::Io {
            action: "open",
            path: jour.clone(),
            source: e,
        })?);
    }
    let appender = Appender::open(&jour, loaded.journal_end)?;
    let snapshot_len = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    let index = Arc::new(Mutex::new(loaded.index));
    let (tx, rx) = std::sync::mpsc::channel();
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(0u64);
    let writer = Writer {
        state_dir: state_dir.to_owned(),
        appender,
        folded: loaded.folded,
        index: index.clone(),
        snapshot_len,
        compact_at,
        durable: durable_tx,
        failing: false,
    };
    let thread = std::thread::Builder::new()
        .name("state-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StateError::Io {
            action: "start the writer thread for",
            path: jour.clone(),
            source: e,
        })?;
    Ok((
        loaded.state,
        Store {
            tx: Some(tx),
            next_seq: 0,
            durable: durable_rx,
            refs: RefsReader { index },
            thread: Some(thread),
        },
    ))
}

/// The loop's handle on the state files.
pub struct Store {
    tx: Option<std::sync::mpsc::Sender<(u64, Vec<Record>)>>,
    next_seq: u64,
    durable: tokio::sync::watch::Receiver<u64>,
    refs: RefsReader,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Store {
    /// Queue records for the journal; returns the batch's sequence number, durable once
    /// [`Store::durable`] reaches it. Never blocks.
    pub fn append(&mut self, records: Vec<Record>) -> u64 {
        self.next_seq += 1;
        if let Some(tx) = &self.tx
            && tx.send((self.next_seq, records)).is_err()
        {
            tracing::error!("the state writer has stopped; nothing more is persisted");
        }
        self.next_seq
    }

    /// Highest sequence number that is durable.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Changes whenever more becomes durable.
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.clone()
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn refs(&self) -> RefsReader {
        self.refs.clone()
    }

    /// Write what is queued and stop the writer thread (blocking).
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// The thread that owns the files.
struct Writer {
    state_dir: PathBuf,
    appender: Appender,
    folded: Folded,
    index: Arc<Mutex<RefsIndex>>,
    snapshot_len: u64,
    compact_at: u64,
    durable: tokio::sync::watch::Sender<u64>,
    /// A write failed and was not yet retried successfully (logged once).
    failing: bool,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<(u64, Vec<Record>)>) {
        let mut pending: Vec<(u64, Vec<Record>)> = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            if pending.is_empty() {
                match rx.recv() {
                    Ok(b) => pending.push(b),
                    Err(_) => break,
                }
            } else if self.failing {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(b) => pending.push(b),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
            }
            // Group commit: everything queued meanwhile goes with one fsync.
            let mut n: usize = pending.iter().map(|(_, r)| r.len()).sum();
            while n < MAX_BATCH_RECORDS {
                match rx.try_recv() {
                    Ok(b) => {
                        n += b.1.len();
                        pending.push(b);
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            match self.write(&pending) {
                Ok(()) => {
                    if self.failing {
                        tracing::info!(path = %self.appender.path().display(), "worker state is being saved again");
                        self.failing = false;
                    }
                    if let Some((seq, _)) = pending.last() {
                        self.durable.send_replace(*seq);
                    }
                    pending.clear();
                }
                Err(e) => {
                    if !self.failing {
                        tracing::error!(
                            "cannot save worker state (outcomes are held back until it works): {e}"
                        );
                        self.failing = true;
                    }
                    if !open {
                        // Stopping: what is not durable is redone after the restart.
                        break;
                    }
                    continue;
                }
            }
            if self.appender.len() > self.compact_at.max(self.snapshot_len)
                && let Err(e) = self.compact()
            {
                tracing::error!(
                    "cannot compact the worker state (the journal keeps growing until it works): {e}"
                );
            }
        }
    }

    /// Append the batches and make them durable.
    fn write(&mut self, batches: &[(u64, Vec<Record>)]) -> Result<(), StateError> {
        let records: Vec<&Record> = batches.iter().flat_map(|(_, r)| r.iter()).collect();
        // In slices, so a big batch (a first assignment of 100k repos) is never encoded
        // whole in memory; one fsync for all of them.
        for chunk in records.chunks(WRITE_CHUNK) {
            let encoded: Vec<Vec<u8>> = chunk.iter().map(|r| encode(r)).collect();
            let offsets = self.appender.append(encoded.iter().map(Vec::as_slice))?;
            let mut index = lock(&self.index);
            for (record, offset) in chunk.iter().zip(offsets) {
                let at = Span {
                    file: FileId::Journal,
                    offset,
                };
                self.folded.apply(record, at, &mut index.spans);
            }
        }
        self.appender.sync()
    }

    /// Fold the journal into a new snapshot and start a new journal.
    fn compact(&mut self) -> Result<(), StateError> {
        let (snap, jour) = paths(&self.state_dir);
        let generation = self.folded.generation + 1;
        let reader = RefsReader {
            index: self.index.clone(),
        };
        let mut w = WholeWriter::create(&snap, SNAPSHOT_KIND, VERSION, MODE)?;
        w.push(&encode(&Record::Start { generation }))?;
        w.push(&encode(&Record::NextReportId(self.folded.next_report_id)))?;
        let mut spans = HashMap::new();
        for (id, repo) in &self.folded.repos {
            let repo: Repo = postcard::from_bytes(repo).map_err(|e| StateError::Corrupt {
                path: snap.clone(),
                detail: format!("the writer's copy of {id} does not decode: {e}"),
            })?;
            w.push(&encode(&Record::Repo {
                id: id.clone(),
                repo,
            }))?;
            let has_refs = lock(&self.index).spans.contains_key(id);
            if has_refs {
                let refs = reader.load(id)?;
                if !refs.is_empty() {
                    let offset = w.push(&encode(&Record::Refs {
                        id: id.clone(),
                        refs,
                    }))?;
                    spans.insert(
                        id.clone(),
                        vec![Span {
                            file: FileId::Snapshot,
                            offset,
                        }],
                    );
                }
            }
        }
        for (_, _, payload) in self.folded.outbox.values() {
            w.push(payload)?;
        }
        for (id, d) in &self.folded.disposals {
            w.push(&encode(&Record::Disposal {
                id: id.clone(),
                disposal: Some(*d),
            }))?;
        }
        w.commit()?;
        journal::write_whole(
            &jour,
            JOURNAL_KIND,
            VERSION,
            [encode(&Record::Start { generation }).as_slice()],
            MODE,
        )?;
        let snapshot = Arc::new(File::open(&snap).map_err(io("open", &snap))?);
        let journal_file = Arc::new(File::open(&jour).map_err(io("open", &jour))?);
        let end = std::fs::metadata(&jour).map_err(io("stat", &jour))?.len();
        self.appender = Appender::open(&jour, end)?;
        self.snapshot_len = std::fs::metadata(&snap).map_err(io("stat", &snap))?.len();
        self.folded.generation = generation;
        *lock(&self.index) = RefsIndex {
            snapshot,
            snapshot_path: snap,
            journal: journal_file,
            journal_path: jour,
            spans,
        };
        tracing::debug!(
            generation,
            bytes = self.snapshot_len,
            "compacted the worker state"
        );
        Ok(())
    }
}
