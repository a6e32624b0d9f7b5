//! What a finished clone or fetch does (SPEC §7, §10): the repo's record, when it is
//! tried next, and the outcome to report, decided from the attempt's result, the record,
//! the schedule and `now`. The loop in `run` carries it out: the journal, the outbox,
//! maintenance and pool work, the rate-limit report to the coordinator.

use crate::mirror::{self, Failure, Fetched};
use crate::pool;
use crate::schedule::{Schedule, host_of_url, ms, rate_limit_wait};
use crate::state::Repo;
use gitmirror_wire::{FailureClass, FetchResult, Outcome, RateLimitReport, RefChange};
use std::time::Duration;

/// A successful clone or fetch, as the loop needs it: the refs diffed (on the blocking
/// thread) against the ones last reported, which live on disk, not in the loop's memory.
pub(crate) struct Reported {
    pub fetched: Fetched,
    /// The changes are from no refs (a relist), not from the refs last reported.
    pub relisted: bool,
    pub changes: Vec<RefChange>,
    pub ref_count: u32,
    pub refs_digest: u64,
    /// SHA-256 of the refs after the attempt (SPEC §13, C5), for `Outcomes7`.
    pub refs_sha256: [u8; 32],
}

/// One finished attempt on a repo.
pub(crate) struct Attempt {
    pub url: String,
    pub clone: bool,
    pub took: Duration,
    pub result: Result<Reported, Failure>,
}

/// What the loop does after [`finished`].
#[derive(Debug)]
pub(crate) struct Verdict {
    /// To queue (its report id is given when queued).
    pub outcome: Outcome,
    /// The next attempt (Unix ms).
    pub next: i64,
    /// The refs were relisted in full: the refs last reported start again from none.
    pub relisted: bool,
    /// The refs' SHA-256 after a success (`None`: a failure).
    pub refs_sha256: Option<[u8; 32]>,
    /// Bytes received by a success.
    pub received_bytes: u64,
    /// Packs piled up: a maintenance pass is due.
    pub maintain: bool,
    /// A clone, or enough new pack bytes: the repo's fork pool may consolidate.
    pub pool_trigger: bool,
    /// The upstream host rate limited us: the coordinator is told at once (SPEC §18).
    pub rate_limited: Option<RateLimitReport>,
}

/// Record `attempt` of `id` in `repo` at `now`, and plan its next try in `schedule`
/// (a rate limit pauses the whole host). `first_passes` gives a repo's first success its
/// last maintenance and verification times (spread over their periods, so mirrors
/// cloned together are not maintained together).
pub(crate) fn finished(
    id: &str,
    repo: &mut Repo,
    schedule: &mut Schedule,
    attempt: Attempt,
    now: i64,
    first_passes: impl FnOnce() -> (i64, i64),
) -> Verdict {
    let Attempt {
        url,
        clone,
        took,
        result,
    } = attempt;
    repo.last_fetch_ms = Some(now);
    let mut v = Verdict {
        outcome: Outcome {
            report_id: 0,
            repo: id.to_owned(),
            url: String::new(),
            finished_ms: now,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            result: FetchResult::Fetched,
            changes: Vec::new(),
            ref_count: 0,
            refs_digest: 0,
            next_due_ms: 0,
        },
        next: 0,
        relisted: false,
        refs_sha256: None,
        received_bytes: 0,
        maintain: false,
        pool_trigger: false,
        rate_limited: None,
    };
    match result {
        Ok(Reported {
            fetched,
            relisted,
            changes,
            ref_count,
            refs_digest,
            refs_sha256,
        }) => {
            v.refs_sha256 = Some(refs_sha256);
            v.received_bytes = fetched.received_bytes;
            repo.mirrored = true;
            v.outcome.result = if repo.announced {
                FetchResult::Fetched
            } else {
                FetchResult::Cloned
            };
            if clone {
                tracing::info!(repo = %id, %url, refs = ref_count, secs = took.as_secs_f32(), "cloned");
            } else if !changes.is_empty() {
                tracing::info!(repo = %id, changed = changes.len(), "refs changed upstream");
            }
            if fetched.url_changed {
                tracing::info!(repo = %id, %url, "mirror now fetches from the new upstream URL");
            }
            for repair in &fetched.repairs {
                tracing::info!(repo = %id, "self-heal: {repair}");
            }
            if let Some(class) = repo.failing.take() {
                tracing::info!(repo = %id, "fetching works again after {} failure(s) ({class:?})", repo.failures);
            }
            // When upstream last changed (SPEC §7.2): for a clone, its newest branch
            // commit (not in the future); afterwards, the fetch that saw new refs.
            if clone {
                let dated = fetched
                    .newest_commit_secs
                    .map(|s| s.saturating_mul(1000).min(now));
                repo.last_change_ms = Some(dated.unwrap_or(now));
            } else if !changes.is_empty() || repo.last_change_ms.is_none() {
                repo.last_change_ms = Some(now);
            }
            if repo.last_maintenance_ms.is_none() {
                let (maintained, verified) = first_passes();
                repo.last_maintenance_ms = Some(maintained);
                repo.last_verify_ms = Some(verified);
            }
            v.maintain = fetched.packs.is_some_and(|p| p >= mirror::REPACK_AT);
            v.pool_trigger = clone || fetched.new_pack_bytes >= pool::CONSOLIDATE_AFTER_BYTES;
            repo.ref_count = ref_count;
            repo.refs_digest = refs_digest;
            if relisted {
                tracing::info!(repo = %id, refs = ref_count, "relisted the refs in full, as the coordinator asked");
                repo.relist = false;
                v.relisted = true;
            }
            repo.announced = true;
            repo.last_success_ms = Some(now);
            repo.failures = 0;
            v.outcome.changes = changes;
            v.next = schedule.after_success(now, repo.last_change_ms.unwrap_or(now));
        }
        Err(failure) => {
            repo.failures = repo.failures.saturating_add(1);
            if repo.failing != Some(failure.class) {
                tracing::warn!(repo = %id, %url, class = ?failure.class, "{} failed: {}", if clone { "clone" } else { "fetch" }, failure.message);
            } else {
                tracing::debug!(repo = %id, failures = repo.failures, "still failing: {}", failure.message);
            }
            repo.failing = Some(failure.class);
            v.next = if failure.class == FailureClass::RateLimited {
                // The whole host waits as told (SPEC §7.3), this repo with it.
                let host = host_of_url(&url);
                let wait = rate_limit_wait(failure.retry_after);
                let already = schedule.paused_until(&host, now);
                let until = schedule.pause_host(&host, now.saturating_add(ms(wait)));
                if already.is_none() {
                    tracing::warn!(
                        %host,
                        secs = wait.as_secs_f32(),
                        asked = failure.retry_after.is_some(),
                        "upstream host is rate limiting us; nothing on it is fetched until it said to come back"
                    );
                }
                v.rate_limited = Some(RateLimitReport {
                    host,
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                });
                until
            } else {
                schedule.after_failure(now, repo.failures, failure.class)
            };
            v.outcome.result = FetchResult::Failed {
                class: failure.class,
                message: failure.message,
            };
        }
    }
    repo.next_due_ms = v.next;
    v.outcome.url = url;
    v.outcome.ref_count = repo.ref_count;
    v.outcome.refs_digest = repo.refs_digest;
    v.outcome.next_due_ms = v.next;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FetchSection;
    use crate::state::{Refs, refs_digest};

    const URL: &str = "https://example.org/a.git";
    const HOUR: i64 = 3_600_000;

    fn fetched(packs: usize) -> Fetched {
        Fetched {
            refs: Refs::new(),
            url_changed: false,
            packs: Some(packs),
            newest_commit_secs: Some(1_000),
            repairs: Vec::new(),
            new_pack_bytes: 0,
            received_bytes: 4_096,
        }
    }

    fn success(changes: Vec<RefChange>, relisted: bool) -> Result<Reported, Failure> {
        Ok(Reported {
            fetched: fetched(1),
            relisted,
            changes,
            ref_count: 3,
            refs_digest: 77,
            refs_sha256: [7; 32],
        })
    }

    fn attempt(clone: bool, result: Result<Reported, Failure>) -> Attempt {
        Attempt {
            url: URL.into(),
            clone,
            took: Duration::from_millis(250),
            result,
        }
    }

    fn schedule() -> Schedule {
        Schedule::new(&FetchSection::default())
    }

    // SPEC §7.2 and §10 on a virtual clock: a clone is reported `Cloned`, dated by its
    // newest commit, and then fetched about half the upstream's quiet time later; the
    // next success is `Fetched`; failures back off and a success ends them.
    #[test]
    fn spec_7_2_clone_then_failures_then_a_fetch() {
        let mut s = schedule();
        let mut repo = Repo::new(URL.into(), false);
        let now = 100 * HOUR;
        let v = finished(
            "a",
            &mut repo,
            &mut s,
            attempt(true, success(vec![], false)),
            now,
            || (1, 2),
        );
        assert_eq!(v.outcome.result, FetchResult::Cloned);
        assert!(v.refs_sha256.is_some() && v.pool_trigger && !v.maintain);
        assert_eq!(v.refs_sha256, Some([7; 32]));
        assert_eq!(v.received_bytes, 4_096);
        assert_eq!((v.outcome.ref_count, v.outcome.refs_digest), (3, 77));
        assert_eq!(v.outcome.duration_ms, 250);
        assert_eq!(
            repo.last_change_ms,
            Some(1_000_000),
            "the newest commit's time"
        );
        assert_eq!(
            (repo.last_maintenance_ms, repo.last_verify_ms),
            (Some(1), Some(2))
        );
        assert!(repo.mirrored && repo.announced);
        assert_eq!(repo.next_due_ms, v.next);
        assert_eq!(v.outcome.next_due_ms, v.next);
        assert!(v.next > now);

        let mut last_wait = 0;
        for n in 1..=3u32 {
            let t = now + i64::from(n) * HOUR;
            let failure = Failure::new(FailureClass::Transient, "connection refused");
            let v = finished(
                "a",
                &mut repo,
                &mut s,
                attempt(false, Err(failure)),
                t,
                || (0, 0),
            );
            assert_eq!(repo.failures, n);
            assert_eq!(repo.failing, Some(FailureClass::Transient));
            assert!(v.refs_sha256.is_none() && v.rate_limited.is_none());
            assert!(matches!(v.outcome.result, FetchResult::Failed { .. }));
            assert_eq!(
                (v.outcome.ref_count, v.outcome.refs_digest),
                (3, 77),
                "as before"
            );
            let wait = v.next - t;
            assert!(
                wait > last_wait,
                "backs off: {wait} ms after {last_wait} ms"
            );
            last_wait = wait;
        }

        let change = RefChange {
            name: "refs/heads/main".into(),
            old: Some("aa".into()),
            new: Some("bb".into()),
        };
        let t = now + 10 * HOUR;
        let v = finished(
            "a",
            &mut repo,
            &mut s,
            attempt(false, success(vec![change.clone()], false)),
            t,
            || (0, 0),
        );
        assert_eq!(v.outcome.result, FetchResult::Fetched);
        assert_eq!(v.outcome.changes, vec![change]);
        assert_eq!((repo.failures, repo.failing), (0, None));
        assert_eq!(repo.last_change_ms, Some(t));
        assert_eq!(repo.last_success_ms, Some(t));
        assert_eq!(
            repo.last_maintenance_ms,
            Some(1),
            "first passes are set once"
        );
    }

    // SPEC §7.3 and §18: a rate limit pauses the whole host as asked and is reported to
    // the coordinator.
    #[test]
    fn spec_18_a_rate_limit_pauses_the_host_and_is_reported() {
        let mut s = schedule();
        let mut repo = Repo::new(URL.into(), true);
        let mut failure = Failure::new(FailureClass::RateLimited, "429");
        failure.retry_after = Some(Duration::from_secs(600));
        let now = 5 * HOUR;
        let v = finished(
            "a",
            &mut repo,
            &mut s,
            attempt(false, Err(failure)),
            now,
            || (0, 0),
        );
        let report = v.rate_limited.expect("reported");
        assert_eq!(report.host, host_of_url(URL));
        assert_eq!(report.retry_after_ms, 600_000);
        assert!(v.next >= now + 600_000, "{}", v.next - now);
        assert_eq!(s.paused_until(&report.host, now), Some(v.next));
    }

    // SPEC §12 (relist): a relist's refs are reported from none and the flag clears;
    // piled-up packs ask for maintenance.
    #[test]
    fn spec_12_a_relist_clears_its_flag_and_packs_ask_for_maintenance() {
        let mut s = schedule();
        let mut repo = Repo::new(URL.into(), true);
        repo.announced = true;
        repo.relist = true;
        let mut r = success(vec![], true);
        if let Ok(r) = &mut r {
            r.fetched.packs = Some(mirror::REPACK_AT);
            r.refs_digest = refs_digest(&Refs::new());
        }
        let v = finished("a", &mut repo, &mut s, attempt(false, r), HOUR, || (0, 0));
        assert!(v.relisted && !repo.relist);
        assert!(v.maintain);
        assert!(!v.pool_trigger, "a fetch with few new bytes");
    }
}
