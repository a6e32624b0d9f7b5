//! Bare mirrors on disk (SPEC §7.1), cloned and fetched with gix, kept healthy (§7.3) and
//! compact (§7.1) with the git binary.
//!
//! Everything here is blocking: call it from `spawn_blocking`, never on the async runtime.
//!
//! gix 0.90 needs help to behave like `git clone --mirror` / `git fetch --prune`
//! (FACTS.md): the ls-refs prefix filter must be off or a `+refs/*:refs/*` refspec lists
//! only HEAD; `remote.origin.mirror` is not written; there is no prune; a fetch that
//! updates no ref leaves a `.keep` file; packs are written mode 0600; there is no repack.
//!
//! **No-op fetches.** A fetch lists the upstream refs (one round trip after the handshake)
//! and compares them with the mirror's; when they are equal it stops there: no pack
//! negotiation, no ref transaction, nothing written (gix itself would not negotiate
//! either, but it would first load every advertised tip commit).
//!
//! **Self-heal** (SPEC §7.3 "local"). We never run two operations on one repo, so a lock
//! file found when an operation starts cannot belong to one of ours; the only other writer
//! could be an operator's git command. A `*.lock` (or an interrupted pack's temp file)
//! older than [`STALE_AFTER`] is therefore removed: those at the top of the mirror
//! (`config.lock`, `packed-refs.lock`, `HEAD.lock`, …) and in `objects/pack/` before every
//! fetch, those deeper down (`refs/heads/main.lock`, …) when a fetch fails locally and in
//! maintenance. (SPEC says "older than the fetch timeout"; that would keep a mirror stuck
//! for 30 minutes after a crash for no benefit, since nothing of ours can hold the lock.)
//! A mirror whose refs cannot be read or whose ref tips are missing is corrupt: it is
//! cloned again into `.tmp/` and swapped in atomically (`renameat2(RENAME_EXCHANGE)`) only
//! when complete, so the old mirror stays at its path until that instant.

use crate::pool;
use crate::state::Refs;
use crate::upstream_http::{self, Refusal, RefusalSink, UpstreamPolicy};
use gitmirror_common::credentials::{Credential, Credentials, Family, shell_quote};
use gitmirror_common::units::FreeSpace;
use gitmirror_common::upstream_url::{self, UpstreamUrl, UrlRefused};
use gitmirror_wire::FailureClass;
use gix::protocol::transport::client::blocking_io::Transport;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Where half-done clones live until they are complete: `<mirror_dir>.tmp` beside the
/// mirror directory, or `<mirror_dir>/.tmp` when it cannot be beside ([`WorkDirs`]).
pub const TMP_DIR: &str = ".tmp";
/// Where mirrors of repos removed from the index wait before deletion: `<mirror_dir>.trash`
/// or `<mirror_dir>/.trash`, as [`TMP_DIR`].
pub const TRASH_DIR: &str = ".trash";
/// How long a trashed mirror is kept.
pub const TRASH_KEEP_SECS: u64 = 72 * 3600;
/// SPEC §7.1: never more packs than this in a mirror, even between maintenance passes.
pub const MAX_PACKS: usize = 50;
/// A mirror with this many packs (or more) is due for maintenance, which repacks it.
pub const REPACK_AT: usize = 16;
/// A lock or temp file older than this, found when one of our operations starts on the
/// mirror, is stale (see the module documentation).
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How long an HTTP request may wait for an answer, or a read for more of it, by default.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(300);
/// gix's own connect timeout for `git://`.
const GIT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The newest commit among at most this many branch tips dates a new clone.
const MAX_DATED_TIPS: usize = 1000;
const MIRROR_REFSPEC: &str = "+refs/*:refs/*";
/// Longest failure message kept (they go into state, the wire and the API).
const MAX_MESSAGE: usize = 600;

/// A failed clone or fetch, classified (SPEC §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
    /// For [`FailureClass::RateLimited`]: how long the upstream asked us to wait.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: truncate(message.into()),
            retry_after: None,
        }
    }

    pub fn local(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Local, message)
    }

    fn io(action: &str, path: &Path, e: &io::Error) -> Self {
        Self::local(format!("cannot {action} {}: {e}", path.display()))
    }

    /// The disk is full: nothing to heal, retry when there is space again.
    pub fn is_disk_full(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        [
            "no space left",
            "os error 28)",
            "disk quota",
            "os error 122)",
        ]
        .iter()
        .any(|n| m.contains(n))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.class, self.message)
    }
}

/// What a successful clone or fetch leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Every ref under `refs/` in the mirror now.
    pub refs: Refs,
    /// The mirror's `remote.origin.url` was changed to the held URL before fetching.
    pub url_changed: bool,
    /// Packs in the mirror afterwards; counted only when a pack may have arrived.
    pub packs: Option<usize>,
    /// For a clone: the newest committer time among the branch tips (Unix seconds), when
    /// cheap to find.
    pub newest_commit_secs: Option<i64>,
    /// Self-heal done on the way (stale locks removed, a corrupt mirror re-cloned).
    pub repairs: Vec<String>,
    /// For a fetch that wrote a pack: the size of the newest pack afterwards, about what
    /// arrived (a pool's consolidation waits for 1 MiB of them, plan C19); else 0.
    pub new_pack_bytes: u64,
    /// Bytes received over the connection by this clone or fetch (ls-refs and pack, as
    /// the transport read them; SPEC §13 transfer bytes by source).
    pub received_bytes: u64,
}

/// What [`Mirrors::maintain`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    pub packs_before: usize,
    pub packs_after: usize,
    /// Stale lock and temp files removed, loose refs packed, corruption repaired.
    pub repairs: Vec<String>,
    /// The mirror was found corrupt and cloned again; these are its refs now.
    pub recloned: Option<Refs>,
    /// Its fork pool was found corrupt and rebuilt from this mirror (plan C16): the other
    /// members of the project that borrowed from it, to verify (and re-clone) next.
    pub pool_rebuilt: Option<Vec<String>>,
}

/// What [`Mirrors::prepare`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub tmp_removed: usize,
    pub trash_removed: usize,
    /// Trashed mirrors moved from `<mirror_dir>/.trash` to the trash beside it.
    pub trash_migrated: usize,
    /// git processes a killed worker left working on its mirrors, killed.
    pub orphans_killed: usize,
}

/// The temp and trash directories of a mirror directory (SPEC §7.1, issue 10 finding 5).
///
/// Beside `mirror_dir` (`<mirror_dir>.tmp`, `<mirror_dir>.trash`), so a `git daemon
/// --export-all --base-path=<mirror_dir>` serving the mirrors cannot serve half-done clones
/// or deleted mirrors. They must be on the filesystem of `mirror_dir` (a clone is renamed
/// into place, a mirror renamed into the trash): when `mirror_dir` is a mount point, or
/// the directories beside it cannot be created (a systemd unit without `ReadWritePaths=`
/// for them), they stay inside it, as before this release, with one warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDirs {
    pub tmp: PathBuf,
    pub trash: PathBuf,
    /// Inside `mirror_dir` (the fallback).
    pub inside: bool,
}

impl WorkDirs {
    /// `<root>/.tmp` and `<root>/.trash`.
    pub fn inside(root: &Path) -> Self {
        Self {
            tmp: root.join(TMP_DIR),
            trash: root.join(TRASH_DIR),
            inside: true,
        }
    }

    /// The directories a worker on `root` uses now: beside it when `<root>.tmp` exists,
    /// else inside. For tests and tools; the worker itself decides with [`Self::choose`].
    pub fn in_use(root: &Path) -> Self {
        match Self::beside(root) {
            Some(b) if b.tmp.is_dir() => b,
            _ => Self::inside(root),
        }
    }

    /// `<root>.tmp` and `<root>.trash`; `None` for a root without a last component (`/`).
    pub fn beside(root: &Path) -> Option<Self> {
        let name = root.file_name()?;
        let sibling = |suffix: &str| {
            let mut n = name.to_owned();
            n.push(suffix);
            root.with_file_name(n)
        };
        Some(Self {
            tmp: sibling(TMP_DIR),
            trash: sibling(TRASH_DIR),
            inside: false,
        })
    }

    /// Beside `root` when its parent is on the same filesystem and the two directories
    /// can be created there; inside it otherwise, with a warning naming the exposure.
    /// Creates `root` and the chosen directories.
    pub fn choose(root: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let inside = Self::inside(root);
        let _ = fs::create_dir_all(root);
        let Some(beside) = Self::beside(root) else {
            return inside;
        };
        let parent = root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev());
        let why_inside = match (dev(root), dev(parent)) {
            (Ok(a), Ok(b)) if a == b => [&beside.tmp, &beside.trash].into_iter().find_map(|d| {
                fs::create_dir_all(d)
                    .err()
                    .map(|e| format!("cannot create {}: {e}", d.display()))
            }),
            (Ok(_), Ok(_)) => {
                Some("it is a mount point (a rename across filesystems would fail)".into())
            }
            (Err(e), _) | (_, Err(e)) => Some(format!("cannot inspect it or its parent: {e}")),
        };
        match why_inside {
            None => beside,
            Some(why) => {
                tracing::warn!(
                    mirror_dir = %root.display(),
                    "temp and trash directories stay inside the mirror directory ({}, {}): {why}; \
                     a server exporting the whole mirror directory (git daemon --export-all \
                     without the shipped unit's --access-hook, a web server) can serve \
                     half-done clones and deleted mirrors",
                    inside.tmp.display(),
                    inside.trash.display()
                );
                inside
            }
        }
    }
}

/// The mirror directory and its bare mirrors at `<root>/<repo id>.git`.
#[derive(Debug, Clone)]
pub struct Mirrors {
    root: PathBuf,
    /// Chosen on first use ([`WorkDirs::choose`]): [`Mirrors::prepare`] at start.
    work: Arc<OnceLock<WorkDirs>>,
    io_timeout: Duration,
    /// `upstream_deny` and `fetch.redirects`.
    upstream: Arc<UpstreamPolicy>,
    /// Built on first use, on a blocking thread.
    http: Arc<OnceLock<Result<upstream_http::Client, String>>>,
    /// `disk.abort_free` and `fetch.max_repo_size`; changed on reload.
    limits: Arc<Mutex<Limits>>,
    /// `credentials` (SPEC §16); replaced on reload and when a secret file changes.
    credentials: Arc<Mutex<Arc<Credentials>>>,
    /// `fetch.pools` (SPEC §14): new clones of a project's second member create or join
    /// its pool.
    pools: Arc<AtomicBool>,
    /// One lock per pool for its creation, joins and removal, and how many clones are
    /// being built against it (a pool in use is never removed).
    pool_locks: Arc<Mutex<HashMap<PathBuf, PoolUse>>>,
}

/// The trash's stems, listed once per purge pass when first needed.
#[derive(Default)]
struct TrashIndex(Option<HashMap<String, usize>>);

#[derive(Debug, Default)]
struct PoolUse {
    lock: Arc<Mutex<()>>,
    building: usize,
}

/// What aborts a running clone or fetch (issue 10; design.md "Worker fetch path").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `disk.abort_free`: free space on the mirror's filesystem below this.
    pub abort_free: FreeSpace,
    /// `fetch.max_repo_size`: the mirror's objects bigger than this many bytes.
    pub max_repo_size: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            abort_free: FreeSpace::Bytes(0),
            max_repo_size: None,
        }
    }
}

impl Mirrors {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            work: Arc::new(OnceLock::new()),
            io_timeout: DEFAULT_IO_TIMEOUT,
            upstream: Arc::new(UpstreamPolicy::default()),
            http: Arc::new(OnceLock::new()),
            limits: Arc::new(Mutex::new(Limits::default())),
            credentials: Arc::default(),
            pools: Arc::new(AtomicBool::new(false)),
            pool_locks: Arc::default(),
        }
    }

    /// `fetch.pools`: whether new clones create and join fork pools (SPEC §14). Turned off,
    /// existing members stay as they are (complete anyway) and no new ones join (plan C14).
    pub fn set_pools(&self, on: bool) {
        self.pools.store(on, Ordering::Relaxed);
    }

    pub fn pools(&self) -> bool {
        self.pools.load(Ordering::Relaxed)
    }

    /// The lock of `pool`, to hold while it is created, joined or removed.
    fn pool_lock(&self, pool: &Path) -> Arc<Mutex<()>> {
        let mut map = self.pool_locks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(pool.to_owned()).or_default().lock.clone()
    }

    fn pool_building(&self, pool: &Path, delta: isize) {
        let mut map = self.pool_locks.lock().unwrap_or_else(|e| e.into_inner());
        let u = map.entry(pool.to_owned()).or_default();
        u.building = u.building.saturating_add_signed(delta);
    }

    fn pool_in_use(&self, pool: &Path) -> bool {
        let map = self.pool_locks.lock().unwrap_or_else(|e| e.into_inner());
        map.get(pool).is_some_and(|u| u.building > 0)
    }

    /// Use `credentials` for operations started from now on.
    pub fn set_credentials(&self, credentials: Arc<Credentials>) {
        *self.credentials.lock().unwrap_or_else(|e| e.into_inner()) = credentials;
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A failure of an operation on `url`: an upstream refusing the credential an entry
    /// gave is class `auth`, named by the entry's `match` (SPEC §16); without an entry a
    /// refusal stays as classified (`gone` for 401/403).
    fn with_credential_class(&self, url: &str, f: Failure) -> Failure {
        let credentials = self.credentials();
        let Some(entry) = credentials.find(url) else {
            return f;
        };
        // A rate limit keeps its class: GitHub answers an exhausted quota with a 403, which
        // the transport files as a rate limit (with its wait) though the text says 403.
        if matches!(f.class, FailureClass::Local | FailureClass::RateLimited)
            || !auth_refusal(&f.message)
        {
            return f;
        }
        let withheld = entry.family() == Family::Http
            && url.starts_with("http://")
            && !entry.spec.allow_plain_http;
        let note = if withheld {
            " (token withheld: plain http and allow_plain_http is not set)"
        } else {
            ""
        };
        Failure::new(
            FailureClass::Auth,
            gitmirror_common::credentials::auth_message(
                entry.name(),
                &format!("{}{note}", f.message),
            ),
        )
    }

    /// Set the limits that abort a running clone or fetch (also on a running worker:
    /// operations started afterwards use them).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bound how long an HTTP request waits for an answer or for more of it.
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// Which upstream addresses may be connected to and where redirects may lead.
    pub fn with_upstream(mut self, policy: UpstreamPolicy) -> Self {
        self.upstream = Arc::new(policy);
        self.http = Arc::new(OnceLock::new());
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Final path of a repo's mirror: id `a/abc/abc` → `<root>/a/abc/abc.git`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.git"))
    }

    /// A complete mirror exists (clones only ever appear at the final path complete).
    pub fn exists(&self, id: &str) -> bool {
        self.path(id).is_dir()
    }

    /// Where half-done clones and trashed mirrors are ([`WorkDirs`]).
    pub fn work_dirs(&self) -> &WorkDirs {
        self.work.get_or_init(|| WorkDirs::choose(&self.root))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.work_dirs().tmp.clone()
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.work_dirs().trash.clone()
    }

    fn http_client(&self) -> Result<upstream_http::Client, Failure> {
        self.http
            .get_or_init(|| upstream_http::Client::new(self.io_timeout, &self.upstream))
            .clone()
            .map_err(Failure::local)
    }

    /// At start: create the directories, remove leftovers of interrupted clones, move the
    /// trash of an older release from inside the mirror directory to beside it (its temp
    /// directory there only holds leftovers, which go), and delete trashed mirrors older
    /// than 72 h.
    pub fn prepare(&self) -> Result<Cleanup, Failure> {
        // First, so nothing writes into the leftovers while they are removed.
        let orphans_killed = kill_orphans(&self.root);
        let work = self.work_dirs().clone();
        for dir in [&self.root, &work.tmp, &work.trash] {
            fs::create_dir_all(dir).map_err(|e| Failure::io("create directory", dir, &e))?;
        }
        let mut tmp_removed = 0;
        let old = WorkDirs::inside(&self.root);
        let mut tmps = vec![work.tmp.clone()];
        if !work.inside && old.tmp.is_dir() {
            tmps.push(old.tmp.clone());
        }
        for tmp in &tmps {
            let entries = fs::read_dir(tmp).map_err(|e| Failure::io("list", tmp, &e))?;
            for entry in entries {
                let path = entry.map_err(|e| Failure::io("list", tmp, &e))?.path();
                remove_any(&path).map_err(|e| Failure::io("remove leftover clone", &path, &e))?;
                tmp_removed += 1;
            }
        }
        let mut trash_migrated = 0;
        if !work.inside {
            if old.tmp.is_dir() {
                fs::remove_dir(&old.tmp).map_err(|e| Failure::io("remove", &old.tmp, &e))?;
            }
            trash_migrated = migrate_trash(&old.trash, &work.trash);
        }
        let trash_removed = self.purge_trash(unix_secs());
        if self.root.join(pool::POOLS_DIR).is_dir() {
            // No git of ours runs now (orphans killed above): a lock or temp pack in a
            // pool is a killed operation's, however young, and would fail the next one
            // (a ref lock fails the migration's namespace fetch).
            for p in pool::all_pools(&self.root) {
                heal_pool(&p, Duration::ZERO);
            }
            let trashed = self.trashed_stems().into_keys().collect();
            let r = pool::reconcile(&self.root, &trashed);
            for p in &r.problems {
                tracing::warn!("fork pools: {p}");
            }
            tracing::info!(
                pools = r.pools,
                members = r.members,
                rewritten = r.rewritten,
                resumed = r.resumed,
                namespaces_dropped = r.namespaces_dropped,
                pools_removed = r.pools_removed,
                "fork pools reconciled"
            );
            if !self.pools() && r.members > 0 {
                // Plan C14: no automatic detach (it would copy every pool back at once).
                tracing::info!(
                    members = r.members,
                    "fetch.pools is off: no new pool members; the existing ones stay as they are (see gitmirror-worker.yaml(5) to detach one)"
                );
            }
        }
        Ok(Cleanup {
            tmp_removed,
            trash_removed,
            trash_migrated,
            orphans_killed,
        })
    }

    /// Delete trashed mirrors older than [`TRASH_KEEP_SECS`]. Entries are named
    /// `<id with / as _>-<unix time>.git` ([`trashed_at`]); the time in the name counts.
    pub fn purge_trash(&self, now_secs: u64) -> usize {
        let dir = self.trash_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut removed = 0;
        let mut index = TrashIndex::default();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(t) = trashed_at(&entry.file_name().to_string_lossy()) else {
                tracing::warn!(path = %path.display(), "unexpected entry in the trash directory; leaving it alone");
                continue;
            };
            if now_secs.saturating_sub(t) >= TRASH_KEEP_SECS {
                let stems = pool::trash_stems(&entry.file_name().to_string_lossy());
                match self.remove_member_dir(&path, stems, &mut index) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot delete trashed mirror: {e}")
                    }
                }
            }
        }
        removed
    }

    /// Free space is short: delete trashed mirrors, oldest first, until `enough()` says so
    /// (or the trash is empty). Returns how many were deleted. Mirrors handed over go to
    /// the trash too (issue 10), so a big rebalancing must not fill the disk for 72 h.
    pub fn purge_trash_until(&self, enough: impl Fn() -> bool) -> usize {
        let dir = self.trash_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut trashed: Vec<(u64, PathBuf, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((trashed_at(&name)?, e.path(), name))
            })
            .collect();
        trashed.sort();
        let mut removed = 0;
        let mut index = TrashIndex::default();
        for (_, path, name) in trashed {
            if enough() {
                break;
            }
            match self.remove_member_dir(&path, pool::trash_stems(&name), &mut index) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot delete trashed mirror: {e}")
                }
            }
        }
        removed
    }

    /// Clone `url` as a new mirror of `id`: into `.tmp/`, renamed into place only when
    /// complete. Returns the refs of the new mirror.
    ///
    /// With `fetch.pools` (SPEC §14), the clone of a project's member borrows from the
    /// project's pool, which is created from a sibling mirror first if there is none yet,
    /// and offers the pool's tips as haves: it receives only what the pool lacks. The
    /// member's refs enter the pool's namespace before the rename into place.
    pub fn clone_new(
        &self,
        id: &str,
        url: &str,
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        let pool = self.pool_for_clone(id, url);
        let result = self.clone_new_with(id, url, interrupt, pool.as_deref());
        if let Some(p) = &pool {
            self.pool_building(p, -1);
        }
        result.map_err(|f| self.with_credential_class(url, f))
    }

    fn clone_new_with(
        &self,
        id: &str,
        url: &str,
        interrupt: &AtomicBool,
        pool: Option<&Path>,
    ) -> Result<Fetched, Failure> {
        let final_path = self.path(id);
        let tmp = self.tmp_dir().join(unique_name(id));
        let watch = Watch::new(self.limits(), self.tmp_dir(), tmp.join("objects"), 0);
        let cloned = watch
            .guard(interrupt, || self.clone_into(&tmp, url, interrupt, pool))
            // A pack that completed within one look of crossing the limit.
            .and_then(|cloned| watch.check_done(&tmp).map(|()| cloned));
        let pooled = cloned.as_ref().ok().and_then(|(_, p)| *p);
        self.place_new(id, &tmp, &final_path, pooled, cloned.map(|(f, _)| f))
    }

    /// The pool `id`'s mirror borrows from now (its alternates point at its project's
    /// pool); `None` for a plain mirror. One read of its alternates file.
    pub fn pool_of(&self, id: &str) -> Option<PathBuf> {
        let pool = pool::pool_path(&self.root, id).ok()?;
        let target = pool::read_alternates(&self.path(id)).ok()??;
        let abs = |p: &Path| pool::normalize(&std::path::absolute(p).unwrap_or_default());
        (abs(&target) == abs(&pool.join("objects"))).then_some(pool)
    }

    /// Pool operation (a) on `pool` ([`pool::consolidate`]), under the pool's lock. The
    /// caller's project locks keep member repacks away meanwhile.
    pub fn consolidate_pool(&self, pool: &Path) -> Result<pool::Consolidated, pool::PoolError> {
        let lock = self.pool_lock(pool);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !pool.join("objects").is_dir() {
            return Ok(pool::Consolidated::default());
        }
        heal_pool(pool, STALE_AFTER);
        pool::consolidate(&self.root, pool, unix_secs())
    }

    /// Pool operation (b) on `pool` ([`pool::prune`]), under the pool's lock; only while
    /// no op of any member of its project runs (the caller's project locks) and no clone
    /// is being built against it.
    pub fn prune_pool(&self, pool: &Path, expire: &str) -> Result<pool::Pruned, pool::PoolError> {
        let lock = self.pool_lock(pool);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !pool.join("objects").is_dir() {
            return Ok(pool::Pruned::Skipped("no pool".into()));
        }
        if self.pool_in_use(pool) {
            return Ok(pool::Pruned::Skipped(
                "a clone is being built against it".into(),
            ));
        }
        heal_pool(pool, STALE_AFTER);
        pool::prune(&self.root, &self.trash_dir(), pool, expire, unix_secs())
    }

    /// Rename a complete clone of `id` at `tmp` to `final_path` (which must not exist); on
    /// any failure, `tmp` is removed. A clone built against `pooled` joins it on the way:
    /// its namespace before the member is in place (nothing it reaches may be unreferenced
    /// in the pool), the final relative alternates path, and a local repack after.
    fn place_new(
        &self,
        id: &str,
        tmp: &Path,
        final_path: &Path,
        pooled: Option<&Path>,
        cloned: Result<Fetched, Failure>,
    ) -> Result<Fetched, Failure> {
        let result = cloned.and_then(|fetched| {
            if let Some(parent) = final_path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| Failure::io("create directory", parent, &e))?;
            }
            if final_path.exists() {
                return Err(Failure::local(format!(
                    "{} appeared while cloning; keeping it and discarding the new clone",
                    final_path.display()
                )));
            }
            if let Some(p) = pooled {
                let lock = self.pool_lock(p);
                let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                pool::add_namespace(p, tmp, pool::member_name(id)).map_err(pool_failure)?;
                pool::write_alternates(tmp, final_path, p, true).map_err(pool_failure)?;
            }
            fs::rename(tmp, final_path)
                .map_err(|e| Failure::io("move the finished clone to", final_path, &e))?;
            if pooled.is_some()
                && let Err(e) = pool::repack_local(final_path)
            {
                // Complete anyway; what it received stays in its own pack as well.
                tracing::warn!(repo = %id, "repacking a new pool member failed: {e}");
            }
            Ok(fetched)
        });
        if result.is_err() && tmp.exists() {
            let _ = remove_any(tmp);
        }
        result
    }

    /// The pool a new clone of `id` borrows from, counted as in use until
    /// [`Mirrors::pool_building`] is told it is done; `None` for a plain clone: pools off,
    /// a repo with credentials (plan C6: protocol v2 serves any pooled object by id), an id
    /// without a project folder, or no pool and no sibling to seed one from.
    fn pool_for_clone(&self, id: &str, url: &str) -> Option<PathBuf> {
        if !self.pools() || self.credentials().find(url).is_some() {
            return None;
        }
        let pool = pool::pool_path(&self.root, id).ok()?;
        let lock = self.pool_lock(&pool);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !pool.join("objects").is_dir() {
            let seed = self.seed_for(id)?;
            if let Err(e) = self.create_pool(&pool, &seed) {
                tracing::warn!(repo = %id, seed = %seed, pool = %pool.display(), "cannot create the project's pool; cloning a plain mirror: {e}");
                return None;
            }
            tracing::info!(repo = %id, seed = %seed, pool = %pool.display(), "created a fork pool");
        }
        self.pool_building(&pool, 1);
        Some(pool)
    }

    /// A sibling of `id` in its project folder that can seed a new pool (plan C12): the
    /// canonical one (`x/abc/abc`) if it qualifies, else the smallest name. A sibling
    /// qualifies when it is a plain mirror, not detached, without credentials and with at
    /// most [`pool::MAX_MEMBER_REFS`] refs. One directory listing.
    fn seed_for(&self, id: &str) -> Option<String> {
        let (folder, own) = id.rsplit_once('/')?;
        let canonical = folder.rsplit_once('/').map_or(folder, |(_, p)| p);
        let entries = fs::read_dir(self.root.join(folder)).ok()?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".git")?.to_owned();
                (name != own && valid_id(&name) && e.path().join("objects").is_dir())
                    .then_some(name)
            })
            .collect();
        names.sort_by_key(|n| (n != canonical, n.clone()));
        names
            .into_iter()
            .map(|n| format!("{folder}/{n}"))
            .find(|sid| self.joinable(sid))
    }

    /// Whether the mirror of `id` could join its project's pool: plain (no alternates),
    /// not detached (plan C13), no credentials (C6), at most [`pool::MAX_MEMBER_REFS`]
    /// refs (C15).
    fn joinable(&self, id: &str) -> bool {
        let path = self.path(id);
        let credentials = self.credentials();
        path.join("objects").is_dir()
            && !path.join("objects/info/alternates").exists()
            && !pool::is_detached(&path)
            && pool::origin_url(&path).is_some_and(|u| credentials.find(&u).is_none())
            && open(&path).is_ok_and(|r| {
                r.references().is_ok_and(|refs| {
                    refs.all().is_ok_and(|all| {
                        all.take(pool::MAX_MEMBER_REFS + 1).count() <= pool::MAX_MEMBER_REFS
                    })
                })
            })
    }

    /// Migration (SPEC §14, plan step 7, C14, R5): the plain mirrors of project `folder`
    /// join its pool, which is created from a seed first when the project has at least two
    /// joinable mirrors. Each join keeps the member complete at every step
    /// ([`pool::join`]). Stops, keeping what is done, when `fetch.pools` is turned off or
    /// `low_disk()` says free space is below `disk.min_free` (asked before each member).
    /// Under the pool's lock; the caller keeps every op of the project's members away.
    /// Returns how many mirrors joined.
    pub fn migrate_project(
        &self,
        folder: &str,
        low_disk: impl Fn() -> bool,
    ) -> Result<usize, pool::PoolError> {
        let pool = pool::project_pool_path(&self.root, folder)?;
        let lock = self.pool_lock(&pool);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        heal_pool(&pool, STALE_AFTER);
        let Ok(entries) = fs::read_dir(self.root.join(folder)) else {
            return Ok(0);
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".git")?.to_owned();
                let id = format!("{folder}/{name}");
                valid_id(&id).then_some(id)
            })
            .filter(|id| self.joinable(id))
            .collect();
        ids.sort();
        let mut joined = 0;
        if !pool.join("objects").is_dir() {
            if ids.len() < 2 || !self.pools() || low_disk() {
                return Ok(0);
            }
            let Some(seed) = self.seed_for(&format!("{folder}/")) else {
                return Ok(0);
            };
            self.create_pool(&pool, &seed)?;
            tracing::info!(seed = %seed, pool = %pool.display(), "created a fork pool for existing mirrors");
            ids.retain(|id| *id != seed);
            joined += 1;
        }
        for id in ids {
            if !self.pools() || low_disk() {
                break;
            }
            pool::join(&pool, &self.path(&id), pool::member_name(&id))?;
            joined += 1;
        }
        Ok(joined)
    }

    /// Create `pool` from the mirror of `seed_id` (its packs hard-linked) and join the
    /// seed to it. Held under the pool's lock. If the seed did not get as far as borrowing,
    /// the new pool goes again.
    fn create_pool(&self, pool: &Path, seed_id: &str) -> Result<(), pool::PoolError> {
        let seed = self.path(seed_id);
        let build = self.tmp_dir().join(unique_name(&format!("pool_{seed_id}")));
        pool::create(pool, &seed, &build)?;
        if let Err(e) = pool::join(pool, &seed, pool::member_name(seed_id)) {
            if !seed.join("objects/info/alternates").exists() {
                let _ = remove_any(pool);
                self.remove_empty_parents(pool);
            }
            return Err(e);
        }
        Ok(())
    }

    /// After a pool member's mirror left `mirror_dir` (deleted, or its trash copy purged):
    /// drop the namespaces of the members whose trash stems are `stems` and that have no
    /// mirror left in `mirror_dir` or in the trash (`trashed`, stems too), then the pool if
    /// no namespace remains and no clone is being built against it (plan C7). Refs only:
    /// no object is deleted from a live pool.
    fn release_members(&self, pool: &Path, stems: &[String], trashed: &HashMap<String, usize>) {
        let pool = &pool::normalize(pool);
        let Some(folder) = pool::pool_folder(&pool::normalize(&self.root), pool) else {
            return; // not one of our pools: leave it alone
        };
        if !pool.join("objects").is_dir() {
            return;
        }
        let prefix = format!("{}_", pool::trash_stem(&folder));
        let lock = self.pool_lock(pool);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        for stem in stems {
            let Some(name) = stem.strip_prefix(&prefix) else {
                continue;
            };
            let id = format!("{folder}/{name}");
            if !valid_id(&id)
                || self.path(&id).exists()
                || trashed.get(stem).is_some_and(|&n| n > 0)
            {
                continue;
            }
            if let Err(e) = pool::drop_namespace(pool, name) {
                tracing::warn!(repo = %id, pool = %pool.display(), "cannot drop a removed member's refs from its pool: {e}");
            }
        }
        match pool::namespaces(pool) {
            Ok(n) if n.members.is_empty() && n.strays.is_empty() && !self.pool_in_use(pool) => {
                match remove_any(pool) {
                    Ok(()) => {
                        tracing::info!(pool = %pool.display(), "removed a fork pool: its last member is gone");
                        self.remove_empty_parents(pool);
                    }
                    Err(e) => {
                        tracing::warn!(pool = %pool.display(), "cannot remove an empty pool: {e}")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// The stems of every trash entry ([`pool::trash_stems`]), with how many entries
    /// carry each.
    fn trashed_stems(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        if let Ok(entries) = fs::read_dir(self.trash_dir()) {
            for e in entries.flatten() {
                for stem in pool::trash_stems(&e.file_name().to_string_lossy()) {
                    *out.entry(stem).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// Remove a trash entry (or a mirror), then release its pool namespace if it was a
    /// pool member (`stems`: what it may have been called, [`pool::trash_stems`]). The
    /// trash is listed at most once per pass (`index`), and only once a pool member goes.
    fn remove_member_dir(
        &self,
        path: &Path,
        stems: Vec<String>,
        index: &mut TrashIndex,
    ) -> io::Result<()> {
        let pool = pool::read_alternates(path)
            .ok()
            .flatten()
            .and_then(|objects| objects.parent().map(Path::to_owned));
        remove_any(path)?;
        if let Some(counts) = index.0.as_mut() {
            // Listed while this entry was still there.
            for stem in &stems {
                if let Some(n) = counts.get_mut(stem) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        if let Some(pool) = pool {
            let trashed = index.0.get_or_insert_with(|| self.trashed_stems());
            self.release_members(&pool, &stems, trashed);
        }
        Ok(())
    }

    /// Clone into `tmp`, which must not exist. The upstream is connected and has listed
    /// its refs before anything is created on disk: an upstream that refuses, times out or
    /// lacks the repo costs no directory (at 100k repos with failing upstreams, making and
    /// removing clone skeletons was most of a worker's CPU). The pack is received with
    /// gix's protocol layer and the refs are written in one `packed-refs` file, as `git
    /// clone` does, not through gix's ref transaction (a lock file per ref).
    ///
    /// With `pool`, the new mirror borrows from it (an absolute alternates path while in
    /// the temp directory) and the pool's tips are the haves; the pool actually used comes
    /// back (none for an upstream with more than [`pool::MAX_MEMBER_REFS`] refs).
    fn clone_into<'p>(
        &self,
        tmp: &Path,
        url: &str,
        interrupt: &AtomicBool,
        pool: Option<&'p Path>,
    ) -> Result<(Fetched, Option<&'p Path>), Failure> {
        // A detached HEAD's commit is fetched too.
        let mut listing = self.list_refs(url, &["HEAD"])?;
        let ref_map = std::mem::take(&mut listing.ref_map);
        let pool = pool.filter(|_| ref_map.remote_refs.len() <= pool::MAX_MEMBER_REFS);

        // Only now is there something to write.
        create_mirror(tmp, url)?;
        if let Some(p) = pool {
            pool::write_alternates(tmp, tmp, p, false).map_err(pool_failure)?;
        }
        let repo = open(tmp)?;
        match pool {
            None => {
                let mut wants = CloneWants { map: &ref_map };
                listing.receive(&mut wants, &repo, Stage::Clone, false, interrupt)?;
            }
            Some(p) => {
                let mut wants: Vec<gix::ObjectId> = ref_map
                    .mappings
                    .iter()
                    .filter_map(|m| m.remote.as_id().map(ToOwned::to_owned))
                    .filter(|id| !repo.has_object(id))
                    .collect();
                wants.sort();
                wants.dedup();
                let mut negotiate = FetchWants {
                    map: &ref_map,
                    wants,
                    haves: pool::tips(p),
                };
                listing.receive(&mut negotiate, &repo, Stage::Clone, false, interrupt)?;
                let fresh = open(tmp)?;
                if let Some(m) = ref_map
                    .mappings
                    .iter()
                    .find(|m| m.remote.as_id().is_some_and(|id| !fresh.has_object(id)))
                {
                    return Err(Failure::new(
                        FailureClass::Transient,
                        format!(
                            "the upstream did not send the object of {}",
                            m.remote
                                .as_name()
                                .map(|n| n.to_string())
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let advertised = advertised_refs(&ref_map.remote_refs);
        write_packed_refs(tmp, &advertised, false)?;
        write_head(tmp, &ref_map.remote_refs)?;
        drop(repo);
        tidy_packs(tmp)?;
        let repo = open(tmp)?;
        let refs = read_refs(&repo)?;
        Ok((
            Fetched {
                newest_commit_secs: newest_commit(&repo, &refs),
                refs,
                url_changed: false,
                packs: None,
                repairs: Vec::new(),
                new_pack_bytes: 0,
                received_bytes: 0,
            },
            pool,
        ))
    }

    /// An unconnected (http) or just connected (`git://`, a spawned `file://` or `ssh`
    /// helper) transport to `url`.
    /// Connect to `url`, shake hands and list its refs (the mirror refspec plus `extra`):
    /// what a clone and a fetch both do before deciding what to ask for.
    fn list_refs(&self, url: &str, extra: &[&str]) -> Result<Listing, Failure> {
        let parsed = checked_url(url)?.url;
        let (transport, refusals) = self.transport(&parsed)?;
        list_on(transport, refusals, extra)
    }

    /// ssh resolves the host itself, in a process of its own: resolve it here first and
    /// refuse when any of its addresses is denied (SPEC §17). ssh resolves again, so a name
    /// whose answer changes in between can still reach a denied address: that race is
    /// accepted and documented (docs/security.md).
    fn check_ssh(&self, url: &gix::Url) -> Result<(), Failure> {
        use std::net::ToSocketAddrs;
        if url.scheme != gix::url::Scheme::Ssh || self.upstream.deny.nets().is_empty() {
            return Ok(());
        }
        let host = url
            .host()
            .ok_or_else(|| Failure::new(FailureClass::Gone, "ssh url has no host"))?;
        let addrs = (host, url.port.unwrap_or(22))
            .to_socket_addrs()
            .map_err(|e| {
                Failure::new(
                    FailureClass::Transient,
                    format!("cannot resolve {host}: {e}"),
                )
            })?;
        for a in addrs {
            self.upstream
                .deny
                .check(host, a.ip())
                .map_err(|e| Failure::new(FailureClass::Gone, e.to_string()))?;
        }
        Ok(())
    }

    fn transport(
        &self,
        url: &gix::Url,
    ) -> Result<(Box<dyn Transport + Send>, Option<RefusalSink>), Failure> {
        let credentials = self.credentials();
        let entry = credentials.find(&url.to_bstring().to_string());
        if is_http(url) {
            let session = self.http_client()?.session_with(entry.and_then(host_auth));
            let refusals = session.refusals();
            return Ok((
                Box::new(http_transport(session, url.clone())),
                Some(refusals),
            ));
        }
        if url.scheme == gix::url::Scheme::Git {
            let t = git_transport(url, self.io_timeout, &self.upstream.deny)?;
            return Ok((t, None));
        }
        self.check_ssh(url)?;
        Ok((helper_transport(url, self.io_timeout, entry)?, None))
    }

    /// Fetch an existing mirror from `url` with prune, rewriting `remote.origin.url` first
    /// if the upstream URL changed (the mirror is kept, never re-cloned). Returns its refs.
    ///
    /// Heals what it can on the way (see the module documentation): stale locks are
    /// removed and the fetch tried again; a corrupt mirror is cloned again and swapped in.
    pub fn fetch(&self, id: &str, url: &str, interrupt: &AtomicBool) -> Result<Fetched, Failure> {
        // Before anything connects or the mirror's config is rewritten with it.
        checked_url(url)?;
        let path = self.path(id);
        let limits = self.limits();
        let objects = path.join("objects");
        // Walked only when it matters: no-op fetches are most fetches.
        let size = limits.max_repo_size.map_or(0, |_| dir_size(&objects));
        let watch = Watch::new(limits, path.clone(), objects, size);
        watch.check_start()?;
        // Only a pooled project consolidates after big fetches: one listing otherwise spared.
        let before = self.pools().then(|| pack_names(&path));
        let mut fetched = watch
            .guard(interrupt, || self.fetch_healing(id, &path, url, interrupt))
            .map_err(|f| self.with_credential_class(url, f))?;
        if let Some(before) = before
            && fetched.packs.is_some()
        {
            fetched.new_pack_bytes = new_pack_bytes(&path, &before);
        }
        Ok(fetched)
    }

    fn fetch_healing(
        &self,
        id: &str,
        path: &Path,
        url: &str,
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        let path = path.to_owned();
        let mut repairs = remove_stale(&path, Sweep::TopLevel);
        let failure = match self.fetch_once(&path, url, interrupt) {
            Ok(mut f) => {
                f.repairs.splice(0..0, repairs);
                return Ok(f);
            }
            Err(f) => f,
        };
        if !healable(&failure, interrupt) {
            return Err(failure);
        }
        let removed = remove_stale(&path, Sweep::All);
        let failure = if removed.is_empty() {
            failure
        } else {
            repairs.extend(removed);
            match self.fetch_once(&path, url, interrupt) {
                Ok(mut f) => {
                    f.repairs.splice(0..0, repairs);
                    return Ok(f);
                }
                Err(f) if !healable(&f, interrupt) => return Err(f),
                Err(f) => f,
            }
        };
        let Err(reason) = check_mirror(&path) else {
            return Err(failure);
        };
        let mut fetched = self.reclone(id, url, interrupt, &reason)?;
        repairs.append(&mut fetched.repairs);
        fetched.repairs = repairs;
        Ok(fetched)
    }

    fn fetch_once(
        &self,
        path: &Path,
        url: &str,
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        let mut repo = open(path)?;
        let current = repo.find_remote("origin").ok().and_then(|r| {
            r.url(gix::remote::Direction::Fetch)
                .map(|u| u.to_bstring().to_string())
        });
        let url_changed = current.as_deref() != Some(url);
        if url_changed {
            set_config(repo.git_dir(), &[("remote", Some("origin"), "url", url)])?;
            if current.is_none() {
                // No usable origin (e.g. a mirror from elsewhere): make it a proper mirror.
                set_config(
                    repo.git_dir(),
                    &[
                        ("remote", Some("origin"), "fetch", MIRROR_REFSPEC),
                        ("remote", Some("origin"), "mirror", "true"),
                    ],
                )?;
            }
            repo = open(path)?;
        }
        let local = read_refs(&repo)?;
        check_tips(&repo, &local)?;
        let remote = repo
            .find_remote("origin")
            .map_err(|e| classify(&e, Stage::Local, None))?;
        let (connection, refusals) = self.connect(&remote)?;
        let refusal = || refusals.as_ref().and_then(RefusalSink::get);
        let prepare = connection
            .prepare_fetch(gix::progress::Discard, fetch_options())
            .map_err(|e| classify(&e, Stage::Upstream, refusal()))?;
        if same_refs(prepare.ref_map(), &local) {
            // Dropping `prepare` ends the conversation with a flush, like `git ls-remote`.
            return Ok(Fetched {
                refs: local,
                url_changed,
                packs: None,
                newest_commit_secs: None,
                repairs: Vec::new(),
                new_pack_bytes: 0,
                received_bytes: 0,
            });
        }
        if changed_refs(prepare.ref_map(), &local) >= MANY_CHANGES || local.len() >= MANY_REFS {
            // gix would write each through its ref transaction (a lock file and a loose
            // ref each: 30 s for 20k new refs against 2 s for git), and its transaction
            // takes a lock for every advertised ref, unchanged ones included (a repo of
            // 200k refs spent minutes on one moved ref). Ends this conversation.
            drop(prepare);
            let mut fetched = self.fetch_packed(&repo, url, &local, interrupt)?;
            fetched.url_changed = url_changed;
            return Ok(fetched);
        }
        let outcome = prepare
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| classify(&e, Stage::Transfer, refusal()))?;
        let advertised: HashSet<&[u8]> = outcome
            .ref_map
            .mappings
            .iter()
            .filter_map(|m| m.local.as_ref().map(|l| l.as_slice()))
            .collect();
        prune(&repo, &advertised)?;
        let mut packs = tidy_packs(repo.git_dir())?;
        if packs > MAX_PACKS {
            // Maintenance should have kept up; never let the bound slip meanwhile.
            repack(repo.git_dir(), &mut Vec::new());
            packs = tidy_packs(repo.git_dir())?;
        }
        Ok(Fetched {
            refs: read_refs(&repo)?,
            url_changed,
            packs: Some(packs),
            newest_commit_secs: None,
            repairs: Vec::new(),
            new_pack_bytes: 0,
            received_bytes: 0,
        })
    }

    /// A fetch that changes many refs: the pack through gix's protocol layer (wants: the
    /// advertised objects we lack; haves: our ref tips, in one round), then every ref
    /// written into `packed-refs` at once and the loose refs removed, which also prunes.
    fn fetch_packed(
        &self,
        repo: &gix::Repository,
        url: &str,
        local: &Refs,
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        let git_dir = repo.git_dir().to_owned();
        let mut listing = self.list_refs(url, &[])?;
        let ref_map = std::mem::take(&mut listing.ref_map);
        let advertised = advertised_refs(&ref_map.remote_refs);
        let (wants, haves) = wants_and_haves(repo, &advertised, local);
        let mut negotiate = FetchWants {
            map: &ref_map,
            wants,
            haves,
        };
        listing.receive(&mut negotiate, repo, Stage::Transfer, false, interrupt)?;
        // Every advertised object must be here before a ref names it.
        let fresh = open(&git_dir)?;
        if let Some((name, _)) = advertised.iter().find(|(_, (v, _))| !fresh.has_object(v)) {
            return Err(Failure::new(
                FailureClass::Transient,
                format!("the upstream did not send the object of {name}"),
            ));
        }
        write_packed_refs(&git_dir, &advertised, true)?;
        remove_loose_refs(&git_dir.join("refs"))
            .map_err(|e| Failure::io("remove loose refs under", &git_dir.join("refs"), &e))?;
        let mut packs = tidy_packs(&git_dir)?;
        if packs > MAX_PACKS {
            repack(&git_dir, &mut Vec::new());
            packs = tidy_packs(&git_dir)?;
        }
        let repo = open(&git_dir)?;
        Ok(Fetched {
            refs: read_refs(&repo)?,
            url_changed: false,
            packs: Some(packs),
            newest_commit_secs: None,
            repairs: Vec::new(),
            new_pack_bytes: 0,
            received_bytes: 0,
        })
    }

    /// A connection to the mirror's origin; for http(s), on our own backend so a refusal's
    /// status and `Retry-After` can be read afterwards.
    fn connect<'r, 'repo>(
        &self,
        remote: &'r gix::Remote<'repo>,
    ) -> Result<(Connection<'r, 'repo>, Option<RefusalSink>), Failure> {
        let url = remote
            .url(gix::remote::Direction::Fetch)
            .cloned()
            .ok_or_else(|| Failure::local("the mirror's origin has no URL"))?;
        let credentials = self.credentials();
        let entry = credentials.find(&url.to_bstring().to_string());
        let (mut connection, refusals) = if is_http(&url) {
            let session = self.http_client()?.session_with(entry.and_then(host_auth));
            let refusals = session.refusals();
            let transport: Box<dyn Transport + Send> = Box::new(http_transport(session, url));
            (
                remote.to_connection_with_transport(transport),
                Some(refusals),
            )
        } else if url.scheme == gix::url::Scheme::Git {
            let transport = git_transport(&url, self.io_timeout, &self.upstream.deny)?;
            (remote.to_connection_with_transport(transport), None)
        } else {
            self.check_ssh(&url)?;
            let transport = helper_transport(&url, self.io_timeout, entry)?;
            (remote.to_connection_with_transport(transport), None)
        };
        connection.set_credentials(no_credentials);
        Ok((connection, refusals))
    }

    /// Clone `url` again into `.tmp/` and swap it with the (corrupt) mirror at the final
    /// path in one step; then delete the old one.
    fn reclone(
        &self,
        id: &str,
        url: &str,
        interrupt: &AtomicBool,
        reason: &str,
    ) -> Result<Fetched, Failure> {
        let final_path = self.path(id);
        tracing::warn!(repo = %id, path = %final_path.display(), "mirror is corrupt ({reason}); cloning it again");
        let tmp = self.tmp_dir().join(unique_name(id));
        // Watched as a new clone: inside a fetch, the fetch's own watch would count the
        // new copy on top of the corrupt one's size and abort a mirror half the limit.
        // Plain: a mirror re-cloned for corruption takes nothing from a pool (plan C16).
        let watch = Watch::new(self.limits(), self.tmp_dir(), tmp.join("objects"), 0);
        let cloned = watch
            .guard(interrupt, || self.clone_into(&tmp, url, interrupt, None))
            .and_then(|(fetched, _)| watch.check_done(&tmp).map(|()| fetched));
        let mut fetched = match cloned {
            Ok(f) => f,
            Err(mut f) => {
                let _ = remove_any(&tmp);
                f.message = truncate(format!(
                    "mirror is corrupt ({reason}) and cloning it again failed: {}",
                    f.message
                ));
                return Err(f);
            }
        };
        if let Some(parent) = final_path.parent()
            && let Err(e) = fs::create_dir_all(parent)
        {
            let _ = remove_any(&tmp);
            return Err(Failure::io("create directory", parent, &e));
        }
        if let Err(e) = swap_into_place(&tmp, &final_path) {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        // `tmp` now holds the corrupt mirror.
        if let Err(e) = remove_any(&tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), "cannot delete the replaced corrupt mirror (removed at the next start): {e}");
        }
        fetched.repairs.push(format!(
            "the mirror was corrupt ({reason}); cloned it again and swapped it in"
        ));
        Ok(fetched)
    }

    /// The pool of `id`'s project is corrupt (plan C16): clone `id` again without haves
    /// into the temp directory, build a new pool from it there (packs hard-linked, its
    /// namespace), swap the new pool with the broken one (`RENAME_EXCHANGE`), then the new
    /// clone with the mirror; the old ones are deleted. Returns the new clone's fetch and
    /// the project's other members that borrowed from the pool (their objects may be
    /// gone with it: the caller verifies them, which re-clones them plain if so). Under
    /// the pool's lock.
    fn rebuild_pool(
        &self,
        id: &str,
        url: &str,
        pool_dir: &Path,
        interrupt: &AtomicBool,
        reason: &str,
    ) -> Result<(Fetched, Vec<String>), Failure> {
        let lock = self.pool_lock(pool_dir);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        tracing::error!(pool = %pool_dir.display(), repo = %id, "fork pool is corrupt ({reason}); rebuilding it from a new clone of this member");
        let final_path = self.path(id);
        let others: Vec<String> = pool::live_members(&self.root, pool_dir)
            .into_iter()
            .map(|(name, _)| format!("{}/{name}", pool::project_of(id).unwrap_or_default()))
            .filter(|o| o != id)
            .collect();
        let tmp = self.tmp_dir().join(unique_name(id));
        let build = self.tmp_dir().join(unique_name(&format!("pool_{id}")));
        let watch = Watch::new(self.limits(), self.tmp_dir(), tmp.join("objects"), 0);
        let result = watch
            .guard(interrupt, || self.clone_into(&tmp, url, interrupt, None))
            .and_then(|(fetched, _)| watch.check_done(&tmp).map(|()| fetched))
            .and_then(|mut fetched| {
                pool::build_pool(&tmp, &build).map_err(pool_failure)?;
                pool::add_namespace(&build, &tmp, pool::member_name(id)).map_err(pool_failure)?;
                pool::write_alternates(&tmp, &final_path, pool_dir, true).map_err(pool_failure)?;
                swap_into_place(&build, pool_dir)?;
                // From here the new pool is in place: the new clone goes in next.
                swap_into_place(&tmp, &final_path)?;
                if let Err(e) = pool::repack_local(&final_path) {
                    tracing::warn!(repo = %id, "repacking the rebuilt pool's seed failed: {e}");
                }
                fetched.repairs.push(format!(
                    "its fork pool was corrupt ({reason}); rebuilt it from a new clone of this mirror"
                ));
                Ok(fetched)
            });
        for leftover in [&tmp, &build] {
            if let Err(e) = remove_any(leftover)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %leftover.display(), "cannot delete (removed at the next start): {e}");
            }
        }
        result.map(|f| (f, others))
    }

    /// Keep a mirror healthy and compact (SPEC §7.1): remove stale lock and temp files and
    /// `.keep` files, repack when there are [`REPACK_AT`] packs or more (geometric, so the
    /// cost stays proportional to what arrived), pack loose refs, and with `verify` check
    /// connectivity (`git fsck --connectivity-only`), re-cloning from `url` if it fails.
    ///
    /// Must not run while the same repo is fetched (the caller's per-repo exclusivity).
    pub fn maintain(
        &self,
        id: &str,
        url: &str,
        verify: bool,
        interrupt: &AtomicBool,
    ) -> Result<Maintenance, Failure> {
        let path = self.path(id);
        if !path.join("objects").is_dir() {
            return Err(Failure::local(format!(
                "no mirror at {} to maintain",
                path.display()
            )));
        }
        let mut m = Maintenance {
            repairs: remove_stale(&path, Sweep::All),
            ..Maintenance::default()
        };
        m.packs_before = tidy_packs(&path)?;
        m.packs_after = m.packs_before;
        if m.packs_before >= REPACK_AT {
            repack(&path, &mut m.repairs);
            m.packs_after = tidy_packs(&path)?;
        }
        if has_loose_refs(&path) {
            match git(&path, &["pack-refs", "--all"]) {
                Ok(()) => {}
                Err(e) => m.repairs.push(format!("git pack-refs failed: {e}")),
            }
        }
        let args = [
            "fsck",
            "--connectivity-only",
            "--no-dangling",
            "--no-progress",
        ];
        // The pool first (plan C16): with a broken pool every member fails, and re-cloning
        // them one by one would leave the pool broken.
        if verify
            && let Some(pool_dir) = self.pool_of(id)
            && let Err(GitError::Failed(reason)) = git(&pool_dir, &args)
        {
            let (fetched, others) =
                self.rebuild_pool(id, url, &pool_dir, interrupt, &first_line(&reason))?;
            m.repairs.extend(fetched.repairs);
            m.packs_after = tidy_packs(&path)?;
            m.recloned = Some(fetched.refs);
            m.pool_rebuilt = Some(others);
            return Ok(m);
        }
        if verify {
            let problem = match check_mirror(&path) {
                Err(reason) => Some(reason),
                Ok(()) => match git(&path, &args) {
                    Ok(()) => None,
                    Err(GitError::Failed(reason)) => Some(reason),
                    Err(e @ GitError::NotRun(_)) => {
                        m.repairs.push(format!("could not check connectivity: {e}"));
                        None
                    }
                },
            };
            if let Some(reason) = problem {
                let fetched = self.reclone(id, url, interrupt, &first_line(&reason))?;
                m.repairs.extend(fetched.repairs);
                m.packs_after = tidy_packs(&path)?;
                m.recloned = Some(fetched.refs);
            }
        }
        Ok(m)
    }

    /// Delete a mirror (the repo moved to another worker that has a complete mirror).
    pub fn delete(&self, id: &str) -> io::Result<()> {
        let path = self.path(id);
        match self.remove_member_dir(
            &path,
            vec![pool::trash_stem(id)],
            &mut TrashIndex::default(),
        ) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot delete {}: {e}", path.display()),
                ));
            }
            _ => {}
        }
        self.remove_empty_parents(&path);
        Ok(())
    }

    /// Move a mirror to `<trash>/<id with / as _>-<unix time>.git` (the repo left the index).
    /// Returns the trash path, or `None` when there was no mirror.
    pub fn trash(&self, id: &str, now_secs: u64) -> io::Result<Option<PathBuf>> {
        let path = self.path(id);
        if !path.exists() {
            return Ok(None);
        }
        let dir = self.trash_dir();
        fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        let mut target = dir.join(format!("{}-{now_secs}.git", id.replace('/', "_")));
        let mut n = 0;
        while target.exists() {
            n += 1;
            target = dir.join(format!("{}.{n}-{now_secs}.git", id.replace('/', "_")));
        }
        // A pool member keeps borrowing from the trash (plan C7). An absolute path is right
        // at both places, so a crash on either side of the move leaves it complete (and
        // start-up makes an absolute path at the final path relative again); once moved,
        // the path becomes relative to the trash.
        let pool_dir = match pool::read_alternates(&path) {
            Ok(Some(objects)) => objects.parent().map(Path::to_owned),
            Ok(None) => None,
            // Broken already: moving it does not make it worse, and it must leave.
            Err(e) => {
                tracing::warn!(repo = %id, "trashing a mirror with {e}");
                None
            }
        };
        if let Some(p) = &pool_dir {
            pool::write_alternates(&path, &path, p, false)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        fs::rename(&path, &target).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot move {} to {}: {e}",
                    path.display(),
                    target.display()
                ),
            )
        })?;
        if let Some(p) = &pool_dir
            && let Err(e) = pool::write_alternates(&target, &target, p, true)
        {
            tracing::warn!(repo = %id, "a trashed pool member keeps an absolute alternates path: {e}");
        }
        self.remove_empty_parents(&path);
        Ok(Some(target))
    }

    /// Remove the now-empty `a/abc/` directories a mirror lived in, up to the root.
    fn remove_empty_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// How often a running clone or fetch is checked against its [`Limits`] by time...
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// ...and by bytes received from the upstream.
const CHECK_EVERY_BYTES: u64 = 256 * 1024;

thread_local! {
    /// The [`Watch`] of the clone or fetch running on this thread (gix's blocking client
    /// reads on the caller's thread), so transports can count what they receive without
    /// every connecting function carrying it.
    static WATCHED: std::cell::RefCell<Option<Arc<Watch>>> = const { std::cell::RefCell::new(None) };
}

/// Count `n` bytes received from an upstream by the clone or fetch running on this
/// thread; an error naming the limit once one is passed. Transports call it after each
/// read (`git://`, http, spawned helpers).
pub(crate) fn received(n: usize) -> io::Result<()> {
    WATCHED.with_borrow(|w| match w {
        Some(w) => w.on_received(n as u64),
        None => Ok(()),
    })
}

/// A connection's read side that counts what it receives ([`received`]).
struct Metered<R>(R);

impl<R: io::Read> io::Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        received(n)?;
        Ok(n)
    }
}

/// Watches one clone or fetch against the [`Limits`]: free space on the filesystem of
/// `disk`, and the mirror's size. Two ways: every [`CHECK_EVERY_BYTES`] received, on the
/// reading thread (exact: the read fails, so no pack completes past the limit), and every
/// [`WATCH_EVERY`] from a thread beside it, which also catches other writers filling the
/// disk and sets the operation's interrupt flag. Either way gix stops, drops its temp
/// pack and touches no ref; the failure then names the limit.
struct Watch {
    limits: Limits,
    disk: PathBuf,
    objects: PathBuf,
    /// Size of `objects` at the start, and of `objects/pack` within it.
    start_size: u64,
    start_packs: u64,
    /// Free bytes when it started: what arrives lands on this disk, so free space is at
    /// most this less what was received (the kernel may show the writes later).
    start_free: u64,
    received: AtomicU64,
    next_check: AtomicU64,
    breached: Mutex<Option<String>>,
}

impl Watch {
    fn new(limits: Limits, disk: PathBuf, objects: PathBuf, start_size: u64) -> Arc<Self> {
        let start_packs = dir_size(&objects.join("pack"));
        let start_free = gitmirror_common::disk::space(&disk).map_or(u64::MAX, |(free, _)| free);
        Arc::new(Self {
            limits,
            disk,
            objects,
            start_size,
            start_packs,
            start_free,
            received: AtomicU64::new(0),
            next_check: AtomicU64::new(CHECK_EVERY_BYTES),
            breached: Mutex::new(None),
        })
    }

    fn active(&self) -> bool {
        self.limits.max_repo_size.is_some() || self.limits.abort_free != FreeSpace::Bytes(0)
    }

    /// Refuse an operation whose limit is already passed (a fetch of a mirror already too
    /// big, or with the disk already below `disk.abort_free`).
    fn check_start(&self) -> Result<(), Failure> {
        match self.breach(self.start_size, 0) {
            Some(why) => Err(Failure::local(format!("refused: {why}"))),
            None => Ok(()),
        }
    }

    /// After a clone completed: its objects at `dir` within the size limit?
    fn check_done(&self, dir: &Path) -> Result<(), Failure> {
        match self.limits.max_repo_size {
            Some(max) if dir_size(&dir.join("objects")) > max => Err(Failure::local(format!(
                "aborted: the clone is bigger than fetch.max_repo_size ({max} bytes)"
            ))),
            _ => Ok(()),
        }
    }

    /// Which limit is passed at `size` with `received` bytes in, if any, with the figures.
    fn breach(&self, size: u64, received: u64) -> Option<String> {
        if let Some(max) = self.limits.max_repo_size
            && size > max
        {
            return Some(format!(
                "the mirror passed fetch.max_repo_size ({size} bytes > {max} bytes)"
            ));
        }
        if self.limits.abort_free != FreeSpace::Bytes(0)
            && let Ok((free, total)) = gitmirror_common::disk::space(&self.disk)
            && let free = free.min(self.start_free.saturating_sub(received))
            && self.limits.abort_free.is_below(free, total)
        {
            return Some(format!(
                "free space on {} fell to {free} bytes of {total}, below disk.abort_free ({})",
                self.disk.display(),
                describe(self.limits.abort_free)
            ));
        }
        None
    }

    /// Record the first breach; returns its message.
    fn record(&self, why: String) -> String {
        self.breached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why)
            .clone()
    }

    fn on_received(&self, n: u64) -> io::Result<()> {
        let total = self.received.fetch_add(n, Ordering::Relaxed) + n;
        if total < self.next_check.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.next_check
            .store(total + CHECK_EVERY_BYTES, Ordering::Relaxed);
        match self.breach(self.start_size.saturating_add(total), total) {
            Some(why) => Err(io::Error::other(format!("aborted: {}", self.record(why)))),
            None => Ok(()),
        }
    }

    /// The mirror's size as the disk shows it.
    fn size_on_disk(&self) -> u64 {
        let packs = dir_size(&self.objects.join("pack"));
        (self.start_size + packs).saturating_sub(self.start_packs)
    }

    /// Run `op` watched (on this thread and from a thread beside it); a breach interrupts
    /// it and replaces its error with one naming the limit. Bytes received are counted
    /// either way and added to the result ([`Received`]).
    fn guard<T: Received>(
        self: &Arc<Self>,
        interrupt: &AtomicBool,
        op: impl FnOnce() -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let counted = |result: Result<T, Failure>| {
            result.map(|mut done| {
                done.add_received(self.received.load(Ordering::Relaxed));
                done
            })
        };
        if !self.active() {
            let previous = WATCHED.replace(Some(self.clone()));
            let result = op();
            WATCHED.set(previous);
            return counted(result);
        }
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let this = self.as_ref();
        let result = std::thread::scope(|s| {
            s.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    wait.recv_timeout(WATCH_EVERY)
                {
                    let received = this.received.load(Ordering::Relaxed);
                    if let Some(why) = this.breach(this.size_on_disk(), received) {
                        this.record(why);
                        interrupt.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            });
            let previous = WATCHED.replace(Some(self.clone()));
            let result = op();
            WATCHED.set(previous);
            drop(done);
            result
        });
        let breached = self
            .breached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (result, breached) {
            (Err(_), Some(why)) => Err(Failure::local(format!("aborted: {why}"))),
            (result, _) => counted(result),
        }
    }
}

/// A watched operation's result that carries the bytes it received
/// ([`Fetched::received_bytes`]). Added, not set: a re-clone inside a fetch has its own
/// [`Watch`], and what it received is not counted by the fetch's.
trait Received {
    fn add_received(&mut self, n: u64);
}

impl Received for Fetched {
    fn add_received(&mut self, n: u64) {
        self.received_bytes = self.received_bytes.saturating_add(n);
    }
}

impl<P> Received for (Fetched, P) {
    fn add_received(&mut self, n: u64) {
        self.0.add_received(n);
    }
}

fn describe(f: FreeSpace) -> String {
    match f {
        FreeSpace::Percent(p) => format!("{p}%"),
        FreeSpace::Bytes(b) => format!("{b} bytes"),
    }
}

/// The size of the most recently written `.pack` of a mirror (one directory listing).
fn pack_names(git_dir: &Path) -> HashSet<std::ffi::OsString> {
    fs::read_dir(git_dir.join("objects/pack"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().ends_with(".pack"))
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes in the packs of `git_dir` not named in `before` (taken with [`pack_names`] before
/// a fetch): what the fetch wrote, or a repack's result; 0 when it wrote no pack (a ref
/// deletion, an update to objects already here).
fn new_pack_bytes(git_dir: &Path, before: &HashSet<std::ffi::OsString>) -> u64 {
    let Ok(entries) = fs::read_dir(git_dir.join("objects/pack")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            name.to_string_lossy().ends_with(".pack") && !before.contains(&name)
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes in the regular files under `dir` (0 when it does not exist); links not followed.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Whether `id` is safe to turn into a path under the mirror directory (SPEC §3.2 rules):
/// components of `A-Za-z0-9._+-`, none empty, `.`/`..`, or starting with `-` or `.`. The
/// coordinator checks this too; the worker does not let a bad id touch its disk.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 255
        && id.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with(['.', '-'])
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        })
}

/// Whether `url` is one the worker is willing to hand to git (SPEC §3.2): the same check
/// as the coordinator's index validator ([`upstream_url::check`]), run again here in case
/// anything upstream of this worker let a URL through. `file://` and local paths pass:
/// whether they are allowed is the coordinator's `allow_file_urls`, and the embedded
/// worker of a single-machine setup uses them.
pub fn valid_url(url: &str) -> bool {
    check_url(url).is_ok()
}

/// [`valid_url`] with the reason.
pub fn check_url(url: &str) -> Result<UpstreamUrl, UrlRefused> {
    upstream_url::check(url, true)
}

/// [`check_url`] as a fetch failure: a URL the policy refuses is not coming back.
fn checked_url(url: &str) -> Result<UpstreamUrl, Failure> {
    check_url(url).map_err(|e| Failure::new(FailureClass::Gone, format!("refused url: {e}")))
}

/// Fetch options for clone and fetch: the prefix filter off works around the gix 0.90 bug
/// that makes `+refs/*:refs/*` list only HEAD (FACTS.md).
/// An upload-pack conversation whose refs are listed ([`Mirrors::list_refs`]).
struct Listing {
    transport: Box<dyn Transport + Send>,
    handshake: gix::protocol::Handshake,
    ref_map: gix::protocol::fetch::RefMap,
    refusals: Option<RefusalSink>,
}

impl Listing {
    /// Negotiate with `negotiate`, write the pack into `repo`, and end the conversation the
    /// way git does (a v2 server otherwise logs the client as hung up). With
    /// `reject_shallow`, a server whose repository is shallow is refused (a peer: its pack
    /// would lack history, and the shallow file it makes us write would hide that from the
    /// connectivity check).
    fn receive(
        mut self,
        negotiate: &mut impl gix::protocol::fetch::Negotiate,
        repo: &gix::Repository,
        stage: Stage,
        reject_shallow: bool,
        interrupt: &AtomicBool,
    ) -> Result<(), Failure> {
        use gix::protocol::fetch::{Shallow, Tags};
        let mut bundle = None;
        let objects = repo.objects.clone();
        let pack_dir = repo.git_dir().join("objects").join("pack");
        gix::protocol::fetch(
            negotiate,
            |reader, progress, interrupt| {
                bundle = Some(gix::odb::pack::Bundle::write_to_directory(
                    reader,
                    Some(&pack_dir),
                    progress,
                    interrupt,
                    Some(objects),
                    gix::hash::Kind::Sha1,
                    gix::odb::pack::bundle::write::Options::default(),
                )?);
                Ok(true)
            },
            gix::progress::Discard,
            interrupt,
            gix::protocol::fetch::Context {
                handshake: &mut self.handshake,
                transport: &mut self.transport,
                user_agent: user_agent(),
                trace_packetlines: false,
            },
            gix::protocol::fetch::Options {
                shallow_file: repo.git_dir().join("shallow"),
                shallow: &Shallow::NoChange,
                tags: Tags::None,
                reject_shallow_remote: reject_shallow,
            },
        )
        .map_err(|e| classify(&e, stage, self.refusals.as_ref().and_then(RefusalSink::get)))?;
        if self.handshake.server_protocol_version == gix::protocol::transport::Protocol::V2 {
            let _ = gix::protocol::indicate_end_of_interaction(&mut self.transport, false);
        }
        drop(self.transport);
        if let Some(keep) = bundle.and_then(|b| b.keep_path) {
            let _ = fs::remove_file(keep);
        }
        Ok(())
    }
}

fn fetch_options() -> gix::remote::ref_map::Options {
    gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    }
}

type Connection<'r, 'repo> = gix::remote::Connection<'r, 'static, 'repo, Box<dyn Transport + Send>>;

fn is_http(url: &gix::Url) -> bool {
    matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https)
}

fn http_transport(
    session: upstream_http::Session,
    url: gix::Url,
) -> gix::protocol::transport::client::blocking_io::http::Transport<upstream_http::Session> {
    gix::protocol::transport::client::blocking_io::http::connect_http(
        session,
        url,
        gix::protocol::transport::Protocol::V2,
        false,
    )
}

/// A `git://` connection like gix's own, plus what it lacks: every address of the host is
/// tried, small writes are not delayed (`TCP_NODELAY`: without it each request waits for a
/// delayed ACK, ~40 ms per round trip), and a read or write waiting longer than
/// `io_timeout` fails, so a server that accepts and then says nothing cannot hold a
/// thread beyond that.
fn git_transport(
    url: &gix::Url,
    io_timeout: Duration,
    deny: &upstream_url::AddrPolicy,
) -> Result<Box<dyn Transport + Send>, Failure> {
    use std::net::{TcpStream, ToSocketAddrs};
    let transient = |m: String| Failure::new(FailureClass::Transient, m);
    let host = url.host().ok_or_else(|| {
        Failure::new(
            FailureClass::Gone,
            format!("{} has no host", url.to_bstring()),
        )
    })?;
    let port = url.port.unwrap_or(9418);
    // gix keeps the brackets of an IPv6 literal in `git://` URLs; the resolver wants none.
    let found: Vec<std::net::SocketAddr> = match upstream_url::ip_literal(host) {
        Some(ip) => vec![std::net::SocketAddr::new(ip, port)],
        None => (host, port)
            .to_socket_addrs()
            .map_err(|e| transient(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    // Only addresses upstream_deny allows are ever connected to (SPEC §17).
    let addrs = upstream_http::allowed_addrs(deny, host, found)
        .map_err(|e| Failure::new(FailureClass::Gone, e.to_string()))?;
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, GIT_CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                stream
                    .set_read_timeout(Some(io_timeout))
                    .and_then(|()| stream.set_write_timeout(Some(io_timeout)))
                    .map_err(|e| {
                        transient(format!(
                            "cannot set timeouts on a connection to {addr}: {e}"
                        ))
                    })?;
                let write = stream.try_clone().map_err(|e| {
                    transient(format!("cannot clone the connection to {addr}: {e}"))
                })?;
                return Ok(Box::new(
                    gix::protocol::transport::client::git::blocking_io::Connection::new(
                        Metered(stream),
                        write,
                        gix::protocol::transport::Protocol::V2,
                        url.path.clone(),
                        Some((host.to_owned(), url.port)),
                        gix::protocol::transport::client::git::ConnectMode::Daemon,
                        false,
                    ),
                ));
            }
            Err(e) => last = format!("could not connect to git server {addr}: {e}"),
        }
    }
    Err(transient(last))
}

/// A `file://` or `ssh://` connection: `git-upload-pack` run locally or through `ssh`, as
/// gix does, plus what gix's helper lacks (issue 11 part 4): a read that waits longer
/// than `stall` for the helper fails (and the helper is killed), as a `git://` or http
/// connection's does, so a helper that hangs cannot hold a fetch or a thread; what is
/// received counts against the [`Limits`]; the helper is killed when the connection is
/// dropped and cannot outlive the worker ([`die_with_parent`]).
///
/// With a `credentials` entry, ssh uses its key only, in batch mode, and checks the host
/// key strictly against the entry's known-hosts file (SPEC §16); the key's path is in the
/// arguments, its content never.
fn helper_transport(
    url: &gix::Url,
    stall: Duration,
    entry: Option<&Credential>,
) -> Result<Box<dyn Transport + Send>, Failure> {
    use gix::protocol::transport::Protocol;
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::OsStr::from_bytes(url.path.as_slice()).to_owned();
    let mut cmd = match &url.scheme {
        gix::url::Scheme::File => {
            let mut cmd = Command::new("git");
            cmd.arg("upload-pack").arg(&path);
            cmd
        }
        gix::url::Scheme::Ssh => {
            // The URL policy has refused hosts and users that ssh could read as options.
            let host = url
                .host()
                .ok_or_else(|| Failure::new(FailureClass::Gone, "ssh url has no host"))?;
            let user = url
                .user()
                .or_else(|| entry.and_then(|e| e.spec.username.as_deref()));
            let target = match user {
                Some(user) => format!("{user}@{host}"),
                None => host.to_owned(),
            };
            let remote_path = gix::url::expand_path::for_shell(url.path.clone());
            let mut cmd = Command::new("ssh");
            cmd.args(["-o", "SendEnv=GIT_PROTOCOL", "-o", "BatchMode=yes"]);
            if let Some(e) = entry {
                cmd.args(e.ssh_options());
            }
            if let Some(port) = url.port {
                cmd.arg(format!("-p{port}"));
            }
            cmd.arg("--").arg(target).arg(format!(
                "git-upload-pack {}",
                shell_quote(&String::from_utf8_lossy(remote_path.as_slice()))
            ));
            cmd.env("LANG", "C").env("LC_ALL", "C");
            cmd
        }
        other => {
            return Err(Failure::new(
                FailureClass::Gone,
                format!("unsupported url scheme {}", other.as_str()),
            ));
        }
    };
    for var in HELPER_ENV_REMOVED {
        cmd.env_remove(var);
    }
    cmd.env("GIT_PROTOCOL", "version=2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let program = if url.scheme == gix::url::Scheme::Ssh {
        "ssh"
    } else {
        "git upload-pack"
    };
    let mut child = cmd.spawn().map_err(|e| {
        Failure::new(
            FailureClass::Transient,
            format!("cannot run {program}: {e}"),
        )
    })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Failure::local(format!("{program} has no pipes")));
    };
    // Its last words, for the error when it ends early (e.g. "Permission denied").
    let said = Arc::new(Mutex::new(String::new()));
    let sink = said.clone();
    let stderr_reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() < 2048 {
                s.push_str(line.trim());
                s.push('\n');
            }
        }
    });
    let reader = Helper {
        child,
        stdout,
        said,
        stderr_reader: Some(stderr_reader),
        stall,
        program,
    };
    Ok(Box::new(
        gix::protocol::transport::client::git::blocking_io::Connection::new(
            reader,
            stdin,
            Protocol::V2,
            url.path.clone(),
            None::<(String, Option<u16>)>,
            gix::protocol::transport::client::git::ConnectMode::Process,
            false,
        )
        .custom_url(Some(url.to_bstring())),
    ))
}

/// What git clears before running a helper (gix's list): a worker started from inside a
/// git command must not point the helper at another repository.
const HELPER_ENV_REMOVED: &[&str] = &[
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
    "GIT_CONFIG_COUNT",
];

/// The read side of a helper process ([`helper_transport`]); kills it when dropped.
struct Helper {
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    said: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    stall: Duration,
    program: &'static str,
}

impl Helper {
    /// What the helper wrote to stderr, once it has closed it.
    fn last_words(&mut self) -> String {
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.lines().collect::<Vec<_>>().join("; ")
    }
}

impl io::Read for Helper {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let deadline = std::time::Instant::now() + self.stall;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                let _ = self.child.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} stalled: nothing received for {} (timed out)",
                        self.program,
                        humantime::format_duration(self.stall)
                    ),
                ));
            }
            let timeout = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.stdout, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let n = io::Read::read(&mut self.stdout, buf)?;
        if n == 0 && !buf.is_empty() {
            let words = self.last_words();
            let lower = words.to_ascii_lowercase();
            if [
                "fatal",
                "denied",
                "error",
                "could not",
                "failed",
                "refused",
                "closed",
            ]
            .iter()
            .any(|w| lower.contains(w))
            {
                return Err(io::Error::other(format!("{}: {words}", self.program)));
            }
        }
        received(n)?;
        Ok(n)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Its stdin is closed by now: after a complete conversation it exits at once
        // (killing it then would look like a client hanging up); otherwise it must not
        // linger.
        let until = std::time::Instant::now() + Duration::from_millis(200);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Have the kernel kill `cmd`'s process when the thread that spawned it ends
/// (`PR_SET_PDEATHSIG`): a helper or `git repack` cannot outlive a worker killed with
/// `kill -9` (issue 11 part 4). The spawning thread always waits for the child, so this
/// fires only when the worker dies.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec; it calls only
    // prctl(2) and getppid(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The worker died before the line above: nobody would kill us later.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("the worker is gone"));
            }
            Ok(())
        });
    }
}

/// Copies from a peer (SPEC §13, issue 12): the same machinery as a clone or fetch from
/// the upstream, over a transport the peer plane made (`crate::peer`), and nothing is
/// swapped in or changed unless the advertised refs hash to `expect`
/// ([`gitmirror_wire::peer::refs_sha256`]) and every object they need is present.
impl Mirrors {
    /// A new mirror of `id` from a peer, `remote.origin.url` set to `upstream_url` (the
    /// upstream schedule takes over afterwards): into `.tmp/`, renamed into place after
    /// the checks.
    pub fn clone_from_peer(
        &self,
        id: &str,
        upstream_url: &str,
        transport: Box<dyn Transport + Send>,
        expect: &[u8; 32],
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        checked_url(upstream_url)?;
        let final_path = self.path(id);
        if final_path.exists() {
            return Err(Failure::local(format!(
                "{} exists: a peer's copy goes into it with fetch_from_peer",
                final_path.display()
            )));
        }
        fs::create_dir_all(self.tmp_dir())
            .map_err(|e| Failure::io("create directory", &self.tmp_dir(), &e))?;
        let tmp = self.tmp_dir().join(unique_name(id));
        let watch = Watch::new(self.limits(), self.tmp_dir(), tmp.join("objects"), 0);
        let cloned = watch
            .guard(interrupt, || {
                peer_clone_into(&tmp, upstream_url, transport, expect, interrupt)
            })
            .and_then(|fetched| watch.check_done(&tmp).map(|()| fetched));
        self.place_new(id, &tmp, &final_path, None, cloned)
    }

    /// Bring the existing (older) mirror of `id` to a peer's copy: only the objects it
    /// lacks are received, into the live store (harmless: unreferenced until the refs
    /// move), then the refs change in one `packed-refs` write after the connectivity
    /// check. Any failure leaves the refs as they were.
    pub fn fetch_from_peer(
        &self,
        id: &str,
        transport: Box<dyn Transport + Send>,
        expect: &[u8; 32],
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        let path = self.path(id);
        let limits = self.limits();
        let objects = path.join("objects");
        let size = limits.max_repo_size.map_or(0, |_| dir_size(&objects));
        let watch = Watch::new(limits, path.clone(), objects, size);
        watch.check_start()?;
        watch.guard(interrupt, || {
            let _ = remove_stale(&path, Sweep::TopLevel);
            peer_fetch_into(&path, transport, expect, interrupt)
        })
    }
}

/// [`Mirrors::clone_from_peer`] into `tmp`, which must not exist.
fn peer_clone_into(
    tmp: &Path,
    upstream_url: &str,
    transport: Box<dyn Transport + Send>,
    expect: &[u8; 32],
    interrupt: &AtomicBool,
) -> Result<Fetched, Failure> {
    let mut listing = list_on(transport, None, &["HEAD"]).map_err(from_peer)?;
    let ref_map = std::mem::take(&mut listing.ref_map);
    let advertised = advertised_refs(&ref_map.remote_refs);
    check_expected(&advertised, expect)?;
    create_mirror(tmp, upstream_url)?;
    let repo = open(tmp)?;
    let mut wants = CloneWants { map: &ref_map };
    listing
        .receive(&mut wants, &repo, Stage::Clone, true, interrupt)
        .map_err(from_peer)?;
    drop(repo);
    // Before any ref exists here, so `--not --all` excludes nothing.
    check_connected(tmp, &advertised)?;
    write_packed_refs(tmp, &advertised, false)?;
    write_head(tmp, &ref_map.remote_refs)?;
    tidy_packs(tmp)?;
    let repo = open(tmp)?;
    let refs = read_refs(&repo)?;
    check_refs_hash(&refs, expect)?;
    Ok(Fetched {
        newest_commit_secs: newest_commit(&repo, &refs),
        refs,
        url_changed: false,
        packs: None,
        repairs: Vec::new(),
        new_pack_bytes: 0,
        received_bytes: 0,
    })
}

/// [`Mirrors::fetch_from_peer`] into the mirror at `path`.
fn peer_fetch_into(
    path: &Path,
    transport: Box<dyn Transport + Send>,
    expect: &[u8; 32],
    interrupt: &AtomicBool,
) -> Result<Fetched, Failure> {
    let repo = open(path)?;
    let local = read_refs(&repo)?;
    let before = pack_names(path);
    let mut listing = list_on(transport, None, &[]).map_err(from_peer)?;
    let ref_map = std::mem::take(&mut listing.ref_map);
    let advertised = advertised_refs(&ref_map.remote_refs);
    check_expected(&advertised, expect)?;
    let same = advertised.len() == local.len()
        && advertised.iter().all(|(name, (value, _))| {
            local.get(&name.to_string()).map(String::as_str) == Some(value.to_string().as_str())
        });
    if same {
        return Ok(Fetched {
            refs: local,
            url_changed: false,
            packs: None,
            newest_commit_secs: None,
            repairs: Vec::new(),
            new_pack_bytes: 0,
            received_bytes: 0,
        });
    }
    let (wants, haves) = wants_and_haves(&repo, &advertised, &local);
    let mut negotiate = FetchWants {
        map: &ref_map,
        wants,
        haves,
    };
    listing
        .receive(&mut negotiate, &repo, Stage::Transfer, true, interrupt)
        .map_err(from_peer)?;
    drop(repo);
    // git's check_connected: what the new tips reach, less what the live refs reach, must
    // all be here.
    check_connected(path, &advertised)?;
    write_packed_refs(path, &advertised, true)?;
    remove_loose_refs(&path.join("refs"))
        .map_err(|e| Failure::io("remove loose refs under", &path.join("refs"), &e))?;
    let mut packs = tidy_packs(path)?;
    if packs > MAX_PACKS {
        repack(path, &mut Vec::new());
        packs = tidy_packs(path)?;
    }
    let repo = open(path)?;
    let refs = read_refs(&repo)?;
    Ok(Fetched {
        refs,
        url_changed: false,
        packs: Some(packs),
        newest_commit_secs: None,
        repairs: Vec::new(),
        new_pack_bytes: new_pack_bytes(path, &before),
        received_bytes: 0,
    })
}

/// A peer's transfer failed: always worth another holder or the upstream.
fn from_peer(mut f: Failure) -> Failure {
    if f.class != FailureClass::Local {
        f.class = FailureClass::Transient;
    }
    f.message = truncate(format!("from peer: {}", f.message));
    f
}

fn refs_mismatch(what: &str, got: &[u8; 32]) -> Failure {
    Failure::new(
        FailureClass::Transient,
        format!(
            "from peer: {what} do not hash to the expected refs (got {}); nothing changed",
            got.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    )
}

/// The advertised refs hash to `expect` ([`gitmirror_wire::peer::refs_sha256`]).
fn check_expected(advertised: &Advertised, expect: &[u8; 32]) -> Result<(), Failure> {
    let hexes: Vec<(&[u8], String)> = advertised
        .iter()
        .map(|(name, (value, _))| (name.as_slice(), value.to_string()))
        .collect();
    let got = gitmirror_wire::peer::refs_sha256(hexes.iter().map(|(n, v)| (*n, v.as_bytes())));
    if &got == expect {
        Ok(())
    } else {
        Err(refs_mismatch("the refs the peer advertised", &got))
    }
}

/// The refs written hash to `expect` too.
fn check_refs_hash(refs: &Refs, expect: &[u8; 32]) -> Result<(), Failure> {
    let got = refs_sha256(refs);
    if &got == expect {
        Ok(())
    } else {
        Err(refs_mismatch("the refs written", &got))
    }
}

/// SHA-256 of a mirror's refs as the peer plane compares them
/// ([`gitmirror_wire::peer::refs_sha256`]).
pub fn refs_sha256(refs: &Refs) -> [u8; 32] {
    gitmirror_wire::peer::refs_sha256(refs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Every object the tips of `refs` reach, less what the refs at `git_dir` already reach,
/// is present (`git rev-list --objects --stdin --not --all`, as git's `check_connected`
/// after a fetch).
fn check_connected(git_dir: &Path, refs: &Advertised) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut input = Vec::with_capacity(refs.len() * 41);
    let mut seen = HashSet::new();
    for (value, _) in refs.values() {
        if seen.insert(*value) {
            let _ = writeln!(input, "{value}");
        }
    }
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .args([
            "rev-list",
            "--objects",
            "--quiet",
            "--stdin",
            "--not",
            "--all",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::local(format!("cannot run git rev-list: {e}")))?;
    let writer = child.stdin.take().map(|mut stdin| {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let out = child
        .wait_with_output()
        .map_err(|e| Failure::local(format!("git rev-list: {e}")))?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    if out.status.success() {
        return Ok(());
    }
    Err(Failure::new(
        FailureClass::Transient,
        truncate(format!(
            "from peer: the copy is not connected (git rev-list: {}); nothing changed",
            first_line(String::from_utf8_lossy(&out.stderr).trim())
        )),
    ))
}

/// Shake hands on `transport` and list its refs (the mirror refspec plus `extra`).
fn list_on(
    mut transport: Box<dyn Transport + Send>,
    refusals: Option<RefusalSink>,
    extra: &[&str],
) -> Result<Listing, Failure> {
    let refusal = || refusals.as_ref().and_then(RefusalSink::get);
    let upstream = |e: gix::Error| classify(&e, Stage::Upstream, refusal());
    let mut handshake = gix::protocol::handshake(
        &mut transport,
        gix::protocol::transport::Service::UploadPack,
        no_credentials,
        Vec::new(),
        &mut gix::progress::Discard,
    )
    .map_err(upstream)?;
    let spec = |s: &str| {
        gix::refspec::parse(s.into(), gix::refspec::parse::Operation::Fetch)
            .map(|s| s.to_owned())
            .map_err(|e| Failure::local(format!("refspec {s}: {e}")))
    };
    let context = gix::protocol::fetch::refmap::init::Context {
        fetch_refspecs: vec![spec(MIRROR_REFSPEC)?],
        extra_refspecs: extra.iter().map(|s| spec(s)).collect::<Result<_, _>>()?,
    };
    let ref_map = handshake
        .prepare_lsrefs_or_extract_refmap(user_agent(), false, context)
        .map_err(upstream)?
        .fetch_blocking(gix::progress::Discard, &mut transport, false)
        .map_err(upstream)?;
    Ok(Listing {
        transport,
        handshake,
        ref_map,
        refusals,
    })
}

/// What a clone asks for: every advertised object; there is nothing to negotiate.
struct CloneWants<'a> {
    map: &'a gix::protocol::fetch::RefMap,
}

impl gix::protocol::fetch::Negotiate for CloneWants<'_> {
    fn mark_complete_and_common_ref(
        &mut self,
    ) -> gix::Result<gix::protocol::fetch::negotiate::Action> {
        use gix::protocol::fetch::negotiate::Action;
        Ok(
            if self.map.mappings.iter().any(|m| m.remote.as_id().is_some()) {
                Action::MustNegotiate {
                    remote_ref_target_known: vec![false; self.map.mappings.len()],
                }
            } else {
                Action::NoChange // an empty upstream
            },
        )
    }

    fn add_wants(
        &mut self,
        arguments: &mut gix::protocol::fetch::Arguments,
        _remote_ref_target_known: &[bool],
    ) -> bool {
        let mut seen = std::collections::HashSet::new();
        for id in self.map.mappings.iter().filter_map(|m| m.remote.as_id()) {
            if seen.insert(id.to_owned()) {
                arguments.want(id);
            }
        }
        !seen.is_empty()
    }

    fn one_round(
        &mut self,
        state: &mut gix::protocol::fetch::negotiate::one_round::State,
        _arguments: &mut gix::protocol::fetch::Arguments,
        _previous_response: Option<&gix::protocol::fetch::Response>,
    ) -> gix::Result<(gix::protocol::fetch::negotiate::Round, bool)> {
        // No haves: the first round is the last.
        Ok((
            gix::protocol::fetch::negotiate::Round {
                haves_sent: 0,
                in_vain: 0,
                haves_to_send: state.haves_to_send,
                previous_response_had_at_least_one_in_common: false,
            },
            true,
        ))
    }
}

/// A fetch that changes this many refs (or more) writes `packed-refs` whole.
const MANY_CHANGES: usize = 256;

/// A repo with this many refs (or more) has every changing fetch write `packed-refs` whole:
/// gix's ref transaction would lock each of its refs, changed or not, where one write of
/// the file is a few megabytes at 200k refs.
const MANY_REFS: usize = 4096;

/// How many refs a fetch would create, change or delete.
fn changed_refs(map: &gix::remote::fetch::RefMap, local: &Refs) -> usize {
    let mut seen = 0usize;
    let mut changed = 0usize;
    for m in &map.mappings {
        let (Some(name), Some(id)) = (m.local.as_ref(), m.remote.as_id()) else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(name.as_slice()) else {
            continue;
        };
        match local.get(name) {
            Some(hex) if hex.as_bytes() == id.to_hex().to_string().as_bytes() => seen += 1,
            Some(_) => {
                seen += 1;
                changed += 1;
            }
            None => changed += 1,
        }
    }
    changed + local.len().saturating_sub(seen)
}

/// Wants and haves of a fetch that writes refs itself: one round, all our tips as haves.
struct FetchWants<'a> {
    map: &'a gix::protocol::fetch::RefMap,
    wants: Vec<gix::ObjectId>,
    haves: Vec<gix::ObjectId>,
}

impl gix::protocol::fetch::Negotiate for FetchWants<'_> {
    fn mark_complete_and_common_ref(
        &mut self,
    ) -> gix::Result<gix::protocol::fetch::negotiate::Action> {
        use gix::protocol::fetch::negotiate::Action;
        Ok(if self.wants.is_empty() {
            Action::SkipToRefUpdate
        } else {
            Action::MustNegotiate {
                remote_ref_target_known: vec![false; self.map.mappings.len()],
            }
        })
    }

    fn add_wants(
        &mut self,
        arguments: &mut gix::protocol::fetch::Arguments,
        _remote_ref_target_known: &[bool],
    ) -> bool {
        for id in &self.wants {
            arguments.want(id);
        }
        !self.wants.is_empty()
    }

    fn one_round(
        &mut self,
        state: &mut gix::protocol::fetch::negotiate::one_round::State,
        arguments: &mut gix::protocol::fetch::Arguments,
        _previous_response: Option<&gix::protocol::fetch::Response>,
    ) -> gix::Result<(gix::protocol::fetch::negotiate::Round, bool)> {
        for id in &self.haves {
            arguments.have(id);
        }
        Ok((
            gix::protocol::fetch::negotiate::Round {
                haves_sent: self.haves.len(),
                in_vain: 0,
                haves_to_send: state.haves_to_send,
                previous_response_had_at_least_one_in_common: false,
            },
            true,
        ))
    }
}

/// Remove every loose ref file under `dir` (refs now live in `packed-refs`) and the
/// directories left empty, keeping `dir` itself and its first level (`heads/`, `tags/`).
fn remove_loose_refs(dir: &Path) -> io::Result<()> {
    fn walk(dir: &Path, depth: usize) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(&path, depth + 1)?;
                if depth >= 1 {
                    let _ = fs::remove_dir(&path);
                }
            } else {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    walk(dir, 0)
}

/// How we introduce ourselves to upstream servers.
fn user_agent() -> gix::protocol::command::Feature {
    ("agent", Some(upstream_http::USER_AGENT.into()))
}

/// Ref name → (the object it names, the object a tag peels to).
type Advertised =
    std::collections::BTreeMap<gix::bstr::BString, (gix::ObjectId, Option<gix::ObjectId>)>;

/// The upstream's refs under `refs/` with valid names, sorted by name (bytes, as git).
/// One round's negotiation: wants are the advertised objects `repo` lacks, haves our
/// ref tips; each sorted, without duplicates.
fn wants_and_haves(
    repo: &gix::Repository,
    advertised: &Advertised,
    local: &Refs,
) -> (Vec<gix::ObjectId>, Vec<gix::ObjectId>) {
    let mut wants: Vec<gix::ObjectId> = advertised
        .values()
        .map(|(v, _)| *v)
        .filter(|id| !repo.has_object(id))
        .collect();
    wants.sort();
    wants.dedup();
    let mut haves: Vec<gix::ObjectId> = local
        .values()
        .filter_map(|h| gix::ObjectId::from_hex(h.as_bytes()).ok())
        .collect();
    haves.sort();
    haves.dedup();
    (wants, haves)
}

fn advertised_refs(remote_refs: &[gix::protocol::handshake::Ref]) -> Advertised {
    let mut out = Advertised::new();
    for r in remote_refs {
        let (name, value, peeled) = r.unpack();
        let Some(value) = value else { continue }; // unborn
        if !name.starts_with(b"refs/") {
            continue;
        }
        if gix::refs::FullName::try_from(name).is_err() {
            tracing::warn!(name = %name, "upstream advertised an invalid ref name; leaving it out");
            continue;
        }
        out.insert(
            name.to_owned(),
            (value.to_owned(), peeled.map(ToOwned::to_owned)),
        );
    }
    out
}

/// Write every ref into `packed-refs` in one go, as git does when it clones. With
/// `durable`, through a temp file, fsync and rename (a live mirror); otherwise a plain
/// write (a clone in `.tmp/`, which a crash discards).
fn write_packed_refs(git_dir: &Path, refs: &Advertised, durable: bool) -> Result<(), Failure> {
    use std::io::Write as _;
    let path = git_dir.join("packed-refs");
    let mut out = Vec::with_capacity(32 + refs.len() * 80);
    out.extend_from_slice(b"# pack-refs with: peeled fully-peeled sorted \n");
    for (name, (value, peeled)) in refs {
        let _ = writeln!(out, "{value} {name}");
        if let Some(p) = peeled {
            let _ = writeln!(out, "^{p}");
        }
    }
    if durable {
        gitmirror_common::statefile::write_atomic(&path, &out, 0o644)
            .map_err(|e| Failure::local(e.to_string()))
    } else {
        fs::write(&path, &out).map_err(|e| Failure::io("write", &path, &e))
    }
}

/// Point HEAD where the upstream's does (a branch, or a detached commit), like
/// `git clone --mirror`; left as created when the upstream does not say.
fn write_head(
    git_dir: &Path,
    remote_refs: &[gix::protocol::handshake::Ref],
) -> Result<(), Failure> {
    use gix::protocol::handshake::Ref;
    let head = remote_refs.iter().find_map(|r| match r {
        Ref::Symbolic {
            full_ref_name,
            target,
            ..
        }
        | Ref::Unborn {
            full_ref_name,
            target,
        } if full_ref_name == "HEAD" => gix::refs::FullName::try_from(target)
            .ok()
            .map(|t| format!("ref: {}\n", t.as_bstr())),
        Ref::Direct {
            full_ref_name,
            object,
        }
        | Ref::Peeled {
            full_ref_name,
            tag: object,
            ..
        } if full_ref_name == "HEAD" => Some(format!("{object}\n")),
        _ => None,
    });
    let Some(head) = head else { return Ok(()) };
    let path = git_dir.join("HEAD");
    fs::write(&path, head).map_err(|e| Failure::io("write", &path, &e))
}

/// The `Authorization` an http(s) entry gives, bound to the entry's host.
fn host_auth(entry: &Credential) -> Option<upstream_http::HostAuth> {
    let value = entry.authorization()?;
    let (host, port) = entry.host();
    Some(upstream_http::HostAuth {
        host: host.to_owned(),
        port,
        allow_plain_http: entry.spec.allow_plain_http,
        value,
    })
}

/// An upstream refused us for lack of the right (SPEC §16): HTTP 401/403, ssh's
/// permission denied or an unknown or changed host key.
fn auth_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "http status 401",
        "http status 403",
        "permission denied",
        "host key verification failed",
        "no matching host key",
        "remote host identification has changed",
        "authentication",
        "could not read username",
        "no credentials",
        "access denied",
    ]
    .iter()
    .any(|n| m.contains(n))
}

/// A mirror never asks anyone for credentials (no terminal, no helpers): an upstream that
/// wants them is reported as gone (SPEC §7.3 "auth required"). Credentials in the URL
/// itself are still used.
fn no_credentials(
    _action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    Ok(None)
}

fn open(path: &Path) -> Result<gix::Repository, Failure> {
    // Isolated: the mirror's own config only, not the worker user's or the system's. gix's
    // own fetch introduces itself as `git/<this>` (the protocol layer adds `git/`).
    let options = gix::open::Options::isolated()
        .config_overrides([format!("gitoxide.userAgent={}", upstream_http::USER_AGENT)]);
    gix::open_opts(path, options).map_err(|e| {
        Failure::local(format!(
            "cannot open mirror {}: {}",
            path.display(),
            chain(&e)
        ))
    })
}

/// Every ref under `refs/` with the object it points at (tags unpeeled, as `ls-remote`).
pub fn read_refs(repo: &gix::Repository) -> Result<Refs, Failure> {
    let err = |e: &dyn std::fmt::Display| {
        Failure::local(format!(
            "cannot read refs of {}: {e}",
            repo.git_dir().display()
        ))
    };
    let platform = repo.references().map_err(|e| err(&e))?;
    let mut refs = Refs::new();
    for r in platform.all().map_err(|e| err(&e))? {
        let mut r = r.map_err(|e| err(&e))?;
        let name = r.name().as_bstr().to_string();
        if !name.starts_with("refs/") {
            continue;
        }
        let id = match r.try_id() {
            Some(id) => id.detach(),
            None => match r.follow_to_object() {
                Ok(id) => id.detach(),
                Err(_) => continue, // a dangling symbolic ref names nothing to report
            },
        };
        refs.insert(name, id.to_string());
    }
    Ok(refs)
}

/// Every ref tip must be in the object database; a missing one means a lost pack or
/// object file (a corrupt mirror).
fn check_tips(repo: &gix::Repository, refs: &Refs) -> Result<(), Failure> {
    for (name, hex) in refs {
        let Ok(id) = gix::ObjectId::from_hex(hex.as_bytes()) else {
            return Err(Failure::local(format!(
                "ref {name} of {} holds {hex:?}, not an object id",
                repo.git_dir().display()
            )));
        };
        if !repo.has_object(id) {
            return Err(Failure::local(format!(
                "object {hex} (ref {name}) is missing from {}",
                repo.git_dir().display()
            )));
        }
    }
    Ok(())
}

/// `Err(reason)` when the mirror is corrupt: it cannot be opened, its refs cannot be read,
/// or a ref tip is missing.
fn check_mirror(path: &Path) -> Result<(), String> {
    let repo = open(path).map_err(|f| f.message)?;
    let refs = read_refs(&repo).map_err(|f| f.message)?;
    check_tips(&repo, &refs).map_err(|f| f.message)
}

/// The upstream advertises exactly the refs the mirror has: nothing to fetch or prune.
fn same_refs(map: &gix::remote::fetch::RefMap, local: &Refs) -> bool {
    let mut seen = 0usize;
    for m in &map.mappings {
        let Some(name) = m.local.as_ref() else {
            continue;
        };
        let Some(id) = m.remote.as_id() else {
            return false; // an unborn ref: let gix handle it
        };
        let Ok(name) = std::str::from_utf8(name.as_slice()) else {
            return false;
        };
        match local.get(name) {
            Some(hex) if hex.as_bytes() == id.to_hex().to_string().as_bytes() => seen += 1,
            _ => return false,
        }
    }
    seen == local.len()
}

/// Newest committer time among the branch tips, if there are not too many to look at.
fn newest_commit(repo: &gix::Repository, refs: &Refs) -> Option<i64> {
    let tips: Vec<&String> = refs
        .iter()
        .filter(|(n, _)| n.starts_with("refs/heads/"))
        .map(|(_, id)| id)
        .collect();
    if tips.len() > MAX_DATED_TIPS {
        return None;
    }
    tips.into_iter()
        .filter_map(|hex| gix::ObjectId::from_hex(hex.as_bytes()).ok())
        .filter_map(|id| repo.find_commit(id).ok()?.time().ok())
        .map(|t| t.seconds)
        .max()
}

/// Delete local refs the remote no longer advertises (gix has no prune).
fn prune(
    repo: &gix::Repository,
    advertised: &std::collections::HashSet<&[u8]>,
) -> Result<(), Failure> {
    use gix::refs::transaction::{Change, PreviousValue, RefEdit, RefLog};
    let err = |e: &dyn std::fmt::Display| {
        Failure::local(format!(
            "cannot prune refs of {}: {e}",
            repo.git_dir().display()
        ))
    };
    let platform = repo.references().map_err(|e| err(&e))?;
    let mut edits = Vec::new();
    for r in platform.all().map_err(|e| err(&e))? {
        let r = r.map_err(|e| err(&e))?;
        let name = r.name();
        if name.as_bstr().starts_with(b"refs/") && !advertised.contains::<[u8]>(name.as_bstr()) {
            edits.push(RefEdit {
                change: Change::Delete {
                    expected: PreviousValue::Any,
                    log: RefLog::AndReference,
                },
                name: name.to_owned(),
                deref: false,
            });
        }
    }
    if !edits.is_empty() {
        repo.edit_references(edits).map_err(|e| err(&chain(&e)))?;
    }
    Ok(())
}

/// Remove `.keep` files (so repack can merge those packs) and make packs readable by a
/// git daemon running as another user. Returns the number of packs.
fn tidy_packs(git_dir: &Path) -> Result<usize, Failure> {
    let dir = git_dir.join("objects").join("pack");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Failure::io("list", &dir, &e)),
    };
    let mut packs = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Failure::io("list", &dir, &e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".keep") {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Failure::io("remove", &path, &e)),
            }
            continue;
        }
        if name.ends_with(".pack") {
            packs += 1;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Failure::io("stat", &path, &e)),
        };
        let mode = meta.permissions().mode();
        if meta.is_file() && mode & 0o044 != 0o044 {
            fs::set_permissions(&path, fs::Permissions::from_mode((mode | 0o444) & 0o7777))
                .map_err(|e| Failure::io("chmod", &path, &e))?;
        }
    }
    Ok(packs)
}

/// Merge packs with the git binary (gix has no repack): geometric, so a big old pack is
/// not rewritten for every few small new ones; all into one if that still leaves too many.
/// A failure is noted in `notes`, not fatal (the mirror is still valid).
fn repack(git_dir: &Path, notes: &mut Vec<String>) {
    // `-l` always: a pool member's borrowed objects stay in its pool (without it, `-a`
    // copies them all in: the detach recipe, plan C8); a plain mirror has none to skip.
    match git(git_dir, &["repack", "-d", "-l", "-q", "--geometric=2"]) {
        Ok(()) => {
            if matches!(tidy_packs(git_dir), Ok(n) if n > MAX_PACKS)
                && let Err(e) = git(git_dir, &["repack", "-a", "-d", "-l", "-q"])
            {
                notes.push(format!("git repack -a failed: {e}"));
            }
        }
        Err(e) => {
            tracing::warn!(mirror = %git_dir.display(), "git repack failed: {e}");
            notes.push(format!("git repack failed: {e}"));
        }
    }
}

/// A git command that did not succeed.
#[derive(Debug)]
pub(crate) enum GitError {
    /// It could not be started, or was killed: says nothing about the mirror.
    NotRun(String),
    /// It ran and said no (exit code), with the first lines of its stderr.
    Failed(String),
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitError::NotRun(m) | GitError::Failed(m) => f.write_str(m),
        }
    }
}

/// At start: kill git processes that a killed worker's maintenance left running on its
/// mirrors. The `git` the worker runs dies with it ([`die_with_parent`]), but not what that
/// one runs in turn (`git repack` runs `git pack-objects`, which goes on writing a pack
/// nobody will use). Those are found by the `GIT_DIR` git exports to its children: under
/// `root`, in the environment of a git process whose parent is no git process (its own
/// parent died). A git an operator started on a mirror with `--git-dir` has no `GIT_DIR`
/// in its environment and is left alone. Returns how many were killed.
fn kill_orphans(root: &Path) -> usize {
    let roots = [Some(root.to_owned()), root.canonicalize().ok()];
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    let is_git = |pid: &str| {
        fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("git"))
        })
    };
    let mut killed = 0;
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !is_git(pid) {
            continue;
        }
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let ours = environ.split(|b| *b == 0).any(|var| {
            var.strip_prefix(b"GIT_DIR=").is_some_and(|dir| {
                use std::os::unix::ffi::OsStrExt;
                let dir = Path::new(std::ffi::OsStr::from_bytes(dir));
                roots.iter().flatten().any(|r| dir.starts_with(r))
            })
        });
        let parent = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
            });
        if !ours || parent.is_none_or(|p| is_git(&p)) {
            continue;
        }
        let Some(target) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) else {
            continue;
        };
        if rustix::process::kill_process(target, rustix::process::Signal::KILL).is_ok() {
            tracing::warn!(
                pid,
                "killed a git process left running by a previous worker"
            );
            killed += 1;
        }
    }
    killed
}

/// Run `git --git-dir <dir> <args>`.
pub(crate) fn git(git_dir: &Path, args: &[&str]) -> Result<(), GitError> {
    git_stdin(git_dir, args, &[])
}

/// [`git`] with `input` on its stdin.
pub(crate) fn git_stdin(git_dir: &Path, args: &[&str], input: &[u8]) -> Result<(), GitError> {
    use std::io::Write;
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .args(args)
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let not_run =
        |e: io::Error| GitError::NotRun(format!("cannot run git {}: {e}", args.join(" ")));
    let mut child = cmd.spawn().map_err(not_run)?;
    if let Some(mut stdin) = child.stdin.take() {
        // Small inputs (ref lists); a git that dies early shows in its exit status.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(not_run)?;
    if out.status.success() {
        return Ok(());
    }
    // `git fsck` names what is missing or broken on stdout, other commands on stderr.
    let (stderr, stdout) = (
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    let first: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    let message = format!(
        "git {} in {} ({}): {}",
        args.join(" "),
        git_dir.display(),
        out.status,
        first.join("; ")
    );
    Err(if out.status.code().is_some() {
        GitError::Failed(message)
    } else {
        GitError::NotRun(message)
    })
}

fn pool_failure(e: pool::PoolError) -> Failure {
    Failure::local(truncate(format!("fork pool: {e}")))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// Which stale files to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// `*.lock` directly in the mirror directory and interrupted packs' temp files in
    /// `objects/pack/`: a few entries each, cheap enough for every fetch.
    TopLevel,
    /// Also locks under `refs/`, `logs/` and `objects/info/`.
    All,
}

/// A killed earlier operation's locks and temp packs in `pool`, at least `min_age` old
/// ([`STALE_AFTER`] before a pool operation; any at start); each one logged.
fn heal_pool(pool: &Path, min_age: Duration) {
    for note in remove_leftovers(pool, Sweep::All, min_age) {
        tracing::info!(pool = %pool.display(), "self-heal: {note}");
    }
}

/// Remove stale lock and temp files (older than [`STALE_AFTER`]); one note per file.
fn remove_stale(git_dir: &Path, sweep: Sweep) -> Vec<String> {
    remove_leftovers(git_dir, sweep, STALE_AFTER)
}

/// [`remove_stale`] for files at least `min_age` old.
fn remove_leftovers(git_dir: &Path, sweep: Sweep, min_age: Duration) -> Vec<String> {
    let now = SystemTime::now();
    let mut notes = Vec::new();
    let mut remove = |path: &Path, meta: &fs::Metadata| {
        let age = meta
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::ZERO);
        if age < min_age {
            return;
        }
        match fs::remove_file(path) {
            Ok(()) => notes.push(format!(
                "removed stale {} ({} s old)",
                path.display(),
                age.as_secs()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => notes.push(format!("cannot remove stale {}: {e}", path.display())),
        }
    };
    let is_lock = |name: &str| name.ends_with(".lock");
    scan(git_dir, false, &is_lock, &mut remove);
    // gix writes packs through `.tmp*` temp files, git through `tmp_*`/`.tmp-*`. A crash
    // during a fetch leaves the part received so far: as big as that push, so not left
    // for the daily maintenance pass.
    let is_temp = |name: &str| {
        name.ends_with(".lock") || name.starts_with(".tmp") || name.starts_with("tmp_")
    };
    scan(
        &git_dir.join("objects").join("pack"),
        false,
        &is_temp,
        &mut remove,
    );
    if sweep == Sweep::All {
        for sub in ["refs", "logs"] {
            scan(&git_dir.join(sub), true, &is_lock, &mut remove);
        }
        scan(
            &git_dir.join("objects").join("info"),
            false,
            &is_lock,
            &mut remove,
        );
    }
    notes
}

/// Visit regular files in `dir` (and below, with `deep`) whose name `wanted` picks. Only
/// those are stat'ed: this runs before every fetch.
fn scan(
    dir: &Path,
    deep: bool,
    wanted: &dyn Fn(&str) -> bool,
    found: &mut dyn FnMut(&Path, &fs::Metadata),
) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if deep {
                scan(&entry.path(), true, wanted, found);
            }
        } else if kind.is_file()
            && wanted(&entry.file_name().to_string_lossy())
            && let Ok(meta) = fs::symlink_metadata(entry.path())
        {
            found(&entry.path(), &meta);
        }
    }
}

/// Any loose ref files under `refs/` (gix writes updated refs loose)?
fn has_loose_refs(git_dir: &Path) -> bool {
    let mut any = false;
    scan(
        &git_dir.join("refs"),
        true,
        &|n| !n.ends_with(".lock"),
        &mut |_, _| any = true,
    );
    any
}

/// Put the complete clone at `tmp` where `final_path` is, in one step when the filesystem
/// can (`renameat2(RENAME_EXCHANGE)`); afterwards `tmp` holds what was at `final_path`.
fn swap_into_place(tmp: &Path, final_path: &Path) -> Result<(), Failure> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, tmp, CWD, final_path, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) if !final_path.exists() => fs::rename(tmp, final_path)
            .map_err(|e| Failure::io("move the new clone to", final_path, &e)),
        Err(e) => {
            // No atomic exchange here (old kernel or filesystem): two renames, with a
            // moment in between where nothing is at the final path.
            tracing::debug!(path = %final_path.display(), "atomic exchange unavailable ({e}); swapping with two renames");
            let aside = tmp.with_extension("old");
            fs::rename(final_path, &aside)
                .map_err(|e| Failure::io("move the corrupt mirror away from", final_path, &e))?;
            if let Err(e) = fs::rename(tmp, final_path) {
                let _ = fs::rename(&aside, final_path);
                return Err(Failure::io("move the new clone to", final_path, &e));
            }
            fs::rename(&aside, tmp).map_err(|e| Failure::io("move", &aside, &e))
        }
    }
}

/// The skeleton of a new bare mirror at `tmp` (which must not exist): what git needs to
/// see a repository (`HEAD`, `objects/`, `refs/`) and its whole `config`, origin included,
/// in 5 directories and 2 files. `gix::create` writes 22 files and directories (hook
/// samples, `description`, `info/exclude`) and probes the filesystem with 3 more, and
/// setting the origin afterwards was a crash-safe rewrite with two fsyncs: under
/// `fetch.concurrency` clones on a busy disk, inode allocation and those fsyncs were most
/// of a small repo's clone (issue 11 §2). Nothing here is synced: a clone is in `.tmp/`
/// until complete and a crash discards it.
fn create_mirror(tmp: &Path, url: &str) -> Result<(), Failure> {
    fs::create_dir(tmp).map_err(|e| Failure::io("create directory", tmp, &e))?;
    for dir in ["objects/pack", "refs/heads", "refs/tags"] {
        let d = tmp.join(dir);
        fs::create_dir_all(&d).map_err(|e| Failure::io("create directory", &d, &e))?;
    }
    let mut config = gix::config::File::default();
    let fail = |e: &dyn std::fmt::Display| {
        Failure::local(format!("cannot write the config of {}: {e}", tmp.display()))
    };
    for (section, sub, key, value) in [
        ("core", None, "repositoryformatversion", "0"),
        ("core", None, "filemode", "true"),
        ("core", None, "bare", "true"),
        ("remote", Some("origin"), "url", url),
        ("remote", Some("origin"), "fetch", MIRROR_REFSPEC),
        ("remote", Some("origin"), "mirror", "true"),
    ] {
        config
            .set_raw_value_by(section, sub.map(gix::bstr::BStr::new), key, value)
            .map_err(|e| fail(&e))?;
    }
    let path = tmp.join("config");
    fs::write(&path, config.to_bstring()).map_err(|e| Failure::io("write", &path, &e))?;
    // As `git init`; replaced by the upstream's HEAD when it names one.
    let head = tmp.join("HEAD");
    fs::write(&head, "ref: refs/heads/main\n").map_err(|e| Failure::io("write", &head, &e))
}

/// Set values in a mirror's `config` file, written crash-safely.
fn set_config(git_dir: &Path, values: &[(&str, Option<&str>, &str, &str)]) -> Result<(), Failure> {
    let path = git_dir.join("config");
    let fail = |e: &dyn std::fmt::Display| {
        Failure::local(format!("cannot update {}: {e}", path.display()))
    };
    let mut file =
        gix::config::File::from_path_no_includes(path.clone(), gix::config::Source::Local)
            .map_err(|e| fail(&e))?;
    for (section, sub, key, value) in values {
        file.set_raw_value_by(*section, sub.map(gix::bstr::BStr::new), *key, *value)
            .map_err(|e| fail(&e))?;
    }
    let mut bytes = Vec::new();
    file.write_to(&mut bytes).map_err(|e| fail(&e))?;
    gitmirror_common::statefile::write_atomic(&path, &bytes, 0o644).map_err(|e| fail(&e))
}

/// Where in an operation an error happened: it decides what the error can mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Preparing a clone: bad URL or target directory.
    Setup,
    /// A whole clone: talking to the upstream and writing a new repository.
    Clone,
    /// Connecting, handshake and ref listing: only the upstream is involved.
    Upstream,
    /// Negotiation, pack transfer and ref updates of a fetch: the upstream and the
    /// existing mirror. An upstream that answered the listing is not "gone" here.
    Transfer,
    /// Reading or writing the local mirror.
    Local,
}

/// A fetch failure may be the mirror's fault: try healing it (not when the disk is full,
/// which healing cannot fix, nor when the operation was interrupted).
fn healable(f: &Failure, interrupt: &AtomicBool) -> bool {
    f.class == FailureClass::Local && !f.is_disk_full() && !interrupt.load(Ordering::Relaxed)
}

/// The error and its causes, one line.
fn chain(e: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in e.iter_errors() {
        let s = err.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Classify a gix error (SPEC §7.3): what an HTTP server said decides first, then the
/// stage, gix's own classes and the text.
fn classify(e: &gix::Error, stage: Stage, refusal: Option<Refusal>) -> Failure {
    let mut message = chain(e);
    if message.contains("(os error 11)") {
        // A read on a socket with a timeout (ours, `io_timeout`) ran out: say so.
        message = format!("timed out waiting for the server: {message}");
    }
    let message = truncate(message);
    let (class, retry_after) = classify_parts(&message, stage, e.dominant_class(), refusal);
    Failure {
        class,
        message,
        retry_after,
    }
}

fn classify_parts(
    message: &str,
    stage: Stage,
    gix_class: Option<gix::error::Class>,
    refusal: Option<Refusal>,
) -> (FailureClass, Option<Duration>) {
    use gix::error::Class;
    let m = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if has(&[
        "no space left",
        "disk quota",
        "read-only file system",
        "os error 28)",
    ]) || stage == Stage::Local
    {
        return (FailureClass::Local, None);
    }
    // Our own policy refused the connection or a redirect: nothing to retry soon.
    if has(&["denied by upstream_deny", "fetch.redirects is same_host"]) {
        return (FailureClass::Gone, None);
    }
    if let Some(r) = refusal {
        return match r.status {
            429 => (FailureClass::RateLimited, r.retry_after),
            503 if r.retry_after.is_some() => (FailureClass::RateLimited, r.retry_after),
            401 | 403 | 404 | 410 if stage != Stage::Transfer => (FailureClass::Gone, None),
            _ => (FailureClass::Transient, None),
        };
    }
    if has(&["http status 429", "too many requests"]) {
        return (FailureClass::RateLimited, None);
    }
    if has(&[
        "corrupt",
        ".lock",
        "lock file",
        "lock for resource",
        "checksum",
    ]) {
        return (FailureClass::Local, None);
    }
    if stage == Stage::Transfer {
        // The upstream answered the listing a moment ago, so it exists. Missing objects
        // and unreadable refs are the mirror's problem; anything else, the network's.
        let local = has(&[
            "could not be found",
            "not found",
            "could not peel",
            "could not be parsed",
            "could not be decoded",
            "permission denied",
            "no such file or directory",
        ]) && !has(&["server reply", "remote error"]);
        let class = if local {
            FailureClass::Local
        } else {
            FailureClass::Transient
        };
        return (class, None);
    }
    if has(&[
        "not found",
        "http status 404",
        "http status 410",
        "http status 401",
        "http status 403",
        "does not exist",
        "not exported",
        "access denied",
        "does not appear to be a git repository",
        "no such repository",
        "authentication",
        "no credentials",
        "could not read username",
        "permission denied (publickey",
    ]) {
        return (FailureClass::Gone, None);
    }
    let class = match gix_class {
        Some(Class::Unauthenticated | Class::PermissionDenied) => FailureClass::Gone,
        Some(Class::NotFound) => FailureClass::Gone,
        Some(Class::ResourceExhaustion(_)) => FailureClass::Local,
        _ if stage == Stage::Setup && has(&["url"]) => FailureClass::Gone,
        _ => FailureClass::Transient,
    };
    (class, None)
}

/// A name under `.tmp/` that no other clone uses.
fn unique_name(id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n}.git", id.replace('/', "_"), std::process::id())
}

/// When a trash entry `<id with / as _>-<unix time>.git` was trashed.
fn trashed_at(name: &str) -> Option<u64> {
    name.strip_suffix(".git")
        .and_then(|n| n.rsplit_once('-'))
        .and_then(|(_, t)| t.parse::<u64>().ok())
}

/// Move every entry of an older release's trash `old` (inside the mirror directory) into
/// `new` (beside it, same filesystem), keeping names, so their trash times still count;
/// then remove `old` if it is empty. Returns how many moved; what cannot move stays, with
/// a warning (it is still purged by nobody: the operator is told where it is).
fn migrate_trash(old: &Path, new: &Path) -> usize {
    let Ok(entries) = fs::read_dir(old) else {
        return 0;
    };
    let mut moved = 0;
    for entry in entries.flatten() {
        let to = new.join(entry.file_name());
        if to.exists() {
            tracing::warn!(from = %entry.path().display(), to = %to.display(), "trashed mirror not moved: the name is taken; delete it by hand");
            continue;
        }
        match fs::rename(entry.path(), &to) {
            Ok(()) => moved += 1,
            Err(e) => {
                tracing::warn!(from = %entry.path().display(), to = %to.display(), "trashed mirror not moved: {e}; delete it by hand")
            }
        }
    }
    let _ = fs::remove_dir(old);
    moved
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_7_1_mirror_paths() {
        let m = Mirrors::new("/srv/repos".into());
        assert_eq!(
            m.path("a/abc/abc"),
            PathBuf::from("/srv/repos/a/abc/abc.git")
        );
        assert_eq!(
            m.path("l/linux/linux-next"),
            PathBuf::from("/srv/repos/l/linux/linux-next.git")
        );
    }

    #[test]
    fn spec_3_2_ids_and_urls_the_worker_refuses() {
        for ok in ["a/abc/abc", "l/linux/linux-next", "g/gcc/gcc+x_1.2"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "", "a//b", "../x/y", "a/../b", "a/.git/b", "a/-x/b", "/a/b/c", "a/b/c/", "a b/c/d",
            "a/b/c\n",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(!valid_id(&"a".repeat(256)));
        assert!(valid_url("https://github.com/a/b.git") && valid_url("git@gitee.com:a/b.git"));
        for bad in [
            "",
            "-uhttps://x",
            "ext::sh -c x",
            "fd::3",
            "https://x/a b",
            "https://x/\n",
            // Issue 10 findings 3 and 5: the coordinator's policy, run again here.
            "http://10.0.0.5/admin?x=1#",
            "[-oProxyCommand=x]:p",
            "ssh://-oX@host/p",
            "https://token@x/y",
            "testgit::https://x/y",
        ] {
            assert!(!valid_url(bad), "{bad:?}");
        }
        // File URLs are the coordinator's decision (allow_file_urls); the worker takes them.
        assert!(valid_url("file:///srv/git/x.git"));
        assert!(
            check_url("https://token@x/y")
                .unwrap_err()
                .to_string()
                .contains("user info")
        );
    }

    #[test]
    fn spec_7_3_classification() {
        use FailureClass::*;
        let t = |m: &str, s: Stage| classify_parts(m, s, None, None).0;
        let refused = |status, retry_after, s: Stage| {
            classify_parts(
                "Received HTTP status",
                s,
                None,
                Some(Refusal {
                    status,
                    retry_after,
                }),
            )
        };
        assert_eq!(
            t(
                "access denied or repository not exported: /x",
                Stage::Upstream
            ),
            Gone
        );
        assert_eq!(t("Received HTTP status 404", Stage::Upstream), Gone);
        assert_eq!(t("Received HTTP status 429", Stage::Clone), RateLimited);
        assert_eq!(t("connection reset by peer", Stage::Upstream), Transient);
        assert_eq!(t("No space left on device", Stage::Transfer), Local);
        assert_eq!(t("cannot open", Stage::Local), Local);
        assert_eq!(t("refs/heads/x.lock exists", Stage::Transfer), Local);
        // A missing local object during negotiation is the mirror's fault, never "gone".
        assert_eq!(
            t(
                "Failed to prepare fetch negotiation: Could not peel reference: object could not be found",
                Stage::Transfer
            ),
            Local
        );
        assert_eq!(t("early EOF", Stage::Transfer), Transient);
        assert_eq!(
            t("Could not decode server reply: not found", Stage::Transfer),
            Transient
        );
        let s = Some(Duration::from_secs(7));
        assert_eq!(refused(429, s, Stage::Upstream), (RateLimited, s));
        assert_eq!(refused(429, None, Stage::Transfer), (RateLimited, None));
        assert_eq!(refused(503, s, Stage::Upstream), (RateLimited, s));
        assert_eq!(refused(503, None, Stage::Upstream), (Transient, None));
        assert_eq!(refused(410, None, Stage::Clone), (Gone, None));
        assert_eq!(refused(401, None, Stage::Upstream), (Gone, None));
        assert_eq!(refused(404, None, Stage::Transfer), (Transient, None));
        assert_eq!(refused(500, None, Stage::Upstream), (Transient, None));
    }

    // Issue 10 made every drop a trashing: when free space is short the trash goes first,
    // oldest first, and only as much as needed.
    #[test]
    fn spec_7_5_short_of_space_the_oldest_trash_goes_first() {
        let d = tempfile::tempdir().unwrap();
        let m = Mirrors::new(d.path().join("repos"));
        m.prepare().unwrap();
        for (id, t) in [("a/abc/abc", 300), ("b/bcd/bcd", 100), ("c/cde/cde", 200)] {
            fs::create_dir_all(m.path(id)).unwrap();
            m.trash(id, t).unwrap().unwrap();
        }
        let trash = m.trash_dir();
        let left = || fs::read_dir(&trash).unwrap().count();
        assert_eq!(m.purge_trash_until(|| left() <= 1), 2);
        assert!(trash.join("a_abc_abc-300.git").exists(), "the newest stays");
        assert_eq!(m.purge_trash_until(|| true), 0, "enough: nothing deleted");
    }

    #[test]
    fn spec_7_1_trash_is_purged_after_72h() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repos");
        let m = Mirrors::new(root.clone());
        m.prepare().unwrap();
        fs::create_dir_all(m.path("a/abc/abc")).unwrap();
        let now = 1_000_000_000;
        let trashed = m.trash("a/abc/abc", now).unwrap().unwrap();
        assert_eq!(
            trashed,
            d.path().join("repos.trash/a_abc_abc-1000000000.git")
        );
        assert!(!root.join("a").exists(), "empty parents are removed");
        assert_eq!(m.trash("a/abc/abc", now).unwrap(), None);
        assert_eq!(m.purge_trash(now + TRASH_KEEP_SECS - 1), 0);
        assert!(trashed.exists());
        assert_eq!(m.purge_trash(now + TRASH_KEEP_SECS), 1);
        assert!(!trashed.exists());
    }

    #[test]
    fn spec_7_1_tmp_leftovers_removed_at_start() {
        let d = tempfile::tempdir().unwrap();
        let m = Mirrors::new(d.path().join("repos"));
        fs::create_dir_all(d.path().join("repos.tmp/half-clone.git/objects")).unwrap();
        fs::write(d.path().join("repos.tmp/stray"), b"x").unwrap();
        let c = m.prepare().unwrap();
        assert_eq!(c.tmp_removed, 2);
        assert_eq!(fs::read_dir(d.path().join("repos.tmp")).unwrap().count(), 0);
    }

    // SPEC §7.1, issue 10 finding 5: the temp and trash directories of an older release,
    // inside the mirror directory (where a git daemon exporting it serves them), are
    // migrated at start: leftovers swept, trashed mirrors moved beside it with their
    // names (so their trash time still counts), the old directories removed.
    #[test]
    fn issue10_f5_old_tmp_and_trash_inside_are_migrated_at_start() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repos");
        let now = unix_secs();
        let name = format!("a_abc_abc-{now}.git");
        fs::create_dir_all(root.join(".tmp/half-clone.git/objects")).unwrap();
        fs::create_dir_all(root.join(".trash").join(&name).join("objects")).unwrap();
        fs::create_dir_all(root.join("a/b/c.git/objects")).unwrap();
        let m = Mirrors::new(root.clone());
        let c = m.prepare().unwrap();
        assert_eq!((c.tmp_removed, c.trash_migrated), (1, 1), "{c:?}");
        assert!(!root.join(".tmp").exists() && !root.join(".trash").exists());
        assert!(
            d.path()
                .join("repos.trash")
                .join(&name)
                .join("objects")
                .is_dir()
        );
        assert!(root.join("a/b/c.git/objects").is_dir(), "mirrors untouched");
        assert_eq!(m.work_dirs(), &WorkDirs::in_use(&root));
        assert!(!m.work_dirs().inside);
        // The trash time in the name still counts after the move.
        assert_eq!(m.purge_trash(now + TRASH_KEEP_SECS - 1), 0);
        assert_eq!(m.purge_trash(now + TRASH_KEEP_SECS), 1);
    }

    // The fallback: a mirror directory with no parent to put siblings in (a mount point is
    // the other case, exercised by the fault suite's tmpfs) keeps them inside.
    #[test]
    fn issue10_f5_no_room_beside_keeps_them_inside() {
        assert_eq!(WorkDirs::beside(Path::new("/")), None);
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repos");
        // Something that is not a directory where the sibling would go.
        fs::write(d.path().join("repos.trash"), b"x").unwrap();
        let w = WorkDirs::choose(&root);
        assert_eq!(w, WorkDirs::inside(&root));
    }

    #[test]
    fn spec_7_3_only_old_locks_are_stale() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path();
        fs::create_dir_all(g.join("refs/heads/feature")).unwrap();
        fs::create_dir_all(g.join("objects/pack")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        let make = |rel: &str, t: SystemTime| {
            let p = g.join(rel);
            fs::write(&p, b"x").unwrap();
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            p
        };
        let top = make("packed-refs.lock", old);
        let deep = make("refs/heads/feature/x.lock", old);
        let tmp_pack = make("objects/pack/.tmpAbc123", old);
        let fresh = make("config.lock", SystemTime::now());
        let not_a_lock = make("refs/heads/main", old);
        assert_eq!(remove_stale(g, Sweep::TopLevel).len(), 2);
        assert!(!top.exists() && !tmp_pack.exists() && deep.exists() && fresh.exists());
        assert_eq!(remove_stale(g, Sweep::All).len(), 1);
        assert!(!deep.exists());
        assert!(
            fresh.exists(),
            "a lock younger than STALE_AFTER is left alone"
        );
        assert!(not_a_lock.exists());
    }
}
