//! The gitmirror protocol between `gitmirrord` and `gitmirror-worker`.
//!
//! Everything here is pure: message types, length-prefixed postcard framing with a size cap
//! checked before allocation, the join token format, and the state machines of the
//! handshake and of the session after it (`session`).
//! The daemons own the sockets; this crate only turns bytes into decisions.
//!
//! postcard is positional and encodes enum variants by index: never reorder, remove or
//! change a field of a message in place. Evolve by appending variants, and bump
//! [`PROTOCOL_VERSION`] for anything else. `tests/golden.rs` pins the bytes of every message.

pub mod chunk;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod peer;
pub mod refs;
pub mod refs_page;
pub mod session;
pub mod token;

pub use chunk::{
    CHUNK_BYTES, ChunkError, Reassembly, directory_parts, holdings_parts, outcome_frames,
    pool_state_parts,
};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME, decode, encode_frame};
pub use handshake::{ClientHandshake, HandshakeError, ServerHandshake, ServerVerdict, Welcomed};
pub use message::*;
pub use session::{Acks, FromCoordinator, FromWorker, Reports, SessionError};
pub use token::{JoinToken, TokenError};

/// Version of the message set in this crate. Sent in ALPN and in the first message.
/// 1: the first; 2: `Outcome::refs_digest` (the whole ref set after each attempt);
/// 3: lists that grow with repos travel in bounded chunks (`HoldingsPart`,
/// `OutcomeChanges`, outcome batches bounded by bytes) and the coordinator can ask an
/// owner to relist a repo's refs (`Relist`), or for a page of them (`RefsQuery`,
/// `RefsPage`). 3 only appends variants to 2. 4: per-worker certificates (SPEC §17): a
/// worker enrolled with the join token gets `Enrolled` instead of `Welcome`, and refusals
/// can say `Pending`, `Revoked` or `Enrolled`. 4 only appends variants to 3. 5: the failure
/// class `Auth` (SPEC §16); 5 only appends that variant to 4, which only a worker sends.
/// 6: fleet-wide upstream budgets (SPEC §18): `HostBudgets` to workers, `HostDemand` and
/// `RateLimited` from them; 6 only appends variants to 5. A worker of protocol < 6 gets no
/// budgets and is not limited by them. 7: the peer plane (SPEC §13, issue 12): `PeerInfo`
/// and `Outcomes7` from workers, `PeerPlane`, `PeerDirectory`, `Assign7` and `PeerGrants`
/// to them; 7 only appends variants to 6. A worker below 7 gets none of them: plain
/// `Assign`, upstream fetches, and it is never named as a holder to copy from.
/// 8: fork pools (SPEC §14, issue 13): `PoolStates` and `PoolTotals` from workers; 8 only
/// appends variants to 7, and the pool of a repo held by a worker below 8 shows as `null`.
pub const PROTOCOL_VERSION: u32 = 8;

/// The oldest worker protocol a coordinator of this version still accepts (SPEC §12: the
/// coordinator is upgraded first and accepts the previous version for one release). It
/// answers such a worker in that worker's version and sends it only that version's
/// messages (never `Relist` or `RefsQuery`, which protocol 3 added, nor `Enrolled` or the
/// refusal codes protocol 4 added). Protocols 2 and 3 both stay accepted: a worker that
/// cannot enroll is admitted by the join token as before, unless its uuid is enrolled.
///
/// Protocol 7 kept the floor at 2 (design.md "Peer plane", C15): every version since 2 only
/// appended variants, and every message newer than a worker's version is already gated on
/// it, so an older floor costs nothing on the wire; raising it would refuse working
/// workers for no gain. The floor rises with the first change that is not append-only.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// ALPN of this protocol version.
pub const ALPN: &[u8] = b"gitmirror/8";

/// ALPN of the previous version, offered by the coordinator while it accepts that version.
pub const ALPN_PREVIOUS: &[u8] = b"gitmirror/7";

/// ALPN both sides also offer so that peers of different versions still get as far as the
/// first message, where the mismatch is reported naming both versions.
pub const ALPN_ANY_VERSION: &[u8] = b"gitmirror";

/// The ALPN list a peer of this version offers, preferred first.
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![
        ALPN.to_vec(),
        ALPN_PREVIOUS.to_vec(),
        ALPN_ANY_VERSION.to_vec(),
    ]
}

/// QUIC application close codes the coordinator uses when it ends a connection on purpose.
pub mod close_code {
    /// Normal shutdown.
    pub const NORMAL: u32 = 0;
    /// The peer speaks another protocol version.
    pub const VERSION_MISMATCH: u32 = 1;
    /// The join secret did not match.
    pub const BAD_SECRET: u32 = 2;
    /// A frame could not be decoded, was too large, or was not expected now.
    pub const PROTOCOL_ERROR: u32 = 3;
    /// No free worker id (all of `0..max_workers` are taken).
    pub const NO_FREE_ID: u32 = 4;
    /// The same worker uuid connected again; this older connection is replaced.
    pub const REPLACED: u32 = 5;
    /// The coordinator is shutting down.
    pub const SHUTDOWN: u32 = 6;
    /// The coordinator could not make some of this worker's outcomes durable: reconnect
    /// and resend every outcome not acknowledged.
    pub const RESEND: u32 = 7;
    /// Protocol 4: the worker waits for approval (`enroll: manual`).
    pub const PENDING: u32 = 8;
    /// Protocol 4: the certificate is not (or no longer) enrolled: the worker was removed.
    pub const REVOKED: u32 = 9;
    /// Protocol 4: the join token tried to speak for an enrolled uuid.
    pub const ENROLLED: u32 = 10;
    /// Protocol 4: the worker was removed while connected.
    pub const REMOVED: u32 = 11;
}
