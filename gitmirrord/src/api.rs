//! The JSON shapes of the HTTP API (SPEC §9), rendered from the fleet's state.
//!
//! Pure functions of [`Fleet`] and the time, so the shapes are tested without sockets.
//! [`crate::http`] carries requests here (through the coordinator's main loop, which owns
//! the fleet) and writes the answers.
//!
//! Cost on the main loop (SPEC §12): every answer is built from the fleet's census
//! (counters and ordered id sets) and lookups, so it is O(workers + indexes) or one page,
//! and the loop only copies out owned views: [`Reply::Render`] leaves the JSON encoding
//! to the HTTP task, off the loop.

use crate::census::IdPage;
use crate::fleet::{Fleet, Repo, RepoState};
use crate::index::IndexStatus;
use crate::redact;
use crate::registry::WorkerRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// The largest `offset` accepted: skipping costs O(offset) on the main loop, so deeper
/// pages must use the `after` cursor.
pub const MAX_OFFSET: usize = 100_000;
/// Default page of `/api/workers/{id}`'s `repo_ids` (the whole list of a small fleet).
pub const DEFAULT_REPO_IDS: usize = MAX_LIMIT;

/// What the main loop hands back to the HTTP task.
pub enum Reply {
    Ready(Answer),
    /// Owned data to encode off the loop.
    Render(Box<dyn FnOnce() -> Answer + Send>),
    /// The answer comes later, from a worker (`GET /api/repos/{id}/refs`): the HTTP task
    /// waits for it at most `deadline`, then answers `late`.
    Await {
        answer: tokio::sync::oneshot::Receiver<Reply>,
        deadline: std::time::Duration,
        late: Answer,
    },
}

impl Reply {
    /// JSON encoded later, by whoever finishes the reply.
    pub fn json<T: Serialize + Send + 'static>(status: u16, value: T) -> Self {
        Reply::Render(Box::new(move || Answer::json(status, &value)))
    }

    /// The answer, encoding it here if it was left to the caller.
    pub fn finish(self) -> Answer {
        match self {
            Reply::Ready(a) => a,
            Reply::Render(f) => f(),
            // Only the HTTP task waits (`http::ask`); nothing else may get here.
            Reply::Await { .. } => Answer::error(500, "an answer from a worker was not awaited"),
        }
    }
}

impl From<Answer> for Reply {
    fn from(a: Answer) -> Self {
        Reply::Ready(a)
    }
}

/// A rendered answer: status code, content type, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Headers besides the standard ones (e.g. `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                content_type: "application/json",
                body,
                headers: Vec::new(),
            },
            Err(e) => Self::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        Self {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    pub fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }

    pub fn html(status: u16, html: String) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            body: html.into_bytes(),
            headers: Vec::new(),
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn metrics(text: String) -> Self {
        Self {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: text.into_bytes(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// Filters of `GET /api/repos`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoFilter {
    pub state: Option<RepoState>,
    pub worker: Option<u32>,
    /// The cursor: list repos whose id sorts after this one (SPEC §12).
    pub after: Option<String>,
    pub limit: usize,
    /// Skipped after the cursor; at most [`MAX_OFFSET`].
    pub offset: usize,
}

/// A page of `/api/workers/{id}`'s `repo_ids`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdsPage {
    pub after: Option<String>,
    pub limit: usize,
}

/// A request for fleet state.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Status,
    Workers,
    Worker(u32, IdsPage),
    Repos(RepoFilter),
    Repo(String),
    /// `POST /api/repos/{id}/fetch`: answered by the main loop, which owns the connections.
    Fetch(String),
    /// `GET /metrics`: rendered by the main loop, which has the counters.
    Metrics,
    /// `GET /`: the HTML status page, rendered by the main loop.
    Page,
    /// `GET /repos/{id}`: the HTML page of one repo, rendered by the main loop.
    RepoPage(String),
    /// `GET /repos?q=&after=`: repos whose id starts with `q`, one page, as HTML.
    RepoSearch {
        q: String,
        after: Option<String>,
        /// The page of repos whose URL contains `q`, found off the loop
        /// ([`crate::url_search`]), and the cursor it started after.
        urls: crate::url_search::UrlHits,
        url_after: Option<String>,
    },
    /// `GET /api/repos/{id}/refs`: asked of the worker holding the repo by the main loop.
    Refs(crate::refs_query::RefsRequest),
    /// `POST /api/workers/{uuid}/approve` (SPEC §17), by the main loop.
    Approve(Uuid),
    /// `POST /api/workers/{uuid}/remove` (SPEC §17), by the main loop.
    Remove(Uuid),
    /// `GET /api/workers/pending`: workers waiting for approval, by the main loop.
    Pending,
    /// `POST /api/workers/{id or uuid}/drain|undrain` (SPEC §5), by the main loop.
    Drain {
        worker: String,
        drain: bool,
    },
    /// `POST /api/repos/{id}/block` with `{"reason": …}` (a takedown), by the main loop;
    /// `by` names the caller for the log and the repo page.
    Block {
        id: String,
        reason: String,
        by: String,
    },
    /// `POST /api/repos/{id}/unblock`, by the main loop.
    Unblock(String),
    /// `GET /api/index`: the poller's view plus the blocked entries it lists.
    Index,
    /// `POST /api/hooks/{name}` (SPEC §15), authenticated: the payload's URLs, matched and
    /// fetched by the main loop.
    Hook(Vec<String>),
}

impl Query {
    /// A short name for logs (`gitmirrord::turns`).
    pub fn kind(&self) -> &'static str {
        match self {
            Query::Status => "status",
            Query::Workers => "workers",
            Query::Worker(..) => "worker",
            Query::Repos(_) => "repos",
            Query::Repo(_) => "repo",
            Query::Fetch(_) => "fetch",
            Query::Metrics => "metrics",
            Query::Page => "page",
            Query::RepoPage(_) => "repo_page",
            Query::RepoSearch { .. } => "repo_search",
            Query::Refs(_) => "refs",
            Query::Approve(_) => "approve",
            Query::Remove(_) => "remove",
            Query::Pending => "pending",
            Query::Drain { .. } => "drain",
            Query::Block { .. } => "block",
            Query::Unblock(_) => "unblock",
            Query::Index => "index",
            Query::Hook(_) => "hook",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WorkerView {
    pub id: u32,
    pub uuid: Uuid,
    pub name: String,
    pub addr: Option<String>,
    pub state: &'static str,
    pub last_seen_secs: i64,
    pub repos: usize,
    pub weight: f64,
    pub disk_free_bytes: Option<u64>,
    pub status: String,
    /// It holds a certificate of the fleet's CA (SPEC §17); `false`: admitted by the join
    /// token (registered before certificates, or an older worker).
    pub enrolled: bool,
    /// An operator removed it (`gitmirrord workers remove`).
    pub removed: bool,
    /// An operator drained it (SPEC §5): connected, but assigned nothing.
    pub drained: bool,
    /// Its peer plane listens (SPEC §13 `peer_listen`, on this connection): it can serve
    /// copies to other holders.
    pub peer: bool,
    /// Fork pools under its `mirror_dir` (SPEC §14); `null` for a worker of protocol < 8
    /// or before its first report.
    pub pools: Option<u32>,
    /// Pack bytes of those pools.
    pub pool_bytes: Option<u64>,
    /// Pack bytes of their members' own objects.
    pub member_bytes: Option<u64>,
    /// Members of those pools.
    pub pool_members: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct WorkerDetail {
    #[serde(flatten)]
    pub worker: WorkerView,
    /// A page of the repos it owns, in id order.
    pub repo_ids: Vec<Arc<str>>,
    /// `after=` for the next page of `repo_ids`; `null` on the last.
    pub next: Option<Arc<str>>,
}

#[derive(Debug, Serialize)]
pub struct RepoCounts {
    pub total: usize,
    pub mirrored: usize,
    pub pending: usize,
    pub failing: usize,
    pub gone: usize,
    pub unassigned: usize,
    pub waiting: usize,
    /// Blocked by an operator (not counted in `total`: they left the fleet).
    pub blocked: usize,
    /// Repos with replicas whose verified holders are fewer than min(R, live
    /// non-drained workers) (SPEC §13; a counter, O(1)).
    pub under_replicated: usize,
}

/// `worker:url` as last built, and what it was built from ([`View::status_with`]).
pub struct WorkerUrls {
    key: (u64, usize, Vec<(u32, uuid::Uuid)>),
    /// The census's order generation when built, and when that was.
    order: u64,
    built_ms: i64,
    map: UrlMap,
    truncated: bool,
}

/// `worker:url` as shown: the map, and its JSON, encoded by the first answer that shows
/// it and copied by the others (10,000 URLs are ~450 KB of JSON: milliseconds of each
/// status answer at 1M, for a map rebuilt at most once a second).
#[derive(Debug, Clone)]
pub struct UrlMap {
    map: Arc<BTreeMap<String, Vec<Arc<str>>>>,
    json: Arc<std::sync::OnceLock<Result<Box<serde_json::value::RawValue>, String>>>,
}

impl UrlMap {
    fn new(map: BTreeMap<String, Vec<Arc<str>>>) -> Self {
        Self {
            map: Arc::new(map),
            json: Arc::default(),
        }
    }

    /// The same map (not only an equal one) as `other`.
    pub fn same(&self, other: &UrlMap) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }
}

impl std::ops::Deref for UrlMap {
    type Target = BTreeMap<String, Vec<Arc<str>>>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Serialize for UrlMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let json = self
            .json
            .get_or_init(|| serde_json::value::to_raw_value(&*self.map).map_err(|e| e.to_string()));
        match json {
            Ok(raw) => raw.serialize(s),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// How long `worker:url` may keep an order that a repo's change of state made stale (the
/// same URLs; see [`crate::census::Census::owner_order_generation`]). Rebuilding it is
/// O(`status_url_limit`) on the main loop: ~7 ms at 10,000 URLs, which a failing fleet
/// made every status request pay.
const URL_ORDER_LAG_MS: i64 = 1000;

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub server_status: &'static str,
    pub worker_count: usize,
    #[serde(rename = "worker:url")]
    pub worker_url: UrlMap,
    /// Whether `worker:url` stopped at `status_url_limit` URLs.
    #[serde(rename = "worker:url_truncated")]
    pub worker_url_truncated: bool,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub workers: Vec<WorkerView>,
    pub repos: RepoCounts,
    pub index: Vec<IndexStatus>,
    /// Limited and paused upstream hosts (SPEC §18).
    pub hosts: Vec<crate::host_budget::HostView>,
}

#[derive(Debug, Serialize)]
pub struct RepoSummary {
    pub id: Arc<str>,
    pub url: Arc<str>,
    pub index: Arc<str>,
    pub worker: Option<u32>,
    pub state: &'static str,
    pub last_success: Option<String>,
    pub refs: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RepoPage {
    /// Repos matching the filters (not only this page).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub repos: Vec<RepoSummary>,
    /// `after=` for the next page; `null` on the last.
    pub next: Option<Arc<str>>,
}

#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub class: crate::fleet::ErrorClass,
    pub message: String,
    pub time: String,
    /// Class `auth`: the `match` of the worker's `credentials` entry that was refused
    /// (SPEC §16; never its secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RepoDetail {
    pub id: String,
    pub url: Arc<str>,
    pub index: Arc<str>,
    pub worker: Option<u32>,
    pub state: &'static str,
    pub clone_url: Option<String>,
    pub last_fetch: Option<String>,
    pub last_success: Option<String>,
    pub last_change: Option<String>,
    pub next_due: Option<String>,
    pub fetches: u64,
    pub failures: u64,
    pub last_error: Option<ErrorView>,
    pub refs: Option<u32>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Workers holding a verified copy, the primary (`worker`) first (SPEC §13).
    pub holders: Vec<u32>,
    /// The workers the repo is placed on, pending ones included, the primary's placement
    /// order (SPEC §13; the owner alone at one replica): a hand-off shows here first.
    pub assigned: Vec<u32>,
    /// Replicas wanted (SPEC §13 `replicas`).
    pub replicas: u8,
    /// `clone_url` of each verified holder with a `serve_url_base`, in `holders` order.
    pub clone_urls: Vec<String>,
    /// Its fork pool on the owner (SPEC §14); `null`: a plain mirror, or an owner of
    /// protocol < 8.
    pub pool: Option<crate::pools::PoolView>,
}

/// `GET /api/repos/{id}` of a blocked repo (issue 16's takedown).
#[derive(Debug, Serialize)]
pub struct BlockedView {
    pub id: String,
    /// `"blocked"`.
    pub state: &'static str,
    /// The URL of the index entry set aside, when an index lists it.
    pub url: Option<String>,
    pub index: Option<String>,
    pub reason: String,
    pub blocked_at: String,
    pub blocked_by: String,
}

/// An index's status as shown (SPEC §9): its URL, its last error and the reasons given
/// for rejected entries (which quote the entries' URLs) without user info.
pub fn redact_index(mut s: IndexStatus) -> IndexStatus {
    s.url = redact::url_owned(s.url);
    s.last_error = s.last_error.map(redact::text_owned);
    for r in &mut s.rejected {
        r.reason = redact::text_owned(std::mem::take(&mut r.reason));
        r.path = redact::text_owned(std::mem::take(&mut r.path));
    }
    s
}

/// An event as shown and sent to webhooks (SPEC §8, §9): the URL without user info,
/// whenever the event was recorded.
pub fn redact_event(e: &mut crate::events::Event) {
    e.url = redact::url_owned(std::mem::take(&mut e.url));
}

fn time(ms: Option<i64>) -> Option<String> {
    ms.map(gitmirror_common::rfc3339_ms)
}

/// Everything a rendering needs besides the fleet.
pub struct View<'a> {
    pub fleet: &'a Fleet,
    pub now_ms: i64,
    pub uptime_secs: u64,
    /// `status_url_limit`.
    pub url_limit: usize,
}

impl View<'_> {
    fn id_of(&self, uuid: &Uuid) -> Option<u32> {
        self.fleet.worker(uuid).map(|w| w.id)
    }

    /// The reply to a query about fleet state; the JSON is encoded by the caller.
    pub fn answer(&self, q: &Query, index: Vec<IndexStatus>) -> Reply {
        match q {
            Query::Status => Reply::json(200, self.status(index)),
            Query::Workers => Reply::json(200, self.workers()),
            Query::Worker(id, page) => match self.worker(*id, page) {
                Some(w) => Reply::json(200, w),
                None => Answer::error(404, &format!("no worker with id {id}")).into(),
            },
            Query::Repos(f) => Reply::json(200, self.repos(f)),
            Query::Repo(id) => match self.repo(id) {
                Some(r) => Reply::json(200, r),
                None => match self.blocked(id) {
                    Some(b) => Reply::json(200, b),
                    None => Answer::error(404, &format!("no repo {id:?} in any index")).into(),
                },
            },
            Query::Fetch(_)
            | Query::Metrics
            | Query::Page
            | Query::RepoPage(_)
            | Query::RepoSearch { .. }
            | Query::Refs(_)
            | Query::Approve(_)
            | Query::Remove(_)
            | Query::Pending
            | Query::Drain { .. }
            | Query::Block { .. }
            | Query::Unblock(_)
            | Query::Index
            | Query::Hook(_) => Answer::error(500, "answered by the main loop").into(),
        }
    }

    fn worker_view(&self, w: &WorkerRecord) -> WorkerView {
        let last_seen_secs = if w.state == crate::registry::WorkerState::Alive {
            0
        } else {
            (self.now_ms - w.last_seen_ms).max(0) / 1000
        };
        WorkerView {
            // Filled by the caller from the pool reports ([`crate::pools::Pools::fill_worker`]).
            pools: None,
            pool_bytes: None,
            member_bytes: None,
            pool_members: None,
            id: w.id,
            uuid: w.uuid,
            name: w.name.clone(),
            addr: w.addr.clone(),
            state: w.state.as_str(),
            last_seen_secs,
            repos: self.fleet.census().owned(&w.uuid),
            weight: w.weight,
            disk_free_bytes: w.disk_free_bytes,
            status: redact::text_owned(w.status.clone()),
            enrolled: w.cert.is_some(),
            peer: self.fleet.has_peer_plane(&w.uuid),
            removed: self.fleet.registry().is_removed(&w.uuid),
            drained: w.drained,
        }
    }

    /// `GET /api/workers`: sorted by id.
    pub fn workers(&self) -> Vec<WorkerView> {
        let mut v: Vec<WorkerView> = self
            .fleet
            .registry()
            .iter()
            .map(|w| self.worker_view(w))
            .collect();
        v.sort_by_key(|w| w.id);
        v
    }

    /// `GET /api/workers/{id}`: the worker and one page of the repos it owns.
    pub fn worker(&self, id: u32, page: &IdsPage) -> Option<WorkerDetail> {
        let w = self.fleet.registry().by_id(id)?;
        let IdPage { ids, more } =
            self.fleet
                .census()
                .page_owned(w.uuid, None, page.after.as_deref(), page.limit);
        let next = if more { ids.last().cloned() } else { None };
        Some(WorkerDetail {
            worker: self.worker_view(w),
            repo_ids: ids,
            next,
        })
    }

    pub fn counts(&self) -> RepoCounts {
        let c = self.fleet.census();
        RepoCounts {
            total: c.total(),
            mirrored: c.in_state(RepoState::Mirrored),
            pending: c.in_state(RepoState::Pending),
            failing: c.in_state(RepoState::Failing),
            gone: c.in_state(RepoState::Gone),
            unassigned: c.in_state(RepoState::Unassigned),
            waiting: c.in_state(RepoState::Waiting),
            blocked: self.fleet.registry().blocked_all().len(),
            under_replicated: c.under_replicated(),
        }
    }

    /// `GET /api/status`: `worker:url` lists at most `url_limit` URLs in all, live
    /// workers in id order.
    pub fn status(&self, index: Vec<IndexStatus>) -> StatusView {
        self.status_with(index, &mut None)
    }

    /// [`View::status`], reusing `cache`'s `worker:url` while the live workers, the limit
    /// and the census's owner sets are as they were: at 1M repos it is 10,000 URLs to
    /// collect and redact on the main loop, and under steady ingest it rarely changes.
    pub fn status_with(
        &self,
        index: Vec<IndexStatus>,
        cache: &mut Option<WorkerUrls>,
    ) -> StatusView {
        let mut live: Vec<&WorkerRecord> = self.fleet.registry().live().collect();
        live.sort_by_key(|w| w.id);
        let key = (
            self.fleet.census().owner_urls_generation(),
            self.url_limit,
            live.iter().map(|w| (w.id, w.uuid)).collect::<Vec<_>>(),
        );
        let order = self.fleet.census().owner_order_generation();
        let urls = match cache {
            Some(c)
                if c.key == key
                    && (c.order == order || self.now_ms - c.built_ms < URL_ORDER_LAG_MS) =>
            {
                c
            }
            _ => {
                let mut budget = self.url_limit;
                let mut truncated = false;
                let mut map = BTreeMap::new();
                for w in &live {
                    let mut urls = Vec::new();
                    for (_, url) in self.fleet.census().owned_urls(w.uuid) {
                        if budget == 0 {
                            truncated = true;
                            break;
                        }
                        urls.push(redact::url_arc(url));
                        budget -= 1;
                    }
                    map.insert(w.id.to_string(), urls);
                }
                cache.insert(WorkerUrls {
                    key,
                    order,
                    built_ms: self.now_ms,
                    map: UrlMap::new(map),
                    truncated,
                })
            }
        };
        let (worker_url, truncated) = (urls.map.clone(), urls.truncated);
        let alive = self
            .fleet
            .registry()
            .iter()
            .filter(|w| w.state == crate::registry::WorkerState::Alive)
            .count();
        StatusView {
            server_status: "running",
            worker_count: alive,
            worker_url,
            worker_url_truncated: truncated,
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.uptime_secs,
            workers: self.workers(),
            repos: self.counts(),
            index: index.into_iter().map(redact_index).collect(),
            hosts: Vec::new(),
        }
    }

    fn summary(&self, id: &Arc<str>, r: &Repo) -> RepoSummary {
        RepoSummary {
            id: id.clone(),
            url: redact::url_arc(&r.url),
            index: r.index.clone(),
            worker: r.owner.and_then(|o| self.id_of(&o)),
            state: r.state().as_str(),
            last_success: time(r.status.last_success_ms),
            refs: r.status.refs,
        }
    }

    /// `GET /api/repos`: filtered, sorted by id, one page after the cursor. Each filter
    /// has its ordered id set in the census, so a page never scans other repos.
    pub fn repos(&self, f: &RepoFilter) -> RepoPage {
        let census = self.fleet.census();
        let offset = f.offset.min(MAX_OFFSET);
        let want = offset.saturating_add(f.limit);
        let after = f.after.as_deref();
        let owner = f
            .worker
            .map(|id| self.fleet.registry().by_id(id).map(|w| w.uuid));
        let (total, page) = match (owner, f.state) {
            (Some(None), _) => (
                0,
                IdPage {
                    ids: Vec::new(),
                    more: false,
                },
            ),
            (None, None) => (census.total(), self.fleet.page_all(after, want)),
            (None, Some(s)) => (census.in_state(s), census.page_in_state(s, after, want)),
            (Some(Some(u)), None) => (census.owned(&u), census.page_owned(u, None, after, want)),
            (Some(Some(u)), Some(s)) => (
                census.owned_in(&u, s),
                census.page_owned(u, Some(s), after, want),
            ),
        };
        let repos: Vec<RepoSummary> = page
            .ids
            .iter()
            .skip(offset)
            .filter_map(|id| self.fleet.repo(id).map(|r| self.summary(id, r)))
            .collect();
        let next = if page.more {
            repos.last().map(|r| r.id.clone())
        } else {
            None
        };
        RepoPage {
            total,
            offset: f.offset,
            limit: f.limit,
            repos,
            next,
        }
    }

    /// `GET /api/repos/{id}` of a blocked repo.
    pub fn blocked(&self, id: &str) -> Option<BlockedView> {
        let b = self.fleet.registry().blocked(id)?;
        let e = self.fleet.blocked_entry(id);
        Some(BlockedView {
            id: id.to_owned(),
            state: "blocked",
            url: e.map(|e| redact::url(&e.url).into_owned()),
            index: e.map(|e| e.index.clone()),
            reason: b.reason.clone(),
            blocked_at: gitmirror_common::rfc3339_ms(b.at_ms),
            blocked_by: b.by.clone(),
        })
    }

    /// `GET /api/repos/{id}`.
    pub fn repo(&self, id: &str) -> Option<RepoDetail> {
        let r = self.fleet.repo(id)?;
        let owner = r.owner.and_then(|o| self.fleet.worker(&o));
        let by_owner = r.owner.is_some() && r.status.by == r.owner;
        let clone_url_of = |w: &WorkerRecord| {
            w.serve_url_base.as_deref().map(|base| {
                let url = if base.ends_with('/') {
                    format!("{base}{id}.git")
                } else {
                    format!("{base}/{id}.git")
                };
                // A worker's serve_url_base is its operator's text: shown like any URL.
                redact::url_owned(url)
            })
        };
        let clone_url = owner.and_then(clone_url_of);
        let verified = r.verified_holders();
        let holders: Vec<u32> = verified.iter().filter_map(|u| self.id_of(u)).collect();
        let clone_urls: Vec<String> = verified
            .iter()
            .filter_map(|u| self.fleet.worker(u))
            .filter_map(clone_url_of)
            .collect();
        let assigned: Vec<u32> = r.placement().iter().filter_map(|u| self.id_of(u)).collect();
        let st = &r.status;
        Some(RepoDetail {
            id: id.to_owned(),
            url: redact::url_arc(&r.url),
            index: r.index.clone(),
            worker: owner.map(|w| w.id),
            state: r.state().as_str(),
            clone_url,
            last_fetch: time(st.last_fetch_ms),
            last_success: time(st.last_success_ms),
            last_change: time(st.last_change_ms),
            next_due: if by_owner { time(st.next_due_ms) } else { None },
            fetches: if by_owner { st.fetches } else { 0 },
            failures: if by_owner { st.failures } else { 0 },
            last_error: st.last_error.as_ref().map(|e| ErrorView {
                class: e.class,
                message: redact::text_owned(e.message.clone()),
                time: gitmirror_common::rfc3339_ms(e.time_ms),
                credential: (e.class == crate::fleet::ErrorClass::Auth)
                    .then(|| gitmirror_common::credentials::refused_entry(&e.message))
                    .flatten()
                    .map(|m| redact::url(m).into_owned()),
            }),
            refs: st.refs,
            metadata: crate::index::decode_metadata(r.metadata.as_deref()),
            holders,
            assigned,
            replicas: r.replicas(),
            clone_urls,
            // Filled by the caller from the pool reports ([`crate::pools::Pools::fill_repo`]).
            pool: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::ReposFile;
    use crate::index::Entry;
    use crate::registry::{Introduction, Registry};
    use gitmirror_wire::{FailureClass, FetchResult, Holdings, Outcome};
    use std::time::Duration;

    fn fleet() -> Fleet {
        let entries = (0..10).map(|i| Entry {
            id: format!("a/p{i}/r{i}"),
            url: format!("https://example.org/{i}"),
            index: "main".into(),
            metadata: Some(r#"{"submit":["x"]}"#.into()),
        });
        let mut f = Fleet::new(
            Duration::from_secs(60),
            Registry::new(4),
            ReposFile::default(),
            entries,
        );
        let intro = Introduction {
            uuid: Uuid::from_u128(1),
            previous_id: None,
            name: "one",
            weight: 1.0,
            software: "t",
            protocol: gitmirror_wire::PROTOCOL_VERSION,
            serve_url_base: Some("git://m1.example.org"),
            addr: Some("127.0.0.1:9".into()),
        };
        f.connect(&intro, 1000).unwrap();
        f.holdings(Uuid::from_u128(1), &Holdings { repos: vec![] }, 1000);
        let outcome = |report_id, repo: &str, result| Outcome {
            report_id,
            repo: repo.into(),
            url: "u".into(),
            finished_ms: 2000,
            duration_ms: 1,
            result,
            changes: vec![],
            ref_count: 3,
            refs_digest: 0,
            next_due_ms: 62_000,
        };
        let o = vec![
            outcome(1, "a/p0/r0", FetchResult::Cloned),
            outcome(
                2,
                "a/p1/r1",
                FetchResult::Failed {
                    class: FailureClass::Gone,
                    message: "not found".into(),
                },
            ),
            outcome(
                3,
                "a/p2/r2",
                FetchResult::Failed {
                    class: FailureClass::Transient,
                    message: "reset".into(),
                },
            ),
            outcome(
                4,
                "a/p3/r3",
                FetchResult::Waiting {
                    reason: "disk".into(),
                },
            ),
        ];
        f.outcomes(Uuid::from_u128(1), &o, 2000);
        f
    }

    fn all_ids() -> IdsPage {
        IdsPage {
            after: None,
            limit: DEFAULT_REPO_IDS,
        }
    }

    fn json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    // SPEC §9 GET /api/status: the prototype's first three keys, then the rest.
    #[test]
    fn status_shape() {
        let f = fleet();
        let v = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        };
        let s = serde_json::to_string(&v.status(vec![])).unwrap();
        assert!(
            s.starts_with(r#"{"server_status":"running","worker_count":1,"worker:url":{"0":["#),
            "{s}"
        );
        let j: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(j["worker:url"]["0"].as_array().unwrap().len(), 10);
        assert_eq!(j["uptime_secs"], 7);
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            j["repos"],
            serde_json::json!({"total":10,"mirrored":1,"pending":6,"failing":1,"gone":1,"unassigned":0,"waiting":1,"blocked":0,"under_replicated":0})
        );
        assert_eq!(j["workers"].as_array().unwrap().len(), 1);
        assert_eq!(j["index"], serde_json::json!([]));
    }

    // SPEC §12: `worker:url` is reused while the owner sets stay as they were, and built
    // again, equal to a fresh one, once an outcome moves a repo between states.
    #[test]
    fn spec_12_status_urls_are_kept_until_the_owner_sets_change() {
        let mut f = fleet();
        let mut cache = None;
        let view = |f: &Fleet| {
            View {
                fleet: f,
                now_ms: 5000,
                uptime_secs: 7,
                url_limit: 10_000,
            }
            .status_with(vec![], &mut None)
            .worker_url
        };
        let first = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        }
        .status_with(vec![], &mut cache)
        .worker_url;
        let second = View {
            fleet: &f,
            now_ms: 6000,
            uptime_secs: 8,
            url_limit: 10_000,
        }
        .status_with(vec![], &mut cache)
        .worker_url;
        assert!(first.same(&second), "nothing changed: reused");
        let o = Outcome {
            report_id: 9,
            repo: "a/p5/r5".into(),
            url: String::new(),
            finished_ms: 3000,
            duration_ms: 10,
            result: FetchResult::Cloned,
            changes: vec![],
            ref_count: 3,
            refs_digest: 0,
            next_due_ms: 62_000,
        };
        f.outcomes(Uuid::from_u128(1), std::slice::from_ref(&o), 3000);
        let third = View {
            fleet: &f,
            now_ms: 7000,
            uptime_secs: 9,
            url_limit: 10_000,
        }
        .status_with(vec![], &mut cache)
        .worker_url;
        assert!(!second.same(&third), "a repo changed state: built again");
        assert_eq!(*third, *view(&f));
        // Another change of state only reorders the same URLs: kept for up to a second
        // (each status request of a failing fleet rebuilt them), then built again.
        let mut failed = o.clone();
        failed.report_id = 10;
        failed.repo = "a/p6/r6".into();
        failed.result = FetchResult::Failed {
            class: FailureClass::Transient,
            message: "refused".into(),
        };
        f.outcomes(Uuid::from_u128(1), &[failed], 7100);
        let at = |f: &Fleet, cache: &mut Option<WorkerUrls>, now_ms| {
            View {
                fleet: f,
                now_ms,
                uptime_secs: 9,
                url_limit: 10_000,
            }
            .status_with(vec![], cache)
            .worker_url
        };
        let fresh = view(&f);
        assert_ne!(
            *third, *fresh,
            "the failing repo is listed in another place"
        );
        let lagged = at(&f, &mut cache, 7999);
        assert!(third.same(&lagged), "an order under a second old is kept");
        let fourth = at(&f, &mut cache, 8000);
        assert_eq!(*fourth, *fresh, "then built again");
        // Its JSON is encoded once and shown by every answer that reuses it, the same as a
        // fresh encoding.
        let json = |cache: &mut Option<WorkerUrls>| {
            let status = View {
                fleet: &f,
                now_ms: 8000,
                uptime_secs: 9,
                url_limit: 10_000,
            }
            .status_with(vec![], cache);
            String::from_utf8(Answer::json(200, &status).body).unwrap()
        };
        let (once, twice, uncached) = (json(&mut cache), json(&mut cache), json(&mut None));
        assert_eq!(once, twice);
        assert_eq!(once, uncached);
        let shown: serde_json::Value = serde_json::from_str(&once).unwrap();
        assert_eq!(shown["worker:url"], serde_json::to_value(&*fresh).unwrap());
        assert!(cache.as_ref().unwrap().map.json.get().is_some());
        // A change of the URLs themselves is shown at once.
        f.apply_index(&crate::index::Delta {
            changed: vec![Entry {
                id: "a/p7/r7".into(),
                url: "https://example.org/moved".into(),
                index: "main".into(),
                metadata: None,
            }],
            ..Default::default()
        });
        let fifth = at(&f, &mut cache, 8001);
        assert_eq!(*fifth, *view(&f));
        assert!(
            fifth
                .values()
                .flatten()
                .any(|u| &**u == "https://example.org/moved"),
            "{fifth:?}"
        );
    }

    // SPEC §9 GET /api/workers and /api/workers/{id}.
    #[test]
    fn worker_shapes() {
        let f = fleet();
        let v = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        };
        let w = json(&v.workers());
        assert_eq!(
            w,
            serde_json::json!([{"id":0,"uuid":"00000000-0000-0000-0000-000000000001","name":"one",
                "addr":"127.0.0.1:9","state":"alive","last_seen_secs":0,"repos":10,"weight":1.0,
                "disk_free_bytes":null,"status":"","enrolled":false,"removed":false,"drained":false,"peer":false,
                "pools":null,"pool_bytes":null,"member_bytes":null,"pool_members":null}])
        );
        let d = json(&v.worker(0, &all_ids()).unwrap());
        assert_eq!(d["repo_ids"].as_array().unwrap().len(), 10);
        assert_eq!(d["name"], "one");
        assert!(v.worker(1, &all_ids()).is_none());
    }

    // SPEC §14, §9: `pool` of a repo and a worker's pool totals come from the owner's
    // reports; a repo its owner did not report (or another worker did) shows `null`.
    #[test]
    fn spec_14_pool_in_repo_and_worker_views() {
        use gitmirror_wire::{PoolState, PoolStates, PoolTotals, RepoPoolState};
        let f = fleet();
        let v = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        };
        let mut pools = crate::pools::Pools::default();
        let mut d = v.repo("a/p1/r1").unwrap();
        pools.fill_repo(&f, &mut d);
        assert_eq!(json(&d)["pool"], serde_json::Value::Null);
        let states = |repo: &str| PoolStates {
            full: false,
            states: vec![RepoPoolState {
                repo: repo.into(),
                state: PoolState::Member,
                members: 4,
            }],
        };
        let owner = Uuid::from_u128(1);
        let applied = pools.apply(Uuid::from_u128(9), states("a/p1/r1"), |_| false);
        assert_eq!(applied.not_assigned, 1);
        pools.apply(owner, states("a/p1/r1"), |id| {
            f.repo(id).is_some_and(|r| r.owner == Some(owner))
        });
        pools.fill_repo(&f, &mut d);
        assert_eq!(
            json(&d)["pool"],
            serde_json::json!({"path":".pools/a/p1.git","state":"member","why":null,"members":4})
        );
        pools.totals(
            owner,
            PoolTotals {
                pools: 1,
                pool_bytes: 100,
                member_bytes: 5,
                members: 4,
            },
        );
        let mut ws = v.workers();
        pools.fill_worker(&mut ws[0]);
        let w = json(&ws[0]);
        assert_eq!(
            (
                &w["pools"],
                &w["pool_bytes"],
                &w["member_bytes"],
                &w["pool_members"]
            ),
            (
                &serde_json::json!(1),
                &serde_json::json!(100),
                &serde_json::json!(5),
                &serde_json::json!(4)
            )
        );
    }

    // SPEC §9 GET /api/repos: filters and paging.
    #[test]
    fn repo_page() {
        let f = fleet();
        let v = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        };
        let all = v.repos(&RepoFilter {
            limit: 3,
            offset: 2,
            ..Default::default()
        });
        assert_eq!((all.total, all.repos.len()), (10, 3));
        assert_eq!(&*all.repos[0].id, "a/p2/r2");
        let j = json(&all.repos[0]);
        assert_eq!(
            j,
            serde_json::json!({"id":"a/p2/r2","url":"https://example.org/2","index":"main",
                "worker":0,"state":"failing","last_success":null,"refs":3})
        );
        let gone = v.repos(&RepoFilter {
            state: Some(RepoState::Gone),
            limit: 100,
            ..Default::default()
        });
        assert_eq!(gone.total, 1);
        let none = v.repos(&RepoFilter {
            worker: Some(3),
            limit: 100,
            ..Default::default()
        });
        assert_eq!(none.total, 0);
        let w0 = v.repos(&RepoFilter {
            worker: Some(0),
            limit: 100,
            ..Default::default()
        });
        assert_eq!(w0.total, 10);
    }

    // SPEC §9 GET /api/repos/{id}.
    #[test]
    fn repo_detail() {
        let f = fleet();
        let v = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        };
        let j = json(&v.repo("a/p0/r0").unwrap());
        assert_eq!(j["state"], "mirrored");
        assert_eq!(j["worker"], 0);
        assert_eq!(j["clone_url"], "git://m1.example.org/a/p0/r0.git");
        assert_eq!(j["last_success"], "1970-01-01T00:00:02Z");
        assert_eq!(j["next_due"], "1970-01-01T00:01:02Z");
        assert_eq!(j["fetches"], 1);
        assert_eq!(j["refs"], 3);
        assert_eq!(j["holders"], serde_json::json!([0]));
        assert_eq!(j["assigned"], serde_json::json!([0]));
        assert_eq!(j["replicas"], 1);
        assert_eq!(
            j["clone_urls"],
            serde_json::json!(["git://m1.example.org/a/p0/r0.git"])
        );
        assert_eq!(j["metadata"], serde_json::json!({"submit":["x"]}));
        let j = json(&v.repo("a/p1/r1").unwrap());
        assert_eq!(j["state"], "gone");
        assert_eq!(
            j["last_error"],
            serde_json::json!({"class":"gone","message":"not found","time":"1970-01-01T00:00:02Z"})
        );
        for key in [
            "id",
            "url",
            "index",
            "worker",
            "state",
            "clone_url",
            "last_fetch",
            "last_success",
            "last_change",
            "next_due",
            "fetches",
            "failures",
            "last_error",
            "refs",
            "metadata",
            "holders",
            "assigned",
            "replicas",
            "clone_urls",
        ] {
            assert!(j.get(key).is_some(), "{key}");
        }
        assert!(v.repo("x/y/z").is_none());
    }

    /// SPEC §16: a refused credential shows as state `failing`, class `auth`, with the
    /// `match` of the worker's entry that was refused.
    #[test]
    fn spec_16_auth_failure_names_the_credential_entry() {
        let mut f = fleet();
        let o = Outcome {
            report_id: 5,
            repo: "a/p4/r4".into(),
            url: "u".into(),
            finished_ms: 3000,
            duration_ms: 1,
            result: FetchResult::Failed {
                class: FailureClass::Auth,
                message: gitmirror_common::credentials::auth_message(
                    "https://git.example.org/team/",
                    "Received HTTP status 401",
                ),
            },
            changes: vec![],
            ref_count: 0,
            refs_digest: 0,
            next_due_ms: 3_603_000,
        };
        f.outcomes(Uuid::from_u128(1), &[o], 3000);
        let v = View {
            fleet: &f,
            now_ms: 5000,
            uptime_secs: 7,
            url_limit: 10_000,
        };
        let j = json(&v.repo("a/p4/r4").unwrap());
        assert_eq!(j["state"], "failing");
        assert_eq!(j["last_error"]["class"], "auth");
        assert_eq!(
            j["last_error"]["credential"],
            "https://git.example.org/team/"
        );
        // Other classes carry no `credential` key.
        let j = json(&v.repo("a/p1/r1").unwrap());
        assert!(j["last_error"].get("credential").is_none());
    }
}
