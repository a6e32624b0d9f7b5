//! What a SIGHUP can change in a running coordinator (SPEC §11).
//!
//! Reloaded: `log_level`, `indexes` (with their `poll_interval`s), `webhooks` (URLs and
//! secrets), `api_token_file` and `api_read_token_file` (paths and contents),
//! `api_allowed_hosts`, `push_hooks`, `hooks_min_gap`, `hooks_trusted_proxies`, `host_limits`, and the
//! embedded worker's `local_worker.fetch` and `local_worker.disk`. Everything else is fixed for the life of
//! the process — sockets, state directory, worker ids, liveness timing, index reading
//! rules, the embedded worker's identity and directories — and a change to it is named in
//! the log as needing a restart. Pure functions, so the rules are tested without a
//! daemon.

use crate::config::Config;
use std::fmt::Debug;

/// The result of comparing the running configuration with the file.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub log_level: bool,
    pub indexes: bool,
    pub webhooks: bool,
    /// `api_token_file`, `api_read_token_file` or `api_allowed_hosts` (SPEC §9).
    pub api_token: bool,
    /// `push_hooks`, `hooks_min_gap` or `hooks_trusted_proxies` (SPEC §15).
    pub hooks: bool,
    /// `host_limits` (SPEC §18).
    pub host_limits: bool,
    /// `local_worker.fetch` or `local_worker.disk` changed: send them to the embedded worker.
    pub local_worker: bool,
    /// One phrase per reloaded setting that changed, e.g. `log_level info → debug`.
    pub applied: Vec<String>,
    /// `(key, "old → new")` for each changed setting that needs a restart.
    pub needs_restart: Vec<(String, String)>,
}

fn show<T: Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    if s.chars().count() > 120 {
        let mut t: String = s.chars().take(120).collect();
        t.push('…');
        t
    } else {
        s
    }
}

/// Compare `old` (running) with `new` (just loaded).
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    if old.log_level != new.log_level {
        p.log_level = true;
        p.applied
            .push(format!("log_level {} → {}", old.log_level, new.log_level));
    }
    if old.indexes != new.indexes {
        p.indexes = true;
        let names = |c: &Config| {
            c.indexes
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        p.applied
            .push(format!("indexes [{}] → [{}]", names(old), names(new)));
    }
    if old.webhooks != new.webhooks {
        p.webhooks = true;
        p.applied.push(format!(
            "webhooks ({} → {})",
            old.webhooks.len(),
            new.webhooks.len()
        ));
    }
    if old.api_token_file != new.api_token_file || old.api_token != new.api_token {
        p.api_token = true;
        p.applied.push(match &new.api_token_file {
            Some(f) => format!("api_token_file {}", f.display()),
            None => "api_token_file (removed)".into(),
        });
    }
    if old.api_read_token_file != new.api_read_token_file
        || old.api_read_token != new.api_read_token
    {
        p.api_token = true;
        p.applied.push(match &new.api_read_token_file {
            Some(f) => format!("api_read_token_file {}", f.display()),
            None => "api_read_token_file (removed)".into(),
        });
    }
    if old.api_allowed_hosts != new.api_allowed_hosts {
        p.api_token = true;
        let shown = |c: &Config| {
            c.api_allowed_hosts
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        p.applied.push(format!(
            "api_allowed_hosts [{}] → [{}]",
            shown(old),
            shown(new)
        ));
    }
    if old.push_hooks != new.push_hooks
        || old.hooks_min_gap != new.hooks_min_gap
        || old.hooks_trusted_proxies != new.hooks_trusted_proxies
    {
        p.hooks = true;
        p.applied.push(format!(
            "push_hooks ({} → {}), hooks_min_gap, hooks_trusted_proxies",
            old.push_hooks.len(),
            new.push_hooks.len()
        ));
    }
    if old.host_limits != new.host_limits {
        p.host_limits = true;
        p.applied.push(format!(
            "host_limits ({} → {} hosts)",
            old.host_limits.len(),
            new.host_limits.len()
        ));
    }
    if old.status_url_limit != new.status_url_limit {
        p.applied.push(format!(
            "status_url_limit {} → {}",
            old.status_url_limit, new.status_url_limit
        ));
    }
    let mut needs_restart = Vec::new();
    let mut restart = |key: &str, changed: bool, o: String, n: String| {
        if changed {
            needs_restart.push((key.to_owned(), format!("{o} → {n}")));
        }
    };
    restart(
        "listen",
        old.listen != new.listen,
        old.listen.to_string(),
        new.listen.to_string(),
    );
    restart(
        "http_listen",
        old.http_listen != new.http_listen,
        old.http_listen.to_string(),
        new.http_listen.to_string(),
    );
    restart(
        "hooks_listen",
        old.hooks_listen != new.hooks_listen,
        show(&old.hooks_listen),
        show(&new.hooks_listen),
    );
    restart(
        "state_dir",
        old.state_dir != new.state_dir,
        old.state_dir.display().to_string(),
        new.state_dir.display().to_string(),
    );
    restart(
        "max_workers",
        old.max_workers != new.max_workers,
        old.max_workers.to_string(),
        new.max_workers.to_string(),
    );
    let dur = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let (ol, nl) = (&old.liveness, &new.liveness);
    restart(
        "liveness.keepalive_interval",
        ol.keepalive_interval != nl.keepalive_interval,
        dur(ol.keepalive_interval),
        dur(nl.keepalive_interval),
    );
    restart(
        "liveness.suspect_after",
        ol.suspect_after != nl.suspect_after,
        dur(ol.suspect_after),
        dur(nl.suspect_after),
    );
    restart(
        "liveness.dead_after",
        ol.dead_after != nl.dead_after,
        dur(ol.dead_after),
        dur(nl.dead_after),
    );
    restart(
        "allow_file_urls",
        old.allow_file_urls != new.allow_file_urls,
        old.allow_file_urls.to_string(),
        new.allow_file_urls.to_string(),
    );
    // SPEC §14: a switch rescores every repo; the start path does that off the loop that
    // answers workers, so it waits for a restart (plan fork-pools C3).
    let placement = |p: Option<crate::ring::Placement>| match p {
        Some(p) => p.as_str().to_owned(),
        None => "unset".to_owned(),
    };
    restart(
        "placement",
        old.placement != new.placement,
        placement(old.placement),
        format!(
            "{} (repos move make before break after the restart)",
            placement(new.placement)
        ),
    );
    let hashing = |h: Option<crate::ring::Hashing>| match h {
        Some(h) => h.as_str().to_owned(),
        None => "unset".to_owned(),
    };
    restart(
        "hashing",
        old.hashing != new.hashing,
        hashing(old.hashing),
        format!(
            "{} (repos move make before break after the restart)",
            hashing(new.hashing)
        ),
    );
    // SPEC §13: the placement of every replicated repo changes; as `placement`, the start
    // path does that.
    restart(
        "replicas",
        old.replicas != new.replicas,
        old.replicas.describe(),
        new.replicas.describe(),
    );
    restart(
        "purge_protect_percent",
        old.purge_protect_percent != new.purge_protect_percent,
        old.purge_protect_percent.to_string(),
        new.purge_protect_percent.to_string(),
    );
    restart(
        "events",
        old.events != new.events,
        format!("{:?}", old.events),
        format!("{:?}", new.events),
    );
    match (&old.local_worker, &new.local_worker) {
        (Some(o), Some(n)) => {
            restart(
                "local_worker.mirror_dir",
                o.mirror_dir != n.mirror_dir,
                o.mirror_dir.display().to_string(),
                n.mirror_dir.display().to_string(),
            );
            restart(
                "local_worker.state_dir",
                o.state_dir != n.state_dir,
                show(&o.state_dir),
                show(&n.state_dir),
            );
            restart(
                "local_worker.name",
                o.name != n.name,
                show(&o.name),
                show(&n.name),
            );
            restart(
                "local_worker.weight",
                o.weight != n.weight,
                show(&o.weight),
                show(&n.weight),
            );
            // Both are built into the worker's HTTP client once.
            restart(
                "local_worker.upstream_deny",
                o.upstream_deny != n.upstream_deny,
                show(&o.upstream_deny),
                show(&n.upstream_deny),
            );
            restart(
                "local_worker.fetch.redirects",
                o.fetch.redirects != n.fetch.redirects,
                show(&o.fetch.redirects),
                show(&n.fetch.redirects),
            );
            // The embedded worker takes new fetch and disk settings while running.
            if o.fetch != n.fetch || o.disk != n.disk {
                p.local_worker = true;
                p.applied.push("local_worker.fetch/disk".into());
            }
            restart(
                "local_worker.serve_url_base",
                o.serve_url_base != n.serve_url_base,
                show(&o.serve_url_base),
                show(&n.serve_url_base),
            );
        }
        (None, None) => {}
        (o, n) => restart(
            "local_worker",
            true,
            if o.is_some() { "set" } else { "not set" }.into(),
            if n.is_some() { "set" } else { "not set" }.into(),
        ),
    }
    p.needs_restart = needs_restart;
    p
}

/// The configuration in force after a reload: the reloadable settings of `new`, the
/// restart-only settings of `old`.
pub fn merge(old: &Config, new: Config) -> Config {
    Config {
        path: new.path,
        log_level: new.log_level,
        indexes: new.indexes,
        webhooks: new.webhooks,
        api_token_file: new.api_token_file,
        api_token: new.api_token,
        api_read_token_file: new.api_read_token_file,
        api_read_token: new.api_read_token,
        api_allowed_hosts: new.api_allowed_hosts,
        status_url_limit: new.status_url_limit,
        push_hooks: new.push_hooks,
        hooks_min_gap: new.hooks_min_gap,
        hooks_trusted_proxies: new.hooks_trusted_proxies,
        host_limits: new.host_limits,
        warnings: new.warnings,
        ..old.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("/etc/g.yaml"), text).unwrap()
    }

    // SPEC §18: host_limits are reloaded (applied, kept by the merge, no restart).
    #[test]
    fn spec_18_host_limits_are_reloaded() {
        let old = cfg("indexes: [{name: a, url: /a}]\n");
        let new = cfg(
            "indexes: [{name: a, url: /a}]\nhost_limits: [{host: github.com, connections: 200}]\n",
        );
        let p = plan(&old, &new);
        assert!(p.host_limits, "{p:?}");
        assert!(p.needs_restart.is_empty(), "{p:?}");
        assert!(p.applied.iter().any(|a| a.contains("host_limits")), "{p:?}");
        let merged = merge(&old, new);
        assert_eq!(merged.host_limits.len(), 1);
    }

    // SPEC §11: what a reload applies and what it names as needing a restart.
    #[test]
    fn plan_names_every_change() {
        let old = cfg("listen: 0.0.0.0:5555\nindexes: [{name: a, url: /a}]\n");
        let same = plan(&old, &old);
        assert_eq!(same, Plan::default());

        let new = cfg("listen: 127.0.0.1:6000\nlog_level: debug\nmax_workers: 3\n\
             liveness: {dead_after: 30s}\nindexes: [{name: a, url: /a, poll_interval: 5s}, {name: b, url: /b}]\n\
             webhooks: [{url: 'http://127.0.0.1:1/h'}]\n\
             local_worker: {mirror_dir: /m}\n");
        let p = plan(&old, &new);
        assert!(p.log_level && p.indexes && p.webhooks && !p.api_token);
        assert_eq!(p.applied.len(), 3, "{:?}", p.applied);
        assert!(p.applied[0].contains("info → debug"), "{:?}", p.applied);
        let keys: Vec<&str> = p.needs_restart.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listen",
                "max_workers",
                "liveness.dead_after",
                "local_worker"
            ]
        );
        assert!(
            p.needs_restart[0]
                .1
                .contains("0.0.0.0:5555 → 127.0.0.1:6000")
        );

        let merged = merge(&old, new.clone());
        assert_eq!(merged.listen, old.listen);
        assert_eq!(merged.max_workers, old.max_workers);
        assert_eq!(merged.log_level, "debug");
        assert_eq!(merged.indexes, new.indexes);
        assert_eq!(merged.webhooks, new.webhooks);
        assert!(merged.local_worker.is_none());
        // The restart-only changes are named again by the next reload.
        assert_eq!(plan(&merged, &new).needs_restart.len(), 4);
    }

    #[test]
    fn local_worker_fetch_limits_reload_its_name_does_not() {
        let old = cfg("local_worker: {mirror_dir: /m, fetch: {concurrency: 2}}\n");
        let new = cfg("local_worker: {mirror_dir: /m, fetch: {concurrency: 4}}\n");
        let p = plan(&old, &new);
        assert!(p.local_worker && p.needs_restart.is_empty());
        assert_eq!(p.applied, ["local_worker.fetch/disk"]);
        let new = cfg("local_worker: {mirror_dir: /m, name: other, fetch: {concurrency: 2}}\n");
        let p = plan(&old, &new);
        assert!(!p.local_worker);
        assert_eq!(p.needs_restart[0].0, "local_worker.name");
        // Issue 10: the upstream policy is built into the worker's HTTP client once.
        let new = cfg(
            "local_worker: {mirror_dir: /m, upstream_deny: [10.0.0.0/8], fetch: {concurrency: 2, redirects: any}}\n",
        );
        let p = plan(&old, &new);
        let keys: Vec<&str> = p.needs_restart.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            keys,
            ["local_worker.upstream_deny", "local_worker.fetch.redirects"]
        );
    }

    // SPEC §14, §11: `placement` needs a restart (a switch rescores every repo at start).
    #[test]
    fn spec_14_placement_needs_a_restart() {
        let old = cfg("");
        let new = cfg("placement: repo\n");
        let p = plan(&old, &new);
        assert_eq!(p.needs_restart.len(), 1, "{:?}", p.needs_restart);
        assert_eq!(p.needs_restart[0].0, "placement");
        assert!(p.needs_restart[0].1.starts_with("unset → repo"), "{:?}", p);
        assert_eq!(merge(&old, new).placement, None, "kept until a restart");
    }

    // The owner function (`hashing`) needs a restart as `placement` does: a switch places
    // every repo again at start (design.md "Owner function: points on a circle").
    #[test]
    fn hashing_needs_a_restart() {
        let old = cfg("");
        let new = cfg("hashing: rendezvous\n");
        let p = plan(&old, &new);
        assert_eq!(p.needs_restart.len(), 1, "{:?}", p.needs_restart);
        assert_eq!(p.needs_restart[0].0, "hashing");
        assert!(
            p.needs_restart[0].1.starts_with("unset → rendezvous"),
            "{p:?}"
        );
        assert_eq!(merge(&old, new).hashing, None, "kept until a restart");
    }

    // SPEC §13: `replicas` (and an index's) needs a restart.
    #[test]
    fn spec_13_replicas_need_a_restart() {
        let old = cfg("");
        let new = cfg("replicas: 2\n");
        let p = plan(&old, &new);
        assert_eq!(p.needs_restart.len(), 1, "{:?}", p.needs_restart);
        assert_eq!(p.needs_restart[0].0, "replicas");
        assert_eq!(merge(&old, new).replicas.default, 1, "kept until a restart");
    }

    // SPEC §15, §11: push_hooks, hooks_min_gap and hooks_trusted_proxies are reloaded
    // on SIGHUP; hooks_listen (a socket) needs a restart.
    #[test]
    fn spec_15_hook_keys_are_reloaded_but_hooks_listen_needs_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "k").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let old = cfg("");
        let new = cfg(&format!(
            "push_hooks: [{{name: gh, kind: github, secret_file: {}}}]\nhooks_min_gap: 1s\nhooks_trusted_proxies: [10.0.0.1]\nhooks_listen: 127.0.0.1:8090\n",
            f.display()
        ));
        let p = plan(&old, &new);
        assert!(p.hooks, "{p:?}");
        assert_eq!(p.needs_restart.len(), 1, "{p:?}");
        assert_eq!(p.needs_restart[0].0, "hooks_listen");
        let merged = merge(&old, new);
        assert_eq!(merged.push_hooks.len(), 1);
        assert_eq!(merged.hooks_min_gap, std::time::Duration::from_secs(1));
        assert_eq!(merged.hooks_trusted_proxies.len(), 1);
        assert_eq!(merged.hooks_listen, None, "kept as running");
    }

    // SPEC §9, §11: api_allowed_hosts (and api_read_token_file, read like api_token_file)
    // are reloaded, named in the log line, and kept by the merge.
    #[test]
    fn spec_9_http_auth_keys_are_reloaded() {
        let old = cfg("");
        let new = cfg("api_allowed_hosts: [mirror.example:8089]\n");
        let p = plan(&old, &new);
        assert!(p.api_token && p.needs_restart.is_empty(), "{p:?}");
        assert!(
            p.applied[0].contains("api_allowed_hosts [] → [mirror.example:8089]"),
            "{p:?}"
        );
        let merged = merge(&old, new);
        assert_eq!(merged.api_allowed_hosts.len(), 1);
    }
}
