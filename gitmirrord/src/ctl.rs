//! The HTTP API client of the command-line tools (`gitmirrord workers …`, `gitmirrorctl`):
//! the daemon's address and token from its configuration file, one request per call, and
//! errors that say whether the daemon is down, refused, or has no such thing.

use crate::config::Config;
use std::net::SocketAddr;
use std::time::Duration;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: the daemon is not running there, or the network is in the way.
    #[error(
        "cannot reach the daemon at {base}: {why} (is gitmirrord running? `systemctl status gitmirrord`)"
    )]
    Down { base: String, why: String },
    /// An answer with an error status.
    #[error("the daemon at {base} answered {status}: {message}")]
    Status {
        base: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

impl CallError {
    /// 404 from the daemon.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 404, .. })
    }
}

/// The daemon's API at `base` (`http://host:port`), with the tokens to present.
pub struct ApiClient {
    base: String,
    /// Sent with mutating calls (`api_token_file`).
    token: Option<String>,
    /// Sent with reads (`api_read_token_file`, else the API token).
    read_token: Option<String>,
    client: reqwest::Client,
}

/// `http_listen` as a client reaches it: a daemon listening on every address is asked
/// on loopback.
pub fn local_base(mut addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

impl ApiClient {
    /// The daemon of this configuration, with its tokens.
    pub fn for_config(cfg: &Config, agent: &str) -> Result<Self, CallError> {
        let token = cfg.api_token.as_ref().map(|t| t.0.clone());
        let read = cfg.api_read_token.as_ref().map(|t| t.0.clone());
        Self::new(local_base(cfg.http_listen), token, read, agent)
    }

    pub fn new(
        base: String,
        token: Option<String>,
        read_token: Option<String>,
        agent: &str,
    ) -> Result<Self, CallError> {
        gitmirror_common::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(agent)
            .build()
            .map_err(|e| CallError::Other(e.to_string()))?;
        let read_token = read_token.or_else(|| token.clone());
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            read_token,
            client,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET` (or `POST` when `post`) `path`; the body of a 2xx answer.
    pub async fn call(&self, post: bool, path: &str) -> Result<String, CallError> {
        self.call_with(post, path, None).await
    }

    /// `POST` `path` with a JSON body; the body of a 2xx answer.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, CallError> {
        self.call_with(true, path, Some(body)).await
    }

    async fn call_with(
        &self,
        post: bool,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, CallError> {
        let url = format!("{}{path}", self.base);
        let (req, token) = if post {
            (self.client.post(&url), &self.token)
        } else {
            (self.client.get(&url), &self.read_token)
        };
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => req,
        };
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            // The causes say what happened (connection refused, timed out).
            let e = e.without_url();
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            CallError::Down {
                base: self.base.clone(),
                why,
            }
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            // The API's errors are `{"error": "…"}`.
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.trim().to_owned());
            return Err(CallError::Status {
                base: self.base.clone(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }
}

/// Percent-encode a query value or a path segment (all but unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A repo id as a path (`a/b/c`), its segments encoded.
pub fn encode_id(id: &str) -> String {
    id.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `GET /api/workers/pending` as a table headed by how to approve with `tool`; empty when
/// no worker waits.
pub fn pending_table(pending: &serde_json::Value, tool: &str) -> String {
    let Some(list) = pending.as_array().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut out = format!(
        "\nwaiting for approval (`{tool} workers approve UUID`):\nUUID\tNAME\tADDRESS\tATTEMPTS\n"
    );
    for p in list {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            cell(&p["uuid"]),
            cell(&p["name"]),
            cell(&p["addr"]),
            cell(&p["attempts"])
        ));
    }
    out
}
