//! Segment files of the event log: `events/<first seq, 20 digits>.log`.
//!
//! A segment is the header line `gitmirror-state events v2` and then one record per line:
//! the CRC-32 of the JSON in 8 hex digits, a space, and the JSON of a [`Record`]. Lines
//! keep the file readable with `grep`; the checksum tells a torn or damaged record from a
//! good one. Records are in sequence order, so `since` bisects a segment by byte offset
//! (reading the `seq` at the start of the record after a probe point) instead of scanning.

use super::{Event, EventKind, EventLogError, RefUpdate};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use uuid::Uuid;

pub const HEADER: &[u8] = b"gitmirror-state events v2\n";
/// Below this many bytes a bisection ends in a linear scan.
const LINEAR: u64 = 16 << 10;
/// Bytes read after a probe point to find the `seq` of the next record.
const PREFIX: usize = 48;

/// One line of a segment: the event as published plus the bookkeeping start-up needs.
/// The event's fields come first, in [`Event`]'s order, so `seq` opens every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    pub repo: String,
    pub url: String,
    pub worker: u32,
    pub kind: EventKind,
    #[serde(default)]
    pub trigger: super::Trigger,
    pub ref_count: u64,
    pub refs: Vec<RefUpdate>,
    /// Worker uuid and report id the event came from (for dedupe after a crash).
    pub src: Uuid,
    pub report: u64,
    /// Digest of the repo's whole ref set once this event is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<u64>,
    /// When `refs` was left out (more than `events.max_refs` changes): the changes as
    /// `(ref key, ref value or deleted)` hashes, so the published refs can be replayed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashed: Vec<(u64, Option<u64>)>,
}

impl Record {
    pub fn event(&self) -> Event {
        Event {
            seq: self.seq,
            time: self.time.clone(),
            repo: self.repo.clone(),
            url: self.url.clone(),
            worker: self.worker,
            kind: self.kind,
            trigger: self.trigger,
            ref_count: self.ref_count,
            refs: self.refs.clone(),
        }
    }

    /// The ref changes as published-refs hashes (listed or hashed).
    pub fn pairs(&self) -> Vec<(u64, Option<u64>)> {
        if !self.hashed.is_empty() {
            return self.hashed.clone();
        }
        self.refs
            .iter()
            .map(|r| {
                (
                    super::ref_key(&r.name),
                    r.new.as_deref().map(|id| super::ref_value(&r.name, id)),
                )
            })
            .collect()
    }
}

/// A segment file.
#[derive(Debug, Clone)]
pub struct Segment {
    pub first: u64,
    pub path: PathBuf,
    /// Bytes up to the end of the last complete record.
    pub len: u64,
    /// Last write (for `events.retain`).
    pub modified: SystemTime,
}

pub fn file_name(first: u64) -> String {
    format!("{first:020}.log")
}

pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Append the line of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let json = serde_json::to_vec(record)?;
    out.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

/// Decode one line (without its newline): checksum, then JSON.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    if line.len() < 10 || line[8] != b' ' {
        return Err("not a record (no checksum)".into());
    }
    let want = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("not a record (bad checksum field)")?;
    let json = &line[9..];
    let got = crc32fast::hash(json);
    if got != want {
        return Err(format!(
            "checksum mismatch (recorded {want:08x}, computed {got:08x})"
        ));
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// The `seq` a record line starts with, from its first bytes.
fn seq_prefix(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.get(9..)?.strip_prefix(b"{\"seq\":")?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n == rest.len() {
        return None; // no digits, or maybe cut short
    }
    std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
}

/// The event log's I/O error for `path`.
use super::io_err as io;

/// Reads the records of one segment in order, from an offset up to a length.
pub struct Reader {
    path: PathBuf,
    r: BufReader<std::io::Take<File>>,
    pos: u64,
    line: Vec<u8>,
}

/// A line as read: where it starts, and whether it ended with a newline.
pub struct Line<'a> {
    pub offset: u64,
    pub bytes: &'a [u8],
    pub complete: bool,
}

impl Reader {
    pub fn open(path: &Path, from: u64, end: u64) -> Result<Self, EventLogError> {
        let mut f = File::open(path).map_err(io(path, "open"))?;
        f.seek(SeekFrom::Start(from)).map_err(io(path, "seek in"))?;
        Ok(Self {
            path: path.to_owned(),
            r: BufReader::with_capacity(64 << 10, f.take(end.saturating_sub(from))),
            pos: from,
            line: Vec::new(),
        })
    }

    pub fn next_line(&mut self) -> Result<Option<Line<'_>>, EventLogError> {
        self.line.clear();
        let n = self
            .r
            .read_until(b'\n', &mut self.line)
            .map_err(io(&self.path, "read"))?;
        if n == 0 {
            return Ok(None);
        }
        let offset = self.pos;
        self.pos += n as u64;
        let complete = self.line.last() == Some(&b'\n');
        let end = if complete { n - 1 } else { n };
        Ok(Some(Line {
            offset,
            bytes: &self.line[..end],
            complete,
        }))
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }
}

/// The first record line starting at or after `pos` (a record start or any byte inside
/// one): its offset and the `seq` its prefix names (`None` when unreadable).
fn record_at_or_after(
    f: &mut File,
    path: &Path,
    pos: u64,
    len: u64,
) -> Result<Option<(u64, Option<u64>)>, EventLogError> {
    let start = if pos <= HEADER.len() as u64 {
        HEADER.len() as u64
    } else {
        // The record after the newline at or after `pos - 1`.
        f.seek(SeekFrom::Start(pos - 1))
            .map_err(io(path, "seek in"))?;
        let mut r = BufReader::with_capacity(8 << 10, (&mut *f).take(len - (pos - 1)));
        let mut skipped = Vec::new();
        let mut n = 0u64;
        loop {
            skipped.clear();
            let k = r
                .by_ref()
                .take(64 << 10)
                .read_until(b'\n', &mut skipped)
                .map_err(io(path, "read"))?;
            if k == 0 {
                return Ok(None);
            }
            n += k as u64;
            if skipped.last() == Some(&b'\n') {
                break;
            }
        }
        pos - 1 + n
    };
    if start >= len {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(start))
        .map_err(io(path, "seek in"))?;
    let mut prefix = Vec::with_capacity(PREFIX);
    (&mut *f)
        .take(PREFIX.min((len - start) as usize) as u64)
        .read_to_end(&mut prefix)
        .map_err(io(path, "read"))?;
    Ok(Some((start, seq_prefix(&prefix))))
}

/// Offset in `seg` of the first record with `seq > after` (or of the first unreadable
/// record, which the caller then reports), or `seg.len` when there is none.
pub fn seek(seg: &Segment, after: u64) -> Result<u64, EventLogError> {
    let path = &seg.path;
    let mut f = File::open(path).map_err(io(path, "open"))?;
    // Invariant: `lo` is the header end or a record with seq <= after.
    let mut lo = HEADER.len() as u64;
    let mut hi = seg.len;
    while hi - lo > LINEAR {
        let mid = lo + (hi - lo) / 2;
        match record_at_or_after(&mut f, path, mid, seg.len)? {
            Some((start, Some(seq))) if seq <= after => lo = start,
            _ => hi = mid,
        }
    }
    let mut r = Reader::open(path, lo, seg.len)?;
    while let Some(line) = r.next_line()? {
        match seq_prefix(line.bytes) {
            Some(seq) if seq <= after => {}
            _ => return Ok(line.offset),
        }
    }
    Ok(seg.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            time: "2026-12-02T00:00:00Z".into(),
            repo: format!("r/{seq}"),
            url: "https://example.org/r".into(),
            worker: 0,
            kind: EventKind::Updated,
            trigger: Default::default(),
            ref_count: 1,
            refs: vec![RefUpdate {
                name: "refs/heads/main".into(),
                old: None,
                new: Some("x".repeat((seq % 7) as usize * 300)),
            }],
            src: Uuid::nil(),
            report: seq,
            digest: None,
            hashed: Vec::new(),
        }
    }

    fn segment(dir: &Path, seqs: std::ops::RangeInclusive<u64>) -> Segment {
        let path = dir.join(file_name(*seqs.start()));
        let mut bytes = HEADER.to_vec();
        for s in seqs.clone() {
            encode(&record(s), &mut bytes).unwrap();
        }
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        Segment {
            first: *seqs.start(),
            path,
            len: bytes.len() as u64,
            modified: SystemTime::now(),
        }
    }

    // SPEC §12: `since` seeks by bisection and finds exactly the next record.
    #[test]
    fn spec_12_seek_finds_the_first_later_record() {
        let d = tempfile::tempdir().unwrap();
        let seg = segment(d.path(), 100..=1099);
        for after in [0, 99, 100, 101, 500, 777, 1098, 1099, 5000] {
            let off = seek(&seg, after).unwrap();
            let mut r = Reader::open(&seg.path, off, seg.len).unwrap();
            let got = r
                .next_line()
                .unwrap()
                .map(|l| decode::<Record>(l.bytes).unwrap().seq);
            let want = (after < 1099).then(|| (after + 1).max(100));
            assert_eq!(got, want, "after {after}");
        }
    }

    #[test]
    fn records_are_checksummed() {
        let mut out = Vec::new();
        encode(&record(5), &mut out).unwrap();
        let line = &out[..out.len() - 1];
        assert_eq!(decode::<Record>(line).unwrap(), record(5));
        assert_eq!(seq_prefix(line), Some(5));
        let mut bad = line.to_vec();
        let i = bad.len() - 3;
        bad[i] ^= 1;
        assert!(decode::<Record>(&bad).unwrap_err().contains("checksum"));
        assert!(decode::<Record>(b"{\"seq\":1}").is_err());
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("42.log"), None);
    }
}
