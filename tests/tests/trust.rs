//! Join tokens: a worker with the wrong secret or the wrong certificate pin is refused;
//! a rotated secret refuses the old token and needs no restart (SPEC §4.1).

use gitmirror_tests::daemons::{SETTLE, join_token, str_field};
use gitmirror_tests::{
    Coordinator, Fleet, GitDaemon, POLL_INTERVAL, Worker, bin, figure, wait_for, yaml_path,
    yaml_str,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// SPEC §4.1: the worker accepts the coordinator only if the certificate's SHA-256 matches
// the token; the coordinator refuses a wrong secret with a clear error. A smaller fleet
// than the other files (10 repos, one good worker as the control): nothing here depends
// on the number of repos.
#[test]
fn wrong_secret_and_wrong_pin_are_refused() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("trust", 10);
    let fleet = Fleet::start("trust", &repos, 1);
    fleet.wait_alive(&[0], Duration::from_secs(30));

    // Right certificate hash, wrong secret.
    let (head, _secret) = fleet.token.rsplit_once('.').unwrap();
    let wrong_secret = format!("{head}.AAAAwrongSecret_but-well-formed0000");
    // Another coordinator's token: its certificate is not this coordinator's.
    let other = Coordinator::new(
        &fleet.root.path().join("other-coordinator"),
        fleet.index.path(),
    );
    let wrong_pin = join_token(&other.config);
    assert_ne!(wrong_pin, fleet.token);

    let bad = [
        ("badsecret", wrong_secret, "wrong join token"),
        (
            "badpin",
            wrong_pin,
            "certificate does not match the join token",
        ),
    ];
    let udp = fleet.coord.udp_port;
    let workers: Vec<Worker> = bad
        .iter()
        .map(|(name, token, _)| Worker::new(&fleet.root.path().join(name), name, udp, token, 1.0))
        .collect();
    for w in &workers {
        w.start();
    }

    // Until both have logged their refusal (and 3 s more), neither is ever alive.
    let start = Instant::now();
    let mut logged = [false, false];
    let mut done_at = None;
    loop {
        for (k, (_, _, needle)) in bad.iter().enumerate() {
            logged[k] |= workers[k].proc.log().contains(needle);
        }
        for w in fleet.coord.workers().unwrap() {
            let name = str_field(&w, "name");
            assert!(
                !(bad.iter().any(|(n, _, _)| *n == name) && str_field(&w, "state") == "alive"),
                "refused worker listed as alive: {w}"
            );
        }
        if logged == [true, true] && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        // After both refusals, a short fixed observation window: the assertion is that
        // nothing changes (no late acceptance).
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!(
                "refusals not logged after 30 s (wrong secret: {}, wrong pin: {})",
                logged[0], logged[1]
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }

    // The good worker is unaffected.
    fleet.wait_alive(&[0], Duration::from_secs(5));
    fleet.wait_settled(SETTLE);
}

/// `gitmirrord join-token --rotate --config <config>`: the new token (SPEC §4.1 rotation).
fn rotate(config: &Path) -> String {
    let out = Command::new(bin("gitmirrord"))
        .args(["join-token", "--rotate", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run gitmirrord join-token --rotate");
    assert!(
        out.status.success(),
        "join-token --rotate failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        text.starts_with("gmj1.") && !text.contains('\n'),
        "{text:?}"
    );
    text
}

/// The certificate pin of a token (everything before the secret).
fn pin(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(head, _)| head)
}

/// Replace a worker's token file the way an operator would (`install -m 0600`): a private
/// temp file renamed over the old one.
fn write_token_file(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    writeln!(f, "{token}").expect("write token");
    drop(f);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
}

/// Worker `name` of `fleet` whose config points `join_token_file` at `<dir>/join-token`,
/// holding `token`; added to `fleet.workers`, not started. Returns its index and the file.
fn file_token_worker(fleet: &mut Fleet, name: &str, token: &str) -> (usize, PathBuf) {
    let dir = fleet.root.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir worker dir");
    let file = dir.join("join-token");
    write_token_file(&file, token);
    let udp = fleet.coord.udp_port;
    let w = Worker::with_yaml(&dir, name, |mirror, state| {
        let yaml = Worker::standard_yaml(name, udp, token, 1.0, mirror, state);
        let inline = format!("join_token: {}\n", yaml_str(token));
        assert!(
            yaml.contains(&inline),
            "standard worker yaml changed: {yaml}"
        );
        yaml.replace(&inline, &format!("join_token_file: {}\n", yaml_path(&file)))
    });
    fleet.workers.push(w);
    (fleet.workers.len() - 1, file)
}

/// Coordinator log lines that refuse worker `name` for its join secret.
fn secret_refusals(coord: &Coordinator, name: &str, since: usize) -> usize {
    let who = format!("refused worker \"{name}\"");
    coord
        .proc
        .log_since(since)
        .lines()
        .filter(|l| l.contains(&who) && l.contains("wrong join token"))
        .count()
}

/// What the worker says when its secret is refused.
const WORKER_REFUSED: &str = "the coordinator refused this worker's join secret";

// SPEC §4.1 rotation: after `join-token --rotate` the stolen (old) token admits nobody, the
// coordinator keeps running and logs each refusal naming the peer, the certificate pin
// stays, connected workers stay connected, the new token admits a new worker, an enrolled
// worker reconnects with its certificate (SPEC §17) whatever its token file says, and a
// worker not enrolled yet is refused with the old token, keeps running, and joins without
// a restart once the new token is written to its `join_token_file`.
#[test]
fn rotated_secret_refuses_the_stolen_token_and_the_token_file_needs_no_restart() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("rotate", 6);
    let mut fleet = Fleet::start("rotate", &repos, 0);
    let stolen = fleet.token.clone();
    let (w0, _) = file_token_worker(&mut fleet, "w0", &stolen);
    fleet.workers[w0].start();
    fleet.wait_alive(&[w0], Duration::from_secs(30));
    fleet.wait_settled(SETTLE);

    let rotated = rotate(&fleet.coord.config);
    assert_ne!(rotated, stolen);
    assert_eq!(
        pin(&rotated),
        pin(&stolen),
        "rotation changed the certificate pin"
    );
    assert_eq!(join_token(&fleet.coord.config), rotated);

    // The thief: a real worker presenting the old token.
    let coord_mark = fleet.coord.proc.log_mark();
    let thief = Worker::new(
        &fleet.root.path().join("thief"),
        "thief",
        fleet.coord.udp_port,
        &stolen,
        1.0,
    );
    thief.start();
    // Three refused attempts (the worker retries with backoff); the thief never appears
    // in the API, and the connected worker stays alive meanwhile.
    let attempts = wait_for(Duration::from_secs(30), "three refused attempts", || {
        let workers = fleet.coord.workers()?;
        assert!(
            workers.iter().all(|w| str_field(w, "name") != "thief"),
            "the stolen token admitted a worker: {workers:?}"
        );
        let n = secret_refusals(&fleet.coord, "thief", coord_mark);
        if n >= 3 {
            Ok(n)
        } else {
            Err(format!("{n} refusals logged"))
        }
    });
    thief
        .proc
        .wait_log(0, WORKER_REFUSED, Duration::from_secs(10));
    assert!(thief.proc.is_running(), "a refused worker exited");
    assert!(
        fleet
            .coord
            .workers()
            .unwrap()
            .iter()
            .all(|w| str_field(w, "name") != "thief")
    );
    fleet.wait_alive(&[w0], Duration::from_secs(1));
    figure("trust", "stolen_token_attempts_refused", attempts);
    figure("trust", "stolen_token_accepted", 0);
    thief.kill();

    // The new token admits a new worker.
    fleet.token = rotated.clone();
    let w1 = fleet.add_worker(1.0);
    fleet.wait_alive(&[w0, w1], Duration::from_secs(30));
    let held = Fleet::owned_by(&fleet.wait_settled(SETTLE), w0);

    // Drop w0's connection (restart the coordinator). w0 enrolled before the rotation
    // (SPEC §17): its certificate speaks for it, so it comes back although its file still
    // holds the old token, and keeps its mirrors.
    let w0_mark = fleet.workers[w0].proc.log_mark();
    fleet.coord.kill();
    fleet.coord.start_ready();
    fleet.wait_alive(&[w0, w1], Duration::from_secs(30));
    assert!(
        !fleet.workers[w0]
            .proc
            .log_since(w0_mark)
            .contains(WORKER_REFUSED),
        "the enrolled w0 was refused"
    );
    for id in held {
        assert!(
            fleet.workers[w0].has_mirror(&id),
            "w0 lost its mirror of {id}"
        );
    }
    fleet.wait_settled(SETTLE);

    // A worker not enrolled yet, configured with the old token, is refused and keeps
    // running; once the operator writes the new token into its file it joins, same
    // process.
    late_worker_joins_once_its_file_has_the_new_token(&mut fleet, &stolen, &rotated, "late");
}

/// Start worker `name` with `old` in its token file: it is refused, logged by both sides,
/// and keeps running; writing `new` into the file lets it join without a restart.
fn late_worker_joins_once_its_file_has_the_new_token(
    fleet: &mut Fleet,
    old: &str,
    new: &str,
    name: &str,
) {
    let (w, file) = file_token_worker(fleet, name, old);
    let coord_mark = fleet.coord.proc.log_mark();
    fleet.workers[w].start();
    fleet.workers[w]
        .proc
        .wait_log(0, WORKER_REFUSED, Duration::from_secs(30));
    wait_for(
        Duration::from_secs(10),
        "the coordinator's refusal",
        || match secret_refusals(&fleet.coord, name, coord_mark) {
            0 => Err("none yet".into()),
            n => Ok(n),
        },
    );
    assert!(
        fleet.workers[w].proc.is_running(),
        "{name} exited when refused"
    );
    if let Ok(v) = fleet.api_worker(w) {
        assert_ne!(
            str_field(&v, "state"),
            "alive",
            "refused {name} listed alive"
        );
    }
    let pid = fleet.workers[w].proc.pid();
    let written = Instant::now();
    write_token_file(&file, new);
    fleet.wait_alive(&[w], Duration::from_secs(30));
    figure(
        "trust",
        &format!("{name}_token_file_written_to_rejoined_ms"),
        written.elapsed().as_millis(),
    );
    assert_eq!(fleet.workers[w].proc.pid(), pid, "{name} was restarted");
    fleet.workers[w]
        .proc
        .wait_log(0, "read a new join token from", Duration::from_secs(1));
    fleet.wait_settled(SETTLE);
}

// SPEC §4.1 rotation while the coordinator is stopped: its next start uses the new secret,
// so the old token is refused and the new one admits; an enrolled worker needs neither
// (SPEC §17).
#[test]
fn rotation_while_the_coordinator_is_stopped_takes_effect_at_its_next_start() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("rotate-stopped", 3);
    let mut fleet = Fleet::start("rotate-stopped", &repos, 0);
    let old = fleet.token.clone();
    let (w0, _) = file_token_worker(&mut fleet, "w0", &old);
    fleet.workers[w0].start();
    fleet.wait_alive(&[w0], Duration::from_secs(30));

    assert!(
        fleet
            .coord
            .proc
            .terminate(Duration::from_secs(10))
            .is_some(),
        "gitmirrord did not stop on SIGTERM"
    );
    let rotated = rotate(&fleet.coord.config);
    assert_ne!(rotated, old);
    assert_eq!(pin(&rotated), pin(&old));
    let w0_mark = fleet.workers[w0].proc.log_mark();
    let coord_mark = fleet.coord.proc.log_mark();
    fleet.coord.start_ready();
    // The enrolled w0 comes back with its certificate; the new secret is in force for
    // everyone else: a worker with the old token is refused until its file is updated.
    fleet.wait_alive(&[w0], Duration::from_secs(30));
    assert!(
        !fleet.workers[w0]
            .proc
            .log_since(w0_mark)
            .contains(WORKER_REFUSED)
    );
    assert_eq!(secret_refusals(&fleet.coord, "w0", coord_mark), 0);
    late_worker_joins_once_its_file_has_the_new_token(&mut fleet, &old, &rotated, "late");
}
