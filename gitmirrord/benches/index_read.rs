//! Index read at scale (SPEC §3, §12; docs/scale.md "Index read"): the time and peak RSS
//! of the first read of an index of N entries (the git fetch into the state dir apart;
//! read, parse, save the applied state, make the delta), of a poll with no new commit, of
//! one with a commit changing 10 entries, and of a restart that loads the applied state.
//!
//! `cargo bench -p gitmirrord --bench index_read` reads the indexes gitmirror-sim left in
//! /var/tmp/sim (`INDEX=/path/to/index.git` for another; build one with
//! `gitmirror-sim --repos N --index-only`). `BENCH_DIR=/path` sets where the state dir goes
//! (default the system temp dir); `KEEP_STATE=/dir` keeps the applied state of the last
//! index read there, and `OPEN_ONLY=/dir` then only loads it, in a process of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark program

use gitmirrord::index::{IndexSettings, IndexSource, Indexes};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Peak RSS of this process since the last [`reset_peak`], in MiB (`VmHWM`).
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resident set now, in MiB (`VmRSS`).
fn current_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Start a new peak: writing 5 to clear_refs resets `VmHWM` to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn settings(dir: &Path) -> IndexSettings {
    IndexSettings {
        dir: dir.to_owned(),
        allow_file_urls: false,
        purge_protect_percent: 10.0,
        credentials: Default::default(),
    }
}

/// CPU seconds used so far by this process (all threads) and by its git children that
/// ended (`utime`, `stime`, `cutime`, `cstime` of /proc/self/stat, at 100 ticks a
/// second): on a machine shared with builds, wall time varies with the load, CPU less.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0) / 100.0)
        .collect();
    match f[..] {
        [u, s, cu, cs] => (u + s, cu + cs),
        _ => (0.0, 0.0),
    }
}

fn measure<T>(what: &str, f: impl FnOnce() -> T) -> T {
    reset_peak();
    let (own, children) = cpu_seconds();
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    let (own2, children2) = cpu_seconds();
    println!(
        "  {what:<44} {:>8.2} s   peak RSS {:>7.0} MiB   CPU {:>6.2} s (git {:.2} s)",
        took.as_secs_f64(),
        peak_mib(),
        own2 - own + children2 - children,
        children2 - children,
    );
    out
}

fn git(index: &Path, args: &[&str], env: Option<&Path>, input: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = std::process::Command::new("git");
    cmd.arg("--git-dir").arg(index).args(args);
    if let Some(file) = env {
        cmd.env("GIT_INDEX_FILE", file);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Point `refs/heads/gitmirror-bench` at a child of `refs/sim/full` whose first `n`
/// entries have another URL (built in a scratch git index file, the work tree untouched).
fn commit_changing(index: &Path, n: usize) -> bool {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("index");
    git(index, &["read-tree", "refs/sim/full"], Some(&file), None);
    let paths = git(
        index,
        &["ls-tree", "-r", "--name-only", "refs/sim/full"],
        None,
        None,
    );
    for path in paths
        .lines()
        .filter(|p| p.matches('/').count() == 2)
        .take(n)
    {
        let blob = git(
            index,
            &["hash-object", "-w", "--stdin"],
            None,
            Some(&format!("url: https://changed.example.invalid/{path}\n")),
        );
        let info = format!("100644,{blob},{path}");
        git(
            index,
            &["update-index", "--cacheinfo", &info],
            Some(&file),
            None,
        );
    }
    let tree = git(index, &["write-tree"], Some(&file), None);
    let commit = git(
        index,
        &[
            "commit-tree",
            &tree,
            "-p",
            "refs/sim/full",
            "-m",
            "bench: 10 changed",
        ],
        None,
        None,
    );
    git(
        index,
        &["update-ref", "refs/heads/gitmirror-bench", &commit],
        None,
        None,
    );
    true
}

fn bench(index: &Path) {
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let dir = tmp.path().join("index");
    // gitmirror-sim keeps the full index at refs/sim/full and moves its branch there only
    // during a run: read that commit through a branch of its own.
    let full = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(index)
        .args(["update-ref", "refs/heads/gitmirror-bench", "refs/sim/full"])
        .status()
        .is_ok_and(|s| s.success());
    let source = IndexSource {
        name: "bench".into(),
        url: index.display().to_string(),
        branch: full.then(|| "gitmirror-bench".to_owned()),
        poll_interval: Duration::from_secs(3600),
    };
    println!("{}", index.display());
    let mut ix = Indexes::open(vec![source.clone()], settings(&dir)).unwrap();
    // The fetch into the state dir is timed apart: it is git copying a pack, not our read.
    measure("fetch (git, first poll's clone)", || {
        gitmirrord::index::prefetch(&source, &dir).unwrap()
    });
    let delta = measure("first read (read, parse, save, delta)", || {
        ix.poll(true).unwrap()
    });
    let st = &ix.status()[0];
    println!(
        "  entries {}, rejected {}, delta added {}",
        st.entries,
        st.rejected.len(),
        delta.added.len()
    );
    drop(delta);
    measure("poll, no new commit", || {
        assert!(ix.poll(true).unwrap().is_empty())
    });
    if full && commit_changing(index, 10) {
        let delta = measure("poll, a commit changing 10 entries", || {
            ix.poll(true).unwrap()
        });
        assert_eq!(delta.changed.len(), 10, "{delta:?}");
    }
    drop(ix);
    let ix = measure("restart: open (load applied state)", || {
        Indexes::open(vec![source.clone()], settings(&dir)).unwrap()
    });
    println!(
        "  applied state: {} entries, {:.1} MiB on disk",
        ix.len(),
        gitmirrord::index::state_bytes(&dir) as f64 / (1024.0 * 1024.0)
    );
    drop(ix);
    // What the first read's delta costs alone: every entry as an `Entry` (with its
    // metadata as a serde_json map), as `Delta::added` and `Fleet::new` take them.
    let ix = Indexes::open(vec![source.clone()], settings(&dir)).unwrap();
    let rss = current_mib();
    let all = measure("all entries as Entry (the first delta)", || {
        ix.entries().collect::<Vec<_>>()
    });
    println!(
        "  {} entries as Entry: +{:.0} MiB RSS",
        all.len(),
        current_mib() - rss
    );
    drop(all);
    drop(ix);
    // The sim's way: its coordinator reads an empty commit first, then the full one.
    let moved = |to: &str| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(index)
            .args(["update-ref", "refs/heads/gitmirror-bench", to])
            .status()
            .is_ok_and(|s| s.success())
    };
    if full && moved("refs/sim/empty") {
        let dir = tmp.path().join("index-from-empty");
        let mut ix = Indexes::open(vec![source.clone()], settings(&dir)).unwrap();
        ix.poll(true).unwrap();
        if moved("refs/sim/full") {
            let delta = measure("read after an empty commit (as the sim)", || {
                ix.poll(true).unwrap()
            });
            assert_eq!(delta.added.len(), ix.len());
        }
    }
    if let Some(keep) = std::env::var_os("KEEP_STATE") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        std::fs::copy(dir.join("applied.state"), keep.join("applied.state")).unwrap();
    }
}

/// `OPEN_ONLY=<state dir>`: only load the applied state an earlier run kept there
/// (`KEEP_STATE=<dir>`), in a process of its own, so its RSS is the applied state's alone.
fn open_only(dir: &Path) {
    let source = IndexSource {
        name: "bench".into(),
        url: "/nonexistent".into(),
        branch: None,
        poll_interval: Duration::from_secs(3600),
    };
    let rss = current_mib();
    let ix = measure("open (load applied state), fresh process", || {
        Indexes::open(vec![source], settings(dir)).unwrap()
    });
    println!(
        "  {} entries loaded: +{:.0} MiB RSS ({:.0} MiB in all)",
        ix.len(),
        current_mib() - rss,
        current_mib()
    );
}

fn main() {
    if let Some(dir) = std::env::var_os("OPEN_ONLY") {
        open_only(Path::new(&dir));
        return;
    }
    let indexes: Vec<PathBuf> = match std::env::var_os("INDEX") {
        Some(p) => vec![PathBuf::from(p)],
        None => [
            "/var/tmp/sim/gen100k/index-100000.git",
            "/var/tmp/sim/gen1m/index-1000000.git",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect(),
    };
    if indexes.is_empty() {
        eprintln!("no index found: set INDEX or run gitmirror-sim --index-only first");
        return;
    }
    for index in &indexes {
        bench(index);
    }
}
