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
    assert!(matches!(
        w.recv().await.unwrap(),
        gitmirror_wire::CoordMsg::Welcome(_)
    ));
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
    c.stop().await.1.unwrap();
}
