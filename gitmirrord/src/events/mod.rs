//! The durable event log (SPEC §8, §12 "Event retention"; design.md "Event log at scale").
//!
//! `<state_dir>/events/` holds the log in segments ([`segment`]: `<first seq>.log`, one
//! checksummed JSON record per line, closed at `events.segment_bytes`) and a checkpoint
//! ([`checkpoint`]) of what start-up needs as of the last closed segment: per repo the
//! digest and refs published, per worker the highest report id. Start-up loads the
//! checkpoint's index and replays only the later records. Records are appended and fsynced
//! before the outcomes that produced them are acknowledged; one append call is one write
//! and one fsync for any number of events (group commit per outcome batch).
//!
//! Closing a segment starts a new checkpoint on a thread of its own: the published refs of
//! the events since the last checkpoint (the *overlay*) are frozen and merged with the old
//! checkpoint into a new file. Until it is in place, lookups read the live overlay, then
//! the frozen one, then the old checkpoint. Retention drops whole closed segments that a
//! checkpoint covers once they are older than `events.retain` or the segments exceed
//! `events.max_bytes`.
//!
//! On open, a torn last record (a crash in the middle of an append) is cut off with one
//! warning naming file and offset; any other record that does not decode stops the daemon,
//! naming the file. An `events.log` of format v1 is migrated at first start ([`migrate`]).

pub mod appender;
mod checkpoint;
mod migrate;
mod segment;

use checkpoint::{Checkpoint, Overlay};
use segment::{Record, Segment};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// The log's directory under the state dir.
pub const DIR: &str = "events";
/// The single-file log of format v1, migrated at first start.
pub const V1_FILE: &str = "events.log";
const MODE: u32 = 0o640;

/// The `events.*` keys (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOptions {
    /// Closed segments whose last write is older are dropped.
    pub retain: Duration,
    /// The oldest closed segments are dropped while the segments hold more.
    pub max_bytes: u64,
    /// A segment is closed (and a checkpoint started) once it holds this much.
    pub segment_bytes: u64,
    /// An event with more ref changes lists none, only `ref_count`.
    pub max_refs: usize,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            retain: Duration::from_secs(30 * 86_400),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            max_refs: 10_000,
        }
    }
}

/// Why the fetch behind an event ran (SPEC §15; docs/design.md "Push hooks"). Records
/// written before triggers existed read as `schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The worker's own schedule (polling).
    #[default]
    Schedule,
    /// A push hook.
    Push,
    /// `POST /api/repos/{id}/fetch` (or the page's fetch-now button).
    Manual,
    /// The first clone of a repo an index update added.
    Index,
    /// The first fetch by a new owner of a repo another worker held.
    Handover,
}

impl Trigger {
    pub const ALL: [Trigger; 5] = [
        Trigger::Schedule,
        Trigger::Push,
        Trigger::Manual,
        Trigger::Index,
        Trigger::Handover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Push => "push",
            Trigger::Manual => "manual",
            Trigger::Index => "index",
            Trigger::Handover => "handover",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Cloned,
    Updated,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// An event as published (SPEC §8, §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub repo: String,
    pub url: String,
    pub worker: u32,
    pub kind: EventKind,
    #[serde(default)]
    pub trigger: Trigger,
    /// Ref changes in the event; `refs` lists them unless there are more than
    /// `events.max_refs`. Absent (0) only in v1 records, which migration fills in.
    #[serde(default)]
    pub ref_count: u64,
    pub refs: Vec<RefUpdate>,
}

/// The refs published for one repo, as hashes: [`ref_key`] of the name → [`ref_value`]
/// of the name and object id.
pub type PublishedRefs = HashMap<u64, u64>;

pub fn ref_key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

pub fn ref_value(name: &str, id: &str) -> u64 {
    gitmirror_wire::refs::ref_hash(name, id)
}

/// Whether the ref change `name → new` (`None`: deleted) is news against `published`.
pub fn is_news(published: &PublishedRefs, name: &str, new: Option<&str>) -> bool {
    published.get(&ref_key(name)).copied() != new.map(|id| ref_value(name, id))
}

/// `published` after an event: a clone lists every ref (the set is replaced), an update
/// or removal lists changed refs.
pub fn apply_published<'a>(
    published: &mut PublishedRefs,
    kind: EventKind,
    refs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) {
    if kind == EventKind::Cloned {
        published.clear();
    }
    for (name, new) in refs {
        match new {
            Some(id) => published.insert(ref_key(name), ref_value(name, id)),
            None => published.remove(&ref_key(name)),
        };
    }
}

/// An event before it has a sequence number, with the report that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub time_ms: i64,
    pub repo: String,
    pub url: String,
    pub worker: u32,
    pub kind: EventKind,
    pub trigger: Trigger,
    pub refs: Vec<RefUpdate>,
    pub source: Uuid,
    pub report_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("cannot {action} event log file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "event log file {path} is corrupt at byte offset {offset} ({detail}); the daemon will not guess its contents. \
         Restore the events directory from a backup, or move it aside to start a new log \
         (`mv {path} {path}.broken`; event numbers may then restart)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error(
        "event log {path} could not be appended to earlier and was left inconsistent; restart the daemon"
    )]
    Poisoned { path: PathBuf },
    #[error(
        "events after {since} were dropped by retention (events.retain / events.max_bytes); the oldest kept event is {oldest_seq}"
    )]
    Gone { since: u64, oldest_seq: u64 },
}

pub(crate) fn io_err(
    path: &Path,
    action: &'static str,
) -> impl Fn(std::io::Error) -> EventLogError + use<> {
    let path = path.to_owned();
    move |source| EventLogError::Io {
        action,
        path: path.clone(),
        source,
    }
}

/// A checkpoint being written on its own thread.
struct Building {
    seq: u64,
    frozen: Arc<Overlay>,
    thread: std::thread::JoinHandle<Result<Checkpoint, EventLogError>>,
}

pub struct EventLog {
    dir: PathBuf,
    opts: EventOptions,
    /// Oldest first; the last one is appended to.
    segments: Vec<Segment>,
    active: File,
    /// Sum of the segments' lengths.
    bytes: u64,
    next_seq: u64,
    /// Highest report id per worker found in the log.
    reports: HashMap<Uuid, u64>,
    /// Per repo, the digest its last event recorded, as known at open; handed out once.
    digests_at_open: HashMap<String, u64>,
    checkpoint: Option<Arc<Checkpoint>>,
    /// Published refs of the events after the checkpoint (or after `building` started).
    live: Overlay,
    building: Option<Building>,
    /// Seq of the last event on disk (fsynced); readers see no further. Behind
    /// [`EventLog::last_seq`] between a [`EventLog::write`] and its sync.
    durable: u64,
    poisoned: bool,
}

pub(crate) fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> EventLogError {
    EventLogError::Corrupt {
        path: path.to_owned(),
        offset,
        detail: detail.into(),
    }
}

/// The segment files in `dir`, oldest first, headers checked. A last segment whose header
/// a crash cut short is given its header again.
fn list(dir: &Path) -> Result<Vec<Segment>, EventLogError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir, "list"))? {
        let entry = entry.map_err(io_err(dir, "list"))?;
        let Some(first) = entry.file_name().to_str().and_then(segment::parse_name) else {
            continue;
        };
        let path = entry.path();
        let meta = entry.metadata().map_err(io_err(&path, "stat"))?;
        segments.push(Segment {
            first,
            path,
            len: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    segments.sort_by_key(|s| s.first);
    let n = segments.len();
    for (i, seg) in segments.iter_mut().enumerate() {
        let mut head = Vec::with_capacity(segment::HEADER.len());
        File::open(&seg.path)
            .and_then(|f| {
                use std::io::Read;
                f.take(segment::HEADER.len() as u64).read_to_end(&mut head)
            })
            .map_err(io_err(&seg.path, "read"))?;
        if head == segment::HEADER {
            continue;
        }
        if i + 1 == n && segment::HEADER.starts_with(&head) {
            tracing::warn!(
                "event log {}: completing a header cut short by a crash while the segment was created (byte offset 0, {} bytes)",
                seg.path.display(),
                head.len()
            );
            let mut f = OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path, "open"))?;
            f.set_len(0)
                .and_then(|()| f.write_all(segment::HEADER))
                .and_then(|()| f.sync_all())
                .map_err(io_err(&seg.path, "rewrite"))?;
            seg.len = segment::HEADER.len() as u64;
            continue;
        }
        return Err(corrupt(
            &seg.path,
            0,
            format!(
                "expected the header {:?}",
                String::from_utf8_lossy(segment::HEADER).trim_end()
            ),
        ));
    }
    Ok(segments)
}

/// Create the segment starting at `first` holding `records` (already encoded), durably.
fn create_segment(dir: &Path, first: u64, records: &[u8]) -> Result<Segment, EventLogError> {
    let path = dir.join(segment::file_name(first));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(&path)
            .map_err(io_err(&path, "create"))?;
        f.write_all(segment::HEADER)
            .and_then(|()| f.write_all(records))
            .and_then(|()| f.sync_all())
            .map_err(io_err(&path, "write"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "fsync"))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Segment {
        first,
        path,
        len: (segment::HEADER.len() + records.len()) as u64,
        modified: SystemTime::now(),
    })
}

/// What start-up takes from one record read back.
fn replay(
    live: &mut Overlay,
    reports: &mut HashMap<Uuid, u64>,
    digests: &mut HashMap<String, u64>,
    rec: &Record,
) {
    let r = reports.entry(rec.src).or_insert(0);
    *r = (*r).max(rec.report);
    if let Some(d) = rec.digest {
        digests.insert(rec.repo.clone(), d);
    }
    checkpoint::apply(live, &rec.repo, rec.kind, rec.pairs(), rec.digest);
}

impl EventLog {
    /// Open (creating if missing) the log under `state_dir` with default options.
    pub fn open(state_dir: &Path) -> Result<Self, EventLogError> {
        Self::open_with(state_dir, EventOptions::default())
    }

    /// Open (creating or migrating if needed) the log under `state_dir`.
    pub fn open_with(state_dir: &Path, opts: EventOptions) -> Result<Self, EventLogError> {
        migrate::run(state_dir, &opts)?;
        let dir = state_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create directory"))?;
        checkpoint::clean(&dir);
        let mut segments = list(&dir)?;
        let (checkpoint, mut reports, mut digests) = match Checkpoint::load(&dir)? {
            Some(l) => (Some(Arc::new(l.checkpoint)), l.reports, l.digests),
            None => (None, HashMap::new(), HashMap::new()),
        };
        let covered = checkpoint.as_ref().map_or(0, |c| c.seq);
        if segments.is_empty() {
            segments.push(create_segment(&dir, covered + 1, &[])?);
        }
        if segments[0].first > covered + 1 {
            return Err(corrupt(
                &segments[0].path,
                0,
                format!(
                    "events {}–{} are missing (the checkpoint covers events up to {covered})",
                    covered + 1,
                    segments[0].first - 1
                ),
            ));
        }
        // Replay only the records after the checkpoint.
        let mut live = Overlay::new();
        let mut next_seq = covered + 1;
        let start = segments
            .partition_point(|s| s.first <= covered + 1)
            .saturating_sub(1);
        let last = segments.len() - 1;
        for (i, seg) in segments.iter_mut().enumerate().skip(start) {
            let from = if i == start {
                segment::seek(seg, covered)?
            } else {
                if seg.first != next_seq {
                    return Err(corrupt(
                        &seg.path,
                        0,
                        format!("the segment starts at event {}, not {next_seq}", seg.first),
                    ));
                }
                segment::HEADER.len() as u64
            };
            let mut r = segment::Reader::open(&seg.path, from, seg.len)?;
            loop {
                let (offset, decoded) = match r.next_line()? {
                    None => break,
                    Some(line) if line.complete => {
                        (line.offset, segment::decode::<Record>(line.bytes))
                    }
                    Some(line) => (line.offset, Err("no end of line".into())),
                };
                match decoded {
                    Ok(rec) if rec.seq == next_seq => {
                        replay(&mut live, &mut reports, &mut digests, &rec);
                        next_seq += 1;
                    }
                    Ok(rec) => {
                        return Err(corrupt(
                            &seg.path,
                            offset,
                            format!("event {} where {next_seq} was expected", rec.seq),
                        ));
                    }
                    Err(detail) if i == last && r.pos() >= seg.len => {
                        tracing::warn!(
                            "event log {}: dropping a torn record at byte offset {offset} ({} bytes, {detail}) left by a crash during an append; it was never acknowledged",
                            seg.path.display(),
                            seg.len - offset
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&seg.path)
                            .map_err(io_err(&seg.path, "open"))?;
                        f.set_len(offset)
                            .and_then(|()| f.sync_all())
                            .map_err(io_err(&seg.path, "truncate"))?;
                        seg.len = offset;
                        break;
                    }
                    Err(detail) => return Err(corrupt(&seg.path, offset, detail)),
                }
            }
        }
        let active_path = segments[last].path.clone();
        let active = OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(io_err(&active_path, "open"))?;
        let mut log = EventLog {
            dir,
            opts,
            bytes: segments.iter().map(|s| s.len).sum(),
            segments,
            active,
            next_seq,
            reports,
            digests_at_open: digests,
            checkpoint,
            live,
            building: None,
            durable: next_seq - 1,
            poisoned: false,
        };
        log.enforce_retention();
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Highest report id per worker recorded in the log.
    pub fn report_ids(&self) -> &HashMap<Uuid, u64> {
        &self.reports
    }

    /// Per repo, the digest of the refs published by its last event that recorded one, as
    /// the log held when it was opened; handed over once (later calls get nothing).
    pub fn take_published(&mut self) -> HashMap<String, u64> {
        std::mem::take(&mut self.digests_at_open)
    }

    /// Sequence number of the last event (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Sequence number of the oldest event kept (the next one while none is kept).
    pub fn oldest_seq(&self) -> u64 {
        self.segments.first().map_or(self.next_seq, |s| s.first)
    }

    /// Bytes in the segments.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number events, append them, and fsync. On error nothing is acknowledged and the
    /// file is cut back to its last complete record.
    pub fn append(&mut self, drafts: Vec<EventDraft>) -> Result<Vec<Event>, EventLogError> {
        self.append_with_digests(drafts, |_| None)
    }

    /// [`EventLog::write`] and [`EventLog::sync`].
    pub fn append_with_digests(
        &mut self,
        drafts: Vec<EventDraft>,
        digest: impl Fn(&EventDraft) -> Option<u64>,
    ) -> Result<Vec<Event>, EventLogError> {
        let events = self.write(drafts, digest)?;
        self.sync()?;
        Ok(events)
    }

    /// Number events and write them, recording with each event the digest of its repo's
    /// whole ref set once it is published (`digest(draft)`), for
    /// [`EventLog::take_published`]. They are not durable, and readers do not see them,
    /// until a sync ([`EventLog::sync`], or [`EventLog::unsynced`] and
    /// [`EventLog::synced`]): several writes share one fsync. On error the file is cut
    /// back to its last complete record.
    pub fn write(
        &mut self,
        drafts: Vec<EventDraft>,
        digest: impl Fn(&EventDraft) -> Option<u64>,
    ) -> Result<Vec<Event>, EventLogError> {
        if self.poisoned {
            return Err(EventLogError::Poisoned {
                path: self.active_path().to_owned(),
            });
        }
        // A failure is logged there and its layer kept; appends go on.
        let _ = self.poll_checkpoint(false);
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        let mut records = Vec::with_capacity(drafts.len());
        for (i, d) in drafts.into_iter().enumerate() {
            let digest = digest(&d);
            let ref_count = d.refs.len() as u64;
            let (refs, hashed) = if d.refs.len() > self.opts.max_refs {
                let hashed = d
                    .refs
                    .iter()
                    .map(|r| {
                        (
                            ref_key(&r.name),
                            r.new.as_deref().map(|id| ref_value(&r.name, id)),
                        )
                    })
                    .collect();
                (Vec::new(), hashed)
            } else {
                (d.refs, Vec::new())
            };
            let rec = Record {
                seq: self.next_seq + i as u64,
                time: gitmirror_common::rfc3339_ms(d.time_ms),
                repo: d.repo,
                url: d.url,
                worker: d.worker,
                kind: d.kind,
                trigger: d.trigger,
                ref_count,
                refs,
                src: d.source,
                report: d.report_id,
                digest,
                hashed,
            };
            segment::encode(&rec, &mut buf).map_err(|e| EventLogError::Io {
                action: "encode an event for",
                path: self.active_path().to_owned(),
                source: std::io::Error::other(e),
            })?;
            records.push(rec);
        }
        let active_len = self.segments.last().map_or(0, |s| s.len);
        let rolled =
            active_len > segment::HEADER.len() as u64 && active_len >= self.opts.segment_bytes;
        if rolled {
            // Close the active segment: the batch starts the next one, and a checkpoint of
            // everything before it is written meanwhile.
            self.sync()?;
            let seg = create_segment(&self.dir, self.next_seq, &buf)?;
            self.active = OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path, "open"))?;
            self.bytes += seg.len;
            self.segments.push(seg);
            self.start_checkpoint();
        } else {
            if let Err(source) = self.active.write_all(&buf) {
                // Cut back whatever part was written, so the next append starts a record.
                if self
                    .active
                    .set_len(active_len)
                    .and_then(|()| self.active.sync_all())
                    .is_err()
                {
                    self.poisoned = true;
                }
                return Err(EventLogError::Io {
                    action: "append to",
                    path: self.active_path().to_owned(),
                    source,
                });
            }
            if let Some(s) = self.segments.last_mut() {
                s.len += buf.len() as u64;
                s.modified = SystemTime::now();
            }
            self.bytes += buf.len() as u64;
        }
        let mut events = Vec::with_capacity(records.len());
        for rec in &records {
            let r = self.reports.entry(rec.src).or_insert(0);
            *r = (*r).max(rec.report);
            checkpoint::apply(&mut self.live, &rec.repo, rec.kind, rec.pairs(), rec.digest);
            events.push(rec.event());
        }
        self.next_seq += records.len() as u64;
        if rolled {
            // The old segment was synced before the new one, which `create_segment` synced.
            self.durable = self.last_seq();
        }
        self.enforce_retention();
        Ok(events)
    }

    /// Make every written event durable now.
    pub fn sync(&mut self) -> Result<(), EventLogError> {
        if let Some((file, seq)) = self.unsynced()? {
            match file.sync_data() {
                Ok(()) => self.synced(seq),
                Err(source) => return Err(self.sync_failed(source)),
            }
        }
        Ok(())
    }

    /// What a sync outside the lock needs: a handle on the active segment and the seq it
    /// makes durable; `None` when everything written is durable.
    pub fn unsynced(&self) -> Result<Option<(File, u64)>, EventLogError> {
        if self.poisoned {
            // After a failed fsync a later one proves nothing about the earlier writes.
            return Err(EventLogError::Poisoned {
                path: self.active_path().to_owned(),
            });
        }
        if self.durable >= self.last_seq() {
            return Ok(None);
        }
        let file = self
            .active
            .try_clone()
            .map_err(io_err(self.active_path(), "open"))?;
        Ok(Some((file, self.last_seq())))
    }

    /// Events up to `seq` are durable: readers may see them.
    pub fn synced(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    /// A sync failed: what was written since the last one may or may not be on disk, so
    /// nothing more is written (the daemon must restart; its start reads what is there).
    pub fn sync_failed(&mut self, source: std::io::Error) -> EventLogError {
        self.poisoned = true;
        EventLogError::Io {
            action: "fsync",
            path: self.active_path().to_owned(),
            source,
        }
    }

    /// Seq of the last durable event: readers see up to here.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    fn active_path(&self) -> &Path {
        self.segments
            .last()
            .map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    /// Up to `limit` events with `seq > since`, oldest first (SPEC §9, §12): `since` 0
    /// starts at the oldest kept event; a `since` before it is [`EventLogError::Gone`].
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Event>, EventLogError> {
        let after = if since == 0 {
            self.oldest_seq() - 1
        } else {
            since
        };
        self.after(after, limit)
    }

    /// Up to `limit` events with `seq > after`, oldest first; [`EventLogError::Gone`] when
    /// some of them were dropped by retention. Seeks: the segment by its first number,
    /// then the record by bisection.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Event>, EventLogError> {
        let oldest = self.oldest_seq();
        if after.saturating_add(1) < oldest {
            return Err(EventLogError::Gone {
                since: after,
                oldest_seq: oldest,
            });
        }
        let mut out = Vec::new();
        if after >= self.durable || limit == 0 {
            return Ok(out);
        }
        let i = self
            .segments
            .partition_point(|s| s.first <= after + 1)
            .saturating_sub(1);
        for (j, seg) in self.segments[i..].iter().enumerate() {
            let from = if j == 0 {
                segment::seek(seg, after)?
            } else {
                segment::HEADER.len() as u64
            };
            let mut r = segment::Reader::open(&seg.path, from, seg.len)?;
            while let Some(line) = r.next_line()? {
                let offset = line.offset;
                let ev: Event =
                    segment::decode(line.bytes).map_err(|d| corrupt(&seg.path, offset, d))?;
                if ev.seq > self.durable {
                    return Ok(out);
                }
                if ev.seq > after {
                    out.push(ev);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The last `n` durable events kept, oldest first.
    pub fn recent(&self, n: usize) -> Result<Vec<Event>, EventLogError> {
        let after = self
            .durable
            .saturating_sub(n as u64)
            .max(self.oldest_seq() - 1);
        self.after(after, n)
    }

    /// The values published for the refs `names` of `repo`, read from the overlays and the
    /// checkpoint; a ref that is absent is not published. `None` when the repo had no
    /// event. Blocking (may read the checkpoint file).
    pub fn published_refs(
        &mut self,
        repo: &str,
        names: &[&str],
    ) -> Result<Option<PublishedRefs>, EventLogError> {
        // A failure is logged there and its layer kept; appends go on.
        let _ = self.poll_checkpoint(false);
        let mut keys: Vec<u64> = names.iter().map(|n| ref_key(n)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut out = PublishedRefs::new();
        let mut known = false;
        let frozen = self.building.as_ref().map(|b| &*b.frozen);
        for layer in [Some(&self.live), frozen].into_iter().flatten() {
            let Some(d) = layer.get(repo) else {
                continue;
            };
            known = true;
            keys.retain(|k| match d.refs.get(k) {
                Some(Some(v)) => {
                    out.insert(*k, *v);
                    false
                }
                Some(None) => false,
                None => !d.full,
            });
            if d.full {
                return Ok(Some(out));
            }
        }
        if let Some(cp) = &self.checkpoint
            && let Some(pairs) = cp.refs(repo)?
        {
            known = true;
            for k in keys {
                if let Ok(i) = pairs.binary_search_by_key(&k, |p| p.0) {
                    out.insert(k, pairs[i].1);
                }
            }
        }
        Ok(known.then_some(out))
    }

    /// Write a checkpoint of everything appended so far and wait for it (tests, benches).
    pub fn checkpoint_now(&mut self) -> Result<(), EventLogError> {
        self.poll_checkpoint(true)?;
        self.start_checkpoint();
        self.poll_checkpoint(true)?;
        Ok(())
    }

    /// Freeze the overlay and write a checkpoint of it on a thread of its own, unless one
    /// is being written.
    fn start_checkpoint(&mut self) {
        if self.building.is_some() || self.live.is_empty() {
            return;
        }
        // A checkpoint covers only durable events: after a crash, the events it covers
        // must still be in the log.
        if let Err(e) = self.sync() {
            tracing::error!("event log: {e}; no checkpoint");
            return;
        }
        let seq = self.last_seq();
        let frozen = Arc::new(std::mem::take(&mut self.live));
        let (dir, old, reports, layer) = (
            self.dir.clone(),
            self.checkpoint.clone(),
            self.reports.clone(),
            frozen.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("events-checkpoint".into())
            .spawn(move || {
                let written = Checkpoint::write(&dir, old.as_deref(), &layer, seq, &reports);
                // The merge and its encoding (every repo's refs) freed on this thread.
                gitmirror_common::heap::release_free();
                written
            });
        match spawned {
            Ok(thread) => {
                self.building = Some(Building {
                    seq,
                    frozen,
                    thread,
                })
            }
            Err(e) => {
                tracing::error!("event log: cannot start a checkpoint thread: {e}");
                self.unfreeze(frozen);
            }
        }
    }

    /// Put a frozen overlay whose checkpoint failed back under the live one.
    fn unfreeze(&mut self, frozen: Arc<Overlay>) {
        let lower = Arc::try_unwrap(frozen).unwrap_or_else(|a| (*a).clone());
        checkpoint::merge_under(lower, &mut self.live);
    }

    /// Install a finished checkpoint (waiting for it when `block`); then retention may
    /// drop the segments it covers.
    fn poll_checkpoint(&mut self, block: bool) -> Result<(), EventLogError> {
        match &self.building {
            Some(b) if block || b.thread.is_finished() => {}
            _ => return Ok(()),
        }
        let Some(b) = self.building.take() else {
            return Ok(());
        };
        let result = match b.thread.join() {
            Ok(r) => r,
            Err(_) => Err(EventLogError::Io {
                action: "write a checkpoint in",
                path: self.dir.clone(),
                source: std::io::Error::other("the checkpoint thread panicked"),
            }),
        };
        match result {
            Ok(cp) => {
                tracing::info!(
                    "event log: checkpoint at event {} written to {}",
                    b.seq,
                    self.dir.join(checkpoint::FILE).display()
                );
                self.checkpoint = Some(Arc::new(cp));
                self.enforce_retention();
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "{e}; the checkpoint is tried again when the next segment is closed"
                );
                self.unfreeze(b.frozen);
                Err(e)
            }
        }
    }

    /// Drop the oldest closed segments past `events.retain` or `events.max_bytes`, once a
    /// checkpoint covers them (else start one).
    fn enforce_retention(&mut self) {
        let now = SystemTime::now();
        let covered = self.checkpoint.as_ref().map_or(0, |c| c.seq);
        while self.segments.len() > 1 {
            let last = self.segments[1].first - 1;
            let s = &self.segments[0];
            let too_big = self.bytes > self.opts.max_bytes;
            let too_old = now
                .duration_since(s.modified)
                .is_ok_and(|age| age > self.opts.retain);
            if !too_big && !too_old {
                break;
            }
            if last > covered {
                self.start_checkpoint();
                break;
            }
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::error!(
                    "event log: cannot drop {} past retention: {e}",
                    s.path.display()
                );
                break;
            }
            tracing::info!(
                "event log: dropped {} (events {}–{last}, {} bytes) past {}",
                s.path.display(),
                s.first,
                s.len,
                if too_old {
                    "events.retain"
                } else {
                    "events.max_bytes"
                }
            );
            self.bytes -= s.len;
            self.segments.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(report_id: u64) -> EventDraft {
        EventDraft {
            time_ms: 1_700_000_000_000,
            repo: "a/abc/abc".into(),
            url: "https://example.org/abc".into(),
            worker: 2,
            kind: EventKind::Updated,
            trigger: Default::default(),
            refs: vec![RefUpdate {
                name: "refs/heads/master".into(),
                old: Some("9fceb02".into()),
                new: Some("e5a2f01".into()),
            }],
            source: Uuid::from_u128(7),
            report_id,
        }
    }

    fn refs(list: &[(&str, Option<&str>, Option<&str>)]) -> Vec<RefUpdate> {
        list.iter()
            .map(|(n, o, w)| RefUpdate {
                name: (*n).into(),
                old: o.map(Into::into),
                new: w.map(Into::into),
            })
            .collect()
    }

    fn small(segment_bytes: u64) -> EventOptions {
        EventOptions {
            segment_bytes,
            ..EventOptions::default()
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    fn segment_files(state: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(state.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        v.sort();
        v
    }

    // SPEC §8, §12, §15: numbered, durable, readable back after a restart, with `ref_count`
    // and `trigger`.
    #[test]
    fn spec_8_append_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let ev = log.append(vec![draft(1), draft(2)]).unwrap();
        assert_eq!(seqs(&ev), vec![1, 2]);
        assert_eq!(ev[0].time, "2023-11-14T22:13:20Z");
        drop(log);
        let mut log = EventLog::open(d.path()).unwrap();
        assert_eq!(log.last_seq(), 2);
        assert_eq!(log.report_ids()[&Uuid::from_u128(7)], 2);
        assert_eq!(log.append(vec![draft(3)]).unwrap()[0].seq, 3);
        assert_eq!(log.since(1, 10).unwrap().len(), 2);
        assert_eq!(log.since(0, 1).unwrap()[0].seq, 1);
        let json = serde_json::to_value(&log.since(2, 10).unwrap()[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq":3,"time":"2023-11-14T22:13:20Z","repo":"a/abc/abc",
                "url":"https://example.org/abc","worker":2,"kind":"updated","trigger":"schedule","ref_count":1,
                "refs":[{"name":"refs/heads/master","old":"9fceb02","new":"e5a2f01"}]})
        );
    }

    // SPEC §8, §10: readers (the API, webhooks) see an event only once it is durable;
    // several writes share one sync, made with a handle taken under the lock.
    #[test]
    fn spec_8_written_events_are_read_only_once_synced() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        log.append(vec![draft(1)]).unwrap();
        assert_eq!(seqs(&log.write(vec![draft(2)], |_| None).unwrap()), vec![2]);
        assert_eq!(seqs(&log.write(vec![draft(3)], |_| None).unwrap()), vec![3]);
        assert_eq!((log.last_seq(), log.durable_seq()), (3, 1));
        assert_eq!(
            seqs(&log.since(0, 10).unwrap()),
            vec![1],
            "unsynced are unseen"
        );
        assert_eq!(seqs(&log.recent(10).unwrap()), vec![1]);
        let (file, seq) = log.unsynced().unwrap().expect("two writes to sync");
        assert_eq!(seq, 3);
        file.sync_data().unwrap();
        log.synced(seq);
        assert!(log.unsynced().unwrap().is_none());
        assert_eq!(seqs(&log.since(0, 10).unwrap()), vec![1, 2, 3]);
        drop(log);
        assert_eq!(EventLog::open(d.path()).unwrap().last_seq(), 3);
    }

    // A failed fsync leaves unknown what reached the disk: the log takes no more writes,
    // and no later sync vouches for the earlier ones.
    #[test]
    fn spec_10_a_failed_sync_poisons_the_log() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        log.write(vec![draft(1)], |_| None).unwrap();
        let e = log.sync_failed(std::io::Error::other("EIO"));
        assert!(e.to_string().contains("fsync"), "{e}");
        assert!(log.unsynced().is_err());
        assert!(log.write(vec![draft(2)], |_| None).is_err());
        assert!(log.since(0, 10).unwrap().is_empty());
    }

    // SPEC §8, §10: the digest of the refs each event published survives a restart, the
    // last one per repo wins, and the API does not show it.
    #[test]
    fn spec_8_published_digests_come_back_from_the_log() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let mut other = draft(3);
        other.repo = "b/bcd/bcd".into();
        log.append(vec![draft(1)]).unwrap();
        log.append_with_digests(vec![draft(2), other], |e| {
            Some(if e.repo == "a/abc/abc" { 11 } else { 22 })
        })
        .unwrap();
        log.checkpoint_now().unwrap();
        log.append_with_digests(vec![draft(4)], |_| Some(33))
            .unwrap();
        drop(log);
        let mut log = EventLog::open(d.path()).unwrap();
        let want: HashMap<String, u64> =
            [("a/abc/abc".to_owned(), 33), ("b/bcd/bcd".to_owned(), 22)].into();
        assert_eq!(log.take_published(), want);
        assert!(log.take_published().is_empty(), "handed over once");
        let json = serde_json::to_value(&log.since(0, 10).unwrap()[3]).unwrap();
        assert!(json.get("digest").is_none(), "{json}");
    }

    // SPEC §8, §12: the refs published per repo are kept on disk, not in memory: a clone
    // sets the whole set, an update changes the refs it lists, a deletion removes one; the
    // answer is the same from the live overlay, from a checkpoint and after a restart.
    #[test]
    fn spec_12_published_refs_come_from_overlay_and_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let mut clone = draft(1);
        clone.kind = EventKind::Cloned;
        clone.refs = refs(&[
            ("refs/heads/a", None, Some("1")),
            ("refs/heads/b", None, Some("2")),
        ]);
        let mut update = draft(2);
        update.refs = refs(&[
            ("refs/heads/a", Some("1"), Some("3")),
            ("refs/heads/b", Some("2"), None),
            ("refs/tags/t", None, Some("4")),
        ]);
        log.append(vec![clone]).unwrap();
        log.checkpoint_now().unwrap();
        log.append(vec![update]).unwrap();
        let names = ["refs/heads/a", "refs/heads/b", "refs/tags/t", "refs/x"];
        let want: PublishedRefs = [("refs/heads/a", "3"), ("refs/tags/t", "4")]
            .iter()
            .map(|(n, id)| (ref_key(n), ref_value(n, id)))
            .collect();
        let check = |log: &mut EventLog, when: &str| {
            let p = log.published_refs("a/abc/abc", &names).unwrap().unwrap();
            assert_eq!(p, want, "{when}");
            assert!(!is_news(&p, "refs/heads/a", Some("3")));
            assert!(is_news(&p, "refs/heads/a", Some("1")));
            assert!(!is_news(&p, "refs/heads/b", None));
            assert!(is_news(&p, "refs/heads/b", Some("2")));
            assert_eq!(log.published_refs("z/z/z", &names).unwrap(), None, "{when}");
        };
        check(&mut log, "checkpoint + overlay");
        drop(log);
        let mut log = EventLog::open(d.path()).unwrap();
        check(&mut log, "after a restart (replayed)");
        log.checkpoint_now().unwrap();
        check(&mut log, "from the second checkpoint");
        drop(log);
        let mut log = EventLog::open(d.path()).unwrap();
        check(&mut log, "after a restart (checkpoint only)");
    }

    // SPEC §12: a crash mid-append leaves a torn last record, which is dropped.
    #[test]
    fn spec_12_torn_tail_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        log.append(vec![draft(1)]).unwrap();
        drop(log);
        let p = segment_files(d.path()).pop().unwrap();
        let good = std::fs::read(&p).unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"0badc0de {\"seq\":2,\"time\":\"20").unwrap();
        drop(f);
        let mut log = EventLog::open(d.path()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), good);
        assert_eq!(log.append(vec![draft(2)]).unwrap()[0].seq, 2);
        drop(log);
        // A complete last line with a wrong checksum is torn too.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let log = EventLog::open(d.path()).unwrap();
        assert_eq!(log.last_seq(), 1);
    }

    // SPEC §10: any other bad record is loud and names the file and offset.
    #[test]
    fn spec_10_corrupt_middle_record_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        log.append(vec![draft(1)]).unwrap();
        log.append(vec![draft(2)]).unwrap();
        drop(log);
        let p = segment_files(d.path()).pop().unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let at = segment::HEADER.len() + 20;
        bytes[at] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let e = EventLog::open(d.path()).err().unwrap().to_string();
        assert!(
            e.contains(&p.display().to_string())
                && e.contains(&format!("offset {}", segment::HEADER.len())),
            "{e}"
        );
        std::fs::write(&p, "something else\n").unwrap();
        let e = EventLog::open(d.path()).err().unwrap().to_string();
        assert!(e.contains("header"), "{e}");
    }

    // SPEC §12: segments roll by size; `since` seeks across them; start-up replays only
    // what follows the checkpoint (a damaged record it covers is never read).
    #[test]
    fn spec_12_segments_roll_and_since_seeks() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open_with(d.path(), small(4096)).unwrap();
        for i in 0..100 {
            let batch: Vec<_> = (0..10).map(|j| draft(i * 10 + j + 1)).collect();
            log.append(batch).unwrap();
        }
        log.checkpoint_now().unwrap();
        assert_eq!(log.last_seq(), 1000);
        let files = segment_files(d.path());
        assert!(files.len() > 10, "{files:?}");
        for since in [0, 1, 9, 10, 11, 499, 500, 998, 999, 1000] {
            let got = log.since(since, 5).unwrap();
            let want: Vec<u64> = (since + 1..=1000).take(5).collect();
            assert_eq!(seqs(&got), want, "since {since}");
        }
        assert_eq!(seqs(&log.recent(3).unwrap()), vec![998, 999, 1000]);
        drop(log);
        // Damage a record in the middle of an early segment: the checkpoint covers it.
        let mut bytes = std::fs::read(&files[1]).unwrap();
        let at = segment::HEADER.len() + 30;
        bytes[at] ^= 1;
        std::fs::write(&files[1], &bytes).unwrap();
        let mut log = EventLog::open_with(d.path(), small(4096)).unwrap();
        assert_eq!(log.last_seq(), 1000);
        assert_eq!(log.report_ids()[&Uuid::from_u128(7)], 1000);
        assert_eq!(log.append(vec![draft(1001)]).unwrap()[0].seq, 1001);
    }

    // SPEC §12: whole segments past events.max_bytes are dropped once a checkpoint covers
    // them; `since` before the oldest kept event is Gone, `since=0` starts at it.
    #[test]
    fn spec_12_retention_drops_whole_segments() {
        let d = tempfile::tempdir().unwrap();
        let opts = EventOptions {
            segment_bytes: 4096,
            max_bytes: 16 << 10,
            ..EventOptions::default()
        };
        let mut log = EventLog::open_with(d.path(), opts).unwrap();
        for i in 0..200 {
            log.append(vec![draft(i + 1)]).unwrap();
            if i % 50 == 0 {
                log.checkpoint_now().unwrap();
            }
        }
        log.checkpoint_now().unwrap();
        log.append(vec![draft(201)]).unwrap();
        let oldest = log.oldest_seq();
        assert!(oldest > 1, "nothing dropped");
        assert!(log.bytes() <= (16 << 10) + 4096 + 1024, "{}", log.bytes());
        match log.since(1, 10) {
            Err(EventLogError::Gone { oldest_seq, .. }) => assert_eq!(oldest_seq, oldest),
            other => panic!("{other:?}"),
        }
        assert_eq!(log.since(0, 1).unwrap()[0].seq, oldest);
        assert_eq!(log.since(oldest - 1, 1).unwrap()[0].seq, oldest);
        let first = segment_files(d.path())[0].clone();
        assert_eq!(
            segment::parse_name(&first.file_name().unwrap().to_string_lossy()),
            Some(oldest)
        );
        drop(log);
        let log = EventLog::open_with(d.path(), opts).unwrap();
        assert_eq!((log.oldest_seq(), log.last_seq()), (oldest, 201));
        // Retention by age: everything closed is older than 0s.
        drop(log);
        let aged = EventOptions {
            retain: Duration::ZERO,
            ..opts
        };
        let log = EventLog::open_with(d.path(), aged).unwrap();
        assert_eq!(segment_files(d.path()).len(), 1);
        assert_eq!(log.since(0, 1000).unwrap().last().unwrap().seq, 201);
    }

    // SPEC §12: an event with more than events.max_refs changes lists none, only the
    // count, and its refs are still published (after a restart too).
    #[test]
    fn spec_12_max_refs_lists_only_the_count() {
        let d = tempfile::tempdir().unwrap();
        let opts = EventOptions {
            max_refs: 2,
            ..EventOptions::default()
        };
        let mut log = EventLog::open_with(d.path(), opts).unwrap();
        let mut clone = draft(1);
        clone.kind = EventKind::Cloned;
        clone.refs = refs(&[
            ("refs/heads/a", None, Some("1")),
            ("refs/heads/b", None, Some("2")),
            ("refs/heads/c", None, Some("3")),
        ]);
        let ev = log.append(vec![clone, draft(2)]).unwrap();
        assert_eq!((ev[0].ref_count, ev[0].refs.len()), (3, 0));
        assert_eq!((ev[1].ref_count, ev[1].refs.len()), (1, 1));
        drop(log);
        let mut log = EventLog::open_with(d.path(), opts).unwrap();
        let e = &log.since(0, 1).unwrap()[0];
        assert_eq!((e.ref_count, e.refs.len()), (3, 0));
        let p = log
            .published_refs("a/abc/abc", &["refs/heads/c", "refs/heads/master"])
            .unwrap()
            .unwrap();
        assert!(!is_news(&p, "refs/heads/c", Some("3")));
        assert!(!is_news(&p, "refs/heads/master", Some("e5a2f01")));
    }

    // SPEC §12: a kill while a checkpoint was written leaves its temp file and the old
    // checkpoint; start-up removes the one, uses the other and replays what follows.
    #[test]
    fn spec_12_kill_during_a_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open_with(d.path(), small(1024)).unwrap();
        for i in 1..=20 {
            log.append(vec![draft(i)]).unwrap();
        }
        log.checkpoint_now().unwrap();
        for i in 21..=40 {
            log.append(vec![draft(i)]).unwrap();
        }
        // A rollover may have started a checkpoint on its thread: let it end first, or it
        // could rename the half checkpoint below into place (a race of the test only).
        log.poll_checkpoint(true).unwrap();
        drop(log);
        let tmp = d.path().join(DIR).join(".checkpoint.tmp");
        std::fs::write(&tmp, b"half a checkpoint").unwrap();
        let mut log = EventLog::open_with(d.path(), small(1024)).unwrap();
        assert!(!tmp.exists());
        assert_eq!(log.last_seq(), 40);
        assert_eq!(log.report_ids()[&Uuid::from_u128(7)], 40);
        assert_eq!(
            log.take_published().len(),
            0,
            "these drafts record no digest"
        );
        let p = log
            .published_refs("a/abc/abc", &["refs/heads/master"])
            .unwrap()
            .unwrap();
        assert!(!is_news(&p, "refs/heads/master", Some("e5a2f01")));
        assert_eq!(
            seqs(&log.since(0, 100).unwrap()),
            (1..=40).collect::<Vec<_>>()
        );
    }

    // SPEC §12: a v1 events.log (the checked-in sample) migrates at first start; the old
    // file is kept as events.log.v1.bak; a migration cut short is done again.
    #[test]
    fn spec_12_v1_event_log_migrates() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v1/events.log");
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(&sample, d.path().join(V1_FILE)).unwrap();
        // Leftovers of a migration killed half-way.
        std::fs::create_dir(d.path().join("events.migrating")).unwrap();
        std::fs::write(d.path().join("events.migrating/junk"), "x").unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        assert!(!d.path().join(V1_FILE).exists());
        assert_eq!(
            std::fs::read(d.path().join("events.log.v1.bak")).unwrap(),
            std::fs::read(&sample).unwrap()
        );
        assert!(!d.path().join("events.migrating").exists());
        let all = log.since(0, 100).unwrap();
        assert_eq!(seqs(&all), vec![1]);
        assert_eq!(all[0].kind, EventKind::Cloned);
        assert_eq!(all[0].ref_count, 1);
        assert_eq!(log.report_ids()[&Uuid::from_u128(42)], 40);
        let p = log
            .published_refs("a/abc/abc", &["refs/heads/master"])
            .unwrap()
            .unwrap();
        assert!(!is_news(&p, "refs/heads/master", Some("e5a2f01")));
        assert_eq!(log.append(vec![draft(41)]).unwrap()[0].seq, 2);
        drop(log);
        // A crash after the directory rename but before the backup rename.
        std::fs::rename(d.path().join("events.log.v1.bak"), d.path().join(V1_FILE)).unwrap();
        let log = EventLog::open(d.path()).unwrap();
        assert_eq!(log.last_seq(), 2);
        assert!(d.path().join("events.log.v1.bak").exists());
    }
}
