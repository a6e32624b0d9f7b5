//! Starting and stopping: secret file modes, graceful SIGTERM, corrupt state files.

use gitmirror_tests::daemons::SETTLE;
use gitmirror_tests::{
    Coordinator, Fleet, GitDaemon, Index, Proc, TestDir, Worker, tail, wait_for, yaml_path,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Wait for `proc` to exit by itself; returns its log.
fn wait_exit(proc: &Proc, what: &str) -> String {
    let status = wait_for(Duration::from_secs(10), what, || {
        proc.exited()
            .ok_or_else(|| format!("still running:\n{}", tail(&proc.log(), 10)))
    });
    assert!(!status.success(), "{what}: exited with success");
    proc.log()
}

// SPEC §4.1: key, secret and token files are written mode 0600; a daemon refuses to start
// when its secret file is readable by group or others, and says so.
#[test]
fn readable_secret_files_are_refused() {
    let root = TestDir::new("secret");
    let index = Index::create(&root.path().join("index"));
    let coord = Coordinator::new(&root.path().join("coordinator"), index.path());
    let token = coord.join_token();
    let secret = coord.state_dir.join("join-secret");
    let key = coord.state_dir.join("tls-key.pem");
    assert_eq!(mode(&secret), 0o600, "{}", secret.display());
    assert_eq!(mode(&key), 0o600, "{}", key.display());

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    coord.start();
    let log = wait_exit(&coord.proc, "coordinator to refuse a 0644 secret");
    assert!(
        log.contains("join-secret"),
        "log does not name the file:\n{log}"
    );

    // The worker's token file.
    let token_file = root.path().join("join-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let worker = Worker::with_yaml(&root.path().join("worker"), "w", |mirror, state| {
        format!(
            "coordinator: 127.0.0.1:{}\njoin_token_file: {}\nmirror_dir: {}\nstate_dir: {}\n",
            coord.udp_port,
            yaml_path(&token_file),
            yaml_path(mirror),
            yaml_path(state)
        )
    });
    worker.start();
    let log = wait_exit(&worker.proc, "worker to refuse a 0644 token file");
    assert!(
        log.contains("join-token"),
        "log does not name the file:\n{log}"
    );

    // With mode 0600 the same file is accepted.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = gitmirror_tests::daemons::check_config("gitmirror-worker", &worker.config);
    assert_eq!(c.code, Some(0), "{c:?}");
}

// SPEC §11 (SIGTERM stops gracefully within 10 s, state saved), §10 (a state file that
// fails to decode stops the daemon with a message naming the file; never replaced with
// defaults).
#[test]
fn sigterm_stops_cleanly_and_corrupt_state_is_refused() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("term", 4);
    let fleet = Fleet::start("term", &repos, 1);
    fleet.wait_settled(SETTLE);

    let status = fleet.workers[0]
        .proc
        .terminate(Duration::from_secs(10))
        .expect("worker still running 10 s after SIGTERM");
    assert!(status.success(), "worker exit after SIGTERM: {status}");
    let status = fleet
        .coord
        .proc
        .terminate(Duration::from_secs(10))
        .expect("coordinator still running 10 s after SIGTERM");
    assert!(status.success(), "coordinator exit after SIGTERM: {status}");

    // Corrupt one state file of each; neither starts, and each names the file.
    for (dir, proc, file) in [
        (&fleet.coord.state_dir, &fleet.coord.proc, "repos.snapshot"),
        (
            &fleet.workers[0].state_dir,
            &fleet.workers[0].proc,
            "repos.snapshot",
        ),
    ] {
        let p = dir.join(file);
        assert!(p.is_file(), "{} was not written", p.display());
        std::fs::write(&p, b"gitmirror-state garbage\n{not json").unwrap();
        let mark = proc.log_mark();
        proc.start();
        wait_exit(proc, &format!("refusal of a corrupt {}", p.display()));
        let log = proc.log_since(mark);
        assert!(log.contains(file), "log does not name {file}:\n{log}");
        // Not replaced with defaults.
        let content = std::fs::read_to_string(&p).unwrap();
        assert!(
            content.contains("{not json"),
            "{} was rewritten",
            p.display()
        );
    }
}
