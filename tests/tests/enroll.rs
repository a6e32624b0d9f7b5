//! Per-worker certificates end to end, as an operator runs them (SPEC §17; issue 10 build
//! item 1): real `gitmirrord` and `gitmirror-worker` processes and the `gitmirrord
//! workers` commands.

use gitmirror_tests::daemons::{SETTLE, str_field};
use gitmirror_tests::{Fleet, GitDaemon, Worker, bin, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// `gitmirrord --config <coordinator's> workers <args>`: exit status and output.
fn workers_cli(fleet: &Fleet, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("gitmirrord"))
        .arg("--config")
        .arg(&fleet.coord.config)
        .arg("workers")
        .args(args)
        .output()
        .expect("run gitmirrord workers");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn uuid_of(fleet: &Fleet, i: usize) -> String {
    str_field(&fleet.api_worker(i).unwrap(), "uuid")
}

// SPEC §17: a worker enrolls at its first connection (its certificate and key land in its
// state dir, mode 0600) and its restarts present that certificate; `workers remove`
// revokes it, closes its connection and moves its repos to the others while it keeps its
// mirrors; `workers approve` lets it enroll again without touching its disk.
#[test]
fn spec_17_enroll_remove_and_approve_with_the_cli() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("enroll", 6);
    let fleet = Fleet::start("enroll", &repos, 2);
    fleet.wait_alive(&[0, 1], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    let w0: &Worker = &fleet.workers[0];
    let cert = w0.state_dir.join("worker-cert.pem");
    let key = w0.state_dir.join("worker-key.pem");
    for f in [&cert, &key] {
        let mode = std::fs::metadata(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    w0.proc.wait_log(
        0,
        "enrolled: the coordinator issued",
        Duration::from_secs(1),
    );
    let (ok, list) = workers_cli(&fleet, &["list"]);
    assert!(ok, "{list}");
    assert_eq!(list.matches("\tyes\t").count(), 2, "both enrolled:\n{list}");

    // A restart presents the certificate: welcomed, not enrolled again.
    let before = std::fs::read(&cert).unwrap();
    let mark = w0.proc.log_mark();
    w0.kill();
    w0.start();
    w0.proc.wait_log(
        mark,
        "connected to the coordinator",
        Duration::from_secs(30),
    );
    assert!(!w0.proc.log_since(mark).contains("enrolled:"));
    assert_eq!(std::fs::read(&cert).unwrap(), before);

    // Remove w0 with the CLI: its connection closes, it is not admitted again, its repos
    // move to w1 at once (dead_after is 4 s here, the move does not wait for it), and it
    // keeps its mirrors.
    let uuid = uuid_of(&fleet, 0);
    let held = Fleet::owned_by(&owners, 0);
    let mark = w0.proc.log_mark();
    let (ok, out) = workers_cli(&fleet, &["remove", &uuid]);
    assert!(ok, "{out}");
    w0.proc.wait_log(
        mark,
        "the coordinator does not admit this worker",
        Duration::from_secs(30),
    );
    wait_for(Duration::from_secs(30), "every repo on w1", || {
        let o = fleet.coord.owners()?;
        let ids = fleet.api_ids()?;
        let on_w1 = o
            .values()
            .all(|w| w.and_then(|id| ids.get(&id).copied()) == Some(1));
        if on_w1 { Ok(()) } else { Err(format!("{o:?}")) }
    });
    let (ok, list) = workers_cli(&fleet, &["list"]);
    assert!(ok && list.contains("removed"), "{list}");
    assert!(w0.proc.is_running(), "a removed worker keeps running");
    for id in &held {
        assert!(w0.has_mirror(id), "w0 lost its mirror of {id}");
    }
    // It stays out: it tried its certificate, then the token, and both were refused.
    wait_for(Duration::from_secs(30), "two refusals", || {
        let n = w0
            .proc
            .log_since(mark)
            .matches("was removed from the fleet")
            .count();
        if n >= 2 { Ok(()) } else { Err(format!("{n}")) }
    });
    assert_ne!(str_field(&fleet.api_worker(0).unwrap(), "state"), "alive");

    // Approve: the token enrolls it again, with a new certificate, in the same process.
    let pid = w0.proc.pid();
    let mark = w0.proc.log_mark();
    let (ok, out) = workers_cli(&fleet, &["approve", &uuid]);
    assert!(ok, "{out}");
    w0.proc.wait_log(
        mark,
        "enrolled: the coordinator issued",
        Duration::from_secs(60),
    );
    fleet.wait_alive(&[0, 1], Duration::from_secs(30));
    assert_eq!(w0.proc.pid(), pid);
    assert_ne!(std::fs::read(&cert).unwrap(), before);
    fleet.wait_settled(SETTLE);

    // The CLI names a bad uuid and a stopped daemon.
    let (ok, out) = workers_cli(&fleet, &["remove", "nope"]);
    assert!(!ok && out.contains("nope"), "{out}");
    fleet.coord.kill();
    let (ok, out) = workers_cli(&fleet, &["list"]);
    assert!(!ok && out.contains("cannot reach the daemon"), "{out}");
}

// SPEC §17 `enroll: manual`: a new worker with a valid token waits, listed by `workers
// list`, and joins once approved, without a restart.
#[test]
fn spec_17_manual_enrollment_with_the_cli() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("enroll-manual", 3);
    let mut fleet = Fleet::start_with("enroll-manual", &repos, 0, |yaml, _| {
        format!("{yaml}enroll: manual\n")
    });
    let w = fleet.add_worker(1.0);
    fleet.workers[w]
        .proc
        .wait_log(0, "workers approve", Duration::from_secs(30));
    let (ok, list) = workers_cli(&fleet, &["list"]);
    assert!(ok && list.contains("waiting for approval"), "{list}");
    let uuid = list
        .lines()
        .skip_while(|l| !l.starts_with("waiting"))
        .nth(2)
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no pending line:\n{list}"))
        .to_owned();
    assert!(fleet.coord.workers().unwrap().is_empty());
    let (ok, out) = workers_cli(&fleet, &["approve", &uuid]);
    assert!(ok, "{out}");
    fleet.wait_alive(&[w], Duration::from_secs(60));
    fleet.wait_settled(SETTLE);
}
