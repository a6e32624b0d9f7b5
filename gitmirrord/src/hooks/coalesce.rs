//! Per-repo coalescing of push-triggered fetches (SPEC §15): a pure state machine on the
//! clock its caller passes.
//!
//! A repo with no gap open fetches at once and opens a gap of `hooks_min_gap`; pushes in
//! the gap mark one more fetch, made when the gap ends (which opens the next gap). A gap
//! that ends with nothing marked is forgotten, so the state is the repos pushed within
//! the last gap, and at most [`MAX_OPEN`] of them.

use std::collections::HashMap;
use std::sync::Arc;

/// Most repos with a gap open; pushes for further repos wait for polling (logged).
pub const MAX_OPEN: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    ends_ms: i64,
    again: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Fetch now.
    Fetch,
    /// A fetch is marked for the end of the gap (or was already).
    Marked,
    /// Too many repos have a gap open: not taken.
    Full,
}

#[derive(Debug)]
pub struct Coalescer {
    gap_ms: i64,
    open: HashMap<Arc<str>, Gap>,
}

impl Coalescer {
    pub fn new(gap: std::time::Duration) -> Self {
        Self {
            gap_ms: gap.as_millis().min(i64::MAX as u128) as i64,
            open: HashMap::new(),
        }
    }

    pub fn set_gap(&mut self, gap: std::time::Duration) {
        self.gap_ms = gap.as_millis().min(i64::MAX as u128) as i64;
    }

    /// A push for `repo` at `now_ms`.
    pub fn push(&mut self, repo: &Arc<str>, now_ms: i64) -> Push {
        if let Some(g) = self.open.get_mut(repo) {
            if now_ms < g.ends_ms {
                g.again = true;
                return Push::Marked;
            }
            // Its end is past but `due` has not run yet: this push is the fetch.
            if g.again {
                g.again = false;
                g.ends_ms = now_ms.saturating_add(self.gap_ms);
                return Push::Fetch;
            }
        }
        if !self.open.contains_key(repo) && self.open.len() >= MAX_OPEN {
            return Push::Full;
        }
        self.open.insert(
            repo.clone(),
            Gap {
                ends_ms: now_ms.saturating_add(self.gap_ms),
                again: false,
            },
        );
        Push::Fetch
    }

    /// Gaps ended by `now_ms`: the repos marked in them, to fetch now (each opens its next
    /// gap); the others are forgotten.
    pub fn due(&mut self, now_ms: i64) -> Vec<Arc<str>> {
        let mut fetch = Vec::new();
        let gap = self.gap_ms;
        self.open.retain(|repo, g| {
            if now_ms < g.ends_ms {
                return true;
            }
            if g.again {
                fetch.push(repo.clone());
                *g = Gap {
                    ends_ms: now_ms.saturating_add(gap),
                    again: false,
                };
                return true;
            }
            false
        });
        fetch
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Drive `pushes` (times in ms) through a coalescer ticked every `tick_ms`, as the main
    /// loop does; the fetch times.
    fn run(pushes: &[i64], gap_ms: u64, tick_ms: i64, until: i64) -> Vec<i64> {
        let mut c = Coalescer::new(Duration::from_millis(gap_ms));
        let repo: Arc<str> = Arc::from("a/b/c");
        let mut fetches = Vec::new();
        let mut next = pushes.iter().peekable();
        let mut t = 0;
        while t <= until {
            while let Some(p) = next.next_if(|p| **p <= t) {
                if c.push(&repo, *p) == Push::Fetch {
                    fetches.push(*p);
                }
            }
            for _ in c.due(t) {
                fetches.push(t);
            }
            t += tick_ms;
        }
        assert!(c.is_empty(), "state is kept after the last gap");
        fetches
    }

    // SPEC §15: 1,000 pushes in 10 s make at most 3 fetches; the first fetches at once and
    // the last push is covered by a fetch after it.
    #[test]
    fn spec_15_burst_of_1000_pushes_is_at_most_3_fetches() {
        let pushes: Vec<i64> = (0..1000).map(|i| i * 10).collect();
        for tick in [1, 100, 1000] {
            let f = run(&pushes, 5000, tick, 30_000);
            assert!(f.len() <= 3, "tick {tick}: {f:?}");
            assert_eq!(f[0], 0, "tick {tick}: the first push fetches at once");
            assert!(*f.last().unwrap() >= 9990, "tick {tick}: {f:?}");
        }
    }

    // SPEC §15: pushes further apart than the gap each fetch at once; one push is one fetch.
    #[test]
    fn spec_15_sparse_pushes_fetch_at_once() {
        assert_eq!(
            run(&[0, 6000, 20_000], 5000, 100, 40_000),
            [0, 6000, 20_000]
        );
        assert_eq!(run(&[7], 5000, 100, 20_000), [7]);
        // A push in the gap: one more fetch at its end, not at once.
        assert_eq!(run(&[0, 1000, 2000], 5000, 100, 20_000), [0, 5000]);
    }

    // Issue 14: the state is bounded; repos beyond MAX_OPEN wait for polling.
    #[test]
    fn spec_15_state_is_bounded() {
        let mut c = Coalescer::new(Duration::from_secs(5));
        for i in 0..MAX_OPEN {
            assert_eq!(c.push(&Arc::from(i.to_string()), 0), Push::Fetch);
        }
        assert_eq!(c.push(&Arc::from("one more"), 0), Push::Full);
        assert_eq!(c.push(&Arc::from("0"), 1), Push::Marked);
        assert_eq!(c.due(5000).len(), 1);
        assert_eq!(c.len(), 1);
        assert!(c.due(10_000).is_empty() && c.is_empty());
    }
}
