//! The QUIC side (SPEC §4, design.md "Conversation"): accepts worker connections, runs the
//! handshake, and shuttles frames between each connection's one bi-directional stream and
//! the coordinator's main loop ([`crate::run`]).
//!
//! Bounded: at most [`MAX_HANDSHAKES`] connections between QUIC accept and `Welcome`, each
//! with a deadline; when all are taken, a new connection waits for a slot (QUIC holds it
//! meanwhile), and displaces the one that has waited longest without passing the secret
//! check once that one has stalled for [`STALLED_AFTER`], so peers that connect and stall
//! cannot lock workers out, and workers reconnecting all at once (a restart of a big
//! fleet) are queued rather than turned away to back off. Before that check the first frame may hold at most [`MAX_HELLO`] bytes;
//! after it, frames above 16 MiB are refused from their header. A peer may open one
//! stream and no datagrams. Each connection's outbound queue holds at most
//! [`OUTBOUND_QUEUE`] messages (the main loop closes a connection whose queue is full; the
//! worker resyncs when it reconnects).
//!
//! A worker that presents a certificate of the fleet's CA (TLS checks the signature) is not
//! asked for the join secret; the main loop decides whether that certificate speaks for
//! the uuid in its `Hello` ([`crate::enrollment`]). A worker without one proves the secret
//! and may be enrolled: it then gets `Enrolled` (a `Welcome` with its new certificate).
//!
//! The join secret is read from its file at every handshake ([`SecretFile`]: one `stat`,
//! a read only when the file changed, on a blocking thread), so `gitmirrord join-token
//! --rotate` takes effect for the next handshake without a restart. Handshakes are rare
//! and bounded, so the `stat` costs nothing that matters, and there is no watcher to keep.

use anyhow::Context;
use gitmirror_common::frames::{self, ReadError};
use gitmirror_common::trust::{Identity, SecretFile, WorkerCert};
use gitmirror_wire::{
    CoordMsg, Enrolled, FromWorker, Hello, Refusal, RefuseCode, ServerHandshake, ServerVerdict,
    Welcome, WorkerMsg, close_code, decode,
};
use quinn::{RecvStream, SendStream, VarInt};
use rustls::server::danger::ClientCertVerifier;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use uuid::Uuid;

use crate::config::Liveness;

pub const MAX_HANDSHAKES: usize = 256;
/// Connections past the secret check that wait for a restarting coordinator's state
/// without holding a handshake slot (more wait holding theirs). A fleet's workers; each
/// is a few tens of KB.
const MAX_WAITING_FOR_STATE: usize = 4096;
/// Largest first frame (`Hello`) read from a peer that has not proved the join secret.
pub const MAX_HELLO: usize = 64 * 1024;
pub const OUTBOUND_QUEUE: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection still before the secret check after this long may be displaced: a worker
/// passes it within a round trip or two, even when a thousand reconnect at once on a
/// loaded machine (at 2 s, a 1M-repo restart displaced 30 of them).
const STALLED_AFTER: Duration = Duration::from_secs(5);
/// Receive buffer asked for the workers' socket. Every worker's packets arrive on this
/// one socket: the kernel's default (208 KiB, ~170 full packets) overflowed when a
/// thousand workers reconnected after a restart or sent their holdings together, and a
/// dropped handshake packet costs its worker a retransmission timeout (docs/scale.md,
/// twelfth session). The kernel caps the size at `net.core.rmem_max` and reports
/// twice what it keeps, so 8 MiB needs `net.core.rmem_max` of 4 MiB.
pub const QUIC_RECV_BUFFER: usize = 8 << 20;

/// What [`size_recv_buffer`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvBuffer {
    pub asked: usize,
    /// As the kernel reports it (twice what it keeps for packets).
    pub got: usize,
}

impl RecvBuffer {
    /// The kernel's cap kept the buffer below what was asked.
    pub fn capped(&self) -> bool {
        self.got < self.asked
    }
}

/// Ask for an `asked`-byte receive buffer on `socket` (capped by `net.core.rmem_max`).
pub fn size_recv_buffer(socket: &std::net::UdpSocket, asked: usize) -> std::io::Result<RecvBuffer> {
    rustix::net::sockopt::set_socket_recv_buffer_size(socket, asked)?;
    let got = rustix::net::sockopt::socket_recv_buffer_size(socket)?;
    Ok(RecvBuffer { asked, got })
}

pub fn software() -> String {
    format!("gitmirrord {}", env!("CARGO_PKG_VERSION"))
}

/// The main loop's answer to a worker that passed the handshake.
pub struct Admission {
    pub id: u32,
    /// The certificate the join token just obtained for it (sent in `Enrolled`).
    pub enrolled: Option<WorkerCert>,
}

/// What connections tell the main loop.
pub enum ConnEvent {
    /// Passed the handshake; the main loop answers with an id or a refusal (and its close
    /// code), and from then on sends this connection's messages through `outbox`.
    Connected {
        conn: u64,
        hello: Hello,
        /// Fingerprint of the CA-issued certificate it presented; `None`: it proved the
        /// join secret instead.
        cert: Option<String>,
        addr: SocketAddr,
        outbox: mpsc::Sender<CoordMsg>,
        handle: quinn::Connection,
        reply: oneshot::Sender<Result<Admission, (Refusal, u32)>>,
    },
    /// A message after `Welcome`.
    Message {
        conn: u64,
        uuid: Uuid,
        msg: WorkerMsg,
    },
    /// The connection ended.
    Closed { conn: u64, uuid: Uuid },
}

pub struct Server {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

/// Start serving workers on `socket`; the join secret is read from `secret` at every
/// handshake, client certificates are checked with `clients` (the fleet's CA).
#[allow(clippy::too_many_arguments)]
pub fn start(
    socket: std::net::UdpSocket,
    identity: &Identity,
    clients: Arc<dyn ClientCertVerifier>,
    endpoint: quinn::EndpointConfig,
    secret: Arc<SecretFile>,
    liveness: &Liveness,
    events: mpsc::Sender<ConnEvent>,
    open: watch::Receiver<bool>,
) -> anyhow::Result<Server> {
    let mut transport =
        gitmirror_common::trust::transport(liveness.keepalive_interval, liveness.suspect_after)?;
    // A worker opens one stream. Further streams and datagrams would only be buffered
    // (nothing reads them), so a peer may open neither.
    Arc::get_mut(&mut transport)
        .context("the QUIC transport settings are shared")?
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .datagram_receive_buffer_size(None);
    let cfg = gitmirror_common::trust::server_config(identity, Some(clients), transport)?;
    match size_recv_buffer(&socket, QUIC_RECV_BUFFER) {
        Ok(b) if b.capped() => tracing::warn!(
            "the workers' QUIC socket has a {} KiB receive buffer, less than the {} KiB asked \
             for: net.core.rmem_max caps it. With hundreds of workers, packets that arrive \
             together are dropped and resent late (a restart's re-attachment slows); set \
             net.core.rmem_max to {} or more (sysctl)",
            b.got / 1024,
            b.asked / 1024,
            b.asked / 2
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot size the workers' QUIC socket's receive buffer: {e}"),
    }
    let endpoint = quinn::Endpoint::new(endpoint, Some(cfg), socket, Arc::new(quinn::TokioRuntime))
        .context("starting the QUIC endpoint")?;
    let ctx = Arc::new(Ctx {
        secret,
        events,
        handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        waiting: Mutex::new(VecDeque::new()),
        next_conn: AtomicU64::new(1),
        open,
        waiting_for_state: Arc::new(Semaphore::new(MAX_WAITING_FOR_STATE)),
    });
    let task = tokio::spawn(accept_loop(endpoint.clone(), ctx));
    Ok(Server { endpoint, task })
}

impl Server {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Close every connection with `SHUTDOWN` and stop accepting.
    pub async fn shutdown(self) {
        self.endpoint.close(
            VarInt::from_u32(close_code::SHUTDOWN),
            b"coordinator shutting down",
        );
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

struct Ctx {
    secret: Arc<SecretFile>,
    events: mpsc::Sender<ConnEvent>,
    handshakes: Arc<Semaphore>,
    /// Connections that have not passed the secret check yet, oldest first, with when
    /// they were accepted: sending on one drops that connection. Entries whose connection
    /// got further are closed.
    waiting: Mutex<VecDeque<(Instant, oneshot::Sender<()>)>>,
    next_conn: AtomicU64,
    /// `true` once the state is loaded and the main loop answers `Connected`.
    open: watch::Receiver<bool>,
    /// Connections past the secret check waiting for the state to load.
    waiting_for_state: Arc<Semaphore>,
}

impl Ctx {
    /// The waiting list, without entries whose connection got further.
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, oneshot::Sender<()>)>> {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|(_, c)| !c.is_closed());
        w
    }
}

/// Connections are accepted from the start, while the state still loads: packets of
/// connections to the previous process get a stateless reset at once, and new ones go
/// through the QUIC handshake and the secret check, then wait for the state without a
/// handshake slot (see [`connection`]). A restarted coordinator then welcomes every
/// worker as soon as it is loaded, instead of meeting handshakes its workers gave up on
/// while they waited in quinn's queue (design.md "Restart: handshakes while loading").
async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<Ctx>) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(permit) = slot(&ctx).await else {
            tracing::warn!(
                "refused a connection from {}: {MAX_HANDSHAKES} handshakes in progress for {}s",
                incoming.remote_address(),
                HANDSHAKE_TIMEOUT.as_secs()
            );
            incoming.refuse();
            continue;
        };
        let (cancel, cancelled) = oneshot::channel();
        ctx.waiting().push_back((Instant::now(), cancel));
        let ctx = ctx.clone();
        tokio::spawn(async move {
            connection(incoming, &ctx, permit, cancelled).await;
        });
    }
}

/// A handshake slot: free, or freed by a connection finishing, or taken from the one
/// that has waited longest before the secret check once it has stalled for
/// [`STALLED_AFTER`]. `None` after [`HANDSHAKE_TIMEOUT`] without one.
async fn slot(ctx: &Ctx) -> Option<OwnedSemaphorePermit> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Ok(permit) = ctx.handshakes.clone().try_acquire_owned() {
            return Some(permit);
        }
        let now = Instant::now();
        let wake = {
            let mut waiting = ctx.waiting();
            match waiting.front() {
                Some((since, _)) if now.duration_since(*since) >= STALLED_AFTER => {
                    if let Some((_, c)) = waiting.pop_front() {
                        let _ = c.send(());
                    }
                    None
                }
                Some((since, _)) => Some(*since + STALLED_AFTER),
                None => Some(deadline),
            }
        };
        let wake = match wake {
            // Displaced one: its task gives the slot back as it ends.
            None => now + Duration::from_secs(1),
            Some(at) => at,
        }
        .min(deadline);
        if now >= deadline {
            return None;
        }
        tokio::select! {
            p = ctx.handshakes.clone().acquire_owned() => return p.ok(),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

async fn write_msg(send: &mut SendStream, msg: &CoordMsg) -> Result<(), String> {
    frames::write(send, msg).await.map_err(|e| e.to_string())
}

async fn refuse(
    conn: &quinn::Connection,
    send: &mut SendStream,
    who: &str,
    refusal: Refusal,
    code: u32,
) {
    if refusal.code == RefuseCode::Pending {
        // Logged once by the main loop; the worker retries until approved.
        tracing::debug!("refused {who}: {}", refusal.message);
    } else {
        tracing::warn!("refused {who}: {}", refusal.message);
    }
    let message = refusal.message.clone();
    let _ = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        write_msg(send, &CoordMsg::Refused(refusal)),
    )
    .await;
    let _ = send.finish();
    // Let the refusal reach the worker before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    conn.close(VarInt::from_u32(code), message.as_bytes());
}

fn protocol_error(conn: &quinn::Connection, who: &str, reason: &str) {
    tracing::warn!("closing the connection of {who}: {reason}");
    conn.close(
        VarInt::from_u32(close_code::PROTOCOL_ERROR),
        reason.as_bytes(),
    );
}

async fn connection(
    incoming: quinn::Incoming,
    ctx: &Ctx,
    permit: OwnedSemaphorePermit,
    cancelled: oneshot::Receiver<()>,
) {
    let addr = incoming.remote_address();
    let admitted = tokio::select! {
        a = pre_auth(incoming, ctx, addr) => a,
        _ = cancelled => {
            tracing::info!(
                "dropped the connection from {addr} before its Hello: all {MAX_HANDSHAKES} handshake slots were taken and it had stalled longest"
            );
            None
        }
    };
    let Some((conn, send, recv, hello, cert)) = admitted else {
        return;
    };
    let mut open = ctx.open.clone();
    let mut permit = Some(permit);
    if !*open.borrow() {
        // The state is still loading. This worker proved the secret or its certificate:
        // it waits without a handshake slot (one of MAX_WAITING_FOR_STATE instead), so the
        // handshakes of the others go on meanwhile.
        let waiting = ctx.waiting_for_state.clone().try_acquire_owned().ok();
        if waiting.is_some() {
            permit = None;
        }
        if open.wait_for(|o| *o).await.is_err() {
            conn.close(
                VarInt::from_u32(close_code::SHUTDOWN),
                b"coordinator shutting down",
            );
            return;
        }
        drop(waiting);
        if let Some(reason) = conn.close_reason() {
            // Gave up while the state loaded: nothing to admit.
            tracing::info!("the worker at {addr} left while the state loaded: {reason}");
            return;
        }
    }
    welcome_and_serve(conn, send, recv, hello, cert, addr, ctx, permit).await;
}

/// From QUIC accept to a `Hello` with the right version and the secret or a certificate
/// of the fleet's CA: the connection, its stream, the `Hello` and the certificate's
/// fingerprint, or `None` when the peer failed (refused, closed, timed out).
async fn pre_auth(
    incoming: quinn::Incoming,
    ctx: &Ctx,
    addr: SocketAddr,
) -> Option<(
    quinn::Connection,
    SendStream,
    RecvStream,
    Hello,
    Option<String>,
)> {
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!("QUIC handshake with {addr} failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!("QUIC handshake with {addr} timed out");
            return None;
        }
    };
    let (mut send, mut recv) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!("connection from {addr} ended before it opened a stream: {e}");
            return None;
        }
        Err(_) => {
            protocol_error(
                &conn,
                &format!("peer at {addr}"),
                "no stream opened within 10s",
            );
            return None;
        }
    };
    let first =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, frames::read(&mut recv, MAX_HELLO)).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => {
                tracing::info!("connection from {addr} ended its stream before Hello");
                return None;
            }
            Ok(Err(ReadError::Stream(e))) => {
                tracing::info!("connection from {addr} ended before Hello: {e}");
                return None;
            }
            Ok(Err(ReadError::Frame(e))) => {
                protocol_error(&conn, &format!("peer at {addr}"), &e.to_string());
                return None;
            }
            Err(_) => {
                protocol_error(&conn, &format!("peer at {addr}"), "no Hello within 10s");
                return None;
            }
        };
    let cert = gitmirror_common::ca::peer_fingerprint(&conn);
    let file = ctx.secret.clone();
    let secret = if cert.is_some() {
        // The certificate speaks for it; the secret is not asked for.
        Ok(String::new())
    } else {
        tokio::task::spawn_blocking(move || file.current())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => {
            // Never the old secret: one rotated away must not admit anyone again.
            tracing::error!(
                "cannot check the join secret of the peer at {addr}: {e:#}; refusing workers until {} is usable again",
                ctx.secret.path().display()
            );
            let refusal = Refusal {
                code: RefuseCode::ProtocolError,
                message: "the coordinator cannot read its join secret (its log says why)".into(),
            };
            let who = format!("worker at {addr}");
            refuse(&conn, &mut send, &who, refusal, close_code::PROTOCOL_ERROR).await;
            return None;
        }
    };
    let hello = match ServerHandshake::new(&secret).on_first_frame(&first, cert.is_some()) {
        ServerVerdict::Accept(h) => h,
        ServerVerdict::Refuse {
            refusal,
            close_code,
        } => {
            // A wrong secret (stolen, or rotated away) is logged with the name and uuid the
            // peer claims, as well as its address.
            let who = match decode::<WorkerMsg>(&first) {
                Ok(WorkerMsg::Hello(h)) if refusal.code == RefuseCode::BadSecret => {
                    format!("worker {:?} (uuid {}) at {addr}", h.name, h.uuid)
                }
                _ => format!("worker at {addr}"),
            };
            refuse(&conn, &mut send, &who, refusal, close_code).await;
            return None;
        }
    };
    Some((conn, send, recv, hello, cert))
}

/// Give a worker that passed the secret check its id, send `Welcome`, then carry its
/// messages until the connection ends.
#[allow(clippy::too_many_arguments)]
async fn welcome_and_serve(
    conn: quinn::Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    hello: Hello,
    cert: Option<String>,
    addr: SocketAddr,
    ctx: &Ctx,
    permit: Option<OwnedSemaphorePermit>,
) {
    let uuid = hello.uuid;
    let name = hello.name.clone();
    // Answered in the worker's own version (SPEC §12: the previous one is still accepted).
    let protocol = hello.protocol;
    let conn_id = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let (outbox, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (reply, answer) = oneshot::channel();
    let connected = ConnEvent::Connected {
        conn: conn_id,
        hello,
        cert,
        addr,
        outbox,
        handle: conn.clone(),
        reply,
    };
    if ctx.events.send(connected).await.is_err() {
        conn.close(
            VarInt::from_u32(close_code::SHUTDOWN),
            b"coordinator shutting down",
        );
        return;
    }
    let (id, enrolled) = match answer.await {
        Ok(Ok(a)) => (a.id, a.enrolled),
        Ok(Err((mut refusal, code))) => {
            // Codes a worker of that version can decode.
            refusal.code = refusal.code.for_protocol(protocol);
            refuse(
                &conn,
                &mut send,
                &format!("worker {name:?} (uuid {uuid}) at {addr}"),
                refusal,
                code,
            )
            .await;
            return;
        }
        Err(_) => {
            conn.close(
                VarInt::from_u32(close_code::SHUTDOWN),
                b"coordinator shutting down",
            );
            return;
        }
    };
    let who = format!("worker {id} ({name}) at {addr}");
    let welcome = Welcome {
        protocol,
        worker_id: id,
        software: software(),
    };
    let first = match enrolled {
        None => CoordMsg::Welcome(welcome),
        Some(c) => {
            tracing::info!("{who} enrolled: it got a certificate naming uuid {uuid}");
            CoordMsg::Enrolled(Enrolled {
                welcome,
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
            })
        }
    };
    let welcomed = tokio::time::timeout(HANDSHAKE_TIMEOUT, write_msg(&mut send, &first)).await;
    drop(permit);
    if !matches!(welcomed, Ok(Ok(()))) {
        tracing::info!("{who}: connection lost while sending Welcome");
    } else {
        tracing::info!("{who} connected");
        let writer = tokio::spawn(write_loop(send, rx, conn.clone(), who.clone()));
        let reason = read_loop(&mut recv, ctx, conn_id, uuid, &conn, &who).await;
        tracing::info!("{who} disconnected: {reason}");
        writer.abort();
    }
    let _ = ctx
        .events
        .send(ConnEvent::Closed {
            conn: conn_id,
            uuid,
        })
        .await;
}

async fn write_loop(
    mut send: SendStream,
    mut rx: mpsc::Receiver<CoordMsg>,
    conn: quinn::Connection,
    who: String,
) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = write_msg(&mut send, &msg).await {
            tracing::debug!("{who}: write failed: {e}");
            conn.close(VarInt::from_u32(close_code::NORMAL), b"write failed");
            return;
        }
    }
}

/// Read frames until the connection ends; returns why it ended. What each frame may say
/// at that point, and chunked lists put back together, is [`FromWorker`]'s: the rest of
/// the coordinator sees whole messages in the order the protocol allows.
async fn read_loop(
    recv: &mut RecvStream,
    ctx: &Ctx,
    conn_id: u64,
    uuid: Uuid,
    conn: &quinn::Connection,
    who: &str,
) -> String {
    let mut session = FromWorker::new();
    loop {
        let reason = match frames::read(recv, gitmirror_wire::MAX_FRAME).await {
            Ok(Some(body)) => match session.on_frame(&body) {
                Ok(Some(msg)) => {
                    let event = ConnEvent::Message {
                        conn: conn_id,
                        uuid,
                        msg,
                    };
                    if ctx.events.send(event).await.is_err() {
                        return "coordinator shutting down".into();
                    }
                    continue;
                }
                Ok(None) => continue,
                Err(e) => e.to_string(),
            },
            Ok(None) => {
                return conn
                    .close_reason()
                    .map_or_else(|| "the worker ended its stream".into(), |r| r.to_string());
            }
            Err(ReadError::Stream(e)) => return conn.close_reason().map_or(e, |r| r.to_string()),
            Err(ReadError::Frame(e)) => e.to_string(),
        };
        protocol_error(conn, who, &reason);
        return reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §12 (1,000 workers on one coordinator): the workers' socket asks for
    /// [`QUIC_RECV_BUFFER`] and gets what `net.core.rmem_max` allows, which the kernel
    /// reports doubled; a cap below the ask is reported (and logged by `start`).
    #[test]
    fn spec_12_the_workers_socket_gets_a_large_receive_buffer() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("reading net.core.rmem_max")
            .trim()
            .parse()
            .expect("net.core.rmem_max is a number");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap();
        let b = size_recv_buffer(&socket, QUIC_RECV_BUFFER).unwrap();
        assert_eq!(b.asked, QUIC_RECV_BUFFER);
        assert_eq!(
            b.got,
            2 * QUIC_RECV_BUFFER.min(rmem_max),
            "{b:?}, before {before}"
        );
        assert_eq!(b.capped(), 2 * rmem_max < QUIC_RECV_BUFFER, "{b:?}");
        if 2 * rmem_max > before {
            assert!(b.got > before, "{b:?}, before {before}");
        }
    }
}
