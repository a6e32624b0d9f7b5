//! The simulated workers as a whole: what they share (who holds which repo, ref versions,
//! counters) and the handles to start, kill and stop them.
//!
//! Per repo the swarm keeps a holder count and a ref version in flat arrays indexed by the
//! repo's number ([`crate::index::repo_number`]): 6 bytes a repo, so 1M repos cost 6 MB,
//! and "every repo assigned" is one counter kept up to date, not a scan.

use crate::worker::{self, WorkerView};
use gitmirror_wire::JoinToken;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Counters the phases read. All count since the swarm started.
#[derive(Debug, Default)]
pub struct Counters {
    /// `Welcome`s received (first connections and reconnections).
    pub welcomes: AtomicU64,
    /// Connection attempts that did not reach `Welcome`.
    pub failed_connects: AtomicU64,
    pub deltas: AtomicU64,
    pub upserts: AtomicU64,
    pub drops: AtomicU64,
    /// Assignment entries naming a repo the generated index does not have.
    pub unknown_repos: AtomicU64,
    pub outcomes_sent: AtomicU64,
    pub outcomes_acked: AtomicU64,
    pub clones_acked: AtomicU64,
    pub changes_acked: AtomicU64,
    /// Fetch outcomes due by the rate but not made because the worker's window of
    /// unacknowledged outcomes was full (the coordinator was behind).
    pub throttled: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What every simulated worker shares.
pub struct Shared {
    pub repos: u32,
    pub coordinator: SocketAddr,
    pub token: JoinToken,
    pub client_config: quinn::ClientConfig,
    /// Most unacknowledged outcomes one worker keeps in flight.
    pub window: usize,
    holders: Vec<AtomicU16>,
    versions: Vec<AtomicU32>,
    /// Repos held by at least one worker / by two or more (a hand-off in progress).
    assigned: AtomicI64,
    multi: AtomicI64,
    /// Repos assigned to a worker and not yet reported cloned.
    unmirrored: AtomicI64,
    /// Outcomes made and not yet acknowledged, fleet-wide.
    outstanding: AtomicI64,
    /// Workers whose current connection has received its first delta after `Holdings`.
    synced: AtomicI64,
    /// Fetch outcomes per second per worker, as f64 bits; 0 makes clones only.
    per_worker_rate: AtomicU64,
    change_share: AtomicU64,
    /// While set, every ref change made is noted in `changes`.
    recording: AtomicBool,
    changes: Mutex<Vec<(u32, u32)>>,
    /// When the first clone outcome was sent, in ms since `epoch`.
    first_clone_ms: AtomicI64,
    epoch: std::time::Instant,
    pub counters: Counters,
    /// The `budget` phase (SPEC §18).
    pub budget: BudgetCounters,
}

/// The `budget` phase: what every simulated worker wants of the limited host, and the
/// simulator's own count of fetches running against it.
#[derive(Debug, Default)]
pub struct BudgetCounters {
    /// Fetches each worker wants running at once on the limited host (0: none).
    pub demand: std::sync::atomic::AtomicU32,
    pub in_flight: AtomicI64,
    pub max_in_flight: AtomicI64,
    pub started: AtomicU64,
    /// Workers that have started at least one fetch on the limited host.
    pub workers_served: AtomicU64,
}

impl BudgetCounters {
    pub(crate) fn start(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub fn new(
        repos: u32,
        coordinator: SocketAddr,
        token: JoinToken,
        client_config: quinn::ClientConfig,
        window: usize,
    ) -> Self {
        Self {
            repos,
            coordinator,
            token,
            client_config,
            window,
            holders: (0..repos).map(|_| AtomicU16::new(0)).collect(),
            versions: (0..repos).map(|_| AtomicU32::new(0)).collect(),
            assigned: AtomicI64::new(0),
            multi: AtomicI64::new(0),
            unmirrored: AtomicI64::new(0),
            outstanding: AtomicI64::new(0),
            synced: AtomicI64::new(0),
            per_worker_rate: AtomicU64::new(0f64.to_bits()),
            change_share: AtomicU64::new(0f64.to_bits()),
            recording: AtomicBool::new(false),
            changes: Mutex::new(Vec::new()),
            first_clone_ms: AtomicI64::new(-1),
            epoch: std::time::Instant::now(),
            counters: Counters::default(),
            budget: BudgetCounters::default(),
        }
    }

    // ----- what workers report -----

    /// A worker took repo `r` on.
    pub(crate) fn hold(&self, r: u32) {
        if let Some(h) = self.holders.get(r as usize) {
            match h.fetch_add(1, Ordering::SeqCst) {
                0 => self.assigned.fetch_add(1, Ordering::SeqCst),
                1 => self.multi.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
        }
    }

    /// A worker let repo `r` go (dropped, or the worker was killed).
    pub(crate) fn release(&self, r: u32) {
        if let Some(h) = self.holders.get(r as usize) {
            match h.fetch_sub(1, Ordering::SeqCst) {
                1 => self.assigned.fetch_sub(1, Ordering::SeqCst),
                2 => self.multi.fetch_sub(1, Ordering::SeqCst),
                _ => 0,
            };
        }
    }

    pub(crate) fn unmirrored_add(&self, n: i64) {
        self.unmirrored.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn outstanding_add(&self, n: i64) {
        self.outstanding.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn synced_add(&self, n: i64) {
        self.synced.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn clone_sent(&self) {
        let now = self.epoch.elapsed().as_millis() as i64;
        let _ = self
            .first_clone_ms
            .compare_exchange(-1, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The current ref version of repo `r`.
    pub(crate) fn version(&self, r: u32) -> u32 {
        self.versions
            .get(r as usize)
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }

    /// Move repo `r`'s ref on: returns (old, new) versions, noting the change if recording.
    pub(crate) fn change(&self, r: u32) -> (u32, u32) {
        let old = self
            .versions
            .get(r as usize)
            .map_or(0, |v| v.fetch_add(1, Ordering::SeqCst));
        let new = old.wrapping_add(1);
        if self.recording.load(Ordering::SeqCst) {
            self.changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((r, new));
        }
        (old, new)
    }

    pub(crate) fn per_worker_rate(&self) -> f64 {
        f64::from_bits(self.per_worker_rate.load(Ordering::Relaxed))
    }

    pub(crate) fn change_share(&self) -> f64 {
        f64::from_bits(self.change_share.load(Ordering::Relaxed))
    }

    pub(crate) fn count(&self, c: &AtomicU64, n: u64) {
        add(c, n);
    }

    // ----- what phases read and set -----

    pub fn assigned(&self) -> i64 {
        self.assigned.load(Ordering::SeqCst)
    }

    pub fn multi(&self) -> i64 {
        self.multi.load(Ordering::SeqCst)
    }

    pub fn unmirrored(&self) -> i64 {
        self.unmirrored.load(Ordering::SeqCst)
    }

    pub fn outstanding(&self) -> i64 {
        self.outstanding.load(Ordering::SeqCst)
    }

    pub fn synced(&self) -> i64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// Every repo held, none still to clone, every outcome acknowledged.
    pub fn settled(&self) -> bool {
        self.assigned() == i64::from(self.repos)
            && self.unmirrored() == 0
            && self.outstanding() == 0
    }

    /// Seconds since the swarm started when the first clone outcome went out.
    pub fn first_clone_secs(&self) -> Option<f64> {
        let ms = self.first_clone_ms.load(Ordering::SeqCst);
        (ms >= 0).then(|| ms as f64 / 1000.0)
    }

    pub fn epoch(&self) -> std::time::Instant {
        self.epoch
    }

    /// Fetch outcomes offered per second, fleet-wide over `workers`, `share` of them
    /// carrying a ref change.
    pub fn set_fetching(&self, rate: f64, workers: usize, share: f64) {
        let per = if workers == 0 {
            0.0
        } else {
            rate / workers as f64
        };
        self.per_worker_rate.store(per.to_bits(), Ordering::Relaxed);
        self.change_share
            .store(share.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Start noting ref changes (clearing earlier ones).
    pub fn record_changes(&self, on: bool) {
        if on {
            self.changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        self.recording.store(on, Ordering::SeqCst);
    }

    /// The changes noted since recording started: (repo number, new version).
    pub fn recorded_changes(&self) -> Vec<(u32, u32)> {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One simulated worker as the phases see it.
pub struct Member {
    pub name: String,
    pub uuid: Uuid,
    pub view: Arc<WorkerView>,
    cmd: mpsc::Sender<worker::Cmd>,
    task: tokio::task::JoinHandle<()>,
    pub killed: bool,
}

/// All simulated workers.
pub struct Swarm {
    pub shared: Arc<Shared>,
    pub members: Vec<Member>,
}

impl Swarm {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            members: Vec::new(),
        }
    }

    /// Start one more worker (a fresh uuid): it connects and joins at once.
    pub fn spawn(&mut self) {
        let k = self.members.len();
        let name = format!("sim-{k}");
        let uuid = Uuid::new_v4();
        let view = Arc::new(WorkerView::default());
        let (cmd, cmds) = mpsc::channel(4);
        let task = tokio::spawn(worker::run(
            name.clone(),
            uuid,
            self.shared.clone(),
            view.clone(),
            cmds,
        ));
        self.members.push(Member {
            name,
            uuid,
            view,
            cmd,
            task,
            killed: false,
        });
    }

    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.killed)
    }

    pub fn live_count(&self) -> usize {
        self.live().count()
    }

    /// Kill worker `k` as a power cut would: its socket goes silent, its repos are no
    /// longer held. Returns the repos it held.
    pub async fn kill(&mut self, k: usize) -> usize {
        let Some(m) = self.members.get_mut(k) else {
            return 0;
        };
        if m.killed {
            return 0;
        }
        m.killed = true;
        let held = m.view.held();
        let _ = m.cmd.send(worker::Cmd::Kill).await;
        // The task releases the repos before it ends; wait for that so counts are exact.
        let _ = (&mut m.task).await;
        held
    }

    /// Stop every worker, closing connections cleanly.
    pub async fn stop(&mut self) {
        for m in self.members.iter().filter(|m| !m.killed) {
            let _ = m.cmd.send(worker::Cmd::Stop).await;
        }
        // A killed worker's task was awaited when it was killed.
        for m in self.members.iter_mut().filter(|m| !m.killed) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut m.task).await;
        }
    }
}
