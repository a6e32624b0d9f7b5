//! `GET /repos/{id}` (SPEC §9, issue 16): one repo for a person — its state and why, its
//! owner and holders, its URL, its schedule, its last outcomes and events.
//!
//! Built from the same explain answer as `GET /api/repos/{id}` ([`View::repo`], so URLs
//! and messages are redacted the same way) plus the bounded history
//! ([`crate::history`]); a lookup and a few dozen rows, never a walk of the repos.
//! Server-rendered, no scripts; every outside string goes through [`esc`].

use crate::api::{RepoDetail, View};
use crate::fleet::{Fleet, LastResult, RepoState};
use crate::history::{OutcomeClass, error_class_name};
use crate::page::{CSS, ago, cut, esc};
use crate::registry::WorkerState;
use std::fmt::Write;

/// Longest message shown (characters).
const MAX_MESSAGE: usize = 500;

/// The "fetch now" button without a page load: a POST with the API token, asked for once
/// (on a 401) and kept in this tab's session storage. Static text: no data goes in it.
/// Without JavaScript the form posts itself, which a same-origin loopback call may do.
const FETCH_JS: &str = "(function(){var f=document.getElementById('fetch-now');\
if(!f||!window.fetch)return;var out=document.getElementById('fetch-result');\
f.addEventListener('submit',function(e){e.preventDefault();\
function go(ask){var t=sessionStorage.getItem('gitmirror-api-token'),h={};\
if(t)h['Authorization']='Bearer '+t;\
fetch(f.action,{method:'POST',headers:h}).then(function(r){\
if(r.status==401&&ask){var n=window.prompt('API token (kept in this tab only)');\
if(n){sessionStorage.setItem('gitmirror-api-token',n);return go(false);}}\
return r.text().then(function(b){out.textContent=r.status==202?\
'asked its owner to fetch it now':'refused ('+r.status+'): '+b;});\
}).catch(function(err){out.textContent='failed: '+err;});}go(true);});})();";

/// `/api/repos/{id}`.
fn api_path(id: &str) -> String {
    crate::page::repo_path(id).replacen("/repos/", "/api/repos/", 1)
}

/// Everything the page needs besides the fleet.
pub struct RepoPageInputs<'a> {
    pub now_ms: i64,
    pub uptime_secs: u64,
    /// The ceiling of a repo's fetch interval the page compares against (`max_interval`
    /// of the embedded worker, else the worker's default), and where it comes from.
    pub max_interval_secs: u64,
    pub max_interval_from: &'static str,
    /// Fork-pool states as the workers report them (SPEC §14).
    pub pools: &'a crate::pools::Pools,
}

/// A worker as `3 (name)`, or `—`.
fn worker_label(fleet: &Fleet, id: Option<u32>) -> String {
    match id.and_then(|id| fleet.registry().by_id(id)) {
        Some(w) => format!("{} <span class=\"muted\">({})</span>", w.id, esc(&w.name)),
        None => "<span class=\"muted\">—</span>".into(),
    }
}

/// The time as RFC 3339 and how long ago or ahead.
fn when(t: Option<&str>, ms: Option<i64>, now_ms: i64) -> String {
    match (t, ms) {
        (Some(t), Some(ms)) if ms <= now_ms => {
            format!(
                "{} <span class=\"muted\">({} ago)</span>",
                esc(t),
                ago((now_ms - ms) / 1000)
            )
        }
        (Some(t), Some(ms)) => {
            format!(
                "{} <span class=\"muted\">(in {})</span>",
                esc(t),
                ago((ms - now_ms) / 1000)
            )
        }
        (Some(t), None) => esc(t),
        _ => "<span class=\"muted\">never</span>".into(),
    }
}

/// The state in one sentence: why the repo is where it is.
fn why(fleet: &Fleet, d: &RepoDetail, state: RepoState, waiting: Option<&str>) -> String {
    let owner = worker_label(fleet, d.worker);
    match state {
        RepoState::Unassigned => {
            let alive = fleet
                .registry()
                .iter()
                .filter(|w| w.state == WorkerState::Alive)
                .count();
            format!(
                "No live worker owns it ({alive} workers alive): it is assigned as soon as one joins or comes back."
            )
        }
        RepoState::Pending => format!(
            "Assigned to worker {owner}, which has no verified mirror yet: a new repo comes first in its queue."
        ),
        RepoState::Mirrored => format!(
            "Worker {owner} holds a mirror; its last fetch succeeded{}.",
            d.last_success
                .as_deref()
                .map(|t| format!(" at {}", esc(t)))
                .unwrap_or_default()
        ),
        RepoState::Failing => {
            let e = d.last_error.as_ref();
            format!(
                "The last attempt by worker {owner} failed ({}): {}. {} of its {} attempts failed; it is retried with backoff, and the mirror on disk is kept.",
                esc(&e.map(|e| error_class_name(e.class)).unwrap_or_default()),
                esc(&cut(e.map_or("", |e| e.message.as_str()), MAX_MESSAGE)),
                d.failures,
                d.fetches,
            )
        }
        RepoState::Gone => format!(
            "Upstream says it does not exist ({}). Worker {owner} probes it once a day; the mirror on disk is kept.",
            esc(&cut(
                d.last_error.as_ref().map_or("", |e| e.message.as_str()),
                MAX_MESSAGE
            )),
        ),
        RepoState::Waiting => format!(
            "Held back by worker {owner}: {}.",
            esc(&cut(waiting.unwrap_or("waiting"), MAX_MESSAGE))
        ),
    }
}

/// The interval between the last fetch and the next, and why it is that long.
fn interval(
    state: RepoState,
    st: &crate::fleet::RepoStatus,
    p: &RepoPageInputs<'_>,
) -> (String, String) {
    let Some((last, next)) = st.last_fetch_ms.zip(st.next_due_ms) else {
        return (
            "<span class=\"muted\">—</span>".into(),
            "not fetched by its owner yet".into(),
        );
    };
    let secs = (next - last).max(0) / 1000;
    let reason = match state {
        RepoState::Failing => format!(
            "backoff after {} failed attempts (from min_interval, doubling, capped at 6 h)",
            st.failures
        ),
        RepoState::Gone => "a gone repo is probed once a day".into(),
        RepoState::Waiting => "held back; retried when the worker can".into(),
        _ => match st.last_change_ms {
            Some(c) => format!(
                "about half the time since upstream last changed ({} ago), clamped to [min_interval, max_interval = {}], ±10 %",
                ago((last - c).max(0) / 1000),
                ago(p.max_interval_secs as i64)
            ),
            None => format!(
                "no upstream change seen yet: the interval grows towards max_interval ({})",
                ago(p.max_interval_secs as i64)
            ),
        },
    };
    (ago(secs), reason)
}

/// Render the page of repo `id`; `None` when no index has it.
pub fn render(fleet: &Fleet, id: &str, p: &RepoPageInputs<'_>) -> Option<String> {
    let view = View {
        fleet,
        now_ms: p.now_ms,
        uptime_secs: p.uptime_secs,
        url_limit: 0,
    };
    let mut d = view.repo(id)?;
    p.pools.fill_repo(fleet, &mut d);
    let repo = fleet.repo(id)?;
    let state = repo.state();
    let st = &repo.status;
    let waiting = match &st.last_result {
        Some(LastResult::Waiting(r)) => Some(crate::redact::text(r)),
        _ => None,
    };
    let s = state.as_str();
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · {s} · gitmirror</title><style>{CSS}</style></head><body>\
         <header><h1><a href=\"/\" style=\"color:#fff;text-decoration:none\">gitmirror</a></h1>\
         <span class=\"sub\">repo <span class=\"mono\">{}</span> · as of {}</span></header><main>",
        esc(id),
        esc(id),
        esc(&gitmirror_common::rfc3339_ms(p.now_ms)),
    );

    // State and why.
    let _ = write!(
        h,
        "<section id=\"state\"><h2>State <span class=\"badge {s}\" id=\"repo-state\">{s}</span></h2>\
         <p class=\"why\" id=\"why\">{}</p><dl class=\"kv\">",
        why(fleet, &d, state, waiting.as_deref())
    );
    let kv = |h: &mut String, k: &str, v: String| {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    kv(
        &mut h,
        "URL",
        format!("<span class=\"mono\">{}</span>", esc(&d.url)),
    );
    kv(&mut h, "index", esc(&d.index));
    kv(&mut h, "owner", worker_label(fleet, d.worker));
    let mut holders = String::new();
    let mut held: Vec<(u32, String, bool)> = repo
        .holders
        .iter()
        .filter_map(|(u, m)| fleet.worker(u).map(|w| (w.id, w.name.clone(), m)))
        .collect();
    held.sort_by_key(|(id, _, _)| *id);
    // SPEC §13: with replicas, each holder's role (primary, follower, or leaving).
    let placed = repo.placement();
    let primary = repo.owner.and_then(|o| fleet.worker(&o)).map(|w| w.id);
    for (wid, name, mirrored) in &held {
        let role = if repo.replica.is_none() {
            ""
        } else if Some(*wid) == primary {
            " <span class=\"badge\">primary</span>"
        } else if placed
            .iter()
            .any(|u| fleet.worker(u).is_some_and(|w| w.id == *wid))
        {
            " <span class=\"badge\">follower</span>"
        } else {
            " <span class=\"badge\">leaving</span>"
        };
        let _ = write!(
            holders,
            "<div>{wid} <span class=\"muted\">({})</span>{role} {}</div>",
            esc(name),
            if *mirrored {
                "<span class=\"badge mirrored\">mirror</span>"
            } else {
                "<span class=\"badge pending\">no mirror yet</span>"
            }
        );
    }
    if held.is_empty() {
        holders.push_str("<span class=\"muted\">none</span>");
    }
    kv(&mut h, "holders", holders);
    if repo.replica.is_some() {
        kv(
            &mut h,
            "replicas",
            format!(
                "<span id=\"replicas\">{} wanted, {} verified</span>",
                d.replicas,
                d.holders.len()
            ),
        );
    }
    let pool = match &d.pool {
        Some(pool) => format!(
            "<span id=\"pool\"><span class=\"mono\">{}</span> {}{} · {} members</span>",
            esc(&pool.path),
            pool.state,
            pool.why.map(|w| format!(" ({w})")).unwrap_or_default(),
            pool.members
        ),
        None => "<span class=\"muted\" id=\"pool\">none (a plain mirror)</span>".to_owned(),
    };
    kv(&mut h, "fork pool", pool);
    if let Some(c) = &d.clone_url {
        kv(
            &mut h,
            "clone",
            format!("<span class=\"mono\">git clone {}</span>", esc(c)),
        );
    }
    kv(
        &mut h,
        "refs",
        d.refs
            .map_or("<span class=\"muted\">—</span>".into(), |n| n.to_string()),
    );
    if !d.metadata.is_empty() {
        let meta = serde_json::to_string(&d.metadata).unwrap_or_default();
        kv(
            &mut h,
            "metadata",
            format!("<span class=\"mono\">{}</span>", esc(&cut(&meta, 400))),
        );
    }
    h.push_str("</dl>");
    let _ = write!(
        h,
        "<form id=\"fetch-now\" method=\"post\" action=\"{}/fetch\" style=\"margin-top:12px\">\
         <button type=\"submit\">Fetch now</button> <span id=\"fetch-result\" class=\"muted\"></span></form>\
         <script>{FETCH_JS}</script></section>",
        esc(&api_path(id))
    );

    // Schedule.
    let (every, reason) = interval(state, st, p);
    let _ = write!(
        h,
        "<section id=\"schedule\"><h2>Schedule</h2><dl class=\"kv\">"
    );
    kv(
        &mut h,
        "last fetch",
        when(d.last_fetch.as_deref(), st.last_fetch_ms, p.now_ms),
    );
    kv(
        &mut h,
        "last success",
        when(d.last_success.as_deref(), st.last_success_ms, p.now_ms),
    );
    kv(
        &mut h,
        "last upstream change",
        when(d.last_change.as_deref(), st.last_change_ms, p.now_ms),
    );
    let next_ms = d.next_due.as_ref().and(st.next_due_ms);
    kv(
        &mut h,
        "next due",
        when(d.next_due.as_deref(), next_ms, p.now_ms),
    );
    kv(
        &mut h,
        "interval",
        format!("{every} <span class=\"muted\">— {}</span>", esc(&reason)),
    );
    kv(
        &mut h,
        "attempts",
        format!("{} by its owner, {} failed", d.fetches, d.failures),
    );
    if let Some(t) = st.last_success_ms {
        let stale = (p.now_ms - t).max(0) / 1000;
        let over = stale as u64 > p.max_interval_secs;
        kv(
            &mut h,
            "staleness",
            format!(
                "{}{} <span class=\"muted\">(max_interval {} from {})</span>",
                ago(stale),
                if over {
                    " <span class=\"badge failing\">beyond max_interval</span>"
                } else {
                    ""
                },
                ago(p.max_interval_secs as i64),
                p.max_interval_from,
            ),
        );
    }
    h.push_str("</dl></section>");

    // Outcomes.
    let outcomes: Vec<_> = fleet.history().outcomes_of(id).collect();
    let _ = write!(
        h,
        "<section id=\"outcomes\"><h2>Last outcomes <span class=\"count\">({}, newest first, since the coordinator started)</span></h2>",
        outcomes.len()
    );
    if outcomes.is_empty() {
        h.push_str("<div class=\"empty\">No outcome reported since the coordinator started.</div>");
    } else {
        h.push_str(
            "<table><tr><th>finished</th><th class=\"num\">worker</th><th>class</th>\
             <th class=\"num\">duration</th><th class=\"num\">ref changes</th><th>detail</th></tr>",
        );
        for o in outcomes {
            let class = o.class.name();
            let badge = match o.class {
                OutcomeClass::Ok => "mirrored",
                OutcomeClass::Waiting => "waiting",
                OutcomeClass::Failed(crate::fleet::ErrorClass::Gone) => "gone",
                OutcomeClass::Failed(_) => "failing",
            };
            let _ = write!(
                h,
                "<tr class=\"outcome\"><td>{}</td><td class=\"num\">{}</td><td><span class=\"badge {badge}\">{}</span></td>\
                 <td class=\"num\">{:.1} s</td><td class=\"num\">{}</td><td class=\"msg\">{}</td></tr>",
                esc(&gitmirror_common::rfc3339_ms(o.finished_ms)),
                o.worker,
                esc(&class),
                o.duration_ms as f64 / 1000.0,
                o.changes,
                esc(&o.detail),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Events.
    let events: Vec<_> = fleet.history().events_of(id).collect();
    let _ = write!(
        h,
        "<section id=\"repo-events\"><h2>Recent events <span class=\"count\">({}, newest first)</span></h2>",
        events.len()
    );
    if events.is_empty() {
        h.push_str("<div class=\"empty\">No event since the coordinator started.</div>");
    } else {
        h.push_str(
            "<table><tr><th class=\"num\">seq</th><th>time</th><th>kind</th><th>trigger</th><th class=\"num\">worker</th><th>refs</th></tr>",
        );
        for e in events {
            let kind = crate::page::kind_str(e.kind);
            let refs = crate::page::ref_changes(&e.refs, e.ref_count);
            let _ = write!(
                h,
                "<tr><td class=\"num\"><a href=\"/api/events?since={}&amp;limit=1\">{}</a></td><td>{}</td>\
                 <td><span class=\"badge {kind}\">{kind}</span></td><td>{}</td><td class=\"num\">{}</td><td>{refs}</td></tr>",
                e.seq.saturating_sub(1),
                e.seq,
                esc(&e.time),
                e.trigger.as_str(),
                e.worker,
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    let api = api_path(id);
    let _ = writeln!(
        h,
        "</main><footer><a href=\"/\">status page</a> · JSON: <a href=\"{0}\">{0}</a> · \
         <a href=\"{0}/refs\">{0}/refs</a></footer></body></html>",
        esc(&api)
    );
    Some(h)
}

/// Repos listed per search page.
pub const SEARCH_PAGE: usize = 50;

/// `GET /repos?q=TEXT&after=ID&url_after=ID`: the repos whose id starts with the text, in
/// id order, one page (a range of the repo table's B-tree, O(log repos + page)); then the
/// repos whose URL contains it, one page found off the loop by [`crate::url_search`]
/// (`urls`, after `url_after`). Each section pages by its own cursor.
pub fn search(
    fleet: &Fleet,
    q: &str,
    after: Option<&str>,
    urls: &crate::url_search::UrlHits,
    url_after: Option<&str>,
) -> String {
    use std::ops::Bound;
    let start = match after {
        Some(a) if a.starts_with(q) => Bound::Excluded(a),
        _ => Bound::Included(q),
    };
    let mut it = fleet
        .repos()
        .range::<str, _>((start, Bound::Unbounded))
        .take_while(|(id, _)| id.starts_with(q));
    let rows: Vec<_> = it.by_ref().take(SEARCH_PAGE).collect();
    let more = it.next().is_some();
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>repos {0}… · gitmirror</title>\
         <style>{CSS}</style></head><body><header><h1><a href=\"/\" style=\"color:#fff;text-decoration:none\">gitmirror</a></h1>\
         <span class=\"sub\">repos whose id starts with, or whose URL contains, <span class=\"mono\">{0}</span></span></header><main>\
         {1}<section id=\"found\"><h2>Repos by id <span class=\"count\">({2}{3})</span></h2>",
        esc(q),
        search_form(q),
        rows.len(),
        if more { " shown, more follow" } else { "" },
    );
    let enc = |s: &str| esc(&crate::ctl::encode(s));
    if rows.is_empty() {
        h.push_str("<div class=\"empty\">No repo id starts with that.</div>");
    } else {
        h.push_str("<table><tr><th>repo</th><th>state</th><th>url</th></tr>");
        for (id, r) in &rows {
            let s = r.state().as_str();
            let _ = write!(
                h,
                "<tr><td>{}</td><td><span class=\"badge {s}\">{s}</span></td><td class=\"mono\">{}</td></tr>",
                crate::page::repo_link(id),
                esc(&cut(&crate::redact::url(&r.url), 120)),
            );
        }
        h.push_str("</table>");
    }
    if let (true, Some((last, _))) = (more, rows.last()) {
        let _ = write!(
            h,
            "<p><a id=\"next\" href=\"/repos?q={}&amp;after={}{}\">next page</a></p>",
            enc(q),
            enc(last),
            url_after.map_or(String::new(), |a| format!("&amp;url_after={}", enc(a))),
        );
    }
    let _ = write!(
        h,
        "</section><section id=\"found-url\"><h2>Repos by URL <span class=\"count\">({}{})</span></h2>",
        urls.ids.len(),
        if urls.more { " shown, more follow" } else { "" },
    );
    if urls.ids.is_empty() {
        h.push_str("<div class=\"empty\">No repo URL contains that.</div>");
    } else {
        h.push_str("<table><tr><th>repo</th><th>state</th><th>url</th></tr>");
        for id in &urls.ids {
            // The snapshot may lag the fleet by an index read: a repo gone since is
            // listed without state, a blocked one as blocked.
            let (state, url) = match fleet.repo(id) {
                Some(r) => (r.state().as_str(), crate::redact::url(&r.url).into_owned()),
                None if fleet.registry().blocked(id).is_some() => ("blocked", String::new()),
                None => ("unknown", String::new()),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td><span class=\"badge {state}\">{state}</span></td><td class=\"mono\">{}</td></tr>",
                crate::page::repo_link(id),
                esc(&cut(&url, 120)),
            );
        }
        h.push_str("</table>");
    }
    if let (true, Some(last)) = (urls.more, urls.ids.last()) {
        let _ = write!(
            h,
            "<p><a id=\"next-url\" href=\"/repos?q={}{}&amp;url_after={}\">next page of URLs</a></p>",
            enc(q),
            after.map_or(String::new(), |a| format!("&amp;after={}", enc(a))),
            enc(last),
        );
    }
    h.push_str("</section></main></body></html>\n");
    h
}

/// The search box (`/` and the search page).
pub fn search_form(q: &str) -> String {
    format!(
        "<form class=\"search\" method=\"get\" action=\"/repos\" style=\"margin-bottom:14px\">\
         <input name=\"q\" value=\"{}\" placeholder=\"repo id prefix or URL text, e.g. a/abc or github.com/torvalds\" size=\"40\"> \
         <button type=\"submit\">Find repo</button></form>",
        esc(q)
    )
}

/// The page of a blocked repo (issue 16's takedown): blocked, why, when and by whom.
pub fn blocked(fleet: &Fleet, id: &str, now_ms: i64) -> Option<String> {
    let b = fleet.registry().blocked(id)?;
    let listed = match fleet.blocked_entry(id) {
        Some(e) => format!(
            "Index <span class=\"mono\">{}</span> lists it (<span class=\"mono\">{}</span>); the entry is skipped while the block stands.",
            esc(&e.index),
            esc(&crate::redact::url(&e.url))
        ),
        None => "No index lists it now.".to_owned(),
    };
    Some(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0} · blocked · gitmirror</title>\
         <style>{CSS}</style></head><body><header><h1><a href=\"/\" style=\"color:#fff;text-decoration:none\">gitmirror</a></h1>\
         <span class=\"sub\">repo <span class=\"mono\">{0}</span></span></header><main><section id=\"blocked\">\
         <h2>Repo <span class=\"mono\">{0}</span> <span class=\"badge failing\" id=\"state\">blocked</span></h2>\
         <p>Blocked {1} ago ({2}) by {3}. Reason: <strong id=\"reason\">{4}</strong></p>\
         <p>Every worker was told to drop its mirror; no index brings it back until it is unblocked \
         (<span class=\"mono\">gitmirrorctl unblock {0}</span>).</p><p>{5}</p>\
         <p><a href=\"/\">status page</a></p></section></main></body></html>\n",
        esc(id),
        ago((now_ms - b.at_ms).max(0) / 1000),
        gitmirror_common::rfc3339_ms(b.at_ms),
        esc(&b.by),
        esc(&b.reason),
        listed,
    ))
}

/// The page for an id no index has.
pub fn not_found(id: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>no repo {0}</title>\
         <style>{CSS}</style></head><body><header><h1>gitmirror</h1></header><main><section>\
         <h2>No repo <span class=\"mono\">{0}</span></h2><p>No index lists this repo id.</p>\
         <p><a href=\"/\">status page</a></p></section></main></body></html>\n",
        esc(id)
    )
}
