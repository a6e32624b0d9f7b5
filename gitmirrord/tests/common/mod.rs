//! Shared pieces of the coordinator's in-process tests: a coordinator started with
//! `run` on `127.0.0.1:0`, a hand-written worker speaking `wire` over QUIC, and a raw
//! HTTP client. Conditions are polled with a deadline, never slept for.
#![allow(dead_code)]

use gitmirror_common::trust::{Identity, SERVER_NAME, WorkerCert, client_config, transport};
use gitmirror_wire::{
    CoordMsg, Enrolled, HeldRepo, Hello, Holdings, JoinToken, PROTOCOL_VERSION, WorkerMsg, decode,
    encode_frame,
};
use gitmirrord::{Config, ControlHandle, Listeners};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

pub const REPOS: [&str; 3] = ["a/abc/abc", "l/linux/linux-next", "z/zlib/zlib"];

/// Run git in `dir` with a fixed identity and no system or signing config; its trimmed
/// stdout. Fails the test when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.quotepath=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How long an answer that must not wait for a deadline may take: half the server's
/// 10 s head-read deadline (`gitmirrord::http::DEADLINE`), a third of the 30 s and a
/// quarter of the 20 s long-polls the tests ask for. Later than this, the server waited
/// for a deadline; sooner, it may only have waited for the CPU of a loaded machine (these
/// checks are about what the server waits for, not about its speed).
#[allow(dead_code)] // not every test binary uses it
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// Poll `check` until it returns `Some`, or fail after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write a plain-directory index holding [`REPOS`].
pub fn write_index(dir: &Path) {
    for id in REPOS {
        let p = dir.join(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let name = id.rsplit('/').next().unwrap();
        std::fs::write(&p, format!("url: https://example.org/{name}.git\n")).unwrap();
    }
}

pub struct Coordinator {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub token: JoinToken,
    pub handle: ControlHandle,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Coordinator {
    /// Start a coordinator in a fresh temp dir; `extra` is appended to its YAML config.
    pub async fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> Self {
        gitmirror_common::install_crypto_provider();
        let index = dir.path().join("index-src");
        write_index(&index);
        let state_dir = dir.path().join("state");
        let text = format!(
            "state_dir: {}\nindexes: [{{name: test, url: {}, poll_interval: 1s}}]\nliveness: {{keepalive_interval: 1s, suspect_after: 3s, dead_after: 4s}}\n{extra}",
            state_dir.display(),
            index.display()
        );
        let cfg = Config::parse(&dir.path().join("gitmirrord.yaml"), &text).unwrap();
        std::fs::create_dir_all(&state_dir).unwrap();
        let token = Identity::load_or_create(&state_dir).unwrap().join_token();
        let quic_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let http_sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let quic = quic_sock.local_addr().unwrap();
        let http = http_sock.local_addr().unwrap();
        let (handle, ctl) = gitmirrord::control();
        let task = tokio::spawn(gitmirrord::run(
            cfg,
            Listeners {
                quic: quic_sock,
                http: http_sock,
                hooks: None,
            },
            ctl,
        ));
        let c = Coordinator {
            dir,
            state_dir,
            http,
            quic,
            token,
            handle,
            task,
        };
        eventually(10, "/healthz", || async {
            (c.get("/healthz").await.0 == 200).then_some(())
        })
        .await;
        c
    }

    /// Wait until the index's repos are loaded.
    pub async fn wait_for_repos(&self) {
        eventually(10, "the index to load", || async {
            let (_, v) = self.get_json("/api/repos").await;
            (v["total"] == REPOS.len()).then_some(())
        })
        .await;
    }

    pub async fn stop(self) -> (tempfile::TempDir, anyhow::Result<()>) {
        self.handle.shutdown();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run stops within 10 s")
            .unwrap();
        (self.dir, r)
    }

    pub async fn request(&self, raw: &[u8]) -> (u16, String) {
        http_raw(self.http, raw).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, body) = self.get(path).await;
        (
            s,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
        )
    }

    /// A change as a local client sends it: `Host` names the listener (SPEC §9).
    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        self.post_with(path, &[]).await
    }

    /// A change with extra header lines (`"Origin: …"`) after a `Host` naming the listener,
    /// unless one of them is a `Host` line itself.
    pub async fn post_with(&self, path: &str, headers: &[&str]) -> (u16, serde_json::Value) {
        let mut head = format!("POST {path} HTTP/1.1\r\n");
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        {
            head.push_str(&format!("Host: {}\r\n", self.http));
        }
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("Content-Length: 0\r\n\r\n");
        let (s, body) = self.request(head.as_bytes()).await;
        (
            s,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
        )
    }

    pub async fn worker_state(&self, id: u32) -> String {
        let (_, v) = self.get_json(&format!("/api/workers/{id}")).await;
        v["state"].as_str().unwrap_or_default().to_owned()
    }
}

/// Send raw bytes, read the whole answer (the server closes after one response).
pub async fn http_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    if s.write_all(raw).await.is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The response head of a raw request.
pub async fn http_head(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(h, _)| h.to_owned())
        .unwrap_or(text)
}

pub fn hello(uuid: Uuid, secret: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        secret: secret.into(),
        uuid,
        previous_id: None,
        name: format!("w-{}", uuid.as_u128()),
        weight: 1.0,
        software: "test-worker".into(),
        serve_url_base: Some("git://mirror.example.org/".into()),
    }
}

/// A hand-written worker: one QUIC connection, one bi stream, `wire` frames.
pub struct TestWorker {
    pub endpoint: Endpoint,
    pub conn: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
}

/// Certificates the coordinators of this test process issued, by pinned coordinator
/// certificate and uuid: a test worker reconnecting presents its own, as a real one does
/// (SPEC §17).
type CertsByPinAndUuid = std::collections::HashMap<([u8; 32], Uuid), WorkerCert>;
static CERTS: std::sync::LazyLock<std::sync::Mutex<CertsByPinAndUuid>> =
    std::sync::LazyLock::new(Default::default);

/// The certificate `uuid` enrolled with at the coordinator `token` pins, if any.
pub fn cert_of(token: &JoinToken, uuid: Uuid) -> Option<WorkerCert> {
    CERTS
        .lock()
        .unwrap()
        .get(&(token.cert_sha256, uuid))
        .cloned()
}

/// Keep what an `Enrolled` answer gave `uuid`.
pub fn remember(token: &JoinToken, uuid: Uuid, e: &Enrolled) {
    CERTS.lock().unwrap().insert(
        (token.cert_sha256, uuid),
        WorkerCert {
            cert_pem: e.cert_pem.clone(),
            key_pem: e.key_pem.clone(),
        },
    );
}

/// The worker id of a handshake answer (`Welcome`, or `Enrolled`, whose certificate is
/// remembered for `uuid`); `None` for anything else.
pub fn welcomed(token: &JoinToken, uuid: Uuid, msg: &CoordMsg) -> Option<u32> {
    match msg {
        CoordMsg::Welcome(w) => Some(w.worker_id),
        CoordMsg::Enrolled(e) => {
            remember(token, uuid, e);
            Some(e.welcome.worker_id)
        }
        _ => None,
    }
}

pub async fn quic_connect(
    addr: SocketAddr,
    token: &JoinToken,
) -> Result<(Endpoint, Connection), String> {
    quic_connect_with(addr, token, None).await
}

/// Connect presenting `cert` (a worker's certificate) when given.
pub async fn quic_connect_with(
    addr: SocketAddr,
    token: &JoinToken,
    cert: Option<&WorkerCert>,
) -> Result<(Endpoint, Connection), String> {
    let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    let cfg = client_config(
        token,
        cert,
        transport(Duration::from_secs(1), Duration::from_secs(3)).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect_with(cfg, addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

impl TestWorker {
    /// Connect without a certificate and open the stream (no Hello yet).
    pub async fn open(addr: SocketAddr, token: &JoinToken) -> Self {
        Self::open_with(addr, token, None).await
    }

    /// Connect as `uuid`: with the certificate it enrolled with, if it did.
    pub async fn open_as(addr: SocketAddr, token: &JoinToken, uuid: Uuid) -> Self {
        Self::open_with(addr, token, cert_of(token, uuid).as_ref()).await
    }

    pub async fn open_with(addr: SocketAddr, token: &JoinToken, cert: Option<&WorkerCert>) -> Self {
        let (endpoint, conn) = quic_connect_with(addr, token, cert).await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        TestWorker {
            endpoint,
            conn,
            send,
            recv,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.send.write_all(bytes).await.map_err(|e| e.to_string())
    }

    pub async fn send(&mut self, msg: &WorkerMsg) -> Result<(), String> {
        let frame = encode_frame(msg).unwrap();
        self.send_raw(&frame).await
    }

    /// The next message but the peer plane's settings (protocol 7: `PeerPlane` follows
    /// every `Welcome`; tests of it use [`TestWorker::recv_any`]), or why the stream ended.
    pub async fn recv(&mut self) -> Result<CoordMsg, String> {
        loop {
            match self.recv_any().await? {
                CoordMsg::PeerPlane(_) => {}
                m => return Ok(m),
            }
        }
    }

    /// The next message, whatever it is, or why the stream ended.
    pub async fn recv_any(&mut self) -> Result<CoordMsg, String> {
        let read = gitmirror_common::frames::read(&mut self.recv, gitmirror_wire::MAX_FRAME);
        let body = tokio::time::timeout(Duration::from_secs(15), read)
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the coordinator ended the stream".to_string())?;
        decode(&body).map_err(|e| e.to_string())
    }

    /// Hello → Welcome; returns the id.
    pub async fn join(addr: SocketAddr, token: &JoinToken, uuid: Uuid) -> (Self, u32) {
        Self::join_speaking(addr, token, uuid, PROTOCOL_VERSION).await
    }

    /// Hello of protocol `protocol` → Welcome in that version; returns the id.
    pub async fn join_speaking(
        addr: SocketAddr,
        token: &JoinToken,
        uuid: Uuid,
        protocol: u32,
    ) -> (Self, u32) {
        let mut w = Self::open_as(addr, token, uuid).await;
        let mut h = hello(uuid, &token.secret);
        h.protocol = protocol;
        w.send(&WorkerMsg::Hello(h)).await.unwrap();
        let reply = w.recv().await.unwrap();
        match &reply {
            CoordMsg::Welcome(welcome) => assert_eq!(welcome.protocol, protocol),
            CoordMsg::Enrolled(e) => assert_eq!(e.welcome.protocol, protocol),
            other => panic!("expected Welcome, got {other:?}"),
        }
        let id = welcomed(token, uuid, &reply).unwrap();
        (w, id)
    }

    pub async fn holdings(&mut self, repos: Vec<HeldRepo>) {
        self.send(&WorkerMsg::Holdings(Holdings { repos }))
            .await
            .unwrap();
    }

    /// Wait for the connection to be closed; returns its close error text.
    pub async fn closed(&self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.conn.closed())
            .await
            .map(|e| e.to_string())
            .unwrap_or_else(|_| "not closed".into())
    }
}

/// One request a [`HookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The status it answered.
    pub status: u16,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn seq(&self) -> u64 {
        self.json()["seq"].as_u64().unwrap()
    }
}

/// A webhook receiver on 127.0.0.1 (SPEC §8 tests): records every POST and answers 500 to
/// the first `fail_first` of them, 200 afterwards. Runs on a thread of its own, so it
/// serves sync and async tests alike, and stops when dropped.
pub struct HookReceiver {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HookReceiver {
    pub fn start(fail_first: usize) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Delivery>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i);
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < len {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut seen = seen2.lock().unwrap();
                let status = if seen.len() < fail_first { 500 } else { 200 };
                seen.push(Delivery {
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    status,
                });
                drop(seen);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        HookReceiver { port, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    /// The acknowledged (200) deliveries.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.seen()
            .into_iter()
            .filter(|d| d.status == 200)
            .collect()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A hex HMAC-SHA256, computed independently of the coordinator's code.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An outcome: cloned or fetched, with the given ref changes.
pub fn outcome(
    report_id: u64,
    repo: &str,
    result: gitmirror_wire::FetchResult,
    changes: &[(&str, Option<&str>, Option<&str>)],
) -> gitmirror_wire::Outcome {
    gitmirror_wire::Outcome {
        report_id,
        repo: repo.into(),
        url: format!(
            "https://example.org/{}.git",
            repo.rsplit('/').next().unwrap()
        ),
        finished_ms: gitmirror_common::now_ms(),
        duration_ms: 1500,
        result,
        changes: changes
            .iter()
            .map(|(n, o, w)| gitmirror_wire::RefChange {
                name: (*n).into(),
                old: o.map(Into::into),
                new: w.map(Into::into),
            })
            .collect(),
        ref_count: changes.len() as u32,
        // The changes name every ref of these test repos: the refs after are their new sides.
        refs_digest: gitmirror_wire::refs::digest(
            changes.iter().filter_map(|(n, _, w)| Some((*n, (*w)?))),
        ),
        next_due_ms: gitmirror_common::now_ms() + 60_000,
    }
}

impl TestWorker {
    /// Send outcomes and wait for their acknowledgement (skipping other messages).
    pub async fn report(&mut self, outcomes: Vec<gitmirror_wire::Outcome>) -> u64 {
        let upto = outcomes.iter().map(|o| o.report_id).max().unwrap_or(0);
        self.send(&WorkerMsg::Outcomes(gitmirror_wire::OutcomeBatch {
            outcomes,
        }))
        .await
        .unwrap();
        loop {
            match self.recv().await.unwrap() {
                CoordMsg::OutcomeAck { upto: got } if got >= upto => return got,
                _ => continue,
            }
        }
    }

    /// The next assignment delta (skipping acknowledgements), acknowledged.
    pub async fn next_assign(&mut self) -> gitmirror_wire::AssignDelta {
        loop {
            match self.recv().await.unwrap() {
                CoordMsg::Assign(d) => {
                    self.send(&WorkerMsg::AssignAck { seq: d.seq })
                        .await
                        .unwrap();
                    return d;
                }
                CoordMsg::OutcomeAck { .. }
                | CoordMsg::FetchNow { .. }
                | CoordMsg::Relist { .. } => continue,
                other => panic!("expected Assign, got {other:?}"),
            }
        }
    }
}
