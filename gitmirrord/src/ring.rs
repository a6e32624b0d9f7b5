//! Weighted rendezvous hashing (SPEC §5).
//!
//! Every member scores every repo and the lowest score owns it:
//!
//! ```text
//! seed(member) = xxh3_64(member.uuid.as_bytes())            // the 16 raw uuid bytes
//! h            = xxh3_64_with_seed(repo_id.as_bytes(), seed(member))
//! u            = ((h >> 11) as f64 + 0.5) / 2^53             // strictly inside (0, 1)
//! score        = -ln(u) / member.weight
//! ```
//!
//! `-ln(u)` is exponentially distributed, so dividing by the weight makes a member win
//! with probability `weight / total weight`, and removing or adding a member only moves
//! the repos it wins or loses. Equal scores go to the smaller uuid (byte order). A member
//! whose weight is not a positive finite number scores `+inf`: it owns a repo only when no
//! member has a usable weight. These formulas are a stable contract: owners must not change
//! between releases, and the tests below pin them.

use uuid::Uuid;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A live worker as the ring sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub uuid: Uuid,
    pub weight: f64,
}

/// Index into `members` of the owner of `repo_id`, or `None` when `members` is empty.
/// A pure function of its inputs, stable across processes and releases.
pub fn owner(repo_id: &str, members: &[Member]) -> Option<usize> {
    Ring::new(members).owner(repo_id)
}

/// The owner of every id: `(id, index into members)`, in input order. Empty when
/// `members` is empty. Use this (or [`Ring`]) rather than [`owner`] in a loop: the
/// per-member hashing is done once.
pub fn assign_all<'a>(
    ids: impl Iterator<Item = &'a str>,
    members: &[Member],
) -> Vec<(&'a str, usize)> {
    let ring = Ring::new(members);
    ids.filter_map(|id| ring.owner(id).map(|m| (id, m)))
        .collect()
}

/// A member set prepared for many look-ups (member seeds and weights precomputed).
#[derive(Debug, Clone)]
pub struct Ring {
    members: Vec<Prepared>,
}

#[derive(Debug, Clone)]
struct Prepared {
    seed: u64,
    /// `1 / weight`, or `+inf` for an unusable weight.
    inv_weight: f64,
    uuid: Uuid,
}

impl Ring {
    pub fn new(members: &[Member]) -> Self {
        let members = members
            .iter()
            .map(|m| Prepared {
                seed: xxh3_64(m.uuid.as_bytes()),
                inv_weight: if m.weight.is_finite() && m.weight > 0.0 {
                    1.0 / m.weight
                } else {
                    f64::INFINITY
                },
                uuid: m.uuid,
            })
            .collect();
        Self { members }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Index of the owner of `repo_id`, `None` when there are no members.
    pub fn owner(&self, repo_id: &str) -> Option<usize> {
        self.owner_scored(repo_id).map(|(i, _)| i)
    }

    /// The owner of `repo_id` and its winning score (kept by the fleet, so that a member
    /// joining later scores only itself against it: [`Ring::challenge`]).
    pub fn owner_scored(&self, repo_id: &str) -> Option<(usize, f64)> {
        let id = repo_id.as_bytes();
        let mut best: Option<(usize, f64)> = None;
        for (i, m) in self.members.iter().enumerate() {
            let u = unit(xxh3_64_with_seed(id, m.seed));
            // -ln(u) >= 1 - u, so a member whose bound already loses needs no logarithm
            // (the logarithm is most of a score's cost; at 1,000 members nearly every
            // member loses this way). The bound is loosened by 1e-9 so that rounding in
            // `ln` can never skip a member that would win: the owners are exactly those of
            // `score`.
            if let Some((_, best_score)) = best
                && (1.0 - u) * m.inv_weight * (1.0 - 1e-9) > best_score
            {
                continue;
            }
            let score = weigh(u, m);
            let better = match best {
                None => true,
                Some((b, best_score)) => {
                    // Scores are never NaN; two `+inf` (unusable weights) compare equal.
                    score < best_score || (score == best_score && m.uuid < self.members[b].uuid)
                }
            };
            if better {
                best = Some((i, score));
            }
        }
        best
    }
}

impl Ring {
    /// The owners of many ids, in order, on every core (an index of 1M repos lands in one
    /// delta: 1M × 1,000 members is 10⁹ hashes).
    pub fn owners(&self, ids: &[&str]) -> Vec<Option<(usize, f64)>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if threads < 2 || ids.len() < 20_000 {
            return ids.iter().map(|id| self.owner_scored(id)).collect();
        }
        let chunk = ids.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = ids
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || c.iter().map(|id| self.owner_scored(id)).collect::<Vec<_>>())
                })
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for p in parts {
                match p.join() {
                    Ok(v) => out.extend(v),
                    Err(e) => std::panic::resume_unwind(e),
                }
            }
            out
        })
    }

    /// The score of member `member` for `repo_id` (the winning score when it is the owner;
    /// one hash and a logarithm). `None` when there is no such member.
    pub fn score(&self, repo_id: &str, member: usize) -> Option<f64> {
        let m = self.members.get(member)?;
        Some(weigh(
            unit(xxh3_64_with_seed(repo_id.as_bytes(), m.seed)),
            m,
        ))
    }

    /// The score of member `challenger` for `repo_id` when it beats the incumbent (its
    /// score and uuid given), by the order [`Ring::owner`] uses; `None` when it does not.
    /// One hash, and a logarithm only when the bound does not already lose.
    pub fn challenge(
        &self,
        repo_id: &str,
        challenger: usize,
        incumbent_score: f64,
        incumbent: Uuid,
    ) -> Option<f64> {
        let c = self.members.get(challenger)?;
        let u = unit(xxh3_64_with_seed(repo_id.as_bytes(), c.seed));
        if (1.0 - u) * c.inv_weight * (1.0 - 1e-9) > incumbent_score {
            return None;
        }
        let sc = weigh(u, c);
        (sc < incumbent_score || (sc == incumbent_score && c.uuid < incumbent)).then_some(sc)
    }
}

/// A fingerprint of a member set (uuids and weights, in the given order): owners saved
/// under one fingerprint are exactly the ring's for any member set with the same one, so
/// a start with the same members keeps them instead of scoring every repo again.
pub fn fingerprint(members: &[Member]) -> u64 {
    let mut bytes = Vec::with_capacity(members.len() * 24);
    for m in members {
        bytes.extend_from_slice(m.uuid.as_bytes());
        bytes.extend_from_slice(&m.weight.to_bits().to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// A hash as a number strictly inside (0, 1).
fn unit(h: u64) -> f64 {
    // The top 53 bits fill an f64 mantissa exactly; +0.5 keeps u away from 0 and 1.
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The score of `u` for member `m`: exponentially distributed, divided by the weight.
fn weigh(u: f64, m: &Prepared) -> f64 {
    let e = -u.ln();
    if m.inv_weight.is_infinite() {
        f64::INFINITY
    } else {
        e * m.inv_weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(0x1234_5678_9abc_4def_8000_0000_0000_0000 + n)
    }

    fn members(weights: &[f64]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member {
                uuid: uuid(i as u128),
                weight: w,
            })
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("r/p{}/repo{i}", i % 97)).collect()
    }

    #[test]
    fn empty_set_has_no_owner() {
        assert_eq!(owner("a/abc/abc", &[]), None);
        assert!(assign_all(["a/abc/abc"].into_iter(), &[]).is_empty());
    }

    // SPEC §5: "the same inputs give the same owners on any coordinator, before and after a
    // restart". Expected values are hard-coded (and were cross-checked with an independent
    // implementation of the formula in the module doc): a change of hash or formula fails.
    #[test]
    fn owners_are_pinned() {
        assert_eq!(xxh3_64(uuid(0).as_bytes()), 7_546_752_599_897_882_461);
        assert_eq!(
            xxh3_64_with_seed(b"a/abc/abc", 7_546_752_599_897_882_461),
            5_640_263_820_020_008_674
        );
        let m = members(&[1.0, 1.0, 2.0, 0.5, 1.5]);
        let ids = [
            "a/abc/abc",
            "l/linux/linux-next",
            "g/git/git",
            "r/rust/rust",
            "x/y/z",
            "q/qemu/qemu",
            "c/curl/curl",
            "n/nginx/nginx",
            "v/vim/vim",
            "p/python/cpython",
            "o/openssl/openssl",
            "z/zlib/zlib",
        ];
        let got: Vec<_> = ids.iter().map(|id| owner(id, &m)).collect();
        let want = [2, 2, 2, 0, 0, 2, 4, 4, 3, 2, 2, 0].map(Some);
        assert_eq!(got, want, "owners changed: the ring is no longer stable");
    }

    #[test]
    fn order_of_members_does_not_matter() {
        let m = members(&[1.0, 2.0, 3.0, 1.5]);
        let mut rev = m.clone();
        rev.reverse();
        for id in ids(2000) {
            let a = m[owner(&id, &m).unwrap()].uuid;
            let b = rev[owner(&id, &rev).unwrap()].uuid;
            assert_eq!(a, b, "{id}");
        }
    }

    /// `challenge` picks the same owner as a full scan: the owner of a set grown by some
    /// members is the best of the old owner (with its stored score) and the newcomers.
    #[test]
    fn challenge_agrees_with_owner() {
        let m = members(&[1.0, 2.0, 3.0, 1.5, 1.0, 2.5, f64::NAN, 0.7]);
        let ring = Ring::new(&m);
        let old = Ring::new(&m[..4]);
        for id in ids(5000) {
            let mut best = old.owner_scored(&id).unwrap();
            for newcomer in 4..m.len() {
                if let Some(score) = ring.challenge(&id, newcomer, best.1, m[best.0].uuid) {
                    best = (newcomer, score);
                }
            }
            assert_eq!(Some(best.0), ring.owner(&id), "{id}");
        }
    }

    // SPEC §5: "When a worker dies, only its repos move."
    #[test]
    fn only_a_dead_members_repos_move() {
        let m = members(&[1.0, 2.0, 3.0, 1.5, 1.0, 2.5]);
        let dead = m[2].uuid;
        let rest: Vec<_> = m.iter().copied().filter(|x| x.uuid != dead).collect();
        let mut moved = 0;
        for id in ids(20_000) {
            let before = m[owner(&id, &m).unwrap()].uuid;
            let after = rest[owner(&id, &rest).unwrap()].uuid;
            if before != dead {
                assert_eq!(before, after, "{id} moved although its owner lives");
            } else {
                moved += 1;
            }
        }
        // weight 3 of 11: about 5,455 of 20,000.
        assert!((5000..6000).contains(&moved), "{moved}");
    }

    // SPEC §5: "When a worker joins, only repos that move to it move."
    #[test]
    fn only_repos_moving_to_a_joining_member_move() {
        let m = members(&[1.0, 2.0, 3.0, 1.5]);
        let mut joined = m.clone();
        let newcomer = Member {
            uuid: uuid(99),
            weight: 2.5,
        };
        joined.push(newcomer);
        let mut moved = 0;
        for id in ids(20_000) {
            let before = m[owner(&id, &m).unwrap()].uuid;
            let after = joined[owner(&id, &joined).unwrap()].uuid;
            if before != after {
                assert_eq!(after, newcomer.uuid, "{id} moved between old members");
                moved += 1;
            }
        }
        // weight 2.5 of 10: about 5,000 of 20,000.
        assert!((4500..5500).contains(&moved), "{moved}");
    }

    // SPEC §5: balance with weights; with 20,000 repos per unit of weight the spread is ~1 %.
    #[test]
    fn shares_follow_weights() {
        let weights = [1.0, 2.0, 3.0, 0.5, 1.5];
        let m = members(&weights);
        let total: f64 = weights.iter().sum();
        let n = 160_000;
        let all = ids(n);
        let mut load = vec![0usize; m.len()];
        for (_, o) in assign_all(all.iter().map(String::as_str), &m) {
            load[o] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let fair = n as f64 * w / total;
            let ratio = load[i] as f64 / fair;
            assert!(
                (0.95..1.05).contains(&ratio),
                "member {i}: {} vs fair {fair:.0}",
                load[i]
            );
        }
    }

    #[test]
    fn unusable_weights_own_only_as_a_last_resort() {
        let mut m = members(&[1.0, 0.0, f64::NAN, -1.0, f64::INFINITY]);
        for id in ids(500) {
            assert_eq!(owner(&id, &m), Some(0), "{id}");
        }
        m.remove(0);
        // Nobody usable: still a deterministic owner, the smallest uuid.
        for id in ids(50) {
            assert_eq!(owner(&id, &m), Some(0), "{id}");
        }
    }

    #[test]
    fn ties_go_to_the_smaller_uuid() {
        // The same uuid twice with the same weight scores identically.
        let a = Member {
            uuid: uuid(5),
            weight: 1.0,
        };
        let b = Member {
            uuid: uuid(3),
            weight: 1.0,
        };
        let m = [a, b, b];
        for id in ids(200) {
            let o = owner(&id, &m).unwrap();
            assert!(o == 0 || o == 1, "first of equal members wins: {o}");
        }
    }

    /// The member's score for a repo, as the module docs state it; lower wins.
    fn score(repo_id: &[u8], m: &Prepared) -> f64 {
        weigh(unit(xxh3_64_with_seed(repo_id, m.seed)), m)
    }

    /// The owner by every member's full score, as the contract states it.
    fn brute_force(id: &str, members: &[Member]) -> Option<usize> {
        let ring = Ring::new(members);
        let mut best: Option<(usize, f64)> = None;
        for (i, m) in ring.members.iter().enumerate() {
            let s = score(id.as_bytes(), m);
            if best.is_none_or(|(b, bs)| s < bs || (s == bs && m.uuid < ring.members[b].uuid)) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    proptest::proptest! {
        // SPEC §5: skipping the logarithm for members whose bound loses changes no owner,
        // whatever the weights (tiny, huge, unusable) and ids.
        #[test]
        fn pruned_owner_is_the_full_scores_owner(
            weights in proptest::collection::vec(
                proptest::prop_oneof![
                    0.001f64..1000.0,
                    proptest::strategy::Just(0.0),
                    proptest::strategy::Just(f64::INFINITY),
                ],
                1..40,
            ),
            ids in proptest::collection::vec("[a-z]/[a-z0-9-]{1,12}/[a-z0-9._-]{1,16}", 1..50),
        ) {
            let m = members(&weights);
            for id in &ids {
                proptest::prop_assert_eq!(Ring::new(&m).owner(id), brute_force(id, &m));
            }
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let each: Vec<Option<usize>> = refs.iter().map(|id| brute_force(id, &m)).collect();
            let got: Vec<Option<usize>> =
                Ring::new(&m).owners(&refs).into_iter().map(|o| o.map(|(i, _)| i)).collect();
            proptest::prop_assert_eq!(got, each);
            // A member joining later: the challenge against the stored winner agrees with
            // the full scores of the larger set.
            let mut more = m.clone();
            more.push(Member { uuid: uuid(1_000), weight: weights[0] });
            let (small, big) = (Ring::new(&m), Ring::new(&more));
            for id in &refs {
                let Some((w, score)) = small.owner_scored(id) else { continue };
                let won = big.challenge(id, more.len() - 1, score, m[w].uuid).is_some();
                let want = brute_force(id, &more);
                proptest::prop_assert_eq!(if won { Some(more.len() - 1) } else { Some(w) }, want);
            }
        }
    }
}
