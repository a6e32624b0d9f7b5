//! Which repos a payload URL names (SPEC §15), without a scan of every repo: a map from
//! the hash of the lowercased normalised URL
//! ([`gitmirror_common::upstream_url::normalise`]) to the repo ids with that URL. The
//! exact (case-sensitive) match and the case-insensitive fallback come from the same
//! candidates, told apart by comparing their normalised URLs; hash collisions are
//! harmless for the same reason. Kept up to date from the index deltas by the main loop.

use gitmirror_common::upstream_url::normalise;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct UrlIndex {
    map: HashMap<u64, Vec<Arc<str>>>,
}

fn key(normalised: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(normalised.to_lowercase().as_bytes())
}

impl UrlIndex {
    /// Built from every repo's `(id, url)`.
    pub fn build<'a>(repos: impl IntoIterator<Item = (&'a Arc<str>, &'a str)>) -> Self {
        let mut idx = Self::default();
        for (id, url) in repos {
            idx.insert(id.clone(), url);
        }
        idx
    }

    pub fn insert(&mut self, id: Arc<str>, url: &str) {
        if let Some(n) = normalise(url) {
            let ids = self.map.entry(key(&n)).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }

    pub fn remove(&mut self, id: &str, url: &str) {
        let Some(n) = normalise(url) else {
            return;
        };
        let k = key(&n);
        if let Some(ids) = self.map.get_mut(&k) {
            ids.retain(|i| &**i != id);
            if ids.is_empty() {
                self.map.remove(&k);
            }
        }
    }

    /// The repos `urls` name: those whose URL matches one of them exactly (after
    /// normalisation); only when none does, those matching case-insensitively. `url_of`
    /// gives a repo's current URL. Sorted, without duplicates.
    pub fn lookup<'a>(
        &self,
        urls: &[String],
        url_of: impl Fn(&str) -> Option<&'a str>,
    ) -> Vec<Arc<str>> {
        let mut exact = Vec::new();
        let mut folded = Vec::new();
        for n in urls.iter().filter_map(|u| normalise(u)) {
            let Some(ids) = self.map.get(&key(&n)) else {
                continue;
            };
            let lower = n.to_lowercase();
            for id in ids {
                let Some(theirs) = url_of(id).and_then(normalise) else {
                    continue;
                };
                if theirs == n {
                    exact.push(id.clone());
                } else if theirs.to_lowercase() == lower {
                    folded.push(id.clone());
                }
            }
        }
        let mut out = if exact.is_empty() { folded } else { exact };
        out.sort();
        out.dedup();
        out
    }

    /// URLs (keys) held: for tests and the log.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(repos: &[(&str, &str)]) -> (UrlIndex, HashMap<String, String>) {
        let ids: Vec<(Arc<str>, &str)> = repos.iter().map(|(i, u)| (Arc::from(*i), *u)).collect();
        let idx = UrlIndex::build(ids.iter().map(|(i, u)| (i, *u)));
        let urls = repos
            .iter()
            .map(|(i, u)| ((*i).to_owned(), (*u).to_owned()))
            .collect();
        (idx, urls)
    }

    fn find(idx: &UrlIndex, urls: &HashMap<String, String>, payload: &[&str]) -> Vec<String> {
        let payload: Vec<String> = payload.iter().map(|s| (*s).to_owned()).collect();
        idx.lookup(&payload, |id| urls.get(id).map(String::as_str))
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    // SPEC §15 / issue 14 item 2: an index listing one upstream under several spellings
    // has every such entry matched by a payload spelling it yet another way; paths match
    // case-sensitively first, case-insensitively only when nothing matches exactly.
    #[test]
    fn spec_15_matching_spellings_and_case() {
        let (mut idx, mut urls) = index(&[
            ("a/A/b", "https://github.com/A/b"),
            ("a/a/b", "https://github.com/a/b.git"),
            ("s/a/b", "git@github.com:a/b.git"),
            ("o/t/h", "https://gitlab.com/a/b"),
        ]);
        let gh = ["https://github.com/a/b.git", "git@github.com:a/b.git"];
        assert_eq!(find(&idx, &urls, &gh), ["a/a/b", "s/a/b"]);
        assert_eq!(find(&idx, &urls, &["https://GITHUB.com/A/b/"]), ["a/A/b"]);
        // No exact match: the case-insensitive fallback takes all three.
        assert_eq!(
            find(&idx, &urls, &["https://github.com/A/B"]),
            ["a/A/b", "a/a/b", "s/a/b"]
        );
        assert!(find(&idx, &urls, &["https://github.com/a/c", "not a url", ""]).is_empty());
        // Index changes: a removed entry is not matched, an added one is.
        idx.remove("s/a/b", "git@github.com:a/b.git");
        urls.remove("s/a/b");
        idx.insert(Arc::from("n/a/b"), "ssh://git@github.com/a/b");
        urls.insert("n/a/b".into(), "ssh://git@github.com/a/b".into());
        assert_eq!(find(&idx, &urls, &gh), ["a/a/b", "n/a/b"]);
        idx.remove("o/t/h", "https://gitlab.com/a/b");
        assert_eq!(idx.len(), 1);
    }
}
