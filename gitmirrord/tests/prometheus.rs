//! The shipped Prometheus alert rules (packaging/prometheus, issue 16 item 5) in a real
//! Prometheus: `promtool check rules` and `promtool test rules` pass, and a Prometheus
//! scraping a real coordinator's `/metrics` with the shipped rules sees "worker dead"
//! fire when a worker is killed.
//!
//! Needs the Debian package `prometheus` (promtool and prometheus). Without it the tests
//! are skipped with a message, unless `GITMIRROR_REQUIRE_PROMETHEUS` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, TestWorker};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use uuid::Uuid;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus")
}

fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("GITMIRROR_REQUIRE_PROMETHEUS").is_none(),
            "GITMIRROR_REQUIRE_PROMETHEUS is set but {name} is not on PATH (apt-get install prometheus)"
        );
        eprintln!("SKIPPED: {name} is not installed (apt-get install prometheus)");
    }
    found
}

/// Issue 16 item 4: the rules load and every alert's unit test passes.
#[test]
fn issue16_promtool_checks_and_tests_the_shipped_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        ["check", "rules", "gitmirror.rules.yml"],
        ["test", "rules", "gitmirror.rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(rules_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus scraping `target` every second with the shipped rules, their `for:`
/// durations cut to 1 s (the unit tests check the durations; this checks that the rules'
/// series and labels are the ones the coordinator exports).
fn start_prometheus(bin: &Path, dir: &Path, target: &str) -> Prometheus {
    let rules = std::fs::read_to_string(rules_dir().join("gitmirror.rules.yml")).unwrap();
    let fast: String = rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for:") {
                "        for: 1s".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("rules.yml"), fast).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: gitmirrord\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    Prometheus { child, addr }
}

/// `GET` Prometheus's API; the JSON, or `None` while it is not answering.
async fn api(p: &Prometheus, path: &str) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("http://{}{path}", p.addr))
        .await
        .ok()?;
    serde_json::from_str(&r.text().await.ok()?).ok()
}

/// Alert names in the given state (`firing`, `pending`).
async fn alerts(p: &Prometheus, state: &str) -> Vec<String> {
    let Some(v) = api(p, "/api/v1/alerts").await else {
        return Vec::new();
    };
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == state)
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
        .collect()
}

/// Issue 16 item 4: a real Prometheus scrapes a real coordinator with the shipped rules;
/// when the only worker is killed, "worker dead" (and "repos unassigned") fire in
/// Prometheus's own API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_worker_dead_alert_fires_in_a_real_prometheus() {
    let Some(bin) = tool("prometheus") else {
        return;
    };
    gitmirror_common::install_crypto_provider();
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut w, _) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(9)).await;
    w.holdings(vec![]).await;
    w.next_assign().await;
    let tmp = tempfile::tempdir().unwrap();
    let p = start_prometheus(&bin, tmp.path(), &c.http.to_string());

    // Scraped, and quiet while the fleet is healthy.
    let log = tmp.path().join("prometheus.log");
    common::eventually(60, "Prometheus to scrape the coordinator", || async {
        let v = api(
            &p,
            "/api/v1/query?query=gitmirror_workers%7Bstate%3D%22alive%22%7D",
        )
        .await?;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .await;
    let firing = alerts(&p, "firing").await;
    assert!(firing.is_empty(), "alerts on a healthy fleet: {firing:?}");

    // Kill the worker: the coordinator declares it dead, Prometheus fires.
    drop(w);
    let started = Instant::now();
    // The two rules are evaluated from scrapes that need not be the same one: wait for
    // both (asserting the second right after the first fired raced under load).
    let firing = common::eventually(
        90,
        "GitmirrorWorkerDead and GitmirrorReposUnassigned firing",
        || async {
            let f = alerts(&p, "firing").await;
            let both = ["GitmirrorWorkerDead", "GitmirrorReposUnassigned"]
                .iter()
                .all(|want| f.iter().any(|a| a == want));
            both.then_some(f)
        },
    )
    .await;
    eprintln!(
        "GitmirrorWorkerDead fired {:?} after the worker was killed ({firing:?})",
        started.elapsed()
    );
    assert!(
        !firing.iter().any(|a| a == "GitmirrorCoordinatorDown"),
        "{firing:?}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(p);
    c.stop().await.1.unwrap();
}

/// The value of the sample `name{worker="id"}` in a `/metrics` exposition.
fn sample(metrics: &str, name: &str, worker: u32) -> Option<f64> {
    let prefix = format!("{name}{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// A coordinator with a protocol 5 worker that sent `Status`, `Load` and an outcome, and
/// a protocol 4 worker that sent `Status`; their ids, and `/metrics` once it shows them.
async fn loaded_fleet() -> (Coordinator, [TestWorker; 2], u32, u32, String) {
    use gitmirror_wire::{FetchResult, WorkerLoad, WorkerMsg, WorkerStatus};
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let (mut new, new_id) = TestWorker::join(c.quic, &c.token, Uuid::from_u128(21)).await;
    let (mut old, old_id) =
        TestWorker::join_speaking(c.quic, &c.token, Uuid::from_u128(22), 4).await;
    let status = |active| {
        WorkerMsg::Status(WorkerStatus {
            disk_free_bytes: 5 << 30,
            disk_total_bytes: 100 << 30,
            disk_low: false,
            active_fetches: active,
            summary: "ok".into(),
        })
    };
    new.send(&status(3)).await.unwrap();
    new.send(&WorkerMsg::Load(WorkerLoad {
        queued_fetches: 17,
        fetch_concurrency: 8,
        disk_min_free_bytes: 10 << 30,
    }))
    .await
    .unwrap();
    old.send(&status(1)).await.unwrap();
    new.holdings(vec![]).await;
    new.next_assign().await;
    new.report(vec![common::outcome(
        1,
        common::REPOS[0],
        FetchResult::Cloned,
        &[(
            "refs/heads/main",
            None,
            Some("9fceb02d0ae598e95dc970b74767f19372d61af8"),
        )],
    )])
    .await;
    let m = common::eventually(10, "the per-worker series", || async {
        let (status, m) = c.get("/metrics").await;
        assert_eq!(status, 200);
        (sample(&m, "gitmirror_worker_fetch_queue", new_id).is_some()
            && sample(&m, "gitmirror_worker_last_outcome_age_seconds", new_id).is_some()
            && sample(&m, "gitmirror_worker_fetches_running", old_id).is_some()
            && m.contains("gitmirror_events_total{"))
        .then_some(m)
    })
    .await;
    (c, [new, old], new_id, old_id, m)
}

/// Issue 16 item 4: the per-worker series of `/metrics` from a protocol 5 worker's
/// `Status` and `Load` and its outcomes, labelled by worker id only; a protocol 4 worker
/// (no `Load`) still shows what its `Status` says, and nothing it cannot report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_per_worker_series_from_status_load_and_outcomes() {
    let (_c, _workers, new_id, old_id, m) = loaded_fleet().await;
    let of_new = |name| sample(&m, name, new_id);
    assert_eq!(of_new("gitmirror_worker_fetch_queue"), Some(17.0));
    assert_eq!(of_new("gitmirror_worker_fetches_running"), Some(3.0));
    assert_eq!(of_new("gitmirror_worker_fetch_concurrency"), Some(8.0));
    assert_eq!(
        of_new("gitmirror_worker_disk_free_bytes"),
        Some((5u64 << 30) as f64)
    );
    assert_eq!(
        of_new("gitmirror_worker_disk_min_free_bytes"),
        Some((10u64 << 30) as f64)
    );
    let age = of_new("gitmirror_worker_last_outcome_age_seconds").unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    // Protocol 4: what Status says, no queue or floor.
    assert_eq!(
        sample(&m, "gitmirror_worker_fetches_running", old_id),
        Some(1.0)
    );
    assert_eq!(sample(&m, "gitmirror_worker_fetch_queue", old_id), None);
    assert_eq!(
        sample(&m, "gitmirror_worker_disk_min_free_bytes", old_id),
        None
    );
    // Labelled by worker only (bounded by workers): no repo label anywhere in them.
    assert!(
        m.lines()
            .filter(|l| l.starts_with("gitmirror_worker_"))
            .all(|l| l.starts_with("gitmirror_worker_") && !l.contains("repo")),
        "{m}"
    );
}

/// SPEC §5 with plan fork-pools C4: the gate of planned moves is visible as
/// `gitmirror_planned_moves_pending{state="admitted"|"waiting"}`, each a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_5_planned_moves_pending_is_exposed() {
    let (_c, _workers, _, _, m) = loaded_fleet().await;
    for state in ["admitted", "waiting"] {
        let prefix = format!("gitmirror_planned_moves_pending{{state=\"{state}\"}} ");
        let v: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}in {m}"))
            .parse()
            .unwrap();
        assert!(v >= 0.0 && v.fract() == 0.0, "{prefix}{v}");
    }
    assert!(
        m.contains("# TYPE gitmirror_planned_moves_pending gauge"),
        "{m}"
    );
}

/// The dashboard's expressions.
fn dashboard_exprs() -> Vec<String> {
    let path = rules_dir().join("gitmirror.dashboard.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

/// Issue 16 item 5: the shipped Grafana dashboard parses, and every expression names only
/// `gitmirror_*` series that a real coordinator's `/metrics` exposes (with a protocol 5
/// worker reporting), so no panel is empty because of a misspelt or renamed metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_dashboard_exprs_name_series_a_real_daemon_exposes() {
    let (_c, _workers, _, _, m) = loaded_fleet().await;
    let exposed = |name: &str| {
        m.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
    };
    let mut named = 0;
    for e in dashboard_exprs() {
        let mut rest = e.as_str();
        let mut any = false;
        while let Some(i) = rest.find("gitmirror_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(exposed(&name), "{name} (in {e:?}) is not in /metrics:\n{m}");
            rest = &rest[i + name.len()..];
            any = true;
            named += 1;
        }
        assert!(any, "{e:?} names no gitmirror series");
    }
    assert!(named >= 12);
}

/// Issue 16 item 5: every dashboard expression is valid PromQL (promtool checks each as a
/// recording rule).
#[test]
fn issue16_dashboard_exprs_are_valid_promql() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
