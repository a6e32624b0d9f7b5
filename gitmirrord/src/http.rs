//! The HTTP API server (SPEC §9) on hyper's HTTP/1.1 server.
//!
//! hyper reads and checks the request head (docs/design.md "HTTP on hyper (issue 11)"):
//! at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] header lines, read within [`DEADLINE`],
//! a request line and headers as RFC 9112 has them; it answers a head it cannot take with
//! a bare 400 or 431 and closes. The bounds that are ours: at most [`MAX_CONNECTIONS`]
//! connections at once (when all are taken, a new one displaces the connection that has
//! waited longest without sending its request head, so idle clients cannot lock others
//! out; only when every connection is past its head is a new one answered 503 and
//! closed), a body of at most [`MAX_BODY`] bytes announced by `Content-Length` (chunked
//! bodies are refused) and read within [`DEADLINE`], one `Host` and one `Origin`. Each
//! connection is its own task, so a slow client only holds its own slot. One request per
//! connection (`Connection: close`).
//!
//! Long-polls (`GET /api/events?wait=SECS`) give their connection slot back and take one
//! of [`MAX_LONG_POLLS`] long-poll slots instead (503 with `Retry-After` when none is
//! free), so waiting clients never crowd out the others. They wait on the last event
//! number published by the main loop through a `watch`, never on the loop itself; the
//! read deadline covers only reading the request.
//!
//! Who may ask what is decided by [`crate::http_auth`] once the request is read (its size
//! and shape checked) and before anything is routed.
//!
//! Fleet state is owned by the main loop: queries travel there as [`HttpCall`]s and come
//! back as [`Reply`]s, whose JSON is encoded here on a blocking thread, off the loop.
//! Events are read from the shared log, index state from the poller's handle.

use crate::api::{
    Answer, DEFAULT_LIMIT, DEFAULT_REPO_IDS, IdsPage, MAX_LIMIT, MAX_OFFSET, Query, Reply,
    RepoFilter,
};
use crate::events::EventLog;
use crate::fleet::RepoState;
use crate::http_auth::{Caller, HttpAuth};
use crate::index::IndexError;
use crate::poller::{AcceptError, IndexHandle};
use crate::refs_query::RefsRequest;
use gitmirror_common::now_ms;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

pub const MAX_CONNECTIONS: usize = 64;
/// Long-polls waiting at once (besides the [`MAX_CONNECTIONS`] ordinary slots).
pub const MAX_LONG_POLLS: usize = 64;
/// The longest `wait=` honoured; larger values are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_BODY: usize = 1 << 20;
pub const DEADLINE: Duration = Duration::from_secs(10);
pub const MAX_HEADERS: usize = 100;

/// A question for the main loop.
pub struct HttpCall {
    pub query: Query,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Clone)]
pub struct HttpCtx {
    pub calls: mpsc::Sender<HttpCall>,
    pub events: Arc<Mutex<EventLog>>,
    /// The sequence number of the newest durable event, published by the main loop.
    pub last_seq: watch::Receiver<u64>,
    pub index: IndexHandle,
    /// Tokens and allowed hosts (SPEC §9); replaced on SIGHUP.
    pub auth: Arc<RwLock<HttpAuth>>,
    /// Push hooks (SPEC §15): settings, per-source limit, counters.
    pub hooks: Arc<crate::hooks::HookGate>,
    /// `hooks_listen`: serve `POST /api/hooks/{name}` and nothing else.
    pub hooks_only: bool,
}

impl HttpCtx {
    /// Allow `req`, or the answer refusing it ([`crate::http_auth`]).
    fn authorize(&self, req: &Request) -> Result<(), Answer> {
        let caller = Caller {
            method: &req.method,
            path: &req.path,
            peer: req.peer,
            local: req.local,
            headers: &req.headers,
        };
        let verdict = match self.auth.read() {
            Ok(a) => crate::http_auth::authorize(&caller, &a),
            Err(e) => crate::http_auth::authorize(&caller, &e.into_inner()),
        };
        if let Err(a) = &verdict {
            // Debug only: anyone who can connect could otherwise fill the log.
            tracing::debug!(
                "HTTP {} {:?} from {} refused ({})",
                req.method,
                req.path,
                req.peer,
                a.status
            );
        }
        verdict
    }
}

pub struct HttpServer {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    /// Stop accepting; open connections finish their request and close, until the
    /// server is dropped.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start serving on `listener` (already bound by the caller).
pub fn start(listener: std::net::TcpListener, ctx: HttpCtx) -> std::io::Result<HttpServer> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let long_polls = Arc::new(Semaphore::new(MAX_LONG_POLLS));
    let ctx = Arc::new(ctx);
    let (stop, mut stopping) = watch::channel(false);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(DEADLINE)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(false)
        // A client may send its request and shut its side; it still gets the answer.
        .half_close(true)
        .title_case_headers(true);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        // Connections that have not sent their request head yet, oldest first.
        let mut reading: VecDeque<Weak<Waiting>> = VecDeque::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopping.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            reading.retain(|w| w.upgrade().is_some_and(|w| !w.past_head()));
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => make_room(&mut reading, &slots).await,
            };
            let Some(permit) = permit else {
                let a = Answer::error(503, "too many connections; try again");
                let _ = stream.try_write(&bare_response(&a));
                continue;
            };
            let waiting = Arc::new(Waiting::default());
            reading.push_back(Arc::downgrade(&waiting));
            let conn = Conn {
                ctx: ctx.clone(),
                peer,
                // Unknown (never seen in practice): no Host can name it, so tokenless
                // changes are refused.
                local: stream
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                slot: Mutex::new(Some(permit)),
                long_polls: long_polls.clone(),
                waiting: waiting.clone(),
            };
            let http1 = http1.clone();
            let stopping = stopping.clone();
            conns.spawn(serve(http1, stream, Arc::new(conn), waiting, stopping));
        }
        // Stopping: no new connections; those open finish their request (bounded by
        // DEADLINE) unless the server is dropped first.
        while conns.join_next().await.is_some() {}
    });
    Ok(HttpServer { task, stop })
}

/// A connection that has not sent its request head yet can be displaced.
#[derive(Default)]
struct Waiting {
    /// Set once hyper has read the request head.
    head_read: std::sync::atomic::AtomicBool,
    displace: tokio::sync::Notify,
}

impl Waiting {
    fn past_head(&self) -> bool {
        self.head_read.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Every connection slot is taken: displace the connection that has waited longest
/// without sending its request head and take its slot. A client sends its request as
/// soon as it connects, so only idle or stalled ones are displaced. `None` when every
/// connection is past its head.
async fn make_room(
    reading: &mut VecDeque<Weak<Waiting>>,
    slots: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    let oldest = std::iter::from_fn(|| reading.pop_front())
        .filter_map(|w| w.upgrade())
        .find(|w| !w.past_head())?;
    oldest.displace.notify_one();
    tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// What a connection's requests share.
struct Conn {
    ctx: Arc<HttpCtx>,
    peer: SocketAddr,
    /// The address the client connected to: the `Host` of a change must name it.
    local: SocketAddr,
    /// The connection slot, held until the connection ends, or traded for a long-poll slot.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    long_polls: Arc<Semaphore>,
    waiting: Arc<Waiting>,
}

/// A response as hyper writes it.
type Resp = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;
/// Ends the connection without an answer (a body that never arrived whole).
type ServeError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(
    http1: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    conn: Arc<Conn>,
    waiting: Arc<Waiting>,
    mut stopping: watch::Receiver<bool>,
) {
    let served = conn.clone();
    let service = hyper::service::service_fn(move |req| handle(req, served.clone()));
    let mut http = http1.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut stop_seen = false;
    loop {
        tokio::select! {
            _ = &mut http => break,
            _ = waiting.displace.notified(), if !waiting.past_head() => {
                // Displaced by a newer connection while this one had not sent its head.
                let a = Answer::error(503, "too many connections; this one was idle the longest");
                let _ = http.into_parts().io.into_inner().try_write(&bare_response(&a));
                break;
            }
            _ = stopping.changed(), if !stop_seen => {
                stop_seen = true;
                std::pin::Pin::new(&mut http).graceful_shutdown();
            }
        }
    }
    // The slot, unless a long-poll traded it.
    drop(conn.slot.lock().map(|mut s| s.take()));
}

/// Serve one request hyper has read the head of.
async fn handle(req: hyper::Request<Incoming>, conn: Arc<Conn>) -> Result<Resp, ServeError> {
    conn.waiting
        .head_read
        .store(true, std::sync::atomic::Ordering::Release);
    let (parts, body) = req.into_parts();
    let mut req = match Request::from_head(&parts, conn.peer, conn.local) {
        Ok(r) => r,
        Err(a) => return Ok(response(a, None)),
    };
    // SPEC §15: a hook call is limited per source and by size before its body is read;
    // the hooks listener serves nothing else.
    let hook = crate::hooks::hook_name(&req.path).is_some();
    if conn.ctx.hooks_only && !hook {
        return Ok(response(Answer::error(404, "not found"), None));
    }
    if hook {
        let announced = hyper::body::Body::size_hint(&body).lower();
        let peer = conn.peer.ip();
        if let Err(a) = conn
            .ctx
            .hooks
            .admit(peer, &req.headers, announced, now_ms())
        {
            return Ok(response(a, None));
        }
    }
    if parts.headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        let a = Answer::error(411, "chunked bodies are not accepted; send Content-Length");
        return Ok(response(a, None));
    }
    if hyper::body::Body::size_hint(&body).lower() > MAX_BODY as u64 {
        let a = Answer::error(413, &format!("request body exceeds {MAX_BODY} bytes"));
        return Ok(response(a, None));
    }
    // The whole body before anything is acted on: a request cut short is not served.
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    req.body = match tokio::time::timeout(DEADLINE, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes().to_vec(),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Ok(response(
                Answer::error(408, "request not received in time"),
                None,
            ));
        }
    };
    let ctx = &conn.ctx;
    // Size and shape were checked while reading; who may ask comes next, before any work.
    let checked = ctx.authorize(&req);
    let (answer, allow) = match checked.map(|()| long_poll_wait(&req)) {
        Err(a) => (a, None),
        Ok(Some(Ok(wait))) => match conn.long_polls.clone().try_acquire_owned() {
            Ok(lp) => {
                // Trade the connection slot for the long-poll slot while waiting.
                drop(conn.slot.lock().map(|mut s| s.take()));
                let a = long_poll(&req, ctx, wait).await;
                drop(lp);
                (a, None)
            }
            Err(_) => (
                Answer::error(
                    503,
                    &format!("{MAX_LONG_POLLS} long-polls are waiting already; try again"),
                )
                .with_header("Retry-After", "1"),
                None,
            ),
        },
        Ok(Some(Err(a))) => (a, None),
        Ok(None) => dispatch(&req, ctx).await,
    };
    Ok(response(answer, allow))
}

fn response(a: Answer, allow: Option<&str>) -> Resp {
    let mut r = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(a.body)));
    *r.status_mut() =
        hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    let mut add = |k: &str, v: &str| {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    };
    add("Content-Type", a.content_type);
    add("Cache-Control", "no-store");
    add("Connection", "close");
    if let Some(allow) = allow {
        add("Allow", allow);
    }
    for (k, v) in a.headers {
        add(k, &v);
    }
    r
}

/// A whole response written straight to a socket hyper does not serve (a connection
/// turned away).
fn bare_response(a: &Answer) -> Vec<u8> {
    let status = hyper::StatusCode::from_u16(a.status).ok();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        a.status,
        status.and_then(|s| s.canonical_reason()).unwrap_or(""),
        a.content_type,
        a.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&a.body);
    out
}

/// A request as the router sees it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path; the whole target when it is not a path (`*`,
    /// `http://host/…`, `host:port`), which no route takes.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
    /// The address the client connected to: the `Host` of a change must name it.
    pub local: SocketAddr,
}

impl Request {
    /// What hyper read, checked for what hyper allows and we do not: header values that
    /// are not UTF-8, more than one `Host` or `Origin`, bad percent-encoding.
    fn from_head(
        parts: &hyper::http::request::Parts,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Self, Answer> {
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (k, v) in &parts.headers {
            let v = std::str::from_utf8(v.as_bytes())
                .map_err(|_| Answer::error(400, &format!("header {k} is not UTF-8")))?;
            headers.push((k.as_str().to_owned(), v.to_owned()));
        }
        // Two of these would let what the Host and Origin checks (SPEC §9) look at differ
        // from what another reader of the request sees (RFC 9112 §3.2: 400 for more than
        // one Host). hyper refuses two different Content-Lengths itself.
        for name in [hyper::header::HOST, hyper::header::ORIGIN] {
            if parts.headers.get_all(&name).iter().count() > 1 {
                return Err(Answer::error(400, &format!("more than one {name}")));
            }
        }
        let uri = &parts.uri;
        let (path, raw_query) = if uri.scheme().is_none() && uri.authority().is_none() {
            let path =
                percent_decode(uri.path()).ok_or_else(|| Answer::error(400, "malformed path"))?;
            (path, uri.query().unwrap_or(""))
        } else {
            (uri.to_string(), "")
        };
        let mut query = Vec::new();
        for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " "));
            match (dec(k), dec(v)) {
                (Some(k), Some(v)) => query.push((k, v)),
                _ => return Err(Answer::error(400, "malformed query string")),
            }
        }
        Ok(Request {
            method: parts.method.as_str().to_owned(),
            path,
            query,
            headers,
            body: Vec::new(),
            peer,
            local,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn method_not_allowed(allow: &'static str) -> (Answer, Option<&'static str>) {
    (
        Answer::error(405, &format!("method not allowed; use {allow}")),
        Some(allow),
    )
}

/// Check and route one request. Returns the answer and, for a 405, the allowed method.
pub async fn route(req: &Request, ctx: &HttpCtx) -> (Answer, Option<&'static str>) {
    if let Err(a) = ctx.authorize(req) {
        return (a, None);
    }
    dispatch(req, ctx).await
}

/// Route one request [`HttpCtx::authorize`] has let through.
async fn dispatch(req: &Request, ctx: &HttpCtx) -> (Answer, Option<&'static str>) {
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let get = req.method == "GET";
    let post = req.method == "POST";
    match segs.as_slice() {
        ["api", "hooks", name] => (hook(req, name, ctx).await, None),
        _ if ctx.hooks_only => (Answer::error(404, "not found"), None),
        ["healthz"] if get => (Answer::text(200, "ok\n"), None),
        ["healthz"] => method_not_allowed("GET"),
        [""] if get => (ask(ctx, Query::Page).await, None),
        [""] => method_not_allowed("GET"),
        ["repos"] if get => {
            let q = req.param("q").unwrap_or("").trim().to_owned();
            let after = cursor(req);
            let url_after = req
                .param("url_after")
                .filter(|a| !a.is_empty())
                .map(str::to_owned);
            // The URL scan runs here, on a blocking thread, never on the main loop.
            let snapshot = ctx.index.urls();
            let (q2, a2) = (q.clone(), url_after.clone());
            let urls = tokio::task::spawn_blocking(move || {
                snapshot.search(&q2, a2.as_deref(), crate::repo_page::SEARCH_PAGE)
            })
            .await
            .unwrap_or_default();
            let query = Query::RepoSearch {
                q,
                after,
                urls,
                url_after,
            };
            (ask(ctx, query).await, None)
        }
        ["repos"] => method_not_allowed("GET"),
        ["repos", a, b, c] if get => (
            ask(ctx, Query::RepoPage(format!("{a}/{b}/{c}"))).await,
            None,
        ),
        ["repos", _, _, _] => method_not_allowed("GET"),
        ["metrics"] if get => (ask(ctx, Query::Metrics).await, None),
        ["metrics"] => method_not_allowed("GET"),
        ["api", "status"] if get => (ask(ctx, Query::Status).await, None),
        ["api", "workers"] if get => (ask(ctx, Query::Workers).await, None),
        ["api", "workers", "pending"] if get => (ask(ctx, Query::Pending).await, None),
        ["api", "workers", w, action @ ("drain" | "undrain")] => {
            if !post {
                return method_not_allowed("POST");
            }
            let q = Query::Drain {
                worker: (*w).to_owned(),
                drain: *action == "drain",
            };
            (ask(ctx, q).await, None)
        }
        ["api", "workers", uuid, action @ ("approve" | "remove")] => {
            if !post {
                return method_not_allowed("POST");
            }
            match uuid.parse::<uuid::Uuid>() {
                Ok(u) if *action == "approve" => (ask(ctx, Query::Approve(u)).await, None),
                Ok(u) => (ask(ctx, Query::Remove(u)).await, None),
                Err(_) => (
                    Answer::error(400, &format!("{uuid:?} is not a worker uuid")),
                    None,
                ),
            }
        }
        ["api", "workers", id] if get => match id.parse::<u32>() {
            Ok(id) => match ids_page(req) {
                Ok(p) => (ask(ctx, Query::Worker(id, p)).await, None),
                Err(a) => (a, None),
            },
            Err(_) => (
                Answer::error(404, &format!("no worker with id {id:?}")),
                None,
            ),
        },
        ["api", "status"] | ["api", "workers"] | ["api", "workers", _] => method_not_allowed("GET"),
        ["api", "repos"] if get => match repo_filter(req) {
            Ok(f) => (ask(ctx, Query::Repos(f)).await, None),
            Err(a) => (a, None),
        },
        ["api", "repos"] => method_not_allowed("GET"),
        ["api", "repos", a, b, c, "fetch"] => {
            if !post {
                return method_not_allowed("POST");
            }
            (ask(ctx, Query::Fetch(format!("{a}/{b}/{c}"))).await, None)
        }
        ["api", "repos", a, b, c, "block"] => {
            if !post {
                return method_not_allowed("POST");
            }
            match block_reason(&req.body) {
                Ok(reason) => {
                    let q = Query::Block {
                        id: format!("{a}/{b}/{c}"),
                        reason,
                        by: caller(req),
                    };
                    (ask(ctx, q).await, None)
                }
                Err(a) => (a, None),
            }
        }
        ["api", "repos", a, b, c, "unblock"] => {
            if !post {
                return method_not_allowed("POST");
            }
            (ask(ctx, Query::Unblock(format!("{a}/{b}/{c}"))).await, None)
        }
        ["api", "repos", a, b, c, "refs"] => {
            if !get {
                return method_not_allowed("GET");
            }
            match RefsRequest::parse(
                format!("{a}/{b}/{c}"),
                req.param("after"),
                req.param("limit"),
            ) {
                Ok(r) => (ask(ctx, Query::Refs(r)).await, None),
                Err(a) => (a, None),
            }
        }
        ["api", "repos", a, b, c] if get => {
            (ask(ctx, Query::Repo(format!("{a}/{b}/{c}"))).await, None)
        }
        ["api", "repos", _, _, _] => method_not_allowed("GET"),
        ["api", "index"] if get => (ask(ctx, Query::Index).await, None),
        ["api", "index"] => method_not_allowed("GET"),
        ["api", "index", name, "accept"] => {
            if !post {
                return method_not_allowed("POST");
            }
            (accept(ctx, name).await, None)
        }
        ["api", "events"] => {
            if !get {
                return method_not_allowed("GET");
            }
            (events(req, ctx).await, None)
        }
        _ => (
            Answer::error(404, &format!("no such path {:?}", req.path)),
            None,
        ),
    }
}

/// The longest block reason kept (it is logged and shown on the repo page).
pub const MAX_BLOCK_REASON: usize = 500;

/// `{"reason": "…"}` of `POST /api/repos/{id}/block`: required, non-empty, bounded.
fn block_reason(body: &[u8]) -> Result<String, Answer> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        reason: String,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        Answer::error(
            400,
            &format!("the body must be {{\"reason\": \"…\"}} (JSON): {e}"),
        )
    })?;
    let reason = b.reason.trim();
    if reason.is_empty() {
        return Err(Answer::error(400, "a block needs a reason"));
    }
    if reason.len() > MAX_BLOCK_REASON {
        return Err(Answer::error(
            400,
            &format!("the reason is longer than {MAX_BLOCK_REASON} bytes"),
        ));
    }
    Ok(reason.to_owned())
}

/// Who made a change, as recorded with a block: the peer address, and whether it
/// carried a bearer token (the only identity the API knows, SPEC §9).
fn caller(req: &Request) -> String {
    let token = req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if token {
        format!("API token from {}", req.peer.ip())
    } else {
        format!("{} (loopback, no token)", req.peer.ip())
    }
}

fn number(req: &Request, name: &str, default: usize) -> Result<usize, Answer> {
    match req.param(name) {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            Answer::error(400, &format!("{name}={v:?} is not a non-negative integer"))
        }),
    }
}

fn repo_filter(req: &Request) -> Result<RepoFilter, Answer> {
    let state = match req.param("state") {
        None | Some("") => None,
        Some(s) => Some(RepoState::parse(s).ok_or_else(|| {
            Answer::error(
                400,
                &format!(
                    "state={s:?} is not one of {}",
                    RepoState::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let worker = match req.param("worker") {
        None | Some("") => None,
        Some(w) => Some(
            w.parse::<u32>()
                .map_err(|_| Answer::error(400, &format!("worker={w:?} is not a worker id")))?,
        ),
    };
    let offset = number(req, "offset", 0)?;
    if offset > MAX_OFFSET {
        return Err(Answer::error(
            400,
            &format!(
                "offset={offset} is beyond {MAX_OFFSET}: page with after=<last repo id> (the answer's \"next\")"
            ),
        ));
    }
    Ok(RepoFilter {
        state,
        worker,
        after: cursor(req),
        limit: number(req, "limit", DEFAULT_LIMIT)?.min(MAX_LIMIT),
        offset,
    })
}

/// `after=`: a repo id (any string; ids sort as strings).
fn cursor(req: &Request) -> Option<String> {
    req.param("after")
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
}

/// `after` and `limit` of `/api/workers/{id}`'s `repo_ids`.
fn ids_page(req: &Request) -> Result<IdsPage, Answer> {
    Ok(IdsPage {
        after: cursor(req),
        limit: number(req, "limit", DEFAULT_REPO_IDS)?.min(MAX_LIMIT),
    })
}

/// `POST /api/hooks/{name}` (SPEC §15): checked here, matched by the main loop.
async fn hook(req: &Request, name: &str, ctx: &HttpCtx) -> Answer {
    let checked = ctx.hooks.check(
        &req.method,
        name,
        &req.headers,
        &req.body,
        req.peer.ip(),
        now_ms(),
    );
    match checked {
        Ok(urls) => ask(ctx, Query::Hook(urls)).await,
        Err(a) => a,
    }
}

async fn ask(ctx: &HttpCtx, query: Query) -> Answer {
    let (reply, rx) = oneshot::channel();
    match tokio::time::timeout(DEADLINE, ctx.calls.send(HttpCall { query, reply })).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Answer::error(503, "the coordinator is shutting down"),
        Err(_) => return Answer::error(503, "the coordinator is busy; try again"),
    }
    let reply = match tokio::time::timeout(DEADLINE, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Answer::error(503, "the coordinator is shutting down"),
        Err(_) => return Answer::error(503, "the coordinator is busy; try again"),
    };
    let reply = match reply {
        // A worker answers (`GET /api/repos/{id}/refs`): the wait is here, not on the loop.
        Reply::Await {
            answer,
            deadline,
            late,
        } => match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Answer::error(503, "the coordinator is shutting down"),
            Err(_) => return late,
        },
        r => r,
    };
    match reply {
        Reply::Ready(a) => a,
        // Encoding a big page takes milliseconds: not on the async threads.
        r => tokio::task::spawn_blocking(move || r.finish())
            .await
            .unwrap_or_else(|e| Answer::error(500, &format!("cannot encode the answer: {e}"))),
    }
}

async fn accept(ctx: &HttpCtx, name: &str) -> Answer {
    match ctx.index.accept(name).await {
        Ok(()) => Answer::json(200, &serde_json::json!({ "accepted": name })),
        Err(AcceptError::Index(IndexError::Unknown(n))) => {
            Answer::error(404, &format!("no index named {n:?}"))
        }
        Err(AcceptError::Index(IndexError::NothingHeld(n))) => {
            Answer::error(409, &format!("index {n:?} has no held update"))
        }
        Err(e) => Answer::error(503, &e.to_string()),
    }
}

/// `since` and `limit` of `GET /api/events`.
fn events_range(req: &Request) -> Result<(u64, usize), Answer> {
    let since = match req.param("since") {
        None | Some("") => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Answer::error(400, &format!("since={v:?} is not an event number")))?,
    };
    let limit = number(req, "limit", DEFAULT_LIMIT)?.clamp(1, MAX_LIMIT);
    Ok((since, limit))
}

/// `Some` when `req` is a long-poll: `GET /api/events` with `wait` above 0 (capped at
/// [`MAX_WAIT`]), or the answer to a malformed `wait`.
fn long_poll_wait(req: &Request) -> Option<Result<Duration, Answer>> {
    if req.method != "GET" || req.path.trim_end_matches('/') != "/api/events" {
        return None;
    }
    match req.param("wait") {
        None | Some("") => None,
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => {
                let wait = Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64()));
                (!wait.is_zero()).then_some(Ok(wait))
            }
            _ => Some(Err(Answer::error(
                400,
                &format!("wait={v:?} is not a number of seconds"),
            ))),
        },
    }
}

/// Wait until an event after `since` is durable (or `wait` passes), then answer like a
/// plain `GET /api/events`.
async fn long_poll(req: &Request, ctx: &HttpCtx, wait: Duration) -> Answer {
    let since = match events_range(req) {
        Ok((since, _)) => since,
        Err(a) => return a,
    };
    let mut seq = ctx.last_seq.clone();
    // Err: the main loop is gone (stopping); answer with what there is.
    let _ = tokio::time::timeout(wait, seq.wait_for(|s| *s > since)).await;
    events(req, ctx).await
}

async fn events(req: &Request, ctx: &HttpCtx) -> Answer {
    let (since, limit) = match events_range(req) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let log = ctx.events.clone();
    let read = tokio::task::spawn_blocking(move || {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.since(since, limit)
    })
    .await;
    match read {
        Ok(Ok(mut events)) => {
            // SPEC §9: stored URLs may predate the rule; shown without user info.
            for e in &mut events {
                crate::api::redact_event(e);
            }
            Answer::json(200, &serde_json::json!({ "events": events }))
        }
        // SPEC §12: a cursor behind retention learns where the log starts now.
        Ok(Err(e @ crate::events::EventLogError::Gone { oldest_seq, .. })) => Answer::json(
            410,
            &serde_json::json!({ "error": e.to_string(), "oldest_seq": oldest_seq }),
        ),
        Ok(Err(e)) => Answer::error(500, &e.to_string()),
        Err(e) => Answer::error(500, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, auth: Option<&str>) -> Request {
        let mut headers = vec![("Host".to_owned(), "127.0.0.1:8089".to_owned())];
        headers.extend(auth.map(|a| ("Authorization".to_owned(), a.to_owned())));
        Request {
            method: "POST".into(),
            path: "/api/repos/a/b/c/fetch".into(),
            query: vec![],
            headers,
            body: vec![],
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:8089".parse().unwrap(),
        }
    }

    fn ctx(token: Option<&str>) -> HttpCtx {
        let (calls, _) = mpsc::channel(1);
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let (index, _) = crate::poller::IndexHandle::detached();
        let (_, last_seq) = watch::channel(0);
        HttpCtx {
            calls,
            events: Arc::new(Mutex::new(log)),
            last_seq,
            index,
            auth: Arc::new(RwLock::new(HttpAuth {
                api_token: token.map(|t| crate::config::ApiToken(t.into())),
                ..HttpAuth::default()
            })),
            hooks: Arc::default(),
            hooks_only: false,
        }
    }

    // SPEC §9 POST …/fetch through the router: refused from a non-loopback client without
    // a token file (403), from any client without the right token when one is configured
    // (401; loopback included since issue 10), passed on to the main loop (202) with the
    // right one or, without a token file, from loopback naming the listener.
    #[tokio::test]
    async fn fetch_route_checks_the_caller() {
        let answering = |token: Option<&str>| {
            let (calls, mut rx) = mpsc::channel::<HttpCall>(4);
            let mut c = ctx(token);
            c.calls = calls;
            tokio::spawn(async move {
                while let Some(call) = rx.recv().await {
                    assert_eq!(call.query, Query::Fetch("a/b/c".into()));
                    let _ = call
                        .reply
                        .send(Answer::json(202, &serde_json::json!({})).into());
                }
            });
            c
        };
        let open = answering(None);
        assert_eq!(
            route(&request("10.0.0.1:5", None), &open).await.0.status,
            403
        );
        assert_eq!(
            route(&request("127.0.0.1:5", None), &open).await.0.status,
            202
        );
        let locked = answering(Some("s3cret"));
        for peer in ["10.0.0.1:5", "127.0.0.1:5"] {
            for (auth, want) in [
                (None, 401),
                (Some("Bearer wrong"), 401),
                (Some("s3cret"), 401),
                (Some("Bearer s3cret"), 202),
            ] {
                let got = route(&request(peer, auth), &locked).await.0.status;
                assert_eq!(got, want, "{peer} {auth:?}");
            }
        }
    }

    fn get(path: &str, query: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..request("127.0.0.1:5", None)
        }
    }

    // SPEC §12 `GET /api/repos/{id}/refs`: parameters checked before the loop is asked;
    // the HTTP task (not the loop) waits for the worker's page, and answers the loop's
    // `late` answer (504 naming the worker) when none comes in time.
    #[tokio::test]
    async fn spec_12_refs_route_waits_for_the_worker_off_the_loop() {
        let (calls, mut rx) = mpsc::channel::<HttpCall>(4);
        let mut c = ctx(None);
        c.calls = calls;
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some(call) = rx.recv().await {
                let Query::Refs(r) = call.query else {
                    panic!("asked {:?}", call.query);
                };
                let (tx, answer) = oneshot::channel();
                let _ = call.reply.send(Reply::Await {
                    answer,
                    deadline: Duration::from_millis(200),
                    late: Answer::error(504, "worker 3 (w) did not send the refs"),
                });
                if r.after.as_deref() == Some("refs/heads/a") {
                    let _ = tx.send(Reply::json(200, serde_json::json!({ "limit": r.limit })));
                } else {
                    unanswered.push(tx);
                }
            }
        });
        let path = "/api/repos/a/b/c/refs";
        let (a, _) = route(&get(path, &[("after", "refs/heads/a")]), &c).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, br#"{"limit":1000}"#);
        let (a, _) = route(&get(path, &[("limit", "7")]), &c).await;
        assert_eq!(a.status, 504);
        assert!(String::from_utf8_lossy(&a.body).contains("worker 3 (w)"));
        let (a, _) = route(&get(path, &[("limit", "nope")]), &c).await;
        assert_eq!(a.status, 400);
        assert!(String::from_utf8_lossy(&a.body).contains("limit="));
        let post = Request {
            method: "POST".into(),
            ..get(path, &[])
        };
        assert_eq!(
            route(&post, &c).await,
            (
                Answer::error(405, "method not allowed; use GET"),
                Some("GET")
            )
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%2Fb%20c").as_deref(), Some("/a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn response_has_length_and_close() {
        let b = bare_response(&Answer::text(503, "busy\n"));
        let s = String::from_utf8(b).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{s}");
        assert!(s.contains("Content-Length: 5\r\n") && s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nbusy\n"));
    }
}
