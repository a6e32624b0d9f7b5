//! SPEC §16, issue 15 "must show": the leak test with the real binaries. A coordinator
//! with an embedded worker mirrors a private upstream (`git http-backend` behind Basic
//! auth on loopback) through `credentials`: refused with a wrong token (class `auth`,
//! the entry named), mirrored once the token file is rewritten (no restart), then the
//! coordinator is killed with SIGKILL and started again. The recognisable token is then
//! searched in the log, every API answer, the metrics, the pages, the events, every
//! state file and the argument list of every process: it is nowhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The worker's test server (http-backend behind optional auth), shared rather than copied.
#[allow(dead_code)]
#[path = "../../gitmirror-worker/tests/common/http.rs"]
mod httpgit;

use gitmirror_tests::daemons::Coordinator;
use gitmirror_tests::{TestDir, git, wait_for, yaml_path};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "gm-leak-3e9b1f-token";
const WRONG: &str = "gm-leak-3e9b1f-wrong";
const NEEDLE: &[u8] = b"gm-leak-3e9b1f";

fn write_token(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn basic(token: &str) -> String {
    // base64 by hand: the tests crate has no base64 dependency.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("git:{token}").into_bytes();
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

fn contains(bytes: &[u8]) -> bool {
    bytes.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

fn scan_files(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            scan_files(&p, found);
        } else if std::fs::read(&p).is_ok_and(|b| contains(&b)) {
            found.push(format!("file {}", p.display()));
        }
    }
}

fn scan_cmdlines(found: &mut Vec<String>) {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(e.path().join("cmdline"))
            && contains(&bytes)
        {
            found.push(format!(
                "/proc/{}/cmdline: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&bytes)
            ));
        }
    }
}

fn scan_http(c: &Coordinator, id: &str, found: &mut Vec<String>) {
    for path in [
        "/api/status".to_owned(),
        "/api/workers".to_owned(),
        "/api/workers/0".to_owned(),
        "/api/repos".to_owned(),
        format!("/api/repos/{id}"),
        format!("/api/repos/{id}/refs"),
        "/api/events?since=0".to_owned(),
        "/api/index".to_owned(),
        "/metrics".to_owned(),
        "/".to_owned(),
        format!("/repos/{id}"),
    ] {
        match c.get(&path) {
            Ok((_, body)) if contains(body.as_bytes()) => found.push(format!("GET {path}: {body}")),
            Ok(_) => {}
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
}

/// SPEC §16, issue 15: mirrors, failures, a rotation and a kill -9, and the secret is in
/// no log line, API answer, page, metric, event, state file or process argument list.
#[test]
fn spec_16_secret_leaks_nowhere_through_failures_rotation_and_kill_9() {
    let t = TestDir::new("private");
    let up = t.sub("upstream");
    let repo = up.join("private");
    std::fs::create_dir_all(&repo).unwrap();
    git(["-C", repo.to_str().unwrap(), "init", "-q", "-b", "main"]);
    std::fs::write(repo.join("f"), "x\n").unwrap();
    git(["-C", repo.to_str().unwrap(), "add", "-A"]);
    git([
        "-C",
        repo.to_str().unwrap(),
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "commit",
        "-q",
        "-m",
        "one",
    ]);
    let server = httpgit::HttpGit::start(&up);
    server.require_authorization(&basic(TOKEN));
    let prefix = format!("http://127.0.0.1:{}/", server.port);

    let index = t.sub("index");
    let id = "p/private/private";
    std::fs::create_dir_all(index.join("p/private")).unwrap();
    std::fs::write(index.join(id), format!("url: {}\n", server.url("private"))).unwrap();
    let token = t.path().join("token");
    write_token(&token, WRONG);
    let mirrors = t.path().join("mirrors");
    let c = Coordinator::with_yaml(&t.sub("coord"), |udp, http, state| {
        format!(
            "{}local_worker:\n  mirror_dir: {}\n  fetch:\n    min_interval: 1s\n    max_interval: 1h\n\
             credentials:\n  - match: {prefix}\n    token_file: {}\n    allow_plain_http: true\n",
            Coordinator::standard_yaml(udp, http, state, &index),
            yaml_path(&mirrors),
            yaml_path(&token),
        )
    });
    c.start_ready();

    let refused = wait_for(Duration::from_secs(60), "the auth failure", || {
        let r = c.repo(id)?;
        match r["last_error"]["class"].as_str() {
            Some("auth") => Ok(r),
            _ => Err(r.to_string()),
        }
    });
    assert_eq!(refused["state"], "failing", "{refused}");
    assert_eq!(
        refused["last_error"]["credential"],
        prefix.as_str(),
        "{refused}"
    );

    // Rotated on disk: fetched again without a restart or SIGHUP.
    write_token(&token, TOKEN);
    wait_for(Duration::from_secs(60), "the mirror after rotation", || {
        let r = c.repo(id)?;
        if r["state"] == "mirrored" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });

    let mut found = Vec::new();
    scan_cmdlines(&mut found);
    scan_http(&c, id, &mut found);

    c.kill();
    c.start_ready();
    wait_for(Duration::from_secs(60), "the mirror after kill -9", || {
        let r = c.repo(id)?;
        if r["state"] == "mirrored" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    scan_cmdlines(&mut found);
    scan_http(&c, id, &mut found);
    if contains(c.proc.log().as_bytes()) {
        found.push("the coordinator's log".into());
    }
    scan_files(&c.state_dir, &mut found);
    scan_files(&mirrors, &mut found);
    assert!(found.is_empty(), "the secret leaked: {found:#?}");
    // The token was used: the upstream saw it, and only from the worker.
    assert!(
        server
            .seen()
            .iter()
            .any(|s| s.status == 200 && s.authorization.as_deref() == Some(basic(TOKEN).as_str()))
    );
}
