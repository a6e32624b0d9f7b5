//! What an owner's successful outcome publishes, against the refs already published for
//! its repo (SPEC §8: one upstream change, one event; design.md "Published refs and relists").
//!
//! The coordinator keeps per repo the digest of the published ref set and, for one outcome
//! batch, the published values of the refs the batch changes ([`PublishedRefs`]). A change
//! of a ref *from* its published value is news; a change *to* its published value is
//! known (another worker announced it); a change from any other value cannot be placed in
//! time: the report may predate a failover whose owner published newer values since, or
//! the mirror may have seen what was never published. The owner is then asked to relist
//! (`CoordMsg::Relist`): it fetches and reports every ref, and the whole set is compared.
//! Pure: digests and hashes in, a judgement out.

use crate::events::{PublishedRefs, is_news, ref_key, ref_value};
use gitmirror_wire::{Outcome, RefChange};

/// What one outcome publishes.
#[derive(Debug, PartialEq, Eq)]
pub struct Judgement<'a> {
    /// The changes that are news: the event's refs (none: no event).
    pub news: Vec<&'a RefChange>,
    /// The outcome lists every ref (a clone or a relist): the event replaces the set.
    pub whole: bool,
    /// The published digest after the outcome.
    pub published: Option<u64>,
    /// The worker's refs still differ from the published ones in a way its changes do not
    /// explain: ask it to relist.
    pub relist: bool,
}

/// Judge an owner's successful (`Cloned` or `Fetched`) outcome. `refs` holds the published
/// values of the refs it changes when they were loaded. A worker that cannot relist
/// (protocol 2) gets the older rule for changes that cannot be placed: news unless their
/// new value is the published one.
pub fn judge<'a>(
    published: Option<u64>,
    refs: Option<&PublishedRefs>,
    o: &'a Outcome,
    can_relist: bool,
) -> Judgement<'a> {
    let cloned = matches!(o.result, gitmirror_wire::FetchResult::Cloned);
    let changed = !o.changes.is_empty();
    let digest = o.refs_digest;
    let Some(p) = published else {
        // Nothing published yet (or forgotten after a failed append): all news.
        return Judgement {
            news: o.changes.iter().collect(),
            whole: cloned,
            published: changed.then_some(digest),
            relist: false,
        };
    };
    let base = gitmirror_wire::refs::base(digest, &o.changes);
    if cloned || (base == 0 && base != p) {
        // Every ref is listed: news when the set as a whole differs.
        let news = if digest != p {
            o.changes.iter().collect()
        } else {
            Vec::new()
        };
        return Judgement {
            news,
            whole: true,
            published: Some(if changed { digest } else { p }),
            relist: false,
        };
    }
    let mut next = p;
    let mut news = Vec::new();
    let mut unplaced = Vec::new();
    for c in &o.changes {
        let old = c.old.as_deref().map(|id| ref_value(&c.name, id));
        let new = c.new.as_deref().map(|id| ref_value(&c.name, id));
        let at = match refs {
            Some(r) => r.get(&ref_key(&c.name)).copied(),
            // Values not loaded: a change computed against the published set is from them.
            None if base == p => old,
            None => {
                unplaced.push(c);
                continue;
            }
        };
        if new == at {
            continue;
        }
        if old == at {
            next = next
                .wrapping_sub(at.unwrap_or(0))
                .wrapping_add(new.unwrap_or(0));
            news.push(c);
        } else {
            unplaced.push(c);
        }
    }
    if !can_relist && !unplaced.is_empty() {
        // The older rule: news unless known; the worker's set is what is published now.
        news = o
            .changes
            .iter()
            .filter(|c| match refs {
                Some(r) => is_news(r, &c.name, c.new.as_deref()),
                None => digest != p,
            })
            .collect();
        return Judgement {
            news,
            whole: false,
            published: Some(digest),
            relist: false,
        };
    }
    Judgement {
        news,
        whole: false,
        published: Some(next),
        relist: can_relist && next != digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitmirror_wire::FetchResult;
    use gitmirror_wire::refs::digest;

    fn change(name: &str, old: Option<&str>, new: Option<&str>) -> RefChange {
        RefChange {
            name: name.into(),
            old: old.map(Into::into),
            new: new.map(Into::into),
        }
    }

    fn outcome(result: FetchResult, changes: Vec<RefChange>, after: &[(&str, &str)]) -> Outcome {
        Outcome {
            report_id: 1,
            repo: "r".into(),
            url: "git://h/r".into(),
            finished_ms: 0,
            duration_ms: 0,
            result,
            changes,
            ref_count: after.len() as u32,
            refs_digest: digest(after.iter().copied()),
            next_due_ms: 0,
        }
    }

    fn published(refs: &[(&str, &str)]) -> (Option<u64>, PublishedRefs) {
        (
            Some(digest(refs.iter().copied())),
            refs.iter()
                .map(|(n, id)| (ref_key(n), ref_value(n, id)))
                .collect(),
        )
    }

    fn names(j: &Judgement<'_>) -> Vec<(String, Option<String>)> {
        j.news
            .iter()
            .map(|c| (c.name.clone(), c.new.clone()))
            .collect()
    }

    const DEV: &str = "refs/heads/dev";
    const MAIN: &str = "refs/heads/main";

    // SPEC §8: a change from the published value is news; the published
    // digest follows it.
    #[test]
    fn spec_8_a_change_from_the_published_value_is_news() {
        let (p, refs) = published(&[(MAIN, "a"), (DEV, "d")]);
        let o = outcome(
            FetchResult::Fetched,
            vec![change(MAIN, Some("a"), Some("b"))],
            &[(MAIN, "b"), (DEV, "d")],
        );
        for r in [Some(&refs), None] {
            let j = judge(p, r, &o, true);
            assert_eq!(names(&j), [(MAIN.to_owned(), Some("b".to_owned()))]);
            assert_eq!(j.published, Some(o.refs_digest));
            assert!(!j.relist && !j.whole);
        }
    }

    // SPEC §8: the crash-loop case. A returning owner re-sends two old
    // reports of one ref (X → Y, Y → Z) after the failover owner published Y and then Z.
    // Neither is an event; the first cannot be placed (from X, while Z is published), so
    // the owner is asked to relist; the relist of the same refs is no event either.
    #[test]
    fn spec_8_old_reports_of_a_ref_replaced_since_are_no_events() {
        let (p, mut refs) = published(&[(DEV, "z")]);
        let first = outcome(
            FetchResult::Fetched,
            vec![change(DEV, Some("x"), Some("y"))],
            &[(DEV, "y")],
        );
        let j = judge(p, Some(&refs), &first, true);
        assert!(j.news.is_empty(), "{:?}", j.news);
        assert_eq!(j.published, p);
        assert!(j.relist);
        let second = outcome(
            FetchResult::Fetched,
            vec![change(DEV, Some("y"), Some("z"))],
            &[(DEV, "z")],
        );
        let j = judge(p, Some(&refs), &second, true);
        assert!(j.news.is_empty() && !j.relist);
        // The relist lists every ref as new.
        let relist = outcome(
            FetchResult::Fetched,
            vec![change(DEV, None, Some("z"))],
            &[(DEV, "z")],
        );
        let j = judge(p, Some(&refs), &relist, true);
        assert!(j.news.is_empty() && j.whole && !j.relist);
        // Had upstream moved on meanwhile, the relist is one event with the whole set.
        refs.clear();
        let moved = outcome(
            FetchResult::Fetched,
            vec![change(DEV, None, Some("w")), change(MAIN, None, Some("m"))],
            &[(DEV, "w"), (MAIN, "m")],
        );
        let j = judge(p, Some(&refs), &moved, true);
        assert_eq!(j.news.len(), 2);
        assert!(j.whole);
        assert_eq!(j.published, Some(moved.refs_digest));
    }

    // SPEC §8: a returning owner whose mirror saw a change never
    // published reports nothing new at its next fetch; its digest differs from the
    // published one, so it is asked to relist (else that change would be lost).
    #[test]
    fn spec_8_a_mirror_ahead_of_the_published_refs_is_asked_to_relist() {
        let (p, refs) = published(&[(DEV, "z")]);
        let quiet = outcome(FetchResult::Fetched, vec![], &[(DEV, "w")]);
        let j = judge(p, Some(&refs), &quiet, true);
        assert!(j.news.is_empty());
        assert!(j.relist);
        // The same at the published refs: nothing to do.
        let same = outcome(FetchResult::Fetched, vec![], &[(DEV, "z")]);
        assert!(!judge(p, Some(&refs), &same, true).relist);
    }

    // SPEC §8: of one report, the change from the published value is
    // news and the change to a published value is known; together they explain the
    // worker's set, so no relist.
    #[test]
    fn spec_8_known_and_new_changes_in_one_report() {
        let (p, refs) = published(&[(MAIN, "b"), (DEV, "d")]);
        let o = outcome(
            FetchResult::Fetched,
            vec![
                change(DEV, None, Some("d")),
                change(MAIN, Some("b"), Some("c")),
            ],
            &[(MAIN, "c"), (DEV, "d")],
        );
        let j = judge(p, Some(&refs), &o, true);
        assert_eq!(names(&j), [(MAIN.to_owned(), Some("c".to_owned()))]);
        assert_eq!(j.published, Some(o.refs_digest));
        assert!(!j.relist);
    }

    // SPEC §12 "Upgrades": a protocol 2 worker cannot relist; its changes that cannot be
    // placed are judged as before (news unless their new value is published).
    #[test]
    fn spec_12_a_protocol_2_worker_keeps_the_older_rule() {
        let (p, refs) = published(&[(DEV, "z")]);
        let o = outcome(
            FetchResult::Fetched,
            vec![change(DEV, Some("x"), Some("y"))],
            &[(DEV, "y")],
        );
        let j = judge(p, Some(&refs), &o, false);
        assert_eq!(names(&j), [(DEV.to_owned(), Some("y".to_owned()))]);
        assert_eq!(j.published, Some(o.refs_digest));
        assert!(!j.relist);
    }

    // A clone is judged as a whole; nothing published yet makes everything news.
    #[test]
    fn clones_and_first_publication() {
        let (p, refs) = published(&[(DEV, "d")]);
        let same = outcome(
            FetchResult::Cloned,
            vec![change(DEV, None, Some("d"))],
            &[(DEV, "d")],
        );
        let j = judge(p, Some(&refs), &same, true);
        assert!(j.news.is_empty() && j.whole);
        let first = judge(None, None, &same, true);
        assert_eq!(first.news.len(), 1);
        assert_eq!(first.published, Some(same.refs_digest));
    }
}
