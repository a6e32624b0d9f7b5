//! Pages of a repo's refs (protocol 3, SPEC §12 "Event retention": `GET
//! /api/repos/{id}/refs`). The coordinator keeps digests, not ref names, so it asks the
//! worker holding the repo with a [`RefsQuery`]; the worker answers with [`page`], and the
//! coordinator accepts the answer only if [`check`] finds it is one it could have asked for.
//!
//! A page is bounded by `limit` (at most [`MAX_REFS_LIMIT`]) and by bytes: its frame stays
//! under [`CHUNK_BYTES`] whatever the ref names, so a repo with 1M refs pages through
//! frames of bounded size.

use crate::chunk::{CHUNK_BYTES, encoded_len};
use crate::message::{RefEntry, RefsPage, RefsQuery};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The largest `limit` of a page.
pub const MAX_REFS_LIMIT: u32 = 10_000;

/// Room for the page's own fields besides `refs`, `repo` and `next` (query id, lengths,
/// options, the message tag and the frame's length prefix).
const OVERHEAD: usize = 64;

/// The page of `refs` (name → object id) that `q` asks for: names after `q.after`, in
/// order, at most `q.limit` (capped at [`MAX_REFS_LIMIT`]) and at most [`CHUNK_BYTES`] in
/// all. `next` names the last ref given when more follow. A ref too long to fit a page on
/// its own makes an error page rather than an oversized frame.
pub fn page(q: &RefsQuery, refs: &BTreeMap<String, String>) -> RefsPage {
    let limit = q.limit.clamp(1, MAX_REFS_LIMIT) as usize;
    let lower = match &q.after {
        Some(a) => Bound::Excluded(a.as_str()),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    let mut size = OVERHEAD + encoded_len(&q.repo);
    let mut more = false;
    for (name, id) in refs.range::<str, _>((lower, Bound::Unbounded)) {
        let entry = RefEntry {
            name: name.clone(),
            id: id.clone(),
        };
        // The entry, and its name once more as `next`.
        let n = encoded_len(&entry) + encoded_len(name);
        if out.len() == limit || size + n > CHUNK_BYTES {
            more = true;
            break;
        }
        size += encoded_len(&entry);
        out.push(entry);
    }
    if more && out.is_empty() {
        return error(q, "a ref name is too long to fit one page".into());
    }
    let next = if more {
        out.last().map(|e| e.name.clone())
    } else {
        None
    };
    RefsPage {
        query: q.query,
        repo: q.repo.clone(),
        refs: out,
        next,
        error: None,
    }
}

/// The answer to `q` when there are no refs to give, saying why.
pub fn error(q: &RefsQuery, why: String) -> RefsPage {
    RefsPage {
        query: q.query,
        repo: q.repo.clone(),
        refs: Vec::new(),
        next: None,
        error: Some(why),
    }
}

/// At most 100 characters of `s`, for messages quoting what a peer sent.
pub fn short(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Whether `p` is an answer to `q` that a worker following [`page`] could give: same query
/// and repo, names in strictly increasing order after `q.after`, no more than asked for,
/// within [`CHUNK_BYTES`], `next` naming its last ref. `Err` says what is wrong, for the
/// protocol error that closes the connection.
pub fn check(q: &RefsQuery, p: &RefsPage) -> Result<(), String> {
    if p.query != q.query || p.repo != q.repo {
        return Err(format!(
            "a refs page for query {} of {:?} answered query {} of {:?}",
            p.query,
            short(&p.repo),
            q.query,
            q.repo
        ));
    }
    let limit = q.limit.clamp(1, MAX_REFS_LIMIT) as usize;
    if p.refs.len() > limit {
        return Err(format!(
            "a refs page of {} refs for a query of at most {limit}",
            p.refs.len()
        ));
    }
    let size = encoded_len(p);
    if size > CHUNK_BYTES {
        return Err(format!(
            "a refs page of {size} bytes (at most {CHUNK_BYTES})"
        ));
    }
    if p.error.is_some() && (!p.refs.is_empty() || p.next.is_some()) {
        return Err("a refs page with both an error and refs".into());
    }
    let mut prev = q.after.as_deref();
    for e in &p.refs {
        if prev.is_some_and(|prev| e.name.as_str() <= prev) {
            return Err(format!(
                "a refs page out of order at {:?} (after {:?})",
                short(&e.name),
                prev.map(short)
            ));
        }
        prev = Some(&e.name);
    }
    match &p.next {
        Some(n) if p.refs.last().map(|e| &e.name) != Some(n) => Err(format!(
            "a refs page whose next {:?} is not its last ref",
            short(n)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(n: usize) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("refs/heads/b{i:05}"), format!("{i:040x}")))
            .collect()
    }

    fn query(after: Option<&str>, limit: u32) -> RefsQuery {
        RefsQuery {
            query: 7,
            repo: "a/b/c".into(),
            after: after.map(str::to_owned),
            limit,
        }
    }

    /// Follow `next` from the start; every page checks against its query.
    fn all_pages(all: &BTreeMap<String, String>, limit: u32) -> (Vec<RefEntry>, usize) {
        let mut got = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let q = query(after.as_deref(), limit);
            let p = page(&q, all);
            assert_eq!(check(&q, &p), Ok(()));
            pages += 1;
            got.extend(p.refs);
            match p.next {
                Some(n) => after = Some(n),
                None => return (got, pages),
            }
        }
    }

    #[test]
    fn spec_12_refs_pages_cover_every_ref_once_in_order() {
        let all = refs(2_345);
        let (got, pages) = all_pages(&all, 1000);
        assert_eq!(pages, 3);
        let want: Vec<RefEntry> = all
            .iter()
            .map(|(n, i)| RefEntry {
                name: n.clone(),
                id: i.clone(),
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn spec_12_refs_page_ends_exactly_at_the_last_ref() {
        let all = refs(10);
        let q = query(None, 10);
        let p = page(&q, &all);
        assert_eq!(p.refs.len(), 10);
        assert_eq!(p.next, None, "nothing follows: no cursor");
        let q = query(Some("refs/heads/b00004"), 3);
        let p = page(&q, &all);
        let names: Vec<&str> = p.refs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "refs/heads/b00005",
                "refs/heads/b00006",
                "refs/heads/b00007"
            ]
        );
        assert_eq!(p.next.as_deref(), Some("refs/heads/b00007"));
        // A cursor that is not a ref name still pages from where it sorts.
        let p = page(&query(Some("refs/heads/b00008x"), 5), &all);
        assert_eq!(p.refs.len(), 1);
        assert_eq!(p.refs[0].name, "refs/heads/b00009");
        assert_eq!(page(&query(Some("zzz"), 5), &all).refs, vec![]);
    }

    #[test]
    fn spec_12_refs_page_is_bounded_by_bytes_and_by_the_limit_cap() {
        // 10k refs of ~300-byte names: far more than one chunk at the limit.
        let all: BTreeMap<String, String> = (0..10_000)
            .map(|i| {
                (
                    format!("refs/heads/{}{i:05}", "x".repeat(300)),
                    "0".repeat(40),
                )
            })
            .collect();
        let q = query(None, MAX_REFS_LIMIT);
        let p = page(&q, &all);
        assert!(p.refs.len() < 10_000 && !p.refs.is_empty());
        assert!(encoded_len(&p) <= CHUNK_BYTES);
        assert!(
            crate::encode_frame(&crate::WorkerMsg::RefsPage(p.clone()))
                .unwrap()
                .len()
                <= CHUNK_BYTES
        );
        assert!(p.next.is_some());
        let (got, _) = all_pages(&all, MAX_REFS_LIMIT);
        assert_eq!(got.len(), all.len());
        // A limit above the cap is cut to it.
        let p = page(&query(None, u32::MAX), &refs(12_000));
        assert_eq!(p.refs.len(), MAX_REFS_LIMIT as usize);
    }

    #[test]
    fn spec_12_a_ref_too_long_for_a_page_is_an_error_not_a_big_frame() {
        let mut all = BTreeMap::new();
        all.insert(
            "refs/heads/".to_owned() + &"y".repeat(CHUNK_BYTES),
            "0".into(),
        );
        let p = page(&query(None, 10), &all);
        assert!(p.refs.is_empty());
        assert!(p.error.is_some());
        assert_eq!(check(&query(None, 10), &p), Ok(()));
    }

    #[test]
    fn spec_12_hostile_refs_pages_are_refused() {
        let all = refs(20);
        let q = query(Some("refs/heads/b00003"), 5);
        let good = page(&q, &all);
        assert_eq!(check(&q, &good), Ok(()));
        let bad = |f: &dyn Fn(&mut RefsPage)| {
            let mut p = good.clone();
            f(&mut p);
            check(&q, &p)
        };
        assert!(bad(&|p| p.query = 8).is_err(), "another query");
        assert!(bad(&|p| p.repo = "x/y/z".into()).is_err(), "another repo");
        assert!(
            bad(&|p| p.refs.extend(good.refs.clone())).is_err(),
            "over the limit, repeated"
        );
        assert!(bad(&|p| p.refs.reverse()).is_err(), "out of order");
        assert!(
            bad(&|p| p.refs[0].name = "refs/heads/b00001".into()).is_err(),
            "not after the cursor"
        );
        assert!(
            bad(&|p| p.next = Some("elsewhere".into())).is_err(),
            "next not the last"
        );
        assert!(
            bad(&|p| p.error = Some("no".into())).is_err(),
            "error with refs"
        );
        let big = RefsQuery {
            limit: MAX_REFS_LIMIT,
            after: None,
            ..q.clone()
        };
        let mut p = page(&big, &BTreeMap::new());
        p.refs = (0..3)
            .map(|i| RefEntry {
                name: format!("{i}{}", "z".repeat(CHUNK_BYTES / 2)),
                id: String::new(),
            })
            .collect();
        assert!(check(&big, &p).is_err(), "over the byte bound");
    }
}
