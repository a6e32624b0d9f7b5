//! gitmirrord, the coordinator.

pub mod index;
pub mod ring;
