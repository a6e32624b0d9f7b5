//! The peer plane (SPEC §13, issue 12 step S1): workers hand mirrors to each other over
//! QUIC with mutual TLS, instead of cloning again from the upstream.
//!
//! **Serving** ([`PeerServer`]). Listens on `peer_listen` (nothing listens without it),
//! ALPN [`PEER_ALPN`]. The TLS handshake requires a client certificate chained to the
//! fleet's CA; that is only the first gate, since issued certificates never expire and
//! revocation is the coordinator forgetting a fingerprint (plan C3). Each request must
//! then name a repo for which a live grant names the asker's certificate fingerprint
//! ([`Grants`], plan C4: the coordinator pushes them in S2; here a test or the caller
//! does). One bidirectional stream per transfer: a first frame of at most 4 KiB
//! ([`gitmirror_wire::peer`]), read within [`HANDSHAKE_TIMEOUT`], an answer, then
//! `git upload-pack --strict --timeout=N <mirror>` (protocol v2) bridged to the stream,
//! as `git daemon` does, for at most `fetch.timeout`. Bounds: `peer.max_connections`
//! connections, `peer.per_peer` streams per certificate, `peer.serve_concurrency`
//! transfers at once (outside `fetch.concurrency`); what is over a bound is refused
//! (`Busy`), never queued. Serving takes a shared hold on the repo ([`Holds`]); the
//! repo's maintenance takes it exclusively and so waits (a `repack -d` under
//! upload-pack could drop the packs it is reading; plan C18). Bad input closes that one
//! stream with a log line.
//!
//! **Asking** ([`PeerClient`]). Dials a holder by address and *pinned* certificate
//! fingerprint (a server presenting any other certificate fails the handshake), sends
//! the request, and runs gix's fetch over the stream as over a spawned `upload-pack`
//! (`client::git::Connection` in process mode on a blocking bridge, in
//! `spawn_blocking`). The copy goes through [`Mirrors::clone_from_peer`] (a new mirror:
//! `.tmp/`, renamed into place after the checks) or [`Mirrors::fetch_from_peer`] (an
//! older copy: missing objects only, then the refs in one write): either way nothing
//! changes unless the advertised refs hash to the expected SHA-256 and the copy is
//! connected (plan C5).

use crate::mirror::{Failure, Fetched, Mirrors};
use gitmirror_common::trust::WorkerCert;
use gitmirror_wire::FailureClass;
use gitmirror_wire::peer::{
    MAX_PEER_REQUEST, PEER_ALPN, PEER_PROTOCOL, PeerRefusal, PeerReply, PeerRequest, PeerService,
    decode_first, encode_first, first_len, refusal_code,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, Semaphore};

/// From a connection's first packet to its TLS handshake done, and from a stream's
/// opening to its first frame read (both sides).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no traffic for this long is closed: three keepalives missed. A
/// holder killed mid-transfer sends nothing more (no close, no reset), so this is how
/// long its receiver waits before it tries the next holder or the upstream.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest wait for the next bytes from a holder (at most `fetch.timeout`). A holder's
/// `upload-pack` sends a keepalive every 5 s while `pack-objects` prepares a pack
/// (`uploadpack.keepAlive`), so only a stalled or rogue holder is silent this long.
pub const STALL: Duration = Duration::from_secs(120);

/// The server name the client asks for; the certificate is pinned, not named.
const SERVER_NAME: &str = "peer.worker.gitmirror";

/// The worker keys `peer.max_connections`, `peer.per_peer`, `peer.serve_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Connections open at once; more are refused at the QUIC level.
    pub max_connections: usize,
    /// Transfers at once from one asker (one certificate fingerprint).
    pub per_peer: usize,
    /// Transfers served at once (each is an `upload-pack`).
    pub serve_concurrency: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            per_peer: 2,
            serve_concurrency: 4,
        }
    }
}

/// Which askers may fetch which repos from this holder: repo id → asker certificate
/// fingerprint → end of the lease. A grant stands while its lease runs; the coordinator
/// renews it (S2) and revokes it when the assignment moves.
#[derive(Debug, Default)]
pub struct Grants {
    map: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Ended grants are swept when the map grows past this (then twice what is live), so
    /// they cost memory in proportion to the live ones and O(1) amortised per grant.
    sweep_at: Mutex<usize>,
}

/// The map is not swept below this many repos.
const GRANTS_SWEEP_MIN: usize = 1024;

impl Grants {
    /// Let the worker with certificate `fingerprint` fetch `repo` for `lease`.
    pub fn grant(&self, repo: &str, fingerprint: &str, lease: Duration) {
        let now = Instant::now();
        let mut map = self.lock();
        map.entry(repo.to_owned())
            .or_default()
            .insert(fingerprint.to_owned(), now + lease);
        let mut sweep_at = self.sweep_at.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > (*sweep_at).max(GRANTS_SWEEP_MIN) {
            map.retain(|_, askers| {
                askers.retain(|_, until| *until > now);
                !askers.is_empty()
            });
            *sweep_at = map.len() * 2;
        }
    }

    /// Repos with a grant in the map (ended ones not yet swept included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn revoke(&self, repo: &str, fingerprint: &str) {
        let mut map = self.lock();
        if let Some(askers) = map.get_mut(repo) {
            askers.remove(fingerprint);
            if askers.is_empty() {
                map.remove(repo);
            }
        }
    }

    /// Every grant of one certificate (its worker was removed).
    pub fn revoke_fingerprint(&self, fingerprint: &str) {
        self.lock().retain(|_, askers| {
            askers.remove(fingerprint);
            !askers.is_empty()
        });
    }

    /// The coordinator is gone (C4): every grant ends within `lease` from now, sooner if
    /// it was to end sooner anyway.
    pub fn lapse_within(&self, lease: Duration) {
        let end = Instant::now() + lease;
        for askers in self.lock().values_mut() {
            for until in askers.values_mut() {
                *until = (*until).min(end);
            }
        }
    }

    /// A live grant names `fingerprint` for `repo`.
    pub fn allows(&self, repo: &str, fingerprint: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .get(repo)
            .and_then(|askers| askers.get(fingerprint))
            .is_some_and(|until| *until > now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Instant>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-repo holds: serving shares, maintenance excludes (SPEC §7.4 "never two operations
/// on one repo"; fetches do not wait, since they only add objects and move refs).
#[derive(Debug, Default)]
pub struct Holds {
    map: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// A repo being served (shared) or maintained (exclusive); released when dropped.
pub type ServeHold = OwnedRwLockReadGuard<()>;
pub type MaintenanceHold = OwnedRwLockWriteGuard<()>;

impl Holds {
    fn lock_for(&self, repo: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Entries nobody holds go, so the map stays as big as what is in use.
        if map.len() > 64 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(repo.to_owned()).or_default().clone()
    }

    /// A shared hold for serving, unless maintenance holds or waits for the repo.
    pub fn try_serve(&self, repo: &str) -> Option<ServeHold> {
        self.lock_for(repo).try_read_owned().ok()
    }

    /// The exclusive hold maintenance of `repo` runs under: waits until no transfer of it
    /// is being served; new transfers are refused (`Busy`) while it waits or runs.
    pub async fn maintenance(&self, repo: &str) -> MaintenanceHold {
        self.lock_for(repo).write_owned().await
    }

    /// The exclusive hold when free now.
    pub fn try_maintenance(&self, repo: &str) -> Option<MaintenanceHold> {
        self.lock_for(repo).try_write_owned().ok()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_and_key(
    cert: &WorkerCert,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use anyhow::Context;
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading this worker's certificate")?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .context("reading this worker's key")?;
    Ok((chain, key))
}

fn transport(limits: &PeerLimits) -> anyhow::Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT)?));
    // One stream per transfer, at most `per_peer` at once; nothing else (as hostile_wire).
    t.max_concurrent_bidi_streams((limits.per_peer.max(1) as u32).into());
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}

/// The holder's QUIC server configuration: TLS 1.3, ALPN [`PEER_ALPN`] only, a client
/// certificate chained to the fleet's CA required.
fn server_config(
    ca_cert_pem: &str,
    cert: &WorkerCert,
    limits: &PeerLimits,
) -> anyhow::Result<quinn::ServerConfig> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        roots
            .add(ca.context("reading the fleet's CA certificate")?)
            .context("the fleet's CA certificate as a trust anchor")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no fleet CA certificate given");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .context("the peer client certificate verifier")?;
    let (chain, key) = chain_and_key(cert)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("this worker's certificate and key do not match")?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(limits)?);
    Ok(cfg)
}

/// What a [`PeerServer`] needs.
#[derive(Clone)]
pub struct ServeSettings {
    /// `peer_listen`.
    pub listen: SocketAddr,
    /// The fleet's CA certificate (PEM): client certificates must chain to it (S2 brings
    /// it from the coordinator as `fleet-ca.pem`; plan C2).
    pub ca_cert_pem: String,
    /// This worker's certificate, presented to askers.
    pub cert: WorkerCert,
    pub limits: PeerLimits,
    /// `fetch.timeout`: the longest one transfer is served.
    pub fetch_timeout: Duration,
    pub mirrors: Mirrors,
    /// The git binary that runs `upload-pack` (`git`; the fault tests put a rogue one
    /// here).
    pub git: std::path::PathBuf,
}

struct Ctx {
    settings: ServeSettings,
    grants: Arc<Grants>,
    holds: Arc<Holds>,
    connections: Arc<Semaphore>,
    serving: Arc<Semaphore>,
    /// Transfers in progress per asker fingerprint.
    per_peer: Mutex<HashMap<String, usize>>,
}

/// The listening side of the peer plane. Dropping it stops accepting; [`PeerServer::close`]
/// also ends open connections.
pub struct PeerServer {
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    accept: tokio::task::JoinHandle<()>,
}

impl PeerServer {
    /// Bind `settings.listen` and serve with grants and holds of its own. Must be called
    /// inside a tokio runtime.
    pub fn start(settings: ServeSettings) -> anyhow::Result<Self> {
        Self::start_with(settings, Arc::default(), Arc::default())
    }

    /// [`PeerServer::start`] with the worker's grants and holds, which outlive one
    /// listener (a new fleet CA restarts it: the grants stand, and maintenance waiting on
    /// a hold still excludes the new listener's transfers).
    pub fn start_with(
        settings: ServeSettings,
        grants: Arc<Grants>,
        holds: Arc<Holds>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = server_config(&settings.ca_cert_pem, &settings.cert, &settings.limits)?;
        let endpoint = quinn::Endpoint::server(config, settings.listen)
            .with_context(|| format!("peer_listen: cannot listen on {}", settings.listen))?;
        let ctx = Arc::new(Ctx {
            connections: Arc::new(Semaphore::new(settings.limits.max_connections.max(1))),
            serving: Arc::new(Semaphore::new(settings.limits.serve_concurrency.max(1))),
            settings,
            grants,
            holds,
            per_peer: Mutex::default(),
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), ctx.clone()));
        Ok(Self {
            endpoint,
            ctx,
            accept,
        })
    }

    /// The address bound (the port when `peer_listen` asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn grants(&self) -> &Arc<Grants> {
        &self.ctx.grants
    }

    pub fn holds(&self) -> &Arc<Holds> {
        &self.ctx.holds
    }

    /// Stop accepting, close every connection, and let the close frames go out.
    pub async fn close(self) {
        self.accept.abort();
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends the connections too (a restart with another fleet CA must not keep
        // serving askers the old one admitted).
        self.endpoint.close(0u32.into(), b"peer plane restarted");
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<Ctx>) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            tracing::warn!(
                "peer: refused a connection from {}: peer.max_connections ({}) reached",
                incoming.remote_address(),
                ctx.settings.limits.max_connections
            );
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            connection(incoming, ctx).await;
            drop(permit);
        });
    }
}

async fn connection(incoming: quinn::Incoming, ctx: Arc<Ctx>) {
    let from = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, async { incoming.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!("peer: handshake with {from} failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(
                "peer: no handshake from {from} within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            );
            return;
        }
    };
    let Some(fingerprint) = gitmirror_common::ca::peer_fingerprint(&conn) else {
        // The verifier requires one; never serve without.
        conn.close(1u32.into(), b"no client certificate");
        return;
    };
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %fingerprint, "peer: connection from {from} ended: {e}");
                return;
            }
        };
        let ctx = ctx.clone();
        let fingerprint = fingerprint.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            stream(send, recv, &conn, &fingerprint, from, &ctx).await;
        });
    }
}

/// One asker's transfer slot ([`PeerLimits::per_peer`]), given back when dropped.
struct PeerSlot<'a> {
    ctx: &'a Ctx,
    fingerprint: String,
}

impl<'a> PeerSlot<'a> {
    fn take(ctx: &'a Ctx, fingerprint: &str) -> Option<Self> {
        let mut map = ctx.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(fingerprint.to_owned()).or_default();
        if *n >= ctx.settings.limits.per_peer.max(1) {
            return None;
        }
        *n += 1;
        Some(Self {
            ctx,
            fingerprint: fingerprint.to_owned(),
        })
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.ctx.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.fingerprint) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.fingerprint);
            }
        }
    }
}

/// Read one first frame (at most [`MAX_PEER_REQUEST`] bytes) within [`HANDSHAKE_TIMEOUT`].
async fn read_first<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, String> {
    let read = async {
        let mut header = [0u8; 4];
        recv.read_exact(&mut header)
            .await
            .map_err(|e| format!("cannot read the first frame: {e}"))?;
        let len = first_len(header).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; len];
        debug_assert!(len <= MAX_PEER_REQUEST);
        recv.read_exact(&mut body)
            .await
            .map_err(|e| format!("cannot read the first frame: {e}"))?;
        decode_first::<T>(&body).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no first frame within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

async fn refuse(send: &mut quinn::SendStream, code: u32) {
    if let Ok(frame) = encode_first(&PeerReply::Refused(PeerRefusal { code })) {
        let _ = send.write_all(&frame).await;
    }
    let _ = send.finish();
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    conn: &quinn::Connection,
    fingerprint: &str,
    from: SocketAddr,
    ctx: &Ctx,
) {
    let request: PeerRequest = match read_first(&mut recv).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %fingerprint, "peer: closed a stream from {from}: {e}");
            refuse(&mut send, refusal_code::BAD_REQUEST).await;
            return;
        }
    };
    let repo = request.repo.as_str();
    let refused = |why: &str| {
        tracing::warn!(peer = %fingerprint, repo = %repo, "peer: refused a request from {from}: {why}");
    };
    if request.protocol != PEER_PROTOCOL {
        refused(&format!(
            "peer protocol {} (this worker speaks {PEER_PROTOCOL})",
            request.protocol
        ));
        return refuse(&mut send, refusal_code::VERSION).await;
    }
    if !crate::mirror::valid_id(repo) {
        refused("invalid repo id");
        return refuse(&mut send, refusal_code::BAD_REQUEST).await;
    }
    match request.service {
        PeerService::UploadPack => {}
    }
    if !ctx.grants.allows(repo, fingerprint) {
        refused("no live grant names this certificate for the repo");
        return refuse(&mut send, refusal_code::NOT_GRANTED).await;
    }
    let mirrors = &ctx.settings.mirrors;
    if !mirrors.exists(repo) {
        refused("no mirror of it here");
        return refuse(&mut send, refusal_code::NOT_HERE).await;
    }
    let Some(_slot) = PeerSlot::take(ctx, fingerprint) else {
        refused(&format!(
            "peer.per_peer ({}) transfers in progress",
            ctx.settings.limits.per_peer
        ));
        return refuse(&mut send, refusal_code::BUSY).await;
    };
    let Ok(_serving) = ctx.serving.clone().try_acquire_owned() else {
        refused(&format!(
            "peer.serve_concurrency ({}) transfers in progress",
            ctx.settings.limits.serve_concurrency
        ));
        return refuse(&mut send, refusal_code::BUSY).await;
    };
    let Some(_hold) = ctx.holds.try_serve(repo) else {
        refused("maintenance of the repo is running");
        return refuse(&mut send, refusal_code::BUSY).await;
    };
    let Ok(frame) = encode_first(&PeerReply::Serving) else {
        return;
    };
    if send.write_all(&frame).await.is_err() {
        return;
    }
    let timeout = ctx.settings.fetch_timeout;
    let started = Instant::now();
    match tokio::time::timeout(
        timeout,
        upload_pack(
            &ctx.settings.git,
            &mirrors.path(repo),
            timeout,
            conn,
            &mut send,
            &mut recv,
        ),
    )
    .await
    {
        Ok(Ok(())) => {
            tracing::info!(peer = %fingerprint, repo = %repo, "peer: served {repo} to {from} in {:?}", started.elapsed());
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %fingerprint, repo = %repo, "peer: serving {repo} to {from} failed: {e}");
            let _ = send.reset(1u32.into());
        }
        Err(_) => {
            tracing::warn!(peer = %fingerprint, repo = %repo, "peer: serving {repo} to {from} passed fetch.timeout ({}); stopped", humantime::format_duration(timeout));
            let _ = send.reset(1u32.into());
            let _ = recv.stop(1u32.into());
        }
    }
}

/// What git clears before running a helper: the worker's environment must not point
/// `upload-pack` at another repository.
const GIT_ENV_REMOVED: &[&str] = &[
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_SHALLOW_FILE",
];

/// `git upload-pack` on `path`, its stdin and stdout bridged to the stream. Ends when
/// upload-pack does (it exits after the asker's last request, or when the asker closes
/// its side), or when the asker's connection is gone; the upload-pack process is killed
/// then, and whenever this is dropped.
async fn upload_pack(
    git: &std::path::Path,
    path: &std::path::Path,
    timeout: Duration,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(git);
    cmd.arg("upload-pack")
        .arg("--strict")
        .arg(format!("--timeout={}", timeout.as_secs().max(1)))
        .arg(path)
        .env("GIT_PROTOCOL", "version=2")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for var in GIT_ENV_REMOVED {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run git upload-pack: {e}"))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("git upload-pack has no pipes".into());
    };
    // Its last words for the log: the first 2 KiB kept, the rest drained so a chatty
    // upload-pack never blocks on a full pipe.
    let said = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = 2048usize.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).trim().to_owned()
    });
    let up = async {
        let _ = tokio::io::copy(recv, &mut stdin).await;
        drop(stdin);
        // Nothing more from the asker: wait for the answer to finish.
        std::future::pending::<()>().await;
    };
    let down = async {
        tokio::io::copy(&mut stdout, send)
            .await
            .map_err(|e| format!("sending to the asker: {e}"))
    };
    let sent = tokio::select! {
        r = down => r,
        // Never taken: `up` waits once the asker's side is done.
        () = up => Ok(0),
        e = conn.closed() => return Err(format!("the asker went away: {e}")),
    };
    if sent.is_err() {
        // Nobody reads upload-pack's output any more: it would block on a full pipe
        // until fetch.timeout, holding the slot, the permit and the repo's serve hold.
        let _ = child.start_kill();
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("git upload-pack: {e}"))?;
    let words = said.await.unwrap_or_default();
    if status.success() {
        // upload-pack exits 0 only after answering all the asker asked and seeing the
        // end of its input: an asker that then stops reading (it drops its stream as it
        // finishes) is a complete transfer, not a failure.
        let _ = send.finish();
        return Ok(());
    }
    sent?;
    Err(format!("git upload-pack {status}: {words}"))
}

/// A holder to fetch from: where it listens and the certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub addr: SocketAddr,
    /// [`gitmirror_common::ca::fingerprint`] of its certificate (the coordinator's peer
    /// directory in S2).
    pub fingerprint: String,
}

/// The asking side of the peer plane: this worker's certificate, presented to holders.
pub struct PeerClient {
    endpoint_v4: Option<quinn::Endpoint>,
    endpoint_v6: Option<quinn::Endpoint>,
    cert: WorkerCert,
    fetch_timeout: Duration,
    limits: PeerLimits,
}

impl PeerClient {
    /// Must be called inside a tokio runtime.
    pub fn new(cert: WorkerCert, fetch_timeout: Duration) -> anyhow::Result<Self> {
        chain_and_key(&cert)?;
        let v4 = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).ok();
        let v6 = quinn::Endpoint::client(SocketAddr::from(([0u16; 8], 0))).ok();
        anyhow::ensure!(
            v4.is_some() || v6.is_some(),
            "peer: cannot bind a UDP socket to dial peers"
        );
        Ok(Self {
            endpoint_v4: v4,
            endpoint_v6: v6,
            cert,
            fetch_timeout,
            limits: PeerLimits::default(),
        })
    }

    fn client_config(&self, pinned: &str) -> anyhow::Result<quinn::ClientConfig> {
        let (chain, key) = chain_and_key(&self.cert)?;
        let verifier = PinnedPeer {
            fingerprint: pinned.to_owned(),
            algs: provider().signature_verification_algorithms,
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)?;
        tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(transport(&self.limits)?);
        Ok(cfg)
    }

    /// A connection to `holder`, whose certificate must be the pinned one (tests use it to
    /// send hostile first frames).
    pub async fn connect(&self, holder: &Holder) -> Result<quinn::Connection, Failure> {
        let fail = |m: String| Failure::new(FailureClass::Transient, format!("from peer: {m}"));
        let endpoint = match holder.addr {
            SocketAddr::V4(_) => self.endpoint_v4.as_ref(),
            SocketAddr::V6(_) => self.endpoint_v6.as_ref(),
        }
        .ok_or_else(|| fail(format!("no UDP socket for {}", holder.addr)))?;
        let config = self
            .client_config(&holder.fingerprint)
            .map_err(|e| Failure::local(format!("peer client configuration: {e:#}")))?;
        let connecting = endpoint
            .connect_with(config, holder.addr, SERVER_NAME)
            .map_err(|e| fail(format!("cannot connect to {}: {e}", holder.addr)))?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(fail(format!("connecting to {}: {e}", holder.addr))),
            Err(_) => Err(fail(format!(
                "no handshake with {} within {}s",
                holder.addr,
                HANDSHAKE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Connect to `holder` and open a transfer of `repo`: the connection and the stream
    /// after the holder's `Serving`, on which `upload-pack` speaks.
    /// [`PeerClient::fetch`] runs git over it; tests hold it open.
    pub async fn open(
        &self,
        holder: &Holder,
        repo: &str,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), Failure> {
        let fail = |m: String| Failure::new(FailureClass::Transient, format!("from peer: {m}"));
        let conn = self.connect(holder).await?;
        let opened = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| format!("opening a stream: {e}"))?;
            let request = encode_first(&PeerRequest {
                protocol: PEER_PROTOCOL,
                service: PeerService::UploadPack,
                repo: repo.to_owned(),
            })
            .map_err(|e| e.to_string())?;
            send.write_all(&request)
                .await
                .map_err(|e| format!("sending the request: {e}"))?;
            let reply: PeerReply = read_first(&mut recv).await?;
            Ok::<_, String>((send, recv, reply))
        };
        match opened.await {
            Ok((send, recv, PeerReply::Serving)) => Ok((conn, send, recv)),
            Ok((_, _, PeerReply::Refused(r))) => {
                conn.close(0u32.into(), b"refused");
                Err(fail(format!(
                    "{} refused {repo}: {}",
                    holder.addr,
                    r.describe()
                )))
            }
            Err(e) => {
                conn.close(1u32.into(), b"bad answer");
                Err(fail(format!("{}: {e}", holder.addr)))
            }
        }
    }

    /// Fetch `repo` from `holder`: a new mirror (origin `upstream_url`) when there is
    /// none, else only what the older copy lacks. Nothing changes unless the copy's refs
    /// hash to `expect` and it is connected. Bounded by `fetch.timeout`.
    pub async fn fetch(
        &self,
        mirrors: &Mirrors,
        repo: &str,
        upstream_url: &str,
        holder: &Holder,
        expect: [u8; 32],
    ) -> Result<Fetched, Failure> {
        if !crate::mirror::valid_id(repo) {
            return Err(Failure::local(format!("invalid repo id {repo:?}")));
        }
        let deadline = tokio::time::Instant::now() + self.fetch_timeout;
        let (conn, send, recv) = self.open(holder, repo).await?;
        let interrupt = Arc::new(AtomicBool::new(false));
        // fetch.timeout: interrupt gix and close the connection, which fails any read.
        let timer = {
            let interrupt = interrupt.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                interrupt.store(true, Ordering::Relaxed);
                conn.close(1u32.into(), b"fetch.timeout");
            })
        };
        let handle = tokio::runtime::Handle::current();
        let mirrors = mirrors.clone();
        let repo_owned = repo.to_owned();
        let url = upstream_url.to_owned();
        let stall = self.fetch_timeout.min(STALL);
        let flag = interrupt.clone();
        let result = tokio::task::spawn_blocking(move || {
            let reader = StreamReader {
                handle: handle.clone(),
                recv,
                stall,
            };
            let writer = StreamWriter { handle, send };
            let transport: Box<
                dyn gix::protocol::transport::client::blocking_io::Transport + Send,
            > = Box::new(
                gix::protocol::transport::client::git::blocking_io::Connection::new(
                    reader,
                    writer,
                    gix::protocol::transport::Protocol::V2,
                    repo_owned.clone(),
                    None::<(String, Option<u16>)>,
                    gix::protocol::transport::client::git::ConnectMode::Process,
                    false,
                ),
            );
            if mirrors.exists(&repo_owned) {
                mirrors.fetch_from_peer(&repo_owned, transport, &expect, &flag)
            } else {
                mirrors.clone_from_peer(&repo_owned, &url, transport, &expect, &flag)
            }
        })
        .await
        .unwrap_or_else(|e| Err(Failure::local(format!("peer fetch task failed: {e}"))));
        timer.abort();
        // Past the deadline, a stall is the timeout too: the stall's clock starts after
        // the deadline's, so under load it can end first and win the race to fail.
        let result = match result {
            Err(mut f)
                if interrupt.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline =>
            {
                f.message = format!(
                    "from peer: stopped at fetch.timeout ({}): {}",
                    humantime::format_duration(self.fetch_timeout),
                    f.message
                );
                Err(f)
            }
            r => r,
        };
        conn.close(0u32.into(), b"done");
        result
    }
}

/// The stream's receiving side as a blocking reader for gix (on a `spawn_blocking`
/// thread); a read waiting longer than `stall` fails.
struct StreamReader {
    handle: tokio::runtime::Handle,
    recv: quinn::RecvStream,
    stall: Duration,
}

impl io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self
            .handle
            .block_on(tokio::time::timeout(self.stall, self.recv.read(buf)));
        let n = match read {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => 0,
            Ok(Err(e)) => return Err(io::Error::other(format!("peer stream: {e}"))),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stalled: nothing received (timed out)",
                ));
            }
        };
        crate::mirror::received(n)?;
        Ok(n)
    }
}

/// The stream's sending side as a blocking writer; finishes the stream when dropped, so
/// the holder's `upload-pack` sees the end of its input.
struct StreamWriter {
    handle: tokio::runtime::Handle,
    send: quinn::SendStream,
}

impl io::Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.handle
            .block_on(self.send.write_all(buf))
            .map_err(|e| io::Error::other(format!("peer stream: {e}")))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let _ = self.send.finish();
    }
}

/// The asker's check of the holder: exactly the pinned certificate (plan C3: the peer
/// directory names the fingerprint, not only the uuid), with a valid signature.
#[derive(Debug)]
struct PinnedPeer {
    fingerprint: String,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = gitmirror_common::ca::fingerprint(end_entity.as_ref());
        if got == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the peer presented certificate {got}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §13 (C4): ended grants do not pile up. The coordinator grants each repo that
    /// moves; a worker that served for months would otherwise keep every grant it ever got.
    /// (Seen failing before the sweep: 5,001 repos kept.)
    #[test]
    fn spec_13_ended_grants_are_swept() {
        let g = Grants::default();
        for i in 0..5000 {
            g.grant(&format!("a/r/{i}"), "fp", Duration::ZERO);
        }
        g.grant("a/r/live", "fp", Duration::from_secs(3600));
        assert!(g.len() <= 2 * GRANTS_SWEEP_MIN, "{} repos kept", g.len());
        assert!(g.allows("a/r/live", "fp"));
        assert!(!g.allows("a/r/1", "fp"));
    }
}
