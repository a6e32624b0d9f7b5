//! The owner functions (SPEC §5): weighted rendezvous hashing, below, and points on a
//! circle ([`points`], a fresh fleet's; [`Hashing`] names them).
//!
//! Under rendezvous every member scores every repo and the lowest score owns it:
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
//!
//! What is hashed is the repo's *placement key* ([`Placement::key`], SPEC §14): the repo
//! id under `placement: repo`; under `placement: project` the canonical id of its project
//! folder, `<first>/<project>/<project>`, so every repo of a folder lands on one worker.
//! A folder of more than [`SPLIT_AT`] repos is split into `2^k` buckets by the low `k` bits
//! of `xxh3_64(name)` (`k` the smallest with `members <= SPLIT_AT << k`); bucket `b > 0`
//! keys as `<first>/<project>/<project>#<b>` (no id holds `#`), bucket 0 as the canonical
//! id itself, so a folder growing past a power of two moves half of each bucket, never the
//! whole folder, and a canonical singleton (`a/abc/abc`) keys as its own id (it does not
//! move when a fleet switches placement).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

mod points;
#[cfg(test)]
use points::{PER_MEMBER, PROBES};

/// The owner function of a fleet (SPEC §5; design.md "Owner function: points on a
/// circle"). Both give every member a score of its own for every repo and the lowest
/// wins, so both move only what SPEC §5 lets move; they differ in what a repo costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hashing {
    /// Weighted rendezvous (the module doc): one hash per member for each repo.
    Rendezvous,
    /// Points on a circle ([`points`]): one look-up for each repo, whatever the members.
    Points,
}

impl Hashing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rendezvous => "rendezvous",
            Self::Points => "points",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rendezvous" => Some(Self::Rendezvous),
            "points" => Some(Self::Points),
            _ => None,
        }
    }
}

/// What the ring hashes for a repo (SPEC §14, design.md "Placement by project").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Every repo of a project folder on the same worker(s).
    Project,
    /// Each repo on its own (the owners of every release before issue 13).
    Repo,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Repo => "repo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "project" => Some(Self::Project),
            "repo" => Some(Self::Repo),
            _ => None,
        }
    }

    /// The placement key of `id`, whose project folder holds `folder_len` repos (itself
    /// included; see [`folder`]), built in `buf`: no allocation (the key is built once per
    /// repo, hashed once per member). An id without three components, or a key that does
    /// not fit the buffer (ids are at most 255 bytes, so only an id the index would
    /// reject), keys as itself.
    pub fn key<'a>(self, id: &'a str, folder_len: usize, buf: &'a mut KeyBuf) -> &'a str {
        if self == Self::Repo {
            return id;
        }
        let Some((first, project, name)) = split_id(id) else {
            return id;
        };
        let bits = split_bits(folder_len);
        let bucket = if bits == 0 {
            0
        } else {
            xxh3_64(name.as_bytes()) & ((1u64 << bits) - 1)
        };
        if bucket == 0 && name == project {
            return id;
        }
        buf.build(id, first, project, bucket)
    }
}

/// Most repos one placement unit holds before its folder is split (SPEC §5 balance with
/// big folders; plan fork-pools C2).
pub const SPLIT_AT: usize = 16;

/// Split bits of a folder of `len` repos: the smallest `k` with `len <= SPLIT_AT << k`.
pub fn split_bits(len: usize) -> u32 {
    let mut k = 0;
    while k < 40 && len > SPLIT_AT << k {
        k += 1;
    }
    k
}

/// `(first, project, name)` of an id of exactly three non-empty components.
fn split_id(id: &str) -> Option<(&str, &str, &str)> {
    let mut parts = id.split('/');
    let (first, project, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || first.is_empty() || project.is_empty() || name.is_empty() {
        return None;
    }
    Some((first, project, name))
}

/// The project folder of an id, `<first>/<project>/` (with the slash, so that it is a
/// prefix of exactly its members' ids); the id itself when it has no three components
/// (then it is a folder of one).
pub fn folder(id: &str) -> &str {
    match split_id(id) {
        Some((first, project, _)) => &id[..first.len() + project.len() + 2],
        None => id,
    }
}

/// A stack buffer for one placement key.
pub struct KeyBuf {
    bytes: [u8; KEY_MAX],
}

const KEY_MAX: usize = 640;

impl Default for KeyBuf {
    fn default() -> Self {
        Self {
            bytes: [0; KEY_MAX],
        }
    }
}

impl KeyBuf {
    fn build<'a>(&'a mut self, id: &'a str, first: &str, project: &str, bucket: u64) -> &'a str {
        let mut digits = [0u8; 20];
        let mut n = bucket;
        let mut d = digits.len();
        loop {
            d -= 1;
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let suffix: &[u8] = if bucket == 0 { &[] } else { &digits[d..] };
        let parts: [&[u8]; 7] = [
            first.as_bytes(),
            b"/",
            project.as_bytes(),
            b"/",
            project.as_bytes(),
            if bucket == 0 { b"" } else { b"#" },
            suffix,
        ];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > KEY_MAX {
            return id;
        }
        let mut at = 0;
        for p in parts {
            self.bytes[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        // Built from two `str`s and ASCII: always UTF-8.
        std::str::from_utf8(&self.bytes[..len]).unwrap_or(id)
    }
}

/// The folder length of each id of `ids` (sorted, so that a folder's members are
/// consecutive: the order of a `BTreeMap` of ids), in one pass.
pub fn folder_lens<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut current: Option<&str> = None;
    let mut start = 0;
    for id in ids {
        let f = folder(id);
        if current != Some(f) {
            let n = (out.len() - start) as u32;
            out[start..].fill(n);
            start = out.len();
            current = Some(f);
        }
        out.push(0);
    }
    let n = (out.len() - start) as u32;
    out[start..].fill(n);
    out
}

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

/// A member set prepared for many look-ups (member seeds and weights precomputed).
#[derive(Debug, Clone)]
pub struct Ring {
    members: Vec<Prepared>,
    /// `1 / weight` when every member has that same usable weight (the usual fleet):
    /// [`Ring::owner_scored`] then skips a losing member by an integer compare.
    uniform: Option<f64>,
    /// Under [`Hashing::Points`], the members' points (built when first needed, shared by
    /// the clones of this ring).
    points: Option<Arc<points::Points>>,
}

#[derive(Debug, Clone)]
struct Prepared {
    seed: u64,
    /// `1 / weight`, or `+inf` for an unusable weight.
    inv_weight: f64,
    uuid: Uuid,
}

impl Ring {
    /// The rendezvous ring of `members` ([`Ring::with`] names the function).
    pub fn new(members: &[Member]) -> Self {
        Self::with(Hashing::Rendezvous, members)
    }

    pub fn with(hashing: Hashing, members: &[Member]) -> Self {
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
            .collect::<Vec<Prepared>>();
        let first = members.first().map(|m| m.inv_weight);
        let uniform = first.filter(|c| {
            c.is_finite()
                && members
                    .iter()
                    .all(|m| m.inv_weight.to_bits() == c.to_bits())
        });
        let points = (hashing == Hashing::Points).then(|| Arc::new(points::Points::new(&members)));
        Self {
            members,
            uniform,
            points,
        }
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
        if let Some(p) = &self.points {
            return p.owner_scored(&self.members, repo_id);
        }
        let id = repo_id.as_bytes();
        let mut best: Option<(usize, f64)> = None;
        // With equal weights, the hash below which a member's bound loses to the best so
        // far (see [`losing_below`]): most members then cost a hash and an integer compare
        // (the scorer's CPU at 1M repos × 1,000 members: docs/scale.md, thirteenth session).
        let mut loses_below = 0u64;
        for (i, m) in self.members.iter().enumerate() {
            let h = xxh3_64_with_seed(id, m.seed);
            if h >> 11 < loses_below {
                continue;
            }
            let u = unit(h);
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
                if let Some(c) = self.uniform {
                    loses_below = losing_below(score, c);
                }
            }
        }
        best
    }
}

/// Margin, in units of the hash's top 53 bits, taken off [`losing_below`]'s threshold:
/// far above the few units its floating-point arithmetic can be off by.
const LOSING_MARGIN: u64 = 1 << 12;

/// For members of weight `1 / inv_weight`, a value such that a member whose hash's top 53
/// bits are below it scores strictly worse than `best`: its bound `(1 - u) * inv_weight *
/// (1 - 1e-9)` (which [`Ring::owner_scored`] skips on) exceeds `best`, since `u < 1 - best
/// / (inv_weight * (1 - 1e-9))` there, with [`LOSING_MARGIN`] to spare. A conservative
/// threshold only ever lets more members through to the exact score, so the owners are
/// those of the full scores (`pruned_owner_is_the_full_scores_owner`). 0 (no skip) when
/// nothing can be said.
fn losing_below(best: f64, inv_weight: f64) -> u64 {
    let t = (1.0 - best / (inv_weight * (1.0 - 1e-9))) * (1u64 << 53) as f64;
    if t > 0.0 {
        // `as` saturates; `t` is at most 2^53.
        (t as u64).saturating_sub(LOSING_MARGIN)
    } else {
        0
    }
}

impl Ring {
    /// The owners of many ids, in order, on the calling thread only: for work ahead of the
    /// main loop, which must not take the loop's core while it runs (the index scorer).
    pub fn owners(&self, ids: &[&str]) -> Vec<Option<(usize, f64)>> {
        ids.iter().map(|id| self.owner_scored(id)).collect()
    }

    /// The owners of many ids under a placement, in order, on every core: `ids` are
    /// `(id, folder length)` ([`Placement::key`]).
    pub fn owners_placed(
        &self,
        placement: Placement,
        ids: &[(&str, u32)],
    ) -> Vec<Option<(usize, f64)>> {
        self.owners_by(ids, |ring, (id, len)| {
            let mut buf = KeyBuf::default();
            ring.owner_scored(placement.key(id, *len as usize, &mut buf))
        })
    }

    fn owners_by<T: Sync>(
        &self,
        items: &[T],
        owner: impl Fn(&Ring, &T) -> Option<(usize, f64)> + Sync,
    ) -> Vec<Option<(usize, f64)>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if threads < 2 || items.len() < 20_000 {
            return items.iter().map(|t| owner(self, t)).collect();
        }
        let chunk = items.len().div_ceil(threads);
        let owner = &owner;
        std::thread::scope(|s| {
            let parts: Vec<_> = items
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().map(|t| owner(self, t)).collect::<Vec<_>>()))
                .collect();
            let mut out = Vec::with_capacity(items.len());
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
        if let Some(p) = &self.points {
            return Some(p.score(&self.members, repo_id, member));
        }
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
        if let Some(p) = &self.points {
            let sc = p.score(&self.members, repo_id, challenger);
            return (sc < incumbent_score || (sc == incumbent_score && c.uuid < incumbent))
                .then_some(sc);
        }
        let u = unit(xxh3_64_with_seed(repo_id.as_bytes(), c.seed));
        if (1.0 - u) * c.inv_weight * (1.0 - 1e-9) > incumbent_score {
            return None;
        }
        let sc = weigh(u, c);
        (sc < incumbent_score || (sc == incumbent_score && c.uuid < incumbent)).then_some(sc)
    }
}

impl Ring {
    /// The placement of `repo_id` with replicas (SPEC §13, design.md "Replicas"): the `r`
    /// members with the lowest scores (the score [`Ring::owner_scored`] uses, ties to the
    /// smaller uuid), distinct zones first: members are walked in score order, a first
    /// pass skips a zone already taken, the rest is filled in score order. `zone_of[i]` is
    /// member `i`'s zone as a number (a member without a zone is its own zone). Indexes
    /// into the members, best first; the first is exactly [`Ring::owner`]'s choice.
    /// O(W log W): only for repos whose `r > 1`.
    pub fn top_r(&self, repo_id: &str, r: usize, zone_of: &[u32]) -> Vec<usize> {
        let mut order: Vec<(f64, usize)> = (0..self.members.len())
            .filter_map(|i| self.score(repo_id, i).map(|s| (s, i)))
            .collect();
        order.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| self.members[a.1].uuid.cmp(&self.members[b.1].uuid))
        });
        let r = r.min(order.len());
        let mut out: Vec<usize> = Vec::with_capacity(r);
        let mut zones: Vec<u32> = Vec::with_capacity(r);
        for &(_, i) in &order {
            if out.len() == r {
                break;
            }
            let z = zone_of.get(i).copied().unwrap_or(u32::MAX - i as u32);
            if !zones.contains(&z) {
                zones.push(z);
                out.push(i);
            }
        }
        for &(_, i) in &order {
            if out.len() == r {
                break;
            }
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }
}

/// [`owners_fingerprint`] when some repo has replicas (R > 1): the replica settings and
/// the members' zones are inputs of the placement, so they are mixed in; with R = 1
/// everywhere the caller keeps [`owners_fingerprint`] as it was (an upgrade moves nothing).
pub fn replicas_fingerprint(owners: u64, settings: &str) -> u64 {
    let mut bytes = owners.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"replicas=");
    bytes.extend_from_slice(settings.as_bytes());
    xxh3_64(&bytes)
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

/// The fingerprint of the saved owners: [`fingerprint`] of the members under `repo`
/// placement and rendezvous (unchanged from earlier releases: no rescore at upgrade),
/// mixed with the placement under `project` and with the function under `points`, so
/// that a switch of either rescores at start.
pub fn owners_fingerprint(placement: Placement, hashing: Hashing, members: &[Member]) -> u64 {
    let mut f = fingerprint(members);
    for (differs, tag) in [
        (placement == Placement::Project, &b"placement=project"[..]),
        (hashing == Hashing::Points, &b"hashing=points"[..]),
    ] {
        if differs {
            let mut bytes = f.to_le_bytes().to_vec();
            bytes.extend_from_slice(tag);
            f = xxh3_64(&bytes);
        }
    }
    f
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
        assert!(
            Ring::new(&[])
                .owners(&["a/abc/abc"])
                .iter()
                .all(Option::is_none)
        );
    }

    /// The repo ids whose owners the pin tests below hold fixed.
    const PINNED_IDS: [&str; 12] = [
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
        let ids = PINNED_IDS;
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

    // SPEC §13: with one replica the placement is exactly today's owner.
    #[test]
    fn spec_13_r1_placement_equals_owner() {
        let m = members(&[1.0, 2.0, 3.0, 1.5, 1.0, 2.5, f64::NAN, 0.7]);
        let ring = Ring::new(&m);
        let zones: Vec<u32> = (0..m.len() as u32).map(|i| i % 2).collect();
        for id in ids(5000) {
            assert_eq!(
                ring.top_r(&id, 1, &zones).first().copied(),
                ring.owner(&id),
                "{id}"
            );
            assert_eq!(
                ring.top_r(&id, 1, &[]).first().copied(),
                ring.owner(&id),
                "{id}"
            );
            // Without zones, the top R are the R best scores in order.
            let top = ring.top_r(&id, 3, &[]);
            let mut all: Vec<(f64, usize)> = (0..m.len())
                .map(|i| (ring.score(&id, i).unwrap(), i))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(m[a.1].uuid.cmp(&m[b.1].uuid)));
            let want: Vec<usize> = all.iter().take(3).map(|x| x.1).collect();
            assert_eq!(top, want, "{id}");
        }
    }

    // SPEC §13: "distinct zones first": two zones of three members and one of one: with
    // R = 2 every repo has a member in two zones; with R = 3 in all three; with R = 4 the
    // fourth is the best remaining score.
    #[test]
    fn spec_13_distinct_zones_first() {
        let m = members(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let ring = Ring::new(&m);
        let zones = [0, 0, 0, 1, 1, 1, 2];
        let mut lone = 0;
        for id in ids(3000) {
            let two = ring.top_r(&id, 2, &zones);
            assert_eq!(two.len(), 2);
            assert_ne!(zones[two[0]], zones[two[1]], "{id}");
            assert_eq!(
                Some(two[0]),
                ring.owner(&id),
                "{id}: the first is the owner"
            );
            let three = ring.top_r(&id, 3, &zones);
            let mut z: Vec<u32> = three.iter().map(|&i| zones[i]).collect();
            z.sort();
            assert_eq!(z, vec![0, 1, 2], "{id}");
            lone += usize::from(three.contains(&6));
            let four = ring.top_r(&id, 4, &zones);
            assert_eq!(&four[..3], &three[..], "{id}");
            assert!(!three.contains(&four[3]));
        }
        assert_eq!(
            lone, 3000,
            "the lone zone's member holds every repo at R = 3"
        );
        // More replicas than members: every member once.
        assert_eq!(ring.top_r("a/b/c", 10, &zones).len(), 7);
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

    // SPEC §5: balance with weights, under both owner functions; with 20,000 repos per unit
    // of weight the spread is ~1 %.
    #[test]
    fn shares_follow_weights() {
        let weights = [1.0, 2.0, 3.0, 0.5, 1.5];
        let m = members(&weights);
        let total: f64 = weights.iter().sum();
        let n = 160_000;
        let all = ids(n);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        for hashing in [Hashing::Rendezvous, Hashing::Points] {
            let mut load = vec![0usize; m.len()];
            for (i, _) in Ring::with(hashing, &m).owners(&refs).into_iter().flatten() {
                load[i] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let fair = n as f64 * w / total;
                let ratio = load[i] as f64 / fair;
                assert!(
                    (0.95..1.05).contains(&ratio),
                    "{hashing:?}, member {i}: {} vs fair {fair:.0}",
                    load[i]
                );
            }
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

    fn key(placement: Placement, id: &str, len: usize) -> String {
        placement.key(id, len, &mut KeyBuf::default()).to_owned()
    }

    // SPEC §5 with §14 (plan fork-pools C1, C2): the placement key and the owners it gives
    // are a stable contract too. `repo` keys every id as itself (today's owners); `project`
    // keys a folder by its canonical id, split past SPLIT_AT members.
    #[test]
    fn spec_5_project_key_owners_are_pinned() {
        use Placement::{Project, Repo};
        assert_eq!(key(Repo, "l/linux/linux-next", 500), "l/linux/linux-next");
        assert_eq!(key(Project, "l/linux/linux-next", 5), "l/linux/linux");
        assert_eq!(key(Project, "a/abc/abc", 1), "a/abc/abc");
        assert_eq!(key(Project, "a/abc/abc", SPLIT_AT), "a/abc/abc");
        // Split: bucket = low bits of xxh3(name); bucket 0 keeps the canonical key.
        assert_eq!(SPLIT_AT, 16);
        assert_eq!(split_bits(16), 0);
        assert_eq!(split_bits(17), 1);
        assert_eq!(split_bits(500), 5);
        assert_eq!(xxh3_64(b"linux-next") & 31, PINNED_BUCKET);
        assert_eq!(
            key(Project, "l/linux/linux-next", 500),
            format!("l/linux/linux#{PINNED_BUCKET}")
        );
        // Ids the index would reject key as themselves.
        assert_eq!(key(Project, "a/b", 9), "a/b");
        assert_eq!(key(Project, "a/b/c/d", 9), "a/b/c/d");
        assert_eq!(folder("l/linux/linux-next"), "l/linux/");
        assert_eq!(
            folder_lens(["a/a/a", "a/b/x", "a/b/y", "b/b/b"].into_iter()),
            [1, 2, 2, 1]
        );

        let m = members(&[1.0, 1.0, 2.0, 0.5, 1.5]);
        let ids = [
            "a/abc/abc",
            "l/linux/linux-next",
            "l/linux/linux-stable",
            "l/linux/linux",
            "g/git/git",
            "g/git/git-for-windows",
            "r/rust/rust",
            "x/y/z",
        ];
        let ring = Ring::new(&m);
        let owners = |placement: Placement, len: usize| -> Vec<usize> {
            ids.iter()
                .map(|id| {
                    let mut buf = KeyBuf::default();
                    ring.owner(placement.key(id, len, &mut buf)).unwrap()
                })
                .collect()
        };
        // `repo` placement: exactly the owners of `owners_are_pinned`'s formula.
        let plain: Vec<usize> = ids.iter().map(|id| owner(id, &m).unwrap()).collect();
        assert_eq!(owners(Repo, 500), plain);
        assert_eq!(owners(Project, 3), PINNED_PROJECT, "project owners changed");
        assert_eq!(owners(Project, 500), PINNED_SPLIT, "split owners changed");
        // A folder's repos share an owner below the split.
        let p = owners(Project, 3);
        assert!(p[1] == p[2] && p[2] == p[3] && p[4] == p[5], "{p:?}");
    }

    const PINNED_BUCKET: u64 = 30;
    /// `a/abc/abc`, `g/git/git` and `r/rust/rust` are canonical: the owners of
    /// `owners_are_pinned` (2, 2, 0); `l/linux/*` all go to `l/linux/linux`'s owner.
    const PINNED_PROJECT: [usize; 8] = [2, 1, 1, 1, 2, 2, 0, 3];
    const PINNED_SPLIT: [usize; 8] = [2, 2, 1, 4, 2, 2, 4, 3];

    /// An index shaped like compass-ci's: 90 % of repos are singletons named after their
    /// folder, 10 % sit in folders of 10 to 60, one folder holds 500. `(id, folder len)`.
    fn heavy_tail(n: usize) -> Vec<(String, u32)> {
        let mut out = Vec::with_capacity(n);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        let mut folders = vec![500usize];
        let mut rest = n / 10 - 500;
        while rest > 0 {
            let s = (10 + next(51) as usize).min(rest);
            folders.push(s);
            rest -= s;
        }
        for (f, &size) in folders.iter().enumerate() {
            for i in 0..size {
                out.push((format!("f/big{f}/fork{i}"), size as u32));
            }
        }
        for i in out.len()..n {
            out.push((format!("s/p{i}/p{i}"), 1));
        }
        out
    }

    /// Most loaded member over its fair share, equal weights, `project` placement.
    fn project_balance(n: usize, workers: usize) -> f64 {
        let m = members(&vec![1.0; workers]);
        let index = heavy_tail(n);
        let items: Vec<(&str, u32)> = index.iter().map(|(id, l)| (id.as_str(), *l)).collect();
        let mut load = vec![0usize; workers];
        for o in Ring::new(&m).owners_placed(Placement::Project, &items) {
            load[o.unwrap().0] += 1;
        }
        *load.iter().max().unwrap() as f64 / (n as f64 / workers as f64)
    }

    // SPEC §5 balance under `project` placement on a heavy-tailed index (plan fork-pools
    // C2). Pure hashing of units up to SPLIT_AT repos needs more repos per worker than
    // per-repo placement to stay within 1.10×: see design.md "Placement by project".
    #[test]
    fn spec_5_project_balance_heavy_tail() {
        let b = project_balance(BALANCE_REPOS_100, 100);
        eprintln!("most loaded at 100 workers: {b:.3}x");
        assert!(b <= 1.10, "100 workers: most loaded {b:.3}× its fair share");
    }

    /// The 1,000-worker case hashes 2·10⁹ times (~50 s in a debug build): run it with
    /// `cargo nextest run -p gitmirrord spec_5_project_balance_1000 --run-ignored all`.
    /// At 2,000 repos per worker it gave 1.099×; at 1,000 per worker 1.157× (over SPEC
    /// §5's 1.15×: design.md "Placement by project").
    #[test]
    #[ignore]
    fn spec_5_project_balance_1000_workers() {
        let b = project_balance(BALANCE_REPOS_1000, 1000);
        eprintln!("most loaded at 1,000 workers: {b:.3}x");
        assert!(
            b <= 1.15,
            "1,000 workers: most loaded {b:.3}× its fair share"
        );
    }

    const BALANCE_REPOS_100: usize = 300_000;
    const BALANCE_REPOS_1000: usize = 2_000_000;

    // SPEC §14: a canonical singleton (`x/abc/abc`, most of compass-ci) keys as its own id,
    // so switching a fleet from `repo` to `project` does not move it; a fork does.
    #[test]
    fn spec_14_canonical_singletons_do_not_move() {
        let m = members(&[1.0, 2.0, 3.0, 1.5, 1.0]);
        let ring = Ring::new(&m);
        let mut moved_forks = 0;
        for i in 0..2000 {
            let id = format!("s/p{i}/p{i}");
            let mut buf = KeyBuf::default();
            assert_eq!(
                ring.owner(Placement::Project.key(&id, 1, &mut buf)),
                ring.owner(&id),
                "{id}"
            );
            let fork = format!("s/p{i}/p{i}-fork");
            let mut buf = KeyBuf::default();
            let placed = ring.owner(Placement::Project.key(&fork, 2, &mut buf));
            assert_eq!(placed, ring.owner(&id), "a fork goes where its origin is");
            moved_forks += usize::from(placed != ring.owner(&fork));
        }
        // A fork moved unless it already hashed where its origin does (1 - Σ wᵢ²/W²).
        assert!((1300..1700).contains(&moved_forks), "{moved_forks}");
    }

    // SPEC §5/§14 (plan C2): a folder growing past SPLIT_AT members moves half of its
    // repos (those whose next name bit is set), never the whole folder; the others keep
    // their key and owner.
    #[test]
    fn spec_14_split_folder_moves_half() {
        let m = members(&vec![1.0; 50]);
        let ring = Ring::new(&m);
        let ids: Vec<String> = (0..SPLIT_AT + 1)
            .map(|i| format!("l/linux/tree{i}"))
            .collect();
        let mut moved = 0;
        for id in &ids[..SPLIT_AT] {
            let (mut a, mut b) = (KeyBuf::default(), KeyBuf::default());
            let before = Placement::Project.key(id, SPLIT_AT, &mut a);
            let after = Placement::Project.key(id, SPLIT_AT + 1, &mut b);
            assert!(
                after == before || after == "l/linux/linux#1",
                "{id}: {after}"
            );
            if after == before {
                assert_eq!(ring.owner(after), ring.owner(before));
            } else {
                moved += 1;
            }
        }
        assert!((3..=13).contains(&moved), "{moved} of {SPLIT_AT} moved");
        // Growing again past twice SPLIT_AT splits each bucket once more: again about half.
        let mut again = 0;
        for i in 0..2 * SPLIT_AT {
            let id = format!("l/linux/tree{i}");
            let (mut a, mut b) = (KeyBuf::default(), KeyBuf::default());
            let before = Placement::Project.key(&id, 2 * SPLIT_AT, &mut a).to_owned();
            let after = Placement::Project.key(&id, 2 * SPLIT_AT + 1, &mut b);
            again += usize::from(after != before);
        }
        assert!((8..=24).contains(&again), "{again} of {}", 2 * SPLIT_AT);
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

    // ----- `points` (design.md "Owner function: points on a circle") -----

    fn points_owner(id: &str, m: &[Member]) -> Option<usize> {
        Ring::with(Hashing::Points, m).owner(id)
    }

    /// The owner by every member's score, as the `points` module doc states it.
    fn points_brute_force(id: &str, members: &[Member]) -> Option<(usize, f64)> {
        let ring = Ring::with(Hashing::Points, members);
        let k = id.as_bytes();
        let xs: Vec<u64> = (0..PROBES)
            .map(|i| {
                if i == 0 {
                    xxh3_64(k)
                } else {
                    xxh3_64_with_seed(k, i)
                }
            })
            .collect();
        let mut best: Option<(usize, f64)> = None;
        for (i, m) in ring.members.iter().enumerate() {
            let usable = (u64::MAX as f64 * m.inv_weight).is_finite();
            let s = if usable {
                let d = (0..PER_MEMBER)
                    .flat_map(|j| {
                        let p = xxh3_64_with_seed(&j.to_le_bytes(), m.seed);
                        xs.iter().map(move |&x| p.wrapping_sub(x))
                    })
                    .min()
                    .unwrap();
                d as f64 * m.inv_weight
            } else {
                f64::INFINITY
            };
            if best.is_none_or(|(b, bs)| s < bs || (s == bs && m.uuid < ring.members[b].uuid)) {
                best = Some((i, s));
            }
        }
        best
    }

    // The contract of `points` is pinned like rendezvous': a change of hash, point count or
    // formula fails here (values from `points_brute_force`, the formula written out).
    #[test]
    fn points_owners_are_pinned() {
        let m = members(&[1.0, 1.0, 2.0, 0.5, 1.5]);
        let ids = PINNED_IDS;
        let got: Vec<_> = ids.iter().map(|id| points_owner(id, &m)).collect();
        let want: Vec<_> = ids
            .iter()
            .map(|id| points_brute_force(id, &m).map(|(i, _)| i))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            got,
            PINNED_POINTS.map(Some),
            "owners changed: `points` is no longer stable"
        );
    }

    const PINNED_POINTS: [usize; 12] = [4, 1, 1, 3, 0, 2, 2, 1, 4, 2, 2, 3];

    // SPEC §5 under `points`: only the dead member's repos move, only repos moving to a
    // joining member move, and the shares follow the weights.
    #[test]
    fn points_move_only_what_spec_5_lets_move() {
        let m = members(&[1.0, 2.0, 3.0, 1.5, 1.0, 2.5]);
        let dead = m[2].uuid;
        let rest: Vec<_> = m.iter().copied().filter(|x| x.uuid != dead).collect();
        let newcomer = Member {
            uuid: uuid(99),
            weight: 2.5,
        };
        let mut joined = m.clone();
        joined.push(newcomer);
        let (before, after, grown) = (
            Ring::with(Hashing::Points, &m),
            Ring::with(Hashing::Points, &rest),
            Ring::with(Hashing::Points, &joined),
        );
        let (mut died, mut came) = (0, 0);
        for id in ids(20_000) {
            let b = m[before.owner(&id).unwrap()].uuid;
            let a = rest[after.owner(&id).unwrap()].uuid;
            if b == dead {
                died += 1;
            } else {
                assert_eq!(b, a, "{id} moved although its owner lives");
            }
            let g = joined[grown.owner(&id).unwrap()].uuid;
            if g != b {
                assert_eq!(g, newcomer.uuid, "{id} moved between old members");
                came += 1;
            }
        }
        // Weight 3 of 11: about 5,455 of 20,000; 2.5 of 13.5: about 3,704.
        assert!((5000..6000).contains(&died), "{died}");
        assert!((3300..4100).contains(&came), "{came}");
    }

    /// Most loaded / fair share with `workers` equal members and `per` repos each.
    fn points_balance(workers: usize, per: usize) -> f64 {
        let m: Vec<Member> = (0..workers)
            .map(|i| Member {
                uuid: Uuid::from_u128(0xabcd_0000_0000_4000_8000_0000_0000_0000 + i as u128 * 7919),
                weight: 1.0,
            })
            .collect();
        let ring = Ring::with(Hashing::Points, &m);
        let mut load = vec![0usize; workers];
        for i in 0..workers * per {
            let id = format!("sim{:02}/p{:07}/repo{i:07}", i % 36, i / 3);
            load[ring.owner(&id).unwrap()] += 1;
        }
        *load.iter().max().unwrap() as f64 / per as f64
    }

    // SPEC §5: "with 1,000 repos or more per worker and up to 100 workers, the most loaded
    // worker holds at most 1.10× its weighted fair share".
    #[test]
    fn spec_5_points_balance_100_workers() {
        let b = points_balance(100, 1000);
        assert!(b <= 1.10, "{b}");
    }

    // SPEC §5: "at 1,000 workers, 1.15×" (1M look-ups: run in release builds by
    // `cargo test --release -p gitmirrord --lib -- --ignored spec_5_points_balance`).
    #[test]
    #[ignore]
    fn spec_5_points_balance_1000_workers() {
        let b = points_balance(1000, 1000);
        println!("points, 1,000 workers x 1,000 repos: most loaded / fair {b:.3}");
        assert!(b <= 1.15, "{b}");
    }

    // SPEC §13 under `points`: R = 1 is the owner, and the top R are the best scores.
    #[test]
    fn points_top_r_and_challenge_agree_with_owner() {
        let m = members(&[1.0, 2.0, 3.0, 1.5, 1.0, 2.5, f64::NAN, 0.7]);
        let ring = Ring::with(Hashing::Points, &m);
        let old = Ring::with(Hashing::Points, &m[..4]);
        for id in ids(3000) {
            assert_eq!(
                ring.top_r(&id, 1, &[]).first().copied(),
                ring.owner(&id),
                "{id}"
            );
            let mut best = old.owner_scored(&id).unwrap();
            for newcomer in 4..m.len() {
                if let Some(score) = ring.challenge(&id, newcomer, best.1, m[best.0].uuid) {
                    best = (newcomer, score);
                }
            }
            assert_eq!(Some(best.0), ring.owner(&id), "{id}");
            assert_eq!(ring.score(&id, best.0), Some(best.1), "{id}");
        }
    }

    #[test]
    fn points_unusable_weights_own_only_as_a_last_resort() {
        let mut m = members(&[1.0, 0.0, f64::NAN, -1.0, f64::INFINITY, 1e-300]);
        for id in ids(500) {
            assert_eq!(points_owner(&id, &m), Some(0), "{id}");
        }
        m.remove(0);
        for id in ids(50) {
            assert_eq!(points_owner(&id, &m), Some(0), "{id}: the smallest uuid");
        }
        assert_eq!(points_owner("a/b/c", &[]), None);
    }

    #[test]
    fn points_are_built_only_when_needed() {
        let m = members(&[1.0; 10]);
        let ring = Ring::with(Hashing::Points, &m);
        let p = ring.points.as_ref().unwrap();
        assert_eq!(
            p.built_bytes(),
            0,
            "a ring made for a join or a score holds no points"
        );
        ring.score("a/b/c", 3);
        assert_eq!(
            p.built_bytes(),
            PER_MEMBER as usize * 8,
            "one member's points"
        );
        ring.owner("a/b/c");
        assert!(
            p.built_bytes() > 10 * PER_MEMBER as usize * 12,
            "the circle"
        );
        // Clones share what was built.
        let copy = ring.clone();
        assert!(Arc::ptr_eq(copy.points.as_ref().unwrap(), p));
    }

    proptest::proptest! {
        // The walk on the circle finds the owner every member's score names, whatever the
        // weights (far apart, unusable) and the member count (the walk's limit in play).
        #[test]
        fn points_walk_finds_the_lowest_score(
            weights in proptest::collection::vec(
                proptest::prop_oneof![
                    0.001f64..1000.0,
                    proptest::strategy::Just(1.0),
                    proptest::strategy::Just(0.0),
                ],
                1..24,
            ),
            ids in proptest::collection::vec("[a-z]/[a-z0-9-]{1,12}/[a-z0-9._-]{1,16}", 1..12),
        ) {
            let m = members(&weights);
            let ring = Ring::with(Hashing::Points, &m);
            for id in &ids {
                let got = ring.owner_scored(id);
                let want = points_brute_force(id, &m);
                proptest::prop_assert_eq!(got.map(|(i, _)| i), want.map(|(i, _)| i));
                proptest::prop_assert_eq!(
                    got.map(|(_, s)| s.to_bits()),
                    want.map(|(_, s)| s.to_bits())
                );
            }
        }
    }

    proptest::proptest! {
        // SPEC §5: with equal weights (the integer threshold of `losing_below` in play),
        // the owner and its score are those of the full scores, for few and many members.
        #[test]
        fn uniform_weights_owner_is_the_full_scores_owner(
            weight in proptest::prop_oneof![0.001f64..1000.0, proptest::strategy::Just(1.0)],
            n in 1usize..300,
            ids in proptest::collection::vec("[a-z]/[a-z0-9-]{1,12}/[a-z0-9._-]{1,16}", 1..40),
        ) {
            let m = members(&vec![weight; n]);
            let ring = Ring::new(&m);
            proptest::prop_assert!(ring.uniform.is_some());
            for id in &ids {
                let got = ring.owner_scored(id);
                let want = brute_force(id, &m);
                proptest::prop_assert_eq!(got.map(|(i, _)| i), want);
                if let (Some((i, s)), Some(w)) = (got, want) {
                    proptest::prop_assert_eq!(i, w);
                    proptest::prop_assert_eq!(s.to_bits(), score(id.as_bytes(), &ring.members[w]).to_bits());
                }
            }
        }

        // The threshold is conservative: a hash just below it has a bound (what
        // `owner_scored` skips on) above the best score, whatever the best and weight.
        #[test]
        fn below_the_losing_threshold_the_bound_loses(
            share in proptest::prop_oneof![1e-15f64..1e-6, 1e-6f64..0.999],
            weight in 0.001f64..1000.0,
        ) {
            // A best score below the weight's inverse (a bound of 1 - u can lose to it).
            let inv = 1.0 / weight;
            let best = share * inv;
            let t = losing_below(best, inv);
            proptest::prop_assume!(t > 0);
            let u = unit((t - 1) << 11);
            proptest::prop_assert!((1.0 - u) * inv * (1.0 - 1e-9) > best);
        }
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
