//! The worker's side of outcome reports and assignment acknowledgements (SPEC §10).
//!
//! An outcome gets a report id when it is queued in the worker's journal batch; it may be
//! sent once that batch is durable, is sent once per connection, and is sent again on
//! every new connection until the coordinator acknowledges it (cumulatively: `upto`).
//! An assignment delta is acknowledged once the batch that recorded it is durable, and
//! only on the connection it came on (a new connection gets the difference again after
//! the holdings). The outcomes themselves live in the worker's state (its outbox); this
//! keeps the positions: journal batch numbers and report ids.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// A finished fetch's outcome goes at once unless a batch went out less than this ago
/// (then with the next, at most the worker's flush period later): a single fetch-now is
/// reported without delay, a burst of fetches in batches.
pub const MIN_SEND_GAP: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct Reports {
    /// Journal batches not yet durable that hold outcomes: (batch, highest report id).
    pending: VecDeque<(u64, u64)>,
    /// Outcomes up to this report id are durable.
    durable: u64,
    /// Assignment acknowledgements waiting for their batch: (batch, delta `seq`).
    acks: VecDeque<(u64, u64)>,
    /// Highest report id sent on this connection; `None`: no connection.
    sent: Option<u64>,
    /// When outcomes last went out.
    last_send: Option<Instant>,
}

impl Reports {
    pub fn new() -> Self {
        Self::default()
    }

    /// After a start: the outcomes the worker read from its state, up to `durable`, are
    /// durable (and unsent: there is no connection yet).
    pub fn resumed(durable: u64) -> Self {
        Self {
            durable,
            ..Self::default()
        }
    }

    /// A new connection: every durable outcome not acknowledged is unsent on it, and
    /// acknowledgements meant for the last connection are dropped.
    pub fn connected(&mut self) {
        self.sent = Some(0);
        self.acks.clear();
    }

    /// The connection is gone, and with it the acknowledgements meant for it.
    pub fn disconnected(&mut self) {
        self.sent = None;
        self.acks.clear();
    }

    fn is_connected(&self) -> bool {
        self.sent.is_some()
    }

    /// Outcomes up to `report_id` were queued in journal batch `batch`.
    pub fn queued(&mut self, batch: u64, report_id: u64) {
        self.pending.push_back((batch, report_id));
    }

    /// Assignment delta `seq` (of this connection) was recorded in journal batch `batch`.
    pub fn applied(&mut self, batch: u64, seq: u64) {
        if self.is_connected() {
            self.acks.push_back((batch, seq));
        }
    }

    /// The journal is durable up to batch `durable`: the assignment acknowledgements to
    /// send now, in order (none without a connection).
    pub fn durable(&mut self, durable: u64) -> Vec<u64> {
        while let Some(&(batch, report)) = self.pending.front() {
            if batch > durable {
                break;
            }
            self.durable = self.durable.max(report);
            self.pending.pop_front();
        }
        let mut acks = Vec::new();
        while let Some(&(batch, seq)) = self.acks.front() {
            if batch > durable {
                break;
            }
            self.acks.pop_front();
            acks.push(seq);
        }
        acks
    }

    /// Report ids durable and not yet sent on this connection (some may be acknowledged
    /// and gone from the outbox already); `None` when there is nothing to send or no
    /// connection.
    pub fn unsent(&self) -> Option<RangeInclusive<u64>> {
        let sent = self.sent?;
        (sent < self.durable).then(|| sent.saturating_add(1)..=self.durable)
    }

    /// Outcomes up to `upto` went out on this connection at `now`.
    pub fn sent(&mut self, upto: u64, now: Instant) {
        if let Some(s) = &mut self.sent {
            *s = (*s).max(upto.min(self.durable));
            self.last_send = Some(now);
        }
    }

    /// Whether outcomes may go at once (the last batch went out [`MIN_SEND_GAP`] or more
    /// before `now`), rather than wait for the next flush.
    pub fn send_now(&self, now: Instant) -> bool {
        self.last_send
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_SEND_GAP)
    }

    /// The coordinator acknowledged outcomes up to `upto`: what the worker may forget,
    /// never past what this connection carried (an acknowledgement of more would drop
    /// outcomes the coordinator never received). `None`: nothing.
    pub fn acknowledged(&self, upto: u64) -> Option<u64> {
        let upto = upto.min(self.sent?);
        (upto > 0).then_some(upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §10: an outcome goes out only once its batch is durable, once per connection,
    // and again on the next connection until acknowledged.
    #[test]
    fn spec_10_outcomes_go_when_durable_once_per_connection_and_again_after_a_reconnect() {
        let t = Instant::now();
        let mut r = Reports::resumed(0);
        r.queued(1, 3);
        r.queued(2, 5);
        assert_eq!(r.unsent(), None, "no connection");
        r.connected();
        assert_eq!(r.unsent(), None, "nothing durable yet");
        assert!(r.durable(1).is_empty());
        assert_eq!(r.unsent(), Some(1..=3));
        r.sent(3, t);
        assert_eq!(r.unsent(), None);
        r.durable(2);
        assert_eq!(r.unsent(), Some(4..=5));
        r.sent(5, t);
        assert_eq!(r.unsent(), None);
        // Lost before the acknowledgement: all of it again on the next connection.
        r.disconnected();
        assert_eq!(r.unsent(), None);
        r.connected();
        assert_eq!(r.unsent(), Some(1..=5));
    }

    // SPEC §10: an acknowledgement forgets only what this connection carried.
    #[test]
    fn spec_10_an_acknowledgement_forgets_only_what_was_sent() {
        let t = Instant::now();
        let mut r = Reports::new();
        r.queued(1, 9);
        r.durable(1);
        assert_eq!(r.acknowledged(9), None, "no connection");
        r.connected();
        assert_eq!(r.acknowledged(9), None, "nothing sent on it yet");
        r.sent(4, t);
        assert_eq!(r.acknowledged(9), Some(4));
        assert_eq!(r.acknowledged(2), Some(2));
        r.sent(100, t);
        assert_eq!(r.unsent(), None, "sent never passes what is durable");
        assert_eq!(r.acknowledged(100), Some(9));
    }

    // A single outcome goes at once; one right after a batch waits for the flush.
    #[test]
    fn spec_10_outcomes_go_at_once_unless_a_batch_just_went() {
        let t = Instant::now();
        let mut r = Reports::resumed(2);
        assert!(r.send_now(t));
        r.connected();
        r.sent(1, t);
        assert!(!r.send_now(t + MIN_SEND_GAP / 2));
        assert!(r.send_now(t + MIN_SEND_GAP));
    }

    #[test]
    fn spec_10_what_a_start_read_goes_on_the_first_connection() {
        let mut r = Reports::resumed(12);
        assert_eq!(r.unsent(), None);
        r.connected();
        assert_eq!(r.unsent(), Some(1..=12));
    }

    // SPEC §4.2: an assignment delta is acknowledged once recorded durably, on the connection it
    // came on only.
    #[test]
    fn spec_4_2_assignments_are_acknowledged_when_durable_on_their_connection() {
        let mut r = Reports::new();
        r.applied(1, 7);
        assert!(
            r.durable(1).is_empty(),
            "no connection: nothing to acknowledge"
        );
        r.connected();
        r.applied(2, 8);
        r.applied(3, 9);
        assert_eq!(r.durable(2), vec![8]);
        r.disconnected();
        assert!(r.durable(3).is_empty(), "meant for the lost connection");
        r.connected();
        r.applied(4, 5);
        r.connected();
        assert!(
            r.durable(4).is_empty(),
            "a new connection without a loss seen first"
        );
        r.applied(5, 1);
        r.applied(5, 2);
        assert_eq!(r.durable(5), vec![1, 2]);
    }
}
