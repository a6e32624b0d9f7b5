//! SPEC §16, issue 15: private upstreams. Real `git http-backend` behind a loopback HTTP
//! server that demands Basic or Bearer auth, a second server that logs what reaches it,
//! and the worker's own fetch path and run loop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::harness::{Inbox, config, fetch_section, start};
use common::http::HttpGit;
use common::{Upstream, local_refs, logs};
use gitmirror_common::credentials::{AuthScheme, CredentialSpec, Credentials};
use gitmirror_common::units::FreeSpace;
use gitmirror_wire::{FailureClass, FetchResult};
use gitmirror_worker::mirror::Mirrors;
use gitmirror_worker::{Redirects, UpstreamPolicy};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Recognisable secrets: no answer, log line, state file or argument list may hold them.
const TOKEN: &str = "gm-secret-7f3a9c-right";
const WRONG: &str = "gm-secret-7f3a9c-wrong";

fn basic(token: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("git:{token}"))
    )
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Renamed into place, as an operator's tooling (or a secret manager) would.
    std::fs::rename(&tmp, &p).unwrap();
    p
}

fn entry(prefix: &str, token_file: &Path) -> CredentialSpec {
    CredentialSpec {
        prefix: prefix.into(),
        username: None,
        scheme: None,
        token_file: Some(token_file.into()),
        ssh_key_file: None,
        known_hosts_file: None,
        allow_plain_http: true,
    }
}

fn mirrors(root: &Path, specs: &[CredentialSpec], redirects: Redirects) -> Mirrors {
    let m = Mirrors::new(root.join("repos")).with_upstream(UpstreamPolicy {
        redirects,
        ..UpstreamPolicy::default()
    });
    m.set_credentials(Arc::new(Credentials::load(specs, "credentials").unwrap()));
    m.prepare().unwrap();
    m
}

fn no_interrupt() -> AtomicBool {
    AtomicBool::new(false)
}

/// SPEC §16, §7.3: a private upstream behind Basic auth is mirrored with its token; a
/// wrong token is class `auth` naming the entry's `match` (never the token); without an
/// entry the same 401 stays `gone` (GitHub answers 401 for a missing public repo).
#[test]
fn spec_16_basic_token_mirrors_and_a_refused_one_is_auth_not_gone() {
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "private");
    let server = HttpGit::start(up.path());
    server.require_authorization(&basic(TOKEN));
    let url = server.url("private");
    let secrets = tempfile::tempdir().unwrap();
    let prefix = format!("http://127.0.0.1:{}/", server.port);

    let root = tempfile::tempdir().unwrap();
    let none = mirrors(root.path(), &[], Redirects::SameHost);
    let f = none
        .clone_new("p/private/a", &url, &no_interrupt())
        .unwrap_err();
    assert_eq!(f.class, FailureClass::Gone, "{f}");

    let wrong = secret_file(secrets.path(), "wrong", WRONG);
    let m = mirrors(root.path(), &[entry(&prefix, &wrong)], Redirects::SameHost);
    let f = m
        .clone_new("p/private/b", &url, &no_interrupt())
        .unwrap_err();
    assert_eq!(f.class, FailureClass::Auth, "{f}");
    assert!(f.message.contains(&format!("credential {prefix}")), "{f}");
    assert!(!f.message.contains("gm-secret"), "{f}");
    assert!(!root.path().join("repos/p/private/b.git").exists());

    let right = secret_file(secrets.path(), "right", TOKEN);
    let m = mirrors(root.path(), &[entry(&prefix, &right)], Redirects::SameHost);
    let cloned = m.clone_new("p/private/c", &url, &no_interrupt()).unwrap();
    assert_eq!(cloned.refs, local_refs(&upstream.dir));
    // A fetch of the existing mirror sends it too.
    m.fetch("p/private/c", &url, &no_interrupt()).unwrap();
    assert!(
        server
            .seen()
            .iter()
            .any(|s| s.status == 200 && s.authorization.as_deref() == Some(&basic(TOKEN)))
    );
}

/// SPEC §16, §18: with a credential for the host, GitHub's answer to a spent quota (403
/// with `x-ratelimit-remaining: 0`) stays a rate limit with its wait, not `auth`: the
/// token is right, and only a rate limit pauses the host instead of failing the repo.
#[test]
fn spec_16_a_spent_quota_with_a_credential_is_a_rate_limit_not_auth() {
    let up = tempfile::tempdir().unwrap();
    Upstream::create(up.path(), "quota");
    let server = HttpGit::start(up.path());
    server.rate_limit_like_github(Duration::from_secs(120));
    let url = server.url("quota");
    let secrets = tempfile::tempdir().unwrap();
    let prefix = format!("http://127.0.0.1:{}/", server.port);
    let token = secret_file(secrets.path(), "token", TOKEN);
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), &[entry(&prefix, &token)], Redirects::SameHost);
    let f = m.clone_new("p/quota/a", &url, &no_interrupt()).unwrap_err();
    assert_eq!(f.class, FailureClass::RateLimited, "{f}");
    assert!(
        f.retry_after.is_some_and(|d| d > Duration::from_secs(60)),
        "{f:?}"
    );
}

/// SPEC §16: `scheme: bearer` sends `Authorization: Bearer <token>`, and the longest
/// matching prefix decides which token goes.
#[test]
fn spec_16_bearer_token_and_longest_prefix_wins() {
    let up = tempfile::tempdir().unwrap();
    Upstream::create(up.path(), "private");
    let server = HttpGit::start(up.path());
    server.require_authorization(&format!("Bearer {TOKEN}"));
    let secrets = tempfile::tempdir().unwrap();
    let wrong = secret_file(secrets.path(), "host-wide", WRONG);
    let right = secret_file(secrets.path(), "repo", TOKEN);
    let host = format!("http://127.0.0.1:{}/", server.port);
    let specific = CredentialSpec {
        scheme: Some(AuthScheme::Bearer),
        ..entry(&format!("{host}private.git"), &right)
    };
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(
        root.path(),
        &[entry(&host, &wrong), specific],
        Redirects::SameHost,
    );
    m.clone_new("p/private/p", &server.url("private"), &no_interrupt())
        .unwrap();
}

/// SPEC §16: an `http://` upstream gets no token unless the entry sets
/// `allow_plain_http`; the refusal is `auth` and says why the token was withheld.
#[test]
fn spec_16_plain_http_gets_no_token_without_allow_plain_http() {
    let up = tempfile::tempdir().unwrap();
    Upstream::create(up.path(), "private");
    let server = HttpGit::start(up.path());
    server.require_authorization(&basic(TOKEN));
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", TOKEN);
    let spec = CredentialSpec {
        allow_plain_http: false,
        ..entry(&format!("http://127.0.0.1:{}/", server.port), &token)
    };
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), &[spec], Redirects::SameHost);
    let f = m
        .clone_new("p/private/p", &server.url("private"), &no_interrupt())
        .unwrap_err();
    assert_eq!(f.class, FailureClass::Auth, "{f}");
    assert!(f.message.contains("allow_plain_http"), "{f}");
    let seen = server.seen();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.authorization.is_none()), "{seen:?}");
}

/// SPEC §16, issue 15 "redirects": with `fetch.redirects: any`, an upstream that
/// redirects to another host (another port, by name) is followed, but the token never
/// reaches that host; the first host got it.
#[test]
fn spec_16_redirect_to_another_host_gets_no_token() {
    let up = tempfile::tempdir().unwrap();
    Upstream::create(up.path(), "abc");
    let (a, b) = (HttpGit::start(up.path()), HttpGit::start(up.path()));
    a.redirect_to(&format!("http://localhost:{}", b.port));
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", TOKEN);
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(
        root.path(),
        &[entry(&format!("http://127.0.0.1:{}/", a.port), &token)],
        Redirects::Any,
    );
    // b is public: the clone succeeds there, without the token.
    m.clone_new("a/abc/abc", &a.url("abc"), &no_interrupt())
        .unwrap();
    assert!(
        a.seen()
            .iter()
            .all(|s| s.authorization.as_deref() == Some(&basic(TOKEN))),
        "{:?}",
        a.seen()
    );
    let at_b = b.seen();
    assert!(!at_b.is_empty(), "the redirect was followed");
    assert!(
        at_b.iter().all(|s| s.authorization.is_none()),
        "the other host got a token: {at_b:?}"
    );
}

/// SPEC §16: a token file readable by others stops the worker at start, naming the
/// file (`check-config` exits 78 with it).
#[test]
fn spec_16_world_readable_token_file_refuses_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("open-token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let join = gitmirror_wire::JoinToken::new(b"a coordinator certificate", "c2VjcmV0");
    let cfg = dir.path().join("worker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "join_token: {}\nmirror_dir: {}\nstate_dir: {}\ncredentials:\n  - match: https://git.example.org/\n    token_file: {}\n",
            join.format(),
            dir.path().join("repos").display(),
            dir.path().join("state").display(),
            token.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitmirror-worker"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&token.display().to_string())
            && stderr.contains("credentials[0].token_file"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

/// SPEC §16: the whole worker. A refused token is reported `auth` (not `gone`) and is
/// retried at `max_interval`; writing the right token into the file makes the worker
/// fetch the repo again at once, without a restart or SIGHUP. Then the leak check
/// (issue 15 "must show"): neither token is in any log line, outcome, state file or
/// the argument list of any process on the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_16_rotated_token_is_used_without_restart_and_never_leaks() {
    let logs = logs::capture();
    let up = tempfile::tempdir().unwrap();
    Upstream::create(up.path(), "private");
    let server = HttpGit::start(up.path());
    server.require_authorization(&basic(TOKEN));
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", WRONG);
    let prefix = format!("http://127.0.0.1:{}/", server.port);
    let creds = Credentials::load(&[entry(&prefix, &token)], "credentials").unwrap();

    let coord = common::coord::FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch_section(Duration::from_millis(400), Duration::from_secs(3600)),
        FreeSpace::Bytes(0),
    )
    .with_credentials(Arc::new(creds));
    let worker = start(cfg);
    let mut inbox = Inbox::accept(&coord, 0).await;
    let id = "p/private/private";
    inbox.assign(&[(id, &server.url("private"))]).await;
    let (_, refused) = inbox
        .outcome_where("the refused clone", Duration::from_secs(30), |o| {
            o.repo == id
        })
        .await;
    let FetchResult::Failed { class, message } = &refused.result else {
        panic!("{:?}", refused.result);
    };
    assert_eq!(*class, FailureClass::Auth, "{message}");
    assert!(message.contains(&prefix), "{message}");
    let wait = refused.next_due_ms - refused.finished_ms;
    assert!(
        wait >= 3_000_000,
        "retried at max_interval (1 h), got {wait} ms"
    );

    secret_file(secrets.path(), "token", TOKEN);
    let (_, cloned) = inbox
        .outcome_where(
            "the clone with the new token",
            Duration::from_secs(40),
            |o| o.repo == id && o.result == FetchResult::Cloned,
        )
        .await;
    assert_eq!(cloned.repo, id);

    let mut found: Vec<String> = Vec::new();
    for line in logs.lines_with(&["gm-secret"]) {
        found.push(format!("log: {line}"));
    }
    for o in [&refused, &cloned] {
        if format!("{o:?}").contains("gm-secret") {
            found.push(format!("outcome: {o:?}"));
        }
    }
    scan_files(&root.path().join("state"), &mut found);
    scan_cmdlines(&mut found);
    worker.stop().await;
    scan_files(&root.path().join("state"), &mut found);
    assert!(found.is_empty(), "secret found: {found:?}");
}

fn scan_files(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            scan_files(&p, found);
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(9).any(|w| w == b"gm-secret")
        {
            found.push(format!("state file {}", p.display()));
        }
    }
}

/// Every process's arguments (the worker's children included).
fn scan_cmdlines(found: &mut Vec<String>) {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(e.path().join("cmdline"))
            && bytes.windows(9).any(|w| w == b"gm-secret")
        {
            found.push(format!(
                "/proc/{}/cmdline: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&bytes)
            ));
        }
    }
}

/// A real `sshd` on a loopback port that lets the current user in with one key only.
struct Sshd {
    child: std::process::Child,
    port: u16,
    /// `known_hosts` naming this server's real host key.
    known_hosts: PathBuf,
    /// The authorised client key (mode 0600).
    key: PathBuf,
    user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "gitmirror-test",
            "-f",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// `None` (with the reason printed) when sshd cannot run here.
    fn start(dir: &Path) -> Option<Self> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(sshd) = sshd else {
            // scripts/test.sh installs it and sets this: the suite must not skip it.
            assert!(
                std::env::var_os("GITMIRROR_REQUIRE_SSHD").is_none(),
                "GITMIRROR_REQUIRE_SSHD is set but there is no sshd (apt-get install openssh-server)"
            );
            eprintln!("SKIPPED: no sshd here (Debian: apt-get install openssh-server)");
            return None;
        };
        let host_key = dir.join("host_key");
        let key = dir.join("deploy_key");
        keygen(&host_key);
        keygen(&key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("deploy_key.pub"), &authorized).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let mut parts = host_pub.split_whitespace();
        let (kind, blob) = (parts.next().unwrap(), parts.next().unwrap());
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {blob}\n")).unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nAcceptEnv GIT_PROTOCOL\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        // Debian's sshd wants its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let check = std::process::Command::new(&sshd)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .unwrap();
        if !check.status.success() {
            eprintln!(
                "SKIPPED: sshd cannot run here: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            return None;
        }
        let child = std::process::Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        common::wait_for("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let user = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_owned();
        Some(Self {
            child,
            port,
            known_hosts,
            key,
            user,
        })
    }

    fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    fn entry(&self, key: &Path, known_hosts: &Path) -> CredentialSpec {
        CredentialSpec {
            prefix: format!("ssh://127.0.0.1:{}/", self.port),
            username: None,
            scheme: None,
            token_file: None,
            ssh_key_file: Some(key.into()),
            known_hosts_file: Some(known_hosts.into()),
            allow_plain_http: false,
        }
    }
}

/// SPEC §16, issue 15 "must show": over a real sshd on loopback, the deploy key with the
/// server's host key in `known_hosts_file` mirrors the repo; a key the server does not
/// accept is class `auth` naming the entry; an unknown host key is `auth` and nothing
/// is fetched.
#[test]
fn spec_16_ssh_deploy_key_with_strict_host_keys() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(dir.path()) else {
        return;
    };
    let up = tempfile::tempdir().unwrap();
    let upstream = Upstream::create(up.path(), "private");
    let url = sshd.url(&upstream.dir);
    let root = tempfile::tempdir().unwrap();

    let m = mirrors(
        root.path(),
        &[sshd.entry(&sshd.key, &sshd.known_hosts)],
        Redirects::SameHost,
    );
    let cloned = m.clone_new("s/private/a", &url, &no_interrupt()).unwrap();
    assert_eq!(cloned.refs, local_refs(&upstream.dir));
    m.fetch("s/private/a", &url, &no_interrupt()).unwrap();

    // A key the server does not know.
    let other = dir.path().join("other_key");
    keygen(&other);
    let m = mirrors(
        root.path(),
        &[sshd.entry(&other, &sshd.known_hosts)],
        Redirects::SameHost,
    );
    let f = m
        .clone_new("s/private/b", &url, &no_interrupt())
        .unwrap_err();
    assert_eq!(f.class, FailureClass::Auth, "{f}");
    assert!(
        f.message
            .contains(&format!("credential ssh://127.0.0.1:{}/", sshd.port)),
        "{f}"
    );

    // The right key, but the server's host key is not the one we know.
    let wrong_hosts = dir.path().join("wrong_known_hosts");
    let impostor = dir.path().join("impostor");
    keygen(&impostor);
    let impostor_pub = std::fs::read_to_string(dir.path().join("impostor.pub")).unwrap();
    let mut parts = impostor_pub.split_whitespace();
    std::fs::write(
        &wrong_hosts,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let m = mirrors(
        root.path(),
        &[sshd.entry(&sshd.key, &wrong_hosts)],
        Redirects::SameHost,
    );
    let f = m
        .clone_new("s/private/c", &url, &no_interrupt())
        .unwrap_err();
    assert_eq!(f.class, FailureClass::Auth, "{f}");
    assert!(!root.path().join("repos/s/private/c.git").exists());
}
