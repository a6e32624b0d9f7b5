//! The worker's fetch path (issues 10 and 11): fetches aborted cleanly at a size or free
//! space limit, polite conversations with upstream hosts, stall timeouts on every
//! transport, and maintenance children that do not outlive the worker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::HttpGit;
use common::proxy::Proxy;
use common::{GitDaemon, Tmpfs, Upstream, git, local_refs, ls_remote};
use gitmirror_common::units::FreeSpace;
use gitmirror_wire::FailureClass;
use gitmirror_worker::mirror::{Limits, Mirrors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

fn no_interrupt() -> AtomicBool {
    AtomicBool::new(false)
}

/// Lines of a `git daemon --verbose` log that report a problem.
fn error_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("fatal") || l.contains("error") || l.contains("hung up")
        })
        .map(str::to_owned)
        .collect()
}

/// Issue 11 part 3: clones, fetches (small, and with many changed refs, which take the
/// packed-refs path) and no-op fetches leave no error line in the upstream `git daemon
/// --verbose` log, and every conversation introduces itself as gitmirror.
#[test]
fn issue11_3_git_daemon_log_has_no_error_lines() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let log = up.path().join("daemon.log");
    let daemon = GitDaemon::start_logged(up.path(), &log);
    let proxy = Proxy::start(daemon.port);
    let url = format!("git://127.0.0.1:{}/abc", proxy.port);
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();

    m.clone_new("abc", &url, &no_interrupt()).unwrap();
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    upstream.commit("more");
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    // Enough new refs for the packed-refs fetch path (mirror.rs `MANY_CHANGES`).
    let head = git(&upstream.dir, &["rev-parse", "HEAD"]);
    let batch: String = (0..300)
        .map(|i| format!("create refs/pull/{i}/head {}\n", head.trim()))
        .collect();
    let mut update = std::process::Command::new("git")
        .args(["update-ref", "--stdin"])
        .current_dir(&upstream.dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut update.stdin.take().unwrap(), batch.as_bytes()).unwrap();
    assert!(update.wait().unwrap().success());
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    assert_eq!(local_refs(&m.path("abc")), ls_remote(&daemon.url("abc")));
    let sent = proxy.client_bytes();
    let agent = format!("agent=gitmirror/{}", env!("CARGO_PKG_VERSION"));
    let gix_agent = format!("agent=git/gitmirror/{}", env!("CARGO_PKG_VERSION"));
    // One listing per operation, and a second one for the packed-refs path.
    assert_eq!(sent.matches("command=ls-refs").count(), 6, "{sent}");
    assert_eq!(
        sent.matches(&agent).count() + sent.matches(&gix_agent).count(),
        sent.matches("command=").count(),
        "every command names us: {sent}"
    );
    assert!(!sent.contains("oxide"), "{sent}");
    drop(daemon);
    let log_text = std::fs::read_to_string(&log).unwrap();
    // Ours and the `git ls-remote` above.
    assert_eq!(
        log_text.matches("Request upload-pack").count(),
        7,
        "{log_text}"
    );
    assert_eq!(error_lines(&log), Vec::<String>::new(), "{log_text}");
}

/// Issue 11 part 3 over smart HTTP (`git http-backend`): nothing on its stderr, and every
/// request carries our `User-Agent`.
#[test]
fn issue11_3_http_backend_sees_our_user_agent_and_no_errors() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let server = HttpGit::start(up.path());
    let url = server.url("abc");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();

    m.clone_new("abc", &url, &no_interrupt()).unwrap();
    upstream.commit("more");
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    let seen = server.seen();
    assert_eq!(local_refs(&m.path("abc")), ls_remote(&url));
    assert!(seen.len() >= 5, "{seen:?}");
    let ours = format!("gitmirror/{}", env!("CARGO_PKG_VERSION"));
    for s in &seen {
        assert_eq!(s.user_agent.as_deref(), Some(ours.as_str()), "{s:?}");
        assert_eq!(s.status, 200, "{s:?}");
        assert_eq!(s.stderr, "", "{s:?}");
    }
}

/// `n` bytes that do not compress.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Commit `bytes` of noise to `upstream`.
fn grow(upstream: &Upstream, bytes: usize) {
    std::fs::write(upstream.dir.join("noise.bin"), noise(bytes)).unwrap();
    git(&upstream.dir, &["add", "noise.bin"]);
    git(&upstream.dir, &["commit", "-q", "-m", "noise"]);
}

/// Every file under `dir` with its size and content hash: "exactly as before".
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, u64)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                out.insert(
                    p.strip_prefix(base).unwrap().to_owned(),
                    (bytes.len() as u64, hash),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Issue 10 item 6: a clone or fetch that would make the mirror bigger than
/// `fetch.max_repo_size` is aborted: a `Local` failure naming the limit, the mirror
/// exactly as before (no pack, no ref, no temp file), a clone leaves nothing anywhere.
#[test]
fn issue10_6_max_repo_size_aborts_clone_and_fetch_cleanly() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "grows");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("grows");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    let limited = Limits {
        max_repo_size: Some(1 << 20),
        ..Limits::default()
    };
    m.set_limits(limited);
    m.clone_new("grows", &url, &no_interrupt()).unwrap();
    let path = m.path("grows");
    let before = snapshot(&path);

    grow(&upstream, 3 << 20);
    let f = m.fetch("grows", &url, &no_interrupt()).unwrap_err();
    assert_eq!(f.class, FailureClass::Local, "{f}");
    assert!(
        f.message.starts_with("aborted:") && f.message.contains("fetch.max_repo_size"),
        "{f}"
    );
    assert_eq!(snapshot(&path), before, "the mirror is exactly as before");

    let f = m.clone_new("copy", &url, &no_interrupt()).unwrap_err();
    assert_eq!(f.class, FailureClass::Local, "{f}");
    assert!(f.message.contains("fetch.max_repo_size"), "{f}");
    assert!(!m.exists("copy"));
    assert_eq!(entries(&m.tmp_dir()), Vec::<PathBuf>::new());

    // The limit, not the upstream, stopped it.
    m.set_limits(Limits::default());
    m.fetch("grows", &url, &no_interrupt()).unwrap();
    assert_eq!(local_refs(&path), ls_remote(&url));
    // A mirror already over the limit is not fetched at all.
    m.set_limits(limited);
    let f = m.fetch("grows", &url, &no_interrupt()).unwrap_err();
    assert!(f.message.starts_with("refused:"), "{f}");
}

/// Issue 10 item 6 with SPEC §7.3: a corrupt mirror cloned again inside a fetch is
/// held to `fetch.max_repo_size` as a new clone, not counted on top of the corrupt copy
/// it replaces (a 1.6 MB mirror under a 2.5 MB limit was aborted: 1.6 + 1.6 > 2.5).
#[test]
fn spec_7_3_reclone_within_max_repo_size_is_not_counted_twice() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "big");
    grow(&upstream, 1600 << 10);
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("big");
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos"));
    m.prepare().unwrap();
    m.clone_new("big", &url, &no_interrupt()).unwrap();
    let path = m.path("big");
    m.set_limits(Limits {
        max_repo_size: Some(2500 << 10),
        ..Limits::default()
    });
    // Corrupt, objects kept: a ref file holding garbage.
    std::fs::create_dir_all(path.join("refs/heads")).unwrap();
    std::fs::write(path.join("refs/heads/main"), b"garbage\n").unwrap();
    let f = m.fetch("big", &url, &no_interrupt()).unwrap();
    assert!(
        f.repairs.iter().any(|r| r.contains("corrupt")),
        "{:?}",
        f.repairs
    );
    assert_eq!(local_refs(&path), ls_remote(&url));

    // The limit still holds for the copy itself.
    std::fs::write(path.join("refs/heads/main"), b"garbage\n").unwrap();
    m.set_limits(Limits {
        max_repo_size: Some(1 << 20),
        ..Limits::default()
    });
    let f = m.fetch("big", &url, &no_interrupt()).unwrap_err();
    assert!(f.message.contains("fetch.max_repo_size"), "{f}");
    assert_eq!(entries(&m.tmp_dir()), Vec::<PathBuf>::new());
}

/// Issue 10 item 6 with a really filling disk (a 16 MiB tmpfs as the mirror directory;
/// needs root, and says so and passes without it): a fetch that takes free space below
/// `disk.abort_free` is aborted, the mirror is exactly as before and the space it wrote
/// is free again. SPEC §7.5 stands: only this lower limit stops a fetch.
#[test]
fn issue10_6_fetch_aborted_below_abort_free_frees_what_it_wrote() {
    let root = tempfile::tempdir().unwrap();
    let repos = root.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let Some(_mount) = Tmpfs::mount(&repos, "16m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "fills");
    let daemon = GitDaemon::start(up.path());
    let url = daemon.url("fills");
    let m = Mirrors::new(repos.clone());
    m.prepare().unwrap();
    m.clone_new("fills", &url, &no_interrupt()).unwrap();
    let path = m.path("fills");
    let before = snapshot(&path);
    let (free, _) = gitmirror_common::disk::space(&repos).unwrap();
    m.set_limits(Limits {
        abort_free: FreeSpace::Bytes(free - (2 << 20)),
        max_repo_size: None,
    });

    grow(&upstream, 6 << 20);
    let f = m.fetch("fills", &url, &no_interrupt()).unwrap_err();
    assert_eq!(f.class, FailureClass::Local, "{f}");
    assert!(
        f.message.starts_with("aborted:") && f.message.contains("disk.abort_free"),
        "{f}"
    );
    assert_eq!(snapshot(&path), before, "the mirror is exactly as before");
    let (after, _) = gitmirror_common::disk::space(&repos).unwrap();
    assert_eq!(after, free, "what the fetch wrote is freed");
    assert_eq!(entries(&m.tmp_dir()), Vec::<PathBuf>::new());
}

/// Issue 11 part 4: `file://` upstreams work as before through our own helper (clone,
/// fetch, no-op fetch), and a `git-upload-pack` that stops answering fails with a
/// timeout instead of hanging: here a real one, blocked opening the upstream's
/// `packed-refs`, which is a FIFO nobody writes.
#[test]
fn issue11_4_file_upstream_that_stalls_times_out() {
    let up = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::create(up.path(), "abc");
    let url = format!("file://{}", upstream.dir.display());
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos")).with_io_timeout(Duration::from_secs(1));
    m.prepare().unwrap();
    m.clone_new("abc", &url, &no_interrupt()).unwrap();
    upstream.commit("more");
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    m.fetch("abc", &url, &no_interrupt()).unwrap();
    assert_eq!(local_refs(&m.path("abc")), ls_remote(&url));

    let stuck = up.path().join("stuck");
    git(up.path(), &["init", "-q", "--bare", "stuck"]);
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        stuck.join("packed-refs"),
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    let url = format!("file://{}", stuck.display());
    let f = m.clone_new("stuck", &url, &no_interrupt()).unwrap_err();
    assert_eq!(f.class, FailureClass::Transient, "{f}");
    assert!(f.message.contains("timed out"), "{f}");
    assert!(!m.exists("stuck"));
    assert!(no_upload_pack_for(&stuck), "the helper is gone");
}

/// Whether no `git-upload-pack` process serves `repo` any more.
fn no_upload_pack_for(repo: &Path) -> bool {
    let needle = repo.display().to_string();
    !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains("upload-pack") && c.contains(&needle)
        })
    })
}

/// Issue 11 part 4: an `ssh://` upstream whose server accepts the connection and then
/// says nothing (the ssh helper waits for its banner for ever) fails with a timeout, and
/// the `ssh` process is gone.
#[test]
fn issue11_4_ssh_upstream_that_stalls_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        // Accept and keep the connection open, silent, until the client goes away.
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        while std::io::Read::read(&mut conn, &mut buf).is_ok_and(|n| n > 0) {}
    });
    let root = tempfile::tempdir().unwrap();
    let m = Mirrors::new(root.path().join("repos")).with_io_timeout(Duration::from_secs(1));
    m.prepare().unwrap();
    let url = format!("ssh://git@127.0.0.1:{port}/x.git");
    let f = m.clone_new("x", &url, &no_interrupt()).unwrap_err();
    assert_eq!(f.class, FailureClass::Transient, "{f}");
    assert!(f.message.contains("timed out"), "{f}");
    // The ssh client was killed: the server sees the connection close.
    held.join().unwrap();
}

/// Processes whose command line contains all of `needles`, with their parent pid.
fn processes_with(needles: &[&str]) -> Vec<(u32, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !needles.iter().all(|n| cmdline.contains(n)) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// git processes with `GIT_DIR` under `root` in their environment.
fn git_processes_on(root: &Path) -> Vec<u32> {
    let root = root.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            let env = String::from_utf8_lossy(&env).into_owned();
            env.split('\0')
                .any(|v| {
                    v.strip_prefix("GIT_DIR=")
                        .is_some_and(|d| Path::new(d).starts_with(&root))
                })
                .then_some(pid)
        })
        .collect()
}

const MAINTAIN_CHILD: &str = "GITMIRROR_TEST_MAINTAIN_MIRROR_DIR";

/// Issue 11 part 4: a process running the worker's maintenance is killed with `kill -9`
/// while its `git repack` of a real mirror (21 packs of incompressible data) runs: the
/// repack dies with it (it does not go on writing packs nobody waits for), and the next
/// maintenance clears what it left (temp packs, once stale) and succeeds.
///
/// The "worker" here is this test binary run again in a child role (it calls
/// `Mirrors::maintain`, as the worker's maintenance task does), so the kill lands exactly
/// while the repack runs.
#[test]
fn issue11_4_repack_does_not_outlive_a_killed_worker() {
    if let Ok(dir) = std::env::var(MAINTAIN_CHILD) {
        let m = Mirrors::new(PathBuf::from(dir));
        let _ = m.maintain("big", "file:///nonexistent", false, &no_interrupt());
        return;
    }
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "big");
    let url = format!("file://{}", upstream.dir.display());
    let root = tempfile::tempdir().unwrap();
    let repos = root.path().join("repos");
    let m = Mirrors::new(repos.clone());
    m.prepare().unwrap();
    m.clone_new("big", &url, &no_interrupt()).unwrap();
    let path = m.path("big");
    let blob = root.path().join("blob");
    for i in 0..20u8 {
        let mut data = noise(1 << 20);
        data[0] = i;
        std::fs::write(&blob, data).unwrap();
        let id = git(&path, &["hash-object", "-w", blob.to_str().unwrap()]);
        // A pack of its own (unreachable objects are not packed by `git repack`).
        let mut pack = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&path)
            .args(["pack-objects", "-q", "objects/pack/pack"])
            .current_dir(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut pack.stdin.take().unwrap(), id.as_bytes()).unwrap();
        assert!(pack.wait().unwrap().success());
    }
    let packs = || {
        entries(&path.join("objects/pack"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .count()
    };
    assert!(packs() >= 16, "{} packs", packs());

    let mut worker = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "issue11_4_repack_does_not_outlive_a_killed_worker",
            "--nocapture",
        ])
        .env(MAINTAIN_CHILD, &repos)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let worker_pid = worker.id();
    let git_dir = path.display().to_string();
    common::wait_for("the worker's git repack", Duration::from_secs(30), || {
        processes_with(&["repack", &git_dir])
            .iter()
            .any(|(_, ppid)| *ppid == worker_pid)
    });
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    common::wait_for(
        "the repack to die with the worker",
        Duration::from_secs(10),
        || processes_with(&["repack", &git_dir]).is_empty(),
    );

    // What it ran in turn (pack-objects) is killed when a worker starts.
    let cleanup = m.prepare().unwrap();
    eprintln!("orphans killed at start: {}", cleanup.orphans_killed);
    common::wait_for("no git left on the mirror", Duration::from_secs(10), || {
        git_processes_on(&repos).is_empty()
    });

    // What the killed repack left is stale once old enough, and goes at the next pass.
    for p in entries(&path.join("objects/pack")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".tmp") || name.starts_with("tmp_") || name.ends_with(".lock") {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
                .unwrap();
        }
    }
    let done = m.maintain("big", &url, true, &no_interrupt()).unwrap();
    assert!(done.packs_after < 16, "{done:?}");
    let left: Vec<PathBuf> = entries(&path.join("objects/pack"))
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".tmp") || n.starts_with("tmp_") || n.ends_with(".lock")
        })
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "{done:?}");
    git(&path, &["fsck", "--no-progress", "--connectivity-only"]);
    m.fetch("big", &url, &no_interrupt()).unwrap();
}

/// Issue 10 item 6 through the whole worker: `fetch.max_repo_size` from its config
/// reaches the clones it runs; the failure reported to the coordinator is `Local` and
/// names the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_6_worker_reports_a_clone_over_max_repo_size() {
    use common::coord::FakeCoordinator;
    use common::harness::{Inbox, config, fetch_section, start};
    use gitmirror_wire::FetchResult;
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "big");
    grow(&upstream, 3 << 20);
    let daemon = GitDaemon::start(up.path());
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let mut fetch = fetch_section(Duration::from_secs(60), Duration::from_secs(600));
    fetch.max_repo_size = Some(1 << 20);
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch,
        FreeSpace::Percent(0.0),
    );
    let worker = start(cfg);
    let mut inbox = Inbox::accept(&coord, 0).await;
    inbox.assign(&[("b/big/big", &daemon.url("big"))]).await;
    let (_, o) = inbox
        .outcome_where("the clone to fail", Duration::from_secs(30), |o| {
            o.repo == "b/big/big"
        })
        .await;
    match &o.result {
        FetchResult::Failed {
            class: FailureClass::Local,
            message,
        } => assert!(message.contains("fetch.max_repo_size"), "{message}"),
        other => panic!("expected a local failure, got {other:?}"),
    }
    worker.stop().await;
}
