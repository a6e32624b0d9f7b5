//! gitmirrord, the coordinator: reads the indexes, assigns every repo to one live worker,
//! watches liveness, records ref-change events and serves the HTTP API (SPEC §1).
//!
//! `main.rs` parses arguments, loads [`Config`], binds the sockets ([`run::Listeners`]) and
//! calls [`run::run`]; tests call the same `run` on `127.0.0.1:0`.

pub mod api;
pub mod census;
pub mod config;
pub mod ctl;
pub mod enrollment;
pub mod events;
pub mod fleet;
pub mod handover;
pub mod history;
pub mod hooks;
pub mod host_budget;
pub mod http;
pub mod http_auth;
pub mod index;
pub mod metrics;
pub mod page;
pub mod plots;
pub mod poller;
pub mod pools;
pub mod published;
pub mod redact;
pub mod refs_query;
pub mod registry;
pub mod reload;
pub mod replicas;
pub mod repo_page;
pub mod repo_store;
pub mod ring;
pub mod run;
pub mod scorer;
pub mod server;
pub mod state;
pub mod url_search;
pub mod webhook;

pub use config::Config;
pub use run::{Control, ControlHandle, Listeners, control, run};
