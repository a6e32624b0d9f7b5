//! The peer plane between workers (SPEC §13, issue 12): what one worker says to another
//! before git's pack protocol takes over the stream.
//!
//! A transfer is one bidirectional QUIC stream on a connection with ALPN [`PEER_ALPN`] and
//! mutual TLS (both sides present their fleet certificates). The asker sends one
//! [`PeerRequest`] frame (a little-endian `u32` length, then postcard, at most
//! [`MAX_PEER_REQUEST`] bytes); the holder answers with one [`PeerReply`] frame. After
//! `Serving`, the stream carries `git upload-pack` (protocol v2) unchanged, both ways.
//!
//! Like the coordinator protocol, postcard is positional: append variants, never change a
//! field in place (`tests/golden.rs` pins the bytes).

use crate::frame::FrameError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// ALPN of the peer plane; a connection offering anything else fails the TLS handshake.
pub const PEER_ALPN: &[u8] = b"gitmirror-peer/1";

/// Version of the peer messages in this crate, sent in every [`PeerRequest`].
pub const PEER_PROTOCOL: u32 = 1;

/// Largest first frame (request or reply body) accepted: 4 KiB, checked before the body
/// is read.
pub const MAX_PEER_REQUEST: usize = 4096;

/// What the program to run on the holder is: only git's `upload-pack` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerService {
    UploadPack,
}

/// The asker's first frame: which repo it wants, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRequest {
    /// [`PEER_PROTOCOL`] of the asker.
    pub protocol: u32,
    pub service: PeerService,
    pub repo: String,
}

/// Why a holder does not serve a request ([`PeerRefusal::code`]).
pub mod refusal_code {
    /// The asker speaks another peer protocol version.
    pub const VERSION: u32 = 1;
    /// The first frame could not be read or decoded, or named an invalid repo id.
    pub const BAD_REQUEST: u32 = 2;
    /// No live grant names the asker's certificate for this repo.
    pub const NOT_GRANTED: u32 = 3;
    /// The holder has no mirror of the repo.
    pub const NOT_HERE: u32 = 4;
    /// Limits (`peer.serve_concurrency`, `peer.per_peer`) or maintenance: ask later or
    /// elsewhere.
    pub const BUSY: u32 = 5;
}

/// A refusal; `code` is one of [`refusal_code`] (unknown codes from a newer holder are
/// kept as numbers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRefusal {
    pub code: u32,
}

impl PeerRefusal {
    pub fn describe(&self) -> &'static str {
        match self.code {
            refusal_code::VERSION => "peer protocol version mismatch",
            refusal_code::BAD_REQUEST => "bad request",
            refusal_code::NOT_GRANTED => "not granted to this worker",
            refusal_code::NOT_HERE => "no mirror of the repo there",
            refusal_code::BUSY => "busy",
            _ => "refused (unknown code)",
        }
    }
}

/// The holder's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    /// `git upload-pack` follows on the stream.
    Serving,
    Refused(PeerRefusal),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerFrameError {
    #[error("first frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One first frame (request or reply) with its length prefix, refused over
/// [`MAX_PEER_REQUEST`].
pub fn encode_first<T: Serialize>(msg: &T) -> Result<Vec<u8>, PeerFrameError> {
    let out = crate::frame::encode_frame(msg)?;
    let len = out.len() - 4;
    if len > MAX_PEER_REQUEST {
        return Err(PeerFrameError::TooLarge {
            len,
            max: MAX_PEER_REQUEST,
        });
    }
    Ok(out)
}

/// The body length a first frame's header announces, refused over [`MAX_PEER_REQUEST`]
/// before anything is allocated.
pub fn first_len(header: [u8; 4]) -> Result<usize, PeerFrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_PEER_REQUEST {
        return Err(PeerFrameError::TooLarge {
            len,
            max: MAX_PEER_REQUEST,
        });
    }
    Ok(len)
}

/// Decode a first frame's body (trailing bytes are an error).
pub fn decode_first<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PeerFrameError> {
    Ok(crate::frame::decode(body)?)
}

/// SHA-256 of a ref set as the sorted list of `name\0oid\n` lines (oid in lowercase hex),
/// names sorted by bytes. Unlike [`crate::refs::digest`] it cannot be forged: a copy from a
/// peer is swapped in only when its refs hash to what the coordinator expects (issue 12
/// plan C5).
pub fn refs_sha256<'a, I>(refs: I) -> [u8; 32]
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut lines: Vec<(&[u8], &[u8])> = refs.into_iter().collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for (name, oid) in lines {
        h.update(name);
        h.update([0]);
        h.update(oid);
        h.update([b'\n']);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_sha256_ignores_order_and_sees_every_byte() {
        let a = refs_sha256([
            (&b"refs/heads/a"[..], &b"11"[..]),
            (&b"refs/heads/b"[..], &b"22"[..]),
        ]);
        let b = refs_sha256([
            (&b"refs/heads/b"[..], &b"22"[..]),
            (&b"refs/heads/a"[..], &b"11"[..]),
        ]);
        assert_eq!(a, b);
        let c = refs_sha256([
            (&b"refs/heads/a"[..], &b"11"[..]),
            (&b"refs/heads/b"[..], &b"23"[..]),
        ]);
        assert_ne!(a, c);
        // The separator keeps name and oid apart.
        assert_ne!(
            refs_sha256([(&b"refs/heads/a1"[..], &b"1"[..])]),
            refs_sha256([(&b"refs/heads/a"[..], &b"11"[..])])
        );
    }

    #[test]
    fn oversized_first_frames_are_refused_both_ways() {
        let big = PeerRequest {
            protocol: PEER_PROTOCOL,
            service: PeerService::UploadPack,
            repo: "a".repeat(MAX_PEER_REQUEST),
        };
        assert!(matches!(
            encode_first(&big),
            Err(PeerFrameError::TooLarge { .. })
        ));
        assert!(first_len(((MAX_PEER_REQUEST + 1) as u32).to_le_bytes()).is_err());
        assert_eq!(
            first_len((MAX_PEER_REQUEST as u32).to_le_bytes()),
            Ok(MAX_PEER_REQUEST)
        );
    }
}
