//! Indexes against real git repositories and directories (SPEC §3).

// Helpers outside `#[test]` functions may fail loudly too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::git;
use gitmirrord::index::{Delta, IndexError, IndexSettings, IndexSource, Indexes};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// A git repository to use as an index, with a work tree to commit from.
struct IndexRepo {
    dir: TempDir,
}

impl IndexRepo {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self) -> String {
        self.path().to_str().unwrap().to_owned()
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.path().join(rel)).unwrap();
        self
    }

    fn commit(&self) -> String {
        git(self.path(), &["add", "-A"]);
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", "update"],
        );
        git(self.path(), &["rev-parse", "HEAD"])
    }
}

fn source(name: &str, url: &str) -> IndexSource {
    IndexSource {
        name: name.into(),
        url: url.into(),
        branch: None,
        poll_interval: Duration::from_secs(60),
    }
}

fn settings(state: &Path, percent: f64) -> IndexSettings {
    IndexSettings {
        dir: state.join("index"),
        allow_file_urls: false,
        purge_protect_percent: percent,
        credentials: Default::default(),
    }
}

fn ids<'a>(entries: impl IntoIterator<Item = &'a gitmirrord::index::Entry>) -> Vec<&'a str> {
    entries.into_iter().map(|e| e.id.as_str()).collect()
}

fn reason(ix: &Indexes, index: &str, path: &str) -> String {
    let st = ix.status().into_iter().find(|s| s.name == index).unwrap();
    st.rejected
        .iter()
        .find(|r| r.path == path)
        .map(|r| r.reason.clone())
        .unwrap_or_else(|| panic!("{path} not rejected: {:?}", st.rejected))
}

fn url_entry(url: &str) -> String {
    format!("url: {url}\n")
}

// SPEC §3.1 (layout, DEFAULTS, url lists) and §3.2 (each rejection on its own).
#[test]
fn git_index_entries_defaults_and_rejections() {
    let repo = IndexRepo::new();
    repo.write("DEFAULTS", "submit: root\nowner: root\n")
        .write("a/DEFAULTS", "owner: a\n")
        .write("a/abc/DEFAULTS", "pkgbuild_repo: abc-pkg\n")
        .write(
            "a/abc/abc",
            url_entry("https://github.com/berkeley-abc/abc"),
        )
        .write(
            "a/abd/abd",
            "url:\n  - https://x.org/abd\n  - https://mirror.org/abd\nowner: me\n",
        )
        .write(
            "l/linux/linux-next",
            url_entry("git://git.kernel.org/linux-next.git"),
        )
        .write("README.md", "not an entry")
        .write("a/README", "not an entry")
        .write(".github/workflows/ci", "url: https://ignored")
        .write("a/.hidden/x", "url: https://ignored")
        .write("top", "url: https://ignored")
        .write("a/deeper/too/far", "url: https://ignored")
        .write(
            "a/big/big",
            format!("url: https://x.org/big\n#{}\n", "x".repeat(70 * 1024)),
        )
        .write("a/bin/bin", b"url: https://x.org/\xff\xfe\n")
        .write("a/yaml/yaml", "url: [unclosed\n")
        .write("a/ext/ext", "url: 'ext::sh -c touch% /tmp/pwned'\n")
        .write("a/fd/fd", "url: fd::3\n")
        .write("a/opt/opt", "url: -uhttps://x.org/x\n")
        .write("a/file/file", "url: file:///srv/git/x.git\n")
        .write("a/local/local", "url: /srv/git/x.git\n")
        .write("a/nourl/nourl", "submit: x\n")
        .write("a/num/num", "url: 42\n")
        .write("a/-dash/x", url_entry("https://x.org/x"))
        .write("a/abc/.dotfile", url_entry("https://x.org/x"))
        .write("a/sp ace/x", url_entry("https://x.org/x"));
    std::os::unix::fs::symlink("../abc/abc", repo.path().join("a/abc/link")).unwrap();
    let commit = repo.commit();

    let state = tempfile::tempdir().unwrap();
    let mut ix =
        Indexes::open(vec![source("up", &repo.url())], settings(state.path(), 5.0)).unwrap();
    let delta = ix.poll(false).unwrap();
    assert_eq!(
        ids(&delta.added),
        ["a/abc/abc", "a/abd/abd", "l/linux/linux-next"]
    );
    assert!(delta.removed.is_empty() && delta.changed.is_empty());

    let e = &ix.entry("a/abc/abc").unwrap();
    assert_eq!(e.url, "https://github.com/berkeley-abc/abc");
    assert_eq!(e.index, "up");
    assert_eq!(
        serde_json::Value::Object(e.metadata_map()),
        serde_json::json!({"submit": "root", "owner": "a", "pkgbuild_repo": "abc-pkg"})
    );
    let e = &ix.entry("a/abd/abd").unwrap();
    assert_eq!(e.url, "https://x.org/abd", "first url of the list");
    assert_eq!(
        serde_json::Value::Object(e.metadata_map()),
        serde_json::json!({"submit": "root", "owner": "me"})
    );

    assert_eq!(
        reason(&ix, "up", "a/abc/link"),
        "symbolic link (not followed)"
    );
    assert!(reason(&ix, "up", "a/big/big").contains("over the 65536-byte limit"));
    assert_eq!(reason(&ix, "up", "a/bin/bin"), "content is not UTF-8");
    assert!(reason(&ix, "up", "a/yaml/yaml").starts_with("YAML does not parse"));
    assert!(reason(&ix, "up", "a/ext/ext").contains("whitespace"));
    assert!(reason(&ix, "up", "a/fd/fd").contains("fd::"));
    assert!(reason(&ix, "up", "a/opt/opt").contains("starts with '-'"));
    assert!(reason(&ix, "up", "a/file/file").contains("allow_file_urls"));
    assert!(reason(&ix, "up", "a/local/local").contains("allow_file_urls"));
    assert_eq!(reason(&ix, "up", "a/nourl/nourl"), "missing url");
    assert_eq!(
        reason(&ix, "up", "a/num/num"),
        "url is not a string or a list"
    );
    assert!(reason(&ix, "up", "a/-dash/x").contains("starts with \"-\""));
    assert!(reason(&ix, "up", "a/abc/.dotfile").contains("starts with \".\""));
    assert!(reason(&ix, "up", "a/sp ace/x").contains("holds ' '"));

    let st = &ix.status()[0];
    assert_eq!(st.commit.as_deref(), Some(commit.as_str()));
    assert_eq!(st.entries, 3);
    assert_eq!(st.rejected.len(), 14, "{:?}", st.rejected);
    assert!(st.last_error.is_none() && st.held.is_none() && st.last_poll.is_some());

    // SPEC §3.3: no new commit, no work.
    assert_eq!(ix.poll(true).unwrap(), Delta::default());
}

// SPEC §3.2: a hostile tree (made with `git mktree`, which `git add` would refuse) holding
// an entry named `..`.
#[test]
fn crafted_tree_with_dotdot_entry() {
    let repo = IndexRepo::new();
    let p = repo.path();
    let blob = {
        let out = Command::new("git")
            .arg("-C")
            .arg(p)
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(b"url: https://x.org/x\n")?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mktree = |listing: String| {
        let mut c = Command::new("git")
            .arg("-C")
            .arg(p)
            .arg("mktree")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(listing.as_bytes())
            .unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    let leaf = mktree(format!("100644 blob {blob}\t..\n100644 blob {blob}\tok\n"));
    let mid = mktree(format!("040000 tree {leaf}\tabc\n"));
    let root = mktree(format!("040000 tree {mid}\ta\n"));
    let commit = git(p, &["commit-tree", "-m", "hostile", &root]);
    git(p, &["update-ref", "refs/heads/main", &commit]);

    let state = tempfile::tempdir().unwrap();
    let mut ix =
        Indexes::open(vec![source("up", &repo.url())], settings(state.path(), 5.0)).unwrap();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["a/abc/ok"]);
    assert_eq!(
        reason(&ix, "up", "a/abc/.."),
        "id component \"..\" is not allowed"
    );
}

// SPEC §3.3: a new commit gives exactly its delta: added, removed, re-pointed.
#[test]
fn new_commit_gives_its_delta() {
    let repo = IndexRepo::new();
    repo.write("a/one/one", url_entry("https://x.org/one"))
        .write("a/two/two", url_entry("https://x.org/two"))
        .write("a/three/three", url_entry("https://x.org/three"))
        .write("a/four/four", url_entry("https://x.org/four"));
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let mut ix = Indexes::open(
        vec![source("up", &repo.url())],
        settings(state.path(), 50.0),
    )
    .unwrap();
    assert_eq!(ix.poll(false).unwrap().added.len(), 4);

    repo.remove("a/two/two")
        .write("a/three/three", url_entry("https://y.org/three"))
        .write("a/four/four", "url: https://x.org/four\nsubmit: yes\n")
        .write("b/five/five", url_entry("https://x.org/five"));
    repo.commit();
    // Not due yet (poll_interval 60 s): nothing happens without `force`.
    assert_eq!(ix.poll(false).unwrap(), Delta::default());
    assert!(ix.next_poll_in() > Duration::from_secs(50));
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["b/five/five"]);
    assert_eq!(delta.removed, ["a/two/two"]);
    assert_eq!(ids(&delta.changed), ["a/four/four", "a/three/three"]);
    assert_eq!(delta.changed[1].url, "https://y.org/three");
    assert_eq!(ix.len(), 4);
}

// SPEC §3.1: a configured branch rather than the remote HEAD.
#[test]
fn configured_branch() {
    let repo = IndexRepo::new();
    repo.write("a/main/main", url_entry("https://x.org/main"));
    repo.commit();
    git(repo.path(), &["checkout", "-q", "-b", "other"]);
    repo.write("a/other/other", url_entry("https://x.org/other"));
    repo.commit();
    git(repo.path(), &["checkout", "-q", "main"]);

    let state = tempfile::tempdir().unwrap();
    let mut src = source("up", &repo.url());
    let mut ix = Indexes::open(vec![src.clone()], settings(state.path(), 5.0)).unwrap();
    assert_eq!(ids(&ix.poll(true).unwrap().added), ["a/main/main"]);
    src.branch = Some("other".into());
    ix.set_sources(vec![src]);
    assert_eq!(
        ix.next_poll_in(),
        Duration::ZERO,
        "a changed source is due at once"
    );
    assert_eq!(ids(&ix.poll(false).unwrap().added), ["a/other/other"]);
}

// SPEC §2.1/§3.3: a plain directory index is re-read each poll; only a change is work.
#[test]
fn plain_directory_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("a/abc")).unwrap();
    std::fs::create_dir_all(d.join(".git-not-really/x")).unwrap();
    std::fs::write(d.join("DEFAULTS"), "submit: yes\n").unwrap();
    std::fs::write(d.join("a/abc/abc"), url_entry("https://x.org/abc")).unwrap();
    std::fs::write(d.join("a/abc/big"), vec![b'#'; 70 * 1024]).unwrap();
    std::fs::write(d.join(".git-not-really/x/y"), url_entry("https://ignored")).unwrap();
    std::os::unix::fs::symlink("abc", d.join("a/abc/link")).unwrap();
    std::os::unix::fs::symlink("abc", d.join("a/linked-dir")).unwrap();

    let state = tempfile::tempdir().unwrap();
    let mut ix = Indexes::open(
        vec![source("local", d.to_str().unwrap())],
        settings(state.path(), 50.0),
    )
    .unwrap();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["a/abc/abc"]);
    assert_eq!(
        ix.entry("a/abc/abc").unwrap().metadata_map()["submit"],
        "yes"
    );
    assert_eq!(
        reason(&ix, "local", "a/abc/link"),
        "symbolic link (not followed)"
    );
    assert!(reason(&ix, "local", "a/abc/big").contains("over the"));
    let commit = ix.status()[0].commit.clone().unwrap();
    assert!(commit.starts_with("dir:"), "{commit}");

    assert_eq!(ix.poll(true).unwrap(), Delta::default());
    assert_eq!(ix.status()[0].commit.as_ref(), Some(&commit));

    std::fs::write(d.join("a/abc/abc"), url_entry("https://y.org/abc")).unwrap();
    std::fs::write(d.join("a/abc/new"), url_entry("https://x.org/new")).unwrap();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["a/abc/new"]);
    assert_eq!(ids(&delta.changed), ["a/abc/abc"]);
    assert_ne!(ix.status()[0].commit.as_ref(), Some(&commit));
    assert!(
        !state.path().join("index/local.git").exists(),
        "no clone of a plain directory"
    );
}

fn numbered_index(n: usize) -> IndexRepo {
    let repo = IndexRepo::new();
    for i in 0..n {
        repo.write(
            &format!("r/p{i}/p{i}"),
            url_entry(&format!("https://x.org/{i}")),
        );
    }
    repo.commit();
    repo
}

// SPEC §3.4: a large removal is held (additions and URL changes still apply), shown in
// status, survives a restart, follows newer commits, and is applied on accept.
#[test]
fn purge_protection_holds_and_accepts() {
    let repo = numbered_index(20);
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &repo.url())];
    let mut ix = Indexes::open(src.clone(), settings(state.path(), 5.0)).unwrap();
    assert_eq!(
        ix.poll(true).unwrap().added.len(),
        20,
        "the first load is not protected"
    );

    // Remove 10 of 20 (50 % > 5 %), add one, re-point one.
    for i in 0..10 {
        repo.remove(&format!("r/p{i}/p{i}"));
    }
    repo.write("r/new/new", url_entry("https://x.org/new"))
        .write("r/p15/p15", url_entry("https://y.org/15"));
    let c2 = repo.commit();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["r/new/new"]);
    assert_eq!(ids(&delta.changed), ["r/p15/p15"]);
    assert!(delta.removed.is_empty(), "removals held");
    assert_eq!(ix.len(), 21);
    let held = ix.status()[0].held.clone().unwrap();
    assert_eq!(
        (held.commit.as_deref(), held.removals, held.total),
        (Some(c2.as_str()), 10, 20)
    );
    assert_eq!(held.percent, 50.0);
    assert_eq!(
        ix.poll(true).unwrap(),
        Delta::default(),
        "held state is stable"
    );

    // A restart keeps the held update.
    drop(ix);
    let mut ix = Indexes::open(src, settings(state.path(), 5.0)).unwrap();
    assert_eq!(ix.len(), 21);
    assert_eq!(ix.status()[0].held.as_ref().map(|h| h.removals), Some(10));

    // A newer commit while held: recomputed against the applied set.
    repo.remove("r/p10/p10").remove("r/p11/p11");
    let c3 = repo.commit();
    assert_eq!(ix.poll(true).unwrap(), Delta::default());
    let held = ix.status()[0].held.clone().unwrap();
    assert_eq!(
        (held.commit.as_deref(), held.removals, held.total),
        (Some(c3.as_str()), 12, 21)
    );

    let delta = ix.accept("up").unwrap();
    let mut want: Vec<String> = (0..12).map(|i| format!("r/p{i}/p{i}")).collect();
    want.sort();
    assert_eq!(delta.removed, want);
    assert!(delta.added.is_empty() && delta.changed.is_empty());
    assert_eq!(ix.len(), 9);
    assert!(ix.status()[0].held.is_none());
    assert!(matches!(ix.accept("up"), Err(IndexError::NothingHeld(_))));
    assert!(matches!(ix.accept("nope"), Err(IndexError::Unknown(_))));

    // A small removal (1 of 9 is 11 %) with a higher limit goes straight through.
    let mut ix = Indexes::open(
        vec![source("up", &repo.url())],
        settings(state.path(), 20.0),
    )
    .unwrap();
    repo.remove("r/p12/p12");
    repo.commit();
    assert_eq!(ix.poll(true).unwrap().removed, ["r/p12/p12"]);
}

// SPEC §3.3, §10: a restart has the same entries before any poll, and an applied commit
// causes no delta.
#[test]
fn restart_loads_applied_state() {
    let repo = numbered_index(3);
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &repo.url())];
    let mut ix = Indexes::open(src.clone(), settings(state.path(), 5.0)).unwrap();
    ix.poll(true).unwrap();
    let before: Vec<_> = ix.entries().collect();
    assert_eq!(before.len(), 3);
    drop(ix);

    let mut ix = Indexes::open(src, settings(state.path(), 5.0)).unwrap();
    assert_eq!(ix.entries().collect::<Vec<_>>(), before);
    assert_eq!(
        ix.next_poll_in(),
        Duration::ZERO,
        "first poll after start is due at once"
    );
    assert_eq!(ix.poll(false).unwrap(), Delta::default());
}

// SPEC §10 / STYLE 4: a corrupt state file is an error naming the file and the way out.
#[test]
fn corrupt_state_is_loud() {
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), 5.0);
    std::fs::create_dir_all(&s.dir).unwrap();
    let file: PathBuf = s.dir.join("applied.json");
    std::fs::write(&file, "gitmirror-state index v1\n{\"indexes\": {\"up\": ").unwrap();
    let err = Indexes::open(vec![source("up", "/nonexistent")], s)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, IndexError::State(_)), "{msg}");
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("move it aside"),
        "{msg}"
    );
}

#[test]
fn index_names_must_be_file_names() {
    let state = tempfile::tempdir().unwrap();
    for bad in ["../x", ".hidden", "a b", ""] {
        let err = Indexes::open(vec![source(bad, "/x")], settings(state.path(), 5.0))
            .err()
            .unwrap();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let twice = vec![source("a", "/x"), source("a", "/y")];
    assert!(Indexes::open(twice, settings(state.path(), 5.0)).is_err());
}

// SPEC §3.3: a failing index keeps its last good entries and reports the error.
#[test]
fn poll_failure_keeps_entries() {
    let repo = numbered_index(2);
    let state = tempfile::tempdir().unwrap();
    let mut ix =
        Indexes::open(vec![source("up", &repo.url())], settings(state.path(), 5.0)).unwrap();
    ix.poll(true).unwrap();
    let url = repo.url();
    drop(repo);
    assert_eq!(ix.poll(true).unwrap(), Delta::default());
    assert_eq!(ix.len(), 2);
    let err = ix.status()[0].last_error.clone().unwrap();
    assert!(err.contains(&url) || err.contains("No such file"), "{err}");

    // A remote that does not exist fails the same way, with git's message.
    ix.set_sources(vec![source("up", "file:///nonexistent/index.git")]);
    assert_eq!(ix.poll(false).unwrap(), Delta::default());
    assert!(ix.status()[0].last_error.is_some());
    assert_eq!(ix.len(), 2);
}

// SPEC §3.1: a repo id in two indexes comes from the first listed; the other reports a
// conflict. Removing an index from the config removes its entries (purge protected).
#[test]
fn several_indexes_conflicts_and_removal() {
    let first = IndexRepo::new();
    first.write("a/abc/abc", url_entry("https://first.org/abc"));
    first.commit();
    let second = IndexRepo::new();
    second
        .write("a/abc/abc", url_entry("https://second.org/abc"))
        .write("b/bcd/bcd", url_entry("https://second.org/bcd"));
    second.commit();
    let state = tempfile::tempdir().unwrap();
    let sources = vec![
        source("first", &first.url()),
        source("second", &second.url()),
    ];
    let mut ix = Indexes::open(sources.clone(), settings(state.path(), 5.0)).unwrap();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["a/abc/abc", "b/bcd/bcd"]);
    assert_eq!(ix.entry("a/abc/abc").unwrap().url, "https://first.org/abc");
    assert_eq!(
        reason(&ix, "second", "a/abc/abc"),
        "conflict: id already provided by index first"
    );
    let st = ix.status();
    assert_eq!((st[0].entries, st[1].entries), (1, 1));

    // Drop the first index: its removal is held (100 % of it), but the configured index
    // now comes first and provides the shared id.
    ix.set_sources(vec![sources[1].clone()]);
    let delta = ix.poll(false).unwrap();
    assert!(delta.removed.is_empty() && delta.added.is_empty());
    assert_eq!(ids(&delta.changed), ["a/abc/abc"]);
    assert_eq!(ix.entry("a/abc/abc").unwrap().url, "https://second.org/abc");
    let st = ix.status();
    assert_eq!(st[1].name, "first");
    assert_eq!(st[1].held.as_ref().map(|h| h.removals), Some(1));
    assert_eq!(
        ix.poll(false).unwrap(),
        Delta::default(),
        "held state is stable"
    );
    assert_eq!(ix.accept("first").unwrap(), Delta::default());
    assert_eq!(ix.status().len(), 1);

    // Without protection, a dropped index's entries go at the next poll.
    let state = tempfile::tempdir().unwrap();
    let mut ix = Indexes::open(sources.clone(), settings(state.path(), 100.0)).unwrap();
    ix.poll(true).unwrap();
    ix.set_sources(vec![sources[0].clone()]);
    assert_eq!(ix.next_poll_in(), Duration::ZERO);
    let delta = ix.poll(false).unwrap();
    assert_eq!(delta.removed, ["b/bcd/bcd"]);
    assert_eq!(ix.status().len(), 1);
}

// SPEC §2.1: `allow_file_urls` admits file:// and absolute paths as repo URLs.
#[test]
fn file_urls_when_allowed() {
    let repo = IndexRepo::new();
    repo.write("a/f/f", "url: file:///srv/git/f.git\n")
        .write("a/p/p", "url: /srv/git/p.git\n");
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &format!("file://{}", repo.url()))];
    let mut ix = Indexes::open(src.clone(), settings(state.path(), 5.0)).unwrap();
    assert_eq!(ix.poll(true).unwrap(), Delta::default());
    assert_eq!(ix.status()[0].rejected.len(), 2);
    drop(ix);

    // Restarted with the setting on: the same commit is read again under the new rule.
    let mut s = settings(state.path(), 5.0);
    s.allow_file_urls = true;
    let mut ix = Indexes::open(src, s).unwrap();
    assert_eq!(ids(&ix.poll(true).unwrap().added), ["a/f/f", "a/p/p"]);
    assert!(ix.status()[0].rejected.is_empty());
}

// Issue 10: a coordinator upgraded from the release with the hand-written URL check reads
// the same index commit again under the new rules (layout version 2): an entry the old
// check accepted (`[a:b]/x`, a local path to gix) is removed and listed as rejected.
#[test]
fn issue10_upgrade_rereads_the_same_commit_under_the_new_url_rules() {
    let repo = IndexRepo::new();
    repo.write("a/abc/abc", "url: https://x.org/abc\n")
        .write("b/bad/bad", "url: '[a:b]/x'\n");
    let commit = repo.commit();
    let state = tempfile::tempdir().unwrap();
    let url = repo.url();
    // What the previous release left: the release-1 state file, `[a:b]/x` accepted.
    let entry =
        |id: &str, u: &str| serde_json::json!({"id": id, "url": u, "index": "up", "metadata": {}});
    let applied = serde_json::json!({"indexes": {"up": {"url": url, "commit": commit,
        "reader": "layout v1, allow_file_urls=false",
        "entries": {"a/abc/abc": entry("a/abc/abc", "https://x.org/abc"),
                    "b/bad/bad": entry("b/bad/bad", "[a:b]/x")},
        "rejected": [], "held": {"commit": null, "removals": [], "total": 0}}}});
    std::fs::create_dir_all(state.path().join("index")).unwrap();
    std::fs::write(
        state.path().join("index/applied.json"),
        format!("gitmirror-state index v1\n{applied}\n"),
    )
    .unwrap();
    let mut ix = Indexes::open(vec![source("up", &url)], settings(state.path(), 100.0)).unwrap();
    assert!(ix.entry("b/bad/bad").is_some(), "the old state loaded");
    let delta = ix.poll(true).unwrap();
    assert_eq!(delta.removed, ["b/bad/bad"]);
    assert!(ix.entry("b/bad/bad").is_none());
    assert!(ix.entry("a/abc/abc").is_some());
    assert!(reason(&ix, "up", "b/bad/bad").contains("allow_file_urls"));
}

// SPEC §3.3: an index repository owned by another user (e.g. root, while the coordinator
// runs as `gitmirror`) is still read; git would refuse it as "dubious ownership" unless told.
#[test]
fn index_owned_by_another_user_is_read() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to hand the index to another user");
        return;
    }
    let repo = numbered_index(3);
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(repo.path())
        .status()
        .unwrap();
    assert!(status.success());
    let state = tempfile::tempdir().unwrap();
    let mut ix =
        Indexes::open(vec![source("up", &repo.url())], settings(state.path(), 5.0)).unwrap();
    let delta = ix.poll(true).unwrap();
    let st = &ix.status()[0];
    assert_eq!(st.last_error, None);
    assert_eq!(delta.added.len(), 3, "{st:?}");
}

/// Check the applied state of the samples in `tests/data/index-v*`: two indexes, `up`
/// configured with a held removal, `old` dropped from the configuration with its removal held.
fn check_sample_state(ix: &Indexes) {
    let e = ix.entry("a/abc/abc").unwrap();
    assert_eq!(
        (e.url.as_str(), e.index.as_str()),
        ("https://x.org/abc", "up")
    );
    assert_eq!(
        serde_json::Value::Object(e.metadata_map()),
        serde_json::json!({"submit": "yes", "owner": ["a", "b"]})
    );
    assert!(ix.entry("a/abd/abd").unwrap().metadata_map().is_empty());
    assert_eq!(ix.entry("o/old/old").unwrap().index, "old");
    assert_eq!(ix.len(), 4);
    let all: Vec<_> = ix.entries().map(|e| (e.index, e.id)).collect();
    let want = [
        ("up", "a/abc/abc"),
        ("up", "a/abd/abd"),
        ("up", "b/bcd/bcd"),
        ("old", "o/old/old"),
    ];
    assert_eq!(
        all,
        want.map(|(i, id)| (i.to_owned(), id.to_owned())).to_vec()
    );
    let st = ix.status();
    assert_eq!(st[0].name, "up");
    assert_eq!(
        st[0].commit.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
    assert_eq!(reason(ix, "up", "a/bad/bad"), "missing url");
    assert_eq!(
        st[0].held.as_ref().map(|h| (h.removals, h.total)),
        Some((1, 3))
    );
    assert_eq!(
        reason(ix, "old", "a/abc/abc"),
        "conflict: id already provided by index up"
    );
    assert_eq!(st[1].held.as_ref().map(|h| h.removals), Some(2));
}

// SPEC §12: the applied state of release 1 (`applied.json`, JSON) migrates at start into
// `applied.state`, the old file kept beside as `applied.json.v1.bak`; nothing is lost.
#[test]
fn spec_12_applied_state_v1_migrates() {
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), 5.0);
    std::fs::create_dir_all(&s.dir).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/index-v1/applied.json");
    std::fs::copy(&sample, s.dir.join("applied.json")).unwrap();
    let src = vec![source("up", "/nonexistent")];

    let ix = Indexes::open(src.clone(), settings(state.path(), 5.0)).unwrap();
    check_sample_state(&ix);
    assert!(!s.dir.join("applied.json").exists());
    assert_eq!(
        std::fs::read(s.dir.join("applied.json.v1.bak")).unwrap(),
        std::fs::read(&sample).unwrap()
    );
    let v2 = s.dir.join("applied.state");
    assert!(v2.is_file());
    if std::env::var_os("BLESS_INDEX_V2").is_some() {
        let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/index-v2/applied.state");
        std::fs::copy(&v2, to).unwrap();
    }
    drop(ix);
    // Started again: the migrated file is read, the kept one left alone.
    let ix = Indexes::open(src, settings(state.path(), 5.0)).unwrap();
    check_sample_state(&ix);
    assert!(s.dir.join("applied.json.v1.bak").is_file());
}

// SPEC §10, §12: the checked-in sample of format v2 still loads.
#[test]
fn spec_12_applied_state_v2_sample_loads() {
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), 5.0);
    std::fs::create_dir_all(&s.dir).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/index-v2/applied.state");
    std::fs::copy(&sample, s.dir.join("applied.state")).unwrap();
    let ix = Indexes::open(vec![source("up", "/nonexistent")], s.clone()).unwrap();
    check_sample_state(&ix);
    drop(ix);
    // SPEC §12: migrated to v3 (compressed) at that start, the v2 file kept beside.
    let file = s.dir.join("applied.state");
    assert!(
        std::fs::read(&file)
            .unwrap()
            .starts_with(b"gitmirror-state index v3\n")
    );
    assert_eq!(
        std::fs::read(s.dir.join("applied.state.v2.bak")).unwrap(),
        std::fs::read(&sample).unwrap()
    );
    if std::env::var_os("GITMIRROR_WRITE_INDEX_V3_SAMPLE").is_some() {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/index-v3");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(&file, out.join("applied.state")).unwrap();
    }
    let ix = Indexes::open(vec![source("up", "/nonexistent")], s).unwrap();
    check_sample_state(&ix);
}

// SPEC §12: the applied state this release writes (format v3, checked in) loads.
#[test]
fn spec_12_applied_state_v3_sample_loads() {
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), 5.0);
    std::fs::create_dir_all(&s.dir).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/index-v3/applied.state");
    std::fs::copy(sample, s.dir.join("applied.state")).unwrap();
    let ix = Indexes::open(vec![source("up", "/nonexistent")], s.clone()).unwrap();
    check_sample_state(&ix);
    assert!(!s.dir.join("applied.state.v2.bak").exists());
}

// SPEC §10, state dir as a trust boundary: a compressed state whose checksum holds but
// whose declared size is past what its bytes can expand to is refused by name, without
// the allocation.
#[test]
fn spec_10_applied_state_with_a_forged_size_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let s = settings(state.path(), 5.0);
    std::fs::create_dir_all(&s.dir).unwrap();
    let mut body = u32::MAX.to_le_bytes().to_vec();
    body.extend_from_slice(&[0x10, b'x']);
    let mut bytes = b"gitmirror-state index v3\n".to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let file = s.dir.join("applied.state");
    std::fs::write(&file, &bytes).unwrap();
    let msg = Indexes::open(vec![source("up", "/nonexistent")], s)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("of LZ4 can hold"),
        "{msg}"
    );
}

// SPEC §10: a damaged `applied.state` (a flipped byte, a cut) stops the start naming the
// file and the way out, and is left as it is.
#[test]
fn spec_10_damaged_applied_state_is_loud() {
    let repo = numbered_index(3);
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &repo.url())];
    let mut ix = Indexes::open(src.clone(), settings(state.path(), 5.0)).unwrap();
    ix.poll(true).unwrap();
    drop(ix);
    let file = settings(state.path(), 5.0).dir.join("applied.state");
    let good = std::fs::read(&file).unwrap();
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x40;
    for bad in [flipped, good[..mid].to_vec(), b"\x00\x01garbage".to_vec()] {
        std::fs::write(&file, &bad).unwrap();
        let err = Indexes::open(src.clone(), settings(state.path(), 5.0))
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains(&file.display().to_string()) && msg.contains("move it aside"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), bad);
    }
}

/// Everything a reader of `ix` sees of index `name`: entries and rejections.
fn view(ix: &Indexes, name: &str) -> (Vec<gitmirrord::index::Entry>, Vec<(String, String)>) {
    let st = ix.status().into_iter().find(|s| s.name == name).unwrap();
    let rejected = st
        .rejected
        .into_iter()
        .map(|r| (r.path, r.reason))
        .collect();
    (ix.entries().collect(), rejected)
}

// SPEC §3.3: a new commit is read from what changed since the applied one (`git
// diff-tree`), and gives exactly what a fresh read of that commit gives: entries added,
// changed, removed, made bad and made good again, a symbolic link, a changed DEFAULTS
// (which makes it read whole).
#[test]
fn spec_3_3_changed_files_read_like_whole_commit() {
    let repo = IndexRepo::new();
    for i in 0..30 {
        repo.write(
            &format!("a/p{i}/p{i}"),
            url_entry(&format!("https://x.org/{i}")),
        );
    }
    repo.write("DEFAULTS", "submit: root\n")
        .write("a/bad/bad", "url: []\n");
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &repo.url())];
    let mut ix = Indexes::open(src.clone(), settings(state.path(), 50.0)).unwrap();
    ix.poll(true).unwrap();

    type Step = fn(&IndexRepo);
    let steps: [Step; 4] = [
        |r| {
            r.remove("a/p1/p1")
                .write("a/p2/p2", url_entry("https://y.org/2"))
                .write("a/p3/p3", "url: [\n")
                .write("a/bad/bad", url_entry("https://x.org/good-now"))
                .write("b/new/new", "url: https://x.org/new\nowner: me\n");
        },
        |r| {
            r.remove("a/p4/p4");
            std::os::unix::fs::symlink("../p5/p5", r.path().join("a/p4/p4")).unwrap();
            r.write("a/p3/p3", url_entry("https://x.org/3-again"));
        },
        |r| {
            r.write("a/DEFAULTS", "submit: a\n").remove("a/p6/p6");
        },
        |r| {
            r.write("a/p7/p7", url_entry("-x"));
        },
    ];
    for (n, step) in steps.iter().enumerate() {
        step(&repo);
        repo.commit();
        let delta = ix.poll(true).unwrap();
        assert!(!delta.is_empty(), "step {n}");
        let fresh_state = tempfile::tempdir().unwrap();
        let mut fresh = Indexes::open(src.clone(), settings(fresh_state.path(), 50.0)).unwrap();
        fresh.poll(true).unwrap();
        assert_eq!(view(&ix, "up"), view(&fresh, "up"), "step {n}");
    }
    assert!(reason(&ix, "up", "a/p7/p7").contains("starts with '-'"));
    assert_eq!(reason(&ix, "up", "a/p4/p4"), "symbolic link (not followed)");
    assert_eq!(ix.entry("a/p2/p2").unwrap().metadata_map()["submit"], "a");
    assert_eq!(
        ix.entry("b/new/new").unwrap().metadata_map()["submit"],
        "root"
    );
}

// SPEC §3.3: the clone of a local git index borrows the source's objects rather than
// copying them (a 1M-entry index is 1.5M objects), and still reads every new commit.
#[test]
fn spec_3_3_local_index_clone_borrows_objects() {
    let repo = IndexRepo::new();
    repo.write("a/abc/abc", url_entry("https://x.org/abc"));
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &repo.url())];
    let mut ix = Indexes::open(src, settings(state.path(), 50.0)).unwrap();
    assert_eq!(ids(&ix.poll(true).unwrap().added), ["a/abc/abc"]);
    let clone = state.path().join("index/up.git");
    let alternates = std::fs::read_to_string(clone.join("objects/info/alternates")).unwrap();
    let source_objects = std::fs::canonicalize(repo.path().join(".git/objects")).unwrap();
    assert_eq!(alternates.trim_end(), source_objects.to_str().unwrap());
    let own = Command::new("git")
        .arg("--git-dir")
        .arg(&clone)
        .args(["count-objects", "-v"])
        .output()
        .unwrap();
    let own = String::from_utf8(own.stdout).unwrap();
    assert!(
        own.contains("count: 0") && own.contains("in-pack: 0"),
        "{own}"
    );

    repo.write("b/bcd/bcd", url_entry("https://x.org/bcd"));
    repo.commit();
    assert_eq!(ids(&ix.poll(true).unwrap().added), ["b/bcd/bcd"]);
}

// SPEC §3.3: a local index whose history is rewritten and pruned (the objects the clone's
// ref named are gone) is still read.
#[test]
fn spec_3_3_local_index_rewritten_and_pruned() {
    let repo = IndexRepo::new();
    repo.write("a/abc/abc", url_entry("https://x.org/abc"));
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let src = vec![source("up", &repo.url())];
    let mut ix = Indexes::open(src, settings(state.path(), 50.0)).unwrap();
    ix.poll(true).unwrap();

    git(repo.path(), &["checkout", "-q", "--orphan", "other"]);
    repo.write("a/abc/abc", url_entry("https://y.org/abc"));
    repo.commit();
    git(repo.path(), &["branch", "-q", "-M", "main"]);
    git(repo.path(), &["reflog", "expire", "--expire=now", "--all"]);
    git(repo.path(), &["gc", "-q", "--prune=now"]);
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.changed), ["a/abc/abc"]);
    assert_eq!(ix.entry("a/abc/abc").unwrap().url, "https://y.org/abc");
    assert_eq!(ix.status()[0].last_error, None);
}

// SPEC §3.2: an entry file past the limit is rejected by its size. One past the reader's
// decoding limit (16 MiB, a few KiB once compressed) is judged by its object header rather
// than inflated whole, first on a whole read and then on a read of the changed files.
#[test]
fn spec_3_2_blob_past_the_decode_limit_is_rejected_by_its_size() {
    let repo = IndexRepo::new();
    let huge = vec![b'#'; 20 << 20];
    repo.write("a/abc/abc", url_entry("https://x.org/abc"))
        .write("a/huge/huge", &huge);
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let mut ix = Indexes::open(
        vec![source("up", &repo.url())],
        settings(state.path(), 50.0),
    )
    .unwrap();
    let delta = ix.poll(false).unwrap();
    assert_eq!(ids(&delta.added), ["a/abc/abc"]);
    let why = reason(&ix, "up", "a/huge/huge");
    assert!(
        why.contains("20971520 bytes, over the 65536-byte limit"),
        "{why}"
    );
    assert_eq!(ix.status()[0].last_error, None);

    repo.write("a/huge2/huge2", [huge.as_slice(), b"more"].concat())
        .write("a/abd/abd", url_entry("https://x.org/abd"));
    repo.commit();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["a/abd/abd"]);
    let why = reason(&ix, "up", "a/huge2/huge2");
    assert!(
        why.contains("20971524 bytes, over the 65536-byte limit"),
        "{why}"
    );
    assert_eq!(ix.status()[0].last_error, None);
}

// SPEC §10, §12: the index state is saved beside the delta's computation; a save that
// fails gives no delta and leaves the indexes as they were, and the next poll gives the
// whole change.
#[test]
fn spec_12_failed_index_state_save_leaves_the_indexes_as_they_were() {
    let repo = IndexRepo::new();
    repo.write("a/one/one", url_entry("https://x.org/one"))
        .write("a/two/two", url_entry("https://x.org/two"));
    repo.commit();
    let state = tempfile::tempdir().unwrap();
    let mut ix = Indexes::open(
        vec![source("up", &repo.url())],
        settings(state.path(), 60.0),
    )
    .unwrap();
    assert_eq!(ix.poll(false).unwrap().added.len(), 2);
    let before: Vec<_> = ix.entries().collect();

    repo.remove("a/two/two")
        .write("a/one/one", url_entry("https://y.org/one"))
        .write("b/three/three", url_entry("https://x.org/three"))
        .write("b/four/four", url_entry("https://x.org/four"));
    repo.commit();
    // The state file's place taken by a non-empty directory: the rename over it fails
    // (as root, permissions would not).
    let file = state.path().join("index/applied.state");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("x"), "x").unwrap();
    assert!(ix.poll(true).is_err());
    assert_eq!(ix.entries().collect::<Vec<_>>(), before);
    assert_eq!(ix.len(), 2);

    std::fs::remove_dir_all(&file).unwrap();
    let delta = ix.poll(true).unwrap();
    assert_eq!(ids(&delta.added), ["b/four/four", "b/three/three"]);
    assert_eq!(delta.removed, ["a/two/two"]);
    assert_eq!(ids(&delta.changed), ["a/one/one"]);
    assert_eq!(ix.len(), 3);
}

// SPEC §3.3, §12: trees and blobs read straight from the packs (looked up in object id
// order, gix's object store for what is not in a pack) give what loose objects give: an
// index whose objects are all packed, then a commit whose new objects are loose beside the
// pack, then everything repacked, each read fresh and compared with the same files kept
// loose.
#[test]
fn spec_12_packed_and_loose_objects_read_alike() {
    let (packed, loose) = (IndexRepo::new(), IndexRepo::new());
    let huge = vec![b'#'; 20 << 20];
    for r in [&packed, &loose] {
        for i in 0..60 {
            r.write(
                &format!("{}/p{i}/p{i}", ["a", "b", "c"][i % 3]),
                url_entry(&format!("https://x.org/{i}")),
            );
        }
        r.write("DEFAULTS", "submit: root\n")
            .write("b/DEFAULTS", "submit: b\n")
            .write("c/.hidden/x", url_entry("https://ignored"))
            .write("a/huge/huge", &huge)
            .write("a/bad/bad", "url: [\n");
        r.commit();
    }
    git(packed.path(), &["repack", "-adq"]);
    let read = |r: &IndexRepo| {
        let state = tempfile::tempdir().unwrap();
        let mut ix =
            Indexes::open(vec![source("up", &r.url())], settings(state.path(), 50.0)).unwrap();
        ix.poll(true).unwrap();
        assert_eq!(ix.status()[0].last_error, None);
        view(&ix, "up")
    };
    let count = |r: &IndexRepo| {
        let out = Command::new("git")
            .arg("-C")
            .arg(r.path())
            .args(["count-objects", "-v"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(count(&packed).contains("count: 0"), "{}", count(&packed));
    let first = read(&packed);
    assert_eq!(first.0.len(), 60);
    assert!(
        first
            .1
            .iter()
            .any(|(p, why)| p == "a/huge/huge" && why.contains("bytes, over"))
    );
    assert_eq!(first, read(&loose));

    for r in [&packed, &loose] {
        r.remove("a/p0/p0")
            .write("b/p1/p1", url_entry("https://y.org/1"))
            .write("d/new/new", url_entry("https://x.org/new"))
            .write("c/DEFAULTS", "submit: c\n");
        r.commit();
    }
    assert!(
        !count(&packed).contains("count: 0"),
        "loose objects beside the pack"
    );
    let second = read(&packed);
    assert_ne!(first, second);
    assert_eq!(second, read(&loose));

    git(packed.path(), &["repack", "-adq"]);
    assert_eq!(read(&packed), second);
}
