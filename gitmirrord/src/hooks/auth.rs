//! Each forge's own proof that a hook call is from it (SPEC §15), checked in constant
//! time. A pure function of the headers, the body, the secret and the clock.

use super::HookKind;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a Gitee signature's timestamp may be from now (a captured signature is not
/// good for ever).
pub const GITEE_WINDOW_MS: i64 = 3_600_000;

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16);
            Some((d(p[0])? * 16 + d(p[1])?) as u8)
        })
        .collect()
}

/// Whether `given` is the hex HMAC-SHA256 of `body` under `secret` (constant time).
fn hmac_hex_ok(secret: &[u8], body: &[u8], given: &str) -> bool {
    let Some(raw) = hex_decode(given.trim()) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&raw).is_ok()
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// `sha256=<hex>` as GitHub, Gitea and gitmirror's own webhooks send it.
fn prefixed_ok(secret: &[u8], body: &[u8], value: Option<&str>) -> bool {
    value
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .is_some_and(|hex| hmac_hex_ok(secret, body, hex))
}

/// Gitee's signature: `base64(HMAC-SHA256(secret, "<timestamp ms>\n<secret>"))`, maybe
/// percent-encoded.
fn gitee_signature_ok(secret: &str, token: &str, timestamp: Option<&str>, now_ms: i64) -> bool {
    use base64::Engine;
    let Some(ts) = timestamp.map(str::trim) else {
        return false;
    };
    let Ok(ts_ms) = ts.parse::<i64>() else {
        return false;
    };
    if now_ms.abs_diff(ts_ms) > GITEE_WINDOW_MS as u64 {
        return false;
    }
    let decoded = token
        .trim()
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(decoded) else {
        return false;
    };
    let mut m = mac(secret.as_bytes());
    m.update(format!("{ts}\n{secret}").as_bytes());
    m.verify_slice(&raw).is_ok()
}

/// Whether the call carries `kind`'s proof under `secret`.
pub fn verify(
    kind: HookKind,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now_ms: i64,
) -> bool {
    let key = secret.as_bytes();
    let h = |n| header(headers, n);
    match kind {
        HookKind::Github => prefixed_ok(key, body, h("X-Hub-Signature-256")),
        HookKind::Gitea => {
            prefixed_ok(key, body, h("X-Hub-Signature-256"))
                || ["X-Gitea-Signature", "X-Forgejo-Signature"]
                    .iter()
                    .any(|n| h(n).is_some_and(|v| hmac_hex_ok(key, body, v)))
        }
        HookKind::Gitlab => h("X-Gitlab-Token").is_some_and(|t| equal(t, secret)),
        HookKind::Gitee => h("X-Gitee-Token").is_some_and(|t| {
            // Both always computed: which mode is configured is not revealed by timing.
            let plain = equal(t, secret);
            let signed = gitee_signature_ok(secret, t, h("X-Gitee-Timestamp"), now_ms);
            plain | signed
        }),
        HookKind::Generic => prefixed_ok(key, body, h("X-Gitmirror-Signature")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sign_hex(secret: &str, body: &[u8]) -> String {
        crate::webhook::signature(secret.as_bytes(), body)
            .trim_start_matches("sha256=")
            .to_owned()
    }

    pub fn gitee_sign(secret: &str, ts: i64) -> String {
        use base64::Engine;
        let mut m = mac(secret.as_bytes());
        m.update(format!("{ts}\n{secret}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    }

    fn hs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // SPEC §15: each kind's proof is accepted when right and refused when wrong, missing,
    // for another body, or in another kind's header.
    #[test]
    fn spec_15_each_kind_checks_its_own_proof() {
        let s = "hook-secret";
        let body = br#"{"repository":{"clone_url":"https://h/a/b.git"}}"#;
        let good = sign_hex(s, body);
        let other = sign_hex(s, b"{}");
        let now = 1_700_000_000_000;
        type Case<'a> = (HookKind, Vec<(&'a str, String)>, bool);
        let cases: Vec<Case> = vec![
            (
                HookKind::Github,
                vec![("X-Hub-Signature-256", format!("sha256={good}"))],
                true,
            ),
            (
                HookKind::Github,
                vec![("x-hub-signature-256", format!("sha256={good}"))],
                true,
            ),
            (
                HookKind::Github,
                vec![("X-Hub-Signature-256", format!("sha256={other}"))],
                false,
            ),
            (
                HookKind::Github,
                vec![("X-Hub-Signature-256", good.clone())],
                false,
            ),
            (
                HookKind::Github,
                vec![("X-Hub-Signature-256", "sha256=zz".into())],
                false,
            ),
            (
                HookKind::Github,
                vec![("X-Gitmirror-Signature", format!("sha256={good}"))],
                false,
            ),
            (HookKind::Github, vec![], false),
            (
                HookKind::Gitea,
                vec![("X-Gitea-Signature", good.clone())],
                true,
            ),
            (
                HookKind::Gitea,
                vec![("X-Forgejo-Signature", good.clone())],
                true,
            ),
            (
                HookKind::Gitea,
                vec![("X-Hub-Signature-256", format!("sha256={good}"))],
                true,
            ),
            (
                HookKind::Gitea,
                vec![("X-Gitea-Signature", other.clone())],
                false,
            ),
            (HookKind::Gitlab, vec![("X-Gitlab-Token", s.into())], true),
            (
                HookKind::Gitlab,
                vec![("X-Gitlab-Token", "hook-secreT".into())],
                false,
            ),
            (HookKind::Gitlab, vec![("X-Gitlab-Token", "".into())], false),
            (HookKind::Gitee, vec![("X-Gitee-Token", s.into())], true),
            (
                HookKind::Gitee,
                vec![
                    ("X-Gitee-Token", gitee_sign(s, now - 5_000)),
                    ("X-Gitee-Timestamp", (now - 5_000).to_string()),
                ],
                true,
            ),
            (
                HookKind::Gitee,
                vec![
                    (
                        "X-Gitee-Token",
                        gitee_sign(s, now)
                            .replace('+', "%2B")
                            .replace('/', "%2F")
                            .replace('=', "%3D"),
                    ),
                    ("X-Gitee-Timestamp", now.to_string()),
                ],
                true,
            ),
            // Replayed long after, or for another timestamp.
            (
                HookKind::Gitee,
                vec![
                    ("X-Gitee-Token", gitee_sign(s, now - 2 * GITEE_WINDOW_MS)),
                    ("X-Gitee-Timestamp", (now - 2 * GITEE_WINDOW_MS).to_string()),
                ],
                false,
            ),
            (
                HookKind::Gitee,
                vec![
                    ("X-Gitee-Token", gitee_sign(s, now)),
                    ("X-Gitee-Timestamp", (now + 1).to_string()),
                ],
                false,
            ),
            (
                HookKind::Gitee,
                vec![("X-Gitee-Token", "nope".into())],
                false,
            ),
            (
                HookKind::Generic,
                vec![("X-Gitmirror-Signature", format!("sha256={good}"))],
                true,
            ),
            (
                HookKind::Generic,
                vec![("X-Hub-Signature-256", format!("sha256={good}"))],
                false,
            ),
        ];
        for (kind, headers, want) in cases {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(
                verify(kind, s, &hs(&h), body, now),
                want,
                "{kind:?} {headers:?}"
            );
        }
    }
}
