//! Append-only record files: a journal that grows by appends and a snapshot written whole
//! (SPEC §12 "State files").
//!
//! Both start with the `common::statefile` header line (`gitmirror-state <kind> v<N>`), so a
//! file of another kind or version is named as such. Then frames: payload length (u32 LE),
//! CRC-32 of the payload (u32 LE), payload. The caller chooses the payload encoding.
//!
//! Reading stops at the first frame that is incomplete or fails its checksum. In a journal
//! that frame is a *torn tail* (a crash in the middle of an append) when nothing follows it
//! but zeros: the caller drops it ([`Appender::open`] truncates it, with one warning naming
//! file and offset). Anything else that does not read back is corruption, reported with the
//! file and offset, never guessed around. A snapshot is only ever renamed into place
//! complete, so any bad frame in it is corruption.

use crate::statefile::StateError;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that lowers the journal size at which both daemons compact (bytes),
/// so the fault suite can `kill -9` inside compactions (tests/tests/faults_formats.rs).
/// Unset in production; a value that is not a number is ignored.
pub const COMPACT_AT_ENV: &str = "GITMIRROR_COMPACT_AT";

/// `default`, or the threshold [`COMPACT_AT_ENV`] names (logged: it is a test setting).
pub fn compact_at(default: u64) -> u64 {
    match std::env::var(COMPACT_AT_ENV).map(|v| v.trim().parse::<u64>()) {
        Ok(Ok(n)) => {
            tracing::warn!(
                bytes = n,
                default,
                "{COMPACT_AT_ENV} is set: compacting state journals at this size (a test setting)"
            );
            n
        }
        Ok(Err(_)) => {
            tracing::warn!("{COMPACT_AT_ENV} is not a number of bytes: ignored");
            default
        }
        Err(_) => default,
    }
}

/// Frame header: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// No single record is larger than this; a length above it is damage, not a record.
pub const MAX_RECORD: usize = 256 << 20;

fn header(kind: &str, version: u32) -> Vec<u8> {
    format!("gitmirror-state {kind} v{version}\n").into_bytes()
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Append one frame holding `payload` to `out`.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`read`] found.
#[derive(Debug)]
pub struct Contents {
    /// The whole file (payloads are slices of it, see [`Contents::records`]).
    bytes: Vec<u8>,
    /// (offset of the frame, payload range) of every good record, in order.
    records: Vec<(u64, std::ops::Range<usize>)>,
    /// Where the good records end.
    pub end: u64,
    /// Offset of a torn tail that follows them, if any (only for journals).
    pub torn_at: Option<u64>,
}

impl Contents {
    /// Every good record: the offset of its frame and its payload.
    pub fn records(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.records
            .iter()
            .map(|(off, r)| (*off, &self.bytes[r.clone()]))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Read a record file; `Ok(None)` when it does not exist. With `journal`, a torn tail is
/// reported in [`Contents::torn_at`] instead of as an error.
pub fn read(
    path: &Path,
    kind: &str,
    version: u32,
    journal: bool,
) -> Result<Option<Contents>, StateError> {
    let Some(bytes) = crate::statefile::read_if_exists(path)? else {
        return Ok(None);
    };
    check_header(path, &bytes, kind, version)?;
    let mut pos = header(kind, version).len();
    let mut records = Vec::new();
    let mut torn_at = None;
    while pos < bytes.len() {
        match frame_at(&bytes, pos) {
            Some(range) => {
                records.push((pos as u64, range.clone()));
                pos = range.end;
            }
            None => {
                let rest_is_zero = bytes[pos..].iter().all(|&b| b == 0);
                let last = last_frame(&bytes, pos);
                if journal && (last || rest_is_zero) {
                    torn_at = Some(pos as u64);
                    break;
                }
                return Err(StateError::Corrupt {
                    path: path.to_owned(),
                    detail: format!(
                        "the record at byte offset {pos} is damaged and {} bytes follow it",
                        bytes.len() - pos
                    ),
                });
            }
        }
    }
    Ok(Some(Contents {
        end: pos as u64,
        bytes,
        records,
        torn_at,
    }))
}

/// The payload range of a good frame at `pos`, or `None` when it is incomplete, too long
/// or fails its checksum.
fn frame_at(bytes: &[u8], pos: usize) -> Option<std::ops::Range<usize>> {
    let head = bytes.get(pos..pos.checked_add(FRAME_HEADER)?)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let start = pos + FRAME_HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some(start..start + len)
}

/// A bad frame at `pos` is the last thing in the file: its header is cut short, or the
/// length it claims reaches the end (or beyond).
fn last_frame(bytes: &[u8], pos: usize) -> bool {
    let Some(head) = bytes.get(pos..pos + FRAME_HEADER) else {
        return true;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    pos + FRAME_HEADER + len.min(MAX_RECORD) >= bytes.len()
}

/// Check that `bytes` begin with the `gitmirror-state <kind> v<version>` line; another
/// kind or version, or no such line, is named in the error. Returns the line's length.
pub fn check_header(
    path: &Path,
    bytes: &[u8],
    kind: &str,
    version: u32,
) -> Result<usize, StateError> {
    let want = header(kind, version);
    if bytes.starts_with(&want) {
        return Ok(want.len());
    }
    let line = bytes
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|nl| std::str::from_utf8(&bytes[..nl]).ok());
    match line.and_then(|l| l.strip_prefix("gitmirror-state ")) {
        Some(found) if found.split(' ').next() == Some(kind) => Err(StateError::Version {
            path: path.to_owned(),
            kind: kind.to_owned(),
            version,
            found: found.to_owned(),
        }),
        Some(found) => Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("it holds {found:?}, expected {kind}"),
        }),
        None => Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: "missing `gitmirror-state` header".into(),
        }),
    }
}

/// Write a complete record file (a snapshot, or a new journal) crash-safely: temp file in
/// the same directory, fsync, rename, fsync of the directory. `records` are payloads; the
/// offsets of their frames are returned in order.
pub fn write_whole<'a>(
    path: &Path,
    kind: &str,
    version: u32,
    records: impl IntoIterator<Item = &'a [u8]>,
    mode: u32,
) -> Result<Vec<u64>, StateError> {
    let mut w = WholeWriter::create(path, kind, version, mode)?;
    let mut offsets = Vec::new();
    for r in records {
        offsets.push(w.push(r)?);
    }
    w.commit()?;
    Ok(offsets)
}

/// [`write_whole`] a record at a time, for files too big to build in memory first.
pub struct WholeWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once committed.
    out: Option<std::io::BufWriter<File>>,
    pos: u64,
    buf: Vec<u8>,
}

impl WholeWriter {
    pub fn create(path: &Path, kind: &str, version: u32, mode: u32) -> Result<Self, StateError> {
        let tmp = temp_path(path);
        // A random name created with O_EXCL: never a file or link someone put there
        // (issue 10 finding 2; O_CREAT|O_EXCL does not follow a link at the last component).
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let head = header(kind, version);
        out.write_all(&head).map_err(|e| io_err("write", &tmp, e))?;
        Ok(Self {
            path: path.to_owned(),
            tmp,
            out: Some(out),
            pos: head.len() as u64,
            buf: Vec::new(),
        })
    }

    /// Append one record; returns the offset of its frame.
    pub fn push(&mut self, payload: &[u8]) -> Result<u64, StateError> {
        self.buf.clear();
        frame(payload, &mut self.buf);
        let at = self.pos;
        let Some(out) = self.out.as_mut() else {
            return Err(io_err(
                "write",
                &self.tmp,
                std::io::ErrorKind::BrokenPipe.into(),
            ));
        };
        out.write_all(&self.buf)
            .map_err(|e| io_err("write", &self.tmp, e))?;
        self.pos += self.buf.len() as u64;
        Ok(at)
    }

    /// fsync, rename over the target, fsync the directory.
    pub fn commit(mut self) -> Result<(), StateError> {
        let (path, tmp) = (self.path.clone(), self.tmp.clone());
        let Some(out) = self.out.take() else {
            return Err(io_err("write", &tmp, std::io::ErrorKind::BrokenPipe.into()));
        };
        let result = (|| {
            let file = out
                .into_inner()
                .map_err(|e| io_err("write", &tmp, e.into_error()))?;
            file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| io_err("rename into", &path, e))?;
            sync_dir(&path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Drop for WholeWriter {
    fn drop(&mut self) {
        // Not committed: the temp file goes (after a commit it has been renamed away).
        if self.out.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The temp file [`write_whole`] uses for `path`; leftovers of a crash are removed by
/// [`remove_leftovers`].
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{:016x}", rand::random::<u64>()))
}

/// Remove temp files a crash in [`write_whole`] left beside `path`. Returns how many.
pub fn remove_leftovers(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) && fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

fn sync_dir(path: &Path) -> Result<(), StateError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync the directory of", path, e))
}

/// Appends to a journal. Writes go to the end of the file; [`Appender::sync`] makes them
/// durable (one `fdatasync` for however many appends came before it: group commit).
pub struct Appender {
    path: PathBuf,
    file: File,
    end: u64,
    buf: Vec<u8>,
}

impl Appender {
    /// Open an existing journal whose good records end at `end` (from [`read`]); anything
    /// after `end` (a torn tail) is cut off.
    pub fn open(path: &Path, end: u64) -> Result<Self, StateError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err("open", path, e))?;
        let len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
        if len > end {
            file.set_len(end).map_err(|e| io_err("truncate", path, e))?;
            file.sync_all().map_err(|e| io_err("fsync", path, e))?;
        }
        file.seek(SeekFrom::Start(end))
            .map_err(|e| io_err("seek", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            end,
            buf: Vec::new(),
        })
    }

    /// Append records (not yet durable); returns the offset of each one's frame.
    pub fn append<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<u64>, StateError> {
        self.buf.clear();
        let mut offsets = Vec::new();
        for p in payloads {
            offsets.push(self.end + self.buf.len() as u64);
            frame(p, &mut self.buf);
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // Put the end back where the good records stop, so a retry does not follow
            // half a frame.
            let _ = self.file.set_len(self.end);
            let _ = self.file.seek(SeekFrom::Start(self.end));
            return Err(io_err("append to", &self.path, e));
        }
        self.end += self.buf.len() as u64;
        Ok(offsets)
    }

    /// Make everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), StateError> {
        self.file
            .sync_data()
            .map_err(|e| io_err("fsync", &self.path, e))
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read the payload of the frame at `offset` of an open record file (checked again: the
/// file may have been damaged since it was read at start).
pub fn read_record_at(file: &File, path: &Path, offset: u64) -> Result<Vec<u8>, StateError> {
    let mut head = [0u8; FRAME_HEADER];
    file.read_exact_at(&mut head, offset)
        .map_err(|e| io_err("read", path, e))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let corrupt = || StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("the record at byte offset {offset} is damaged"),
    };
    if len > MAX_RECORD {
        return Err(corrupt());
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER as u64)
        .map_err(|e| io_err("read", path, e))?;
    if crc32fast::hash(&payload) != crc {
        return Err(corrupt());
    }
    Ok(payload)
}

/// Visit every record of a complete record file (a snapshot) a frame at a time, without
/// reading the file into memory; any bad frame is corruption. `f` gets each frame's offset
/// and payload.
pub fn for_each_record(
    path: &Path,
    kind: &str,
    version: u32,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), StateError>,
) -> Result<(), StateError> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    // The header line, however long another kind's is (bounded: it is damage beyond).
    let mut head = Vec::new();
    std::io::BufRead::read_until(&mut (&mut r).take(256), b'\n', &mut head)
        .map_err(|e| io_err("read", path, e))?;
    check_header(path, &head, kind, version)?;
    let mut pos = head.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut fh = [0u8; FRAME_HEADER];
        match read_full(&mut r, &mut fh).map_err(|e| io_err("read", path, e))? {
            0 => return Ok(()),
            FRAME_HEADER => {}
            _ => return Err(damaged(path, pos)),
        }
        let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
        let crc = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
        if len > MAX_RECORD {
            return Err(damaged(path, pos));
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload).map_err(|_| damaged(path, pos))?;
        if crc32fast::hash(&payload) != crc {
            return Err(damaged(path, pos));
        }
        f(pos, &payload)?;
        pos += (FRAME_HEADER + len) as u64;
    }
}

/// Read until `buf` is full or the file ends; returns how much was read.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn damaged(path: &Path, pos: u64) -> StateError {
    StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("the record at byte offset {pos} is damaged"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_with(d: &Path, n: usize) -> PathBuf {
        let p = d.join("j");
        let recs: Vec<Vec<u8>> = (0..n).map(|i| format!("record {i}").into_bytes()).collect();
        write_whole(
            &p,
            "test-journal",
            1,
            recs.iter().map(|r| r.as_slice()),
            0o600,
        )
        .unwrap();
        p
    }

    fn payloads(c: &Contents) -> Vec<String> {
        c.records()
            .map(|(_, p)| String::from_utf8(p.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn spec_12_append_read_back_and_offsets() {
        let d = tempfile::tempdir().unwrap();
        let p = journal_with(d.path(), 2);
        let c = read(&p, "test-journal", 1, true).unwrap().unwrap();
        assert_eq!(payloads(&c), ["record 0", "record 1"]);
        let mut a = Appender::open(&p, c.end).unwrap();
        let offs = a.append([b"x".as_slice(), b"yy".as_slice()]).unwrap();
        a.sync().unwrap();
        let c = read(&p, "test-journal", 1, true).unwrap().unwrap();
        assert_eq!(payloads(&c)[2..], ["x", "yy"]);
        assert_eq!(c.torn_at, None);
        let f = File::open(&p).unwrap();
        assert_eq!(read_record_at(&f, &p, offs[1]).unwrap(), b"yy");
        assert!(
            read(&d.path().join("none"), "test-journal", 1, true)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn spec_12_streaming_read_matches_and_damage_is_loud() {
        let d = tempfile::tempdir().unwrap();
        let p = journal_with(d.path(), 3);
        let c = read(&p, "test-journal", 1, false).unwrap().unwrap();
        let mut seen = Vec::new();
        for_each_record(&p, "test-journal", 1, |off, payload| {
            seen.push((off, payload.to_vec()));
            Ok(())
        })
        .unwrap();
        let want: Vec<(u64, Vec<u8>)> = c.records().map(|(o, p)| (o, p.to_vec())).collect();
        assert_eq!(seen, want);
        // A flipped byte in the middle record, and a cut last record: both corruption.
        let full = fs::read(&p).unwrap();
        let mut flipped = full.clone();
        let mid = usize::try_from(want[1].0).unwrap() + FRAME_HEADER;
        flipped[mid] ^= 1;
        fs::write(&p, &flipped).unwrap();
        let e = for_each_record(&p, "test-journal", 1, |_, _| Ok(())).unwrap_err();
        assert!(
            e.to_string().contains(&format!("offset {}", want[1].0)),
            "{e}"
        );
        fs::write(&p, &full[..full.len() - 2]).unwrap();
        let e = for_each_record(&p, "test-journal", 1, |_, _| Ok(())).unwrap_err();
        assert!(
            e.to_string().contains(&format!("offset {}", want[2].0)),
            "{e}"
        );
        let e = for_each_record(&p, "other", 1, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("other"), "{e}");
    }

    #[test]
    fn spec_12_torn_tail_is_dropped_corruption_elsewhere_is_loud() {
        let d = tempfile::tempdir().unwrap();
        let p = journal_with(d.path(), 3);
        let full = fs::read(&p).unwrap();
        // Cut in the middle of the last record: a torn tail.
        fs::write(&p, &full[..full.len() - 3]).unwrap();
        let c = read(&p, "test-journal", 1, true).unwrap().unwrap();
        assert_eq!(c.len(), 2);
        let torn = c.torn_at.unwrap();
        assert_eq!(torn, c.end);
        // Opening for appends cuts it off; the next append reads back.
        let mut a = Appender::open(&p, c.end).unwrap();
        a.append([b"after".as_slice()]).unwrap();
        let c = read(&p, "test-journal", 1, true).unwrap().unwrap();
        assert_eq!(payloads(&c), ["record 0", "record 1", "after"]);
        assert_eq!(c.torn_at, None);
        // Zeros after the good records (an extended file whose data never landed): torn.
        let mut z = fs::read(&p).unwrap();
        z.extend_from_slice(&[0u8; 100]);
        fs::write(&p, &z).unwrap();
        assert!(
            read(&p, "test-journal", 1, true)
                .unwrap()
                .unwrap()
                .torn_at
                .is_some()
        );
        // A flipped byte in the first record, with records after it: corruption.
        let mut bad = full.clone();
        let first = header("test-journal", 1).len() + FRAME_HEADER;
        bad[first] ^= 0xff;
        fs::write(&p, &bad).unwrap();
        let e = read(&p, "test-journal", 1, true).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("offset"),
            "{e}"
        );
        // A snapshot has no torn tails: a cut one is corruption too.
        fs::write(&p, &full[..full.len() - 3]).unwrap();
        assert!(matches!(
            read(&p, "test-journal", 1, false),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn other_kind_or_version_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = journal_with(d.path(), 1);
        assert!(matches!(
            read(&p, "test-journal", 2, true),
            Err(StateError::Version { .. })
        ));
        assert!(matches!(
            read(&p, "other", 1, true),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn leftovers_of_a_crashed_write_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("snap");
        let mut w = WholeWriter::create(&p, "k", 1, 0o600).unwrap();
        w.push(b"x").unwrap();
        std::mem::forget(w); // as if killed before commit
        assert_eq!(remove_leftovers(&p), 1);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
