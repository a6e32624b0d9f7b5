//! The coordinator's own state files (SPEC §10): `registry.json` and `repos.json`, both
//! through `common::statefile` (versioned header, crash-safe replace, loud corruption).
//! The event log lives in [`crate::events`], index state in [`crate::index`].

use crate::fleet::{REPOS_KIND, REPOS_VERSION, ReposFile};
use crate::registry::{self, RegistryFile};
use gitmirror_common::statefile::{self, StateError};
use std::path::Path;

pub const REGISTRY_FILE: &str = "registry.json";
pub const REPOS_FILE: &str = "repos.json";
const MODE: u32 = 0o640;

/// Load both files; a missing file is empty state, a corrupt one is an error naming it.
pub fn load(dir: &Path) -> Result<(RegistryFile, ReposFile), StateError> {
    let reg = statefile::read_json(&dir.join(REGISTRY_FILE), registry::KIND, registry::VERSION)?
        .unwrap_or_default();
    let repos =
        statefile::read_json(&dir.join(REPOS_FILE), REPOS_KIND, REPOS_VERSION)?.unwrap_or_default();
    Ok((reg, repos))
}

/// Write whichever of the two is given.
pub fn save(
    dir: &Path,
    registry: Option<&RegistryFile>,
    repos: Option<&ReposFile>,
) -> Result<(), StateError> {
    if let Some(r) = registry {
        statefile::write_json(
            &dir.join(REGISTRY_FILE),
            registry::KIND,
            registry::VERSION,
            r,
            MODE,
        )?;
    }
    if let Some(r) = repos {
        statefile::write_json(&dir.join(REPOS_FILE), REPOS_KIND, REPOS_VERSION, r, MODE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §10: a file that fails to decode stops the daemon, naming the file and what to do.
    #[test]
    fn corrupt_registry_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (r, p) = load(d.path()).unwrap();
        assert!(r.workers.is_empty() && p.repos.is_empty());
        save(d.path(), Some(&r), Some(&p)).unwrap();
        load(d.path()).unwrap();
        std::fs::write(
            d.path().join(REGISTRY_FILE),
            "gitmirror-state registry v1\n{\"work",
        )
        .unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("registry.json") && e.contains("move it aside"),
            "{e}"
        );
    }
}
