//! URL-substring search for `/repos?q=` (issue 16 item 2): which repos' URLs contain a
//! piece of text, one page at a time, in id order.
//!
//! A scan, not an n-gram index: every URL of the effective index set, shown form
//! ([`crate::redact::url`], so a search cannot probe a password) and lower-cased, sits in
//! one contiguous buffer in id order, and a page is a `memchr::memmem` scan of it from the
//! cursor on. At 1M URLs the snapshot is ~78 MB and a full scan 5–10 ms in release
//! (docs/scale.md "URL search"); a trigram index answering the same would be several
//! times the size. The snapshot is built on the index poller's thread whenever the index
//! changes ([`UrlIndex::build`]), swapped in whole, and scanned on a blocking thread of
//! the HTTP side: the main loop never sees more than the page's ids.

use crate::index::Entry;
use std::sync::{Arc, RwLock};

/// A snapshot of every URL, searchable.
#[derive(Debug, Default)]
pub struct UrlIndex {
    /// Lower-cased shown URLs, each ended by `\n`, in id order.
    text: Vec<u8>,
    /// Where each URL starts in `text`.
    starts: Vec<u32>,
    /// The ids, concatenated in order; id `i` is `ids[id_starts[i]..id_starts[i + 1]]`.
    ids: String,
    id_starts: Vec<u32>,
}

/// One page of hits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UrlHits {
    /// Repo ids whose URL contains the text, in id order.
    pub ids: Vec<String>,
    /// More hits follow the last one.
    pub more: bool,
}

impl UrlIndex {
    /// The snapshot of these entries (any order; duplicates by id keep the first).
    /// O(n log n) on the poller's thread.
    pub fn build(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut all: Vec<(String, String)> = entries
            .into_iter()
            .map(|e| {
                let url = crate::redact::url(&e.url).to_ascii_lowercase();
                (e.id, url)
            })
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all.dedup_by(|a, b| a.0 == b.0);
        let mut me = UrlIndex {
            text: Vec::with_capacity(all.iter().map(|(_, u)| u.len() + 1).sum()),
            starts: Vec::with_capacity(all.len()),
            ids: String::with_capacity(all.iter().map(|(i, _)| i.len()).sum()),
            id_starts: Vec::with_capacity(all.len() + 1),
        };
        for (id, url) in all {
            let (Ok(start), Ok(id_start)) =
                (u32::try_from(me.text.len()), u32::try_from(me.ids.len()))
            else {
                tracing::warn!("URL search: more than 4 GiB of URLs; the rest is not searchable");
                break;
            };
            me.starts.push(start);
            // A URL never holds a newline (index validation); one would only split a hit.
            me.text
                .extend(url.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
            me.text.push(b'\n');
            me.id_starts.push(id_start);
            me.ids.push_str(&id);
        }
        me.id_starts.push(me.ids.len() as u32);
        me
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Bytes held (for docs/scale.md's memory figure).
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.ids.capacity()
            + 4 * (self.starts.capacity() + self.id_starts.capacity())
    }

    fn id(&self, i: usize) -> &str {
        &self.ids[self.id_starts[i] as usize..self.id_starts[i + 1] as usize]
    }

    /// Up to `limit` ids, after the id `after`, whose URL contains `q` (ASCII case
    /// ignored). A page costs a scan from the cursor to its last hit (all of the buffer
    /// when hits are rare).
    pub fn search(&self, q: &str, after: Option<&str>, limit: usize) -> UrlHits {
        let needle = q.to_ascii_lowercase();
        if needle.is_empty() || needle.contains('\n') || limit == 0 {
            return UrlHits::default();
        }
        let first = match after {
            Some(a) => {
                let (mut lo, mut hi) = (0, self.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if self.id(mid) <= a {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
            None => 0,
        };
        let Some(&from) = self.starts.get(first) else {
            return UrlHits::default();
        };
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let mut hits = UrlHits::default();
        let mut pos = from as usize;
        while let Some(found) = finder.find(&self.text[pos..]) {
            let at = pos + found;
            // The entry holding the hit: the last start at or before it.
            let i = self.starts.partition_point(|&s| s as usize <= at) - 1;
            if hits.ids.len() == limit {
                hits.more = true;
                break;
            }
            hits.ids.push(self.id(i).to_owned());
            // On to the next URL: one hit per repo.
            pos = self
                .starts
                .get(i + 1)
                .map_or(self.text.len(), |&s| s as usize);
        }
        hits
    }
}

/// The current snapshot, shared between the poller (writer) and the HTTP side.
#[derive(Debug, Clone, Default)]
pub struct SharedUrls(Arc<RwLock<Arc<UrlIndex>>>);

impl SharedUrls {
    pub fn get(&self) -> Arc<UrlIndex> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    pub fn set(&self, index: UrlIndex) {
        let index = Arc::new(index);
        match self.0.write() {
            Ok(mut g) => *g = index,
            Err(e) => *e.into_inner() = index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn entry(id: &str, url: &str) -> Entry {
        Entry {
            id: id.into(),
            url: url.into(),
            index: "i".into(),
            metadata: None,
        }
    }

    // Issue 16 item 2: a URL substring finds the repos, in id order, one per repo,
    // paged by cursor; case is ignored; a password in a URL cannot be searched for.
    #[test]
    fn spec_9_url_substring_search_pages_in_id_order() {
        let u = UrlIndex::build([
            entry("z/zlib/zlib", "https://github.com/madler/zlib"),
            entry("a/abc/abc", "https://github.com/berkeley-abc/abc"),
            entry(
                "l/linux/linux",
                "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git",
            ),
            entry(
                "g/gitlab/x",
                "https://user:s3cret@GitLab.example.org/x/abcabc.git",
            ),
        ]);
        assert_eq!(u.len(), 4);
        let all = u.search("github.com", None, 10);
        assert_eq!(all.ids, ["a/abc/abc", "z/zlib/zlib"]);
        assert!(!all.more);
        let abc = u.search("ABC", None, 1);
        assert_eq!(abc.ids, ["a/abc/abc"]);
        assert!(abc.more);
        let next = u.search("abc", Some("a/abc/abc"), 1);
        assert_eq!(
            next.ids,
            ["g/gitlab/x"],
            "one hit per repo, then the next repo"
        );
        assert!(!next.more);
        assert_eq!(u.search("gitlab.example", None, 5).ids, ["g/gitlab/x"]);
        assert!(
            u.search("s3cret", None, 5).ids.is_empty(),
            "passwords are not shown, nor searched"
        );
        assert!(u.search("", None, 5).ids.is_empty());
        assert!(u.search("nowhere", None, 5).ids.is_empty());
        assert!(u.search("zlib", Some("zz"), 5).ids.is_empty());
        // A hit must not span two URLs.
        assert!(u.search("zlib\nhttps", None, 5).ids.is_empty());
        assert!(u.search("zlibhttps", None, 5).ids.is_empty());
    }

    /// docs/scale.md "URL search": 1M synthetic URLs, build time, memory, and the time of
    /// a page for a common, a rare and an absent substring (the absent one scans all).
    /// `GITMIRROR_URL_SEARCH_N` sets the count (default 1,000,000 in release builds,
    /// 100,000 in debug ones); run with
    /// `cargo test --release -p gitmirrord --lib url_search -- --nocapture`.
    #[test]
    fn spec_12_url_search_at_1m_figures() {
        let n: usize = std::env::var("GITMIRROR_URL_SEARCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if cfg!(debug_assertions) {
                100_000
            } else {
                1_000_000
            });
        let hosts = [
            "github.com",
            "gitlab.com",
            "git.kernel.org",
            "bitbucket.org",
            "codeberg.org",
        ];
        let t = Instant::now();
        let u = UrlIndex::build((0..n).map(|i| {
            let owner = format!("owner{}", i % 50_000);
            entry(
                &format!("{}/p{i:07}/r{i:07}", (b'a' + (i % 26) as u8) as char),
                &format!(
                    "https://{}/{owner}/project-{i:07}.git",
                    hosts[i % hosts.len()]
                ),
            )
        }));
        let build = t.elapsed();
        let mut line = format!(
            "url search: {n} URLs, built in {} ms, {} MB",
            build.as_millis(),
            u.heap_bytes() / 1_000_000
        );
        for q in ["github", "owner4242/", "project-0999999", "no-such-text"] {
            let t = Instant::now();
            let hits = u.search(q, None, 50);
            let took = t.elapsed();
            // What each finds; the times are figures to read, not to assert.
            match q {
                "github" => assert!(hits.ids.len() == 50 && hits.more, "{q}"),
                "no-such-text" => assert!(hits.ids.is_empty() && !hits.more, "{q}"),
                _ => {}
            }
            line.push_str(&format!(
                "; {q:?}: {} hits{} in {:.1} ms",
                hits.ids.len(),
                if hits.more { "+" } else { "" },
                took.as_secs_f64() * 1000.0
            ));
        }
        println!("{line}");
    }
}
