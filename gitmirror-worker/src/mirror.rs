//! Bare mirrors on disk (SPEC §7.1), cloned and fetched with gix.
//!
//! Everything here is blocking: call it from `spawn_blocking`, never on the async runtime.
//!
//! gix 0.90 needs help to behave like `git clone --mirror` / `git fetch --prune`
//! (FACTS.md): the ls-refs prefix filter must be off or a `+refs/*:refs/*` refspec lists
//! only HEAD; `remote.origin.mirror` is not written; there is no prune; a fetch that
//! updates no ref leaves a `.keep` file; packs are written mode 0600.

use crate::state::Refs;
use gitmirror_wire::FailureClass;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// Where half-done clones live until they are complete.
pub const TMP_DIR: &str = ".tmp";
/// Where mirrors of repos removed from the index wait before deletion.
pub const TRASH_DIR: &str = ".trash";
/// How long a trashed mirror is kept.
pub const TRASH_KEEP_SECS: u64 = 72 * 3600;
/// Above this many packs a mirror is repacked after a fetch (SPEC §7.1: at most 50).
const MAX_PACKS: usize = 50;
const MIRROR_REFSPEC: &str = "+refs/*:refs/*";
/// Longest failure message kept (they go into state, the wire and the API).
const MAX_MESSAGE: usize = 600;

/// A failed clone or fetch, classified (SPEC §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
}

impl Failure {
    pub fn local(message: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Local,
            message: truncate(message.into()),
        }
    }

    fn io(action: &str, path: &Path, e: &io::Error) -> Self {
        Self::local(format!("cannot {action} {}: {e}", path.display()))
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
}

/// What [`Mirrors::prepare`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub tmp_removed: usize,
    pub trash_removed: usize,
}

/// The mirror directory and its bare mirrors at `<root>/<repo id>.git`.
#[derive(Debug, Clone)]
pub struct Mirrors {
    root: PathBuf,
}

impl Mirrors {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
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

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn trash_dir(&self) -> PathBuf {
        self.root.join(TRASH_DIR)
    }

    /// At start: create the directories, remove leftovers of interrupted clones, and delete
    /// trashed mirrors older than 72 h.
    pub fn prepare(&self) -> Result<Cleanup, Failure> {
        for dir in [&self.root, &self.tmp_dir(), &self.trash_dir()] {
            fs::create_dir_all(dir).map_err(|e| Failure::io("create directory", dir, &e))?;
        }
        let tmp = self.tmp_dir();
        let entries = fs::read_dir(&tmp).map_err(|e| Failure::io("list", &tmp, &e))?;
        let mut tmp_removed = 0;
        for entry in entries {
            let path = entry.map_err(|e| Failure::io("list", &tmp, &e))?.path();
            remove_any(&path).map_err(|e| Failure::io("remove leftover clone", &path, &e))?;
            tmp_removed += 1;
        }
        Ok(Cleanup {
            tmp_removed,
            trash_removed: self.purge_trash(unix_secs()),
        })
    }

    /// Delete trashed mirrors older than [`TRASH_KEEP_SECS`]. Entries are named
    /// `<id with / as _>-<unix time>.git`; the time in the name counts.
    pub fn purge_trash(&self, now_secs: u64) -> usize {
        let dir = self.trash_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let trashed_at = name
                .strip_suffix(".git")
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, t)| t.parse::<u64>().ok());
            let Some(t) = trashed_at else {
                tracing::warn!(path = %path.display(), "unexpected entry in the trash directory; leaving it alone");
                continue;
            };
            if now_secs.saturating_sub(t) >= TRASH_KEEP_SECS {
                match remove_any(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot delete trashed mirror: {e}")
                    }
                }
            }
        }
        removed
    }

    /// Clone `url` as a new mirror of `id`: into `.tmp/`, renamed into place only when
    /// complete. Returns the refs of the new mirror.
    pub fn clone_new(
        &self,
        id: &str,
        url: &str,
        interrupt: &AtomicBool,
    ) -> Result<Fetched, Failure> {
        let final_path = self.path(id);
        let tmp = self.tmp_dir().join(unique_name(id));
        let result = self.clone_into(&tmp, url, interrupt).and_then(|refs| {
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
            fs::rename(&tmp, &final_path)
                .map_err(|e| Failure::io("move the finished clone to", &final_path, &e))?;
            Ok(Fetched {
                refs,
                url_changed: false,
            })
        });
        if result.is_err() && tmp.exists() {
            let _ = remove_any(&tmp);
        }
        result
    }

    fn clone_into(&self, tmp: &Path, url: &str, interrupt: &AtomicBool) -> Result<Refs, Failure> {
        let mut prepare = gix::prepare_clone_bare(url, tmp)
            .map_err(|e| classify(&e, Stage::Setup))?
            .with_fetch_options(fetch_options())
            .configure_remote(|remote| {
                remote.with_refspecs(Some(MIRROR_REFSPEC), gix::remote::Direction::Fetch)
            });
        let (repo, _outcome) = prepare
            .fetch_only(gix::progress::Discard, interrupt)
            .map_err(|e| classify(&e, Stage::Network))?;
        set_config(
            repo.git_dir(),
            &[("remote", Some("origin"), "mirror", "true")],
        )?;
        tidy_packs(repo.git_dir())?;
        read_refs(&repo)
    }

    /// Fetch an existing mirror from `url` with prune, rewriting `remote.origin.url` first
    /// if the upstream URL changed (the mirror is kept, never re-cloned). Returns its refs.
    pub fn fetch(&self, id: &str, url: &str, interrupt: &AtomicBool) -> Result<Fetched, Failure> {
        let path = self.path(id);
        let mut repo = open(&path)?;
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
            repo = open(&path)?;
        }
        let remote = repo
            .find_remote("origin")
            .map_err(|e| classify(&e, Stage::Local))?;
        let outcome = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| classify(&e, Stage::Network))?
            .prepare_fetch(gix::progress::Discard, fetch_options())
            .map_err(|e| classify(&e, Stage::Network))?
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| classify(&e, Stage::Network))?;
        let advertised: HashSet<&[u8]> = outcome
            .ref_map
            .mappings
            .iter()
            .filter_map(|m| m.local.as_ref().map(|l| l.as_slice()))
            .collect();
        prune(&repo, &advertised)?;
        let packs = tidy_packs(repo.git_dir())?;
        if packs > MAX_PACKS {
            repack(repo.git_dir());
        }
        Ok(Fetched {
            refs: read_refs(&repo)?,
            url_changed,
        })
    }

    /// Delete a mirror (the repo moved to another worker that has a complete mirror).
    pub fn delete(&self, id: &str) -> io::Result<()> {
        let path = self.path(id);
        match remove_any(&path) {
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

    /// Move a mirror to `.trash/<id with / as _>-<unix time>.git` (the repo left the index).
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

/// Whether `url` is one the worker is willing to hand to git (SPEC §3.2): no `ext::` or
/// `fd::` transports, no leading `-`, no whitespace or control characters.
pub fn valid_url(url: &str) -> bool {
    !url.is_empty()
        && !url.starts_with('-')
        && !url.starts_with("ext::")
        && !url.starts_with("fd::")
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Fetch options for clone and fetch: the prefix filter off works around the gix 0.90 bug
/// that makes `+refs/*:refs/*` list only HEAD (FACTS.md).
fn fetch_options() -> gix::remote::ref_map::Options {
    gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    }
}

fn open(path: &Path) -> Result<gix::Repository, Failure> {
    gix::open(path).map_err(|e| {
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

/// Delete local refs the remote no longer advertises (gix has no prune).
fn prune(repo: &gix::Repository, advertised: &HashSet<&[u8]>) -> Result<(), Failure> {
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
            fs::remove_file(&path).map_err(|e| Failure::io("remove", &path, &e))?;
            continue;
        }
        if name.ends_with(".pack") {
            packs += 1;
        }
        let meta = entry
            .metadata()
            .map_err(|e| Failure::io("stat", &path, &e))?;
        let mode = meta.permissions().mode();
        if meta.is_file() && mode & 0o044 != 0o044 {
            fs::set_permissions(&path, fs::Permissions::from_mode((mode | 0o444) & 0o7777))
                .map_err(|e| Failure::io("chmod", &path, &e))?;
        }
    }
    Ok(packs)
}

/// Merge packs with the git binary (gix has no repack). A failure is logged, not fatal.
fn repack(git_dir: &Path) {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["repack", "-a", "-d", "-q"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let _ = tidy_packs(git_dir);
        }
        Ok(o) => tracing::warn!(
            mirror = %git_dir.display(),
            "git repack failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!(mirror = %git_dir.display(), "cannot run git repack: {e}"),
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Preparing a clone: bad URL or target directory.
    Setup,
    /// Talking to the upstream (and writing what it sent).
    Network,
    /// Reading or writing the local mirror.
    Local,
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

/// Classify a gix error (SPEC §7.3). gix's own classes help, the text decides the rest.
fn classify(e: &gix::Error, stage: Stage) -> Failure {
    let message = truncate(chain(e));
    let class = classify_text(&message, stage, e.dominant_class());
    Failure { class, message }
}

fn classify_text(
    message: &str,
    stage: Stage,
    gix_class: Option<gix::error::Class>,
) -> FailureClass {
    use gix::error::Class;
    let m = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if has(&[
        "no space left",
        "disk quota",
        "read-only file system",
        "corrupt",
        ".lock",
        "lock file",
    ]) {
        return FailureClass::Local;
    }
    if stage == Stage::Local {
        return FailureClass::Local;
    }
    if has(&["429", "too many requests", "rate limit"]) {
        return FailureClass::RateLimited;
    }
    if has(&[
        "not found",
        "404",
        "410",
        "401",
        "403",
        "does not exist",
        "not exported",
        "access denied",
        "does not appear to be a git repository",
        "no such repository",
        "authentication",
        "could not read username",
        "permission denied (publickey",
    ]) {
        return FailureClass::Gone;
    }
    match gix_class {
        Some(Class::Unauthenticated | Class::PermissionDenied) => FailureClass::Gone,
        Some(Class::NotFound) if stage == Stage::Network => FailureClass::Gone,
        Some(Class::ResourceExhaustion(_)) => FailureClass::Local,
        _ if stage == Stage::Setup && has(&["url"]) => FailureClass::Gone,
        _ => FailureClass::Transient,
    }
}

/// A name under `.tmp/` that no other clone uses.
fn unique_name(id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n}.git", id.replace('/', "_"), std::process::id())
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
        ] {
            assert!(!valid_url(bad), "{bad:?}");
        }
    }

    #[test]
    fn spec_7_3_classification_by_text() {
        let t = |m: &str, s: Stage| classify_text(m, s, None);
        assert_eq!(
            t(
                "access denied or repository not exported: /x",
                Stage::Network
            ),
            FailureClass::Gone
        );
        assert_eq!(t("HTTP status 404", Stage::Network), FailureClass::Gone);
        assert_eq!(
            t("received HTTP status 429", Stage::Network),
            FailureClass::RateLimited
        );
        assert_eq!(
            t("connection reset by peer", Stage::Network),
            FailureClass::Transient
        );
        assert_eq!(
            t("No space left on device", Stage::Network),
            FailureClass::Local
        );
        assert_eq!(t("cannot open", Stage::Local), FailureClass::Local);
        assert_eq!(
            t("refs/heads/x.lock exists", Stage::Network),
            FailureClass::Local
        );
    }

    #[test]
    fn spec_7_1_trash_is_purged_after_72h() {
        let d = tempfile::tempdir().unwrap();
        let m = Mirrors::new(d.path().to_owned());
        m.prepare().unwrap();
        fs::create_dir_all(m.path("a/abc/abc")).unwrap();
        let now = 1_000_000_000;
        let trashed = m.trash("a/abc/abc", now).unwrap().unwrap();
        assert_eq!(trashed, d.path().join(".trash/a_abc_abc-1000000000.git"));
        assert!(!d.path().join("a").exists(), "empty parents are removed");
        assert_eq!(m.trash("a/abc/abc", now).unwrap(), None);
        assert_eq!(m.purge_trash(now + TRASH_KEEP_SECS - 1), 0);
        assert!(trashed.exists());
        assert_eq!(m.purge_trash(now + TRASH_KEEP_SECS), 1);
        assert!(!trashed.exists());
    }

    #[test]
    fn spec_7_1_tmp_leftovers_removed_at_start() {
        let d = tempfile::tempdir().unwrap();
        let m = Mirrors::new(d.path().to_owned());
        fs::create_dir_all(d.path().join(".tmp/half-clone.git/objects")).unwrap();
        fs::write(d.path().join(".tmp/stray"), b"x").unwrap();
        let c = m.prepare().unwrap();
        assert_eq!(c.tmp_removed, 2);
        assert_eq!(fs::read_dir(d.path().join(".tmp")).unwrap().count(), 0);
    }
}
