//! `kill -9` of a worker and its return.

use gitmirror_tests::daemons::{DEAD_AFTER_TOTAL, SETTLE, str_field};
use gitmirror_tests::{Fleet, GitDaemon, same_mirror, wait_for};
use std::time::Duration;

// SPEC §6 (alive → suspect → dead after `dead_after`), §5 (when a worker dies only its
// repos move; a returning worker keeps uuid and id and reuses its mirrors: a fetch, not a
// clone), §7.1.
#[test]
fn dead_worker_repos_move_and_come_back_to_its_mirrors() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("death", 50);
    let fleet = Fleet::start("death", &repos, 3);
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let before = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&before).unwrap();

    let victim = 1;
    let victim_api = fleet.api_worker(victim).unwrap();
    let victim_repos = Fleet::owned_by(&before, victim);
    assert!(!victim_repos.is_empty(), "w1 owns nothing: {before:?}");
    let inodes = fleet.mark_mirrors(victim, &victim_repos);

    let last_seq = fleet.coord.last_seq().unwrap();

    fleet.workers[victim].kill();

    // Declared dead after suspect_after + dead_after (3 s + 4 s), with slack.
    wait_for(
        DEAD_AFTER_TOTAL + Duration::from_secs(15),
        "w1 dead in /api/workers",
        || {
            let w = fleet.api_worker(victim)?;
            if str_field(&w, "state") == "dead" {
                Ok(())
            } else {
                Err(w.to_string())
            }
        },
    );

    // Its repos are owned and mirrored by the two others; nothing else moved.
    let during = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&during).unwrap();
    for (id, &owner) in &before {
        if owner == victim {
            assert_ne!(during[id], victim, "{id} still owned by the dead worker");
        } else {
            assert_eq!(during[id], owner, "{id} moved although its owner lives");
        }
    }

    // Back with the same state dir: same id and uuid, its repos return to it, and they are
    // the very same mirrors (not re-cloned).
    fleet.workers[victim].start();
    fleet.wait_alive(&[victim], Duration::from_secs(30));
    let back = fleet.api_worker(victim).unwrap();
    assert_eq!(
        back["id"], victim_api["id"],
        "id changed: {back} vs {victim_api}"
    );
    assert_eq!(
        back["uuid"], victim_api["uuid"],
        "uuid changed: {back} vs {victim_api}"
    );

    let after = fleet.wait_settled(SETTLE);
    assert_eq!(
        after, before,
        "owners after the return differ from the start"
    );
    fleet.check_mirrors(&after).unwrap();
    for (id, ino) in &inodes {
        same_mirror(&fleet.workers[victim].mirror_path(id), *ino)
            .unwrap_or_else(|e| panic!("{id} was re-cloned on return: {e}"));
    }

    // SPEC §8: no upstream ref changed during all this, so no event (a re-homed repo's
    // clone and the return are not ref changes).
    let events = fleet.coord.events(last_seq).unwrap();
    let summary: Vec<String> = events
        .iter()
        .map(|e| format!("{} {} by worker {}", e["kind"], e["repo"], e["worker"]))
        .collect();
    assert!(
        events.is_empty(),
        "events without any upstream change: {summary:#?}"
    );
}
