//! Placement by project (SPEC §14, issue 13): a fresh fleet places every repo of a
//! project folder on one worker.

use gitmirror_tests::daemons::SETTLE;
use gitmirror_tests::{Fleet, GitDaemon};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// SPEC §14: `placement` unset on a fresh state directory is `project`: all repos of one
// folder (`<first>/<project>/`) are mirrored by one worker, and the placement in force is
// persisted with the registry.
#[test]
fn spec_14_fresh_fleet_places_each_project_folder_on_one_worker() {
    let daemon = GitDaemon::shared();
    let mut repos = BTreeMap::new();
    for (prefix, n) in [
        ("plca", 7),
        ("plcb", 6),
        ("plcc", 5),
        ("plcd", 4),
        ("plce", 3),
        ("plcf", 2),
    ] {
        repos.extend(daemon.repo_set(prefix, n));
    }
    // The harness pins `placement: repo`; without it the fresh state takes `project`.
    let fleet = Fleet::start_with("placement", &repos, 3, |yaml, _| {
        assert!(yaml.contains("placement: repo\n"), "{yaml}");
        yaml.replace("placement: repo\n", "")
    });
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    let owners = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&owners).unwrap();
    let mut by_folder: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (id, w) in &owners {
        let folder = id.rsplit_once('/').map_or(id.as_str(), |(f, _)| f);
        by_folder.entry(folder).or_default().insert(*w);
    }
    assert_eq!(by_folder.len(), 6, "{by_folder:?}");
    for (folder, workers) in &by_folder {
        assert_eq!(
            workers.len(),
            1,
            "{folder}/ is spread over workers {workers:?}"
        );
    }
    let registry = std::fs::read_to_string(fleet.coord.state_dir.join("registry.json")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(registry.split_once('\n').map_or("", |(_, j)| j)).unwrap();
    assert_eq!(json["placement"], "project", "not persisted: {registry}");
    assert!(fleet.coord.proc.log().contains("placement in force"));
}
