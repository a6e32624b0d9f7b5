//! The upstream URL policy (SPEC §3.2, §17; issue 10 finding 3): one function that both
//! the coordinator's index validator and the worker's pre-fetch check call, applied to
//! what gix's own URL parser makes of the string, and the address policy
//! (`upstream_deny`) the worker applies after name resolution.
//!
//! Why gix's parser: a URL is only as safe as the reading of the program that uses it.
//! A hand-written check that reads `[a:b]/x` as scp-style while gix reads a local path
//! lets an index slip a local path past `allow_file_urls`; a check that ignores `?` and
//! `#` lets gix append its own path after a fragment. So the string is parsed once, with
//! the parser the worker fetches with, and the policy judges the parsed parts.

use gix_url::Scheme;
use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

/// Why a URL is refused. The text is shown to operators (`GET /api/index`) and names
/// what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("url is empty")]
    Empty,
    #[error("url starts with '-' (git would read it as an option)")]
    LeadingDash,
    #[error("url contains whitespace or a control character ({0:?})")]
    Control(char),
    #[error("url uses git's {0}:: transport, which runs commands or reads descriptors")]
    CommandTransport(&'static str),
    #[error("url uses git's remote-helper syntax {0:?}::")]
    RemoteHelper(String),
    #[error("url does not parse as a git url: {0}")]
    Unparsable(String),
    #[error("url scheme {0:?} is not allowed (use https, http, git or ssh)")]
    Scheme(String),
    #[error("file:// urls and local paths are not allowed (allow_file_urls is off)")]
    FileUrls,
    #[error("a file:// url must name a local path, without host, user or port")]
    FileHost,
    #[error("a local path must be absolute")]
    RelativePath,
    #[error("url has no host")]
    NoHost,
    #[error("url host {0:?} is not a host name or an IP address")]
    BadHost(String),
    #[error("url host starts with '-' (ssh would read it as an option)")]
    HostDash,
    #[error("url user starts with '-' (ssh would read it as an option)")]
    UserDash,
    #[error("url path starts with '-' (git would read it as an option)")]
    PathDash,
    #[error("url has no path")]
    NoPath,
    #[error(
        "url has user info ({0}); credentials in http(s) and git urls are refused: they belong in the worker's credential files"
    )]
    UserInfo(&'static str),
    #[error("url has a password; credentials belong in the worker's credential files")]
    Password,
    #[error("url has a query or fragment ('?' or '#'); git would append its own path after it")]
    QueryOrFragment,
}

/// A URL the policy accepts: gix's parse of it, which is what the worker will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub url: gix_url::Url,
}

impl UpstreamUrl {
    /// `https`, `http`, `git`, `ssh` (scp-style too) or `file` (local paths too).
    pub fn scheme(&self) -> &str {
        self.url.scheme.as_str()
    }

    /// The host for network schemes (IPv6 without brackets), `None` for local paths.
    pub fn host(&self) -> Option<&str> {
        self.url.host()
    }

    pub fn path(&self) -> &[u8] {
        &self.url.path
    }
}

/// Check `url` as an upstream to fetch from (SPEC §3.2). `allow_file_urls` admits
/// `file://` URLs and absolute local paths.
///
/// Cheap textual refusals come first (they give the clearest reasons and refuse things
/// before any parser sees them); then gix parses and the policy judges its result.
pub fn check(url: &str, allow_file_urls: bool) -> Result<UpstreamUrl, UrlRefused> {
    if url.is_empty() {
        return Err(UrlRefused::Empty);
    }
    if url.starts_with('-') {
        return Err(UrlRefused::LeadingDash);
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlRefused::Control(c));
    }
    // Refused wherever they appear, also where gix would read them as part of a path:
    // a string meaning "run this" must never reach a tool that reads it differently.
    let lower = url.to_ascii_lowercase();
    if lower.contains("ext::") {
        return Err(UrlRefused::CommandTransport("ext"));
    }
    if lower.contains("fd::") {
        return Err(UrlRefused::CommandTransport("fd"));
    }

    let parsed =
        gix_url::parse(url.as_bytes()).map_err(|e| UrlRefused::Unparsable(e.to_string()))?;
    match &parsed.scheme {
        Scheme::Ext => return Err(UrlRefused::CommandTransport("ext")),
        Scheme::Helper(name) => return Err(UrlRefused::RemoteHelper(name.clone())),
        Scheme::HelperUrl(name) => return Err(UrlRefused::Scheme(name.clone())),
        Scheme::File => {
            if !allow_file_urls {
                return Err(UrlRefused::FileUrls);
            }
            if parsed.host().is_some() || parsed.user().is_some() || parsed.port.is_some() {
                return Err(UrlRefused::FileHost);
            }
            if !parsed.path.starts_with(b"/") {
                return Err(UrlRefused::RelativePath);
            }
            return Ok(UpstreamUrl { url: parsed });
        }
        Scheme::Http | Scheme::Https | Scheme::Git | Scheme::Ssh => {}
    }

    // Network schemes: what ssh, the git daemon or an HTTP server will be handed.
    match parsed.host_as_argument() {
        gix_url::ArgumentSafety::Absent => return Err(UrlRefused::NoHost),
        gix_url::ArgumentSafety::Dangerous(_) => return Err(UrlRefused::HostDash),
        gix_url::ArgumentSafety::Usable("") => return Err(UrlRefused::NoHost),
        gix_url::ArgumentSafety::Usable(h) => {
            let name = h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !name && ip_literal(h).is_none() {
                return Err(UrlRefused::BadHost(h.to_owned()));
            }
        }
    }
    if parsed.password().is_some() {
        return Err(UrlRefused::Password);
    }
    if matches!(
        parsed.user_as_argument(),
        gix_url::ArgumentSafety::Dangerous(_)
    ) {
        return Err(UrlRefused::UserDash);
    }
    let path = &parsed.path;
    if path.is_empty() {
        return Err(UrlRefused::NoPath);
    }
    // Slash-prefixed paths through gix's own check; scp-style relative ones by hand.
    let path_safe = if path.starts_with(b"/") {
        parsed.path_argument_safe().is_some()
    } else {
        !path.starts_with(b"-")
    };
    if !path_safe {
        return Err(UrlRefused::PathDash);
    }
    match parsed.scheme {
        Scheme::Http | Scheme::Https => {
            if parsed.user().is_some() {
                return Err(UrlRefused::UserInfo("user name"));
            }
            // In the text, and also as decoded into the path (`%3F`, `%23`): either way
            // gix would build request URLs around it.
            let parts = parsed.path_query_fragment();
            if url.contains(['?', '#'])
                || parts.query.is_some()
                || parts.fragment.is_some()
                || path.contains(&b'?')
                || path.contains(&b'#')
            {
                return Err(UrlRefused::QueryOrFragment);
            }
        }
        // The git daemon has no users; a user here can only be a mistake or a disguise.
        Scheme::Git if parsed.user().is_some() => {
            return Err(UrlRefused::UserInfo("user name"));
        }
        _ => {}
    }
    Ok(UpstreamUrl { url: parsed })
}

/// The worker's `upstream_deny` (SPEC §17): address ranges it never connects to, checked
/// on every address a connection would use, after name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrPolicy {
    deny: Vec<IpNet>,
}

/// The default: link-local ranges and the cloud metadata addresses. Loopback and private
/// ranges stay allowed because internal git servers are a main use.
pub const DEFAULT_UPSTREAM_DENY: &[&str] = &[
    "169.254.0.0/16",
    "fe80::/10",
    "169.254.169.254/32",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
];

/// A connection refused by [`AddrPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream address {addr} of {host} is denied by upstream_deny ({net})")]
pub struct AddrDenied {
    pub host: String,
    pub addr: IpAddr,
    pub net: IpNet,
}

impl Default for AddrPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_UPSTREAM_DENY.iter().copied()).unwrap_or(Self { deny: Vec::new() })
    }
}

impl AddrPolicy {
    /// Nothing denied.
    pub fn allow_all() -> Self {
        Self { deny: Vec::new() }
    }

    /// CIDRs (`10.0.0.0/8`, `fc00::/7`) or single addresses; the error names the entry.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut deny = Vec::new();
        for e in entries {
            let e = e.trim();
            let net = IpNet::from_str(e)
                .or_else(|_| IpAddr::from_str(e).map(IpNet::from))
                .map_err(|_| format!("{e:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"))?;
            deny.push(net.trunc());
        }
        Ok(Self { deny })
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.deny
    }

    /// The denied range holding `addr`, if any. An IPv4-mapped IPv6 address
    /// (`::ffff:169.254.169.254`) is judged as the IPv4 address it reaches too.
    pub fn denied(&self, addr: IpAddr) -> Option<IpNet> {
        let mapped = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.deny
            .iter()
            .find(|n| n.contains(&addr) || mapped.is_some_and(|m| n.contains(&m)))
            .copied()
    }

    /// `Err` naming `host`, the address and the range when `addr` is denied.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), AddrDenied> {
        match self.denied(addr) {
            Some(net) => Err(AddrDenied {
                host: host.to_owned(),
                addr,
                net,
            }),
            None => Ok(()),
        }
    }
}

/// `host` as an IP literal (brackets around IPv6 allowed), `None` for a name.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    IpAddr::from_str(h).ok()
}

/// A repository's address as URLs are compared (SPEC §15 hooks, §16 credentials), read
/// with gix's parser like everything else about upstream URLs (see the module
/// documentation): user info, query, fragment, a default port, a `.git` suffix and
/// leading or trailing `/` are dropped, the host lowercased; the path keeps its case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoAddr {
    pub scheme: Scheme,
    /// Lowercased, an IPv6 address without brackets; empty for `file`.
    pub host: String,
    /// `None` when it is the scheme's default.
    pub port: Option<u16>,
    /// Possibly empty (a URL naming a host only, like a credential entry's prefix).
    pub path: String,
}

/// [`RepoAddr`] of `text`: `None` unless it is an `http(s)`, `ssh` (`ssh://` or scp-like
/// `[user@]host:path`), `git` URL with a host, or an absolute local path / `file://` URL.
pub fn repo_addr(text: &str) -> Option<RepoAddr> {
    let t = text.trim();
    if t.is_empty() || t.len() > 4096 || t.chars().any(char::is_control) {
        return None;
    }
    let parsed = gix_url::parse(t.as_bytes()).ok()?;
    let default_port = match &parsed.scheme {
        Scheme::Https => 443,
        Scheme::Http => 80,
        Scheme::Ssh => 22,
        Scheme::Git => 9418,
        Scheme::File => 0,
        _ => return None,
    };
    let raw = String::from_utf8_lossy(parsed.path.as_ref()).into_owned();
    // Query and fragment are not part of the repository.
    let raw = raw.split(['?', '#']).next().unwrap_or_default();
    let (host, port) = if parsed.scheme == Scheme::File {
        if !raw.starts_with('/') {
            return None;
        }
        (String::new(), None)
    } else {
        let host = parsed.host()?.trim_matches(['[', ']']).to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        (host, parsed.port.filter(|p| *p != default_port))
    };
    let p = raw.trim_matches('/');
    let path = p.strip_suffix(".git").unwrap_or(p).trim_end_matches('/');
    Some(RepoAddr {
        scheme: parsed.scheme,
        host,
        port,
        path: path.to_owned(),
    })
}

/// The form push-hook payload URLs and index URLs are compared in (SPEC §15): the same
/// repository spelt `https://github.com/A/b`, `https://github.com/A/b.git/`,
/// `ssh://git@github.com:22/A/b.git` or `git@github.com:A/b.git` gives one string,
/// `github.com/A/b` ([`RepoAddr`] without its scheme). A port that is not its scheme's
/// default stays (`host:8443/a/b`). `file://` URLs and absolute paths give
/// `file:///<path>`. `None`: not a URL of a repository (see [`repo_addr`]; no path).
pub fn normalise(text: &str) -> Option<String> {
    let a = repo_addr(text)?;
    if a.path.is_empty() {
        return None;
    }
    if a.scheme == Scheme::File {
        return Some(format!("file:///{}", a.path));
    }
    let mut out = if a.host.contains(':') {
        format!("[{}]", a.host)
    } else {
        a.host
    };
    if let Some(port) = a.port {
        out.push_str(&format!(":{port}"));
    }
    out.push('/');
    out.push_str(&a.path);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match check(url, false) {
            Ok(u) => panic!("{url:?} accepted as {u:?}"),
            Err(e) => e.to_string(),
        }
    }

    // SPEC §3.2: the schemes that pass, and what gix makes of them.
    #[test]
    fn spec_3_2_accepted_urls_report_gix_parts() {
        for (ok, scheme, host, path) in [
            (
                "https://github.com/berkeley-abc/abc",
                "https",
                "github.com",
                "/berkeley-abc/abc",
            ),
            ("http://example.org/x.git", "http", "example.org", "/x.git"),
            (
                "git://git.kernel.org/pub/scm/git/git.git",
                "git",
                "git.kernel.org",
                "/pub/scm/git/git.git",
            ),
            (
                "ssh://git@example.org:2222/x.git",
                "ssh",
                "example.org",
                "/x.git",
            ),
            (
                "git@github.com:torvalds/linux.git",
                "ssh",
                "github.com",
                "torvalds/linux.git",
            ),
            ("example.org:x.git", "ssh", "example.org", "x.git"),
            ("ssh://[::1]/repo.git", "ssh", "::1", "/repo.git"),
            ("https://[::1]:8443/r", "https", "[::1]", "/r"),
        ] {
            let u = check(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(
                (u.scheme(), u.host(), u.path()),
                (scheme, Some(host), path.as_bytes()),
                "{ok}"
            );
        }
    }

    // Issue 10 finding 3: `[a:b]/x` looked scp-style to the old check; gix reads a local
    // path, which must need allow_file_urls.
    #[test]
    fn issue10_f3_bracketed_scp_lookalike_is_a_local_path() {
        assert!(reason("[a:b]/x").contains("allow_file_urls"));
        // Bracketed, it is an ssh host `a:b` to gix: not a host name, refused.
        assert!(reason("[a:b]:/x").contains("not a host name"));
        // With file URLs on, it is still a relative path.
        assert_eq!(check("[a:b]/x", true), Err(UrlRefused::RelativePath));
    }

    // Issue 10 finding 3: a query or fragment in http(s) would put gix's path after it.
    #[test]
    fn issue10_f3_query_and_fragment_refused() {
        for bad in [
            "http://10.0.0.5/admin?x=1#",
            "http://10.0.0.5/admin#",
            "https://h/x?a=b",
            "https://h/x%3Fa=b",
            "https://h/x%23y",
        ] {
            assert!(reason(bad).contains("query or fragment"), "{bad}");
        }
    }

    // Issue 10 finding 5: option injection through host, user or path, caught by this
    // check and not only by gix's later refusal to spawn ssh.
    #[test]
    fn issue10_f5_argument_safety() {
        assert!(reason("[-oProxyCommand=x]:p").contains("host starts with '-'"));
        assert!(reason("ssh://-oX@host/p").contains("user starts with '-'"));
        assert!(reason("ssh://-oProxyCommand=x/y").contains("host starts with '-'"));
        assert!(reason("git@-oProxyCommand=id:x").contains("host starts with '-'"));
        assert!(reason("host:-x").contains("path starts with '-'"));
        assert!(reason("ssh://host/-x").contains("path starts with '-'"));
    }

    // Issue 10 finding 3: credentials in http(s) URLs are refused with a reason naming them.
    #[test]
    fn issue10_f3_user_info_refused() {
        assert!(reason("https://user@h/x").contains("user info"));
        assert!(reason("https://user:pw@h/x").contains("password"));
        assert!(reason("http://tok@10.0.0.5/x").contains("user info"));
        assert!(reason("git://u@h/x").contains("user info"));
        assert!(reason("ssh://u:pw@h/x").contains("password"));
        // ssh and scp user names stay.
        assert!(check("ssh://git@h/x", false).is_ok());
        assert!(check("git@h:x", false).is_ok());
    }

    // gix splits `git@[::1]:repo.git` at the first ':' (gix-url 0.40 "incorrectly splits
    // at IPv6"), so it is refused now where the old check accepted it: deliberate.
    #[test]
    fn scp_ipv6_is_refused_as_gix_misreads_it() {
        assert!(check("git@[::1]:repo.git", false).is_err());
    }

    #[test]
    fn spec_3_2_refusals() {
        for (bad, why) in [
            ("", "empty"),
            ("-uhttps://x", "starts with '-'"),
            ("--upload-pack=touch /tmp/x", "starts with '-'"),
            ("-oProxyCommand=x:y", "starts with '-'"),
            ("ssh://-oProxyCommand=x/y", "host starts with '-'"),
            ("https://example.org/a b", "whitespace"),
            ("https://example.org/a\tb", "whitespace"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh%20-c%20x", "ext::"),
            ("EXT::x", "ext::"),
            ("fd::3", "fd::"),
            ("https://x/ext::y", "ext::"),
            ("testgit::https://x/y", "remote-helper"),
            ("https://example.org/a\u{7f}", "control"),
            ("ftp://example.org/x", "scheme \"ftp\""),
            // gix reads an upper-case scheme as a remote helper's (`git-remote-HTTPS`).
            ("HTTPS://example.org/x", "scheme \"HTTPS\""),
            ("https:///x", "does not parse"),
            ("host:", "path"),
            ("file:///srv/git/x.git", "allow_file_urls"),
            ("/srv/git/x.git", "allow_file_urls"),
            ("../x.git", "allow_file_urls"),
        ] {
            let e = reason(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(check("file:///srv/git/x.git", true).is_ok());
        assert!(check("/srv/git/x.git", true).is_ok());
        assert_eq!(check("srv/git/x.git", true), Err(UrlRefused::RelativePath));
        assert_eq!(check("file://evil/x.git", true), Err(UrlRefused::FileHost));
    }

    // SPEC §17: the default deny list and IPv4-mapped addresses.
    #[test]
    fn spec_17_default_upstream_deny() {
        let p = AddrPolicy::default();
        for denied in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            let a: IpAddr = denied.parse().unwrap();
            assert!(p.denied(a).is_some(), "{denied}");
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.1",
            "::1",
            "140.82.112.3",
        ] {
            let a: IpAddr = allowed.parse().unwrap();
            assert_eq!(p.denied(a), None, "{allowed}");
        }
        let e = p
            .check("metadata.internal", "169.254.169.254".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("169.254.169.254") && e.contains("upstream_deny"),
            "{e}"
        );
        assert!(AddrPolicy::parse(["10.0.0.0/33"]).is_err());
        assert!(
            AddrPolicy::parse(["nonsense"])
                .unwrap_err()
                .contains("nonsense")
        );
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("example.org"), None);
    }
    // Issue 14 item 2: the spellings one upstream has in indexes and forge payloads
    // normalise alike (SPEC §15).
    #[test]
    fn spec_15_normalise_spellings() {
        for spelling in [
            "https://github.com/A/b",
            "https://github.com/A/b.git",
            "https://github.com/A/b/",
            "https://github.com/A/b.git/",
            "https://GitHub.COM/A/b",
            "https://github.com:443/A/b",
            "http://github.com/A/b",
            "https://user:pw@github.com/A/b.git",
            "git@github.com:A/b.git",
            "git@github.com:/A/b.git",
            "ssh://git@github.com/A/b.git",
            "ssh://git@github.com:22/A/b",
            "git://github.com/A/b.git",
            "https://github.com/A/b?x=1#frag",
            "  https://github.com/A/b  ",
        ] {
            assert_eq!(
                normalise(spelling).as_deref(),
                Some("github.com/A/b"),
                "{spelling}"
            );
        }
        // The path keeps its case (the caller decides about case-insensitivity).
        assert_eq!(
            normalise("https://github.com/a/b").as_deref(),
            Some("github.com/a/b")
        );
        // A port that is not the default is part of the identity.
        assert_eq!(
            normalise("https://git.example.org:8443/g/p.git").as_deref(),
            Some("git.example.org:8443/g/p")
        );
        assert_eq!(
            normalise("ssh://git@gitlab.example:2222/g/p.git").as_deref(),
            Some("gitlab.example:2222/g/p")
        );
        assert_eq!(
            normalise("http://[::1]:80/x.git").as_deref(),
            Some("[::1]/x")
        );
        assert_eq!(
            normalise("/srv/git/a.git").as_deref(),
            Some("file:///srv/git/a")
        );
        assert_eq!(
            normalise("file:///srv/git/a/").as_deref(),
            Some("file:///srv/git/a")
        );
    }

    // Issue 14: hostile or meaningless payload URLs give None, never a panic.
    #[test]
    fn spec_15_normalise_refuses_non_urls() {
        for bad in [
            "",
            "   ",
            "https://",
            "https://github.com",
            "https://github.com/",
            "https://github.com/.git",
            "ftp://github.com/a/b",
            ":a/b",
            "host:",
            "a/b:c",
            "https://github.com/a\nb",
            "relative/path",
            // git reads an upper-case scheme as a remote helper's name, not as https.
            "HTTPS://github.com/A/b",
        ] {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
        assert_eq!(normalise(&format!("https://h/{}", "a".repeat(5000))), None);
    }
}
