//! Initial mirrors of real repos (issue 11 §2): the worker's clone (`Mirrors::clone_new`)
//! against `git clone --mirror`, at equal concurrency, every repo of a directory served by
//! one `git daemon` on loopback.
//!
//! `GITMIRROR_BENCH_REPOS` names a directory of bare repos (each a subdirectory with
//! `objects/`); `scripts/bench-clone.sh` prepares one from public repos and runs this.
//! Without it the bench says so and does nothing. `GITMIRROR_BENCH_CONCURRENCY` (default
//! `1,4`) lists the concurrencies; at each, `GITMIRROR_BENCH_ROUNDS` rounds (default 3)
//! clone the whole set both ways, alternating which goes first. A round of N at a time is
//! N threads taking the next repo from one queue: ours on threads of this process, git as
//! N `git clone --mirror` processes. Wall time is the round's; CPU is this process's
//! (user + system, from `/proc/self/stat`) for ours and that of the waited-for `git`
//! processes and their children for git. The daemon and its `upload-pack`s are not
//! counted either way. Best and median rounds are printed with the ratios; at
//! concurrency 1, each repo's best time too.
//!
//! Before timing, each repo is cloned once both ways and the two mirrors compared: the
//! same `git for-each-ref` (names, objects, peeled objects), the same HEAD, and `git
//! fsck` passing on ours; a difference stops the bench.
//!
//! `GITMIRROR_BENCH_REPOS=DIR cargo bench -p gitmirror-worker --bench clone_real`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/daemon.rs"]
mod daemon;

use daemon::Daemon;
use gitmirror_worker::mirror::Mirrors;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn main() {
    let Some(dir) = std::env::var_os("GITMIRROR_BENCH_REPOS").map(PathBuf::from) else {
        println!(
            "clone_real: set GITMIRROR_BENCH_REPOS to a directory of bare repos \
             (scripts/bench-clone.sh prepares one); nothing to do"
        );
        return;
    };
    let concurrencies: Vec<usize> = std::env::var("GITMIRROR_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let rounds = std::env::var("GITMIRROR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let repos = list_repos(&dir);
    assert!(!repos.is_empty(), "no bare repos in {}", dir.display());
    let daemon = Daemon::start(&dir);
    let url = |name: &str| format!("git://127.0.0.1:{}/{name}", daemon.port);
    let work = tempfile::tempdir().unwrap();

    println!("repos ({}):", repos.len());
    for name in &repos {
        let refs = git_out(&dir.join(name), &["for-each-ref", "--format=x"])
            .lines()
            .count();
        println!("  {name:<24} {refs:>6} refs");
    }
    check_same(&repos, &url, work.path());

    for &c in &concurrencies {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut per_repo: Vec<(Duration, Duration)> =
            vec![(Duration::MAX, Duration::MAX); repos.len()];
        for round in 0..rounds {
            let base = work.path().join(format!("c{c}-r{round}"));
            let run_ours = |per_repo: &mut Vec<(Duration, Duration)>| {
                let m = Mirrors::new(base.join("ours"));
                m.prepare().unwrap();
                let r = run_set(&repos, c, &Cpu::SelfProcess, |name| {
                    m.clone_new(
                        &format!("b/{name}/{name}"),
                        &url(name),
                        &AtomicBool::new(false),
                    )
                    .unwrap_or_else(|e| panic!("clone of {name}: {e}"));
                });
                for (i, t) in r.each {
                    per_repo[i].0 = per_repo[i].0.min(t);
                }
                (r.wall, r.cpu)
            };
            let run_git = |per_repo: &mut Vec<(Duration, Duration)>| {
                std::fs::create_dir_all(base.join("git")).unwrap();
                let r = run_set(&repos, c, &Cpu::Children, |name| {
                    let st = Command::new("git")
                        .args(["clone", "--mirror", "-q", &url(name)])
                        .arg(base.join("git").join(format!("{name}.git")))
                        .status()
                        .unwrap();
                    assert!(st.success(), "git clone --mirror {name}");
                });
                for (i, t) in r.each {
                    per_repo[i].1 = per_repo[i].1.min(t);
                }
                (r.wall, r.cpu)
            };
            if round % 2 == 0 {
                ours.push(run_ours(&mut per_repo));
                theirs.push(run_git(&mut per_repo));
            } else {
                theirs.push(run_git(&mut per_repo));
                ours.push(run_ours(&mut per_repo));
            }
            std::fs::remove_dir_all(&base).unwrap();
        }
        report(c, rounds, &ours, &theirs);
        if c == 1 {
            println!("  each repo at 1 at a time, best of {rounds}: worker / git clone --mirror");
            for (name, (o, g)) in repos.iter().zip(&per_repo) {
                println!(
                    "    {name:<24} {:>7.3} s {:>7.3} s  ratio {:.2}",
                    o.as_secs_f64(),
                    g.as_secs_f64(),
                    o.as_secs_f64() / g.as_secs_f64().max(1e-9)
                );
            }
        }
    }
}

/// Subdirectories of `dir` that are bare repos, by name.
fn list_repos(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().join("objects").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Clone each repo once both ways and compare the mirrors (see the module documentation).
fn check_same(repos: &[String], url: &dyn Fn(&str) -> String, work: &Path) {
    let m = Mirrors::new(work.join("check"));
    m.prepare().unwrap();
    let each_ref = [
        "for-each-ref",
        "--format=%(refname) %(objectname) %(*objectname)",
    ];
    for name in repos {
        let id = format!("b/{name}/{name}");
        m.clone_new(&id, &url(name), &AtomicBool::new(false))
            .unwrap_or_else(|e| panic!("clone of {name}: {e}"));
        let theirs = work.join("check-git").join(format!("{name}.git"));
        let st = Command::new("git")
            .args(["clone", "--mirror", "-q", &url(name)])
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(st.success());
        let ours = m.path(&id);
        for args in [&each_ref[..], &["symbolic-ref", "-q", "HEAD"]] {
            assert_eq!(
                git_out(&ours, args),
                git_out(&theirs, args),
                "{name}: git {args:?} differs"
            );
        }
        let fsck = Command::new("git")
            .arg("--git-dir")
            .arg(&ours)
            .args(["fsck", "--no-progress", "--no-dangling"])
            .output()
            .unwrap();
        // Warnings about upstream history (serde has trees with bad file modes) are not
        // ours to fix; errors would be.
        assert!(
            fsck.status.success(),
            "{name}: git fsck: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
    println!(
        "check: every mirror has git clone --mirror's refs, peeled objects and HEAD; git fsck passes"
    );
    std::fs::remove_dir_all(work.join("check")).unwrap();
    std::fs::remove_dir_all(work.join("check-git")).unwrap();
}

/// Whose CPU time a run counts.
enum Cpu {
    /// This process (ours: threads of the bench).
    SelfProcess,
    /// Waited-for child processes (git).
    Children,
}

impl Cpu {
    /// User + system time so far, from `/proc/self/stat`.
    fn now(&self) -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest.split(' ').map(|s| s.parse().unwrap_or(0)).collect();
        // utime, stime, cutime, cstime are fields 14-17, i.e. 11-14 after the state.
        let ticks = match self {
            Cpu::SelfProcess => f[11] + f[12],
            Cpu::Children => f[13] + f[14],
        };
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }
}

struct SetRun {
    wall: Duration,
    cpu: Duration,
    /// (repo index, its time)
    each: Vec<(usize, Duration)>,
}

/// Run `one` over every repo, `c` at a time from one queue.
fn run_set(repos: &[String], c: usize, cpu: &Cpu, one: impl Fn(&str) + Sync) -> SetRun {
    let next = Mutex::new(0usize);
    let each = Mutex::new(Vec::new());
    let cpu0 = cpu.now();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..c {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(name) = repos.get(i) else { break };
                    let t = Instant::now();
                    one(name);
                    each.lock().unwrap().push((i, t.elapsed()));
                }
            });
        }
    });
    SetRun {
        wall: t.elapsed(),
        cpu: cpu.now().saturating_sub(cpu0),
        each: each.into_inner().unwrap(),
    }
}

fn report(c: usize, rounds: usize, ours: &[(Duration, Duration)], theirs: &[(Duration, Duration)]) {
    let stats = |v: &[(Duration, Duration)], pick: fn(&(Duration, Duration)) -> Duration| {
        let mut x: Vec<f64> = v.iter().map(|r| pick(r).as_secs_f64()).collect();
        x.sort_by(f64::total_cmp);
        (x[0], x[x.len() / 2])
    };
    let (ow, owm) = stats(ours, |r| r.0);
    let (gw, gwm) = stats(theirs, |r| r.0);
    let (oc, ocm) = stats(ours, |r| r.1);
    let (gc, gcm) = stats(theirs, |r| r.1);
    println!(
        "{c} at a time, {rounds} rounds (best / median): \
         wall worker {ow:.3} / {owm:.3} s, git {gw:.3} / {gwm:.3} s, ratio {:.2} / {:.2} (goal <= 0.6); \
         cpu worker {oc:.2} / {ocm:.2} s, git {gc:.2} / {gcm:.2} s, ratio {:.2} / {:.2}",
        ow / gw.max(1e-9),
        owm / gwm.max(1e-9),
        oc / gc.max(1e-9),
        ocm / gcm.max(1e-9),
    );
}

fn git_out(git_dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
