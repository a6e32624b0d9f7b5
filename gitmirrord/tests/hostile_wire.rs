//! Hostile peers on the QUIC side against the real `gitmirrord` binary (SPEC §4.1, §4.2):
//! an older protocol version, frames over the 16 MiB cap on several streams, and floods
//! of connections, handshakes and streams. The coordinator must neither panic nor grow
//! its memory without bound (VmRSS of the process is measured), and a well-behaved worker
//! still joins and gets its assignment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use common::{REPOS, TestWorker, hello};
use gitmirror_wire::{
    CoordMsg, MAX_FRAME, PROTOCOL_VERSION, RefuseCode, WorkerMsg, close_code, encode_frame,
};
use hostile::{Daemon, RssSampler, figure};
use quinn::{Connection, Endpoint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

const SUITE: &str = "hostile_wire";

/// A peer that does not know the certificate pin: it takes whatever the coordinator
/// presents, as an attacker on the network would.
#[derive(Debug)]
struct AnyCert(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A client endpoint offering `alpn`, trusting any certificate, with small send buffers
/// (so that hundreds of hostile connections do not cost the test itself gigabytes).
fn hostile_endpoint(alpn: &[&[u8]]) -> Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(algs)))
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()))
        .send_window(256 * 1024)
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport));
    let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

async fn connect(ep: &Endpoint, addr: SocketAddr) -> Result<Connection, String> {
    let connecting = ep
        .connect(addr, gitmirror_common::trust::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Read one frame's message from `recv`.
async fn recv_msg(recv: &mut quinn::RecvStream) -> Result<CoordMsg, String> {
    let mut header = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(15), recv.read_exact(&mut header))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let len = gitmirror_wire::frame::body_len(header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    gitmirror_wire::decode(&body).map_err(|e| e.to_string())
}

/// A coordinator binary on loopback with a three-repo plain-directory index.
fn start_daemon(dir: &Path) -> (Daemon, SocketAddr, SocketAddr, gitmirror_wire::JoinToken) {
    gitmirror_common::install_crypto_provider();
    common::write_index(&dir.join("index"));
    let path = dir.join("gitmirrord.yaml");
    std::fs::write(
        &path,
        hostile::config(dir, "127.0.0.1:0", "127.0.0.1:0", ""),
    )
    .unwrap();
    let d = Daemon::start(&[], &path);
    let (quic, http) = d.ready();
    let token = gitmirror_common::trust::Identity::load_or_create(&dir.join("state"))
        .unwrap()
        .join_token();
    (d, quic, http, token)
}

/// A well-behaved worker joins and gets every repo; returns how long that took.
async fn good_worker_gets_assignment(
    quic: SocketAddr,
    token: &gitmirror_wire::JoinToken,
    uuid: u128,
) -> Duration {
    let t = Instant::now();
    let (mut w, _) = TestWorker::join(quic, token, Uuid::from_u128(uuid)).await;
    w.holdings(vec![]).await;
    let d = w.next_assign().await;
    let mut got: Vec<&str> = d.upsert.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, REPOS.to_vec(), "the only worker gets every repo");
    let took = t.elapsed();
    w.conn.close(0u32.into(), b"done");
    took
}

async fn wait_index(http: SocketAddr) {
    common::eventually(20, "the index to load", || async {
        let (_, body) = common::http_raw(http, b"GET /api/repos HTTP/1.1\r\n\r\n").await;
        body.contains("\"total\":3").then_some(())
    })
    .await;
}

/// SPEC §4.2: a peer of an older protocol version (offering only the version-less ALPN
/// besides its own) is refused with a message naming both versions, to it and in the
/// coordinator's log; a Hello of another version whose other fields no longer decode is
/// still a version mismatch, not a decoding error; a peer sharing no ALPN at all fails
/// the TLS handshake. The coordinator is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_protocol_peer_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (d, quic, http, token) = start_daemon(dir.path());
    wait_index(http).await;
    let old = gitmirror_wire::MIN_PROTOCOL_VERSION - 1;
    let mut tried = 0;

    // An older worker: ALPN gitmirror/<old> and the version-less one; its own Hello.
    let ep = hostile_endpoint(&[format!("gitmirror/{old}").as_bytes(), b"gitmirror"]);
    let mut h = hello(Uuid::from_u128(77), &token.secret);
    h.protocol = old;
    let frames = [
        encode_frame(&WorkerMsg::Hello(h)).unwrap(),
        // variant 0, protocol `old`, then fields this version cannot read.
        {
            let body = [0u8, old as u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&body);
            f
        },
    ];
    for frame in frames {
        tried += 1;
        let conn = connect(&ep, quic).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        let CoordMsg::Refused(r) = recv_msg(&mut recv).await.unwrap() else {
            panic!("expected Refused")
        };
        assert_eq!(r.code, RefuseCode::VersionMismatch, "{}", r.message);
        assert!(
            r.message.contains(&format!(
                "coordinator speaks gitmirror protocol {PROTOCOL_VERSION}"
            )) && r.message.contains(&format!("this worker speaks {old}")),
            "{}",
            r.message
        );
        let why = tokio::time::timeout(Duration::from_secs(15), conn.closed())
            .await
            .unwrap()
            .to_string();
        assert!(
            why.contains("version mismatch")
                && why.contains(&format!("{}", close_code::VERSION_MISMATCH)),
            "{why}"
        );
    }
    let logged = d.wait_line(
        &[
            "refused worker at 127.0.0.1:",
            &format!("speaks gitmirror protocol {PROTOCOL_VERSION}"),
            &format!("this worker speaks {old}"),
        ],
        10,
    );
    eprintln!("coordinator log: {logged}");

    // No ALPN in common: the TLS handshake fails, nothing else happens.
    tried += 1;
    let ep = hostile_endpoint(&[format!("gitmirror/{old}").as_bytes()]);
    let err = connect(&ep, quic).await.expect_err("no common ALPN");
    eprintln!("no common ALPN: {err}");

    assert!(d.alive());
    let took = good_worker_gets_assignment(quic, &token, 1).await;
    figure(SUITE, "older_version_peers_refused", tried);
    figure(
        SUITE,
        "good_worker_assignment_after_old_peers_ms",
        took.as_millis(),
    );
}

/// SPEC §4.2: a frame header above 16 MiB is refused from its header on every stream a
/// peer can open, before and after `Welcome` (before it, a first frame above 64 KiB
/// already is); a peer cannot open a second stream; a frame at the cap full of garbage
/// is refused as undecodable; each closes only its own connection, with PROTOCOL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_on_several_streams_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (d, quic, http, token) = start_daemon(dir.path());
    wait_index(http).await;
    let over = [MAX_FRAME as u32 + 1, u32::MAX, (MAX_FRAME as u32) * 2];
    let mut refused = 0;

    // A worker that stays connected throughout: its connection must be untouched.
    let (mut bystander, _) = TestWorker::join(quic, &token, Uuid::from_u128(1000)).await;
    bystander.holdings(vec![]).await;
    bystander.next_assign().await;

    // Before the secret is proved, a first frame may not even reach the 16 MiB cap.
    let ep = hostile_endpoint(&[gitmirror_wire::ALPN, gitmirror_wire::ALPN_ANY_VERSION]);
    let conn = connect(&ep, quic).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let hello_cap = gitmirrord::server::MAX_HELLO;
    send.write_all(&(hello_cap as u32 + 1).to_le_bytes())
        .await
        .unwrap();
    let why = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .unwrap()
        .to_string();
    assert!(
        why.contains(&format!("exceeds the {hello_cap} byte limit")),
        "{why}"
    );
    refused += 1;

    for (i, len) in over.iter().enumerate() {
        // Before Hello, on the first stream.
        let ep = hostile_endpoint(&[gitmirror_wire::ALPN, gitmirror_wire::ALPN_ANY_VERSION]);
        let conn = connect(&ep, quic).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&len.to_le_bytes()).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(15), conn.closed())
            .await
            .unwrap()
            .to_string();
        assert!(
            why.contains(&format!("{}", close_code::PROTOCOL_ERROR)) && why.contains("exceeds"),
            "{why}"
        );
        refused += 1;

        // After Welcome, on the worker's stream.
        let (mut w, _) = TestWorker::join(quic, &token, Uuid::from_u128(2000 + i as u128)).await;
        w.send_raw(&len.to_le_bytes()).await.unwrap();
        let why = w.closed().await;
        assert!(
            why.contains(&format!("{}", close_code::PROTOCOL_ERROR)) && why.contains("exceeds"),
            "{why}"
        );
        refused += 1;

        // After Welcome, on further streams: the coordinator reads only the first, and a
        // peer may open no other (stream limit 1), so nothing can pile up unread there.
        // The worker's own stream goes on working.
        let (mut w, _) = TestWorker::join(quic, &token, Uuid::from_u128(3000 + i as u128)).await;
        let mut extra_opened = 0;
        for _ in 0..3 {
            match tokio::time::timeout(Duration::from_millis(500), w.conn.open_bi()).await {
                Ok(Ok((mut s, _r))) => {
                    extra_opened += 1;
                    let _ = s.write_all(&len.to_le_bytes()).await;
                    let _ = s.write_all(&[0xAB; 4096]).await;
                }
                Ok(Err(e)) => panic!("open_bi: {e}"),
                Err(_) => break,
            }
        }
        assert_eq!(extra_opened, 0, "a peer may open one stream only");
        w.holdings(vec![]).await;
        let d = w.next_assign().await;
        assert!(d.drop.is_empty());
        refused += 1;
    }

    // A frame exactly at the cap, after Welcome, holding garbage: undecodable.
    let (mut w, _) = TestWorker::join(quic, &token, Uuid::from_u128(4000)).await;
    let mut frame = (MAX_FRAME as u32).to_le_bytes().to_vec();
    frame.extend(std::iter::repeat_n(0xffu8, MAX_FRAME));
    let _ = w.send_raw(&frame).await;
    let why = w.closed().await;
    assert!(
        why.contains(&format!("{}", close_code::PROTOCOL_ERROR)) && why.contains("undecodable"),
        "{why}"
    );
    refused += 1;

    // The bystander's connection is unaffected: its stream still answers.
    assert!(bystander.conn.close_reason().is_none());
    bystander
        .send(&WorkerMsg::Outcomes(gitmirror_wire::OutcomeBatch {
            outcomes: vec![],
        }))
        .await
        .unwrap();
    assert!(d.alive());
    assert_eq!(
        common::http_raw(http, b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .0,
        200
    );
    figure(SUITE, "oversized_frames_sent", refused);
}

/// Hold `n` connections that finish the QUIC handshake and then say nothing (or open a
/// stream and say nothing). Returns (established, refused or failed).
async fn silent_connections(
    quic: SocketAddr,
    n: usize,
    open_stream: bool,
) -> (
    Vec<(Endpoint, Connection, Option<quinn::SendStream>)>,
    usize,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let ep = hostile_endpoint(&[gitmirror_wire::ALPN, gitmirror_wire::ALPN_ANY_VERSION]);
            let conn = connect(&ep, quic).await?;
            let send = if open_stream {
                let (mut s, _) = conn.open_bi().await.map_err(|e| e.to_string())?;
                // Open the stream on the wire: a stream is only announced by data.
                s.write_all(&[1]).await.map_err(|e| e.to_string())?;
                Some(s)
            } else {
                None
            };
            Ok::<_, String>((ep, conn, send))
        });
    }
    let mut held = Vec::new();
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(c) => held.push(c),
            Err(_) => failed += 1,
        }
    }
    (held, failed)
}

/// SPEC §4.2 (and §4.1): floods from peers that never authenticate: hundreds of
/// concurrent connections that finish the QUIC handshake and stay silent, peers that
/// announce a frame at the 16 MiB cap and stream its body before any Hello, and peers
/// that try to open hundreds of streams each. The coordinator stays up, its resident
/// memory stays bounded, a well-behaved worker joins during the silent flood, and after
/// the floods it still gets its assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_leave_the_coordinator_bounded_and_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (d, quic, http, token) = start_daemon(dir.path());
    wait_index(http).await;
    let pid = d.child.id();
    let baseline = d.rss_kib();
    let sampler = RssSampler::start(pid);
    let big = std::env::var("GITMIRROR_FAULTS").is_ok_and(|v| v == "long");
    let silent_n = if big { 1000 } else { 300 };
    let fat_n = if big { 128 } else { 64 };
    let stream_conns = if big { 40 } else { 10 };
    let streams_each = if big { 1000 } else { 300 };

    // 1. Silent connections (half with a stream open), all at once.
    let t = Instant::now();
    let (held_a, failed_a) = silent_connections(quic, silent_n / 2, false).await;
    let (held_b, failed_b) = silent_connections(quic, silent_n / 2, true).await;
    figure(SUITE, "silent_connections_tried", silent_n);
    figure(
        SUITE,
        "silent_connections_established",
        held_a.len() + held_b.len(),
    );
    figure(SUITE, "silent_connections_refused", failed_a + failed_b);
    // While they are held, a real worker joins.
    let took = tokio::time::timeout(
        Duration::from_secs(30),
        good_worker_gets_assignment(quic, &token, 1),
    )
    .await
    .expect("a worker joins while silent connections are held");
    figure(
        SUITE,
        "good_worker_assignment_during_silent_flood_ms",
        took.as_millis(),
    );
    figure(SUITE, "silent_flood_secs", t.elapsed().as_secs_f32());
    // The coordinator made room by dropping the peers that had waited longest.
    let dropped = held_a
        .iter()
        .chain(&held_b)
        .filter(|(_, c, _)| c.close_reason().is_some())
        .count();
    figure(SUITE, "silent_connections_dropped_by_coordinator", dropped);
    drop(held_a);
    drop(held_b);

    // 2. Fat first frames: a header at the cap and as much body as the peer can push,
    // from many peers at once, before any Hello.
    let pushed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..fat_n {
        let pushed = pushed.clone();
        tasks.spawn(async move {
            let ep = hostile_endpoint(&[gitmirror_wire::ALPN, gitmirror_wire::ALPN_ANY_VERSION]);
            let Ok(conn) = connect(&ep, quic).await else {
                return;
            };
            let Ok((mut s, _r)) = conn.open_bi().await else {
                return;
            };
            if s.write_all(&(MAX_FRAME as u32).to_le_bytes())
                .await
                .is_err()
            {
                return;
            }
            let chunk = vec![0x5Au8; 64 * 1024];
            let deadline = Instant::now() + Duration::from_secs(12);
            for _ in 0..MAX_FRAME / chunk.len() {
                if Instant::now() > deadline {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                    Ok(Ok(())) => {
                        pushed.fetch_add(chunk.len(), Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(12), conn.closed()).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    figure(SUITE, "fat_first_frame_peers", fat_n);
    figure(
        SUITE,
        "fat_first_frame_bytes_accepted_mib",
        pushed.load(Ordering::Relaxed) / (1024 * 1024),
    );
    figure(
        SUITE,
        "rss_peak_after_fat_frames_mib",
        sampler.peak_kib() / 1024,
    );

    // 3. Stream floods: each peer tries to open hundreds of streams and write to each.
    let opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..stream_conns {
        let opened = opened.clone();
        tasks.spawn(async move {
            let ep = hostile_endpoint(&[gitmirror_wire::ALPN, gitmirror_wire::ALPN_ANY_VERSION]);
            let Ok(conn) = connect(&ep, quic).await else {
                return;
            };
            let mut streams = Vec::new();
            for _ in 0..streams_each {
                match tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await {
                    Ok(Ok((mut s, r))) => {
                        if s.write_all(&[0x42; 16 * 1024]).await.is_err() {
                            break;
                        }
                        opened.fetch_add(1, Ordering::Relaxed);
                        streams.push((s, r));
                    }
                    _ => break,
                }
            }
            drop(streams);
            conn.close(0u32.into(), b"bye");
        });
    }
    while tasks.join_next().await.is_some() {}
    figure(
        SUITE,
        "stream_flood_streams_tried",
        stream_conns * streams_each,
    );
    figure(
        SUITE,
        "stream_flood_streams_opened",
        opened.load(Ordering::Relaxed),
    );

    // Afterwards: the coordinator is up and a worker gets its assignment.
    assert!(d.alive(), "gitmirrord died:\n{}", d.lines().join("\n"));
    // The same worker as during the flood (still suspect, so it keeps every repo).
    let took = good_worker_gets_assignment(quic, &token, 1).await;
    figure(
        SUITE,
        "good_worker_assignment_after_floods_ms",
        took.as_millis(),
    );
    let peak = sampler.peak_kib();
    drop(sampler);
    let after = d.rss_kib();
    figure(SUITE, "rss_baseline_mib", baseline / 1024);
    figure(SUITE, "rss_peak_mib", peak / 1024);
    figure(SUITE, "rss_after_mib", after / 1024);
    assert!(
        !d.lines().iter().any(|l| l.contains("panicked")),
        "{}",
        d.lines().join("\n")
    );
    assert!(
        peak.saturating_sub(baseline) < 256 * 1024,
        "resident memory grew from {baseline} KiB to {peak} KiB"
    );
}

/// SPEC §12 (no request stalls the loop that answers workers): the main loop takes API
/// requests ahead of other waiting work, a few in a row at most. A flood of API requests
/// from 64 clients (the HTTP server's connection slots), each asking again as soon as it
/// is answered, does not keep a worker from joining and getting its assignment, and the
/// flood is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_flood_does_not_starve_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, quic, http, token) = start_daemon(dir.path());
    wait_index(http).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..64)
        .map(|i| {
            let (stop, answered) = (stop.clone(), answered.clone());
            tokio::spawn(async move {
                let path: &[u8] = match i % 4 {
                    0 => b"GET /api/status HTTP/1.1\r\n\r\n",
                    1 => b"GET /metrics HTTP/1.1\r\n\r\n",
                    2 => b"GET /api/repos?limit=2 HTTP/1.1\r\n\r\n",
                    _ => b"GET /api/repos/a/b/c HTTP/1.1\r\n\r\n",
                };
                while !stop.load(Ordering::Relaxed) {
                    if common::http_raw(http, path).await.0 != 0 {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // The flood is under way before the worker comes.
    common::eventually(20, "the flood to be answered", || async {
        (answered.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    let before = answered.load(Ordering::Relaxed);
    let took = tokio::time::timeout(
        Duration::from_secs(30),
        good_worker_gets_assignment(quic, &token, 7),
    )
    .await
    .expect("a worker joins and gets its assignment during an API flood");
    let during = answered.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    figure(
        SUITE,
        "good_worker_assignment_during_api_flood_ms",
        took.as_millis(),
    );
    figure(SUITE, "api_requests_answered_during_the_join", during);
    assert!(during > 0, "the API kept answering while the worker joined");
}
