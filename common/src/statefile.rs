//! Crash-safe, versioned state files.
//!
//! A state file is one header line `gitmirror-state <kind> v<version>` followed by JSON.
//! Writes go to a temporary file in the same directory, are fsynced, renamed over the old
//! file, and the directory is fsynced, so a crash leaves either the old or the new file.
//! A file that does not decode is an error naming the file and the way out; it is never
//! replaced with defaults.

use rustix::fs::{self, AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use serde::{Serialize, de::DeserializeOwned};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} state file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is unreadable ({detail}); the daemon will not guess its contents. \
         Restore it from a backup, or move it aside to start that part of the state afresh \
         (for example `mv {path} {path}.broken`)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("refusing {path}: it {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error(
        "state file {path} has format {found}, this version reads {kind} v{version}; \
         use a gitmirror release that knows that format"
    )]
    Version {
        path: PathBuf,
        kind: String,
        version: u32,
        found: String,
    },
}

fn header(kind: &str, version: u32) -> String {
    format!("gitmirror-state {kind} v{version}\n")
}

/// Write `value` to `path` crash-safely with mode `mode`.
pub fn write_json<T: Serialize>(
    path: &Path,
    kind: &str,
    version: u32,
    value: &T,
    mode: u32,
) -> Result<(), StateError> {
    let mut bytes = header(kind, version).into_bytes();
    serde_json::to_writer(&mut bytes, value).map_err(|e| StateError::Io {
        action: "encode",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

/// The whole of a state file; `Ok(None)` when it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    Ok(read_nofollow(path)?.map(|c| c.bytes))
}

/// Read a state file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(
    path: &Path,
    kind: &str,
    version: u32,
) -> Result<Option<T>, StateError> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let head =
        std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("header is not text".into()))?;
    let Some(found) = head.strip_prefix("gitmirror-state ") else {
        return Err(corrupt("missing `gitmirror-state` header".into()));
    };
    if format!("{found}\n") != header(kind, version)["gitmirror-state ".len()..] {
        let same_kind = found.split(' ').next() == Some(kind);
        if !same_kind {
            return Err(corrupt(format!("it holds {found:?}, expected {kind}")));
        }
        return Err(StateError::Version {
            path: path.to_owned(),
            kind: kind.to_owned(),
            version,
            found: found.to_owned(),
        });
    }
    serde_json::from_slice(&bytes[nl + 1..])
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

/// Replace `path` with `bytes`: temp file, fsync, rename, fsync of the directory.
///
/// Safe when root writes into a directory another user controls (`gitmirrord join-token
/// --rotate` run as root in the service user's state dir, issue 10 finding 2): every
/// call goes through one descriptor on the directory ([`open_dir`]); the temp file has a
/// random name and is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so no planted link is
/// followed; its mode, and when root writes its owner, are set on the open descriptor; a
/// `path` that is a symbolic link or not a regular file is refused, naming it. Run as
/// root, the new file gets the owner of the file it replaces, or else the directory's,
/// so the daemon's user can still read it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let io = |action, source: std::io::Error| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let (dir_path, name) = split(path)?;
    let dir = open_dir(dir_path)?;
    let existing = match fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Some(st),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(io("inspect", e.into())),
    };
    if let Some(st) = &existing {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Symlink => return Err(unsafe_path(path, SYMLINK)),
            _ => return Err(unsafe_path(path, "is not a regular file")),
        }
    }
    // Only root can give a file away; it gives it to whoever owns what it replaces.
    let owner = rustix::process::geteuid()
        .is_root()
        .then_some(match &existing {
            Some(st) => (st.st_uid, st.st_gid),
            None => dir.owner,
        });
    let mut tmp = OsString::from(".");
    tmp.push(name);
    // The `.{name}.tmp` prefix as before: leftovers of a crash are recognised by it.
    tmp.push(format!(".tmp{:016x}", rand::random::<u64>()));
    let file = fs::openat(
        &dir,
        tmp.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io("create a temp file for", e.into()))?;
    let mut file = File::from(file);
    let result = (|| {
        if let Some((uid, gid)) = owner {
            fs::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| io("set the owner of", e.into()))?;
        }
        // After the chown, which may clear set-id bits; and not subject to the umask.
        fs::fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|e| io("set the mode of", e.into()))?;
        file.write_all(bytes).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("fsync", e))?;
        fs::renameat(&dir, tmp.as_os_str(), &dir, name).map_err(|e| io("rename into", e.into()))?;
        fs::fsync(&dir).map_err(|e| io("fsync the directory of", e.into()))
    })();
    if result.is_err() {
        let _ = fs::unlinkat(&dir, tmp.as_os_str(), AtFlags::empty());
    }
    result
}

const SYMLINK: &str =
    "is a symbolic link; state files are never read or written through one (remove it)";

fn unsafe_path(path: &Path, reason: impl Into<String>) -> StateError {
    StateError::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// `path` as its directory and its last component.
fn split(path: &Path) -> Result<(&Path, &OsStr), StateError> {
    let name = path
        .file_name()
        .ok_or_else(|| unsafe_path(path, "does not name a file"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// A directory opened for `*at` calls, with its owner.
struct Dir {
    fd: OwnedFd,
    owner: (u32, u32),
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Open the directory state files live in. The rule (docs/design.md "State dir and index
/// files: no links followed"): the directory may be a symbolic link only if root or the
/// user running this owns the link (an operator's own link; one the service user planted
/// is refused), and it must not be writable by every user unless sticky.
fn open_dir(dir: &Path) -> Result<Dir, StateError> {
    let io = |action, e: Errno| StateError::Io {
        action,
        path: dir.to_owned(),
        source: e.into(),
    };
    let link = fs::lstat(dir).map_err(|e| io("inspect directory", e))?;
    if FileType::from_raw_mode(link.st_mode) == FileType::Symlink {
        let me = rustix::process::geteuid().as_raw();
        if link.st_uid != 0 && link.st_uid != me {
            return Err(unsafe_path(
                dir,
                format!(
                    "is a symbolic link owned by uid {}, neither root nor this process's user                      (uid {me}): whoever made it could point it anywhere; use the real                      directory in the config, or have root own the link",
                    link.st_uid
                ),
            ));
        }
    }
    let fd = fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open directory", e))?;
    let st = fs::fstat(&fd).map_err(|e| io("inspect directory", e))?;
    let mode = Mode::from_raw_mode(st.st_mode);
    if mode.contains(Mode::WOTH) && !mode.contains(Mode::SVTX) {
        return Err(unsafe_path(
            dir,
            format!(
                "is a directory every user can write to (mode {:o}): anyone could replace                  the files in it; run `chmod o-w {}`",
                mode.bits() & 0o7777,
                dir.display()
            ),
        ));
    }
    Ok(Dir {
        fd,
        owner: (st.st_uid, st.st_gid),
    })
}

/// A state file's bytes and the mode bits of the file they were read from.
pub struct Contents {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Read a state file without following links: `Ok(None)` when it does not exist; an
/// error naming it when it is a symbolic link, a FIFO, a device or a directory (opened
/// with `O_NOFOLLOW|O_NONBLOCK` and checked on the descriptor, so nothing swapped in
/// between a check and the open is followed and nothing blocks).
pub fn read_nofollow(path: &Path) -> Result<Option<Contents>, StateError> {
    let io = |action, e: std::io::Error| StateError::Io {
        action,
        path: path.to_owned(),
        source: e,
    };
    let (dir_path, name) = split(path)?;
    let dir = match open_dir(dir_path) {
        Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        d => d?,
    };
    let fd = match fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(unsafe_path(path, SYMLINK)),
        Err(e) => return Err(io("open", e.into())),
    };
    let st = fs::fstat(&fd).map_err(|e| io("inspect", e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(unsafe_path(path, "is not a regular file"));
    }
    let mut bytes = Vec::new();
    File::from(fd)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", e))?;
    Ok(Some(Contents {
        bytes,
        mode: Mode::from_raw_mode(st.st_mode).bits(),
    }))
}

/// Create `dir` (and parents) if missing, with a clear error.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct S {
        a: u32,
    }

    #[test]
    fn round_trip_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        assert_eq!(read_json::<S>(&p, "test", 1).unwrap(), None);
        write_json(&p, "test", 1, &S { a: 7 }, 0o600).unwrap();
        assert_eq!(read_json::<S>(&p, "test", 1).unwrap(), Some(S { a: 7 }));
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }

    #[test]
    fn garbage_and_truncation_are_loud() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        fs::write(&p, b"\x00\x01garbage").unwrap();
        let e = read_json::<S>(&p, "test", 1).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("move it aside"),
            "{e}"
        );
        write_json(&p, "test", 1, &S { a: 7 }, 0o600).unwrap();
        let full = fs::read(&p).unwrap();
        fs::write(&p, &full[..full.len() - 4]).unwrap();
        assert!(matches!(
            read_json::<S>(&p, "test", 1),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn other_version_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        write_json(&p, "test", 2, &S { a: 7 }, 0o600).unwrap();
        let e = read_json::<S>(&p, "test", 1).unwrap_err();
        assert!(matches!(e, StateError::Version { .. }), "{e}");
        assert!(e.to_string().contains("test v2"), "{e}");
    }

    const NOBODY: u32 = 65534;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    // Issue 10 finding 2: a link planted at the state file's own name is refused, naming
    // it, and its target is neither created nor written nor read. (Before the fix the
    // rename replaced the link harmlessly but reads followed it: seen failing in
    // trust::tests::issue10_f2_a_link_at_a_trust_file_is_refused and tests/tests/statedir.rs;
    // this test needs the new error variant, so it was not run on the old code.)
    #[test]
    fn issue10_f2_a_link_at_the_target_is_refused_and_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        let p = state.join("s.json");
        std::os::unix::fs::symlink(&outside, &p).unwrap();
        let e = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert!(matches!(e, StateError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(!outside.exists(), "the link's target was created");
        assert_eq!(names(&state), ["s.json"], "no temp file left");
        // Reading through it is refused too, with the target present.
        fs::write(&outside, b"secret of someone else").unwrap();
        let e = read_if_exists(&p).unwrap_err();
        assert!(matches!(e, StateError::Unsafe { .. }), "{e}");
        assert!(write_atomic(&p, b"x", 0o600).is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"secret of someone else");
    }

    // Issue 10 finding 2: the old temp name `.{name}.tmp{pid}` was predictable and opened
    // with O_CREAT|O_TRUNC, following a link planted there. Seen failing before the fix
    // (the outside file got the state file's bytes).
    #[test]
    fn issue10_f2_a_link_at_the_old_temp_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        let p = state.join("s.json");
        let old_tmp = state.join(format!(".s.json.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&outside, &old_tmp).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert!(!outside.exists(), "the planted temp link was followed");
        assert_eq!(fs::read(&p).unwrap(), b"new");
        let meta = fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    }

    // The mode is set on the descriptor, whatever the umask and whatever mode the file it
    // replaces had.
    #[test]
    fn issue10_f2_mode_is_exact_on_replace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        write_atomic(&p, b"new", 0o644).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
    }

    // A FIFO or a directory at a state file's name is refused on the descriptor and never
    // blocks the reader (O_NONBLOCK): the read runs in a thread waited for with a deadline.
    #[test]
    fn issue10_f2_a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || tx.send(read_if_exists(&q).map(|_| ())));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("reading a FIFO state file blocked");
        assert!(matches!(got, Err(StateError::Unsafe { .. })), "{got:?}");
        assert!(matches!(
            write_atomic(&p, b"x", 0o600),
            Err(StateError::Unsafe { .. })
        ));
    }

    // The directory rule: a world-writable directory without the sticky bit is refused.
    #[test]
    fn issue10_f2_a_world_writable_state_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let p = state.join("s.json");
        let e = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("every user can write"), "{e}");
        assert!(names(&state).is_empty());
        fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap();
        write_atomic(&p, b"x", 0o600).unwrap();
    }

    // The directory rule: a state dir that is a link owned by another user (the service
    // user replacing a directory it can write to) is refused; one owned by root or by us
    // is an operator's and is followed. Root only: only root can own a link as another uid.
    #[test]
    fn issue10_f2_a_state_dir_linked_by_another_user_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root to create a link owned by another uid");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = d.path().join("state");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link.join("s.json"), b"ok", 0o600).unwrap();
        assert_eq!(names(&real), ["s.json"]);
        std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
        let e = write_atomic(&link.join("t.json"), b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(read_if_exists(&link.join("s.json")).is_err());
        assert_eq!(names(&real), ["s.json"]);
    }

    // Root writing into a directory the service user owns leaves files that user can read:
    // a new file gets the directory's owner, a replaced one keeps its owner. Seen failing
    // before the fix (root-owned files).
    #[test]
    fn issue10_f2_root_writes_files_the_owner_of_the_state_dir_can_read() {
        if !is_root() {
            eprintln!("skipped: needs root to write as another uid");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
        let p = state.join("s.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY));
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(0)).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, 0));
        assert_eq!(fs::read(&p).unwrap(), b"two");
    }
}
