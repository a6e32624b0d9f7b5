//! The `points` owner function (SPEC §5 with §12; design.md "Owner function: points on a
//! circle"): every member with a usable weight has [`PER_MEMBER`] points on a circle of
//! 2^64 positions, a repo sits at one position, and a member's score for a repo is the
//! distance from the repo's position clockwise to the member's nearest point, divided by
//! its weight:
//!
//! ```text
//! seed(member)   = xxh3_64(member.uuid.as_bytes())        // as for rendezvous
//! point(member, j) = xxh3_64_with_seed(j as 8 bytes LE, seed(member)),  j < 4096
//! x              = xxh3_64(key.as_bytes())
//! distance       = (first point of the member at or after x, else its first point) - x
//!                  (wrapping, so the circle closes)
//! score          = (distance as f64) / weight
//! ```
//!
//! The lowest score owns the repo, equal scores go to the smaller uuid, and a member
//! without a usable weight scores `+inf`, exactly as under rendezvous: every member still
//! has a score of its own, so a member joining or leaving (or changing weight) only moves
//! the repos it wins or loses. The distance to the nearest of `V` random points is about
//! exponential with rate `V`, so dividing by the weight makes a member win with
//! probability `weight / total weight`; its share is a sum over its `V` arcs, which adds a
//! relative spread of `1/√V` (1.6 % at 4,096) to the spread of hashing the repos.
//!
//! What makes it cheap: the owner is found on the circle of every member's points, sorted
//! once per member set, by one look-up and a walk to the next point or few (the walk stops
//! once no heavier member can be nearer), instead of one hash per member.

use super::Prepared;
use std::sync::OnceLock;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Points of each member with a usable weight: the balance of SPEC §5 at 100 workers
/// (≤ 1.10) needs the arcs' spread well under the repos' (`ring::tests`, docs/scale.md).
pub const PER_MEMBER: u64 = 4096;

/// Positions a repo has on the circle (each an independent hash of its key): a member's
/// score is its nearest point to any of them, which spreads shares as `PROBES` times the
/// points would, at the points' memory.
pub const PROBES: u64 = 4;

/// Points walked on the circle before a look-up scores every member instead (weights far
/// apart make the walk long; the answer is the same).
const WALK_LIMIT: usize = 64;

/// A member set's points, built when first needed: each member's own sorted points (for
/// its score alone: a challenge, a replica placement) and the circle of all of them (for
/// owners).
#[derive(Debug)]
pub(super) struct Points {
    each: Vec<OnceLock<Box<[u64]>>>,
    circle: OnceLock<Circle>,
    /// The smallest `1 / weight` of a usable member: no point farther than `best /
    /// min_inv` can win.
    min_inv: f64,
}

/// Every usable member's points in position order, with a directory by the top bits of
/// the position.
#[derive(Debug)]
struct Circle {
    pos: Vec<u64>,
    member: Vec<u32>,
    /// `dir[b]`: the first point whose top `64 - shift` bits are at least `b`.
    dir: Vec<u32>,
    shift: u32,
}

/// Where `key` sits on the circle: [`PROBES`] positions.
pub(super) fn positions(key: &str) -> [u64; PROBES as usize] {
    let k = key.as_bytes();
    std::array::from_fn(|i| {
        if i == 0 {
            xxh3_64(k)
        } else {
            xxh3_64_with_seed(k, i as u64)
        }
    })
}

fn point(seed: u64, j: u64) -> u64 {
    xxh3_64_with_seed(&j.to_le_bytes(), seed)
}

/// Whether a member takes part: a positive finite weight whose scores stay finite.
fn usable(m: &Prepared) -> bool {
    (u64::MAX as f64 * m.inv_weight).is_finite()
}

fn member_points(seed: u64) -> Box<[u64]> {
    let mut p: Vec<u64> = (0..PER_MEMBER).map(|j| point(seed, j)).collect();
    p.sort_unstable();
    p.into_boxed_slice()
}

/// Clockwise distance from `x` to the first of the sorted `points` at or after it.
fn distance(points: &[u64], x: u64) -> u64 {
    let i = points.partition_point(|&p| p < x);
    let p = points.get(i).or(points.first()).copied().unwrap_or(x);
    p.wrapping_sub(x)
}

impl Points {
    pub(super) fn new(members: &[Prepared]) -> Self {
        let min_inv = members
            .iter()
            .filter(|m| usable(m))
            .map(|m| m.inv_weight)
            .fold(f64::INFINITY, f64::min);
        Self {
            each: members.iter().map(|_| OnceLock::new()).collect(),
            circle: OnceLock::new(),
            min_inv,
        }
    }

    /// Member `i`'s score for the positions `xs`.
    fn score_at(&self, members: &[Prepared], i: usize, xs: &[u64]) -> f64 {
        let m = &members[i];
        if !usable(m) {
            return f64::INFINITY;
        }
        let points = self.each[i].get_or_init(|| member_points(m.seed));
        let d = xs
            .iter()
            .map(|&x| distance(points, x))
            .min()
            .unwrap_or(u64::MAX);
        d as f64 * m.inv_weight
    }

    /// Member `i`'s score for `key`.
    pub(super) fn score(&self, members: &[Prepared], key: &str, i: usize) -> f64 {
        self.score_at(members, i, &positions(key))
    }

    /// The owner of `key` and its score; `None` without members.
    pub(super) fn owner_scored(&self, members: &[Prepared], key: &str) -> Option<(usize, f64)> {
        if members.is_empty() {
            return None;
        }
        let xs = positions(key);
        let c = self.circle.get_or_init(|| Circle::build(members));
        let n = c.pos.len();
        if n == 0 {
            return self.by_members(members, &xs);
        }
        // The lowest score is the lowest `distance / weight` over every (position, point)
        // pair. Each position's nearest point first, all four looked up before any is
        // read (the circle is ~50 MB at 1,000 members: the look-ups are cache misses, and
        // independent ones overlap); then, only where a heavier member could be nearer
        // than the best so far, the walk on from there.
        let at: [usize; PROBES as usize] = xs.map(|x| c.first_at_or_after(x) % n);
        let near: [(u64, u32); PROBES as usize] =
            std::array::from_fn(|p| (c.pos[at[p]], c.member[at[p]]));
        let mut best: Option<(usize, f64)> = None;
        let better = |best: Option<(usize, f64)>, i: usize, s: f64| {
            best.is_none_or(|(b, bs)| s < bs || (s == bs && members[i].uuid < members[b].uuid))
        };
        for (p, &(pos, m)) in near.iter().enumerate() {
            let i = m as usize;
            let s = pos.wrapping_sub(xs[p]) as f64 * members[i].inv_weight;
            if better(best, i, s) {
                best = Some((i, s));
            }
        }
        for (p, &x) in xs.iter().enumerate() {
            let mut k = at[p];
            let mut seen = [0u32; WALK_LIMIT];
            seen[0] = near[p].1;
            for step in 1..n {
                k += 1;
                if k == n {
                    k = 0;
                }
                let d = c.pos[k].wrapping_sub(x) as f64;
                if best.is_some_and(|(_, b)| d * self.min_inv > b) {
                    break;
                }
                if step == WALK_LIMIT {
                    return self.by_members(members, &xs);
                }
                let m = c.member[k];
                // A member's first point on a walk is its nearest there: later ones score
                // worse.
                if !seen[..step].contains(&m) {
                    let i = m as usize;
                    let s = d * members[i].inv_weight;
                    if better(best, i, s) {
                        best = Some((i, s));
                    }
                }
                seen[step] = m;
            }
        }
        best
    }

    /// The owner by every member's score (the walk's answer, at O(members) cost).
    fn by_members(&self, members: &[Prepared], xs: &[u64]) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for i in 0..members.len() {
            let s = self.score_at(members, i, xs);
            if best.is_none_or(|(b, bs)| s < bs || (s == bs && members[i].uuid < members[b].uuid)) {
                best = Some((i, s));
            }
        }
        best
    }

    /// Bytes held by what was built so far.
    #[cfg(test)]
    pub(super) fn built_bytes(&self) -> usize {
        let each: usize = self
            .each
            .iter()
            .filter_map(|p| p.get())
            .map(|p| p.len() * 8)
            .sum();
        let circle = self
            .circle
            .get()
            .map_or(0, |c| c.pos.len() * 12 + c.dir.len() * 4);
        each + circle
    }
}

impl Circle {
    /// Sorted by a counting sort on the top bits (the directory) and a sort of each
    /// bucket's few points: ~0.05 s for 1,000 members here, where sorting the 4M points
    /// whole took ~0.3 s (design.md "Owner function: points on a circle").
    fn build(members: &[Prepared]) -> Self {
        let usable: Vec<(u32, u64)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| usable(m))
            .map(|(i, m)| (i as u32, m.seed))
            .collect();
        let n = usable.len() * PER_MEMBER as usize;
        // About four points a bucket.
        let bits = (usize::BITS - n.max(1).leading_zeros())
            .saturating_sub(2)
            .clamp(1, 24);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut dir = vec![0u32; buckets + 1];
        for &(_, seed) in &usable {
            for j in 0..PER_MEMBER {
                dir[(point(seed, j) >> shift) as usize + 1] += 1;
            }
        }
        for b in 0..buckets {
            dir[b + 1] += dir[b];
        }
        let mut at: Vec<u32> = dir[..buckets].to_vec();
        let mut pos = vec![0u64; n];
        let mut member = vec![0u32; n];
        for &(i, seed) in &usable {
            for j in 0..PER_MEMBER {
                let p = point(seed, j);
                let b = (p >> shift) as usize;
                let k = at[b] as usize;
                pos[k] = p;
                member[k] = i;
                at[b] += 1;
            }
        }
        let mut scratch: Vec<(u64, u32)> = Vec::new();
        for b in 0..buckets {
            let (lo, hi) = (dir[b] as usize, dir[b + 1] as usize);
            if hi - lo < 2 {
                continue;
            }
            scratch.clear();
            scratch.extend(
                pos[lo..hi]
                    .iter()
                    .copied()
                    .zip(member[lo..hi].iter().copied()),
            );
            scratch.sort_unstable();
            for (k, (p, m)) in (lo..hi).zip(scratch.iter().copied()) {
                pos[k] = p;
                member[k] = m;
            }
        }
        Self {
            pos,
            member,
            dir,
            shift,
        }
    }

    /// Index of the first point at or after `x` (the number of points when none is).
    fn first_at_or_after(&self, x: u64) -> usize {
        let b = (x >> self.shift) as usize;
        let (lo, hi) = (self.dir[b] as usize, self.dir[b + 1] as usize);
        lo + self.pos[lo..hi].partition_point(|&p| p < x)
    }
}
