//! A daemon binary run as a child process: stdout and stderr appended to one log file,
//! `kill -9`, the exit noticed, and its peak RSS (`VmHWM` of `/proc/<pid>/status`) kept
//! across restarts. The coordinator and the real workers are each one of these.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Daemon {
    /// Names the process in messages (`gitmirrord`, `worker 2`).
    label: String,
    bin: PathBuf,
    args: Vec<OsString>,
    pub log: PathBuf,
    child: Option<Child>,
    /// Highest `VmHWM` of the processes already gone, in KiB.
    peak_kib: u64,
}

impl Daemon {
    pub fn new(label: &str, bin: &Path, args: Vec<OsString>, log: PathBuf) -> Self {
        Self {
            label: label.to_owned(),
            bin: bin.to_owned(),
            args,
            log,
            child: None,
            peak_kib: 0,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(log, "=== gitmirror-sim: starting {} ===", self.label)?;
        let err = log.try_clone()?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send `signal` to the running process.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        let pid = self
            .pid()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            .with_context(|| format!("{} is not running", self.label))?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("sending {signal:?} to {}", self.label))?;
        Ok(())
    }

    /// `kill -9` and reap (its peak RSS is kept first).
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
            bail!("{} is not running", self.label);
        };
        if let Ok(Some(status)) = c.try_wait() {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.label,
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Bytes `path` takes on disk (as `du` counts them).
pub fn du(path: &Path) -> u64 {
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
pub fn yaml_path(p: &Path) -> String {
    serde_json::Value::String(p.to_string_lossy().into_owned()).to_string()
}
