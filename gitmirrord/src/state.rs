//! The coordinator's registry file (SPEC §10): `registry.json`, through
//! `common::statefile` (versioned header, crash-safe replace, loud corruption). The repos'
//! status lives in [`crate::repo_store`], the event log in [`crate::events`], index state
//! in [`crate::index`].

use crate::registry::{self, RegistryFile};
use crate::ring::{Hashing, Placement};
use gitmirror_common::statefile::{self, StateError};
use std::path::Path;

pub const REGISTRY_FILE: &str = "registry.json";
const MODE: u32 = 0o640;

/// Where the v1 registry (before per-worker certificates) is kept after the migration.
pub const REGISTRY_V1_BACKUP: &str = "registry.json.v1.bak";
/// Where the v2 registry (before drained workers and blocked repos) is kept.
pub const REGISTRY_V2_BACKUP: &str = "registry.json.v2.bak";
/// Where the v3 registry (before the persisted placement) is kept.
pub const REGISTRY_V3_BACKUP: &str = "registry.json.v3.bak";

/// Load the registry; a missing file is an empty one, a corrupt one an error naming it.
/// An older file is read as the current version and kept beside as
/// `registry.json.v<N>.bak`; the next save replaces it. v1 (before per-worker
/// certificates): every worker legacy, none removed or approved. v2 (before issue 16's
/// drain and block): no worker drained, no repo blocked. v1 to v3 (before issue 13's
/// placement): owners were placed per repo, so `placement: repo`.
pub fn load_registry(dir: &Path) -> Result<RegistryFile, StateError> {
    let path = dir.join(REGISTRY_FILE);
    match statefile::read_json(&path, registry::KIND, registry::VERSION) {
        Ok(r) => Ok(r.unwrap_or_default()),
        Err(StateError::Version { found, .. })
            if found == format!("{} v1", registry::KIND)
                || found == format!("{} v2", registry::KIND)
                || found == format!("{} v3", registry::KIND) =>
        {
            let (version, backup, what) = if found.ends_with("v1") {
                (
                    1,
                    REGISTRY_V1_BACKUP,
                    "per-worker certificates: its workers are admitted by the join token until they enroll",
                )
            } else if found.ends_with("v2") {
                (2, REGISTRY_V2_BACKUP, "drained workers and blocked repos")
            } else {
                (
                    3,
                    REGISTRY_V3_BACKUP,
                    "the placement in force: its owners were placed per repo, so `placement: repo` until the configuration sets one",
                )
            };
            let mut old: RegistryFile =
                statefile::read_json(&path, registry::KIND, version)?.unwrap_or_default();
            old.placement = Some(Placement::Repo);
            if let Some(bytes) = statefile::read_if_exists(&path)? {
                statefile::write_atomic(&dir.join(backup), &bytes, MODE)?;
            }
            tracing::info!(
                workers = old.workers.len(),
                backup,
                "migrating the worker registry from v{version} to v{} ({what})",
                registry::VERSION
            );
            Ok(old)
        }
        Err(e) => Err(e),
    }
}

/// The placement of a state directory with no registry yet and no `placement` set
/// (SPEC §14: `project`).
pub const FRESH_PLACEMENT: Placement = Placement::Project;

/// The owner function of a state directory with nothing placed yet and no `hashing` set
/// (design.md "Owner function: points on a circle").
pub const FRESH_HASHING: Hashing = Hashing::Points;

/// The owner function in force at start: the configured one if set, else the persisted
/// one; a registry that placed repos before the function was recorded (an earlier
/// release's) used rendezvous, so an upgrade moves nothing. Returns it and, for a switch,
/// the function switched from.
pub fn resolve_hashing(
    persisted: Option<Hashing>,
    placed: bool,
    configured: Option<Hashing>,
) -> (Hashing, Option<Hashing>) {
    let persisted = persisted.or(placed.then_some(Hashing::Rendezvous));
    match (persisted, configured) {
        (Some(p), Some(c)) if p != c => (c, Some(p)),
        (_, Some(c)) => (c, None),
        (Some(p), None) => (p, None),
        (None, None) => (FRESH_HASHING, None),
    }
}

/// The placement in force at start (SPEC §14, plan fork-pools C3): the configured one if
/// set (a *switch* when it differs from the persisted one), else the persisted one (an
/// unset key never flips it), else, on a fresh state directory, [`FRESH_PLACEMENT`].
/// Returns it and, for a switch, the placement switched from.
pub fn resolve_placement(
    persisted: Option<Placement>,
    configured: Option<Placement>,
) -> (Placement, Option<Placement>) {
    match (persisted, configured) {
        (Some(p), Some(c)) if p != c => (c, Some(p)),
        (_, Some(c)) => (c, None),
        (Some(p), None) => (p, None),
        (None, None) => (FRESH_PLACEMENT, None),
    }
}

pub fn save_registry(dir: &Path, registry: &RegistryFile) -> Result<(), StateError> {
    statefile::write_json(
        &dir.join(REGISTRY_FILE),
        registry::KIND,
        registry::VERSION,
        registry,
        MODE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §12 "State files" with §17: the registry of the previous release is migrated
    // (its workers become legacy: admitted by the token until they enroll) and kept.
    #[test]
    fn spec_12_v1_registry_is_migrated_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let uuid = "00000000-0000-0000-0000-000000000007";
        let v1 = format!(
            "gitmirror-state registry v1\n{{\"workers\":[{{\"uuid\":\"{uuid}\",\"id\":3,\"name\":\"w\",\"weight\":1.0,\"state\":\"alive\",\"state_since_ms\":1,\"addr\":null,\"last_seen_ms\":1,\"software\":\"s\",\"serve_url_base\":null,\"disk_free_bytes\":null,\"disk_total_bytes\":null,\"disk_low\":false,\"status\":\"\",\"next_seq\":4,\"acked_seq\":3,\"last_report_id\":9}}]}}\n"
        );
        std::fs::write(d.path().join(REGISTRY_FILE), &v1).unwrap();
        let r = load_registry(d.path()).unwrap();
        assert_eq!(r.workers.len(), 1);
        assert_eq!(r.workers[0].id, 3);
        assert_eq!(r.workers[0].cert, None, "legacy until it enrolls");
        assert!(r.removed.is_empty() && r.approved.is_empty());
        assert_eq!(
            std::fs::read_to_string(d.path().join(REGISTRY_V1_BACKUP)).unwrap(),
            v1
        );
        let reg = crate::registry::Registry::restore(10, r.clone(), 5);
        assert_eq!(
            reg.standing(&uuid.parse().unwrap()),
            crate::enrollment::Standing::Legacy
        );
        save_registry(d.path(), &r).unwrap();
        assert!(
            std::fs::read_to_string(d.path().join(REGISTRY_FILE))
                .unwrap()
                .starts_with("gitmirror-state registry v4\n")
        );
        load_registry(d.path()).unwrap();
    }

    // SPEC §10, §12 "State files" (issue 16): a v2 registry (before drain and block)
    // loads with no worker drained and no repo blocked, is kept as .v2.bak, and what
    // is drained or blocked survives a save and a load.
    #[test]
    fn spec_10_v2_registry_is_migrated_and_drain_and_block_persist() {
        let d = tempfile::tempdir().unwrap();
        let uuid = "00000000-0000-0000-0000-000000000007";
        let v2 = format!(
            "gitmirror-state registry v2\n{{\"workers\":[{{\"uuid\":\"{uuid}\",\"id\":3,\"name\":\"w\",\"weight\":1.0,\"state\":\"alive\",\"state_since_ms\":1,\"addr\":null,\"last_seen_ms\":1,\"software\":\"s\",\"serve_url_base\":null,\"disk_free_bytes\":null,\"disk_total_bytes\":null,\"disk_low\":false,\"status\":\"\",\"next_seq\":4,\"acked_seq\":3,\"last_report_id\":9}}],\"removed\":[],\"approved\":[]}}\n"
        );
        std::fs::write(d.path().join(REGISTRY_FILE), &v2).unwrap();
        let mut r = load_registry(d.path()).unwrap();
        assert!(!r.workers[0].drained && r.blocked.is_empty());
        assert_eq!(
            std::fs::read_to_string(d.path().join(REGISTRY_V2_BACKUP)).unwrap(),
            v2
        );
        r.workers[0].drained = true;
        r.blocked.insert(
            "a/b/c".into(),
            crate::registry::Blocked {
                reason: "takedown #1".into(),
                at_ms: 7,
                by: "test".into(),
            },
        );
        save_registry(d.path(), &r).unwrap();
        let back = load_registry(d.path()).unwrap();
        assert!(back.workers[0].drained);
        assert_eq!(back.blocked["a/b/c"].reason, "takedown #1");
    }

    // SPEC §12 "State files", §14 (plan fork-pools C3): a v3 registry was written with
    // per-repo placement: it loads as `repo`, is kept as .v3.bak, and the placement
    // survives a save and a load.
    #[test]
    fn spec_12_registry_v3_migrates_keeps_repo_placement() {
        let d = tempfile::tempdir().unwrap();
        let v3 = "gitmirror-state registry v3\n{\"workers\":[],\"removed\":[],\"approved\":[]}\n";
        std::fs::write(d.path().join(REGISTRY_FILE), v3).unwrap();
        let r = load_registry(d.path()).unwrap();
        assert_eq!(r.placement, Some(Placement::Repo));
        assert_eq!(
            std::fs::read_to_string(d.path().join(REGISTRY_V3_BACKUP)).unwrap(),
            v3
        );
        // Unset in the configuration: the persisted placement stays.
        assert_eq!(
            resolve_placement(r.placement, None),
            (Placement::Repo, None)
        );
        save_registry(d.path(), &r).unwrap();
        let text = std::fs::read_to_string(d.path().join(REGISTRY_FILE)).unwrap();
        assert!(text.starts_with("gitmirror-state registry v4\n"), "{text}");
        assert!(text.contains("\"placement\":\"repo\""), "{text}");
        assert_eq!(
            load_registry(d.path()).unwrap().placement,
            Some(Placement::Repo)
        );
    }

    // SPEC §14: a state directory with nothing placed takes the configured placement, or
    // `project`.
    #[test]
    fn spec_14_fresh_state_defaults_to_project() {
        let d = tempfile::tempdir().unwrap();
        let r = load_registry(d.path()).unwrap();
        assert_eq!(r.placement, None);
        assert_eq!(
            resolve_placement(r.placement, None),
            (Placement::Project, None)
        );
        assert_eq!(
            resolve_placement(r.placement, Some(Placement::Repo)),
            (Placement::Repo, None)
        );
    }

    // The owner function (design.md "Owner function: points on a circle"): `points` on a
    // fresh state directory; rendezvous kept by one whose repos were placed before the
    // function was recorded (every earlier release's), so an upgrade moves nothing; an
    // unset key never flips a persisted one; a set one that differs is a switch.
    #[test]
    fn owner_function_fresh_upgraded_kept_and_switched() {
        assert_eq!(resolve_hashing(None, false, None), (Hashing::Points, None));
        assert_eq!(
            resolve_hashing(None, true, None),
            (Hashing::Rendezvous, None)
        );
        for h in [Hashing::Points, Hashing::Rendezvous] {
            assert_eq!(resolve_hashing(Some(h), true, None), (h, None));
            assert_eq!(resolve_hashing(Some(h), true, Some(h)), (h, None));
            assert_eq!(resolve_hashing(None, false, Some(h)), (h, None));
        }
        assert_eq!(
            resolve_hashing(None, true, Some(Hashing::Points)),
            (Hashing::Points, Some(Hashing::Rendezvous))
        );
        assert_eq!(
            resolve_hashing(Some(Hashing::Points), true, Some(Hashing::Rendezvous)),
            (Hashing::Rendezvous, Some(Hashing::Points))
        );
        // Saved and loaded, the function in force is the persisted one.
        let d = tempfile::tempdir().unwrap();
        let reg = crate::registry::Registry::new(4).with_hashing(Hashing::Points);
        save_registry(d.path(), &reg.to_file()).unwrap();
        let back = load_registry(d.path()).unwrap();
        assert_eq!(
            resolve_hashing(back.hashing, back.placement.is_some(), None),
            (Hashing::Points, None)
        );
    }

    // SPEC §14: "keeps it until the operator sets `placement` explicitly": an unset key
    // never flips a persisted placement; a set one that differs is a switch.
    #[test]
    fn spec_14_unset_key_keeps_persisted_placement() {
        for p in [Placement::Repo, Placement::Project] {
            assert_eq!(resolve_placement(Some(p), None), (p, None));
            assert_eq!(resolve_placement(Some(p), Some(p)), (p, None));
        }
        assert_eq!(
            resolve_placement(Some(Placement::Repo), Some(Placement::Project)),
            (Placement::Project, Some(Placement::Repo))
        );
        assert_eq!(
            resolve_placement(Some(Placement::Project), Some(Placement::Repo)),
            (Placement::Repo, Some(Placement::Project))
        );
        // Saved and loaded, the switched placement is the persisted one.
        let d = tempfile::tempdir().unwrap();
        let reg = crate::registry::Registry::new(4).with_placement(Placement::Project);
        save_registry(d.path(), &reg.to_file()).unwrap();
        let back = load_registry(d.path()).unwrap();
        assert_eq!(
            resolve_placement(back.placement, None),
            (Placement::Project, None)
        );
    }

    // SPEC §10: a file that fails to decode stops the daemon, naming the file and what to do.
    #[test]
    fn corrupt_registry_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let r = load_registry(d.path()).unwrap();
        assert!(r.workers.is_empty());
        save_registry(d.path(), &r).unwrap();
        load_registry(d.path()).unwrap();
        std::fs::write(
            d.path().join(REGISTRY_FILE),
            "gitmirror-state registry v1\n{\"work",
        )
        .unwrap();
        let e = load_registry(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("registry.json") && e.contains("move it aside"),
            "{e}"
        );
    }
}
