//! Real git: upstream repos served by `git daemon`, the index repo, and reading mirrors.

use crate::{TestDir, free_tcp_port};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A `git` command isolated from the machine's git config, with a fixed identity.
pub fn git_command() -> Command {
    git_program(Command::new("git"))
}

/// `<git --exec-path>/git-daemon`, run directly: `git daemon` would fork it as a child
/// that outlives a kill of the `git` wrapper.
fn git_daemon_command() -> Command {
    let exec_path = git_command()
        .arg("--exec-path")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    git_program(Command::new(Path::new(&exec_path).join("git-daemon")))
}

fn git_program(mut c: Command) -> Command {
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "gitmirror test")
        .env("GIT_AUTHOR_EMAIL", "test@gitmirror.invalid")
        .env("GIT_COMMITTER_NAME", "gitmirror test")
        .env("GIT_COMMITTER_EMAIL", "test@gitmirror.invalid")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    c
}

/// Run git with `args`; `Err` holds the command and its stderr.
pub fn try_git<I, S>(args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = git_command()
        .args(&args)
        .output()
        .map_err(|e| format!("spawn git {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Run git with `args`, panicking on failure; returns stdout without trailing newline.
pub fn git<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    try_git(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Refs as `name -> oid`, keeping `refs/…` only (no `HEAD`, no peeled `^{}` lines).
fn parse_ref_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (oid, name) = l.split_once(char::is_whitespace)?;
            let name = name.trim();
            (name.starts_with("refs/") && !name.ends_with("^{}"))
                .then(|| (name.to_owned(), oid.to_owned()))
        })
        .collect()
}

/// `git ls-remote <url>`: the refs a client sees.
pub fn try_ls_remote(url: &str) -> Result<BTreeMap<String, String>, String> {
    try_git(["ls-remote", url]).map(|t| parse_ref_lines(&t))
}

pub fn ls_remote(url: &str) -> BTreeMap<String, String> {
    try_ls_remote(url).unwrap_or_else(|e| panic!("{e}"))
}

/// The refs stored in a (bare) repository, read directly: `git for-each-ref`.
pub fn try_mirror_refs(git_dir: &Path) -> Result<BTreeMap<String, String>, String> {
    try_git([
        OsStr::new("--git-dir"),
        git_dir.as_os_str(),
        OsStr::new("for-each-ref"),
        OsStr::new("--format=%(objectname) %(refname)"),
    ])
    .map(|t| parse_ref_lines(&t))
}

pub fn mirror_refs(git_dir: &Path) -> BTreeMap<String, String> {
    try_mirror_refs(git_dir).unwrap_or_else(|e| panic!("{e}"))
}

/// `origin`'s URL of a mirror, as `git remote -v` shows it (fetch line).
pub fn remote_url(git_dir: &Path) -> Result<String, String> {
    let out = try_git([
        OsStr::new("--git-dir"),
        git_dir.as_os_str(),
        OsStr::new("remote"),
        OsStr::new("-v"),
    ])?;
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            match (f.next(), f.next(), f.next()) {
                (Some("origin"), Some(url), Some("(fetch)")) => Some(url.to_owned()),
                _ => None,
            }
        })
        .ok_or_else(|| format!("no origin fetch line in `git remote -v`: {out:?}"))
}

/// True when `path` looks like a complete bare repository (what a worker renames into
/// place), not merely a directory.
pub fn is_bare_repo(path: &Path) -> bool {
    path.join("HEAD").is_file() && path.join("objects").is_dir() && path.join("refs").is_dir()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Makes every test commit unique even within one second.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn data(s: &str) -> String {
    format!("data {}\n{s}\n", s.len())
}

/// A `git fast-import` stream for a small upstream repo: branches `master` and `dev`, an
/// annotated tag `v1` and a lightweight tag `light`, with content unique to `seed`.
/// Commit times are now, so an adaptive schedule treats the repo as recently changed.
fn seed_stream(seed: &str) -> String {
    seed_stream_at(seed, unix_now())
}

/// [`seed_stream`] with commit times `now` (unix seconds).
fn seed_stream_at(seed: &str, now: u64) -> String {
    let who = format!("gitmirror test <test@gitmirror.invalid> {now} +0000");
    let mut s = String::new();
    s += "blob\nmark :1\n";
    s += &data(&format!("readme of {seed}"));
    s += &format!("commit refs/heads/master\nmark :2\ncommitter {who}\n");
    s += &data(&format!("initial commit of {seed}"));
    s += "M 100644 :1 README\n\n";
    s += "blob\nmark :3\n";
    s += &data(&format!("dev work on {seed}"));
    s += &format!("commit refs/heads/dev\nmark :4\ncommitter {who}\n");
    s += &data(&format!("dev commit of {seed}"));
    s += "from :2\nM 100644 :3 DEV\n\n";
    s += &format!("tag v1\nfrom :2\ntagger {who}\n");
    s += &data(&format!("release 1 of {seed}"));
    s += "reset refs/tags/light\nfrom :4\n\n";
    s
}

/// Create a bare repo at `path` filled by [`seed_stream`].
pub fn create_bare_repo(path: &Path, seed: &str) {
    git([
        OsStr::new("init"),
        OsStr::new("-q"),
        OsStr::new("--bare"),
        OsStr::new("-b"),
        OsStr::new("master"),
        path.as_os_str(),
    ]);
    fast_import(path, seed_stream(seed).as_bytes());
}

/// [`create_bare_repo`] with every commit time at `time` (unix seconds): the same object
/// ids on every run, for checked-in state that names them.
pub fn create_fixed_repo(path: &Path, seed: &str, time: u64) {
    git([
        OsStr::new("init"),
        OsStr::new("-q"),
        OsStr::new("--bare"),
        OsStr::new("-b"),
        OsStr::new("master"),
        path.as_os_str(),
    ]);
    fast_import(path, seed_stream_at(seed, time).as_bytes());
}

/// [`commit_to`] with a fixed message and time (unix seconds): the same commit id on
/// every run for the same parent.
pub fn commit_fixed(git_dir: &Path, branch: &str, msg: &str, time: u64) -> String {
    let gd = git_dir.to_str().expect("utf-8 path");
    let refname = format!("refs/heads/{branch}");
    let parent = git(["--git-dir", gd, "rev-parse", &refname]);
    let tree = git(["--git-dir", gd, "rev-parse", &format!("{parent}^{{tree}}")]);
    let date = format!("@{time} +0000");
    let out = git_command()
        .args([
            "--git-dir",
            gd,
            "commit-tree",
            &tree,
            "-p",
            &parent,
            "-m",
            msg,
        ])
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .expect("run git commit-tree");
    assert!(
        out.status.success(),
        "git commit-tree in {gd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    git(["--git-dir", gd, "update-ref", &refname, &new, &parent]);
    new
}

/// Feed a `git fast-import` stream to the bare repo at `git_dir`.
pub fn fast_import(git_dir: &Path, stream: &[u8]) {
    fast_import_with(git_dir, &[], stream);
}

/// [`fast_import`] with `git -c` settings before the command.
fn fast_import_with(git_dir: &Path, config: &[&str], stream: &[u8]) {
    let mut command = git_command();
    command.arg("--git-dir").arg(git_dir);
    for c in config {
        command.args(["-c", c]);
    }
    let mut child = command
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn git fast-import");
    child
        .stdin
        .take()
        .expect("fast-import stdin")
        .write_all(stream)
        .expect("write fast-import stream");
    let out = child.wait_with_output().expect("wait for fast-import");
    assert!(
        out.status.success(),
        "git fast-import into {} failed: {}",
        git_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Add one commit on `branch` of the bare repo at `git_dir`; returns the new commit id.
pub fn commit_to(git_dir: &Path, branch: &str) -> String {
    let gd = git_dir.to_str().expect("utf-8 path");
    let refname = format!("refs/heads/{branch}");
    let parent = git(["--git-dir", gd, "rev-parse", &refname]);
    let tree = git(["--git-dir", gd, "rev-parse", &format!("{parent}^{{tree}}")]);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let msg = format!("change {n} at {}", unix_now());
    let new = git([
        "--git-dir",
        gd,
        "commit-tree",
        &tree,
        "-p",
        &parent,
        "-m",
        &msg,
    ]);
    git(["--git-dir", gd, "update-ref", &refname, &new, &parent]);
    new
}

/// A `git daemon` serving bare repos from its own temp dir over `git://127.0.0.1:<port>/`.
/// Killed when dropped.
pub struct GitDaemon {
    child: Child,
    port: u16,
    base: PathBuf,
    _dir: TestDir,
}

static SHARED: Mutex<Weak<GitDaemon>> = Mutex::new(Weak::new());

impl GitDaemon {
    /// Start a daemon on a free port and wait until it accepts connections.
    pub fn start() -> Self {
        let dir = TestDir::new("upstream");
        let base = dir.sub("repos");
        let mut last_err = String::new();
        // A port picked free can be taken before git daemon binds it; try a few.
        for _ in 0..5 {
            let port = free_tcp_port();
            let mut child = spawn_daemon(&base, port);
            let ready = wait_ready(&mut child, port);
            match ready {
                Ok(()) => {
                    return Self {
                        child,
                        port,
                        base,
                        _dir: dir,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = e;
                }
            }
        }
        panic!("git daemon did not start: {last_err}");
    }

    /// One daemon shared by the tests of a test binary that run at the same time; it is
    /// killed when the last of them drops its handle. Tests must use distinct repo names.
    pub fn shared() -> Arc<Self> {
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = slot.upgrade() {
            return d;
        }
        let d = Arc::new(Self::start());
        *slot = Arc::downgrade(&d);
        d
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Take the upstream offline: the daemon is killed (its repos stay on disk).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Bring the upstream back after [`GitDaemon::stop`]: the same repos on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let mut last_err = String::new();
        // The port was just released; another process may take it meanwhile (rare).
        for _ in 0..20 {
            let mut child = spawn_daemon(&self.base, self.port);
            match wait_ready(&mut child, self.port) {
                Ok(()) => {
                    self.child = child;
                    return;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!(
            "git daemon did not restart on port {}: {last_err}",
            self.port
        );
    }

    /// Create upstream repo `name` ([`create_bare_repo`]) with one more commit on `master`
    /// adding `files` files of `file_size` incompressible bytes each, the same bytes on
    /// every run (xorshift from `seed`): a repo whose transfer takes a while. Returns its
    /// URL.
    pub fn create_big_repo(&self, name: &str, files: usize, file_size: usize, seed: u64) -> String {
        let path = self.repo_path(name);
        create_bare_repo(&path, name);
        let gd = path.to_str().expect("utf-8 path");
        let parent = git(["--git-dir", gd, "rev-parse", "refs/heads/master"]);
        let mut rng = crate::Rng::fixed(seed);
        let mut stream = Vec::with_capacity(files * (file_size + 64) + 512);
        for i in 0..files {
            write!(stream, "blob\nmark :{}\ndata {file_size}\n", i + 1).expect("write");
            stream.extend_from_slice(&rng.bytes(file_size));
            stream.push(b'\n');
        }
        let now = unix_now();
        write!(
            stream,
            "commit refs/heads/master\ncommitter gitmirror test <test@gitmirror.invalid> {now} +0000\ndata 9\nbig files\nfrom {parent}\n"
        )
        .expect("write");
        for i in 0..files {
            writeln!(stream, "M 100644 :{} big/{i:03}.bin", i + 1).expect("write");
        }
        stream.push(b'\n');
        // Kept as a pack: fast-import explodes fewer than 100 objects into loose ones,
        // and serving those makes `pack-objects` search deltas across the random blobs
        // (~14 s of CPU per clone on a 2-core machine; 0.3 s from the pack).
        fast_import_with(&path, &["fastimport.unpackLimit=0"], &stream);
        self.url(name)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// On-disk path of upstream repo `name`.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.base.join(format!("{name}.git"))
    }

    /// `git://` URL of upstream repo `name`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    /// Create upstream repo `name` (two branches, two tags); returns its URL.
    pub fn create_repo(&self, name: &str) -> String {
        create_bare_repo(&self.repo_path(name), name);
        self.url(name)
    }

    /// Create `n` repos named `<prefix>-r00`, `<prefix>-r01`, …; returns their names.
    pub fn create_repos(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("{prefix}-r{i:02}");
                self.create_repo(&name);
                name
            })
            .collect()
    }

    /// New commit on `branch` of repo `name`; returns its id.
    pub fn commit(&self, name: &str, branch: &str) -> String {
        commit_to(&self.repo_path(name), branch)
    }

    /// Create `n` repos named `<prefix>-rNN`; returns repo id → URL (ids per [`repo_id`]).
    pub fn repo_set(&self, prefix: &str, n: usize) -> BTreeMap<String, String> {
        self.create_repos(prefix, n)
            .into_iter()
            .map(|name| (repo_id(&name), self.url(&name)))
            .collect()
    }

    /// Point `refname` of repo `name` at `oid` (creating it).
    pub fn set_ref(&self, name: &str, refname: &str, oid: &str) {
        let gd = self.repo_path(name);
        git([
            OsStr::new("--git-dir"),
            gd.as_os_str(),
            "update-ref".as_ref(),
            refname.as_ref(),
            oid.as_ref(),
        ]);
    }

    /// Delete `refname` of repo `name`.
    pub fn delete_ref(&self, name: &str, refname: &str) {
        let gd = self.repo_path(name);
        git([
            OsStr::new("--git-dir"),
            gd.as_os_str(),
            "update-ref".as_ref(),
            "-d".as_ref(),
            refname.as_ref(),
        ]);
    }

    pub fn delete_repo(&self, name: &str) {
        let p = self.repo_path(name);
        std::fs::remove_dir_all(&p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display()));
    }

    /// Refs of repo `name` as served (`git ls-remote` of its URL).
    pub fn ls_remote(&self, name: &str) -> BTreeMap<String, String> {
        ls_remote(&self.url(name))
    }
}

fn spawn_daemon(base: &Path, port: u16) -> Child {
    git_daemon_command()
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg(format!("--base-path={}", base.display()))
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--enable=receive-pack")
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn git daemon")
}

fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("git daemon on port {port} exited: {status}"));
        }
        if TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "git daemon on port {port} not accepting after 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The index: a non-bare git repo in compass-ci layout (`<first>/<project>/<name>` files
/// holding YAML). The coordinator is given its local path as the index `url`.
pub struct Index {
    path: PathBuf,
}

impl Index {
    /// `git init` at `path` with a README, committed.
    pub fn create(path: &Path) -> Self {
        std::fs::create_dir_all(path).expect("mkdir index");
        let p = path.to_str().expect("utf-8 path");
        git(["init", "-q", "-b", "master", p]);
        let index = Self {
            path: path.to_path_buf(),
        };
        index.put("README.md", "test index\n");
        index.commit("start index");
        index
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `content` at relative path `rel` (parents created).
    pub fn put(&self, rel: &str, content: &str) {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir in index");
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Entry `id` with `url: <url>`.
    pub fn put_url(&self, id: &str, url: &str) {
        self.put(id, &format!("url: {url}\n"));
    }

    pub fn remove(&self, rel: &str) {
        let p = self.path.join(rel);
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
    }

    /// Stage everything and commit; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        let p = self.path.to_str().expect("utf-8 path");
        git(["-C", p, "add", "-A", "."]);
        git(["-C", p, "commit", "-q", "--allow-empty", "-m", msg]);
        git(["-C", p, "rev-parse", "HEAD"])
    }
}

/// Repo id in compass-ci layout for upstream repo `name` (`<prefix>-rNN`):
/// `<first letter>/<prefix>/<name>`, e.g. `f/fleet/fleet-r07`.
pub fn repo_id(name: &str) -> String {
    let project = name.split('-').next().unwrap_or(name);
    let first = &project[..1];
    format!("{first}/{project}/{name}")
}

/// The upstream repo name of a repo id made by [`repo_id`] (its last component).
pub fn repo_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Give `git_dir` `n` refs `refs/changes/NN/N/1` (Gerrit keeps a ref per change) at its
/// `master` commit, written as one `packed-refs` file (what `git pack-refs` leaves; 200k
/// loose refs take minutes to make). Returns that commit.
pub fn add_change_refs(git_dir: &Path, n: usize) -> String {
    let dir = git_dir.as_os_str();
    let head = git([
        std::ffi::OsStr::new("--git-dir"),
        dir,
        "rev-parse".as_ref(),
        "refs/heads/master".as_ref(),
    ])
    .trim()
    .to_owned();
    git([
        std::ffi::OsStr::new("--git-dir"),
        dir,
        "pack-refs".as_ref(),
        "--all".as_ref(),
    ]);
    let packed = git_dir.join("packed-refs");
    let old =
        std::fs::read_to_string(&packed).unwrap_or_else(|e| panic!("{}: {e}", packed.display()));
    // Whole entries (a peeled `^` line belongs to the line before it), sorted by name.
    let mut entries: Vec<(String, String)> = Vec::new();
    for l in old.lines().filter(|l| !l.starts_with('#')) {
        if let Some(peeled) = l.strip_prefix('^') {
            if let Some(last) = entries.last_mut() {
                last.1.push_str(&format!("\n^{peeled}"));
            }
        } else if let Some((_, name)) = l.split_once(' ') {
            entries.push((name.to_owned(), l.to_owned()));
        }
    }
    for i in 0..n {
        let name = format!("refs/changes/{:02}/{i}/1", i % 100);
        entries.push((name.clone(), format!("{head} {name}")));
    }
    entries.sort();
    let mut text = String::from("# pack-refs with: peeled fully-peeled sorted \n");
    for (_, e) in entries {
        text.push_str(&e);
        text.push('\n');
    }
    std::fs::write(&packed, text).unwrap_or_else(|e| panic!("{}: {e}", packed.display()));
    head
}
