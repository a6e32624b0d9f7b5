//! Who may call what on the HTTP API (SPEC §9; issue 10 finding 4).
//!
//! A pure function of the request's method, path, peer and local address and headers and
//! of the configuration ([`HttpAuth`]): no I/O, so it is tested exhaustively here and
//! moves unchanged when the server under it is replaced.
//!
//! - Changes (`POST …/fetch`, `POST /api/index/{name}/accept`) need
//!   `Authorization: Bearer <api token>` whenever `api_token_file` is set, from every
//!   address, loopback included. Without a token file they are taken from loopback
//!   clients only, and only when the `Host` names this listener (or an
//!   `api_allowed_hosts` entry) and no foreign `Origin` is sent: a browser on the host can
//!   otherwise be made to post to `127.0.0.1` by any web page (CSRF), or by a page whose
//!   name is made to resolve to `127.0.0.1` (DNS rebinding, where the browser sends the
//!   attacker's name as `Host`).
//! - Reads need `Authorization: Bearer <read token or api token>` when
//!   `api_read_token_file` is set. `/healthz` is always open.
//! - Push-hook endpoints (SPEC §15, `crate::hooks`) are [`Access::Hook`]: they
//!   authenticate by their own signatures, so nothing is checked here.

use crate::api::Answer;
use crate::config::ApiToken;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// What the HTTP API checks, as configured; replaced whole on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpAuth {
    /// `api_token_file`: needed for every change, and good for reads too.
    pub api_token: Option<ApiToken>,
    /// `api_read_token_file`: when set, every read needs it (or the API token).
    pub read_token: Option<ApiToken>,
    /// `api_allowed_hosts`: further `Host` values a tokenless change may name.
    pub allowed_hosts: Vec<Authority>,
}

impl HttpAuth {
    pub fn from_config(c: &crate::Config) -> Self {
        Self {
            api_token: c.api_token.clone(),
            read_token: c.api_read_token.clone(),
            allowed_hosts: c.api_allowed_hosts.clone(),
        }
    }
}

/// A `host[:port]` as in `Host`, an `Origin` or `api_allowed_hosts`; the host in lower
/// case, an IPv6 address in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
}

impl Authority {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return Err(format!("{s:?}: '[' without ']'"));
            };
            v6.parse::<Ipv6Addr>()
                .map_err(|_| format!("{s:?}: {v6:?} is not an IPv6 address"))?;
            let port =
                match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        format!("{s:?}: only \":port\" may follow the IPv6 address")
                    })?),
                };
            (format!("[{}]", v6.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
            if host.is_empty() || !host.chars().all(ok) {
                return Err(format!("{s:?} is not host[:port]"));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("{s:?}: {p:?} is not a port number"))?,
            ),
        };
        Ok(Self { host, port })
    }

    fn of_addr(ip: IpAddr, port: u16) -> Self {
        let host = match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        Self {
            host,
            port: Some(port),
        }
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/healthz`: nothing.
    Open,
    /// `GET` and `HEAD`, and methods no route takes (answered 405): they change nothing.
    Read,
    /// `POST`, `PUT`, `PATCH` and `DELETE` on every other path: the API token, or a
    /// same-origin call from loopback. Classed by method, not by route, so that a change
    /// added later (worker approve and remove) is guarded without being listed here; a
    /// `POST` to a read-only path gets its 405 only once it passes.
    Change,
    /// A push hook (SPEC §15): authenticated by its own signature in its handler.
    Hook,
}

/// What `method path` needs.
pub fn access(method: &str, path: &str) -> Access {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] => Access::Open,
        // SPEC §15: the push-hook endpoints check their senders' signatures themselves;
        // a token or a Host check would lock the forges out.
        ["api", "hooks", ..] => Access::Hook,
        _ if matches!(method, "POST" | "PUT" | "PATCH" | "DELETE") => Access::Change,
        _ => Access::Read,
    }
}

/// The request's facts the decision rests on.
pub struct Caller<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub peer: SocketAddr,
    /// The address the client connected to (this listener's, on the interface reached).
    pub local: SocketAddr,
    pub headers: &'a [(String, String)],
}

impl Caller<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `Authorization: Bearer <t>` names one of `tokens`. Every token is compared
    /// in constant time, so the answer's timing says nothing about which nearly matched.
    fn bears(&self, tokens: &[Option<&ApiToken>]) -> bool {
        let given = self
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let mut ok = false;
        for t in tokens.iter().flatten() {
            ok |= gitmirror_wire::token::secrets_equal(given, &t.0);
        }
        ok && !given.is_empty()
    }
}

/// Allow the request, or the answer refusing it.
pub fn authorize(c: &Caller<'_>, auth: &HttpAuth) -> Result<(), Answer> {
    match access(c.method, c.path) {
        Access::Open | Access::Hook => Ok(()),
        Access::Read => match &auth.read_token {
            None => Ok(()),
            Some(read) if c.bears(&[Some(read), auth.api_token.as_ref()]) => Ok(()),
            Some(_) => Err(unauthorized(
                "missing or wrong `Authorization: Bearer <read token>` (api_read_token_file is set)",
            )),
        },
        Access::Change => match &auth.api_token {
            Some(token) if c.bears(&[Some(token)]) => Ok(()),
            Some(_) => Err(unauthorized(
                "missing or wrong `Authorization: Bearer <api token>`",
            )),
            None => same_origin_loopback(c, auth),
        },
    }
}

fn unauthorized(message: &str) -> Answer {
    Answer::error(401, message).with_header("WWW-Authenticate", "Bearer")
}

/// A change without a token file: from loopback, naming this listener, not sent by a
/// page of another origin.
fn same_origin_loopback(c: &Caller<'_>, auth: &HttpAuth) -> Result<(), Answer> {
    let ip = c.peer.ip().to_canonical();
    if !ip.is_loopback() {
        return Err(Answer::error(
            403,
            &format!(
                "changes from {ip} are refused: only loopback clients may make changes unless api_token_file is set"
            ),
        ));
    }
    let forbidden = |why: String| {
        Err(Answer::error(
            403,
            &format!("change refused: {why} (set api_token_file to allow changes with a token)"),
        ))
    };
    let Some(host_header) = c.header("host") else {
        return forbidden("no Host header".into());
    };
    let Ok(host) = Authority::parse(host_header) else {
        return forbidden(format!("Host {host_header:?} is not host[:port]"));
    };
    if !names_listener(&host, c.local, &auth.allowed_hosts) {
        return forbidden(format!(
            "Host {host_header:?} names neither this listener nor an entry of api_allowed_hosts"
        ));
    }
    if let Some(origin) = c.header("origin")
        && !same_origin(origin, &host)
    {
        return forbidden(format!("Origin {origin:?} is not this listener's ({host})"));
    }
    Ok(())
}

/// `Host` without a port means 80 (this listener speaks plain HTTP).
fn port_or_80(a: &Authority) -> u16 {
    a.port.unwrap_or(80)
}

/// Whether `host` names the listener the client reached: its address, or a loopback
/// name with its port, or an `api_allowed_hosts` entry (one without a port allows any).
fn names_listener(host: &Authority, local: SocketAddr, allowed: &[Authority]) -> bool {
    let port = port_or_80(host);
    let listener = Authority::of_addr(local.ip(), local.port());
    let loopback_name = ["localhost", "127.0.0.1", "[::1]"].contains(&host.host.as_str());
    (host.host == listener.host || loopback_name) && port == local.port()
        || allowed
            .iter()
            .any(|a| a.host == host.host && a.port.is_none_or(|p| p == port))
}

/// Whether `Origin` is the origin of `host`: same host and port (a missing port being the
/// scheme's default). `null` and anything unparsable are foreign.
fn same_origin(origin: &str, host: &Authority) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let Ok(o) = Authority::parse(rest) else {
        return false;
    };
    let o_port = o.port.unwrap_or(default);
    o.host == host.host
        && match host.port {
            Some(p) => p == o_port,
            // `Host` without a port: the origin must use its scheme's default one.
            None => o_port == default,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "127.0.0.1:8089";

    fn caller<'a>(
        method: &'a str,
        path: &'a str,
        peer: &str,
        headers: &'a [(String, String)],
    ) -> Caller<'a> {
        Caller {
            method,
            path,
            peer: peer.parse().unwrap(),
            local: LISTEN.parse().unwrap(),
            headers,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn token(t: &str) -> Option<ApiToken> {
        Some(ApiToken(t.into()))
    }

    fn status(r: Result<(), Answer>) -> u16 {
        r.map_or_else(|a| a.status, |()| 200)
    }

    const FETCH: &str = "/api/repos/a/b/c/fetch";

    fn post(headers: &[(&str, &str)], auth: &HttpAuth) -> u16 {
        let hs = h(headers);
        status(authorize(&caller("POST", FETCH, "127.0.0.1:5", &hs), auth))
    }

    #[test]
    fn what_each_path_needs() {
        assert_eq!(access("GET", "/healthz"), Access::Open);
        assert_eq!(access("POST", "/healthz"), Access::Open);
        assert_eq!(access("POST", FETCH), Access::Change);
        assert_eq!(access("POST", "/api/index/main/accept"), Access::Change);
        assert_eq!(access("GET", FETCH), Access::Read);
        assert_eq!(access("HEAD", FETCH), Access::Read);
        assert_eq!(
            access("FROBNICATE", FETCH),
            Access::Read,
            "no route takes it: 405"
        );
        // The changing methods anywhere: changes not yet routed are guarded too.
        for (m, p) in [
            ("PUT", "/api/index/main/accept"),
            ("POST", "/api/status"),
            ("DELETE", "/api/workers/1"),
            ("POST", "/api/workers/x/remove"),
            ("PATCH", "/"),
        ] {
            assert_eq!(access(m, p), Access::Change, "{m} {p}");
        }
        for p in [
            "/",
            "/metrics",
            "/api/status",
            "/api/events",
            "/api/repos/a/b/c",
            "/nope",
        ] {
            assert_eq!(access("GET", p), Access::Read, "{p}");
        }
        assert_eq!(access("POST", "/api/hooks/github"), Access::Hook);
    }

    // issue 10 finding 4 (CSRF): a page in the host's browser posts to 127.0.0.1 with its
    // own Origin. Today's code accepted it (loopback was trusted).
    #[test]
    fn issue10_f4_csrf_post_from_loopback_with_a_foreign_origin_is_refused() {
        let open = HttpAuth::default();
        for origin in [
            "http://evil.example",
            "https://evil.example:8089",
            "null",
            "http://127.0.0.1:8090",
            "file://",
            "http://127.0.0.1:8089@evil.example",
        ] {
            let got = post(&[("Host", LISTEN), ("Origin", origin)], &open);
            assert_eq!(got, 403, "{origin}");
        }
        // The same origin (the status page posting to itself) is fine.
        assert_eq!(
            post(
                &[("Host", LISTEN), ("Origin", "http://127.0.0.1:8089")],
                &open
            ),
            200
        );
        assert_eq!(
            post(
                &[
                    ("Host", "localhost:8089"),
                    ("Origin", "http://LOCALHOST:8089")
                ],
                &open
            ),
            200
        );
    }

    // issue 10 finding 4 (DNS rebinding): evil.example is made to resolve to 127.0.0.1, so
    // the browser's request is same-origin to it but carries `Host: evil.example:PORT`.
    #[test]
    fn issue10_f4_dns_rebinding_post_naming_a_foreign_host_is_refused() {
        let open = HttpAuth::default();
        for host in [
            "evil.example:8089",
            "evil.example",
            "127.0.0.1:8090",
            "localhost",
            "127.0.0.1",
            "[::2]:8089",
            "127.0.0.1:8089:1",
            "127.0.0.1:8089/x",
            "",
        ] {
            let got = post(&[("Host", host)], &open);
            assert_eq!(got, 403, "{host:?}");
            let origin = format!("http://{host}");
            assert_eq!(
                post(&[("Host", host), ("Origin", &origin)], &open),
                403,
                "{host:?}"
            );
        }
        // No Host at all: refused.
        assert_eq!(post(&[], &open), 403);
        for host in [
            "127.0.0.1:8089",
            "localhost:8089",
            "LocalHost:8089",
            "[::1]:8089",
        ] {
            assert_eq!(post(&[("Host", host)], &open), 200, "{host}");
        }
        // api_allowed_hosts: with a port only that port, without one any.
        let allowed = HttpAuth {
            allowed_hosts: vec![
                Authority::parse("mirror.example:8089").unwrap(),
                Authority::parse("proxy.example").unwrap(),
            ],
            ..HttpAuth::default()
        };
        assert_eq!(post(&[("Host", "mirror.example:8089")], &allowed), 200);
        assert_eq!(post(&[("Host", "mirror.example:80")], &allowed), 403);
        assert_eq!(post(&[("Host", "proxy.example")], &allowed), 200);
        // Behind a TLS proxy: Host without a port, the origin on its scheme's default port.
        assert_eq!(
            post(
                &[
                    ("Host", "proxy.example"),
                    ("Origin", "https://proxy.example")
                ],
                &allowed
            ),
            200
        );
        assert_eq!(
            post(
                &[
                    ("Host", "proxy.example"),
                    ("Origin", "https://proxy.example:8443")
                ],
                &allowed
            ),
            403
        );
        assert_eq!(
            post(
                &[
                    ("Host", "proxy.example"),
                    ("Origin", "http://proxy.example")
                ],
                &allowed
            ),
            200
        );
        assert_eq!(post(&[("Host", "evil.example:8089")], &allowed), 403);
    }

    // SPEC §9 as issue 10 wrote it: with api_token_file set, the token is needed from every
    // address, loopback included. Today's code let loopback through without it.
    #[test]
    fn issue10_f4_loopback_post_without_the_token_is_refused_when_a_token_file_is_set() {
        let locked = HttpAuth {
            api_token: token("s3cret"),
            ..HttpAuth::default()
        };
        for peer in [
            "127.0.0.1:5",
            "[::1]:5",
            "[::ffff:127.0.0.1]:5",
            "10.0.0.1:5",
        ] {
            for (auth, want) in [
                (None, 401),
                (Some("Bearer wrong"), 401),
                (Some("Bearer "), 401),
                (Some("s3cret"), 401),
                (Some("Basic s3cret"), 401),
                (Some("Bearer s3cre"), 401),
                (Some("Bearer s3cret"), 200),
            ] {
                let mut hs = h(&[("Host", LISTEN)]);
                if let Some(a) = auth {
                    hs.push(("Authorization".into(), a.into()));
                }
                let got = status(authorize(&caller("POST", FETCH, peer, &hs), &locked));
                assert_eq!(got, want, "{peer} {auth:?}");
            }
        }
        // With the token the Host and Origin do not matter: a page cannot set the header.
        let hs = h(&[("Authorization", "Bearer s3cret"), ("Origin", "null")]);
        assert_eq!(
            status(authorize(
                &caller("POST", FETCH, "10.0.0.1:5", &hs),
                &locked
            )),
            200
        );
        // 401 answers say how to authenticate.
        let a = authorize(&caller("POST", FETCH, "127.0.0.1:5", &[]), &locked).unwrap_err();
        assert!(
            a.headers
                .iter()
                .any(|(k, v)| *k == "WWW-Authenticate" && v == "Bearer")
        );
    }

    // SPEC §9: without a token file, changes only from loopback (403 naming the rule).
    #[test]
    fn spec_9_changes_from_other_addresses_need_a_token_file() {
        let open = HttpAuth::default();
        let hs = h(&[("Host", LISTEN)]);
        let a = authorize(&caller("POST", FETCH, "10.0.0.1:5", &hs), &open).unwrap_err();
        assert_eq!(a.status, 403);
        assert!(String::from_utf8_lossy(&a.body).contains("only loopback clients"));
    }

    // SPEC §9 `api_read_token_file`: every read but /healthz needs the read or the API
    // token; changes still need the API token itself.
    #[test]
    fn spec_9_read_token_guards_every_read() {
        let guarded = HttpAuth {
            api_token: token("writer"),
            read_token: token("reader"),
            ..HttpAuth::default()
        };
        let paths = [
            "/",
            "/metrics",
            "/api/status",
            "/api/events",
            "/api/index",
            "/api/repos/a/b/c",
            "/nope",
        ];
        for path in paths {
            for (auth, want) in [
                (None, 401),
                (Some("Bearer nope"), 401),
                (Some("Bearer reader"), 200),
                (Some("Bearer writer"), 200),
            ] {
                let hs = auth.map(|a| h(&[("Authorization", a)])).unwrap_or_default();
                let got = status(authorize(&caller("GET", path, "10.0.0.1:5", &hs), &guarded));
                assert_eq!(got, want, "{path} {auth:?}");
            }
        }
        assert_eq!(
            status(authorize(
                &caller("GET", "/healthz", "10.0.0.1:5", &[]),
                &guarded
            )),
            200
        );
        let hs = h(&[("Authorization", "Bearer reader")]);
        assert_eq!(
            status(authorize(
                &caller("POST", FETCH, "127.0.0.1:5", &hs),
                &guarded
            )),
            401
        );
        // Without a read token, reads stay open.
        let open = HttpAuth::default();
        assert_eq!(
            status(authorize(
                &caller("GET", "/api/status", "10.0.0.1:5", &[]),
                &open
            )),
            200
        );
        // A read token alone (no API token): changes fall back to same-origin loopback.
        let read_only = HttpAuth {
            read_token: token("reader"),
            ..HttpAuth::default()
        };
        assert_eq!(post(&[("Host", LISTEN)], &read_only), 200);
    }

    #[test]
    fn authorities_parse_or_say_why_not() {
        assert_eq!(
            Authority::parse("Mirror.Example:8089"),
            Ok(Authority {
                host: "mirror.example".into(),
                port: Some(8089)
            })
        );
        assert_eq!(
            Authority::parse("[::1]"),
            Ok(Authority {
                host: "[::1]".into(),
                port: None
            })
        );
        for bad in [
            "", ":80", "a:", "a:0", "a:65536", "a b", "a/b", "[::1", "[zz]:1", "[::1]x", "a:1:2",
            "a@b",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad:?}");
        }
    }

    // The listener reached on another interface (bound to 0.0.0.0) is named by that
    // interface's address, and IPv6 listeners in brackets.
    #[test]
    fn the_listener_is_named_by_the_address_reached() {
        let hs = h(&[("Host", "[::1]:9000")]);
        let c = Caller {
            local: "[::1]:9000".parse().unwrap(),
            ..caller("POST", FETCH, "[::1]:5", &hs)
        };
        assert_eq!(status(authorize(&c, &HttpAuth::default())), 200);
        let hs = h(&[("Host", "127.0.0.1:9000")]);
        let c = Caller {
            local: "127.0.0.1:8089".parse().unwrap(),
            ..caller("POST", FETCH, "127.0.0.1:5", &hs)
        };
        assert_eq!(status(authorize(&c, &HttpAuth::default())), 403);
    }

    use proptest::prelude::*;

    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("127.0.0.1:8089".to_owned()),
            Just("localhost:8089".to_owned()),
            Just("http://127.0.0.1:8089".to_owned()),
            Just("Bearer s3cret".to_owned()),
            Just("null".to_owned()),
            "[ -~]{0,24}",
            "(https?://)?[a-z0-9.:\\[\\]@-]{0,20}",
        ]
    }

    proptest! {
        // issue 10 finding 4, whatever a client sends: with a token file, a change passes
        // only with exactly `Bearer <token>`; without one, only from loopback with a Host
        // that is one of the listener's names and an Origin that is absent or its own.
        #[test]
        fn issue10_f4_no_header_combination_gets_past_the_checks(
            host in proptest::option::of(header_value()),
            origin in proptest::option::of(header_value()),
            authorization in proptest::option::of(header_value()),
            loopback in any::<bool>(),
            method in prop_oneof![Just("POST"), Just("PUT"), Just("DELETE"), Just("PATCH")],
        ) {
            let mut hs = Vec::new();
            for (k, v) in [("Host", &host), ("Origin", &origin), ("Authorization", &authorization)] {
                if let Some(v) = v {
                    hs.push((k.to_owned(), v.clone()));
                }
            }
            let peer = if loopback { "127.0.0.1:5" } else { "192.0.2.1:5" };
            let c = caller(method, FETCH, peer, &hs);
            let locked = HttpAuth { api_token: token("s3cret"), ..HttpAuth::default() };
            let bearer_ok = authorization.as_deref().map(str::trim) == Some("Bearer s3cret");
            prop_assert_eq!(authorize(&c, &locked).is_ok(), bearer_ok);
            let open_ok = authorize(&c, &HttpAuth::default()).is_ok();
            let own = ["127.0.0.1:8089", "localhost:8089"];
            let host_ok = host.as_deref().is_some_and(|h| own.contains(&h.to_ascii_lowercase().as_str()));
            let origin_ok = origin.as_deref().is_none_or(|o| {
                own.iter().any(|h| o.eq_ignore_ascii_case(&format!("http://{h}")))
            });
            prop_assert!(!open_ok || (loopback && host_ok && origin_ok), "{:?}", hs);
        }
    }
}
