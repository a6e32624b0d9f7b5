//! The event log's checkpoint (`events/checkpoint`) and the published refs it stores.
//!
//! What start-up needs as of one event number: per repo the digest and the refs its events
//! published, and per worker the highest report id recorded. Start-up reads only the
//! index (repo, digest, where its refs are) and replays the events after it; a repo's refs
//! are read from the file when an outcome for it needs them ([`Checkpoint::refs`]), so the
//! coordinator keeps no per-ref map in memory.
//!
//! Layout: header line `gitmirror-state events-checkpoint v1`; per repo its refs as sorted
//! `(ref key, ref value)` pairs of little-endian u64; the postcard-encoded [`Index`]; and a
//! 28-byte trailer (index offset, index length, CRC-32 of the index, magic). It is written
//! whole to a temp file and renamed over the old one (crash-safe), off the main loop.

use super::{EventKind, EventLogError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const FILE: &str = "checkpoint";
const HEADER: &[u8] = b"gitmirror-state events-checkpoint v1\n";
const MAGIC: &[u8; 8] = b"GMCKPT1\n";
const TRAILER: u64 = 28;
const PAIR: u64 = 16;

/// The index's format as one value: written and read entry by entry ([`IndexBytes`]),
/// with the same bytes (pinned by a test).
#[cfg(test)]
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    seq: u64,
    reports: Vec<(u128, u64)>,
    repos: Vec<IndexEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    repo: String,
    digest: Option<u64>,
    offset: u64,
    count: u64,
    crc: u32,
}

/// [`IndexEntry`] as the writer encodes it, without copying the repo id (same encoding).
#[derive(Serialize)]
struct IndexEntryRef<'a> {
    repo: &'a str,
    digest: Option<u64>,
    offset: u64,
    count: u64,
    crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Loc {
    offset: u64,
    count: u64,
    crc: u32,
}

/// Published-refs changes of one repo since a checkpoint.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RepoDelta {
    /// A clone replaced the whole set: lower layers do not count.
    pub full: bool,
    /// Ref key → ref value, `None` when deleted.
    pub refs: HashMap<u64, Option<u64>>,
    pub digest: Option<u64>,
}

/// Per repo, the published-refs changes of the events after a checkpoint.
pub type Overlay = HashMap<String, RepoDelta>;

/// Apply one event to `overlay`.
pub fn apply(
    overlay: &mut Overlay,
    repo: &str,
    kind: EventKind,
    pairs: impl IntoIterator<Item = (u64, Option<u64>)>,
    digest: Option<u64>,
) {
    let d = match overlay.get_mut(repo) {
        Some(d) => d,
        None => overlay.entry(repo.to_owned()).or_default(),
    };
    if kind == EventKind::Cloned {
        d.full = true;
        d.refs.clear();
    }
    for (k, v) in pairs {
        if d.full && v.is_none() {
            d.refs.remove(&k);
        } else {
            d.refs.insert(k, v);
        }
    }
    if digest.is_some() {
        d.digest = digest;
    }
}

/// `upper` on top of `lower` (a checkpoint that failed puts its layer back under).
pub fn merge_under(lower: Overlay, upper: &mut Overlay) {
    for (repo, low) in lower {
        match upper.get_mut(&repo) {
            None => {
                upper.insert(repo, low);
            }
            Some(up) if up.full => {}
            Some(up) => {
                for (k, v) in low.refs {
                    up.refs.entry(k).or_insert(v);
                }
                up.full = low.full;
                up.digest = up.digest.or(low.digest);
            }
        }
    }
}

/// An open checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    file: File,
    pub seq: u64,
    /// xxh3 of the repo id → where its refs are, sorted by hash (24 bytes a repo).
    by_hash: Vec<(u64, Loc)>,
    /// Bytes of the encoded index (to size the next one's buffer).
    index_len: usize,
    /// Repos whose id hashes collide with another's.
    collided: HashMap<String, Loc>,
}

/// What [`Checkpoint::load`] hands to start-up once.
pub struct Loaded {
    pub checkpoint: Checkpoint,
    pub reports: HashMap<Uuid, u64>,
    pub digests: HashMap<String, u64>,
}

fn repo_hash(repo: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(repo.as_bytes())
}

impl IndexEntry {
    fn loc(&self) -> Loc {
        Loc {
            offset: self.offset,
            count: self.count,
            crc: self.crc,
        }
    }
}

/// Sort `by_hash` by hash; whether a hash appears more than once.
fn has_shared_hash(by_hash: &mut [(u64, Loc)]) -> bool {
    by_hash.sort_unstable_by_key(|(h, _)| *h);
    by_hash.windows(2).any(|w| w[0].0 == w[1].0)
}

/// The repos of `index` whose hash another repo shares, by name (each repo is once in a
/// checkpoint, so a shared hash is always a collision); sorts `by_hash`.
fn colliding(
    path: &Path,
    index: &IndexBytes,
    by_hash: &mut [(u64, Loc)],
) -> Result<HashMap<String, Loc>, EventLogError> {
    let mut collided = HashMap::new();
    if !has_shared_hash(by_hash) {
        return Ok(collided);
    }
    let shared: std::collections::HashSet<u64> = by_hash
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[0].0)
        .collect();
    index.read(path, |e| {
        if shared.contains(&repo_hash(&e.repo)) {
            let loc = e.loc();
            collided.insert(e.repo, loc);
        }
        Ok(())
    })?;
    Ok(collided)
}

fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> EventLogError {
    EventLogError::Corrupt {
        path: path.to_owned(),
        offset,
        detail: detail.into(),
    }
}

/// The event log's I/O error for `path`.
use super::io_err as io;

fn read_index(path: &Path, file: &File) -> Result<IndexBytes, EventLogError> {
    let len = file.metadata().map_err(io(path, "stat"))?.len();
    let mut head = vec![0u8; HEADER.len()];
    if len < HEADER.len() as u64 + TRAILER {
        return Err(corrupt(path, 0, "too short for a checkpoint"));
    }
    file.read_exact_at(&mut head, 0).map_err(io(path, "read"))?;
    if head != HEADER {
        return Err(corrupt(
            path,
            0,
            format!(
                "expected the header {:?}",
                String::from_utf8_lossy(HEADER).trim_end()
            ),
        ));
    }
    let mut t = [0u8; TRAILER as usize];
    file.read_exact_at(&mut t, len - TRAILER)
        .map_err(io(path, "read"))?;
    let word = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap_or_default());
    let (offset, size) = (word(0), word(8));
    let crc = u32::from_le_bytes(t[16..20].try_into().unwrap_or_default());
    if &t[20..] != MAGIC || offset.checked_add(size) != Some(len - TRAILER) {
        return Err(corrupt(path, len - TRAILER, "bad trailer"));
    }
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(io(path, "read"))?;
    if crc32fast::hash(&bytes) != crc {
        return Err(corrupt(path, offset, "index checksum mismatch"));
    }
    Ok(IndexBytes { bytes, offset })
}

/// A checkpoint's index as read and checked, decoded entry by entry: at 1M repos the
/// decoded entries are ~100 MB, the encoded ones a third of that, and a checkpoint is
/// written beside the fleet while outcomes flow (the coordinator's peak RSS was the
/// decoded old index and the new one side by side, docs/scale.md).
struct IndexBytes {
    bytes: Vec<u8>,
    offset: u64,
}

impl IndexBytes {
    /// `seq` and the report ids; `each` gets every repo entry in file order.
    fn read(
        &self,
        path: &Path,
        mut each: impl FnMut(IndexEntry) -> Result<(), EventLogError>,
    ) -> Result<(u64, Vec<(u128, u64)>), EventLogError> {
        let bad = |e: postcard::Error| corrupt(path, self.offset, e.to_string());
        let (seq, rest) = postcard::take_from_bytes::<u64>(&self.bytes).map_err(bad)?;
        let (reports, rest) = postcard::take_from_bytes::<Vec<(u128, u64)>>(rest).map_err(bad)?;
        let (n, mut rest) = postcard::take_from_bytes::<u64>(rest).map_err(bad)?;
        for _ in 0..n {
            let (e, r) = postcard::take_from_bytes::<IndexEntry>(rest).map_err(bad)?;
            rest = r;
            each(e)?;
        }
        Ok((seq, reports))
    }
}

impl Checkpoint {
    /// Open `<dir>/checkpoint` with the digests and report ids start-up needs; `None`
    /// when there is none.
    pub fn load(dir: &Path) -> Result<Option<Loaded>, EventLogError> {
        Self::open(dir, true)
    }

    /// Open `<dir>/checkpoint`; the per-repo digests only `with_digests` (start-up).
    fn open(dir: &Path, with_digests: bool) -> Result<Option<Loaded>, EventLogError> {
        let path = dir.join(FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "open")(e)),
        };
        let index = read_index(&path, &file)?;
        let mut digests = HashMap::new();
        let mut by_hash = Vec::new();
        let (seq, reports) = index.read(&path, |e| {
            if let Some(d) = e.digest
                && with_digests
            {
                digests.insert(e.repo.clone(), d);
            }
            by_hash.push((repo_hash(&e.repo), e.loc()));
            Ok(())
        })?;
        let collided = colliding(&path, &index, &mut by_hash)?;
        let reports = reports
            .into_iter()
            .map(|(u, r)| (Uuid::from_u128(u), r))
            .collect();
        Ok(Some(Loaded {
            checkpoint: Checkpoint {
                path,
                file,
                seq,
                by_hash,
                index_len: index.bytes.len(),
                collided,
            },
            reports,
            digests,
        }))
    }

    fn locate(&self, repo: &str) -> Option<Loc> {
        if let Some(l) = self.collided.get(repo) {
            return Some(*l);
        }
        let h = repo_hash(repo);
        let i = self.by_hash.partition_point(|(k, _)| *k < h);
        // A hash shared by several repos of the checkpoint is only looked up by name
        // (above): every one of them is in `collided`.
        match self.by_hash.get(i..i + 2) {
            Some([(a, _), (b, _)]) if *a == h && *b == h => None,
            _ => self
                .by_hash
                .get(i)
                .filter(|(k, _)| *k == h)
                .map(|(_, l)| *l),
        }
    }

    /// The refs published for `repo` as of this checkpoint, sorted by key; `None` when
    /// it had no event.
    pub fn refs(&self, repo: &str) -> Result<Option<Vec<(u64, u64)>>, EventLogError> {
        let Some(loc) = self.locate(repo) else {
            return Ok(None);
        };
        read_pairs(&self.path, &self.file, loc).map(Some)
    }

    /// Write a new checkpoint at `seq` into `dir`: `old` with `overlay` on top. Blocking;
    /// run off the main loop.
    pub fn write(
        dir: &Path,
        old: Option<&Checkpoint>,
        overlay: &Overlay,
        seq: u64,
        reports: &HashMap<Uuid, u64>,
    ) -> Result<Checkpoint, EventLogError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.tmp"));
        // Sized once (at most every old repo and every overlay repo): grown by doubling,
        // the old and the new buffer of 1M entries were both live at the copy.
        let mut by_hash: Vec<(u64, Loc)> =
            Vec::with_capacity(old.map_or(0, |o| o.by_hash.len()) + overlay.len());
        let mut index_len = 0;
        let result = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(&tmp)
                .map_err(io(&tmp, "create"))?;
            let mut w = BufWriter::with_capacity(1 << 20, &file);
            let mut pos = HEADER.len() as u64;
            w.write_all(HEADER).map_err(io(&tmp, "write"))?;
            // The new index is encoded as it is written (postcard: the entries after
            // their count), and the look-up table of the new checkpoint built with it.
            let mut entries: Vec<u8> = Vec::with_capacity(
                (old.map_or(0, |o| o.index_len) + overlay.len() * 48).min(1 << 30),
            );
            let mut count: u64 = 0;
            let mut put = |repo: &str,
                           digest: Option<u64>,
                           pairs: &[(u64, u64)],
                           w: &mut BufWriter<&File>|
             -> Result<(), EventLogError> {
                let mut bytes = Vec::with_capacity(pairs.len() * PAIR as usize);
                for (k, v) in pairs {
                    bytes.extend_from_slice(&k.to_le_bytes());
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                w.write_all(&bytes).map_err(io(&tmp, "write"))?;
                let loc = Loc {
                    offset: pos,
                    count: pairs.len() as u64,
                    crc: crc32fast::hash(&bytes),
                };
                let entry = IndexEntryRef {
                    repo,
                    digest,
                    offset: loc.offset,
                    count: loc.count,
                    crc: loc.crc,
                };
                entries = postcard::to_extend(&entry, std::mem::take(&mut entries))
                    .map_err(|e| io(&tmp, "encode")(std::io::Error::other(e)))?;
                count += 1;
                by_hash.push((repo_hash(repo), loc));
                pos += bytes.len() as u64;
                Ok(())
            };
            let mut done: std::collections::HashSet<&str> = std::collections::HashSet::new();
            if let Some(old) = old {
                let index = read_index(&old.path, &old.file)?;
                index.read(&old.path, |e| {
                    let loc = e.loc();
                    match overlay.get_key_value(e.repo.as_str()) {
                        Some((name, d)) => {
                            done.insert(name.as_str());
                            let base = if d.full {
                                Vec::new()
                            } else {
                                read_pairs(&old.path, &old.file, loc)?
                            };
                            let pairs = layered(base, d);
                            put(&e.repo, d.digest.or(e.digest), &pairs, &mut w)?;
                        }
                        None => {
                            let pairs = read_pairs(&old.path, &old.file, loc)?;
                            put(&e.repo, e.digest, &pairs, &mut w)?;
                        }
                    }
                    Ok(())
                })?;
            }
            let mut rest: Vec<(&String, &RepoDelta)> = overlay
                .iter()
                .filter(|(r, _)| !done.contains(r.as_str()))
                .collect();
            rest.sort_by(|a, b| a.0.cmp(b.0));
            for (repo, d) in rest {
                put(repo, d.digest, &layered(Vec::new(), d), &mut w)?;
            }
            let mut reports: Vec<(u128, u64)> =
                reports.iter().map(|(u, r)| (u.as_u128(), *r)).collect();
            reports.sort_unstable();
            // [`Index`]'s encoding: its fields in order, the entries' count before them.
            let head = postcard::to_stdvec(&(seq, reports, count))
                .map_err(|e| io(&tmp, "encode")(std::io::Error::other(e)))?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&head);
            crc.update(&entries);
            index_len = head.len() + entries.len();
            w.write_all(&head)
                .and_then(|()| w.write_all(&entries))
                .map_err(io(&tmp, "write"))?;
            drop(entries);
            w.write_all(&pos.to_le_bytes())
                .and_then(|()| w.write_all(&(index_len as u64).to_le_bytes()))
                .and_then(|()| w.write_all(&crc.finalize().to_le_bytes()))
                .and_then(|()| w.write_all(MAGIC))
                .and_then(|()| w.flush())
                .map_err(io(&tmp, "write"))?;
            drop(w);
            file.sync_all().map_err(io(&tmp, "fsync"))?;
            std::fs::rename(&tmp, &path).map_err(io(&path, "rename into"))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir, "fsync"))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        let file = File::open(&path).map_err(io(&path, "reopen"))?;
        let collided = if has_shared_hash(&mut by_hash) {
            // Rare (a 64-bit hash shared by two repo ids): their names are in the file.
            let index = read_index(&path, &file)?;
            colliding(&path, &index, &mut by_hash)?
        } else {
            HashMap::new()
        };
        Ok(Checkpoint {
            path,
            file,
            seq,
            by_hash,
            index_len,
            collided,
        })
    }
}

/// `base` (sorted pairs) with the delta `d` on top, sorted by key.
fn layered(base: Vec<(u64, u64)>, d: &RepoDelta) -> Vec<(u64, u64)> {
    let mut map: HashMap<u64, u64> = base.into_iter().collect();
    for (k, v) in &d.refs {
        match v {
            Some(v) => map.insert(*k, *v),
            None => map.remove(k),
        };
    }
    let mut out: Vec<(u64, u64)> = map.into_iter().collect();
    out.sort_unstable();
    out
}

fn read_pairs(path: &Path, file: &File, loc: Loc) -> Result<Vec<(u64, u64)>, EventLogError> {
    let mut bytes = vec![0u8; (loc.count * PAIR) as usize];
    file.read_exact_at(&mut bytes, loc.offset)
        .map_err(io(path, "read"))?;
    if crc32fast::hash(&bytes) != loc.crc {
        return Err(corrupt(path, loc.offset, "refs checksum mismatch"));
    }
    Ok(bytes
        .chunks_exact(PAIR as usize)
        .map(|c| {
            let k = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let v = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            (k, v)
        })
        .collect())
}

/// Remove a temp file a crash left behind.
pub fn clean(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(format!(".{FILE}.tmp")));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(full: bool, refs: &[(u64, Option<u64>)], digest: Option<u64>) -> RepoDelta {
        RepoDelta {
            full,
            refs: refs.iter().copied().collect(),
            digest,
        }
    }

    // SPEC §12: a checkpoint holds per repo the refs its events published; a later one
    // layers the newer events over it (a clone replaces the set, a fetch changes refs).
    #[test]
    fn spec_12_checkpoints_layer_published_refs() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Overlay::new();
        o.insert(
            "a".into(),
            delta(true, &[(1, Some(10)), (2, Some(20))], Some(7)),
        );
        o.insert("b".into(), delta(true, &[(5, Some(50))], None));
        let reports: HashMap<Uuid, u64> = [(Uuid::from_u128(3), 9)].into();
        let c1 = Checkpoint::write(d.path(), None, &o, 4, &reports).unwrap();
        assert_eq!(c1.seq, 4);
        assert_eq!(c1.refs("a").unwrap(), Some(vec![(1, 10), (2, 20)]));
        assert_eq!(c1.refs("zzz").unwrap(), None);
        let mut o2 = Overlay::new();
        o2.insert(
            "a".into(),
            delta(false, &[(1, None), (3, Some(30))], Some(8)),
        );
        o2.insert("b".into(), delta(true, &[(6, Some(60))], Some(9)));
        o2.insert("c".into(), delta(false, &[(4, Some(40))], None));
        let c2 = Checkpoint::write(d.path(), Some(&c1), &o2, 9, &reports).unwrap();
        assert_eq!(c2.refs("a").unwrap(), Some(vec![(2, 20), (3, 30)]));
        assert_eq!(c2.refs("b").unwrap(), Some(vec![(6, 60)]));
        assert_eq!(c2.refs("c").unwrap(), Some(vec![(4, 40)]));
        let l = Checkpoint::load(d.path()).unwrap().unwrap();
        assert_eq!(l.checkpoint.seq, 9);
        assert_eq!(l.reports, reports);
        let want: HashMap<String, u64> = [("a".into(), 8), ("b".into(), 9)].into();
        assert_eq!(l.digests, want);
    }

    // SPEC §10: a damaged checkpoint is loud, naming the file.
    #[test]
    fn damaged_checkpoint_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Overlay::new();
        o.insert("a".into(), delta(true, &[(1, Some(10))], Some(7)));
        Checkpoint::write(d.path(), None, &o, 1, &HashMap::new()).unwrap();
        let p = d.path().join(FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - TRAILER as usize - 2] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
        let e = Checkpoint::load(d.path()).err().unwrap().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("checksum"),
            "{e}"
        );
    }

    /// The index written entry by entry is postcard's encoding of [`Index`], as written
    /// by earlier releases whole (a checkpoint of an older coordinator is read by this one).
    #[test]
    fn spec_12_checkpoint_index_keeps_its_encoding() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Overlay::new();
        o.insert("b".into(), delta(true, &[(5, Some(50))], None));
        o.insert(
            "a".into(),
            delta(true, &[(1, Some(10)), (2, Some(20))], Some(7)),
        );
        let reports: HashMap<Uuid, u64> = [(Uuid::from_u128(3), 9)].into();
        let c = Checkpoint::write(d.path(), None, &o, 4, &reports).unwrap();
        let raw = read_index(&c.path, &c.file).unwrap();
        let mut repos = Vec::new();
        let (seq, reps) = raw
            .read(&c.path, |e| {
                repos.push(e);
                Ok(())
            })
            .unwrap();
        let names: Vec<&str> = repos.iter().map(|e| e.repo.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let whole = postcard::to_stdvec(&Index {
            seq,
            reports: reps,
            repos,
        })
        .unwrap();
        assert_eq!(whole, raw.bytes);
        let decoded: Index = postcard::from_bytes(&raw.bytes).unwrap();
        assert_eq!((decoded.seq, decoded.repos.len()), (4, 2));
    }

    /// Two repo ids of one checkpoint with the same 64-bit hash are found by name, and
    /// the shared hash alone finds neither (it could be the other's refs).
    #[test]
    fn colliding_hashes_are_looked_up_by_name() {
        let d = tempfile::tempdir().unwrap();
        let mut o = Overlay::new();
        o.insert("a".into(), delta(true, &[(1, Some(10))], None));
        o.insert("b".into(), delta(true, &[(2, Some(20))], None));
        o.insert("c".into(), delta(true, &[(3, Some(30))], None));
        let mut c = Checkpoint::write(d.path(), None, &o, 1, &HashMap::new()).unwrap();
        assert!(c.collided.is_empty());
        let (la, lb) = (c.locate("a").unwrap(), c.locate("b").unwrap());
        // Forge the collision: "b"'s entry under "a"'s hash.
        let (ha, hb) = (repo_hash("a"), repo_hash("b"));
        for (h, _) in &mut c.by_hash {
            if *h == hb {
                *h = ha;
            }
        }
        assert!(has_shared_hash(&mut c.by_hash));
        assert_eq!(c.refs("a").unwrap(), None);
        assert_eq!(c.refs("c").unwrap(), Some(vec![(3, 30)]));
        // What `colliding` keeps for them: both by name.
        c.collided = [("a".to_owned(), la), ("b".to_owned(), lb)].into();
        assert_eq!(c.refs("a").unwrap(), Some(vec![(1, 10)]));
        assert_eq!(c.refs("b").unwrap(), Some(vec![(2, 20)]));
        let raw = read_index(&c.path, &c.file).unwrap();
        let mut real = vec![(ha, la), (hb, lb)];
        assert!(colliding(&c.path, &raw, &mut real).unwrap().is_empty());
    }

    #[test]
    fn overlay_layers() {
        let mut low = Overlay::new();
        apply(
            &mut low,
            "a",
            EventKind::Cloned,
            [(1, Some(1)), (2, Some(2))],
            Some(1),
        );
        let mut up = Overlay::new();
        apply(&mut up, "a", EventKind::Updated, [(2, None)], None);
        merge_under(low, &mut up);
        assert_eq!(up["a"], delta(true, &[(1, Some(1)), (2, None)], Some(1)));
    }
}
