//! Lists that grow with repos, cut into frames bounded by bytes (protocol 3, SPEC §12
//! "Wire"), and put back together on the other side.
//!
//! The worker side turns its holdings into [`HoldingsPart`]s and its unacknowledged
//! outcomes into `Outcomes` batches of at most [`CHUNK_BYTES`] each, sending the ref
//! changes of an outcome too big for one batch ahead of it as [`OutcomeChanges`]. The
//! coordinator side, [`Reassembly`], gives back whole holdings and whole outcomes, and
//! refuses anything out of order (which closes that one connection).
//!
//! Sizes are postcard's, computed exactly by [`encoded_len`] (a counting serializer), so a
//! frame can never pass [`crate::MAX_FRAME`] whatever the names in it.

use crate::message::{
    CoordMsg, HeldRepo, HoldingsPart, Outcome, Outcome7, OutcomeBatch, OutcomeBatch7,
    OutcomeChanges, PeerDirectory, PeerEntry, PoolStates, RefChange, RepoPoolState, WorkerMsg,
};
use std::collections::BTreeMap;

/// Target size of one chunk's frame. Small against the 16 MiB frame cap, so that a
/// thousand connections sending at once cost the coordinator little memory, and big enough
/// that a frame's fixed cost does not matter.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Outcomes in one batch at most, whatever their size (the coordinator appends their events
/// in one fsync; this bounds the work per frame).
pub const MAX_BATCH: usize = 1000;

/// Ref changes the coordinator holds for one outcome while its parts arrive. An outcome
/// with more changes is refused (the worker would have to report a change of 4M refs in one
/// fetch; Gerrit's biggest hosts have fewer).
pub const MAX_PENDING_CHANGES: usize = 4_000_000;

/// Repos in one worker's holdings at most while they arrive (SPEC §12: a worker holds
/// 100,000; ten times that is still accepted).
pub const MAX_HOLDINGS: usize = 1_000_000;

/// Bytes `value` takes in postcard.
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    // postcard's `Size` flavor counts without writing anything.
    postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
    .unwrap_or(usize::MAX)
}

/// Room in a chunk for the list's items: the frame minus the message's own fields.
const OVERHEAD: usize = 64;

/// `items` in order as parts whose encodings fit [`CHUNK_BYTES`] beside `overhead` bytes
/// of the message's other fields; always at least one part (maybe empty). An item bigger
/// than a part goes alone.
fn split_by_bytes<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
    overhead: usize,
) -> Vec<Vec<T>> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut size = overhead;
    for item in items {
        let n = encoded_len(&item);
        if !cur.is_empty() && size + n > CHUNK_BYTES {
            parts.push(std::mem::take(&mut cur));
            size = overhead;
        }
        size += n;
        cur.push(item);
    }
    parts.push(cur);
    parts
}

/// The holdings as parts of at most [`CHUNK_BYTES`] each; always at least one part (an
/// empty holdings is one empty last part).
pub fn holdings_parts(repos: Vec<HeldRepo>) -> Vec<WorkerMsg> {
    let parts = split_by_bytes(repos, OVERHEAD);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, repos)| {
            WorkerMsg::HoldingsPart(HoldingsPart {
                repos,
                last: i + 1 == count,
            })
        })
        .collect()
}

/// Pool states (protocol 8) as `PoolStates` parts of at most [`CHUNK_BYTES`] each; `full`
/// on the first part only. A whole list is always at least one part (an empty one says
/// "nothing pooled"); a change list may be empty (no message).
pub fn pool_state_parts(states: Vec<RepoPoolState>, full: bool) -> Vec<WorkerMsg> {
    let mut parts = split_by_bytes(states, OVERHEAD);
    if !full && parts.len() == 1 && parts[0].is_empty() {
        parts.clear();
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, states)| {
            WorkerMsg::PoolStates(PoolStates {
                full: full && i == 0,
                states,
            })
        })
        .collect()
}

/// Outcomes (in `report_id` order) as messages of at most [`CHUNK_BYTES`] each: `Outcomes`
/// batches, with [`OutcomeChanges`] ahead of any outcome whose changes do not fit in one.
/// The order of outcomes is kept, so cumulative acknowledgements stay right.
pub fn outcome_frames(outcomes: impl IntoIterator<Item = Outcome>) -> Vec<WorkerMsg> {
    frames(outcomes)
}

/// [`outcome_frames`] for protocol 7's `Outcomes7` (the same bounds, the same
/// [`OutcomeChanges`] ahead of a big outcome).
pub fn outcome7_frames(outcomes: impl IntoIterator<Item = Outcome7>) -> Vec<WorkerMsg> {
    frames(outcomes)
}

/// An outcome of either protocol, for [`frames`] and [`Reassembly`].
trait Batched: serde::Serialize + Sized {
    fn outcome(&mut self) -> &mut Outcome;
    fn batch(items: Vec<Self>) -> WorkerMsg;
}

impl Batched for Outcome {
    fn outcome(&mut self) -> &mut Outcome {
        self
    }
    fn batch(outcomes: Vec<Self>) -> WorkerMsg {
        WorkerMsg::Outcomes(OutcomeBatch { outcomes })
    }
}

impl Batched for Outcome7 {
    fn outcome(&mut self) -> &mut Outcome {
        &mut self.outcome
    }
    fn batch(outcomes: Vec<Self>) -> WorkerMsg {
        WorkerMsg::Outcomes7(OutcomeBatch7 { outcomes })
    }
}

fn frames<T: Batched>(outcomes: impl IntoIterator<Item = T>) -> Vec<WorkerMsg> {
    let mut msgs = Vec::new();
    let mut batch: Vec<T> = Vec::new();
    let mut size = OVERHEAD;
    let flush = |batch: &mut Vec<T>, msgs: &mut Vec<WorkerMsg>| {
        if !batch.is_empty() {
            msgs.push(T::batch(std::mem::take(batch)));
        }
    };
    for mut o in outcomes {
        let mut n = encoded_len(&o);
        if n + OVERHEAD > CHUNK_BYTES {
            // Too big alone: send all but the last chunk of its changes ahead of it.
            flush(&mut batch, &mut msgs);
            size = OVERHEAD;
            let changes = std::mem::take(&mut o.outcome().changes);
            let head = encoded_len(&o);
            let mut parts = split_changes(changes, CHUNK_BYTES.saturating_sub(head + OVERHEAD));
            o.outcome().changes = parts.pop().unwrap_or_default();
            let report_id = o.outcome().report_id;
            for changes in parts {
                msgs.push(WorkerMsg::OutcomeChanges(OutcomeChanges {
                    report_id,
                    changes,
                }));
            }
            n = encoded_len(&o);
        }
        if !batch.is_empty() && (size + n > CHUNK_BYTES || batch.len() >= MAX_BATCH) {
            flush(&mut batch, &mut msgs);
            size = OVERHEAD;
        }
        size += n;
        batch.push(o);
    }
    flush(&mut batch, &mut msgs);
    msgs
}

/// Protocol 7: a peer directory change as parts of at most [`CHUNK_BYTES`] each (the
/// removals in the last part); always at least one part.
pub fn directory_parts(upsert: Vec<PeerEntry>, remove: Vec<u32>) -> Vec<CoordMsg> {
    // Every part is sized as if it carried the removals: the last one does.
    let parts = split_by_bytes(upsert, OVERHEAD + encoded_len(&remove));
    let count = parts.len();
    let mut remove = Some(remove);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, upsert)| {
            let last = i + 1 == count;
            CoordMsg::PeerDirectory(PeerDirectory {
                upsert,
                remove: if last {
                    remove.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                last,
            })
        })
        .collect()
}

/// Changes cut into runs of at most `room` encoded bytes (at least one change a run).
fn split_changes(changes: Vec<RefChange>, room: usize) -> Vec<Vec<RefChange>> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for c in changes {
        let n = encoded_len(&c);
        if !cur.is_empty() && size + n > room {
            runs.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(c);
    }
    runs.push(cur);
    runs
}

/// Why a connection's chunks cannot be put together: the connection is closed with a
/// protocol error (the worker resends everything unacknowledged on its next one).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("ref changes of outcome {got} arrived while those of outcome {pending} were pending")]
    InterleavedChanges { pending: u64, got: u64 },
    #[error("ref changes of outcome {0} were not followed by that outcome")]
    OrphanChanges(u64),
    #[error("more than {max} ref changes pending for outcome {report_id}")]
    TooManyChanges { report_id: u64, max: usize },
    #[error("more than {0} repos in one worker's holdings")]
    TooManyHoldings(usize),
}

/// The coordinator's half for one connection: whole holdings and whole outcomes out of
/// parts. Pure; state lives only as long as the connection.
#[derive(Debug, Default)]
pub struct Reassembly {
    holdings: Vec<HeldRepo>,
    /// The outcome whose changes are arriving, and the changes so far.
    pending: Option<(u64, Vec<RefChange>)>,
}

impl Reassembly {
    pub fn new() -> Self {
        Self::default()
    }

    /// A holdings part; the whole holdings once the last part is in.
    pub fn holdings_part(
        &mut self,
        part: HoldingsPart,
    ) -> Result<Option<Vec<HeldRepo>>, ChunkError> {
        if self.holdings.len() + part.repos.len() > MAX_HOLDINGS {
            self.holdings = Vec::new();
            return Err(ChunkError::TooManyHoldings(MAX_HOLDINGS));
        }
        self.holdings.extend(part.repos);
        Ok(part.last.then(|| std::mem::take(&mut self.holdings)))
    }

    /// Changes sent ahead of their outcome.
    pub fn outcome_changes(&mut self, part: OutcomeChanges) -> Result<(), ChunkError> {
        let (id, changes) = self
            .pending
            .get_or_insert_with(|| (part.report_id, Vec::new()));
        if *id != part.report_id {
            return Err(ChunkError::InterleavedChanges {
                pending: *id,
                got: part.report_id,
            });
        }
        if changes.len() + part.changes.len() > MAX_PENDING_CHANGES {
            let report_id = *id;
            self.pending = None;
            return Err(ChunkError::TooManyChanges {
                report_id,
                max: MAX_PENDING_CHANGES,
            });
        }
        changes.extend(part.changes);
        Ok(())
    }

    /// A batch, with the changes sent ahead put back in front of their outcome's own.
    pub fn outcomes(&mut self, mut batch: OutcomeBatch) -> Result<OutcomeBatch, ChunkError> {
        self.join(&mut batch.outcomes)?;
        Ok(batch)
    }

    /// [`Reassembly::outcomes`] for protocol 7's `Outcomes7`.
    pub fn outcomes7(&mut self, mut batch: OutcomeBatch7) -> Result<OutcomeBatch7, ChunkError> {
        self.join(&mut batch.outcomes)?;
        Ok(batch)
    }

    fn join<T: Batched>(&mut self, outcomes: &mut [T]) -> Result<(), ChunkError> {
        if let Some((id, mut ahead)) = self.pending.take() {
            let Some(o) = outcomes
                .iter_mut()
                .map(T::outcome)
                .find(|o| o.report_id == id)
            else {
                return Err(ChunkError::OrphanChanges(id));
            };
            ahead.append(&mut o.changes);
            o.changes = ahead;
        }
        Ok(())
    }
}

/// Outcomes as the coordinator sees them after [`Reassembly`]: used by tests on both sides.
pub fn reassemble(msgs: Vec<WorkerMsg>) -> Result<Vec<Outcome>, ChunkError> {
    let mut r = Reassembly::new();
    let mut out = BTreeMap::new();
    for m in msgs {
        match m {
            WorkerMsg::OutcomeChanges(c) => r.outcome_changes(c)?,
            WorkerMsg::Outcomes(b) => {
                for o in r.outcomes(b)?.outcomes {
                    out.insert(o.report_id, o);
                }
            }
            WorkerMsg::Outcomes7(b) => {
                for o in r.outcomes7(b)?.outcomes {
                    out.insert(o.outcome.report_id, o.outcome);
                }
            }
            _ => {}
        }
    }
    if let Some((id, _)) = r.pending {
        return Err(ChunkError::OrphanChanges(id));
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    /// SPEC §14 (protocol 8): 200k pool states (a worker's share at 1M repos and more) go
    /// out in parts that each fit [`CHUNK_BYTES`] whatever the names, `full` on the first
    /// only, every state once and in order; an empty whole list is one empty part; an empty
    /// change list is no message.
    #[test]
    fn spec_14_pool_states_are_chunked() {
        use crate::message::{PlainWhy, PoolState};
        let states: Vec<RepoPoolState> = (0..200_000)
            .map(|i| RepoPoolState {
                repo: format!(
                    "{}/project{}/{}",
                    (b'a' + (i % 26) as u8) as char,
                    i / 7,
                    "x".repeat(i % 200)
                ),
                state: match i % 3 {
                    0 => PoolState::Member,
                    1 => PoolState::Joining,
                    _ => PoolState::Plain(PlainWhy::Credentials),
                },
                members: (i % 64) as u32,
            })
            .collect();
        let parts = pool_state_parts(states.clone(), true);
        assert!(parts.len() > 10, "{} parts", parts.len());
        let mut back = Vec::new();
        for (i, m) in parts.iter().enumerate() {
            let frame = crate::encode_frame(m).unwrap();
            assert!(
                frame.len() <= CHUNK_BYTES,
                "part {i}: {} bytes",
                frame.len()
            );
            let WorkerMsg::PoolStates(p) = m else {
                panic!("part {i} is {m:?}")
            };
            assert_eq!(p.full, i == 0);
            back.extend(p.states.iter().cloned());
        }
        assert_eq!(back, states);
        assert_eq!(
            pool_state_parts(Vec::new(), true),
            vec![WorkerMsg::PoolStates(PoolStates {
                full: true,
                states: Vec::new()
            })]
        );
        assert!(pool_state_parts(Vec::new(), false).is_empty());
    }

    use super::*;
    use crate::message::FetchResult;
    use crate::{MAX_FRAME, encode_frame};

    fn change(i: usize) -> RefChange {
        RefChange {
            name: format!("refs/changes/{:02}/{i}/1", i % 100),
            old: None,
            new: Some(format!("{i:040x}")),
        }
    }

    fn outcome(report_id: u64, changes: usize) -> Outcome {
        Outcome {
            report_id,
            repo: format!("r/{report_id}"),
            url: format!("git://h/{report_id}"),
            finished_ms: 1,
            duration_ms: 2,
            result: FetchResult::Fetched,
            changes: (0..changes).map(change).collect(),
            ref_count: changes as u32,
            refs_digest: 7,
            next_due_ms: 3,
        }
    }

    fn frame_len(m: &WorkerMsg) -> usize {
        encode_frame(m).map(|f| f.len()).unwrap_or(usize::MAX)
    }

    /// SPEC §12 "Wire": one repo with 1M changed refs (Gerrit keeps a ref per change)
    /// reports its outcome in frames far below the cap, and nothing is dropped.
    #[test]
    fn spec_12_a_million_ref_changes_travel_in_bounded_frames() {
        let big = outcome(5, 1_000_000);
        let small = outcome(6, 3);
        let msgs = outcome_frames(vec![outcome(4, 1), big.clone(), small.clone()]);
        assert!(msgs.len() > 50, "{} frames", msgs.len());
        for m in &msgs {
            assert!(frame_len(m) <= CHUNK_BYTES, "{} bytes", frame_len(m));
            assert!(frame_len(m) < MAX_FRAME);
        }
        let back = reassemble(msgs).unwrap();
        assert_eq!(back, vec![outcome(4, 1), big, small]);
    }

    #[test]
    fn spec_12_many_small_outcomes_are_batched_by_bytes_and_count() {
        let all: Vec<_> = (1..=5000).map(|i| outcome(i, 2)).collect();
        let msgs = outcome_frames(all.clone());
        assert!(
            msgs.iter()
                .all(|m| matches!(m, WorkerMsg::Outcomes(b) if b.outcomes.len() <= MAX_BATCH))
        );
        assert!(msgs.iter().all(|m| frame_len(m) <= CHUNK_BYTES));
        assert_eq!(reassemble(msgs).unwrap(), all);
    }

    /// SPEC §13 (protocol 7): `Outcomes7` keep protocol 3's bounds, and a big outcome's
    /// changes travel ahead of it and are put back with its source and hash intact.
    #[test]
    fn spec_13_outcomes7_travel_in_bounded_frames() {
        use crate::message::TransferSource;
        let seven = |o: Outcome, peer: Option<u32>| Outcome7 {
            refs_sha256: Some([o.report_id as u8; 32]),
            transfer_bytes: o.report_id * 1000,
            source: peer.map_or(TransferSource::Upstream, TransferSource::Peer),
            outcome: o,
        };
        let all = vec![
            seven(outcome(4, 1), None),
            seven(outcome(5, 300_000), Some(3)),
            seven(outcome(6, 3), Some(1)),
        ];
        let msgs = outcome7_frames(all.clone());
        assert!(msgs.len() > 5, "{} frames", msgs.len());
        let mut r = Reassembly::new();
        let mut back = Vec::new();
        for m in msgs {
            assert!(frame_len(&m) <= CHUNK_BYTES, "{} bytes", frame_len(&m));
            match m {
                WorkerMsg::OutcomeChanges(c) => r.outcome_changes(c).unwrap(),
                WorkerMsg::Outcomes7(b) => back.extend(r.outcomes7(b).unwrap().outcomes),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, all);
    }

    /// SPEC §13: a directory of 100k peers (far more than any worker is told to use) in
    /// parts below the cap, the removals once, in the last part.
    #[test]
    fn spec_13_peer_directory_in_bounded_parts() {
        let peers: Vec<_> = (0..100_000u32)
            .map(|i| PeerEntry {
                worker_id: i,
                uuid: uuid::Uuid::from_u128(i.into()),
                fingerprint: "f".repeat(43),
                addr: format!("worker-{i}.example.org:7443"),
                zone: Some(format!("zone-{}", i % 3)),
            })
            .collect();
        // Removals of many ids: they ride in the last part, which stays in bounds too.
        let removed: Vec<u32> = (200_000..260_000).collect();
        let parts = directory_parts(peers.clone(), removed.clone());
        assert!(parts.len() > 3, "{} parts", parts.len());
        let mut upsert = Vec::new();
        let mut remove = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let n = crate::encode_frame(p).unwrap().len();
            assert!(n <= CHUNK_BYTES, "{n} bytes");
            let CoordMsg::PeerDirectory(d) = p.clone() else {
                panic!("not a directory part")
            };
            assert_eq!(d.last, i + 1 == parts.len());
            upsert.extend(d.upsert);
            remove.extend(d.remove);
        }
        assert_eq!((upsert, remove), (peers, removed));
        assert_eq!(
            directory_parts(vec![], vec![]),
            vec![CoordMsg::PeerDirectory(PeerDirectory {
                upsert: vec![],
                remove: vec![],
                last: true
            })]
        );
    }

    /// SPEC §12 "Wire": holdings of 1M repos in parts below the cap, put back whole.
    #[test]
    fn spec_12_holdings_of_a_million_repos_in_parts() {
        let repos: Vec<_> = (0..1_000_000)
            .map(|i| HeldRepo {
                id: format!("p/project-{i}/repo-{i}"),
                url: format!("https://git.example.org/project-{i}/repo-{i}.git"),
                mirrored: i % 3 == 0,
            })
            .collect();
        let parts = holdings_parts(repos.clone());
        assert!(parts.len() > 10);
        let mut r = Reassembly::new();
        let mut whole = None;
        for (i, p) in parts.iter().enumerate() {
            assert!(frame_len(p) <= CHUNK_BYTES);
            let WorkerMsg::HoldingsPart(p) = p.clone() else {
                panic!("not a part")
            };
            assert_eq!(p.last, i + 1 == parts.len());
            whole = r.holdings_part(p).unwrap();
        }
        assert_eq!(whole, Some(repos));
    }

    #[test]
    fn empty_holdings_are_one_last_part() {
        assert_eq!(
            holdings_parts(Vec::new()),
            vec![WorkerMsg::HoldingsPart(HoldingsPart {
                repos: vec![],
                last: true
            })]
        );
    }

    #[test]
    fn out_of_order_parts_are_refused() {
        let mut r = Reassembly::new();
        r.outcome_changes(OutcomeChanges {
            report_id: 1,
            changes: vec![change(1)],
        })
        .unwrap();
        assert_eq!(
            r.outcome_changes(OutcomeChanges {
                report_id: 2,
                changes: vec![]
            }),
            Err(ChunkError::InterleavedChanges { pending: 1, got: 2 })
        );
        let mut r = Reassembly::new();
        r.outcome_changes(OutcomeChanges {
            report_id: 9,
            changes: vec![],
        })
        .unwrap();
        assert_eq!(
            r.outcomes(OutcomeBatch {
                outcomes: vec![outcome(8, 0)]
            }),
            Err(ChunkError::OrphanChanges(9))
        );
    }

    #[test]
    fn a_flood_of_changes_is_bounded() {
        let mut r = Reassembly::new();
        let part = OutcomeChanges {
            report_id: 1,
            changes: vec![change(0); 100_000],
        };
        let mut err = None;
        for _ in 0..(MAX_PENDING_CHANGES / 100_000 + 1) {
            if let Err(e) = r.outcome_changes(part.clone()) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(
            err,
            Some(ChunkError::TooManyChanges {
                report_id: 1,
                max: MAX_PENDING_CHANGES
            })
        );
    }
}
