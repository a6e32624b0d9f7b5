//! `credentials` (SPEC §16): which secret an upstream URL gets, for the worker's fetches
//! and the coordinator's index. Parsed and matched here, once for both daemons.
//!
//! An entry's `match` is a URL prefix. URLs are compared in a normalised form
//! ([`MatchKey`]): the scheme family (http and https are one family, ssh and scp-style are
//! one), the host in lower case, the port without its default, the path as segments with
//! one `.git` suffix and empty segments dropped. User info never takes part. A URL matches
//! an entry when family, host and port are equal and the entry's segments begin its path
//! (`https://h/org` matches `https://h/org/x.git`, not `https://h/organisation/x`). The
//! entry with the most segments wins.
//!
//! URLs are read with gix's parser (as the URL policy does, `upstream_url`), not the
//! `url` crate: it is the reading the worker fetches with, and it understands scp-style
//! `git@host:org/repo.git`.
//!
//! Secrets are read when the entries are loaded; a secret file readable by others (or
//! writable by the group) is refused with its name. Nothing here prints a secret: the
//! [`Secret`] type has no `Display` and a redacted `Debug`.

use serde::Deserialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One `credentials` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    /// URL prefix this entry applies to.
    #[serde(rename = "match")]
    pub prefix: String,
    /// HTTP Basic user name (default `git`); for ssh, the login when the URL names none.
    pub username: Option<String>,
    /// How an HTTP token is sent: `basic` (default) or `bearer`.
    pub scheme: Option<AuthScheme>,
    pub token_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    /// Send the token over plain `http://` too.
    #[serde(default)]
    pub allow_plain_http: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    #[default]
    Basic,
    Bearer,
}

/// A secret read from a file. No `Display`; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A bad entry: `key` like `credentials[2].token_file`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {detail}")]
pub struct CredentialError {
    pub key: String,
    pub detail: String,
}

/// The message of an `auth` failure: names the entry by its `match`, so the coordinator
/// can show which entry was refused ([`refused_entry`]) without a wire field.
pub fn auth_message(entry: &str, detail: &str) -> String {
    format!("credential {entry}: {detail}")
}

/// The entry an [`auth_message`] names.
pub fn refused_entry(message: &str) -> Option<&str> {
    message
        .strip_prefix("credential ")?
        .split_once(": ")
        .map(|(entry, _)| entry)
}

/// One argument for a POSIX shell: the remote command ssh runs, the `core.sshCommand`
/// and credential helper git runs.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Scheme families that credentials apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Http,
    Ssh,
}

/// A URL in the form entries are matched in (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchKey {
    pub family: Family,
    pub host: String,
    pub port: Option<u16>,
    pub segments: Vec<String>,
}

/// Normalise `url` for prefix matching ([`crate::upstream_url::repo_addr`]); `None` for
/// URLs credentials never apply to (`git://`, local paths, what does not parse).
pub fn match_key(url: &str) -> Option<MatchKey> {
    use gix_url::Scheme;
    let addr = crate::upstream_url::repo_addr(url)?;
    let family = match addr.scheme {
        Scheme::Https | Scheme::Http => Family::Http,
        Scheme::Ssh => Family::Ssh,
        _ => return None,
    };
    Some(MatchKey {
        family,
        host: addr.host,
        port: addr.port,
        segments: addr
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl MatchKey {
    /// `self` (an entry's prefix) covers `url`.
    fn covers(&self, url: &MatchKey) -> bool {
        self.family == url.family
            && self.host == url.host
            && self.port == url.port
            && url.segments.starts_with(&self.segments)
    }
}

/// One validated entry with its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub spec: CredentialSpec,
    key: MatchKey,
    token: Option<Secret>,
}

impl Credential {
    /// The entry's `match` as written: what the API and logs name.
    pub fn name(&self) -> &str {
        &self.spec.prefix
    }

    pub fn family(&self) -> Family {
        self.key.family
    }

    /// Host (lower case) and port (`None`: the scheme's default) the entry is for.
    pub fn host(&self) -> (&str, Option<u16>) {
        (&self.key.host, self.key.port)
    }

    /// ssh's options for an ssh entry: this key only, no agent, public key only, host
    /// keys checked strictly against the entry's file only (the key's path, never its
    /// content). Empty for other entries.
    pub fn ssh_options(&self) -> Vec<std::ffi::OsString> {
        let (Some(key), Some(hosts)) = (&self.spec.ssh_key_file, &self.spec.known_hosts_file)
        else {
            return Vec::new();
        };
        let mut known = std::ffi::OsString::from("UserKnownHostsFile=");
        known.push(hosts);
        let mut out: Vec<std::ffi::OsString> = vec!["-i".into(), key.into()];
        for o in [
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            "PreferredAuthentications=publickey",
            "StrictHostKeyChecking=yes",
            "GlobalKnownHostsFile=/dev/null",
        ] {
            out.push("-o".into());
            out.push(o.into());
        }
        out.push("-o".into());
        out.push(known);
        out
    }

    /// The `Authorization` header value for an HTTP entry.
    pub fn authorization(&self) -> Option<Secret> {
        use base64::Engine;
        let token = self.token.as_ref()?.expose();
        Some(Secret(match self.spec.scheme.unwrap_or_default() {
            AuthScheme::Bearer => format!("Bearer {token}"),
            AuthScheme::Basic => {
                let user = self.spec.username.as_deref().unwrap_or("git");
                let pair = format!("{user}:{token}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
        }))
    }
}

/// The `credentials` of one daemon, secrets loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    entries: Vec<Credential>,
    /// What the secret files looked like when read ([`Self::changed_on_disk`]).
    stamps: Vec<(PathBuf, Option<Stamp>)>,
}

/// Identity and age of a file: a rewrite in place or a rename over it changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// Changes with the mode too: a file made private again is read again.
    ctime: i64,
    ctime_nsec: i64,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
        len: m.len(),
    })
}

impl Credentials {
    /// Validate `specs` (the `credentials` list; `key` is its name in errors) and read
    /// their secret files.
    pub fn load(specs: &[CredentialSpec], key: &str) -> Result<Self, CredentialError> {
        let mut entries: Vec<Credential> = Vec::new();
        let mut stamps = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let err = |field: &str, detail: String| CredentialError {
                key: if field.is_empty() {
                    format!("{key}[{i}]")
                } else {
                    format!("{key}[{i}].{field}")
                },
                detail,
            };
            let mkey = match_key(&spec.prefix).ok_or_else(|| {
                err(
                    "match",
                    format!(
                        "{:?} is not an https, http or ssh URL prefix (credentials apply to those only)",
                        spec.prefix
                    ),
                )
            })?;
            if let Some(other) = entries.iter().find(|e| e.key == mkey) {
                return Err(err(
                    "match",
                    format!(
                        "{:?} matches the same URLs as {:?}",
                        spec.prefix,
                        other.name()
                    ),
                ));
            }
            if let Some(user) = &spec.username
                && (user.is_empty()
                    || user.contains(':')
                    || user.starts_with('-')
                    || user.chars().any(|c| c.is_control() || c.is_whitespace()))
            {
                return Err(err(
                    "username",
                    "must be non-empty, without ':', whitespace or a leading '-'".into(),
                ));
            }
            let token = match mkey.family {
                Family::Http => {
                    for (field, set) in [
                        ("ssh_key_file", spec.ssh_key_file.is_some()),
                        ("known_hosts_file", spec.known_hosts_file.is_some()),
                    ] {
                        if set {
                            return Err(err(field, "applies to ssh URLs only".into()));
                        }
                    }
                    let Some(file) = &spec.token_file else {
                        return Err(err("token_file", "required for an http(s) entry".into()));
                    };
                    // Stamped before it is read: a rewrite in between is seen as a change
                    // (and read again), never hidden behind the new stamp.
                    let stamped = stamp(file);
                    let token = read_secret(file).map_err(|d| err("token_file", d))?;
                    stamps.push((file.clone(), stamped));
                    Some(token)
                }
                Family::Ssh => {
                    for (field, set) in [
                        ("token_file", spec.token_file.is_some()),
                        ("scheme", spec.scheme.is_some()),
                        ("allow_plain_http", spec.allow_plain_http),
                    ] {
                        if set {
                            return Err(err(field, "applies to http(s) URLs only".into()));
                        }
                    }
                    let Some(key_file) = &spec.ssh_key_file else {
                        return Err(err("ssh_key_file", "required for an ssh entry".into()));
                    };
                    let Some(hosts) = &spec.known_hosts_file else {
                        return Err(err(
                            "known_hosts_file",
                            "required for an ssh entry (host keys are checked strictly)".into(),
                        ));
                    };
                    let stamped = [stamp(key_file), stamp(hosts)];
                    check_secret_file(key_file).map_err(|d| err("ssh_key_file", d))?;
                    std::fs::metadata(hosts).map_err(|e| {
                        err(
                            "known_hosts_file",
                            format!("cannot read {}: {e}", hosts.display()),
                        )
                    })?;
                    for (f, s) in [key_file, hosts].into_iter().zip(stamped) {
                        stamps.push((f.clone(), s));
                    }
                    None
                }
            };
            entries.push(Credential {
                spec: spec.clone(),
                key: mkey,
                token,
            });
        }
        Ok(Self { entries, stamps })
    }

    /// Load the same entries again (their files changed, or a reload).
    pub fn reload(&self, key: &str) -> Result<Self, CredentialError> {
        let specs: Vec<CredentialSpec> = self.entries.iter().map(|e| e.spec.clone()).collect();
        Self::load(&specs, key)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `url`: the longest matching prefix.
    pub fn find(&self, url: &str) -> Option<&Credential> {
        let key = match_key(url)?;
        self.entries
            .iter()
            .filter(|e| e.key.covers(&key))
            .max_by_key(|e| e.key.segments.len())
    }

    /// A secret, key or known-hosts file changed (or appeared, or went) since loading.
    pub fn changed_on_disk(&self) -> bool {
        self.stamps.iter().any(|(p, s)| stamp(p) != *s)
    }

    /// The files as they are on disk now, in the order of the stamps taken at loading.
    fn on_disk(&self) -> Vec<Option<Stamp>> {
        self.stamps.iter().map(|(p, _)| stamp(p)).collect()
    }
}

/// [`Credentials`] shared between a daemon's reload path and its users, re-read when a
/// file changes ([`SharedCredentials::fresh`]).
#[derive(Debug, Clone, Default)]
pub struct SharedCredentials(std::sync::Arc<std::sync::Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    current: std::sync::Arc<Credentials>,
    /// The files as they were when re-reading them last failed: the same unusable files
    /// are not read (nor reported) again until they change once more.
    refused: Option<Vec<Option<Stamp>>>,
}

impl SharedCredentials {
    pub fn new(credentials: std::sync::Arc<Credentials>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Shared {
            current: credentials,
            refused: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, credentials: std::sync::Arc<Credentials>) {
        let mut g = self.lock();
        g.current = credentials;
        g.refused = None;
    }

    pub fn current(&self) -> std::sync::Arc<Credentials> {
        self.lock().current.clone()
    }

    /// The current entries, first re-read if one of their files changed on disk; a file
    /// that became unusable keeps the loaded entries (the error is returned beside them,
    /// for the caller to log, once per change of the files).
    pub fn fresh(&self, key: &str) -> (std::sync::Arc<Credentials>, Option<CredentialError>) {
        let current = self.current();
        if !current.changed_on_disk() {
            return (current, None);
        }
        let on_disk = current.on_disk();
        if self.lock().refused.as_ref() == Some(&on_disk) {
            return (current, None);
        }
        match current.reload(key) {
            Ok(new) => {
                let new = std::sync::Arc::new(new);
                self.set(new.clone());
                (new, None)
            }
            Err(e) => {
                self.lock().refused = Some(on_disk);
                (current, Some(e))
            }
        }
    }
}

/// A secret file must be a regular file not readable by others nor writable by its
/// group (0600 or 0640, SPEC §16).
fn check_secret_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o037 != 0 {
        return Err(format!(
            "{} is readable by others or writable by its group (mode {mode:o}); it holds a secret: run `chmod 600 {}` (or 640)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// A token file: one line, trailing whitespace trimmed, printable ASCII only (it goes in
/// an HTTP header).
fn read_secret(path: &Path) -> Result<Secret, String> {
    check_secret_file(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim_end();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{} must hold one token of printable ASCII characters without spaces",
            path.display()
        ));
    }
    Ok(Secret(token.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn http(prefix: &str, token_file: &Path) -> CredentialSpec {
        CredentialSpec {
            prefix: prefix.into(),
            username: None,
            scheme: None,
            token_file: Some(token_file.into()),
            ssh_key_file: None,
            known_hosts_file: None,
            allow_plain_http: false,
        }
    }

    #[test]
    fn spec_16_longest_normalised_prefix_wins() {
        let dir = tempfile::tempdir().unwrap();
        let a = secret(dir.path(), "a", "tok-a\n", 0o600);
        let b = secret(dir.path(), "b", "tok-b", 0o640);
        let c = Credentials::load(
            &[
                http("https://GitHub.com/", &a),
                http("https://github.com:443/Org/", &b),
            ],
            "credentials",
        )
        .unwrap();
        let name = |u: &str| c.find(u).map(|e| e.name().to_owned());
        assert_eq!(
            name("https://github.com/Org/x.git").as_deref(),
            Some("https://github.com:443/Org/")
        );
        assert_eq!(
            name("https://user@github.com/Org/x").as_deref(),
            Some("https://github.com:443/Org/")
        );
        // Segments, not characters; paths are case-sensitive.
        assert_eq!(
            name("https://github.com/Organisation/x").as_deref(),
            Some("https://GitHub.com/")
        );
        assert_eq!(
            name("https://github.com/org/x").as_deref(),
            Some("https://GitHub.com/")
        );
        // http and https are one family (the token itself is withheld over http).
        assert_eq!(
            name("http://github.com/Org/x").as_deref(),
            Some("https://github.com:443/Org/")
        );
        assert_eq!(name("https://github.com:8443/Org/x"), None);
        assert_eq!(name("https://gitlab.com/Org/x"), None);
        assert_eq!(name("git://github.com/Org/x"), None);
        assert_eq!(name("ssh://git@github.com/Org/x"), None);
    }

    #[test]
    fn spec_16_basic_and_bearer_headers() {
        let dir = tempfile::tempdir().unwrap();
        let t = secret(dir.path(), "t", "s3cr3t\n", 0o600);
        let mut spec = http("https://h/", &t);
        let c = Credentials::load(std::slice::from_ref(&spec), "credentials").unwrap();
        let auth = c.find("https://h/x").unwrap().authorization().unwrap();
        // base64("git:s3cr3t")
        assert_eq!(auth.expose(), "Basic Z2l0OnMzY3IzdA==");
        assert_eq!(format!("{auth:?}"), "<redacted>");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        spec.scheme = Some(AuthScheme::Bearer);
        let c = Credentials::load(&[spec], "credentials").unwrap();
        let auth = c.find("https://h/x").unwrap().authorization().unwrap();
        assert_eq!(auth.expose(), "Bearer s3cr3t");
    }

    #[test]
    fn spec_16_secret_file_readable_by_others_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let t = secret(dir.path(), "open-token", "x", 0o644);
        let e = Credentials::load(&[http("https://h/", &t)], "credentials").unwrap_err();
        assert_eq!(e.key, "credentials[0].token_file");
        assert!(
            e.detail.contains("open-token") && e.detail.contains("644"),
            "{e}"
        );
        let t = secret(dir.path(), "group-writable", "x", 0o660);
        assert!(Credentials::load(&[http("https://h/", &t)], "credentials").is_err());
    }

    #[test]
    fn spec_16_ssh_entries_need_a_key_and_known_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret(dir.path(), "id", "KEY", 0o600);
        let hosts = secret(dir.path(), "kh", "h ssh-ed25519 AAAA", 0o644);
        let spec = CredentialSpec {
            prefix: "git@example.org:org/".into(),
            username: None,
            scheme: None,
            token_file: None,
            ssh_key_file: Some(key),
            known_hosts_file: None,
            allow_plain_http: false,
        };
        let e = Credentials::load(std::slice::from_ref(&spec), "credentials").unwrap_err();
        assert_eq!(e.key, "credentials[0].known_hosts_file");
        let spec = CredentialSpec {
            known_hosts_file: Some(hosts),
            ..spec
        };
        let c = Credentials::load(&[spec], "credentials").unwrap();
        assert_eq!(
            c.find("ssh://git@example.org/org/repo.git")
                .map(|e| e.family()),
            Some(Family::Ssh)
        );
        assert!(c.find("git@example.org:other/repo.git").is_none());
    }

    #[test]
    fn spec_16_auth_message_names_its_entry() {
        let m = auth_message("https://h:8443/org/", "Received HTTP status 401");
        assert_eq!(refused_entry(&m), Some("https://h:8443/org/"));
        assert_eq!(refused_entry("Received HTTP status 401"), None);
    }

    /// SPEC §16: a secret file that becomes unusable keeps the loaded entries and is
    /// reported once, not at every look; fixed, it is read again.
    #[test]
    fn spec_16_an_unusable_secret_file_is_reported_once_per_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = secret(dir.path(), "t", "one", 0o600);
        let shared = SharedCredentials::new(std::sync::Arc::new(
            Credentials::load(&[http("https://h/", &t)], "credentials").unwrap(),
        ));
        let broken = secret(dir.path(), "t.new", "two", 0o644);
        std::fs::rename(&broken, &t).unwrap();
        let (c, e) = shared.fresh("credentials");
        assert!(e.is_some(), "readable by others: refused");
        let token = |c: &Credentials| {
            c.find("https://h/x")
                .unwrap()
                .token
                .as_ref()
                .unwrap()
                .expose()
                .to_owned()
        };
        assert_eq!(token(&c), "one", "the loaded entry stays");
        for _ in 0..3 {
            let (c, e) = shared.fresh("credentials");
            assert!(e.is_none(), "reported once: {e:?}");
            assert_eq!(token(&c), "one");
        }
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (c, e) = shared.fresh("credentials");
        assert!(e.is_none(), "{e:?}");
        assert_eq!(token(&c), "two", "read again once fixed");
    }

    #[test]
    fn spec_16_a_rewritten_secret_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let t = secret(dir.path(), "t", "one", 0o600);
        let c = Credentials::load(&[http("https://h/", &t)], "credentials").unwrap();
        assert!(!c.changed_on_disk());
        let tmp = secret(dir.path(), "t.new", "two", 0o600);
        std::fs::rename(&tmp, &t).unwrap();
        assert!(c.changed_on_disk());
    }
}
