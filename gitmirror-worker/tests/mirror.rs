//! SPEC §7.1–§7.3: bare mirrors cloned, fetched, healed and maintained, against a real
//! `git daemon`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::proxy::Proxy;
use common::{GitDaemon, Upstream, git, local_refs, ls_remote};
use gitmirror_wire::FailureClass;
use gitmirror_worker::mirror::{self, Mirrors};
use gitmirror_worker::state::{Refs, ref_changes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

fn no_interrupt() -> AtomicBool {
    AtomicBool::new(false)
}

/// SPEC §7.1: the mirror's refs equal `git ls-remote` of the upstream (branches, both kinds
/// of tags) — this catches the gix ls-refs prefix bug — and the mirror is a real mirror.
#[test]
fn spec_7_1_clone_matches_ls_remote_and_is_a_mirror() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();

    let fetched = m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let path = root.path().join("repos/a/abc/abc.git");
    assert_eq!(m.path("a/abc/abc"), path);
    let expected = ls_remote(&url);
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(local_refs(&path), expected);
    assert_eq!(fetched.refs, expected);
    assert_eq!(
        git(&path, &["rev-parse", "--is-bare-repository"]).trim(),
        "true"
    );
    let remotes = git(&path, &["remote", "-v"]);
    assert!(
        remotes.contains(&format!("origin\t{url} (fetch)")),
        "{remotes}"
    );
    assert_eq!(
        git(&path, &["config", "remote.origin.mirror"]).trim(),
        "true"
    );
    assert_eq!(
        git(&path, &["config", "--get-all", "remote.origin.fetch"]).trim(),
        "+refs/*:refs/*"
    );
    git(&path, &["fsck", "--no-progress"]);
    // Packs are readable by a git daemon running as another user; no stray .keep files.
    for e in std::fs::read_dir(path.join("objects/pack")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".keep"), "{name}");
        assert_eq!(
            e.metadata().unwrap().permissions().mode() & 0o044,
            0o044,
            "{name}"
        );
    }
    // Nothing left in .tmp.
    assert_eq!(std::fs::read_dir(m.tmp_dir()).unwrap().count(), 0);
    drop(upstream);
}

/// SPEC §7.1, §8: a fetch brings new commits, prunes a deleted branch, follows a
/// force-push, and the change list is computed against the refs last reported.
#[test]
fn spec_7_1_fetch_new_commits_prune_and_force_push() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    let cloned = m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let reported: Refs = cloned.refs.clone();

    // Nothing changed upstream: same refs, no changes.
    let again = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert_eq!(again.refs, reported);
    assert!(!again.url_changed);
    assert!(ref_changes(&reported, &again.refs).is_empty());

    let old_main = reported["refs/heads/main"].clone();
    let new_main = upstream.commit("third");
    git(&upstream.dir, &["branch", "-D", "dev"]);
    git(&upstream.dir, &["tag", "v2"]);
    // Force-push: feature/x rewritten to an unrelated commit.
    let old_feature = reported["refs/heads/feature/x"].clone();
    git(&upstream.dir, &["checkout", "-q", "feature/x"]);
    git(&upstream.dir, &["reset", "-q", "--hard", "HEAD~1"]);
    let new_feature = upstream.commit("rewritten");
    git(&upstream.dir, &["checkout", "-q", "main"]);

    let after = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    let path = m.path("a/abc/abc");
    assert_eq!(local_refs(&path), ls_remote(&url));
    assert_eq!(after.refs, ls_remote(&url));
    assert!(
        !after.refs.contains_key("refs/heads/dev"),
        "deleted branch pruned"
    );
    git(&path, &["fsck", "--no-progress"]);
    let changes = ref_changes(&reported, &after.refs);
    let find = |n: &str| changes.iter().find(|c| c.name == n).cloned();
    assert_eq!(
        find("refs/heads/main").unwrap().old.as_deref(),
        Some(old_main.as_str())
    );
    assert_eq!(
        find("refs/heads/main").unwrap().new.as_deref(),
        Some(new_main.as_str())
    );
    assert_eq!(find("refs/heads/dev").unwrap().new, None);
    assert_eq!(find("refs/tags/v2").unwrap().old, None);
    let f = find("refs/heads/feature/x").unwrap();
    assert_eq!(
        (f.old.as_deref(), f.new.as_deref()),
        (Some(old_feature.as_str()), Some(new_feature.as_str()))
    );
    assert_eq!(changes.len(), 4, "{changes:?}");

    // SPEC §8 crash case: the mirror moved on but the report never left (reported refs are
    // older than the mirror). The next fetch, with nothing new upstream, still reports it.
    let next = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert_eq!(ref_changes(&reported, &next.refs), changes);
}

/// SPEC §7.1: a URL change is followed by rewriting `remote.origin.url`, never a re-clone.
#[test]
fn spec_7_1_url_change_keeps_the_mirror() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    let path = m.path("a/abc/abc");
    let inode = std::fs::metadata(&path).unwrap().ino();
    let packs_before: Vec<_> = std::fs::read_dir(path.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    // The upstream moves: same repo, new name.
    std::fs::rename(&upstream.dir, up.path().join("abc-moved")).unwrap();
    upstream.dir = up.path().join("abc-moved");
    upstream.commit("after the move");
    let new_url = daemon.url("abc-moved");
    let fetched = m.fetch("a/abc/abc", &new_url, &no_interrupt()).unwrap();
    assert!(fetched.url_changed);
    assert_eq!(fetched.refs, ls_remote(&new_url));
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "same directory, not a re-clone"
    );
    for p in packs_before {
        assert!(
            path.join("objects/pack").join(&p).exists(),
            "old pack {p:?} kept"
        );
    }
    let remotes = git(&path, &["remote", "-v"]);
    assert!(
        remotes.contains(&format!("origin\t{new_url} (fetch)")),
        "{remotes}"
    );
    assert_eq!(
        git(&path, &["config", "remote.origin.mirror"]).trim(),
        "true"
    );
    assert!(
        !m.fetch("a/abc/abc", &new_url, &no_interrupt())
            .unwrap()
            .url_changed
    );
}

/// SPEC §7.1, §7.3: a failed clone leaves nothing at the final path or in `.tmp`; a missing
/// upstream is classified `Gone`; an upstream failure never deletes an existing mirror.
#[test]
fn spec_7_3_failures_are_classified_and_leave_no_half_clone() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();

    let err = m
        .clone_new("n/nope/nope", &daemon.url("nope"), &no_interrupt())
        .unwrap_err();
    assert_eq!(err.class, gitmirror_wire::FailureClass::Gone, "{err}");
    assert!(!m.path("n/nope/nope").exists());
    assert_eq!(std::fs::read_dir(m.tmp_dir()).unwrap().count(), 0);

    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    std::fs::remove_dir_all(&upstream.dir).unwrap();
    let err = m
        .fetch("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap_err();
    assert_eq!(err.class, gitmirror_wire::FailureClass::Gone, "{err}");
    assert!(m.path("a/abc/abc").join("objects").is_dir(), "mirror kept");

    // An interrupted clone (the timeout's flag already set) is not left behind either.
    let err = m.clone_new(
        "b/b/b",
        &format!("git://127.0.0.1:{}/abc", daemon.port),
        &AtomicBool::new(true),
    );
    assert!(err.is_err());
    assert!(!m.path("b/b/b").exists());
    assert_eq!(std::fs::read_dir(m.tmp_dir()).unwrap().count(), 0);

    // Nothing listens here: transient.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = m
        .clone_new(
            "c/c/c",
            &format!("git://127.0.0.1:{port}/abc"),
            &no_interrupt(),
        )
        .unwrap_err();
    assert_eq!(err.class, gitmirror_wire::FailureClass::Transient, "{err}");
}

/// SPEC §7.1: dropped mirrors are deleted (moved) or trashed (removed from the index).
#[test]
fn spec_7_1_drop_deletes_or_trashes() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    m.clone_new("a/abc/other", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    m.delete("a/abc/abc").unwrap();
    assert!(!m.path("a/abc/abc").exists());
    assert!(m.path("a/abc/other").exists());
    let t = m.trash("a/abc/other", 1234).unwrap().unwrap();
    assert!(t.join("objects").is_dir());
    assert!(!root.path().join("repos/a").exists());
}

fn packs(mirror: &Path) -> Vec<String> {
    std::fs::read_dir(mirror.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn pack_count(mirror: &Path) -> usize {
    packs(mirror)
        .iter()
        .filter(|n| n.ends_with(".pack"))
        .count()
}

/// SPEC §7.1: mirrors stay compact. 200 upstream commits, each followed by a fetch (each
/// brings a pack), with maintenance whenever the worker would run it: never more than 50
/// packs, no stray `.keep`, `git fsck` clean, refs equal to the upstream's.
#[test]
fn spec_7_1_two_hundred_fetches_stay_compact_and_fsck_clean() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "busy");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("busy");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("b/busy/busy", &url, &no_interrupt()).unwrap();
    let path = m.path("b/busy/busy");
    let (mut most, mut maintained) = (0, 0);
    let started = Instant::now();
    for i in 0..200 {
        upstream.commit(&format!("commit {i}"));
        let f = m.fetch("b/busy/busy", &url, &no_interrupt()).unwrap();
        let n = f.packs.expect("a fetch that brought data counts packs");
        assert_eq!(n, pack_count(&path));
        most = most.max(n);
        // The worker's policy (run.rs): maintenance once a fetch leaves REPACK_AT packs.
        if n >= mirror::REPACK_AT {
            let r = m
                .maintain("b/busy/busy", &url, i % 50 == 0, &no_interrupt())
                .unwrap();
            assert!(r.packs_after < r.packs_before, "{r:?}");
            assert!(r.recloned.is_none(), "{r:?}");
            maintained += 1;
        }
    }
    eprintln!(
        "200 fetches in {:.1} s, {maintained} maintenance passes, at most {most} packs, {} now",
        started.elapsed().as_secs_f32(),
        pack_count(&path)
    );
    assert!(most <= 50, "at most 50 packs (saw {most})");
    assert!(maintained >= 10);
    assert!(!packs(&path).iter().any(|n| n.ends_with(".keep")));
    assert_eq!(local_refs(&path), ls_remote(&url));
    git(&path, &["fsck", "--no-progress", "--strict"]);
    // Even without maintenance the bound holds: the fetch repacks past 50 packs itself.
    let unmaintained = m.path("u/u/u");
    m.clone_new("u/u/u", &url, &no_interrupt()).unwrap();
    for i in 0..55 {
        upstream.commit(&format!("more {i}"));
        let f = m.fetch("u/u/u", &url, &no_interrupt()).unwrap();
        assert!(f.packs.unwrap() <= 50);
    }
    assert!(pack_count(&unmaintained) <= 50);
    git(&unmaintained, &["fsck", "--no-progress"]);
}

/// SPEC §7.2: a fetch with nothing new upstream is one ref listing: no `fetch` command
/// reaches the server and nothing in the mirror is written. With a change, it fetches.
#[test]
fn spec_7_2_unchanged_upstream_costs_one_ref_listing() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let proxy = Proxy::start(daemon.port);
    let url = format!("git://127.0.0.1:{}/abc", proxy.port);
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let path = m.path("a/abc/abc");
    let snapshot = |p: &Path| {
        let mut files = Vec::new();
        for dir in ["", "objects/pack", "refs", "refs/heads", "refs/tags"] {
            if let Ok(rd) = std::fs::read_dir(p.join(dir)) {
                for e in rd.flatten() {
                    let meta = e.metadata().unwrap();
                    files.push((e.path(), meta.len(), meta.modified().unwrap()));
                }
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&path);
    proxy.clear();
    let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert_eq!(f.packs, None, "no pack negotiated");
    let sent = proxy.client_bytes();
    assert!(sent.contains("command=ls-refs"), "{sent:?}");
    assert!(
        !sent.contains("command=fetch"),
        "no pack negotiation: {sent:?}"
    );
    assert_eq!(snapshot(&path), before, "nothing written");

    upstream.commit("new");
    proxy.clear();
    let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert!(f.packs.is_some());
    assert!(proxy.client_bytes().contains("command=fetch"));
    assert_eq!(f.refs, ls_remote(&url));
}

/// Backdate a file, as if left by a crash a while ago.
fn age(path: &Path, by: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

/// SPEC §7.3 "local": stale lock files left in a mirror (by a crash: `refs/heads/main.lock`,
/// `packed-refs.lock`, `config.lock`) are removed and the fetch succeeds; a lock younger
/// than a few seconds is left alone (someone may hold it) and the fetch fails `Local`.
#[test]
fn spec_7_3_stale_locks_are_removed() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let path = m.path("a/abc/abc");
    // A fresh lock on the branch that is about to change: not ours, maybe someone's.
    std::fs::create_dir_all(path.join("refs/heads")).unwrap();
    let main_lock = path.join("refs/heads/main.lock");
    std::fs::write(&main_lock, b"").unwrap();
    upstream.commit("needs the main ref");
    git(&upstream.dir, &["branch", "-D", "dev"]); // prune needs packed-refs
    let err = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap_err();
    assert_eq!(err.class, FailureClass::Local, "{err}");
    assert!(err.message.contains("main.lock"), "{err}");
    assert!(main_lock.exists(), "a fresh lock is left alone");

    // The same locks, left by a crash a minute ago.
    let locks = [
        main_lock,
        path.join("packed-refs.lock"),
        path.join("config.lock"),
    ];
    for l in &locks {
        std::fs::write(l, b"").unwrap();
        age(l, Duration::from_secs(60));
    }
    let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    for l in &locks {
        assert!(!l.exists(), "{} removed", l.display());
    }
    assert!(f.repairs.len() >= 3, "{:?}", f.repairs);
    assert_eq!(f.refs, ls_remote(&url));
    assert_eq!(local_refs(&path), ls_remote(&url));
    git(&path, &["fsck", "--no-progress"]);
}

/// SPEC §7.3 "local", §7.1: a corrupt mirror — a pack deleted, or a ref file holding
/// garbage — is detected by the next fetch (even with nothing new upstream), cloned again
/// into `.tmp/` and swapped in; a watcher sees a complete mirror at the final path at every
/// look, the old one until the swap and the new one after.
#[test]
fn spec_7_3_corrupt_mirror_is_recloned_and_swapped_in() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let path = m.path("a/abc/abc");

    for corruption in ["delete the pack", "garbage in a ref"] {
        match corruption {
            "delete the pack" => {
                for p in packs(&path) {
                    if p.ends_with(".pack") {
                        std::fs::remove_file(path.join("objects/pack").join(p)).unwrap();
                    }
                }
            }
            _ => {
                std::fs::create_dir_all(path.join("refs/heads")).unwrap();
                std::fs::write(path.join("refs/heads/main"), b"garbage\n").unwrap();
                upstream.commit("and something new");
            }
        }
        let before = std::fs::metadata(&path).unwrap().ino();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let mut looks = 0u64;
                let mut inodes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let meta = std::fs::metadata(&path).expect("a mirror at the final path");
                    assert!(path.join("HEAD").is_file() && path.join("objects").is_dir());
                    if inodes.last() != Some(&meta.ino()) {
                        inodes.push(meta.ino());
                    }
                    looks += 1;
                }
                (looks, inodes)
            })
        };
        let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (looks, inodes) = watcher.join().expect("the watcher never saw a gap");
        let after = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(before, after, "{corruption}: swapped");
        assert!(looks > 10, "{corruption}: watched {looks} times");
        assert_eq!(
            inodes.first(),
            Some(&before),
            "{corruption}: old mirror first"
        );
        assert!(inodes.len() <= 2, "{corruption}: one swap: {inodes:?}");
        assert!(
            f.repairs.iter().any(|r| r.contains("corrupt")),
            "{corruption}: {:?}",
            f.repairs
        );
        assert_eq!(f.refs, ls_remote(&url), "{corruption}");
        assert_eq!(local_refs(&path), ls_remote(&url));
        git(&path, &["fsck", "--no-progress"]);
        assert_eq!(
            git(&path, &["config", "remote.origin.mirror"]).trim(),
            "true"
        );
        assert_eq!(
            std::fs::read_dir(m.tmp_dir()).unwrap().count(),
            0,
            "{corruption}: the old mirror is gone from .tmp"
        );
    }
}

/// SPEC §7.1, §7.3 over smart HTTP (the worker's own HTTP backend for gix): clone, fetch
/// with changes and prune, a no-op fetch; a 429 with `Retry-After` on a fetch is
/// `RateLimited` carrying the wait; a missing repo is `Gone`.
#[test]
fn spec_7_3_http_fetches_and_refusals() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let http = common::http::HttpGit::start(up.path());
    let url = http.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    let cloned = m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert_eq!(cloned.refs, ls_remote(&url));
    upstream.commit("over http");
    git(&upstream.dir, &["branch", "-D", "dev"]);
    let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert!(f.packs.is_some());
    assert_eq!(f.refs, ls_remote(&url));
    assert!(!f.refs.contains_key("refs/heads/dev"));
    let requests = http.seen().len();
    let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert_eq!(f.packs, None);
    assert_eq!(
        http.seen().len() - requests,
        2,
        "a no-op is the advertisement and one ls-refs: {:?}",
        &http.seen()[requests..]
    );
    git(&m.path("a/abc/abc"), &["fsck", "--no-progress"]);

    http.rate_limit(Duration::from_secs(30));
    let err = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap_err();
    assert_eq!(err.class, FailureClass::RateLimited, "{err}");
    assert_eq!(err.retry_after, Some(Duration::from_secs(30)), "{err}");
    assert!(err.message.contains("429"), "{err}");
    http.rate_limit(Duration::ZERO);

    let err = m
        .clone_new("n/nope/nope", &http.url("nope"), &no_interrupt())
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Gone, "{err}");
    assert_eq!(std::fs::read_dir(m.tmp_dir()).unwrap().count(), 0);
}

/// SPEC §7.1, §7.3: damage deeper than the ref tips (a lost blob) is not seen by a fetch
/// but by maintenance's connectivity check, which clones the mirror again and swaps it in.
#[test]
fn spec_7_3_maintenance_finds_deep_corruption_and_reclones() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let path = m.path("a/abc/abc");
    // Turn the pack into loose objects, then lose one blob.
    let aside = tempfile::tempdir().unwrap();
    for p in packs(&path) {
        std::fs::rename(path.join("objects/pack").join(&p), aside.path().join(&p)).unwrap();
    }
    let pack = std::fs::read_dir(aside.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    let st = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&path)
        .args(["unpack-objects", "-q"])
        .stdin(std::fs::File::open(pack).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    let blob = git(&path, &["rev-parse", "refs/heads/main~1:file"]);
    let blob = blob.trim();
    std::fs::remove_file(path.join("objects").join(&blob[..2]).join(&blob[2..])).unwrap();

    let f = m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
    assert!(
        f.repairs.is_empty(),
        "the tips are all there: {:?}",
        f.repairs
    );
    let r = m
        .maintain("a/abc/abc", &url, true, &no_interrupt())
        .unwrap();
    assert!(r.recloned.is_some(), "{r:?}");
    assert!(r.repairs.iter().any(|x| x.contains("corrupt")), "{r:?}");
    git(&path, &["fsck", "--no-progress"]);
    assert_eq!(local_refs(&path), ls_remote(&url));
    // A healthy mirror is left as it is.
    let again = m
        .maintain("a/abc/abc", &url, true, &no_interrupt())
        .unwrap();
    assert!(
        again.recloned.is_none() && again.repairs.is_empty(),
        "{again:?}"
    );
}

/// Set a directory's mtime far into the past, so any entry created or removed in it
/// (even a mkdir followed by an rmdir within the same clock tick) shows as a new mtime.
fn backdate(dir: &Path) -> SystemTime {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800); // 2000-01-01
    std::fs::File::open(dir).unwrap().set_modified(old).unwrap();
    std::fs::metadata(dir).unwrap().modified().unwrap()
}

/// SPEC §7.1, §12 (issue 9): a clone attempt whose upstream refuses the connection or does
/// not have the repo connects first and writes nothing: no skeleton is made in `.tmp/` and
/// removed again (at 100k repos with failing upstreams that was most of a worker's CPU).
#[test]
fn spec_12_failed_clone_attempt_creates_nothing() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    let tmp = m.tmp_dir();
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let attempts = [
        (
            format!("git://127.0.0.1:{refused_port}/abc"),
            Some(FailureClass::Transient),
        ),
        (daemon.url("nope"), Some(FailureClass::Gone)),
        // git-upload-pack spawned for a path that is not there.
        (
            format!("file://{}", up.path().join("missing").display()),
            None,
        ),
    ];
    for (url, class) in attempts {
        let before = backdate(&tmp);
        let err = m
            .clone_new("n/nope/nope", &url, &no_interrupt())
            .unwrap_err();
        if let Some(class) = class {
            assert_eq!(err.class, class, "{url}: {err}");
        }
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{url}");
        assert_eq!(
            std::fs::metadata(&tmp).unwrap().modified().unwrap(),
            before,
            "{url}: something was created in and removed from .tmp/"
        );
        assert!(!m.path("n/nope/nope").exists());
        assert!(!root.path().join("repos/n").exists(), "{url}");
    }
    // The same clone against a working upstream still writes its mirror.
    let fetched = m
        .clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    assert_eq!(fetched.refs, ls_remote(&daemon.url("abc")));
}

/// Give `upstream` `n` more refs (`refs/pull/<i>/head`, spread over its three commits) and
/// an annotated tag outside `refs/tags/`, written straight into `packed-refs` (git sorts an
/// unsorted file when it reads it; `update-ref` would take seconds for loose files).
fn add_many_refs(upstream: &Path, n: usize) {
    git(upstream, &["pack-refs", "--all"]);
    let commits: Vec<String> = ["main", "dev", "feature/x"]
        .iter()
        .map(|b| git(upstream, &["rev-parse", b]).trim().to_owned())
        .collect();
    let packed = upstream.join(".git/packed-refs");
    let old = std::fs::read_to_string(&packed).unwrap();
    let mut text = String::from("# pack-refs with: peeled \n");
    text.extend(
        old.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n")),
    );
    for i in 0..n {
        text.push_str(&format!(
            "{} refs/pull/{i}/head\n",
            commits[i % commits.len()]
        ));
    }
    let tag = git(upstream, &["rev-parse", "v1-annotated"])
        .trim()
        .to_owned();
    text.push_str(&format!("{tag} refs/review/tagged\n"));
    std::fs::write(&packed, text).unwrap();
}

/// Loose ref files under `refs/` of a mirror.
fn loose_refs(mirror: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(&mirror.join("refs"), &mut out);
    out
}

/// SPEC §7.1, §12 (issues 9 and 11): a clone of an upstream with 20k refs writes them all
/// into `packed-refs` at once (no loose refs, no per-ref lock files), equal to `git
/// ls-remote`, with tags peeled as git's own listing shows them, HEAD as upstream's, and
/// `git fsck` clean.
#[test]
fn spec_12_clone_of_many_refs_writes_packed_refs() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "many");
    add_many_refs(&upstream.dir, 20_000);
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("many");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();

    let fetched = m.clone_new("m/many/many", &url, &no_interrupt()).unwrap();
    let path = m.path("m/many/many");
    let expected = ls_remote(&url);
    assert_eq!(expected.len(), 20_000 + 6, "upstream as built");
    assert_eq!(local_refs(&path), expected);
    assert_eq!(fetched.refs, expected);
    assert_eq!(loose_refs(&path), Vec::<std::path::PathBuf>::new());
    // Peeled values as the upstream advertises them (`^{}` lines).
    let peeled = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.ends_with("^{}"))
            .map(|l| l.replace('\t', " "))
            .collect()
    };
    let mut theirs = peeled(&git(&std::env::temp_dir(), &["ls-remote", &url]));
    let mut ours = peeled(&git(&path, &["show-ref", "-d"]));
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(
        git(&path, &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
    git(&path, &["fsck", "--no-progress"]);
    assert_eq!(
        git(&path, &["config", "remote.origin.mirror"]).trim(),
        "true"
    );
    // A fetch afterwards is a no-op, and one after a change finds just that change.
    let again = m.fetch("m/many/many", &url, &no_interrupt()).unwrap();
    assert!(ref_changes(&fetched.refs, &again.refs).is_empty());

    // A fetch that changes many refs (1,000 new, 10 deleted, one branch moved) writes
    // them at once too, and prunes.
    let mut upstream = upstream;
    upstream.commit("moves main");
    let packed = upstream.dir.join(".git/packed-refs");
    let text = std::fs::read_to_string(&packed).unwrap();
    let mut text: String = text
        .lines()
        .filter(|l| !(0..10).any(|i| l.ends_with(&format!(" refs/pull/{i}/head"))))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(" sorted", "");
    let main = git(&upstream.dir, &["rev-parse", "main"]).trim().to_owned();
    for i in 0..1000 {
        text.push_str(&format!("{main} refs/changes/{i}/head\n"));
    }
    std::fs::write(&packed, text).unwrap();
    let after = m.fetch("m/many/many", &url, &no_interrupt()).unwrap();
    let expected = ls_remote(&url);
    assert_eq!(after.refs, expected);
    assert_eq!(local_refs(&path), expected);
    assert_eq!(ref_changes(&again.refs, &after.refs).len(), 1000 + 10 + 1);
    assert_eq!(loose_refs(&path), Vec::<std::path::PathBuf>::new());
    git(&path, &["fsck", "--no-progress"]);

    // One moved ref among 20k is written with the others in one go as well (gix's
    // transaction would take a lock file for each of the 20k; it also leaves a loose ref).
    upstream.commit("moves main again");
    let last = m.fetch("m/many/many", &url, &no_interrupt()).unwrap();
    let expected = ls_remote(&url);
    assert_eq!(last.refs, expected);
    assert_eq!(local_refs(&path), expected);
    assert_eq!(ref_changes(&after.refs, &last.refs).len(), 1);
    assert_eq!(loose_refs(&path), Vec::<std::path::PathBuf>::new());
    git(&path, &["fsck", "--no-progress"]);
}

/// Issue 11 §2: the `packed-refs` our clone writes (it claims `fully-peeled`, from the
/// upstream's advertisement) reads in git exactly as `git clone --mirror`'s: every ref's
/// object, type and peeled object (a tag of a tag peels to the commit; an annotated tag
/// outside `refs/tags/`; a tag of a tree), `show-ref -d`, HEAD; and `git pack-refs` finds
/// nothing to change.
#[test]
fn issue11_packed_refs_clone_reads_like_git_clone_mirror() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "tags");
    let d = &upstream.dir;
    git(
        d,
        &[
            "tag",
            "-a",
            "v1-of-tag",
            "-m",
            "tag of a tag",
            "v1-annotated",
        ],
    );
    git(
        d,
        &[
            "tag",
            "-a",
            "v1-of-tree",
            "-m",
            "tag of a tree",
            "main^{tree}",
        ],
    );
    let tag = git(d, &["rev-parse", "v1-of-tag"]).trim().to_owned();
    git(d, &["update-ref", "refs/review/tagged", &tag]);
    git(d, &["update-ref", "refs/keep/tag-of-tag", &tag]);
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("tags");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("t/tags/tags", &url, &no_interrupt()).unwrap();
    let ours = m.path("t/tags/tags");
    let theirs = root.path().join("git.git");
    git(
        root.path(),
        &["clone", "--mirror", "-q", &url, theirs.to_str().unwrap()],
    );

    let each_ref = [
        "for-each-ref",
        "--format=%(refname) %(objectname) %(objecttype) %(*objectname) %(*objecttype)",
    ];
    for args in [
        &each_ref[..],
        &["show-ref", "-d"],
        &["symbolic-ref", "HEAD"],
    ] {
        assert_eq!(git(&ours, args), git(&theirs, args), "git {args:?}");
    }
    // Read from our `packed-refs` (git trusts its peeled lines): fully peeled.
    let shown = git(&ours, &["show-ref", "-d"]);
    let commit = git(d, &["rev-parse", "v1-annotated^{commit}"])
        .trim()
        .to_owned();
    for name in [
        "refs/review/tagged",
        "refs/keep/tag-of-tag",
        "refs/tags/v1-of-tag",
    ] {
        assert!(shown.contains(&format!("{commit} {name}^{{}}")), "{shown}");
    }
    assert!(shown.lines().count() >= 12, "{shown}");
    let before = std::fs::read_to_string(ours.join("packed-refs")).unwrap();
    git(&ours, &["pack-refs", "--all"]);
    let after = std::fs::read_to_string(ours.join("packed-refs")).unwrap();
    assert_eq!(
        before.lines().skip(1).collect::<Vec<_>>(),
        after.lines().skip(1).collect::<Vec<_>>(),
        "git rewrites the same refs and peeled lines"
    );
    git(&ours, &["fsck", "--no-progress"]);
}

/// Issue 10 finding 5, SPEC §7.1: a clone's temp directory and the trash are beside the
/// mirror directory, so `git daemon --base-path=<mirror_dir> --export-all` cannot serve a
/// half-done clone or a deleted mirror. Where a clone's temp directory goes is seen
/// without timing: with a file standing where the temp directory should be, the clone
/// fails naming the path it tried. Before this release it was `<mirror_dir>/.tmp/…`.
#[test]
fn issue10_f5_clone_temp_and_trash_are_not_under_mirror_dir() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let repos = root.path().join("repos");
    let m = Mirrors::new(repos.clone());
    m.prepare().unwrap();
    assert_eq!(m.tmp_dir(), root.path().join("repos.tmp"));
    assert_eq!(m.trash_dir(), root.path().join("repos.trash"));

    std::fs::remove_dir(m.tmp_dir()).unwrap();
    std::fs::write(m.tmp_dir(), b"not a directory").unwrap();
    let err = m
        .clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap_err();
    let tried = format!("{}/", m.tmp_dir().display());
    assert!(err.message.contains(&tried), "{err}");
    std::fs::remove_file(m.tmp_dir()).unwrap();
    std::fs::create_dir(m.tmp_dir()).unwrap();

    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    let trashed = m.trash("a/abc/abc", 1234).unwrap().unwrap();
    assert!(
        trashed.starts_with(root.path().join("repos.trash")),
        "{}",
        trashed.display()
    );
    let inside: Vec<_> = std::fs::read_dir(&repos)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        inside.is_empty(),
        "left in the mirror directory: {inside:?}"
    );
}
