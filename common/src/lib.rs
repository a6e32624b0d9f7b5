//! What both gitmirror daemons share: crash-safe state files, config value syntax,
//! TLS trust material, systemd notification, logging and disk space.

pub mod ca;
pub mod credentials;
pub mod disk;
pub mod frames;
pub mod heap;
pub mod journal;
pub mod logging;
pub mod notify;
pub mod statefile;
pub mod trust;
pub mod units;
pub mod upstream_url;

/// Exit code for a bad configuration (sysexits EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

/// Install the ring crypto provider for rustls. Call first thing in `main` and in tests;
/// a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as an RFC 3339 UTC string with second precision.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
