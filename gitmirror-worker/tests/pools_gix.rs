//! SPEC §14 spike (docs/plans/fork-pools.md step 1, risk R4): what gix and git do with a
//! mirror that borrows objects from a pool through `objects/info/alternates`. Tests only:
//! each pins a fact the pool design builds on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::proxy::Proxy;
use common::{GitDaemon, git, local_refs, ls_remote};
use gitmirror_worker::mirror::Mirrors;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

const BIG: usize = 512 * 1024;

/// Incompressible bytes (xorshift), so a full copy of the file costs about `BIG` on the wire.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An upstream `<base>/<name>` whose one commit holds a big incompressible file.
fn big_upstream(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("big"), noise(7, BIG)).unwrap();
    git(&dir, &["add", "big"]);
    git(&dir, &["commit", "-q", "-m", "big"]);
    git(&dir, &["tag", "v1"]);
    dir
}

/// A small change to the big file: git sends it as a delta against the old blob.
fn touch_big(dir: &Path, msg: &str) -> String {
    let mut data = std::fs::read(dir.join("big")).unwrap();
    data.extend_from_slice(msg.as_bytes());
    std::fs::write(dir.join("big"), data).unwrap();
    git(dir, &["commit", "-q", "-am", msg]);
    git(dir, &["rev-parse", "HEAD"]).trim().to_owned()
}

/// The layout of plan C5: pool `<root>/.pools/a/abc.git`, and a member `<root>/a/abc/<name>.git`
/// that holds the pool's refs and no objects of its own, borrowing through a relative
/// alternates path (what a member looks like after joining and `repack -a -d -l`).
fn pooled_member(root: &Path, upstream: &Path, name: &str, origin_url: &str) -> (PathBuf, PathBuf) {
    let pool = root.join(".pools/a/abc.git");
    std::fs::create_dir_all(pool.parent().unwrap()).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            "--mirror",
            upstream.to_str().unwrap(),
            pool.to_str().unwrap(),
        ],
    );
    let member = root.join(format!("a/abc/{name}.git"));
    std::fs::create_dir_all(member.parent().unwrap()).unwrap();
    // `--shared` copies the refs and writes an absolute alternates path, no objects.
    git(
        root,
        &[
            "clone",
            "-q",
            "--mirror",
            "--shared",
            pool.to_str().unwrap(),
            member.to_str().unwrap(),
        ],
    );
    // Relative to the member's objects directory: objects → <name>.git → abc → a → root.
    std::fs::write(
        member.join("objects/info/alternates"),
        "../../../../.pools/a/abc.git/objects\n",
    )
    .unwrap();
    git(&member, &["config", "remote.origin.url", origin_url]);
    assert_eq!(
        std::fs::read_dir(member.join("objects/pack"))
            .unwrap()
            .count(),
        0,
        "the member must start with no objects of its own"
    );
    (pool, member)
}

fn fsck(dir: &Path) {
    git(dir, &["fsck", "--full", "--no-dangling", "--no-progress"]);
}

/// SPEC §14: gix opens a member whose alternates path is relative (to its objects
/// directory) and finds objects that exist only in the pool; the mirror directory moved as
/// a whole keeps working, and a no-op fetch of the member (which checks its ref tips)
/// succeeds.
#[test]
fn spec_14_gix_reads_relative_alternates() {
    let up = tempfile::tempdir().unwrap();
    let upstream = big_upstream(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("repos");
    let (_, member) = pooled_member(&root, &upstream, "fork", &daemon.url("abc"));
    let tip = git(&upstream, &["rev-parse", "HEAD:big"]).trim().to_owned();

    let check = |member: &Path| {
        let repo = gix::open(member).unwrap();
        let id = gix::ObjectId::from_hex(tip.as_bytes()).unwrap();
        assert!(repo.has_object(id), "gix does not see the pooled blob");
        let blob = repo.find_object(id).unwrap();
        assert_eq!(blob.data.len(), BIG);
    };
    check(&member);

    // The whole mirror directory moved: relative alternates still resolve.
    let moved = base.path().join("elsewhere");
    std::fs::rename(&root, &moved).unwrap();
    let member = moved.join("a/abc/fork.git");
    check(&member);
    fsck(&member);

    let m = Mirrors::new(moved.clone());
    m.prepare().unwrap();
    let fetched = m
        .fetch("a/abc/fork", &daemon.url("abc"), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(fetched.refs, ls_remote(&daemon.url("abc")));
    assert!(fetched.packs.is_none(), "nothing changed: no pack");
}

/// SPEC §14 (plan C12, risk R4): a gix fetch into a member that borrows from a pool
/// receives a thin pack whose delta bases exist only in the pool; gix resolves them through
/// the alternates, the member's refs equal the upstream's and `git fsck` is clean.
#[test]
fn spec_14_thin_pack_resolves_from_pool() {
    let up = tempfile::tempdir().unwrap();
    let upstream = big_upstream(up.path(), "abc");
    let daemon = GitDaemon::start(up.path());
    let proxy = Proxy::start(daemon.port);
    let url = format!("git://127.0.0.1:{}/abc", proxy.port);
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("repos");
    let (pool, member) = pooled_member(&root, &upstream, "fork", &url);
    let new_tip = touch_big(&upstream, "a small change");

    let m = Mirrors::new(root.clone());
    m.prepare().unwrap();
    proxy.clear();
    let fetched = m
        .fetch("a/abc/fork", &url, &AtomicBool::new(false))
        .unwrap();
    let received = proxy.server_bytes();
    eprintln!("thin fetch: {received} bytes from the upstream for a {BIG}-byte file");
    assert!(
        received < (BIG / 10) as u64,
        "received {received} bytes for a small change to a {BIG}-byte file: not a thin pack"
    );
    assert_eq!(fetched.refs, ls_remote(&daemon.url("abc")));
    assert_eq!(local_refs(&member), ls_remote(&daemon.url("abc")));
    assert_eq!(
        fetched.refs.get("refs/heads/main").map(String::as_str),
        Some(new_tip.as_str())
    );
    // The new blob is the member's own; the old one stays only in the pool.
    let new_blob = git(&member, &["rev-parse", "HEAD:big"]).trim().to_owned();
    assert!(
        Command::new("git")
            .args(["--git-dir"])
            .arg(&pool)
            .args(["cat-file", "-e", &new_blob])
            .status()
            .is_ok_and(|s| !s.success()),
        "the new blob reached the pool"
    );
    let old_blob = git(&member, &["rev-parse", "HEAD~1:big"]).trim().to_owned();
    assert_eq!(git(&pool, &["cat-file", "-t", &old_blob]).trim(), "blob");
    fsck(&member);
    fsck(&pool);
}

/// SPEC §14, §16 (plan C6): git's protocol v2 upload-pack serves any object by id,
/// including one that exists only in the pool and that no ref of the member reaches;
/// protocol 0 refuses. This is why a credentialed repo is never pooled.
#[test]
fn spec_14_v2_serves_pooled_objects_by_sha() {
    let up = tempfile::tempdir().unwrap();
    let upstream = big_upstream(up.path(), "abc");
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("repos");
    let (pool, member) = pooled_member(&root, &upstream, "fork", "git://127.0.0.1:1/abc");
    // A commit only the pool has (another member's private branch, say).
    let work = base.path().join("work");
    git(
        base.path(),
        &[
            "clone",
            "-q",
            upstream.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(work.join("secret"), "only in the pool\n").unwrap();
    git(&work, &["add", "secret"]);
    git(&work, &["commit", "-q", "-m", "secret"]);
    let secret = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    git(
        &work,
        &[
            "push",
            "-q",
            pool.to_str().unwrap(),
            "HEAD:refs/members/666f726b/heads/secret",
        ],
    );
    assert!(
        !git(&member, &["for-each-ref", "--contains", &secret]).contains("refs/"),
        "no ref of the member reaches the secret commit"
    );

    let client = base.path().join("client");
    git(
        base.path(),
        &["init", "-q", "--bare", client.to_str().unwrap()],
    );
    let fetch = |version: &str| {
        Command::new("git")
            .arg("--git-dir")
            .arg(&client)
            .args(["-c", &format!("protocol.version={version}"), "fetch", "-q"])
            .arg(format!("file://{}", member.display()))
            .arg(&secret)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", base.path())
            .output()
            .unwrap()
    };
    let v0 = fetch("0");
    assert!(
        !v0.status.success(),
        "protocol 0 served an unreachable object"
    );
    let v2 = fetch("2");
    assert!(
        v2.status.success(),
        "protocol 2 refused: {}",
        String::from_utf8_lossy(&v2.stderr)
    );
    assert_eq!(
        git(&client, &["cat-file", "-t", &secret]).trim(),
        "commit",
        "v2 served the pooled commit by id"
    );
}
