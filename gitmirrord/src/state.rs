//! The coordinator's registry file (SPEC §10): `registry.json`, through
//! `common::statefile` (versioned header, crash-safe replace, loud corruption). The repos'
//! status lives in [`crate::repo_store`], the event log in [`crate::events`], index state
//! in [`crate::index`].

use crate::fleet::{RepoStatus, ReposFile, SavedRepo};
use crate::registry::{self, RegistryFile};
use gitmirror_common::statefile::{self, StateError};
use std::collections::HashMap;
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

/// Take each repo's published-refs digest from the event log (`EventLog::take_published`:
/// the digest recorded with its last event). The log is appended durably before every
/// acknowledgement, the repo status only every few seconds, so after `kill -9` the saved
/// digest can predate the last events: a failover clone of refs already announced would
/// then look like news and be published twice. A repo with events but not yet in
/// the saved status gets an entry holding just this. The refs one by one stay in the event
/// log and are read when an outcome needs them.
pub fn merge_published(repos: &mut ReposFile, digests: &HashMap<String, u64>) {
    for (id, digest) in digests {
        repos
            .repos
            .entry(id.to_owned())
            .or_insert_with(|| SavedRepo {
                owner: None,
                holders: Vec::new(),
                status: RepoStatus::default(),
                state: None,
            })
            .status
            .published = Some(*digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §10: the event log's digests win over older saved ones and reach repos that
    // the saved status did not list yet; other repos keep theirs.
    #[test]
    fn published_digests_from_the_log_win() {
        let mut repos = ReposFile::default();
        for (id, d) in [("a/a/a", Some(1)), ("b/b/b", Some(2))] {
            repos.repos.insert(
                id.into(),
                SavedRepo {
                    owner: None,
                    holders: Vec::new(),
                    status: RepoStatus {
                        published: d,
                        fetches: 7,
                        ..RepoStatus::default()
                    },
                    state: None,
                },
            );
        }
        let log: HashMap<String, u64> = [("a/a/a".into(), 10), ("c/c/c".into(), 30)].into();
        merge_published(&mut repos, &log);
        let got: Vec<(&str, Option<u64>, u64)> = repos
            .repos
            .iter()
            .map(|(id, r)| (id.as_str(), r.status.published, r.status.fetches))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a/a/a", Some(10), 7),
                ("b/b/b", Some(2), 7),
                ("c/c/c", Some(30), 0)
            ]
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
