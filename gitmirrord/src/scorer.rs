//! Scoring the owners of an index change ahead of the main loop (SPEC §12; design.md
//! "Index apply: owners scored ahead").
//!
//! Placing a new repo scores it against every live worker (1M repos × 1,000 workers is
//! 10⁹ hashes). The main loop applies an index change in parts, one per turn; this thread
//! sits between the poller and the loop and scores each part's entries for the latest
//! member set the loop published, so that the loop applies part *k* while part *k + 1* is
//! scored. The loop uses the scores only when they were made for its current member set
//! (same fingerprint) and scores again otherwise: they are a hint, never an input the
//! owners depend on.

use crate::poller::DeltaPart;
use crate::ring::Ring;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A member set to score for: its fingerprint ([`crate::ring::fingerprint`]) and ring.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub fp: u64,
    pub ring: Ring,
}

/// The owners (index into the members, and score) of a part's added, then changed,
/// entries in order, for the member set with fingerprint `fp`.
#[derive(Debug)]
pub struct Scored {
    pub fp: u64,
    pub owners: Vec<Option<(usize, f64)>>,
}

/// The member set the loop last published; `None` when parts are not to be scored ahead
/// (no members yet, or a placement whose key depends on the fleet's content).
#[derive(Debug, Clone, Default)]
pub struct Members(Arc<Mutex<Option<Arc<Snapshot>>>>);

impl Members {
    pub fn publish(&self, s: Option<Snapshot>) {
        let s = s.map(Arc::new);
        match self.0.lock() {
            Ok(mut g) => *g = s,
            Err(e) => *e.into_inner() = s,
        }
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }
}

/// Score `part` for `members`' current set (nothing when there is none).
pub fn score(part: &mut DeltaPart, members: &Members) {
    let Some(s) = members.current() else {
        return;
    };
    let ids: Vec<&str> = part
        .delta
        .added
        .iter()
        .chain(&part.delta.changed)
        .map(|e| e.id.as_str())
        .collect();
    if ids.is_empty() {
        return;
    }
    // On this thread alone: spread over every core it took the loop's core away while
    // the loop applied the first parts (their wall time 1.7× their CPU at 1M on two cores),
    // and one core keeps ahead of the loop (~0.1 s a part of 65,536 at 1,000 workers,
    // against ~0.3 s for the loop to apply it).
    let owners = s.ring.owners(&ids);
    part.scored = Some(Scored { fp: s.fp, owners });
}

/// Forward the poller's parts to the main loop, each scored on the way, on a thread of
/// its own ("index-scorer"). Ends when either side is gone.
pub fn start(
    mut from: mpsc::Receiver<DeltaPart>,
    to: mpsc::Sender<DeltaPart>,
    members: Members,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("index-scorer".into())
        .spawn(move || {
            while let Some(mut part) = from.blocking_recv() {
                score(&mut part, &members);
                if to.blocking_send(part).is_err() {
                    return;
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Delta, Entry};
    use crate::ring::Member;
    use uuid::Uuid;

    fn part(n: usize) -> DeltaPart {
        DeltaPart {
            delta: Delta {
                added: (0..n)
                    .map(|i| Entry {
                        id: format!("a/r{i}"),
                        url: format!("https://example.org/{i}.git"),
                        index: "idx".into(),
                        metadata: None,
                    })
                    .collect(),
                removed: Vec::new(),
                changed: Vec::new(),
            },
            last: true,
            scored: None,
        }
    }

    /// Parts pass through in order, scored for the published member set (the ring's
    /// owners), and unscored while none is published.
    #[test]
    fn spec_12_parts_pass_through_scored_for_the_published_members() {
        let members: Vec<Member> = (1..=4u128)
            .map(|n| Member {
                uuid: Uuid::from_u128(n),
                weight: 1.0,
            })
            .collect();
        let published = Members::default();
        let (to_scorer, from_poller) = mpsc::channel(1);
        let (to_loop, mut from_scorer) = mpsc::channel(4);
        start(from_poller, to_loop, published.clone()).unwrap();
        to_scorer.blocking_send(part(3)).unwrap();
        let unscored = from_scorer.blocking_recv().unwrap();
        assert!(unscored.scored.is_none());
        let fp = crate::ring::fingerprint(&members);
        published.publish(Some(Snapshot {
            fp,
            ring: Ring::new(&members),
        }));
        to_scorer.blocking_send(part(50)).unwrap();
        let p = from_scorer.blocking_recv().unwrap();
        let s = p.scored.expect("scored");
        assert_eq!(s.fp, fp);
        let want: Vec<_> = p
            .delta
            .added
            .iter()
            .map(|e| Ring::new(&members).owner_scored(&e.id))
            .collect();
        assert_eq!(s.owners, want);
        drop(to_scorer);
        assert!(from_scorer.blocking_recv().is_none());
    }
}
