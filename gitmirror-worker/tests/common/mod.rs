//! Real git for tests: upstream repos made with the `git` binary, served by `git daemon`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Run git in `dir`, panicking with its stderr on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

/// [`git`] with extra environment variables.
pub fn git_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Poll `cond` until it holds or `within` passes.
pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An upstream repository in `<base>/<name>`.
pub struct Upstream {
    pub dir: PathBuf,
    counter: u32,
    /// Author and committer date of new commits (git's format), `None` for now.
    date: Option<String>,
}

impl Upstream {
    /// A repo with a few branches and both kinds of tags.
    pub fn create(base: &Path, name: &str) -> Self {
        Self::create_dated(base, name, None)
    }

    /// Like [`Upstream::create`], every commit dated `date` (e.g. `2020-01-01T00:00:00Z`):
    /// a repo nobody has touched for years.
    pub fn create_dated(base: &Path, name: &str, date: Option<&str>) -> Self {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        let mut u = Self {
            dir,
            counter: 0,
            date: date.map(str::to_owned),
        };
        u.commit("first");
        git(&u.dir, &["tag", "v1"]);
        git(&u.dir, &["tag", "-a", "v1-annotated", "-m", "annotated"]);
        git(&u.dir, &["branch", "dev"]);
        git(&u.dir, &["checkout", "-q", "-b", "feature/x"]);
        u.commit("on feature");
        git(&u.dir, &["checkout", "-q", "main"]);
        u.commit("second");
        u
    }

    pub fn commit(&mut self, msg: &str) -> String {
        self.counter += 1;
        std::fs::write(self.dir.join("file"), format!("{msg} {}\n", self.counter)).unwrap();
        git(&self.dir, &["add", "file"]);
        match &self.date {
            Some(d) => git_env(
                &self.dir,
                &["commit", "-q", "-m", msg],
                &[("GIT_AUTHOR_DATE", d), ("GIT_COMMITTER_DATE", d)],
            ),
            None => git(&self.dir, &["commit", "-q", "-m", msg]),
        };
        git(&self.dir, &["rev-parse", "HEAD"]).trim().to_owned()
    }
}

/// `refs/...` → oid as listed by `git ls-remote` (peeled `^{}` lines left out).
pub fn ls_remote(url: &str) -> BTreeMap<String, String> {
    let tmp = std::env::temp_dir();
    parse_ref_lines(&git(&tmp, &["ls-remote", url]))
        .into_iter()
        .filter(|(n, _)| n.starts_with("refs/") && !n.ends_with("^{}"))
        .collect()
}

/// All refs of a local repository.
pub fn local_refs(repo: &Path) -> BTreeMap<String, String> {
    parse_ref_lines(&git(
        repo,
        &["for-each-ref", "--format=%(objectname)\t%(refname)"],
    ))
}

fn parse_ref_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(oid, name)| (name.to_owned(), oid.to_owned()))
        .collect()
}

/// `<git --exec-path>/git-daemon`.
pub fn git_daemon_binary() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("git-daemon")
}

/// A `git daemon` serving `base` on a free localhost port, killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(base, port)
    }

    /// Serve `base` on `port` (e.g. again after [`GitDaemon::stop`]).
    pub fn start_on(base: &Path, port: u16) -> Self {
        Self::spawn(base, port, None)
    }

    /// Serve `base` with `--verbose`, its log (stderr) written to `log`: what an upstream
    /// operator reads.
    pub fn start_logged(base: &Path, log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::spawn(base, port, Some(log))
    }

    /// A daemon started some other way (e.g. from a unit file's command line), listening
    /// on `port`: waited for, then killed on drop like the others.
    pub fn adopt(child: Child, port: u16) -> Self {
        wait_for("git daemon to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port }
    }

    /// A free localhost port.
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn spawn(base: &Path, port: u16, log: Option<&Path>) -> Self {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create daemon log")),
            None => Stdio::null(),
        };
        // The daemon binary itself: `git daemon` runs it as a child, which killing `git`
        // would leave behind, still listening.
        let child = Command::new(git_daemon_binary())
            .arg("--export-all")
            .arg(format!("--base-path={}", base.display()))
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .args(log.map(|_| "--verbose"))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start git daemon");
        wait_for(
            "git daemon to listen",
            Duration::from_secs(10),
            || match log {
                // A probe connection would itself be logged as a client that hung up.
                Some(path) => {
                    std::fs::read_to_string(path).is_ok_and(|t| t.contains("Ready to rumble"))
                }
                None => TcpStream::connect(("127.0.0.1", port)).is_ok(),
            },
        );
        Self { child, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Kill the daemon and wait until its port refuses connections.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        wait_for(
            "git daemon to stop listening",
            Duration::from_secs(10),
            || TcpStream::connect(("127.0.0.1", port)).is_err(),
        );
        port
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
/// A tmpfs mounted for the test's lifetime.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount one of `size` (e.g. `4m`) at `at`; `None` when that is not allowed (not root).
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub mod coord;
pub mod harness;
pub mod http;
pub mod logs;
pub mod proxy;
