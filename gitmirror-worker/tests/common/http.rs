//! A small smart-HTTP git server for tests: `std::net` in front of `git http-backend`
//! (CGI), which can play a rate-limiting host (429 with `Retry-After`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The request's `User-Agent`.
    pub user_agent: Option<String>,
    /// What `git http-backend` wrote to stderr for it.
    pub stderr: String,
    /// The `Retry-After` seconds of a 429 answer.
    pub retry_after: Option<u64>,
    /// The request's `Authorization`.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Limit {
    /// Answer 429 for this long after the first request, with the remaining time as
    /// `Retry-After`.
    window: Option<Duration>,
    started: Option<Instant>,
    /// Refuse as GitHub does when a quota is spent: 403 with `x-ratelimit-remaining: 0`
    /// and `x-ratelimit-reset` (Unix seconds), no `Retry-After`.
    github: bool,
}

pub struct HttpGit {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    limit: Arc<Mutex<Limit>>,
    /// Answer every request with a 302 to this base followed by the request target.
    redirect: Arc<Mutex<Option<String>>>,
    /// Answer 401 to every request without exactly this `Authorization`.
    auth: Arc<Mutex<Option<String>>>,
}

impl HttpGit {
    /// Serve the repositories under `root` at `http://127.0.0.1:<port>/<name>`.
    pub fn start(root: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let limit = Arc::new(Mutex::new(Limit::default()));
        let redirect = Arc::new(Mutex::new(None));
        let auth = Arc::new(Mutex::new(None));
        let (s, l, r, a, root) = (
            seen.clone(),
            limit.clone(),
            redirect.clone(),
            auth.clone(),
            root.to_owned(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, l, r, a, root) = (s.clone(), l.clone(), r.clone(), a.clone(), root.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &s, &l, &r, &a);
                });
            }
        });
        Self {
            port,
            seen,
            limit,
            redirect,
            auth,
        }
    }

    /// From the next request on, answer 401 (`WWW-Authenticate: Basic`) to every request
    /// whose `Authorization` is not exactly `value` (e.g. `Bearer t0k3n`).
    pub fn require_authorization(&self, value: &str) {
        *self.auth.lock().unwrap() = Some(value.to_owned());
    }

    /// From the next request on, answer everything with `302 Found` to `base` followed
    /// by the request's path and query (`base` like `http://localhost:8080`).
    pub fn redirect_to(&self, base: &str) {
        *self.redirect.lock().unwrap() = Some(base.to_owned());
    }

    /// From the next request on, refuse everything for `window` with 429 and a
    /// `Retry-After` of the time left (whole seconds, rounded up).
    pub fn rate_limit(&self, window: Duration) {
        *self.limit.lock().unwrap() = Limit {
            window: Some(window),
            started: None,
            github: false,
        };
    }

    /// As [`Self::rate_limit`], but refused the way GitHub refuses a spent quota.
    pub fn rate_limit_like_github(&self, window: Duration) {
        *self.limit.lock().unwrap() = Limit {
            window: Some(window),
            started: None,
            github: true,
        };
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut conn: TcpStream,
    root: &PathBuf,
    seen: &Mutex<Vec<Seen>>,
    limit: &Mutex<Limit>,
    redirect: &Mutex<Option<String>>,
    auth: &Mutex<Option<String>>,
) -> std::io::Result<()> {
    let at = Instant::now();
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_owned();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));

    let refuse = {
        let mut l = limit.lock().unwrap();
        match l.window {
            Some(window) => {
                let started = *l.started.get_or_insert(at);
                let left = (started + window).saturating_duration_since(at);
                (!left.is_zero()).then(|| left.as_secs_f64().ceil() as u64)
            }
            None => None,
        }
    };
    let record = |status, stderr: String| {
        seen.lock().unwrap().push(Seen {
            at,
            method: method.clone(),
            path: path.to_owned(),
            status,
            user_agent: header("user-agent"),
            stderr,
            retry_after: refuse.filter(|_| status == 429),
            authorization: header("authorization"),
        })
    };
    if let Some(base) = redirect.lock().unwrap().clone() {
        record(302, String::new());
        write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: {base}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return conn.flush();
    }
    if let Some(wanted) = auth.lock().unwrap().clone()
        && header("authorization").as_deref() != Some(wanted.as_str())
    {
        record(401, String::new());
        write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return conn.flush();
    }
    let github = limit.lock().unwrap().github;
    if let (Some(secs), true) = (refuse, github) {
        record(403, String::new());
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + secs;
        let msg = "API rate limit exceeded\n";
        write!(
            conn,
            "HTTP/1.1 403 Forbidden\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: {reset}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        )?;
        return conn.flush();
    }
    if let Some(secs) = refuse {
        record(429, String::new());
        let msg = "slow down\n";
        write!(
            conn,
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        )?;
        return conn.flush();
    }

    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("REQUEST_METHOD", &method)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", len.to_string())
        .env(
            "HTTP_GIT_PROTOCOL",
            header("git-protocol").unwrap_or_default(),
        )
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = cgi.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdin = cgi.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    cgi.stdout.take().unwrap().read_to_end(&mut out)?;
    let _ = writer.join();
    let _ = cgi.wait();

    // CGI answer: headers, a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let (head, content) = match split {
        Some((p, n)) => (
            String::from_utf8_lossy(&out[..p]).into_owned(),
            &out[p + n..],
        ),
        None => (String::new(), &out[..]),
    };
    let mut status = 200u16;
    let mut reply = String::new();
    for h in head.lines() {
        if let Some(v) = h.strip_prefix("Status:") {
            status = v
                .trim()
                .split(' ')
                .next()
                .unwrap_or("200")
                .parse()
                .unwrap_or(200);
        } else if !h.trim().is_empty() {
            reply.push_str(h.trim_end());
            reply.push_str("\r\n");
        }
    }
    record(status, errors.join().unwrap_or_default());
    write!(
        conn,
        "HTTP/1.1 {status} X\r\n{reply}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    conn.write_all(content)?;
    conn.flush()
}
