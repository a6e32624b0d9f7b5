//! Initial mirror of a ref-heavy repo (issue 11 §2, issue 9): the worker's clone
//! (`Mirrors::clone_new`, gix's protocol layer plus one `packed-refs` write) against
//! `git clone --mirror`, one repo served by `git daemon` on loopback.
//!
//! The upstream has `GITMIRROR_BENCH_COMMITS` commits (default 2,000) on `main` and
//! `GITMIRROR_BENCH_REFS` extra refs (default 20,000, `refs/pull/<i>/head`, as a code
//! review host keeps them) spread over those commits. Each way runs
//! `GITMIRROR_BENCH_ROUNDS` times (default 3), interleaved; the best wall time is
//! printed with the ratio. Then the upstream gets as many refs again and one fetch of the
//! last round's mirrors (ours against `git fetch --prune`) is timed. It prints figures; it
//! does not fail on them.
//!
//! `cargo bench -p gitmirror-worker --bench clone_refs`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/daemon.rs"]
mod daemon;

use daemon::Daemon;
use gitmirror_worker::mirror::Mirrors;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn main() {
    let commits = env_or("GITMIRROR_BENCH_COMMITS", 2000).max(1);
    let refs = env_or("GITMIRROR_BENCH_REFS", 20_000);
    let rounds = env_or("GITMIRROR_BENCH_ROUNDS", 3).max(1);
    let base = tempfile::tempdir().unwrap();
    let up = base.path().join("upstream");
    let t = Instant::now();
    make_upstream(&up.join("big"), commits, refs);
    let daemon = Daemon::start(&up);
    let url = format!("git://127.0.0.1:{}/big", daemon.port);
    println!(
        "setup: upstream with {commits} commits and {} refs in {:.1} s",
        refs + 1,
        t.elapsed().as_secs_f64()
    );

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let m = Mirrors::new(base.path().join(format!("ours{round}")));
        m.prepare().unwrap();
        let t = Instant::now();
        let fetched = m
            .clone_new("b/big/big", &url, &AtomicBool::new(false))
            .unwrap_or_else(|e| panic!("clone: {e}"));
        ours.push(t.elapsed());
        assert_eq!(fetched.refs.len(), refs + 1);

        let dir = base.path().join(format!("git{round}.git"));
        let t = Instant::now();
        let st = Command::new("git")
            .args(["clone", "--mirror", "-q", &url])
            .arg(&dir)
            .status()
            .unwrap();
        theirs.push(t.elapsed());
        assert!(st.success());
    }
    // Then a fetch that brings as many new refs again (gix writes fetched refs through its
    // ref transaction: a lock file and a loose ref each), against `git fetch --prune`.
    add_refs(&up.join("big"), refs, "changes");
    let m = Mirrors::new(base.path().join(format!("ours{}", rounds - 1)));
    let t = Instant::now();
    let fetched = m
        .fetch("b/big/big", &url, &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("fetch: {e}"));
    let our_fetch = t.elapsed();
    assert_eq!(fetched.refs.len(), 2 * refs + 1);
    let t = Instant::now();
    let st = Command::new("git")
        .arg("-C")
        .arg(base.path().join(format!("git{}.git", rounds - 1)))
        .args(["fetch", "--prune", "-q", "origin"])
        .status()
        .unwrap();
    let git_fetch = t.elapsed();
    assert!(st.success());
    println!(
        "fetch adding {refs} refs: worker {:.3} s, git fetch --prune {:.3} s, ratio {:.2}",
        our_fetch.as_secs_f64(),
        git_fetch.as_secs_f64(),
        our_fetch.as_secs_f64() / git_fetch.as_secs_f64().max(1e-9)
    );
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (o, g) = (best(&ours), best(&theirs));
    println!(
        "clone of {} refs, best of {rounds}: worker {:.3} s, git clone --mirror {:.3} s, ratio {:.2} (goal <= 0.6)",
        refs + 1,
        o.as_secs_f64(),
        g.as_secs_f64(),
        o.as_secs_f64() / g.as_secs_f64().max(1e-9)
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A repo with a linear history of `commits` commits (one `git fast-import`) and `refs`
/// refs over them, written straight into `packed-refs`.
fn make_upstream(dir: &Path, commits: usize, refs: usize) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    let mut stream = String::new();
    for i in 0..commits {
        let content = format!("line {i}\n");
        stream.push_str(&format!(
            "commit refs/heads/main\nmark :{}\ncommitter t <t@example.org> {} +0000\ndata 2\nc\n",
            i + 1,
            1_600_000_000 + i
        ));
        if i > 0 {
            stream.push_str(&format!("from :{i}\n"));
        }
        stream.push_str(&format!(
            "M 644 inline f{}\ndata {}\n{content}\n",
            i % 100,
            content.len()
        ));
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    git(dir, &["pack-refs", "--all"]);
    add_refs(dir, refs, "pull");
}

/// Add `refs` refs `refs/<kind>/<i>/head` over the commits of `main`, straight into
/// `packed-refs`.
fn add_refs(dir: &Path, refs: usize, kind: &str) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-list", "main"])
        .output()
        .unwrap();
    let oids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let packed = dir.join(".git/packed-refs");
    let mut text = std::fs::read_to_string(&packed).unwrap();
    for i in 0..refs {
        text.push_str(&format!("{} refs/{kind}/{i}/head\n", oids[i % oids.len()]));
    }
    // Not claimed sorted: git sorts it when it reads it.
    let text = text.replace(" sorted", "");
    std::fs::write(&packed, text).unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}
