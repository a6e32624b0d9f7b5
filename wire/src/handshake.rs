//! The first exchange of a connection, as two small state machines without I/O.
//!
//! The worker sends `Hello`; the coordinator answers `Welcome`, `Enrolled` (protocol 4: a
//! welcome carrying the certificate the join token just obtained) or `Refused`, and closes
//! on refusal. A worker that presented a certificate of the fleet's CA in TLS is not asked
//! for the join secret: its certificate speaks for it (SPEC §17). The protocol version is the first field of `Hello`, readable by any version
//! ([`peek_protocol`]), so a mismatch is reported naming both versions instead of as an
//! undecodable frame.

use crate::frame::{FrameError, decode, encode_frame};
use crate::message::{CoordMsg, Enrolled, Hello, Refusal, RefuseCode, Welcome, WorkerMsg};
use crate::token::secrets_equal;
use crate::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, close_code};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandshakeError {
    #[error(
        "protocol version mismatch: this worker speaks gitmirror protocol {ours}, the coordinator speaks {theirs}"
    )]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("coordinator refused this worker ({code:?}): {message}")]
    Refused { code: RefuseCode, message: String },
    #[error("coordinator sent {0} before Welcome")]
    Unexpected(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Read the protocol version out of a worker's first frame, whatever its version.
/// `Hello` is variant 0 and `protocol` its first field; both are postcard varints.
pub fn peek_protocol(body: &[u8]) -> Option<u32> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
    if variant != 0 {
        return None;
    }
    postcard::take_from_bytes::<u32>(rest).ok().map(|(v, _)| v)
}

/// What the coordinator's answer to `Hello` gave the worker.
#[derive(Debug, PartialEq)]
pub struct Welcomed {
    pub welcome: Welcome,
    /// The certificate and key the join token obtained (protocol 4), to keep and present
    /// on every later connection.
    pub enrolled: Option<Enrolled>,
}

/// Worker side.
#[derive(Debug)]
pub struct ClientHandshake {
    hello: Hello,
}

impl ClientHandshake {
    pub fn new(hello: Hello) -> Self {
        Self { hello }
    }

    /// The frame to send first.
    pub fn hello_frame(&self) -> Result<Vec<u8>, FrameError> {
        encode_frame(&WorkerMsg::Hello(self.hello.clone()))
    }

    /// Interpret the coordinator's first frame body.
    pub fn on_reply(&self, body: &[u8]) -> Result<Welcomed, HandshakeError> {
        let (welcome, enrolled) = match decode::<CoordMsg>(body)? {
            CoordMsg::Welcome(w) => (w, None),
            CoordMsg::Enrolled(e) => (e.welcome.clone(), Some(e)),
            CoordMsg::Refused(Refusal { code, message }) => {
                return Err(HandshakeError::Refused { code, message });
            }
            CoordMsg::Assign(_) => return Err(HandshakeError::Unexpected("an assignment")),
            CoordMsg::OutcomeAck { .. } => {
                return Err(HandshakeError::Unexpected("an acknowledgement"));
            }
            CoordMsg::FetchNow { .. } | CoordMsg::Relist { .. } => {
                return Err(HandshakeError::Unexpected("a fetch request"));
            }
            CoordMsg::RefsQuery(_) => return Err(HandshakeError::Unexpected("a refs query")),
            CoordMsg::HostBudgets(_) => return Err(HandshakeError::Unexpected("host budgets")),
            CoordMsg::Assign7(_) => return Err(HandshakeError::Unexpected("an assignment")),
            CoordMsg::PeerPlane(_) | CoordMsg::PeerDirectory(_) | CoordMsg::PeerGrants(_) => {
                return Err(HandshakeError::Unexpected("peer plane settings"));
            }
        };
        if welcome.protocol != self.hello.protocol {
            return Err(HandshakeError::VersionMismatch {
                ours: self.hello.protocol,
                theirs: welcome.protocol,
            });
        }
        Ok(Welcomed { welcome, enrolled })
    }
}

/// What the coordinator does with a worker's first frame.
#[derive(Debug, PartialEq)]
pub enum ServerVerdict {
    /// Version and secret are good; the coordinator still has to give it an id.
    Accept(Hello),
    /// Send this refusal, then close the connection with `close_code`.
    Refuse { refusal: Refusal, close_code: u32 },
}

/// Coordinator side.
pub struct ServerHandshake<'a> {
    secret: &'a str,
}

/// The join secret is never printed (issue 10 finding 5).
impl std::fmt::Debug for ServerHandshake<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

impl<'a> ServerHandshake<'a> {
    pub fn new(secret: &'a str) -> Self {
        Self { secret }
    }

    /// `certified`: the peer presented a certificate the fleet's CA issued (checked by TLS);
    /// the secret is then not asked for, and who it may speak for is the registry's call.
    pub fn on_first_frame(&self, body: &[u8], certified: bool) -> ServerVerdict {
        let refuse = |code, message: String, close| ServerVerdict::Refuse {
            refusal: Refusal { code, message },
            close_code: close,
        };
        match peek_protocol(body) {
            Some(v) if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) => {}
            Some(theirs) => {
                return refuse(
                    RefuseCode::VersionMismatch,
                    format!(
                        "protocol version mismatch: the coordinator speaks gitmirror protocol {PROTOCOL_VERSION} (accepting workers of {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}), this worker speaks {theirs}"
                    ),
                    close_code::VERSION_MISMATCH,
                );
            }
            None => {
                return refuse(
                    RefuseCode::ProtocolError,
                    "the first message must be Hello".into(),
                    close_code::PROTOCOL_ERROR,
                );
            }
        }
        let hello = match decode::<WorkerMsg>(body) {
            Ok(WorkerMsg::Hello(h)) => h,
            Ok(_) => {
                return refuse(
                    RefuseCode::ProtocolError,
                    "the first message must be Hello".into(),
                    close_code::PROTOCOL_ERROR,
                );
            }
            Err(e) => {
                return refuse(
                    RefuseCode::ProtocolError,
                    format!("undecodable Hello: {e}"),
                    close_code::PROTOCOL_ERROR,
                );
            }
        };
        if !certified && !secrets_equal(&hello.secret, self.secret) {
            return refuse(
                RefuseCode::BadSecret,
                "wrong join token secret: get the current token with `gitmirrord join-token`"
                    .into(),
                close_code::BAD_SECRET,
            );
        }
        if !hello.weight.is_finite() || hello.weight <= 0.0 {
            return refuse(
                RefuseCode::ProtocolError,
                format!("weight must be a positive number, got {}", hello.weight),
                close_code::PROTOCOL_ERROR,
            );
        }
        ServerVerdict::Accept(hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 10 finding 5: the coordinator's side of the handshake never prints the secret.
    /// SPEC §12 "Upgrades": the coordinator of protocol 8 accepts the previous version (7),
    /// and still everything down to the floor, 2 (C15), but nothing newer.
    #[test]
    fn spec_12_protocol_7_still_accepted_by_8() {
        for v in 2..=8 {
            let c = ClientHandshake::new(hello(v, "s"));
            let v2 =
                ServerHandshake::new("s").on_first_frame(&c.hello_frame().unwrap()[4..], false);
            assert_eq!(v2, ServerVerdict::Accept(hello(v, "s")), "protocol {v}");
        }
        for v in [0, 1, 9] {
            let c = ClientHandshake::new(hello(v, "s"));
            let got =
                ServerHandshake::new("s").on_first_frame(&c.hello_frame().unwrap()[4..], false);
            assert!(
                matches!(
                    &got,
                    ServerVerdict::Refuse {
                        close_code: close_code::VERSION_MISMATCH,
                        ..
                    }
                ),
                "protocol {v}: {got:?}"
            );
        }
    }

    #[test]
    fn issue10_f5_server_handshake_debug_does_not_print_the_secret() {
        let shown = format!("{:?}", ServerHandshake::new("s3cr3t-join"));
        assert!(
            !shown.contains("s3cr3t-join") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
    use crate::frame::FrameDecoder;
    use uuid::Uuid;

    fn hello(protocol: u32, secret: &str) -> Hello {
        Hello {
            protocol,
            secret: secret.into(),
            uuid: Uuid::nil(),
            previous_id: Some(3),
            name: "w".into(),
            weight: 1.0,
            software: "test".into(),
            serve_url_base: None,
        }
    }

    fn body(frame: Vec<u8>) -> Vec<u8> {
        let mut d = FrameDecoder::new();
        d.push(&frame);
        d.next_frame().unwrap().unwrap()
    }

    #[test]
    fn good_hello_is_accepted() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION, "s3cret"));
        let v =
            ServerHandshake::new("s3cret").on_first_frame(&body(c.hello_frame().unwrap()), false);
        assert_eq!(v, ServerVerdict::Accept(hello(PROTOCOL_VERSION, "s3cret")));
    }

    #[test]
    fn wrong_secret_is_refused_saying_so() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION, "nope"));
        let ServerVerdict::Refuse {
            refusal,
            close_code,
        } = ServerHandshake::new("s3cret").on_first_frame(&body(c.hello_frame().unwrap()), false)
        else {
            panic!("accepted a wrong secret")
        };
        assert_eq!(refusal.code, RefuseCode::BadSecret);
        assert!(refusal.message.contains("wrong join token"));
        assert_eq!(close_code, close_code::BAD_SECRET);
        let reply = encode_frame(&CoordMsg::Refused(refusal)).unwrap();
        let err = c.on_reply(&body(reply)).unwrap_err();
        assert!(err.to_string().contains("wrong join token"), "{err}");
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION + 1, "s3cret"));
        let ServerVerdict::Refuse {
            refusal,
            close_code,
        } = ServerHandshake::new("s3cret").on_first_frame(&body(c.hello_frame().unwrap()), false)
        else {
            panic!("accepted another version")
        };
        assert_eq!(close_code, close_code::VERSION_MISMATCH);
        assert!(
            refusal
                .message
                .contains(&format!("speaks gitmirror protocol {PROTOCOL_VERSION}"))
        );
        assert!(
            refusal
                .message
                .contains(&format!("speaks {}", PROTOCOL_VERSION + 1))
        );
    }

    /// SPEC §12 "Upgrades": a coordinator accepts the previous protocol version.
    #[test]
    fn spec_12_previous_version_is_accepted() {
        let c = ClientHandshake::new(hello(MIN_PROTOCOL_VERSION, "s"));
        let v = ServerHandshake::new("s").on_first_frame(&body(c.hello_frame().unwrap()), false);
        assert_eq!(v, ServerVerdict::Accept(hello(MIN_PROTOCOL_VERSION, "s")));
        let older = ClientHandshake::new(hello(MIN_PROTOCOL_VERSION - 1, "s"));
        let v =
            ServerHandshake::new("s").on_first_frame(&body(older.hello_frame().unwrap()), false);
        assert!(matches!(
            v,
            ServerVerdict::Refuse {
                close_code: close_code::VERSION_MISMATCH,
                ..
            }
        ));
    }

    // SPEC §17: a peer whose certificate TLS verified is not asked for the secret (a
    // rotated token does not cut enrolled workers off); one without must still know it.
    #[test]
    fn spec_17_a_certified_peer_needs_no_secret() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION, "old-secret"));
        let frame = body(c.hello_frame().unwrap());
        assert!(matches!(
            ServerHandshake::new("new-secret").on_first_frame(&frame, true),
            ServerVerdict::Accept(_)
        ));
        assert!(matches!(
            ServerHandshake::new("new-secret").on_first_frame(&frame, false),
            ServerVerdict::Refuse {
                close_code: close_code::BAD_SECRET,
                ..
            }
        ));
    }

    // SPEC §17: `Enrolled` welcomes the worker and hands it its certificate; the key is
    // never printed.
    #[test]
    fn spec_17_enrolled_is_a_welcome_with_a_certificate() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION, "s"));
        let e = Enrolled {
            welcome: Welcome {
                protocol: PROTOCOL_VERSION,
                worker_id: 4,
                software: "x".into(),
            },
            cert_pem: "CERT".into(),
            key_pem: "-----BEGIN PRIVATE KEY----- k3y".into(),
        };
        assert!(!format!("{e:?}").contains("k3y"));
        let got = c
            .on_reply(&body(encode_frame(&CoordMsg::Enrolled(e.clone())).unwrap()))
            .unwrap();
        assert_eq!(got.welcome.worker_id, 4);
        assert_eq!(got.enrolled, Some(e));
        assert_eq!(RefuseCode::Pending.for_protocol(3), RefuseCode::BadSecret);
        assert_eq!(RefuseCode::Pending.for_protocol(4), RefuseCode::Pending);
    }

    #[test]
    fn a_newer_coordinator_welcome_is_a_mismatch() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION, "s"));
        let w = Welcome {
            protocol: PROTOCOL_VERSION + 1,
            worker_id: 0,
            software: "x".into(),
        };
        let err = c
            .on_reply(&body(encode_frame(&CoordMsg::Welcome(w)).unwrap()))
            .unwrap_err();
        assert_eq!(
            err,
            HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            }
        );
    }

    #[test]
    fn non_hello_first_frame_is_a_protocol_error() {
        let b = body(encode_frame(&WorkerMsg::AssignAck { seq: 1 }).unwrap());
        assert!(matches!(
            ServerHandshake::new("s").on_first_frame(&b, false),
            ServerVerdict::Refuse {
                close_code: close_code::PROTOCOL_ERROR,
                ..
            }
        ));
        assert!(matches!(
            ServerHandshake::new("s").on_first_frame(&[], false),
            ServerVerdict::Refuse {
                close_code: close_code::PROTOCOL_ERROR,
                ..
            }
        ));
    }
}
