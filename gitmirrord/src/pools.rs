//! Fork-pool states as workers report them (SPEC §14, protocol 8), for the API, the repo
//! page and the metrics.
//!
//! Not persisted: a worker sends the whole list once after its holdings (every
//! connection), then changes. Kept per worker, and only for repos that are not plain
//! mirrors for no reason, so a plain repo costs nothing here (plan C17 said one byte in
//! the fleet's `Repo`; `fleet.rs` was being changed for placement at the same time, and a
//! side table that holds only pooled repos is no bigger at 1M mostly-plain repos).
//! Lookups are by the repo's owner and id: O(1) per API request; a report costs
//! O(states in it); nothing walks every repo.

use gitmirror_wire::{PlainWhy, PoolState, PoolStates, PoolTotals};
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// States kept per worker at most (SPEC §12: a worker holds 100,000 repos; ten times that
/// is still accepted, as for holdings). Past it a report's new repos are ignored.
pub const MAX_STATES_PER_WORKER: usize = 1_000_000;

/// What one repo's last report said (8 bytes besides the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub state: PoolState,
    pub members: u32,
}

#[derive(Debug, Default)]
struct WorkerPools {
    repos: HashMap<Box<str>, Mark>,
    totals: Option<PoolTotals>,
}

/// Every worker's reported pool states and totals.
#[derive(Debug, Default)]
pub struct Pools {
    workers: HashMap<Uuid, WorkerPools>,
}

/// What a `PoolStates` report did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub kept: usize,
    /// States of repos the coordinator does not assign to that worker (unknown repos, or
    /// another worker's): ignored.
    pub not_assigned: usize,
    /// The first of those, for the log line.
    pub first_refused: Option<String>,
    /// New states past [`MAX_STATES_PER_WORKER`]: ignored.
    pub over_limit: usize,
}

/// `pool` of `GET /api/repos/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolView {
    /// The pool under the worker's `mirror_dir`: `.pools/<first>/<project>.git`.
    pub path: String,
    /// `member`, `joining` or `plain`.
    pub state: &'static str,
    /// Why a repo of a pooled project is plain: `credentials`, `too_many_refs`,
    /// `detached`, `pools_off`; `null` otherwise.
    pub why: Option<&'static str>,
    /// Members of the pool on the owner.
    pub members: u32,
}

/// Fleet-wide figures for the metrics (O(workers) to take).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetPools {
    pub pools: u64,
    pub members: u64,
    pub pool_bytes: u64,
    pub member_bytes: u64,
    pub saved_bytes: u64,
}

impl Pools {
    /// A `PoolStates` part from worker `uuid`; `assigned(id)` says whether the coordinator
    /// assigns repo `id` to it (a worker can only speak for its own repos).
    pub fn apply(
        &mut self,
        uuid: Uuid,
        report: PoolStates,
        assigned: impl Fn(&str) -> bool,
    ) -> Applied {
        let w = self.workers.entry(uuid).or_default();
        if report.full {
            w.repos.clear();
            w.repos.shrink_to_fit();
        }
        let mut applied = Applied::default();
        for s in report.states {
            if !assigned(&s.repo) {
                applied.not_assigned += 1;
                if applied.first_refused.is_none() {
                    applied.first_refused = Some(s.repo);
                }
                continue;
            }
            if s.state == PoolState::Cleared {
                w.repos.remove(s.repo.as_str());
                continue;
            }
            let mark = Mark {
                state: s.state,
                members: s.members,
            };
            let full = w.repos.len() >= MAX_STATES_PER_WORKER;
            match w.repos.get_mut(s.repo.as_str()) {
                Some(m) => *m = mark,
                None if full => {
                    applied.over_limit += 1;
                    continue;
                }
                None => {
                    w.repos.insert(s.repo.into_boxed_str(), mark);
                }
            }
            applied.kept += 1;
        }
        applied
    }

    pub fn totals(&mut self, uuid: Uuid, t: PoolTotals) {
        self.workers.entry(uuid).or_default().totals = Some(t);
    }

    /// The worker left the fleet (removed): forget what it said.
    pub fn forget(&mut self, uuid: &Uuid) {
        self.workers.remove(uuid);
    }

    /// The pool of repo `id` as its owner `owner` reported it; `None`: plain, or an owner
    /// of protocol < 8, or not reported yet.
    pub fn view(&self, owner: &Uuid, id: &str) -> Option<PoolView> {
        let mark = *self.workers.get(owner)?.repos.get(id)?;
        let (folder, _) = id.rsplit_once('/')?;
        let (state, why) = match mark.state {
            PoolState::Member => ("member", None),
            PoolState::Joining => ("joining", None),
            PoolState::Plain(why) => ("plain", Some(why_str(why))),
            PoolState::Cleared => return None,
        };
        Some(PoolView {
            path: format!(".pools/{folder}.git"),
            state,
            why,
            members: mark.members,
        })
    }

    /// `pool` of `GET /api/repos/{id}`: the owner's report.
    pub fn fill_repo(&self, fleet: &crate::fleet::Fleet, d: &mut crate::api::RepoDetail) {
        d.pool = fleet
            .repo(&d.id)
            .and_then(|r| r.owner)
            .and_then(|o| self.view(&o, &d.id));
    }

    /// The pool totals of a worker in `/api/workers` and `/api/status`.
    pub fn fill_worker(&self, w: &mut crate::api::WorkerView) {
        if let Some(t) = self.worker_totals(&w.uuid) {
            w.pools = Some(t.pools);
            w.pool_bytes = Some(t.pool_bytes);
            w.member_bytes = Some(t.member_bytes);
            w.pool_members = Some(t.members);
        }
    }

    /// Worker `uuid`'s last totals; `None` for a worker of protocol < 8.
    pub fn worker_totals(&self, uuid: &Uuid) -> Option<PoolTotals> {
        self.workers.get(uuid)?.totals.clone()
    }

    /// Sums over the workers' totals. `saved_bytes` is an estimate: each member, were it a
    /// plain mirror, would hold about what its pool holds, so a worker saves about
    /// `(members − pools) × pool_bytes / pools` (its average pool once per member beyond
    /// the first). It overestimates for members that reach only part of their pool.
    pub fn fleet(&self) -> FleetPools {
        let mut f = FleetPools::default();
        for t in self.workers.values().filter_map(|w| w.totals.as_ref()) {
            f.pools += u64::from(t.pools);
            f.members += u64::from(t.members);
            f.pool_bytes += t.pool_bytes;
            f.member_bytes += t.member_bytes;
            f.saved_bytes += saved_estimate(t);
        }
        f
    }
}

/// See [`Pools::fleet`].
pub fn saved_estimate(t: &PoolTotals) -> u64 {
    if t.pools == 0 {
        return 0;
    }
    let beyond_first = u64::from(t.members.saturating_sub(t.pools));
    ((u128::from(t.pool_bytes) * u128::from(beyond_first)) / u128::from(t.pools))
        .min(u128::from(u64::MAX)) as u64
}

fn why_str(why: PlainWhy) -> &'static str {
    match why {
        PlainWhy::Credentials => "credentials",
        PlainWhy::TooManyRefs => "too_many_refs",
        PlainWhy::Detached => "detached",
        PlainWhy::PoolsOff => "pools_off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitmirror_wire::RepoPoolState;

    fn st(repo: &str, state: PoolState, members: u32) -> RepoPoolState {
        RepoPoolState {
            repo: repo.into(),
            state,
            members,
        }
    }

    /// SPEC §14 (protocol 8): a worker speaks only for the repos assigned to it; unknown
    /// repos and another worker's are ignored and counted; a full list replaces, a change
    /// list updates, `Cleared` forgets; another owner's view is `None`.
    #[test]
    fn spec_14_pool_states_only_for_assigned_repos() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mine = |id: &str| id.starts_with("l/linux/");
        let mut p = Pools::default();
        let got = p.apply(
            a,
            PoolStates {
                full: true,
                states: vec![
                    st("l/linux/linux", PoolState::Member, 2),
                    st("l/linux/next", PoolState::Joining, 2),
                    st("x/other/other", PoolState::Member, 9),
                    st(
                        "l/linux/private",
                        PoolState::Plain(PlainWhy::Credentials),
                        2,
                    ),
                ],
            },
            mine,
        );
        assert_eq!(
            got,
            Applied {
                kept: 3,
                not_assigned: 1,
                first_refused: Some("x/other/other".into()),
                over_limit: 0
            }
        );
        assert_eq!(
            p.view(&a, "l/linux/linux"),
            Some(PoolView {
                path: ".pools/l/linux.git".into(),
                state: "member",
                why: None,
                members: 2
            })
        );
        assert_eq!(
            p.view(&a, "l/linux/private").unwrap().why,
            Some("credentials")
        );
        assert_eq!(p.view(&a, "x/other/other"), None);
        assert_eq!(p.view(&b, "l/linux/linux"), None, "b never reported it");
        // Changes: next joined, private cleared.
        p.apply(
            a,
            PoolStates {
                full: false,
                states: vec![
                    st("l/linux/next", PoolState::Member, 3),
                    st("l/linux/private", PoolState::Cleared, 0),
                ],
            },
            mine,
        );
        assert_eq!(p.view(&a, "l/linux/next").unwrap().state, "member");
        assert_eq!(p.view(&a, "l/linux/private"), None);
        // A full list replaces everything.
        p.apply(
            a,
            PoolStates {
                full: true,
                states: vec![],
            },
            mine,
        );
        assert_eq!(p.view(&a, "l/linux/linux"), None);
    }

    /// SPEC §14: a hostile worker cannot grow the table past its bound.
    #[test]
    fn spec_14_pool_states_bounded_per_worker() {
        let a = Uuid::from_u128(1);
        let mut p = Pools::default();
        let n = MAX_STATES_PER_WORKER + 10;
        let states = (0..n)
            .map(|i| st(&format!("a/b/r{i}"), PoolState::Member, 1))
            .collect();
        let got = p.apply(a, PoolStates { full: true, states }, |_| true);
        assert_eq!(got.kept, MAX_STATES_PER_WORKER);
        assert_eq!(got.over_limit, 10);
    }

    /// The saved-bytes estimate: 2 pools of 100 bytes on average, 5 members: 3 members
    /// beyond each pool's first would each have held ~100 bytes.
    #[test]
    fn spec_14_saved_bytes_estimate() {
        let t = PoolTotals {
            pools: 2,
            pool_bytes: 200,
            member_bytes: 10,
            members: 5,
        };
        assert_eq!(saved_estimate(&t), 300);
        let none = PoolTotals {
            pools: 0,
            pool_bytes: 0,
            member_bytes: 0,
            members: 0,
        };
        assert_eq!(saved_estimate(&none), 0);
        let mut p = Pools::default();
        p.totals(Uuid::from_u128(1), t);
        assert_eq!(p.fleet().saved_bytes, 300);
        assert_eq!(p.fleet().members, 5);
    }
}
