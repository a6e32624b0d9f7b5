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
    HeldRepo, HoldingsPart, Outcome, OutcomeBatch, OutcomeChanges, RefChange, WorkerMsg,
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

/// The holdings as parts of at most [`CHUNK_BYTES`] each; always at least one part (an
/// empty holdings is one empty last part).
pub fn holdings_parts(repos: Vec<HeldRepo>) -> Vec<WorkerMsg> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut size = OVERHEAD;
    for r in repos {
        let n = encoded_len(&r);
        if !cur.is_empty() && size + n > CHUNK_BYTES {
            parts.push(std::mem::take(&mut cur));
            size = OVERHEAD;
        }
        size += n;
        cur.push(r);
    }
    parts.push(cur);
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

/// Outcomes (in `report_id` order) as messages of at most [`CHUNK_BYTES`] each: `Outcomes`
/// batches, with [`OutcomeChanges`] ahead of any outcome whose changes do not fit in one.
/// The order of outcomes is kept, so cumulative acknowledgements stay right.
pub fn outcome_frames(outcomes: impl IntoIterator<Item = Outcome>) -> Vec<WorkerMsg> {
    let mut msgs = Vec::new();
    let mut batch: Vec<Outcome> = Vec::new();
    let mut size = OVERHEAD;
    let flush = |batch: &mut Vec<Outcome>, msgs: &mut Vec<WorkerMsg>| {
        if !batch.is_empty() {
            msgs.push(WorkerMsg::Outcomes(OutcomeBatch {
                outcomes: std::mem::take(batch),
            }));
        }
    };
    for mut o in outcomes {
        let mut n = encoded_len(&o);
        if n + OVERHEAD > CHUNK_BYTES {
            // Too big alone: send all but the last chunk of its changes ahead of it.
            flush(&mut batch, &mut msgs);
            size = OVERHEAD;
            let changes = std::mem::take(&mut o.changes);
            let head = encoded_len(&o);
            let mut parts = split_changes(changes, CHUNK_BYTES.saturating_sub(head + OVERHEAD));
            o.changes = parts.pop().unwrap_or_default();
            for changes in parts {
                msgs.push(WorkerMsg::OutcomeChanges(OutcomeChanges {
                    report_id: o.report_id,
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
        if let Some((id, mut ahead)) = self.pending.take() {
            let Some(o) = batch.outcomes.iter_mut().find(|o| o.report_id == id) else {
                return Err(ChunkError::OrphanChanges(id));
            };
            ahead.append(&mut o.changes);
            o.changes = ahead;
        }
        Ok(batch)
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
