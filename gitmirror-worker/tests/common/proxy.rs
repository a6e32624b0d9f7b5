//! A TCP relay in front of a git server that records what the client sends, to see which
//! protocol commands a fetch uses, and counts what the server sends back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    pub port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    received: Arc<AtomicU64>,
}

impl Proxy {
    /// Relay `127.0.0.1:<new port>` to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let record = record.clone();
                let count = count.clone();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client, server, Some(record), None));
                std::thread::spawn(move || pump(s2, c2, None, Some(count)));
            }
        });
        Self {
            port,
            sent,
            received,
        }
    }

    /// Everything clients sent so far, as text (pkt-lines are mostly text).
    pub fn client_bytes(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }

    pub fn clear(&self) {
        self.sent.lock().unwrap().clear();
        self.received.store(0, Ordering::SeqCst);
    }

    /// Bytes the server sent to clients so far (pack data included).
    pub fn server_bytes(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    record: Option<Arc<Mutex<Vec<u8>>>>,
    count: Option<Arc<AtomicU64>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(r) = &record {
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                // Counted before it reaches the client, so a finished client saw it counted.
                if let Some(c) = &count {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
