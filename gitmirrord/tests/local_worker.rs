//! `local_worker:` (SPEC §2.1): a coordinator with an embedded worker mirrors its index on
//! its own, over loopback QUIC, in one process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use common::{eventually, http_raw};
use gitmirrord::{Config, Listeners};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@localhost")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@localhost")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An upstream bare repo with two branches and a tag.
fn upstream(root: &Path, name: &str) -> std::path::PathBuf {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("f"), name).unwrap();
    git(&work, &["add", "f"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["tag", "v1"]);
    git(&work, &["branch", "next"]);
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    bare
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_worker_mirrors_the_index() {
    gitmirror_common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("upstream");
    std::fs::create_dir_all(&up).unwrap();
    let index = dir.path().join("index");
    let mut repos = Vec::new();
    for name in ["abc", "zlib", "curl"] {
        let bare = upstream(&up, name);
        let id = format!("{}/{name}/{name}", &name[..1]);
        std::fs::create_dir_all(index.join(&id).parent().unwrap()).unwrap();
        std::fs::write(index.join(&id), format!("url: file://{}\n", bare.display())).unwrap();
        repos.push((id, bare));
    }
    let mirrors = dir.path().join("mirrors");
    let text = format!(
        "state_dir: {}\nindexes: [{{name: t, url: {}, poll_interval: 1s}}]\nallow_file_urls: true\n\
         local_worker:\n  mirror_dir: {}\n  name: here\n  fetch: {{min_interval: 1s}}\n",
        dir.path().join("state").display(),
        index.display(),
        mirrors.display()
    );
    let cfg = Config::parse(&dir.path().join("gitmirrord.yaml"), &text).unwrap();
    let quic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let http_sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = http_sock.local_addr().unwrap();
    let (handle, ctl) = gitmirrord::control();
    let task = tokio::spawn(gitmirrord::run(
        cfg,
        Listeners {
            quic,
            http: http_sock,
            hooks: None,
        },
        ctl,
    ));

    let get = |path: &'static str| async move {
        let (s, body) = http_raw(
            http,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        (s == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    };
    let status = eventually(60, "every repo mirrored by the local worker", || async {
        let v = get("/api/status").await?;
        (v["repos"]["mirrored"] == 3).then_some(v)
    })
    .await;
    assert_eq!(status["worker_count"], 1);
    assert_eq!(status["workers"][0]["name"], "here");

    for (id, bare) in &repos {
        let mirror = mirrors.join(format!("{id}.git"));
        let mut want = git(bare, &["for-each-ref", "--format=%(refname) %(objectname)"]);
        want.push_str(&git(bare, &["rev-parse", "HEAD"]).replace('\n', " HEAD\n"));
        let mut got = git(
            &mirror,
            &["for-each-ref", "--format=%(refname) %(objectname)"],
        );
        got.push_str(&git(&mirror, &["rev-parse", "HEAD"]).replace('\n', " HEAD\n"));
        assert_eq!(got, want, "{id}");
        let remote = git(&mirror, &["remote", "-v"]);
        assert!(
            remote.contains(&format!("file://{}", bare.display())),
            "{remote}"
        );
    }

    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("coordinator and local worker stop within 10 s")
        .unwrap()
        .unwrap();
    // The embedded worker saved its state under the coordinator's state dir.
    assert!(
        dir.path()
            .join("state/local-worker/repos.snapshot")
            .exists()
    );
    assert!(dir.path().join("state/local-worker/identity.json").exists());
}
