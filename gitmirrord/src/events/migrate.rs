//! Migration of `events.log` (format v1: one file, a JSON event per line, replayed whole at
//! every start) to the segmented log (SPEC §12).
//!
//! The segments and a checkpoint at the last event are written into `events.migrating/`,
//! which is renamed to `events/` when complete; then `events.log` becomes
//! `events.log.v1.bak`. A crash before the rename leaves `events.log` in charge and the
//! next start migrates again; a crash after it finds `events/` and only renames the old
//! file.

use super::checkpoint::{self, Checkpoint, Overlay};
use super::segment::{self, Record};
use super::{DIR, Event, EventLogError, EventOptions, MODE, V1_FILE, corrupt, io_err};
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

const V1_HEADER: &[u8] = b"gitmirror-state events v1\n";
const WORK_DIR: &str = "events.migrating";

/// One line of a v1 log.
#[derive(Deserialize)]
struct V1Line {
    #[serde(flatten)]
    event: Event,
    src: Uuid,
    report: u64,
    #[serde(default)]
    digest: Option<u64>,
}

/// Migrate `<state_dir>/events.log` if it is there.
pub fn run(state_dir: &Path, opts: &EventOptions) -> Result<(), EventLogError> {
    let v1 = state_dir.join(V1_FILE);
    if !v1.exists() {
        return Ok(());
    }
    let dir = state_dir.join(DIR);
    let bak = state_dir.join(format!("{V1_FILE}.v1.bak"));
    if !dir.exists() {
        let work = state_dir.join(WORK_DIR);
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(io_err(&work, "remove"))?;
        }
        std::fs::create_dir(&work).map_err(io_err(&work, "create directory"))?;
        let n = convert(&v1, &work, opts)?;
        std::fs::rename(&work, &dir).map_err(io_err(&dir, "rename into"))?;
        sync_dir(state_dir)?;
        tracing::info!(
            "event log {} (format v1, {n} events) migrated to {} (format v2); the old file is kept as {}",
            v1.display(),
            dir.display(),
            bak.display()
        );
    }
    std::fs::rename(&v1, &bak).map_err(io_err(&bak, "rename into"))?;
    sync_dir(state_dir)
}

fn sync_dir(dir: &Path) -> Result<(), EventLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync"))
}

/// Segments being written, closed at `segment_bytes`.
struct Writer {
    dir: PathBuf,
    limit: u64,
    current: Option<(PathBuf, BufWriter<File>, u64)>,
}

impl Writer {
    fn put(&mut self, seq: u64, line: &[u8]) -> Result<(), EventLogError> {
        if let Some((_, _, len)) = &self.current
            && *len >= self.limit
        {
            self.close()?;
        }
        if self.current.is_none() {
            let path = self.dir.join(segment::file_name(seq));
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE)
                .open(&path)
                .map_err(io_err(&path, "create"))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            w.write_all(segment::HEADER)
                .map_err(io_err(&path, "write"))?;
            self.current = Some((path, w, segment::HEADER.len() as u64));
        }
        if let Some((path, w, len)) = &mut self.current {
            w.write_all(line).map_err(io_err(path, "write"))?;
            *len += line.len() as u64;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), EventLogError> {
        if let Some((path, w, _)) = self.current.take() {
            let f = w
                .into_inner()
                .map_err(|e| io_err(&path, "write")(e.into_error()))?;
            f.sync_all().map_err(io_err(&path, "fsync"))?;
        }
        Ok(())
    }
}

/// Write the events of `v1` as segments plus a checkpoint into `work`; the event count.
fn convert(v1: &Path, work: &Path, opts: &EventOptions) -> Result<u64, EventLogError> {
    let mut head = Vec::new();
    File::open(v1)
        .and_then(|f| f.take(V1_HEADER.len() as u64).read_to_end(&mut head))
        .map_err(io_err(v1, "read"))?;
    if head != V1_HEADER {
        return Err(corrupt(
            v1,
            0,
            format!(
                "expected the header {:?}",
                String::from_utf8_lossy(V1_HEADER).trim_end()
            ),
        ));
    }
    let len = std::fs::metadata(v1).map_err(io_err(v1, "stat"))?.len();
    let mut r = segment::Reader::open(v1, V1_HEADER.len() as u64, len)?;
    let mut out = Writer {
        dir: work.to_owned(),
        limit: opts.segment_bytes,
        current: None,
    };
    let mut overlay = Overlay::new();
    let mut reports: HashMap<Uuid, u64> = HashMap::new();
    let mut last = 0u64;
    let mut n = 0u64;
    let mut buf = Vec::new();
    loop {
        let (offset, parsed) = match r.next_line()? {
            None => break,
            Some(l) if l.complete => (
                l.offset,
                serde_json::from_slice::<V1Line>(l.bytes).map_err(|e| e.to_string()),
            ),
            Some(l) => (l.offset, Err("no end of line".into())),
        };
        let line = match parsed {
            Ok(line) => line,
            Err(detail) if r.pos() >= len => {
                tracing::warn!(
                    "event log {}: dropping a torn record at byte offset {offset} ({} bytes, {detail}) left by a crash during an append; it was never acknowledged",
                    v1.display(),
                    len - offset
                );
                break;
            }
            Err(detail) => return Err(corrupt(v1, offset, detail)),
        };
        let e = line.event;
        if e.seq <= last {
            return Err(corrupt(
                v1,
                offset,
                format!("event {} follows event {last}", e.seq),
            ));
        }
        let ref_count = e.refs.len() as u64;
        let hashed = if e.refs.len() > opts.max_refs {
            e.refs
                .iter()
                .map(|r| {
                    (
                        super::ref_key(&r.name),
                        r.new.as_deref().map(|id| super::ref_value(&r.name, id)),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let rec = Record {
            seq: e.seq,
            time: e.time,
            repo: e.repo,
            url: e.url,
            worker: e.worker,
            kind: e.kind,
            trigger: e.trigger,
            ref_count,
            refs: if hashed.is_empty() {
                e.refs
            } else {
                Vec::new()
            },
            src: line.src,
            report: line.report,
            digest: line.digest,
            hashed,
        };
        let r_id = reports.entry(rec.src).or_insert(0);
        *r_id = (*r_id).max(rec.report);
        checkpoint::apply(&mut overlay, &rec.repo, rec.kind, rec.pairs(), rec.digest);
        buf.clear();
        segment::encode(&rec, &mut buf)
            .map_err(|e| io_err(v1, "encode")(std::io::Error::other(e)))?;
        out.put(rec.seq, &buf)?;
        last = rec.seq;
        n += 1;
    }
    out.close()?;
    if n > 0 {
        Checkpoint::write(work, None, &overlay, last, &reports)?;
    }
    sync_dir(work)?;
    Ok(n)
}
