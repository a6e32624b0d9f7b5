//! systemd notification (`Type=notify`). Every call is a no-op outside systemd.

use sd_notify::NotifyState;
use std::time::Duration;

/// Tell systemd the daemon is ready, with a first status line.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Replace the one-line status shown by `systemctl status`.
pub fn status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// Feed the watchdog. Call only from a point that proves the main loop makes progress.
pub fn watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// Tell systemd a graceful stop has begun.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// How often to feed the watchdog: half of `WATCHDOG_USEC`, or `None` without a watchdog.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .filter(|d| !d.is_zero())
}
