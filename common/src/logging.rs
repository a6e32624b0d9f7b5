//! Logging to stderr (journald picks it up). `RUST_LOG` overrides the configured level.
//!
//! The level filter sits behind a `tracing_subscriber::reload` layer whose handle is kept
//! here, so a daemon changes its level on SIGHUP with [`set_level`].

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set(handle);
    }
}

/// What [`set_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The new filter is in force.
    Applied,
    /// `RUST_LOG` is set and keeps overriding the configured level.
    OverriddenByEnv,
    /// Logging was not set up by [`init`] (e.g. in tests).
    NotInstalled,
}

/// Switch the running level filter to `level` (the syntax of `log_level` / `RUST_LOG`).
pub fn set_level(level: &str) -> Result<LevelChange, String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?}: {e}"))?;
    if std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty()) {
        return Ok(LevelChange::OverriddenByEnv);
    }
    let Some(handle) = HANDLE.get() else {
        return Ok(LevelChange::NotInstalled);
    };
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(LevelChange::Applied)
}
