//! The QUIC connection to the coordinator (SPEC §4, §6; design.md "Conversation").
//!
//! The link connects (certificate pinned by the join token), says `Hello`, and after
//! `Welcome` hands the worker loop a sender for outgoing messages and forwards every
//! coordinator message to it. It never exits because the coordinator is away: it
//! reconnects with capped exponential backoff and jitter, logging each change of
//! connection state once rather than each attempt.

use crate::state::Identity;
use gitmirror_common::trust;
use gitmirror_wire::{
    ClientHandshake, CoordMsg, HandshakeError, Hello, JoinToken, PROTOCOL_VERSION, WorkerMsg,
    close_code, decode, encode_frame, frame::body_len,
};
use quinn::{ConnectionError, VarInt};
use std::net::SocketAddr;
use std::path::PathBuf;
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
/// Time allowed from connecting to `Welcome`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Outgoing messages queued for the connection; the worker loop reconnects when it is full.
pub(crate) const OUTGOING_CAPACITY: usize = 1024;

/// What the link tells the worker loop.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Welcomed as `worker_id`; send messages through `tx` until the next `Down`.
    Up {
        worker_id: u32,
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
    pub token: JoinToken,
    pub name: String,
    pub weight: f64,
    pub serve_url_base: Option<String>,
    pub state_dir: PathBuf,
}

/// Why a session ended.
enum End {
    Shutdown,
    /// Never got to `Welcome`.
    NotConnected(String),
    /// Was connected, then lost it.
    Lost(String),
}

/// Run the link until `shutdown` becomes true (or the worker loop goes away).
pub(crate) async fn run(
    settings: LinkSettings,
    mut identity: Identity,
    events: mpsc::Sender<LinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client_config = match trust::transport(KEEPALIVE, IDLE_TIMEOUT)
        .and_then(|t| trust::client_config(&settings.token, t))
    {
        Ok(c) => c,
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
        let end = session(
            &settings,
            &mut identity,
            &client_config,
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
            End::NotConnected(problem) => {
                if last_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(
                        coordinator = %settings.coordinator,
                        "cannot connect to the coordinator: {problem}; retrying at most {}s apart",
                        BACKOFF_MAX.as_secs()
                    );
                    last_problem = Some(problem);
                } else {
                    tracing::debug!(coordinator = %settings.coordinator, "still cannot connect: {problem}");
                }
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
    identity: &mut Identity,
    client_config: &quinn::ClientConfig,
    endpoints: &mut Endpoints,
    events: &mpsc::Sender<LinkEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let attempt = async {
        let addr = resolve(&settings.coordinator).await?;
        let endpoint = endpoints.for_addr(addr)?;
        let conn = endpoint
            .connect_with(client_config.clone(), addr, trust::SERVER_NAME)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?
            .await
            .map_err(|e| describe_conn_error(&e))?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(settings, identity, &conn)).await {
            Ok(Ok((send, recv, worker_id))) => Ok((conn, send, recv, worker_id, addr)),
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
                Err(format!(
                    "no answer to Hello within {}s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ))
            }
        }
    };
    let (conn, mut send, recv, worker_id, addr) = tokio::select! {
        r = attempt => match r {
            Ok(v) => v,
            Err(problem) => return End::NotConnected(problem),
        },
        _ = stopped(shutdown) => return End::Shutdown,
    };

    if identity.worker_id != Some(worker_id) {
        identity.worker_id = Some(worker_id);
        if let Err(e) = identity.save(&settings.state_dir) {
            tracing::error!("cannot save the worker id: {e}");
        }
    }
    tracing::info!(coordinator = %settings.coordinator, %addr, worker_id, uuid = %identity.uuid, "connected to the coordinator");

    let (tx, mut rx) = mpsc::channel(OUTGOING_CAPACITY);
    if events.send(LinkEvent::Up { worker_id, tx }).await.is_err() {
        conn.close(VarInt::from_u32(close_code::NORMAL), b"worker stopping");
        return End::Shutdown;
    }
    let mut reader = tokio::spawn(read_loop(conn.clone(), recv, events.clone()));
    let mut reader_done = false;
    let end = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    let frame = match encode_frame(&msg) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::error!("cannot send a message to the coordinator: {e}");
                            continue;
                        }
                    };
                    if let Err(e) = send.write_all(&frame).await {
                        break End::Lost(conn.close_reason().map(|r| describe_conn_error(&r)).unwrap_or_else(|| e.to_string()));
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
    identity: &Identity,
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, u32), String> {
    let lost = |e: &dyn std::fmt::Display| {
        conn.close_reason()
            .map(|r| describe_conn_error(&r))
            .unwrap_or_else(|| e.to_string())
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| describe_conn_error(&e))?;
    let hs = ClientHandshake::new(Hello {
        protocol: PROTOCOL_VERSION,
        secret: settings.token.secret.clone(),
        uuid: identity.uuid,
        previous_id: identity.worker_id,
        name: settings.name.clone(),
        weight: settings.weight,
        software: env!("CARGO_PKG_VERSION").to_owned(),
        serve_url_base: settings.serve_url_base.clone(),
    });
    let hello = hs.hello_frame().map_err(|e| e.to_string())?;
    send.write_all(&hello).await.map_err(|e| lost(&e))?;
    let body = match read_frame(&mut recv).await {
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
        HandshakeError::Refused { message, .. } => {
            format!("the coordinator closed the connection: {message}")
        }
        other => other.to_string(),
    })?;
    Ok((send, recv, welcome.worker_id))
}

/// Forward coordinator messages until the stream or connection ends; returns why.
async fn read_loop(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<LinkEvent>,
) -> String {
    let protocol_error = |why: String| {
        conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), why.as_bytes());
        format!("protocol error: {why}")
    };
    loop {
        let body = match read_frame(&mut recv).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return conn
                    .close_reason()
                    .map(|r| describe_conn_error(&r))
                    .unwrap_or_else(|| "the coordinator ended the stream".into());
            }
            Err(FrameReadError::TooLarge(e)) => return protocol_error(e),
            Err(FrameReadError::Stream(e)) => {
                return conn
                    .close_reason()
                    .map(|r| describe_conn_error(&r))
                    .unwrap_or(e);
            }
        };
        let msg = match decode::<CoordMsg>(&body) {
            Ok(m) => m,
            Err(e) => {
                return protocol_error(format!("undecodable message from the coordinator: {e}"));
            }
        };
        if matches!(msg, CoordMsg::Welcome(_) | CoordMsg::Refused(_)) {
            return protocol_error("the coordinator repeated its handshake answer".into());
        }
        if events.send(LinkEvent::Msg(msg)).await.is_err() {
            conn.close(VarInt::from_u32(close_code::NORMAL), b"worker stopping");
            return "worker stopping".into();
        }
    }
}

enum FrameReadError {
    TooLarge(String),
    Stream(String),
}

impl std::fmt::Display for FrameReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(s) | Self::Stream(s) => f.write_str(s),
        }
    }
}

/// One length-prefixed frame body; `None` when the stream ended cleanly between frames.
/// The length is checked before the body is allocated.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(FrameReadError::Stream(e.to_string())),
    }
    let len = body_len(header).map_err(|e| FrameReadError::TooLarge(e.to_string()))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| FrameReadError::Stream(e.to_string()))?;
    Ok(Some(body))
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
