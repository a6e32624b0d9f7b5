//! A tiny blocking HTTP/1.1 client over `TcpStream`: enough for the status API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response the client accepts.
const MAX_RESPONSE: usize = 64 << 20;

/// Send one request to `127.0.0.1:<port>`; returns (status, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()))
        .map_err(|e| format!("{method} {path}: write: {e}"))?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(done) = parse_response(&buf)? {
            return Ok(done);
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{method} {path}: read: {e}"))?;
        if n == 0 {
            // Closed: a response without a length ends here.
            return parse_response_at_eof(&buf).ok_or_else(|| {
                format!(
                    "{method} {path}: connection closed mid-response: {:?}",
                    String::from_utf8_lossy(&buf)
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(format!(
                "{method} {path}: response over {MAX_RESPONSE} bytes"
            ));
        }
    }
}

struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    body_start: usize,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    Ok(Some(Head {
        status,
        chunked,
        length,
        body_start: end + 4,
    }))
}

/// A complete response in `buf`, if there is one yet.
fn parse_response(buf: &[u8]) -> Result<Option<(u16, String)>, String> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let body = &buf[head.body_start..];
    if head.chunked {
        return Ok(dechunk(body).map(|b| (head.status, String::from_utf8_lossy(&b).into_owned())));
    }
    match head.length {
        Some(n) if body.len() >= n => Ok(Some((
            head.status,
            String::from_utf8_lossy(&body[..n]).into_owned(),
        ))),
        _ => Ok(None),
    }
}

fn parse_response_at_eof(buf: &[u8]) -> Option<(u16, String)> {
    let head = parse_head(buf).ok()??;
    if head.chunked || head.length.is_some() {
        return None;
    }
    Some((
        head.status,
        String::from_utf8_lossy(&buf[head.body_start..]).into_owned(),
    ))
}

/// Decode a complete chunked body, or `None` while incomplete.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

pub fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    request(port, "GET", path, None)
}

pub fn post(port: u16, path: &str, body: &str) -> Result<(u16, String), String> {
    request(port, "POST", path, Some(body))
}

/// GET `path` expecting 200 and a JSON body.
pub fn get_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let (status, body) = get(port, path)?;
    if status != 200 {
        return Err(format!("GET {path}: status {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {path}: bad JSON ({e}): {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(r).unwrap(), Some((200, "ok".into())));
        let r = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), Some((404, "abcde".into())));
        let partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab";
        assert_eq!(parse_response(partial).unwrap(), None);
        let eof = b"HTTP/1.0 200 OK\r\n\r\nbody";
        assert_eq!(parse_response_at_eof(eof), Some((200, "body".into())));
    }
}
