//! Issue 12 (SPEC §13): the peer plane in a real fleet.

use gitmirror_tests::{Fleet, GitDaemon, free_udp_port, poll_until};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

/// Step S2, the plumbing (C2): every protocol-7 worker gets the fleet CA from the
/// coordinator over the pinned channel and saves it as `fleet-ca.pem` (the coordinator's
/// `ca-cert.pem`, byte for byte); only the worker with `peer_listen` listens.
#[test]
fn spec_13_workers_get_the_fleet_ca_and_only_peer_listen_listens() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("peers-ca", 4);
    let mut fleet = Fleet::start("peers-ca", &repos, 0);
    let port = free_udp_port();
    let a = fleet.create_worker_with(1.0, |y| format!("{y}peer_listen: 127.0.0.1:{port}\n"));
    fleet.workers[a].start();
    let b = fleet.add_worker(1.0);
    fleet.wait_alive(&[a, b], WITHIN);
    let ca = std::fs::read_to_string(fleet.coord.state_dir.join("ca-cert.pem")).unwrap();
    for i in [a, b] {
        let saved = fleet.workers[i].state_dir.join("fleet-ca.pem");
        poll_until(WITHIN, "the fleet CA saved by the worker", || {
            std::fs::read_to_string(&saved).ok().filter(|s| *s == ca)
        });
    }
    fleet.workers[a]
        .proc
        .wait_log(0, "peer plane listening", WITHIN);
    assert!(!fleet.workers[b].proc.log().contains("peer plane listening"));
}
