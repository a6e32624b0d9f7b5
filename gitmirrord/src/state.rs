//! The coordinator's own state files (SPEC §10): `registry.json` and `repos.json`, both
//! through `common::statefile` (versioned header, crash-safe replace, loud corruption).
//! The event log lives in [`crate::events`], index state in [`crate::index`].

use crate::fleet::{REPOS_KIND, REPOS_VERSION, RepoStatus, ReposFile, SavedRepo};
use crate::registry::{self, RegistryFile};
use gitmirror_common::statefile::{self, StateError};
use std::collections::HashMap;
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

/// Take each repo's published-refs digest from the event log (`EventLog::take_published`:
/// the digest recorded with its last event). The log is appended durably before every
/// acknowledgement, `repos.json` only every few seconds, so after `kill -9` the saved
/// digest can predate the last events: a failover clone of refs already announced would
/// then look like news and be published twice. A repo with events but not yet in
/// `repos.json` gets an entry holding just this. The refs one by one stay in the event
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
    // repos.json did not list yet; other repos keep theirs.
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
