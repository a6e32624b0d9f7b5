//! SPEC §14 fork pools on the worker (docs/plans/fork-pools.md steps 4 and 5): layout,
//! join, reconciliation at start, clones that borrow from the pool, removal order. Real
//! git servers, real repositories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::HttpGit;
use common::proxy::Proxy;
use common::{GitDaemon, git, local_refs, ls_remote};
use gitmirror_common::credentials::{CredentialSpec, Credentials};
use gitmirror_worker::mirror::{self, Mirrors};
use gitmirror_worker::pool;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const BIG: usize = 512 * 1024;

fn no_interrupt() -> AtomicBool {
    AtomicBool::new(false)
}

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

/// Upstream `<base>/abc`: a big incompressible file, a branch, both kinds of tags.
fn origin(base: &Path) -> PathBuf {
    let dir = base.join("abc");
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("big"), noise(7, BIG)).unwrap();
    git(&dir, &["add", "big"]);
    git(&dir, &["commit", "-q", "-m", "big"]);
    git(&dir, &["tag", "v1"]);
    git(&dir, &["tag", "-a", "v1-annotated", "-m", "annotated"]);
    git(&dir, &["branch", "dev"]);
    std::fs::write(dir.join("small"), "second\n").unwrap();
    git(&dir, &["add", "small"]);
    git(&dir, &["commit", "-q", "-m", "second"]);
    dir
}

/// Upstream `<base>/<name>`: a bare copy of `origin` with a commit of its own on `main`
/// and a branch of its own.
fn fork(base: &Path, origin: &Path, name: &str) -> PathBuf {
    let bare = base.join(name);
    git(
        base,
        &[
            "clone",
            "-q",
            "--bare",
            origin.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let work = base.join(format!("{name}-work"));
    git(
        base,
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(work.join("fork"), format!("{name}'s own work\n")).unwrap();
    git(&work, &["add", "fork"]);
    git(&work, &["commit", "-q", "-m", &format!("{name} commit")]);
    git(
        &work,
        &["push", "-q", "origin", "main", "main:refs/heads/only-here"],
    );
    bare
}

fn fsck(dir: &Path) {
    git(dir, &["fsck", "--full", "--no-dangling", "--no-progress"]);
}

/// Bytes of the repository's own packs (borrowed objects not counted).
fn own_pack_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("objects/pack"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

fn members(pool: &Path) -> Vec<String> {
    pool::namespaces(pool)
        .unwrap()
        .members
        .into_keys()
        .collect()
}

fn mirrors(root: &Path, pools: bool) -> Mirrors {
    let m = Mirrors::new(root.join("repos"));
    m.set_pools(pools);
    m.prepare().unwrap();
    m
}

/// A `git clone --no-local` of the mirror is complete: what a client of the served
/// mirror sees.
fn client_clone_complete(mirror: &Path, base: &Path, name: &str) {
    let client = base.join(format!("client-{name}"));
    git(
        base,
        &[
            "clone",
            "-q",
            "--no-local",
            "--mirror",
            mirror.to_str().unwrap(),
            client.to_str().unwrap(),
        ],
    );
    fsck(&client);
    assert_eq!(local_refs(&client), local_refs(mirror));
}

/// SPEC §14 (plan step 4): joining a plain mirror to a pool goes namespace → alternates
/// → `repack -a -d -l`, and after each step the member is complete (`git fsck`, refs
/// unchanged, a client clone works); at the end it holds no pack bytes of its own.
#[test]
fn spec_14_join_keeps_member_complete_at_each_step() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), false);
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    let member = m.path("a/abc/abc");
    let refs = local_refs(&member);
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    assert_eq!(pool_dir, root.path().join("repos/.pools/a/abc.git"));
    let build = m.tmp_dir().join("pool-build");
    pool::create(&pool_dir, &member, &build).unwrap();
    assert!(!build.exists());
    // Created by hard links: the pool's pack is the member's pack, no bytes copied.
    let pack = std::fs::read_dir(pool_dir.join("objects/pack"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .unwrap();
    assert!(std::os::unix::fs::MetadataExt::nlink(&pack.metadata().unwrap()) >= 2);
    for (k, v) in [
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
        ("gc.pruneExpire", "never"),
    ] {
        assert_eq!(git(&pool_dir, &["config", k]).trim(), v, "{k}");
    }
    assert!(!pool_dir.join("git-daemon-export-ok").exists());

    let check = |step: &str| {
        fsck(&member);
        assert_eq!(local_refs(&member), refs, "after {step}");
        client_clone_complete(&member, root.path(), step);
    };
    pool::add_namespace(&pool_dir, &member, "abc").unwrap();
    check("namespace");
    assert_eq!(
        std::fs::read_dir(pool_dir.join("objects/pack"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .count(),
        1,
        "the namespace of the seed copies no objects: the pool has them all"
    );
    let ns = local_refs(&pool_dir);
    assert_eq!(
        ns.get("refs/members/616263/refs/heads/main"),
        refs.get("refs/heads/main")
    );
    assert_eq!(
        ns.get("refs/members/616263/HEAD"),
        refs.get("refs/heads/main"),
        "HEAD is kept in the namespace"
    );
    assert_eq!(members(&pool_dir), vec!["abc"]);
    pool::write_alternates(&member, &member, &pool_dir, true).unwrap();
    assert_eq!(
        std::fs::read_to_string(member.join("objects/info/alternates")).unwrap(),
        "../../../../.pools/a/abc.git/objects\n"
    );
    check("alternates");
    let before = own_pack_bytes(&member);
    pool::repack_local(&member).unwrap();
    check("repack -l");
    assert!(
        own_pack_bytes(&member) < (BIG / 100) as u64,
        "{} bytes left of {before}",
        own_pack_bytes(&member)
    );
    fsck(&pool_dir);
    // A fetch of the joined member still works and brings what is new.
    std::fs::write(origin.join("small"), "third\n").unwrap();
    git(&origin, &["commit", "-q", "-am", "third"]);
    let fetched = m
        .fetch("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    assert_eq!(fetched.refs, ls_remote(&daemon.url("abc")));
    fsck(&member);
}

/// SPEC §7.1 (plan C8): maintenance of a pool member repacks with `-l`: its many packs
/// become few, and the big borrowed file is not copied back into the member.
#[test]
fn spec_7_1_member_repack_stays_local() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), false);
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    let member = m.path("a/abc/abc");
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    pool::create(&pool_dir, &member, &m.tmp_dir().join("b")).unwrap();
    pool::join(&pool_dir, &member, "abc").unwrap();
    for i in 0..mirror::REPACK_AT {
        std::fs::write(origin.join("small"), format!("change {i}\n")).unwrap();
        git(&origin, &["commit", "-q", "-am", &format!("change {i}")]);
        m.fetch("a/abc/abc", &daemon.url("abc"), &no_interrupt())
            .unwrap();
    }
    let maint = m
        .maintain("a/abc/abc", &daemon.url("abc"), true, &no_interrupt())
        .unwrap();
    assert!(
        maint.packs_before >= mirror::REPACK_AT && maint.packs_after < maint.packs_before,
        "{maint:?}"
    );
    assert!(maint.recloned.is_none(), "{maint:?}");
    assert!(
        own_pack_bytes(&member) < (BIG / 10) as u64,
        "the member's repack copied borrowed objects in: {} bytes",
        own_pack_bytes(&member)
    );
    fsck(&member);
    assert_eq!(local_refs(&member), ls_remote(&daemon.url("abc")));
}

/// SPEC §14 (plan C7): at start, from disk alone, a member whose join stopped after the
/// namespace is finished; an absolute alternates path becomes relative; the namespace of a
/// member gone from `mirror_dir` and the trash goes (its objects stay in the pool); a
/// trashed member keeps its namespace; a broken alternates file is a clear problem line,
/// never a panic.
#[test]
fn spec_14_start_reconciles_half_joined() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-b");
    fork(up.path(), &origin, "abc-c");
    fork(up.path(), &origin, "abc-d");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), false);
    for (id, name) in [
        ("a/abc/abc", "abc"),
        ("a/abc/b", "abc-b"),
        ("a/abc/c", "abc-c"),
        ("a/abc/d", "abc-d"),
    ] {
        m.clone_new(id, &daemon.url(name), &no_interrupt()).unwrap();
    }
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    pool::create(&pool_dir, &m.path("a/abc/abc"), &m.tmp_dir().join("b")).unwrap();
    pool::join(&pool_dir, &m.path("a/abc/abc"), "abc").unwrap();
    // b: namespace only (a crash before its alternates).
    pool::add_namespace(&pool_dir, &m.path("a/abc/b"), "b").unwrap();
    // c: joined, but its alternates line absolute.
    pool::join(&pool_dir, &m.path("a/abc/c"), "c").unwrap();
    pool::write_alternates(&m.path("a/abc/c"), &m.path("a/abc/c"), &pool_dir, false).unwrap();
    // d: joined, then its mirror vanished (deleted by hand); its commit stays in the pool.
    pool::join(&pool_dir, &m.path("a/abc/d"), "d").unwrap();
    let d_tip = local_refs(&m.path("a/abc/d"))["refs/heads/main"].clone();
    std::fs::remove_dir_all(m.path("a/abc/d")).unwrap();
    // e: a namespace whose mirror sits in the trash.
    let e_tip = local_refs(&m.path("a/abc/abc"))["refs/heads/main"].clone();
    git(
        &pool_dir,
        &[
            "update-ref",
            &format!("{}HEAD", pool::namespace("e")),
            &e_tip,
        ],
    );
    let trash_entry = m.trash_dir().join("a_abc_e-1700000000.git");
    std::fs::create_dir_all(&trash_entry).unwrap();

    let r = pool::reconcile(
        m.root(),
        &pool::trash_stems("a_abc_e-1700000000.git")
            .into_iter()
            .collect(),
    );
    assert_eq!(r.pools, 1, "{r:?}");
    assert_eq!(r.resumed, 1, "{r:?}");
    assert_eq!(r.rewritten, 1, "{r:?}");
    assert_eq!(r.namespaces_dropped, 1, "{r:?}");
    assert_eq!(r.members, 3, "{r:?}");
    assert!(r.problems.is_empty(), "{r:?}");
    assert_eq!(members(&pool_dir), vec!["abc", "b", "c", "e"]);
    assert_eq!(
        git(&pool_dir, &["cat-file", "-t", &d_tip]).trim(),
        "commit",
        "a dropped namespace deletes no object"
    );
    for id in ["a/abc/abc", "a/abc/b", "a/abc/c"] {
        let p = m.path(id);
        let line = std::fs::read_to_string(p.join("objects/info/alternates")).unwrap();
        assert_eq!(line, "../../../../.pools/a/abc.git/objects\n", "{id}");
        fsck(&p);
    }
    assert!(own_pack_bytes(&m.path("a/abc/b")) < (BIG / 10) as u64);

    // A second start finds nothing to do.
    let again = pool::reconcile(
        m.root(),
        &pool::trash_stems("a_abc_e-1700000000.git")
            .into_iter()
            .collect(),
    );
    assert_eq!(
        (again.resumed, again.rewritten, again.namespaces_dropped),
        (0, 0, 0),
        "{again:?}"
    );

    // A broken alternates file: a problem line naming it, the member left alone.
    std::fs::write(
        m.path("a/abc/c").join("objects/info/alternates"),
        "/nowhere\n",
    )
    .unwrap();
    let broken = pool::reconcile(m.root(), &HashSet::new());
    assert!(
        broken
            .problems
            .iter()
            .any(|p| p.contains("a/abc/c") && p.contains("alternates")),
        "{broken:?}"
    );
    assert!(members(&pool_dir).contains(&"c".to_owned()));
    // Nothing in `e`'s name any more: with no trash copy, its namespace goes.
    assert!(!members(&pool_dir).contains(&"e".to_owned()));
}

/// SPEC §14 (plan C12, issue 13 "must show" M2 in small): with `fetch.pools`, the clone of
/// a fork of a project the worker already holds creates the pool from the held mirror and
/// receives only what the pool lacks; every mirror is complete and equals its upstream,
/// and `mirror_dir` holds about one copy of the big file.
#[test]
fn spec_14_fork_clone_receives_only_missing() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-fork");
    let daemon = GitDaemon::start(up.path());
    let proxy = Proxy::start(daemon.port);
    let url = |name: &str| format!("git://127.0.0.1:{}/{name}", proxy.port);
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), true);

    proxy.clear();
    m.clone_new("a/abc/abc", &url("abc"), &no_interrupt())
        .unwrap();
    let origin_bytes = proxy.server_bytes();
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    assert!(
        !pool_dir.exists(),
        "a single member makes no pool (plan C11)"
    );

    proxy.clear();
    let fetched = m
        .clone_new("a/abc/fork", &url("abc-fork"), &no_interrupt())
        .unwrap();
    let fork_bytes = proxy.server_bytes();
    eprintln!("origin clone: {origin_bytes} bytes; fork clone with the pool: {fork_bytes} bytes");
    assert!(
        fork_bytes * 10 <= origin_bytes,
        "the fork's clone received {fork_bytes} bytes, the origin's {origin_bytes}"
    );
    assert_eq!(fetched.refs, ls_remote(&daemon.url("abc-fork")));
    for (id, name) in [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")] {
        let p = m.path(id);
        assert_eq!(local_refs(&p), ls_remote(&daemon.url(name)), "{id}");
        assert_eq!(
            std::fs::read_to_string(p.join("objects/info/alternates")).unwrap(),
            "../../../../.pools/a/abc.git/objects\n"
        );
        fsck(&p);
        client_clone_complete(&p, root.path(), name);
    }
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    fsck(&pool_dir);
    // About one copy of the big file in the whole mirror directory.
    let total: u64 = [m.path("a/abc/abc"), m.path("a/abc/fork"), pool_dir.clone()]
        .iter()
        .map(|p| own_pack_bytes(p))
        .sum();
    assert!(total < (BIG as u64) * 3 / 2, "{total} bytes of packs");
    // Fetches of both members keep working through the pool.
    for (id, name) in [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")] {
        let f = m.fetch(id, &url(name), &no_interrupt()).unwrap();
        assert_eq!(f.refs, ls_remote(&daemon.url(name)));
    }
    // A third member joins the existing pool.
    fork(up.path(), &origin, "abc-third");
    proxy.clear();
    m.clone_new("a/abc/third", &url("abc-third"), &no_interrupt())
        .unwrap();
    assert!(proxy.server_bytes() * 10 <= origin_bytes);
    assert_eq!(members(&pool_dir), vec!["abc", "fork", "third"]);
    fsck(&m.path("a/abc/third"));
    // A fork with nothing of its own: every object is in the pool, no pack is asked for.
    proxy.clear();
    let same = m
        .clone_new("a/abc/same", &url("abc"), &no_interrupt())
        .unwrap();
    assert!(proxy.server_bytes() * 10 <= origin_bytes);
    assert_eq!(same.refs, ls_remote(&daemon.url("abc")));
    assert_eq!(own_pack_bytes(&m.path("a/abc/same")), 0);
    fsck(&m.path("a/abc/same"));
    client_clone_complete(&m.path("a/abc/same"), root.path(), "same");
}

/// SPEC §14, §16 (plan C6): off by default, and a repo whose URL matches a `credentials`
/// entry is never pooled even with `fetch.pools` on (protocol v2 would serve its objects
/// by id through every sibling).
#[test]
fn spec_14_private_repo_not_pooled() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-private");
    let daemon = GitDaemon::start(up.path());
    let http = HttpGit::start(up.path());
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "t0k3n\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Off: a second member is a plain mirror.
    let root = tempfile::tempdir().unwrap();
    let off = mirrors(root.path(), false);
    assert!(!off.pools());
    off.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    off.clone_new("a/abc/b", &daemon.url("abc-private"), &no_interrupt())
        .unwrap();
    assert!(!root.path().join("repos/.pools").exists());

    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), true);
    m.set_credentials(Arc::new(
        Credentials::load(
            &[CredentialSpec {
                prefix: http.url("abc-private"),
                username: None,
                scheme: None,
                token_file: Some(token.clone()),
                ssh_key_file: None,
                known_hosts_file: None,
                allow_plain_http: true,
            }],
            "credentials",
        )
        .unwrap(),
    ));
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    m.clone_new("a/abc/private", &http.url("abc-private"), &no_interrupt())
        .unwrap();
    let private = m.path("a/abc/private");
    assert!(!private.join("objects/info/alternates").exists());
    assert!(
        !root.path().join("repos/.pools").exists(),
        "no pool was made for a private fork"
    );
    fsck(&private);
    // A private sibling does not seed a pool either: the next public fork pools alone
    // with the origin.
    fork(up.path(), &origin, "abc-public");
    m.clone_new("a/abc/public", &daemon.url("abc-public"), &no_interrupt())
        .unwrap();
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "public"]);
    assert!(!private.join("objects/info/alternates").exists());
}

/// SPEC §14, §7.1 (plan C7): a trashed member keeps borrowing (its alternates path is
/// rewritten for the trash) and stays complete there; its namespace stays until the trash
/// copy is purged; purging the last member's trash copy removes the pool.
#[test]
fn spec_14_trashed_member_stays_complete() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-fork");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), true);
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    m.clone_new("a/abc/fork", &daemon.url("abc-fork"), &no_interrupt())
        .unwrap();
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    let refs = local_refs(&m.path("a/abc/fork"));

    let now = mirror::unix_secs();
    let trashed = m.trash("a/abc/fork", now).unwrap().unwrap();
    assert!(!pool::alternates_is_absolute(&trashed));
    assert_eq!(
        pool::read_alternates(&trashed).unwrap().unwrap(),
        pool::normalize(&pool_dir.join("objects"))
    );
    fsck(&trashed);
    assert_eq!(local_refs(&trashed), refs);
    assert_eq!(
        members(&pool_dir),
        vec!["abc", "fork"],
        "kept while trashed"
    );
    // A restart in between keeps it too.
    drop(m);
    let m = mirrors(root.path(), true);
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    fsck(&trashed);

    // The trash copy purged: the namespace goes, the pool stays for the origin.
    assert_eq!(m.purge_trash(now + mirror::TRASH_KEEP_SECS), 1);
    assert_eq!(members(&pool_dir), vec!["abc"]);
    fsck(&m.path("a/abc/abc"));

    // The last member: trashed (still complete), then purged: the pool goes.
    let trashed = m.trash("a/abc/abc", now).unwrap().unwrap();
    fsck(&trashed);
    assert!(pool_dir.exists());
    assert_eq!(m.purge_trash(now + mirror::TRASH_KEEP_SECS), 1);
    assert!(!pool_dir.exists(), "the last removal removes the pool");
    assert!(!root.path().join("repos/.pools/a").exists());
}

/// SPEC §14 (plan C7): a member trashed twice (cloned again in between) keeps its
/// namespace until its last trash copy is purged, and a deleted (handed over) member's
/// namespace goes at once.
#[test]
fn spec_14_namespace_stays_while_any_trash_copy_remains() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-fork");
    fork(up.path(), &origin, "abc-other");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), true);
    for (id, name) in [
        ("a/abc/abc", "abc"),
        ("a/abc/fork", "abc-fork"),
        ("a/abc/other", "abc-other"),
    ] {
        m.clone_new(id, &daemon.url(name), &no_interrupt()).unwrap();
    }
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    let t0 = mirror::unix_secs();
    m.trash("a/abc/fork", t0).unwrap().unwrap();
    m.clone_new("a/abc/fork", &daemon.url("abc-fork"), &no_interrupt())
        .unwrap();
    m.trash("a/abc/fork", t0 + 100).unwrap().unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "fork", "other"]);
    // Only the older copy is old enough.
    assert_eq!(m.purge_trash(t0 + mirror::TRASH_KEEP_SECS), 1);
    assert_eq!(members(&pool_dir), vec!["abc", "fork", "other"]);
    assert_eq!(m.purge_trash(t0 + 100 + mirror::TRASH_KEEP_SECS), 1);
    assert_eq!(members(&pool_dir), vec!["abc", "other"]);
    // Deleted outright: its namespace goes with it; the pool stays for the origin.
    m.delete("a/abc/other").unwrap();
    assert_eq!(members(&pool_dir), vec!["abc"]);
    fsck(&m.path("a/abc/abc"));
}

/// SPEC §14 (plan C15): an upstream advertising more than 100,000 refs is cloned as a
/// plain mirror even with `fetch.pools` (one namespace that size would slow every
/// operation on its project's pool).
#[test]
fn spec_14_member_with_too_many_refs_stays_plain() {
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    let huge = fork(up.path(), &origin, "abc-huge");
    let tip = git(&huge, &["rev-parse", "refs/heads/main"])
        .trim()
        .to_owned();
    let mut packed = String::from("# pack-refs with: peeled fully-peeled sorted \n");
    let mut names: Vec<String> = (0..=pool::MAX_MEMBER_REFS)
        .map(|i| format!("refs/tags/t{i:06}"))
        .collect();
    names.extend(local_refs(&huge).into_keys());
    names.sort();
    let existing = local_refs(&huge);
    for n in &names {
        let oid = existing.get(n).cloned().unwrap_or_else(|| tip.clone());
        packed.push_str(&format!("{oid} {n}\n"));
    }
    for n in existing.keys() {
        let _ = std::fs::remove_file(huge.join(n));
    }
    std::fs::write(huge.join("packed-refs"), packed).unwrap();
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), true);
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    let fetched = m
        .clone_new("a/abc/huge", &daemon.url("abc-huge"), &no_interrupt())
        .unwrap();
    assert!(fetched.refs.len() > pool::MAX_MEMBER_REFS);
    let p = m.path("a/abc/huge");
    assert!(!p.join("objects/info/alternates").exists());
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    assert!(
        !pool::namespaces(&pool_dir).is_ok_and(|n| n.members.contains_key("huge")),
        "no namespace for the plain mirror"
    );
    git(&p, &["fsck", "--connectivity-only", "--no-progress"]);
}

/// SPEC §14 through the whole worker: `fetch.pools: true` in its config makes the clone
/// of a project's second repo (assigned by the coordinator) create and join the pool;
/// both outcomes report the upstream's refs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_worker_with_fetch_pools_pools_a_second_member() {
    use gitmirror_wire::{AssignDelta, CoordMsg, FetchResult, RepoSpec, WorkerMsg};
    use std::time::Duration;

    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-fork");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let (worker, _coord, mut s) = worker_with(root.path(), true, None).await;
    let cloned = |id: &'static str| {
        move |m: WorkerMsg| match m {
            WorkerMsg::Outcomes(b) => b
                .outcomes
                .into_iter()
                .find(|o| o.repo == id && o.result == FetchResult::Cloned),
            _ => None,
        }
    };
    let assign = |seq, id: &str, name: &str| {
        CoordMsg::Assign(AssignDelta {
            seq,
            upsert: vec![RepoSpec {
                id: id.into(),
                url: daemon.url(name),
            }],
            drop: vec![],
        })
    };
    s.send(assign(1, "a/abc/abc", "abc")).await;
    s.recv_until(cloned("a/abc/abc")).await;
    s.send(assign(2, "a/abc/fork", "abc-fork")).await;
    s.recv_until(cloned("a/abc/fork")).await;
    let repos = root.path().join("repos");
    let pool_dir = repos.join(".pools/a/abc.git");
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    for (id, name) in [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")] {
        let p = repos.join(format!("{id}.git"));
        assert!(p.join("objects/info/alternates").exists(), "{id}");
        assert_eq!(local_refs(&p), ls_remote(&daemon.url(name)), "{id}");
        fsck(&p);
    }
    // Plan C19: the member's clone makes the worker consolidate the pool (the first time
    // at once, no debounce yet); the first prune is a week later.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pool::last_time(&pool_dir, false).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not consolidate the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool::last_time(&pool_dir, true).is_some());
    fsck(&pool_dir);
    worker.stop().await;
}

/// SPEC §14 (plan C12, seed first): a project that arrives whole (origin and two forks in
/// one assignment) is cloned one member first; the others wait for it and borrow from
/// the pool it seeds, so all three end up members and the big file is on disk once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_project_arriving_at_once_clones_a_seed_first() {
    use gitmirror_wire::{AssignDelta, CoordMsg, FetchResult, RepoSpec, WorkerMsg};
    use std::collections::BTreeSet;

    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-b");
    fork(up.path(), &origin, "abc-c");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    let (worker, _coord, mut s) = worker_with(root.path(), true, Some(4)).await;
    let ids = [
        ("a/abc/abc", "abc"),
        ("a/abc/b", "abc-b"),
        ("a/abc/c", "abc-c"),
    ];
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: ids
            .iter()
            .map(|(id, name)| RepoSpec {
                id: (*id).into(),
                url: daemon.url(name),
            })
            .collect(),
        drop: vec![],
    }))
    .await;
    let mut cloned = BTreeSet::new();
    while cloned.len() < ids.len() {
        let done = s
            .recv_until(|m| match m {
                WorkerMsg::Outcomes(b) => Some(
                    b.outcomes
                        .into_iter()
                        .filter(|o| o.result == FetchResult::Cloned)
                        .map(|o| o.repo)
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .await;
        cloned.extend(done);
    }
    let repos = root.path().join("repos");
    let pool_dir = repos.join(".pools/a/abc.git");
    assert_eq!(members(&pool_dir), vec!["abc", "b", "c"]);
    let mut total = own_pack_bytes(&pool_dir);
    for (id, name) in ids {
        let p = repos.join(format!("{id}.git"));
        assert!(p.join("objects/info/alternates").exists(), "{id}");
        assert_eq!(local_refs(&p), ls_remote(&daemon.url(name)), "{id}");
        fsck(&p);
        total += own_pack_bytes(&p);
    }
    assert!(
        total < (BIG as u64) * 3 / 2,
        "{total} bytes of packs for 3 members"
    );
    worker.stop().await;
}

/// SPEC §14 (plan C12): seed first holds a project's clones back only while none of its
/// repos is mirrored. Here the mirrored origin cannot seed a pool (detached), so no pool
/// is ever made: the two forks must still clone side by side, not one at a time until
/// each clone ends (their upstream answers nothing, so a clone lasts `fetch.timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_project_without_a_pool_clones_side_by_side() {
    use gitmirror_wire::{AssignDelta, CoordMsg, FetchResult, RepoSpec, WorkerMsg};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    let up = tempfile::tempdir().unwrap();
    origin(up.path());
    let daemon = GitDaemon::start(up.path());
    // An upstream that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let (held, accepted) = (held.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in silent.incoming().flatten() {
                held.lock().unwrap().push(conn);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let root = tempfile::tempdir().unwrap();
    let (worker, _coord, mut s) = worker_with(root.path(), true, Some(4)).await;
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: vec![RepoSpec {
            id: "a/abc/abc".into(),
            url: daemon.url("abc"),
        }],
        drop: vec![],
    }))
    .await;
    s.recv_until(|m| match m {
        WorkerMsg::Outcomes(b) => b
            .outcomes
            .iter()
            .any(|o| o.result == FetchResult::Cloned)
            .then_some(()),
        _ => None,
    })
    .await;
    let origin_mirror = root.path().join("repos/a/abc/abc.git");
    git(&origin_mirror, &["config", "gitmirror.pool", "false"]);
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 2,
        upsert: ["b", "c"]
            .iter()
            .map(|n| RepoSpec {
                id: format!("a/abc/{n}"),
                url: format!("git://127.0.0.1:{silent_port}/{n}.git"),
            })
            .collect(),
        drop: vec![],
    }))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the second fork's clone waited for the first (no pool will ever exist)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!root.path().join("repos/.pools/a/abc.git").exists());
    // Closing the connections ends both clones.
    held.lock().unwrap().clear();
    worker.stop().await;
}

/// SPEC §12, §14: start-up reconciliation of 1,000 pools with 100 members each (100k
/// pooled mirrors, built by hand: a pool is a bare repository whose `packed-refs` holds the
/// namespaces, a member is an `objects/info/alternates` file) runs no git process and
/// reads each member once. Prints the time; run with `--ignored`.
#[test]
#[ignore = "a measurement: 100k directories"]
fn bench_14_reconcile_100k_members() {
    let root = tempfile::tempdir().unwrap();
    let repos = root.path().join("repos");
    let oid = "1111111111111111111111111111111111111111";
    for p in 0..1000 {
        let folder = format!("p{}/proj{p}", p % 26);
        let pool_dir = repos.join(format!(".pools/{folder}.git"));
        for d in ["objects/pack", "objects/info", "refs/heads", "refs/tags"] {
            std::fs::create_dir_all(pool_dir.join(d)).unwrap();
        }
        std::fs::write(pool_dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            pool_dir.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        )
        .unwrap();
        let mut packed = String::from("# pack-refs with: peeled fully-peeled sorted \n");
        let mut names: Vec<String> = (0..100).map(|i| format!("m{i:03}")).collect();
        names.sort();
        for name in &names {
            packed.push_str(&format!("{oid} {}refs/heads/main\n", pool::namespace(name)));
            let member = repos.join(format!("{folder}/{name}.git"));
            std::fs::create_dir_all(member.join("objects/info")).unwrap();
            std::fs::write(
                member.join("objects/info/alternates"),
                format!("../../../../.pools/{folder}.git/objects\n"),
            )
            .unwrap();
        }
        std::fs::write(pool_dir.join("packed-refs"), packed).unwrap();
    }
    let t = std::time::Instant::now();
    let r = pool::reconcile(&repos, &HashSet::new());
    let took = t.elapsed();
    eprintln!(
        "reconcile: {} pools, {} members in {took:?}",
        r.pools, r.members
    );
    assert_eq!(
        (r.pools, r.members),
        (1000, 100_000),
        "{:?}",
        r.problems.first()
    );
    assert_eq!((r.resumed, r.rewritten, r.namespaces_dropped), (0, 0, 0));
}

/// The words of a systemd `ExecStart=` line: double quotes group, `\"` and `\\` inside
/// them are escapes, `$$` is a literal `$` (systemd.service(5) "Command lines"; only what
/// the shipped unit uses).
fn systemd_words(line: &str) -> Vec<String> {
    let line = line.replace("$$", "$");
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut w = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => quoted = !quoted,
                '\\' if quoted => w.extend(chars.next()),
                c if c.is_whitespace() && !quoted => break,
                c => w.push(c),
            }
        }
        words.push(w);
    }
}

/// SPEC §7.1, §14 (plan C6): the shipped `gitmirror-git-daemon.service`, started with its
/// own command line (paths moved to a temp directory, a test port), serves a mirror but
/// refuses a fork pool, also by `..` and `//` spellings, and a temp or trash directory
/// kept inside the mirror directory.
#[test]
fn spec_14_shipped_git_daemon_refuses_pools() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/gitmirror-git-daemon.service"),
    )
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let words = systemd_words(exec);
    assert_eq!(words[..2], ["/usr/bin/git", "daemon"], "{words:?}");

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let up = origin(base);
    let root = base.join("repos");
    for at in [
        "a/abc/abc.git",
        ".pools/a/abc.git",
        ".tmp/a_abc_x.git",
        ".trash/a_abc_y-1.git",
    ] {
        git(
            base,
            &[
                "clone",
                "-q",
                "--bare",
                up.to_str().unwrap(),
                root.join(at).to_str().unwrap(),
            ],
        );
    }
    let port = GitDaemon::free_port();
    // The daemon binary itself (as the other tests): `git daemon` would leave it behind.
    // Options first: git daemon takes every word after the first directory as a directory.
    let child = std::process::Command::new(common::git_daemon_binary())
        .args(["--listen=127.0.0.1", &format!("--port={port}")])
        .args(
            words[2..]
                .iter()
                .map(|w| w.replace("/var/lib/gitmirror-worker/repos", root.to_str().unwrap())),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let daemon = GitDaemon::adopt(child, port);
    let answers = |path: &str| {
        std::process::Command::new("git")
            .args(["ls-remote", &daemon.url(path)])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(answers("a/abc/abc.git"), "the mirror is served");
    assert!(answers("a/abc/abc"), "the mirror is served without .git");
    for refused in [
        ".pools/a/abc.git",
        ".pools/a/abc",
        "a/abc/../../.pools/a/abc.git",
        "/.pools/a/abc.git",
        ".tmp/a_abc_x.git",
        ".trash/a_abc_y-1.git",
    ] {
        assert!(!answers(refused), "{refused} is served");
    }
}

/// A pooled pair `a/abc/abc` and `a/abc/fork` in a fresh mirror directory.
fn pooled_pair(up: &Path, root: &Path) -> (GitDaemon, Mirrors, PathBuf, PathBuf) {
    let origin = origin(up);
    let fork_dir = fork(up, &origin, "abc-fork");
    let daemon = GitDaemon::start(up);
    let m = mirrors(root, true);
    m.clone_new("a/abc/abc", &daemon.url("abc"), &no_interrupt())
        .unwrap();
    m.clone_new("a/abc/fork", &daemon.url("abc-fork"), &no_interrupt())
        .unwrap();
    let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    (daemon, m, pool_dir, fork_dir)
}

fn has_object(repo: &Path, id: &str) -> bool {
    std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["cat-file", "-e", id])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()
        .unwrap()
        .success()
}

/// SPEC §14 (plan C9, C10): a prune does not start while a member op of its project
/// runs, and when it runs it first refreshes every namespace, so C9's race loses
/// nothing: an object left unreachable in the pool (its branch deleted upstream, the
/// namespace consolidated without it) and then re-added upstream is fetched without a
/// transfer and survives a prune with no expiry grace; once no member reaches it, the
/// next prune deletes it.
#[test]
fn spec_14_prune_waits_for_member_ops() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (daemon, m, pool_dir, fork_dir) = pooled_pair(up.path(), root.path());
    let fork_url = daemon.url("abc-fork");
    // A commit only the fork's `extra` branch reaches.
    let work = up.path().join("abc-fork-work");
    git(&work, &["checkout", "-q", "-b", "extra"]);
    std::fs::write(work.join("extra"), noise(99, 4096)).unwrap();
    git(&work, &["add", "extra"]);
    git(&work, &["commit", "-q", "-m", "extra"]);
    git(&work, &["push", "-q", "origin", "extra"]);
    let x = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    let member = m.path("a/abc/fork");
    m.fetch("a/abc/fork", &fork_url, &no_interrupt()).unwrap();
    m.consolidate_pool(&pool_dir).unwrap();
    pool::repack_local(&member).unwrap();
    assert!(has_object(&pool_dir, &x));
    // Deleted upstream, consolidated: unreachable in the pool, still there.
    git(&fork_dir, &["branch", "-D", "extra"]);
    m.fetch("a/abc/fork", &fork_url, &no_interrupt()).unwrap();
    m.consolidate_pool(&pool_dir).unwrap();
    assert!(has_object(&pool_dir, &x));
    // Re-added upstream: the member's ref points at it again.
    git(&fork_dir, &["branch", "extra", &x]);

    let mut locks = pool::ProjectLocks::default();
    assert!(locks.start("a/abc", pool::ProjectOp::Member), "the fetch");
    assert!(!locks.may_start("a/abc", pool::ProjectOp::Prune));
    assert!(
        locks.may_start("a/abc", pool::ProjectOp::Consolidate),
        "a consolidation may run beside a fetch"
    );
    assert!(
        locks.may_start("b/bcd", pool::ProjectOp::Prune),
        "per project"
    );
    let f = m.fetch("a/abc/fork", &fork_url, &no_interrupt()).unwrap();
    assert_eq!(
        f.refs.get("refs/heads/extra").map(String::as_str),
        Some(x.as_str())
    );
    locks.finish("a/abc", pool::ProjectOp::Member);
    assert!(locks.start("a/abc", pool::ProjectOp::Prune));
    assert!(!locks.may_start("a/abc", pool::ProjectOp::Member));
    assert!(
        !locks.may_start("b/bcd", pool::ProjectOp::Consolidate),
        "one pool op"
    );
    let pruned = m.prune_pool(&pool_dir, "now").unwrap();
    locks.finish("a/abc", pool::ProjectOp::Prune);
    assert_eq!(
        pruned,
        pool::Pruned::Done {
            refreshed: 2,
            dropped: 0
        }
    );
    for id in ["a/abc/abc", "a/abc/fork"] {
        fsck(&m.path(id));
    }
    assert!(has_object(&m.path("a/abc/fork"), &x));
    client_clone_complete(&member, root.path(), "fork");

    // Nobody reaches it any more: the next prune deletes it, members stay complete.
    git(&fork_dir, &["branch", "-D", "extra"]);
    m.fetch("a/abc/fork", &fork_url, &no_interrupt()).unwrap();
    m.prune_pool(&pool_dir, "now").unwrap();
    assert!(
        !has_object(&pool_dir, &x),
        "a prune removes what nothing reaches"
    );
    for id in ["a/abc/abc", "a/abc/fork"] {
        fsck(&m.path(id));
    }
    fsck(&pool_dir);
}

/// SPEC §14 (plan C7, C9): with members in the trash the pool stays and is not pruned
/// (a trashed member's refs are not kept exactly); the last trash copy purged removes
/// the pool.
#[test]
fn spec_14_last_member_removes_pool_after_trash_purge() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (_daemon, m, pool_dir, _) = pooled_pair(up.path(), root.path());
    let now = mirror::unix_secs();
    let fork_trash = m.trash("a/abc/fork", now).unwrap().unwrap();
    assert!(matches!(
        m.prune_pool(&pool_dir, "now").unwrap(),
        pool::Pruned::Skipped(why) if why.contains("trashed member")
    ));
    m.consolidate_pool(&pool_dir).unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    fsck(&fork_trash);
    let origin_trash = m.trash("a/abc/abc", now + 10).unwrap().unwrap();
    assert!(pool_dir.exists());
    fsck(&origin_trash);
    assert_eq!(m.purge_trash(now + mirror::TRASH_KEEP_SECS), 1);
    assert!(pool_dir.exists(), "the origin's trash copy still borrows");
    assert_eq!(members(&pool_dir), vec!["abc"]);
    fsck(&origin_trash);
    assert_eq!(m.purge_trash(now + 10 + mirror::TRASH_KEEP_SECS), 1);
    assert!(!pool_dir.exists(), "the last removal removes the pool");
}

/// SPEC §14 (plan C13): the detach recipe (`git repack -a -d`, remove the alternates,
/// `git config gitmirror.pool false`) leaves a mirror plain: its namespace goes (at the
/// next start, or the next prune), consolidations and fetches do not bring it back, and
/// a new sibling's clone does not join it.
#[test]
fn spec_14_detached_mirror_stays_plain() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (daemon, m, pool_dir, _) = pooled_pair(up.path(), root.path());
    let fork_m = m.path("a/abc/fork");
    git(&fork_m, &["repack", "-a", "-d", "-q"]);
    std::fs::remove_file(fork_m.join("objects/info/alternates")).unwrap();
    git(&fork_m, &["config", "gitmirror.pool", "false"]);
    fsck(&fork_m);
    assert!(pool::is_detached(&fork_m));

    m.consolidate_pool(&pool_dir).unwrap();
    m.fetch("a/abc/fork", &daemon.url("abc-fork"), &no_interrupt())
        .unwrap();
    assert!(m.pool_of("a/abc/fork").is_none());
    assert!(m.pool_of("a/abc/abc").is_some());
    // A restart drops its namespace.
    drop(m);
    let m = mirrors(root.path(), true);
    assert_eq!(members(&pool_dir), vec!["abc"]);
    // A new sibling joins the pool; the detached mirror stays plain.
    let origin = up.path().join("abc");
    fork(up.path(), &origin, "abc-third");
    m.clone_new("a/abc/third", &daemon.url("abc-third"), &no_interrupt())
        .unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "third"]);
    assert!(!fork_m.join("objects/info/alternates").exists());
    m.consolidate_pool(&pool_dir).unwrap();
    m.prune_pool(&pool_dir, "now").unwrap();
    assert_eq!(members(&pool_dir), vec!["abc", "third"]);
    for id in ["a/abc/abc", "a/abc/fork", "a/abc/third"] {
        fsck(&m.path(id));
    }
    assert!(!fork_m.join("objects/info/alternates").exists());
}

/// Plain mirrors `a/abc/abc` and `a/abc/fork` (cloned with pools off), then a worker on
/// the same mirror directory with `fetch.pools: pools`, both assigned; returns when both
/// have reported a fetch.
async fn worker_on_plain_pair(
    pools: bool,
) -> (
    tempfile::TempDir,
    tempfile::TempDir,
    GitDaemon,
    common::coord::FakeCoordinator,
    common::harness::Worker,
    common::coord::Session,
) {
    use gitmirror_wire::{AssignDelta, CoordMsg, RepoSpec, WorkerMsg};
    use std::collections::BTreeSet;

    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    fork(up.path(), &origin, "abc-fork");
    let daemon = GitDaemon::start(up.path());
    let root = tempfile::tempdir().unwrap();
    {
        let m = mirrors(root.path(), false);
        for (id, name) in [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")] {
            m.clone_new(id, &daemon.url(name), &no_interrupt()).unwrap();
        }
    }
    let (worker, coord, mut s) = worker_with(root.path(), pools, None).await;
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")]
            .iter()
            .map(|(id, name)| RepoSpec {
                id: (*id).into(),
                url: daemon.url(name),
            })
            .collect(),
        drop: vec![],
    }))
    .await;
    let mut done = BTreeSet::new();
    while done.len() < 2 {
        let got = s
            .recv_until(|m| match m {
                WorkerMsg::Outcomes(b) => {
                    Some(b.outcomes.into_iter().map(|o| o.repo).collect::<Vec<_>>())
                }
                _ => None,
            })
            .await;
        done.extend(got);
    }
    (up, root, daemon, coord, worker, s)
}

/// SPEC §14 (plan step 7, C14, R5): mirrors cloned before `fetch.pools` was on join
/// their project's pool in the background once the worker runs with it: a pool is
/// created from a seed, the other member joins, every mirror stays complete and serves
/// its refs, and the big file is on disk about once. `low_disk` stops a migration before
/// it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_existing_mirrors_join_in_background() {
    use std::time::{Duration, Instant};
    let (_up, root, daemon, _coord, worker, _s) = worker_on_plain_pair(true).await;
    let repos = root.path().join("repos");
    let pool_dir = repos.join(".pools/a/abc.git");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(pool_dir.join("objects").is_dir()
        && pool::namespaces(&pool_dir).is_ok_and(|n| n.members.len() == 2)
        && ["a/abc/abc", "a/abc/fork"].iter().all(|id| {
            repos
                .join(format!("{id}.git/objects/info/alternates"))
                .exists()
        }))
    {
        assert!(Instant::now() < deadline, "the plain mirrors did not join");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    let mut total = own_pack_bytes(&pool_dir);
    for (id, name) in [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")] {
        let p = repos.join(format!("{id}.git"));
        fsck(&p);
        assert_eq!(local_refs(&p), ls_remote(&daemon.url(name)), "{id}");
        total += own_pack_bytes(&p);
    }
    assert!(total < (BIG as u64) * 3 / 2, "{total} bytes of packs");

    // Below disk.min_free nothing starts.
    let up2 = tempfile::tempdir().unwrap();
    let origin2 = origin(up2.path());
    fork(up2.path(), &origin2, "abc-fork");
    let d2 = GitDaemon::start(up2.path());
    let root2 = tempfile::tempdir().unwrap();
    let m = mirrors(root2.path(), false);
    for (id, name) in [("a/abc/abc", "abc"), ("a/abc/fork", "abc-fork")] {
        m.clone_new(id, &d2.url(name), &no_interrupt()).unwrap();
    }
    m.set_pools(true);
    assert_eq!(m.migrate_project("a/abc", || true).unwrap(), 0);
    assert!(!m.root().join(".pools").exists());
    assert_eq!(m.migrate_project("a/abc", || false).unwrap(), 2);
    assert_eq!(
        m.migrate_project("a/abc", || false).unwrap(),
        0,
        "done once"
    );
}

/// SPEC §14 (plan C14): with `fetch.pools: false` the plain mirrors of a project stay
/// plain (no pool, no alternates), and a migration asked directly does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_pools_off_keeps_plain() {
    use gitmirror_wire::{AssignDelta, CoordMsg, FetchResult, RepoSpec, WorkerMsg};
    let (_up, root, daemon, _coord, worker, mut s) = worker_on_plain_pair(false).await;
    let repos = root.path().join("repos");
    // Later loop passes: a repo of another project cloned after both outcomes (a
    // migration would have started by then; stopping waits for running operations).
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 2,
        upsert: vec![RepoSpec {
            id: "b/bcd/bcd".into(),
            url: daemon.url("abc-fork"),
        }],
        drop: vec![],
    }))
    .await;
    s.recv_until(|m| match m {
        WorkerMsg::Outcomes(b) => b
            .outcomes
            .into_iter()
            .find(|o| o.repo == "b/bcd/bcd" && o.result == FetchResult::Cloned),
        _ => None,
    })
    .await;
    worker.stop().await;
    let m = Mirrors::new(repos.clone());
    assert!(!repos.join(".pools").exists());
    for id in ["a/abc/abc", "a/abc/fork"] {
        let p = repos.join(format!("{id}.git"));
        assert!(!p.join("objects/info/alternates").exists(), "{id}");
        fsck(&p);
    }
    assert_eq!(m.migrate_project("a/abc", || false).unwrap(), 0);
    assert!(!repos.join(".pools").exists());
}

/// SPEC §7.3, §14 (plan C16): a pool that lost its packs fails verification first; the
/// member being verified is cloned again without haves, a new pool is built from it and
/// swapped in, and the other members are named for verification, which re-clones a
/// broken one plain (migration rejoins it later). Every mirror ends complete.
#[test]
fn spec_7_3_corrupt_pool_rebuilt() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (daemon, m, pool_dir, _) = pooled_pair(up.path(), root.path());
    m.consolidate_pool(&pool_dir).unwrap();
    for e in std::fs::read_dir(pool_dir.join("objects/pack")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let broken = std::process::Command::new("git")
        .arg("-C")
        .arg(m.path("a/abc/fork"))
        .args(["fsck", "--connectivity-only", "--no-progress"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!broken.success(), "the members are broken with their pool");

    let done = m
        .maintain("a/abc/abc", &daemon.url("abc"), true, &no_interrupt())
        .unwrap();
    assert_eq!(done.pool_rebuilt, Some(vec!["a/abc/fork".to_owned()]));
    assert_eq!(done.recloned.as_ref(), Some(&ls_remote(&daemon.url("abc"))));
    fsck(&pool_dir);
    fsck(&m.path("a/abc/abc"));
    assert_eq!(m.pool_of("a/abc/abc"), Some(pool_dir.clone()));
    assert_eq!(members(&pool_dir), vec!["abc"]);
    // The other member, verified next: re-cloned (plain) because it lost objects.
    let done = m
        .maintain("a/abc/fork", &daemon.url("abc-fork"), true, &no_interrupt())
        .unwrap();
    assert!(done.recloned.is_some() && done.pool_rebuilt.is_none());
    fsck(&m.path("a/abc/fork"));
    assert_eq!(
        local_refs(&m.path("a/abc/fork")),
        ls_remote(&daemon.url("abc-fork"))
    );
    // Migration brings it back into the pool.
    assert_eq!(m.migrate_project("a/abc", || false).unwrap(), 1);
    assert_eq!(members(&pool_dir), vec!["abc", "fork"]);
    for id in ["a/abc/abc", "a/abc/fork"] {
        fsck(&m.path(id));
    }
    let leftovers = std::fs::read_dir(m.tmp_dir()).unwrap().count();
    assert_eq!(leftovers, 0, "nothing left in the temp directory");
}

/// SPEC §14 (plan R1, M3 in part): kill -9 of the pool's own repacks (a consolidation's
/// geometric repack, a prune's cruft repack), with the worker's exact arguments, at a
/// range of moments: every member and the pool stay complete (`git fsck`), and the
/// repack run again finishes. Each git step writes its new pack before it deletes.
#[test]
fn spec_14_kill9_during_pool_repack_keeps_members_complete() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (daemon, m, pool_dir, _) = pooled_pair(up.path(), root.path());
    fork(up.path(), &up.path().join("abc"), "abc-third");
    m.clone_new("a/abc/third", &daemon.url("abc-third"), &no_interrupt())
        .unwrap();
    m.consolidate_pool(&pool_dir).unwrap();
    let check = || {
        fsck(&pool_dir);
        for id in ["a/abc/abc", "a/abc/fork", "a/abc/third"] {
            fsck(&m.path(id));
        }
    };
    let mut prune = pool::PRUNE_REPACK.to_vec();
    prune.push("--cruft-expiration=now");
    let mut killed = 0;
    for (round, args) in [pool::CONSOLIDATE_REPACK.to_vec(), prune]
        .iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        // More packs for the geometric repack to roll up.
        std::fs::write(
            pool_dir.join("scratch"),
            noise(round as u64 + 100, 64 * 1024),
        )
        .unwrap();
        let blob = git(&pool_dir, &["hash-object", "-w", "scratch"]);
        git(
            &pool_dir,
            &[
                "update-ref",
                "refs/members/6162/refs/heads/scratch",
                blob.trim(),
            ],
        );
        git(&pool_dir, &["repack", "-q", "-d"]);
        std::fs::remove_file(pool_dir.join("scratch")).unwrap();
        let mut child = std::process::Command::new("git")
            .arg("-C")
            .arg(&pool_dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .spawn()
            .unwrap();
        // The moment of the kill varies; what is asserted does not depend on it.
        std::thread::sleep(std::time::Duration::from_millis(3 * round as u64));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        check();
        git(&pool_dir, args);
        check();
    }
    eprintln!("{killed} of 12 repacks killed while running");
    // A lock a killed `git config` or ref update left behind does not stop the pool's
    // maintenance for good: an old one is removed first.
    for lock in ["config.lock", "packed-refs.lock"] {
        std::fs::write(pool_dir.join(lock), "").unwrap();
        let out = std::process::Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(pool_dir.join(lock))
            .status()
            .unwrap();
        assert!(out.success());
    }
    m.consolidate_pool(&pool_dir).unwrap();
    m.prune_pool(&pool_dir, "now").unwrap();
    check();
}

/// SPEC §14 (plan M3 in part, R1, R5): kill -9 of a process migrating a project (pool
/// creation from the seed, each member's namespace, alternates and `repack -a -d -l`) at
/// a range of moments. The child is this test binary run again; after each kill every
/// mirror is complete (`git fsck`), start-up reconciliation finishes a half-joined
/// member, and a migration run again completes with every member in the pool.
#[test]
fn spec_14_kill9_during_migration_keeps_members_complete() {
    const CHILD: &str = "GITMIRROR_TEST_MIGRATION_CHILD";
    if let Ok(root) = std::env::var(CHILD) {
        let m = Mirrors::new(PathBuf::from(root));
        m.set_pools(true);
        m.migrate_project("a/abc", || false).unwrap();
        return;
    }
    let up = tempfile::tempdir().unwrap();
    let origin = origin(up.path());
    let names = ["abc", "abc-b", "abc-c", "abc-d"];
    for n in &names[1..] {
        fork(up.path(), &origin, n);
    }
    let daemon = GitDaemon::start(up.path());
    let id = |n: &str| format!("a/abc/{}", n.trim_start_matches("abc-"));
    let mut killed = 0;
    let mut stages = Vec::new();
    for round in 0..8u64 {
        let root = tempfile::tempdir().unwrap();
        let m = mirrors(root.path(), false);
        for n in names {
            m.clone_new(&id(n), &daemon.url(n), &no_interrupt())
                .unwrap();
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spec_14_kill9_during_migration_keeps_members_complete",
                "--nocapture",
            ])
            .env(CHILD, m.root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The moment of the kill varies; what is asserted does not depend on it.
        std::thread::sleep(std::time::Duration::from_millis(40 * round));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let pool_at_kill = pool::pool_path(m.root(), "a/abc/abc").unwrap();
        let joined_at_kill = names.iter().filter(|n| m.pool_of(&id(n)).is_some()).count();
        stages.push((pool_at_kill.exists(), joined_at_kill));
        for n in names {
            fsck(&m.path(&id(n)));
        }
        // A restart: reconciliation (orphaned git killed first), then the migration again.
        let m = mirrors(root.path(), true);
        for n in names {
            fsck(&m.path(&id(n)));
        }
        m.migrate_project("a/abc", || false).unwrap();
        let pool_dir = pool::pool_path(m.root(), "a/abc/abc").unwrap();
        assert_eq!(
            members(&pool_dir),
            vec!["abc", "b", "c", "d"],
            "round {round}"
        );
        for n in names {
            let p = m.path(&id(n));
            assert!(m.pool_of(&id(n)).is_some(), "round {round}: {n}");
            fsck(&p);
            assert_eq!(local_refs(&p), ls_remote(&daemon.url(n)));
        }
        fsck(&pool_dir);
    }
    eprintln!(
        "{killed} of 8 migrations killed while running; (pool there, members joined) at each kill: {stages:?}"
    );
}

/// SPEC §14 (plan C19): a fetch reports about what it brought (its new pack's size), so
/// the worker consolidates a pool after a fetch of 1 MiB or more, not after every small
/// one; a fetch with nothing new reports 0.
#[test]
fn spec_14_fetch_reports_new_pack_bytes() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (daemon, m, _pool_dir, _) = pooled_pair(up.path(), root.path());
    let url = daemon.url("abc-fork");
    let work = up.path().join("abc-fork-work");
    let f = m.fetch("a/abc/fork", &url, &no_interrupt()).unwrap();
    assert_eq!(f.new_pack_bytes, 0, "nothing new");
    std::fs::write(work.join("small"), "a small change\n").unwrap();
    git(&work, &["commit", "-q", "-am", "small"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let f = m.fetch("a/abc/fork", &url, &no_interrupt()).unwrap();
    assert!(
        f.new_pack_bytes > 0 && f.new_pack_bytes < pool::CONSOLIDATE_AFTER_BYTES,
        "{}",
        f.new_pack_bytes
    );
    std::fs::write(work.join("large"), noise(5, 2 << 20)).unwrap();
    git(&work, &["add", "large"]);
    git(&work, &["commit", "-q", "-m", "large"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let f = m.fetch("a/abc/fork", &url, &no_interrupt()).unwrap();
    assert!(
        f.new_pack_bytes >= pool::CONSOLIDATE_AFTER_BYTES,
        "{}",
        f.new_pack_bytes
    );
    // Refs move, no object is new: the large pack above is not this fetch's.
    git(
        &work,
        &["push", "-q", "origin", "main:refs/heads/same-commit"],
    );
    let f = m.fetch("a/abc/fork", &url, &no_interrupt()).unwrap();
    assert!(f.packs.is_some(), "the refs changed");
    assert_eq!(f.new_pack_bytes, 0, "a new ref on an object already here");
}

/// Temp files git writes while it builds a pack in `git_dir` (`tmp_pack_*` of index-pack,
/// `.tmp-*` of pack-objects).
fn temp_pack(git_dir: &Path) -> bool {
    std::fs::read_dir(git_dir.join("objects/pack")).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("tmp_") || n.starts_with(".tmp")
        })
    })
}

/// SPEC §14 (plan R1, issue 13 M3): kill -9 during the pool's fetch of a member's refs
/// into its namespace (the first step of a consolidation, the exact arguments of
/// `pool::add_namespace`) and during a member's `repack -a -d -l` (the exact arguments of
/// `pool::repack_local`), each killed once git has a temp pack open, so the kill lands
/// mid-operation (counted, and at least one of each is required). Before each round the
/// fork upstream gains a commit of 1.5 MB of noise, fetched into the member only, so both
/// operations have a real pack to write. After every kill, while the disk is still: the
/// pool and both members pass `git fsck --connectivity-only`; the operation run again
/// completes and a full `git fsck` passes.
#[test]
fn spec_14_kill9_during_pool_fetch_and_member_repack_keeps_members_complete() {
    let up = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (daemon, m, pool_dir, _) = pooled_pair(up.path(), root.path());
    let work = up.path().join("abc-fork-work");
    let member = m.path("a/abc/fork");
    let src = std::path::absolute(&member).unwrap();
    let ns = pool::namespace("fork");
    let (refs_spec, head_spec) = (format!("+refs/*:{ns}refs/*"), format!("+HEAD:{ns}HEAD"));
    let pool_fetch: Vec<&str> = vec![
        "-c",
        "transfer.unpackLimit=1",
        "-c",
        "fetch.writeCommitGraph=false",
        "fetch",
        "-q",
        "--prune",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-auto-gc",
        "--no-recurse-submodules",
        src.to_str().unwrap(),
        &refs_spec,
        &head_spec,
    ];
    let member_repack: Vec<&str> = vec![
        "-c",
        "repack.writeBitmaps=false",
        "repack",
        "-a",
        "-d",
        "-l",
        "-q",
    ];
    let connected = |dir: &Path| {
        git(
            dir,
            &[
                "fsck",
                "--connectivity-only",
                "--no-dangling",
                "--no-progress",
            ],
        );
    };
    let check = |full: bool| {
        for dir in [pool_dir.clone(), m.path("a/abc/abc"), member.clone()] {
            if full { fsck(&dir) } else { connected(&dir) }
        }
    };
    let (mut landed_fetch, mut landed_repack) = (0, 0);
    for round in 0..16u64 {
        if landed_fetch >= 2 && landed_repack >= 2 {
            break;
        }
        // New objects only the member has: 1.5 MB of noise on the fork upstream.
        std::fs::write(work.join("blob"), noise(1001 + 2 * round, 1536 * 1024)).unwrap();
        git(&work, &["add", "blob"]);
        git(&work, &["commit", "-q", "-m", &format!("round {round}")]);
        git(&work, &["push", "-q", "origin", "main"]);
        m.fetch("a/abc/fork", &daemon.url("abc-fork"), &no_interrupt())
            .unwrap();
        let fetch_round = round % 2 == 0;
        let (dir, args) = if fetch_round {
            (&pool_dir, &pool_fetch)
        } else {
            (&member, &member_repack)
        };
        let mut child = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args.iter())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let mut mid = false;
        while start.elapsed() < std::time::Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if temp_pack(dir) {
                mid = child.try_wait().unwrap().is_none();
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        let _ = child.kill();
        let _ = child.wait();
        if mid {
            if fetch_round {
                landed_fetch += 1;
            } else {
                landed_repack += 1;
            }
        }
        check(false);
        git(dir, args);
        check(true);
    }
    eprintln!("killed mid-operation: {landed_fetch} pool fetches, {landed_repack} member repacks");
    assert!(
        landed_fetch >= 1 && landed_repack >= 1,
        "no kill landed mid-operation: {landed_fetch} pool fetches, {landed_repack} member repacks"
    );
    assert_eq!(
        local_refs(&member),
        ls_remote(&daemon.url("abc-fork")),
        "the member is still its upstream"
    );
}

/// A whole worker with `fetch.pools: pools` (`concurrency` fetches at once, as many on
/// one host), welcomed by a test coordinator: the worker, the coordinator and its session.
async fn worker_with(
    root: &Path,
    pools: bool,
    concurrency: Option<usize>,
) -> (
    common::harness::Worker,
    common::coord::FakeCoordinator,
    common::coord::Session,
) {
    use common::harness::{config, fetch_section, start};
    use std::time::Duration;
    let coord = common::coord::FakeCoordinator::start();
    let mut fetch = fetch_section(Duration::from_secs(3600), Duration::from_secs(7200));
    fetch.pools = pools;
    if let Some(n) = concurrency {
        fetch.concurrency = n;
        fetch.per_host_concurrency = n;
    }
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root,
        fetch,
        gitmirror_common::units::FreeSpace::Bytes(0),
    );
    let worker = start(cfg);
    let s = coord.accept(1).await;
    (worker, coord, s)
}
