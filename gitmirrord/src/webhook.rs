//! Webhook delivery (SPEC §8; design.md "Events").
//!
//! One task per configured webhook POSTs each event, in sequence order and one at a time,
//! with the same JSON `GET /api/events` shows. Anything but a 2xx is retried with capped
//! exponential backoff, forever. Each webhook's cursor (the seq of the last event it
//! acknowledged) is kept in `<state_dir>/webhooks.json` and saved at most once a second
//! (and at shutdown), so after a restart delivery resumes from the cursor: at least once,
//! possibly repeating the last second's events after a crash. A webhook new to the file
//! starts at the newest event; one removed from the configuration forgets its cursor.
//! A cursor that falls behind retention (SPEC §12) skips to the oldest kept event, with
//! one log line and `gitmirror_webhook_skipped_events_total`.

use crate::config::Webhook;
use crate::events::{Event, EventLog, EventLogError};
use crate::metrics::WebhookMetric;
use gitmirror_common::statefile::{self, StateError};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

pub const FILE: &str = "webhooks.json";
const KIND: &str = "webhooks";
const VERSION: u32 = 1;
const MODE: u32 = 0o640;

/// Retry backoff: from this, doubling, capped at [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Per attempt: the whole request and response head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events read from the log per round.
const BATCH: usize = 100;
/// The cursor file is written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// While failing, one log line per this many attempts (and the first).
const LOG_EVERY_ATTEMPTS: u64 = 20;

/// `webhooks.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CursorFile {
    /// Webhook URL → seq of the last event it acknowledged.
    pub cursors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
struct HookState {
    cursor: u64,
    failures: u64,
    /// Events dropped by retention before delivery, since start.
    skipped: u64,
}

struct Shared {
    path: PathBuf,
    hooks: Mutex<BTreeMap<String, HookState>>,
    /// Serialises writes of the file (the temp file name is per process).
    write_lock: Mutex<()>,
    dirty: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HookState>> {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cursor(&self, url: &str) -> u64 {
        self.lock().get(url).map_or(0, |h| h.cursor)
    }

    fn delivered(&self, url: &str, seq: u64) {
        if let Some(h) = self.lock().get_mut(url) {
            h.cursor = h.cursor.max(seq);
        }
        self.dirty.notify_one();
    }

    /// Retention dropped the events after the cursor up to `oldest - 1`: move past them.
    /// Returns how many were skipped.
    fn skip_to(&self, url: &str, oldest: u64) -> u64 {
        let n = match self.lock().get_mut(url) {
            Some(h) if h.cursor + 1 < oldest => {
                let n = oldest - 1 - h.cursor;
                h.cursor = oldest - 1;
                h.skipped += n;
                n
            }
            _ => 0,
        };
        self.dirty.notify_one();
        n
    }

    fn failed(&self, url: &str) {
        if let Some(h) = self.lock().get_mut(url) {
            h.failures += 1;
        }
    }

    fn snapshot(&self) -> CursorFile {
        CursorFile {
            cursors: self
                .lock()
                .iter()
                .map(|(u, h)| (u.clone(), h.cursor))
                .collect(),
        }
    }

    /// Write the cursors (blocking).
    fn save(&self) -> Result<(), StateError> {
        let _g = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        statefile::write_json(&self.path, KIND, VERSION, &self.snapshot(), MODE)
    }
}

/// The webhook deliverers, owned by the main loop.
pub struct Webhooks {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    saver: tokio::task::JoinHandle<()>,
    log: Arc<Mutex<EventLog>>,
    last_seq: watch::Receiver<u64>,
    client: Option<reqwest::Client>,
}

/// Read `webhooks.json` (missing: empty; corrupt: an error naming it).
pub fn load(dir: &Path) -> Result<CursorFile, StateError> {
    Ok(statefile::read_json(&dir.join(FILE), KIND, VERSION)?.unwrap_or_default())
}

impl Webhooks {
    /// Start delivering to `hooks` with the cursors of `saved`.
    pub async fn start(
        dir: &Path,
        saved: CursorFile,
        hooks: &[Webhook],
        log: Arc<Mutex<EventLog>>,
        last_seq: watch::Receiver<u64>,
    ) -> Self {
        let shared = Arc::new(Shared {
            path: dir.join(FILE),
            hooks: Mutex::new(
                saved
                    .cursors
                    .into_iter()
                    .map(|(u, cursor)| {
                        (
                            u,
                            HookState {
                                cursor,
                                ..HookState::default()
                            },
                        )
                    })
                    .collect(),
            ),
            write_lock: Mutex::new(()),
            dirty: Notify::new(),
        });
        let saver = tokio::spawn(save_loop(shared.clone()));
        let mut me = Self {
            shared,
            tasks: Vec::new(),
            saver,
            log,
            last_seq,
            client: None,
        };
        me.set(hooks).await;
        me
    }

    /// Replace the configured webhooks (start, SIGHUP). Known URLs keep their cursor; new
    /// ones start at the newest event; removed ones are forgotten. A changed set of URLs
    /// is saved before delivery starts, so a new webhook's starting point survives a
    /// crash. Returns whether the set of URLs changed.
    pub async fn set(&mut self, hooks: &[Webhook]) -> bool {
        for t in self.tasks.drain(..) {
            // Aborting mid-delivery is safe: the cursor moves only after a 2xx.
            t.abort();
        }
        let newest = *self.last_seq.borrow();
        let changed = {
            let mut map = self.shared.lock();
            let before: Vec<String> = map.keys().cloned().collect();
            map.retain(|u, _| hooks.iter().any(|h| &h.url == u));
            for h in hooks {
                map.entry(h.url.clone()).or_insert(HookState {
                    cursor: newest,
                    ..HookState::default()
                });
            }
            before != map.keys().cloned().collect::<Vec<_>>()
        };
        if changed {
            let shared = self.shared.clone();
            match tokio::task::spawn_blocking(move || shared.save()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("{e}; webhook cursors are saved again later");
                    self.shared.dirty.notify_one();
                }
                Err(e) => tracing::error!("saving webhook cursors: {e}"),
            }
        }
        if hooks.is_empty() {
            return changed;
        }
        let client = match &self.client {
            Some(c) => c.clone(),
            None => match client() {
                Ok(c) => {
                    self.client = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::error!(
                        "cannot set up the webhook HTTP client: {e}; no webhook is called"
                    );
                    return changed;
                }
            },
        };
        for h in hooks {
            self.tasks.push(tokio::spawn(deliver(
                Hook {
                    url: h.url.clone(),
                    label: redact(&h.url),
                    secret: h.secret.as_ref().map(|s| Arc::<[u8]>::from(s.0.as_bytes())),
                },
                client.clone(),
                self.shared.clone(),
                self.log.clone(),
                self.last_seq.clone(),
            )));
        }
        changed
    }

    /// Per webhook (in URL order): pending events and failed attempts.
    pub fn metrics(&self) -> Vec<WebhookMetric> {
        let newest = *self.last_seq.borrow();
        self.shared
            .lock()
            .iter()
            .map(|(u, h)| WebhookMetric {
                url: redact(u),
                pending: newest.saturating_sub(h.cursor),
                failures: h.failures,
                skipped: h.skipped,
            })
            .collect()
    }

    /// Stop delivering and save the cursors.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.saver.abort();
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || shared.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e}"),
            Err(e) => tracing::error!("saving webhook cursors: {e}"),
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.saver.abort();
    }
}

/// The URL as shown in logs, metrics and the status page: scheme, host and port only.
/// Webhook URLs carry their tokens in the user info, the path (`/services/T0/B0/<token>`)
/// or the query (issue 10 finding 5), so none of these is shown; a path or query is
/// replaced by `/…` and 8 hex digits of the whole URL's SHA-256, which keep two hooks on
/// one host apart (in metrics labels too) and say nothing usable about the token. Read
/// by the `url` crate, as reqwest reads it (issue 11): a URL it cannot parse, which could
/// not be delivered either, shows only the digest.
pub fn redact(url: &str) -> String {
    let digest = <Sha256 as sha2::Digest>::digest(url.as_bytes());
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let Ok(u) = url::Url::parse(url) else {
        return format!("(not a URL) #{short}");
    };
    let host = u.host_str().unwrap_or("");
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    if matches!(u.path(), "" | "/") && u.query().is_none() && u.fragment().is_none() {
        let slash = if url.ends_with('/') { "/" } else { "" };
        return format!("{}://{host}{port}{slash}", u.scheme());
    }
    format!("{}://{host}{port}/… #{short}", u.scheme())
}

fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        // A redirect of a POST is not an acknowledgement.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gitmirrord/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut out = String::from("sha256=");
    // HMAC takes keys of any length; this cannot fail.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) {
        mac.update(body);
        for b in mac.finalize().into_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

async fn save_loop(shared: Arc<Shared>) {
    loop {
        shared.dirty.notified().await;
        tokio::time::sleep(SAVE_EVERY).await;
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("{e}; webhook cursors are kept in memory and saved again later");
                shared.dirty.notify_one();
            }
            Err(_) => return,
        }
    }
}

struct Hook {
    url: String,
    label: String,
    secret: Option<Arc<[u8]>>,
}

enum ReadError {
    /// Events after the cursor were dropped by retention; the oldest kept one.
    Gone(u64),
    Other(String),
}

async fn read_events(log: &Arc<Mutex<EventLog>>, cursor: u64) -> Result<Vec<Event>, ReadError> {
    let log = log.clone();
    match tokio::task::spawn_blocking(move || {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .after(cursor, BATCH)
    })
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(EventLogError::Gone { oldest_seq, .. })) => Err(ReadError::Gone(oldest_seq)),
        Ok(Err(e)) => Err(ReadError::Other(e.to_string())),
        Err(e) => Err(ReadError::Other(e.to_string())),
    }
}

/// One attempt: `Ok` on a 2xx, otherwise why not.
async fn post(client: &reqwest::Client, hook: &Hook, seq: u64, body: &[u8]) -> Result<(), String> {
    let mut req = client
        .post(&hook.url)
        .header("Content-Type", "application/json")
        .header("X-Gitmirror-Event-Seq", seq.to_string())
        .body(body.to_vec());
    if let Some(secret) = &hook.secret {
        req = req.header("X-Gitmirror-Signature", signature(secret, body));
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("answered {}", resp.status())),
        // reqwest puts the whole URL, token and all, in its message (issue 10 finding 5);
        // the log line names the hook by its label instead. The replace is for a source
        // error that quotes the URL itself.
        Err(e) => Err(error_chain(&e.without_url()).replace(&hook.url, &hook.label)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.9..1.1))
}

async fn deliver(
    hook: Hook,
    client: reqwest::Client,
    shared: Arc<Shared>,
    log: Arc<Mutex<EventLog>>,
    mut last_seq: watch::Receiver<u64>,
) {
    loop {
        let cursor = shared.cursor(&hook.url);
        let events = match read_events(&log, cursor).await {
            Ok(v) => v,
            Err(ReadError::Gone(oldest)) => {
                let n = shared.skip_to(&hook.url, oldest);
                tracing::warn!(
                    "webhook {}: {n} events after {cursor} were dropped by retention (events.retain / events.max_bytes) before it acknowledged them; skipping to event {oldest}",
                    hook.label
                );
                continue;
            }
            Err(ReadError::Other(e)) => {
                tracing::error!("webhook {}: cannot read the event log: {e}", hook.label);
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
        };
        if events.is_empty() {
            if last_seq.wait_for(|s| *s > cursor).await.is_err() {
                return; // the coordinator is stopping
            }
            continue;
        }
        for mut ev in events {
            // SPEC §9: the URL without user info, whenever the event was recorded.
            crate::api::redact_event(&mut ev);
            let body = match serde_json::to_vec(&ev) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(
                        "webhook {}: cannot encode event {}: {e}",
                        hook.label,
                        ev.seq
                    );
                    return;
                }
            };
            let mut backoff = BACKOFF_START;
            let mut attempts = 0u64;
            loop {
                match post(&client, &hook, ev.seq, &body).await {
                    Ok(()) => {
                        if attempts > 0 {
                            tracing::info!(
                                "webhook {}: event {} delivered after {attempts} failed attempts",
                                hook.label,
                                ev.seq
                            );
                        }
                        shared.delivered(&hook.url, ev.seq);
                        break;
                    }
                    Err(e) => {
                        attempts += 1;
                        shared.failed(&hook.url);
                        if attempts == 1 || attempts.is_multiple_of(LOG_EVERY_ATTEMPTS) {
                            tracing::warn!(
                                "webhook {}: delivering event {} failed ({attempts} attempts): {e}; retrying with backoff (at most {}s apart)",
                                hook.label,
                                ev.seq,
                                BACKOFF_MAX.as_secs()
                            );
                        }
                        tokio::time::sleep(jittered(backoff)).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §8: the signature is the hex HMAC-SHA256 of the body (RFC 4231 test case 2).
    #[test]
    fn hmac_signature() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    // issue 10 finding 5: a hook's label shows no user info, path or query (where its
    // token lives), and two hooks on one host keep different labels.
    #[test]
    fn urls_are_redacted() {
        let a = redact("https://user:pw@hooks.example.org:8443/a/b?token=x");
        assert!(a.starts_with("https://hooks.example.org:8443/… #"), "{a}");
        assert_eq!(a.len(), "https://hooks.example.org:8443/… #".len() + 8);
        let b = redact("https://hooks.example.org:8443/a/c");
        assert_ne!(a, b);
        for secret in ["user", "pw", "token", "/a/b", "/a/c"] {
            assert!(!a.contains(secret) && !b.contains(secret), "{a} {b}");
        }
        assert_eq!(redact("http://h"), "http://h");
        assert_eq!(redact("http://u@h/"), "http://h/");
        assert!(!redact("http://h?k=SECRET").contains("SECRET"));
        assert!(!redact("http://h#SECRET").contains("SECRET"));
    }

    // issue 11 part 4: a password holding `/` or `?` ended the hand-written authority
    // early, and the label showed the user and the start of the password. (Seen failing
    // before the fix: `https://user:pa/… #…`.)
    #[test]
    fn issue11_a_password_with_a_slash_or_question_mark_is_not_shown() {
        for url in [
            "https://user:pa/ss@hooks.example.org/x",
            "https://user:pa?ss@hooks.example.org/x",
            "https://user:pa#ss@hooks.example.org/",
            "https://user:p%2Fss@hooks.example.org/x",
        ] {
            let shown = redact(url);
            assert!(
                !shown.contains("user") && !shown.contains("pa"),
                "{url}: {shown}"
            );
        }
        assert_eq!(
            redact("https://user:p%2Fss@hooks.example.org:8443/"),
            "https://hooks.example.org:8443/"
        );
    }

    // issue 10 finding 5: a delivery that fails (nothing listens) to a URL with a token in
    // its path and query: the error that is logged names neither. (Seen failing before the
    // fix: reqwest's message quoted the whole URL.)
    #[tokio::test]
    async fn issue10_f5_delivery_errors_do_not_quote_the_url() {
        let url = "http://127.0.0.1:1/services/PATH-TOKEN?key=QUERY-TOKEN";
        let hook = Hook {
            url: url.into(),
            label: redact(url),
            secret: None,
        };
        gitmirror_common::install_crypto_provider();
        let client = client().unwrap();
        let e = post(&client, &hook, 1, b"{}").await.unwrap_err();
        assert!(
            !e.contains("PATH-TOKEN") && !e.contains("QUERY-TOKEN"),
            "{e}"
        );
        assert!(!hook.label.contains("TOKEN"), "{}", hook.label);
        assert!(!e.is_empty());
    }
}
