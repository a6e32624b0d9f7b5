//! Tests of the harness itself, against real git and no gitmirror binary: if these fail,
//! the end-to-end results mean nothing.

use gitmirror_tests::git::{commit_to, is_bare_repo, remote_url, repo_id};
use gitmirror_tests::{GitDaemon, Index, TestDir, git, http, mirror_refs, wait_for};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn git_daemon_serves_seeded_repos_and_sees_new_commits() {
    let d = GitDaemon::shared();
    let names = d.create_repos("harn", 3);
    let refs = d.ls_remote(&names[0]);
    let keys: Vec<&str> = refs.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "refs/heads/dev",
            "refs/heads/master",
            "refs/tags/light",
            "refs/tags/v1"
        ]
    );
    // Distinct content per repo.
    assert_ne!(refs, d.ls_remote(&names[1]));

    let new = d.commit(&names[0], "master");
    let after = d.ls_remote(&names[0]);
    assert_eq!(after["refs/heads/master"], new);
    assert_eq!(after["refs/heads/dev"], refs["refs/heads/dev"]);

    d.delete_repo(&names[2]);
    assert!(gitmirror_tests::git::try_ls_remote(&d.url(&names[2])).is_err());
}

#[test]
fn mirror_helpers_agree_with_git_clone_mirror() {
    let d = GitDaemon::shared();
    let name = &d.create_repos("harm", 1)[0];
    let tmp = TestDir::new("harness");
    let mirror = tmp.path().join("m.git");
    git([
        "clone",
        "-q",
        "--mirror",
        &d.url(name),
        mirror.to_str().unwrap(),
    ]);
    assert!(is_bare_repo(&mirror));
    assert!(!is_bare_repo(tmp.path()));
    assert_eq!(mirror_refs(&mirror), d.ls_remote(name));
    assert_eq!(remote_url(&mirror).unwrap(), d.url(name));
    commit_to(&d.repo_path(name), "dev");
    assert_ne!(mirror_refs(&mirror), d.ls_remote(name));
}

#[test]
fn shared_daemon_is_shared_while_held() {
    let a = GitDaemon::shared();
    let b = GitDaemon::shared();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.port(), b.port());
}

#[test]
fn index_commits_files_in_layout() {
    let tmp = TestDir::new("harness");
    let index = Index::create(&tmp.path().join("index"));
    let id = repo_id("proj-r01");
    assert_eq!(id, "p/proj/proj-r01");
    index.put_url(&id, "git://127.0.0.1:1/proj-r01.git");
    let c1 = index.commit("one");
    index.remove(&id);
    let c2 = index.commit("two");
    assert_ne!(c1, c2);
    let p = index.path().to_str().unwrap();
    let files = git(["-C", p, "ls-tree", "-r", "--name-only", &c1]);
    assert!(files.lines().any(|l| l == id), "{files}");
    let shown = git(["-C", p, "show", &format!("{c1}:{id}")]);
    assert_eq!(shown, "url: git://127.0.0.1:1/proj-r01.git");
    let files = git(["-C", p, "ls-tree", "-r", "--name-only", &c2]);
    assert!(!files.lines().any(|l| l == id), "{files}");
}

#[test]
fn wait_for_returns_value_once_ready() {
    let start = Instant::now();
    let v = wait_for(Duration::from_secs(5), "clock", || {
        if start.elapsed() > Duration::from_millis(300) {
            Ok(7)
        } else {
            Err("too early".into())
        }
    });
    assert_eq!(v, 7);
}

#[test]
#[should_panic(expected = "last seen: state 42")]
fn wait_for_reports_last_state_on_timeout() {
    wait_for::<()>(Duration::from_millis(300), "never", || {
        Err("state 42".into())
    });
}

#[test]
fn http_client_reads_length_and_chunked_responses() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let replies = [
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\": [1]}\n".to_owned(),
            "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                .to_owned(),
        ];
        let mut seen = Vec::new();
        for reply in replies {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            // Answer in two writes to exercise partial reads.
            let (a, b) = reply.split_at(reply.len() / 2);
            s.write_all(a.as_bytes()).unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b.as_bytes()).unwrap();
        }
        seen
    });
    let v = http::get_json(port, "/api/x").unwrap();
    assert_eq!(v["a"][0], 1);
    let (status, body) = http::post(port, "/api/repos/a/b/c/fetch", "").unwrap();
    assert_eq!((status, body.as_str()), (202, "{}"));
    let seen = server.join().unwrap();
    assert!(
        seen[0].starts_with("GET /api/x HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(seen[1].starts_with("POST /api/repos/a/b/c/fetch HTTP/1.1\r\n"));
}
