//! Logging to stderr (journald picks it up). `RUST_LOG` overrides the configured level.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
