//! `GET /` (SPEC §9): the HTML status page, read by a real headless Chromium.
//!
//! Needs the Debian package `chromium` (`scripts/deps.sh test` installs it). Without it the
//! browser part is skipped with a message, unless `GITMIRROR_REQUIRE_CHROMIUM` is set
//! (CI sets it), which makes a missing browser a failure. `GITMIRROR_SCREENSHOT_DIR`, when
//! set, receives a copy of the screenshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{Coordinator, REPOS, TestWorker, outcome};
use gitmirror_wire::{FailureClass, FetchResult, WorkerMsg, WorkerStatus};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const EVIL_NAME: &str = "<script>alert('name')</script>";
const EVIL_STATUS: &str = "<img src=x onerror=alert(1)> fetching";
const EVIL_ERROR: &str = "</td></tr></table><b>HTTP 404</b> & \"gone\"";

fn chromium() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .flat_map(|d| ["chromium", "chromium-browser"].map(|b| Path::new(d).join(b)))
        .find(|p| p.is_file())
}

/// Run chromium headless with `args` and the URL; its stdout, or why it failed.
fn run_chromium(bin: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A coordinator with one worker whose name and status line are HTML, one mirrored repo
/// with an event, and one gone repo whose error message is HTML.
async fn populated() -> (Coordinator, TestWorker) {
    let c = Coordinator::start("").await;
    c.wait_for_repos().await;
    let mut w = TestWorker::open(c.quic, &c.token).await;
    let mut hello = common::hello(Uuid::from_u128(77), &c.token.secret);
    hello.name = EVIL_NAME.into();
    w.send(&WorkerMsg::Hello(hello)).await.unwrap();
    let reply = w.recv().await.unwrap();
    assert!(common::welcomed(&c.token, Uuid::from_u128(77), &reply).is_some());
    w.holdings(vec![]).await;
    w.next_assign().await;
    w.send(&WorkerMsg::Status(WorkerStatus {
        disk_free_bytes: 50 << 30,
        disk_total_bytes: 100 << 30,
        disk_low: false,
        active_fetches: 1,
        summary: EVIL_STATUS.into(),
    }))
    .await
    .unwrap();
    w.report(vec![
        outcome(
            1,
            REPOS[0],
            FetchResult::Cloned,
            &[
                (
                    "refs/heads/main",
                    None,
                    Some("9fceb02d0ae598e95dc970b74767f19372d61af8"),
                ),
                (
                    "refs/tags/v1",
                    None,
                    Some("e5a2f01d0ae598e95dc970b74767f19372d61af8"),
                ),
            ],
        ),
        outcome(
            2,
            REPOS[1],
            FetchResult::Failed {
                class: FailureClass::Gone,
                message: EVIL_ERROR.into(),
            },
            &[],
        ),
    ])
    .await;
    common::eventually(10, "the worker's status line", || async {
        let (_, v) = c.get_json("/api/workers/0").await;
        (v["status"] == EVIL_STATUS).then_some(())
    })
    .await;
    (c, w)
}

/// SPEC §9 `GET /`: every string from workers, upstream and indexes is escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_escapes_what_it_shows() {
    let (c, _w) = populated().await;
    let head = common::http_head(c.http, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    let (_, html) = c.get("/").await;
    for raw in ["<script", "<img", "<b>", "alert('name')"] {
        assert!(!html.contains(raw), "{raw:?} reached the page unescaped");
    }
    for escaped in [
        "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;",
        "&lt;img src=x onerror=alert(1)&gt; fetching",
        "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;b&gt;HTTP 404&lt;/b&gt; &amp; &quot;gone&quot;",
    ] {
        assert!(html.contains(escaped), "{escaped:?} missing");
    }
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(!html.contains("src=\"http"), "no external assets");
    assert_eq!(c.post("/").await.0, 405);
    c.stop().await.1.unwrap();
}

/// SPEC §9 `GET /` in a real browser: the page renders with workers, repo states, failing
/// repos and recent events, the injected markup stays text, and a screenshot is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var_os("GITMIRROR_REQUIRE_CHROMIUM").is_some() {
            panic!(
                "GITMIRROR_REQUIRE_CHROMIUM is set but no chromium is on PATH (apt-get install chromium)"
            );
        }
        eprintln!(
            "SKIPPED status_page_in_headless_chromium: chromium is not installed (apt-get install chromium, or scripts/deps.sh test)"
        );
        return;
    };
    let (c, _w) = populated().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", c.http);

    let (dom, shot) = {
        let (bin, profile, url) = (bin.clone(), tmp.path().join("profile"), url.clone());
        let png = tmp.path().join("status.png");
        let png2 = png.clone();
        tokio::task::spawn_blocking(move || {
            let dom = run_chromium(&bin, &profile, &["--dump-dom".into()], &url);
            run_chromium(
                &bin,
                &profile,
                &[
                    format!("--screenshot={}", png2.display()),
                    "--window-size=1280,900".into(),
                    "--hide-scrollbars".into(),
                ],
                &url,
            );
            (dom, png2)
        })
        .await
        .map(|(d, p)| {
            assert_eq!(p, png);
            (d, p)
        })
        .unwrap()
    };

    // The browser built the document we meant: sections, names, states, the event.
    for text in [
        "<title>gitmirror: 1 workers, 3 repos, 0 failing</title>",
        "Workers",
        "Failing repos",
        "Recent events",
        "Indexes",
        REPOS[0],
        REPOS[1],
        "refs/heads/main",
        "9fceb02d0",
        ">gone<",
        ">alive<",
        ">cloned<",
        "mirrored",
        // Issue 16: the plots render as SVG elements, and repo ids are links.
        "<svg id=\"staleness-plot\"",
        "<svg id=\"outcomes-plot\"",
        "<svg id=\"events-plot\"",
        "<svg id=\"shares-plot\"",
        "class=\"marker\"",
        "href=\"/repos/l/linux/linux-next\"",
    ] {
        assert!(
            dom.contains(text),
            "{text:?} not in the rendered DOM:\n{dom}"
        );
    }
    // Injected markup is text in the DOM, not elements.
    assert!(
        dom.contains("&lt;script&gt;alert('name')&lt;/script&gt;"),
        "{dom}"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(!dom.contains("<img") && !dom.contains("<b>HTTP"), "{dom}");
    assert!(!dom.to_lowercase().contains("<script"), "{dom}");

    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is blank",
        png.len()
    );
    if let Some(dir) = std::env::var_os("GITMIRROR_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&shot, Path::new(&dir).join("status.png")).unwrap();
    }

    // Issue 16 item 1: the link from `/` resolves to the repo's page, rendered.
    let repo_url = format!("http://{}/repos/{}", c.http, REPOS[1]);
    let (repo_dom, repo_png) = {
        let (bin, profile) = (bin.clone(), tmp.path().join("profile"));
        let png = tmp.path().join("repo.png");
        tokio::task::spawn_blocking(move || {
            let dom = run_chromium(&bin, &profile, &["--dump-dom".into()], &repo_url);
            run_chromium(
                &bin,
                &profile,
                &[
                    format!("--screenshot={}", png.display()),
                    "--window-size=1280,900".into(),
                    "--hide-scrollbars".into(),
                ],
                &repo_url,
            );
            (dom, png)
        })
        .await
        .unwrap()
    };
    for text in [
        "id=\"repo-state\">gone<",
        "probes it once a day",
        "Last outcomes",
        "&lt;b&gt;HTTP 404&lt;/b&gt;",
    ] {
        assert!(
            repo_dom.contains(text),
            "{text:?} not in the repo page's DOM:\n{repo_dom}"
        );
    }
    assert!(!repo_dom.contains("<b>HTTP"), "{repo_dom}");
    let png = std::fs::read(&repo_png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if let Some(dir) = std::env::var_os("GITMIRROR_SCREENSHOT_DIR") {
        std::fs::copy(&repo_png, Path::new(&dir).join("repo.png")).unwrap();
    }
    c.stop().await.1.unwrap();
}

/// Issue 16 item 1, SPEC §9 `GET /repos/{id}`: each repo's page shows its state and why,
/// owner, holders, URL, schedule, last outcomes and events; what came from a worker or
/// upstream is escaped; repo ids on `/` link to it; an unknown id is a 404 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_repo_page_shows_state_why_schedule_outcomes_and_events() {
    let (c, _w) = populated().await;
    // The event becomes durable after the outcome: wait for it on the page.
    let path = format!("/repos/{}", REPOS[0]);
    let html = common::eventually(10, "the clone's event on the repo page", || async {
        let (status, html) = c.get(&path).await;
        assert_eq!(status, 200, "{html}");
        html.contains("id=\"repo-events\"><h2>Recent events <span class=\"count\">(1,")
            .then_some(html)
    })
    .await;
    for text in [
        "id=\"repo-state\">mirrored<",
        "holds a mirror; its last fetch succeeded",
        "refs/heads/main",
        "9fceb02d0",
        ">cloned<",
        "<tr class=\"outcome\">",
        ">ok<",
        "last upstream change",
        "next due",
        "max_interval",
        "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;",
        "href=\"/api/repos/a/abc/abc\"",
    ] {
        assert!(html.contains(text), "{text:?} missing from {path}:\n{html}");
    }
    // The gone repo: its hostile error message is text, in the why and the outcomes.
    let (status, gone) = c.get(&format!("/repos/{}", REPOS[1])).await;
    assert_eq!(status, 200);
    assert!(gone.contains("id=\"repo-state\">gone<"), "{gone}");
    assert!(gone.contains("probes it once a day"), "{gone}");
    assert!(
        gone.contains("&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;b&gt;HTTP 404&lt;/b&gt;"),
        "{gone}"
    );
    // The page's one script is its own (static) fetch button; nothing injected is markup.
    for raw in ["<script>alert", "<b>", "<img"] {
        assert!(
            !gone.contains(raw) && !html.contains(raw),
            "{raw:?} unescaped"
        );
    }
    assert_eq!(gone.matches("<script").count(), 1, "{gone}");
    // The "fetch now" button posts to the API; the same-origin post a browser sends
    // without JavaScript is accepted (no token configured, loopback).
    assert!(
        html.contains(
            "<form id=\"fetch-now\" method=\"post\" action=\"/api/repos/a/abc/abc/fetch\""
        ),
        "{html}"
    );
    let origin = format!("Origin: http://{}", c.http);
    let (status, _) = c.post_with("/api/repos/a/abc/abc/fetch", &[&origin]).await;
    assert_eq!(status, 202);
    // The third repo is assigned and not cloned yet.
    let (_, pending) = c.get(&format!("/repos/{}", REPOS[2])).await;
    assert!(pending.contains("id=\"repo-state\">pending<"), "{pending}");
    assert!(pending.contains("No outcome reported"), "{pending}");
    // Links from `/`: the failing list and the events.
    let (_, index) = c.get("/").await;
    assert!(
        index.contains("href=\"/repos/l/linux/linux-next\""),
        "{index}"
    );
    assert!(index.contains("href=\"/repos/a/abc/abc\""), "{index}");
    // The search box: an id prefix lists the matching repos, linked; the query is text.
    assert!(index.contains("<form class=\"search\" method=\"get\" action=\"/repos\""));
    let (status, found) = c.get("/repos?q=l%2F").await;
    assert_eq!(status, 200);
    assert!(
        found.contains("href=\"/repos/l/linux/linux-next\""),
        "{found}"
    );
    assert!(!found.contains("href=\"/repos/a/abc/abc\""), "{found}");
    let (_, all) = c.get("/repos?q=").await;
    assert_eq!(
        all.matches("<a class=\"mono\" href=\"/repos/").count(),
        3,
        "{all}"
    );
    let (_, evil) = c.get("/repos?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert!(!evil.contains("<script>alert"), "{evil}");
    assert!(
        evil.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{evil}"
    );
    assert!(evil.contains("No repo id starts with that."), "{evil}");
    // Issue 16 item 2: a URL substring finds repos whose id does not start with it.
    let (status, by_url) = c.get("/repos?q=LINUX-next.git").await;
    assert_eq!(status, 200);
    let section = by_url.split("id=\"found-url\"").nth(1).unwrap_or_default();
    assert!(
        section.contains("href=\"/repos/l/linux/linux-next\"")
            && !section.contains("href=\"/repos/a/abc/abc\""),
        "{by_url}"
    );
    let (_, by_host) = c.get("/repos?q=example.org").await;
    let section = by_host.split("id=\"found-url\"").nth(1).unwrap_or_default();
    assert_eq!(
        section.matches("<a class=\"mono\" href=\"/repos/").count(),
        3,
        "{by_host}"
    );
    let (status, missing) = c.get("/repos/no/such/repo").await;
    assert_eq!(status, 404);
    assert!(missing.contains("No repo <span class=\"mono\">no/such/repo</span>"));
    assert_eq!(c.post(&path).await.0, 405);
    c.stop().await.1.unwrap();
}

/// Issue 16 item 2: the plots on `/` are inline SVG with the fleet's figures — staleness
/// with max_interval marked, outcomes per minute by class, events per minute, worker
/// shares, and the failing repos grouped by class and by upstream host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_status_page_plots_show_the_fleet_figures() {
    let (c, _w) = populated().await;
    let html = common::eventually(10, "the clone's event in the events plot", || async {
        let (_, html) = c.get("/").await;
        html.contains("data-total=\"events\">1</b>").then_some(html)
    })
    .await;
    // Staleness: one repo fetched successfully, seconds ago; the marker at 24 h.
    let staleness = section(&html, "staleness");
    assert!(
        staleness.contains("data-label=\"≤1m\" data-count=\"1\""),
        "{staleness}"
    );
    assert_eq!(
        staleness.matches("data-count=\"0\"").count(),
        11,
        "{staleness}"
    );
    assert!(
        staleness.contains("max_interval 1d (the worker default)"),
        "{staleness}"
    );
    assert!(
        staleness.contains("0 beyond max_interval, 2 never fetched"),
        "{staleness}"
    );
    // Outcomes: one success, one gone.
    let outcomes = section(&html, "outcomes");
    assert!(outcomes.contains("data-total=\"ok\">1</b>"), "{outcomes}");
    assert!(outcomes.contains("data-total=\"gone\">1</b>"), "{outcomes}");
    assert!(
        outcomes.contains("data-total=\"transient\">0</b>"),
        "{outcomes}"
    );
    // Shares: the one worker owns all, and all is its fair share.
    let shares = section(&html, "shares");
    assert!(
        shares.contains("data-count=\"3\" data-share=\"1.0000\" data-fair=\"1.0000\""),
        "{shares}"
    );
    assert!(
        shares.contains("&lt;script&gt;"),
        "the worker's name is escaped"
    );
    // Groups: the gone repo by class and host.
    let groups = section(&html, "failing-groups");
    assert!(groups.contains("data-class=\"gone\">1<"), "{groups}");
    assert!(groups.contains("data-host=\"example.org\">1<"), "{groups}");
    assert!(!html.contains("<script"), "no script needed, none injected");
    c.stop().await.1.unwrap();
}

/// The `<section id="{id}">…</section>` of a page.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no section {id}"));
    let len = html[start..].find("</section>").unwrap();
    &html[start..start + len]
}

/// `node`, which drives Chromium for the click test (Debian's `nodejs`).
fn node() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("node"))
        .find(|p| p.is_file())
}

/// Issue 16 "the fetch button triggers a fetch", SPEC §9 `POST /api/repos/{id}/fetch`: a
/// real (trusted) mouse click on the repo page's "Fetch now" in headless Chromium,
/// driven over the DevTools protocol (`tests/data/cdp_click.js` on
/// `--remote-debugging-pipe`), makes the page's script POST the fetch; the owner is told
/// to fetch the repo, and its outcome is recorded with trigger `manual`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_fetch_now_click_in_headless_chromium_triggers_a_fetch() {
    let (Some(bin), Some(node)) = (chromium(), node()) else {
        if std::env::var_os("GITMIRROR_REQUIRE_CHROMIUM").is_some() {
            panic!(
                "GITMIRROR_REQUIRE_CHROMIUM is set but chromium or node is not on PATH (apt-get install chromium nodejs)"
            );
        }
        eprintln!(
            "SKIPPED spec_9_fetch_now_click_in_headless_chromium_triggers_a_fetch: chromium or node is not installed (scripts/deps.sh test)"
        );
        return;
    };
    let (c, mut w) = populated().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://{}/repos/{}", c.http, REPOS[0]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cdp_click.js");
    let profile = tmp.path().join("profile");
    let clicked = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg(script)
            .arg(bin)
            .arg(profile)
            .arg(url)
            .arg("#fetch-now button")
            .arg("#fetch-result")
            .output()
            .unwrap()
    });
    // The owner is told to fetch it (other messages may come first). Chromium may take
    // longer than one `recv`'s 15 s to start on a busy machine: a quiet stream is waited
    // on again, up to the 60 s deadline.
    let fetch_now = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match w.recv().await {
                Ok(gitmirror_wire::CoordMsg::FetchNow { repo }) => return repo,
                Ok(_) => {}
                Err(e) if e == "timeout" => {}
                Err(e) => panic!("the worker's connection ended: {e}"),
            }
        }
    })
    .await
    .expect("the click's fetch request reaches the worker within 60 s");
    assert_eq!(fetch_now, REPOS[0]);
    let out = clicked.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cdp_click.js failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["text"], "asked its owner to fetch it now", "{v}");
    // The worker fetches: a new commit on main, reported as the asked fetch.
    w.report(vec![outcome(
        3,
        REPOS[0],
        FetchResult::Fetched,
        &[(
            "refs/heads/main",
            Some("9fceb02d0ae598e95dc970b74767f19372d61af8"),
            Some("1111111111111111111111111111111111111111"),
        )],
    )])
    .await;
    let path = format!("/repos/{}", REPOS[0]);
    common::eventually(10, "the manual fetch's event on the repo page", || async {
        let (_, html) = c.get(&path).await;
        html.contains(">manual<").then_some(())
    })
    .await;
    let (_, v) = c.get_json("/api/events?since=0").await;
    let events = v["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["repo"] == REPOS[0] && e["trigger"] == "manual"),
        "{v}"
    );
    c.stop().await.1.unwrap();
}
