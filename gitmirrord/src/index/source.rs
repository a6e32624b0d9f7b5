//! Reading an index (SPEC §3.1, §3.3): a git repository through the `git` binary (a bare
//! clone in the index directory, no work tree), or a plain local directory read afresh on
//! every poll.

use super::IndexSource;
use super::layout::{self, File, Kind, MAX_FILE_SIZE};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
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

    /// The files of the index that have a layout role.
    pub fn into_files(self) -> Result<Vec<File>, String> {
        match self {
            Fetched::Dir { files, .. } => Ok(files),
            Fetched::Git { repo, commit } => read_tree(&repo, &commit),
        }
    }
}

/// Bring the index up to date: fetch a git index into `<dir>/<name>.git`, or read a
/// plain directory. Errors are one line for `last_error`.
pub fn fetch(source: &IndexSource, dir: &Path) -> Result<Fetched, String> {
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
    fetch_git(&repo, &remote, source.branch.as_deref())
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

fn fetch_git(repo: &Path, remote: &str, branch: Option<&str>) -> Result<Fetched, String> {
    if !repo.join("HEAD").is_file() {
        // Absent, or left half-created by a crash: start over.
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
        )?;
    }
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
    git(
        Some(repo),
        &[
            os("fetch"),
            os("--quiet"),
            os("--no-tags"),
            os("origin"),
            os(&refspec),
        ],
        None,
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

/// The files of `commit` with a layout role; contents through one `git cat-file --batch`.
fn read_tree(repo: &Path, commit: &str) -> Result<Vec<File>, String> {
    let listing = git(
        Some(repo),
        &[
            os("ls-tree"),
            os("-r"),
            os("-l"),
            os("-z"),
            os("--full-tree"),
            os(commit),
        ],
        None,
        LOCAL_TIMEOUT,
    )?;
    let mut files = Vec::new();
    // Index into `files` of each file whose blob is to be read.
    let mut wanted: Vec<(usize, String)> = Vec::new();
    for record in listing.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let bad = || {
            format!(
                "unexpected `git ls-tree` output: {:?}",
                String::from_utf8_lossy(record)
            )
        };
        let tab = record.iter().position(|&b| b == b'\t').ok_or_else(bad)?;
        let (meta, path) = (&record[..tab], &record[tab + 1..]);
        let Some(role) = layout::role(path) else {
            continue;
        };
        let meta = std::str::from_utf8(meta).map_err(|_| bad())?;
        let [mode, _kind, oid, size] = meta.split_whitespace().collect::<Vec<_>>()[..] else {
            return Err(bad());
        };
        let kind = match mode {
            "120000" => Kind::Symlink,
            // Old trees may hold 100664 and the like: all are regular files.
            m if m.starts_with("100") => {
                let size: u64 = size.parse().map_err(|_| bad())?;
                if size > MAX_FILE_SIZE {
                    Kind::TooLarge(size)
                } else {
                    wanted.push((files.len(), oid.to_owned()));
                    Kind::Regular(Vec::new())
                }
            }
            "160000" => Kind::Unusable("a submodule, not a file".into()),
            other => Kind::Unusable(format!("not a regular file (mode {other})")),
        };
        files.push(File {
            path: path.to_vec(),
            role,
            kind,
        });
    }

    let mut oids: Vec<&str> = wanted.iter().map(|(_, o)| o.as_str()).collect();
    oids.sort_unstable();
    oids.dedup();
    let blobs = cat_blobs(repo, &oids)?;
    for (i, oid) in &wanted {
        if let (Some(f), Some(bytes)) = (files.get_mut(*i), blobs.get(oid.as_str())) {
            f.kind = Kind::Regular(bytes.clone());
        }
    }
    Ok(files)
}

/// Contents of the blobs `oids` (each at most `MAX_FILE_SIZE`), by one `git cat-file --batch`.
fn cat_blobs(repo: &Path, oids: &[&str]) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut blobs = HashMap::new();
    if oids.is_empty() {
        return Ok(blobs);
    }
    let input: Vec<u8> = oids.iter().flat_map(|o| o.bytes().chain([b'\n'])).collect();
    let out = git(
        Some(repo),
        &[os("cat-file"), os("--batch")],
        Some(input),
        LOCAL_TIMEOUT,
    )?;
    // Each answer: "<oid> <type> <size>\n<content>\n".
    let mut rest = out.as_slice();
    for oid in oids {
        let bad = || format!("unexpected `git cat-file` output for {oid}");
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| bad())?;
        let [got, "blob", size] = header.split(' ').collect::<Vec<_>>()[..] else {
            return Err(format!("{}: {header}", bad()));
        };
        let size: usize = size.parse().map_err(|_| bad())?;
        if got != *oid || size as u64 > MAX_FILE_SIZE {
            return Err(bad());
        }
        let content = rest.get(nl + 1..nl + 1 + size).ok_or_else(bad)?;
        blobs.insert((*oid).to_owned(), content.to_vec());
        rest = rest.get(nl + 2 + size..).ok_or_else(bad)?;
    }
    Ok(blobs)
}

/// Name of the git config file in the index state directory that every git command on an
/// index clone `<dir>/<name>.git` runs with (`GIT_CONFIG_GLOBAL`).
const GIT_CONFIG: &str = "gitconfig";

/// Write `<dir>/gitconfig`, used for every git command on the index clones. It trusts index
/// repositories owned by another user (an index directory maintained by root or a CI
/// user): git refuses to read those ("dubious ownership") unless `safe.directory` says so,
/// and git honours that key only in global or system config. The operator's own global
/// config is included first, so proxies and credential helpers still apply.
pub fn write_git_config(dir: &Path) -> Result<(), gitmirror_common::statefile::StateError> {
    let path = dir.join(GIT_CONFIG);
    let mut text = String::from("# Written by gitmirrord for its index git commands.\n");
    if let Some(home) = std::env::var_os("HOME") {
        let user = Path::new(&home).join(".gitconfig");
        text.push_str(&format!("[include]\n\tpath = {}\n", user.display()));
    }
    text.push_str("[safe]\n\tdirectory = *\n");
    gitmirror_common::statefile::write_atomic(&path, text.as_bytes(), 0o644)
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
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(config) = repo.and_then(Path::parent).map(|d| d.join(GIT_CONFIG))
        && config.is_file()
    {
        cmd.env("GIT_CONFIG_GLOBAL", config);
    }
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
    let err = String::from_utf8_lossy(&err);
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
    Err(format!("{what} failed ({status}): {message}"))
}

/// The files of a plain directory index that have a layout role. Dot-directories and
/// symbolic links are not entered.
fn read_dir(root: &Path) -> Result<Vec<File>, String> {
    let mut files = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_owned(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let depth = rel.split(|&b| b == b'/').filter(|p| !p.is_empty()).count();
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name();
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            // Does not follow symbolic links.
            let ft = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if ft.is_dir() {
                if depth < 2 && !name.as_bytes().starts_with(b".") {
                    stack.push((entry.path(), path));
                }
                continue;
            }
            let Some(role) = layout::role(&path) else {
                continue;
            };
            let kind = if ft.is_symlink() {
                Kind::Symlink
            } else if !ft.is_file() {
                Kind::Unusable("not a regular file".into())
            } else {
                read_small(&entry.path())
            };
            files.push(File { path, role, kind });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn read_small(path: &Path) -> Kind {
    let read = || -> std::io::Result<Kind> {
        let f = std::fs::File::open(path)?;
        let size = f.metadata()?.len();
        if size > MAX_FILE_SIZE {
            return Ok(Kind::TooLarge(size));
        }
        let mut buf = Vec::new();
        // The file may grow between stat and read.
        f.take(MAX_FILE_SIZE + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_FILE_SIZE {
            return Ok(Kind::TooLarge(buf.len() as u64));
        }
        Ok(Kind::Regular(buf))
    };
    read().unwrap_or_else(|e| Kind::Unusable(format!("cannot read: {e}")))
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
