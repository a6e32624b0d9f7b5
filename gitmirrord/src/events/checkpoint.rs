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

fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> EventLogError {
    EventLogError::Corrupt {
        path: path.to_owned(),
        offset,
        detail: detail.into(),
    }
}

/// The event log's I/O error for `path`.
use super::io_err as io;

fn read_index(path: &Path, file: &File) -> Result<Index, EventLogError> {
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
    postcard::from_bytes(&bytes).map_err(|e| corrupt(path, offset, e.to_string()))
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
        let mut by_hash = Vec::with_capacity(index.repos.len());
        let mut names: HashMap<u64, String> = HashMap::new();
        let mut collided = HashMap::new();
        for e in index.repos {
            if let Some(d) = e.digest
                && with_digests
            {
                digests.insert(e.repo.clone(), d);
            }
            let loc = Loc {
                offset: e.offset,
                count: e.count,
                crc: e.crc,
            };
            by_hash.push((repo_hash(&e.repo), loc));
            if let Some(other) = names.insert(repo_hash(&e.repo), e.repo.clone())
                && other != e.repo
            {
                collided.insert(e.repo, loc);
            }
        }
        drop(names);
        by_hash.sort_by_key(|(h, _)| *h);
        // Colliding repos are looked up by name; keep the first of each hash for the
        // others, which check the name too.
        let reports = index
            .reports
            .into_iter()
            .map(|(u, r)| (Uuid::from_u128(u), r))
            .collect();
        Ok(Some(Loaded {
            checkpoint: Checkpoint {
                path,
                file,
                seq: index.seq,
                by_hash,
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
        // With a collision the entries for this hash include other repos; those are
        // in `collided`, so the first one here that is not is this repo's.
        self.by_hash[i..]
            .iter()
            .take_while(|(k, _)| *k == h)
            .map(|(_, l)| *l)
            .find(|l| !self.collided.values().any(|c| c == l))
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
            let mut entries = Vec::new();
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
                entries.push(IndexEntry {
                    repo: repo.to_owned(),
                    digest,
                    offset: pos,
                    count: pairs.len() as u64,
                    crc: crc32fast::hash(&bytes),
                });
                pos += bytes.len() as u64;
                Ok(())
            };
            let mut done: std::collections::HashSet<&str> = std::collections::HashSet::new();
            if let Some(old) = old {
                let index = read_index(&old.path, &old.file)?;
                for e in index.repos {
                    let loc = Loc {
                        offset: e.offset,
                        count: e.count,
                        crc: e.crc,
                    };
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
                }
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
            let index = postcard::to_stdvec(&Index {
                seq,
                reports,
                repos: entries,
            })
            .map_err(|e| io(&tmp, "encode")(std::io::Error::other(e)))?;
            w.write_all(&index).map_err(io(&tmp, "write"))?;
            w.write_all(&pos.to_le_bytes())
                .and_then(|()| w.write_all(&(index.len() as u64).to_le_bytes()))
                .and_then(|()| w.write_all(&crc32fast::hash(&index).to_le_bytes()))
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
        match Self::open(dir, false)? {
            Some(l) => Ok(l.checkpoint),
            None => Err(io(&path, "reopen")(std::io::ErrorKind::NotFound.into())),
        }
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
