//! Weighted rendezvous hashing (SPEC §5).
//!
//! INTERFACE STUB: body to be written.

use uuid::Uuid;

/// A live worker as the ring sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub uuid: Uuid,
    pub weight: f64,
}

/// Index into `members` of the owner of `repo_id`, or `None` when `members` is empty.
/// A pure function of its inputs, stable across processes and releases.
pub fn owner(_repo_id: &str, members: &[Member]) -> Option<usize> {
    if members.is_empty() { None } else { Some(0) }
}
