//! The coordinator's configuration file (SPEC §2.1).
//!
//! Two layers (STYLE habit 5): [`RawConfig`] is exactly the YAML, with unknown keys refused
//! by serde; [`Config`] is the validated result whose every error names the file and the
//! key. Seed aliases from the Python prototype are mapped to their new keys with a warning.

use crate::events::EventOptions;
use crate::index::IndexSource;
use gitmirror_common::units::{FreeSpace, de_opt_duration};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/gitmirror/gitmirrord.yaml";
pub const DEFAULT_LISTEN_PORT: u16 = 5555;
pub const DEFAULT_INDEX_NAME: &str = "upstream-repos";
pub const DEFAULT_INDEX_URL: &str = "https://gitee.com/compass-ci/upstream-repos.git";
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Ids are `u32` on the wire; far beyond any real fleet, and keeps the id bitmap small.
const MAX_MAX_WORKERS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Default of `max_worker_weight` (SPEC §17): disk-size weights (GiB, TiB) still work.
pub const DEFAULT_MAX_WORKER_WEIGHT: f64 = 1000.0;

/// Default of `status_url_limit` (SPEC §12).
pub const DEFAULT_STATUS_URL_LIMIT: usize = 10_000;

/// The file as written. Every key optional; defaults are applied in [`Config::from_raw`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub http_listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub indexes: Option<Vec<RawIndex>>,
    pub max_workers: Option<u32>,
    pub liveness: Option<RawLiveness>,
    pub allow_file_urls: Option<bool>,
    pub purge_protect_percent: Option<f64>,
    pub api_token_file: Option<PathBuf>,
    pub api_read_token_file: Option<PathBuf>,
    pub api_allowed_hosts: Option<Vec<String>>,
    pub webhooks: Option<Vec<RawWebhook>>,
    pub events: Option<RawEvents>,
    pub local_worker: Option<LocalWorker>,
    /// Secrets for private index URLs, and for the embedded worker's upstreams (SPEC §16).
    pub credentials: Option<Vec<gitmirror_common::credentials::CredentialSpec>>,
    pub log_level: Option<String>,
    pub status_url_limit: Option<usize>,
    pub max_worker_weight: Option<f64>,
    pub enroll: Option<String>,
    pub push_hooks: Option<Vec<RawPushHook>>,
    pub hooks_listen: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub hooks_min_gap: Option<Duration>,
    pub hooks_trusted_proxies: Option<Vec<String>>,
    pub host_limits: Option<Vec<RawHostLimit>>,
    /// `project` or `repo` (SPEC §14); unset: the persisted placement, or `project` on a
    /// fresh state directory ([`crate::state::resolve_placement`]).
    pub placement: Option<String>,
    /// `points` or `rendezvous`: the owner function; unset: the persisted one, or
    /// `points` on a fresh state directory ([`crate::state::resolve_hashing`]).
    pub hashing: Option<String>,
    /// Workers holding each repo (SPEC §13; 1..=5, default 1).
    pub replicas: Option<u32>,
    // Seed aliases (the prototype's keys).
    pub coor_ip_addr: Option<String>,
    pub upstream_repos_name: Option<String>,
    pub upstream_repos_url: Option<String>,
    pub bitmap_max_num: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub fetch_interval: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndex {
    pub name: String,
    pub url: String,
    pub branch: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub poll_interval: Option<Duration>,
    /// This index's repos' replicas, instead of `replicas` (SPEC §13).
    pub replicas: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLiveness {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub keepalive_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub suspect_after: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub dead_after: Option<Duration>,
}

/// `events:` (SPEC §12 "Event retention").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub retain: Option<Duration>,
    pub max_bytes: Option<FreeSpace>,
    pub segment_bytes: Option<FreeSpace>,
    pub max_refs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    pub secret_file: Option<PathBuf>,
}

/// One `push_hooks` entry as written (SPEC §15).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPushHook {
    pub name: String,
    pub kind: String,
    pub secret_file: PathBuf,
}

/// One `host_limits` entry as written (SPEC §18).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostLimit {
    pub host: String,
    pub connections: Option<u32>,
    pub per_minute: Option<u32>,
}

/// Default of `hooks_min_gap` (SPEC §15).
pub const DEFAULT_HOOKS_MIN_GAP: Duration = Duration::from_secs(5);

/// Liveness timing (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub keepalive_interval: Duration,
    pub suspect_after: Duration,
    pub dead_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(5),
            suspect_after: Duration::from_secs(20),
            dead_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: String,
    pub secret_file: Option<PathBuf>,
    /// Contents of `secret_file` (trimmed), read when the config is loaded.
    pub secret: Option<WebhookSecret>,
}

/// A webhook's HMAC key; `Debug` does not print it.
#[derive(Clone, PartialEq)]
pub struct WebhookSecret(pub String);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The API token (`api_token_file`); `Debug` does not print it.
#[derive(Clone, PartialEq)]
pub struct ApiToken(pub String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub indexes: Vec<IndexSource>,
    pub max_workers: u32,
    pub liveness: Liveness,
    pub allow_file_urls: bool,
    pub purge_protect_percent: f64,
    pub api_token_file: Option<PathBuf>,
    /// Contents of `api_token_file`, read when the config is loaded.
    pub api_token: Option<ApiToken>,
    /// `api_read_token_file` (SPEC §9): when set, reads need it (or the API token).
    pub api_read_token_file: Option<PathBuf>,
    /// Contents of `api_read_token_file`, read when the config is loaded.
    pub api_read_token: Option<ApiToken>,
    /// `api_allowed_hosts`: `Host` values besides the listener's that a change without
    /// a token file may name (SPEC §9).
    pub api_allowed_hosts: Vec<crate::http_auth::Authority>,
    pub webhooks: Vec<Webhook>,
    /// `events.*`: retention, segment size and refs listed per event.
    pub events: EventOptions,
    /// The embedded worker (`local_worker:`), started by [`crate::run`].
    pub local_worker: Option<LocalWorker>,
    /// `credentials` with their secrets (SPEC §16).
    pub credentials: std::sync::Arc<gitmirror_common::credentials::Credentials>,
    pub log_level: String,
    /// URLs listed at most by `/api/status`'s `worker:url` (SPEC §12).
    pub status_url_limit: usize,
    /// A worker announcing more is clamped to it (SPEC §17).
    pub max_worker_weight: f64,
    /// `enroll`: whether the join token enrolls a new worker by itself (SPEC §17).
    pub enroll: crate::enrollment::Mode,
    /// `push_hooks` (SPEC §15), secrets read.
    pub push_hooks: Vec<crate::hooks::PushHook>,
    /// `hooks_listen`: a second address serving only `POST /api/hooks/{name}`.
    pub hooks_listen: Option<SocketAddr>,
    /// `hooks_min_gap`: push-triggered fetches of one repo start at most this often.
    pub hooks_min_gap: Duration,
    /// `hooks_trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub hooks_trusted_proxies: Vec<ipnet::IpNet>,
    /// `host_limits` (SPEC §18): fleet-wide budgets per upstream host.
    pub host_limits: Vec<crate::host_budget::HostLimit>,
    /// `placement` (SPEC §14), fleet-wide; `None`: not set (the persisted one stays).
    pub placement: Option<crate::ring::Placement>,
    /// `hashing`, fleet-wide; `None`: not set (the persisted one stays).
    pub hashing: Option<crate::ring::Hashing>,
    /// `replicas` and `indexes[].replicas` (SPEC §13); a change needs a restart.
    pub replicas: crate::replicas::Settings,
    /// One line per seed alias used (naming the new key), for the caller to log once
    /// logging is set up.
    pub warnings: Vec<String>,
}

/// `local_worker:` (SPEC §2.1): a worker embedded in the coordinator's process for
/// single-machine deployments. It takes the worker's keys that make sense inside the
/// coordinator; it connects to this coordinator over loopback with its join token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalWorker {
    pub mirror_dir: PathBuf,
    /// Default: `<state_dir>/local-worker`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Default: the host name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub fetch: gitmirror_worker::FetchSection,
    #[serde(default)]
    pub disk: gitmirror_worker::DiskSection,
    #[serde(default)]
    pub serve_url_base: Option<String>,
    /// The worker's `upstream_deny` (issue 10); `None`: the worker's default.
    #[serde(default)]
    pub upstream_deny: Option<Vec<String>>,
}

impl LocalWorker {
    /// `upstream_deny` as a policy; the error is the detail for `local_worker.upstream_deny`.
    pub fn upstream_deny(&self) -> Result<gitmirror_common::upstream_url::AddrPolicy, String> {
        use gitmirror_common::upstream_url::{AddrPolicy, DEFAULT_UPSTREAM_DENY};
        match &self.upstream_deny {
            None => AddrPolicy::parse(DEFAULT_UPSTREAM_DENY.iter().copied()),
            Some(list) => AddrPolicy::parse(list.iter().map(String::as_str)),
        }
    }
}

impl Config {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse_err = |e: serde_yaml::Error| ConfigError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        // An empty file (or one with only comments) means "all defaults".
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(parse_err)?;
        let raw: RawConfig = if value.is_null() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(parse_err)?
        };
        Self::from_raw(path, raw)
    }

    pub fn from_raw(path: &Path, raw: RawConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut warnings = Vec::new();
        let alias = |old: &str, new: &str| {
            format!(
                "{}: `{old}` is the prototype's name for `{new}`; please rename it",
                path.display()
            )
        };
        let both = |old: &str, new: &str| {
            invalid(old, format!("is an alias of `{new}`; set only one of them"))
        };

        let listen = match (raw.listen, raw.coor_ip_addr) {
            (Some(_), Some(_)) => return Err(both("coor_ip_addr", "listen")),
            (Some(l), None) => {
                parse_addr(&l, DEFAULT_LISTEN_PORT).map_err(|m| invalid("listen", m))?
            }
            (None, Some(l)) => {
                warnings.push(alias("coor_ip_addr", "listen"));
                parse_addr(&l, DEFAULT_LISTEN_PORT).map_err(|m| invalid("coor_ip_addr", m))?
            }
            (None, None) => SocketAddr::from(([0, 0, 0, 0], DEFAULT_LISTEN_PORT)),
        };
        let http_listen = match raw.http_listen {
            Some(l) => parse_addr(&l, 8089).map_err(|m| invalid("http_listen", m))?,
            None => SocketAddr::from(([127, 0, 0, 1], 8089)),
        };
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/gitmirrord"));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty".into()));
        }

        let replica_count = |key: String, v: u32| -> Result<u8, ConfigError> {
            if (1..=u32::from(crate::replicas::MAX_REPLICAS)).contains(&v) {
                Ok(v as u8)
            } else {
                Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key,
                    message: format!("{v} is not between 1 and {}", crate::replicas::MAX_REPLICAS),
                })
            }
        };
        let mut replicas = crate::replicas::Settings {
            default: replica_count("replicas".into(), raw.replicas.unwrap_or(1))?,
            ..Default::default()
        };
        for (i, r) in raw.indexes.iter().flatten().enumerate() {
            if let Some(v) = r.replicas {
                let v = replica_count(format!("indexes[{i}].replicas"), v)?;
                replicas.per_index.insert(r.name.clone(), v);
            }
        }
        let indexes = Self::indexes(
            path,
            raw.indexes,
            raw.upstream_repos_name,
            raw.upstream_repos_url,
            raw.fetch_interval,
            &mut warnings,
        )?;

        let max_workers = match (raw.max_workers, raw.bitmap_max_num) {
            (Some(_), Some(_)) => return Err(both("bitmap_max_num", "max_workers")),
            (Some(n), None) => check_max_workers(n).map_err(|m| invalid("max_workers", m))?,
            (None, Some(n)) => {
                warnings.push(alias("bitmap_max_num", "max_workers"));
                check_max_workers(n).map_err(|m| invalid("bitmap_max_num", m))?
            }
            (None, None) => 100,
        };

        let raw_l = raw.liveness.unwrap_or_default();
        let d = Liveness::default();
        let liveness = Liveness {
            keepalive_interval: raw_l.keepalive_interval.unwrap_or(d.keepalive_interval),
            suspect_after: raw_l.suspect_after.unwrap_or(d.suspect_after),
            dead_after: raw_l.dead_after.unwrap_or(d.dead_after),
        };
        if liveness.keepalive_interval < Duration::from_millis(100) {
            return Err(invalid(
                "liveness.keepalive_interval",
                "must be at least 100ms".into(),
            ));
        }
        if liveness.suspect_after <= liveness.keepalive_interval {
            return Err(invalid(
                "liveness.suspect_after",
                format!(
                    "must be longer than liveness.keepalive_interval ({}), or every quiet moment looks like a lost worker",
                    humantime::format_duration(liveness.keepalive_interval)
                ),
            ));
        }
        // QUIC's idle timeout is a varint of milliseconds; keep far below that.
        if liveness.suspect_after > Duration::from_secs(86_400) {
            return Err(invalid(
                "liveness.suspect_after",
                "must be at most 1d".into(),
            ));
        }
        if liveness.dead_after.is_zero() {
            return Err(invalid(
                "liveness.dead_after",
                "must be longer than 0s".into(),
            ));
        }

        let max_worker_weight = raw.max_worker_weight.unwrap_or(DEFAULT_MAX_WORKER_WEIGHT);
        if !(max_worker_weight.is_finite() && max_worker_weight > 0.0) {
            return Err(invalid(
                "max_worker_weight",
                format!("{max_worker_weight} is not a positive number"),
            ));
        }
        let enroll = match raw.enroll.as_deref() {
            None => crate::enrollment::Mode::Auto,
            Some(v) => crate::enrollment::Mode::parse(v)
                .ok_or_else(|| invalid("enroll", format!("{v:?} is not one of auto, manual")))?,
        };
        let placement = match raw.placement.as_deref() {
            None => None,
            Some(v) => Some(crate::ring::Placement::parse(v).ok_or_else(|| {
                invalid("placement", format!("{v:?} is not one of project, repo"))
            })?),
        };
        let hashing = match raw.hashing.as_deref() {
            None => None,
            Some(v) => Some(crate::ring::Hashing::parse(v).ok_or_else(|| {
                invalid("hashing", format!("{v:?} is not one of points, rendezvous"))
            })?),
        };
        let purge_protect_percent = raw.purge_protect_percent.unwrap_or(5.0);
        if !(0.0..=100.0).contains(&purge_protect_percent) {
            return Err(invalid(
                "purge_protect_percent",
                format!("{purge_protect_percent} is not between 0 and 100"),
            ));
        }

        let api_token = match &raw.api_token_file {
            None => None,
            Some(p) => Some(ApiToken(
                read_secret(p).map_err(|m| invalid("api_token_file", m))?,
            )),
        };

        // SPEC §9 (issue 10): the read token, and the Host names tokenless changes may use.
        let api_read_token = match &raw.api_read_token_file {
            None => None,
            Some(p) => Some(ApiToken(
                read_secret(p).map_err(|m| invalid("api_read_token_file", m))?,
            )),
        };
        let mut api_allowed_hosts = Vec::new();
        for (i, h) in raw.api_allowed_hosts.unwrap_or_default().iter().enumerate() {
            api_allowed_hosts.push(
                crate::http_auth::Authority::parse(h.trim())
                    .map_err(|m| invalid(&format!("api_allowed_hosts[{i}]"), m))?,
            );
        }

        let mut webhooks: Vec<Webhook> = Vec::new();
        for (i, w) in raw.webhooks.unwrap_or_default().into_iter().enumerate() {
            let url_ok = ["http://", "https://"]
                .iter()
                .any(|s| w.url.starts_with(s) && w.url.len() > s.len())
                && !w.url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !url_ok {
                return Err(invalid(
                    &format!("webhooks[{i}].url"),
                    format!("{:?} is not an http:// or https:// URL", w.url),
                ));
            }
            if webhooks.iter().any(|h| h.url == w.url) {
                return Err(invalid(
                    &format!("webhooks[{i}].url"),
                    format!("{:?} is listed twice", w.url),
                ));
            }
            let secret = match &w.secret_file {
                None => None,
                Some(p) => {
                    Some(WebhookSecret(read_secret(p).map_err(|m| {
                        invalid(&format!("webhooks[{i}].secret_file"), m)
                    })?))
                }
            };
            webhooks.push(Webhook {
                url: w.url,
                secret_file: w.secret_file,
                secret,
            });
        }

        let events = Self::events(path, raw.events.unwrap_or_default())?;

        // SPEC §15: push hooks.
        let mut push_hooks: Vec<crate::hooks::PushHook> = Vec::new();
        for (i, h) in raw.push_hooks.unwrap_or_default().into_iter().enumerate() {
            let key = |k: &str| format!("push_hooks[{i}].{k}");
            crate::hooks::check_name(&h.name).map_err(|m| invalid(&key("name"), m))?;
            if push_hooks.iter().any(|p| p.name == h.name) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is listed twice", h.name),
                ));
            }
            let kind = crate::hooks::HookKind::parse(&h.kind).ok_or_else(|| {
                invalid(
                    &key("kind"),
                    format!(
                        "{:?} is not one of github, gitlab, gitea, forgejo, gitee, generic",
                        h.kind
                    ),
                )
            })?;
            let secret =
                read_secret(&h.secret_file).map_err(|m| invalid(&key("secret_file"), m))?;
            push_hooks.push(crate::hooks::PushHook {
                name: h.name,
                kind,
                secret_file: h.secret_file,
                secret: WebhookSecret(secret),
            });
        }
        let hooks_listen = match raw.hooks_listen {
            None => None,
            Some(l) => Some(parse_addr(&l, 8090).map_err(|m| invalid("hooks_listen", m))?),
        };
        if hooks_listen.is_some_and(|h| h == http_listen) {
            return Err(invalid(
                "hooks_listen",
                "must differ from http_listen (the hooks are served there too)".into(),
            ));
        }
        let hooks_min_gap = raw.hooks_min_gap.unwrap_or(DEFAULT_HOOKS_MIN_GAP);
        if hooks_min_gap > Duration::from_secs(86_400) {
            return Err(invalid("hooks_min_gap", "must be at most 1d".into()));
        }
        let mut hooks_trusted_proxies = Vec::new();
        for (i, c) in raw
            .hooks_trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let c = c.trim();
            let net = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        &format!("hooks_trusted_proxies[{i}]"),
                        format!("{c:?} is not an address or CIDR such as 10.0.0.0/8"),
                    )
                })?;
            hooks_trusted_proxies.push(net);
        }

        let host_limits = Self::host_limits(path, raw.host_limits.unwrap_or_default())?;

        if let Some(lw) = &raw.local_worker {
            lw.fetch
                .validate()
                .map_err(|e| invalid(&format!("local_worker.{}", e.key), e.detail))?;
            if let Some(w) = lw.weight
                && (!w.is_finite() || w <= 0.0)
            {
                return Err(invalid(
                    "local_worker.weight",
                    format!("must be a number above 0, got {w}"),
                ));
            }
            if lw.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                return Err(invalid("local_worker.name", "must not be empty".into()));
            }
            lw.upstream_deny()
                .map_err(|d| invalid("local_worker.upstream_deny", d))?;
        }

        let credentials = gitmirror_common::credentials::Credentials::load(
            raw.credentials.as_deref().unwrap_or_default(),
            "credentials",
        )
        .map_err(|e| invalid(&e.key, e.detail))?;

        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "log_level",
                format!("{log_level:?} is not a log level (error, warn, info, debug, trace)"),
            ));
        }

        Ok(Config {
            path: path.to_owned(),
            listen,
            http_listen,
            state_dir,
            indexes,
            max_workers,
            liveness,
            allow_file_urls: raw.allow_file_urls.unwrap_or(false),
            purge_protect_percent,
            api_token_file: raw.api_token_file,
            api_token,
            api_read_token_file: raw.api_read_token_file,
            api_read_token,
            api_allowed_hosts,
            webhooks,
            events,
            local_worker: raw.local_worker,
            credentials: std::sync::Arc::new(credentials),
            log_level,
            status_url_limit: raw.status_url_limit.unwrap_or(DEFAULT_STATUS_URL_LIMIT),
            max_worker_weight,
            enroll,
            push_hooks,
            hooks_listen,
            hooks_min_gap,
            hooks_trusted_proxies,
            host_limits,
            placement,
            hashing,
            replicas,
            warnings,
        })
    }

    /// `host_limits` (SPEC §18): a host name or a `.suffix`, each listed once, with at
    /// least one of `connections` and `per_minute`, both above 0.
    fn host_limits(
        path: &Path,
        raw: Vec<RawHostLimit>,
    ) -> Result<Vec<crate::host_budget::HostLimit>, ConfigError> {
        let mut out: Vec<crate::host_budget::HostLimit> = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let invalid = |k: &str, message: String| ConfigError::Invalid {
                path: path.to_owned(),
                key: format!("host_limits[{i}].{k}"),
                message,
            };
            let host = l.host.trim().to_ascii_lowercase();
            let name = host.strip_prefix('.').unwrap_or(&host);
            let valid = !name.is_empty()
                && name.len() <= 253
                && !name.starts_with('.')
                && !name.ends_with('.')
                && !name.contains("..")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
            if !valid {
                return Err(invalid(
                    "host",
                    format!(
                        "{:?} is not a host name (e.g. github.com) or a suffix starting with '.' (e.g. .github.com)",
                        l.host
                    ),
                ));
            }
            if out.iter().any(|o| o.host == host) {
                return Err(invalid("host", format!("{host:?} is listed twice")));
            }
            if l.connections.is_none() && l.per_minute.is_none() {
                return Err(invalid(
                    "connections",
                    "give connections, per_minute or both".into(),
                ));
            }
            if l.connections == Some(0) {
                return Err(invalid(
                    "connections",
                    "must be at least 1 (remove the host to leave it unlimited)".into(),
                ));
            }
            if l.per_minute == Some(0) {
                return Err(invalid(
                    "per_minute",
                    "must be at least 1 (remove the host to leave it unlimited)".into(),
                ));
            }
            out.push(crate::host_budget::HostLimit {
                host,
                connections: l.connections,
                per_minute: l.per_minute,
            });
        }
        Ok(out)
    }

    fn events(path: &Path, raw: RawEvents) -> Result<EventOptions, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("events.{key}"),
            message,
        };
        let bytes = |key: &str, v: Option<FreeSpace>, default: u64| match v {
            None => Ok(default),
            Some(FreeSpace::Bytes(0)) => Err(invalid(key, "must be more than 0 bytes".into())),
            Some(FreeSpace::Bytes(b)) => Ok(b),
            Some(FreeSpace::Percent(_)) => Err(invalid(
                key,
                "must be a size such as 64M or 1G, not a percentage".into(),
            )),
        };
        let d = EventOptions::default();
        let max_bytes = bytes("max_bytes", raw.max_bytes, d.max_bytes)?;
        let segment_bytes = bytes(
            "segment_bytes",
            raw.segment_bytes,
            d.segment_bytes.min(max_bytes),
        )?;
        if segment_bytes > max_bytes {
            return Err(invalid(
                "segment_bytes",
                format!("must not be more than events.max_bytes ({max_bytes} bytes)"),
            ));
        }
        let retain = raw.retain.unwrap_or(d.retain);
        if retain.is_zero() {
            return Err(invalid("retain", "must be longer than 0s".into()));
        }
        let max_refs = match raw.max_refs {
            None => d.max_refs,
            Some(n) => {
                usize::try_from(n).map_err(|_| invalid("max_refs", "is too large".into()))?
            }
        };
        Ok(EventOptions {
            retain,
            max_bytes,
            segment_bytes,
            max_refs,
        })
    }

    fn indexes(
        path: &Path,
        indexes: Option<Vec<RawIndex>>,
        seed_name: Option<String>,
        seed_url: Option<String>,
        fetch_interval: Option<Duration>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<IndexSource>, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let seeded = seed_name.is_some() || seed_url.is_some();
        let raw = match (indexes, seeded) {
            (Some(_), true) => {
                let old = if seed_name.is_some() {
                    "upstream_repos_name"
                } else {
                    "upstream_repos_url"
                };
                return Err(invalid(
                    old.into(),
                    "is an alias of an `indexes` entry; set either `indexes` or the upstream_repos_* keys"
                        .into(),
                ));
            }
            (Some(list), false) => list,
            (None, true) => {
                warnings.push(format!(
                    "{}: `upstream_repos_name`/`upstream_repos_url` are the prototype's names for one `indexes` entry; please rename them",
                    path.display()
                ));
                vec![RawIndex {
                    name: seed_name.unwrap_or_else(|| DEFAULT_INDEX_NAME.into()),
                    url: seed_url.unwrap_or_else(|| DEFAULT_INDEX_URL.into()),
                    branch: None,
                    poll_interval: None,
                    replicas: None,
                }]
            }
            (None, false) => vec![RawIndex {
                name: DEFAULT_INDEX_NAME.into(),
                url: DEFAULT_INDEX_URL.into(),
                branch: None,
                poll_interval: None,
                replicas: None,
            }],
        };
        if raw.is_empty() {
            return Err(invalid(
                "indexes".into(),
                "lists no index; at least one is needed".into(),
            ));
        }
        if fetch_interval.is_some() {
            warnings.push(format!(
                "{}: `fetch_interval` is the prototype's name for `indexes[].poll_interval`; please rename it",
                path.display()
            ));
        }
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("indexes[{i}].{k}");
            if let Err(m) = check_index_name(&r.name) {
                return Err(invalid(key("name"), m));
            }
            if !names.insert(r.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is used by two indexes", r.name),
                ));
            }
            if r.url.trim().is_empty() {
                return Err(invalid(key("url"), "must not be empty".into()));
            }
            if r.branch
                .as_deref()
                .is_some_and(|b| b.trim().is_empty() || b.starts_with('-'))
            {
                return Err(invalid(key("branch"), "is not a branch name".into()));
            }
            let poll_interval = match (r.poll_interval, fetch_interval) {
                (Some(p), _) => p,
                (None, Some(p)) => p,
                (None, None) => DEFAULT_POLL_INTERVAL,
            };
            if poll_interval.is_zero() {
                return Err(invalid(
                    key("poll_interval"),
                    "must be longer than 0s".into(),
                ));
            }
            out.push(IndexSource {
                name: r.name,
                url: r.url,
                branch: r.branch,
                poll_interval,
            });
        }
        Ok(out)
    }
}

/// Read a secret file (trimmed): it must not be readable by group or others (SPEC §4.1)
/// and must not be empty.
fn read_secret(p: &Path) -> Result<String, String> {
    gitmirror_common::trust::check_private(p).map_err(|e| format!("{e:#}"))?;
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", p.display()));
    }
    Ok(t.to_owned())
}

fn check_max_workers(n: u32) -> Result<u32, String> {
    if n == 0 {
        return Err("must be at least 1".into());
    }
    if n > MAX_MAX_WORKERS {
        return Err(format!("{n} is more than the supported {MAX_MAX_WORKERS}"));
    }
    Ok(n)
}

/// Index names become directory names under `<state_dir>/index`.
fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!("{name:?} must not start with '.' or '-'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("{name:?} may hold only A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// `host:port`, `ip:port`, or a bare IP (then `default_port`).
fn parse_addr(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    match t.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!(
            "{text:?} is not an address such as 0.0.0.0:{default_port} ({e})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/x.yaml"), text)
    }

    // SPEC §17 `enroll`: auto by default, manual on request; anything else names the key.
    #[test]
    fn spec_17_enroll_key() {
        use crate::enrollment::Mode;
        assert_eq!(parse("").unwrap().enroll, Mode::Auto);
        assert_eq!(parse("enroll: manual\n").unwrap().enroll, Mode::Manual);
        let e = parse("enroll: sometimes\n").unwrap_err().to_string();
        assert!(e.contains("enroll") && e.contains("auto, manual"), "{e}");
    }

    // SPEC §13 `replicas` and `indexes[].replicas`: 1..=5, default 1; out of range names
    // the key.
    #[test]
    fn spec_13_replicas_keys() {
        let c = parse("").unwrap();
        assert_eq!(c.replicas, crate::replicas::Settings::default());
        assert!(!c.replicas.any_replicated());
        let c = parse(
            "replicas: 2\nindexes:\n  - name: a\n    url: /x\n  - name: b\n    url: /y\n    replicas: 3\n",
        )
        .unwrap();
        assert_eq!(c.replicas.for_index("a"), 2);
        assert_eq!(c.replicas.for_index("b"), 3);
        assert!(c.replicas.any_replicated());
        for (text, key) in [
            ("replicas: 0\n", "replicas"),
            ("replicas: 6\n", "replicas"),
            (
                "indexes:\n  - name: a\n    url: /x\n    replicas: 9\n",
                "indexes[0].replicas",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("between 1 and 5"), "{e}");
        }
    }

    // SPEC §14 `placement`: unset by default (the persisted one, or `project` when
    // fresh); anything but project or repo names the key.
    #[test]
    fn spec_14_placement_key() {
        use crate::ring::Placement;
        assert_eq!(parse("").unwrap().placement, None);
        assert_eq!(
            parse("placement: project\n").unwrap().placement,
            Some(Placement::Project)
        );
        assert_eq!(
            parse("placement: repo\n").unwrap().placement,
            Some(Placement::Repo)
        );
        let e = parse("placement: folder\n").unwrap_err().to_string();
        assert!(
            e.contains("placement") && e.contains("project, repo"),
            "{e}"
        );
    }

    // `hashing` (design.md "Owner function: points on a circle"): unset by default (the
    // persisted one, or `points` when fresh); anything else names the key.
    #[test]
    fn hashing_key() {
        use crate::ring::Hashing;
        assert_eq!(parse("").unwrap().hashing, None);
        assert_eq!(
            parse("hashing: points\n").unwrap().hashing,
            Some(Hashing::Points)
        );
        assert_eq!(
            parse("hashing: rendezvous\n").unwrap().hashing,
            Some(Hashing::Rendezvous)
        );
        let e = parse("hashing: ring\n").unwrap_err().to_string();
        assert!(
            e.contains("hashing") && e.contains("points, rendezvous"),
            "{e}"
        );
    }

    // SPEC §2.1: defaults.
    #[test]
    fn empty_file_gives_defaults() {
        for text in ["", "# only a comment\n", "{}"] {
            let c = parse(text).unwrap();
            assert_eq!(c.listen, "0.0.0.0:5555".parse().unwrap());
            assert_eq!(c.http_listen, "127.0.0.1:8089".parse().unwrap());
            assert_eq!(c.state_dir, PathBuf::from("/var/lib/gitmirrord"));
            assert_eq!(c.indexes.len(), 1);
            assert_eq!(c.indexes[0].name, "upstream-repos");
            assert_eq!(c.indexes[0].url, DEFAULT_INDEX_URL);
            assert_eq!(c.indexes[0].branch, None);
            assert_eq!(c.indexes[0].poll_interval, Duration::from_secs(60));
            assert_eq!(c.max_workers, 100);
            assert_eq!(c.liveness, Liveness::default());
            assert_eq!(c.liveness.keepalive_interval, Duration::from_secs(5));
            assert_eq!(c.liveness.suspect_after, Duration::from_secs(20));
            assert_eq!(c.liveness.dead_after, Duration::from_secs(60));
            assert!(!c.allow_file_urls);
            assert_eq!(c.purge_protect_percent, 5.0);
            assert_eq!(c.api_token_file, None);
            assert!(c.webhooks.is_empty());
            assert!(c.local_worker.is_none());
            assert_eq!(c.log_level, "info");
        }
    }

    // SPEC §2.1: every key.
    #[test]
    fn every_key_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "s3cret\n").unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
        let hook_secret = dir.path().join("hook-secret");
        std::fs::write(&hook_secret, "hmac-key\n").unwrap();
        std::fs::set_permissions(&hook_secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            r#"
listen: 127.0.0.1:7000
http_listen: 127.0.0.1:7001
state_dir: /tmp/gm
indexes:
  - name: one
    url: https://example.org/one.git
    branch: main
    poll_interval: 5m
  - name: two
    url: /srv/index
max_workers: 7
liveness:
  keepalive_interval: 1s
  suspect_after: 3s
  dead_after: 4s
allow_file_urls: true
purge_protect_percent: 12.5
api_token_file: {}
webhooks:
  - url: https://hooks.example.org/x
    secret_file: {}
local_worker:
  mirror_dir: /srv/mirrors
  fetch:
    concurrency: 2
log_level: debug
"#,
            tok.display(),
            hook_secret.display()
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.http_listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(c.state_dir, PathBuf::from("/tmp/gm"));
        assert_eq!(
            c.indexes,
            vec![
                IndexSource {
                    name: "one".into(),
                    url: "https://example.org/one.git".into(),
                    branch: Some("main".into()),
                    poll_interval: Duration::from_secs(300),
                },
                IndexSource {
                    name: "two".into(),
                    url: "/srv/index".into(),
                    branch: None,
                    poll_interval: Duration::from_secs(60),
                },
            ]
        );
        assert_eq!(c.max_workers, 7);
        assert_eq!(
            c.liveness,
            Liveness {
                keepalive_interval: Duration::from_secs(1),
                suspect_after: Duration::from_secs(3),
                dead_after: Duration::from_secs(4),
            }
        );
        assert!(c.allow_file_urls);
        assert_eq!(c.purge_protect_percent, 12.5);
        assert_eq!(c.api_token, Some(ApiToken("s3cret".into())));
        assert_eq!(
            c.webhooks,
            vec![Webhook {
                url: "https://hooks.example.org/x".into(),
                secret_file: Some(hook_secret.clone()),
                secret: Some(WebhookSecret("hmac-key".into())),
            }]
        );
        let lw = c.local_worker.unwrap();
        assert_eq!(lw.mirror_dir, PathBuf::from("/srv/mirrors"));
        assert_eq!(lw.fetch.concurrency, 2);
        assert_eq!(c.log_level, "debug");
        assert!(!format!("{:?}", c.api_token).contains("s3cret"));
        assert!(!format!("{:?}", c.webhooks).contains("hmac-key"));
    }

    // SPEC §4.1, §8: secret files readable by group or others are refused, naming the file.
    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "k\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        for (text, key) in [
            (
                format!(
                    "webhooks: [{{url: http://127.0.0.1:9/h, secret_file: {}}}]\n",
                    p.display()
                ),
                "webhooks[0].secret_file",
            ),
            (
                format!("api_token_file: {}\n", p.display()),
                "api_token_file",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(&p.display().to_string()) && e.contains("chmod 600"),
                "{e}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "webhooks: [{{url: http://127.0.0.1:9/h, secret_file: {}}}, {{url: http://127.0.0.1:9/h}}]\n",
            p.display()
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("webhooks[1].url") && e.contains("twice"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        let e = parse(&format!("api_token_file: {}\n", p.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }

    // SPEC §9 (issue 10): `api_read_token_file` follows the rules of `api_token_file`
    // (private, not empty; not printed by Debug); `api_allowed_hosts` takes host[:port]
    // and names the bad entry.
    #[test]
    fn spec_9_read_token_file_and_allowed_hosts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("read-token");
        std::fs::write(&p, "r34d\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!(
            "api_read_token_file: {}\napi_allowed_hosts: [Mirror.Example:8089, '[::1]', proxy]\n",
            p.display()
        ))
        .unwrap();
        assert_eq!(c.api_read_token, Some(ApiToken("r34d".into())));
        assert_eq!(c.api_read_token_file.as_deref(), Some(p.as_path()));
        assert!(!format!("{c:?}").contains("r34d"));
        let shown: Vec<String> = c.api_allowed_hosts.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["mirror.example:8089", "[::1]", "proxy"]);
        let d = parse("").unwrap();
        assert_eq!((d.api_read_token, d.api_allowed_hosts.len()), (None, 0));

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&format!("api_read_token_file: {}\n", p.display()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api_read_token_file") && e.contains("chmod 600"),
            "{e}"
        );
        let e = parse("api_allowed_hosts: [ok.example, 'http://x/']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_allowed_hosts[1]"), "{e}");
    }

    // SPEC §15: push_hooks, hooks_listen, hooks_min_gap and hooks_trusted_proxies are
    // read; bad values name their key; hook secret files must be private like the others.
    #[test]
    fn spec_15_hook_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gh.secret");
        std::fs::write(&p, "hook-key\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = p.display();
        let c = parse(&format!(
            "push_hooks:\n  - {{name: gh, kind: github, secret_file: {f}}}\n  - {{name: fj, kind: forgejo, secret_file: {f}}}\nhooks_listen: 127.0.0.1:8090\nhooks_min_gap: 2s\nhooks_trusted_proxies: [10.0.0.0/8, '::1']\n"
        ))
        .unwrap();
        assert_eq!(c.push_hooks.len(), 2);
        assert_eq!(c.push_hooks[0].kind, crate::hooks::HookKind::Github);
        assert_eq!(c.push_hooks[1].kind, crate::hooks::HookKind::Gitea);
        assert_eq!(c.push_hooks[0].secret.0, "hook-key");
        assert!(!format!("{c:?}").contains("hook-key"));
        assert_eq!(c.hooks_listen, Some("127.0.0.1:8090".parse().unwrap()));
        assert_eq!(c.hooks_min_gap, Duration::from_secs(2));
        assert_eq!(c.hooks_trusted_proxies.len(), 2);
        let d = parse("").unwrap();
        assert!(d.push_hooks.is_empty() && d.hooks_listen.is_none());
        assert_eq!(d.hooks_min_gap, DEFAULT_HOOKS_MIN_GAP);
        for (text, key) in [
            (
                format!("push_hooks: [{{name: gh, kind: bitbucket, secret_file: {f}}}]"),
                "push_hooks[0].kind",
            ),
            (
                format!("push_hooks: [{{name: 'a/b', kind: github, secret_file: {f}}}]"),
                "push_hooks[0].name",
            ),
            (
                format!(
                    "push_hooks: [{{name: a, kind: github, secret_file: {f}}}, {{name: a, kind: gitlab, secret_file: {f}}}]"
                ),
                "push_hooks[1].name",
            ),
            (
                "push_hooks: [{name: a, kind: github, secret_file: /nonexistent/s}]".into(),
                "push_hooks[0].secret_file",
            ),
            (
                "push_hooks: [{name: a, kind: github}]".into(),
                "secret_file",
            ),
            ("hooks_listen: 'not an address'".into(), "hooks_listen"),
            ("hooks_listen: 127.0.0.1:8089".into(), "hooks_listen"),
            ("hooks_min_gap: soon".into(), "hooks_min_gap"),
            (
                "hooks_trusted_proxies: [10.0.0.0/33]".into(),
                "hooks_trusted_proxies[0]",
            ),
        ] {
            let e = parse(&format!("{text}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&format!(
            "push_hooks: [{{name: a, kind: gitee, secret_file: {f}}}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("push_hooks[0].secret_file"), "{e}");
    }

    // SPEC §2.1 / §2.2: a file with only the prototype's keys works.
    #[test]
    fn seed_aliases_map_to_new_keys() {
        let c = parse(
            "coor_ip_addr: 10.0.0.5\nupstream_repos_name: repos\nupstream_repos_url: https://example.org/u.git\nbitmap_max_num: 12\nfetch_interval: 30\n",
        )
        .unwrap();
        assert_eq!(c.listen, "10.0.0.5:5555".parse().unwrap());
        assert_eq!(c.max_workers, 12);
        assert_eq!(c.indexes.len(), 1);
        assert_eq!(c.indexes[0].name, "repos");
        assert_eq!(c.indexes[0].url, "https://example.org/u.git");
        assert_eq!(c.indexes[0].poll_interval, Duration::from_secs(30));
        assert_eq!(c.warnings.len(), 4, "{:?}", c.warnings);
        for new in ["`listen`", "`max_workers`", "`indexes`", "poll_interval"] {
            assert!(
                c.warnings.iter().any(|w| w.contains(new)),
                "{new}: {:?}",
                c.warnings
            );
        }
        let c = parse("coor_ip_addr: 10.0.0.5:6000\n").unwrap();
        assert_eq!(c.listen, "10.0.0.5:6000".parse().unwrap());
    }

    #[test]
    fn alias_and_new_key_together_are_refused() {
        let e = parse("listen: 0.0.0.0:1\ncoor_ip_addr: 10.0.0.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("coor_ip_addr") && e.contains("listen"), "{e}");
        let e = parse("max_workers: 3\nbitmap_max_num: 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bitmap_max_num"), "{e}");
    }

    // SPEC §2: unknown keys are an error naming the key (also nested).
    #[test]
    fn unknown_keys_are_named() {
        let e = parse("listen: 0.0.0.0:1\nlisten_port: 4\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/x.yaml: ") && e.contains("listen_port"),
            "{e}"
        );
        let e = parse("liveness:\n  dead_aftr: 4s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dead_aftr"), "{e}");
        let e = parse("indexes:\n  - name: a\n    url: /x\n    polling: 1s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("polling"), "{e}");
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let e = parse("liveness:\n  dead_after: 5 parsecs\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/x.yaml: liveness.dead_after: \"5 parsecs\""),
            "{e}"
        );
        let e = parse("indexes: [{name: a, url: /x, poll_interval: soon}]\n").unwrap_err();
        assert!(
            e.to_string().contains("indexes[0].poll_interval: \"soon\""),
            "{e}"
        );
        let cases = [
            ("max_workers: 0\n", "max_workers"),
            (
                "liveness:\n  keepalive_interval: 5s\n  suspect_after: 5s\n",
                "liveness.suspect_after",
            ),
            ("liveness:\n  dead_after: 0s\n", "liveness.dead_after"),
            (
                "indexes:\n  - {name: a, url: /x}\n  - {name: a, url: /y}\n",
                "indexes[1].name",
            ),
            ("indexes:\n  - {name: ../a, url: /x}\n", "indexes[0].name"),
            ("indexes:\n  - {name: a, url: ''}\n", "indexes[0].url"),
            ("indexes: []\n", "indexes"),
            ("purge_protect_percent: 150\n", "purge_protect_percent"),
            ("listen: nowhere\n", "listen"),
            ("webhooks:\n  - url: ftp://x\n", "webhooks[0].url"),
            ("events: {max_bytes: 5%}\n", "events.max_bytes"),
            ("events: {max_bytes: 0}\n", "events.max_bytes"),
            (
                "events: {max_bytes: 1G, segment_bytes: 2G}\n",
                "events.segment_bytes",
            ),
            ("events: {retain: 0s}\n", "events.retain"),
            ("events: {retain: soon}\n", "events.retain"),
            ("events: {max_refs: -1}\n", "events.max_refs"),
            ("events: {keep: 3}\n", "keep"),
            ("api_token_file: /nonexistent/token\n", "api_token_file"),
            ("log_level: \"loud[\"\n", "log_level"),
            ("local_worker: 3\n", "local_worker"),
            (
                "local_worker: {mirror_dir: /m, fetch: {timeout: 5 parsecs}}\n",
                "local_worker.fetch.timeout",
            ),
            (
                "local_worker: {mirror_dir: /m, fetch: {concurrency: 0}}\n",
                "local_worker.fetch.concurrency",
            ),
            ("local_worker: {mirror_dir: /m, colour: red}\n", "colour"),
            (
                "local_worker: {mirror_dir: /m, upstream_deny: [10.0.0.0/8, x]}\n",
                "local_worker.upstream_deny",
            ),
            (
                "local_worker: {mirror_dir: /m, fetch: {redirects: sideways}}\n",
                "redirects",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with("/etc/x.yaml: ") && e.contains(key),
                "{text:?} gave {e}"
            );
        }
    }

    // SPEC §12: the events.* keys, their defaults, sizes with units, and a segment size
    // that follows a small max_bytes.
    #[test]
    fn spec_12_event_keys() {
        let d = parse("").unwrap().events;
        assert_eq!(d, EventOptions::default());
        assert_eq!(
            (d.retain, d.max_bytes, d.max_refs),
            (Duration::from_secs(30 * 86_400), 1 << 30, 10_000)
        );
        let e = parse("events: {retain: 7d, max_bytes: 10M, max_refs: 5}\n")
            .unwrap()
            .events;
        assert_eq!(
            e,
            EventOptions {
                retain: Duration::from_secs(7 * 86_400),
                max_bytes: 10 << 20,
                segment_bytes: 10 << 20,
                max_refs: 5,
            }
        );
        let e = parse("events: {segment_bytes: 1K}\n").unwrap().events;
        assert_eq!(e.segment_bytes, 1024);
    }

    #[test]
    fn small_test_durations_are_allowed() {
        let c = parse("liveness: {keepalive_interval: 1s, suspect_after: 3s, dead_after: 4s}\nindexes: [{name: i, url: /x, poll_interval: 1s}]\n").unwrap();
        assert_eq!(c.liveness.dead_after, Duration::from_secs(4));
        assert_eq!(c.indexes[0].poll_interval, Duration::from_secs(1));
    }

    // SPEC §18: host_limits parses names and suffixes; bad entries name the key.
    #[test]
    fn spec_18_host_limits_key() {
        let c = parse(
            "host_limits: [{host: GitHub.com, connections: 200, per_minute: 5000}, {host: .gitlab.com, per_minute: 60}]\n",
        )
        .unwrap();
        assert_eq!(c.host_limits.len(), 2);
        assert_eq!(c.host_limits[0].host, "github.com");
        assert_eq!(c.host_limits[0].connections, Some(200));
        assert_eq!(c.host_limits[1].host, ".gitlab.com");
        assert_eq!(c.host_limits[1].connections, None);
        assert!(parse("").unwrap().host_limits.is_empty());
        for (text, key) in [
            (
                "host_limits: [{host: 'a b', connections: 1}]",
                "host_limits[0].host",
            ),
            (
                "host_limits: [{host: '.', connections: 1}]",
                "host_limits[0].host",
            ),
            (
                "host_limits: [{host: h, connections: 1}, {host: H, connections: 2}]",
                "host_limits[1].host",
            ),
            ("host_limits: [{host: h}]", "host_limits[0].connections"),
            (
                "host_limits: [{host: h, connections: 0}]",
                "host_limits[0].connections",
            ),
            (
                "host_limits: [{host: h, per_minute: 0}]",
                "host_limits[0].per_minute",
            ),
            ("host_limits: [{host: h, connections: -1}]", "host_limits"),
            (
                "host_limits: [{host: h, connections: 1, burst: 2}]",
                "burst",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
