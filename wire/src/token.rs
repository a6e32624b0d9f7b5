//! The join token: `gmj1.<sha256 of the coordinator certificate, base64url>.<secret>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

const PREFIX: &str = "gmj1";

/// `Debug` is written by hand: it must not print the secret (issue 10 finding 5).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the coordinator's DER certificate.
    pub cert_sha256: [u8; 32],
    /// The shared secret a worker proves inside TLS.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let JoinToken {
            cert_sha256,
            secret: _,
        } = self;
        f.debug_struct("JoinToken")
            .field("cert_sha256", &URL_SAFE_NO_PAD.encode(cert_sha256))
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("join token must look like gmj1.<certificate hash>.<secret>")]
    Shape,
    #[error("join token has an unknown prefix {0:?} (expected gmj1)")]
    Prefix(String),
    #[error("join token certificate hash is not 32 bytes of base64url")]
    Hash,
    #[error("join token secret is empty or not base64url")]
    Secret,
}

impl JoinToken {
    pub fn new(cert_der: &[u8], secret: &str) -> Self {
        Self {
            cert_sha256: cert_fingerprint(cert_der),
            secret: secret.to_owned(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut parts = text.trim().split('.');
        let (Some(prefix), Some(hash), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Shape);
        };
        if prefix != PREFIX {
            return Err(TokenError::Prefix(prefix.to_owned()));
        }
        let hash = URL_SAFE_NO_PAD.decode(hash).map_err(|_| TokenError::Hash)?;
        let cert_sha256: [u8; 32] = hash.try_into().map_err(|_| TokenError::Hash)?;
        if secret.is_empty()
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::Secret);
        }
        Ok(Self {
            cert_sha256,
            secret: secret.to_owned(),
        })
    }

    pub fn format(&self) -> String {
        format!(
            "{PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(self.cert_sha256),
            self.secret
        )
    }
}

/// SHA-256 of a DER certificate, as pinned by join tokens.
pub fn cert_fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// Compare two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    // Unequal lengths answer at once: the length of a secret is not what it protects.
    bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = JoinToken::new(b"certificate bytes", "c2VjcmV0_-x");
        let text = t.format();
        assert!(text.starts_with("gmj1."));
        assert_eq!(JoinToken::parse(&text).unwrap(), t);
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), t);
    }

    #[test]
    fn malformed_tokens_are_refused_with_reasons() {
        assert_eq!(JoinToken::parse("abc"), Err(TokenError::Shape));
        assert_eq!(
            JoinToken::parse("gmj2.a.b"),
            Err(TokenError::Prefix("gmj2".into()))
        );
        assert_eq!(JoinToken::parse("gmj1.AAAA.secret"), Err(TokenError::Hash));
        let hash = URL_SAFE_NO_PAD.encode([0u8; 32]);
        assert_eq!(
            JoinToken::parse(&format!("gmj1.{hash}.")),
            Err(TokenError::Secret)
        );
        assert_eq!(
            JoinToken::parse(&format!("gmj1.{hash}.a b")),
            Err(TokenError::Secret)
        );
    }

    // issue 10 finding 5: debug-formatting a token (as a config or an error might) does not
    // print the secret. (Seen failing before the fix: the derived Debug printed it.)
    #[test]
    fn issue10_f5_debug_does_not_print_the_secret() {
        let t = JoinToken::new(b"certificate bytes", "c2VjcmV0SECRET");
        for shown in [
            format!("{t:?}"),
            format!("{t:#?}"),
            format!("{:?}", Some(&t)),
        ] {
            assert!(!shown.contains("c2VjcmV0SECRET"), "{shown}");
            assert!(
                shown.contains("<redacted>") && shown.contains("cert_sha256"),
                "{shown}"
            );
        }
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert!(!secrets_equal("", "a"));
    }
}
