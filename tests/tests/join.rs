//! A fourth worker joins a fleet of three.

use gitmirror_tests::Fleet;
use gitmirror_tests::GitDaemon;
use gitmirror_tests::daemons::SETTLE;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Which workers have a final-path mirror of each repo, per observation: bit `i` set when
/// worker `i` has it.
type Observation = Vec<u8>;

/// One look at every mirror dir. Each repo is checked in worker order and then in
/// reverse: a repo moving between two workers while being looked at is seen on at least
/// one of them in one of the passes, since the new mirror appears before the old goes.
fn observe(fleet: &Fleet, ids: &[String]) -> Observation {
    ids.iter()
        .map(|id| {
            let mut mask = 0u8;
            for (i, w) in fleet.workers.iter().enumerate() {
                if w.has_mirror(id) {
                    mask |= 1 << i;
                }
            }
            for (i, w) in fleet.workers.iter().enumerate().rev() {
                if w.has_mirror(id) {
                    mask |= 1 << i;
                }
            }
            mask
        })
        .collect()
}

// SPEC §5: when a worker joins only repos that move to it move (about 1/4 here), and a
// moved repo stays mirrored on its old owner until the new owner has it (make before
// break).
#[test]
fn joining_worker_takes_a_quarter_with_make_before_break() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("join", 60);
    let mut fleet = Fleet::start("join", &repos, 3);
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let before = fleet.wait_settled(SETTLE);
    let ids: Vec<String> = repos.keys().cloned().collect();
    let newcomer = fleet.create_worker(1.0);

    // Watch every mirror dir continuously from before the join until the fleet settles.
    let stop = AtomicBool::new(false);
    let fleet = &fleet;
    let (after, observations) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(observe(fleet, &ids));
                // Sampling pace, not a wait for a condition.
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        fleet.workers[newcomer].start();
        fleet.wait_alive(&[newcomer], Duration::from_secs(30));
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fleet.wait_settled(SETTLE)));
        stop.store(true, Ordering::Relaxed);
        let seen = sampler.join().expect("sampler thread");
        match result {
            Ok(after) => (after, seen),
            Err(p) => std::panic::resume_unwind(p),
        }
    });
    fleet.check_mirrors(&after).unwrap();

    let moved: BTreeMap<&String, (usize, usize)> = before
        .iter()
        .filter(|&(id, &old)| after[id] != old)
        .map(|(id, &old)| (id, (old, after[id])))
        .collect();
    for (id, (old, new)) in &moved {
        assert_eq!(
            *new, newcomer,
            "{id} moved from w{old} to w{new}, between two old workers"
        );
    }
    let share = moved.len() as f64 / repos.len() as f64;
    assert!(
        (0.10..=0.45).contains(&share),
        "the newcomer took {} of {} repos ({:.0} %), expected about a quarter",
        moved.len(),
        repos.len(),
        share * 100.0
    );

    // Make before break, at every observation.
    let overlap = observations
        .iter()
        .filter(|obs| {
            moved.iter().any(|(id, &(old, new))| {
                let k = ids.iter().position(|i| i == *id).unwrap_or(0);
                obs[k] & (1 << old) != 0 && obs[k] & (1 << new) != 0
            })
        })
        .count();
    eprintln!(
        "{} of {} repos moved to the newcomer; {} observations, {overlap} with a moved repo \
         on both its old and new owner",
        moved.len(),
        repos.len(),
        observations.len()
    );
    assert!(
        observations.len() >= 10,
        "only {} observations",
        observations.len()
    );
    for (n, obs) in observations.iter().enumerate() {
        for (k, id) in ids.iter().enumerate() {
            let mask = obs[k];
            let ok = match moved.get(id) {
                Some(&(old, new)) => mask & (1 << old | 1 << new) != 0,
                None => mask & (1 << before[id]) != 0,
            };
            assert!(
                ok,
                "observation {n} of {}: {id} (owner w{} before, w{} after) had no mirror on \
                 its old or new owner (mirrors on workers {mask:#06b})",
                observations.len(),
                before[id],
                after[id]
            );
        }
    }
}
