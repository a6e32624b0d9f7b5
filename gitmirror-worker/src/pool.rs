//! Fork pools (SPEC §14, docs/plans/fork-pools.md): the mirrors of one project folder
//! borrow their objects from one pool repository.
//!
//! **Layout.** The members of project folder `<first>/<project>/` (ids
//! `<first>/<project>/<name>`, any id with a folder) share the bare repository
//! `<mirror_dir>/.pools/<first>/<project>.git` (a component starting with `.` is never a
//! repo id, SPEC §3.2). A member borrows through `objects/info/alternates`, one line, a
//! path **relative** to its own `objects/` directory, so `mirror_dir` can move as a whole.
//! A clone being built in the temp directory has an absolute path, rewritten to the final
//! relative one just before the rename into place, and to the trash-relative one before a
//! member is trashed (plan C7).
//!
//! **Namespaces.** The pool keeps each member's refs under `refs/members/<hex of the
//! member's name>/` (its `refs/*` below that as `…/refs/heads/main`, its `HEAD` as
//! `…/HEAD`): any id component is allowed there, `foo.lock` and `a..b` included, and the
//! name comes back from the ref at start-up (plan C5). Objects a namespace reaches are kept
//! by any git maintenance of the pool; nothing here ever deletes an object from a pool.
//!
//! **Join** (namespace → alternates → `git repack -a -d -l`): after each step the member
//! is a complete repository. **Removal** (plan C7): a trashed member keeps its namespace;
//! the namespace goes when its mirror is gone from `mirror_dir` and from the trash, and the
//! pool goes with its last namespace.
//!
//! Blocking, like `mirror.rs`: call it off the async runtime.

use crate::mirror::{GitError, git};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// The pools directory inside `mirror_dir`.
pub const POOLS_DIR: &str = ".pools";
/// Where the pool keeps its members' refs.
pub const MEMBERS_PREFIX: &str = "refs/members/";
/// A member with more refs than this stays a plain mirror (plan C15): one namespace of a
/// million refs would slow every operation on the whole project's pool.
pub const MAX_MEMBER_REFS: usize = 100_000;
/// Pool tips offered as haves by a clone (one round, as a fetch's own haves).
pub const MAX_HAVES: usize = 2048;

/// What went wrong with a pool or a member's link to it; every variant names its path.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("repo id {0:?} has no project folder: it cannot be pooled")]
    NoProject(String),
    #[error("{0:?} is not a pool member namespace (refs/members/<hex>/…)")]
    BadNamespace(String),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("alternates file {}: {why}", path.display())]
    BadAlternates { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    Repo { path: PathBuf, why: String },
    #[error("{0}")]
    Git(String),
}

impl From<GitError> for PoolError {
    fn from(e: GitError) -> Self {
        PoolError::Git(e.to_string())
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PoolError + 'a {
    move |source| PoolError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The pool of `id`'s project: `<root>/.pools/<folder of id>.git`.
pub fn pool_path(root: &Path, id: &str) -> Result<PathBuf, PoolError> {
    match id.rsplit_once('/') {
        Some((folder, _)) if crate::mirror::valid_id(id) => {
            Ok(root.join(POOLS_DIR).join(format!("{folder}.git")))
        }
        _ => Err(PoolError::NoProject(id.to_owned())),
    }
}

/// The pool of project folder `project` (`a/abc` → `<root>/.pools/a/abc.git`).
pub fn project_pool_path(root: &Path, project: &str) -> Result<PathBuf, PoolError> {
    pool_path(root, &format!("{project}/x"))
}

/// A member's name inside its project folder (the last id component).
pub fn member_name(id: &str) -> &str {
    id.rsplit_once('/').map_or(id, |(_, n)| n)
}

/// `refs/members/<hex of name>/`.
pub fn namespace(name: &str) -> String {
    let mut s = String::with_capacity(MEMBERS_PREFIX.len() + 2 * name.len() + 1);
    s.push_str(MEMBERS_PREFIX);
    for b in name.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('/');
    s
}

/// The member name and the rest of a ref in a member namespace
/// (`refs/members/666f6f/refs/heads/main` → `("foo", "refs/heads/main")`).
pub fn decode_namespace(refname: &str) -> Result<(String, &str), PoolError> {
    let bad = || PoolError::BadNamespace(refname.to_owned());
    let rest = refname.strip_prefix(MEMBERS_PREFIX).ok_or_else(bad)?;
    let (hex, tail) = rest.split_once('/').ok_or_else(bad)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    let name = String::from_utf8(bytes).map_err(|_| bad())?;
    if name.contains('/') || !crate::mirror::valid_id(&name) {
        return Err(bad());
    }
    Ok((name, tail))
}

/// `path` with `.` removed and `..` applied, without touching the filesystem.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The relative path from directory `from` to `to`, both absolute (lexically).
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = normalize(&std::path::absolute(from).unwrap_or_else(|_| from.to_owned()));
    let to = normalize(&std::path::absolute(to).unwrap_or_else(|_| to.to_owned()));
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

fn alternates_file(member: &Path) -> PathBuf {
    member.join("objects/info/alternates")
}

/// The objects directory `member` borrows from, resolved (relative lines are relative to
/// the member's `objects/`); `None` without an alternates file. More than one line, an
/// empty file or a path that is not a directory is an error naming the file.
pub fn read_alternates(member: &Path) -> Result<Option<PathBuf>, PoolError> {
    let path = alternates_file(member);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let target = parse_alternates(member, &path, text)?;
    if !target.is_dir() {
        return Err(PoolError::BadAlternates {
            path,
            why: format!("{} is not a directory", target.display()),
        });
    }
    Ok(Some(target))
}

/// The one path of an alternates file's `text`, resolved against `member/objects`.
fn parse_alternates(member: &Path, path: &Path, text: Vec<u8>) -> Result<PathBuf, PoolError> {
    let bad = |why: &str| PoolError::BadAlternates {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let text = String::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines.as_slice() else {
        return Err(bad(&format!(
            "{} paths; a pool member borrows from exactly one",
            lines.len()
        )));
    };
    Ok(normalize(&member.join("objects").join(line)))
}

/// Whether `member`'s alternates line is an absolute path (only ever while it is built in
/// the temp directory).
pub fn alternates_is_absolute(member: &Path) -> bool {
    fs::read_to_string(alternates_file(member)).is_ok_and(|t| t.trim_start().starts_with('/'))
}

/// Point `member` (a mirror that is, or will be, at `member_at`) at `pool`'s objects:
/// relative to `member_at/objects` when `relative_path`, else absolute. Written to a temp
/// file and renamed, so a reader sees the old line or the new one.
pub fn write_alternates(
    member: &Path,
    member_at: &Path,
    pool: &Path,
    relative_path: bool,
) -> Result<(), PoolError> {
    let objects = pool.join("objects");
    let line = if relative_path {
        relative(&member_at.join("objects"), &objects)
    } else {
        normalize(&std::path::absolute(&objects).map_err(io_err("resolve", &objects))?)
    };
    let path = alternates_file(member);
    let dir = member.join("objects/info");
    fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
    let tmp = dir.join("alternates.tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    writeln!(f, "{}", line.display()).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))
}

/// `gitmirror.pool = false` in a mirror's config: an operator detached it (plan C13) and
/// it stays plain.
pub fn is_detached(member: &Path) -> bool {
    config_value(member, "gitmirror.pool").is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

/// The origin URL in a mirror's config.
pub fn origin_url(member: &Path) -> Option<String> {
    config_value(member, "remote.origin.url")
}

fn config_value(git_dir: &Path, key: &str) -> Option<String> {
    let file = gix::config::File::from_path_no_includes(
        git_dir.join("config"),
        gix::config::Source::Local,
    )
    .ok()?;
    file.string(key).map(|v| v.to_string())
}

/// Create the pool at `pool` from `seed`'s packs, hard-linked (same filesystem: no bytes
/// copied, as `git clone --local`), built in `build` (a fresh path in the temp directory)
/// and renamed into place complete. The pool never has alternates of its own, and its git
/// config keeps any `git gc` an operator runs there from pruning (plan C8).
pub fn create(pool: &Path, seed: &Path, build: &Path) -> Result<(), PoolError> {
    let result = build_pool(seed, build).and_then(|()| {
        let parent = pool
            .parent()
            .ok_or_else(|| PoolError::NoProject(pool.display().to_string()))?;
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        if pool.exists() {
            return Err(PoolError::Repo {
                path: pool.to_owned(),
                why: "a pool appeared while this one was built".into(),
            });
        }
        fs::rename(build, pool).map_err(io_err("move the new pool to", pool))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(build);
    }
    result
}

/// A new pool at `build` (a fresh path) from `seed`'s packs, hard-linked: [`create`]
/// without the rename into place.
pub fn build_pool(seed: &Path, build: &Path) -> Result<(), PoolError> {
    git(build, &["init", "-q", "--bare", "--template="])?;
    for (k, v) in [
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
        ("gc.pruneExpire", "never"),
        ("repack.writeBitmaps", "false"),
        ("gitmirror.isPool", "true"),
    ] {
        git(build, &["config", k, v])?;
    }
    let from = seed.join("objects/pack");
    let to = build.join("objects/pack");
    fs::create_dir_all(&to).map_err(io_err("create directory", &to))?;
    for entry in fs::read_dir(&from).map_err(io_err("list", &from))? {
        let entry = entry.map_err(io_err("list", &from))?;
        let name = entry.file_name();
        let n = name.to_string_lossy();
        if n.starts_with("pack-") && (n.ends_with(".pack") || n.ends_with(".idx")) {
            let target = to.join(&name);
            fs::hard_link(entry.path(), &target).map_err(io_err("hard-link a pack to", &target))?;
        }
    }
    Ok(())
}

/// Bring `member`'s refs (and `HEAD`) into its namespace of `pool`, with the objects the
/// pool lacks, pruning refs the member no longer has from that namespace (refs only: no
/// object leaves the pool).
pub fn add_namespace(pool: &Path, member: &Path, name: &str) -> Result<(), PoolError> {
    let ns = namespace(name);
    // Absolute: git reads `x:y` without a slash before the colon as an ssh address.
    let src = std::path::absolute(member).map_err(io_err("resolve", member))?;
    let src = src.to_string_lossy();
    let mut specs = vec![format!("+refs/*:{ns}refs/*")];
    let head = gix::open(member)
        .ok()
        .and_then(|r| r.head_id().ok().map(|id| id.detach()));
    if head.is_some() {
        specs.push(format!("+HEAD:{ns}HEAD"));
    }
    let mut args = vec![
        "-c",
        "transfer.unpackLimit=1",
        "-c",
        "fetch.writeCommitGraph=false",
        "fetch",
        "-q",
        "--prune",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-auto-gc",
        "--no-recurse-submodules",
        src.as_ref(),
    ];
    args.extend(specs.iter().map(String::as_str));
    git(pool, &args)?;
    if head.is_none() {
        // An empty member or an unborn HEAD: no stale HEAD of an earlier life stays.
        let _ = git(pool, &["update-ref", "-d", &format!("{ns}HEAD")]);
    }
    Ok(())
}

/// Remove the member's now borrowed objects from its own packs (`-l`: objects found in the
/// pool are left out). Only after [`add_namespace`] covered its refs.
pub fn repack_local(member: &Path) -> Result<(), PoolError> {
    git(
        member,
        &[
            "-c",
            "repack.writeBitmaps=false",
            "repack",
            "-a",
            "-d",
            "-l",
            "-q",
        ],
    )?;
    Ok(())
}

/// Join `member` (a complete mirror at its final path) to `pool`: namespace, then
/// alternates, then the local repack. The member is complete after each step, so a crash
/// anywhere leaves a valid mirror; [`reconcile`] finishes a half-joined one.
pub fn join(pool: &Path, member: &Path, name: &str) -> Result<(), PoolError> {
    add_namespace(pool, member, name)?;
    write_alternates(member, member, pool, true)?;
    repack_local(member)
}

/// Members (names) with a namespace in `pool` and how many refs each has there. One ref
/// listing; a ref outside any valid namespace (`refs/heads/…` of a repository that is not
/// ours, a bad hex name) is reported in `strays`, and a pool with strays is never removed.
pub fn namespaces(pool: &Path) -> Result<Namespaces, PoolError> {
    let repo = gix::open(pool).map_err(|e| PoolError::Repo {
        path: pool.to_owned(),
        why: e.to_string(),
    })?;
    let refs = repo.references().map_err(|e| PoolError::Repo {
        path: pool.to_owned(),
        why: e.to_string(),
    })?;
    let iter = refs.all().map_err(|e| PoolError::Repo {
        path: pool.to_owned(),
        why: e.to_string(),
    })?;
    let mut out = Namespaces::default();
    for r in iter {
        let r = r.map_err(|e| PoolError::Repo {
            path: pool.to_owned(),
            why: e.to_string(),
        })?;
        let name = r.name().as_bstr().to_string();
        match decode_namespace(&name) {
            Ok((member, _)) => *out.members.entry(member).or_default() += 1,
            Err(_) => {
                out.stray_count += 1;
                if out.strays.len() < 3 {
                    out.strays.push(name);
                }
            }
        }
    }
    Ok(out)
}

/// What [`namespaces`] found.
#[derive(Debug, Default)]
pub struct Namespaces {
    pub members: BTreeMap<String, usize>,
    /// The first few refs outside any member namespace, and how many there are.
    pub strays: Vec<String>,
    pub stray_count: usize,
}

/// Delete every ref of `name`'s namespace in `pool` (refs only; objects stay).
pub fn drop_namespace(pool: &Path, name: &str) -> Result<(), PoolError> {
    let ns = namespace(name);
    let repo = gix::open(pool).map_err(|e| PoolError::Repo {
        path: pool.to_owned(),
        why: e.to_string(),
    })?;
    let mut names = Vec::new();
    if let Ok(refs) = repo.references()
        && let Ok(iter) = refs.prefixed(ns.as_str())
    {
        names.extend(iter.flatten().map(|r| r.name().as_bstr().to_string()));
    }
    drop(repo);
    if names.is_empty() {
        return Ok(());
    }
    let stdin: String = names.iter().map(|n| format!("delete {n}\n")).collect();
    crate::mirror::git_stdin(pool, &["update-ref", "--stdin"], stdin.as_bytes())?;
    Ok(())
}

/// Object ids to offer as haves when cloning a new member: every namespace's `HEAD`
/// first, then branch tips, then tags, at most [`MAX_HAVES`] (each kind collected up to
/// that bound, so a pool of a million refs costs bounded memory).
pub fn tips(pool: &Path) -> Vec<gix::ObjectId> {
    let Ok(repo) = gix::open(pool) else {
        return Vec::new();
    };
    let Ok(refs) = repo.references() else {
        return Vec::new();
    };
    let Ok(iter) = refs.prefixed(MEMBERS_PREFIX) else {
        return Vec::new();
    };
    // HEADs, branches, the rest.
    let mut tiers: [Vec<gix::ObjectId>; 3] = Default::default();
    for mut r in iter.flatten() {
        let name = r.name().as_bstr().to_string();
        let Ok((_, rest)) = decode_namespace(&name) else {
            continue;
        };
        let tier = if rest == "HEAD" {
            0
        } else if rest.starts_with("refs/heads/") {
            1
        } else {
            2
        };
        if tiers[tier].len() >= MAX_HAVES {
            continue;
        }
        let Ok(id) = r.peel_to_id() else { continue };
        tiers[tier].push(id.detach());
    }
    let mut seen = HashSet::new();
    tiers
        .into_iter()
        .flatten()
        .filter(|id| seen.insert(*id))
        .take(MAX_HAVES)
        .collect()
}

/// The trash name stem of `id`: `/` → `_` (`Mirrors::trash` names entries
/// `<stem>[.<n>]-<unix time>.git`). Ids may hold `_` themselves, so a stem is only ever
/// compared with the stem of a known id, never turned back into one.
pub fn trash_stem(id: &str) -> String {
    id.replace('/', "_")
}

/// The stems a trash entry name may stand for: a `.<n>` suffix is either a collision
/// counter or part of the id, so both are returned (keeping a namespace too long never
/// loses anything).
pub fn trash_stems(entry_name: &str) -> Vec<String> {
    let Some(stem) = entry_name
        .strip_suffix(".git")
        .and_then(|s| s.rsplit_once('-'))
        .map(|(s, _)| s)
    else {
        return Vec::new();
    };
    let mut stems = vec![stem.to_owned()];
    if let Some((base, n)) = stem.rsplit_once('.')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        stems.push(base.to_owned());
    }
    stems
}

/// The project folder a pool serves (`<root>/.pools/a/abc.git` → `a/abc`).
pub fn pool_folder(root: &Path, pool: &Path) -> Option<String> {
    pool.strip_prefix(root.join(POOLS_DIR))
        .ok()?
        .to_str()?
        .strip_suffix(".git")
        .map(str::to_owned)
}

/// What start-up reconciliation found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciled {
    pub pools: usize,
    pub members: usize,
    /// Absolute alternates paths made relative.
    pub rewritten: usize,
    /// Half-joined members (namespace but no alternates) whose join was finished.
    pub resumed: usize,
    /// Namespaces of members gone from `mirror_dir` and the trash, or detached.
    pub namespaces_dropped: usize,
    pub pools_removed: usize,
    /// One line per problem left alone (a broken alternates file, a stray ref, …).
    pub problems: Vec<String>,
}

/// At start, from disk alone: one ref listing per pool and one look at each member's
/// alternates file (no git process per repo; git only for the rare half-joined member).
/// `trashed` holds the trash stems ([`trash_stems`]) of mirrors in the trash, whose
/// namespaces stay. Never deletes an object from a pool.
pub fn reconcile(root: &Path, trashed: &HashSet<String>) -> Reconciled {
    let mut out = Reconciled::default();
    let mut pools = Vec::new();
    find_pools(&root.join(POOLS_DIR), 0, &mut pools);
    for pool in pools {
        out.pools += 1;
        let Some(folder) = pool_folder(root, &pool) else {
            continue;
        };
        let found = match namespaces(&pool) {
            Ok(n) => n,
            Err(e) => {
                out.problems.push(format!("pool left alone: {e}"));
                continue;
            }
        };
        if let Some(stray) = found.strays.first() {
            out.problems.push(format!(
                "{}: {} refs in no member namespace (e.g. {stray}); the pool is never removed",
                pool.display(),
                found.stray_count
            ));
        }
        let mut kept = 0;
        for name in found.members.keys() {
            let id = format!("{folder}/{name}");
            let member = root.join(format!("{id}.git"));
            match reconcile_member(&pool, &member, name, trashed.contains(&trash_stem(&id))) {
                Ok(MemberState::Member { rewritten }) => {
                    out.members += 1;
                    kept += 1;
                    out.rewritten += usize::from(rewritten);
                }
                Ok(MemberState::Resumed) => {
                    out.members += 1;
                    out.resumed += 1;
                    kept += 1;
                }
                Ok(MemberState::Trashed) => kept += 1,
                Ok(MemberState::Gone) => out.namespaces_dropped += 1,
                Err(e) => {
                    kept += 1;
                    out.problems.push(format!("member {id}: {e}"));
                }
            }
        }
        if kept == 0 && found.strays.is_empty() {
            match fs::remove_dir_all(&pool) {
                Ok(()) => out.pools_removed += 1,
                Err(e) => out
                    .problems
                    .push(format!("cannot remove empty pool {}: {e}", pool.display())),
            }
        }
    }
    out
}

enum MemberState {
    Member { rewritten: bool },
    Resumed,
    Trashed,
    Gone,
}

fn reconcile_member(
    pool: &Path,
    member: &Path,
    name: &str,
    trashed: bool,
) -> Result<MemberState, PoolError> {
    let alternates = alternates_file(member);
    // The one look at a member: reading its alternates file (its pool exists: no stat of
    // the target either).
    match fs::read(&alternates) {
        Ok(text) => {
            let absolute = text.starts_with(b"/");
            let target = parse_alternates(member, &alternates, text)?;
            if target != normalize(&pool.join("objects")) {
                return Err(PoolError::BadAlternates {
                    path: alternates,
                    why: format!(
                        "points at {}, not at its pool {}",
                        target.display(),
                        pool.display()
                    ),
                });
            }
            if absolute {
                write_alternates(member, member, pool, true)?;
            }
            Ok(MemberState::Member {
                rewritten: absolute,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if member.join("objects").is_dir() {
                if is_detached(member) {
                    drop_namespace(pool, name)?;
                    return Ok(MemberState::Gone);
                }
                // Namespace written, crash before the alternates: finish the join.
                write_alternates(member, member, pool, true)?;
                repack_local(member)?;
                Ok(MemberState::Resumed)
            } else if trashed {
                Ok(MemberState::Trashed)
            } else {
                drop_namespace(pool, name)?;
                Ok(MemberState::Gone)
            }
        }
        Err(e) => Err(io_err("read", &alternates)(e)),
    }
}

/// Bare repositories (`*.git` with `objects/`) under the pools directory, two levels deep
/// for `<first>/<project>.git` and deeper for longer folders.
/// Every pool directory under `root` (`.pools/<first>/<project>.git`).
pub fn all_pools(root: &Path) -> Vec<PathBuf> {
    let mut pools = Vec::new();
    find_pools(&root.join(POOLS_DIR), 0, &mut pools);
    pools
}

fn find_pools(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if path.extension().is_some_and(|e| e == "git") && path.join("objects").is_dir() {
            out.push(path);
        } else if depth < 16 {
            find_pools(&path, depth + 1, out);
        }
    }
}

/// One project's pool as the coordinator is told it (SPEC §14, protocol 8).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectSurvey {
    /// Its pool exists (otherwise nothing below is set).
    pub pooled: bool,
    /// Pack bytes of the pool.
    pub pool_bytes: u64,
    /// Pack bytes of the members' own objects.
    pub member_bytes: u64,
    /// Every mirror of the folder: (member name, state).
    pub states: Vec<(String, gitmirror_wire::PoolState)>,
}

/// What [`survey`] needs to say why a mirror of a pooled project is plain.
pub struct SurveyRules<'a> {
    /// `fetch.pools` is on.
    pub pools_on: bool,
    /// The URL matches a `credentials` entry.
    pub credentialed: &'a dyn Fn(&str) -> bool,
}

/// The pools of `folders` (every folder with a pool when `None`) and the state of each
/// mirror in them: one listing of the folder, one alternates read per mirror and one
/// listing of each pack directory; a ref count (at most [`MAX_MEMBER_REFS`] + 1 refs
/// read) only for a plain mirror that is neither detached nor credentialed.
pub fn survey(
    root: &Path,
    folders: Option<Vec<String>>,
    rules: &SurveyRules<'_>,
) -> BTreeMap<String, ProjectSurvey> {
    use gitmirror_wire::{PlainWhy, PoolState};
    let folders = folders.unwrap_or_else(|| {
        let mut pools = Vec::new();
        find_pools(&root.join(POOLS_DIR), 0, &mut pools);
        pools.iter().filter_map(|p| pool_folder(root, p)).collect()
    });
    let mut out = BTreeMap::new();
    for folder in folders {
        let pool = root.join(POOLS_DIR).join(format!("{folder}.git"));
        let mut s = ProjectSurvey::default();
        if pool.join("objects").is_dir() {
            s.pooled = true;
            s.pool_bytes = pack_bytes(&pool);
            let objects = normalize(&std::path::absolute(pool.join("objects")).unwrap_or_default());
            for e in fs::read_dir(root.join(&folder))
                .into_iter()
                .flatten()
                .flatten()
            {
                let file_name = e.file_name();
                let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".git")) else {
                    continue;
                };
                if !crate::mirror::valid_id(&format!("{folder}/{name}")) {
                    continue;
                }
                let path = std::path::absolute(e.path()).unwrap_or_else(|_| e.path());
                let state = match read_alternates(&path) {
                    Ok(Some(t)) if normalize(&t) == objects => {
                        s.member_bytes += pack_bytes(&path);
                        PoolState::Member
                    }
                    _ if is_detached(&path) => PoolState::Plain(PlainWhy::Detached),
                    _ if origin_url(&path).is_some_and(|u| (rules.credentialed)(&u)) => {
                        PoolState::Plain(PlainWhy::Credentials)
                    }
                    _ if !rules.pools_on => PoolState::Plain(PlainWhy::PoolsOff),
                    _ if too_many_refs(&path) => PoolState::Plain(PlainWhy::TooManyRefs),
                    _ => PoolState::Joining,
                };
                s.states.push((name.to_owned(), state));
            }
            s.states.sort_by(|a, b| a.0.cmp(&b.0));
        }
        out.insert(folder, s);
    }
    out
}

fn too_many_refs(path: &Path) -> bool {
    gix::open_opts(path, gix::open::Options::isolated()).is_ok_and(|r| {
        r.references().is_ok_and(|refs| {
            refs.all()
                .is_ok_and(|all| all.take(MAX_MEMBER_REFS + 1).count() > MAX_MEMBER_REFS)
        })
    })
}

/// Bytes of `objects/pack/*.pack` of the repo at `git_dir`.
pub fn pack_bytes(git_dir: &Path) -> u64 {
    fs::read_dir(git_dir.join("objects/pack"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// A pool is consolidated at most this often (plan C19): after a member's clone or a
/// fetch that brought [`CONSOLIDATE_AFTER_BYTES`], debounced.
pub const CONSOLIDATE_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// A member's fetch that brought at least this much (its new pack) makes its pool due
/// for a consolidation (plan C19); smaller ones wait for the next clone or big fetch
/// (safe: a prune refreshes every namespace first).
pub const CONSOLIDATE_AFTER_BYTES: u64 = 1 << 20;
/// A pool is pruned at most this often (plan C9 (b)).
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Objects unreachable from every namespace this long leave the pool at a prune (a grace
/// for by-SHA readers; safety does not depend on it, see [`prune`]).
pub const PRUNE_EXPIRE: &str = "2.weeks.ago";

/// The git arguments of a consolidation's pool repack (never deletes an object).
pub const CONSOLIDATE_REPACK: &[&str] = &[
    "-c",
    "repack.writeBitmaps=false",
    "repack",
    "-d",
    "-l",
    "-q",
    "--geometric=2",
];
/// The git arguments of a prune's pool repack, before `--cruft-expiration=<expire>`.
pub const PRUNE_REPACK: &[&str] = &[
    "-c",
    "repack.writeBitmaps=false",
    "repack",
    "-a",
    "-d",
    "-l",
    "-q",
    "--cruft",
];

const CONSOLIDATED_KEY: &str = "gitmirror.consolidated";
const PRUNED_KEY: &str = "gitmirror.pruned";

/// The mirrors in `root` that borrow from `pool` now (their alternates point at it), as
/// (member name, path). One directory listing and one alternates read per entry of the
/// project folder.
pub fn live_members(root: &Path, pool: &Path) -> Vec<(String, PathBuf)> {
    let Some(folder) = pool_folder(root, pool) else {
        return Vec::new();
    };
    let objects = normalize(&std::path::absolute(pool.join("objects")).unwrap_or_default());
    let dir = root.join(&folder);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".git")) else {
            continue;
        };
        let path = std::path::absolute(e.path()).unwrap_or_else(|_| e.path());
        if crate::mirror::valid_id(&format!("{folder}/{name}"))
            && read_alternates(&path).is_ok_and(|t| t.is_some_and(|t| normalize(&t) == objects))
        {
            out.push((name.to_owned(), path));
        }
    }
    out.sort();
    out
}

/// Trashed mirrors (entries of `trash`) that borrow from `pool`.
pub fn trashed_members(trash: &Path, root: &Path, pool: &Path) -> Vec<PathBuf> {
    let Some(folder) = pool_folder(root, pool) else {
        return Vec::new();
    };
    let prefix = format!("{}_", trash_stem(&folder));
    let objects = normalize(&std::path::absolute(pool.join("objects")).unwrap_or_default());
    let Ok(entries) = fs::read_dir(trash) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| read_alternates(p).is_ok_and(|t| t.is_some_and(|t| normalize(&t) == objects)))
        .collect()
}

/// Unix seconds of the pool's last consolidation or prune (in its git config).
pub fn last_time(pool: &Path, prune: bool) -> Option<u64> {
    config_value(pool, if prune { PRUNED_KEY } else { CONSOLIDATED_KEY })?
        .parse()
        .ok()
}

fn set_time(pool: &Path, prune: bool, secs: u64) -> Result<(), PoolError> {
    let key = if prune { PRUNED_KEY } else { CONSOLIDATED_KEY };
    git(pool, &["config", key, &secs.to_string()])?;
    Ok(())
}

/// What [`consolidate`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Consolidated {
    /// Namespaces refreshed from their members.
    pub refreshed: usize,
}

/// Pool operation (a) (plan C9): bring every live member's refs into its namespace (a
/// local fetch: the pool gains what members received since), then `git repack -d -l
/// --geometric=2`. Never deletes an object: the fetch only adds, the geometric repack
/// writes its new pack before it deletes the packs it rolled up (kill -9 leaves every
/// object in at least one pack). May run while members fetch; never while a member
/// repacks or the pool is pruned (the caller's [`ProjectLocks`]). A member that fails
/// to refresh keeps its old namespace and is named in the error after the others ran.
pub fn consolidate(root: &Path, pool: &Path, now_secs: u64) -> Result<Consolidated, PoolError> {
    let mut out = Consolidated::default();
    let mut failed = Vec::new();
    for (name, path) in live_members(root, pool) {
        match add_namespace(pool, &path, &name) {
            Ok(()) => out.refreshed += 1,
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    git(pool, CONSOLIDATE_REPACK)?;
    if last_time(pool, true).is_none() {
        // The first week counts from the first consolidation.
        set_time(pool, true, now_secs)?;
    }
    set_time(pool, false, now_secs)?;
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(PoolError::Git(format!(
            "{}: namespaces not refreshed: {}",
            pool.display(),
            failed.join("; ")
        )))
    }
}

/// What [`prune`] did.
#[derive(Debug, PartialEq)]
pub enum Pruned {
    Done {
        refreshed: usize,
        dropped: usize,
    },
    /// Not pruned, and why (a trashed member, refs outside any namespace).
    Skipped(String),
}

/// Pool operation (b) (plan C9): under an **exclusive** project lock (no member op of the
/// project running: the caller's [`ProjectLocks`]), refresh every member's namespace,
/// drop the namespaces of mirrors that no longer borrow from the pool, then a cruft
/// repack that deletes objects unreachable from every namespace for longer than
/// `expire`. Safe because every object a member can reach is reachable from its
/// namespace at that instant (the refresh), and no member can gain a ref meanwhile (the
/// lock). Skipped while a trashed member borrows from the pool (its refs are not kept
/// exactly: prune again after the trash is purged) or the pool has refs outside any
/// namespace.
pub fn prune(
    root: &Path,
    trash: &Path,
    pool: &Path,
    expire: &str,
    now_secs: u64,
) -> Result<Pruned, PoolError> {
    let found = namespaces(pool)?;
    if let Some(stray) = found.strays.first() {
        return Ok(Pruned::Skipped(format!(
            "{} refs outside any member namespace (e.g. {stray})",
            found.stray_count
        )));
    }
    if let Some(t) = trashed_members(trash, root, pool).first() {
        return Ok(Pruned::Skipped(format!(
            "a trashed member borrows from it ({})",
            t.display()
        )));
    }
    let live = live_members(root, pool);
    for (name, path) in &live {
        add_namespace(pool, path, name)?;
    }
    let mut dropped = 0;
    for name in found.members.keys() {
        if !live.iter().any(|(n, _)| n == name) {
            drop_namespace(pool, name)?;
            dropped += 1;
        }
    }
    let expiry = format!("--cruft-expiration={expire}");
    let mut args = PRUNE_REPACK.to_vec();
    args.push(&expiry);
    git(pool, &args)?;
    set_time(pool, true, now_secs)?;
    Ok(Pruned::Done {
        refreshed: live.len(),
        dropped,
    })
}

/// What runs on a project (plan C10), for [`ProjectLocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectOp {
    /// A member's clone, fetch or disposal.
    Member,
    /// A member's maintenance pass (its `repack -a -d -l`, verify, re-clone).
    MemberRepack,
    /// Pool operation (a): [`consolidate`].
    Consolidate,
    /// Pool operation (b): [`prune`].
    Prune,
    /// Existing plain mirrors join the pool (plan step 7): exclusive, like a prune.
    Migrate,
}

#[derive(Debug, Default)]
struct Held {
    member: usize,
    repack: usize,
    consolidate: bool,
    prune: bool,
}

/// The project lock table (plan C10). A consolidation excludes member repacks; a prune
/// excludes every member op; one pool operation per worker at a time. Pure bookkeeping:
/// the worker's loop asks before it starts an op and tells when it ended.
///
/// An exclusive op (prune, migration) waits until no member op of its project runs; on a
/// busy project (many members, short intervals) that moment might never come, so the
/// worker names the one project it wants next ([`ProjectLocks::drain`]): no new member
/// op starts there, the running ones end (within `fetch.timeout`), the op starts.
#[derive(Debug, Default)]
pub struct ProjectLocks {
    held: std::collections::HashMap<String, Held>,
    pool_ops: usize,
    draining: Option<String>,
}

impl ProjectLocks {
    /// Whether `op` may start on `project` now.
    pub fn may_start(&self, project: &str, op: ProjectOp) -> bool {
        let h = self.held.get(project);
        let consolidating = h.is_some_and(|h| h.consolidate);
        let pruning = h.is_some_and(|h| h.prune);
        let draining = self.draining.as_deref() == Some(project);
        match op {
            ProjectOp::Member => !pruning && !draining,
            ProjectOp::MemberRepack => !pruning && !consolidating && !draining,
            ProjectOp::Consolidate => self.pool_ops == 0 && h.is_none_or(|h| h.repack == 0),
            ProjectOp::Prune | ProjectOp::Migrate => {
                self.pool_ops == 0 && h.is_none_or(|h| h.member == 0 && h.repack == 0)
            }
        }
    }

    /// Start `op` on `project` if it may; whether it did.
    pub fn start(&mut self, project: &str, op: ProjectOp) -> bool {
        if !self.may_start(project, op) {
            return false;
        }
        let h = self.held.entry(project.to_owned()).or_default();
        match op {
            ProjectOp::Member => h.member += 1,
            ProjectOp::MemberRepack => h.repack += 1,
            ProjectOp::Consolidate => h.consolidate = true,
            ProjectOp::Prune | ProjectOp::Migrate => {
                h.prune = true;
                if self.draining.as_deref() == Some(project) {
                    self.draining = None;
                }
            }
        }
        if matches!(
            op,
            ProjectOp::Consolidate | ProjectOp::Prune | ProjectOp::Migrate
        ) {
            self.pool_ops += 1;
        }
        true
    }

    /// `op` on `project` ended (however).
    pub fn finish(&mut self, project: &str, op: ProjectOp) {
        let Some(h) = self.held.get_mut(project) else {
            return;
        };
        match op {
            ProjectOp::Member => h.member = h.member.saturating_sub(1),
            ProjectOp::MemberRepack => h.repack = h.repack.saturating_sub(1),
            ProjectOp::Consolidate => h.consolidate = false,
            ProjectOp::Prune | ProjectOp::Migrate => h.prune = false,
        }
        if matches!(
            op,
            ProjectOp::Consolidate | ProjectOp::Prune | ProjectOp::Migrate
        ) {
            self.pool_ops = self.pool_ops.saturating_sub(1);
        }
        if h.member == 0 && h.repack == 0 && !h.consolidate && !h.prune {
            self.held.remove(project);
        }
    }

    /// Whether any pool operation runs.
    pub fn pool_op_running(&self) -> bool {
        self.pool_ops > 0
    }

    /// Hold new member ops of `project` back until its exclusive op starts (`None`: of no
    /// project). One project at a time.
    pub fn drain(&mut self, project: Option<&str>) {
        if self.draining.as_deref() != project {
            self.draining = project.map(str::to_owned);
        }
    }
}

/// The project folder of a repo id (`a/abc/x` → `a/abc`), `None` without one.
pub fn project_of(id: &str) -> Option<&str> {
    id.rsplit_once('/').map(|(f, _)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §14 (plan C5): names that are not valid ref components go through the hex
    /// codec and come back; junk is an error, never a panic.
    #[test]
    fn spec_14_namespace_codec_roundtrip() {
        for name in ["foo.lock", "a..b", "x.", "linux-next", "A+b_c"] {
            let ns = namespace(name);
            assert!(ns.starts_with(MEMBERS_PREFIX) && ns.ends_with('/'), "{ns}");
            let refname = format!("{ns}refs/heads/main");
            let out = git(Path::new("."), &["check-ref-format", refname.as_str()]);
            assert!(out.is_ok(), "{refname} is not a valid ref: {out:?}");
            let (back, rest) = decode_namespace(&refname).unwrap();
            assert_eq!(back, name);
            assert_eq!(rest, "refs/heads/main");
        }
        for junk in [
            "refs/heads/main",
            "refs/members/",
            "refs/members/6/HEAD",
            "refs/members/zz/HEAD",
            "refs/members/2f2f/HEAD", // "//"
            "refs/members/2e2e/HEAD", // ".."
            "refs/members/ff/HEAD",   // not UTF-8
            "refs/members/666f6f",
        ] {
            assert!(decode_namespace(junk).is_err(), "{junk}");
        }
    }

    /// SPEC §14: the pool path and the relative alternates path of a member, and of the
    /// same member in a trash beside the mirror directory.
    /// SPEC §14 (plan C9, C10): a prune waits for the project's member ops; on a busy
    /// project new ones would keep starting, so the project drains: no new member op
    /// there (others go on), the prune starts when the running ones end, and the drain
    /// ends with its start.
    #[test]
    fn spec_14_busy_project_drains_for_its_prune() {
        let mut locks = ProjectLocks::default();
        assert!(locks.start("a/abc", ProjectOp::Member));
        assert!(!locks.may_start("a/abc", ProjectOp::Prune));
        // Without draining, another fetch would start and the prune wait on.
        assert!(locks.may_start("a/abc", ProjectOp::Member));
        locks.drain(Some("a/abc"));
        assert!(!locks.may_start("a/abc", ProjectOp::Member));
        assert!(!locks.may_start("a/abc", ProjectOp::MemberRepack));
        assert!(locks.may_start("b/bcd", ProjectOp::Member));
        locks.finish("a/abc", ProjectOp::Member);
        assert!(locks.start("a/abc", ProjectOp::Prune));
        locks.finish("a/abc", ProjectOp::Prune);
        assert!(
            locks.may_start("a/abc", ProjectOp::Member),
            "the drain ended"
        );
        locks.drain(Some("a/abc"));
        locks.drain(None);
        assert!(locks.may_start("a/abc", ProjectOp::Member));
    }

    #[test]
    fn spec_14_layout_paths() {
        let root = Path::new("/srv/repos");
        let pool = pool_path(root, "l/linux/linux-next").unwrap();
        assert_eq!(pool, Path::new("/srv/repos/.pools/l/linux.git"));
        assert!(pool_path(root, "single").is_err());
        assert!(pool_path(root, "a/../b").is_err());
        assert_eq!(member_name("l/linux/linux-next"), "linux-next");
        assert_eq!(
            relative(
                Path::new("/srv/repos/l/linux/linux-next.git/objects"),
                &pool.join("objects")
            ),
            Path::new("../../../../.pools/l/linux.git/objects")
        );
        assert_eq!(
            relative(
                Path::new("/srv/repos.trash/l_linux_linux-next-5.git/objects"),
                &pool.join("objects")
            ),
            Path::new("../../../repos/.pools/l/linux.git/objects")
        );
        assert_eq!(
            trash_stems("l_linux_linux-next.1-1700000000.git"),
            vec!["l_linux_linux-next.1", "l_linux_linux-next"]
        );
        assert_eq!(trash_stem("l/linux/linux_next"), "l_linux_linux_next");
        assert!(trash_stems("junk").is_empty());
        assert_eq!(pool_folder(root, &pool).as_deref(), Some("l/linux"));
    }

    /// A small model of the pool rules (plan C9, C10, R1): members' own objects and refs,
    /// the pool's objects and namespaces, ops that take several steps and are admitted by
    /// the real [`ProjectLocks`], and kill -9 (every op in flight gone, locks reset).
    /// Objects stand alone (a ref reaches only its own object): enough for C9's race.
    mod model {
        use super::super::{ProjectLocks, ProjectOp};
        use std::collections::{BTreeMap, BTreeSet};

        pub const MEMBERS: usize = 2;
        const P: &str = "a/abc";

        #[derive(Debug, Clone)]
        pub enum Action {
            /// Upstream of member `m` sets (or deletes) ref `r`.
            Upstream(usize, u8, Option<u8>),
            StartFetch(usize),
            StartConsolidate,
            StartRepack(usize),
            StartPrune,
            /// Advance the `i`-th op in flight (modulo their number) one step.
            Step(usize),
            Kill,
        }

        #[derive(Debug)]
        enum Op {
            /// Wants computed at the start against member ∪ pool (`has_object` sees the pool).
            Fetch {
                m: usize,
                wants: BTreeSet<u8>,
                refs: BTreeMap<u8, u8>,
            },
            Consolidate {
                refreshed: bool,
            },
            Repack {
                m: usize,
            },
            Prune {
                refreshed: bool,
            },
        }

        #[derive(Default)]
        pub struct World {
            upstream: [BTreeMap<u8, u8>; MEMBERS],
            local: [BTreeSet<u8>; MEMBERS],
            refs: [BTreeMap<u8, u8>; MEMBERS],
            pool: BTreeSet<u8>,
            ns: [BTreeMap<u8, u8>; MEMBERS],
            locks: ProjectLocks,
            inflight: Vec<Op>,
            /// The flawed variants the test shows would lose objects.
            pub no_refresh_before_prune: bool,
            pub no_locks: bool,
        }

        impl World {
            fn start(&mut self, op: ProjectOp) -> bool {
                self.no_locks || self.locks.start(P, op)
            }

            fn finish(&mut self, op: ProjectOp) {
                if !self.no_locks {
                    self.locks.finish(P, op);
                }
            }

            fn refresh(&mut self) {
                for m in 0..MEMBERS {
                    self.ns[m] = self.refs[m].clone();
                    for o in self.refs[m].values() {
                        if self.local[m].contains(o) {
                            self.pool.insert(*o);
                        }
                    }
                }
            }

            pub fn apply(&mut self, a: &Action) {
                match *a {
                    Action::Upstream(m, r, Some(o)) => {
                        self.upstream[m].insert(r, o);
                    }
                    Action::Upstream(m, r, None) => {
                        self.upstream[m].remove(&r);
                    }
                    Action::StartFetch(m) => {
                        if self.start(ProjectOp::Member) {
                            let refs = self.upstream[m].clone();
                            let wants = refs
                                .values()
                                .filter(|o| !self.local[m].contains(o) && !self.pool.contains(o))
                                .copied()
                                .collect();
                            self.inflight.push(Op::Fetch { m, wants, refs });
                        }
                    }
                    Action::StartConsolidate => {
                        if self.start(ProjectOp::Consolidate) {
                            self.inflight.push(Op::Consolidate { refreshed: false });
                        }
                    }
                    Action::StartRepack(m) => {
                        if self.start(ProjectOp::MemberRepack) {
                            self.inflight.push(Op::Repack { m });
                        }
                    }
                    Action::StartPrune => {
                        if self.start(ProjectOp::Prune) {
                            self.inflight.push(Op::Prune { refreshed: false });
                        }
                    }
                    Action::Step(i) => {
                        if self.inflight.is_empty() {
                            return;
                        }
                        let i = i % self.inflight.len();
                        match &mut self.inflight[i] {
                            Op::Consolidate { refreshed } if !*refreshed => {
                                *refreshed = true;
                                self.refresh();
                            }
                            Op::Prune { refreshed } if !*refreshed => {
                                *refreshed = true;
                                if !self.no_refresh_before_prune {
                                    self.refresh();
                                }
                            }
                            _ => match self.inflight.remove(i) {
                                Op::Fetch { m, wants, refs } => {
                                    self.local[m].extend(wants);
                                    self.refs[m] = refs;
                                    self.finish(ProjectOp::Member);
                                }
                                // The geometric repack: objects move between packs only.
                                Op::Consolidate { .. } => self.finish(ProjectOp::Consolidate),
                                Op::Repack { m } => {
                                    let pool = &self.pool;
                                    self.local[m].retain(|o| !pool.contains(o));
                                    self.finish(ProjectOp::MemberRepack);
                                }
                                Op::Prune { .. } => {
                                    let reach: BTreeSet<u8> =
                                        self.ns.iter().flat_map(|n| n.values().copied()).collect();
                                    self.pool.retain(|o| reach.contains(o));
                                    self.finish(ProjectOp::Prune);
                                }
                            },
                        }
                    }
                    Action::Kill => {
                        self.inflight.clear();
                        self.locks = ProjectLocks::default();
                    }
                }
            }

            /// A member ref whose object is neither the member's nor the pool's.
            pub fn lost(&self) -> Option<String> {
                (0..MEMBERS).find_map(|m| {
                    self.refs[m]
                        .iter()
                        .find(|(_, o)| !self.local[m].contains(o) && !self.pool.contains(o))
                        .map(|(r, o)| format!("member {m} ref {r} -> object {o} is gone"))
                })
            }
        }
    }

    fn action() -> impl proptest::strategy::Strategy<Value = model::Action> {
        use model::{Action, MEMBERS};
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..MEMBERS, 0..2u8, proptest::option::of(0..3u8))
                .prop_map(|(m, r, o)| Action::Upstream(m, r, o)),
            3 => (0..MEMBERS).prop_map(Action::StartFetch),
            2 => Just(Action::StartConsolidate),
            2 => (0..MEMBERS).prop_map(Action::StartRepack),
            2 => Just(Action::StartPrune),
            6 => (0..4usize).prop_map(Action::Step),
            1 => Just(Action::Kill),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]
        /// SPEC §14, plan R1/C9/C10: under the project lock rules (consolidation never
        /// with a member repack, prune exclusive and right after a refresh of every
        /// namespace), no interleaving of fetches, consolidations, member repacks,
        /// prunes and kill -9 leaves a member ref without its object.
        #[test]
        fn spec_14_no_interleaving_loses_an_object(
            actions in proptest::collection::vec(action(), 1..120)
        ) {
            let mut w = model::World::default();
            for a in &actions {
                w.apply(a);
                if let Some(lost) = w.lost() {
                    proptest::prop_assert!(false, "{lost} after {a:?}");
                }
            }
        }
    }

    /// The model can fail: C9's race (an object left unreachable in the pool, re-added
    /// upstream, fetched without a transfer) loses it to a prune without the refresh;
    /// and a prune that ignores the lock loses what a running fetch counted as had.
    #[test]
    fn spec_14_model_flawed_rules_lose_objects() {
        use model::Action::*;
        let race = [
            Upstream(0, 0, Some(1)),
            StartFetch(0),
            Step(0),
            StartConsolidate,
            Step(0),
            Step(0),
            Upstream(0, 0, None),
            StartFetch(0),
            Step(0),
            StartConsolidate,
            Step(0),
            Step(0),
            StartRepack(0),
            Step(0),
            Upstream(0, 0, Some(1)),
            StartFetch(0),
            Step(0),
            StartPrune,
            Step(0),
            Step(0),
        ];
        let run = |w: &mut model::World, actions: &[model::Action]| {
            for a in actions {
                w.apply(a);
            }
            w.lost()
        };
        let mut w = model::World::default();
        w.no_refresh_before_prune = true;
        assert!(run(&mut w, &race).is_some(), "prune without refresh");
        assert!(run(&mut model::World::default(), &race).is_none());
        // No locks: a fetch starts (the object is had in the pool), a prune runs, the
        // fetch finishes.
        let unlocked = [
            Upstream(0, 0, Some(1)),
            StartFetch(0),
            Step(0),
            StartConsolidate,
            Step(0),
            Step(0),
            StartRepack(0),
            Step(0),
            Upstream(0, 0, None),
            StartFetch(0),
            Step(0),
            Upstream(1, 0, Some(1)),
            StartFetch(1),
            StartPrune,
            Step(1),
            Step(1),
            Step(0),
        ];
        let mut w = model::World::default();
        w.no_locks = true;
        assert!(run(&mut w, &unlocked).is_some(), "prune without the lock");
        assert!(run(&mut model::World::default(), &unlocked).is_none());
    }

    /// Bad alternates files give errors that name the file.
    #[test]
    fn spec_14_broken_alternates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.git");
        fs::create_dir_all(m.join("objects/info")).unwrap();
        assert!(read_alternates(&m).unwrap().is_none());
        for (text, why) in [
            ("", "0 paths"),
            ("/a\n/b\n", "2 paths"),
            ("../../nowhere\n", "not a directory"),
        ] {
            fs::write(m.join("objects/info/alternates"), text).unwrap();
            let e = read_alternates(&m).unwrap_err().to_string();
            assert!(e.contains("alternates") && e.contains(why), "{e}");
        }
        fs::write(m.join("objects/info/alternates"), [0xff, b'\n']).unwrap();
        assert!(
            read_alternates(&m)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }
}
