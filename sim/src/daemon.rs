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
            // The daemons' log filter: `GITMIRROR_SIM_DAEMON_LOG` (e.g.
            // `info,gitmirrord::turns=debug` for the coordinator's long turns), else info.
            .env(
                "RUST_LOG",
                std::env::var("GITMIRROR_SIM_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
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

    /// Peak RSS of the running process so far, in MiB.
    pub fn current_hwm_mib(&self) -> Option<f64> {
        self.hwm_kib().map(|k| k as f64 / 1024.0)
    }

    fn hwm_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time (user + system) the running process has used so far, in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(self.pid()?)
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

/// CPU time (user + system) of process `pid` so far, in seconds: fields 14 and 15 of
/// `/proc/<pid>/stat`, in clock ticks of 1/100 s (USER_HZ, fixed by the kernel's ABI).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from the `)` that ends it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1-minute load average of the machine (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_and_load_are_read_from_proc() {
        // Spin until the kernel has counted a tick of ours (10 ms): the fields read are
        // the ones that grow.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        let cpu = loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            let cpu = cpu_secs(std::process::id()).expect("own /proc/<pid>/stat");
            if cpu > 0.0 || std::time::Instant::now() > deadline {
                break cpu;
            }
        };
        assert!(cpu > 0.0, "no CPU time counted ({x})");
        assert!(cpu_secs(u32::MAX).is_none(), "no such process");
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }
}
