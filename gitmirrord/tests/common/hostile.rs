//! The `gitmirrord` binary run as a process (its log collected, its memory measurable),
//! for the hostile-input suites (`hostile_*.rs`) and the SIGHUP tests (`reload.rs`); and
//! figures in the format of `gitmirror_tests::figure`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Record one figure: printed as `figure: <suite> <key> = <value>` and appended to the
/// file `$GITMIRROR_FIGURES` names (the same format as `gitmirror_tests::figure`, which
/// this crate cannot depend on).
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
            panic!("append to {}: {e}", Path::new(&path).display());
        }
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_gitmirrord");

/// The coordinator binary, its stderr collected line by line; killed when dropped.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Run `prefix… gitmirrord --config <config>` (`prefix` e.g. `ip netns exec <ns>`).
    pub fn start(prefix: &[&str], config: &Path) -> Self {
        let (program, args): (&str, Vec<&str>) = match prefix.split_first() {
            Some((p, rest)) => (p, rest.iter().copied().chain([BIN]).collect()),
            None => (BIN, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, log }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig).unwrap();
    }

    /// The first log line holding every one of `needles`, polled for up to `secs`.
    pub fn wait_line(&self, needles: &[&str], secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l;
            }
            if !self.alive() {
                panic!(
                    "gitmirrord exited before logging {needles:?}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {secs}s:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the ready line; the QUIC and HTTP addresses it names.
    pub fn ready(&self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_line(&["ready: workers connect to"], 30);
        let quic = line
            .split("workers connect to ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap();
        let http = line
            .split("API on http://")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .unwrap();
        (quic.parse().unwrap(), http.parse().unwrap())
    }

    /// Resident memory of the daemon in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| !r.starts_with('Z')))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's VmRSS every 50 ms on a thread of its own until dropped; keeps the
/// peak.
pub struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        use std::sync::atomic::Ordering;
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A coordinator config for the binary: state and a plain-directory index in `dir`.
pub fn config(dir: &Path, listen: &str, http_listen: &str, extra: &str) -> String {
    format!(
        "listen: {listen}\nhttp_listen: {http_listen}\nstate_dir: {}\n\
         indexes: [{{name: t, url: {}, poll_interval: 1s}}]\n\
         liveness: {{keepalive_interval: 1s, suspect_after: 3s, dead_after: 4s}}\n{extra}",
        dir.join("state").display(),
        dir.join("index").display()
    )
}
