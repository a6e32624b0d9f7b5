//! Push hooks (SPEC §15, issue 14): forges tell the coordinator about a push, and the
//! repos whose URL the payload names are fetched at once (coalesced per repo).
//!
//! The HTTP task does everything that needs no fleet state, in this order, through
//! [`HookGate`]: the per-source limit ([`limit`]) before the body is read, the size cap,
//! the hook's name, its forge's proof ([`auth`]) and the payload's URLs ([`payload`]).
//! Only a call that passed all of them reaches the main loop (`Query::Hook`), which
//! matches the URLs ([`urls`]), coalesces ([`coalesce`]) and sends `FetchNow`. Answers
//! carry no detail an attacker could use (docs/design.md "Push hooks"); the reason is
//! logged at debug and counted in `gitmirror_hook_requests_total{result}`.

pub mod auth;
pub mod coalesce;
pub mod limit;
pub mod payload;
pub mod urls;

use crate::api::Answer;
use crate::config::WebhookSecret;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Github,
    Gitlab,
    /// Gitea and Forgejo.
    Gitea,
    Gitee,
    Generic,
}

impl HookKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "github" => Self::Github,
            "gitlab" => Self::Gitlab,
            "gitea" | "forgejo" => Self::Gitea,
            "gitee" => Self::Gitee,
            "generic" => Self::Generic,
            _ => return None,
        })
    }
}

/// One `push_hooks` entry, its secret read.
#[derive(Debug, Clone, PartialEq)]
pub struct PushHook {
    pub name: String,
    pub kind: HookKind,
    pub secret_file: PathBuf,
    pub secret: WebhookSecret,
}

/// Hook names are a path segment: `A-Z a-z 0-9 . _ -`, 1 to 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')"
        ))
    }
}

/// What became of a hook call, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Matched,
    Unmatched,
    Unauthorized,
    TooLarge,
    BadRequest,
    RateLimited,
    UnknownHook,
}

impl CallResult {
    pub const ALL: [CallResult; 7] = [
        CallResult::Matched,
        CallResult::Unmatched,
        CallResult::Unauthorized,
        CallResult::TooLarge,
        CallResult::BadRequest,
        CallResult::RateLimited,
        CallResult::UnknownHook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Matched => "matched",
            CallResult::Unmatched => "unmatched",
            CallResult::Unauthorized => "unauthorized",
            CallResult::TooLarge => "too_large",
            CallResult::BadRequest => "bad_request",
            CallResult::RateLimited => "rate_limited",
            CallResult::UnknownHook => "unknown_hook",
        }
    }

    /// The answer to a refused call: a status and a fixed word, nothing more.
    fn answer(self) -> Answer {
        let (status, word) = match self {
            CallResult::Unauthorized => (401, "unauthorized"),
            CallResult::TooLarge => (413, "too large"),
            CallResult::BadRequest => (400, "bad request"),
            CallResult::RateLimited => (429, "too many requests"),
            CallResult::UnknownHook => (404, "not found"),
            CallResult::Matched | CallResult::Unmatched => (500, "internal error"),
        };
        let a = Answer::error(status, word);
        if self == CallResult::RateLimited {
            a.with_header("Retry-After", "1")
        } else {
            a
        }
    }
}

/// The hooks as configured; replaced whole on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct HookSettings {
    pub hooks: Vec<PushHook>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl HookSettings {
    pub fn from_config(c: &crate::Config) -> Self {
        Self {
            hooks: c.push_hooks.clone(),
            trusted_proxies: c.hooks_trusted_proxies.clone(),
        }
    }
}

/// What the HTTP tasks share about hooks: settings, the per-source limit and counters.
#[derive(Debug, Default)]
pub struct HookGate {
    settings: RwLock<HookSettings>,
    limiter: Mutex<limit::Limiter>,
    counts: [AtomicU64; 7],
}

/// `/api/hooks/{name}`'s name, or `None` when `path` is not a hook path.
pub fn hook_name(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/hooks/")?;
    Some(rest.trim_end_matches('/'))
}

impl HookGate {
    pub fn new(settings: HookSettings) -> Self {
        Self {
            settings: RwLock::new(settings),
            ..Self::default()
        }
    }

    pub fn reload(&self, settings: HookSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    fn settings(&self) -> std::sync::RwLockReadGuard<'_, HookSettings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self, r: CallResult) {
        if let Some(i) = CallResult::ALL.iter().position(|x| *x == r) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(result, calls)` for `gitmirror_hook_requests_total`.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        CallResult::ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Refuse `r`: count it, log the reason at debug, and the answer.
    pub fn refuse(&self, r: CallResult, peer: IpAddr, why: &str) -> Answer {
        self.count(r);
        // Debug only: anyone who can connect could otherwise fill the log.
        tracing::debug!("push hook call from {peer} refused: {why}");
        r.answer()
    }

    /// Before the body is read: the per-source limit and the announced size.
    pub fn admit(
        &self,
        peer: IpAddr,
        headers: &[(String, String)],
        announced: u64,
        now_ms: i64,
    ) -> Result<(), Answer> {
        let src = limit::source(peer, headers, &self.settings().trusted_proxies);
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(src, now_ms);
        if !allowed {
            return Err(self.refuse(CallResult::RateLimited, src, "rate limited"));
        }
        if announced > crate::http::MAX_BODY as u64 {
            return Err(self.refuse(CallResult::TooLarge, src, "body over 1 MiB"));
        }
        Ok(())
    }

    /// The whole call read: the hook, its proof and the payload's URLs.
    pub fn check(
        &self,
        method: &str,
        name: &str,
        headers: &[(String, String)],
        body: &[u8],
        peer: IpAddr,
        now_ms: i64,
    ) -> Result<Vec<String>, Answer> {
        if method != "POST" {
            return Err(
                Answer::error(405, "method not allowed; use POST").with_header("Allow", "POST")
            );
        }
        let (kind, secret) = {
            let s = self.settings();
            match s.hooks.iter().find(|h| h.name == name) {
                Some(h) => (h.kind, h.secret.0.clone()),
                None => return Err(self.refuse(CallResult::UnknownHook, peer, "no such hook")),
            }
        };
        if !auth::verify(kind, &secret, headers, body, now_ms) {
            return Err(self.refuse(
                CallResult::Unauthorized,
                peer,
                &format!("hook {name}: wrong or missing signature or token"),
            ));
        }
        payload::urls(body).ok_or_else(|| {
            self.refuse(
                CallResult::BadRequest,
                peer,
                &format!("hook {name}: the payload is not a JSON object"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gate() -> HookGate {
        let kinds = ["github", "gitlab", "gitea", "gitee", "generic"];
        HookGate::new(HookSettings {
            hooks: kinds
                .iter()
                .map(|k| PushHook {
                    name: (*k).to_owned(),
                    kind: HookKind::parse(k).unwrap(),
                    secret_file: PathBuf::new(),
                    secret: WebhookSecret(format!("{k}-secret")),
                })
                .collect(),
            trusted_proxies: Vec::new(),
        })
    }

    fn header_names() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("X-Hub-Signature-256".to_owned()),
            Just("X-Gitea-Signature".to_owned()),
            Just("X-Gitlab-Token".to_owned()),
            Just("X-Gitee-Token".to_owned()),
            Just("X-Gitee-Timestamp".to_owned()),
            Just("X-Gitmirror-Signature".to_owned()),
            "[A-Za-z-]{1,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Issue 14 hostile input: arbitrary bodies and forge-looking headers (injected
        // values, wrong lengths, other kinds' names) are refused by every kind, 401 or 404,
        // and nothing panics.
        #[test]
        fn spec_15_fuzzed_calls_are_refused(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            headers in proptest::collection::vec((header_names(), "[ -~]{0,80}"), 0..6),
            name in prop_oneof![Just("github".to_owned()), Just("gitlab".to_owned()),
                Just("gitea".to_owned()), Just("gitee".to_owned()), Just("generic".to_owned()),
                "[ -~]{0,20}"],
        ) {
            let g = gate();
            let peer: IpAddr = "192.0.2.1".parse().unwrap();
            match g.check("POST", &name, &headers, &body, peer, 1_700_000_000_000) {
                Ok(urls) => prop_assert!(false, "accepted {name} {headers:?}: {urls:?}"),
                Err(a) => prop_assert!(a.status == 401 || a.status == 404, "{}", a.status),
            }
        }

        // Issue 14 hostile input: payload parsing and URL normalisation take any bytes and
        // any string without panicking; at most MAX_URLS come out of a payload.
        #[test]
        fn spec_15_fuzzed_payloads_and_urls(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            url in "\\PC{0,200}",
            shaped in proptest::collection::vec(("[a-z_]{1,12}", "\\PC{0,60}"), 0..40),
        ) {
            let _ = payload::urls(&body);
            let _ = gitmirror_common::upstream_url::normalise(&url);
            let repo: serde_json::Map<String, serde_json::Value> = shaped
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let doc = serde_json::json!({ "repository": repo.clone(), "project": repo });
            let urls = payload::urls(doc.to_string().as_bytes()).unwrap();
            prop_assert!(urls.len() <= payload::MAX_URLS);
            for u in &urls {
                let _ = gitmirror_common::upstream_url::normalise(u);
            }
        }
    }

    // SPEC §15: a call with the right proof gets its URLs; the method, the hook name and
    // the proof are checked in that order, and each refusal is counted by reason.
    #[test]
    fn spec_15_check_order_and_counts() {
        let g = gate();
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let body = br#"{"url":"https://h/a/b"}"#;
        let sig = crate::webhook::signature(b"generic-secret", body);
        let h = vec![("X-Gitmirror-Signature".to_owned(), sig)];
        assert_eq!(
            g.check("POST", "generic", &h, body, peer, 0).unwrap(),
            ["https://h/a/b"]
        );
        assert_eq!(
            g.check("GET", "generic", &h, body, peer, 0)
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            g.check("POST", "nope", &h, body, peer, 0)
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            g.check("POST", "github", &h, body, peer, 0)
                .unwrap_err()
                .status,
            401
        );
        let sig = crate::webhook::signature(b"generic-secret", b"[]");
        let h = vec![("X-Gitmirror-Signature".to_owned(), sig)];
        assert_eq!(
            g.check("POST", "generic", &h, b"[]", peer, 0)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(g.admit(peer, &[], 2 << 20, 0).unwrap_err().status, 413);
        let counts: std::collections::BTreeMap<_, _> = g.counts().into_iter().collect();
        assert_eq!(counts["unknown_hook"], 1);
        assert_eq!(counts["unauthorized"], 1);
        assert_eq!(counts["bad_request"], 1);
        assert_eq!(counts["too_large"], 1);
        assert_eq!(counts["rate_limited"], 0);
    }
}
