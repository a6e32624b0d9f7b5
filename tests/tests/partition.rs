//! Fault suite: a network partition between one worker and the coordinator.
//!
//! The worker runs in its own network namespace, joined to the root namespace by a veth
//! pair with private addresses of this test's own (`10.213.x.y/30`). The coordinator
//! listens on the root end of that link, and a second `git daemon` serves the upstream
//! repos there too, so the isolated worker reaches both through the link and the other
//! workers (root namespace) reach the same addresses locally. Cutting the link
//! (`ip link set <root end> down`) partitions exactly that worker; nothing outside loopback
//! and this link is ever addressed. Needs root (network namespaces); the namespace and the
//! veth pair are removed by a guard even when a test panics.

use gitmirror_tests::daemons::{DEAD_AFTER_TOTAL, SETTLE, str_field};
use gitmirror_tests::git::{git_command, repo_name};
use gitmirror_tests::{Fleet, GitDaemon, Proc, figure, free_tcp_port, same_mirror, wait_for};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Run `ip <args>`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?} (is iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the partition tests need root (they create a network namespace and a veth pair); \
         run them as root, as CI does"
    );
}

/// A network namespace and a veth pair into it, with a /30 of `10.213.0.0/16`. Removed
/// when dropped, also during a panic.
struct Link {
    ns: String,
    root_if: String,
    root_ip: String,
}

impl Link {
    /// Names carry the pid and `tag` (0–9) so parallel runs and tests do not clash; the
    /// /30 is the first from a pid-derived slot that no interface here uses yet.
    fn create(tag: u32) -> Self {
        require_root();
        Self::sweep_stale();
        let pid = std::process::id();
        let ns = format!("gitmirror-{pid}-{tag}");
        let root_if = format!("gmr{pid}{tag}");
        let ns_if = format!("gmn{pid}{tag}");
        let used = {
            let out = Command::new("ip")
                .args(["-4", "-o", "addr", "show"])
                .output()
                .expect("run ip -4 -o addr show");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let slots = 256 * 64;
        let start = (pid * 10 + tag) % slots;
        let (root_ip, ns_ip) = (0..slots)
            .map(|k| {
                let s = (start + k) % slots;
                let (a, b) = (s / 64, (s % 64) * 4);
                (
                    format!("10.213.{a}.{}", b + 1),
                    format!("10.213.{a}.{}", b + 2),
                )
            })
            .find(|(r, n)| {
                !used.contains(&format!("inet {r}/")) && !used.contains(&format!("inet {n}/"))
            })
            .expect("a free /30 in 10.213.0.0/16");
        // The guard exists before the first change, so a failure half-way cleans up.
        let link = Self {
            ns: ns.clone(),
            root_if: root_if.clone(),
            root_ip: root_ip.clone(),
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &root_if]);
        ip(&["link", "set", &root_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        eprintln!("link: namespace {ns}, {root_if} {root_ip} <-> {ns_if} {ns_ip}");
        link
    }

    /// Remove the namespaces (and root veth ends) of earlier runs whose process is gone
    /// without its guard having run (SIGKILLed, e.g. by a test timeout).
    fn sweep_stale() {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("run ip netns list");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some((pid, tag)) = name
                .strip_prefix("gitmirror-")
                .and_then(|rest| rest.split_once('-'))
            else {
                continue;
            };
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !numeric(pid) || !numeric(tag) || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!("removing namespace {name} left by a run that was killed");
            drop(Self {
                ns: name.to_owned(),
                root_if: format!("gmr{pid}{tag}"),
                root_ip: String::new(),
            });
        }
    }

    /// Partition: the root end goes down, so nothing passes either way.
    fn cut(&self) {
        ip(&["link", "set", &self.root_if, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.root_if, "up"]);
    }

    /// A process run inside the namespace (`ip netns exec` execs it: same pid).
    fn proc(&self, label: &str, bin: &Path, args: &[&str], log: PathBuf) -> Proc {
        let mut all: Vec<std::ffi::OsString> = vec!["netns".into(), "exec".into()];
        all.push(self.ns.clone().into());
        all.push(bin.into());
        all.extend(args.iter().map(Into::into));
        Proc::new(label, PathBuf::from("ip"), all, log)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        for args in [
            vec!["netns", "del", self.ns.as_str()],
            vec!["link", "del", self.root_if.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A second `git daemon` on the link's root address, serving the harness daemon's repos.
struct LinkGitDaemon {
    child: Child,
    addr: String,
}

impl LinkGitDaemon {
    fn start(ip_addr: &str, base: &Path) -> Self {
        let exec_path = git_command()
            .arg("--exec-path")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("git --exec-path");
        let mut last = String::new();
        // A port picked free can be taken before git daemon binds it; try a few.
        for _ in 0..5 {
            let port = free_tcp_port();
            let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .arg("--export-all")
                .arg("--reuseaddr")
                .arg(format!("--base-path={}", base.display()))
                .arg(format!("--listen={ip_addr}"))
                .arg(format!("--port={port}"))
                .arg(base)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn git-daemon");
            let sock: SocketAddr = format!("{ip_addr}:{port}").parse().unwrap();
            let start = Instant::now();
            let ready = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("git daemon on {sock} exited: {status}"));
                }
                if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
                    break Ok(());
                }
                if start.elapsed() > Duration::from_secs(10) {
                    break Err(format!("git daemon on {sock} not accepting after 10 s"));
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match ready {
                Ok(()) => {
                    return Self {
                        child,
                        addr: format!("{ip_addr}:{port}"),
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!("git daemon on {ip_addr} did not start: {last}");
    }

    fn url(&self, name: &str) -> String {
        format!("git://{}/{name}.git", self.addr)
    }
}

impl Drop for LinkGitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SUITE: &str = "partition";

/// Index of the partitioned worker in `fleet.workers`.
const ISOLATED: usize = 2;

/// A fleet whose coordinator listens on the link and three workers, the last of them
/// ([`ISOLATED`]) inside the namespace. `liveness` replaces the standard `dead_after`.
struct Setup {
    fleet: Fleet,
    // Dropped after the fleet (fields drop in order): the daemons stop, then the link goes.
    _git: LinkGitDaemon,
    link: Link,
    _daemon: std::sync::Arc<GitDaemon>,
}

fn setup(label: &str, tag: u32, n_repos: usize, dead_after: &str) -> Setup {
    let link = Link::create(tag);
    let daemon = GitDaemon::shared();
    let git = LinkGitDaemon::start(&link.root_ip, daemon.base());
    let repos: BTreeMap<String, String> = daemon
        .create_repos(label, n_repos)
        .into_iter()
        .map(|name| (gitmirror_tests::git::repo_id(&name), git.url(&name)))
        .collect();
    let root_ip = link.root_ip.clone();
    let mut fleet = Fleet::start_with(label, &repos, 0, |yaml, _| {
        let rest = yaml
            .strip_prefix("listen: 127.0.0.1:")
            .expect("standard coordinator yaml starts with listen");
        let yaml = format!("listen: {root_ip}:{rest}");
        assert!(yaml.contains("dead_after: 4s\n"), "{yaml}");
        yaml.replace("dead_after: 4s\n", &format!("dead_after: {dead_after}\n"))
    });
    let to_link = |y: String| {
        y.replace(
            "coordinator: 127.0.0.1:",
            &format!("coordinator: {root_ip}:"),
        )
    };
    for _ in 0..3 {
        fleet.create_worker_with(1.0, to_link);
    }
    let w = &mut fleet.workers[ISOLATED];
    let label = format!("gitmirror-worker {} (in {})", w.name, link.ns);
    let config = w.config.to_str().expect("utf-8 path").to_owned();
    w.proc = link.proc(
        &label,
        &gitmirror_tests::bin("gitmirror-worker"),
        &["--config", &config],
        w.dir.join("worker.log"),
    );
    for w in &fleet.workers {
        w.start();
    }
    fleet.wait_alive(&[0, 1, 2], Duration::from_secs(30));
    Setup {
        fleet,
        _git: git,
        link,
        _daemon: daemon,
    }
}

fn worker_state(fleet: &Fleet, i: usize) -> Result<String, String> {
    fleet.api_worker(i).map(|w| str_field(&w, "state"))
}

/// `(repo, ref, new)` of every ref an event carries.
fn triples(events: &[Value]) -> Vec<(String, String, String, u64)> {
    events
        .iter()
        .flat_map(|e| {
            let repo = str_field(e, "repo");
            let seq = e["seq"].as_u64().unwrap_or(0);
            e["refs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |r| {
                    Some((
                        repo.clone(),
                        r["name"].as_str()?.to_owned(),
                        r["new"].as_str()?.to_owned(),
                        seq,
                    ))
                })
        })
        .collect()
}

// SPEC §6 (a worker cut off past `dead_after` is declared dead and its repos are
// reassigned at once; it never exits, reconnects when the network heals, keeps its uuid
// and id), §5 (only its repos move; back, it is a normal join: the same repos hash back
// to it and it reuses its mirrors — a fetch, not a clone — and the others drop their
// copies), §7.1, §8 (an upstream change made during the partition is one event, not one
// from the new owner's clone and another from the returning owner's fetch).
#[test]
fn partition_longer_than_dead_after_moves_repos_and_heals_back() {
    let s = setup("parta", 1, 30, "4s");
    let fleet = &s.fleet;
    let before = fleet.wait_settled(SETTLE);
    fleet.check_mirrors(&before).unwrap();
    let isolated_api = fleet.api_worker(ISOLATED).unwrap();
    let pid = fleet.workers[ISOLATED].proc.pid();
    let theirs = Fleet::owned_by(&before, ISOLATED);
    assert!(
        !theirs.is_empty(),
        "the isolated worker owns nothing: {before:?}"
    );
    let inodes = fleet.mark_mirrors(ISOLATED, &theirs);
    let last_seq = fleet.coord.last_seq().unwrap();

    s.link.cut();
    let cut_at = Instant::now();
    // Upstream changes during the partition, to repos of the isolated worker: their new
    // owners clone them with the change; the isolated worker cannot see it yet.
    let changed: Vec<String> = theirs.iter().take(3).cloned().collect();
    let changes: Vec<(String, String)> = changed
        .iter()
        .map(|id| (id.clone(), s._daemon.commit(repo_name(id), "master")))
        .collect();

    wait_for(
        DEAD_AFTER_TOTAL + Duration::from_secs(15),
        "the isolated worker declared dead",
        || match worker_state(fleet, ISOLATED)? {
            st if st == "dead" => Ok(()),
            st => Err(st),
        },
    );
    eprintln!("declared dead {:?} after the cut", cut_at.elapsed());
    // Its repos are mirrored by the two others, nothing else moved; it still runs.
    let during = wait_for(SETTLE, "its repos mirrored by the others", || {
        let listed = fleet.coord.repos()?;
        let ids = fleet.api_ids()?;
        let mut owners = BTreeMap::new();
        for r in &listed {
            let id = str_field(r, "id");
            let owner = r["worker"].as_u64().and_then(|w| ids.get(&w).copied());
            match owner {
                Some(o) if o != ISOLATED && str_field(r, "state") == "mirrored" => {
                    if !fleet.workers[o].has_mirror(&id) {
                        return Err(format!("{id}: owner w{o} has no mirror yet"));
                    }
                    owners.insert(id, o);
                }
                _ => return Err(format!("{id}: owner {owner:?}, {}", r["state"])),
            }
        }
        (owners.len() == fleet.repos.len())
            .then_some(owners)
            .ok_or_else(|| "not every repo listed".to_owned())
    });
    for (id, &owner) in &before {
        if owner == ISOLATED {
            assert_ne!(during[id], ISOLATED, "{id}");
        } else {
            assert_eq!(
                during[id], owner,
                "{id} moved although its owner is reachable"
            );
        }
    }
    wait_for(
        Duration::from_secs(30),
        "the new owners' mirrors equal upstream",
        || fleet.check_mirrors(&during),
    );
    assert!(
        fleet.workers[ISOLATED].proc.exited().is_none(),
        "the isolated worker exited: {:?}",
        fleet.workers[ISOLATED].proc.exited()
    );

    s.link.heal();
    eprintln!("healed {:?} after the cut", cut_at.elapsed());
    fleet.wait_alive(&[ISOLATED], Duration::from_secs(60));
    let back = fleet.api_worker(ISOLATED).unwrap();
    assert_eq!(back["id"], isolated_api["id"], "id changed: {back}");
    assert_eq!(back["uuid"], isolated_api["uuid"], "uuid changed: {back}");
    assert_eq!(
        fleet.workers[ISOLATED].proc.pid(),
        pid,
        "the isolated worker was restarted"
    );
    assert!(fleet.workers[ISOLATED].proc.exited().is_none());

    // Ownership converges to the assignment before the cut, on the same mirrors.
    let after = fleet.wait_settled(SETTLE);
    assert_eq!(
        after, before,
        "owners after healing differ from before the cut"
    );
    wait_for(Duration::from_secs(30), "mirrors equal upstream", || {
        fleet.check_mirrors(&after)
    });
    for (id, ino) in &inodes {
        same_mirror(&fleet.workers[ISOLATED].mirror_path(id), *ino)
            .unwrap_or_else(|e| panic!("{id} was re-cloned after the partition: {e}"));
    }

    // A barrier: one more change to each changed repo, fetched now by its owner, the
    // returned worker. It sent its unacknowledged outcomes (the fetches it made after the
    // link healed) before any later one, so once these are events, an event those made
    // would be in the log too.
    let mut changes = changes;
    for id in &changed {
        changes.push((id.clone(), s._daemon.commit(repo_name(id), "master")));
        let (status, body) = fleet
            .coord
            .post(&format!("/api/repos/{id}/fetch"), "")
            .unwrap();
        assert_eq!(status, 202, "{body}");
    }

    // Each change is in exactly one event; the repos that only moved have none (a
    // hand-off is not news).
    let events = wait_for(Duration::from_secs(30), "the changes as events", || {
        let events = fleet.coord.events(last_seq)?;
        let t = triples(&events);
        let missing: Vec<&(String, String)> = changes
            .iter()
            .filter(|(id, oid)| {
                !t.iter()
                    .any(|(r, n, o, _)| r == id && n == "refs/heads/master" && o == oid)
            })
            .collect();
        missing
            .is_empty()
            .then_some(events.clone())
            .ok_or_else(|| format!("missing {missing:?}"))
    });
    let t = triples(&events);
    for (id, oid) in &changes {
        let seqs: BTreeSet<u64> = t
            .iter()
            .filter(|(r, n, o, _)| r == id && n == "refs/heads/master" && o == oid)
            .map(|x| x.3)
            .collect();
        assert_eq!(
            seqs.len(),
            1,
            "{id} master → {oid} in events {seqs:?}: {events:#?}"
        );
    }
    for e in events.iter().rev().take(changed.len()) {
        assert_eq!(
            e["worker"], isolated_api["id"],
            "the barrier's event is not from the returned owner: {e}"
        );
    }
    let quiet: Vec<&Value> = events
        .iter()
        .filter(|e| !changed.contains(&str_field(e, "repo")))
        .collect();
    assert!(
        quiet.is_empty(),
        "events for repos that did not change: {quiet:#?}"
    );
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let want: Vec<u64> = (last_seq + 1..=last_seq + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "event sequence numbers with a gap or repeat");
    figure(SUITE, "long_cut_repos_failed_over_and_back", theirs.len());
    figure(SUITE, "long_cut_changes_made", changes.len());
    figure(SUITE, "long_cut_mirrors_lost", 0);
    figure(SUITE, "long_cut_duplicated_events", 0);
}

// SPEC §6 (a worker whose connection is lost is suspect; one that reconnects while
// suspect resumes with no repo moved), §5 (owners are a function of the live set, and a
// suspect worker is live).
#[test]
fn partition_shorter_than_dead_after_moves_nothing() {
    // dead_after 15 s: the cut (about suspect_after, 3 s, plus a second) and the worker's
    // reconnect (QUIC retransmits back off) stay well inside it on a loaded machine.
    let s = setup("partb", 2, 24, "15s");
    let fleet = &s.fleet;
    let before = fleet.wait_settled(SETTLE);
    let isolated_api = fleet.api_worker(ISOLATED).unwrap();
    let coord_log = fleet.coord.proc.log_mark();
    let last_seq = fleet.coord.last_seq().unwrap();

    s.link.cut();
    let cut_at = Instant::now();
    // Owners seen while it is cut off must stay those of before: panics when one moved;
    // `Err` when the API did not answer (polled again).
    let check_owners = || -> Result<(), String> {
        let ids = fleet.api_ids()?;
        let owners = fleet.coord.owners()?;
        let moved: Vec<String> = owners
            .iter()
            .filter_map(|(id, owner)| {
                let o = owner.and_then(|w| ids.get(&w).copied());
                (o != before.get(id).copied())
                    .then(|| format!("{id}: owner {o:?}, was {:?}", before.get(id)))
            })
            .collect();
        assert!(
            moved.is_empty() && owners.len() == before.len(),
            "repos moved during a short cut ({:?} after it): {moved:#?}; workers: {:?}",
            cut_at.elapsed(),
            fleet.coord.workers()
        );
        Ok(())
    };
    wait_for(
        Duration::from_secs(10),
        "the isolated worker suspect",
        || {
            check_owners()?;
            match worker_state(fleet, ISOLATED)? {
                st if st == "suspect" => Ok(()),
                st => Err(st),
            }
        },
    );
    let suspect_after = cut_at.elapsed();
    eprintln!("suspect {suspect_after:?} after the cut");
    // Fault timing: keep the link cut one more second, then heal.
    std::thread::sleep(Duration::from_secs(1));
    s.link.heal();
    let healed_at = cut_at.elapsed();
    wait_for(
        Duration::from_secs(30),
        "the isolated worker alive again",
        || {
            check_owners()?;
            match worker_state(fleet, ISOLATED)? {
                st if st == "alive" => Ok(()),
                st if st == "dead" => {
                    panic!("declared dead although the cut lasted {healed_at:?} (dead_after 15 s)")
                }
                st => Err(st),
            }
        },
    );
    eprintln!(
        "cut for {healed_at:?}, alive again {:?} after the cut",
        cut_at.elapsed()
    );
    let back = fleet.api_worker(ISOLATED).unwrap();
    assert_eq!(back["id"], isolated_api["id"], "id changed: {back}");
    assert_eq!(back["uuid"], isolated_api["uuid"], "uuid changed: {back}");

    let after = fleet.wait_settled(SETTLE);
    assert_eq!(after, before, "owners changed across a short cut");
    fleet.check_mirrors(&after).unwrap();
    let log = fleet.coord.proc.log_since(coord_log);
    assert!(
        !log.contains("→ dead"),
        "a worker was declared dead during a short cut:\n{log}"
    );
    let events = fleet.coord.events(last_seq).unwrap();
    assert!(
        events.is_empty(),
        "events without upstream change: {events:#?}"
    );
    assert!(fleet.workers[ISOLATED].proc.exited().is_none());
    figure(SUITE, "short_cut_ms", healed_at.as_millis());
    figure(SUITE, "short_cut_repos_moved", 0);
}
