//! The coordinator's side of outcome acknowledgements (SPEC §10): when each worker's
//! outcome batches may be acknowledged.
//!
//! An acknowledgement is cumulative (`OutcomeAck { upto }`: the worker forgets every
//! outcome up to that report id), so a batch is acknowledged only once its events, and
//! those of every earlier batch of the same worker, are durable. Batches without events
//! wait behind one whose events are still being written; a failed append drops the
//! worker's waiting acknowledgements and acknowledges nothing more from it until it
//! connects again (its connection is closed, and it resends every outcome not
//! acknowledged). Pure: the coordinator's main loop feeds it batches and its event
//! appender's results (an append is a `job` number here).

use std::collections::{HashMap, HashSet, VecDeque};
use uuid::Uuid;

struct Waiting {
    upto: u64,
    /// The append job of this batch's events, `None` when it had none.
    job: Option<u64>,
    durable: bool,
}

#[derive(Default)]
pub struct Acks {
    waiting: HashMap<Uuid, VecDeque<Waiting>>,
    /// Whose batch each job in flight is.
    jobs: HashMap<u64, Uuid>,
    /// Workers with a failed append, until they connect again.
    blocked: HashSet<Uuid>,
}

impl Acks {
    /// A batch of `uuid` was applied, its events (if any) handed to append `job`: the
    /// `upto` to acknowledge now, or `None` when it must wait.
    pub fn batch(&mut self, uuid: Uuid, upto: u64, job: Option<u64>) -> Option<u64> {
        if self.blocked.contains(&uuid) {
            return None;
        }
        if job.is_none() && !self.waiting.contains_key(&uuid) {
            return Some(upto);
        }
        if let Some(j) = job {
            self.jobs.insert(j, uuid);
        }
        self.waiting.entry(uuid).or_default().push_back(Waiting {
            upto,
            job,
            durable: job.is_none(),
        });
        None
    }

    /// Append `job` is durable: the worker and `upto` to acknowledge, if any.
    pub fn durable(&mut self, job: u64) -> Option<(Uuid, u64)> {
        let uuid = self.jobs.remove(&job)?;
        let queue = self.waiting.get_mut(&uuid)?;
        if let Some(w) = queue.iter_mut().find(|w| w.job == Some(job)) {
            w.durable = true;
        }
        let mut upto = None;
        while queue.front().is_some_and(|w| w.durable) {
            upto = queue.pop_front().map(|w| w.upto).max(upto);
        }
        if queue.is_empty() {
            self.waiting.remove(&uuid);
        }
        upto.map(|u| (uuid, u))
    }

    /// Append `job` failed: the worker whose batches now wait for nothing ([`Acks::block`]).
    pub fn failed(&mut self, job: u64) -> Option<Uuid> {
        let uuid = self.jobs.remove(&job)?;
        self.block(uuid);
        Some(uuid)
    }

    /// None of `uuid`'s waiting batches, and none of its batches until
    /// [`Acks::connected`], will be acknowledged: the caller closes its connection so that
    /// it resends them all.
    pub fn block(&mut self, uuid: Uuid) {
        for w in self.waiting.remove(&uuid).into_iter().flatten() {
            if let Some(j) = w.job {
                self.jobs.remove(&j);
            }
        }
        self.blocked.insert(uuid);
    }

    /// `uuid` has a new connection (over which it resends what was not acknowledged).
    pub fn connected(&mut self, uuid: Uuid) {
        self.blocked.remove(&uuid);
    }

    /// Batches waiting for an append, over all workers (a gauge).
    pub fn waiting_batches(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    // SPEC §10: an outcome is acknowledged only once its events are durable; the ack is
    // cumulative, so a later batch without events must not acknowledge an earlier one
    // whose events are still being written.
    #[test]
    fn spec_10_a_batch_waits_for_the_appends_before_it() {
        let mut a = Acks::default();
        assert_eq!(
            a.batch(w(1), 5, None),
            Some(5),
            "nothing in flight: at once"
        );
        assert_eq!(a.batch(w(1), 9, Some(1)), None);
        assert_eq!(a.batch(w(1), 12, None), None, "behind job 1");
        assert_eq!(
            a.batch(w(2), 3, None),
            Some(3),
            "another worker is not held up"
        );
        assert_eq!(a.batch(w(1), 15, Some(2)), None);
        assert_eq!(a.waiting_batches(), 3);
        assert_eq!(
            a.durable(1),
            Some((w(1), 12)),
            "job 1 and the batch behind it"
        );
        assert_eq!(a.durable(2), Some((w(1), 15)));
        assert_eq!(a.waiting_batches(), 0);
        assert_eq!(
            a.batch(w(1), 16, None),
            Some(16),
            "queue gone: at once again"
        );
    }

    #[test]
    fn spec_10_a_failed_append_acknowledges_nothing_after_it() {
        let mut a = Acks::default();
        assert_eq!(a.batch(w(1), 9, Some(1)), None);
        assert_eq!(a.batch(w(1), 12, None), None);
        assert_eq!(a.batch(w(1), 15, Some(2)), None);
        assert_eq!(a.batch(w(2), 4, Some(3)), None);
        assert_eq!(a.failed(1), Some(w(1)));
        assert_eq!(a.durable(2), None, "job 2's batch was dropped with job 1's");
        assert_eq!(
            a.durable(3),
            Some((w(2), 4)),
            "another worker's batch stands"
        );
        assert_eq!(a.waiting_batches(), 0);
        assert_eq!(a.batch(w(1), 20, None), None, "nothing until it reconnects");
        a.connected(w(1));
        assert_eq!(a.batch(w(1), 21, None), Some(21));
    }
}
