//! gitmirrord, the coordinator.

pub mod config;
pub mod index;
pub mod ring;

pub use config::Config;
