//! The real `gitmirrord` as a child process: its config, join token, start, `kill -9`,
//! peak RSS (`VmHWM` of `/proc/<pid>/status`) and state dir size.

use anyhow::{Context, Result, bail};
use gitmirror_wire::JoinToken;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Liveness settings written into the coordinator's config (SPEC §2.1 `liveness`).
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub keepalive: Duration,
    pub suspect_after: Duration,
    pub dead_after: Duration,
}

pub struct Coordinator {
    bin: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    child: Option<Child>,
    /// Highest `VmHWM` of the processes already gone, in KiB.
    peak_kib: u64,
}

impl Coordinator {
    /// Write the config for a coordinator in `dir` (emptied first) reading `index`.
    pub fn new(
        bin: &Path,
        dir: &Path,
        index: &Path,
        max_workers: usize,
        live: Liveness,
    ) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let quic = free_udp()?;
        let http = free_tcp()?;
        let state_dir = dir.join("state");
        let config = dir.join("gitmirrord.yaml");
        let yaml = format!(
            "listen: {quic}\n\
             http_listen: {http}\n\
             state_dir: {state}\n\
             indexes:\n  - name: sim\n    url: {index}\n    poll_interval: 1h\n\
             max_workers: {max_workers}\n\
             liveness:\n  keepalive_interval: {ka}ms\n  suspect_after: {sa}ms\n  dead_after: {da}ms\n\
             log_level: info\n",
            state = json_str(&state_dir),
            index = json_str(index),
            ka = live.keepalive.as_millis(),
            sa = live.suspect_after.as_millis(),
            da = live.dead_after.as_millis(),
        );
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        Ok(Self {
            bin: bin.to_owned(),
            config,
            state_dir,
            log: dir.join("gitmirrord.log"),
            quic,
            http,
            child: None,
            peak_kib: 0,
        })
    }

    /// `gitmirrord join-token`: creates the identity and prints the token.
    pub fn join_token(&self) -> Result<JoinToken> {
        let out = Command::new(&self.bin)
            .arg("join-token")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} join-token", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} join-token failed ({}): {}",
                self.bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        JoinToken::parse(text.trim()).context("the token gitmirrord join-token printed")
    }

    pub fn start(&mut self) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(log, "=== gitmirror-sim: starting gitmirrord ===")?;
        let err = log.try_clone()?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGHUP: the coordinator reloads its config and polls every index now (SPEC §11).
    pub fn hangup(&self) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id() as i32))
            .context("gitmirrord is not running")?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)
            .context("sending SIGHUP to gitmirrord")?;
        Ok(())
    }

    /// `kill -9` (its peak RSS is kept first).
    pub fn kill9(&mut self) {
        self.peak_kib = self.peak_kib.max(self.hwm_kib().unwrap_or(0));
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An error naming the log when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(c) = self.child.as_mut() else {
            bail!("gitmirrord is not running");
        };
        if let Ok(Some(status)) = c.try_wait() {
            bail!(
                "gitmirrord exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn hwm_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Peak RSS over every process run so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_kib.max(self.hwm_kib().unwrap_or(0)) as f64 / 1024.0
    }

    /// Bytes the state dir takes on disk (as `du` counts them).
    pub fn state_dir_bytes(&self) -> u64 {
        du(&self.state_dir)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += du(&e.path());
        }
    }
    total
}

/// A path as a YAML string (JSON strings are YAML).
fn json_str(p: &Path) -> String {
    serde_json::Value::String(p.to_string_lossy().into_owned()).to_string()
}

fn free_udp() -> Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(s.local_addr()?)
}

fn free_tcp() -> Result<SocketAddr> {
    let s = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(s.local_addr()?)
}
