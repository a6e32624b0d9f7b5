//! The real `gitmirrord` as a child process ([`Daemon`]): its config, join token, start,
//! SIGHUP, `kill -9`, peak RSS and state dir size.

use crate::daemon::{Daemon, du, yaml_path};
use anyhow::{Context, Result, bail};
use gitmirror_wire::JoinToken;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    pub quic: SocketAddr,
    pub http: SocketAddr,
    process: Daemon,
}

impl Coordinator {
    /// Write the config for a coordinator in `dir` (emptied first) reading `index`.
    pub fn new(
        bin: &Path,
        dir: &Path,
        index: &Path,
        max_workers: usize,
        live: Liveness,
        host_budget: Option<u32>,
    ) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let quic = free_udp()?;
        let http = free_tcp()?;
        let state_dir = dir.join("state");
        let config = dir.join("gitmirrord.yaml");
        // Per-repo placement: the figures of docs/scale.md were measured so, and the
        // generated index (two repos per folder, neither named after it) would pair every
        // repo under `project` (design.md "Placement by project").
        let yaml = format!(
            "listen: {quic}\n\
             http_listen: {http}\n\
             state_dir: {state}\n\
             indexes:\n  - name: sim\n    url: {index}\n    poll_interval: 1h\n\
             max_workers: {max_workers}\n\
             placement: repo\n\
             liveness:\n  keepalive_interval: {ka}ms\n  suspect_after: {sa}ms\n  dead_after: {da}ms\n\
             log_level: info\n{limits}",
            limits = host_budget.map_or(String::new(), |n| format!(
                "host_limits: [{{host: {}, connections: {n}}}]\n",
                crate::worker::BUDGET_HOST
            )),
            state = yaml_path(&state_dir),
            index = yaml_path(index),
            ka = live.keepalive.as_millis(),
            sa = live.suspect_after.as_millis(),
            da = live.dead_after.as_millis(),
        );
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        let process = Daemon::new(
            "gitmirrord",
            bin,
            vec!["--config".into(), config.clone().into_os_string()],
            dir.join("gitmirrord.log"),
        );
        Ok(Self {
            bin: bin.to_owned(),
            config,
            state_dir,
            quic,
            http,
            process,
        })
    }

    /// `gitmirrord join-token`: creates the identity and prints the token.
    pub fn join_token(&self) -> Result<JoinToken> {
        let text = self.join_token_text()?;
        JoinToken::parse(&text).context("the token gitmirrord join-token printed")
    }

    /// The join token as `gitmirrord join-token` prints it (what a worker's config holds).
    pub fn join_token_text(&self) -> Result<String> {
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
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn log(&self) -> &Path {
        &self.process.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn start(&mut self) -> Result<()> {
        self.process.start()
    }

    /// SIGHUP: the coordinator reloads its config and polls every index now (SPEC §11).
    pub fn hangup(&self) -> Result<()> {
        self.process.signal(rustix::process::Signal::HUP)
    }

    /// `kill -9` (its peak RSS is kept first).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// An error naming the log when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Peak RSS of the running process so far, in MiB.
    pub fn current_hwm_mib(&self) -> Option<f64> {
        self.process.current_hwm_mib()
    }

    /// CPU seconds the running process has used.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.process.cpu_secs()
    }

    /// Peak RSS over every process run so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.process.peak_rss_mib()
    }

    /// Bytes the state dir takes on disk (as `du` counts them).
    pub fn state_dir_bytes(&self) -> u64 {
        du(&self.state_dir)
    }
}

pub fn free_udp() -> Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(s.local_addr()?)
}

pub fn free_tcp() -> Result<SocketAddr> {
    let s = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(s.local_addr()?)
}
