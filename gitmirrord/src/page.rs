//! `GET /` (SPEC §9): one HTML page a person reads at a glance — workers, repo counts,
//! failing repos with their last error, recent events, indexes and webhooks.
//!
//! Server-rendered, inline CSS, no scripts or external assets; it refreshes itself every
//! 10 s. Every string that comes from outside (index entries, worker names and status
//! lines, upstream error messages, URLs) goes through [`esc`], and URLs in them through
//! [`redact`] (before any cut, so a cut cannot hide the `@` that marks a password). Lists are bounded, and
//! counts and the failing list come from the fleet's census, so a render costs
//! O(workers + indexes + listed rows), never a walk of the repos (SPEC §12).

use crate::events::Event;
use crate::fleet::{Fleet, RepoState};
use crate::index::IndexStatus;
use crate::metrics::WebhookMetric;
use crate::redact;
use crate::registry::WorkerState;
use std::fmt::Write;

/// Failing repos listed; the rest are counted.
pub const MAX_FAILING: usize = 50;
/// Recent events listed.
pub const RECENT_EVENTS: usize = 20;
/// Refs shown per event.
const REFS_PER_EVENT: usize = 3;
/// Longest error message shown (characters).
const MAX_MESSAGE: usize = 300;

/// Everything the page shows besides the fleet.
pub struct PageInputs<'a> {
    pub now_ms: i64,
    pub uptime_secs: u64,
    /// Newest last.
    pub recent: &'a [Event],
    pub last_seq: u64,
    pub index: &'a [IndexStatus],
    pub webhooks: &'a [WebhookMetric],
    /// Limited and paused upstream hosts (SPEC §18).
    pub hosts: &'a [crate::host_budget::HostView],
    /// The staleness plot's ceiling, and where it comes from.
    pub max_interval_secs: u64,
    pub max_interval_from: &'a str,
}

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The first `n` characters, with an ellipsis when cut.
pub(crate) fn cut(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

/// `3 s`, `5 min`, `2 h`, `4 d`.
pub(crate) fn ago(secs: i64) -> String {
    let s = secs.max(0);
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else if s < 86_400 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3600)
    }
}

/// A link to the repo's page (`/repos/{id}`), its id as the text.
pub fn repo_link(id: &str) -> String {
    format!(
        "<a class=\"mono\" href=\"{}\">{}</a>",
        esc(&repo_path(id)),
        esc(id)
    )
}

/// `/repos/{id}`, every byte but unreserved ones and `/` percent-encoded.
pub fn repo_path(id: &str) -> String {
    let mut out = String::from("/repos/");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An event kind as the API spells it.
pub(crate) fn kind_str(k: crate::events::EventKind) -> &'static str {
    match k {
        crate::events::EventKind::Cloned => "cloned",
        crate::events::EventKind::Updated => "updated",
        crate::events::EventKind::Removed => "removed",
    }
}

/// Ref changes, one line each, and "+N more" when the event had `total`.
pub(crate) fn ref_changes(refs: &[crate::events::RefUpdate], total: u64) -> String {
    let short = |v: &Option<String>| {
        v.as_deref()
            .map_or("∅".to_owned(), |s| s.chars().take(9).collect())
    };
    let mut out = String::new();
    for r in refs {
        let _ = write!(
            out,
            "<div class=\"mono\">{} <span class=\"muted\">{} → {}</span></div>",
            esc(&cut(&r.name, 80)),
            esc(&short(&r.old)),
            esc(&short(&r.new)),
        );
    }
    if total > refs.len() as u64 {
        let _ = write!(
            out,
            "<div class=\"muted\">+{} more</div>",
            total - refs.len() as u64
        );
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub(crate) const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2933;background:#f3f5f8}
header{background:#1f2d3d;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}
header h1{margin:0;font-size:20px;letter-spacing:.3px}
header .sub{color:#b8c4d2;font-size:13px}
main{padding:18px 28px 28px;max-width:1400px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(96px,1fr));gap:10px;margin-bottom:18px}
.tile{background:#fff;border-radius:8px;padding:10px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08);border-top:4px solid #8896a6}
.tile .n{font-size:24px;font-weight:600}
.tile .l{color:#5b6b7c;font-size:11px;text-transform:uppercase;letter-spacing:.4px;white-space:nowrap}
.tile.ok{border-top-color:#2f9e44}.tile.warn{border-top-color:#e8a317}.tile.bad{border-top-color:#d64545}.tile.info{border-top-color:#3b7dd8}
section{background:#fff;border-radius:8px;box-shadow:0 1px 2px rgba(0,0,0,.08);padding:12px 18px 16px;margin-bottom:18px;overflow-x:auto}
h2{font-size:16px;margin:2px 0 10px}
h2 .count{color:#5b6b7c;font-weight:400}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.4px;color:#5b6b7c;border-bottom:2px solid #e3e8ee;padding:6px 10px}
td{border-bottom:1px solid #edf0f4;padding:6px 10px;vertical-align:baseline}
tr:last-child td{border-bottom:none}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600}
.alive,.mirrored,.cloned{background:#e3f6e8;color:#1f7a35}
.suspect,.pending,.waiting,.updated{background:#fff3d6;color:#8a5a00}
.dead,.failing,.removed{background:#fde4e4;color:#b42323}
.gone,.unassigned{background:#eceff3;color:#4a5968}
.msg{color:#7a2e2e;max-width:640px;word-break:break-word}
.muted{color:#7b8794}
.empty{color:#7b8794;font-style:italic;padding:4px 0}
footer{color:#7b8794;font-size:12px;padding:0 28px 24px}
footer a{color:#3b6fb6}
a.mono{color:#1f4f8f;text-decoration:none}a.mono:hover{text-decoration:underline}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0}
dl.kv dt{color:#5b6b7c}dl.kv dd{margin:0}
.why{font-size:15px;margin:4px 0 10px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px}
.plots section{margin-bottom:0}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:12px;color:#5b6b7c}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.groups{display:grid;grid-template-columns:1fr 1fr;gap:18px}
"#;

/// Render the page.
pub fn render(fleet: &Fleet, p: &PageInputs<'_>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let registry = fleet.registry();
    let count = |s: WorkerState| registry.iter().filter(|w| w.state == s).count();
    let (alive, suspect, dead) = (
        count(WorkerState::Alive),
        count(WorkerState::Suspect),
        count(WorkerState::Dead),
    );
    let census = fleet.census();
    let n = |s: RepoState| census.in_state(s);
    let total = census.total();

    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>gitmirror: {alive} workers, {total} repos, {} failing</title><style>{CSS}</style></head><body>\
         <header><h1>gitmirror</h1><span class=\"sub\">coordinator {} · up {} · as of {} · refreshes every 10 s</span></header><main>",
        n(RepoState::Failing),
        esc(env!("CARGO_PKG_VERSION")),
        ago(p.uptime_secs as i64),
        esc(&gitmirror_common::rfc3339_ms(p.now_ms)),
    );

    h.push_str(&crate::repo_page::search_form(""));
    // Tiles.
    h.push_str("<div class=\"tiles\">");
    let tile = |h: &mut String, class: &str, num: String, label: &str| {
        let _ = write!(
            h,
            "<div class=\"tile {class}\"><div class=\"n\">{num}</div><div class=\"l\">{label}</div></div>"
        );
    };
    tile(&mut h, "ok", alive.to_string(), "workers up");
    tile(
        &mut h,
        if suspect > 0 { "warn" } else { "" },
        suspect.to_string(),
        "suspect",
    );
    tile(
        &mut h,
        if dead > 0 { "bad" } else { "" },
        dead.to_string(),
        "dead",
    );
    tile(&mut h, "info", total.to_string(), "repos");
    tile(&mut h, "ok", n(RepoState::Mirrored).to_string(), "mirrored");
    tile(&mut h, "", n(RepoState::Pending).to_string(), "pending");
    let failing = n(RepoState::Failing);
    tile(
        &mut h,
        if failing > 0 { "bad" } else { "" },
        failing.to_string(),
        "failing",
    );
    tile(&mut h, "", n(RepoState::Gone).to_string(), "gone");
    tile(&mut h, "", n(RepoState::Waiting).to_string(), "waiting");
    let unassigned = n(RepoState::Unassigned);
    tile(
        &mut h,
        if unassigned > 0 { "warn" } else { "" },
        unassigned.to_string(),
        "unassigned",
    );
    let blocked = fleet.registry().blocked_all().len();
    tile(
        &mut h,
        if blocked > 0 { "warn" } else { "" },
        blocked.to_string(),
        "blocked",
    );
    tile(&mut h, "info", format!("#{}", p.last_seq), "last event");
    h.push_str("</div>");

    plots(&mut h, fleet, p);
    workers(&mut h, fleet, p.now_ms);
    failing_repos(&mut h, fleet, p.now_ms);
    events(&mut h, p);
    indexes(&mut h, p.index);
    webhooks(&mut h, p.webhooks);
    hosts(&mut h, p.hosts, p.now_ms);

    h.push_str(
        "</main><footer>JSON: <a href=\"/api/status\">/api/status</a> · \
         <a href=\"/api/workers\">/api/workers</a> · <a href=\"/api/repos\">/api/repos</a> · \
         <a href=\"/api/events\">/api/events</a> · <a href=\"/api/index\">/api/index</a> · \
         <a href=\"/metrics\">/metrics</a></footer></body></html>\n",
    );
    h
}

/// `60`, `5m`, `2h`, `7d`: a bucket bound, short.
fn short(secs: f64) -> String {
    let s = secs as i64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// The plots (issue 16 item 2), each from a bounded aggregate: the census's staleness
/// counts (an hour of seconds and a week of minutes at most), the history's 60 minute
/// slots, the registry, and the census's failing groups.
fn plots(h: &mut String, fleet: &Fleet, p: &PageInputs<'_>) {
    use crate::plots;
    let census = fleet.census();
    h.push_str("<div class=\"plots\">");

    // Staleness: per bucket, from the cumulative counts.
    let mut prev = 0;
    let mut buckets = Vec::new();
    let mut marker = None;
    for (i, (bound, cum)) in census.staleness(p.now_ms).cumulative().enumerate() {
        let label = if bound.is_finite() {
            format!("≤{}", short(bound))
        } else {
            ">7d".to_owned()
        };
        if marker.is_none() && bound >= p.max_interval_secs as f64 {
            marker = Some(i);
        }
        buckets.push((label, cum - prev));
        prev = cum;
    }
    let mark = format!(
        "max_interval {} ({})",
        short(p.max_interval_secs as f64),
        p.max_interval_from
    );
    let over: u64 = buckets
        .iter()
        .skip(marker.map_or(buckets.len(), |i| i + 1))
        .map(|(_, n)| n)
        .sum();
    let _ = write!(
        h,
        "<section id=\"staleness\"><h2>Staleness <span class=\"count\">(now − last successful fetch;          {over} beyond max_interval, {} never fetched)</span></h2>{}</section>",
        census.never_mirrored(),
        plots::bars(
            "staleness-plot",
            "repos by time since their last successful fetch",
            &buckets,
            marker.map(|i| (i, mark.as_str())),
        )
    );

    // Outcomes per minute by class.
    const ORDER: [&str; 7] = [
        "ok",
        "transient",
        "rate-limited",
        "auth",
        "local",
        "gone",
        "waiting",
    ];
    let minutes: Vec<Vec<(String, u64)>> = fleet
        .history()
        .outcomes_per_minute(p.now_ms)
        .into_iter()
        .map(|m| m.into_iter().map(|(c, n)| (c.name(), n)).collect())
        .collect();
    let mut classes: Vec<String> = ORDER.iter().map(|s| (*s).to_owned()).collect();
    for (c, _) in minutes.iter().flatten() {
        if !classes.contains(c) {
            classes.push(c.clone());
        }
    }
    let _ = write!(
        h,
        "<section id=\"outcomes\"><h2>Fetch outcomes per minute <span class=\"count\">(last hour, by class)</span></h2>{}</section>",
        plots::per_minute(
            "outcomes-plot",
            "fetch outcomes per minute by class",
            &minutes,
            &classes
        )
    );

    // Events per minute.
    let events: Vec<Vec<(String, u64)>> = fleet
        .history()
        .events_per_minute(p.now_ms)
        .into_iter()
        .map(|n| vec![("events".to_owned(), n)])
        .collect();
    let _ = write!(
        h,
        "<section id=\"events-rate\"><h2>Events per minute <span class=\"count\">(last hour)</span></h2>{}</section>",
        plots::per_minute(
            "events-plot",
            "events per minute",
            &events,
            &["events".to_owned()]
        )
    );

    // Shares: owned repos against weight among the live workers.
    let mut list: Vec<_> = fleet.registry().iter().collect();
    list.sort_by_key(|w| w.id);
    let owned: usize = list.iter().map(|w| census.owned(&w.uuid)).sum();
    // A drained worker's fair share is none (issue 16).
    let weights: f64 = list
        .iter()
        .filter(|w| w.state == WorkerState::Alive && !w.drained)
        .map(|w| w.weight)
        .sum();
    let shares: Vec<crate::plots::Share> = list
        .iter()
        .map(|w| {
            let repos = census.owned(&w.uuid);
            crate::plots::Share {
                label: format!("{} {}", w.id, cut(&w.name, 18)),
                repos,
                actual: if owned > 0 {
                    repos as f64 / owned as f64
                } else {
                    0.0
                },
                fair: if w.state == WorkerState::Alive && !w.drained && weights > 0.0 {
                    w.weight / weights
                } else {
                    0.0
                },
            }
        })
        .collect();
    let _ = write!(
        h,
        "<section id=\"shares\"><h2>Worker shares <span class=\"count\">(bar: share of owned repos; line: weighted fair share)</span></h2>{}</section>",
        if shares.is_empty() {
            "<div class=\"empty\">No worker has connected yet.</div>".to_owned()
        } else {
            plots::shares("shares-plot", &shares)
        }
    );
    h.push_str("</div>");

    // Failing and gone repos by class and by host.
    let _ = write!(
        h,
        "<section id=\"failing-groups\"><h2>Failing repos by class and by upstream host</h2><div class=\"groups\">"
    );
    let mut classes: Vec<(String, usize)> = census
        .failing_by_class()
        .iter()
        .map(|(c, n)| {
            (
                c.map_or("unknown".to_owned(), crate::history::error_class_name),
                *n,
            )
        })
        .collect();
    classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    h.push_str("<table id=\"by-class\"><tr><th>class</th><th class=\"num\">repos</th></tr>");
    if classes.is_empty() {
        h.push_str("<tr><td colspan=\"2\" class=\"empty\">none</td></tr>");
    }
    for (c, n) in &classes {
        let _ = write!(
            h,
            "<tr><td><span class=\"badge failing\">{}</span></td><td class=\"num\" data-class=\"{}\">{n}</td></tr>",
            esc(c),
            esc(c)
        );
    }
    const HOSTS: usize = 15;
    let _ = write!(
        h,
        "</table><table id=\"by-host\"><tr><th>host <span class=\"count\">({} in all)</span></th><th class=\"num\">repos</th></tr>",
        census.failing_hosts()
    );
    let mut any = false;
    for (host, n) in census.failing_by_host().take(HOSTS) {
        any = true;
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td class=\"num\" data-host=\"{}\">{n}</td></tr>",
            esc(&cut(&crate::redact::text(host), 80)),
            esc(host)
        );
    }
    if !any {
        h.push_str("<tr><td colspan=\"2\" class=\"empty\">none</td></tr>");
    }
    h.push_str("</table></div></section>");
}

fn workers(h: &mut String, fleet: &Fleet, now_ms: i64) {
    let census = fleet.census();
    let mut list: Vec<_> = fleet.registry().iter().collect();
    list.sort_by_key(|w| w.id);
    let _ = write!(
        h,
        "<section id=\"workers\"><h2>Workers <span class=\"count\">({})</span></h2>",
        list.len()
    );
    if list.is_empty() {
        h.push_str("<div class=\"empty\">No worker has connected yet.</div></section>");
        return;
    }
    h.push_str(
        "<table><tr><th class=\"num\">id</th><th>name</th><th>state</th><th>address</th>\
         <th class=\"num\">repos</th><th class=\"num\">weight</th><th class=\"num\">disk free</th>\
         <th>last seen</th><th>status</th></tr>",
    );
    for w in list {
        let seen = if w.state == WorkerState::Alive {
            "now".to_owned()
        } else {
            format!("{} ago", ago((now_ms - w.last_seen_ms) / 1000))
        };
        let disk = match (w.disk_free_bytes, w.disk_low) {
            (Some(b), true) => format!("<span class=\"badge failing\">{} low</span>", bytes(b)),
            (Some(b), false) => bytes(b),
            (None, _) => "<span class=\"muted\">—</span>".into(),
        };
        let _ = write!(
            h,
            "<tr><td class=\"num\">{}</td><td>{}</td><td><span class=\"badge {s}\">{s}</span>{drained}</td>\
             <td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{disk}</td><td>{seen}</td><td>{}</td></tr>",
            w.id,
            esc(&w.name),
            esc(w.addr.as_deref().unwrap_or("—")),
            census.owned(&w.uuid),
            w.weight,
            esc(&cut(&redact::text(&w.status), 200)),
            s = w.state.as_str(),
            drained = if w.drained {
                " <span class=\"badge unassigned drained\">drained</span>"
            } else {
                ""
            },
        );
    }
    h.push_str("</table></section>");
}

fn failing_repos(h: &mut String, fleet: &Fleet, now_ms: i64) {
    let census = fleet.census();
    let count = census.in_state(RepoState::Failing) + census.in_state(RepoState::Gone);
    // Newest failure first.
    let failing: Vec<(&str, &crate::fleet::Repo)> = census
        .failing()
        .take(MAX_FAILING)
        .filter_map(|id| fleet.repo(id).map(|r| (&**id, r)))
        .collect();
    let _ = write!(
        h,
        "<section id=\"failing\"><h2>Failing repos <span class=\"count\">({count})</span></h2>"
    );
    if failing.is_empty() {
        h.push_str("<div class=\"empty\">No repo is failing.</div></section>");
        return;
    }
    h.push_str(
        "<table><tr><th>repo</th><th>state</th><th class=\"num\">worker</th><th>class</th>\
         <th>last error</th><th>when</th><th class=\"num\">failures</th></tr>",
    );
    for (id, r) in &failing {
        let worker = r
            .owner
            .and_then(|o| fleet.worker(&o))
            .map_or("—".to_owned(), |w| w.id.to_string());
        let (class, msg, when) = match &r.status.last_error {
            Some(e) => (
                serde_json::to_value(e.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                cut(&redact::text(&e.message), MAX_MESSAGE),
                format!("{} ago", ago((now_ms - e.time_ms) / 1000)),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let state = r.state().as_str();
        let _ = write!(
            h,
            "<tr><td>{}</td><td><span class=\"badge {state}\">{state}</span></td>\
             <td class=\"num\">{worker}</td><td>{}</td><td class=\"msg\">{}</td><td>{when}</td>\
             <td class=\"num\">{}</td></tr>",
            repo_link(id),
            esc(&class),
            esc(&msg),
            r.status.failures,
        );
    }
    h.push_str("</table>");
    if count > MAX_FAILING {
        let _ = write!(
            h,
            "<div class=\"muted\">…and {} more: <a href=\"/api/repos?state=failing\">/api/repos?state=failing</a>, \
             <a href=\"/api/repos?state=gone\">?state=gone</a></div>",
            count - MAX_FAILING
        );
    }
    h.push_str("</section>");
}

fn events(h: &mut String, p: &PageInputs<'_>) {
    let _ = write!(
        h,
        "<section id=\"events\"><h2>Recent events <span class=\"count\">(last {} of {})</span></h2>",
        p.recent.len().min(RECENT_EVENTS),
        p.last_seq
    );
    if p.recent.is_empty() {
        h.push_str("<div class=\"empty\">No event yet.</div></section>");
        return;
    }
    h.push_str(
        "<table><tr><th class=\"num\">seq</th><th>time</th><th>repo</th><th>kind</th>\
         <th>trigger</th><th class=\"num\">worker</th><th>refs</th></tr>",
    );
    for e in p.recent.iter().rev().take(RECENT_EVENTS) {
        let kind = kind_str(e.kind);
        let trigger = e.trigger.as_str();
        let shown = e.refs.len().min(REFS_PER_EVENT);
        let refs = ref_changes(&e.refs[..shown], e.refs.len() as u64);
        let _ = write!(
            h,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td>\
             <td><span class=\"badge {kind}\">{kind}</span></td><td>{trigger}</td><td class=\"num\">{}</td><td>{refs}</td></tr>",
            e.seq,
            esc(&e.time),
            repo_link(&e.repo),
            e.worker,
        );
    }
    h.push_str("</table></section>");
}

fn indexes(h: &mut String, index: &[IndexStatus]) {
    let _ = write!(
        h,
        "<section id=\"indexes\"><h2>Indexes <span class=\"count\">({})</span></h2>",
        index.len()
    );
    if index.is_empty() {
        h.push_str("<div class=\"empty\">No index configured.</div></section>");
        return;
    }
    h.push_str(
        "<table><tr><th>name</th><th>url</th><th>commit</th><th>last poll</th>\
         <th class=\"num\">entries</th><th class=\"num\">rejected</th><th>held update</th><th>last error</th></tr>",
    );
    for s in index {
        let commit = s
            .commit
            .as_deref()
            .map_or("—".to_owned(), |c| c.chars().take(12).collect());
        let held = match &s.held {
            Some(hu) => format!(
                "<span class=\"badge failing\">{} removals held ({:.1} %)</span>",
                hu.removals, hu.percent
            ),
            None => "<span class=\"muted\">—</span>".into(),
        };
        let rejected = if s.rejected.is_empty() {
            "0".to_owned()
        } else {
            format!(
                "<a href=\"/api/index\" class=\"badge waiting\">{}</a>",
                s.rejected.len()
            )
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{rejected}</td><td>{held}</td><td class=\"msg\">{}</td></tr>",
            esc(&s.name),
            esc(&cut(&redact::url(&s.url), 100)),
            esc(&commit),
            esc(s.last_poll.as_deref().unwrap_or("never")),
            s.entries,
            esc(&cut(
                &redact::text(s.last_error.as_deref().unwrap_or("")),
                MAX_MESSAGE
            )),
        );
    }
    h.push_str("</table></section>");
}

fn webhooks(h: &mut String, hooks: &[WebhookMetric]) {
    if hooks.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"webhooks\"><h2>Webhooks <span class=\"count\">({})</span></h2>\
         <table><tr><th>url</th><th class=\"num\">pending events</th><th class=\"num\">failed attempts</th></tr>",
        hooks.len()
    );
    for w in hooks {
        let pending = if w.pending > 0 {
            format!("<span class=\"badge waiting\">{}</span>", w.pending)
        } else {
            "0".into()
        };
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{pending}</td><td class=\"num\">{}</td></tr>",
            esc(&cut(&w.url, 150)),
            w.failures
        );
    }
    h.push_str("</table></section>");
}

/// SPEC §18: the fleet-wide budgets and paused hosts, when there are any.
fn hosts(h: &mut String, hosts: &[crate::host_budget::HostView], now_ms: i64) {
    if hosts.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"hosts\"><h2>Upstream hosts <span class=\"count\">({})</span></h2>\
         <table><tr><th>host</th><th class=\"num\">connections in use / budget</th>\
         <th class=\"num\">fetches last minute / budget</th><th class=\"num\">workers</th><th>paused</th></tr>",
        hosts.len()
    );
    let limit = |v: Option<u32>| v.map_or("unlimited".to_owned(), |n| n.to_string());
    for v in hosts {
        let paused = match v.paused_until_ms {
            Some(t) if t > now_ms => format!(
                "<span class=\"badge failing\">{} more</span>",
                ago((t - now_ms) / 1000)
            ),
            _ => "no".into(),
        };
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{} / {}</td><td class=\"num\">{} / {}</td><td class=\"num\">{}</td><td>{paused}</td></tr>",
            esc(&cut(&v.host, 150)),
            v.in_use_connections,
            limit(v.connections),
            v.in_use_per_minute,
            limit(v.per_minute),
            v.workers
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §18: the page's table of limited and paused hosts.
    #[test]
    fn spec_18_hosts_table() {
        let mut h = String::new();
        hosts(&mut h, &[], 0);
        assert!(h.is_empty());
        let v = crate::host_budget::HostView {
            host: "github.com".into(),
            connections: Some(200),
            per_minute: None,
            granted_connections: 150,
            in_use_connections: 120,
            in_use_per_minute: 900,
            workers: 3,
            paused_until_ms: Some(65_000),
        };
        hosts(&mut h, &[v], 5_000);
        assert!(h.contains("github.com"), "{h}");
        assert!(
            h.contains("120 / 200") && h.contains("900 / unlimited"),
            "{h}"
        );
        assert!(h.contains("1 min more"), "{h}");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\u{7}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{fffd}"
        );
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("äöü", 3), "äöü");
        assert_eq!(ago(59), "59 s");
        assert_eq!(ago(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
