//! Fault suite, worker side: the real binaries under `kill -9` at random moments during
//! clones and fetches, local damage to mirrors and state files, and a full disk.
//!
//! Bounded form by default (CI); `GITMIRROR_FAULTS=long` runs the long form. Kill moments
//! come from a seeded RNG: the seed is printed, and `GITMIRROR_SEED=<n>` replays it.
//! Figures go through [`figure`] (suite `faults_worker`).

use gitmirror_tests::daemons::{SETTLE, str_field};
use gitmirror_tests::git::{
    fast_import, git_command, is_bare_repo, repo_id, repo_name, try_git, try_mirror_refs,
};
use gitmirror_tests::{
    Fleet, GitDaemon, Proc, Rng, Worker, figure, long_form, ls_remote, rounds, tail, wait_for,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

const SUITE: &str = "faults_worker";

// ---- upstream repos with some weight ----

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Append to `s` one commit on `branch` adding a file of `blob` random bytes.
fn push_commit(
    s: &mut Vec<u8>,
    rng: &mut Rng,
    branch: &str,
    from: Option<&str>,
    n: usize,
    blob: usize,
) {
    let data = rng.bytes(blob);
    let msg = format!("commit {n} on {branch}");
    s.extend_from_slice(
        format!(
            "commit refs/heads/{branch}\ncommitter t <t@gitmirror.invalid> {} +0000\ndata {}\n{msg}\n",
            unix_now(),
            msg.len()
        )
        .as_bytes(),
    );
    if let Some(from) = from {
        s.extend_from_slice(format!("from {from}\n").as_bytes());
    }
    s.extend_from_slice(format!("M 100644 inline f{}\ndata {}\n", n % 7, data.len()).as_bytes());
    s.extend_from_slice(&data);
    s.extend_from_slice(b"\n\n");
}

/// Create upstream repo `name` with `commits` commits, each adding `blob` random
/// (incompressible) bytes, plus a tag: big enough that a debug-build clone takes a while.
fn create_big_repo(
    daemon: &GitDaemon,
    name: &str,
    commits: usize,
    blob: usize,
    rng: &mut Rng,
) -> String {
    let path = daemon.repo_path(name);
    let p = path.to_str().expect("utf-8 path");
    try_git(["init", "-q", "--bare", "-b", "master", p]).unwrap_or_else(|e| panic!("{e}"));
    let mut s = Vec::with_capacity(commits * (2 * blob + 200));
    for n in 0..commits {
        push_commit(&mut s, rng, "master", None, n, blob);
    }
    s.extend_from_slice(b"reset refs/tags/v1\nfrom refs/heads/master\n\n");
    fast_import(&path, &s);
    daemon.url(name)
}

/// One more commit on `branch` of upstream `name` carrying `blob` random bytes.
fn grow(daemon: &GitDaemon, name: &str, branch: &str, blob: usize, rng: &mut Rng) {
    let path = daemon.repo_path(name);
    let mut s = Vec::new();
    let n = rng.range(0, 1 << 40) as usize;
    let exists = try_git([
        "--git-dir",
        path.to_str().expect("utf-8 path"),
        "rev-parse",
        "--verify",
        "-q",
        &format!("refs/heads/{branch}"),
    ])
    .is_ok();
    let from = if exists {
        format!("refs/heads/{branch}^0")
    } else {
        "refs/heads/master^0".to_owned()
    };
    push_commit(&mut s, rng, branch, Some(&from), n, blob);
    fast_import(&path, &s);
}

// ---- looking at mirrors ----

/// `git fsck` of a mirror (`--connectivity-only` when not `full`).
fn fsck(git_dir: &Path, full: bool) -> Result<(), String> {
    let gd = git_dir.to_str().expect("utf-8 path");
    let mut args = vec!["--git-dir", gd, "fsck", "--no-progress", "--no-dangling"];
    if !full {
        args.push("--connectivity-only");
    }
    try_git(args).map(|_| ())
}

/// A mirror at a final path must be whole: fsck passes and it has refs.
fn whole(git_dir: &Path, full: bool) -> Result<(), String> {
    fsck(git_dir, full)?;
    let refs = try_mirror_refs(git_dir)?;
    if refs.is_empty() {
        return Err(format!("{} has no refs", git_dir.display()));
    }
    Ok(())
}

fn inode(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// Names in the worker's temp directory (`<mirror_dir>.tmp/`, or `<mirror_dir>/.tmp/` on
/// a mount point).
fn tmp_entries(w: &Worker) -> BTreeSet<String> {
    std::fs::read_dir(w.work_dir(".tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Temp files of packs being received (`objects/pack/.tmp*`, `tmp_*`) in a mirror.
fn partial_packs(git_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(git_dir.join("objects").join("pack"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".tmp") || n.starts_with("tmp_")
        })
        .map(|e| e.path())
        .collect()
}

/// Every `<id>.git` directory under a mirror directory (not in `.tmp/` or `.trash/`), as
/// repo id → path.
fn final_paths(mirror_dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut todo = vec![(mirror_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type().is_ok_and(|t| t.is_dir()) || (depth == 0 && name.starts_with('.')) {
                continue;
            }
            let p = e.path();
            match name.strip_suffix(".git") {
                Some(_) if depth == 2 => {
                    let rel = p.strip_prefix(mirror_dir).expect("under the mirror dir");
                    let id = rel.to_string_lossy();
                    found.insert(id.trim_end_matches(".git").to_owned(), p);
                }
                _ if depth < 2 => todo.push((p, depth + 1)),
                _ => {}
            }
        }
    }
    found
}

/// Refs per repo as the coordinator's events tell them: every event's ref changes applied
/// in sequence order. `Err` unless the events are consistent, as SPEC §8 makes them when
/// each change is reported exactly once: sequence numbers gap-free and increasing, one
/// `cloned` event per repo and before any other, and every change's `old` equal to what
/// the events before it left (a repeated or a lost change breaks that).
fn refs_from_events(
    events: &[Value],
) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let mut refs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut last_seq = None;
    for e in events {
        let seq = e["seq"]
            .as_u64()
            .ok_or_else(|| format!("event without seq: {e}"))?;
        if let Some(last) = last_seq
            && seq != last + 1
        {
            return Err(format!("event {seq} follows {last}"));
        }
        last_seq = Some(seq);
        let id = str_field(e, "repo");
        let kind = str_field(e, "kind");
        let known = refs.contains_key(&id);
        match kind.as_str() {
            "cloned" if known => return Err(format!("event {seq}: {id} cloned again: {e}")),
            "updated" if !known => {
                return Err(format!("event {seq}: {id} updated before cloned: {e}"));
            }
            "cloned" | "updated" => {}
            _ => return Err(format!("event {seq}: unexpected kind: {e}")),
        }
        let repo = refs.entry(id.clone()).or_default();
        for r in e["refs"].as_array().into_iter().flatten() {
            let name = str_field(r, "name");
            let old = r["old"].as_str();
            if old != repo.get(&name).map(String::as_str) {
                return Err(format!(
                    "event {seq}: {id} {name} changes from {old:?}, but the events before left {:?}: {e}",
                    repo.get(&name)
                ));
            }
            match r["new"].as_str() {
                Some(new) => repo.insert(name, new.to_owned()),
                None => repo.remove(&name),
            };
        }
    }
    Ok(refs)
}

/// Copy upstream repo `from` to a new upstream `name` with one commit of its own (cheaper
/// than building another big repo).
fn copy_repo(daemon: &GitDaemon, from: &str, name: &str, rng: &mut Rng) -> String {
    let (src, dst) = (daemon.repo_path(from), daemon.repo_path(name));
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
    grow(daemon, name, "master", 1000, rng);
    daemon.url(name)
}

/// What an fsck of a mirror depends on: the directory, its refs and its object files. A
/// mirror whose fingerprint did not change since it last passed need not be checked again.
fn fingerprint(git_dir: &Path) -> Result<String, String> {
    let mut fp = format!("{:?}", inode(git_dir));
    fp += &format!("{:?}", try_mirror_refs(git_dir)?);
    let objects = git_dir.join("objects");
    let mut names: Vec<String> = Vec::new();
    for dir in [objects.join("pack"), objects.clone()] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            let kids = std::fs::read_dir(e.path())
                .map(|rd| rd.count())
                .unwrap_or(0);
            names.push(format!("{}:{len}:{kids}", e.path().display()));
        }
    }
    names.sort();
    fp += &names.join(",");
    Ok(fp)
}

/// Poll (5 ms) until `check` holds or `limit` passes; true if it held. For steering fault
/// injection, where not getting there is no failure.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// 1.2 × the median duration (ms) of the big repos' clones logged so far (2.5 s before
/// there is any).
fn clone_span(log: &str) -> u64 {
    let mut ms: Vec<u64> = log
        .lines()
        .filter(|l| {
            l.contains(" cloned repo=c/crashbig/") || l.contains(" cloned repo=c/crashnew/")
        })
        .filter_map(|l| {
            l.split("secs=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|s| (s * 1000.0) as u64)
        .collect();
    ms.sort_unstable();
    ms.get(ms.len() / 2).map_or(2500, |m| (m * 6 / 5).max(200))
}

// ---- 1. kill -9 during clones and fetches ----

// SPEC §7.1 (clones happen in `.tmp/` and are renamed into place only when complete; a
// half-done clone is never visible at the final path; leftovers in `.tmp/` are removed at
// start), §10 (after `kill -9` at any moment a daemon restarts into a consistent state and
// loses no acknowledged event), §8 (a change is never lost when a worker crashes between
// fetching and reporting), §7.3 (a mirror is never deleted because of a failure).
//
// One worker holds every repo. It is killed (seeded random moments) and restarted at once,
// so the coordinator never declares it dead and nothing moves. Rounds alternate at random
// between clone rounds (a clone is made due: a new big repo in the index, a mirror removed
// while the worker is down, or a mirror whose packs were deleted, which its next fetch finds
// corrupt and re-clones, asked for by `POST …/fetch`; the kill falls at a random moment
// after the clone shows up in `.tmp/`) and fetch rounds (upstream commits with data and
// new branches; the kill falls at a random moment after the start).
//
// Checked after every kill, while the disk is still (the worker is dead; checking there
// rather than at checkpoints means every crash moment is looked at): every `<id>.git` in
// the mirror directory is a repo of the index, every mirror at a final path passes `git
// fsck --connectivity-only` and has refs (re-checked only when it changed; a full fsck at
// the end; a mirror the test broke is exempt until a new one is swapped in), no mirror
// seen before has vanished (a broken one included), and `.tmp/` leftovers of the previous kill
// are gone once the restarted worker logged its start. At the end (the worker left alone):
// every repo mirrored, equal to `git ls-remote`, full `git fsck` clean, `.tmp/` empty, and
// the coordinator's events are consistent (one `cloned` per repo, every change's `old` what
// the events before it left: none lost, none repeated) and replayed give every repo's
// upstream refs.
#[test]
fn kill_9_during_clones_and_fetches_loses_nothing() {
    let mut rng = Rng::seeded("kill_9_during_clones_and_fetches_loses_nothing");
    let started = Instant::now();
    let daemon = GitDaemon::shared();
    // About 36,000 objects: a clone takes a noticeable moment even on loopback.
    let base = "crashbase-r00";
    create_big_repo(&daemon, base, 12_000, 300, &mut rng);
    let mut repos = BTreeMap::new();
    for i in 0..3 {
        let name = format!("crashbig-r{i:02}");
        let url = copy_repo(&daemon, base, &name, &mut rng);
        repos.insert(repo_id(&name), url);
    }
    repos.extend(daemon.repo_set("crashsmall", 4));
    eprintln!("upstreams made in {:.1?}", started.elapsed());

    // Plain mirrors (SPEC §14 pools are on by default): this round "corrupts" a mirror by
    // deleting its packs, which a pool member survives (its objects are in the pool).
    let mut fleet = Fleet::start("crash", &repos, 0);
    fleet.create_worker_with(1.0, |yaml| {
        yaml.replace("  concurrency: 8\n", "  concurrency: 8\n  pools: false\n")
    });
    fleet.workers[0].start();
    let total_rounds = rounds(20, 200);
    let max_added = if long_form() { 15 } else { 6 };

    let mut problems: Vec<String> = Vec::new();
    let (mut kills, mut clone_rounds, mut interrupted) = (0u64, 0u64, 0u64);
    let (mut lost, mut damaged, mut recloned, mut removed_by_us) = (0u64, 0u64, 0u64, 0u64);
    let mut fsck_runs = 0u64;
    // Mirrors the test made corrupt: id → inode, until the worker swaps a new clone in.
    let mut corrupted: BTreeMap<String, u64> = BTreeMap::new();
    let (mut corrupted_by_us, mut healed) = (0u64, 0u64);
    let mut partial: BTreeSet<PathBuf> = BTreeSet::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut checked: BTreeMap<String, String> = BTreeMap::new();
    let mut leftovers: BTreeSet<String> = BTreeSet::new();
    let mut added = 0usize;
    let mut mark = 0;

    for round in 0..total_rounds {
        let round_start = Instant::now();
        let mut fetch_now: Option<String> = None;
        let clone_round = round == 0 || rng.range(0, 2) == 0;
        if round > 0 {
            let w = &fleet.workers[0];
            if clone_round {
                clone_rounds += 1;
                let pending = fleet.repos.keys().any(|id| !w.has_mirror(id));
                // A third each: a new repo (while there are fewer than `max_added`), a
                // mirror removed, a mirror corrupted.
                let how = rng.range(0, 3);
                if !pending && added < max_added && how == 0 {
                    let name = format!("crashnew-r{added:02}");
                    added += 1;
                    let url = copy_repo(&daemon, base, &name, &mut rng);
                    let id = repo_id(&name);
                    fleet.index.put_url(&id, &url);
                    fleet.index.commit(&format!("add {id}"));
                    fleet.repos.insert(id, url);
                } else if !pending {
                    // The worker is down: take a big mirror away (it must clone it again),
                    // or lose its packs (its next fetch finds it corrupt and re-clones it).
                    let ids: Vec<String> = fleet
                        .repos
                        .keys()
                        .filter(|id| !id.starts_with("c/crashsmall/"))
                        .filter(|id| !corrupted.contains_key(*id))
                        .cloned()
                        .collect();
                    let id = ids[rng.range(0, ids.len() as u64) as usize].clone();
                    let path = w.mirror_path(&id);
                    if how == 1 {
                        std::fs::remove_dir_all(&path).expect("remove a mirror");
                        seen.remove(&id);
                        removed_by_us += 1;
                    } else {
                        let packs = path.join("objects").join("pack");
                        for e in std::fs::read_dir(&packs).expect("list packs").flatten() {
                            if e.file_name().to_string_lossy().ends_with(".pack") {
                                std::fs::remove_file(e.path()).expect("remove a pack");
                            }
                        }
                        corrupted.insert(id.clone(), inode(&path).expect("mirror inode"));
                        fetch_now = Some(id.clone());
                        corrupted_by_us += 1;
                    }
                    checked.remove(&id);
                }
            } else {
                // Upstream moves: commits with data, sometimes on a new branch.
                for _ in 0..rng.range(1, 5) {
                    let ids: Vec<&String> = fleet.repos.keys().collect();
                    let name = repo_name(ids[rng.range(0, ids.len() as u64) as usize]).to_owned();
                    let branch = if rng.range(0, 5) == 0 {
                        format!("b{round}")
                    } else {
                        "master".to_owned()
                    };
                    let size = rng.range(1000, 300_000) as usize;
                    grow(&daemon, &name, &branch, size, &mut rng);
                }
            }
            mark = w.proc.log_mark();
            w.start();
        }
        let w = &fleet.workers[0];
        let pid = w.proc.pid().expect("worker pid");
        let mine = format!("-{pid}-");
        let since_start = Instant::now();
        if let Some(id) = &fetch_now
            && within(Duration::from_secs(10), || {
                w.proc
                    .log_since(mark)
                    .contains("connected to the coordinator")
            })
        {
            let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
        }
        if clone_round {
            // The kill falls within about how long clones of the big repos take here, so
            // that most are cut short and some complete.
            let span = clone_span(&w.proc.log());
            within(Duration::from_secs(8), || {
                tmp_entries(w).iter().any(|t| t.contains(&mine))
            });
            std::thread::sleep(Duration::from_millis(rng.range(0, span)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.range(50, 4000)));
        }
        let alive_for = since_start.elapsed();
        let worker_started = w.proc.log_since(mark).contains("worker started");
        if let Some(status) = w.proc.exited() {
            problems.push(format!(
                "round {round}: the worker exited by itself ({status}):\n{}",
                tail(&w.proc.log(), 30)
            ));
            break;
        }
        w.kill();
        kills += 1;

        // The disk is still now: look at everything.
        let tmp = tmp_entries(w);
        if tmp.iter().any(|t| t.contains(&mine)) {
            interrupted += 1;
        }
        if worker_started {
            let stale: Vec<&String> = leftovers.intersection(&tmp).collect();
            if !stale.is_empty() {
                problems.push(format!(
                    "round {round}: .tmp leftovers of an earlier run survived a start: {stale:?}"
                ));
            }
            leftovers.clear();
        }
        leftovers.extend(tmp);
        for (id, path) in final_paths(&w.mirror_dir) {
            if !fleet.repos.contains_key(&id) {
                problems.push(format!("round {round}: unexpected {}", path.display()));
            }
        }
        for id in fleet.repos.keys() {
            let path = w.mirror_path(id);
            let Some(ino) = inode(&path) else {
                if seen.contains_key(id) {
                    lost += 1;
                    problems.push(format!("round {round}: the mirror of {id} vanished"));
                }
                continue;
            };
            partial.extend(partial_packs(&path));
            if let Some(old) = seen.insert(id.clone(), ino)
                && old != ino
                && !corrupted.contains_key(id)
            {
                // Replaced although nothing was wrong with it.
                recloned += 1;
            }
            match corrupted.get(id) {
                // Still the mirror the test broke: nothing to check but that it is there.
                Some(&broken) if broken == ino => continue,
                Some(_) => {
                    corrupted.remove(id);
                    healed += 1;
                }
                None => {}
            }
            let fp = fingerprint(&path).unwrap_or_default();
            if checked.get(id) == Some(&fp) {
                continue;
            }
            fsck_runs += 1;
            match whole(&path, false) {
                Ok(()) => {
                    checked.insert(id.clone(), fp);
                }
                Err(e) => {
                    damaged += 1;
                    problems.push(format!(
                        "round {round} (killed {alive_for:?} after the start): half-done mirror at the final path: {e}"
                    ));
                }
            }
        }
        eprintln!(
            "round {round} ({:.1?}): {} round, killed {alive_for:.1?} after the start, {} mirrors, .tmp {leftovers:?}",
            round_start.elapsed(),
            if clone_round { "clone" } else { "fetch" },
            seen.len(),
        );
        if !problems.is_empty() {
            break;
        }
    }

    figure(SUITE, "crash.seed", rng.seed);
    figure(SUITE, "crash.kills", kills);
    figure(SUITE, "crash.clone_rounds", clone_rounds + 1);
    figure(SUITE, "crash.clones_interrupted", interrupted);
    figure(SUITE, "crash.mirrors_removed_by_the_test", removed_by_us);
    figure(
        SUITE,
        "crash.mirrors_corrupted_by_the_test",
        corrupted_by_us,
    );
    figure(SUITE, "crash.sound_mirrors_recloned", recloned);
    figure(SUITE, "crash.fsck_runs", fsck_runs);
    figure(SUITE, "crash.mirrors_lost", lost);
    figure(SUITE, "crash.fsck_failures", damaged);
    assert!(problems.is_empty(), "{problems:#?}");

    eprintln!("{kills} kills done at {:.1?}", started.elapsed());

    // Settle: upstream stands still, the worker runs undisturbed.
    fleet.workers[0].start();
    let owners = fleet.wait_settled(SETTLE);
    fleet.wait_alive(&[0], Duration::from_secs(30));
    for (id, &broken) in &corrupted {
        let path = fleet.workers[0].mirror_path(id);
        wait_for(
            Duration::from_secs(60),
            &format!("the corrupt {id} re-cloned"),
            || {
                if inode(&path) != Some(broken) {
                    return Ok(());
                }
                fleet.coord.post(&format!("/api/repos/{id}/fetch"), "")?;
                Err("the broken mirror is still there".to_owned())
            },
        );
        healed += 1;
    }
    figure(SUITE, "crash.corrupt_mirrors_healed", healed);
    assert_eq!(healed, corrupted_by_us, "every corrupt mirror healed once");
    wait_for(Duration::from_secs(60), "mirrors equal to upstream", || {
        fleet.check_mirrors(&owners)
    });
    let w = &fleet.workers[0];
    wait_for(Duration::from_secs(30), "an empty .tmp", || {
        let t = tmp_entries(w);
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    eprintln!("settled at {:.1?}", started.elapsed());
    for id in fleet.repos.keys() {
        whole(&w.mirror_path(id), true).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    // SPEC §8/§10: the events are consistent (each change once) and replaying them gives
    // every repo's upstream refs.
    wait_for(
        Duration::from_secs(30),
        "events that add up to upstream",
        || {
            let from_events = refs_from_events(&fleet.coord.all_events()?)?;
            for (id, url) in &fleet.repos {
                let upstream = ls_remote(url);
                let told = from_events.get(id).cloned().unwrap_or_default();
                if told != upstream {
                    return Err(format!(
                        "{id}: events say {told:#?}, upstream has {upstream:#?}"
                    ));
                }
            }
            Ok(())
        },
    );
    // Temp files of packs a kill interrupted (as big as what had arrived) go at the next
    // fetch of their mirror.
    figure(
        SUITE,
        "crash.partial_pack_files_left_by_kills",
        partial.len(),
    );
    wait_for(
        Duration::from_secs(30),
        "partial packs removed by the next fetch",
        || {
            let left: Vec<PathBuf> = fleet
                .repos
                .keys()
                .filter_map(|id| {
                    let found = partial_packs(&w.mirror_path(id));
                    if !found.is_empty() {
                        let _ = fleet.coord.post(&format!("/api/repos/{id}/fetch"), "");
                    }
                    found.into_iter().next()
                })
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    figure(SUITE, "crash.repos", fleet.repos.len());
    figure(SUITE, "crash.secs", started.elapsed().as_secs());
}

// ---- 2. local damage ----

/// Turn the packs of the mirror at `git_dir` into loose objects (so single objects can be
/// lost); the packs go to `aside`.
/// The records of a worker state file (`repos.snapshot`, `repos.journal`: a header line,
/// then frames of u32 LE length, u32 LE CRC-32, JSON payload).
fn state_records(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pos = bytes.iter().position(|&b| b == b'\n').expect("header line") + 1;
    let mut out = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let payload = &bytes[pos + 8..pos + 8 + len];
        out.push(serde_json::from_slice(payload).expect("a JSON record"));
        pos += 8 + len;
    }
    out
}

/// Append one record to a worker's `repos.journal` (the worker is stopped).
fn append_state_record(journal: &Path, record: &Value) {
    let payload = serde_json::to_vec(record).unwrap();
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal)
        .unwrap_or_else(|e| panic!("{}: {e}", journal.display()));
    f.write_all(&frame).unwrap();
}

fn explode(git_dir: &Path, aside: &Path) {
    std::fs::create_dir_all(aside).expect("mkdir aside");
    let pack_dir = git_dir.join("objects").join("pack");
    let mut packs = Vec::new();
    for e in std::fs::read_dir(&pack_dir).expect("list packs").flatten() {
        let to = aside.join(e.file_name());
        std::fs::rename(e.path(), &to).expect("move a pack aside");
        if to.extension().is_some_and(|x| x == "pack") {
            packs.push(to);
        }
    }
    for pack in packs {
        let out = git_command()
            .arg("--git-dir")
            .arg(git_dir)
            .args(["unpack-objects", "-q"])
            .stdin(std::fs::File::open(&pack).expect("open pack"))
            .output()
            .expect("run git unpack-objects");
        assert!(
            out.status.success(),
            "unpack-objects {}: {}",
            pack.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Delete the loose object `oid` of the mirror at `git_dir`.
fn lose_object(git_dir: &Path, oid: &str) {
    let p = git_dir.join("objects").join(&oid[..2]).join(&oid[2..]);
    std::fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
}

fn git_in(git_dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["--git-dir", git_dir.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    try_git(all).unwrap_or_else(|e| panic!("{e}"))
}

/// Create `rel` in a mirror (parents too), its mtime `age` ago.
fn leave_lock(git_dir: &Path, rel: &str, age: Duration) -> PathBuf {
    let p = git_dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir for a lock");
    }
    std::fs::write(&p, b"").unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    std::fs::File::options()
        .write(true)
        .open(&p)
        .and_then(|f| f.set_modified(SystemTime::now() - age))
        .unwrap_or_else(|e| panic!("age {}: {e}", p.display()));
    p
}

/// Watches a mirror's final path from another thread, as closely as it can: every time
/// it looks there must be a complete bare repo; it notes each different inode it sees.
struct Watcher {
    stop: Arc<AtomicBool>,
    gaps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<(u64, Vec<u64>)>>,
}

impl Watcher {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let gaps = Arc::new(AtomicU64::new(0));
        let (s, g) = (stop.clone(), gaps.clone());
        let thread = std::thread::spawn(move || {
            let (mut looks, mut inodes) = (0u64, Vec::new());
            while !s.load(Ordering::Relaxed) {
                looks += 1;
                let ino = inode(&path);
                if !is_bare_repo(&path) || ino.is_none() {
                    g.fetch_add(1, Ordering::Relaxed);
                } else if inodes.last() != ino.as_ref() {
                    inodes.extend(ino);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (looks, inodes)
        });
        Self {
            stop,
            gaps,
            thread: Some(thread),
        }
    }

    /// Looks taken, gaps seen, and the inodes in the order seen.
    fn finish(mut self) -> (u64, u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let (looks, inodes) = self
            .thread
            .take()
            .expect("watcher thread")
            .join()
            .expect("watcher thread panicked");
        (looks, self.gaps.load(Ordering::Relaxed), inodes)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// SPEC §7.3 "local" (self-heal: remove stale locks, re-clone a corrupt mirror into `.tmp`
// before replacing it), §7.1 (a mirror stays at its final path; `.tmp/` is for clones),
// §7.4 (maintenance never while the repo is fetched: the worker's own exclusivity).
//
// With the worker stopped, four mirrors are damaged on disk, then it is started again:
// - `dmgtip`: the object a branch points at is deleted: the next fetch (asked for through
//   `POST /api/repos/{id}/fetch`) finds it missing, re-clones and swaps the clone in;
// - `dmgdeep`: a blob deep in history is deleted, which no fetch notices: the weekly
//   connectivity check finds it (made due by backdating the repo's last check in the
//   worker's `repos.json`, as if a week had passed) and re-clones;
// - `dmglock`: `packed-refs.lock` and `refs/heads/master.lock` a minute old (a crash long
//   ago) while upstream's master moved: removed, the mirror fetched in place;
// - `dmgfresh`: `refs/heads/master.lock` just made (a crash right before the restart, as
//   systemd's quick restart gives): refused while young, removed once stale, then fetched;
// - `dmgpack`: a minute-old temp file of a pack a crash cut short in `objects/pack/`:
//   removed by the next fetch (not left for the daily maintenance), which succeeds.
// Watcher threads look at each final path every millisecond throughout: there is always a
// complete mirror there (the old one until the swap, the new one after).
#[test]
fn damaged_mirrors_heal_in_place() {
    let mut rng = Rng::seeded("damaged_mirrors_heal_in_place");
    let daemon = GitDaemon::shared();
    let names = [
        "dmgtip-r00",
        "dmgdeep-r00",
        "dmglock-r00",
        "dmgfresh-r00",
        "dmgpack-r00",
    ];
    let mut repos = BTreeMap::new();
    for name in names {
        let url = create_big_repo(&daemon, name, 400, 2000, &mut rng);
        repos.insert(repo_id(name), url);
    }
    let fleet = Fleet::start("damage", &repos, 1);
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    let w = &fleet.workers[0];
    let status = w.proc.terminate(Duration::from_secs(10));
    assert!(status.is_some(), "worker still running 10 s after SIGTERM");
    let [tip, deep, lock, fresh, pack] = names.map(|n| (repo_id(n), w.mirror_path(&repo_id(n))));
    let aside = fleet.root.sub("packs-aside");

    // dmgtip: lose master's commit.
    explode(&tip.1, &aside.join("tip"));
    let tip_commit = git_in(&tip.1, &["rev-parse", "refs/heads/master"]);
    lose_object(&tip.1, &tip_commit);
    assert!(fsck(&tip.1, false).is_err(), "dmgtip is not damaged");

    // dmgdeep: lose a blob that only old commits use.
    explode(&deep.1, &aside.join("deep"));
    let line = git_in(
        &deep.1,
        &["diff-tree", "-r", "--no-commit-id", "refs/heads/master~20"],
    );
    let blob = line
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no blob in {line:?}"))
        .to_owned();
    assert!(
        !git_in(&deep.1, &["ls-tree", "-r", "refs/heads/master"]).contains(&blob),
        "{blob} is still in master's tree"
    );
    lose_object(&deep.1, &blob);
    assert!(fsck(&deep.1, false).is_err(), "dmgdeep is not damaged");
    // The worker's state (snapshot + journal): its latest record of dmgdeep, appended
    // again with the passes a week old.
    let mut records = state_records(&w.state_dir.join("repos.snapshot"));
    records.extend(state_records(&w.state_dir.join("repos.journal")));
    let mut record = records
        .into_iter()
        .rev()
        .find(|r| r["Repo"]["id"] == deep.0.as_str())
        .unwrap_or_else(|| panic!("no record of {} in the worker state", deep.0));
    record["Repo"]["repo"]["last_maintenance_ms"] = Value::from(1);
    record["Repo"]["repo"]["last_verify_ms"] = Value::from(1);
    append_state_record(&w.state_dir.join("repos.journal"), &record);

    // dmglock and dmgfresh: locks in the way of master, which moves upstream.
    let old_locks = [
        leave_lock(&lock.1, "packed-refs.lock", Duration::from_secs(60)),
        leave_lock(&lock.1, "refs/heads/master.lock", Duration::from_secs(60)),
    ];
    // dmgpack: the part of a pack a crash cut short, in the mirror's `objects/pack/`.
    let partial = leave_lock(&pack.1, "objects/pack/.tmpCrash1", Duration::from_secs(60));
    std::fs::write(&partial, rng.bytes(100_000)).expect("write a partial pack");
    let aged = std::fs::File::options().write(true).open(&partial);
    aged.and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(60)))
        .expect("age the partial pack");
    let old_locks = [old_locks[0].clone(), old_locks[1].clone(), partial];
    grow(&daemon, repo_name(&pack.0), "master", 1000, &mut rng);
    grow(&daemon, repo_name(&lock.0), "master", 1000, &mut rng);
    grow(&daemon, repo_name(&fresh.0), "master", 1000, &mut rng);

    let inodes: BTreeMap<String, u64> = [&tip, &deep, &lock, &fresh, &pack]
        .iter()
        .map(|(id, p)| (id.clone(), inode(p).expect("mirror inode")))
        .collect();
    let watchers: Vec<(String, Watcher)> = [&tip, &deep, &lock, &fresh, &pack]
        .iter()
        .map(|(id, p)| (id.clone(), Watcher::start(p.clone())))
        .collect();
    let fresh_lock = leave_lock(&fresh.1, "refs/heads/master.lock", Duration::ZERO);
    let mark = w.proc.log_mark();
    w.start();
    fleet.wait_alive(&[0], Duration::from_secs(30));
    for id in [&tip.0, &lock.0, &fresh.0, &pack.0] {
        let (code, body) = fleet
            .coord
            .post(&format!("/api/repos/{id}/fetch"), "")
            .unwrap();
        assert_eq!(code, 202, "POST fetch {id}: {body}");
    }

    let equal_upstream = |id: &str, p: &Path| -> Result<(), String> {
        let mine = try_mirror_refs(p)?;
        let theirs = ls_remote(&fleet.repos[id]);
        if mine == theirs {
            Ok(())
        } else {
            Err(format!("{id}: mirror {mine:?}, upstream {theirs:?}"))
        }
    };
    wait_for(
        Duration::from_secs(60),
        "every damaged mirror healed",
        || {
            for (id, p) in [&tip, &deep] {
                if inode(p) == Some(inodes[id]) {
                    return Err(format!("{id} not re-cloned yet"));
                }
                equal_upstream(id, p)?;
            }
            for (id, p) in [&lock, &fresh, &pack] {
                equal_upstream(id, p)?;
            }
            if let Some(l) = old_locks.iter().chain([&fresh_lock]).find(|l| l.exists()) {
                return Err(format!("{} still there", l.display()));
            }
            Ok(())
        },
    );
    let mut gaps_total = 0;
    for (id, watcher) in watchers {
        let (looks, gaps, seen) = watcher.finish();
        eprintln!("{id}: {looks} looks, {gaps} gaps, inodes {seen:?}");
        gaps_total += gaps;
        assert_eq!(
            gaps, 0,
            "{id}: no complete mirror at the final path {gaps} times"
        );
        assert!(looks > 100, "{id}: only {looks} looks");
        assert_eq!(
            seen.first(),
            Some(&inodes[&id]),
            "{id}: the old mirror first"
        );
        let expected = if id == tip.0 || id == deep.0 { 2 } else { 1 };
        assert_eq!(
            seen.len(),
            expected,
            "{id}: mirrors seen at the final path: {seen:?}"
        );
    }
    for (id, p) in [&tip, &deep, &lock, &fresh, &pack] {
        whole(p, true).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            git_in(p, &["config", "remote.origin.mirror"]),
            "true",
            "{id}"
        );
    }
    // The log says which mirror was corrupt and what was missing, and which locks went.
    let log = w.proc.log_since(mark);
    for (id, missing) in [(&tip.0, &tip_commit), (&deep.0, &blob)] {
        assert!(
            log.lines().any(|l| l.contains("mirror is corrupt")
                && l.contains(id.as_str())
                && l.contains(missing.as_str())),
            "no log line naming the corrupt {id} and its missing {missing}:\n{}",
            tail(&log, 30)
        );
    }
    for l in old_locks.iter().chain([&fresh_lock]) {
        let l = l.display().to_string();
        assert!(
            log.lines()
                .any(|line| line.contains("removed stale") && line.contains(&l)),
            "no log line about removing {l}:\n{}",
            tail(&log, 30)
        );
    }
    wait_for(Duration::from_secs(20), "an empty .tmp", || {
        let t = tmp_entries(w);
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    figure(SUITE, "damage.mirrors_recloned", 2);
    figure(SUITE, "damage.stale_files_removed", old_locks.len() + 1);
    figure(SUITE, "damage.gaps_at_final_path", gaps_total);
}

// ---- 2b. broken state files ----

/// All files under `dir` (recursively) with their bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() => {
                    let bytes =
                        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                    files.insert(p, bytes);
                }
                _ => {}
            }
        }
    }
    files
}

/// Put back the files of `snap` (contents and the set of files) under `dir`.
fn restore(dir: &Path, snap: &BTreeMap<PathBuf, Vec<u8>>) {
    for p in snapshot(dir).keys() {
        if !snap.contains_key(p) {
            std::fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
        }
    }
    for (p, bytes) in snap {
        std::fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

/// What a daemon does with a damaged state file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Exits non-zero, naming the file and what to do; the file is left as it is.
    Refused,
    /// Starts, saying this in its log (the event log's torn last line, which is exactly
    /// what a crash during an append leaves and was never acknowledged).
    Starts(&'static str),
}

// SPEC §10 (every state file begins with a format version; a file that fails to decode
// stops the daemon with a message naming the file and what to do; it is never silently
// replaced with defaults).
//
// `startup.rs` covers the repo snapshot of each daemon holding a bad header. Here every
// state file of both daemons (worker: `identity.json`, `repos.snapshot`, `repos.journal`;
// coordinator: `registry.json`, `repos.snapshot`, `repos.journal`, `webhooks.json`,
// `index/applied.state`, the
// event log's segment, `tls-key.pem`, `tls-cert.pem`) is in turn cut in half, cut inside its
// first line, and replaced with binary garbage. Each time the daemon must exit non-zero, its
// log must name the file and a recovery step, and the file must be left untouched. The
// exceptions are the event log's segment cut in half or inside its header (a torn append
// or a torn segment creation, which the coordinator repairs with a warning and starts) and
// either daemon's repo journal cut inside its last record (a torn append, cut off with a
// warning).
// At the end the saved state is put back and the fleet settles again.
/// The coordinator's first event log segment (SPEC §12).
const EVENT_SEGMENT: &str = "events/00000000000000000001.log";

#[test]
fn broken_state_files_stop_the_daemons_with_a_way_out() {
    let mut rng = Rng::seeded("broken_state_files_stop_the_daemons_with_a_way_out");
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("broken", 3);
    let hook_port = gitmirror_tests::free_tcp_port();
    let fleet = Fleet::start_with("broken", &repos, 1, |yaml, _| {
        // Nobody listens there: the cursor file is written all the same.
        format!("{yaml}webhooks:\n  - url: http://127.0.0.1:{hook_port}/hook\n")
    });
    fleet.wait_settled(SETTLE);
    let w = &fleet.workers[0];
    for proc in [&w.proc, &fleet.coord.proc] {
        let status = proc
            .terminate(Duration::from_secs(10))
            .expect("stops on SIGTERM");
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
    let (cstate, wstate) = (fleet.coord.state_dir.clone(), w.state_dir.clone());
    let (csnap, wsnap) = (snapshot(&cstate), snapshot(&wstate));

    let files: Vec<(&Proc, &Path, &str)> = vec![
        (&w.proc, &wstate, "identity.json"),
        (&w.proc, &wstate, "repos.snapshot"),
        (&w.proc, &wstate, "repos.journal"),
        (&fleet.coord.proc, &cstate, "registry.json"),
        (&fleet.coord.proc, &cstate, "repos.snapshot"),
        (&fleet.coord.proc, &cstate, "repos.journal"),
        (&fleet.coord.proc, &cstate, "webhooks.json"),
        (&fleet.coord.proc, &cstate, "index/applied.state"),
        (&fleet.coord.proc, &cstate, EVENT_SEGMENT),
        (&fleet.coord.proc, &cstate, "tls-key.pem"),
        (&fleet.coord.proc, &cstate, "tls-cert.pem"),
    ];
    let recovery = ["move it aside", "restore it from a backup", "remove it"];
    let mut cases = 0;
    for (proc, dir, rel) in files {
        let path = dir.join(rel);
        let good = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            good.len() > 40,
            "{} is too small to cut: {good:?}",
            path.display()
        );
        let mut half = good.len() / 2;
        while good[half - 1] == b'\n' {
            half -= 1;
        }
        if rel == "repos.journal" {
            // Inside its last record: what a kill in the middle of an append leaves.
            half = good.len() - 3;
        }
        for (how, bytes) in [
            ("cut in half", good[..half].to_vec()),
            ("cut inside its first line", good[..10].to_vec()),
            ("replaced with garbage", rng.bytes(300)),
        ] {
            let expect = match (rel, how) {
                (EVENT_SEGMENT, "cut in half") => Expect::Starts("dropping a torn record"),
                (EVENT_SEGMENT, "cut inside its first line") => {
                    Expect::Starts("completing a header cut short")
                }
                // SPEC §12: a torn journal tail is dropped with one warning.
                ("repos.journal", "cut in half") => {
                    Expect::Starts("dropping a torn record at the end of the journal")
                }
                _ => Expect::Refused,
            };
            cases += 1;
            std::fs::write(&path, &bytes).unwrap();
            let mark = proc.log_mark();
            proc.start();
            let what = format!("{rel} {how}");
            match expect {
                Expect::Refused => {
                    let status = wait_for(
                        Duration::from_secs(15),
                        &format!("exit with {what}"),
                        || {
                            proc.exited().ok_or_else(|| {
                                format!("still running:\n{}", tail(&proc.log_since(mark), 10))
                            })
                        },
                    );
                    let log = proc.log_since(mark);
                    assert!(!status.success(), "{what}: exited with success:\n{log}");
                    let lower = log.to_lowercase();
                    assert!(
                        log.contains(&path.display().to_string()),
                        "{what}: the log does not name {}:\n{log}",
                        path.display()
                    );
                    assert!(
                        recovery.iter().any(|r| lower.contains(r)),
                        "{what}: the log does not say what to do:\n{log}"
                    );
                    assert_eq!(
                        std::fs::read(&path).unwrap(),
                        bytes,
                        "{what}: the file was rewritten"
                    );
                }
                Expect::Starts(needle) => {
                    proc.wait_log(mark, needle, Duration::from_secs(15));
                    let status = proc
                        .terminate(Duration::from_secs(10))
                        .expect("stops on SIGTERM");
                    assert!(status.success(), "{what}: exit after SIGTERM: {status}");
                }
            }
            restore(&cstate, &csnap);
            restore(&wstate, &wsnap);
        }
    }
    figure(SUITE, "state_files.damaged_files_tried", cases);

    // With the saved state back, all is as before.
    fleet.coord.start_ready();
    w.start();
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
}

// ---- 3. disk full mid-clone ----

/// Run a command, panicking with its stderr on failure.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tmpfs mounted at a path for one test; unmounted when dropped, even on a panic.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid());
        assert_eq!(
            uid.as_ref().ok(),
            Some(&0),
            "this test mounts a tmpfs and must run as root (as it does in CI); uid: {uid:?}"
        );
        std::fs::create_dir_all(path).expect("mkdir mount point");
        let p = path.to_str().expect("utf-8 path");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", p],
        )
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs at {p}: {e}"));
        Self {
            path: path.to_path_buf(),
        }
    }

    fn resize(&self, size: &str) {
        let p = self.path.to_str().expect("utf-8 path");
        run("mount", &["-o", &format!("remount,size={size}"), p])
            .unwrap_or_else(|e| panic!("cannot resize the tmpfs at {p}: {e}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path.to_str().unwrap_or_default();
        if let Err(e) = run("umount", &[p]) {
            eprintln!("{e}; unmounting lazily");
            if let Err(e) = run("umount", &["-l", p]) {
                eprintln!("{e}");
            }
        }
    }
}

// SPEC §7.5 (disk), §7.3 ("local: disk full", retried; the mirror on disk is never
// deleted), §7.1 (a half-done clone is never visible at the final path), §9 (`last_error`).
//
// The worker's mirror directory is a 3 MiB tmpfs. A small repo fits; then a repo of about
// 8 MB of incompressible data joins the index: its clone runs out of space midway. The
// failure must be reported (`/api/repos/{id}` `last_error`, class `local`, naming the lack
// of space) and retried, the worker must stay up, nothing may appear at the final path and
// the small mirror must stay whole. Then a filler file leaves less than `disk.min_free`:
// the repo shows `waiting` and the worker's status says disk, while a fetch of the small
// repo still goes through. Then the filler goes and the tmpfs grows to 64 MiB: the clone
// succeeds by itself (no restart, no fetch request), fsck-clean and equal to upstream.
// Last, the disk fills up under a fetch: reported, retried, and the mirror is neither
// damaged nor re-cloned; with space back that fetch goes through into the same mirror.
#[test]
fn disk_full_mid_clone_leaves_nothing_half_done() {
    let mut rng = Rng::seeded("disk_full_mid_clone_leaves_nothing_half_done");
    let daemon = GitDaemon::shared();
    let small = daemon.repo_set("fullsmall", 1);
    let big_name = "fullbig-r00";
    let big_url = create_big_repo(&daemon, big_name, 400, 20_000, &mut rng);
    let big_id = repo_id(big_name);

    let mut fleet = Fleet::start("diskfull", &small, 0);
    let i = fleet.create_worker(1.0);
    // Declared after the fleet, so dropped (unmounted) before the fleet's temp dir goes.
    let disk = Tmpfs::mount(&fleet.workers[i].mirror_dir, "3m");
    let w = &fleet.workers[i];
    w.start();
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    let (small_id, _) = small.iter().next().expect("one small repo");

    fleet.index.put_url(&big_id, &big_url);
    fleet.index.commit("a repo bigger than the disk");
    let big_path = w.mirror_path(&big_id);
    let mut looks = 0u64;
    let failure = wait_for(
        Duration::from_secs(60),
        "two reported clone failures for lack of space",
        || {
            looks += 1;
            if big_path.exists() {
                panic!("{} appeared on a full disk", big_path.display());
            }
            if !w.proc.is_running() {
                panic!("the worker exited:\n{}", tail(&w.proc.log(), 30));
            }
            let r = fleet.coord.repo(&big_id)?;
            let e = &r["last_error"];
            let message = str_field(e, "message").to_lowercase();
            if str_field(e, "class") == "local"
                && message.contains("space")
                && r["failures"].as_u64().unwrap_or(0) >= 2
            {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    );
    eprintln!("reported: {}", failure["last_error"]);
    assert_eq!(str_field(&failure, "state"), "failing", "{failure}");
    assert!(!big_path.exists(), "{} on a full disk", big_path.display());
    whole(&w.mirror_path(small_id), true).unwrap();
    let failures = failure["failures"].as_u64().unwrap_or(0);

    // Nearly full, below `disk.min_free` (5 %): no new clone starts, the repo shows
    // `waiting` and the worker's status says disk; a fetch still goes through.
    let filler = w.mirror_dir.join("filler");
    let st = rustix::fs::statvfs(&w.mirror_dir).expect("statvfs of the tmpfs");
    let avail = st.f_bavail * st.f_frsize;
    let keep = 96 * 1024;
    assert!(avail > keep, "only {avail} bytes free on the tmpfs");
    std::fs::write(&filler, vec![0u8; (avail - keep) as usize]).expect("write the filler");
    let small_name = repo_name(small_id);
    let commit = daemon.commit(small_name, "master");
    let (code, body) = fleet
        .coord
        .post(&format!("/api/repos/{small_id}/fetch"), "")
        .unwrap();
    assert_eq!(code, 202, "{body}");
    wait_for(
        Duration::from_secs(60),
        "the big repo waiting for disk, the small one fetched",
        || {
            if big_path.exists() {
                panic!("{} appeared on a full disk", big_path.display());
            }
            let r = fleet.coord.repo(&big_id)?;
            let worker = fleet.api_worker(i)?;
            let refs = try_mirror_refs(&w.mirror_path(small_id))?;
            if str_field(&r, "state") == "waiting"
                && worker["status"].to_string().to_lowercase().contains("disk")
                && refs.get("refs/heads/master") == Some(&commit)
            {
                Ok(())
            } else {
                Err(format!("repo {r}; worker {worker}; small {refs:?}"))
            }
        },
    );

    // Space returns: the clone goes through on its own, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    disk.resize("64m");
    fleet.repos.insert(big_id.clone(), big_url);
    let owners = fleet.wait_settled(Duration::from_secs(60));
    fleet.check_mirrors(&owners).unwrap();
    whole(&big_path, true).unwrap();
    wait_for(Duration::from_secs(20), "an empty .tmp", || {
        let t = tmp_entries(w);
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });

    // Full again, now under a fetch that brings 2 MB: it fails for lack of space, and the
    // mirror is neither damaged nor re-cloned (no healing makes space); with space back
    // the fetch goes through into the same mirror.
    let ino = inode(&big_path).expect("big mirror");
    let st = rustix::fs::statvfs(&w.mirror_dir).expect("statvfs of the tmpfs");
    let avail = st.f_bavail * st.f_frsize;
    std::fs::write(&filler, vec![0u8; (avail - 256 * 1024) as usize]).expect("write the filler");
    grow(&daemon, big_name, "master", 2_000_000, &mut rng);
    let fetch_now = || {
        let (code, body) = fleet
            .coord
            .post(&format!("/api/repos/{big_id}/fetch"), "")
            .unwrap();
        assert_eq!(code, 202, "{body}");
    };
    fetch_now();
    let failed = wait_for(
        Duration::from_secs(60),
        "a fetch failure for lack of space",
        || {
            let r = fleet.coord.repo(&big_id)?;
            let message = str_field(&r["last_error"], "message").to_lowercase();
            if str_field(&r, "state") == "failing" && message.contains("space") {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    );
    eprintln!("reported: {}", failed["last_error"]);
    assert_eq!(
        str_field(&failed["last_error"], "class"),
        "local",
        "{failed}"
    );
    whole(&big_path, true).unwrap();
    assert_eq!(inode(&big_path), Some(ino), "re-cloned on a full disk");
    // The part of the pack that did arrive is not left to fill the disk.
    let pack_dir = big_path.join("objects").join("pack");
    let temps: Vec<String> = std::fs::read_dir(&pack_dir)
        .expect("list packs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp") || n.starts_with("tmp_"))
        .collect();
    assert!(
        temps.is_empty(),
        "partial packs left in {}: {temps:?}",
        pack_dir.display()
    );
    std::fs::remove_file(&filler).expect("remove the filler");
    fetch_now();
    let upstream = ls_remote(&fleet.repos[&big_id]);
    wait_for(Duration::from_secs(60), "the fetch with space back", || {
        let mine = try_mirror_refs(&big_path)?;
        if mine == upstream {
            Ok(())
        } else {
            Err(format!("{mine:?}"))
        }
    });
    whole(&big_path, true).unwrap();
    assert_eq!(inode(&big_path), Some(ino), "re-cloned");
    assert!(w.proc.is_running(), "the worker exited");
    figure(SUITE, "disk_full.clone_failures_reported", failures);
    figure(SUITE, "disk_full.half_mirrors_seen", 0);
    figure(SUITE, "disk_full.final_path_looks", looks);
    w.kill();
    drop(disk);
}

/// Fill the filesystem holding `dir` with `<dir>/filler` until it refuses more.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("write {}: {e}", filler.display()),
        }
    }
    // Whatever is left in the page cache must not land later.
    let _ = f.sync_all();
    filler
}

// SPEC §10 (state written crash-safely; after `kill -9` a daemon restarts consistent and
// loses no acknowledged event), §8 (an outcome goes out only once it is durably in the
// worker's outbox, and a change is never lost when a worker crashes between fetching and
// reporting), §7.5 (a full disk does not stop the worker).
//
// The worker's state directory is a 1 MiB tmpfs, filled up. An upstream change is fetched
// into the mirror (on another disk) but its outcome cannot be saved: the worker keeps
// running and holds it back. It is then killed (the outcome was only in memory), space
// comes back, and after the restart the change is reported all the same, against the refs
// last acknowledged. Again with the disk full and no kill: when space returns, the held
// outcome goes out. Each change gives one event, and the events add up to upstream.
#[test]
fn full_state_disk_holds_outcomes_back_and_loses_none() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("statefull", 2);
    let mut fleet = Fleet::start("statefull", &repos, 0);
    let i = fleet.create_worker(1.0);
    let disk = Tmpfs::mount(&fleet.workers[i].state_dir, "1m");
    let w = &fleet.workers[i];
    w.start();
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    let ids: Vec<String> = repos.keys().cloned().collect();

    let fetch_now = |id: &str| {
        let (code, body) = fleet
            .coord
            .post(&format!("/api/repos/{id}/fetch"), "")
            .unwrap();
        assert_eq!(code, 202, "{body}");
    };
    let reported_now = |id: &str, commit: &str| {
        let refs = refs_from_events(&fleet.coord.all_events().unwrap()).unwrap();
        refs.get(id)
            .and_then(|r| r.get("refs/heads/master"))
            .map(String::as_str)
            == Some(commit)
    };
    // Upstream changes of `id`, each fetched into the mirror, until the log says the state
    // cannot be saved and the last change is not reported: the worker's journal takes
    // small appends into the slack of its last page, so the first few outcomes after the
    // disk fills may still be saved (and then rightly reported). Returns that change.
    let change_until_unsaved = |id: &str| -> String {
        let mark = w.proc.log_mark();
        let path = w.mirror_path(id);
        for _ in 0..50 {
            let commit = daemon.commit(repo_name(id), "master");
            fetch_now(id);
            wait_for(Duration::from_secs(30), "the fetch of a change", || {
                if !w.proc.is_running() {
                    panic!("the worker exited:\n{}", tail(&w.proc.log(), 30));
                }
                let refs = try_mirror_refs(&path)?;
                if refs.get("refs/heads/master") == Some(&commit) {
                    Ok(())
                } else {
                    Err(format!("{refs:?}"))
                }
            });
            // Until the outcome is saved (and reported) or the save fails: the worker
            // saves about every 2 s, so a fixed short wait races its flush on a busy
            // machine (it did in CI: the failure came 2.08 s after the fetch, the next
            // change was asked for meanwhile and, rightly, held back behind it).
            let unsaved = wait_for(Duration::from_secs(30), "the outcome saved or not", || {
                if w.proc.log_since(mark).contains("cannot save worker state") {
                    Ok(true)
                } else if reported_now(id, &commit) {
                    Ok(false)
                } else {
                    Err("neither yet".to_owned())
                }
            });
            if unsaved && !reported_now(id, &commit) {
                return commit;
            }
        }
        panic!(
            "the state disk never ran out:\n{}",
            tail(&w.proc.log_since(mark), 10)
        );
    };
    // Not durable in the outbox, so not sent: no event has it yet.
    let not_reported = |id: &str, commit: &str| {
        let refs = refs_from_events(&fleet.coord.all_events().unwrap()).unwrap();
        let master = refs.get(id).and_then(|r| r.get("refs/heads/master"));
        assert_ne!(
            master.map(String::as_str),
            Some(commit),
            "{id}: reported unsaved"
        );
    };
    let reported = |id: &str, commit: &str| {
        wait_for(
            Duration::from_secs(30),
            &format!("an event for {id}"),
            || {
                let events = fleet.coord.all_events()?;
                let refs = refs_from_events(&events)?;
                match refs.get(id).and_then(|r| r.get("refs/heads/master")) {
                    Some(c) if c == commit => Ok(()),
                    other => Err(format!("master per the events: {other:?}")),
                }
            },
        );
    };

    // Full, then killed: the outcome was never saved.
    let filler = fill(&w.state_dir);
    let a = change_until_unsaved(&ids[0]);
    not_reported(&ids[0], &a);
    w.kill();
    std::fs::remove_file(&filler).expect("remove the filler");
    w.start();
    fleet.wait_alive(&[i], Duration::from_secs(30));
    fetch_now(&ids[0]);
    reported(&ids[0], &a);

    // Full, and space comes back while it runs: the held outcome goes out.
    let filler = fill(&w.state_dir);
    let mark = w.proc.log_mark();
    let b = change_until_unsaved(&ids[1]);
    not_reported(&ids[1], &b);
    std::fs::remove_file(&filler).expect("remove the filler");
    reported(&ids[1], &b);
    w.proc.wait_log(
        mark,
        "worker state is being saved again",
        Duration::from_secs(10),
    );

    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    // The events of the last outcomes may reach the log a moment after the repos settle.
    wait_for(SETTLE, "the events agree with every upstream", || {
        let told = refs_from_events(&fleet.coord.all_events()?)?;
        for (id, url) in &repos {
            if told.get(id) != Some(&ls_remote(url)) {
                return Err(format!("{id}: events {:?} vs upstream", told.get(id)));
            }
        }
        Ok(())
    });
    figure(SUITE, "state_disk_full.changes_held_back", 2);
    figure(SUITE, "state_disk_full.changes_lost", 0);
    w.kill();
    drop(disk);
}

// ---- 5. kill -9 with fork pools ----

/// Temp packs being written in the pool `pool` (`objects/pack/tmp_*`, `.tmp-*`).
fn pool_temp_pack(pool: &Path) -> bool {
    std::fs::read_dir(pool.join("objects").join("pack")).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("tmp_") || n.starts_with(".tmp")
        })
    })
}

/// Whether the mirror at `git_dir` borrows from the pool `pool` (its alternates file names it).
fn pooled(git_dir: &Path, pool: &Path) -> bool {
    let Ok(alt) = std::fs::read_to_string(git_dir.join("objects/info/alternates")) else {
        return false;
    };
    let want = std::fs::canonicalize(pool.join("objects")).ok();
    alt.lines().any(|l| {
        let p = git_dir.join("objects").join(l.trim());
        want.is_some() && std::fs::canonicalize(p).ok() == want
    })
}

// SPEC §14 (a pool member is complete at every moment: namespace, then alternates, then a
// local repack; consolidation and repacks never delete a borrowed object), §7.1, §10
// (after `kill -9` at any moment the worker restarts into a consistent state).
//
// One worker with `fetch.pools: true` holds a project of four forks (one big origin, three
// copies with a commit each) from a real `git daemon`. It is killed at varying moments:
// once a clone shows up in `.tmp/`, once the pool is made or a member lands at its final
// path (and joins), once the pool has a
// temp pack (a consolidation or a seed repack writing), or after a random time; between
// rounds (the worker down) a member or two is removed (re-clone and join again) or
// upstream moves (fetches with data, consolidations). After every kill, while the disk is
// still: every mirror at a final path passes `git fsck --connectivity-only` and has refs.
// At the end (the worker left alone): every mirror is pooled, equal to upstream and passes
// a full `git fsck`.
#[test]
fn spec_14_kill9_worker_with_pools_keeps_every_mirror_complete() {
    let mut rng = Rng::seeded("spec_14_kill9_worker_with_pools_keeps_every_mirror_complete");
    let started = Instant::now();
    let daemon = GitDaemon::shared();
    let base = "poolkill-r00";
    create_big_repo(&daemon, base, 6_000, 300, &mut rng);
    let mut repos = BTreeMap::new();
    repos.insert(repo_id(base), daemon.url(base));
    for i in 1..4 {
        let name = format!("poolkill-r{i:02}");
        let url = copy_repo(&daemon, base, &name, &mut rng);
        repos.insert(repo_id(&name), url);
    }
    let ids: Vec<String> = repos.keys().cloned().collect();

    let mut fleet = Fleet::start("poolkill", &repos, 0);
    // A low `disk.min_free`: on a build machine at 5 % free no clone or join would start.
    fleet.create_worker_with(1.0, |yaml| {
        yaml.replace("  concurrency: 8\n", "  concurrency: 8\n  pools: true\n")
            + "disk: {min_free: 64MiB}\n"
    });
    let pool = fleet.workers[0].mirror_dir.join(".pools/p/poolkill.git");
    let total_rounds = rounds(8, 60);
    let mut problems: Vec<String> = Vec::new();
    let (mut kills, mut at_clone, mut at_join, mut at_temp_pack) = (0u64, 0u64, 0u64, 0u64);
    let mut checked: BTreeMap<String, String> = BTreeMap::new();

    for round in 0..total_rounds {
        let w = &fleet.workers[0];
        if round > 0 {
            if rng.range(0, 2) == 0 {
                // A member or two goes: it clones and joins again.
                for _ in 0..rng.range(1, 3) {
                    let id = &ids[rng.range(0, ids.len() as u64) as usize];
                    let path = w.mirror_path(id);
                    if path.exists() {
                        std::fs::remove_dir_all(&path).expect("remove a mirror");
                        checked.remove(id);
                    }
                }
            } else {
                for _ in 0..rng.range(1, 4) {
                    let id = &ids[rng.range(0, ids.len() as u64) as usize];
                    let size = rng.range(1000, 300_000) as usize;
                    grow(&daemon, repo_name(id), "master", size, &mut rng);
                }
            }
        }
        let missing: Vec<PathBuf> = ids
            .iter()
            .map(|id| w.mirror_path(id))
            .filter(|p| !p.exists())
            .collect();
        let mark = w.proc.log_mark();
        w.start();
        let pid = w.proc.pid().expect("worker pid");
        let mine = format!("-{pid}-");
        let limit = Duration::from_secs(8);
        let moment = rng.range(0, 4);
        let alive = Instant::now();
        match moment {
            0 => {
                if within(limit, || tmp_entries(w).iter().any(|t| t.contains(&mine))) {
                    at_clone += 1;
                }
                std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
            }
            1 => {
                // A member lands at its final path (it joins the pool right after), or
                // the pool is made.
                let existed = pool.join("objects").is_dir();
                let reached = within(limit, || {
                    missing.iter().any(|p| p.exists())
                        || (!existed && pool.join("objects").is_dir())
                });
                if reached && (!existed || !missing.is_empty()) {
                    at_join += 1;
                }
                std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
            }
            2 => {
                if within(limit, || pool_temp_pack(&pool)) {
                    at_temp_pack += 1;
                }
            }
            _ => std::thread::sleep(Duration::from_millis(rng.range(50, 4000))),
        }
        if let Some(status) = w.proc.exited() {
            problems.push(format!(
                "round {round}: the worker exited by itself ({status}):\n{}",
                tail(&w.proc.log_since(mark), 30)
            ));
            break;
        }
        w.kill();
        kills += 1;
        eprintln!(
            "round {round}: moment {moment}, killed after {:.1?}",
            alive.elapsed()
        );
        // The disk is still: every mirror at a final path is complete.
        for id in &ids {
            let path = w.mirror_path(id);
            if !path.exists() {
                continue;
            }
            let Ok(print) = fingerprint(&path) else {
                continue;
            };
            if checked.get(id) == Some(&print) {
                continue;
            }
            match whole(&path, false) {
                Ok(()) => {
                    checked.insert(id.clone(), print);
                }
                Err(e) => problems.push(format!("round {round}: {id} incomplete: {e}")),
            }
        }
        if !problems.is_empty() {
            break;
        }
    }
    figure(SUITE, "pools_kill.kills", kills);
    figure(SUITE, "pools_kill.kills_while_cloning", at_clone);
    figure(SUITE, "pools_kill.kills_at_a_join", at_join);
    figure(SUITE, "pools_kill.kills_with_pool_temp_pack", at_temp_pack);
    assert!(problems.is_empty(), "{problems:#?}");

    // Settle: upstream stands still, the worker runs undisturbed.
    fleet.workers[0].start();
    let owners = fleet.wait_settled(SETTLE);
    wait_for(Duration::from_secs(60), "mirrors equal to upstream", || {
        fleet.check_mirrors(&owners)
    });
    let w = &fleet.workers[0];
    wait_for(Duration::from_secs(90), "every mirror pooled", || {
        let plain: Vec<&String> = ids
            .iter()
            .filter(|id| !pooled(&w.mirror_path(id), &pool))
            .collect();
        if plain.is_empty() {
            Ok(())
        } else {
            Err(format!("not pooled: {plain:?}"))
        }
    });
    // The worker still runs: a consolidation may roll the pool's packs up while fsck
    // reads a member (fsck lists the packs once, then finds some gone: "index not
    // opened"), as it may under any `git repack` of a live repo. A mirror that stays
    // incomplete or behind fails at the deadline; the kills above checked a still disk.
    let upstream: Vec<_> = fleet.repos.values().map(|url| ls_remote(url)).collect();
    wait_for(
        Duration::from_secs(60),
        "every mirror whole and equal to upstream",
        || {
            for ((id, _), want) in fleet.repos.iter().zip(&upstream) {
                let path = w.mirror_path(id);
                whole(&path, true).map_err(|e| format!("{id}: {e}"))?;
                let refs = try_mirror_refs(&path).map_err(|e| format!("{id}: {e}"))?;
                if &refs != want {
                    return Err(format!("{id}: refs {refs:?}, upstream {want:?}"));
                }
            }
            Ok(())
        },
    );
    figure(SUITE, "pools_kill.secs", started.elapsed().as_secs());
}
