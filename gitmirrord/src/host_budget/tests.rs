//! The budget core on a virtual clock (SPEC §18): honest workers that apply what they are
//! told, with messages in flight both ways, never run more than the budget together.

use super::*;
use gitmirror_wire::HostLoad;
use std::collections::VecDeque;

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn limit(host: &str, connections: Option<u32>, per_minute: Option<u32>) -> HostLimit {
    HostLimit {
        host: host.into(),
        connections,
        per_minute,
    }
}

/// A worker as the protocol sees it: it applies a `HostBudgets` when it arrives, starts a
/// fetch only below its share, and reports its demand after applying.
#[derive(Default)]
struct SimWorker {
    share: Option<u32>,
    seen: u64,
    running: u32,
    due: u32,
}

impl SimWorker {
    fn report(&self, host: &str) -> HostDemand {
        HostDemand {
            seen: self.seen,
            hosts: vec![HostLoad {
                host: host.into(),
                due: self.due,
                running: self.running,
                started_last_minute: 0,
                share: self.share,
            }],
        }
    }
    fn start(&mut self) {
        while self.due > 0 && self.running < self.share.unwrap_or(0) {
            self.due -= 1;
            self.running += 1;
        }
    }
}

/// A tiny repeatable generator (no dependency for one test).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

#[test]
fn spec_18_split_weights_by_demand_and_never_exceeds() {
    assert_eq!(split(10, &[6, 3, 1]), vec![6, 3, 1]);
    assert_eq!(split(2, &[5, 5, 5]), vec![1, 1, 0]);
    assert_eq!(split(0, &[5]), vec![0]);
    let s = split(200, &[1000, 500, 100, 1]);
    assert_eq!(s.iter().sum::<u32>(), 200);
    assert!(s[0] > s[1] && s[1] > s[2] && s[3] == 1, "{s:?}");
    for budget in [0u32, 1, 2, 7, 200] {
        for demands in [vec![], vec![1], vec![9, 9, 1], vec![300; 1000]] {
            let s = split(budget, &demands);
            assert!(s.iter().sum::<u32>() <= budget);
            for (x, d) in s.iter().zip(&demands) {
                assert!(x <= d);
            }
            if budget as usize >= demands.len() {
                assert!(s.iter().all(|x| *x >= 1), "{budget} {demands:?} {s:?}");
            }
        }
    }
}

/// Workers with random demand, messages delayed by random numbers of steps both ways,
/// workers joining, leaving and coming back: the fetches actually running on the host,
/// and the coordinator's bounds, never add up to more than the budget; every worker with
/// demand gets a share eventually.
#[test]
fn spec_18_shares_never_exceed_the_budget_even_in_hand_over() {
    const BUDGET: u32 = 7;
    for seed in 1..40u64 {
        let mut rng = Lcg(seed);
        let mut b = Budgets::new(vec![limit("h", Some(BUDGET), None)], 60_000, 0, false);
        let n = 6u128;
        let mut workers: Vec<SimWorker> = (0..n).map(|_| SimWorker::default()).collect();
        let mut up = vec![false; n as usize];
        // (deliver at step, worker, message)
        let mut to_workers: VecDeque<(u64, usize, HostBudgets)> = VecDeque::new();
        let mut to_coord: VecDeque<(u64, usize, HostDemand)> = VecDeque::new();
        let mut now = 0i64;
        let mut got_share = vec![false; n as usize];
        for step in 0..3000u64 {
            now += 50;
            let w = rng.next(n as u64) as usize;
            match rng.next(10) {
                0 if !up[w] => {
                    up[w] = true;
                    // A new connection: nothing applied on it yet.
                    workers[w].seen = 0;
                    b.connected(uuid(w as u128), 6);
                }
                1 if up[w] && rng.next(20) == 0 => {
                    // Lost: the coordinator stops talking to it; it keeps what it has.
                    up[w] = false;
                    b.lost(uuid(w as u128), now);
                    to_workers.retain(|(_, x, _)| *x != w);
                    to_coord.retain(|(_, x, _)| *x != w);
                }
                2 | 3 => workers[w].due += rng.next(4) as u32,
                4 | 5 if workers[w].running > 0 => workers[w].running -= 1,
                _ => {}
            }
            for sends in [b.tick(now)] {
                for (u, msg) in sends {
                    let i = u.as_u128() as usize;
                    to_workers.push_back((step + rng.next(5), i, msg));
                }
            }
            // Deliver what is due, in order per direction (one stream per worker).
            let mut keep = VecDeque::new();
            while let Some((at, i, msg)) = to_workers.pop_front() {
                if at <= step && !keep.iter().any(|(_, j, _)| *j == i) {
                    let sw = &mut workers[i];
                    sw.share = msg.limits[0].connections;
                    sw.seen = msg.seq;
                    sw.start();
                    to_coord.push_back((step + rng.next(5), i, sw.report("h")));
                } else {
                    keep.push_back((at, i, msg));
                }
            }
            to_workers = keep;
            for (i, sw) in workers.iter_mut().enumerate() {
                sw.start();
                if up[i] && rng.next(4) == 0 {
                    to_coord.push_back((step + rng.next(5), i, sw.report("h")));
                }
                if sw.share.unwrap_or(0) > 0 {
                    got_share[i] = true;
                }
            }
            let mut keep = VecDeque::new();
            while let Some((at, i, d)) = to_coord.pop_front() {
                if at <= step && !keep.iter().any(|(_, j, _)| *j == i) {
                    b.demand(uuid(i as u128), &d);
                } else {
                    keep.push_back((at, i, d));
                }
            }
            to_coord = keep;
            let running: u32 = workers.iter().map(|w| w.running).sum();
            assert!(
                running <= BUDGET,
                "seed {seed} step {step}: {running} running"
            );
            assert!(b.bound_total("h") <= BUDGET, "seed {seed} step {step}");
            // A worker lost for good: after the lease it starts nothing (its share is 0).
            for (i, sw) in workers.iter_mut().enumerate() {
                if !up[i] && sw.share.is_some() && rng.next(50) == 0 {
                    // Its fetches ended meanwhile (design.md: within the release margin).
                    sw.share = Some(0);
                    sw.running = 0;
                }
            }
        }
        assert!(got_share.iter().filter(|g| **g).count() >= 2, "seed {seed}");
    }
}

#[test]
fn spec_18_unused_share_flows_back_after_the_acknowledgement() {
    let (a, c) = (uuid(1), uuid(2));
    let mut b = Budgets::new(vec![limit("h", Some(4), None)], 60_000, 0, false);
    b.connected(a, 6);
    b.connected(c, 6);
    let load = |seen, due, running, share| HostDemand {
        seen,
        hosts: vec![HostLoad {
            host: "h".into(),
            due,
            running,
            started_last_minute: 0,
            share,
        }],
    };
    b.demand(a, &load(0, 10, 0, None));
    let sends = b.tick(0);
    let a_msg = sends.iter().find(|(u, _)| *u == a).unwrap().1.clone();
    assert_eq!(a_msg.limits[0].connections, Some(4));
    // a runs 4; c now wants some: a's share shrinks, but c gets nothing until a says so.
    b.demand(a, &load(a_msg.seq, 6, 4, Some(4)));
    b.demand(c, &load(0, 10, 0, None));
    let sends = b.tick(100);
    let a_msg = sends.iter().find(|(u, _)| *u == a).unwrap().1.clone();
    let shrunk = a_msg.limits[0].connections.unwrap();
    assert!(shrunk < 4);
    let c_now = sends
        .iter()
        .find(|(u, _)| *u == c)
        .and_then(|(_, m)| m.limits[0].connections)
        .unwrap_or(0);
    assert_eq!(c_now, 0, "nothing free while a may still run 4");
    assert_eq!(b.bound_total("h"), 4);
    // a applied it and finished down to its new share: c gets the rest.
    b.demand(a, &load(a_msg.seq, 3, shrunk, Some(shrunk)));
    let sends = b.tick(200);
    let c_msg = sends.iter().find(|(u, _)| *u == c).unwrap().1.clone();
    assert_eq!(c_msg.limits[0].connections, Some(4 - shrunk));
    assert_eq!(b.bound_total("h"), 4);
    // a is done: its share goes to 0, and once it has that, all of it goes to c (two
    // round trips and two ticks: well within seconds).
    b.demand(a, &load(a_msg.seq, 0, 0, Some(shrunk)));
    b.demand(c, &load(c_msg.seq, 10, 4 - shrunk, Some(4 - shrunk)));
    let sends = b.tick(300);
    let a_msg = sends.iter().find(|(u, _)| *u == a).unwrap().1.clone();
    assert_eq!(a_msg.limits[0].connections, Some(0));
    assert!(sends.iter().all(|(u, _)| *u != c), "nothing free yet");
    b.demand(a, &load(a_msg.seq, 0, 0, Some(0)));
    let sends = b.tick(400);
    let c_msg = sends.iter().find(|(u, _)| *u == c).unwrap().1.clone();
    assert_eq!(c_msg.limits[0].connections, Some(4));
}

#[test]
fn spec_18_a_lost_worker_keeps_its_share_bound_until_released() {
    let (a, c) = (uuid(1), uuid(2));
    let mut b = Budgets::new(vec![limit("h", Some(2), None)], 60_000, 0, false);
    b.connected(a, 6);
    b.connected(c, 6);
    let d = |due| HostDemand {
        seen: 0,
        hosts: vec![HostLoad {
            host: "h".into(),
            due,
            running: 0,
            started_last_minute: 0,
            share: None,
        }],
    };
    b.demand(a, &d(5));
    let _ = b.tick(0);
    b.lost(a, 1000);
    b.demand(c, &d(5));
    let sends = b.tick(2000);
    assert!(sends.iter().all(|(u, _)| *u != a));
    let got = |sends: &[(Uuid, HostBudgets)]| {
        sends
            .iter()
            .find(|(u, _)| *u == c)
            .and_then(|(_, m)| m.limits[0].connections)
            .unwrap_or(0)
    };
    assert_eq!(got(&sends), 0);
    // Released after release_ms: c gets the whole budget.
    let sends = b.tick(1000 + 60_000);
    assert_eq!(got(&sends), 2);
}

// A fleet with no limits and no pauses sends no budgets at all; once a worker was told
// something, it hears when that ends.
#[test]
fn spec_18_nothing_is_sent_without_limits_or_pauses() {
    let w = uuid(1);
    let mut b = Budgets::new(vec![], 60_000, 0, false);
    assert!(b.connected(w, 6));
    assert!(b.tick(0).is_empty());
    let _ = b.rate_limited("h", 1_000, 0);
    let sends = b.take_sends(0);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].1.paused.len(), 1);
    b.set_limits(vec![limit("h", Some(1), None)]);
    b.set_limits(vec![]);
    let sends = b.tick(5_000);
    assert_eq!(sends.len(), 1, "the end of the limits is news");
    assert!(sends[0].1.limits.is_empty() && sends[0].1.paused.is_empty());
}

#[test]
fn spec_18_old_workers_are_not_budgeted() {
    let mut b = Budgets::new(vec![limit("h", Some(2), None)], 60_000, 0, false);
    assert!(!b.connected(uuid(1), 5));
    assert!(b.tick(0).is_empty());
}

#[test]
fn spec_18_after_a_restart_shares_only_grow_after_a_lease() {
    let (a, c) = (uuid(1), uuid(2));
    let mut b = Budgets::new(vec![limit("h", Some(4), None)], 60_000, 0, true);
    b.connected(a, 6);
    b.connected(c, 6);
    // a held 3 from the previous process and says so.
    let d = |due, share| HostDemand {
        seen: 0,
        hosts: vec![HostLoad {
            host: "h".into(),
            due,
            running: 0,
            started_last_minute: 0,
            share,
        }],
    };
    b.demand(a, &d(5, Some(3)));
    b.demand(c, &d(5, None));
    let sends = b.tick(1000);
    let share = |sends: &[(Uuid, HostBudgets)], w| {
        sends
            .iter()
            .find(|(u, _)| *u == w)
            .and_then(|(_, m)| m.limits[0].connections)
    };
    // It keeps up to what it holds bound (its fair half now), and nothing grows.
    assert_eq!(share(&sends, a), Some(2));
    assert_eq!(b.bound_total("h"), 3);
    assert_eq!(share(&sends, c), Some(0), "nothing new during the hold");
    b.demand(c, &d(6, None));
    let sends = b.tick(30_001);
    assert_eq!(share(&sends, c), Some(1));
}

#[test]
fn spec_18_rate_limit_pauses_are_bounded_and_never_shortened() {
    let w = uuid(1);
    let mut b = Budgets::new(vec![], 60_000, 0, false);
    b.connected(w, 6);
    let p = b.rate_limited("GitHub.com", 5_000, 1_000).unwrap();
    assert_eq!(
        p,
        Paused {
            host: "github.com".into(),
            until_ms: 6_000
        }
    );
    // A shorter answer later does not shorten it, and is no new pause (no log line).
    assert_eq!(b.rate_limited("github.com", 1_000, 2_000), None);
    let sends = b.take_sends(2_000);
    assert_eq!(sends[0].1.paused[0].remaining_ms, 4_000);
    // At most an hour per answer.
    assert_eq!(b.rate_limited("github.com", u64::MAX, 3_000), None);
    let v = b.view(3_000);
    assert_eq!(v[0].paused_until_ms, Some(3_000 + 3_600_000));
    // Bounded number of hosts; nonsense is refused.
    assert_eq!(b.rate_limited("a b", 1_000, 3_000), None);
    for i in 0..MAX_PAUSED_HOSTS + 10 {
        let _ = b.rate_limited(&format!("h{i}.example"), 1_000, 3_000);
    }
    assert_eq!(b.view(3_000).len(), MAX_PAUSED_HOSTS);
    // Expired pauses go.
    assert!(b.view(3_000 + 3_600_001).is_empty());
}

#[test]
fn spec_18_repeated_reports_extend_a_pause_without_telling_the_fleet_each_time() {
    let (w, x) = (uuid(1), uuid(2));
    let mut b = Budgets::new(vec![], 60_000, 0, false);
    b.connected(w, 6);
    b.connected(x, 6);
    assert!(b.rate_limited("h", 60_000, 1_000).is_some());
    assert_eq!(b.take_sends(1_000).len(), 2);
    // The rest of the throttled fleet reports a few ms later each: no news.
    for t in 1_001..1_100 {
        assert_eq!(b.rate_limited("h", 60_000, t), None);
    }
    assert!(b.take_sends(1_100).is_empty());
    // A second longer is.
    assert_eq!(b.rate_limited("h", 60_000, 2_000), None);
    assert_eq!(b.take_sends(2_000).len(), 2);
    // A reset time already past pauses nothing.
    assert_eq!(b.rate_limited("other", 0, 2_000), None);
    assert!(b.view(2_000).iter().all(|v| v.host != "other"));
}

/// Rates: one worker alone gets the whole rate, whatever its demand; a lost worker's rate
/// stays reserved until it is released (it goes on at it meanwhile), never handed on.
#[test]
fn spec_18_rate_shares_use_the_budget_and_reserve_a_lost_workers_rate() {
    let (a, c) = (uuid(1), uuid(2));
    let mut b = Budgets::new(vec![limit("h", None, Some(600))], 60_000, 0, false);
    let rate_of = |sends: &[(Uuid, HostBudgets)], u: Uuid| {
        sends
            .iter()
            .find(|(w, _)| *w == u)
            .and_then(|(_, m)| m.limits[0].per_minute)
    };
    let load = |due| HostDemand {
        seen: 0,
        hosts: vec![HostLoad {
            host: "h".into(),
            due,
            running: 0,
            started_last_minute: 0,
            share: None,
        }],
    };
    b.connected(a, 6);
    b.demand(a, &load(2));
    assert_eq!(
        rate_of(&b.tick(0), a),
        Some(600),
        "not capped by 2 due fetches"
    );
    b.connected(c, 6);
    b.demand(c, &load(2));
    let sends = b.tick(100);
    let (ra, rc) = (rate_of(&sends, a).unwrap(), rate_of(&sends, c).unwrap());
    assert_eq!(ra + rc, 600);
    assert!(ra > 0 && rc > 0);
    // a's connection is lost: c does not get a's rate while a may still use it.
    b.lost(a, 200);
    b.demand(c, &load(2));
    let sends = b.tick(200);
    assert!(rate_of(&sends, c).is_none_or(|r| r == rc), "{sends:?}");
    // Released after release_ms: all of it goes to c.
    b.demand(c, &load(2));
    let sends = b.tick(200 + 60_000);
    assert_eq!(rate_of(&sends, c), Some(600));
}

/// A worker that still holds budgets the coordinator never sent (it restarted, or
/// released the worker's entry while it was away) hears the current ones, "no limits"
/// included, at its first report; otherwise it would keep the old ones for good.
#[test]
fn spec_18_a_worker_holding_old_budgets_hears_they_ended() {
    let w = uuid(1);
    let mut b = Budgets::new(vec![], 60_000, 0, false);
    b.connected(w, 6);
    assert!(b.tick(0).is_empty(), "nothing to say to a fresh worker");
    let held = HostDemand {
        seen: 7,
        hosts: vec![HostLoad {
            host: "h".into(),
            due: 3,
            running: 0,
            started_last_minute: 0,
            share: Some(0),
        }],
    };
    b.demand(w, &held);
    let sends = b.tick(100);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert!(sends[0].1.limits.is_empty() && sends[0].1.paused.is_empty());
}
