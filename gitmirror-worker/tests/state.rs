//! SPEC §10, §12: the worker's state files — snapshot plus journal, migration from the v1
//! `repos.json`, torn tails, and crashes in the middle of a migration or a compaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gitmirror_wire::{FetchResult, Outcome, RefChange};
use gitmirror_worker::state::{Refs, Repo};
use gitmirror_worker::store::{self, JOURNAL_FILE, Record, SNAPSHOT_FILE, Saved};
use std::path::{Path, PathBuf};

fn sample_v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn outcome(id: u64, repo: &str, changes: Vec<RefChange>) -> Outcome {
    Outcome {
        report_id: id,
        repo: repo.into(),
        url: "git://h/x".into(),
        finished_ms: 1,
        duration_ms: 1,
        result: if changes.is_empty() {
            FetchResult::Fetched
        } else {
            FetchResult::Cloned
        },
        changes,
        ref_count: 0,
        refs_digest: 0,
        next_due_ms: 2,
    }
}

fn set(name: &str, old: Option<&str>, new: Option<&str>) -> RefChange {
    RefChange {
        name: name.into(),
        old: old.map(str::to_owned),
        new: new.map(str::to_owned),
    }
}

fn refs(pairs: &[(&str, &str)]) -> Refs {
    pairs
        .iter()
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect()
}

/// SPEC §12 "Upgrades": a state dir of the v1 format (the release before the journal)
/// migrates at the first start: every repo, its refs, the outbox, the next report id and
/// the disposals carry over; `repos.json` is kept as `repos.json.v1.bak`; a second start
/// reads the new files only.
#[test]
fn spec_12_v1_state_dir_upgrades() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&sample_v1(), d.path());
    let original = std::fs::read(d.path().join("repos.json")).unwrap();
    let before = Saved::load(d.path()).unwrap(); // read as v1, nothing changed

    let (state, mut st) = store::open(d.path()).unwrap();
    let a = st.refs().load("a/abc/abc").unwrap();
    st.close();
    assert!(!d.path().join("repos.json").exists());
    assert_eq!(
        std::fs::read(d.path().join("repos.json.v1.bak")).unwrap(),
        original
    );
    assert!(d.path().join(SNAPSHOT_FILE).exists() && d.path().join(JOURNAL_FILE).exists());
    assert_eq!(state, before.state);
    assert_eq!(state.repos.len(), 2);
    assert_eq!(state.repos["a/abc/abc"].ref_count, 3);
    assert_eq!(
        a["refs/heads/main"],
        "9fceb02d0ae598e95dc970b74767f19372d61af8"
    );
    assert_eq!(a.len(), 3);
    assert_eq!(state.outbox.keys().copied().collect::<Vec<_>>(), [41, 42]);
    assert_eq!(state.next_report_id, 43);
    assert_eq!(state.disposals.len(), 1);
    // The identity file is untouched and still read.
    let id = gitmirror_worker::state::Identity::load_or_create(d.path()).unwrap();
    assert_eq!(id.worker_id, Some(2));

    let again = Saved::load(d.path()).unwrap();
    assert_eq!(again.state, state);
    assert_eq!(again.refs["a/abc/abc"], a);
    let (state2, _st) = store::open(d.path()).unwrap();
    assert_eq!(state2, state);
}

/// SPEC §10, §12: killed in the middle of the migration, the next start finishes it: a
/// half-written snapshot (temp file) is removed and the migration redone; a snapshot
/// written before the kill is used and `repos.json` is still set aside.
#[test]
fn spec_12_kill_during_migration_restarts_consistent() {
    let reference = tempfile::tempdir().unwrap();
    copy_dir(&sample_v1(), reference.path());
    let expected = Saved::load(reference.path()).unwrap();

    // Killed while writing the snapshot.
    let d = tempfile::tempdir().unwrap();
    copy_dir(&sample_v1(), d.path());
    std::fs::write(
        d.path().join(format!(".{SNAPSHOT_FILE}.tmp12345")),
        b"gitmirror-state worker-repos-snapshot v2\n\x10\x00",
    )
    .unwrap();
    let (state, _st) = store::open(d.path()).unwrap();
    assert_eq!(state, expected.state);
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");

    // Killed after the snapshot, before the journal and the rename.
    let d = tempfile::tempdir().unwrap();
    copy_dir(&sample_v1(), d.path());
    drop(store::open(d.path()).unwrap());
    std::fs::remove_file(d.path().join(JOURNAL_FILE)).unwrap();
    std::fs::rename(
        d.path().join("repos.json.v1.bak"),
        d.path().join("repos.json"),
    )
    .unwrap();
    let (state, mut st) = store::open(d.path()).unwrap();
    assert_eq!(state, expected.state);
    assert_eq!(
        st.refs().load("a/abc/abc").unwrap(),
        expected.refs["a/abc/abc"]
    );
    st.close();
    assert!(!d.path().join("repos.json").exists());
    assert!(d.path().join("repos.json.v1.bak").exists());
}

/// SPEC §12: appended records replay at the next start (outcomes with their ref changes,
/// acknowledgements, removals); a torn record at the end of the journal is dropped (and cut
/// off, so later appends follow the good records); damage anywhere else stops the start
/// with an error naming the file.
#[test]
fn spec_12_journal_replays_and_drops_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut st) = store::open(d.path()).unwrap();
    let mut repo = Repo::new("git://h/x".into(), true);
    repo.set_refs(&refs(&[("refs/heads/a", "1"), ("refs/heads/b", "2")]));
    st.append(vec![
        Record::Repo {
            id: "r/r/r".into(),
            repo: repo.clone(),
        },
        Record::Outcome(outcome(
            1,
            "r/r/r",
            vec![
                set("refs/heads/a", None, Some("1")),
                set("refs/heads/b", None, Some("2")),
            ],
        )),
    ]);
    st.append(vec![Record::Outcome(outcome(
        2,
        "r/r/r",
        vec![
            set("refs/heads/b", Some("2"), None),
            set("refs/heads/c", None, Some("3")),
        ],
    ))]);
    st.append(vec![Record::Ack { upto: 1 }]);
    st.append(vec![
        Record::Repo {
            id: "gone/x/y".into(),
            repo: repo.clone(),
        },
        Record::Remove {
            id: "gone/x/y".into(),
        },
    ]);
    st.close();
    let journal = d.path().join(JOURNAL_FILE);
    let good = std::fs::read(&journal).unwrap();

    let check = |dir: &Path| {
        let (state, mut st) = store::open(dir).unwrap();
        assert_eq!(state.repos.keys().collect::<Vec<_>>(), ["r/r/r"]);
        assert_eq!(state.outbox.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(state.next_report_id, 3);
        assert_eq!(
            st.refs().load("r/r/r").unwrap(),
            refs(&[("refs/heads/a", "1"), ("refs/heads/c", "3")])
        );
        st.close();
    };
    check(d.path());

    // Half a record at the end: dropped, and the file cut back to the good records.
    let mut torn = good.clone();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']);
    std::fs::write(&journal, &torn).unwrap();
    check(d.path());
    assert_eq!(std::fs::read(&journal).unwrap(), good);

    // A damaged record with good ones after it: loud.
    let mut bad = good.clone();
    let at = bad.len() - 20;
    bad[at] ^= 0x55;
    let mut bad2 = bad.clone();
    bad2.extend_from_slice(&good[good.len() - 60..]);
    std::fs::write(&journal, &bad2).unwrap();
    let e = store::open(d.path())
        .err()
        .expect("corrupt journal")
        .to_string();
    assert!(e.contains(&journal.display().to_string()), "{e}");
}

/// SPEC §12: compaction folds the journal into a new snapshot (same state, same refs, the
/// journal starts again small); killed between writing that snapshot and replacing the
/// journal, the next start sees the old journal is already folded in and replays nothing
/// twice; a snapshot temp file left by a kill is removed.
#[test]
fn spec_12_compaction_and_kill_during_compaction() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut st) = store::open_with(d.path(), 4096).unwrap();
    let mut expected_refs = Refs::new();
    for i in 0..200u64 {
        let name = format!("refs/heads/b{}", i % 7);
        let value = format!("{i:040x}");
        let old = expected_refs.insert(name.clone(), value.clone());
        st.append(vec![
            Record::Repo {
                id: "r/r/r".into(),
                repo: Repo::new("git://h/x".into(), true),
            },
            Record::Outcome(outcome(
                i + 1,
                "r/r/r",
                vec![set(&name, old.as_deref(), Some(&value))],
            )),
            Record::Ack { upto: i },
        ]);
    }
    st.close();
    let journal_len = std::fs::metadata(d.path().join(JOURNAL_FILE))
        .unwrap()
        .len();
    assert!(
        journal_len < 8192,
        "journal was compacted: {journal_len} bytes"
    );
    let saved = Saved::load(d.path()).unwrap();
    assert_eq!(saved.refs["r/r/r"], expected_refs);
    assert_eq!(
        saved.state.outbox.keys().copied().collect::<Vec<_>>(),
        [200]
    );
    assert_eq!(saved.state.next_report_id, 201);

    // A kill between the snapshot's rename and the new journal: the old journal (of the
    // previous generation) is still there.
    let stale = tempfile::tempdir().unwrap();
    let (_, mut st) = store::open_with(stale.path(), u64::MAX).unwrap();
    st.append(vec![
        Record::Repo {
            id: "r/r/r".into(),
            repo: Repo::new("git://h/x".into(), true),
        },
        Record::Outcome(outcome(
            1,
            "r/r/r",
            vec![set("refs/heads/x", None, Some("1"))],
        )),
    ]);
    st.close();
    let old_journal = std::fs::read(stale.path().join(JOURNAL_FILE)).unwrap();
    // Compact it (a tiny threshold, one more record to trigger it).
    let (_, mut st) = store::open_with(stale.path(), 1).unwrap();
    st.append(vec![Record::Outcome(outcome(
        2,
        "r/r/r",
        vec![set("refs/heads/x", Some("1"), Some("2"))],
    ))]);
    st.close();
    let after = Saved::load(stale.path()).unwrap();
    assert_eq!(after.refs["r/r/r"], refs(&[("refs/heads/x", "2")]));
    std::fs::write(stale.path().join(JOURNAL_FILE), &old_journal).unwrap();
    std::fs::write(
        stale.path().join(format!(".{SNAPSHOT_FILE}.tmp999")),
        b"partial",
    )
    .unwrap();
    let (state, mut st) = store::open(stale.path()).unwrap();
    assert_eq!(
        state, after.state,
        "the stale journal is not replayed again"
    );
    assert_eq!(
        st.refs().load("r/r/r").unwrap(),
        refs(&[("refs/heads/x", "2")])
    );
    st.close();
    assert!(
        !stale
            .path()
            .join(format!(".{SNAPSHOT_FILE}.tmp999"))
            .exists()
    );
}
