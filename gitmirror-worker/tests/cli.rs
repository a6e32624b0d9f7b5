//! The `gitmirror-worker` binary: commands, exit codes, logs and systemd notification
//! (SPEC §2.2, §4.1, §10, §11).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::coord::FakeCoordinator;
use common::wait_for;
use gitmirror_wire::JoinToken;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gitmirror-worker");

fn token() -> JoinToken {
    JoinToken::new(b"a coordinator certificate", "c2VjcmV0")
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("gitmirror-worker.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

/// A config that needs nothing outside `dir`.
fn full_config(dir: &Path, coordinator: &str, token: &JoinToken) -> String {
    format!(
        "join_token: {}\n{}",
        token.format(),
        config_without_token(dir, coordinator)
    )
}

fn config_without_token(dir: &Path, coordinator: &str) -> String {
    format!(
        "coordinator: {coordinator}\nmirror_dir: {}\nstate_dir: {}\nname: cli-test\n\
         fetch:\n  min_interval: 2s\n",
        dir.join("repos").display(),
        dir.join("state").display()
    )
}

fn check_config(path: &Path) -> Output {
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A daemon whose stderr is collected line by line.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn wait_log(&self, needle: &str) {
        wait_for(
            &format!("{needle:?} in the log"),
            Duration::from_secs(30),
            || self.count(needle) > 0,
        );
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SPEC §11: `--help` and `--version`.
#[test]
fn spec_11_help_and_version() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("check-config") && text.contains("--config"),
        "{text}"
    );
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// SPEC §2, §11: `check-config` exits 0 on a valid file and 78 naming file and key otherwise.
#[test]
fn spec_11_check_config_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let good = write_config(
        d.path(),
        &full_config(d.path(), "coord.example.org:5555", &token()),
    );
    let o = check_config(&good);
    assert!(o.status.success(), "{}", stderr(&o));

    let with_token = full_config(d.path(), "127.0.0.1:5555", &token());
    let cases = [
        (
            "unknown key",
            format!("{with_token}coordinatr: 1.2.3.4:5\n"),
            "coordinatr",
        ),
        (
            "unknown nested key",
            with_token.replace("  min_interval", "  min_intervall"),
            "min_intervall",
        ),
        (
            "bad duration",
            with_token.replace("min_interval: 2s", "min_interval: 5 parsecs"),
            "fetch.min_interval",
        ),
        ("bad weight", format!("{with_token}weight: 0\n"), "weight"),
        (
            "unreadable token file",
            format!(
                "{}join_token_file: /nonexistent/join-token\n",
                config_without_token(d.path(), "h:1")
            ),
            "join_token_file",
        ),
    ];
    for (what, body, key) in cases {
        let p = write_config(d.path(), &body);
        let o = check_config(&p);
        assert_eq!(o.status.code(), Some(78), "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&p.display().to_string()) && e.contains(key),
            "{what}: {e}"
        );
    }

    let o = check_config(&d.path().join("missing.yaml"));
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("missing.yaml"), "{}", stderr(&o));
}

/// SPEC §4.1: a token file readable by group or others is refused, naming the file.
#[test]
fn spec_4_1_token_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let tok = d.path().join("join-token");
    std::fs::write(&tok, token().format()).unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = write_config(d.path(), &format!("join_token_file: {}\n", tok.display()));
    let o = check_config(&p);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        stderr(&o).contains("join-token") && stderr(&o).contains("chmod 600"),
        "{}",
        stderr(&o)
    );
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = check_config(&p);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// SPEC §11: a bad config when starting the daemon exits 78 with the reason.
#[test]
fn spec_11_daemon_with_bad_config_exits_78() {
    let d = tempfile::tempdir().unwrap();
    let p = write_config(d.path(), "where_coor_ip_addr: 127.0.0.1:5555\nbogus: 1\n");
    let o = Command::new(BIN).arg("--config").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));
}

/// SPEC §10: a state file that does not decode stops the daemon, naming the file; it is
/// never replaced with defaults.
#[test]
fn spec_10_corrupt_state_refuses_to_start() {
    let d = tempfile::tempdir().unwrap();
    let p = write_config(d.path(), &full_config(d.path(), "127.0.0.1:9", &token()));
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let repos = state.join("repos.json");
    std::fs::write(&repos, "gitmirror-state worker-repos v1\n{\"repos\": tru").unwrap();
    let mut daemon = Daemon::spawn(Command::new(BIN).arg("--config").arg(&p));
    let st = daemon.wait_exit(Duration::from_secs(20));
    assert!(!st.success());
    let log = daemon.log();
    assert!(log.contains(&repos.display().to_string()), "{log}");
    assert_eq!(
        std::fs::read_to_string(&repos).unwrap(),
        "gitmirror-state worker-repos v1\n{\"repos\": tru"
    );
}

/// SPEC §2.2: the seed aliases start the daemon with one warning each naming the new key.
#[test]
fn spec_2_2_seed_aliases_start_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let body = format!(
        "where_coor_ip_addr: 127.0.0.1:9\nclone_disk_path: {}\njoin_token: {}\nstate_dir: {}\n",
        d.path().join("clone").display(),
        token().format(),
        d.path().join("state").display()
    );
    let p = write_config(d.path(), &body);
    let daemon = Daemon::spawn(Command::new(BIN).arg("--config").arg(&p));
    daemon.wait_log("worker started");
    let lines = daemon.lines.lock().unwrap().clone();
    let warned = |alias: &str, key: &str| {
        lines
            .iter()
            .filter(|l| l.contains("WARN") && l.contains(alias) && l.contains(key))
            .count()
    };
    assert_eq!(
        warned("where_coor_ip_addr", "`coordinator`"),
        1,
        "{lines:?}"
    );
    assert_eq!(warned("clone_disk_path", "`mirror_dir`"), 1, "{lines:?}");
    // Beside the mirror directory (issue 10): not servable by a git daemon exporting it.
    assert!(d.path().join("clone.tmp").is_dir());
    assert!(!d.path().join("clone/.tmp").exists());
}

/// SPEC §4.1, §6: a wrong secret is refused by the coordinator; the worker logs the
/// coordinator's words once (not per attempt) and keeps retrying instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_4_1_wrong_secret_is_logged_once_and_retried() {
    let coord = FakeCoordinator::start();
    let d = tempfile::tempdir().unwrap();
    let wrong = JoinToken {
        cert_sha256: coord.token.cert_sha256,
        secret: "d3Jvbmc".into(),
    };
    let p = write_config(
        d.path(),
        &full_config(d.path(), &coord.addr.to_string(), &wrong),
    );
    let mut daemon = Daemon::spawn(Command::new(BIN).arg("--config").arg(&p));
    for _ in 0..3 {
        let hello = coord.refuse_next().await;
        assert_eq!(hello.secret, "d3Jvbmc");
    }
    daemon.wait_log("wrong join token");
    assert_eq!(daemon.count("wrong join token"), 1, "{}", daemon.log());
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the worker keeps running"
    );
}

/// SPEC §4.1: a coordinator whose certificate does not match the token's pin is not
/// trusted, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_4_1_wrong_certificate_pin_is_logged() {
    let coord = FakeCoordinator::start();
    let endpoint = coord.endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let _ = incoming.await;
        }
    });
    let d = tempfile::tempdir().unwrap();
    let other_pin = JoinToken::new(b"another certificate", &coord.token.secret);
    let p = write_config(
        d.path(),
        &full_config(d.path(), &coord.addr.to_string(), &other_pin),
    );
    let daemon = Daemon::spawn(Command::new(BIN).arg("--config").arg(&p));
    tokio::task::spawn_blocking(move || {
        daemon.wait_log("certificate does not match the join token");
        assert!(
            daemon.log().contains("gitmirrord join-token"),
            "{}",
            daemon.log()
        );
    })
    .await
    .unwrap();
}

/// SPEC §11: READY once state and mirror dir are ready (without a coordinator), a status
/// line, the watchdog fed, and STOPPING on SIGTERM with exit 0 within 10 s; SIGHUP does
/// not stop it.
#[test]
fn spec_11_systemd_notify_and_signals() {
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let p = write_config(d.path(), &full_config(d.path(), "127.0.0.1:9", &token()));
    let mut daemon = Daemon::spawn(
        Command::new(BIN)
            .arg("--config")
            .arg(&p)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000"),
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut recv_until = |needle: &str, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle} from the daemon; got {seen:?}"
            );
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    recv_until("READY=1", &mut seen);
    assert!(seen.contains("STATUS="), "{seen}");
    recv_until("WATCHDOG=1", &mut seen);
    daemon.signal("HUP");
    daemon.wait_log("SIGHUP");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the worker"
    );
    let t = Instant::now();
    daemon.signal("TERM");
    recv_until("STOPPING=1", &mut seen);
    let st = daemon.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}; log:\n{}", daemon.log());
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// SPEC §11 (SIGHUP reloads what can be reloaded): `log_level`, `fetch.*` and `disk.*`
/// apply at once, a changed key that needs a restart is named, and a bad file keeps the
/// running configuration without stopping the worker.
#[test]
fn spec_11_sighup_reloads_and_names_what_needs_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let p = write_config(d.path(), &full_config(d.path(), "127.0.0.1:9", &token()));
    let daemon = Daemon::spawn(
        Command::new(BIN)
            .arg("--config")
            .arg(&p)
            .env_remove("RUST_LOG"),
    );
    daemon.wait_log("worker started");

    let changed = full_config(d.path(), "127.0.0.1:9", &token())
        .replace("name: cli-test", "name: renamed")
        .replace("min_interval: 2s", "min_interval: 5s\n  concurrency: 2")
        + "log_level: debug\n";
    write_config(d.path(), &changed);
    daemon.signal("HUP");
    daemon.wait_log("reloaded the fetch and disk settings");
    let log = daemon.log();
    assert!(
        log.contains("SIGHUP: name changed; restart the worker to apply it"),
        "{log}"
    );
    assert!(
        !log.contains("SIGHUP: fetch"),
        "fetch.* reloads without a restart: {log}"
    );

    write_config(d.path(), "fetch: {timeout: 5 parsecs}\n");
    daemon.signal("HUP");
    daemon.wait_log("keeping the running configuration");
    let log = daemon.log();
    assert!(log.contains("fetch.timeout"), "the bad key is named: {log}");
    let mut daemon = daemon;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "a bad reload does not stop the worker"
    );
}
