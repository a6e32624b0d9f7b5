//! Join tokens: a worker with the wrong secret or the wrong certificate pin is refused.

use gitmirror_tests::daemons::{SETTLE, join_token, str_field};
use gitmirror_tests::{Coordinator, Fleet, GitDaemon, POLL_INTERVAL, Worker};
use std::time::{Duration, Instant};

// SPEC §4.1: the worker accepts the coordinator only if the certificate's SHA-256 matches
// the token; the coordinator refuses a wrong secret with a clear error. A smaller fleet
// than the other files (10 repos, one good worker as the control): nothing here depends
// on the number of repos.
#[test]
fn wrong_secret_and_wrong_pin_are_refused() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("trust", 10);
    let fleet = Fleet::start("trust", &repos, 1);
    fleet.wait_alive(&[0], Duration::from_secs(30));

    // Right certificate hash, wrong secret.
    let (head, _secret) = fleet.token.rsplit_once('.').unwrap();
    let wrong_secret = format!("{head}.AAAAwrongSecret_but-well-formed0000");
    // Another coordinator's token: its certificate is not this coordinator's.
    let other = Coordinator::new(
        &fleet.root.path().join("other-coordinator"),
        fleet.index.path(),
    );
    let wrong_pin = join_token(&other.config);
    assert_ne!(wrong_pin, fleet.token);

    let bad = [
        ("badsecret", wrong_secret, "wrong join token"),
        (
            "badpin",
            wrong_pin,
            "certificate does not match the join token",
        ),
    ];
    let udp = fleet.coord.udp_port;
    let workers: Vec<Worker> = bad
        .iter()
        .map(|(name, token, _)| Worker::new(&fleet.root.path().join(name), name, udp, token, 1.0))
        .collect();
    for w in &workers {
        w.start();
    }

    // Until both have logged their refusal (and 3 s more), neither is ever alive.
    let start = Instant::now();
    let mut logged = [false, false];
    let mut done_at = None;
    loop {
        for (k, (_, _, needle)) in bad.iter().enumerate() {
            logged[k] |= workers[k].proc.log().contains(needle);
        }
        for w in fleet.coord.workers().unwrap() {
            let name = str_field(&w, "name");
            assert!(
                !(bad.iter().any(|(n, _, _)| *n == name) && str_field(&w, "state") == "alive"),
                "refused worker listed as alive: {w}"
            );
        }
        if logged == [true, true] && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        // After both refusals, a short fixed observation window: the assertion is that
        // nothing changes (no late acceptance).
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!(
                "refusals not logged after 30 s (wrong secret: {}, wrong pin: {})",
                logged[0], logged[1]
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }

    // The good worker is unaffected.
    fleet.wait_alive(&[0], Duration::from_secs(5));
    fleet.wait_settled(SETTLE);
}
