//! Worker configuration (SPEC §2.2): a raw serde layer that refuses unknown keys, then a
//! validated [`WorkerConfig`] whose errors name the file and the key.

use crate::upstream_http::{Redirects, UpstreamPolicy};
use gitmirror_common::credentials::{CredentialSpec, Credentials};
use gitmirror_common::units::{FreeSpace, de_duration};
use gitmirror_common::upstream_url::{AddrPolicy, DEFAULT_UPSTREAM_DENY};
use gitmirror_wire::JoinToken;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/gitmirror/gitmirror-worker.yaml";
pub const DEFAULT_TOKEN_FILE: &str = "/etc/gitmirror/join-token";
pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:5555";
pub const DEFAULT_MIRROR_DIR: &str = "/var/lib/gitmirror-worker/repos";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gitmirror-worker";

/// `fetch:` keys. Public because the coordinator's `local_worker:` embeds them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchSection {
    /// Fetches and clones at once.
    pub concurrency: usize,
    /// Fetches and clones at once against one upstream host.
    pub per_host_concurrency: usize,
    /// A fetch or clone running longer is interrupted and counted as a transient failure.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub min_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_interval: Duration,
    /// Where an upstream's HTTP redirects may lead: `same_host` (default) or `any`
    /// (issue 10); either way never to an address in `upstream_deny`.
    pub redirects: Redirects,
    /// A clone or fetch that makes a mirror bigger than this (bytes on disk) is aborted
    /// and leaves nothing behind (issue 10); `None`: no limit.
    #[serde(deserialize_with = "de_opt_size")]
    pub max_repo_size: Option<u64>,
    /// SPEC §14: the mirrors of one project folder share a fork pool under
    /// `mirror_dir/.pools/`. On by default (issue 13); `false` keeps plain mirrors.
    pub pools: bool,
}

impl Default for FetchSection {
    fn default() -> Self {
        Self {
            concurrency: 8,
            per_host_concurrency: 4,
            timeout: Duration::from_secs(30 * 60),
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(24 * 3600),
            redirects: Redirects::SameHost,
            max_repo_size: None,
            pools: true,
        }
    }
}

impl FetchSection {
    /// Check the values; the error's key is relative, e.g. `fetch.concurrency`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.concurrency == 0 {
            return Err(KeyError::new("fetch.concurrency", "must be at least 1"));
        }
        if self.per_host_concurrency == 0 {
            return Err(KeyError::new(
                "fetch.per_host_concurrency",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("fetch.timeout", self.timeout),
            ("fetch.min_interval", self.min_interval),
            ("fetch.max_interval", self.max_interval),
        ] {
            if d.is_zero() {
                return Err(KeyError::new(key, "must be longer than zero"));
            }
        }
        if self.max_repo_size == Some(0) {
            return Err(KeyError::new(
                "fetch.max_repo_size",
                "must be more than zero (leave it out for no limit)",
            ));
        }
        if self.max_interval < self.min_interval {
            return Err(KeyError::new(
                "fetch.max_interval",
                format!(
                    "{} is shorter than fetch.min_interval ({})",
                    humantime::format_duration(self.max_interval),
                    humantime::format_duration(self.min_interval)
                ),
            ));
        }
        Ok(())
    }
}

/// `peer:` keys (SPEC §13, issue 12): the bounds of the peer plane's serving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    /// Connections from peers open at once.
    pub max_connections: usize,
    /// Transfers at once from one peer.
    pub per_peer: usize,
    /// Transfers served at once (outside `fetch.concurrency`).
    pub serve_concurrency: usize,
}

impl Default for PeerSection {
    fn default() -> Self {
        let d = crate::peer::PeerLimits::default();
        Self {
            max_connections: d.max_connections,
            per_peer: d.per_peer,
            serve_concurrency: d.serve_concurrency,
        }
    }
}

impl PeerSection {
    pub fn validate(&self) -> Result<(), KeyError> {
        for (key, v) in [
            ("peer.max_connections", self.max_connections),
            ("peer.per_peer", self.per_peer),
            ("peer.serve_concurrency", self.serve_concurrency),
        ] {
            if v == 0 {
                return Err(KeyError::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn limits(&self) -> crate::peer::PeerLimits {
        crate::peer::PeerLimits {
            max_connections: self.max_connections,
            per_peer: self.per_peer,
            serve_concurrency: self.serve_concurrency,
        }
    }
}

/// `disk:` keys. Public because the coordinator's `local_worker:` embeds them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskSection {
    /// Below this free space on `mirror_dir` no new clone starts (SPEC §7.5).
    pub min_free: FreeSpace,
    /// Below this free space a running clone or fetch is aborted and leaves nothing
    /// behind (issue 10); `None`: half of [`Self::min_free`] ([`Self::abort_below`]).
    pub abort_free: Option<FreeSpace>,
}

impl Default for DiskSection {
    fn default() -> Self {
        Self {
            min_free: FreeSpace::Percent(5.0),
            abort_free: None,
        }
    }
}

impl DiskSection {
    /// `disk.abort_free` as set, or half of `disk.min_free`.
    pub fn abort_below(&self) -> FreeSpace {
        self.abort_free.unwrap_or(match self.min_free {
            FreeSpace::Percent(p) => FreeSpace::Percent(p / 2.0),
            FreeSpace::Bytes(b) => FreeSpace::Bytes(b / 2),
        })
    }

    /// SPEC §7.5 keeps fetches going below `disk.min_free`: the abort limit must be lower
    /// (checked when both are of one kind, sizes or percentages).
    pub fn validate(&self) -> Result<(), KeyError> {
        let higher = match (self.min_free, self.abort_below()) {
            (FreeSpace::Percent(min), FreeSpace::Percent(abort)) => abort > min,
            (FreeSpace::Bytes(min), FreeSpace::Bytes(abort)) => abort > min,
            _ => false,
        };
        if higher {
            return Err(KeyError::new(
                "disk.abort_free",
                "must not be above disk.min_free (below that, fetches go on; SPEC §7.5)",
            ));
        }
        Ok(())
    }
}

/// A size such as `10G` (the units of `disk.min_free`, without percentages). A visitor,
/// like `de_duration`, so that an error keeps its key path.
fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size such as 500M or 10G")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match FreeSpace::parse(v).map_err(E::custom)? {
                FreeSpace::Bytes(b) => Ok(Some(b)),
                FreeSpace::Percent(_) => Err(E::custom(format!(
                    "{v:?}: a size such as 500M or 10G is expected, not a percentage"
                ))),
            }
        }
    }
    d.deserialize_any(V)
}

/// A bad value, named by its key (relative to the section that holds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {detail}")]
pub struct KeyError {
    pub key: String,
    pub detail: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax, an unknown key or a value of the wrong shape; serde's message names the key.
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("config file {path}: {error}")]
    Invalid { path: PathBuf, error: KeyError },
}

/// `join_token` as written: never printed (issue 10 finding 5).
#[derive(Deserialize)]
#[serde(transparent)]
struct InlineToken(String);

impl std::fmt::Debug for InlineToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The file as written; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    coordinator: Option<String>,
    /// Seed alias of `coordinator`.
    where_coor_ip_addr: Option<String>,
    join_token: Option<InlineToken>,
    join_token_file: Option<PathBuf>,
    mirror_dir: Option<PathBuf>,
    /// Seed alias of `mirror_dir`.
    clone_disk_path: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    name: Option<String>,
    weight: Option<f64>,
    #[serde(default)]
    fetch: FetchSection,
    #[serde(default)]
    disk: DiskSection,
    serve_url_base: Option<String>,
    /// The peer plane (SPEC §13): UDP address to listen on; nothing listens without it.
    peer_listen: Option<String>,
    /// `host:port` other workers dial; default: the address the coordinator sees.
    peer_advertise: Option<String>,
    zone: Option<String>,
    #[serde(default)]
    peer: PeerSection,
    /// CIDRs never connected to (SPEC §17); default [`DEFAULT_UPSTREAM_DENY`].
    upstream_deny: Option<Vec<String>>,
    /// Secrets for private upstreams (SPEC §16).
    #[serde(default)]
    credentials: Vec<CredentialSpec>,
    log_level: Option<String>,
}

/// Where the join token comes from, and so whether the link can pick up a new one by
/// itself (SPEC §4.1: `gitmirrord join-token --rotate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `join_token` in the config file: fixed until the worker restarts.
    Inline,
    /// `join_token_file`: read again before every connection attempt, so writing the new
    /// token into it is enough.
    File(PathBuf),
    /// The embedded worker (`local_worker:`): the coordinator's own join secret file, read
    /// again before every connection attempt; the certificate pin stays.
    CoordinatorSecret(PathBuf),
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `host:port` of the coordinator; host names are resolved at each connection attempt.
    pub coordinator: String,
    /// The join token as read at start.
    pub token: JoinToken,
    /// Where [`Self::token`] came from.
    pub token_source: TokenSource,
    pub mirror_dir: PathBuf,
    pub state_dir: PathBuf,
    pub name: String,
    pub weight: f64,
    pub fetch: FetchSection,
    pub disk: DiskSection,
    pub serve_url_base: Option<String>,
    /// `peer_listen`: where the peer plane listens (UDP, QUIC); `None`: it does not.
    pub peer_listen: Option<SocketAddr>,
    /// `peer_advertise`: `host:port` other workers dial instead of what the coordinator
    /// sees.
    pub peer_advertise: Option<String>,
    /// `zone`: failure domain, for placing replicas (S3).
    pub zone: Option<String>,
    pub peer: PeerSection,
    /// `upstream_deny`: addresses upstream connections never reach.
    pub upstream_deny: AddrPolicy,
    /// `credentials` with their secrets, as read at load (SPEC §16); re-read on SIGHUP
    /// and when a file changes.
    pub credentials: Arc<Credentials>,
    pub log_level: String,
    /// Things the operator should change but that do not stop the daemon (seed aliases).
    /// `main` logs them once logging is set up.
    pub warnings: Vec<String>,
}

impl WorkerConfig {
    /// Read and validate the config file at `path`, including the join token it points to.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path, &|p| {
            gitmirror_common::trust::read_token_file(p)
        })
    }

    /// Validate `text` (the content of `path`); `read_token` reads a join token file.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        read_token: &dyn Fn(&Path) -> anyhow::Result<JoinToken>,
    ) -> Result<Self, ConfigError> {
        // An empty file (or one with only comments) means "all defaults".
        let raw: RawConfig = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                detail: e.to_string(),
            })?
        };
        raw.validate(read_token)
            .map_err(|error| ConfigError::Invalid {
                path: path.to_owned(),
                error,
            })
    }

    /// The configuration of a worker embedded in the coordinator (`local_worker:`), which
    /// connects to that coordinator over loopback. Key names in errors are relative to the
    /// `local_worker` section.
    #[allow(clippy::too_many_arguments)]
    pub fn embedded(
        coordinator: SocketAddr,
        token: JoinToken,
        mirror_dir: PathBuf,
        state_dir: PathBuf,
        name: String,
        weight: f64,
        fetch: FetchSection,
        disk: DiskSection,
        serve_url_base: Option<String>,
    ) -> Result<Self, KeyError> {
        let cfg = Self {
            coordinator: coordinator.to_string(),
            token,
            token_source: TokenSource::Inline,
            mirror_dir,
            state_dir,
            name,
            weight,
            fetch,
            disk,
            serve_url_base,
            peer_listen: None,
            peer_advertise: None,
            zone: None,
            peer: PeerSection::default(),
            upstream_deny: AddrPolicy::default(),
            credentials: Arc::default(),
            log_level: "info".into(),
            warnings: Vec::new(),
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Use `deny` as `upstream_deny` (the embedded worker and tests).
    pub fn with_upstream_deny(mut self, deny: AddrPolicy) -> Self {
        self.upstream_deny = deny;
        self
    }

    /// Use `credentials` for private upstreams (the embedded worker takes the
    /// coordinator's).
    pub fn with_credentials(mut self, credentials: Arc<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// What upstream connections may reach: `upstream_deny` and `fetch.redirects`.
    pub fn upstream_policy(&self) -> UpstreamPolicy {
        UpstreamPolicy {
            deny: self.upstream_deny.clone(),
            redirects: self.fetch.redirects,
        }
    }

    /// Take the join token from `source` from now on (the embedded worker follows its
    /// coordinator's secret file).
    pub fn with_token_source(mut self, source: TokenSource) -> Self {
        self.token_source = source;
        self
    }

    /// What aborts a running clone or fetch: `disk.abort_free`, `fetch.max_repo_size`.
    pub fn limits(&self) -> crate::mirror::Limits {
        crate::mirror::Limits {
            abort_free: self.disk.abort_below(),
            max_repo_size: self.fetch.max_repo_size,
        }
    }

    /// Keys that differ from `new` and take effect only after a restart (SIGHUP reloads
    /// `fetch.*`, `disk.*`, `credentials` and `log_level`; a new token in the same `join_token_file` is
    /// picked up by the link at its next connection attempt).
    pub fn restart_needed(&self, new: &WorkerConfig) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.coordinator != new.coordinator {
            keys.push("coordinator");
        }
        match (&self.token_source, &new.token_source) {
            (TokenSource::File(a), TokenSource::File(b)) if a == b => {}
            (TokenSource::File(_), TokenSource::File(_)) => keys.push("join_token_file"),
            (a, b) if a != b => keys.push("join_token"),
            _ if self.token != new.token => keys.push("join_token"),
            _ => {}
        }
        if self.mirror_dir != new.mirror_dir {
            keys.push("mirror_dir");
        }
        if self.state_dir != new.state_dir {
            keys.push("state_dir");
        }
        if self.name != new.name {
            keys.push("name");
        }
        if self.weight != new.weight {
            keys.push("weight");
        }
        if self.serve_url_base != new.serve_url_base {
            keys.push("serve_url_base");
        }
        if self.peer_listen != new.peer_listen {
            keys.push("peer_listen");
        }
        if self.peer_advertise != new.peer_advertise {
            keys.push("peer_advertise");
        }
        if self.zone != new.zone {
            keys.push("zone");
        }
        if self.peer != new.peer {
            keys.push("peer");
        }
        // The upstream HTTP client is built once with both.
        if self.upstream_deny != new.upstream_deny {
            keys.push("upstream_deny");
        }
        if self.fetch.redirects != new.fetch.redirects {
            keys.push("fetch.redirects");
        }
        keys
    }

    /// Checks shared by files and embedded configs.
    fn check(&self) -> Result<(), KeyError> {
        check_host_port(&self.coordinator).map_err(|d| KeyError::new("coordinator", d))?;
        if !self.weight.is_finite() || self.weight <= 0.0 {
            return Err(KeyError::new(
                "weight",
                format!("must be a number above 0, got {}", self.weight),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(KeyError::new("name", "must not be empty"));
        }
        for (key, p) in [
            ("mirror_dir", &self.mirror_dir),
            ("state_dir", &self.state_dir),
        ] {
            if p.as_os_str().is_empty() {
                return Err(KeyError::new(key, "must not be empty"));
            }
        }
        self.fetch.validate()?;
        self.disk.validate()?;
        self.peer.validate()?;
        if let Some(a) = &self.peer_advertise {
            if self.peer_listen.is_none() {
                return Err(KeyError::new(
                    "peer_advertise",
                    "is set but peer_listen is not: nothing would listen there",
                ));
            }
            check_host_port(a).map_err(|d| KeyError::new("peer_advertise", d))?;
        }
        if let Some(z) = &self.zone
            && (z.is_empty()
                || z.len() > 64
                || !z
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(KeyError::new(
                "zone",
                format!("{z:?}: 1 to 64 of A-Z a-z 0-9 . _ -"),
            ));
        }
        if let Some(base) = &self.serve_url_base
            && !base.contains("://")
        {
            return Err(KeyError::new(
                "serve_url_base",
                format!("{base:?} is not a URL (e.g. git://mirror3.example.org/)"),
            ));
        }
        Ok(())
    }
}

impl RawConfig {
    fn validate(
        self,
        read_token: &dyn Fn(&Path) -> anyhow::Result<JoinToken>,
    ) -> Result<WorkerConfig, KeyError> {
        let mut warnings = Vec::new();
        let coordinator = pick_alias(
            self.coordinator,
            self.where_coor_ip_addr,
            "coordinator",
            "where_coor_ip_addr",
            &mut warnings,
        )?
        .unwrap_or_else(|| DEFAULT_COORDINATOR.to_owned());
        let mirror_dir = pick_alias(
            self.mirror_dir,
            self.clone_disk_path,
            "mirror_dir",
            "clone_disk_path",
            &mut warnings,
        )?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MIRROR_DIR));
        // The inline token wins over the file (SPEC §2.2).
        let (token, token_source) = match (self.join_token, self.join_token_file) {
            (Some(InlineToken(text)), _) => (
                JoinToken::parse(&text).map_err(|e| KeyError::new("join_token", e.to_string()))?,
                TokenSource::Inline,
            ),
            (None, file) => {
                let file = file.unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
                let token = read_token(&file)
                    .map_err(|e| KeyError::new("join_token_file", format!("{e:#}")))?;
                (token, TokenSource::File(file))
            }
        };
        let name = match self.name {
            Some(n) => n,
            None => host_name(),
        };
        let upstream_deny = match &self.upstream_deny {
            None => AddrPolicy::parse(DEFAULT_UPSTREAM_DENY.iter().copied()),
            Some(list) => AddrPolicy::parse(list.iter().map(String::as_str)),
        }
        .map_err(|d| KeyError::new("upstream_deny", d))?;
        let credentials = Credentials::load(&self.credentials, "credentials")
            .map_err(|e| KeyError::new(e.key, e.detail))?;
        let log_level = self.log_level.unwrap_or_else(|| "info".into());
        check_log_level(&log_level).map_err(|d| KeyError::new("log_level", d))?;
        let cfg = WorkerConfig {
            coordinator,
            token,
            token_source,
            mirror_dir,
            state_dir: self
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            name,
            weight: self.weight.unwrap_or(1.0),
            fetch: self.fetch,
            disk: self.disk,
            serve_url_base: self.serve_url_base,
            peer_listen: match &self.peer_listen {
                None => None,
                Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                    KeyError::new(
                        "peer_listen",
                        format!(
                            "{text:?} is not an IP address and port (e.g. 0.0.0.0:9419 or [::]:9419)"
                        ),
                    )
                })?),
            },
            peer_advertise: self.peer_advertise,
            zone: self.zone,
            peer: self.peer,
            upstream_deny,
            credentials: Arc::new(credentials),
            log_level,
            warnings,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// The new key wins when both are set; the seed alias alone is accepted with a warning.
fn pick_alias<T>(
    new: Option<T>,
    alias: Option<T>,
    new_key: &str,
    alias_key: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<T>, KeyError> {
    match (new, alias) {
        (Some(_), Some(_)) => Err(KeyError::new(
            alias_key,
            format!("is the old name of `{new_key}`; set only `{new_key}`"),
        )),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(v)) => {
            warnings.push(format!(
                "config key `{alias_key}` is the prototype's name for `{new_key}`; please rename it"
            ));
            Ok(Some(v))
        }
        (None, None) => Ok(None),
    }
}

/// `host:port` or `[v6]:port`; the host is resolved later.
fn check_host_port(text: &str) -> Result<(), String> {
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad =
        || format!("{text:?} is not host:port (e.g. 127.0.0.1:5555 or coord.example.org:5555)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if host_ok { Ok(()) } else { Err(bad()) }
}

fn check_log_level(level: &str) -> Result<(), String> {
    let plain = ["off", "error", "warn", "info", "debug", "trace"];
    if plain.contains(&level.to_ascii_lowercase().as_str()) || level.contains('=') {
        Ok(())
    } else {
        Err(format!(
            "{level:?} is not a log level (off, error, warn, info, debug, trace)"
        ))
    }
}

/// The machine's host name, for the default worker name.
fn host_name() -> String {
    let uts = rustix::system::uname();
    let name = uts.nodename().to_string_lossy().trim().to_owned();
    if name.is_empty() {
        "gitmirror-worker".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "gmj1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.c2VjcmV0";

    fn token_from_file(p: &Path) -> anyhow::Result<JoinToken> {
        anyhow::ensure!(
            p == Path::new(DEFAULT_TOKEN_FILE) || p == Path::new("/tok"),
            "no such file {}",
            p.display()
        );
        Ok(JoinToken::parse(TOKEN)?)
    }

    fn parse(text: &str) -> Result<WorkerConfig, ConfigError> {
        WorkerConfig::from_yaml(text, Path::new("/etc/w.yaml"), &token_from_file)
    }

    fn err(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    // Issue 10 finding 5: neither the raw config nor the parsed one prints the token.
    #[test]
    fn issue10_f5_debug_does_not_print_the_join_token() {
        let text = format!("join_token: {TOKEN}\n");
        let raw: RawConfig = serde_yaml::from_str(&text).unwrap();
        let shown = format!("{raw:?} {:?}", parse(&text).unwrap());
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn spec_2_2_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.coordinator, "127.0.0.1:5555");
        assert_eq!(c.token, JoinToken::parse(TOKEN).unwrap());
        assert_eq!(
            c.mirror_dir,
            PathBuf::from("/var/lib/gitmirror-worker/repos")
        );
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/gitmirror-worker"));
        assert!(!c.name.is_empty());
        assert_eq!(c.weight, 1.0);
        assert_eq!(c.fetch, FetchSection::default());
        assert_eq!(c.fetch.concurrency, 8);
        assert_eq!(c.fetch.per_host_concurrency, 4);
        assert_eq!(c.fetch.timeout, Duration::from_secs(1800));
        assert_eq!(c.fetch.min_interval, Duration::from_secs(60));
        assert_eq!(c.fetch.max_interval, Duration::from_secs(86_400));
        assert_eq!(c.disk.min_free, FreeSpace::Percent(5.0));
        assert_eq!(c.disk.abort_below(), FreeSpace::Percent(2.5));
        assert_eq!(c.fetch.max_repo_size, None);
        assert!(
            c.fetch.pools,
            "SPEC §14 (issue 13): pools are on by default"
        );
        assert_eq!(c.serve_url_base, None);
        assert_eq!(c.log_level, "info");
        assert!(c.warnings.is_empty());
        assert_eq!(c.peer_listen, None, "nothing listens by default");
        assert_eq!(c.peer.limits(), crate::peer::PeerLimits::default());
        assert_eq!(
            (
                c.peer.max_connections,
                c.peer.per_peer,
                c.peer.serve_concurrency
            ),
            (64, 2, 4)
        );
    }

    // SPEC §13: the peer plane's keys, and errors naming the key.
    #[test]
    fn spec_13_peer_keys() {
        let c = parse(
            "peer_listen: \"[::]:9419\"\npeer_advertise: w1.example.org:9419\nzone: rack-2\n\
             peer:\n  max_connections: 8\n  per_peer: 1\n  serve_concurrency: 3\n",
        )
        .unwrap();
        assert_eq!(c.peer_listen, Some("[::]:9419".parse().unwrap()));
        assert_eq!(c.peer_advertise.as_deref(), Some("w1.example.org:9419"));
        assert_eq!(c.zone.as_deref(), Some("rack-2"));
        assert_eq!(
            (
                c.peer.max_connections,
                c.peer.per_peer,
                c.peer.serve_concurrency
            ),
            (8, 1, 3)
        );
        let mut other = c.clone();
        other.zone = Some("rack-3".into());
        other.peer.per_peer = 2;
        assert_eq!(c.restart_needed(&other), vec!["zone", "peer"]);
        for (text, key) in [
            ("peer_listen: mirror1:9419\n", "peer_listen"),
            ("peer_advertise: w1:9419\n", "peer_advertise"),
            (
                "peer_listen: 0.0.0.0:9419\npeer_advertise: w1\n",
                "peer_advertise",
            ),
            ("zone: \"a b\"\n", "zone"),
            ("peer:\n  per_peer: 0\n", "peer.per_peer"),
            ("peer:\n  max_connections: 0\n", "peer.max_connections"),
            ("peer:\n  serve_concurrency: 0\n", "peer.serve_concurrency"),
            ("peer:\n  per_pear: 1\n", "per_pear"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn spec_2_2_every_key() {
        let c = parse(
            "coordinator: coord.example.org:6000\n\
             join_token_file: /tok\n\
             mirror_dir: /m\n\
             state_dir: /s\n\
             name: w7\n\
             weight: 2.5\n\
             fetch:\n  concurrency: 3\n  per_host_concurrency: 2\n  timeout: 5m\n  min_interval: 2s\n  max_interval: 1h\n  max_repo_size: 20G\n  pools: false\n\
             disk:\n  min_free: 10G\n  abort_free: 1G\n\
             serve_url_base: git://mirror3.example.org/\n\
             log_level: debug\n",
        )
        .unwrap();
        assert_eq!(c.coordinator, "coord.example.org:6000");
        assert_eq!(c.mirror_dir, PathBuf::from("/m"));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.name, "w7");
        assert_eq!(c.weight, 2.5);
        assert_eq!(
            c.fetch,
            FetchSection {
                concurrency: 3,
                per_host_concurrency: 2,
                timeout: Duration::from_secs(300),
                min_interval: Duration::from_secs(2),
                max_interval: Duration::from_secs(3600),
                redirects: Redirects::SameHost,
                max_repo_size: Some(20 << 30),
                pools: false,
            }
        );
        assert_eq!(c.disk.min_free, FreeSpace::Bytes(10 << 30));
        assert_eq!(c.disk.abort_below(), FreeSpace::Bytes(1 << 30));
        assert_eq!(
            c.serve_url_base.as_deref(),
            Some("git://mirror3.example.org/")
        );
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn spec_2_2_inline_token_wins_over_file() {
        let other = JoinToken::new(b"another certificate", "b3RoZXI");
        let c = parse(&format!(
            "join_token: {}\njoin_token_file: /missing\n",
            other.format()
        ))
        .unwrap();
        assert_eq!(c.token, other);
        assert_eq!(c.token_source, TokenSource::Inline);
        assert_eq!(
            parse("join_token_file: /tok\n").unwrap().token_source,
            TokenSource::File("/tok".into())
        );
        let e = err("join_token_file: /missing\n");
        assert!(
            e.contains("join_token_file") && e.contains("/missing"),
            "{e}"
        );
        let e = err("join_token: nonsense\n");
        assert!(e.contains("/etc/w.yaml") && e.contains("join_token"), "{e}");
    }

    // SPEC §4.1 rotation: the link re-reads `join_token_file`, so a new token in the same
    // file needs no restart; an inline token, or another file, does.
    #[test]
    fn a_new_token_in_the_same_file_needs_no_restart() {
        let running = parse("join_token_file: /tok\n").unwrap();
        let mut rotated = running.clone();
        rotated.token = JoinToken::new(b"certificate", "bmV3");
        assert!(running.restart_needed(&rotated).is_empty());
        let mut moved = running.clone();
        moved.token_source = TokenSource::File("/elsewhere".into());
        assert_eq!(running.restart_needed(&moved), ["join_token_file"]);
        let inline = parse(&format!("join_token: {TOKEN}\n")).unwrap();
        let mut changed = inline.clone();
        changed.token = JoinToken::new(b"certificate", "bmV3");
        assert_eq!(inline.restart_needed(&changed), ["join_token"]);
        assert_eq!(inline.restart_needed(&running), ["join_token"]);
    }

    #[test]
    fn spec_2_2_seed_aliases_only() {
        let c =
            parse("where_coor_ip_addr: 10.0.0.1:5555\nclone_disk_path: /worker/clone/repo/path\n")
                .unwrap();
        assert_eq!(c.coordinator, "10.0.0.1:5555");
        assert_eq!(c.mirror_dir, PathBuf::from("/worker/clone/repo/path"));
        assert_eq!(c.warnings.len(), 2);
        assert!(
            c.warnings[0].contains("where_coor_ip_addr") && c.warnings[0].contains("`coordinator`")
        );
        assert!(
            c.warnings[1].contains("clone_disk_path") && c.warnings[1].contains("`mirror_dir`")
        );
        let e = err("coordinator: 1.2.3.4:5\nwhere_coor_ip_addr: 1.2.3.4:5\n");
        assert!(e.contains("where_coor_ip_addr"), "{e}");
    }

    #[test]
    fn spec_2_unknown_keys_are_named() {
        let e = err("coordinatr: 1.2.3.4:5\n");
        assert!(e.contains("/etc/w.yaml") && e.contains("coordinatr"), "{e}");
        let e = err("fetch:\n  concurency: 3\n");
        assert!(e.contains("concurency"), "{e}");
        let e = err("disk:\n  free: 3\n");
        assert!(e.contains("`free`"), "{e}");
    }

    #[test]
    fn spec_2_bad_values_name_file_and_key() {
        let e = err("fetch:\n  timeout: 5 parsecs\n");
        assert!(
            e.contains("/etc/w.yaml") && e.contains("fetch.timeout") && e.contains("parsecs"),
            "{e}"
        );
        let e = err("fetch:\n  min_interval: 1h\n  max_interval: 1m\n");
        assert!(e.contains("fetch.max_interval"), "{e}");
        let e = err("fetch:\n  concurrency: 0\n");
        assert!(e.contains("fetch.concurrency"), "{e}");
        let e = err("weight: 0\n");
        assert!(e.contains("weight"), "{e}");
        let e = err("weight: -1\n");
        assert!(e.contains("weight"), "{e}");
        let e = err("coordinator: nope\n");
        assert!(e.contains("coordinator"), "{e}");
        let e = err("disk:\n  min_free: 150%\n");
        assert!(e.contains("disk.min_free"), "{e}");
        let e = err("disk:\n  min_free: 1G\n  abort_free: 2G\n");
        assert!(e.contains("disk.abort_free"), "{e}");
        let e = err("fetch:\n  max_repo_size: 10%\n");
        assert!(
            e.contains("fetch.max_repo_size") && e.contains("percentage"),
            "{e}"
        );
        let e = err("fetch:\n  max_repo_size: 0\n");
        assert!(e.contains("fetch.max_repo_size"), "{e}");
        let e = err("fetch:\n  pools: sometimes\n");
        assert!(e.contains("pools"), "{e}");
        let e = err("serve_url_base: mirror3\n");
        assert!(e.contains("serve_url_base"), "{e}");
        let e = err("log_level: loud\n");
        assert!(e.contains("log_level"), "{e}");
        // A bare integer is seconds (SPEC §2).
        assert_eq!(
            parse("fetch:\n  timeout: 90\n").unwrap().fetch.timeout,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn coordinator_forms() {
        for ok in [
            "127.0.0.1:5555",
            "[::1]:5555",
            "coord:1",
            "a.example.org:5555",
        ] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in ["", "host", ":5555", "host:", "host:99999", "a b:5"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn embedded_constructor_validates() {
        let tok = JoinToken::parse(TOKEN).unwrap();
        let addr: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let mk = |weight: f64, fetch: FetchSection| {
            WorkerConfig::embedded(
                addr,
                tok.clone(),
                "/m".into(),
                "/s".into(),
                "local".into(),
                weight,
                fetch,
                DiskSection::default(),
                None,
            )
        };
        let c = mk(1.0, FetchSection::default()).unwrap();
        assert_eq!(c.coordinator, "127.0.0.1:5555");
        assert_eq!(mk(0.0, FetchSection::default()).unwrap_err().key, "weight");
        let bad = FetchSection {
            per_host_concurrency: 0,
            ..FetchSection::default()
        };
        assert_eq!(mk(1.0, bad).unwrap_err().key, "fetch.per_host_concurrency");
        // The sections parse on their own, as inside the coordinator's `local_worker:`.
        let f: FetchSection = serde_yaml::from_str("min_interval: 2s").unwrap();
        assert_eq!(f.min_interval, Duration::from_secs(2));
        assert_eq!(f.concurrency, 8);
        assert!(serde_yaml::from_str::<DiskSection>("bogus: 1").is_err());
    }

    // SPEC §17 / issue 10: `upstream_deny` and `fetch.redirects`, defaults and errors.
    #[test]
    fn spec_17_upstream_deny_and_redirects() {
        let load = |text: &str| {
            WorkerConfig::from_yaml(
                &format!("join_token: {TOKEN}\n{text}"),
                Path::new("/etc/w.yaml"),
                &token_from_file,
            )
        };
        let c = load("").unwrap();
        let meta: std::net::IpAddr = "169.254.169.254".parse().unwrap();
        let lan: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert!(c.upstream_deny.denied(meta).is_some());
        assert_eq!(
            c.upstream_deny.denied(lan),
            None,
            "private ranges allowed by default"
        );
        assert_eq!(c.fetch.redirects, Redirects::SameHost);
        let c = load("upstream_deny: [10.0.0.0/8, '::1']\nfetch: {redirects: any}\n").unwrap();
        assert!(c.upstream_deny.denied(lan).is_some());
        assert_eq!(
            c.upstream_deny.denied(meta),
            None,
            "the list replaces the default"
        );
        assert_eq!(c.upstream_policy().redirects, Redirects::Any);
        let e = load("upstream_deny: [10.0.0.0/8, bogus]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream_deny") && e.contains("bogus"), "{e}");
        let e = load("fetch: {redirects: elsewhere}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redirects"), "{e}");
        // The man page's example for a public index.
        let public = load(
            "upstream_deny: [169.254.0.0/16, fe80::/10, fd00:ec2::254/128,\n  100.100.100.200/32, 127.0.0.0/8, \"::1/128\", 10.0.0.0/8,\n  172.16.0.0/12, 192.168.0.0/16, fc00::/7, 100.64.0.0/10]\n",
        )
        .unwrap();
        for a in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "fd12::1",
            "169.254.169.254",
        ] {
            let a: std::net::IpAddr = a.parse().unwrap();
            assert!(public.upstream_deny.denied(a).is_some(), "{a}");
        }
        let changed = load("upstream_deny: []\n").unwrap();
        assert_eq!(
            c.restart_needed(&changed),
            ["upstream_deny", "fetch.redirects"]
        );
    }
}
