//! SPEC §7.1: bare mirrors cloned and fetched with gix from a real `git daemon`.

mod common;

use common::{GitDaemon, Upstream, git, local_refs, ls_remote};
use gitmirror_worker::mirror::Mirrors;
use gitmirror_worker::state::{Refs, ref_changes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::AtomicBool;

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
    assert_eq!(
        std::fs::read_dir(root.path().join("repos/.tmp"))
            .unwrap()
            .count(),
        0
    );
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
    let m = Mirrors::new(root.path().to_owned());
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
    let m = Mirrors::new(root.path().to_owned());
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
    let m = Mirrors::new(root.path().to_owned());
    m.prepare().unwrap();

    let err = m
        .clone_new("n/nope/nope", &daemon.url("nope"), &no_interrupt())
        .unwrap_err();
    assert_eq!(err.class, gitmirror_wire::FailureClass::Gone, "{err}");
    assert!(!m.path("n/nope/nope").exists());
    assert_eq!(
        std::fs::read_dir(root.path().join(".tmp")).unwrap().count(),
        0
    );

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
    assert_eq!(
        std::fs::read_dir(root.path().join(".tmp")).unwrap().count(),
        0
    );

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
    let m = Mirrors::new(root.path().to_owned());
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
    assert!(!root.path().join("a").exists());
}

/// SPEC §7.1: mirrors stay compact — every fetch that brings data adds a pack, and the
/// worker repacks before there are more than 50.
#[test]
fn spec_7_1_pack_count_stays_bounded() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().to_owned());
    m.prepare().unwrap();
    m.clone_new("a/abc/abc", &url, &no_interrupt()).unwrap();
    let packs = |p: &std::path::Path| {
        std::fs::read_dir(p.join("objects/pack"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".pack")
            })
            .count()
    };
    let path = m.path("a/abc/abc");
    let mut most = 0;
    for i in 0..55 {
        upstream.commit(&format!("commit {i}"));
        m.fetch("a/abc/abc", &url, &no_interrupt()).unwrap();
        most = most.max(packs(&path));
    }
    assert!(most <= 50, "at most 50 packs after a fetch (saw {most})");
    assert!(packs(&path) < 50);
    assert_eq!(local_refs(&path), ls_remote(&url));
    git(&path, &["fsck", "--no-progress"]);
}
