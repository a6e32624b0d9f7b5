//! Configuration files: the prototype's seed keys, and `check-config`.

use gitmirror_tests::daemons::{SETTLE, check_config, str_field};
use gitmirror_tests::{
    Coordinator, GitDaemon, Index, TestDir, Worker, wait_for, yaml_path, yaml_str,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// A well-formed token (the check does not contact a coordinator).
const TOKEN: &str = "gmj1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.c2VjcmV0";

// SPEC §2 (seed aliases: a file with only the prototype's keys starts the daemon, with a
// warning per alias naming its new key), §9 (`/api/status` keeps the prototype's three
// keys).
//
// The started coordinator also gets `state_dir` and `http_listen`, and the worker
// `join_token` and `state_dir`: without them the daemons would use the machine's
// /var/lib directories, port 8089 and /etc/gitmirror/join-token, which a test must not
// touch. The pure seed-only coordinator file is checked with `check-config`.
#[test]
fn prototype_seed_config_files_start_both_daemons() {
    let daemon = GitDaemon::shared();
    let repos = daemon.repo_set("seed", 5);
    let root = TestDir::new("seed");
    let index = Index::create(&root.path().join("index"));
    for (id, url) in &repos {
        index.put_url(id, url);
    }
    index.commit("seed repos");

    let seed_keys = |udp: u16| {
        format!(
            "coor_ip_addr: 127.0.0.1:{udp}\n\
             upstream_repos_name: upstream-repos\n\
             upstream_repos_url: {}\n\
             bitmap_max_num: 10\n\
             fetch_interval: 1\n",
            yaml_path(index.path())
        )
    };
    let pure = root.path().join("seed-only.yaml");
    std::fs::write(&pure, seed_keys(5555)).unwrap();
    let check = check_config("gitmirrord", &pure);
    assert_eq!(check.code, Some(0), "seed-only coordinator file: {check:?}");

    let coord = Coordinator::with_yaml(&root.path().join("coordinator"), |udp, http, state| {
        format!(
            "{}state_dir: {}\nhttp_listen: 127.0.0.1:{http}\n",
            seed_keys(udp),
            yaml_path(state)
        )
    });
    let token = coord.join_token();
    coord.start_ready();
    let log = coord.proc.log();
    for (alias, key) in [
        ("coor_ip_addr", "listen"),
        ("upstream_repos_name", "indexes"),
        ("upstream_repos_url", "indexes"),
        ("bitmap_max_num", "max_workers"),
        ("fetch_interval", "poll_interval"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(alias) && l.contains(key)),
            "no warning naming {alias} and {key} in the coordinator log:\n{log}"
        );
    }

    let udp = coord.udp_port;
    let worker = Worker::with_yaml(
        &root.path().join("worker"),
        "seed-worker",
        |mirror, state| {
            format!(
                "where_coor_ip_addr: 127.0.0.1:{udp}\n\
             clone_disk_path: {}\n\
             join_token: {}\n\
             state_dir: {}\n",
                yaml_path(mirror),
                yaml_str(&token),
                yaml_path(state)
            )
        },
    );
    worker.start();
    for (alias, key) in [
        ("where_coor_ip_addr", "coordinator"),
        ("clone_disk_path", "mirror_dir"),
    ] {
        worker.proc.wait_log(0, alias, Duration::from_secs(10));
        let log = worker.proc.log();
        assert!(
            log.lines().any(|l| l.contains(alias) && l.contains(key)),
            "no warning naming {alias} and {key} in the worker log:\n{log}"
        );
    }

    // The prototype's keys: server_status, worker_count, worker:url (id → its URLs).
    let urls: BTreeSet<String> = repos.values().cloned().collect();
    wait_for(SETTLE, "prototype status keys", || {
        let s = coord.status()?;
        let listed: Option<BTreeSet<String>> = s["worker:url"].as_object().and_then(|m| {
            let mut all = BTreeSet::new();
            for v in m.values() {
                for u in v.as_array()? {
                    all.insert(u.as_str()?.to_owned());
                }
            }
            (m.len() == 1).then_some(all)
        });
        if s["server_status"] == "running"
            && s["worker_count"] == 1
            && listed.as_ref() == Some(&urls)
        {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    // And the worker mirrors into `clone_disk_path`.
    wait_for(SETTLE, "mirrors in clone_disk_path", || {
        let missing: Vec<&String> = repos.keys().filter(|id| !worker.has_mirror(id)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    });
    let w = &coord.workers().unwrap()[0];
    assert_eq!(str_field(w, "state"), "alive", "{w}");
}

/// `check-config` on `yaml` written to `dir/name`: exit 78 naming the file and `key`.
fn assert_rejected(binary: &str, dir: &Path, name: &str, yaml: &str, key: &str) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let c = check_config(binary, &path);
    assert_eq!(
        c.code,
        Some(78),
        "{binary} check-config {name}: {c:?}\n{yaml}"
    );
    assert!(
        c.stderr.contains(key),
        "{binary} check-config {name}: stderr does not name {key:?}: {}",
        c.stderr
    );
    assert!(
        c.stderr.contains(name),
        "{binary} check-config {name}: stderr does not name the file: {}",
        c.stderr
    );
}

fn assert_accepted(binary: &str, dir: &Path, name: &str, yaml: &str) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let c = check_config(binary, &path);
    assert_eq!(
        c.code,
        Some(0),
        "{binary} check-config {name}: {c:?}\n{yaml}"
    );
}

// SPEC §2 (unknown keys are an error naming the key; durations; every error names file
// and key), §11 (`check-config` exits 0 when valid, 78 otherwise).
#[test]
fn check_config_exits_78_naming_the_key() {
    let root = TestDir::new("checkconfig");
    let dir = root.path();
    let state = dir.join("state");
    let index = dir.join("index");
    let good = Coordinator::standard_yaml(5555, 8089, &state, &index);
    assert_accepted("gitmirrord", dir, "good-coordinator.yaml", &good);
    assert_rejected(
        "gitmirrord",
        dir,
        "unknown-key.yaml",
        &format!("{good}bogus_key: 1\n"),
        "bogus_key",
    );
    assert_rejected(
        "gitmirrord",
        dir,
        "bad-dead-after.yaml",
        &good.replace("dead_after: 4s", "dead_after: soon"),
        "dead_after",
    );
    assert_rejected(
        "gitmirrord",
        dir,
        "bad-poll-interval.yaml",
        &good.replace("poll_interval: 1s", "poll_interval: 5 parsecs"),
        "poll_interval",
    );
    assert_rejected(
        "gitmirrord",
        dir,
        "unknown-nested-key.yaml",
        &good.replace("suspect_after: 3s", "suspect_after: 3s\n  grace: 2s"),
        "grace",
    );

    let good = Worker::standard_yaml("w", 5555, TOKEN, 1.0, &dir.join("m"), &dir.join("s"));
    assert_accepted("gitmirror-worker", dir, "good-worker.yaml", &good);
    assert_rejected(
        "gitmirror-worker",
        dir,
        "worker-unknown-key.yaml",
        &format!("{good}colour: blue\n"),
        "colour",
    );
    assert_rejected(
        "gitmirror-worker",
        dir,
        "worker-bad-interval.yaml",
        &good.replace("min_interval: 2s", "min_interval: soon"),
        "min_interval",
    );
    assert_rejected(
        "gitmirror-worker",
        dir,
        "worker-unknown-fetch-key.yaml",
        &good.replace("concurrency: 8", "concurrency: 8\n  speed: 3"),
        "speed",
    );
}
