//! The digest of a ref set that both sides compute: a worker sends the digest of its
//! mirror's refs with every outcome, and the coordinator keeps the digest of the refs it
//! published in events, so it can tell "news" from refs it has already announced (a
//! returning worker re-sending an old report, a new owner cloning known refs) without
//! storing any ref.
//!
//! It is the wrapping sum of an xxh3 hash per `(name, object id)`: order-independent and
//! updatable from changes ([`apply`]). The coordinator persists these digests: never change
//! the hash.

use crate::RefChange;

/// Hash of one ref.
pub fn ref_hash(name: &str, id: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    h.digest()
}

/// Digest of a whole ref set given as `(name, object id)` pairs; `0` for no refs.
pub fn digest<'a>(refs: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    refs.into_iter()
        .fold(0u64, |d, (name, id)| d.wrapping_add(ref_hash(name, id)))
}

/// The digest after applying `changes` to the set `d` describes.
pub fn apply(mut d: u64, changes: &[RefChange]) -> u64 {
    for c in changes {
        if let Some(old) = &c.old {
            d = d.wrapping_sub(ref_hash(&c.name, old));
        }
        if let Some(new) = &c.new {
            d = d.wrapping_add(ref_hash(&c.name, new));
        }
    }
    d
}

/// The digest of the refs `changes` were computed against, given the digest `d` after
/// them: the base of an outcome. `0` when the changes list every ref as new (a clone, or a
/// relist).
pub fn base(mut d: u64, changes: &[RefChange]) -> u64 {
    for c in changes {
        if let Some(new) = &c.new {
            d = d.wrapping_sub(ref_hash(&c.name, new));
        }
        if let Some(old) = &c.old {
            d = d.wrapping_add(ref_hash(&c.name, old));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, old: Option<&str>, new: Option<&str>) -> RefChange {
        RefChange {
            name: name.into(),
            old: old.map(Into::into),
            new: new.map(Into::into),
        }
    }

    #[test]
    fn order_independent_and_follows_changes() {
        let a = digest([("refs/heads/a", "1"), ("refs/heads/b", "2")]);
        assert_eq!(a, digest([("refs/heads/b", "2"), ("refs/heads/a", "1")]));
        assert_eq!(digest([]), 0);
        let moved = apply(
            a,
            &[
                change("refs/heads/b", Some("2"), Some("3")),
                change("refs/heads/c", None, Some("4")),
                change("refs/heads/a", Some("1"), None),
            ],
        );
        assert_eq!(
            moved,
            digest([("refs/heads/b", "3"), ("refs/heads/c", "4")])
        );
        // The name and the id are kept apart: ("ab", "c") is not ("a", "bc").
        assert_ne!(digest([("ab", "c")]), digest([("a", "bc")]));
    }

    #[test]
    fn base_undoes_the_changes() {
        let changes = [
            change("refs/heads/b", Some("2"), Some("3")),
            change("refs/heads/c", None, Some("4")),
            change("refs/heads/a", Some("1"), None),
        ];
        let before = digest([("refs/heads/a", "1"), ("refs/heads/b", "2")]);
        assert_eq!(base(apply(before, &changes), &changes), before);
        // Every ref listed as new: the base is no refs.
        let all = [change("refs/heads/a", None, Some("1"))];
        assert_eq!(base(digest([("refs/heads/a", "1")]), &all), 0);
    }
}
