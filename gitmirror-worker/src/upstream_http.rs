//! gix's smart-HTTP transport on our own reqwest client (SPEC §7.3).
//!
//! gix's built-in reqwest backend turns every refused request into an error string and
//! drops the response, so the `Retry-After` header of a 429 (or 503) never reaches the
//! caller. This backend implements gix's `Http` trait itself and records what the server
//! said when it refused a request ([`Refusal`]), so a rate-limited host can be paused for
//! exactly as long as it asked. It also shares one connection pool between all fetches
//! (one runtime thread per worker instead of one per fetch) and bounds how long a read
//! may wait for data.
//!
//! Request bodies are buffered (the fetch protocol's are small) and sent when the response
//! is first read, as gix writes the whole body before reading the answer. git's `http.*`
//! configuration is not read (gix's reqwest backend ignores most of it too); the usual
//! proxy environment variables work. Redirects are followed (at most 10, never from https
//! to http, only to the same host unless `fetch.redirects: any`) and the redirected base
//! URL is reported back to gix, as git does.
//!
//! **Addresses** (`upstream_deny`, SPEC §17). Names are resolved by [`DenyResolver`],
//! which drops denied addresses and refuses a name left with none; reqwest never resolves
//! an IP literal, so literal hosts are checked before each request and on every redirect.
//! Through `HTTPS_PROXY` the target is resolved by the proxy, not here: only the proxy's
//! own address is checked then (and literal targets).

use gitmirror_common::upstream_url::{AddrPolicy, ip_literal};
use gix::bstr::BString;
use gix::protocol::transport::client::AuthenticationRequired;
use gix::protocol::transport::client::blocking_io::http::{
    GetResponse, Http, PostBodyDataKind, PostResponse,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// gix's own connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_REDIRECTS: usize = 10;
const BODY_BUFFER: usize = 64 * 1024;
/// Our `User-Agent` on every request, as the `agent` capability in the git protocol.
pub const USER_AGENT: &str = concat!("gitmirror/", env!("CARGO_PKG_VERSION"));

/// What a server said when it refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// `Retry-After`, as a duration from when the answer arrived.
    pub retry_after: Option<Duration>,
}

/// Where redirects may lead (`fetch.redirects`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirects {
    /// Only to the host (and port) of the first request: a redirect elsewhere fails.
    #[default]
    SameHost,
    /// To any host that `upstream_deny` allows.
    Any,
}

/// What an upstream connection may reach: the address policy and the redirect rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamPolicy {
    pub deny: AddrPolicy,
    pub redirects: Redirects,
}

/// The shared HTTP client: one per [`crate::mirror::Mirrors`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::blocking::Client,
    deny: Arc<AddrPolicy>,
}

impl Client {
    /// `io_timeout` bounds the wait for an answer and for each read of its body.
    ///
    /// Blocking: build it on a blocking thread, not on the async runtime.
    pub fn new(io_timeout: Duration, policy: &UpstreamPolicy) -> Result<Self, String> {
        gitmirror_common::install_crypto_provider();
        let deny = Arc::new(policy.deny.clone());
        let redirects = policy.redirects;
        let redirect_deny = deny.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error("too many redirects");
            }
            if downgrade {
                return attempt.stop();
            }
            let to = attempt.url();
            if redirects == Redirects::SameHost
                && let Some(from) = attempt.previous().first()
                && (from.host_str() != to.host_str() || from.port() != to.port())
            {
                let why = format!(
                    "redirect from {} to another host ({}) refused (fetch.redirects is same_host)",
                    origin(from),
                    origin(to)
                );
                return attempt.error(why);
            }
            if let Err(e) = check_literal(&redirect_deny, to) {
                return attempt.error(format!("redirect refused: {e}"));
            }
            attempt.follow()
        });
        let inner = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(io_timeout)
            .redirect(policy)
            .dns_resolver(Arc::new(DenyResolver { deny: deny.clone() }))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", error_chain(&e)))?;
        Ok(Self { inner, deny })
    }

    /// A backend for one gix connection; with `auth`, it sends that to its host only
    /// (SPEC §16).
    pub fn session_with(&self, auth: Option<HostAuth>) -> Session {
        Session {
            client: self.inner.clone(),
            deny: self.deny.clone(),
            auth: auth.map(Arc::new),
            refusal: Arc::new(Mutex::new(None)),
            redirected_base: None,
            redirect_sink: Arc::new(Mutex::new(None)),
        }
    }
}

/// An `Authorization` header for one host (SPEC §16): sent only to requests for that
/// host and port, over https, or over plain http when `allow_plain_http` is set.
#[derive(Debug, Clone)]
pub struct HostAuth {
    /// Lower case; IPv6 without brackets.
    pub host: String,
    /// `None`: the scheme's default port.
    pub port: Option<u16>,
    pub allow_plain_http: bool,
    pub value: gitmirror_common::credentials::Secret,
}

impl HostAuth {
    pub fn applies_to(&self, url: &str) -> bool {
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        let scheme_ok = u.scheme() == "https" || (u.scheme() == "http" && self.allow_plain_http);
        let default = match u.scheme() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let port = u.port().filter(|p| Some(*p) != default);
        let host = u
            .host_str()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase());
        scheme_ok && host.as_deref() == Some(self.host.as_str()) && port == self.port
    }
}

/// The last refusal seen by a [`Session`]; read it after gix reports an error.
#[derive(Debug, Clone)]
pub struct RefusalSink(Arc<Mutex<Option<Refusal>>>);

impl RefusalSink {
    pub fn get(&self) -> Option<Refusal> {
        *lock(&self.0)
    }
}

/// gix's `Http` for one connection.
pub struct Session {
    client: reqwest::blocking::Client,
    deny: Arc<AddrPolicy>,
    auth: Option<Arc<HostAuth>>,
    refusal: Arc<Mutex<Option<Refusal>>>,
    /// The base URL after a followed redirect, as last reported to gix.
    redirected_base: Option<String>,
    redirect_sink: Arc<Mutex<Option<String>>>,
}

impl Session {
    pub fn refusals(&self) -> RefusalSink {
        RefusalSink(self.refusal.clone())
    }

    fn exchange(
        &mut self,
        method: reqwest::Method,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: Option<Vec<u8>>,
    ) -> Arc<Mutex<Phase>> {
        let mut map = HeaderMap::new();
        for line in headers {
            if let Some((name, value)) = line.as_ref().split_once(':')
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.trim().as_bytes()),
                    HeaderValue::from_str(value.trim()),
                )
            {
                map.append(name, value);
            }
        }
        if let Some(auth) = &self.auth
            && auth.applies_to(url)
            && let Ok(mut value) = HeaderValue::from_str(auth.value.expose())
        {
            // Sensitive: kept out of reqwest's `Debug` output. reqwest itself removes it
            // when a redirect leaves the host, port or scheme.
            value.set_sensitive(true);
            map.insert(reqwest::header::AUTHORIZATION, value);
        }
        // gix names itself (`git/oxide-…`); upstream operators should see who we are.
        map.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        Arc::new(Mutex::new(Phase::Pending(Pending {
            client: self.client.clone(),
            deny: self.deny.clone(),
            method,
            url: url.to_owned(),
            base_url: base_url.to_owned(),
            headers: map,
            body,
            refusal: self.refusal.clone(),
            redirect: self.redirect_sink.clone(),
        })))
    }
}

impl Http for Session {
    type Headers = HeadersReader;
    type ResponseBody = BodyReader;
    type PostBody = PostBody;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::Result<GetResponse<HeadersReader, BodyReader>> {
        let shared = self.exchange(reqwest::Method::GET, url, base_url, headers, None);
        // Sent now, so a redirect is known before gix asks for it.
        send_if_pending(&mut lock(&shared));
        self.redirected_base = lock(&self.redirect_sink).clone();
        Ok(GetResponse {
            headers: HeadersReader::new(shared.clone()),
            body: BodyReader::new(shared),
        })
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        _body: PostBodyDataKind,
    ) -> gix::Result<PostResponse<HeadersReader, BodyReader, PostBody>> {
        let shared = self.exchange(
            reqwest::Method::POST,
            url,
            base_url,
            headers,
            Some(Vec::new()),
        );
        Ok(PostResponse {
            post_body: PostBody(shared.clone()),
            headers: HeadersReader::new(shared.clone()),
            body: BodyReader::new(shared),
        })
    }

    fn configure(&mut self, _config: &dyn std::any::Any) -> gix::Result {
        // git's http.* settings are not applied (see the module documentation).
        Ok(())
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.redirected_base.clone()
    }
}

/// One request and its answer, shared by the body writer and the two readers.
enum Phase {
    Pending(Pending),
    Answered {
        headers: Vec<u8>,
        body: Option<reqwest::blocking::Response>,
    },
    Failed(Failed),
}

struct Pending {
    client: reqwest::blocking::Client,
    deny: Arc<AddrPolicy>,
    method: reqwest::Method,
    url: String,
    base_url: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    refusal: Arc<Mutex<Option<Refusal>>>,
    redirect: Arc<Mutex<Option<String>>>,
}

/// A failed exchange, kept so every read reports it (an `io::Error` cannot be cloned).
struct Failed {
    kind: io::ErrorKind,
    message: String,
    /// `Some` for a 401: gix looks for [`AuthenticationRequired`] to ask for credentials.
    www_authenticate: Option<Vec<BString>>,
}

impl Failed {
    fn to_io(&self) -> io::Error {
        match &self.www_authenticate {
            Some(values) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                AuthenticationRequired {
                    www_authenticate: values.clone(),
                },
            ),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn send_if_pending(phase: &mut Phase) {
    let Phase::Pending(_) = phase else { return };
    let placeholder = Phase::Failed(Failed {
        kind: io::ErrorKind::Other,
        message: "request abandoned".into(),
        www_authenticate: None,
    });
    let Phase::Pending(p) = std::mem::replace(phase, placeholder) else {
        return;
    };
    *phase = send(p);
}

fn send(p: Pending) -> Phase {
    // reqwest resolves names through [`DenyResolver`] but connects to IP literals as they
    // are: check those here.
    let denied = reqwest::Url::parse(&p.url)
        .map_err(|e| format!("bad request URL {}: {e}", p.url))
        .and_then(|u| check_literal(&p.deny, &u));
    if let Err(message) = denied {
        // Not `PermissionDenied`: gix would read that as "ask for credentials".
        return Phase::Failed(Failed {
            kind: io::ErrorKind::Other,
            message,
            www_authenticate: None,
        });
    }
    let mut req = p
        .client
        .request(p.method.clone(), &p.url)
        .headers(p.headers);
    if let Some(body) = p.body {
        req = req.body(body);
    }
    let res = match req.send() {
        Ok(res) => res,
        Err(e) => {
            let kind = if e.is_timeout() {
                io::ErrorKind::TimedOut
            } else if e.is_connect() {
                io::ErrorKind::ConnectionRefused
            } else {
                io::ErrorKind::Other
            };
            return Phase::Failed(Failed {
                kind,
                message: error_chain(&e),
                www_authenticate: None,
            });
        }
    };
    if res.url().as_str() != p.url
        && let Some(tail) = p.url.strip_prefix(&p.base_url)
        && let Some(base) = res.url().as_str().strip_suffix(tail)
    {
        *lock(&p.redirect) = Some(base.to_owned());
    }
    let status = res.status();
    if status.is_success() {
        let mut headers = Vec::new();
        for (name, value) in res.headers() {
            headers.extend_from_slice(name.as_str().as_bytes());
            headers.extend_from_slice(b": ");
            headers.extend_from_slice(value.as_bytes());
            headers.push(b'\n');
        }
        return Phase::Answered {
            headers,
            body: Some(res),
        };
    }
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after").and_then(|v| parse_retry_after(v, SystemTime::now()));
    // GitHub's exhausted quota (usually a 403): a rate limit until the reset time, so it
    // is classified as a 429 with that wait (SPEC §18).
    let exhausted = ratelimit_reset(
        header("x-ratelimit-remaining"),
        header("x-ratelimit-reset"),
        SystemTime::now(),
    );
    *lock(&p.refusal) = Some(match exhausted {
        Some(wait) if retry_after.is_none() || status.as_u16() != 429 => Refusal {
            status: 429,
            retry_after: Some(wait),
        },
        _ => Refusal {
            status: status.as_u16(),
            retry_after,
        },
    });
    // gix's wording, so messages read the same whichever backend produced them.
    let message = format!("Received HTTP status {}", status.as_str());
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let values = res
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| BString::from(v.as_bytes()))
            .collect();
        return Phase::Failed(Failed {
            kind: io::ErrorKind::PermissionDenied,
            message,
            www_authenticate: Some(values),
        });
    }
    let kind = if status.is_server_error() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    };
    Phase::Failed(Failed {
        kind,
        message,
        www_authenticate: None,
    })
}

/// Where gix writes the request body; it is sent when the answer is first read.
pub struct PostBody(Arc<Mutex<Phase>>);

impl Write for PostBody {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *lock(&self.0) {
            Phase::Pending(Pending {
                body: Some(body), ..
            }) => {
                body.extend_from_slice(buf);
                Ok(buf.len())
            }
            _ => Err(io::Error::other(
                "the request was already sent; its body cannot grow",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The answer's headers, one `name: value` line each.
pub struct HeadersReader {
    shared: Arc<Mutex<Phase>>,
    lines: Option<io::Cursor<Vec<u8>>>,
}

impl HeadersReader {
    fn new(shared: Arc<Mutex<Phase>>) -> Self {
        Self {
            shared,
            lines: None,
        }
    }

    fn lines(&mut self) -> io::Result<&mut io::Cursor<Vec<u8>>> {
        if self.lines.is_none() {
            let mut phase = lock(&self.shared);
            send_if_pending(&mut phase);
            let bytes = match &mut *phase {
                Phase::Answered { headers, .. } => std::mem::take(headers),
                Phase::Failed(f) => return Err(f.to_io()),
                Phase::Pending(_) => Vec::new(),
            };
            drop(phase);
            self.lines = Some(io::Cursor::new(bytes));
        }
        match self.lines.as_mut() {
            Some(c) => Ok(c),
            None => Err(io::Error::other("headers unavailable")),
        }
    }
}

impl Read for HeadersReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lines()?.read(buf)
    }
}

impl BufRead for HeadersReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.lines()?.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Some(c) = self.lines.as_mut() {
            c.consume(amt);
        }
    }
}

/// The answer's body, streamed.
pub struct BodyReader {
    shared: Arc<Mutex<Phase>>,
    body: Option<io::BufReader<reqwest::blocking::Response>>,
    /// Taken (or there was none): reads return end of file.
    taken: bool,
}

impl BodyReader {
    fn new(shared: Arc<Mutex<Phase>>) -> Self {
        Self {
            shared,
            body: None,
            taken: false,
        }
    }

    fn body(&mut self) -> io::Result<Option<&mut io::BufReader<reqwest::blocking::Response>>> {
        if !self.taken {
            let mut phase = lock(&self.shared);
            send_if_pending(&mut phase);
            match &mut *phase {
                Phase::Answered { body, .. } => {
                    self.body = body
                        .take()
                        .map(|r| io::BufReader::with_capacity(BODY_BUFFER, r));
                }
                Phase::Failed(f) => return Err(f.to_io()),
                Phase::Pending(_) => {}
            }
            self.taken = true;
        }
        Ok(self.body.as_mut())
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.body()? {
            Some(b) => b.read(buf)?,
            None => 0,
        };
        // Counted against the fetch's size and free-space limits.
        crate::mirror::received(n)?;
        Ok(n)
    }
}

impl BufRead for BodyReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self.body()? {
            Some(b) => b.fill_buf(),
            None => Ok(&[]),
        }
    }

    fn consume(&mut self, amt: usize) {
        if let Some(b) = self.body.as_mut() {
            b.consume(amt);
        }
    }
}

/// `scheme://host[:port]` of `u`, for messages.
fn origin(u: &reqwest::Url) -> String {
    match u.port() {
        Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or_default()),
        None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()),
    }
}

/// An IP-literal host of `u` checked against `deny` (names go through [`DenyResolver`]).
fn check_literal(deny: &AddrPolicy, u: &reqwest::Url) -> Result<(), String> {
    let host = u.host_str().unwrap_or_default();
    let Some(addr) = ip_literal(host) else {
        return Ok(());
    };
    deny.check(host, addr).map_err(|e| e.to_string())
}

/// Name resolution for the upstream client: the system resolver, then `upstream_deny`
/// (SPEC §17). Denied addresses are dropped, so a connection can only use allowed ones;
/// a name with no allowed address fails with the reason.
struct DenyResolver {
    deny: Arc<AddrPolicy>,
}

impl reqwest::dns::Resolve for DenyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let deny = self.deny.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowed_addrs(&deny, &host, found)?;
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses of `host` that `deny` allows; an error naming the first denied one
/// when none is left.
pub fn allowed_addrs(
    deny: &AddrPolicy,
    host: &str,
    found: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, gitmirror_common::upstream_url::AddrDenied> {
    let mut first_denied = None;
    let mut allowed = Vec::new();
    for a in found {
        match deny.check(host, a.ip()) {
            Ok(()) => allowed.push(a),
            Err(e) => {
                tracing::debug!(host, addr = %a.ip(), "address dropped by upstream_deny");
                first_denied.get_or_insert(e);
            }
        }
    }
    match (allowed.is_empty(), first_denied) {
        (true, Some(e)) => Err(e),
        _ => Ok(allowed),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        source = err.source();
    }
    s
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (RFC 9110 §10.2.3, the date
/// in any of the three forms of §5.6.7, read by `httpdate`), as a wait from `now`. A date
/// in the past means no wait; anything else unreadable is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// GitHub's rate-limit headers: `x-ratelimit-remaining: 0` with `x-ratelimit-reset: <Unix
/// seconds>` mean "no more requests until then". The wait from `now`, or `None` when the
/// quota is not exhausted or the reset is unreadable.
pub fn ratelimit_reset(
    remaining: Option<&str>,
    reset: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if remaining?.trim() != "0" {
        return None;
    }
    let at = reset?.trim().parse::<u64>().ok()?;
    let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(at))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §18: GitHub's exhausted quota is a rate limit until its reset time.
    #[test]
    fn spec_18_github_ratelimit_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            ratelimit_reset(Some("0"), Some("1060"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            ratelimit_reset(Some("0"), Some("900"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(ratelimit_reset(Some("12"), Some("1060"), now), None);
        assert_eq!(ratelimit_reset(Some("0"), None, now), None);
        assert_eq!(ratelimit_reset(None, Some("1060"), now), None);
        assert_eq!(ratelimit_reset(Some("0"), Some("soon"), now), None);
        assert_eq!(
            ratelimit_reset(Some("0"), Some("99999999999999999999"), now),
            None
        );
    }
    use proptest::prelude::any;

    #[test]
    fn spec_7_3_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_700);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(77))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(100)
            ),
            Some(Duration::ZERO),
            "a date in the past means no wait"
        );
        for bad in [
            "",
            "-1",
            "soon",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        // The two obsolete forms a recipient must accept (RFC 9110 §5.6.7).
        for obsolete in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(
                parse_retry_after(obsolete, now),
                Some(Duration::from_secs(77)),
                "{obsolete}"
            );
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 99999999999 08:49:37 GMT", now),
            None
        );
    }

    proptest::proptest! {
        /// Whatever a server sends as `Retry-After`, reading it never panics.
        #[test]
        fn retry_after_never_panics(v in ".{0,40}", secs in 0u64..u64::MAX / 2) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs % 10_000_000_000);
            let _ = parse_retry_after(&v, now);
            let _ = parse_retry_after(&format!("Sun, {v} GMT"), now);
        }

        #[test]
        fn imf_dates_with_any_numbers_never_panic(
            d in any::<i64>(), y in any::<i64>(), h in any::<u64>(), m in any::<u64>(), s in any::<u64>()
        ) {
            let _ = parse_retry_after(&format!("Mon, {d} Jan {y} {h}:{m}:{s} GMT"), SystemTime::now());
        }
    }
}
