//! The QUIC connection to the coordinator (SPEC §4, §6; design.md "Conversation").
//!
//! The link connects (certificate pinned by the join token), says `Hello`, and after
//! `Welcome` hands the worker loop a sender for outgoing messages and forwards every
//! coordinator message to it. It never exits because the coordinator is away: it
//! reconnects with capped exponential backoff and jitter, logging each change of
//! connection state once rather than each attempt.
//!
//! The join token is read again from `join_token_file` before every attempt (SPEC §4.1:
//! after `gitmirrord join-token --rotate` the operator writes the new token there and the
//! worker needs no restart). While it waits to retry, the link looks at the file once a
//! second and tries at once when it changes. A refused secret is said plainly, with what
//! to do; the worker keeps fetching what it holds and keeps retrying.

use crate::config::TokenSource;
use crate::state::Identity;
use gitmirror_common::frames::{self, ReadError, WriteError};
use gitmirror_common::trust::{self, FileStamp, WorkerCert};
use gitmirror_wire::{
    ClientHandshake, CoordMsg, Enrolled, FromCoordinator, HandshakeError, Hello, JoinToken,
    MAX_FRAME, PROTOCOL_VERSION, RefuseCode, Welcomed, WorkerMsg, close_code,
};
use quinn::{ConnectionError, VarInt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// QUIC keepalive period the worker asks for; the effective values are the smaller of both
/// peers', so the coordinator's `liveness` settings govern.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// QUIC idle timeout the worker asks for.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Reconnect attempts are at most this far apart (SPEC §6).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Time allowed from connecting to `Welcome`. A restarting coordinator finishes the
/// handshake at once and answers `Hello` when its state is loaded: 5–7 s at 1M repos,
/// over 20 s on a busy machine. A worker that gave up sooner would back off and come
/// back later than it would have been welcomed (design.md "Conversation").
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for the QUIC handshake itself. The coordinator answers it at once, even
/// while its state loads (`Hello` then waits: [`HANDSHAKE_TIMEOUT`]); what delays it is
/// lost Initial packets, which QUIC sends again ever further apart, up to the idle timeout:
/// after a restart of a 1M-repo coordinator, one of 1,000 workers came back 19 s after the
/// others that way (docs/scale.md, thirteenth session). A fresh attempt starts over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Outgoing messages queued for the connection; the worker loop reconnects when it is full.
pub(crate) const OUTGOING_CAPACITY: usize = 1024;
/// While waiting to reconnect, the token file is looked at this often.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(1);

/// What the link tells the worker loop.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Welcomed as `worker_id` in `protocol` (the coordinator's `Welcome`); send messages
    /// through `tx` until the next `Down`.
    Up {
        worker_id: u32,
        protocol: u32,
        tx: mpsc::Sender<WorkerMsg>,
    },
    /// A message from the coordinator (never `Welcome` or `Refused`).
    Msg(CoordMsg),
    /// The connection is gone; `tx` of the last `Up` no longer delivers.
    Down,
}

/// What the link needs to know about this worker.
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    pub coordinator: String,
    /// The token read at start.
    pub token: JoinToken,
    /// Where a newer token can be read from.
    pub token_source: TokenSource,
    pub name: String,
    pub weight: f64,
    pub serve_url_base: Option<String>,
    pub state_dir: PathBuf,
}

/// Why a session ended.
enum End {
    Shutdown,
    /// Never got to `Welcome`.
    NotConnected(Failed),
    /// Was connected, then lost it.
    Lost(String),
}

/// Why an attempt did not get to `Welcome`.
#[derive(Debug, Clone, PartialEq)]
enum Failed {
    /// The coordinator refused the join secret (stolen-token protection after a rotation,
    /// or a typo): only a new token helps.
    SecretRefused(String),
    /// Not admitted for who this worker is (SPEC §17): waiting for approval, or its uuid
    /// is enrolled with a certificate it does not have. The message says what the
    /// operator runs.
    Identity(String),
    /// The certificate presented is revoked (`workers remove`), or the uuid was removed.
    /// The next attempts go without it: once an operator approves the uuid again, the
    /// join token enrolls it anew.
    Revoked(String),
    Other(String),
}

impl Failed {
    fn text(&self) -> &str {
        match self {
            Self::SecretRefused(s) | Self::Identity(s) | Self::Revoked(s) | Self::Other(s) => s,
        }
    }

    /// A connection the coordinator closed, read as an operator should read it.
    fn closed(e: &ConnectionError) -> Self {
        match e {
            ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(close_code::BAD_SECRET) =>
            {
                Self::SecretRefused(describe_conn_error(e))
            }
            ConnectionError::ApplicationClosed(c)
                if [close_code::REVOKED, close_code::REMOVED]
                    .map(VarInt::from_u32)
                    .contains(&c.error_code) =>
            {
                Self::Revoked(describe_conn_error(e))
            }
            ConnectionError::ApplicationClosed(c)
                if [close_code::PENDING, close_code::ENROLLED]
                    .map(VarInt::from_u32)
                    .contains(&c.error_code) =>
            {
                Self::Identity(describe_conn_error(e))
            }
            _ => Self::Other(describe_conn_error(e)),
        }
    }
}

impl From<String> for Failed {
    fn from(s: String) -> Self {
        Self::Other(s)
    }
}

/// The join token for the next attempt, this worker's certificate (once enrolled) and the
/// TLS config that pins the coordinator's certificate and presents this worker's.
struct Token {
    source: TokenSource,
    token: JoinToken,
    cert: Option<WorkerCert>,
    client_config: quinn::ClientConfig,
    /// The file as it was when last read.
    stamp: Option<FileStamp>,
    /// The last problem reading the file, said once.
    problem: Option<String>,
}

impl Token {
    fn new(settings: &LinkSettings) -> anyhow::Result<Self> {
        let cert = WorkerCert::load(&settings.state_dir)?;
        Ok(Self {
            source: settings.token_source.clone(),
            token: settings.token.clone(),
            client_config: client_config(&settings.token, cert.as_ref())?,
            cert,
            stamp: None,
            problem: None,
        })
    }

    /// The coordinator revoked this worker's certificate: try the join token from now on
    /// (refused too, unless an operator approved the uuid again). The files stay until a
    /// new enrollment replaces them.
    fn forget_cert(&mut self) {
        if self.cert.take().is_none() {
            return;
        }
        match client_config(&self.token, None) {
            Ok(c) => self.client_config = c,
            Err(e) => tracing::error!("cannot set up TLS without a certificate: {e:#}"),
        }
    }

    /// The coordinator enrolled this worker (SPEC §17): keep the certificate on disk and
    /// present it from the next connection on. `false`: it could not be kept; the caller
    /// drops the connection before sending `Holdings` (which would tell the coordinator
    /// it was kept), so the next attempt enrolls again.
    async fn enrolled(&mut self, state_dir: &Path, e: Enrolled) -> bool {
        let cert = WorkerCert {
            cert_pem: e.cert_pem,
            key_pem: e.key_pem,
        };
        let config = match client_config(&self.token, Some(&cert)) {
            Ok(c) => c,
            Err(err) => {
                tracing::error!(
                    "the coordinator sent a certificate this worker cannot use: {err:#}"
                );
                return false;
            }
        };
        let (dir, c) = (state_dir.to_owned(), cert.clone());
        match tokio::task::spawn_blocking(move || c.save(&dir)).await {
            Ok(Ok(())) => tracing::info!(
                "enrolled: the coordinator issued this worker a certificate ({}); it speaks for this worker from now on, not the join token",
                state_dir.join(trust::WORKER_CERT_FILE).display()
            ),
            Ok(Err(err)) => {
                tracing::error!(
                    "cannot keep the certificate the coordinator issued: {err:#}; enrolling again at the next attempt"
                );
                return false;
            }
            Err(err) => {
                tracing::error!("cannot keep the certificate: {err}");
                return false;
            }
        }
        self.client_config = config;
        self.cert = Some(cert);
        true
    }

    fn file(&self) -> Option<&Path> {
        match &self.source {
            TokenSource::Inline => None,
            TokenSource::File(p) | TokenSource::CoordinatorSecret(p) => Some(p),
        }
    }

    /// Read the token file again (SPEC §4.1 rotation). A file that cannot be used is
    /// reported once and the token read before stays in use.
    async fn refresh(&mut self) {
        let Some(path) = self.file().map(Path::to_owned) else {
            return;
        };
        let (source, pin) = (self.source.clone(), self.token.cert_sha256);
        let read = tokio::task::spawn_blocking(move || {
            // The stamp before the read: a change in between is seen next time.
            let stamp = FileStamp::of(&path).ok();
            let token = match source {
                TokenSource::CoordinatorSecret(p) => {
                    trust::read_secret(&p).map(|secret| JoinToken {
                        cert_sha256: pin,
                        secret,
                    })
                }
                _ => trust::read_token_file(&path),
            };
            (stamp, token)
        })
        .await;
        let (stamp, read) = match read {
            Ok((stamp, read)) => (stamp, read.map_err(|e| format!("{e:#}"))),
            Err(e) => (None, Err(e.to_string())),
        };
        self.stamp = stamp;
        let token = match read {
            Ok(t) => t,
            Err(problem) => {
                if self.problem.as_ref() != Some(&problem) {
                    let key = match self.source {
                        TokenSource::CoordinatorSecret(_) => "the coordinator's join secret",
                        _ => "join_token_file",
                    };
                    tracing::warn!("{key}: {problem}; still using the join token read before");
                    self.problem = Some(problem);
                }
                return;
            }
        };
        self.problem = None;
        if token == self.token {
            return;
        }
        if token.cert_sha256 != self.token.cert_sha256 {
            match client_config(&token, self.cert.as_ref()) {
                Ok(c) => self.client_config = c,
                Err(e) => {
                    tracing::error!("cannot set up TLS for the new join token: {e:#}");
                    return;
                }
            }
        }
        if let Some(path) = self.file() {
            tracing::info!(
                "read a new join token from {}; using it from this connection attempt on",
                path.display()
            );
        }
        self.token = token;
    }

    /// Resolves when the token file differs from what was last read (never for an inline
    /// token), so a new token is tried without waiting out the backoff.
    async fn changed(&self) {
        let Some(path) = self.file().map(Path::to_owned) else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(TOKEN_FILE_POLL).await;
            let p = path.clone();
            let now = tokio::task::spawn_blocking(move || FileStamp::of(&p).ok())
                .await
                .ok()
                .flatten();
            if now.is_some() && now != self.stamp {
                return;
            }
        }
    }

    /// What the operator should do about a refused secret.
    fn advice(&self) -> String {
        match &self.source {
            TokenSource::File(p) => format!(
                "write the current token (`gitmirrord join-token` on the coordinator) to {}: it is read again before every attempt, no restart needed",
                p.display()
            ),
            TokenSource::Inline => "set join_token to the current token (`gitmirrord join-token` on the coordinator) and restart the worker, or use join_token_file, which needs no restart".into(),
            TokenSource::CoordinatorSecret(p) => {
                format!("the embedded worker reads the secret from {}", p.display())
            }
        }
    }
}

fn client_config(
    token: &JoinToken,
    cert: Option<&WorkerCert>,
) -> anyhow::Result<quinn::ClientConfig> {
    trust::transport(KEEPALIVE, IDLE_TIMEOUT).and_then(|t| trust::client_config(token, cert, t))
}

/// Run the link until `shutdown` becomes true (or the worker loop goes away).
pub(crate) async fn run(
    settings: LinkSettings,
    mut identity: Identity,
    events: mpsc::Sender<LinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut token = match Token::new(&settings) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot set up TLS for the coordinator connection: {e:#}");
            return;
        }
    };
    tracing::info!(coordinator = %settings.coordinator, "connecting to the coordinator");
    let mut endpoints = Endpoints::default();
    let mut delay = BACKOFF_START;
    let mut last_problem: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        token.refresh().await;
        let end = session(
            &settings,
            &mut token,
            &mut identity,
            &mut endpoints,
            &events,
            &mut shutdown,
        )
        .await;
        match end {
            End::Shutdown => break,
            End::Lost(reason) => {
                tracing::warn!(
                    coordinator = %settings.coordinator,
                    "lost the connection to the coordinator: {reason}; reconnecting, mirrors keep being fetched"
                );
                delay = BACKOFF_START;
                last_problem = Some(reason);
            }
            End::NotConnected(failed) => {
                if let Failed::Revoked(_) = failed {
                    token.forget_cert();
                }
                let problem = failed.text().to_owned();
                if last_problem.as_deref() == Some(problem.as_str()) {
                    tracing::debug!(coordinator = %settings.coordinator, "still cannot connect: {problem}");
                } else if let Failed::Identity(_) | Failed::Revoked(_) = failed {
                    tracing::error!(
                        coordinator = %settings.coordinator,
                        uuid = %identity.uuid,
                        "the coordinator does not admit this worker: {problem}; retrying at most {}s apart, mirrors keep being fetched",
                        BACKOFF_MAX.as_secs()
                    );
                } else if let Failed::SecretRefused(_) = failed {
                    tracing::error!(
                        coordinator = %settings.coordinator,
                        "the coordinator refused this worker's join secret ({problem}): {}; retrying at most {}s apart, mirrors keep being fetched",
                        token.advice(),
                        BACKOFF_MAX.as_secs()
                    );
                } else {
                    tracing::warn!(
                        coordinator = %settings.coordinator,
                        "cannot connect to the coordinator: {problem}; retrying at most {}s apart",
                        BACKOFF_MAX.as_secs()
                    );
                }
                last_problem = Some(problem);
            }
        }
        if events.is_closed() {
            break;
        }
        // Full jitter in the upper half keeps reconnecting workers from moving in step.
        let wait = delay.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        delay = (delay * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.changed() => {
                // A new token: try it now, and say how it went even if it is refused too.
                delay = BACKOFF_START;
                last_problem = None;
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    endpoints.close().await;
}

/// Resolves once shutdown is requested (or nobody can request it any more).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// One client endpoint per address family, kept across reconnects.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    fn for_addr(&mut self, addr: SocketAddr) -> Result<quinn::Endpoint, String> {
        let (slot, bind) = if addr.is_ipv4() {
            (&mut self.v4, SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            (&mut self.v6, SocketAddr::from(([0u16; 8], 0)))
        };
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let e = quinn::Endpoint::client(bind)
            .map_err(|e| format!("cannot open a UDP socket on {bind}: {e}"))?;
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Let close frames go out before the process ends.
    async fn close(self) {
        for e in [self.v4, self.v6].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.wait_idle()).await;
        }
    }
}

async fn session(
    settings: &LinkSettings,
    token: &mut Token,
    identity: &mut Identity,
    endpoints: &mut Endpoints,
    events: &mpsc::Sender<LinkEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let attempt = async {
        let addr = resolve(&settings.coordinator).await?;
        let endpoint = endpoints.for_addr(addr)?;
        let connecting = endpoint
            .connect_with(token.client_config.clone(), addr, trust::SERVER_NAME)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let conn = connect_within(connecting, CONNECT_TIMEOUT).await?;
        let hello = handshake(settings, &token.token, identity, &conn);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello).await {
            Ok(Ok((send, recv, welcomed))) => Ok((conn, send, recv, welcomed, addr)),
            Ok(Err(e)) => {
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"handshake failed",
                );
                Err(e)
            }
            Err(_) => {
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"no Welcome in time",
                );
                Err(Failed::Other(format!(
                    "no answer to Hello within {}s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )))
            }
        }
    };
    let (conn, mut send, recv, welcomed, addr) = tokio::select! {
        r = attempt => match r {
            Ok(v) => v,
            Err(problem) => return End::NotConnected(problem),
        },
        _ = stopped(shutdown) => return End::Shutdown,
    };
    let worker_id = welcomed.welcome.worker_id;
    let protocol = welcomed.welcome.protocol;
    if let Some(e) = welcomed.enrolled
        && !token.enrolled(&settings.state_dir, e).await
    {
        conn.close(
            VarInt::from_u32(close_code::NORMAL),
            b"cannot keep the certificate",
        );
        return End::Lost("could not keep the certificate the coordinator issued".into());
    }

    if identity.worker_id != Some(worker_id) {
        identity.worker_id = Some(worker_id);
        if let Err(e) = identity.save(&settings.state_dir) {
            tracing::error!("cannot save the worker id: {e}");
        }
    }
    tracing::info!(coordinator = %settings.coordinator, %addr, worker_id, uuid = %identity.uuid, "connected to the coordinator");

    let (tx, mut rx) = mpsc::channel(OUTGOING_CAPACITY);
    if events
        .send(LinkEvent::Up {
            worker_id,
            protocol,
            tx,
        })
        .await
        .is_err()
    {
        conn.close(VarInt::from_u32(close_code::NORMAL), b"worker stopping");
        return End::Shutdown;
    }
    let mut reader = tokio::spawn(read_loop(conn.clone(), recv, events.clone()));
    let mut reader_done = false;
    let end = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    // Never skip a message: an outcome left out would be covered by the next
                    // cumulative acknowledgement and lost. Reconnect and send again instead.
                    match frames::write(&mut send, &msg).await {
                        Ok(()) => {}
                        Err(WriteError::Encode(e)) => {
                            tracing::error!("cannot send a message to the coordinator: {e}");
                            conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"unencodable message");
                            break End::Lost(format!("cannot encode a message: {e}"));
                        }
                        Err(WriteError::Stream(e)) => {
                            break End::Lost(conn.close_reason().map(|r| describe_conn_error(&r)).unwrap_or(e));
                        }
                    }
                }
                None => {
                    // The worker loop gave up on this connection (its queue overflowed).
                    conn.close(VarInt::from_u32(close_code::NORMAL), b"worker reconnecting");
                    break End::Lost("the worker's outgoing queue overflowed".into());
                }
            },
            r = &mut reader => {
                reader_done = true;
                let reason = match r {
                    Ok(reason) => reason,
                    Err(e) => format!("reader task failed: {e}"),
                };
                break End::Lost(reason);
            }
            _ = stopped(shutdown) => {
                let _ = send.finish();
                conn.close(VarInt::from_u32(close_code::NORMAL), b"worker shutting down");
                break End::Shutdown;
            }
        }
    };
    if !reader_done {
        reader.abort();
        let _ = reader.await;
    }
    let _ = events.send(LinkEvent::Down).await;
    end
}

/// Send `Hello`, wait for `Welcome`.
async fn handshake(
    settings: &LinkSettings,
    token: &JoinToken,
    identity: &Identity,
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, Welcomed), Failed> {
    let lost = |e: &dyn std::fmt::Display| {
        conn.close_reason()
            .map(|r| Failed::closed(&r))
            .unwrap_or_else(|| Failed::Other(e.to_string()))
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| Failed::closed(&e))?;
    let hs = ClientHandshake::new(Hello {
        protocol: PROTOCOL_VERSION,
        secret: token.secret.clone(),
        uuid: identity.uuid,
        previous_id: identity.worker_id,
        name: settings.name.clone(),
        weight: settings.weight,
        software: env!("CARGO_PKG_VERSION").to_owned(),
        serve_url_base: settings.serve_url_base.clone(),
    });
    let hello = hs.hello_frame().map_err(|e| Failed::Other(e.to_string()))?;
    send.write_all(&hello).await.map_err(|e| lost(&e))?;
    let body = match frames::read(&mut recv, MAX_FRAME).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Err(lost(
                &"the coordinator ended the stream before answering Hello",
            ));
        }
        Err(e) => return Err(lost(&e)),
    };
    // A refusal reads the same whether its frame or the connection close arrived first,
    // so that a repeated refusal is logged once.
    let welcome = hs.on_reply(&body).map_err(|e| match e {
        HandshakeError::Refused {
            code: RefuseCode::BadSecret,
            message,
        } => Failed::SecretRefused(format!("the coordinator closed the connection: {message}")),
        HandshakeError::Refused {
            code: RefuseCode::Revoked,
            message,
        } => Failed::Revoked(format!("the coordinator closed the connection: {message}")),
        HandshakeError::Refused {
            code: RefuseCode::Pending | RefuseCode::Enrolled,
            message,
        } => Failed::Identity(format!("the coordinator closed the connection: {message}")),
        HandshakeError::Refused { message, .. } => {
            Failed::Other(format!("the coordinator closed the connection: {message}"))
        }
        other => Failed::Other(other.to_string()),
    })?;
    Ok((send, recv, welcome))
}

/// Forward coordinator messages until the stream or connection ends; returns why. What a
/// frame may say is [`FromCoordinator`]'s.
async fn read_loop(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<LinkEvent>,
) -> String {
    let mut session = FromCoordinator::new();
    loop {
        let why = match frames::read(&mut recv, MAX_FRAME).await {
            Ok(Some(body)) => match session.on_frame(&body) {
                Ok(msg) => {
                    if events.send(LinkEvent::Msg(msg)).await.is_err() {
                        conn.close(VarInt::from_u32(close_code::NORMAL), b"worker stopping");
                        return "worker stopping".into();
                    }
                    continue;
                }
                Err(e) => e.to_string(),
            },
            Ok(None) => {
                return conn
                    .close_reason()
                    .map(|r| describe_conn_error(&r))
                    .unwrap_or_else(|| "the coordinator ended the stream".into());
            }
            Err(ReadError::Frame(e)) => e.to_string(),
            Err(ReadError::Stream(e)) => {
                return conn
                    .close_reason()
                    .map(|r| describe_conn_error(&r))
                    .unwrap_or(e);
            }
        };
        conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), why.as_bytes());
        return format!("protocol error: {why}");
    }
}

async fn resolve(coordinator: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(coordinator)
        .await
        .map_err(|e| format!("cannot resolve {coordinator}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{coordinator} resolves to no address"))
}

/// A connection error as an operator should read it: the coordinator's own words when it
/// closed the connection, the TLS reason (e.g. a certificate that does not match the join
/// token) when the handshake failed.
/// The QUIC handshake of `connecting`, given up after `limit` ([`CONNECT_TIMEOUT`]).
pub async fn connect_within(
    connecting: quinn::Connecting,
    limit: Duration,
) -> Result<quinn::Connection, String> {
    let addr = connecting.remote_address();
    match tokio::time::timeout(limit, connecting).await {
        Ok(r) => r.map_err(|e| describe_conn_error(&e)),
        Err(_) => Err(format!(
            "cannot connect to {addr}: no answer to the QUIC handshake within {} ms",
            limit.as_millis()
        )),
    }
}

fn describe_conn_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            format!(
                "the coordinator closed the connection: {}",
                String::from_utf8_lossy(&c.reason)
            )
        }
        ConnectionError::TransportError(t) => format!("connection failed: {t}"),
        ConnectionError::ConnectionClosed(c) => {
            format!("the coordinator closed the connection: {c}")
        }
        ConnectionError::TimedOut => "no answer from the coordinator (timed out)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_for(source: TokenSource, token: JoinToken) -> Token {
        Token::new(&LinkSettings {
            coordinator: "127.0.0.1:1".into(),
            token,
            token_source: source,
            name: "w".into(),
            weight: 1.0,
            serve_url_base: None,
            state_dir: PathBuf::from("/nonexistent"),
        })
        .unwrap()
    }

    fn write_private(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    // SPEC §4.1 rotation: `join_token_file` is read again before each attempt, a change is
    // noticed while waiting to reconnect, and a file that cannot be used keeps the last
    // good token.
    #[tokio::test]
    async fn token_file_is_followed_and_a_bad_one_keeps_the_last_good_token() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("join-token");
        let a = JoinToken::new(b"certificate", "YQ");
        let b = JoinToken::new(b"certificate", "Yg");
        write_private(&file, &a.format());
        let mut t = token_for(TokenSource::File(file.clone()), a.clone());
        t.refresh().await;
        assert_eq!(t.token, a);

        write_private(&file, &format!("{}\n", b.format()));
        tokio::time::timeout(Duration::from_secs(10), t.changed())
            .await
            .expect("a new token file is noticed");
        t.refresh().await;
        assert_eq!(t.token, b);

        write_private(&file, "not a token");
        t.refresh().await;
        assert_eq!(t.token, b);
        assert!(
            t.problem
                .as_deref()
                .unwrap_or_default()
                .contains("join token")
        );

        // Another certificate: the pinned TLS config is rebuilt for it.
        let c = JoinToken::new(b"another certificate", "Yw");
        write_private(&file, &c.format());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        t.refresh().await;
        assert_eq!(t.token, b, "a file others can read is not used");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        t.refresh().await;
        assert_eq!(t.token, c);
        assert_eq!(t.problem, None);
    }

    // The embedded worker follows its coordinator's secret file through a rotation.
    #[tokio::test]
    async fn embedded_worker_follows_the_coordinators_secret() {
        let d = tempfile::tempdir().unwrap();
        let id = trust::Identity::load_or_create(d.path()).unwrap();
        let source = TokenSource::CoordinatorSecret(d.path().join(trust::SECRET_FILE));
        let mut t = token_for(source, id.join_token());
        let rotated = trust::rotate_secret(d.path()).unwrap();
        assert_ne!(rotated, id.join_token());
        t.refresh().await;
        assert_eq!(t.token, rotated);
    }

    // A coordinator address that never answers (a socket that drops every packet, as a
    // full receive buffer does): the attempt ends after the connect limit, not after the
    // 20 s idle timeout, so that a new attempt starts QUIC's resends over.
    #[tokio::test]
    async fn a_handshake_without_answer_is_given_up_at_the_connect_limit() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let t = token_for(TokenSource::Inline, JoinToken::new(b"certificate", "YQ"));
        let endpoint = Endpoints::default().for_addr(addr).unwrap();
        let connecting = endpoint
            .connect_with(t.client_config.clone(), addr, trust::SERVER_NAME)
            .unwrap();
        let err = connect_within(connecting, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            err.contains("no answer to the QUIC handshake within 300 ms"),
            "{err}"
        );
        drop(silent);
    }

    // An inline token has no file to follow.
    #[tokio::test]
    async fn inline_token_stays() {
        let a = JoinToken::new(b"certificate", "YQ");
        let mut t = token_for(TokenSource::Inline, a.clone());
        t.refresh().await;
        assert_eq!(t.token, a);
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), t.changed())
                .await
                .is_err()
        );
    }
}
