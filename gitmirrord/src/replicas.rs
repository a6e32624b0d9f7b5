//! Replica settings and a replicated repo's placement (SPEC §13, issue 12 S3–S4;
//! design.md "Replicas (issue 12, S3–S4)").
//!
//! `replicas` (1..=5, default 1) and `indexes[].replicas` say how many distinct live
//! workers hold each repo. A repo whose count is 1 carries nothing of this (its owner is
//! the ring's choice, as before); a repo above 1 carries a [`ReplicaSet`] in a box: the
//! placement (the top R of [`crate::ring::Ring::top_r`]) of which the first verified
//! holder is the *primary* (`Repo::owner`), the others followers.

use std::collections::BTreeMap;
use uuid::Uuid;

/// Most replicas a repo may have.
pub const MAX_REPLICAS: u8 = 5;

/// `replicas` and the per-index overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub default: u8,
    /// Index name → replicas of its repos.
    pub per_index: BTreeMap<String, u8>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default: 1,
            per_index: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// The replica count of a repo of `index`.
    pub fn for_index(&self, index: &str) -> u8 {
        self.per_index.get(index).copied().unwrap_or(self.default)
    }

    /// Whether some repo may have more than one replica.
    pub fn any_replicated(&self) -> bool {
        self.default > 1 || self.per_index.values().any(|&r| r > 1)
    }

    /// A stable text of the settings, for the owners' fingerprint and the reload message.
    pub fn describe(&self) -> String {
        let mut s = self.default.to_string();
        for (name, r) in &self.per_index {
            s.push_str(&format!(",{name}={r}"));
        }
        s
    }
}

/// The placement of a repo with more than one replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaSet {
    /// Replicas wanted (2..=5).
    pub want: u8,
    /// The ring's choice, best first (at most `want` live, non-drained workers).
    pub placement: Vec<Uuid>,
}
