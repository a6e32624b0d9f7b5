//! The `gitmirrord` binary: commands, exit codes, systemd notification, signals and loud
//! state corruption (SPEC §2.1, §4.1, §10, §11).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use gitmirror_wire::JoinToken;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gitmirrord");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A config that starts on ephemeral ports in `dir`.
fn daemon_config(dir: &Path) -> String {
    let index = dir.join("idx");
    std::fs::create_dir_all(index.join("a/abc")).unwrap();
    std::fs::write(
        index.join("a/abc/abc"),
        "url: https://example.org/abc.git\n",
    )
    .unwrap();
    format!(
        "listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\nstate_dir: {}\nindexes: [{{name: t, url: {}, poll_interval: 1s}}]\n",
        dir.join("state").display(),
        index.display()
    )
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gitmirrord did not exit within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: Child) -> String {
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
}

/// SPEC §11: check-config exits 0 when valid.
#[test]
fn check_config_valid() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "c.yaml", "listen: 0.0.0.0:5555\nmax_workers: 3\n");
    let out = run(&["check-config", "--config", &p]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // --config may also come first.
    let out = run(&["--config", &p, "check-config"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// SPEC §2, §11: check-config exits 78 naming the file and the key.
#[test]
fn check_config_invalid_names_the_key() {
    let d = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("listen: 0.0.0.0:5555\nlisten_port: 1\n", "listen_port"),
        (
            "liveness:\n  dead_after: 5 parsecs\n",
            "liveness.dead_after",
        ),
        ("max_workers: 0\n", "max_workers"),
        (
            "indexes: [{name: a, url: /x}, {name: a, url: /y}]\n",
            "indexes[1].name",
        ),
    ] {
        let p = write(d.path(), "c.yaml", text);
        let out = run(&["check-config", "--config", &p]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {err}");
        assert!(err.contains(&p) && err.contains(key), "{text}: {err}");
    }
    let out = run(&["check-config", "--config", "/nonexistent/gitmirrord.yaml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gitmirrord.yaml"));
}

/// SPEC §2.2 (last paragraph): a file with only the prototype's keys is valid, with a
/// warning per alias naming its new key.
#[test]
fn seed_alias_file_is_valid_with_warnings() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "c.yaml",
        "coor_ip_addr: 127.0.0.1\nupstream_repos_name: upstream-repos\nupstream_repos_url: https://gitee.com/compass-ci/upstream-repos.git\nbitmap_max_num: 20\nfetch_interval: 120\n",
    );
    let out = run(&["check-config", "--config", &p]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for new in ["`listen`", "`max_workers`", "`indexes`", "poll_interval"] {
        assert!(err.contains(new), "{new}: {err}");
    }
}

/// SPEC §4.1, §11: join-token prints a parseable token and creates private files; the
/// token is stable.
#[test]
fn join_token_prints_a_token_and_creates_private_files() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let p = write(
        d.path(),
        "c.yaml",
        &format!("state_dir: {}\n", state.display()),
    );
    let out = run(&["join-token", "--config", &p]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("gmj1."), "{text}");
    let token = JoinToken::parse(&text).unwrap();
    for f in ["tls-key.pem", "join-secret"] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let again = run(&["join-token", "--config", &p]);
    assert_eq!(
        JoinToken::parse(&String::from_utf8(again.stdout).unwrap()).unwrap(),
        token
    );
}

/// SPEC §4.1 rotation: `join-token --rotate` prints a new token with the same certificate
/// pin, keeps the secret file private, and plain `join-token` prints the new one from then
/// on.
#[test]
fn join_token_rotate_replaces_the_secret_and_keeps_the_pin() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let p = write(
        d.path(),
        "c.yaml",
        &format!("state_dir: {}\n", state.display()),
    );
    let token = |out: Output| {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        JoinToken::parse(&String::from_utf8(out.stdout).unwrap()).unwrap()
    };
    let first = token(run(&["join-token", "--config", &p]));
    let out = run(&["join-token", "--rotate", "--config", &p]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("replaced the join secret"), "{err}");
    let rotated = token(out);
    assert_ne!(rotated.secret, first.secret);
    assert_eq!(rotated.cert_sha256, first.cert_sha256);
    let mode = std::fs::metadata(state.join("join-secret"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(token(run(&["join-token", "--config", &p])), rotated);
    let again = token(run(&["join-token", "--rotate", "--config", &p]));
    assert!(again.secret != rotated.secret && again.secret != first.secret);
    // On a state dir that does not exist yet, rotating creates the identity.
    let fresh = write(
        d.path(),
        "fresh.yaml",
        &format!("state_dir: {}\n", d.path().join("fresh").display()),
    );
    token(run(&["join-token", "--rotate", "--config", &fresh]));
}

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check-config", "join-token", "--config"] {
        assert!(help.contains(word), "{word}: {help}");
    }
    let out = run(&["join-token", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--rotate"));
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// SPEC §11: starting the daemon with a bad config exits 78 with the reason.
#[test]
fn daemon_with_bad_config_exits_78() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "c.yaml", "max_workers: lots\n");
    let out = run(&["--config", &p]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_workers"));
}

/// Run the daemon on config `p` until it exits (20 s at most): its status and stderr.
fn run_daemon_to_exit(p: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(["--config", p])
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, 20);
    (status, stderr_of(child))
}

/// SPEC §10: a corrupt state file stops the daemon, naming the file and the way out.
#[test]
fn corrupt_state_stops_the_daemon() {
    for (file, content) in [
        (
            "registry.json",
            "gitmirror-state registry v1\n{\"workers\": [tru",
        ),
        ("repos.json", "not a state file\n"),
        (
            "events.log",
            "gitmirror-state events v1\ngarbage\n{\"seq\":1}\n",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.yaml", &daemon_config(d.path()));
        std::fs::create_dir_all(d.path().join("state")).unwrap();
        let bad = d.path().join("state").join(file);
        std::fs::write(&bad, content).unwrap();
        let (status, err) = run_daemon_to_exit(&p);
        assert!(!status.success(), "{file}: started anyway");
        assert!(err.contains(&bad.display().to_string()), "{file}: {err}");
        assert!(
            err.contains("move it aside") || err.contains("mv "),
            "{file}: {err}"
        );
    }
}

/// Issue 11 part 4: a damaged join secret (truncated, or holding what no token can carry)
/// stops the daemon at start, naming the file and the way out, instead of refusing the
/// first worker.
#[test]
fn issue11_damaged_join_secret_stops_the_daemon_at_start() {
    for content in [
        "abc\n",
        "a valid-looking secret with spaces in it\n",
        "\u{0}\u{1}garbage",
    ] {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.yaml", &daemon_config(d.path()));
        let state = d.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let secret = state.join("join-secret");
        std::fs::write(&secret, content).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (status, err) = run_daemon_to_exit(&p);
        assert!(!status.success(), "{content:?}: started anyway");
        assert!(
            err.contains(&secret.display().to_string()) && err.contains("damaged"),
            "{content:?}: {err}"
        );
        assert!(err.contains("remove it"), "{content:?}: {err}");
    }
}

/// SPEC §11 systemd: READY=1 with a status line only once serving, WATCHDOG=1 from the
/// main loop, and SIGTERM → STOPPING=1 and a clean exit within 10 s with state saved.
#[test]
fn notify_ready_watchdog_and_graceful_stop() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "c.yaml", &daemon_config(d.path()));
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", &p])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let mut recv = |seen: &mut Vec<String>| {
        let n = sock.recv(&mut buf).unwrap_or(0);
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(m.clone());
        m
    };
    let ready = loop {
        let m = recv(&mut seen);
        if m.contains("READY=1") {
            break m;
        }
        assert!(!m.is_empty(), "no READY=1: {seen:?}");
    };
    assert!(
        ready.contains("STATUS=") && ready.contains("workers alive"),
        "{ready}"
    );
    assert!(
        d.path().join("state/tls-key.pem").exists(),
        "ready after state"
    );
    loop {
        let m = recv(&mut seen);
        if m.contains("WATCHDOG=1") {
            break;
        }
        assert!(!m.is_empty(), "no WATCHDOG=1: {seen:?}");
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let m = recv(&mut seen);
        if m.contains("STOPPING=1") {
            break;
        }
        assert!(!m.is_empty(), "no STOPPING=1: {seen:?}");
    }
    let status = wait_exit(&mut child, 10);
    assert!(status.success(), "{status:?}: {}", stderr_of(child));
    assert!(t.elapsed() < Duration::from_secs(10));
    for f in ["registry.json", "repos.snapshot", "repos.journal", "events"] {
        assert!(d.path().join("state").join(f).exists(), "{f} saved");
    }
}
