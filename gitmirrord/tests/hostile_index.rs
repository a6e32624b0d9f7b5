//! Hostile indexes (SPEC §3.1–3.4): arbitrary file trees and contents, read both as a
//! plain directory and as a committed git repository; named hostile entries (git's `ext::`
//! and `fd::` transports, option injection, `..` and absolute paths, a symbolic link out
//! of the index, a 10 MB entry, binary content, an id in two indexes); and an index commit
//! that deletes 90 % of the entries, held by purge protection at the coordinator so that
//! no worker is told to drop anything until it is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use common::git;
use gitmirror_wire::DropReason;
use gitmirrord::index::validate::{repo_id, repo_url};
use gitmirrord::index::{Entry, IndexSettings, IndexSource, Indexes, Rejected};
use hostile::figure;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SUITE: &str = "hostile_index";
/// What the file outside every index holds; it must never show up in what is read.
const SECRET: &str = "url: https://leaked.example/SECRET-7c1e9b\n";
const SECRET_MARK: &str = "SECRET-7c1e9b";

fn git_stdin(dir: &Path, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn source(name: &str, url: &Path) -> IndexSource {
    IndexSource {
        name: name.into(),
        url: url.to_str().unwrap().into(),
        branch: None,
        poll_interval: Duration::from_secs(60),
    }
}

fn settings(state: &Path) -> IndexSettings {
    IndexSettings {
        dir: state.join("index"),
        allow_file_urls: false,
        purge_protect_percent: 5.0,
        credentials: Default::default(),
    }
}

/// A scratch directory, on tmpfs when there is one: the index state is written with
/// fsync, which on a loaded disk would dominate hundreds of cases.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// Read `root` (a plain directory or a git repository) as the one index `up`.
fn read(root: &Path) -> (BTreeMap<String, Entry>, Vec<Rejected>, String) {
    let state = scratch();
    let mut ix = Indexes::open(vec![source("up", root)], settings(state.path())).unwrap();
    ix.poll(true).unwrap();
    let status = ix.status();
    assert_eq!(status[0].last_error, None, "{root:?}");
    let text = serde_json::to_string(&status).unwrap();
    let entries: BTreeMap<String, Entry> = ix.entries().map(|e| (e.id.clone(), e)).collect();
    let text = text + &serde_json::to_string(&entries).unwrap();
    (entries, status[0].rejected.clone(), text)
}

/// Independent checks on an accepted entry: its id is its path and a valid id, its URL
/// could not make git run a command or read an option, and nothing came from outside.
fn check_accepted(e: &Entry) -> Result<(), String> {
    repo_id(&e.id)?;
    repo_url(&e.url, false)?;
    let parts: Vec<&str> = e.id.split('/').collect();
    if parts.len() != 3 {
        return Err(format!("{}: not three components", e.id));
    }
    for p in &parts {
        if p.is_empty() || p.starts_with(['.', '-']) {
            return Err(format!("{}: component {p:?}", e.id));
        }
    }
    let lower = e.url.to_ascii_lowercase();
    if lower.contains("ext::") || lower.contains("fd::") || e.url.starts_with('-') {
        return Err(format!("{}: url {:?}", e.id, e.url));
    }
    if e.url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{}: url {:?}", e.id, e.url));
    }
    // The oracle is gix's own reading of the URL (issue 10 finding 3: a hand-written scp
    // rule here once agreed with a hand-written validator that gix disagreed with).
    gix_agrees(&e.url).map_err(|m| format!("{}: {m}", e.id))?;
    if e.url.contains(SECRET_MARK) {
        return Err(format!("{}: content from outside the index", e.id));
    }
    Ok(())
}

/// What gix makes of an accepted URL: a network scheme, with the scheme, host and path
/// the validator reported, and the same again when gix's rendering of it is parsed (so
/// what a worker writes into `remote.origin.url` and reads back is what was validated).
fn gix_agrees(url: &str) -> Result<(), String> {
    let reported = repo_url(url, false)?;
    let parsed =
        gix::url::parse(url.as_bytes()).map_err(|e| format!("gix refuses {url:?}: {e}"))?;
    let parts = |u: &gix::Url| {
        (
            u.scheme.clone(),
            u.host().map(str::to_owned),
            u.path.clone(),
        )
    };
    let ours = (
        reported.url.scheme.clone(),
        reported.host().map(str::to_owned),
        gix::bstr::BString::from(reported.path()),
    );
    if parts(&parsed) != ours {
        return Err(format!(
            "{url:?}: gix reads {:?}, the validator {ours:?}",
            parts(&parsed)
        ));
    }
    use gix::url::Scheme::*;
    if !matches!(parsed.scheme, Https | Http | Git | Ssh) {
        return Err(format!(
            "{url:?}: scheme {:?} with file urls off",
            parsed.scheme
        ));
    }
    let rendered = parsed.to_bstring();
    let again = gix::url::parse(rendered.as_slice())
        .map_err(|e| format!("{url:?}: gix cannot re-read its rendering {rendered:?}: {e}"))?;
    if parts(&again) != parts(&parsed) {
        return Err(format!(
            "{url:?}: rendered as {rendered:?}, which gix reads as {:?}",
            parts(&again)
        ));
    }
    let rendered = rendered.to_string();
    let again = repo_url(&rendered, false)
        .map_err(|e| format!("{url:?}: its rendering {rendered:?} is refused: {e}"))?;
    if again.url.scheme != parsed.scheme || again.host() != parsed.host() {
        return Err(format!(
            "{url:?}: its rendering {rendered:?} reads differently"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Arbitrary trees.

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    /// A symbolic link to the secret file outside the index (absolute or relative).
    LinkOut(bool),
    /// A symbolic link to another path of the index.
    LinkIn(String),
}

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        40 => "[a-z]{1,5}".prop_map(String::into_bytes),
        1 => Just(b"DEFAULTS".to_vec()),
        1 => Just(b"README.md".to_vec()),
        1 => Just(b"README".to_vec()),
        1 => "\\.[a-z]{0,4}".prop_map(String::into_bytes),
        1 => "-[a-z\\-]{0,4}".prop_map(String::into_bytes),
        1 => "[a-z]{1,3} [a-z]{1,3}".prop_map(String::into_bytes),
        1 => "[A-Za-z0-9._+\\-]{1,12}".prop_map(String::into_bytes),
        1 => "[^/\\x00\\n]{1,8}".prop_map(String::into_bytes),
        1 => Just("x".repeat(120).into_bytes()),
        1 => Just(vec![b'a', 0xff, 0xfe]),
        1 => Just("ä".as_bytes().to_vec()),
        1 => Just(b"a:b".to_vec()),
        1 => Just(b"a\\b".to_vec()),
    ]
}

/// URLs an index might hold, hostile ones weighted up.
fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "https://[a-z]{1,8}\\.org/[a-z]{1,8}\\.git",
        1 => "git@[a-z]{1,6}\\.com:[a-z]{1,6}/[a-z]{1,6}\\.git",
        1 => "(git|ssh|http)://[a-z]{1,6}/[a-z]{1,6}",
        1 => Just("ext::sh -c touch% /tmp/pwned".to_owned()),
        1 => Just("ext::sh%20-c%20id".to_owned()),
        1 => Just("EXT::x".to_owned()),
        1 => Just("fd::3".to_owned()),
        1 => Just("https://x.org/ext::y".to_owned()),
        1 => Just("-uhttps://x.org/x".to_owned()),
        1 => Just("--upload-pack=touch /tmp/x".to_owned()),
        1 => Just("--upload-pack=id".to_owned()),
        1 => Just("ssh://-oProxyCommand=id/x".to_owned()),
        1 => Just("-oProxyCommand=id:x".to_owned()),
        1 => Just("testgit::https://x/y".to_owned()),
        1 => Just("file:///etc/passwd".to_owned()),
        1 => Just("/etc/passwd".to_owned()),
        1 => Just("../../x.git".to_owned()),
        1 => Just("ftp://x.org/y".to_owned()),
        1 => Just("https://x.org/a\tb".to_owned()),
        1 => Just("https://x.org/a\u{0}b".to_owned()),
        1 => Just("https://x.org/a\u{1b}[2J".to_owned()),
        1 => Just("https:///x".to_owned()),
        1 => Just("[a:b]/x".to_owned()),
        1 => Just("http://10.0.0.5/admin?x=1#".to_owned()),
        1 => Just("[-oProxyCommand=x]:p".to_owned()),
        1 => Just("ssh://-oX@host/p".to_owned()),
        1 => Just("https://user:pw@x.org/y".to_owned()),
        1 => "\\[[a-z:\\-]{1,6}\\][:/][a-z/]{0,6}",
        2 => ".{0,24}",
    ]
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    let yaml = prop_oneof![
        4 => url().prop_map(|u| format!("url: {}\n", serde_json::to_string(&u).unwrap())),
        1 => (url(), url()).prop_map(|(a, b)| format!(
            "url:\n  - {}\n  - {}\nsubmit: yes\n",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        )),
        1 => url().prop_map(|u| format!("url: {u}\n")),
        1 => Just("url: 42\n".to_owned()),
        1 => Just("url: []\n".to_owned()),
        1 => Just("url: {a: 1}\n".to_owned()),
        1 => Just("submit: only\n".to_owned()),
        1 => Just(String::new()),
        1 => Just("just text\n".to_owned()),
        1 => Just("url: [unclosed\n".to_owned()),
        1 => Just("a: &a [x, x]\nb: &b [*a, *a]\nurl: https://x.org/y\n".to_owned()),
        1 => Just("url: !tag https://x.org/y\n".to_owned()),
        1 => Just("? [a]\n: 1\nurl: https://x.org/y\n".to_owned()),
        1 => ".{0,64}",
    ];
    prop_oneof![
        8 => yaml.prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..2).prop_map(|k| {
            // Just below and just above the 64 KiB limit.
            let mut v = b"url: https://x.org/big\n#".to_vec();
            v.resize(64 * 1024 - 1 + 2 * k, b'x');
            v
        }),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        10 => content().prop_map(Node::File),
        1 => any::<bool>().prop_map(Node::LinkOut),
        1 => "[a-z]{1,3}(/[a-z]{1,3}){0,2}".prop_map(Node::LinkIn),
    ]
}

fn tree() -> impl Strategy<Value = Vec<(Vec<Vec<u8>>, Node)>> {
    proptest::collection::vec(
        (
            prop_oneof![
                1 => proptest::collection::vec(component(), 1..=2),
                4 => proptest::collection::vec(component(), 3),
                1 => proptest::collection::vec(component(), 4),
            ],
            node(),
        ),
        0..24,
    )
}

/// Write `tree` under `root`; returns the relative paths written (as bytes). Paths the
/// file system cannot hold (`.`/`..`, a file where a directory is needed, repeats) are
/// left out.
fn write_tree(root: &Path, secret: &Path, tree: &[(Vec<Vec<u8>>, Node)]) -> Vec<Vec<u8>> {
    let mut written = Vec::new();
    for (parts, node) in tree {
        if parts
            .iter()
            .any(|p| p.is_empty() || p == b"." || p == b".." || p == b".git")
        {
            continue;
        }
        let rel: PathBuf = parts.iter().map(|p| OsStr::from_bytes(p)).collect();
        let full = root.join(&rel);
        if std::fs::symlink_metadata(&full).is_ok() {
            continue;
        }
        // Never through a link: a file written below a linked directory lands at the
        // link's target, a path the tree does not name (the reader rightly judged a
        // `u/a/-` written as `a:b/a/-` with `a:b` → `u`).
        let mut dir = root.to_path_buf();
        let through_link = parts[..parts.len() - 1].iter().any(|p| {
            dir.push(OsStr::from_bytes(p));
            std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink())
        });
        if through_link {
            continue;
        }
        if let Some(parent) = full.parent()
            && std::fs::create_dir_all(parent).is_err()
        {
            continue;
        }
        let ok = match node {
            Node::File(bytes) => std::fs::write(&full, bytes).is_ok(),
            Node::LinkOut(absolute) => {
                let target = if *absolute {
                    secret.to_owned()
                } else {
                    // Up from the file's directory to the root, then out of it.
                    let ups = "../".repeat(parts.len() - 1);
                    PathBuf::from(format!("{ups}../outside/secret"))
                };
                std::os::unix::fs::symlink(target, &full).is_ok()
            }
            Node::LinkIn(target) => std::os::unix::fs::symlink(target, &full).is_ok(),
        };
        if ok {
            written.push(parts.join(&b'/'));
        }
    }
    written
}

/// The files that the layout makes entries (SPEC §3.1): exactly three components, no
/// dot-directory above, not `README*`, not `DEFAULTS`.
fn entry_paths(root: &Path, written: &[Vec<u8>]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut entries = BTreeSet::new();
    let mut defaults = BTreeSet::new();
    for p in written {
        let parts: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
        // A directory in the tree may have been replaced by nothing (a write that failed
        // halfway): only what exists, and is not a directory, counts.
        let full = root.join(OsStr::from_bytes(p));
        match std::fs::symlink_metadata(&full) {
            Ok(m) if !m.is_dir() => {}
            _ => continue,
        }
        let (name, dirs) = parts.split_last().unwrap();
        if dirs.iter().any(|d| d.starts_with(b".")) || name.starts_with(b"README") {
            continue;
        }
        let shown = String::from_utf8_lossy(p).into_owned();
        if *name == b"DEFAULTS" {
            if parts.len() <= 3 {
                defaults.insert(shown);
            }
        } else if parts.len() == 3 {
            entries.insert(shown);
        }
    }
    (entries, defaults)
}

/// What the arbitrary trees were judged, summed over all cases (for the figures).
#[derive(Default)]
struct Tally {
    cases: usize,
    git_cases: usize,
    files: usize,
    entry_files: usize,
    accepted: usize,
    rejected: usize,
    reasons: BTreeMap<String, usize>,
}

static TALLY: Mutex<Option<Tally>> = Mutex::new(None);

/// The first words of a reason, as a class for the figures.
fn reason_class(reason: &str) -> String {
    // Leave out what is quoted (names, characters) and numbers: what remains is the rule.
    let mut quote = None;
    let outside: String = reason
        .chars()
        .filter(|&c| match quote {
            Some(q) if c == q => {
                quote = None;
                false
            }
            Some(_) => false,
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                false
            }
            None => true,
        })
        .collect();
    let words: Vec<String> = outside
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .take(3)
        .map(str::to_ascii_lowercase)
        .collect();
    words.join("_")
}

fn check_tree(tree: Vec<(Vec<Vec<u8>>, Node)>, with_git: bool) -> Result<(), TestCaseError> {
    let base = scratch();
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let plain = base.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let written = write_tree(&plain, &secret, &tree);
    let (want_entries, defaults) = entry_paths(&plain, &written);

    let (entries, rejected, text) = read(&plain);
    prop_assert!(!text.contains(SECRET_MARK), "the secret leaked: {}", text);
    for e in entries.values() {
        prop_assert!(check_accepted(e).is_ok(), "{:?}", check_accepted(e));
        prop_assert!(
            want_entries.contains(&e.id),
            "{} is not an entry file",
            e.id
        );
    }
    for r in &rejected {
        prop_assert!(!r.reason.is_empty(), "{:?}", r);
        prop_assert!(
            want_entries.contains(&r.path) || defaults.contains(&r.path),
            "rejected {:?} is not an entry or DEFAULTS file",
            r
        );
        prop_assert!(!entries.contains_key(&r.path), "{} both", r.path);
    }
    // Every entry file is judged: accepted, or rejected with a reason.
    let judged: BTreeSet<&String> = entries
        .keys()
        .chain(rejected.iter().map(|r| &r.path))
        .collect();
    for p in &want_entries {
        prop_assert!(judged.contains(p), "{} neither accepted nor rejected", p);
    }

    if with_git {
        // The same tree committed to a git repository reads the same.
        let repo = base.path().join("git");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        write_tree(&repo, &secret, &tree);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "t"]);
        let (g_entries, g_rejected, g_text) = read(&repo);
        prop_assert!(
            !g_text.contains(SECRET_MARK),
            "the secret leaked: {}",
            g_text
        );
        prop_assert_eq!(&g_entries, &entries);
        let set = |r: &[Rejected]| -> BTreeSet<(String, String)> {
            r.iter()
                .map(|r| (r.path.clone(), r.reason.clone()))
                .collect()
        };
        prop_assert_eq!(set(&g_rejected), set(&rejected));
    }

    let mut tally = TALLY.lock().unwrap();
    let t = tally.get_or_insert_with(Tally::default);
    t.cases += 1;
    t.git_cases += usize::from(with_git);
    t.files += written.len();
    t.entry_files += want_entries.len();
    t.accepted += entries.len();
    t.rejected += rejected.len();
    for r in &rejected {
        *t.reasons.entry(reason_class(&r.reason)).or_default() += 1;
    }
    Ok(())
}

/// SPEC §3.1, §3.2: arbitrary trees of files, directories and symbolic links, with
/// arbitrary names and contents (hostile URLs weighted up), read as a plain-directory
/// index and — for a quarter of the cases — committed to a git repository and read from
/// there. Nothing panics; every entry file is either accepted with a valid id and URL or
/// rejected with a reason; nothing else is; a file outside the index reached by a
/// symbolic link never shows; git and the plain directory agree.
/// `PROPTEST_CASES` raises the case count (default 256).
#[test]
fn arbitrary_trees_are_judged_entry_by_entry() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let t = Instant::now();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(tree(), 0u8..4), |(tree, g)| check_tree(tree, g == 0))
        .unwrap();
    let tally = TALLY.lock().unwrap().take().unwrap_or_default();
    figure(SUITE, "arbitrary_tree_cases", tally.cases);
    figure(SUITE, "arbitrary_tree_cases_also_in_git", tally.git_cases);
    figure(SUITE, "arbitrary_files_written", tally.files);
    figure(SUITE, "arbitrary_entry_files", tally.entry_files);
    figure(SUITE, "arbitrary_entries_accepted", tally.accepted);
    figure(SUITE, "arbitrary_entries_rejected", tally.rejected);
    for (class, n) in &tally.reasons {
        figure(SUITE, &format!("arbitrary_rejected_{class}"), n);
    }
    figure(SUITE, "arbitrary_secret_leaks", 0);
    figure(SUITE, "arbitrary_secs", t.elapsed().as_secs());
}

/// Issue 10 build 3 property: every URL the validator accepts is, to gix, the scheme,
/// host and path the validator reported, and gix's rendering of it reads back the same
/// and is accepted again; the worker's own check agrees. URLs are drawn from the hostile mix above and from strings
/// over URL punctuation, which find parser disagreements fastest.
#[test]
fn issue10_f3_accepted_urls_are_what_gix_reads() {
    let punct = "[a-z0-9:/@\\[\\]%?#.~_+\\-]{0,20}";
    let schemed = (
        prop_oneof![
            Just("https://"),
            Just("http://"),
            Just("git://"),
            Just("ssh://"),
            Just("")
        ],
        punct,
    )
        .prop_map(|(a, b)| format!("{a}{b}"));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&prop_oneof![url(), schemed], |u| {
            // One policy: the worker's re-check agrees with the coordinator's validator
            // (the worker leaves file URLs to the coordinator's allow_file_urls).
            prop_assert_eq!(
                repo_url(&u, true).is_ok(),
                gitmirror_worker::mirror::valid_url(&u),
                "{:?}",
                u
            );
            if repo_url(&u, false).is_ok() {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                gix_agrees(&u).map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    assert!(
        accepted > 200,
        "only {accepted} of 4096 urls accepted: the generator is off"
    );
    figure(SUITE, "url_property_accepted", accepted);
}

// ---------------------------------------------------------------------------------------
// Named cases.

/// The named hostile entries: (id, content, what the reason must contain).
fn named_entries() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut v: Vec<(&'static str, Vec<u8>, &'static str)> = vec![
        (
            "e/ext/sh",
            b"url: 'ext::sh -c touch% /tmp/pwned'\n".to_vec(),
            "whitespace",
        ),
        ("e/ext/enc", b"url: 'ext::sh%20-c%20id'\n".to_vec(), "ext::"),
        ("e/ext/upper", b"url: 'ExT::id'\n".to_vec(), "ext::"),
        (
            "e/ext/inner",
            b"url: 'https://x.org/ext::y'\n".to_vec(),
            "ext::",
        ),
        (
            "e/ext/list",
            b"url:\n  - 'ext::id'\n  - https://x.org/ok\n".to_vec(),
            "ext::",
        ),
        ("e/fd/three", b"url: 'fd::3'\n".to_vec(), "fd::"),
        ("e/fd/path", b"url: 'fd::17/x'\n".to_vec(), "fd::"),
        ("e/fd/upper", b"url: 'FD::0'\n".to_vec(), "fd::"),
        (
            "e/helper/testgit",
            b"url: 'testgit::https://x/y'\n".to_vec(),
            "remote-helper",
        ),
        (
            "o/opt/u",
            b"url: '-uhttps://x.org/x'\n".to_vec(),
            "starts with '-'",
        ),
        (
            "o/opt/utouch",
            b"url: '-u touch /tmp/x'\n".to_vec(),
            "starts with '-'",
        ),
        (
            "o/opt/uploadpack",
            b"url: '--upload-pack=touch /tmp/pwned'\n".to_vec(),
            "starts with '-'",
        ),
        (
            "o/opt/uploadpack2",
            b"url: '--upload-pack=id'\n".to_vec(),
            "starts with '-'",
        ),
        (
            "o/opt/config",
            b"url: '--config=core.sshCommand=id'\n".to_vec(),
            "starts with '-'",
        ),
        (
            "o/opt/sshhost",
            b"url: 'ssh://-oProxyCommand=id/x'\n".to_vec(),
            "host starts with '-'",
        ),
        (
            "o/opt/scphost",
            b"url: '-oProxyCommand=id:x'\n".to_vec(),
            "starts with '-'",
        ),
        (
            "o/opt/scpuser",
            b"url: 'git@-oProxyCommand=id:x'\n".to_vec(),
            "host starts with '-'",
        ),
        (
            "o/opt/scpbracket",
            b"url: '[-oProxyCommand=x]:p'\n".to_vec(),
            "host starts with '-'",
        ),
        (
            "o/opt/sshuser",
            b"url: 'ssh://-oX@host/p'\n".to_vec(),
            "user starts with '-'",
        ),
        (
            "p/bracket/local",
            b"url: '[a:b]/x'\n".to_vec(),
            "allow_file_urls",
        ),
        (
            "q/query/admin",
            b"url: 'http://10.0.0.5/admin?x=1#'\n".to_vec(),
            "query or fragment",
        ),
        (
            "u/userinfo/token",
            b"url: 'https://ghp_token@x.org/y.git'\n".to_vec(),
            "user info",
        ),
        (
            "p/abs/etc",
            b"url: /etc/passwd\n".to_vec(),
            "allow_file_urls",
        ),
        (
            "p/abs/file",
            b"url: 'file:///etc/passwd'\n".to_vec(),
            "allow_file_urls",
        ),
        (
            "p/rel/up",
            b"url: ../../../etc/passwd\n".to_vec(),
            "allow_file_urls",
        ),
        ("p/rel/dot", b"url: ./x.git\n".to_vec(), "allow_file_urls"),
        (
            "b/bin/nul",
            b"url: https://x.org/\0\0\0\n".to_vec(),
            "control",
        ),
        (
            "b/bin/ff",
            vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0x81],
            "not UTF-8",
        ),
        (
            "b/bin/elf",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0".to_vec(),
            "control characters",
        ),
        (
            "b/bin/utf16",
            "url: https://x.org/y\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
            "YAML",
        ),
    ];
    // Control characters of every kind in a URL.
    v.push((
        "b/ctl/esc",
        b"url: \"https://x.org/\\e[2J\"\n".to_vec(),
        "control",
    ));
    v
}

/// Write the named cases into `root`: the entries, a symbolic link out of the index (to
/// a file and to a directory) and within it, a 10 MB entry, and well-behaved neighbours
/// that must still load.
fn write_named(root: &Path, outside: &Path) -> Vec<&'static str> {
    let mut good = Vec::new();
    for (id, content, _) in named_entries() {
        let p = root.join(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    for id in ["g/good/one", "g/good/two", "e/ext/fine", "o/opt/fine"] {
        let p = root.join(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "url: https://example.org/x-u--upload-pack.git\n").unwrap();
        good.push(id);
    }
    std::fs::create_dir_all(root.join("l/link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("l/link/abs")).unwrap();
    std::os::unix::fs::symlink("../../../outside/secret", root.join("l/link/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("l/link/passwd")).unwrap();
    std::os::unix::fs::symlink("../../g/good/one", root.join("l/link/inside")).unwrap();
    // A directory link out of the index at project level: never entered.
    std::os::unix::fs::symlink(outside, root.join("l/out")).unwrap();
    std::os::unix::fs::symlink(outside, root.join("o2")).unwrap();
    // 10 MB entry.
    let big = root.join("s/size/huge");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let mut bytes = b"url: https://x.org/huge\n#".to_vec();
    bytes.resize(10 * 1024 * 1024, b'x');
    std::fs::write(big, bytes).unwrap();
    good
}

fn reason_of<'a>(rejected: &'a [Rejected], id: &str) -> &'a str {
    rejected
        .iter()
        .find(|r| r.path == id)
        .map(|r| r.reason.as_str())
        .unwrap_or_else(|| panic!("{id} not rejected: {rejected:?}"))
}

fn check_named(root: &Path, good: &[&str], kind: &str) -> Duration {
    let t = Instant::now();
    let (entries, rejected, text) = read(root);
    let took = t.elapsed();
    assert!(!text.contains(SECRET_MARK), "{kind}: secret leaked: {text}");
    assert!(!text.contains("root:x:0"), "{kind}: /etc/passwd leaked");
    assert_eq!(
        entries.keys().map(String::as_str).collect::<Vec<_>>(),
        good.iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "{kind}: {rejected:?}"
    );
    for e in entries.values() {
        check_accepted(e).unwrap();
    }
    for (id, _, why) in named_entries() {
        let r = reason_of(&rejected, id);
        assert!(r.contains(why), "{kind}: {id}: {r:?} lacks {why:?}");
    }
    for id in ["l/link/abs", "l/link/rel", "l/link/passwd", "l/link/inside"] {
        assert_eq!(
            reason_of(&rejected, id),
            "symbolic link (not followed)",
            "{kind}"
        );
    }
    assert!(
        reason_of(&rejected, "s/size/huge").contains("10485760 bytes, over the 65536-byte limit"),
        "{kind}"
    );
    // The directory links and what is under them are not entries at all.
    assert!(
        !rejected
            .iter()
            .any(|r| r.path.starts_with("l/out") || r.path.starts_with("o2")),
        "{kind}: {rejected:?}"
    );
    figure(SUITE, &format!("named_{kind}_rejected"), rejected.len());
    figure(SUITE, &format!("named_{kind}_accepted"), entries.len());
    figure(SUITE, &format!("named_{kind}_read_ms"), took.as_millis());
    took
}

/// SPEC §3.2: the named hostile entries, in a plain directory and in a git repository:
/// `ext::` and `fd::` transports (and other remote helpers), `-u…`/`--upload-pack=`/
/// `-oProxyCommand` option injection, absolute and relative local paths, binary content,
/// symbolic links out of the index (never followed: the target's content never shows),
/// a 10 MB entry (refused from its size, read quickly). Well-formed neighbours still load.
#[test]
fn named_hostile_entries_are_rejected_with_reasons() {
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), SECRET).unwrap();
    std::fs::create_dir_all(outside.join("p/q")).unwrap();
    std::fs::write(outside.join("p/q/r"), SECRET).unwrap();

    let plain = base.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let good = write_named(&plain, &outside);
    // A FIFO entry: opening it would block a reader that followed it.
    let fifo = plain.join("f/fifo/pipe");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let took = check_named(&plain, &good, "plain");
    assert!(took < Duration::from_secs(10), "{took:?}");
    std::fs::remove_file(&fifo).unwrap();

    let repo = base.path().join("git");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write_named(&repo, &outside);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "named"]);
    let took = check_named(&repo, &good, "git");
    assert!(took < Duration::from_secs(10), "{took:?}");
    figure(SUITE, "named_cases", named_entries().len() + 5);
}

/// SPEC §3.2: a git tree (made with `git mktree`, which no work tree could produce)
/// holding names a file system would refuse or resolve: `..` and `.` at every level,
/// `.git`, names with a backslash or a leading dash. No id outside the layout is
/// accepted and each such entry is rejected with a reason.
#[test]
fn crafted_git_tree_names_are_rejected() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    git(p, &["init", "-q", "-b", "main"]);
    let blob = git_stdin(
        p,
        &["hash-object", "-w", "--stdin"],
        b"url: https://x.org/x\n",
    );
    let secret = git_stdin(p, &["hash-object", "-w", "--stdin"], SECRET.as_bytes());
    let mktree = |listing: &str| git_stdin(p, &["mktree"], listing.as_bytes());
    let names = ["..", ".", "...", ".git", "-rf", "a\\..\\b", "ok"];
    let leaf: String = names
        .iter()
        .map(|n| format!("100644 blob {blob}\t{n}\n"))
        .chain([format!("120000 blob {secret}\tlink\n")])
        .collect();
    let leaf = mktree(&leaf);
    let mid: String = ["..", ".", "abc"]
        .iter()
        .map(|n| format!("040000 tree {leaf}\t{n}\n"))
        .collect();
    let mid = mktree(&mid);
    let root: String = ["..", "a", "-x"]
        .iter()
        .map(|n| format!("040000 tree {mid}\t{n}\n"))
        .collect();
    let root = mktree(&root);
    let commit = git(p, &["commit-tree", "-m", "hostile", &root]);
    git(p, &["update-ref", "refs/heads/main", &commit]);

    let (entries, rejected, text) = read(p);
    assert!(!text.contains(SECRET_MARK));
    let ids: Vec<&str> = entries.keys().map(String::as_str).collect();
    // `..`/`.` directories are dot-directories: ignored. What remains under `a/abc` and
    // `-x/abc` is judged name by name.
    assert_eq!(ids, ["a/abc/ok"], "{rejected:?}");
    for e in entries.values() {
        check_accepted(e).unwrap_or_else(|e| panic!("{e}"));
    }
    for (path, why) in [
        ("a/abc/..", "\"..\" is not allowed"),
        ("a/abc/.", "\".\" is not allowed"),
        ("a/abc/.git", "starts with \".\""),
        ("a/abc/-rf", "starts with \"-\""),
        ("a/abc/a\\..\\b", "holds '\\\\'"),
        ("a/abc/link", "symbolic link"),
        ("-x/abc/ok", "starts with \"-\""),
    ] {
        let r = reason_of(&rejected, path);
        assert!(r.contains(why), "{path}: {r:?} lacks {why:?}");
    }
    figure(
        SUITE,
        "crafted_tree_entries",
        rejected.len() + entries.len(),
    );
    figure(SUITE, "crafted_tree_rejected", rejected.len());
}

/// SPEC §3.1: a repo id in two indexes is taken from the first listed and reported as a
/// conflict for the other — also when one index is a git repository and the other a plain
/// directory, and when the first index's copy is itself rejected (then the second one's
/// valid copy is used, and no conflict is reported).
#[test]
fn id_colliding_across_two_indexes() {
    let first = tempfile::tempdir().unwrap();
    git(first.path(), &["init", "-q", "-b", "main"]);
    for (id, content) in [
        ("a/abc/abc", "url: https://first.org/abc\n"),
        ("a/abc/bad", "url: 'ext::sh -c id'\n"),
        ("a/abc/ABC", "url: https://first.org/ABC\n"),
    ] {
        let p = first.path().join(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(first.path(), &["add", "-A"]);
    git(first.path(), &["commit", "-q", "-m", "first"]);
    let second = tempfile::tempdir().unwrap();
    for (id, content) in [
        ("a/abc/abc", "url: https://second.org/abc\n"),
        ("a/abc/bad", "url: https://second.org/bad\n"),
        ("a/abc/only", "url: https://second.org/only\n"),
    ] {
        let p = second.path().join(id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let mut ix = Indexes::open(
        vec![
            source("first", first.path()),
            source("second", second.path()),
        ],
        settings(state.path()),
    )
    .unwrap();
    ix.poll(true).unwrap();
    let e: BTreeMap<String, Entry> = ix.entries().map(|e| (e.id.clone(), e)).collect();
    assert_eq!(e["a/abc/abc"].url, "https://first.org/abc");
    assert_eq!(e["a/abc/abc"].index, "first");
    assert_eq!(
        e["a/abc/ABC"].url, "https://first.org/ABC",
        "ids are case-sensitive"
    );
    assert_eq!(e["a/abc/bad"].url, "https://second.org/bad");
    assert_eq!(e["a/abc/only"].index, "second");
    let st = ix.status();
    let conflicts: Vec<&Rejected> = st[1].rejected.iter().collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].path, "a/abc/abc");
    assert!(
        conflicts[0]
            .reason
            .contains("already provided by index first")
    );
    assert!(reason_of(&st[0].rejected, "a/abc/bad").contains("whitespace"));
    figure(SUITE, "colliding_ids_reported", conflicts.len());
}

/// SPEC §3.4 at the coordinator: an index commit deleting 90 % of the entries (and adding
/// one) is held: the addition reaches the worker that owns the repos, no `DropOrder`
/// does; `GET /api/index` shows the held update; the repos stay assigned. Only `POST
/// /api/index/{name}/accept` sends the worker its drops, as the next delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_percent_deletion_is_held_and_nothing_is_dropped() {
    let c = common::Coordinator::start("purge_protect_percent: 5\n").await;
    c.wait_for_repos().await;
    let index = c.dir.path().join("index-src");
    // 20 entries in all.
    for i in 0..17 {
        let p = index.join(format!("r/p{i}/p{i}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("url: https://example.org/{i}.git\n")).unwrap();
    }
    common::eventually(15, "20 repos", || async {
        let (_, v) = c.get_json("/api/repos").await;
        (v["total"] == 20).then_some(())
    })
    .await;
    let (mut w, id) = common::TestWorker::join(c.quic, &c.token, uuid::Uuid::from_u128(90)).await;
    w.holdings(vec![]).await;
    let first = w.next_assign().await;
    assert_eq!(first.upsert.len(), 20);

    // Delete 18 of 20 (90 %), add one.
    for i in 0..17 {
        std::fs::remove_file(index.join(format!("r/p{i}/p{i}"))).unwrap();
    }
    std::fs::remove_file(index.join(common::REPOS[0])).unwrap();
    let p = index.join("n/new/new");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, "url: https://example.org/new.git\n").unwrap();

    let held = common::eventually(15, "the held update", || async {
        let (_, v) = c.get_json("/api/index").await;
        (!v[0]["held"].is_null()).then(|| v[0]["held"].clone())
    })
    .await;
    assert_eq!(held["removals"], 18, "{held}");
    assert_eq!(held["total"], 20, "{held}");
    assert_eq!(held["percent"], 90.0, "{held}");
    // The addition applies at once and is the next delta; it drops nothing.
    let add = w.next_assign().await;
    assert_eq!(add.seq, first.seq + 1);
    assert_eq!(
        add.upsert.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["n/new/new"]
    );
    assert!(add.drop.is_empty(), "{add:?}");
    // Still held after further polls: every repo is still there and still the worker's.
    let polls_before = c.get("/metrics").await.1;
    common::eventually(15, "two more index polls", || async {
        let m = c.get("/metrics").await.1;
        (polls(&m) >= polls(&polls_before) + 2).then_some(())
    })
    .await;
    let (_, v) = c.get_json("/api/repos").await;
    assert_eq!(v["total"], 21);
    let (_, wv) = c.get_json(&format!("/api/workers/{id}")).await;
    assert_eq!(wv["repos"], 21, "{wv}");

    let (s, body) = c.post("/api/index/test/accept").await;
    assert_eq!(s, 200, "{body}");
    let drops = w.next_assign().await;
    assert_eq!(drops.seq, first.seq + 2, "no delta in between: {drops:?}");
    assert_eq!(drops.drop.len(), 18, "{drops:?}");
    assert!(
        drops
            .drop
            .iter()
            .all(|d| d.reason == DropReason::RemovedFromIndex),
        "{drops:?}"
    );
    let (_, v) = c.get_json("/api/repos").await;
    assert_eq!(v["total"], 3);
    figure(SUITE, "purge_held_removals", 18);
    figure(SUITE, "purge_drops_sent_while_held", 0);
    figure(SUITE, "purge_drops_sent_after_accept", drops.drop.len());
    c.stop().await.1.unwrap();
}

/// `gitmirror_index_polls_total` summed over results.
fn polls(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("gitmirror_index_polls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// SPEC §3.4 and §7.1, end to end with a real (embedded) worker and real mirrors: while a
/// 90 % deletion is held, every mirror stays at its path and the worker keeps fetching
/// the repos whose removal is held (`POST …/fetch` on one is carried out); nothing reaches
/// `.trash/`. Accepting the update moves exactly the removed repos' mirrors to `.trash/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_percent_deletion_keeps_real_mirrors_until_accepted() {
    let base = tempfile::tempdir().unwrap();
    let work = base.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("f"), "x").unwrap();
    git(&work, &["add", "f"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    let bare = base.path().join("up.git");
    git(
        base.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let mirrors = base.path().join("mirrors");
    let c = common::Coordinator::start(&format!(
        "allow_file_urls: true\npurge_protect_percent: 5\n\
         local_worker:\n  mirror_dir: {}\n  fetch: {{min_interval: 1s}}\n",
        mirrors.display()
    ))
    .await;
    c.wait_for_repos().await;
    let index = c.dir.path().join("index-src");
    let n = 20;
    for i in 0..n {
        let p = index.join(format!("r/p{i}/p{i}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("url: file://{}\n", bare.display())).unwrap();
    }
    let mirror = |i: usize| mirrors.join(format!("r/p{i}/p{i}.git"));
    common::eventually(60, "20 mirrors", || async {
        (0..n)
            .all(|i| mirror(i).join("HEAD").is_file())
            .then_some(())
    })
    .await;

    // Remove 18 of the 20 (and so 18 of the index's 23 repos).
    for i in 2..n {
        std::fs::remove_file(index.join(format!("r/p{i}/p{i}"))).unwrap();
    }
    common::eventually(15, "the held update", || async {
        let (_, v) = c.get_json("/api/index").await;
        (v[0]["held"]["removals"] == 18).then_some(())
    })
    .await;
    // The worker still holds and fetches a repo whose removal is held.
    let fetches = |v: &serde_json::Value| v["fetches"].as_u64().unwrap_or(0);
    let (_, before) = c.get_json("/api/repos/r/p7/p7").await;
    let (s, body) = c.post("/api/repos/r/p7/p7/fetch").await;
    assert_eq!(s, 202, "{body}");
    common::eventually(15, "the asked-for fetch", || async {
        let (_, v) = c.get_json("/api/repos/r/p7/p7").await;
        (fetches(&v) > fetches(&before)).then_some(())
    })
    .await;
    let trash = gitmirror_worker::mirror::WorkDirs::in_use(&mirrors).trash;
    let trashed = || std::fs::read_dir(&trash).map(|d| d.count()).unwrap_or(0);
    assert!((0..n).all(|i| mirror(i).join("HEAD").is_file()));
    assert_eq!(trashed(), 0, "nothing trashed while held");
    let (_, v) = c.get_json("/api/repos?state=mirrored").await;
    assert_eq!(v["total"], 20, "{v}");

    let (s, body) = c.post("/api/index/test/accept").await;
    assert_eq!(s, 200, "{body}");
    common::eventually(30, "the removed mirrors in .trash", || async {
        (trashed() == 18).then_some(())
    })
    .await;
    assert!((0..2).all(|i| mirror(i).join("HEAD").is_file()));
    assert!((2..n).all(|i| !mirror(i).exists()));
    figure(SUITE, "e2e_mirrors_kept_while_held", n);
    figure(SUITE, "e2e_mirrors_trashed_after_accept", trashed());
    c.stop().await.1.unwrap();
}
