//! How the events account for the upstream changes a test made (SPEC §8): every change
//! in exactly one event. Shared by the fault suites.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One upstream ref value the test made: `(repo id, ref name, new oid)`.
pub type Change = (String, String, String);

/// The `(repo, ref, new)` triples an event carries (created or updated refs).
pub fn triples(e: &Value) -> Vec<Change> {
    let repo = e["repo"].as_str().unwrap_or_default();
    e["refs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| {
                    Some((
                        repo.to_owned(),
                        r["name"].as_str()?.to_owned(),
                        r["new"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How the events account for the changes made (SPEC §8).
#[derive(Debug, Default)]
pub struct Tally {
    /// Changes made that no event carries.
    pub lost: Vec<Change>,
    /// Changes carried as news by more than one event, with their seqs.
    pub duplicated: Vec<(Change, Vec<u64>)>,
    /// Triples in events that the test never made.
    pub unexpected: Vec<(Change, u64)>,
    /// Events that carry nothing new (every triple already published).
    pub empty: Vec<u64>,
}

/// Count, in seq order, which event first carries each change. A `cloned` event lists
/// every ref of the repo (SPEC §8); when it carries at least one new value, its other refs
/// are a re-listing of values already published, not news (design.md "Events": a clone
/// with other refs than those published is published with its full ref list). Any other
/// repeat of a value is a duplicate.
pub fn tally(events: &[Value], made: &[Change]) -> Tally {
    let made_set: BTreeSet<&Change> = made.iter().collect();
    let mut carried: BTreeMap<Change, Vec<u64>> = BTreeMap::new();
    let mut t = Tally::default();
    for e in events {
        let seq = e["seq"].as_u64().unwrap_or(0);
        let ts = triples(e);
        let fresh = ts.iter().filter(|c| !carried.contains_key(*c)).count();
        if fresh == 0 {
            t.empty.push(seq);
        }
        let relisting = e["kind"] == "cloned" && fresh > 0;
        for c in ts {
            if !made_set.contains(&c) {
                t.unexpected.push((c.clone(), seq));
            }
            let seqs = carried.entry(c).or_default();
            if seqs.is_empty() || !relisting {
                seqs.push(seq);
            }
        }
    }
    for c in made {
        match carried.get(c) {
            None => t.lost.push(c.clone()),
            Some(seqs) if seqs.len() > 1 => t.duplicated.push((c.clone(), seqs.clone())),
            Some(_) => {}
        }
    }
    t
}
