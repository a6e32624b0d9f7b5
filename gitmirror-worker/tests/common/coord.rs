//! A minimal coordinator for tests: the real TLS identity, pinning and handshake from
//! `common` and `wire`, driven by the test step by step.

use gitmirror_common::trust;
use gitmirror_wire::{
    CoordMsg, Hello, Holdings, JoinToken, PROTOCOL_VERSION, Reassembly, ServerHandshake,
    ServerVerdict, Welcome, WorkerMsg, close_code, decode, encode_frame,
};
use std::net::SocketAddr;
use std::time::Duration;

pub const STEP: Duration = Duration::from_secs(30);

pub struct FakeCoordinator {
    pub endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    /// The token a worker needs to join.
    pub token: JoinToken,
    _dir: tempfile::TempDir,
}

pub struct Session {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub hello: Hello,
    /// The last `PeerInfo` (protocol 7), which [`Session::recv`] keeps aside.
    pub peer_info: Option<gitmirror_wire::PeerInfo>,
    /// Every `Outcome7` received (protocol 7), in order.
    pub outcomes7: Vec<gitmirror_wire::Outcome7>,
    /// Chunked lists put back together as the real coordinator's connection task does.
    parts: Reassembly,
}

impl FakeCoordinator {
    /// Listen on a free localhost UDP port (call inside a tokio runtime).
    pub fn start() -> Self {
        gitmirror_common::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let id = trust::Identity::load_or_create(dir.path()).unwrap();
        let transport =
            trust::transport(Duration::from_millis(500), Duration::from_secs(3)).unwrap();
        let cfg = trust::server_config(&id, None, transport).unwrap();
        let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        Self {
            endpoint,
            addr,
            token: id.join_token(),
            _dir: dir,
        }
    }

    /// Accept the next connection and read its `Hello`; the verdict comes from the real
    /// server handshake. Returns the session and the verdict, nothing sent yet.
    pub async fn next_hello(&self) -> (Session, ServerVerdict) {
        let incoming = tokio::time::timeout(STEP, self.endpoint.accept())
            .await
            .expect("a worker connects")
            .unwrap();
        let conn = incoming.await.expect("QUIC handshake");
        let (send, mut recv) = tokio::time::timeout(STEP, conn.accept_bi())
            .await
            .expect("stream opened")
            .unwrap();
        let body = read_frame(&mut recv).await.expect("Hello frame");
        let verdict = ServerHandshake::new(&self.token.secret).on_first_frame(&body, false);
        let hello = match &verdict {
            ServerVerdict::Accept(h) => h.clone(),
            ServerVerdict::Refuse { .. } => match decode::<WorkerMsg>(&body) {
                Ok(WorkerMsg::Hello(h)) => h,
                other => panic!("not a Hello: {other:?}"),
            },
        };
        (
            Session {
                conn,
                send,
                recv,
                hello,
                peer_info: None,
                outcomes7: Vec::new(),
                parts: Reassembly::new(),
            },
            verdict,
        )
    }

    /// Accept a worker and welcome it as `worker_id`.
    pub async fn accept(&self, worker_id: u32) -> Session {
        let (mut s, verdict) = self.next_hello().await;
        assert!(
            matches!(verdict, ServerVerdict::Accept(_)),
            "worker refused: {verdict:?}"
        );
        s.send(CoordMsg::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            worker_id,
            software: "fake".into(),
        }))
        .await;
        s
    }

    /// Accept a connection and refuse it as the real coordinator would.
    pub async fn refuse_next(&self) -> Hello {
        let (mut s, verdict) = self.next_hello().await;
        let ServerVerdict::Refuse {
            refusal,
            close_code,
        } = verdict
        else {
            panic!("expected a refusal")
        };
        s.send(CoordMsg::Refused(refusal.clone())).await;
        let _ = s.send.finish();
        s.conn.close(close_code.into(), refusal.message.as_bytes());
        s.hello
    }
}

impl Session {
    pub async fn send(&mut self, msg: CoordMsg) {
        let frame = encode_frame(&msg).unwrap();
        self.send.write_all(&frame).await.unwrap();
    }

    /// The next whole message (holdings and outcomes reassembled from their parts).
    pub async fn recv(&mut self) -> WorkerMsg {
        loop {
            let body = tokio::time::timeout(STEP, read_frame(&mut self.recv))
                .await
                .expect("a message from the worker in time")
                .expect("stream open");
            match decode(&body).unwrap() {
                WorkerMsg::HoldingsPart(p) => {
                    if let Some(repos) = self.parts.holdings_part(p).unwrap() {
                        return WorkerMsg::Holdings(Holdings { repos });
                    }
                }
                WorkerMsg::OutcomeChanges(c) => self.parts.outcome_changes(c).unwrap(),
                WorkerMsg::Outcomes(b) => {
                    return WorkerMsg::Outcomes(self.parts.outcomes(b).unwrap());
                }
                WorkerMsg::PeerInfo(p) => self.peer_info = Some(p),
                // Protocol 7: given back as `Outcomes`, the extra fields kept aside.
                WorkerMsg::Outcomes7(b) => {
                    let b = self.parts.outcomes7(b).unwrap();
                    let outcomes = b.outcomes.iter().map(|o| o.outcome.clone()).collect();
                    self.outcomes7.extend(b.outcomes);
                    return WorkerMsg::Outcomes(gitmirror_wire::OutcomeBatch { outcomes });
                }
                m => return m,
            }
        }
    }

    /// Skip messages until `f` picks one.
    pub async fn recv_until<T>(&mut self, mut f: impl FnMut(WorkerMsg) -> Option<T>) -> T {
        loop {
            if let Some(t) = f(self.recv().await) {
                return t;
            }
        }
    }

    pub fn close(&self) {
        self.conn
            .close(close_code::SHUTDOWN.into(), b"coordinator restarting");
    }
}

pub async fn read_frame(recv: &mut quinn::RecvStream) -> Option<Vec<u8>> {
    gitmirror_common::frames::read(recv, gitmirror_wire::MAX_FRAME)
        .await
        .ok()
        .flatten()
}
