//! The per-source limit on hook calls (SPEC §15): a token bucket per source address,
//! checked before a body is read. The source is the peer, or, when the peer is one of
//! `hooks_trusted_proxies`, the rightmost `X-Forwarded-For` address that is not itself a
//! trusted proxy. IPv6 sources are keyed by their /64 (one host owns a /64).

use std::collections::HashMap;
use std::net::IpAddr;

/// Calls a second a source may make on average…
pub const RATE_PER_SEC: f64 = 100.0;
/// …and at once.
pub const BURST: f64 = 1000.0;
/// Most sources remembered; when full, sources whose bucket is full again are forgotten,
/// and if none is, a new source is refused until one is.
pub const MAX_SOURCES: usize = 10_000;

/// The address the limit counts a call against.
pub fn source(peer: IpAddr, headers: &[(String, String)], trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("X-Forwarded-For"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip.to_canonical()) => continue,
            Ok(ip) => return ip.to_canonical(),
            // Not an address (a proxy that adds ports, or a forgery): stop believing.
            Err(_) => return peer,
        }
    }
    peer
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<IpAddr, (f64, i64)>,
}

impl Limiter {
    /// Whether `source` may make a call at `now_ms` (and count it).
    pub fn allow(&mut self, source: IpAddr, now_ms: i64) -> bool {
        let k = key(source);
        if !self.buckets.contains_key(&k) && self.buckets.len() >= MAX_SOURCES {
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, now_ms) < BURST);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(k).or_insert((BURST, now_ms));
        let t = refill(*tokens, *at, now_ms);
        *at = now_ms;
        if t >= 1.0 {
            *tokens = t - 1.0;
            true
        } else {
            *tokens = t;
            false
        }
    }
}

fn refill(tokens: f64, at_ms: i64, now_ms: i64) -> f64 {
    let secs = now_ms.saturating_sub(at_ms).max(0) as f64 / 1000.0;
    (tokens + secs * RATE_PER_SEC).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(xff: &[&str]) -> Vec<(String, String)> {
        xff.iter()
            .map(|v| ("X-Forwarded-For".to_owned(), (*v).to_owned()))
            .collect()
    }

    // SPEC §15 hooks_trusted_proxies: X-Forwarded-For is believed only from a trusted
    // peer, and only up to the first hop that is not a trusted proxy.
    #[test]
    fn spec_15_forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not a proxy: its header is ignored (anyone can send one).
        assert_eq!(
            source(ip("203.0.113.9"), &hs(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // A proxy: the client it names.
        assert_eq!(
            source(ip("10.0.0.2"), &hs(&["1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
        // A client forging a chain: the rightmost untrusted hop is the one the proxy saw.
        assert_eq!(
            source(
                ip("10.0.0.2"),
                &hs(&["6.6.6.6, 1.2.3.4, 10.0.0.3"]),
                &trusted
            ),
            ip("1.2.3.4")
        );
        assert_eq!(
            source(ip("10.0.0.2"), &hs(&["6.6.6.6", "1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
        // Garbage or nothing: the proxy itself.
        assert_eq!(
            source(ip("10.0.0.2"), &hs(&["nonsense"]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(source(ip("10.0.0.2"), &[], &trusted), ip("10.0.0.2"));
        assert_eq!(
            source(ip("::ffff:10.0.0.2"), &hs(&["1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
    }

    // Issue 14: a flood from one source is refused after its burst while another source
    // still gets through; the bucket refills with time.
    #[test]
    fn spec_15_per_source_limit() {
        let mut l = Limiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let passed = (0..5000).filter(|_| l.allow(a, 0)).count();
        assert_eq!(passed, BURST as usize);
        assert!(l.allow(b, 0));
        assert!(!l.allow(a, 0));
        assert!(l.allow(a, 1000));
        // One IPv6 host cannot get fresh buckets by changing its interface id.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let passed = (0..5000u32)
            .filter(|i| l.allow(v6(&format!("2001:db8::{:x}", i + 1)), 0))
            .count();
        assert_eq!(passed, BURST as usize);
        // Sources are bounded.
        let mut l = Limiter::default();
        for i in 0..MAX_SOURCES as u32 {
            assert!(l.allow(IpAddr::V4(std::net::Ipv4Addr::from(i)), 0));
        }
        assert!(!l.allow(v6("2001:db8::1"), 0));
        // Once their buckets are full again they are forgotten.
        assert!(l.allow(v6("2001:db8::1"), 60_000));
    }
}
