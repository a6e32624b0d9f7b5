//! The conversation after the handshake, as state machines (design.md "Conversation").
//!
//! - [`FromWorker`]: the coordinator's reading of one worker connection: frame bodies in,
//!   whole messages out (chunked lists put back together), and the order the worker
//!   must keep: its holdings once, before any outcome, acknowledgement or report about
//!   its repos (the Holdings gate).
//! - [`FromCoordinator`]: the worker's reading of its connection.
//! - [`Reports`]: the worker's outcome reports and assignment acknowledgements: what
//!   may be sent (only what is durable), what is resent on a new connection, what an
//!   acknowledgement lets it forget.
//! - [`Acks`]: the coordinator's acknowledgements: a batch only once its events, and
//!   those of every earlier batch of the same worker, are durable.
//!
//! Pure: bytes, journal positions and results in, messages and decisions out. The
//! daemons move the bytes (`gitmirror_common::frames`) and keep the state files.

mod acks;
mod reports;

pub use acks::Acks;
pub use reports::Reports;

use crate::chunk::{ChunkError, Reassembly};
use crate::frame::{FrameError, decode};
use crate::message::{CoordMsg, Holdings, WorkerMsg};

/// Why a connection is closed with a protocol error. The other side reconnects and
/// sends everything not acknowledged again, so nothing is lost by closing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("a second Hello on the same connection")]
    SecondHello,
    #[error("the coordinator repeated its handshake answer")]
    HandshakeRepeated,
    /// Each connection carries the worker's holdings once, right after `Welcome`: a
    /// second one would make the coordinator go through every repo it holds again.
    #[error("a second Holdings on the same connection")]
    SecondHoldings,
    #[error("{0} before the worker's Holdings")]
    BeforeHoldings(&'static str),
}

/// Where a worker connection is with its holdings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Not a part yet: only what does not speak of its repos may come.
    Awaiting,
    /// Some parts arrived (protocol 3), not the last.
    Arriving,
    /// Whole: everything may come, holdings never again.
    Received,
}

/// The coordinator's reading of one worker connection after `Welcome`.
#[derive(Debug)]
pub struct FromWorker {
    parts: Reassembly,
    gate: Gate,
}

impl Default for FromWorker {
    fn default() -> Self {
        Self::new()
    }
}

impl FromWorker {
    pub fn new() -> Self {
        Self {
            parts: Reassembly::new(),
            gate: Gate::Awaiting,
        }
    }

    /// One frame body: `Some` whole message for the coordinator, `None` when it was a part
    /// of one still arriving, or why the connection must close.
    pub fn on_frame(&mut self, body: &[u8]) -> Result<Option<WorkerMsg>, SessionError> {
        self.on_message(decode::<WorkerMsg>(body)?)
    }

    /// [`FromWorker::on_frame`] after decoding.
    pub fn on_message(&mut self, msg: WorkerMsg) -> Result<Option<WorkerMsg>, SessionError> {
        match msg {
            WorkerMsg::Hello(_) => Err(SessionError::SecondHello),
            WorkerMsg::Holdings(h) => {
                self.holdings_start()?;
                self.gate = Gate::Received;
                Ok(Some(WorkerMsg::Holdings(h)))
            }
            WorkerMsg::HoldingsPart(part) => {
                self.holdings_start()?;
                self.gate = Gate::Arriving;
                Ok(self.parts.holdings_part(part)?.map(|repos| {
                    self.gate = Gate::Received;
                    WorkerMsg::Holdings(Holdings { repos })
                }))
            }
            // Say nothing about its repos: before the holdings too (`PeerInfo` comes
            // first on purpose, SPEC §13).
            m @ (WorkerMsg::PeerInfo(_)
            | WorkerMsg::Status(_)
            | WorkerMsg::Load(_)
            | WorkerMsg::HostDemand(_)
            | WorkerMsg::RateLimited(_)) => Ok(Some(m)),
            m => {
                if self.gate != Gate::Received {
                    return Err(SessionError::BeforeHoldings(name(&m)));
                }
                match m {
                    WorkerMsg::OutcomeChanges(part) => {
                        self.parts.outcome_changes(part)?;
                        Ok(None)
                    }
                    WorkerMsg::Outcomes(batch) => {
                        Ok(Some(WorkerMsg::Outcomes(self.parts.outcomes(batch)?)))
                    }
                    WorkerMsg::Outcomes7(batch) => {
                        Ok(Some(WorkerMsg::Outcomes7(self.parts.outcomes7(batch)?)))
                    }
                    m => Ok(Some(m)),
                }
            }
        }
    }

    /// The worker's holdings arrived whole on this connection.
    #[cfg(test)]
    fn in_sync(&self) -> bool {
        self.gate == Gate::Received
    }

    fn holdings_start(&self) -> Result<(), SessionError> {
        match self.gate {
            Gate::Received => Err(SessionError::SecondHoldings),
            Gate::Awaiting | Gate::Arriving => Ok(()),
        }
    }
}

/// The message's name, for a protocol error.
fn name(m: &WorkerMsg) -> &'static str {
    match m {
        WorkerMsg::Hello(_) => "Hello",
        WorkerMsg::Holdings(_) => "Holdings",
        WorkerMsg::Outcomes(_) => "Outcomes",
        WorkerMsg::Status(_) => "Status",
        WorkerMsg::AssignAck { .. } => "AssignAck",
        WorkerMsg::HoldingsPart(_) => "HoldingsPart",
        WorkerMsg::OutcomeChanges(_) => "OutcomeChanges",
        WorkerMsg::RefsPage(_) => "RefsPage",
        WorkerMsg::Load(_) => "Load",
        WorkerMsg::HostDemand(_) => "HostDemand",
        WorkerMsg::RateLimited(_) => "RateLimited",
        WorkerMsg::PeerInfo(_) => "PeerInfo",
        WorkerMsg::Outcomes7(_) => "Outcomes7",
        WorkerMsg::PoolStates(_) => "PoolStates",
        WorkerMsg::PoolTotals(_) => "PoolTotals",
    }
}

/// The worker's reading of its connection after `Welcome`.
#[derive(Debug, Default)]
pub struct FromCoordinator;

impl FromCoordinator {
    pub fn new() -> Self {
        Self
    }

    /// One frame body: the message for the worker, or why the connection must close.
    pub fn on_frame(&mut self, body: &[u8]) -> Result<CoordMsg, SessionError> {
        match decode::<CoordMsg>(body)? {
            CoordMsg::Welcome(_) | CoordMsg::Refused(_) | CoordMsg::Enrolled(_) => {
                Err(SessionError::HandshakeRepeated)
            }
            m => Ok(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        FetchResult, HeldRepo, Hello, HoldingsPart, Outcome, OutcomeBatch, OutcomeChanges,
        RefChange, WorkerStatus,
    };
    use crate::{encode_frame, holdings_parts};

    fn held(n: usize) -> Vec<HeldRepo> {
        (0..n)
            .map(|i| HeldRepo {
                id: format!("repo-{i}"),
                url: format!("https://example.invalid/{i}.git"),
                mirrored: true,
            })
            .collect()
    }

    fn outcome(report_id: u64) -> Outcome {
        Outcome {
            report_id,
            repo: "repo-0".into(),
            url: "https://example.invalid/0.git".into(),
            finished_ms: 1,
            duration_ms: 1,
            result: FetchResult::Fetched,
            changes: Vec::new(),
            ref_count: 1,
            refs_digest: 0,
            next_due_ms: 2,
        }
    }

    fn status() -> WorkerMsg {
        WorkerMsg::Status(WorkerStatus {
            disk_free_bytes: 1,
            disk_total_bytes: 2,
            disk_low: false,
            active_fetches: 0,
            summary: String::new(),
        })
    }

    fn body(m: &WorkerMsg) -> Vec<u8> {
        encode_frame(m).unwrap()[4..].to_vec()
    }

    // SPEC §4.2 (the holdings after a reconnect; an unexpected message closes the
    // connection): holdings first, in parts put back together; outcomes,
    // acknowledgements and reports about repos only after them.
    #[test]
    fn spec_4_2_outcomes_wait_for_the_holdings_and_parts_come_back_whole() {
        let mut s = FromWorker::new();
        assert_eq!(s.on_frame(&body(&status())), Ok(Some(status())));
        assert_eq!(
            s.on_message(WorkerMsg::AssignAck { seq: 1 }),
            Err(SessionError::BeforeHoldings("AssignAck"))
        );
        let mut s = FromWorker::new();
        let parts = holdings_parts(held(50_000));
        assert!(parts.len() > 1, "{} parts", parts.len());
        let last = parts.len() - 1;
        for (i, p) in parts.into_iter().enumerate() {
            if i == 0 {
                // Not between parts either.
                let mut probe = FromWorker::new();
                assert_eq!(probe.on_frame(&body(&p)), Ok(None));
                assert_eq!(
                    probe.on_message(WorkerMsg::Outcomes(OutcomeBatch { outcomes: vec![] })),
                    Err(SessionError::BeforeHoldings("Outcomes")),
                );
            }
            let got = s.on_frame(&body(&p)).unwrap();
            if i < last {
                assert_eq!(got, None);
                assert!(!s.in_sync());
            } else {
                let Some(WorkerMsg::Holdings(h)) = got else {
                    panic!("{got:?}")
                };
                assert_eq!(h.repos.len(), 50_000);
            }
        }
        assert!(s.in_sync());
        // An outcome whose changes came ahead of it gets them back.
        let change = RefChange {
            name: "refs/heads/main".into(),
            old: None,
            new: Some("aa".into()),
        };
        let ahead = WorkerMsg::OutcomeChanges(OutcomeChanges {
            report_id: 7,
            changes: vec![change.clone()],
        });
        assert_eq!(s.on_frame(&body(&ahead)), Ok(None));
        let got = s
            .on_message(WorkerMsg::Outcomes(OutcomeBatch {
                outcomes: vec![outcome(7)],
            }))
            .unwrap();
        let Some(WorkerMsg::Outcomes(b)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(b.outcomes[0].changes, vec![change]);
        assert_eq!(
            s.on_message(WorkerMsg::AssignAck { seq: 3 }),
            Ok(Some(WorkerMsg::AssignAck { seq: 3 }))
        );
    }

    // SPEC §4.2 and §17 (a rogue worker contained): holdings once per connection, whole or in
    // parts; a second Hello is refused too.
    #[test]
    fn spec_4_2_a_second_holdings_or_hello_closes_the_connection() {
        let mut s = FromWorker::new();
        assert!(matches!(
            s.on_message(WorkerMsg::Holdings(Holdings { repos: held(1) })),
            Ok(Some(WorkerMsg::Holdings(_)))
        ));
        assert_eq!(
            s.on_message(WorkerMsg::Holdings(Holdings { repos: held(1) })),
            Err(SessionError::SecondHoldings)
        );
        let mut s = FromWorker::new();
        let part = |last| {
            WorkerMsg::HoldingsPart(HoldingsPart {
                repos: held(1),
                last,
            })
        };
        assert!(s.on_message(part(true)).unwrap().is_some());
        assert_eq!(s.on_message(part(false)), Err(SessionError::SecondHoldings));
        let hello = Hello {
            protocol: crate::PROTOCOL_VERSION,
            secret: String::new(),
            uuid: uuid::Uuid::from_u128(1),
            previous_id: None,
            name: "w".into(),
            weight: 1.0,
            software: String::new(),
            serve_url_base: None,
        };
        assert_eq!(
            s.on_message(WorkerMsg::Hello(hello)),
            Err(SessionError::SecondHello)
        );
        assert!(matches!(
            s.on_frame(&[0xff, 0xff]),
            Err(SessionError::Frame(FrameError::Decode(_)))
        ));
    }

    #[test]
    fn the_worker_refuses_a_second_handshake_answer() {
        let mut s = FromCoordinator::new();
        let ack = CoordMsg::OutcomeAck { upto: 3 };
        assert_eq!(s.on_frame(&encode_frame(&ack).unwrap()[4..]), Ok(ack));
        let welcome = CoordMsg::Welcome(crate::message::Welcome {
            protocol: crate::PROTOCOL_VERSION,
            worker_id: 1,
            software: String::new(),
        });
        assert_eq!(
            s.on_frame(&encode_frame(&welcome).unwrap()[4..]),
            Err(SessionError::HandshakeRepeated)
        );
    }
}
