//! Harness for the end-to-end tests: real `gitmirrord` and `gitmirror-worker` binaries,
//! real `git daemon` upstreams, temp dirs, loopback ports and polling with deadlines.
//!
//! Everything here panics with a message that says what it was doing: these are tests.
//! Waits never sleep for a condition; they poll it ([`wait_for`]) until a deadline and
//! report the last state they saw.
//!
//! Run: `cargo build --bins && cargo test -p gitmirror-tests`. `GITMIRROR_BIN_DIR` points
//! at other binaries; `GITMIRROR_E2E_KEEP=1` keeps every temp dir (a failing test always
//! keeps its own and prints the path and the tail of each daemon's log).
//!
//! Layout of a test's temp dir (see [`Fleet`]): `index/` (the index repo),
//! `coordinator/{gitmirrord.yaml,gitmirrord.log,state/}`, and per worker
//! `w<N>/{gitmirror-worker.yaml,worker.log,mirrors/,state/}`. Upstream repos live in the
//! shared [`GitDaemon`]'s own temp dir.

pub mod daemons;
pub mod events;
pub mod git;
pub mod http;

pub use daemons::{Coordinator, Fleet, Proc, Worker};
pub use git::{GitDaemon, Index, git, ls_remote, mirror_refs};
pub use rustix::process::Signal;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often [`wait_for`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Directory holding the binaries under test: `$GITMIRROR_BIN_DIR`, else `target/debug/`
/// found from this test executable (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GITMIRROR_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent dir");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent dir")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Path of binary `name`, which must exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --bins` first (or set GITMIRROR_BIN_DIR)",
        path.display()
    );
    path
}

/// A temp dir for one test: removed when dropped normally, kept (and its path printed)
/// when dropped during a panic, so a failing test leaves its logs and mirrors behind.
/// `GITMIRROR_E2E_KEEP=1` keeps every one.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gitmirror-e2e-{label}-"))
            .tempdir()
            .expect("create temp dir");
        let path = dir.path().to_path_buf();
        Self {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep_always = std::env::var_os("GITMIRROR_E2E_KEEP").is_some();
        if (std::thread::panicking() || keep_always)
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("keeping {}", kept.display());
        }
    }
}

/// A free UDP port on 127.0.0.1 (bound, read, released).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    s.local_addr().expect("udp local addr").port()
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_tcp_port() -> u16 {
    let s = TcpListener::bind("127.0.0.1:0").expect("bind tcp 127.0.0.1:0");
    s.local_addr().expect("tcp local addr").port()
}

/// Poll `check` until it returns `Ok`, at most `timeout`. `Err` carries a description of
/// the state seen, which the panic message shows when the deadline passes.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut last;
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) => last = state,
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_for`] for conditions without a state description.
pub fn poll_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    wait_for(timeout, what, || {
        check().ok_or_else(|| "not yet".to_owned())
    })
}

/// How long a fetch of a repo may take to pick up an upstream change made now, when the
/// upstream last changed at `changed_at` (SPEC §7.2): the next fetch is due within about
/// half the time since the last change (at least `min_interval`), +10 % jitter, plus 10 s
/// of slack for the fetch itself and reporting.
pub fn fetch_deadline(changed_at: Instant) -> Duration {
    let half = changed_at.elapsed().mul_f64(0.5 * 1.1);
    half.max(daemons::MIN_INTERVAL) + Duration::from_secs(10)
}

/// Name of the marker file tests drop inside a mirror to prove it was not re-cloned.
pub const MARKER: &str = "gitmirror-e2e-marker";

/// Drop [`MARKER`] inside the mirror at `git_dir`; returns the mirror dir's inode.
pub fn mark_mirror(git_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let m = git_dir.join(MARKER);
    std::fs::write(&m, b"left by the e2e test\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", m.display()));
    std::fs::metadata(git_dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", git_dir.display()))
        .ino()
}

/// `Ok` when the mirror at `git_dir` is the same directory [`mark_mirror`] marked: same
/// inode and the marker still inside (so it was fetched into, not re-cloned).
pub fn same_mirror(git_dir: &Path, inode: u64) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(git_dir)
        .map_err(|e| format!("stat {}: {e}", git_dir.display()))?
        .ino();
    if ino != inode {
        return Err(format!(
            "{}: inode {ino}, was {inode}: the mirror was replaced",
            git_dir.display()
        ));
    }
    if !git_dir.join(MARKER).is_file() {
        return Err(format!("{}: marker file gone", git_dir.display()));
    }
    Ok(())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Quote a string as a YAML (JSON-compatible) double-quoted scalar.
pub fn yaml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("string to json")
}

/// Quote a path as a YAML scalar.
pub fn yaml_path(p: &Path) -> String {
    yaml_str(p.to_str().expect("utf-8 temp path"))
}

/// The fault suite's size: `GITMIRROR_FAULTS=long` selects the long form (see
/// `docs/reliability.md` and `scripts/reliability.sh`); anything else, the bounded form CI
/// runs on every submission.
pub fn long_form() -> bool {
    std::env::var("GITMIRROR_FAULTS").is_ok_and(|v| v == "long")
}

/// `bounded` in the bounded form, `long` in the long form.
pub fn rounds(bounded: usize, long: usize) -> usize {
    if long_form() { long } else { bounded }
}

/// Record one figure of a fault or hostile-input test (faults injected, inputs tried,
/// mirrors lost, …): printed as `figure: <suite> <key> = <value>`, and appended to the file
/// `$GITMIRROR_FIGURES` names, from which `scripts/reliability.sh` builds its table.
pub fn figure(suite: &str, key: &str, value: impl std::fmt::Display) {
    let line = format!("figure: {suite} {key} = {value}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("GITMIRROR_FIGURES") {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            panic!("append to {}: {e}", PathBuf::from(path).display());
        }
    }
}

/// Seeded randomness for the fault suites (xorshift64*): enough to pick fault moments
/// reproducibly. Seeded from `GITMIRROR_SEED`, else from the clock; the seed is printed,
/// so `GITMIRROR_SEED=<seed>` replays a failing run's choices.
pub struct Rng {
    state: u64,
    pub seed: u64,
}

impl Rng {
    pub fn seeded(test: &str) -> Self {
        let seed = match std::env::var("GITMIRROR_SEED") {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("GITMIRROR_SEED={s:?} is not a number")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{test}: seed {seed} (GITMIRROR_SEED={seed} replays it)");
        Self {
            state: seed.max(1),
            seed,
        }
    }

    /// The same sequence on every run (for generated data, not for fault moments).
    pub fn fixed(seed: u64) -> Self {
        Self {
            state: seed.max(1),
            seed,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (roughly; fine for picking moments).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.range(0, n)
    }

    /// A duration uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}
