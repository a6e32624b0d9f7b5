//! Reading an index (SPEC §3.1, §3.3): a git repository through the `git` binary (a bare
//! clone in the index directory, no work tree), or a plain local directory read afresh on
//! every poll.

use super::IndexSource;
use super::layout::{self, File, Kind, MAX_FILE_SIZE, Parser, Role};
use gitmirror_common::credentials::{AuthScheme, Credential, Family, shell_quote};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `git fetch` of the index running longer than this is killed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Local git commands (ls-tree, cat-file, ...).
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);
/// The ref the index's branch is fetched into.
const INDEX_REF: &str = "refs/gitmirror/index";

/// The newest state of an index: its commit, and how to read its files.
pub enum Fetched {
    Git {
        repo: PathBuf,
        commit: String,
    },
    /// A plain directory is read whole to know its "commit" (a hash of what was read).
    Dir {
        commit: String,
        files: Vec<File>,
    },
}

impl Fetched {
    pub fn commit(&self) -> &str {
        match self {
            Fetched::Git { commit, .. } | Fetched::Dir { commit, .. } => commit,
        }
    }

    /// Read into `parser` only the entry files that differ from commit `old` (see
    /// [`read_diff`]); `Ok(None)` when the index has to be read whole, which includes
    /// more than `most` changed entry paths (a whole read then costs less).
    pub fn read_changes(
        &self,
        old: &str,
        most: usize,
        parser: &mut Parser,
    ) -> Result<Option<Vec<Vec<u8>>>, String> {
        match self {
            Fetched::Dir { .. } => Ok(None),
            Fetched::Git { repo, commit } => read_diff(repo, old, commit, most, parser),
        }
    }

    /// Read every file of the index that has a layout role into `parser`, all `DEFAULTS`
    /// files first, one at a time: a 1M-entry index is never held whole.
    pub fn read(self, parser: &mut Parser) -> Result<(), String> {
        match self {
            Fetched::Dir { files, .. } => {
                let defaults = files.iter().filter(|f| f.role == Role::Defaults);
                let entries = files.iter().filter(|f| f.role == Role::Entry);
                defaults.chain(entries).for_each(|f| parser.file(f));
                Ok(())
            }
            Fetched::Git { repo, commit } => read_tree(&repo, &commit, parser),
        }
    }
}

/// Bring the index up to date: fetch a git index into `<dir>/<name>.git`, or read a
/// plain directory. Errors are one line for `last_error`.
///
/// `credential`: the `credentials` entry matching the index URL (SPEC §16), given to git
/// as a credential helper (https) or an ssh command (ssh); see [`credential_config`].
pub fn fetch(
    source: &IndexSource,
    dir: &Path,
    credential: Option<&Credential>,
) -> Result<Fetched, String> {
    let auth = credential.map(credential_config).unwrap_or_default();
    let remote = match local_path(&source.url) {
        None => source.url.clone(),
        Some(path) => {
            let path =
                std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let is_git = path.join(".git").exists()
                || (path.join("HEAD").is_file() && path.join("objects").is_dir());
            if !is_git {
                if !path.is_dir() {
                    return Err(format!("{}: not a directory", path.display()));
                }
                let files = read_dir(&path)?;
                return Ok(Fetched::Dir {
                    commit: dir_hash(&files),
                    files,
                });
            }
            path.to_string_lossy().into_owned()
        }
    };
    let repo = dir.join(format!("{}.git", source.name));
    let borrowed = local_path(&source.url)
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| objects_dir(&p));
    borrow_objects(&repo, borrowed.as_deref())?;
    match fetch_git(&repo, &remote, source.branch.as_deref(), &auth) {
        // The source may have pruned objects our refs name (a force-push, then gc): a
        // borrowing clone costs nothing to make again.
        Err(e) if borrowed.is_some() => {
            tracing::info!(
                repo = %repo.display(),
                "index clone made again after a failed fetch: {e}"
            );
            std::fs::remove_dir_all(&repo)
                .map_err(|e| format!("cannot remove {}: {e}", repo.display()))?;
            borrow_objects(&repo, borrowed.as_deref())?;
            fetch_git(&repo, &remote, source.branch.as_deref(), &auth)
        }
        // A clone of a remote index damaged in the state dir (a disk error, a crash
        // during gc, a hand edit) is a cache: clone it again rather than fail every poll.
        Err(e) if is_damaged_clone(&e) && repo.exists() => {
            tracing::warn!(
                repo = %repo.display(),
                "index clone is damaged ({e}); cloning it again from its URL"
            );
            std::fs::remove_dir_all(&repo)
                .map_err(|e| format!("cannot remove {}: {e}", repo.display()))?;
            fetch_git(&repo, &remote, source.branch.as_deref(), &auth)
        }
        fetched => fetched,
    }
}

/// Whether git's error says the local clone is broken, as opposed to the remote being
/// unreachable or refusing (which must not cost a whole new clone).
fn is_damaged_clone(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "not a git repository",
        "not in a git directory",
        "bad config",
        "corrupt",
        "bad object",
        "missing object",
        "unable to read",
        "invalid object",
        "bad packed object",
        "fatal: bad ",
    ]
    .iter()
    .any(|m| e.contains(m))
}

/// The object directory of the local git repository at `path`, if it has a plain one.
fn objects_dir(path: &Path) -> Option<PathBuf> {
    [path.join(".git").join("objects"), path.join("objects")]
        .into_iter()
        .find(|d| d.is_dir())
}

/// A clone of a local index borrows the source's objects (`objects/info/alternates`, as
/// `git clone --shared` does) rather than copying them: a 1M-entry index is 1.5M objects
/// that git takes ~10 s to copy, and the fetch then has nothing to transfer. A clone
/// that borrowed and now follows a remote starts afresh, so no object it relied on is
/// missing. Errors are one line for `last_error`.
fn borrow_objects(repo: &Path, objects: Option<&Path>) -> Result<(), String> {
    let alternates = repo.join("objects").join("info").join("alternates");
    match objects {
        Some(objects) => {
            // `fetch_git` would create it; borrow before its first fetch.
            init_bare(repo)?;
            let mut line = objects.as_os_str().as_bytes().to_vec();
            line.push(b'\n');
            if std::fs::read(&alternates).ok().as_deref() != Some(line.as_slice()) {
                if let Some(info) = alternates.parent() {
                    std::fs::create_dir_all(info)
                        .map_err(|e| format!("cannot create {}: {e}", info.display()))?;
                }
                gitmirror_common::statefile::write_atomic(&alternates, &line, 0o644)
                    .map_err(|e| e.to_string())?;
            }
        }
        None if alternates.exists() => std::fs::remove_dir_all(repo)
            .map_err(|e| format!("cannot remove {}: {e}", repo.display()))?,
        None => {}
    }
    Ok(())
}

/// `Some(path)` when the index URL names a local path rather than a remote.
fn local_path(url: &str) -> Option<&Path> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(Path::new(p));
    }
    if url.contains("://") {
        return None;
    }
    // scp-like `host:path` has a ':' before any '/'.
    match url.split_once(':') {
        Some((head, _)) if !head.contains('/') => None,
        _ => Some(Path::new(url)),
    }
}

/// A bare repo at `repo` unless one is there (absent, or left half-created by a crash:
/// start over).
fn init_bare(repo: &Path) -> Result<(), String> {
    if repo.join("HEAD").is_file() {
        return Ok(());
    }
    if repo.exists() {
        std::fs::remove_dir_all(repo)
            .map_err(|e| format!("cannot remove {}: {e}", repo.display()))?;
    }
    git(
        None,
        &[
            os("init"),
            os("--bare"),
            os("--quiet"),
            os("--"),
            repo.as_os_str().into(),
        ],
        None,
        LOCAL_TIMEOUT,
    )
    .map(|_| ())
}

fn fetch_git(
    repo: &Path,
    remote: &str,
    branch: Option<&str>,
    auth: &[(String, String)],
) -> Result<Fetched, String> {
    init_bare(repo)?;
    // Set every time, so a changed `url` in the config takes effect.
    git(
        Some(repo),
        &[os("config"), os("remote.origin.url"), os(remote)],
        None,
        LOCAL_TIMEOUT,
    )?;
    let refspec = match branch {
        Some(b) => format!("+refs/heads/{b}:{INDEX_REF}"),
        None => format!("+HEAD:{INDEX_REF}"),
    };
    git_with(
        Some(repo),
        &[
            os("fetch"),
            os("--quiet"),
            os("--no-tags"),
            os("origin"),
            os(&refspec),
        ],
        None,
        auth,
        FETCH_TIMEOUT,
    )?;
    let out = git(
        Some(repo),
        &[
            os("rev-parse"),
            os("--verify"),
            os(&format!("{INDEX_REF}^{{commit}}")),
        ],
        None,
        LOCAL_TIMEOUT,
    )?;
    let commit = String::from_utf8_lossy(&out).trim().to_owned();
    // Keeps the clone small over many fetches; a failure here is harmless. In the
    // foreground, so no git process outlives the poll.
    let _ = git(
        Some(repo),
        &[
            os("-c"),
            os("gc.autoDetach=false"),
            os("gc"),
            os("--auto"),
            os("--quiet"),
        ],
        None,
        LOCAL_TIMEOUT,
    );
    Ok(Fetched::Git {
        repo: repo.to_owned(),
        commit,
    })
}

/// A blob of the listing to be read: its object id (binary) and path in
/// [`Listing::text`]. 16 bytes: a listing of 1M entries is held while they are read.
struct Blob {
    start: usize,
    path_len: u32,
    oid_len: u8,
    role: Role,
}

/// The files of one commit with a layout role, compactly: the ids and paths of the blobs
/// to read in one buffer (about 45 bytes per entry), the others as they are.
#[derive(Default)]
struct Listing {
    text: Vec<u8>,
    /// `DEFAULTS` files, read first.
    defaults: Vec<Blob>,
    entries: Vec<Blob>,
    /// Symbolic links, submodules, files over the size limit: nothing to read.
    others: Vec<File>,
}

impl Listing {
    fn oid(&self, b: &Blob) -> &[u8] {
        let oid = b.start + usize::from(b.oid_len);
        self.text.get(b.start..oid).unwrap_or_default()
    }

    fn path(&self, b: &Blob) -> &[u8] {
        let oid = b.start + usize::from(b.oid_len);
        self.text
            .get(oid..oid + b.path_len as usize)
            .unwrap_or_default()
    }
}

/// What writes a git command's stdin.
type WriteInput<'a> = dyn Fn(&mut dyn Write) -> std::io::Result<()> + Sync + 'a;

/// The changed files to read and the changed entry paths of a `git diff-tree`.
type Changes = (Listing, Vec<Vec<u8>>);

/// `DEFAULTS` paths looked up for a read of changes; more changes are read whole.
const MAX_DIFF_DEFAULTS: usize = 1000;

/// Entries per `git cat-file` process below which the read is not split.
pub const MIN_SPLIT: usize = 20_000;

/// Read the files of `commit` with a layout role into `parser`, in this process through
/// gix: the tree is walked to the layout's depth, the `DEFAULTS` blobs are read first,
/// then the entry blobs in contiguous parts, one thread per core (inflating and resolving
/// delta chains is most of the work), each blob parsed as it is read.
fn read_tree(repo: &Path, commit: &str, parser: &mut Parser) -> Result<(), String> {
    let objects = Objects::open(repo)?;
    let listing = objects.walk(commit)?;
    // Files with nothing to read give no keys, so their order does not matter.
    listing.others.iter().for_each(|f| parser.file(f));
    objects.read_blobs(&listing, &listing.defaults, parser)?;
    let jobs = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(listing.entries.len() / MIN_SPLIT)
        .clamp(1, 4);
    if jobs == 1 {
        return objects.read_blobs(&listing, &listing.entries, parser);
    }
    // Contiguous slices of the sorted listing, so the parts join in order.
    let size = listing.entries.len().div_ceil(jobs);
    let parts: Vec<Result<Parser, String>> = std::thread::scope(|s| {
        let threads: Vec<_> = listing
            .entries
            .chunks(size)
            .map(|blobs| {
                let mut part = parser.fork();
                let (listing, objects) = (&listing, &objects);
                s.spawn(move || objects.read_blobs(listing, blobs, &mut part).map(|()| part))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("index reader thread failed".into()))
            })
            .collect()
    });
    // Joining rebuilds the entry map: let go of the mapped pack and the listing first.
    drop((objects, listing));
    for part in parts {
        parser.join(part?);
    }
    Ok(())
}

/// Delta bases kept per reading thread: the blobs of an index are small and a part is read
/// in tree order, which is close to pack order, so a few MiB catch nearly every base
/// (1M entries: 4 MiB read them in 2.0 s, gix's default 64-entry cache in 12 s).
const PACK_CACHE_BYTES: usize = 4 << 20;

/// Largest buffer gix may allocate to decode one object of an index (object and delta
/// work data): entry files are at most [`MAX_FILE_SIZE`], so a blob past this is looked at
/// by its header alone rather than inflated whole.
const ALLOC_LIMIT_BYTES: usize = 16 << 20;

/// The object database of an index clone, read in this process: `git cat-file` took ~6 s
/// of CPU for 1M blobs, mostly its object lookups and the pipe, and `git ls-tree` 1.4 s.
struct Objects {
    repo: gix::ThreadSafeRepository,
    path: PathBuf,
    packs: Packs,
}

/// A blob's place in [`Packs`]: the pack's number above the entry's number in its index;
/// [`NOT_PACKED`] for a blob read through the object store.
type Place = u64;
const NOT_PACKED: Place = u64::MAX;

/// A walking thread's object readers.
struct Walker {
    repo: gix::Repository,
    reader: PackReader,
}

/// What one thread needs to decode objects from [`Packs`].
struct PackReader {
    inflate: gix::zlib::Inflate,
    cache: gix::odb::pack::cache::lru::MemoryCappedHashmap,
}

impl PackReader {
    fn new() -> Self {
        Self {
            inflate: gix::zlib::Inflate::default(),
            cache: gix::odb::pack::cache::lru::MemoryCappedHashmap::new(PACK_CACHE_BYTES),
        }
    }
}

/// The packs of an index clone and of the objects it borrows, opened directly: the blobs'
/// entries are looked up in object id order, where each look-up lands next to the one
/// before in the pack index, instead of in tree order, where each was a binary search
/// through the whole index missing the cache at every step; the walk's trees are read
/// here too, so the pack is mapped once. Objects not found here (loose ones, packs that
/// came later) are read through the object store as before.
#[derive(Default)]
struct Packs(Vec<gix::odb::pack::Bundle>);

impl Packs {
    /// The packs under `objects` and its alternates; none when any cannot be listed (the
    /// store then reads every blob).
    fn open(repo: &gix::ThreadSafeRepository) -> Self {
        let store = &repo.objects;
        let Ok(alternates) = store.alternate_db_paths() else {
            return Self::default();
        };
        let mut bundles = Vec::new();
        for dir in std::iter::once(store.path().to_owned()).chain(alternates) {
            let Ok(list) = std::fs::read_dir(dir.join("pack")) else {
                continue;
            };
            for entry in list.flatten() {
                let path = entry.path();
                if path.extension() != Some(OsStr::new("idx")) {
                    continue;
                }
                // A pack being written or removed is left to the store.
                if let Ok(mut bundle) = gix::odb::pack::Bundle::at(&path, store.object_hash()) {
                    bundle.pack = bundle.pack.with_alloc_limit_bytes(Some(ALLOC_LIMIT_BYTES));
                    bundles.push(bundle);
                }
            }
        }
        Self(bundles)
    }

    /// Where each of `blobs` is, looked up in (about) object id order: sorted by the first
    /// eight bytes of the id, which is all the locality needs.
    fn locate(&self, listing: &Listing, blobs: &[Blob]) -> Vec<Place> {
        let mut places = vec![NOT_PACKED; blobs.len()];
        if self.0.is_empty() {
            return places;
        }
        let mut order: Vec<(u64, u32)> = blobs
            .iter()
            .zip(0u32..)
            .map(|(b, i)| {
                let oid = listing.oid(b);
                let mut key = [0u8; 8];
                let n = oid.len().min(8);
                key[..n].copy_from_slice(&oid[..n]);
                (u64::from_be_bytes(key), i)
            })
            .collect();
        order.sort_unstable();
        let mut last = 0;
        for (_, i) in order {
            let Some(b) = blobs.get(i as usize) else {
                continue;
            };
            let Ok(oid) = gix::hash::oid::try_from_bytes(listing.oid(b)) else {
                continue;
            };
            if let Some(place) = self.place(oid, last) {
                places[i as usize] = place;
                last = (place >> 32) as usize;
            }
        }
        places
    }

    /// Where object `oid` is, trying pack `first` first (usually there is one pack).
    fn place(&self, oid: &gix::oid, first: usize) -> Option<Place> {
        let tries = std::iter::once(first).chain((0..self.0.len()).filter(|&p| p != first));
        for p in tries {
            if let Some(entry) = self.0.get(p).and_then(|bundle| bundle.index.lookup(oid)) {
                return Some(((p as u64) << 32) | u64::from(entry));
            }
        }
        None
    }

    /// The object at `place` (from [`Packs::locate`]), decoded into `buf`.
    fn read<'a>(
        &self,
        place: Place,
        buf: &'a mut Vec<u8>,
        reader: &mut PackReader,
    ) -> Option<Result<gix::objs::Data<'a>, String>> {
        let bundle = self.0.get(usize::try_from(place >> 32).ok()?)?;
        let entry = u32::try_from(place & u64::from(u32::MAX)).ok()?;
        if entry >= bundle.index.num_objects() {
            return None;
        }
        Some(
            bundle
                .get_object_by_index(entry, buf, &mut reader.inflate, &mut reader.cache)
                .map(|(data, _)| data)
                .map_err(|e| e.to_string()),
        )
    }
}

impl Objects {
    fn open(path: &Path) -> Result<Self, String> {
        // Isolated: no global or system config, nothing from the environment; the clone is
        // ours and holds only objects.
        let options = gix::open::Options::isolated()
            .config_overrides([format!("gitoxide.objects.allocLimit={ALLOC_LIMIT_BYTES}")]);
        let repo = gix::ThreadSafeRepository::open_opts(path, options)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let packs = Packs::open(&repo);
        Ok(Self {
            repo,
            path: path.to_owned(),
            packs,
        })
    }

    /// A handle for one thread, with its own delta base cache.
    fn handle(&self) -> gix::Repository {
        let mut repo = self.repo.to_thread_local();
        repo.objects.set_pack_cache(|| {
            Box::new(gix::odb::pack::cache::lru::MemoryCappedHashmap::new(
                PACK_CACHE_BYTES,
            ))
        });
        repo
    }

    fn bad(&self, what: impl std::fmt::Display) -> String {
        format!("reading the index clone {}: {what}", self.path.display())
    }

    /// The files of `commit` with a layout role, in tree order (what `git ls-tree -r`
    /// lists). Trees below the entry depth and dot-directories are not entered: the layout
    /// gives no file there a role. The root's entries are walked one per job on a thread per
    /// core (an index of 1M entries has a tree per entry: 1.3 s on one core), each job into
    /// a listing of its own, joined in the root's order.
    fn walk(&self, commit: &str) -> Result<Listing, String> {
        use gix::prelude::FindExt;
        let repo = self.handle();
        let id = gix::ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| self.bad(format!("commit {commit}: {e}")))?;
        let tree = repo
            .find_object(id)
            .map_err(|e| self.bad(e))?
            .peel_to_tree()
            .map_err(|e| self.bad(format!("commit {commit}: {e}")))?
            .id;
        let mut buf = Vec::new();
        let root: Vec<(Vec<u8>, gix::ObjectId, u32)> = repo
            .objects
            .find_tree_iter(&tree, &mut buf)
            .map_err(|e| self.bad(format!("tree {tree}: {e}")))?
            .map(|entry| {
                entry
                    .map(|e| (e.filename.to_vec(), e.oid.to_owned(), e.mode.value().into()))
                    .map_err(|e| self.bad(format!("tree {tree}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let jobs = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4)
            .min(root.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let walk_one = |walker: &mut Walker, k: usize| -> Result<Listing, String> {
            let mut listing = Listing::default();
            if let Some((name, oid, mode)) = root.get(k) {
                let mut bufs = [Vec::new(), Vec::new()];
                let mut path = name.clone();
                self.entry(walker, *mode, oid, &mut path, &mut bufs, &mut listing)?;
            }
            Ok(listing)
        };
        // Each thread's jobs with their numbers; put back in the root's order after.
        let mut parts: Vec<(usize, Result<Listing, String>)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..jobs)
                .map(|_| {
                    let (next, walk_one, root) = (&next, &walk_one, &root);
                    s.spawn(move || {
                        let mut walker = Walker {
                            repo: self.handle(),
                            reader: PackReader::new(),
                        };
                        let mut mine = Vec::new();
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if k >= root.len() {
                                break mine;
                            }
                            mine.push((k, walk_one(&mut walker, k)));
                        }
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_default())
                .collect()
        });
        // A thread that failed took its jobs with it.
        if parts.len() != root.len() {
            return Err(self.bad("an index reader thread failed"));
        }
        parts.sort_unstable_by_key(|(k, _)| *k);
        let mut listing = Listing::default();
        for (_, part) in parts {
            listing.append(part?);
        }
        Ok(listing)
    }

    /// Add tree entry `path` (mode `mode`, object `oid`): a file with a layout role, or the
    /// files of a tree (`bufs`: one buffer per level still to go).
    fn entry(
        &self,
        walker: &mut Walker,
        mode: u32,
        oid: &gix::oid,
        path: &mut Vec<u8>,
        bufs: &mut [Vec<u8>],
        listing: &mut Listing,
    ) -> Result<(), String> {
        if mode & 0o170000 == 0o040000 {
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
            if !name.starts_with(b".") {
                self.walk_tree(walker, oid.to_owned(), path, bufs, listing)?;
            }
        } else if let Some(role) = layout::role(path) {
            let mode = if mode & 0o170000 == 0o100000 {
                "100644".to_owned()
            } else {
                format!("{mode:06o}")
            };
            listing
                .add(&mode, oid, path, role)
                .map_err(|e| self.bad(e))?;
        }
        Ok(())
    }

    /// Add the files of tree `id` at `path` (`bufs`: one buffer per level still to go).
    fn walk_tree(
        &self,
        walker: &mut Walker,
        id: gix::ObjectId,
        path: &mut Vec<u8>,
        bufs: &mut [Vec<u8>],
        listing: &mut Listing,
    ) -> Result<(), String> {
        use gix::prelude::FindExt;
        let Some((buf, deeper)) = bufs.split_first_mut() else {
            return Ok(());
        };
        // From the packs where it is there (one mapping of the pack touched, not two).
        let tree = match self.packs.place(&id, 0) {
            Some(place) => match self.packs.read(place, buf, &mut walker.reader) {
                Some(Ok(data)) if data.kind == gix::object::Kind::Tree => {
                    gix::objs::TreeRefIter::from_bytes(data.data, id.kind())
                }
                Some(Ok(data)) => {
                    return Err(self.bad(format!("{id} is a {}, not a tree", data.kind)));
                }
                Some(Err(e)) => return Err(self.bad(format!("tree {id}: {e}"))),
                None => return Err(self.bad(format!("tree {id} is missing"))),
            },
            None => walker
                .repo
                .objects
                .find_tree_iter(&id, buf)
                .map_err(|e| self.bad(format!("tree {id}: {e}")))?,
        };
        for entry in tree {
            let entry = entry.map_err(|e| self.bad(format!("tree {id}: {e}")))?;
            let len = path.len();
            if len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(entry.filename);
            self.entry(
                walker,
                entry.mode.value().into(),
                entry.oid,
                path,
                deeper,
                listing,
            )?;
            path.truncate(len);
        }
        Ok(())
    }

    /// Read `blobs` of `listing` into `parser`, in their order.
    fn read_blobs(
        &self,
        listing: &Listing,
        blobs: &[Blob],
        parser: &mut Parser,
    ) -> Result<(), String> {
        use gix::prelude::{Find, Header};
        if blobs.is_empty() {
            return Ok(());
        }
        let repo = self.handle();
        let mut file = File {
            path: Vec::new(),
            role: Role::Entry,
            kind: Kind::Regular(Vec::new()),
        };
        let mut buf = Vec::new();
        let places = self.packs.locate(listing, blobs);
        tracing::debug!(
            blobs = blobs.len(),
            packs = self.packs.0.len(),
            through_store = places.iter().filter(|&&p| p == NOT_PACKED).count(),
            "index blobs located"
        );
        let mut reader = PackReader::new();
        for (b, &place) in blobs.iter().zip(&places) {
            let oid = gix::hash::oid::try_from_bytes(listing.oid(b))
                .map_err(|e| self.bad(format!("object id of {}: {e}", display(listing.path(b)))))?;
            let missing = || self.bad(format!("object {oid} is missing"));
            file.path.clear();
            file.path.extend_from_slice(listing.path(b));
            file.role = b.role;
            let mut content = match std::mem::replace(&mut file.kind, Kind::Symlink) {
                Kind::Regular(content) => content,
                _ => Vec::new(),
            };
            content.clear();
            let found = match self.packs.read(place, &mut buf, &mut reader) {
                Some(read) => read.map(Some),
                None => repo
                    .objects
                    .try_find(oid, &mut buf)
                    .map_err(|e| e.to_string()),
            };
            file.kind = match found {
                Ok(Some(data)) if data.kind != gix::object::Kind::Blob => {
                    return Err(self.bad(format!("{oid} is a {}, not a blob", data.kind)));
                }
                Ok(Some(data)) if data.data.len() as u64 > MAX_FILE_SIZE => {
                    Kind::TooLarge(data.data.len() as u64)
                }
                Ok(Some(data)) => {
                    content.extend_from_slice(data.data);
                    Kind::Regular(content)
                }
                Ok(None) => return Err(missing()),
                // Past the allocation limit, or damaged: the header tells which.
                Err(e) => match repo.objects.try_header(oid) {
                    Ok(Some(h)) if h.size() > MAX_FILE_SIZE => Kind::TooLarge(h.size()),
                    Ok(None) => return Err(missing()),
                    _ => return Err(self.bad(format!("object {oid}: {e}"))),
                },
            };
            parser.file(&file);
        }
        Ok(())
    }
}

/// Read `git ls-tree -r -z` output into a [`Listing`].
fn list(out: &mut dyn BufRead) -> Result<Listing, String> {
    let mut listing = Listing::default();
    let mut record = Vec::new();
    loop {
        record.clear();
        let n = out
            .read_until(0, &mut record)
            .map_err(|e| format!("reading `git ls-tree`: {e}"))?;
        if n == 0 {
            return Ok(listing);
        }
        if record.last() == Some(&0) {
            record.pop();
        }
        if record.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "unexpected `git ls-tree` output: {:?}",
                String::from_utf8_lossy(&record)
            )
        };
        let tab = record.iter().position(|&b| b == b'\t').ok_or_else(bad)?;
        let (meta, path) = (&record[..tab], &record[tab + 1..]);
        let Some(role) = layout::role(path) else {
            continue;
        };
        let meta = std::str::from_utf8(meta).map_err(|_| bad())?;
        let [mode, _kind, oid] = meta.split_whitespace().collect::<Vec<_>>()[..] else {
            return Err(bad());
        };
        let oid = gix::ObjectId::from_hex(oid.as_bytes()).map_err(|_| bad())?;
        listing.add(mode, &oid, path, role)?;
    }
}

impl Listing {
    /// Append `other`, listed after everything here.
    fn append(&mut self, other: Listing) {
        let base = self.text.len();
        self.text.extend_from_slice(&other.text);
        let moved = |mut b: Blob| {
            b.start += base;
            b
        };
        self.defaults.extend(other.defaults.into_iter().map(moved));
        self.entries.extend(other.entries.into_iter().map(moved));
        self.others.extend(other.others);
    }

    /// Add the file at `path` with tree mode `mode` and object id `oid`.
    fn add(&mut self, mode: &str, oid: &gix::oid, path: &[u8], role: Role) -> Result<(), String> {
        let kind = match mode {
            "120000" => Kind::Symlink,
            // Old trees may hold 100664 and the like: all are regular files.
            m if m.starts_with("100") => {
                let too_long = || format!("path too long: {}", display(path));
                let blob = Blob {
                    start: self.text.len(),
                    path_len: u32::try_from(path.len()).map_err(|_| too_long())?,
                    oid_len: u8::try_from(oid.as_bytes().len()).map_err(|_| too_long())?,
                    role,
                };
                self.text.extend_from_slice(oid.as_bytes());
                self.text.extend_from_slice(path);
                match role {
                    Role::Defaults => self.defaults.push(blob),
                    Role::Entry => self.entries.push(blob),
                }
                return Ok(());
            }
            "160000" => Kind::Unusable("a submodule, not a file".into()),
            other => Kind::Unusable(format!("not a regular file (mode {other})")),
        };
        self.others.push(File {
            path: path.to_vec(),
            role,
            kind,
        });
        Ok(())
    }
}

fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The entry paths that differ between commits `old` and `new` of a git index (removed,
/// added or changed), with the files they are now read into `parser`; `None` when a
/// `DEFAULTS` file differs (the entries below it may all change) or the index is not a
/// git repository: then it is read whole. Costs the changed files, not the index.
fn read_diff(
    repo: &Path,
    old: &str,
    new: &str,
    most: usize,
    parser: &mut Parser,
) -> Result<Option<Vec<Vec<u8>>>, String> {
    let args = [
        os("diff-tree"),
        os("-r"),
        os("-z"),
        os("--no-renames"),
        os(old),
        os(new),
    ];
    let mut changes = |out: &mut dyn BufRead| -> Result<Option<Changes>, String> {
        let mut listing = Listing::default();
        let mut paths = Vec::new();
        let (mut meta, mut path) = (Vec::new(), Vec::new());
        loop {
            meta.clear();
            path.clear();
            let read = |buf: &mut Vec<u8>, out: &mut dyn BufRead| {
                out.read_until(0, buf)
                    .map_err(|e| format!("reading `git diff-tree`: {e}"))
                    .inspect(|_| {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                    })
            };
            if read(&mut meta, out)? == 0 {
                return Ok(Some((listing, paths)));
            }
            read(&mut path, out)?;
            let bad = || {
                format!(
                    "unexpected `git diff-tree` output: {:?}",
                    String::from_utf8_lossy(&meta)
                )
            };
            let text = std::str::from_utf8(&meta).map_err(|_| bad())?;
            let [_, mode, _, oid, status] = text.split(' ').collect::<Vec<_>>()[..] else {
                return Err(bad());
            };
            let Some(role) = layout::role(&path) else {
                continue;
            };
            if role == Role::Defaults || paths.len() >= most {
                return Ok(None);
            }
            paths.push(path.clone());
            if status != "D" {
                let oid = gix::ObjectId::from_hex(oid.as_bytes()).map_err(|_| bad())?;
                listing.add(mode, &oid, &path, role)?;
            }
        }
    };
    let Some((listing, paths)) = git_stream(repo, &args, None, &mut changes)? else {
        return Ok(None);
    };
    // The DEFAULTS that apply to the changed entries, unchanged but needed to parse them.
    let mut defaults: BTreeSet<Vec<u8>> = BTreeSet::new();
    for p in &paths {
        let mut dir: Vec<u8> = Vec::new();
        defaults.insert(b"DEFAULTS".to_vec());
        for part in p.split(|&b| b == b'/').take(2) {
            dir.extend_from_slice(part);
            dir.push(b'/');
            defaults.insert([dir.as_slice(), b"DEFAULTS"].concat());
        }
    }
    if defaults.len() > MAX_DIFF_DEFAULTS {
        return Ok(None);
    }
    let mut args = vec![
        os("--literal-pathspecs"),
        os("ls-tree"),
        os("-z"),
        os("--full-tree"),
        os(new),
        os("--"),
    ];
    args.extend(defaults.iter().map(|d| OsStr::from_bytes(d).to_owned()));
    let found = git_stream(repo, &args, None, &mut list)?;
    let objects = Objects::open(repo)?;
    found.others.iter().for_each(|f| parser.file(f));
    objects.read_blobs(&found, &found.defaults, parser)?;
    listing.others.iter().for_each(|f| parser.file(f));
    objects.read_blobs(&listing, &listing.entries, parser)?;
    Ok(Some(paths))
}

/// Run a local git command on `repo` whose output is consumed as it comes (`consume`
/// runs on this thread), with `input` written to its stdin from another thread, bounded by
/// [`LOCAL_TIMEOUT`]. Only for commands that start no git processes of their own.
fn git_stream<R>(
    repo: &Path,
    args: &[OsString],
    input: Option<&WriteInput<'_>>,
    consume: &mut (dyn FnMut(&mut dyn BufRead) -> Result<R, String> + Send),
) -> Result<R, String> {
    let what = {
        let words: Vec<_> = args.iter().take(2).map(|a| a.to_string_lossy()).collect();
        format!("git {}", words.join(" "))
    };
    let mut cmd = command(Some(repo), args);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| format!("cannot run git: {e}"))?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let Some(stdout) = stdout else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{what}: no stdout"));
    };
    std::thread::scope(|s| {
        if let (Some(input), Some(stdin)) = (input, stdin) {
            s.spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 16, stdin);
                // A failure here is git going away, which the status tells.
                let _ = input(&mut w).and_then(|()| w.flush());
            });
        }
        let errors = s.spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = stderr {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        });
        let waiter = s.spawn(move || {
            let deadline = Instant::now() + LOCAL_TIMEOUT;
            let mut pause = Duration::from_millis(1);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => return Ok(status),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("timed out after {}s", LOCAL_TIMEOUT.as_secs()));
                    }
                    Ok(None) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        let mut out = std::io::BufReader::with_capacity(1 << 17, stdout);
        let consumed = consume(&mut out);
        // An early stop closes the pipe, so git ends rather than blocks.
        drop(out);
        let status = waiter
            .join()
            .unwrap_or_else(|_| Err("waiting for it failed".into()))
            .map_err(|e| format!("{what}: {e}"))?;
        let err = errors.join().unwrap_or_default();
        // Stopped reading early on purpose: git then dies of the closed pipe.
        let broken_pipe = {
            use std::os::unix::process::ExitStatusExt;
            status.signal() == Some(13)
        };
        let ended_well = status.success() || (broken_pipe && consumed.is_ok());
        if !ended_well {
            return Err(format!("{what} failed ({status}): {}", first_lines(&err)));
        }
        consumed
    })
}

/// Name of the git config file in the index state directory that every git command on an
/// index clone `<dir>/<name>.git` runs with (`GIT_CONFIG_GLOBAL`).
const GIT_CONFIG: &str = "gitconfig";

/// Write `<dir>/gitconfig`, used for every git command on the index clones. It trusts the
/// local index repositories of `sources` and the clones in `dir`, each by its own path,
/// even when another user owns them (an index repository maintained by root or a CI
/// user): git refuses to read those ("dubious ownership") unless `safe.directory` names
/// them, and git honours that key only in global or system config. Not `*` (issue 10
/// finding 5): that would trust any repository a git command here happened to open. The
/// operator's own global config is included first, so proxies and credential helpers
/// still apply. Written again when the sources change.
pub fn write_git_config(
    dir: &Path,
    sources: &[IndexSource],
) -> Result<(), gitmirror_common::statefile::StateError> {
    let path = dir.join(GIT_CONFIG);
    let mut text = String::from("# Written by gitmirrord for its index git commands.\n");
    if let Some(home) = std::env::var_os("HOME") {
        let user = Path::new(&home).join(".gitconfig");
        text.push_str(&format!("[include]\n\tpath = {}\n", user.display()));
    }
    text.push_str("[safe]\n");
    for trusted in safe_directories(dir, sources) {
        match config_value(&trusted) {
            Some(v) => text.push_str(&format!("\tdirectory = {v}\n")),
            None => tracing::warn!(
                path = %trusted.display(),
                "index path not trusted by git (it cannot be written in a git config): \
                 git refuses it if another user owns it"
            ),
        }
    }
    gitmirror_common::statefile::write_atomic(&path, text.as_bytes(), 0o644)
}

/// The repositories git may open for the index readers: each index's clone in `dir`, and
/// each local index repository as git sees it (its `.git`, or itself when bare). Paths
/// are made absolute and free of links where they exist, as git compares them.
fn safe_directories(dir: &Path, sources: &[IndexSource]) -> Vec<PathBuf> {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let dir = real(dir);
    let mut out = Vec::new();
    for s in sources {
        out.push(dir.join(format!("{}.git", s.name)));
        if let Some(local) = local_path(&s.url) {
            let local = real(local);
            out.push(local.join(".git"));
            out.push(local);
        }
    }
    out
}

/// `path` as a quoted git config value; `None` for a path git config cannot hold (not
/// UTF-8, or with a line break).
fn config_value(path: &Path) -> Option<String> {
    let s = path.to_str()?;
    if s.contains(['\n', '\r', '\0']) {
        return None;
    }
    Some(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

/// Run git (never through a shell) with no prompts, bounded by `timeout`; stdout on success,
/// a one-line error with git's own message otherwise.
fn git(
    repo: Option<&Path>,
    args: &[OsString],
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    git_with(repo, args, input, &[], timeout)
}

/// [`git`] with config given through the environment (`GIT_CONFIG_COUNT`), so none of it
/// is in git's arguments.
fn git_with(
    repo: Option<&Path>,
    args: &[OsString],
    input: Option<Vec<u8>>,
    config: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut cmd = command(repo, args);
    if !config.is_empty() {
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (k, v)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
                .env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
    }
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let what = {
        let words: Vec<_> = args.iter().take(2).map(|a| a.to_string_lossy()).collect();
        format!("git {}", words.join(" "))
    };
    let mut child = cmd.spawn().map_err(|e| format!("cannot run git: {e}"))?;
    // Feed and drain in threads so neither pipe can fill up and stall git.
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // The readers are left to finish when git's own children let go of the pipes.
                return Err(format!("{what} timed out after {}s", timeout.as_secs()));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    Err(format!("{what} failed ({status}): {}", first_lines(&err)))
}

/// git config for an index fetch with a `credentials` entry (SPEC §16). Neither the
/// secret nor anything derived from it is in git's config, environment or arguments: only
/// file paths, the host and the user name.
///
/// https (and http with `allow_plain_http`): a credential helper (other helpers are
/// cleared) that answers only for the entry's protocol and host (`host:port` when not the
/// default), with the token file's first line as the Basic password, or as a Bearer
/// credential when git offers `capability[]=authtype` (git 2.46+). git asks only after a
/// 401, and asks again for the new host after a redirect: the helper answers nothing there.
/// ssh: the key only, batch mode, strict host keys from `known_hosts_file`.
fn credential_config(entry: &Credential) -> Vec<(String, String)> {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    match entry.family() {
        Family::Http => {
            let Some(token) = &entry.spec.token_file else {
                return Vec::new();
            };
            let (host, port) = entry.host();
            let host = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            let protocols = if entry.spec.allow_plain_http {
                "'protocol=https'|'protocol=http'"
            } else {
                "'protocol=https'"
            };
            let emit = match entry.spec.scheme.unwrap_or_default() {
                AuthScheme::Basic => format!(
                    "printf 'username=%s\\npassword=' {}; head -n 1 {}",
                    shell_quote(entry.spec.username.as_deref().unwrap_or("git")),
                    q(token)
                ),
                AuthScheme::Bearer => format!(
                    "test -n \"$a\" || exit 0; printf 'capability[]=authtype\\nauthtype=Bearer\\ncredential='; head -n 1 {}",
                    q(token)
                ),
            };
            let helper = format!(
                "!f() {{ test \"$1\" = get || exit 0; n=0; a=; while IFS= read -r l; do case \"$l\" in {protocols}|{}) n=$((n+1));; 'capability[]=authtype') a=1;; esac; done; test \"$n\" = 2 || exit 0; {emit}; }}; f",
                shell_quote(&format!("host={host}"))
            );
            vec![
                ("credential.helper".into(), String::new()),
                ("credential.helper".into(), helper),
            ]
        }
        Family::Ssh => {
            let options = entry.ssh_options();
            if options.is_empty() {
                return Vec::new();
            }
            let mut command = String::from("ssh -o BatchMode=yes");
            for o in options {
                command.push(' ');
                command.push_str(&shell_quote(&o.to_string_lossy()));
            }
            vec![("core.sshCommand".into(), command)]
        }
    }
}

/// git's own message: its first three lines, at most 400 bytes.
fn first_lines(err: &[u8]) -> String {
    let err = String::from_utf8_lossy(err);
    let message: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect();
    let mut message = message.join("; ");
    if message.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        message.truncate(cut);
    }
    message
}

/// A git command (never through a shell) with no prompts, on `repo` when given, with the
/// index directory's git config; stdout and stderr piped.
fn command(repo: Option<&Path>, args: &[OsString]) -> Command {
    let mut cmd = Command::new("git");
    if let Some(repo) = repo {
        let mut arg = OsString::from("--git-dir=");
        arg.push(repo);
        cmd.arg(arg);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("LC_ALL", "C")
        // Give up on a stalled HTTP transfer rather than hang until the timeout.
        .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        .env("GIT_HTTP_LOW_SPEED_TIME", "60")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(config) = repo.and_then(Path::parent).map(|d| d.join(GIT_CONFIG))
        && config.is_file()
    {
        cmd.env("GIT_CONFIG_GLOBAL", config);
    }
    cmd
}

/// The files of a plain directory index that have a layout role. Dot-directories and
/// symbolic links are not entered.
///
/// The walk goes by descriptor (issue 10 finding 5): each directory is opened with
/// `O_DIRECTORY|O_NOFOLLOW` relative to its parent's descriptor, each file with
/// `O_NOFOLLOW|O_NONBLOCK`, and the type and size are taken from the open descriptor. A
/// symbolic link swapped in for an entry file or a subdirectory after the listing is
/// therefore never followed, and a FIFO never blocks the reader; both become rejected
/// entries with their reason. Only `root`, the configured path, may itself be a link.
fn read_dir(root: &Path) -> Result<Vec<File>, String> {
    use rustix::fs::{self as rfs, FileType, Mode, OFlags};
    let root_fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {}", root.display(), std::io::Error::from(e)))?;
    let shown = |rel: &[u8]| root.join(OsStr::from_bytes(rel)).display().to_string();
    let mut files = Vec::new();
    let mut stack: Vec<(std::os::fd::OwnedFd, Vec<u8>)> = vec![(root_fd, Vec::new())];
    while let Some((dir_fd, rel)) = stack.pop() {
        let depth = rel.split(|&b| b == b'/').filter(|p| !p.is_empty()).count();
        let fail = |e: rustix::io::Errno| format!("{}: {}", shown(&rel), std::io::Error::from(e));
        let mut entries = rfs::Dir::read_from(&dir_fd).map_err(fail)?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            let enter = depth < 2 && !name.starts_with(b".");
            let role = layout::role(&path);
            // The listing's type is only a hint (it may be stale by the time we open):
            // it saves opening what the layout ignores, and devices are never opened.
            let hint = entry.file_type();
            let kind = match hint {
                FileType::Directory if !enter => continue,
                FileType::Directory | FileType::RegularFile | FileType::Unknown => None,
                FileType::Symlink => Some(Kind::Symlink),
                _ => Some(Kind::Unusable("not a regular file".into())),
            };
            if let Some(kind) = kind {
                if let Some(role) = role {
                    files.push(File { path, role, kind });
                }
                continue;
            }
            if role.is_none() && !enter {
                continue;
            }
            let flags = OFlags::RDONLY
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC;
            let opened = rfs::openat(&dir_fd, name, flags, Mode::empty()).and_then(|fd| {
                let st = rfs::fstat(&fd)?;
                Ok((fd, st))
            });
            let kind = match opened {
                Err(rustix::io::Errno::LOOP) => Kind::Symlink,
                Err(e) if hint == FileType::Directory => return Err(fail(e)),
                Err(e) => Kind::Unusable(format!("cannot open: {}", std::io::Error::from(e))),
                Ok((fd, st)) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory if enter => {
                        stack.push((fd, path));
                        continue;
                    }
                    FileType::Directory => continue,
                    FileType::RegularFile => read_small(
                        std::fs::File::from(fd),
                        u64::try_from(st.st_size).unwrap_or(0),
                    ),
                    _ => Kind::Unusable("not a regular file".into()),
                },
            };
            if let Some(role) = role {
                files.push(File { path, role, kind });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Read an open regular file of `size` bytes (from `fstat` on the same descriptor).
fn read_small(f: std::fs::File, size: u64) -> Kind {
    if size > MAX_FILE_SIZE {
        return Kind::TooLarge(size);
    }
    let mut buf = Vec::new();
    // The file may grow between fstat and read.
    if let Err(e) = f.take(MAX_FILE_SIZE + 1).read_to_end(&mut buf) {
        return Kind::Unusable(format!("cannot read: {e}"));
    }
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Kind::TooLarge(buf.len() as u64);
    }
    Kind::Regular(buf)
}

/// The "commit" of a directory index: a hash of everything the layout read.
fn dir_hash(files: &[File]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(&f.path);
        match &f.kind {
            Kind::Regular(b) => {
                h.update(b"r");
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            Kind::Symlink => h.update(b"l"),
            Kind::TooLarge(n) => {
                h.update(b"L");
                h.update(n.to_le_bytes());
            }
            Kind::Unusable(why) => {
                h.update(b"u");
                h.update((why.len() as u64).to_le_bytes());
                h.update(why.as_bytes());
            }
        }
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("dir:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A `git daemon` on loopback serving `base`, killed when dropped.
    struct Daemon(std::process::Child, u16);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn daemon(base: &Path) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let exec = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
            .unwrap();
        let exec = String::from_utf8(exec.stdout).unwrap();
        let child = std::process::Command::new(Path::new(exec.trim()).join("git-daemon"))
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not listen"
            );
            std::thread::yield_now();
        }
        Daemon(child, port)
    }

    // Issue 11 part 4: a clone of a remote index damaged in the state dir is cloned again
    // from its URL instead of failing every poll; an unreachable remote leaves the clone
    // alone (no new clone for a network outage).
    #[test]
    fn issue11_a_damaged_index_clone_is_cloned_again() {
        let d = tempfile::tempdir().unwrap();
        let served = d.path().join("served");
        let work = d.path().join("work");
        std::fs::create_dir_all(work.join("a/ab")).unwrap();
        run_git(&work, &["init", "-q", "-b", "master"]);
        std::fs::write(work.join("a/ab/abc"), "url: https://example.org/abc.git\n").unwrap();
        run_git(&work, &["add", "-A"]);
        run_git(&work, &["commit", "-q", "-m", "one"]);
        std::fs::create_dir_all(&served).unwrap();
        run_git(
            d.path(),
            &["clone", "-q", "--bare", "work", "served/index.git"],
        );
        let gd = daemon(&served);
        let state = d.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let src = IndexSource {
            name: "up".into(),
            url: format!("git://127.0.0.1:{}/index.git", gd.1),
            branch: None,
            poll_interval: std::time::Duration::from_secs(60),
        };
        let first = match fetch(&src, &state, None).unwrap() {
            Fetched::Git { commit, .. } => commit,
            Fetched::Dir { .. } => panic!("a git index"),
        };
        let clone = state.join("up.git");
        // Damage: the config and HEAD overwritten with garbage.
        std::fs::write(clone.join("config"), "[core\u{0}garbage\n").unwrap();
        std::fs::write(clone.join("HEAD"), "nonsense\n").unwrap();
        match fetch(&src, &state, None) {
            Ok(Fetched::Git { commit, .. }) => assert_eq!(commit, first),
            other => panic!("expected the index again, got {:?}", other.err()),
        }
        // Damage: every object gone while the ref stays.
        for dir in ["objects/pack", "objects"] {
            for e in std::fs::read_dir(clone.join(dir)).unwrap().flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.len() == 2 || n.starts_with("pack-") {
                    let _ = std::fs::remove_dir_all(e.path())
                        .or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        }
        match fetch(&src, &state, None) {
            Ok(Fetched::Git { commit, .. }) => assert_eq!(commit, first),
            other => panic!("expected the index again, got {:?}", other.err()),
        }
        // The remote gone: an error, and the clone stays.
        drop(gd);
        assert!(fetch(&src, &state, None).is_err());
        assert!(
            clone.join("HEAD").is_file(),
            "an outage must not remove the clone"
        );
    }

    const SECRET: &[u8] = b"url: file:///outside/secret\n";

    // Issue 10 finding 5: an entry file of a directory index is swapped, by rename, for a
    // symbolic link to a file outside the index, for a FIFO, and back, while the index is
    // read again and again. The listing's type and the file opened may differ; the reader
    // must never return the outside file's bytes and never block on the FIFO. The reads
    // run in a thread waited for with a deadline; the loop ends after enough reads saw
    // each of the three forms, not after a time. Seen failing before the fix (the old
    // reader returned the outside file's bytes, or hung in `open` on the FIFO).
    #[test]
    fn issue10_f5_a_link_or_fifo_swapped_in_is_neither_followed_nor_blocking() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("index");
        let dir = root.join("h/o");
        std::fs::create_dir_all(&dir).unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, SECRET).unwrap();
        let entry = dir.join("repo");
        std::fs::write(&entry, b"url: https://example.org/r.git\n").unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, dir, entry) = (stop.clone(), dir.clone(), entry.clone());
            std::thread::spawn(move || {
                let tmp = dir.join(".swap");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_file(&tmp);
                    match n % 3 {
                        0 => std::os::unix::fs::symlink(&outside, &tmp).unwrap(),
                        1 => rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &tmp,
                            rustix::fs::FileType::Fifo,
                            rustix::fs::Mode::from_raw_mode(0o644),
                            0,
                        )
                        .unwrap(),
                        _ => std::fs::write(&tmp, b"url: https://example.org/r.git\n").unwrap(),
                    }
                    std::fs::rename(&tmp, &entry).unwrap();
                    n += 1;
                }
            })
        };

        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                // Reads that saw: the regular file, the link, the FIFO; and the outside bytes.
                let mut seen = [0u32; 3];
                let mut followed = 0u32;
                for _ in 0..1_000_000u32 {
                    if seen.iter().all(|&n| n >= 100) {
                        break;
                    }
                    let files = match read_dir(&root) {
                        Ok(f) => f,
                        Err(e) => panic!("read_dir: {e}"),
                    };
                    for f in files.iter().filter(|f| f.path == b"h/o/repo") {
                        match &f.kind {
                            Kind::Regular(b) if b.as_slice() == SECRET => followed += 1,
                            Kind::Regular(_) => seen[0] += 1,
                            Kind::Symlink => seen[1] += 1,
                            Kind::Unusable(why) if why.contains("not a regular file") => {
                                seen[2] += 1
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                stop.store(true, Ordering::Relaxed);
                let _ = tx.send((seen, followed));
            })
        };
        let got = rx.recv_timeout(Duration::from_secs(120));
        stop.store(true, Ordering::Relaxed);
        let (seen, followed) = got.expect("the index reader blocked (on the FIFO?)");
        reader.join().unwrap();
        swapper.join().unwrap();
        assert_eq!(followed, 0, "the outside file was read through the link");
        assert!(
            seen.iter().all(|&n| n >= 100),
            "not every form was seen: {seen:?}"
        );
    }

    /// `git` with `args` in `cwd`, which must succeed.
    fn run_git(cwd: &Path, args: &[&str]) {
        let out = Command::new("git")
            .current_dir(cwd)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Issue 10 finding 5: the index git config trusts the index's own paths, not `*`, and a
    // local index repository another user owns is still read (why the key is set at all).
    // The same fetch with no trusted paths is refused ("dubious ownership"), so the check
    // is live on this machine. Root only for the ownership part (only root can give the
    // repository to another uid). Seen failing before the fix (the config held `*`).
    #[test]
    fn issue10_f5_safe_directory_names_the_index_paths_not_star() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("h/o")).unwrap();
        std::fs::write(src.join("h/o/r"), "url: https://example.org/r.git\n").unwrap();
        run_git(&src, &["init", "-q"]);
        run_git(&src, &["add", "."]);
        run_git(&src, &["commit", "-q", "-m", "index"]);
        let dir = d.path().join("state");
        std::fs::create_dir_all(&dir).unwrap();
        let source = IndexSource {
            name: "up".into(),
            url: src.display().to_string(),
            branch: None,
            poll_interval: Duration::from_secs(60),
        };
        write_git_config(&dir, std::slice::from_ref(&source)).unwrap();
        let text = std::fs::read_to_string(dir.join(GIT_CONFIG)).unwrap();
        assert!(!text.contains('*'), "{text}");
        let real = std::fs::canonicalize(&src).unwrap();
        for trusted in [
            real.join(".git"),
            std::fs::canonicalize(&dir).unwrap().join("up.git"),
        ] {
            let line = format!("directory = \"{}\"", trusted.display());
            assert!(text.contains(&line), "{line} missing from {text}");
        }

        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped the ownership part: needs root");
            return;
        }
        let nobody = Some(65534);
        for e in walk(&src) {
            std::os::unix::fs::lchown(&e, nobody, nobody).unwrap();
        }
        write_git_config(&dir, &[]).unwrap();
        let refused = fetch(&source, &dir, None).err().unwrap_or_default();
        assert!(refused.contains("dubious ownership"), "control: {refused}");
        write_git_config(&dir, std::slice::from_ref(&source)).unwrap();
        let fetched = fetch(&source, &dir, None).unwrap();
        let mut parser = Parser::new(false);
        fetched.read(&mut parser).unwrap();
        let parsed = parser.finish();
        assert_eq!(parsed.entries.len(), 1, "rejected: {:?}", parsed.rejected);
    }

    /// `root` and everything under it.
    fn walk(root: &Path) -> Vec<PathBuf> {
        let mut out = vec![root.to_owned()];
        let mut i = 0;
        while i < out.len() {
            if std::fs::symlink_metadata(&out[i]).unwrap().is_dir() {
                for e in std::fs::read_dir(&out[i]).unwrap() {
                    out.push(e.unwrap().path());
                }
            }
            i += 1;
        }
        out
    }
}
