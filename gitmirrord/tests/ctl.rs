//! `gitmirrorctl` against a running coordinator (SPEC §11, issue 16 item 3): every
//! subcommand, its exit codes (0 ok, 1 API error or daemon down, 2 usage, 3 not found),
//! `--json` that parses, and the API token taken from the configuration file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, REPOS, TestWorker, outcome};
use gitmirror_wire::FetchResult;
use std::path::Path;
use uuid::Uuid;

const CTL: &str = env!("CARGO_BIN_EXE_gitmirrorctl");
const TOKEN: &str = "ctl-test-token-0123456789abcdef";

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run gitmirrorctl with `args` (off the async threads).
async fn ctl(args: &[&str]) -> Ran {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(CTL)
            .args(&args)
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn json(r: &Ran) -> serde_json::Value {
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// The operator's configuration file: the daemon's `http_listen` and token file.
fn ctl_config(dir: &Path, c: &Coordinator, token_file: &Path) -> String {
    let p = dir.join("ctl.yaml");
    std::fs::write(
        &p,
        format!(
            "http_listen: {}\nstate_dir: {}\napi_token_file: {}\n",
            c.http,
            c.state_dir.display(),
            token_file.display()
        ),
    )
    .unwrap();
    p.display().to_string()
}

/// SPEC §11 `gitmirrorctl`: each subcommand against a real coordinator with an API token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_11_gitmirrorctl_subcommands_and_exit_codes() {
    let (c, _tmp, cfg) = with_token().await;
    let (mut w, id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(5)).await;
    assert_eq!(id, 0);
    w.holdings(vec![]).await;
    w.next_assign().await;
    w.report(vec![outcome(
        1,
        REPOS[0],
        FetchResult::Cloned,
        &[(
            "refs/heads/main",
            None,
            Some("9fceb02d0ae598e95dc970b74767f19372d61af8"),
        )],
    )])
    .await;
    let with = |args: &[&str]| {
        let mut v = vec!["--config", cfg.as_str()];
        v.extend_from_slice(args);
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(&refs).await
    };

    // status: the table and the JSON.
    let r = run(with(&["status"])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("repos: 3 total"), "{}", r.stdout);
    let v = json(&run(with(&["--json", "status"])).await);
    assert_eq!(v["repos"]["total"], 3);
    // workers.
    let r = run(with(&["workers"])).await;
    assert!(
        r.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("0\t")),
        "{}",
        r.stdout
    );
    assert_eq!(json(&run(with(&["--json", "workers"])).await)[0]["id"], 0);
    // repos with a filter.
    let mirrored = common::eventually(10, "the clone in the listing", || async {
        let v = json(&run(with(&["--json", "repos", "--state", "mirrored"])).await);
        (v["total"] == 1).then_some(v)
    })
    .await;
    assert_eq!(mirrored["repos"][0]["id"], REPOS[0]);
    let r = run(with(&["repos", "--state", "pending"])).await;
    assert!(
        r.stdout.contains(REPOS[1]) && !r.stdout.contains(REPOS[0]),
        "{}",
        r.stdout
    );
    let r = run(with(&["repos", "--state", "sideways"])).await;
    assert_eq!(r.code, 1, "a bad filter is the API's 400: {}", r.stderr);
    assert!(r.stderr.contains("is not one of"), "{}", r.stderr);
    // repo: found, not found (3), not an id (2).
    let r = run(with(&["repo", REPOS[0]])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("mirrored"), "{}", r.stdout);
    assert_eq!(
        json(&run(with(&["--json", "repo", REPOS[0]])).await)["id"],
        REPOS[0]
    );
    let r = run(with(&["repo", "no/such/repo"])).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    assert_eq!(run(with(&["repo", "nosuchrepo"])).await.code, 2);
    assert_eq!(run(with(&["frobnicate"])).await.code, 2);
    // fetch: a POST, allowed with the token from the config file's api_token_file.
    let r = run(with(&["fetch", REPOS[0]])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The worker is told to fetch it (other messages may come first).
    let fetch_now = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let gitmirror_wire::CoordMsg::FetchNow { repo } = w.recv().await.unwrap() {
                return repo;
            }
        }
    })
    .await
    .expect("the fetch request reaches the worker within 10 s");
    assert_eq!(fetch_now, REPOS[0]);
    // Without the token (no readable config, --url only) the same POST is refused: 1.
    let url = format!("http://{}", c.http);
    let r = ctl(&[
        "--config",
        "/nonexistent.yaml",
        "--url",
        &url,
        "fetch",
        REPOS[0],
    ])
    .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    assert_eq!(run(with(&["fetch", "no/such/repo"])).await.code, 3);
    // events.
    let events = common::eventually(10, "the clone's event", || async {
        let v = json(&run(with(&["--json", "events"])).await);
        let list = v["events"]
            .as_array()
            .or(v.as_array())
            .cloned()
            .unwrap_or_default();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(events[0]["repo"], REPOS[0]);
    let r = run(with(&["events"])).await;
    assert!(
        r.stdout.contains("cloned") && r.stdout.contains(REPOS[0]),
        "{}",
        r.stdout
    );
    // index and accept.
    let r = run(with(&["index"])).await;
    assert!(r.stdout.contains("test\t3\t"), "{}", r.stdout);
    assert_eq!(
        json(&run(with(&["--json", "index"])).await)[0]["name"],
        "test"
    );
    let r = run(with(&["accept", "test"])).await;
    assert_eq!(r.code, 1, "nothing held: 409 ({})", r.stderr);
    assert_eq!(run(with(&["accept", "nosuch"])).await.code, 3);

    // The daemon down: a clear message and 1.
    let (_kept, stopped) = c.stop().await;
    stopped.unwrap();
    let r = run(with(&["status"])).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot reach the daemon"), "{}", r.stderr);
}

/// A coordinator with an API token, and the operator's configuration file naming it.
async fn with_token() -> (Coordinator, tempfile::TempDir, String) {
    with_token_and("").await
}

/// [`with_token`] with more configuration.
async fn with_token_and(extra: &str) -> (Coordinator, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let c = Coordinator::start_in(
        dir,
        &format!("api_token_file: {}\n{extra}", token_file.display()),
    )
    .await;
    c.wait_for_repos().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ctl_config(tmp.path(), &c, &token_file);
    (c, tmp, cfg)
}

/// The next line of a follower, as JSON.
async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> serde_json::Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .expect("an event line within 20 s")
        .expect("the follower still runs");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Issue 16 item 3 `events --follow`: a follower started before an event prints it as it
/// happens, one JSON object per line, keeps following (a second event arrives too), and
/// stops with exit 0 on SIGINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_events_follow_prints_new_events_and_stops_on_sigint() {
    use std::io::BufRead;
    let (c, _tmp, cfg) = with_token().await;
    let mut child = std::process::Command::new(CTL)
        .args(["--config", &cfg, "--json", "events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let (mut w, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(6)).await;
    w.holdings(vec![]).await;
    w.next_assign().await;
    let head = Some("9fceb02d0ae598e95dc970b74767f19372d61af8");
    w.report(vec![outcome(
        1,
        REPOS[0],
        FetchResult::Cloned,
        &[("refs/heads/main", None, head)],
    )])
    .await;
    let first = next_event(&mut rx).await;
    assert_eq!(first["repo"], REPOS[0], "{first}");
    assert_eq!(first["kind"], "cloned", "{first}");
    // Still following: a later event arrives on the same run.
    w.report(vec![outcome(
        2,
        REPOS[1],
        FetchResult::Cloned,
        &[("refs/heads/main", None, head)],
    )])
    .await;
    let second = next_event(&mut rx).await;
    assert_eq!(second["repo"], REPOS[1], "{second}");
    assert!(second["seq"].as_u64() > first["seq"].as_u64());
    assert!(child.try_wait().unwrap().is_none(), "it keeps following");

    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGINT stops it cleanly: {status:?}"
    );
}

/// Issue 16 item 3 / SPEC §17 `workers list|approve|remove` through gitmirrorctl: the
/// answers, `--json` that parses, and the exit codes (3 for an unknown uuid, 2 for a
/// malformed one, 1 without the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_workers_approve_remove_exit_codes() {
    let (c, _tmp, cfg) = with_token_and("enroll: manual\n").await;
    let uuid = Uuid::from_u128(7);
    // enroll: manual: its first Hello makes it pending.
    let mut w = TestWorker::open_as(c.quic, &c.token, uuid).await;
    w.send(&gitmirror_wire::WorkerMsg::Hello(common::hello(
        uuid,
        &c.token.secret,
    )))
    .await
    .unwrap();
    assert!(
        matches!(w.recv().await, Ok(gitmirror_wire::CoordMsg::Refused(_))),
        "pending"
    );
    let run = |args: &[&str]| {
        let mut v = vec!["--config", cfg.as_str()];
        v.extend_from_slice(args);
        let v: Vec<String> = v.into_iter().map(str::to_owned).collect();
        async move {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            ctl(&refs).await
        }
    };

    let r = run(&["workers", "list"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let waiting = r
        .stdout
        .split_once("waiting for approval (`gitmirrorctl workers approve UUID`)")
        .unwrap_or_else(|| panic!("{}", r.stdout))
        .1;
    assert!(waiting.contains(&uuid.to_string()), "{}", r.stdout);
    let v = json(&run(&["--json", "workers", "list"]).await);
    assert_eq!(v["pending"][0]["uuid"], uuid.to_string(), "{v}");
    assert_eq!(v["workers"], serde_json::json!([]), "{v}");

    let r = run(&["workers", "approve", &uuid.to_string()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("(it was waiting)"), "{}", r.stdout);
    let (_w, id) = TestWorker::join(c.quic, &c.token, uuid).await;
    let v = json(&run(&["--json", "workers", "list"]).await);
    assert_eq!(v["workers"][0]["id"], id, "{v}");
    assert_eq!(v["pending"], serde_json::json!([]), "{v}");

    let stranger = Uuid::from_u128(8).to_string();
    let r = run(&["workers", "approve", &stranger]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("approved"), "{}", r.stdout);
    let v = json(&run(&["--json", "workers", "approve", &stranger]).await);
    assert_eq!(v["approved"], true);

    let r = run(&["workers", "remove", &uuid.to_string()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("removed"), "{}", r.stdout);
    let removed = common::eventually(10, "the worker shown removed", || async {
        let v = json(&run(&["--json", "workers"]).await);
        (v[0]["removed"] == true).then_some(v)
    })
    .await;
    assert_eq!(removed[0]["id"], id);

    let r = run(&["workers", "remove", &Uuid::from_u128(9).to_string()]).await;
    assert_eq!(r.code, 3, "an unknown uuid: {} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("knows no worker"), "{}", r.stderr);
    assert_eq!(run(&["workers", "remove", "not-a-uuid"]).await.code, 2);
    assert_eq!(run(&["workers", "frobnicate"]).await.code, 2);

    let url = format!("http://{}", c.http);
    let r = ctl(&[
        "--config",
        "/nonexistent.yaml",
        "--url",
        &url,
        "workers",
        "approve",
        &stranger,
    ])
    .await;
    assert_eq!(r.code, 1, "no token: {}", r.stderr);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
}

/// Issue 16 item 3 shell completions: the bash script the packages install, sourced in a
/// real bash, completes subcommands and `workers` actions; zsh and fish scripts name them.
#[tokio::test]
async fn issue_16_shell_completions_complete_subcommands() {
    let bash = ctl(&["completions", "bash"]).await;
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let script = format!(
            "source /dev/stdin <<'EOF'\n{}\nEOF\n\
             COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
             _gitmirrorctl gitmirrorctl '{}' '{}'\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.stdout,
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let top = complete("gitmirrorctl wor");
    assert_eq!(top, ["workers"], "{top:?}");
    let all = complete("gitmirrorctl ");
    for sub in [
        "status", "repos", "events", "accept", "drain", "undrain", "block", "unblock",
    ] {
        assert!(all.iter().any(|w| w == sub), "{sub} in {all:?}");
    }
    assert_eq!(complete("gitmirrorctl workers ap"), ["approve"]);
    assert!(
        complete("gitmirrorctl block a/b/c --r")
            .iter()
            .any(|w| w == "--reason")
    );
    for shell in ["zsh", "fish"] {
        let r = ctl(&["completions", shell]).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains("workers") && r.stdout.contains("approve"),
            "{shell}: {}",
            r.stdout
        );
    }
    assert_eq!(ctl(&["completions", "tcsh"]).await.code, 2);
}

/// Run gitmirrorctl with the operator's configuration file.
async fn ctl_with(cfg: &str, args: &[&str]) -> Ran {
    let mut v = vec!["--config", cfg];
    v.extend_from_slice(args);
    ctl(&v).await
}

/// The next assignment delta that drops or upserts something (empty ones skipped).
async fn next_change(w: &mut TestWorker) -> gitmirror_wire::AssignDelta {
    tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            let d = w.next_assign().await;
            if !d.upsert.is_empty() || !d.drop.is_empty() {
                return d;
            }
        }
    })
    .await
    .expect("an assignment change within 15 s")
}

fn held(id: &str, mirrored: bool) -> gitmirror_wire::HeldRepo {
    gitmirror_wire::HeldRepo {
        id: id.into(),
        url: format!("https://example.org/{}.git", id.rsplit('/').next().unwrap()),
        mirrored,
    }
}

/// Issue 16 takedown through gitmirrorctl (SPEC §9, §10, §11): `block ID --reason` drops
/// the holder's mirror, shows the repo blocked (repo, status, index), refuses an empty
/// reason (2) and a caller without the token (1); a worker re-reporting the repo in its
/// `Holdings` is told to drop it again and does not bring it back; `unblock` brings it
/// back at once (the index still lists it), a second unblock is 3; the block survives a
/// coordinator restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_gitmirrorctl_block_unblock_and_the_attackers_holdings() {
    let (c, _tmp, cfg) = with_token().await;
    let uuid = Uuid::from_u128(5);
    let (mut w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    w.holdings(vec![]).await;
    let d = w.next_assign().await;
    assert_eq!(d.upsert.len(), 3);
    let mut report = 0;
    for r in REPOS {
        report += 1;
        w.report(vec![outcome(report, r, FetchResult::Cloned, &[])])
            .await;
    }

    let r = ctl_with(&cfg, &["block", REPOS[0], "--reason", ""]).await;
    assert_eq!(r.code, 2, "an empty reason is a usage error: {}", r.stderr);
    let url = format!("http://{}", c.http);
    let r = ctl(&[
        "--config",
        "/nonexistent.yaml",
        "--url",
        &url,
        "block",
        REPOS[0],
        "--reason",
        "x",
    ])
    .await;
    assert_eq!(r.code, 1, "no token: {}", r.stderr);
    assert!(r.stderr.contains("401"), "{}", r.stderr);

    let r = ctl_with(&cfg, &["block", REPOS[0], "--reason", "DMCA notice 17"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("blocked"), "{}", r.stdout);
    let d = next_change(&mut w).await;
    assert_eq!(d.drop.len(), 1, "{d:?}");
    assert_eq!(d.drop[0].id, REPOS[0]);
    let v = json(&ctl_with(&cfg, &["--json", "block", REPOS[0], "--reason", "again"]).await);
    assert_eq!(v["changed"], false, "{v}");

    let v = json(&ctl_with(&cfg, &["--json", "repo", REPOS[0]]).await);
    assert_eq!(v["state"], "blocked", "{v}");
    assert_eq!(v["reason"], "DMCA notice 17", "{v}");
    assert!(v["blocked_by"].as_str().unwrap().contains("token"), "{v}");
    let r = ctl_with(&cfg, &["repo", REPOS[0]]).await;
    assert!(r.stdout.contains("DMCA notice 17"), "{}", r.stdout);
    let v = json(&ctl_with(&cfg, &["--json", "status"]).await);
    assert_eq!(v["repos"]["blocked"], 1, "{v}");
    assert_eq!(v["repos"]["total"], 2, "{v}");
    let v = json(&ctl_with(&cfg, &["--json", "index"]).await);
    let skipped = v[0]["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == REPOS[0])
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(skipped["reason"], "blocked: DMCA notice 17");
    let (status, page) = c.get(&format!("/repos/{}", REPOS[0])).await;
    assert_eq!(status, 200);
    assert!(page.contains("blocked") && page.contains("DMCA notice 17"));
    let (_, page) = c.get("/").await;
    assert!(page.contains("blocked"));

    // The attacker: the worker reconnects claiming a complete mirror of it.
    drop(w);
    let (mut w, _) = TestWorker::join(c.quic, &c.token, uuid).await;
    w.holdings(vec![
        held(REPOS[0], true),
        held(REPOS[1], true),
        held(REPOS[2], true),
    ])
    .await;
    let d = next_change(&mut w).await;
    assert!(
        d.drop.iter().any(|x| x.id == REPOS[0]) && d.upsert.is_empty(),
        "told to drop it again: {d:?}"
    );
    let v = json(&ctl_with(&cfg, &["--json", "repo", REPOS[0]]).await);
    assert_eq!(v["state"], "blocked", "{v}");

    // Unblock: back at once (the index lists it), given to the worker.
    let v = json(&ctl_with(&cfg, &["--json", "unblock", REPOS[0]]).await);
    assert_eq!(v["back"], true, "{v}");
    let d = next_change(&mut w).await;
    assert_eq!(d.upsert.len(), 1, "{d:?}");
    assert_eq!(d.upsert[0].id, REPOS[0]);
    let v = json(&ctl_with(&cfg, &["--json", "repo", REPOS[0]]).await);
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(ctl_with(&cfg, &["unblock", REPOS[0]]).await.code, 3);
    assert_eq!(ctl_with(&cfg, &["unblock", "nosuchrepo"]).await.code, 2);

    // A block survives a restart.
    assert_eq!(
        ctl_with(&cfg, &["block", REPOS[2], "--reason", "court order"])
            .await
            .code,
        0
    );
    drop(w);
    let (dir, stopped) = c.stop().await;
    stopped.unwrap();
    let token_file = dir.path().join("api.token");
    let c =
        Coordinator::start_in(dir, &format!("api_token_file: {}\n", token_file.display())).await;
    let v = common::eventually(10, "the index after the restart", || async {
        let (_, v) = c.get_json("/api/status").await;
        (v["repos"]["total"] == 2).then_some(v)
    })
    .await;
    assert_eq!(v["repos"]["blocked"], 1, "{v}");
    let (_, v) = c.get_json(&format!("/api/repos/{}", REPOS[2])).await;
    assert_eq!(v["reason"], "court order", "{v}");
}

/// SPEC §5 planned move through gitmirrorctl (§11): `drain WORKER` keeps the worker
/// connected and moves its repos to the other worker make before break (it is told to
/// drop each only after the new owner reports it mirrored); draining the last worker is
/// the API's 409 (exit 1); an unknown worker is 3; `workers` shows it drained, before and
/// after a coordinator restart; `undrain` gives it its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_5_gitmirrorctl_drain_moves_make_before_break() {
    let (c, _tmp, cfg) = with_token().await;
    let (mut a, id_a) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(5)).await;
    a.holdings(vec![]).await;
    assert_eq!(a.next_assign().await.upsert.len(), 3);
    for (i, r) in REPOS.iter().enumerate() {
        a.report(vec![outcome(i as u64 + 1, r, FetchResult::Cloned, &[])])
            .await;
    }
    let (mut b, id_b) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(6)).await;
    b.holdings(vec![]).await;
    let mut b_has: std::collections::BTreeSet<String> = b
        .next_assign()
        .await
        .upsert
        .into_iter()
        .map(|u| u.id)
        .collect();
    // What moved to b at its join is dropped by a once b reports it.
    let mut report = 0;
    for r in b_has.clone() {
        report += 1;
        b.report(vec![outcome(report, &r, FetchResult::Cloned, &[])])
            .await;
    }
    let mut a_dropped: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    while a_dropped.len() < b_has.len() {
        let d = next_change(&mut a).await;
        a_dropped.extend(d.drop.into_iter().map(|x| x.id));
    }

    assert_eq!(ctl_with(&cfg, &["drain", "9"]).await.code, 3, "no worker 9");
    let r = ctl_with(&cfg, &["drain", &id_a.to_string()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("drained worker"), "{}", r.stdout);
    let v = json(&ctl_with(&cfg, &["--json", "workers"]).await);
    let wa = v
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id_a)
        .unwrap();
    assert_eq!(wa["drained"], true, "{v}");
    assert_eq!(
        wa["state"], "alive",
        "a drained worker stays connected: {v}"
    );
    let r = ctl_with(&cfg, &["workers"]).await;
    assert!(r.stdout.contains("alive,drained"), "{}", r.stdout);
    let (_, page) = c.get("/").await;
    assert!(
        page.contains(">drained</span>"),
        "the page shows it drained"
    );
    // The last worker that is not drained cannot be drained.
    let r = ctl_with(&cfg, &["drain", &id_b.to_string()]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("409") && r.stderr.contains("unassigned"),
        "{}",
        r.stderr
    );

    // b is told to hold the rest; a keeps them until b reports them mirrored.
    while b_has.len() < REPOS.len() {
        let d = next_change(&mut b).await;
        b_has.extend(d.upsert.into_iter().map(|u| u.id));
    }
    let rest: Vec<&str> = REPOS
        .iter()
        .copied()
        .filter(|r| !a_dropped.contains(*r))
        .collect();
    for r in &rest {
        let (_, v) = c.get_json(&format!("/api/repos/{r}")).await;
        assert_eq!(v["worker"], id_b, "{v}");
        assert_eq!(v["state"], "pending", "{v}");
        let holders = v["holders"].as_array().unwrap();
        assert!(
            holders.contains(&serde_json::json!(id_a)),
            "make before break: {v}"
        );
    }
    for r in &rest {
        report += 1;
        b.report(vec![outcome(report, r, FetchResult::Cloned, &[])])
            .await;
    }
    while a_dropped.len() < REPOS.len() {
        let d = next_change(&mut a).await;
        for x in d.drop {
            assert_eq!(x.reason, gitmirror_wire::DropReason::Moved);
            a_dropped.insert(x.id);
        }
    }
    let (_, v) = c.get_json(&format!("/api/workers/{id_a}")).await;
    assert_eq!(v["repos"], 0, "{v}");

    // The drain survives a restart.
    drop((a, b));
    let (dir, stopped) = c.stop().await;
    stopped.unwrap();
    let token_file = dir.path().join("api.token");
    let c =
        Coordinator::start_in(dir, &format!("api_token_file: {}\n", token_file.display())).await;
    let (_, v) = c.get_json(&format!("/api/workers/{id_a}")).await;
    assert_eq!(v["drained"], true, "{v}");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = ctl_config(cfg_dir.path(), &c, &token_file);
    let v = json(&ctl_with(&cfg, &["--json", "undrain", &id_a.to_string()]).await);
    assert_eq!(v["changed"], true, "{v}");
    let (_, v) = c.get_json(&format!("/api/workers/{id_a}")).await;
    assert_eq!(v["drained"], false, "{v}");
}
