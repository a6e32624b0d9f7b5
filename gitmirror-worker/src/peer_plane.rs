//! The worker's peer plane as the coordinator drives it (issue 12, step S2): the fleet CA
//! from `PeerPlane`, saved as `fleet-ca.pem`; the listener started when `peer_listen` is
//! set and a CA and this worker's certificate are known; `PeerGrants` into the listener's
//! grants; `PeerInfo` for the coordinator; the peer directory (`PeerDirectory`) and the
//! asking side for a hand-over. The transfers themselves are [`crate::peer`].

use crate::config::WorkerConfig;
use crate::mirror::Mirrors;
use crate::peer::{Grants, Holds, PeerClient, PeerServer, ServeSettings};
use gitmirror_common::statefile;
use gitmirror_common::trust::WorkerCert;
use gitmirror_wire::{PeerDirectory, PeerEntry, PeerGrants, PeerInfo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The fleet CA certificate as the coordinator last sent it (C2), in the state dir, so
/// the listener works while the coordinator is away.
pub const FLEET_CA_FILE: &str = "fleet-ca.pem";

/// How long a grant stands while the coordinator is connected: it revokes grants itself,
/// so this only bounds a grant it forgot; once the link is down, grants lapse within the
/// lease `PeerPlane`/`PeerGrants` named.
const CONNECTED_GRANT: Duration = Duration::from_secs(24 * 3600);

pub struct Plane {
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    zone: Option<String>,
    state_dir: PathBuf,
    limits: crate::peer::PeerLimits,
    fetch_timeout: Duration,
    mirrors: Mirrors,
    ca_pem: Option<String>,
    /// Grants lapse this long after the link went down.
    lease: Duration,
    server: Option<PeerServer>,
    /// Grants and holds outlive a listener (a new CA restarts it).
    grants: Arc<Grants>,
    holds: Arc<Holds>,
    /// The peers the coordinator named (`PeerDirectory`), by worker id: whom a hand-over
    /// may dial, at which address, presenting which certificate.
    directory: HashMap<u32, PeerEntry>,
    /// The asking side, made at the first hand-over (it needs this worker's certificate).
    client: Option<Arc<PeerClient>>,
}

impl Plane {
    /// Starts the listener at once when `peer_listen` is set and a saved CA and this
    /// worker's certificate exist (a restart while the coordinator is away).
    pub fn new(cfg: &WorkerConfig, mirrors: Mirrors) -> Self {
        let ca_pem = match statefile::read_if_exists(&cfg.state_dir.join(FLEET_CA_FILE)) {
            Ok(b) => b.and_then(|b| String::from_utf8(b).ok()),
            Err(e) => {
                tracing::warn!("cannot read {FLEET_CA_FILE}: {e}; waiting for the coordinator's");
                None
            }
        };
        let mut plane = Self {
            listen: cfg.peer_listen,
            advertise: cfg.peer_advertise.clone(),
            zone: cfg.zone.clone(),
            state_dir: cfg.state_dir.clone(),
            limits: cfg.peer.limits(),
            fetch_timeout: cfg.fetch.timeout,
            mirrors,
            ca_pem,
            lease: Duration::from_secs(60),
            server: None,
            grants: Arc::default(),
            holds: Arc::default(),
            directory: HashMap::new(),
            client: None,
        };
        plane.start();
        plane
    }

    /// What the coordinator is told after `Welcome` (protocol ≥ 7).
    pub fn info(&self) -> PeerInfo {
        let port = self
            .server
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.port());
        PeerInfo {
            port,
            advertise: self.advertise.clone(),
            zone: self.zone.clone(),
        }
    }

    /// The per-repo holds, for maintenance to wait on (C18): always, so a listener that
    /// starts while a repo is maintained cannot serve it meanwhile.
    pub fn holds(&self) -> Option<Arc<Holds>> {
        Some(self.holds.clone())
    }

    /// `PeerPlane` from the coordinator: keep the CA (saved when it changed) and start or
    /// restart the listener with it. True when the listener (re)started: the coordinator
    /// is to be told its port again.
    pub fn on_plane(&mut self, ca_cert_pem: String, lease_ms: u64) -> bool {
        self.lease = Duration::from_millis(lease_ms);
        if self.ca_pem.as_deref() == Some(ca_cert_pem.as_str()) && self.server.is_some() {
            return false;
        }
        let path = self.state_dir.join(FLEET_CA_FILE);
        if self.ca_pem.as_deref() != Some(ca_cert_pem.as_str()) {
            if let Err(e) = statefile::write_atomic(&path, ca_cert_pem.as_bytes(), 0o644) {
                tracing::warn!(
                    "cannot save the fleet CA as {}: {e}; the peer plane uses it until a restart",
                    path.display()
                );
            }
            self.ca_pem = Some(ca_cert_pem);
            // Dropping the server stops accepting and ends its connections.
            self.server = None;
        }
        self.start();
        self.server.is_some()
    }

    /// `PeerGrants`: serve the named repos to the named certificates.
    pub fn on_grants(&mut self, g: PeerGrants) {
        self.lease = Duration::from_millis(g.lease_ms);
        if self.server.is_none() && !g.grant.is_empty() {
            tracing::warn!(
                count = g.grant.len(),
                "the coordinator granted transfers, but this worker's peer plane is not listening"
            );
        }
        let grants = &self.grants;
        for r in &g.revoke {
            grants.revoke(&r.repo, &r.fingerprint);
        }
        for r in &g.grant {
            grants.grant(&r.repo, &r.fingerprint, CONNECTED_GRANT);
        }
    }

    /// `PeerDirectory` (one part of a change; parts apply in order).
    pub fn on_directory(&mut self, d: PeerDirectory) {
        for id in &d.remove {
            self.directory.remove(id);
        }
        for e in d.upsert {
            self.directory.insert(e.worker_id, e);
        }
    }

    /// The holders among `sources` (worker ids, best first) that the directory names.
    pub fn holders(&self, sources: &[u32]) -> Vec<PeerEntry> {
        sources
            .iter()
            .filter_map(|id| self.directory.get(id).cloned())
            .collect()
    }

    /// The asking side, made once this worker has its certificate; `None` before (the
    /// hand-over then falls back to the upstream).
    pub fn client(&mut self) -> Option<Arc<PeerClient>> {
        if self.client.is_none() {
            match WorkerCert::load(&self.state_dir) {
                Ok(Some(cert)) => match PeerClient::new(cert, self.fetch_timeout) {
                    Ok(c) => self.client = Some(Arc::new(c)),
                    Err(e) => tracing::warn!("cannot copy from peers: {e:#}"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot copy from peers: {e:#}"),
            }
        }
        self.client.clone()
    }

    /// The coordinator is gone: every grant lapses within the lease (C4).
    pub fn on_link_down(&self) {
        self.grants.lapse_within(self.lease);
    }

    fn start(&mut self) {
        let (Some(listen), Some(ca)) = (self.listen, &self.ca_pem) else {
            return;
        };
        let cert = match WorkerCert::load(&self.state_dir) {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::info!(
                    "peer_listen is set, but this worker has no certificate yet; the peer plane starts once it enrolled"
                );
                return;
            }
            Err(e) => {
                tracing::warn!("peer plane not started: {e:#}");
                return;
            }
        };
        let settings = ServeSettings {
            listen,
            ca_cert_pem: ca.clone(),
            cert,
            limits: self.limits,
            fetch_timeout: self.fetch_timeout,
            mirrors: self.mirrors.clone(),
            git: PathBuf::from("git"),
        };
        match PeerServer::start_with(settings, self.grants.clone(), self.holds.clone()) {
            Ok(s) => {
                tracing::info!(listen = %s.local_addr().map_or(listen, |a| a), "peer plane listening");
                self.server = Some(s);
            }
            Err(e) => tracing::error!("peer plane not started: {e:#}"),
        }
    }

    /// Stop listening and end the transfers in progress (shutdown).
    pub async fn close(&mut self) {
        if let Some(s) = self.server.take() {
            s.close().await;
        }
    }
}
