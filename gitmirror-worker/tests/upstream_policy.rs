//! Issue 10 finding 3, SPEC §17: the worker's upstream address policy (`upstream_deny`)
//! and redirect rule (`fetch.redirects`), against real loopback servers. A denied address
//! is never connected to, over http and git://, by IP literal or by name; a redirect to
//! another host is refused unless `fetch.redirects: any`, and even then never to a denied
//! address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Upstream;
use common::http::HttpGit;
use gitmirror_common::upstream_url::AddrPolicy;
use gitmirror_wire::FailureClass;
use gitmirror_worker::mirror::Mirrors;
use gitmirror_worker::{Redirects, UpstreamPolicy};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn mirrors(root: &Path, deny: &[&str], redirects: Redirects) -> Mirrors {
    let m = Mirrors::new(root.join("repos")).with_upstream(UpstreamPolicy {
        deny: AddrPolicy::parse(deny.iter().copied()).unwrap(),
        redirects,
    });
    m.prepare().unwrap();
    m
}

/// A listener that only counts: nonblocking, so "no connection" is an immediate answer.
fn silent_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn connections(l: &TcpListener) -> usize {
    let mut n = 0;
    while l.accept().is_ok() {
        n += 1;
    }
    n
}

/// SPEC §17: with loopback in `upstream_deny`, the worker refuses to connect to an
/// upstream on loopback, over http, git:// and ssh, named by literal (plain, as one
/// number, IPv4-mapped) or by `localhost`; the
/// failure is `gone` with a message naming upstream_deny, and the server sees nothing.
#[test]
fn spec_17_denied_loopback_upstream_is_never_connected() {
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(root.path(), &["127.0.0.0/8", "::1"], Redirects::SameHost);
    let (listener, port) = silent_listener();
    for (i, url) in [
        format!("http://127.0.0.1:{port}/x.git"),
        format!("http://localhost:{port}/x.git"),
        format!("git://127.0.0.1:{port}/x.git"),
        format!("git://localhost:{port}/x.git"),
        // The same address spelled as one number: resolution decides, not the spelling.
        format!("git://2130706433:{port}/x.git"),
        format!("http://2130706433:{port}/x.git"),
        // IPv4-mapped IPv6 reaches the IPv4 listener: judged as 127.0.0.1.
        format!("http://[::ffff:127.0.0.1]:{port}/x.git"),
        format!("git://[::ffff:127.0.0.1]:{port}/x.git"),
        // ssh: resolved and checked before ssh is spawned.
        format!("ssh://git@127.0.0.1:{port}/x.git"),
        format!("ssh://git@localhost:{port}/x.git"),
    ]
    .iter()
    .enumerate()
    {
        let err = m
            .clone_new(&format!("a/deny/r{i}"), url, &AtomicBool::new(false))
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Gone, "{url}: {err}");
        assert!(err.message.contains("upstream_deny"), "{url}: {err}");
        assert_eq!(connections(&listener), 0, "{url} reached the server");
    }
    assert_eq!(
        std::fs::read_dir(root.path().join("repos.tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// The control for the test above: with the default policy the same listener is reached
/// (loopback stays allowed by default, SPEC §17), and a git:// upstream named by an IPv6
/// literal is cloned (it failed to resolve before: the brackets reached the resolver).
#[test]
fn spec_17_loopback_is_allowed_by_default() {
    let root = tempfile::tempdir().unwrap();
    let m =
        Mirrors::new(root.path().join("repos")).with_io_timeout(std::time::Duration::from_secs(1));
    m.prepare().unwrap();
    let (listener, port) = silent_listener();
    let url = format!("git://127.0.0.1:{port}/x.git");
    // The listener never answers: the read times out after a second.
    let _ = m.clone_new("a/allow/r", &url, &AtomicBool::new(false));
    assert_eq!(connections(&listener), 1);
    // An IPv6 literal in a git:// URL connects (gix keeps its brackets; the worker's own
    // resolution strips them).
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = common::GitDaemon::start(up.path());
    let v6 = format!("git://[::ffff:127.0.0.1]:{}/abc", daemon.port);
    let cloned = m
        .clone_new("a/abc/abc", &v6, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(cloned.refs, common::ls_remote(&daemon.url("abc")));
}

/// Issue 10 finding 3: a redirect to another host (here `localhost` and another port
/// instead of 127.0.0.1) is refused with a clear error under the default
/// `fetch.redirects: same_host`, and the other server sees nothing; with `any` it is
/// followed and the clone completes from the other server.
#[test]
fn issue10_f3_redirect_to_another_host_only_when_configured() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let (a, b) = (HttpGit::start(up.path()), HttpGit::start(up.path()));
    a.redirect_to(&format!("http://localhost:{}", b.port));
    let root = tempfile::tempdir().unwrap();

    let m = mirrors(root.path(), &[], Redirects::SameHost);
    let err = m
        .clone_new("a/abc/abc", &a.url("abc"), &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        err.message.contains("another host") && err.message.contains("same_host"),
        "{err}"
    );
    assert_eq!(err.class, FailureClass::Gone, "{err}");
    assert!(b.seen().is_empty(), "{:?}", b.seen());
    assert!(!a.seen().is_empty());

    let m = mirrors(&root.path().join("any"), &[], Redirects::Any);
    let cloned = m
        .clone_new("a/abc/abc", &a.url("abc"), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(cloned.refs, common::ls_remote(&b.url("abc")));
    assert!(!b.seen().is_empty());
}

/// SPEC §17: every redirect target is checked against `upstream_deny`, also under
/// `fetch.redirects: any` and also when it is an IP literal (which reqwest never
/// resolves): the denied server sees nothing.
#[test]
fn spec_17_redirect_to_a_denied_address_is_refused() {
    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let a = HttpGit::start(up.path());
    let (listener, port) = silent_listener();
    let root = tempfile::tempdir().unwrap();
    let m = mirrors(
        root.path(),
        &["127.0.0.2/32", "169.254.0.0/16"],
        Redirects::Any,
    );
    for target in [
        format!("http://127.0.0.2:{port}"),
        "http://169.254.169.254".to_owned(),
    ] {
        a.redirect_to(&target);
        let err = m
            .clone_new("a/abc/abc", &a.url("abc"), &AtomicBool::new(false))
            .unwrap_err();
        assert!(err.message.contains("upstream_deny"), "{target}: {err}");
        assert_eq!(err.class, FailureClass::Gone, "{target}: {err}");
    }
    assert_eq!(connections(&listener), 0);
}

/// Issue 10 findings 3 and 5, SPEC §17, through the whole worker: an assignment holding a
/// URL the policy refuses (a query and fragment, an ssh option) is ignored and never
/// connected to, while its neighbour in the same delta is mirrored; with loopback in
/// `upstream_deny` a `git://` upstream on loopback is reported `gone` naming
/// upstream_deny, and its server sees no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue10_f3_worker_ignores_refused_urls_and_reports_denied_addresses() {
    use common::coord::FakeCoordinator;
    use common::harness::{config, fetch_section, start};
    use gitmirror_common::units::FreeSpace;
    use gitmirror_wire::{AssignDelta, CoordMsg, FetchResult, RepoSpec, WorkerMsg};
    use std::time::Duration;

    let up = tempfile::tempdir().unwrap();
    let _upstream = Upstream::create(up.path(), "abc");
    let daemon = common::GitDaemon::start(up.path());
    let (listener, port) = silent_listener();
    let spec = |id: &str, url: String| RepoSpec { id: id.into(), url };
    let outcome = |m: WorkerMsg, repo: &str| match m {
        WorkerMsg::Outcomes(b) => b.outcomes.into_iter().find(|o| o.repo == repo),
        _ => None,
    };

    // Default policy: hostile URLs are ignored, the good one is cloned.
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let fetch = fetch_section(Duration::from_secs(3600), Duration::from_secs(3600));
    let worker = start(config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch.clone(),
        FreeSpace::Bytes(0),
    ));
    let mut s = coord.accept(1).await;
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: vec![
            spec(
                "q/query/admin",
                format!("http://127.0.0.1:{port}/admin?x=1#"),
            ),
            spec("o/opt/ssh", "[-oProxyCommand=x]:p".to_owned()),
            spec("a/abc/abc", daemon.url("abc")),
        ],
        drop: vec![],
    }))
    .await;
    let o = s.recv_until(|m| outcome(m, "a/abc/abc")).await;
    assert_eq!(o.result, FetchResult::Cloned, "{o:?}");
    worker.stop().await;
    assert_eq!(connections(&listener), 0, "a refused URL was connected to");
    assert!(!root.path().join("repos/q").exists() && !root.path().join("repos/o").exists());

    // Loopback denied: the git:// upstream is refused before connecting.
    let coord = FakeCoordinator::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(
        coord.addr,
        coord.token.clone(),
        root.path(),
        fetch,
        FreeSpace::Bytes(0),
    )
    .with_upstream_deny(AddrPolicy::parse(["127.0.0.0/8", "::1"]).unwrap());
    let worker = start(cfg);
    let mut s = coord.accept(1).await;
    s.send(CoordMsg::Assign(AssignDelta {
        seq: 1,
        upsert: vec![spec("d/deny/git", format!("git://127.0.0.1:{port}/x.git"))],
        drop: vec![],
    }))
    .await;
    let o = s.recv_until(|m| outcome(m, "d/deny/git")).await;
    match &o.result {
        FetchResult::Failed { class, message } => {
            assert_eq!(*class, FailureClass::Gone, "{message}");
            assert!(message.contains("upstream_deny"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    worker.stop().await;
    assert_eq!(
        connections(&listener),
        0,
        "the denied upstream was connected to"
    );
}
