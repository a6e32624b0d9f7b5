//! gitmirror worker: keeps bare mirrors of the repos its coordinator assigns, fetches them
//! on a schedule, and reports every outcome and ref change.

pub mod config;
pub mod mirror;
pub mod state;
