//! The first exchange of a connection, as two small state machines without I/O.
//!
//! The worker sends `Hello`; the coordinator answers `Welcome` or `Refused` and closes on
//! refusal. The protocol version is the first field of `Hello`, readable by any version
//! ([`peek_protocol`]), so a mismatch is reported naming both versions instead of as an
//! undecodable frame.

use crate::frame::{FrameError, decode, encode_frame};
use crate::message::{CoordMsg, Hello, Refusal, RefuseCode, Welcome, WorkerMsg};
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
    pub fn on_reply(&self, body: &[u8]) -> Result<Welcome, HandshakeError> {
        match decode::<CoordMsg>(body)? {
            CoordMsg::Welcome(w) if w.protocol == self.hello.protocol => Ok(w),
            CoordMsg::Welcome(w) => Err(HandshakeError::VersionMismatch {
                ours: self.hello.protocol,
                theirs: w.protocol,
            }),
            CoordMsg::Refused(Refusal { code, message }) => {
                Err(HandshakeError::Refused { code, message })
            }
            CoordMsg::Assign(_) => Err(HandshakeError::Unexpected("an assignment")),
            CoordMsg::OutcomeAck { .. } => Err(HandshakeError::Unexpected("an acknowledgement")),
            CoordMsg::FetchNow { .. } | CoordMsg::Relist { .. } => {
                Err(HandshakeError::Unexpected("a fetch request"))
            }
            CoordMsg::RefsQuery(_) => Err(HandshakeError::Unexpected("a refs query")),
        }
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

    pub fn on_first_frame(&self, body: &[u8]) -> ServerVerdict {
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
        if !secrets_equal(&hello.secret, self.secret) {
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
        let v = ServerHandshake::new("s3cret").on_first_frame(&body(c.hello_frame().unwrap()));
        assert_eq!(v, ServerVerdict::Accept(hello(PROTOCOL_VERSION, "s3cret")));
    }

    #[test]
    fn wrong_secret_is_refused_saying_so() {
        let c = ClientHandshake::new(hello(PROTOCOL_VERSION, "nope"));
        let ServerVerdict::Refuse {
            refusal,
            close_code,
        } = ServerHandshake::new("s3cret").on_first_frame(&body(c.hello_frame().unwrap()))
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
        } = ServerHandshake::new("s3cret").on_first_frame(&body(c.hello_frame().unwrap()))
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
        let v = ServerHandshake::new("s").on_first_frame(&body(c.hello_frame().unwrap()));
        assert_eq!(v, ServerVerdict::Accept(hello(MIN_PROTOCOL_VERSION, "s")));
        let older = ClientHandshake::new(hello(MIN_PROTOCOL_VERSION - 1, "s"));
        let v = ServerHandshake::new("s").on_first_frame(&body(older.hello_frame().unwrap()));
        assert!(matches!(
            v,
            ServerVerdict::Refuse {
                close_code: close_code::VERSION_MISMATCH,
                ..
            }
        ));
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
            ServerHandshake::new("s").on_first_frame(&b),
            ServerVerdict::Refuse {
                close_code: close_code::PROTOCOL_ERROR,
                ..
            }
        ));
        assert!(matches!(
            ServerHandshake::new("s").on_first_frame(&[]),
            ServerVerdict::Refuse {
                close_code: close_code::PROTOCOL_ERROR,
                ..
            }
        ));
    }
}
