//! The coordinator's registry file (SPEC §10): `registry.json`, through
//! `common::statefile` (versioned header, crash-safe replace, loud corruption). The repos'
//! status lives in [`crate::repo_store`], the event log in [`crate::events`], index state
//! in [`crate::index`].

use crate::registry::{self, RegistryFile};
use gitmirror_common::statefile::{self, StateError};
use std::path::Path;

pub const REGISTRY_FILE: &str = "registry.json";
const MODE: u32 = 0o640;

/// Where the previous release's registry is kept after the migration.
pub const REGISTRY_V1_BACKUP: &str = "registry.json.v1.bak";

/// Load the registry; a missing file is an empty one, a corrupt one an error naming it.
/// A v1 file (before per-worker certificates) is read as v2 (every worker legacy, none
/// removed or approved), kept as [`REGISTRY_V1_BACKUP`], and replaced by the next save.
pub fn load_registry(dir: &Path) -> Result<RegistryFile, StateError> {
    let path = dir.join(REGISTRY_FILE);
    match statefile::read_json(&path, registry::KIND, registry::VERSION) {
        Ok(r) => Ok(r.unwrap_or_default()),
        Err(StateError::Version { found, .. }) if found == format!("{} v1", registry::KIND) => {
            let v1: RegistryFile =
                statefile::read_json(&path, registry::KIND, 1)?.unwrap_or_default();
            if let Some(bytes) = statefile::read_if_exists(&path)? {
                statefile::write_atomic(&dir.join(REGISTRY_V1_BACKUP), &bytes, MODE)?;
            }
            tracing::info!(
                workers = v1.workers.len(),
                backup = REGISTRY_V1_BACKUP,
                "migrating the worker registry to v2 (per-worker certificates): its workers are admitted by the join token until they enroll"
            );
            Ok(v1)
        }
        Err(e) => Err(e),
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
                .starts_with("gitmirror-state registry v2\n")
        );
        load_registry(d.path()).unwrap();
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
