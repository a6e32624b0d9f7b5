//! SIGHUP reload of the `gitmirrord` binary (SPEC §11): the log level and the webhooks
//! change at once, settings that need a restart are named, and a bad file keeps the
//! running configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use common::{HookReceiver, REPOS, TestWorker, eventually, outcome};
use gitmirror_wire::FetchResult;
use hostile::Daemon;
use std::net::SocketAddr;
use std::path::Path;
use uuid::Uuid;

/// Index of the first log line at or after `from` containing every one of `needles`.
async fn wait_line(d: &Daemon, from: usize, needles: &[&str], what: &str) -> usize {
    eventually(20, what, || async {
        d.lines()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, l)| needles.iter().all(|n| l.contains(n)))
            .map(|(i, _)| i)
    })
    .await
}

fn config(dir: &Path, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\nstate_dir: {}\n\
         indexes: [{{name: t, url: {}, poll_interval: 1s}}]\n{extra}",
        dir.join("state").display(),
        dir.join("index").display()
    )
}

/// `… workers connect to <quic> (QUIC), API on http://<http>; …`
fn addresses(line: &str) -> (SocketAddr, SocketAddr) {
    let quic = line
        .split("workers connect to ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    let http = line
        .split("API on http://")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap();
    (quic.parse().unwrap(), http.parse().unwrap())
}

/// SPEC §11 SIGHUP: log_level and webhooks reload; `listen` is named as needing a
/// restart; a file with an unknown key is refused (naming it) and the old settings stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_log_level_and_webhooks_and_refuses_a_bad_file() {
    gitmirror_common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    common::write_index(&dir.path().join("index"));
    let path = dir.path().join("gitmirrord.yaml");
    std::fs::write(&path, config(dir.path(), "log_level: info\n")).unwrap();
    let d = Daemon::start(&[], &path);
    let ready = wait_line(&d, 0, &["ready: workers connect to"], "the ready line").await;
    let (quic, http) = addresses(&d.lines()[ready]);
    let token = gitmirror_common::trust::Identity::load_or_create(&dir.path().join("state"))
        .unwrap()
        .join_token();

    // A worker mirrors a repo: event 1, before any webhook is configured.
    eventually(20, "the index", || async {
        let (_, body) = common::http_raw(http, b"GET /api/repos HTTP/1.1\r\n\r\n").await;
        body.contains("\"total\":3").then_some(())
    })
    .await;
    let (mut w, _) = TestWorker::join(quic, &token, Uuid::from_u128(5)).await;
    w.holdings(vec![]).await;
    w.next_assign().await;
    w.report(vec![outcome(
        1,
        REPOS[0],
        FetchResult::Cloned,
        &[("refs/heads/main", None, Some("aaaa"))],
    )])
    .await;
    assert!(
        !d.lines().iter().any(|l| l.contains("DEBUG")),
        "no debug lines at log_level info"
    );

    // Reload: debug logging, a webhook, and a changed listen address.
    let receiver = HookReceiver::start(0);
    let text = config(
        dir.path(),
        &format!(
            "log_level: debug\nwebhooks: [{{url: '{}'}}]\n",
            receiver.url()
        ),
    )
    .replace("listen: 127.0.0.1:0\nhttp", "listen: 127.0.0.1:1\nhttp");
    std::fs::write(&path, text).unwrap();
    let before = d.lines().len();
    d.signal(rustix::process::Signal::HUP);
    let reloaded = wait_line(
        &d,
        before,
        &[
            "SIGHUP: reloaded",
            "log_level info → debug",
            "webhooks (0 → 1)",
        ],
        "the reload line",
    )
    .await;
    wait_line(
        &d,
        before,
        &["SIGHUP: listen changed", "needs a restart"],
        "listen named as needing a restart",
    )
    .await;
    wait_line(
        &d,
        reloaded,
        &["DEBUG", "indexes polled"],
        "debug lines after the reload",
    )
    .await;

    // The new webhook starts at the newest event: it gets event 2, not event 1.
    w.report(vec![outcome(
        2,
        REPOS[0],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("aaaa"), Some("bbbb"))],
    )])
    .await;
    eventually(20, "event 2 at the new webhook", || async {
        (!receiver.accepted().is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        receiver
            .accepted()
            .iter()
            .map(|d| d.seq())
            .collect::<Vec<_>>(),
        [2]
    );

    // A bad file: refused, naming the key; the running configuration stays.
    std::fs::write(&path, config(dir.path(), "log_levl: warn\n")).unwrap();
    let before = d.lines().len();
    d.signal(rustix::process::Signal::HUP);
    wait_line(
        &d,
        before,
        &["SIGHUP: the configuration was not reloaded", "log_levl"],
        "the refusal naming the key",
    )
    .await;
    w.report(vec![outcome(
        3,
        REPOS[0],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("bbbb"), Some("cccc"))],
    )])
    .await;
    eventually(20, "event 3 still delivered", || async {
        (receiver.accepted().len() == 2).then_some(())
    })
    .await;
    let (s, _) = common::http_raw(http, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(s, 200);
    // Still at debug level.
    let n = d.lines().len();
    wait_line(&d, n, &["DEBUG"], "debug lines after the refused reload").await;

    // The webhook removed again: nothing more is delivered.
    std::fs::write(&path, config(dir.path(), "")).unwrap();
    let before = d.lines().len();
    d.signal(rustix::process::Signal::HUP);
    wait_line(
        &d,
        before,
        &[
            "SIGHUP: reloaded",
            "log_level debug → info",
            "webhooks (1 → 0)",
        ],
        "the second reload",
    )
    .await;
    // The reload stopped the webhook's task before logging; its cursor is forgotten.
    let cursors = dir.path().join("state/webhooks.json");
    eventually(10, "the removed webhook's cursor forgotten", || async {
        let text = std::fs::read_to_string(&cursors).unwrap_or_default();
        (text.contains("\"cursors\":{}")).then_some(())
    })
    .await;
    w.report(vec![outcome(
        4,
        REPOS[0],
        FetchResult::Fetched,
        &[("refs/heads/main", Some("cccc"), Some("dddd"))],
    )])
    .await;
    d.signal(rustix::process::Signal::TERM);
    wait_line(&d, 0, &["stopped; state saved"], "the daemon to stop").await;
    assert_eq!(receiver.seen().len(), 2, "a removed webhook got an event");
}

/// SPEC §11 SIGHUP with `local_worker`: the embedded worker takes new fetch limits at
/// once; a new name is named as needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_local_workers_fetch_limits() {
    let dir = tempfile::tempdir().unwrap();
    common::write_index(&dir.path().join("index"));
    let path = dir.path().join("gitmirrord.yaml");
    let lw = |name: &str, concurrency: u32| {
        format!(
            "local_worker:\n  mirror_dir: {}\n  name: {name}\n  fetch: {{concurrency: {concurrency}}}\n",
            dir.path().join("mirrors").display()
        )
    };
    std::fs::write(&path, config(dir.path(), &lw("here", 2))).unwrap();
    let d = Daemon::start(&[], &path);
    wait_line(&d, 0, &["ready: workers connect to"], "the ready line").await;
    std::fs::write(&path, config(dir.path(), &lw("here", 5))).unwrap();
    let before = d.lines().len();
    d.signal(rustix::process::Signal::HUP);
    wait_line(
        &d,
        before,
        &["SIGHUP: reloaded", "local_worker.fetch/disk"],
        "the reload line",
    )
    .await;
    wait_line(
        &d,
        before,
        &["local_worker", "reloaded the fetch and disk settings"],
        "the embedded worker's reload",
    )
    .await;
    assert!(
        !d.lines()[before..]
            .iter()
            .any(|l| l.contains("needs a restart")),
        "{:?}",
        &d.lines()[before..]
    );
    std::fs::write(&path, config(dir.path(), &lw("there", 5))).unwrap();
    let before = d.lines().len();
    d.signal(rustix::process::Signal::HUP);
    wait_line(
        &d,
        before,
        &["SIGHUP: local_worker.name changed", "needs a restart"],
        "the name named as needing a restart",
    )
    .await;
    d.signal(rustix::process::Signal::TERM);
    wait_line(&d, 0, &["stopped; state saved"], "the daemon to stop").await;
}
