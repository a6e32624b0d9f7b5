//! gitmirrord, the coordinator.

pub mod config;
pub mod events;
pub mod fleet;
pub mod index;
pub mod registry;
pub mod ring;

pub use config::Config;
