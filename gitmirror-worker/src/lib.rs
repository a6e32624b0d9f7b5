//! gitmirror worker: keeps bare mirrors of the repos its coordinator assigns, fetches them
//! on a schedule, and reports every outcome and ref change (SPEC §7).
//!
//! `main.rs` parses arguments and calls [`run`]; the coordinator's embedded worker
//! (`local_worker:`) calls the same [`run`] with [`WorkerConfig::embedded`].

mod assignment;
mod attempt;
pub mod config;
mod link;
pub mod mirror;
pub mod peer;
pub mod peer_plane;
pub mod pool;
mod run;
pub mod schedule;
pub mod state;
pub mod store;
mod upstream_http;

pub use config::{DiskSection, FetchSection, KeyError, TokenSource, WorkerConfig};
pub use link::{BACKOFF_MAX, BACKOFF_START, IDLE_TIMEOUT, KEEPALIVE};
pub use run::{run, run_reloadable};
pub use upstream_http::{Redirects, UpstreamPolicy};
