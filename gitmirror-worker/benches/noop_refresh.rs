//! No-op refresh benchmark (SPEC §7.2: "upstream refs that did not change cost one ref
//! listing and no pack negotiation").
//!
//! 500 unchanged small repos served by `git daemon` on loopback; one refresh pass over all
//! of them, 8 at a time, three ways, in the same run:
//!
//! - the worker's own code (`Mirrors::fetch`, in this process);
//! - `git fetch --prune` in each mirror;
//! - `git ls-remote` of each upstream (the least any client can do).
//!
//! It prints wall time and client CPU per repo (this process's CPU for the worker,
//! children's CPU for git, both from `/proc/self/stat`) and the targets: worker CPU per
//! no-op check ≤ 1/4 of `git fetch`'s, wall ≤ 1.1 × the `git ls-remote` floor. It prints
//! figures; it does not fail on them.
//!
//! `cargo bench -p gitmirror-worker --bench noop_refresh`; `GITMIRROR_BENCH_REPOS=N` and
//! `GITMIRROR_BENCH_ROUNDS=N` change the size (default 500 repos, 3 rounds, best taken).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/daemon.rs"]
mod daemon;

use daemon::Daemon;
use gitmirror_worker::mirror::Mirrors;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 8;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: nothing to parse.
    let repos: usize = env_or("GITMIRROR_BENCH_REPOS", 500);
    let rounds: usize = env_or("GITMIRROR_BENCH_ROUNDS", 3).max(1);
    let base = tempfile::tempdir().unwrap();
    let up = base.path().join("upstream");
    let mirror_root = base.path().join("mirrors");
    std::fs::create_dir_all(&up).unwrap();

    let t = Instant::now();
    let template = up.join("template");
    make_template(&template);
    for i in 0..repos {
        let st = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(up.join(format!("r{i}")))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let daemon = Daemon::start(&up);
    let urls: Vec<String> = (0..repos)
        .map(|i| format!("git://127.0.0.1:{}/r{i}", daemon.port))
        .collect();
    let ids: Vec<String> = (0..repos).map(|i| format!("b/bench/r{i}")).collect();
    let mirrors = Arc::new(Mirrors::new(mirror_root.clone()));
    mirrors.prepare().unwrap();
    {
        let m = mirrors.clone();
        let (ids, urls) = (ids.clone(), urls.clone());
        parallel(repos, move |i| {
            m.clone_new(&ids[i], &urls[i], &AtomicBool::new(false))
                .unwrap_or_else(|e| panic!("clone {}: {e}", urls[i]));
        });
    }
    println!(
        "setup: {repos} repos created and mirrored in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let paths: Vec<PathBuf> = ids.iter().map(|id| mirrors.path(id)).collect();
    let mut worker = Vec::new();
    let mut fetch = Vec::new();
    let mut lsremote = Vec::new();
    for round in 0..rounds {
        // Interleaved, so each sees the same machine state.
        worker.push(measure(Who::SelfProcess, repos, {
            let m = mirrors.clone();
            let (ids, urls) = (ids.clone(), urls.clone());
            move |i| {
                let f = m
                    .fetch(&ids[i], &urls[i], &AtomicBool::new(false))
                    .unwrap_or_else(|e| panic!("fetch {}: {e}", urls[i]));
                assert!(!f.refs.is_empty());
            }
        }));
        fetch.push(measure(Who::Children, repos, {
            let paths = paths.clone();
            move |i| git(&paths[i], &["fetch", "--prune", "--quiet"])
        }));
        lsremote.push(measure(Who::Children, repos, {
            let urls = urls.clone();
            let dir = base.path().to_owned();
            move |i| git(&dir, &["ls-remote", &urls[i]])
        }));
        println!(
            "round {}: worker {:.2} s, git fetch {:.2} s, git ls-remote {:.2} s",
            round + 1,
            worker[round].wall.as_secs_f64(),
            fetch[round].wall.as_secs_f64(),
            lsremote[round].wall.as_secs_f64()
        );
    }
    let best = |v: &[Sample]| Sample {
        wall: v.iter().map(|s| s.wall).min().unwrap(),
        cpu: v.iter().map(|s| s.cpu).min().unwrap(),
    };
    let (w, f, l) = (best(&worker), best(&fetch), best(&lsremote));
    let per = |s: &Sample| s.cpu.as_secs_f64() * 1000.0 / repos as f64;
    println!();
    println!(
        "no-op refresh of {repos} unchanged repos, {CONCURRENCY} at a time (best of {rounds})"
    );
    println!(
        "{:<34} {:>8} {:>22}",
        "operation", "wall", "client CPU per repo"
    );
    for (name, s) in [
        ("worker (Mirrors::fetch)", &w),
        ("git fetch --prune each", &f),
        ("git ls-remote each (floor)", &l),
    ] {
        println!(
            "{name:<34} {:>6.2} s {:>19.2} ms",
            s.wall.as_secs_f64(),
            per(s)
        );
    }
    let cpu_ratio = per(&w) / per(&f).max(f64::EPSILON);
    let wall_ratio = w.wall.as_secs_f64() / l.wall.as_secs_f64().max(f64::EPSILON);
    println!();
    println!(
        "target: worker CPU per no-op check <= 1/4 of git fetch's: {:.2} ({}) ",
        cpu_ratio,
        if cpu_ratio <= 0.25 { "met" } else { "NOT met" }
    );
    println!(
        "target: worker wall <= 1.1 x git ls-remote's:            {:.2} ({})",
        wall_ratio,
        if wall_ratio <= 1.1 { "met" } else { "NOT met" }
    );
    println!(
        "(CPU from /proc/self/stat: the worker's own process; git's children. Clock ticks are 10 ms, summed over the pass.)"
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
enum Who {
    SelfProcess,
    Children,
}

struct Sample {
    wall: Duration,
    cpu: Duration,
}

/// Run `f(0..n)` on [`CONCURRENCY`] threads; wall time and the CPU of `who` meanwhile.
fn measure(who: Who, n: usize, f: impl Fn(usize) + Send + Sync + 'static) -> Sample {
    let before = cpu(who);
    let t = Instant::now();
    parallel(n, f);
    let wall = t.elapsed();
    Sample {
        wall,
        cpu: cpu(who).saturating_sub(before),
    }
}

fn parallel(n: usize, f: impl Fn(usize) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (f, next) = (f.clone(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// utime+stime of this process, or cutime+cstime of its waited-for children.
fn cpu(who: Who) -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime is field 14 overall.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state), so field k is rest[k - 3].
    let ticks = match who {
        Who::SelfProcess => f[14 - 3] + f[15 - 3],
        Who::Children => f[16 - 3] + f[17 - 3],
    };
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_template(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let g = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=b",
                "-c",
                "user.email=b@example.org",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    g(&["init", "-q", "-b", "main"]);
    for i in 0..5 {
        std::fs::write(dir.join("file"), format!("content {i}\n")).unwrap();
        g(&["add", "file"]);
        g(&["commit", "-q", "-m", &format!("commit {i}")]);
    }
    g(&["tag", "v1"]);
    g(&["branch", "dev"]);
}
