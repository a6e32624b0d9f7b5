//! The coordinator's registry file (SPEC §10): `registry.json`, through
//! `common::statefile` (versioned header, crash-safe replace, loud corruption). The repos'
//! status lives in [`crate::repo_store`], the event log in [`crate::events`], index state
//! in [`crate::index`].

use crate::registry::{self, RegistryFile};
use gitmirror_common::statefile::{self, StateError};
use std::path::Path;

pub const REGISTRY_FILE: &str = "registry.json";
const MODE: u32 = 0o640;

/// Load the registry; a missing file is an empty one, a corrupt one an error naming it.
pub fn load_registry(dir: &Path) -> Result<RegistryFile, StateError> {
    Ok(
        statefile::read_json(&dir.join(REGISTRY_FILE), registry::KIND, registry::VERSION)?
            .unwrap_or_default(),
    )
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
