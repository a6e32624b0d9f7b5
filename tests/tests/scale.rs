//! SPEC §12 at the scale of one repo: an upstream with 200,000 refs (Gerrit keeps a ref per
//! change) is mirrored, reported and followed without anything dropped.

use gitmirror_tests::git::{add_change_refs, git, repo_name};
use gitmirror_tests::{Fleet, GitDaemon, wait_for};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::time::Duration;

const REFS: usize = 200_000;

// SPEC §12 "Wire" and "Event retention": a clone of 200k refs is reported with its
// `ref_count` (its event lists none: more than `events.max_refs`), and a later fetch that
// moves 10 of them makes one event listing exactly those 10.
#[test]
fn spec_12_two_hundred_thousand_refs_then_ten_change() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("bigrefs", 1);
    let (id, _) = repos.iter().next().unwrap();
    let name = repo_name(id).to_owned();
    let head = add_change_refs(&daemon.repo_path(&name), REFS);
    assert_eq!(daemon.ls_remote(&name).len(), REFS + 4, "upstream refs");
    let fleet = Fleet::start("bigrefs", &repos, 1);
    // Generous: this test shares a loaded 2-core machine with the rest of the suite.
    fleet.wait_alive(&[0], Duration::from_secs(120));

    let cloned = wait_for(Duration::from_secs(600), "the clone's event", || {
        let events = fleet.coord.all_events()?;
        events
            .into_iter()
            .find(|e| e["repo"] == id.as_str() && e["kind"] == "cloned")
            .ok_or_else(|| "no cloned event yet".to_owned())
    });
    assert_eq!(cloned["ref_count"], (REFS + 4) as u64, "{cloned}");
    assert!(
        cloned["refs"].as_array().is_some_and(Vec::is_empty),
        "more changes than events.max_refs are counted, not listed"
    );
    let repo = fleet.coord.repo(id).unwrap();
    assert_eq!(repo["refs"], (REFS + 4) as u64, "{repo}");

    // Ten refs move to a new commit (made without moving any other ref).
    let gd = daemon.repo_path(&name);
    let tree = format!("{head}^{{tree}}");
    let new = git([
        OsStr::new("--git-dir"),
        gd.as_os_str(),
        "commit-tree".as_ref(),
        tree.as_ref(),
        "-p".as_ref(),
        head.as_ref(),
        "-m".as_ref(),
        "ten changes".as_ref(),
    ])
    .trim()
    .to_owned();
    let moved: BTreeSet<String> = (0..10)
        .map(|i| format!("refs/changes/{:02}/{}/1", (i * 7919) % 100, i * 7919))
        .collect();
    for r in &moved {
        daemon.set_ref(&name, r, &new);
    }
    let after = cloned["seq"].as_u64().unwrap();
    let update = wait_for(Duration::from_secs(300), "the update's event", || {
        let events = fleet.coord.events(after)?;
        events
            .into_iter()
            .find(|e| e["repo"] == id.as_str() && e["kind"] == "updated")
            .ok_or_else(|| "no update event yet".to_owned())
    });
    let listed: BTreeSet<String> = update["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, moved, "exactly the moved refs: {update}");
    assert_eq!(update["ref_count"], moved.len() as u64);
    for r in update["refs"].as_array().unwrap() {
        assert_eq!(r["new"], new.as_str(), "{r}");
    }
}
