//! Crash-safe, versioned state files.
//!
//! A state file is one header line `gitmirror-state <kind> v<version>` followed by JSON.
//! Writes go to a temporary file in the same directory, are fsynced, renamed over the old
//! file, and the directory is fsynced, so a crash leaves either the old or the new file.
//! A file that does not decode is an error naming the file and the way out; it is never
//! replaced with defaults.

use serde::{Serialize, de::DeserializeOwned};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
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
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let io = |action, source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        fs::rename(&tmp, path).map_err(|e| io("rename into", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync the directory of", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create `dir` (and parents) if missing, with a clear error.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(|source| StateError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

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
}
