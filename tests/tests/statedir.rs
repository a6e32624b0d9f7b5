//! The state dir against its own service user (issue 10 finding 2, SPEC §4.1 rotation):
//! `gitmirrord join-token [--rotate]` run as root in a state dir that the service user
//! owns must not follow a link that user planted, and must leave files that user can read.
//!
//! These run the real binary as root (CI runs as root); the "service user" is `nobody`
//! (uid 65534): the state dir and the planted links are given to it with `chown`/`lchown`,
//! so no account has to be created and nothing needs the network. The file outside the
//! state dir stands for `/etc/ld.so.preload`. Run as another user, the tests say so and
//! pass without checking anything (only root can own files as someone else).

use gitmirror_tests::{Coordinator, bin};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const NOBODY: u32 = 65534;
/// State files `join-token` writes (the reset key is the daemon's alone).
const NAMES: [&str; 3] = ["tls-key.pem", "tls-cert.pem", "join-secret"];

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `gitmirrord join-token [--rotate] --config <config>`.
fn join_token(config: &Path, rotate: bool) -> Output {
    let mut cmd = Command::new(bin("gitmirrord"));
    cmd.arg("join-token");
    if rotate {
        cmd.arg("--rotate");
    }
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run gitmirrord join-token")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn chown_tree(path: &Path, uid: u32) {
    lchown(path, Some(uid), Some(uid)).expect("chown");
    if fs::symlink_metadata(path).expect("stat").is_dir() {
        for e in fs::read_dir(path).expect("read_dir") {
            chown_tree(&e.expect("entry").path(), uid);
        }
    }
}

/// A link at `at` to `to`, owned by the service user (as if it had made it).
fn plant(at: &Path, to: &Path) {
    symlink(to, at).unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
    lchown(at, Some(NOBODY), Some(NOBODY)).expect("lchown");
}

/// The names the code before issue 10 used for its temp files, `.{name}.tmp{pid}`, for
/// the next few thousand pids: the next process this test starts is very likely to get
/// one of them (pids are handed out in order; other processes on the machine take some).
fn plant_old_temp_names(state: &Path, name: &str, to: &Path) {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    for pid in last + 1..last + 4000 {
        plant(&state.join(format!(".{name}.tmp{pid}")), to);
    }
}

/// A coordinator config in `<root>/coord` whose state dir is `<root>/coord/state`.
fn coordinator(root: &Path) -> Coordinator {
    let index = root.join("index");
    fs::create_dir_all(&index).expect("mkdir index");
    Coordinator::new(&root.join("coord"), &index)
}

/// The stand-in for /etc/ld.so.preload: in a root-owned directory of its own.
fn outside(root: &Path) -> PathBuf {
    let etc = root.join("etc");
    fs::create_dir_all(&etc).expect("mkdir etc");
    etc.join("ld.so.preload")
}

/// A state dir as the daemon leaves it: made by a first `join-token`, then given to the
/// service user, mode 0750 (the systemd unit's `StateDirectoryMode`).
fn service_state_dir(coord: &Coordinator) {
    let o = join_token(&coord.config, false);
    assert!(o.status.success(), "{}", stderr(&o));
    chown_tree(&coord.state_dir, NOBODY);
    fs::set_permissions(&coord.state_dir, fs::Permissions::from_mode(0o750)).expect("chmod");
}

// Issue 10 finding 2: `join-token --rotate` as root, with links planted at every temp name
// the old code could use. Seen failing before the fix: the outside file was created
// holding the new secret and chowned to the service user. After: untouched, and the new
// secret is a regular file the service user owns.
#[test]
fn issue10_f2_rotate_as_root_follows_no_link_the_service_user_planted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let coord = coordinator(root.path());
    service_state_dir(&coord);
    let target = outside(root.path());
    plant_old_temp_names(&coord.state_dir, "join-secret", &target);

    let o = join_token(&coord.config, true);
    assert!(o.status.success(), "{}", stderr(&o));
    if let Ok(m) = fs::symlink_metadata(&target) {
        panic!(
            "root created {} through a planted link (owner uid {}, {} bytes)",
            target.display(),
            m.uid(),
            m.len()
        );
    }
    let secret = coord.state_dir.join("join-secret");
    let m = fs::symlink_metadata(&secret).expect("stat join-secret");
    assert!(m.file_type().is_file(), "join-secret is not a regular file");
    assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "owner of join-secret");
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    let token = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let written = fs::read_to_string(&secret).expect("read join-secret");
    assert!(
        token.ends_with(&format!(".{}", written.trim())),
        "the token printed carries the secret written"
    );
}

// Issue 10 finding 2: a link at each name `join-token` writes or reads, pointing outside.
// Root refuses, naming the file, and neither creates nor reads nor chowns the target.
// Seen failing before the fix: a dangling link was written through (with the planted
// temp names) and a link to an existing private file made its content the printed secret.
#[test]
fn issue10_f2_join_token_as_root_refuses_links_at_every_name() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for rotate in [false, true] {
        for name in NAMES {
            let root = tempfile::tempdir().expect("tempdir");
            let coord = coordinator(root.path());
            service_state_dir(&coord);
            let target = outside(root.path());
            fs::write(&target, "precious\n").expect("write outside");
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
            let at = coord.state_dir.join(name);
            fs::remove_file(&at).expect("remove");
            plant(&at, &target);
            plant_old_temp_names(&coord.state_dir, name, &target);

            let o = join_token(&coord.config, rotate);
            let err = stderr(&o);
            let case = format!("{name} (rotate: {rotate})");
            assert!(!o.status.success(), "{case}: accepted: {err}");
            assert!(
                err.contains(&at.display().to_string()) && err.contains("symbolic link"),
                "{case}: the refusal names the link: {err}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stdout).contains("precious"),
                "{case}: printed the outside file"
            );
            let m = fs::metadata(&target).expect("stat outside");
            assert_eq!(
                fs::read_to_string(&target).expect("read"),
                "precious\n",
                "{case}"
            );
            assert_eq!(
                (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
                (0, 0, 0o600)
            );
            assert!(
                fs::symlink_metadata(&at)
                    .expect("stat")
                    .file_type()
                    .is_symlink(),
                "{case}: the link was replaced silently"
            );
        }
    }
}

// Issue 10 finding 2: the state dir itself replaced by a link the service user made
// (possible when the configured state_dir sits inside a directory it can write).
#[test]
fn issue10_f2_a_state_dir_linked_by_the_service_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let coord = coordinator(root.path());
    let elsewhere = root.path().join("etc");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    plant(&coord.state_dir, &elsewhere);
    let o = join_token(&coord.config, false);
    let err = stderr(&o);
    assert!(!o.status.success(), "accepted: {err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).expect("read_dir").count(), 0);
}

// Issue 10 finding 2: run as root in the service user's empty state dir, `join-token`
// creates the identity as that user's files (the daemon must read them), with the usual
// modes. Seen failing before the fix: every file was root's.
#[test]
fn issue10_f2_join_token_as_root_leaves_files_the_service_user_can_read() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let coord = coordinator(root.path());
    fs::create_dir_all(&coord.state_dir).expect("mkdir state");
    chown_tree(&coord.state_dir, NOBODY);
    for rotate in [false, true] {
        let o = join_token(&coord.config, rotate);
        assert!(o.status.success(), "{}", stderr(&o));
        for (name, mode) in NAMES.iter().zip([0o600, 0o644, 0o600]) {
            let m = fs::symlink_metadata(coord.state_dir.join(name)).expect("stat");
            assert_eq!(
                (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
                (NOBODY, NOBODY, mode),
                "{name} (rotate: {rotate})"
            );
        }
        let names: Vec<_> = fs::read_dir(&coord.state_dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), NAMES.len(), "no temp files left: {names:?}");
    }
}
