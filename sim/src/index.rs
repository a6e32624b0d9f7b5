//! A generated index of N entries as a real git repository in compass-ci's layout
//! (SPEC §3.1): `<first>/<project>/<name>`, a root `DEFAULTS`, one YAML file per repo.
//!
//! Built without `git fast-import` trees, which slow down with the number of entries in
//! one folder (FACTS.md): fast-import writes only the blobs (one pack, marks exported),
//! then `git mktree --batch` builds the trees bottom-up (projects, first-letter folders,
//! root), `git commit-tree` commits, and `git repack` packs the loose trees so the
//! coordinator's clone of the index is not dominated by loose-object reads.
//!
//! The repo of number `i` is `<c>/<c><j>/r<i>` with `j = i / REPOS_PER_PROJECT` and `c`
//! the `j % 36`-th of `0-9a-z`: [`repo_id`] and [`repo_number`] convert both ways, so
//! simulated workers keep numbers, not strings.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Repos per project folder: a repo and a fork, as compass-ci's index often has.
pub const REPOS_PER_PROJECT: u32 = 2;
const FIRST: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Written last into a finished index: its entry count, so a later run can reuse it.
const MARKER: &str = "gitmirror-sim-entries";

/// The commit with every entry, and one with none.
const FULL: &str = "refs/sim/full";
const EMPTY: &str = "refs/sim/empty";

/// Point the index's branch at the commit with every entry (`full`) or with none. The
/// coordinator sees the change at its next poll (or at once on SIGHUP).
pub fn publish(path: &Path, full: bool) -> Result<()> {
    git(
        Some(path),
        &[
            "update-ref",
            "refs/heads/master",
            if full { FULL } else { EMPTY },
        ],
    )?;
    Ok(())
}

/// The id of repo number `i`.
pub fn repo_id(i: u32) -> String {
    let j = i / REPOS_PER_PROJECT;
    let c = FIRST[(j % 36) as usize] as char;
    format!("{c}/{c}{j}/r{i}")
}

/// The number of a repo id made by [`repo_id`].
pub fn repo_number(id: &str) -> Option<u32> {
    id.rsplit_once("/r")?.1.parse().ok()
}

/// The upstream URL of repo number `i` (never contacted: simulated workers fetch nothing).
pub fn repo_url(i: u32) -> String {
    Upstreams::Invalid.url(i)
}

/// Loopback hosts the `Refused` URLs are spread over: more than `fetch.concurrency` /
/// `fetch.per_host_concurrency` (8 / 4 by default), so a real worker's per-host limit does
/// not bind before its overall one, as with an index spread over many hosts.
pub const REFUSED_HOSTS: u32 = 16;
/// A port nothing listens on (tcpmux, privileged and unused): connecting is refused at once.
pub const REFUSED_PORT: u16 = 1;

/// Where the entries' upstream URLs point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstreams {
    /// `https://git.example.invalid/…`: for simulated workers, which fetch nothing.
    Invalid,
    /// `git://127.0.0.<h>:1/…`: for real workers, whose every attempt then fails fast.
    Refused,
}

impl Upstreams {
    /// The upstream URL of repo number `i`.
    pub fn url(self, i: u32) -> String {
        match self {
            Upstreams::Invalid => format!("https://git.example.invalid/{}.git", repo_id(i)),
            Upstreams::Refused => format!(
                "git://{}:{REFUSED_PORT}/{}.git",
                refused_host(i % REFUSED_HOSTS),
                repo_id(i)
            ),
        }
    }

    /// The index's directory name in a work dir: a different URL kind is a different index.
    pub fn dir_name(self, n: u32) -> String {
        match self {
            Upstreams::Invalid => format!("index-{n}.git"),
            Upstreams::Refused => format!("index-{n}-refused.git"),
        }
    }
}

fn refused_host(h: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 1 + (h % 254) as u8)
}

/// Check that every `Refused` upstream refuses connections right now (something could
/// listen on the port): an error names the address that did not.
pub fn check_refused() -> Result<()> {
    for h in 0..REFUSED_HOSTS {
        let addr = std::net::SocketAddr::from((refused_host(h), REFUSED_PORT));
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => bail!(
                "{addr} accepts connections: the failing upstreams of the index need it closed"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => bail!("{addr} does not refuse connections at once: {e}"),
        }
    }
    Ok(())
}

/// What building the index took.
pub struct Built {
    pub path: PathBuf,
    /// `None` when an index made by an earlier run was reused.
    pub took: Option<Duration>,
}

/// The index of `n` entries at `path` with `upstreams` URLs, built unless an earlier run
/// left a complete one.
pub fn ensure(path: &Path, n: u32, upstreams: Upstreams) -> Result<Built> {
    let marker = path.join(MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker)
        && text.trim() == n.to_string()
    {
        return Ok(Built {
            path: path.to_owned(),
            took: None,
        });
    }
    if path.exists() {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("removing the unfinished index {}", path.display()))?;
    }
    let start = Instant::now();
    build(path, n, upstreams)?;
    std::fs::write(&marker, format!("{n}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(Built {
        path: path.to_owned(),
        took: Some(start.elapsed()),
    })
}

fn build(path: &Path, n: u32, upstreams: Upstreams) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    git(
        None,
        &["init", "--bare", "--quiet", &path.to_string_lossy()],
    )?;
    // Objects are written to a scratch object dir in memory (`/dev/shm` when there is
    // one) and packed into the index at the end: `mktree` writes one loose file per
    // tree, and deleting 500k of them from a busy disk took longer than making them.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("gitmirror-sim-objects-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new()
            .prefix("gitmirror-sim-objects-")
            .tempdir()
    }
    .context("creating a scratch object dir")?;
    let objects = scratch.path().to_owned();
    // Not `set_var`: only the git commands of this build get it.
    OBJECTS.with(|o| *o.borrow_mut() = Some(objects.clone()));
    let built = write_objects(path, n, upstreams);
    OBJECTS.with(|o| *o.borrow_mut() = None);
    built?;
    // Pack everything reachable (the scratch dir is an alternate) into the index itself.
    let out = Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["repack", "-a", "-d", "-q"])
        .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &objects)
        .stdin(Stdio::null())
        .output()
        .context("running git repack")?;
    if !out.status.success() {
        bail!(
            "git repack failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    drop(scratch);
    git(
        Some(path),
        &["fsck", "--connectivity-only", "--no-progress"],
    )
    .context("the index is incomplete after packing")?;
    Ok(())
}

thread_local! {
    /// The scratch object dir git commands write to while an index is being built.
    static OBJECTS: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

fn write_objects(path: &Path, n: u32, upstreams: Upstreams) -> Result<()> {
    let blobs = write_blobs(path, n, upstreams)?;
    let (repo_blobs, defaults_blob) = blobs.split_at(n as usize);
    let defaults_blob = defaults_blob
        .first()
        .context("fast-import wrote no DEFAULTS blob")?;

    // Projects: each holds REPOS_PER_PROJECT entries.
    let projects = n.div_ceil(REPOS_PER_PROJECT);
    let project_trees = mktree(path, projects as usize, |j, out| {
        let lo = j as u32 * REPOS_PER_PROJECT;
        for i in lo..(lo + REPOS_PER_PROJECT).min(n) {
            writeln!(out, "100644 blob {}\tr{i}", repo_blobs[i as usize])?;
        }
        Ok(())
    })?;
    // First-letter folders: project j lives in folder j % 36.
    let folders = projects.min(36) as usize;
    let folder_trees = mktree(path, folders, |f, out| {
        let c = FIRST[f] as char;
        for j in (f..projects as usize).step_by(36) {
            writeln!(out, "040000 tree {}\t{c}{j}", project_trees[j])?;
        }
        Ok(())
    })?;
    let root = mktree(path, 1, |_, out| {
        for (f, tree) in folder_trees.iter().enumerate() {
            writeln!(out, "040000 tree {tree}\t{}", FIRST[f] as char)?;
        }
        writeln!(out, "100644 blob {defaults_blob}\tDEFAULTS")?;
        Ok(())
    })?;
    let root = root.first().context("mktree gave no root tree")?;
    let commit = git(
        Some(path),
        &[
            "commit-tree",
            root,
            "-m",
            &format!("gitmirror-sim index: {n} entries"),
        ],
    )?;
    git(Some(path), &["update-ref", FULL, commit.trim()])?;
    // An index with no entries, for the coordinator to start on while workers join.
    let empty_tree = git(Some(path), &["hash-object", "-t", "tree", "-w", "--stdin"])?;
    let empty = git(
        Some(path),
        &[
            "commit-tree",
            empty_tree.trim(),
            "-m",
            "gitmirror-sim index: empty",
        ],
    )?;
    git(Some(path), &["update-ref", EMPTY, empty.trim()])?;
    git(Some(path), &["symbolic-ref", "HEAD", "refs/heads/master"])?;
    publish(path, false)?;
    Ok(())
}

/// One blob per repo (its YAML) and one for `DEFAULTS`, by fast-import; their ids in
/// that order.
fn write_blobs(repo: &Path, n: u32, upstreams: Upstreams) -> Result<Vec<String>> {
    let marks = repo.join("sim-blob-marks");
    let mut child = command(Some(repo))
        .args(["fast-import", "--quiet"])
        .arg(format!("--export-marks={}", marks.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running git fast-import (is git installed?)")?;
    {
        let stdin = child.stdin.take().context("fast-import stdin")?;
        let mut out = BufWriter::with_capacity(1 << 20, stdin);
        let mut blob = |mark: u64, data: &str| -> std::io::Result<()> {
            write!(out, "blob\nmark :{mark}\ndata {}\n{data}\n", data.len())
        };
        for i in 0..n {
            blob(
                u64::from(i) + 1,
                &format!("url: {}\nsubmit: sim\n", upstreams.url(i)),
            )?;
        }
        blob(
            u64::from(n) + 1,
            "# keys every entry inherits (SPEC §3.1)\npkgbuild_repo: none\n",
        )?;
        out.flush().context("writing to git fast-import")?;
    }
    let status = child.wait().context("waiting for git fast-import")?;
    if !status.success() {
        bail!("git fast-import failed ({status})");
    }
    let text =
        std::fs::read_to_string(&marks).with_context(|| format!("reading {}", marks.display()))?;
    let mut ids = vec![String::new(); n as usize + 1];
    for line in text.lines() {
        let Some((mark, id)) = line.strip_prefix(':').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let mark: usize = mark.parse().context("fast-import mark")?;
        if let Some(slot) = mark.checked_sub(1).and_then(|m| ids.get_mut(m)) {
            *slot = id.to_owned();
        }
    }
    if ids.iter().any(String::is_empty) {
        bail!(
            "git fast-import did not report every blob in {}",
            marks.display()
        );
    }
    let _ = std::fs::remove_file(&marks);
    Ok(ids)
}

/// `count` trees by one `git mktree --batch`; `entries(k, out)` writes tree k's lines.
fn mktree(
    repo: &Path,
    count: usize,
    entries: impl Fn(usize, &mut dyn Write) -> std::io::Result<()>,
) -> Result<Vec<String>> {
    let mut child = command(Some(repo))
        .args(["mktree", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running git mktree")?;
    let stdout = child.stdout.take().context("mktree stdout")?;
    // Read while writing: mktree answers each tree as it goes and would block on a full pipe.
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<String>> {
        BufReader::new(stdout).lines().collect()
    });
    {
        let stdin = child.stdin.take().context("mktree stdin")?;
        let mut out = BufWriter::with_capacity(1 << 20, stdin);
        for k in 0..count {
            if k > 0 {
                out.write_all(b"\n")?;
            }
            entries(k, &mut out)?;
        }
        out.flush().context("writing to git mktree")?;
    }
    let status = child.wait().context("waiting for git mktree")?;
    let trees = reader
        .join()
        .map_err(|_| anyhow::anyhow!("mktree reader thread failed"))?
        .context("reading git mktree's output")?;
    if !status.success() || trees.len() != count {
        bail!(
            "git mktree --batch made {} trees of {count} ({status})",
            trees.len()
        );
    }
    Ok(trees)
}

/// A git command, writing objects to the scratch dir while an index is being built.
fn command(dir: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    OBJECTS.with(|o| {
        if let Some(objects) = o.borrow().as_ref() {
            cmd.env("GIT_OBJECT_DIRECTORY", objects);
        }
    });
    cmd
}

fn git(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut cmd = command(dir);
    let out = cmd
        .args(args)
        .env("GIT_AUTHOR_NAME", "gitmirror-sim")
        .env("GIT_AUTHOR_EMAIL", "sim@example.invalid")
        .env("GIT_COMMITTER_NAME", "gitmirror-sim")
        .env("GIT_COMMITTER_EMAIL", "sim@example.invalid")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_follow_the_layout() {
        for i in [0, 1, 2, 71, 999_999] {
            let id = repo_id(i);
            assert_eq!(repo_number(&id), Some(i), "{id}");
            assert_eq!(id.split('/').count(), 3, "{id}");
        }
        assert_eq!(repo_id(0), "0/00/r0");
        assert_eq!(repo_id(3), "1/11/r3");
        assert_eq!(repo_number("a/abc/abc"), None);
    }

    #[test]
    fn refused_urls_spread_over_loopback_hosts_on_a_closed_port() {
        assert_eq!(Upstreams::Refused.url(0), "git://127.0.0.1:1/0/00/r0.git");
        assert_eq!(Upstreams::Refused.url(17), "git://127.0.0.2:1/8/88/r17.git");
        let hosts: std::collections::BTreeSet<String> = (0..1000)
            .map(|i| {
                let url = Upstreams::Refused.url(i);
                url.split('/').nth(2).unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(hosts.len(), REFUSED_HOSTS as usize);
        assert_ne!(
            Upstreams::Refused.dir_name(5),
            Upstreams::Invalid.dir_name(5),
            "an index of one URL kind is never reused for the other"
        );
    }

    // The generated repo has exactly the entries the layout promises, with their URLs.
    #[test]
    fn generated_index_lists_every_entry() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("index.git");
        let built = ensure(&path, 101, Upstreams::Invalid).unwrap();
        assert!(built.took.is_some());
        assert_eq!(
            git(Some(&path), &["ls-tree", "-r", "--name-only", "HEAD"]).unwrap(),
            "",
            "an index starts empty"
        );
        publish(&path, true).unwrap();
        let files = git(Some(&path), &["ls-tree", "-r", "--name-only", "HEAD"]).unwrap();
        let mut got: Vec<&str> = files.lines().collect();
        got.sort_unstable();
        let mut want: Vec<String> = (0..101).map(repo_id).collect();
        want.push("DEFAULTS".into());
        want.sort_unstable();
        assert_eq!(got, want);
        let blob = git(Some(&path), &["show", &format!("HEAD:{}", repo_id(7))]).unwrap();
        assert!(blob.contains(&format!("url: {}", repo_url(7))), "{blob}");
        // A second call reuses it.
        assert!(
            ensure(&path, 101, Upstreams::Invalid)
                .unwrap()
                .took
                .is_none()
        );
    }
}
