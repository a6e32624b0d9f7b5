//! What an assignment delta does to the repos this worker holds (SPEC §6, §7): decided
//! from the delta, the worker's state, whether a mirror is on disk, and `now`. The loop
//! in `run` carries it out: journal records, the schedule, the acknowledgement.

use crate::mirror;
use crate::state::{Disposal, Repo, Repos};
use crate::store::Record;
use gitmirror_wire::AssignDelta;

/// What the loop does after [`apply`].
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Journal records besides the changed repos' own.
    pub records: Vec<Record>,
    /// Repos whose record changed (new, or a new URL): written with `records`.
    pub changed: Vec<String>,
    /// Repos to fetch now (new ones, and those with a new URL).
    pub urgent: Vec<String>,
    /// Repos no longer held (every drop order, a refused id too): nothing more is
    /// planned, copied or followed for them.
    pub forgotten: Vec<String>,
    pub added: usize,
    pub dropped: usize,
}

/// Apply `delta` to `state` at `now`. `on_disk(id)`: a usable mirror of `id` is on disk
/// (not one being removed), so a repo assigned again is fetched, not cloned.
///
/// An id this worker refuses to use as a path, or a URL it refuses to fetch, is logged
/// and skipped. A dropped mirror goes to the trash, never straight away: the coordinator
/// may be wrong (a worker that lied about a complete mirror, issue 10), and the trash
/// keeps it for 72 h.
pub(crate) fn apply(
    state: &mut Repos,
    delta: AssignDelta,
    now: i64,
    on_disk: impl Fn(&str) -> bool,
) -> Applied {
    let mut out = Applied::default();
    for spec in delta.upsert {
        if !mirror::valid_id(&spec.id) {
            tracing::error!(repo = ?spec.id, url = ?spec.url, "the coordinator assigned a repo id this worker refuses to use as a path; ignoring it");
            continue;
        }
        if let Err(why) = mirror::check_url(&spec.url) {
            tracing::error!(repo = %spec.id, "the coordinator assigned a URL this worker refuses to use ({why}); ignoring it");
            continue;
        }
        match state.repos.get_mut(&spec.id) {
            Some(repo) if repo.url == spec.url => {}
            Some(repo) => {
                tracing::info!(repo = %spec.id, old = %repo.url, new = %spec.url, "upstream URL changed; fetching from the new one");
                repo.url = spec.url;
                out.changed.push(spec.id.clone());
                out.urgent.push(spec.id);
            }
            None => {
                if state.disposals.remove(&spec.id).is_some() {
                    out.records.push(Record::Disposal {
                        id: spec.id.clone(),
                        disposal: None,
                    });
                }
                let mut repo = Repo::new(spec.url, on_disk(&spec.id));
                repo.next_due_ms = now;
                state.repos.insert(spec.id.clone(), repo);
                out.changed.push(spec.id.clone());
                out.urgent.push(spec.id);
                out.added += 1;
            }
        }
    }
    for order in delta.drop {
        if !mirror::valid_id(&order.id) {
            tracing::error!(repo = ?order.id, "the coordinator dropped a repo id that is not a valid path; ignoring it");
            out.forgotten.push(order.id);
            continue;
        }
        // `Delete` stays for disposals journaled by older releases.
        let disposal = Disposal::Trash;
        tracing::debug!(repo = %order.id, reason = ?order.reason, "dropped by the coordinator");
        state.repos.remove(&order.id);
        state.disposals.insert(order.id.clone(), disposal);
        out.records.push(Record::Remove {
            id: order.id.clone(),
        });
        out.records.push(Record::Disposal {
            id: order.id.clone(),
            disposal: Some(disposal),
        });
        out.forgotten.push(order.id);
        out.dropped += 1;
    }
    if out.added + out.dropped > 0 {
        tracing::info!(
            seq = delta.seq,
            added = out.added,
            dropped = out.dropped,
            held = state.repos.len(),
            "assignment changed"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitmirror_wire::{DropOrder, DropReason, RepoSpec};

    fn spec(id: &str, url: &str) -> RepoSpec {
        RepoSpec {
            id: id.into(),
            url: url.into(),
        }
    }

    fn drop(id: &str) -> DropOrder {
        DropOrder {
            id: id.into(),
            reason: DropReason::Moved,
        }
    }

    fn delta(upsert: Vec<RepoSpec>, drop: Vec<DropOrder>) -> AssignDelta {
        AssignDelta {
            seq: 1,
            upsert,
            drop,
        }
    }

    const A: &str = "https://example.org/a.git";
    const B: &str = "https://example.org/b.git";

    // SPEC §6/§7: new repos are due now (fetched when a mirror is on disk, cloned when
    // not), a new URL is fetched from now, the same URL again changes nothing.
    #[test]
    fn spec_7_new_repos_and_new_urls_are_due_now() {
        let mut s = Repos::default();
        let got = apply(
            &mut s,
            delta(vec![spec("a", A), spec("b", B)], vec![]),
            1_000,
            |id| id == "b",
        );
        assert_eq!(got.added, 2);
        assert_eq!(got.urgent, ["a", "b"]);
        assert_eq!(got.changed, ["a", "b"]);
        assert!(got.records.is_empty());
        assert_eq!(s.repos["a"].next_due_ms, 1_000);
        assert!(!s.repos["a"].mirrored);
        assert!(
            s.repos["b"].mirrored,
            "a mirror on disk is fetched, not cloned"
        );

        let again = apply(&mut s, delta(vec![spec("a", A)], vec![]), 2_000, |_| false);
        assert!(
            again.changed.is_empty() && again.urgent.is_empty() && again.records.is_empty(),
            "nothing new: {again:?}"
        );

        let moved = apply(&mut s, delta(vec![spec("a", B)], vec![]), 3_000, |_| false);
        assert_eq!(moved.urgent, ["a"]);
        assert_eq!(moved.added, 0);
        assert_eq!(s.repos["a"].url, B);
        assert_eq!(s.repos["a"].next_due_ms, 1_000, "the schedule plans it now");
    }

    // Issue 10: a dropped mirror goes to the trash (journaled), and assigned again before
    // it is removed, its disposal is cancelled in the same batch.
    #[test]
    fn issue10_a_drop_trashes_and_a_new_assignment_cancels_the_disposal() {
        let mut s = Repos::default();
        apply(&mut s, delta(vec![spec("a", A)], vec![]), 0, |_| false);
        let got = apply(&mut s, delta(vec![], vec![drop("a")]), 1, |_| false);
        assert_eq!(got.dropped, 1);
        assert_eq!(got.forgotten, ["a"]);
        assert!(
            matches!(
                &got.records[..],
                [
                    Record::Remove { id: r },
                    Record::Disposal { id: d, disposal: Some(Disposal::Trash) }
                ] if r == "a" && d == "a"
            ),
            "{:?}",
            got.records
        );
        assert!(!s.repos.contains_key("a"));
        assert_eq!(s.disposals.get("a"), Some(&Disposal::Trash));

        let back = apply(&mut s, delta(vec![spec("a", A)], vec![]), 2, |_| false);
        assert!(
            matches!(
                &back.records[..],
                [Record::Disposal { id, disposal: None }] if id == "a"
            ),
            "{:?}",
            back.records
        );
        assert!(s.disposals.is_empty());
        assert_eq!(back.added, 1);
    }

    // Issue 10 (hostile input): an id that is no safe path, or a URL the policy refuses,
    // is skipped; a drop of such an id disposes of nothing.
    #[test]
    fn issue10_refused_ids_and_urls_are_skipped() {
        let mut s = Repos::default();
        let got = apply(
            &mut s,
            delta(
                vec![spec("../etc", A), spec("a", "ext::sh -c id")],
                vec![drop("../x")],
            ),
            0,
            |_| true,
        );
        assert!(s.repos.is_empty() && s.disposals.is_empty());
        assert_eq!(got.forgotten, ["../x"]);
        assert!(got.records.is_empty() && got.urgent.is_empty());
        assert_eq!((got.added, got.dropped), (0, 0));
    }
}
