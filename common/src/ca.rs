//! The fleet's certificate authority (SPEC §17; issue 10 build item 1, first step).
//!
//! The coordinator's pinned TLS certificate stays its server certificate (join tokens name
//! it); beside it, a CA key pair issues each enrolled worker a certificate naming its uuid.
//! A later connection is mutual TLS with that certificate, verified against the CA
//! ([`Ca::client_verifier`]), and the registry keeps each uuid's certificate fingerprint, so
//! removing a worker revokes it. The CA is the fleet's identity: `ca-key.pem` and
//! `ca-cert.pem` are backed up with the rest of the state dir.
//!
//! The CA certificate's parameters are fixed, so an issuer is rebuilt from the key alone:
//! the issued certificates name the same subject and key identifier as the CA certificate
//! on disk, and no X.509 parser is needed.

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gitmirror_wire::token::cert_fingerprint;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CA_CERT_FILE: &str = "ca-cert.pem";

/// A certificate issued to a worker, with its key (sent to the worker inside TLS).
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// What the registry keeps: [`fingerprint`] of the certificate.
    pub fingerprint: String,
}

/// The key is never printed.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

pub struct Ca {
    key: KeyPair,
    cert: CertificateDer<'static>,
    /// `ca-cert.pem` as read.
    cert_pem: String,
}

/// The CA certificate's parameters: always the same, so that an issuer rebuilt from the
/// key names what the certificate on disk names.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "gitmirror fleet CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// SHA-256 of a certificate's DER, base64url: how the registry names a worker's
/// certificate.
pub fn fingerprint(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(cert_fingerprint(cert_der))
}

/// [`fingerprint`] of the certificate the other end of `conn` presented (TLS has checked
/// its chain), if it presented one.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(|c| fingerprint(c.as_ref()))
}

impl Ca {
    /// Load the CA from `state_dir`, creating it on first start. Only the daemon calls
    /// this (as the service user), so the files belong to it.
    pub fn load_or_create(state_dir: &Path) -> Result<Self> {
        let key_path = state_dir.join(CA_KEY_FILE);
        let cert_path = state_dir.join(CA_CERT_FILE);
        if !key_path.exists() && !cert_path.exists() {
            let key = KeyPair::generate().context("generating the fleet's CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("signing the fleet's CA certificate")?;
            crate::statefile::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            crate::statefile::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(cert = %cert_path.display(), "created the fleet's certificate authority (back it up with the state dir)");
        }
        let restore = "restore it and its partner from a backup (a new CA would invalidate every \
                       worker's certificate)";
        let mode = std::fs::metadata(&key_path)
            .with_context(|| format!("reading {}: {restore}", key_path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                key_path.display(),
                mode & 0o777
            );
        }
        let text = crate::statefile::read_if_exists(&key_path)?
            .with_context(|| format!("{} is missing: {restore}", key_path.display()))?;
        let key = KeyPair::from_pem(&String::from_utf8_lossy(&text))
            .with_context(|| format!("reading {}: {restore}", key_path.display()))?;
        // Read without following links (statefile), as every state file is.
        let cert_pem = crate::statefile::read_if_exists(&cert_path)?
            .with_context(|| format!("{} is missing: {restore}", cert_path.display()))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .with_context(|| format!("reading {}: {restore}", cert_path.display()))?;
        let cert_pem = String::from_utf8_lossy(&cert_pem).into_owned();
        Ok(Self {
            key,
            cert,
            cert_pem,
        })
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM: what workers get in `PeerPlane` (issue 12, C2) to check
    /// each other's certificates on the peer plane.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A new key pair and certificate for the worker `uuid` (its common name and a DNS name
    /// `<uuid>.worker.gitmirror`), for client and server authentication (the peer plane).
    pub fn issue(&self, uuid: &str) -> Result<Issued> {
        let key = KeyPair::generate().context("generating a worker key")?;
        let mut p = CertificateParams::new(vec![format!("{uuid}.worker.gitmirror")])
            .with_context(|| format!("a certificate for worker {uuid}"))?;
        p.distinguished_name.push(DnType::CommonName, uuid);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut serial);
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = p
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing the certificate of worker {uuid}"))?;
        Ok(Issued {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// What the coordinator's TLS server checks a client certificate with: issued by this
    /// CA. Clients without one are let through to enroll with the join token.
    pub fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .context("the fleet's CA certificate as a trust anchor")?;
        let provider = rustls::crypto::ring::default_provider();
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider))
            .allow_unauthenticated()
            .build()
            .context("the client certificate verifier")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::UnixTime;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    // SPEC §13 (C2): the PEM handed to workers is the certificate on disk, byte for byte.
    #[test]
    fn spec_13_ca_pem_is_the_file() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path()).unwrap();
        assert_eq!(der(&ca.cert_pem()), *ca.cert());
        let file = std::fs::read_to_string(d.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(ca.cert_pem().replace("\r", ""), file.replace("\r", ""));
    }

    // SPEC §17: a worker's certificate is issued by the fleet's CA and verified against
    // it; a CA loaded again from its files issues certificates the first one's anchor
    // accepts; another fleet's certificate is refused.
    #[test]
    fn spec_17_issued_certificates_verify_against_the_ca_and_survive_a_reload() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path()).unwrap();
        let verifier = ca.client_verifier().unwrap();
        let issued = ca.issue("5a3c0f00-0000-4000-8000-000000000001").unwrap();
        assert_eq!(issued.fingerprint, fingerprint(&der(&issued.cert_pem)));
        verifier
            .verify_client_cert(&der(&issued.cert_pem), &[], UnixTime::now())
            .unwrap();
        assert!(!format!("{issued:?}").contains("PRIVATE"));

        let again = Ca::load_or_create(d.path()).unwrap();
        assert_eq!(again.cert(), ca.cert(), "the same CA from its files");
        let later = again.issue("5a3c0f00-0000-4000-8000-000000000002").unwrap();
        verifier
            .verify_client_cert(&der(&later.cert_pem), &[], UnixTime::now())
            .unwrap();

        let other = tempfile::tempdir().unwrap();
        let foreign = Ca::load_or_create(other.path())
            .unwrap()
            .issue("5a3c0f00-0000-4000-8000-000000000001")
            .unwrap();
        assert!(
            verifier
                .verify_client_cert(&der(&foreign.cert_pem), &[], UnixTime::now())
                .is_err(),
            "another fleet's certificate"
        );
    }

    #[test]
    fn a_ca_key_readable_by_others_stops_the_load() {
        let d = tempfile::tempdir().unwrap();
        Ca::load_or_create(d.path()).unwrap();
        let key = d.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Ca::load_or_create(d.path()).err().unwrap().to_string();
        assert!(e.contains("chmod 600") && e.contains(CA_KEY_FILE), "{e}");
    }
}
