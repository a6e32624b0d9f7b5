//! Who is in the fleet: weights and the `max_workers` limit.

use gitmirror_tests::daemons::{DEAD_AFTER_TOTAL, SETTLE, str_field};
use gitmirror_tests::{Fleet, GitDaemon, POLL_INTERVAL, wait_for};
use gitmirror_worker::state::Identity;
use std::time::{Duration, Instant};

// SPEC §5: every live worker takes a share proportional to its weight. 90 repos, weights
// 1, 1, 3: the heavy worker's expected share is 60 % (33 % if weights were ignored). The
// workers' uuids are fixed so that the owners are a pure function of the test's inputs (with
// random uuids the share is a binomial draw and a ±3σ bound fails about one run in 300):
// with these uuids the weight-3 worker owns 52 of 90 repos, and 30 with weight 1.
#[test]
fn weights_share_repos_proportionally() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("weight", 90);
    let mut fleet = Fleet::start("weight", &repos, 0);
    for (i, w) in [1.0, 1.0, 3.0].into_iter().enumerate() {
        let k = fleet.create_worker(w);
        let state = &fleet.workers[k].state_dir;
        std::fs::create_dir_all(state).unwrap();
        let identity: Identity = serde_json::from_value(serde_json::json!({
            "uuid": format!("5a3c0f00-0000-4000-8000-00000000000{i}"),
            "worker_id": null,
        }))
        .unwrap();
        identity.save(state).unwrap();
        fleet.workers[k].start();
    }
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    let heavy = Fleet::owned_by(&owners, 2).len();
    let share = heavy as f64 / 90.0;
    eprintln!(
        "shares: w0 {}, w1 {}, w2 (weight 3) {heavy}",
        Fleet::owned_by(&owners, 0).len(),
        Fleet::owned_by(&owners, 1).len()
    );
    assert!(
        (0.45..=0.75).contains(&share),
        "the weight-3 worker holds {heavy} of 90 repos ({:.0} %), expected about 60 %",
        share * 100.0
    );
    let api = fleet.api_worker(2).unwrap();
    assert_eq!(api["weight"].as_f64(), Some(3.0), "{api}");
}

// SPEC §2.1 (`max_workers`: more workers are refused with a clear error); design: when
// all ids are held, the id of a dead worker is reused.
#[test]
fn workers_beyond_max_workers_are_refused_until_an_id_frees() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("maxw", 8);
    let mut fleet = Fleet::start_with("maxw", &repos, 2, |yaml, _| {
        yaml.replace("max_workers: 10", "max_workers: 2")
    });
    fleet.wait_alive(&[0, 1], Duration::from_secs(30));
    fleet.wait_settled(SETTLE);
    let id1 = fleet.api_worker(1).unwrap()["id"].clone();

    let extra = fleet.add_worker(1.0);
    let refused = fleet.workers[extra]
        .proc
        .wait_log(0, "max_workers", Duration::from_secs(20));
    eprintln!("refusal: {refused}");
    // Short fixed observation window: the assertion is that it never becomes alive.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let ws = fleet.coord.workers().unwrap();
        assert!(
            !ws.iter()
                .any(|w| str_field(w, "name") == fleet.workers[extra].name
                    && str_field(w, "state") == "alive"),
            "a third worker is alive with max_workers 2: {ws:?}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }

    // Once w1 is dead its id is free for the newcomer. Stop the newcomer first: retrying,
    // it would take the id the moment w1 is declared dead, before the test can see that.
    // Restarted afterwards, which also skips its backoff.
    fleet.workers[extra].kill();
    fleet.workers[1].kill();
    wait_for(
        DEAD_AFTER_TOTAL + Duration::from_secs(15),
        "w1 dead",
        || {
            let w = fleet.api_worker(1)?;
            (str_field(&w, "state") == "dead")
                .then_some(())
                .ok_or_else(|| w.to_string())
        },
    );
    fleet.workers[extra].start();
    fleet.wait_alive(&[extra], Duration::from_secs(30));
    let api = fleet.api_worker(extra).unwrap();
    assert_eq!(
        api["id"], id1,
        "the newcomer did not get the dead worker's id: {api}"
    );
    fleet.wait_settled(SETTLE);
}
