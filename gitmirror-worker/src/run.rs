//! The worker's main loop: loads state, keeps the mirrors, talks to the coordinator.
//!
//! One task owns all state. It starts clones, fetches and drops on blocking threads within
//! the schedule's limits, applies what the link delivers, and sends outcome batches and
//! status. Outcomes are persisted (in the outbox) before they are sent, and an assignment
//! is persisted before it is acknowledged.

use crate::attempt::{self, Attempt, Reported};
use crate::config::WorkerConfig;
use crate::link::{self, LinkEvent, LinkSettings};
use crate::mirror::{self, Failure, Fetched, Maintenance, Mirrors};
use crate::pool;
use crate::schedule::{Schedule, host_of_url, ms};
use crate::state::{Disposal, Identity, Refs, Repo, Repos, ref_changes, refs_digest};
use crate::store::{Record, RefsReader, Store};
use anyhow::Context;
use gitmirror_common::{disk, notify, now_ms, statefile};
use gitmirror_wire::{
    AssignDelta, CoordMsg, FailureClass, FetchResult, Outcome, Reports, WorkerMsg, WorkerStatus,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Outcomes left over are sent on this tick (a finished fetch's at once, unless a batch
/// just went: `Reports::send_now`).
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// `Status` to the coordinator, and the systemd status line.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Free space is measured at most this often.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Trashed mirrors are looked at this often (they are deleted after 72 h).
const TRASH_PURGE_EVERY: Duration = Duration::from_secs(3600);
/// After its timeout a fetch gets a quarter of it (1 s to 60 s) to notice the interrupt
/// before it is abandoned: gix checks the flag between reads, so a server that accepts and
/// then says nothing keeps the blocking thread until the connection dies.
fn interrupt_grace(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
/// On shutdown, running fetches get this long to stop (SPEC §11: stop within 10 s).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Every mirror gets a maintenance pass at least this often (stale files, repack when
/// needed), and a connectivity check (`git fsck --connectivity-only`) every
/// [`VERIFY_EVERY`]. A fetch that leaves [`mirror::REPACK_AT`] packs makes it due at once.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(24 * 3600);
const VERIFY_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Maintenance passes at once (they are background work; fetches come first).
const MAX_MAINTENANCE: usize = 1;
/// Refs pages being read at once (`CoordMsg::RefsQuery`); more are answered "busy". Each
/// reads a repo's refs from the state files, which a 1M-ref repo makes a big read.
const MAX_REFS_READS: usize = 2;

/// Run the worker until `shutdown` becomes true. Errors only for what stops the daemon at
/// start (unreadable state, unusable directories).
pub async fn run(cfg: WorkerConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (_keep, reload) = mpsc::channel(1);
    run_reloadable(cfg, shutdown, reload).await
}

/// [`run`], also taking reloaded configurations (SIGHUP): their `fetch` and `disk`
/// sections take effect at once. The caller checks and reports the keys that need a
/// restart ([`WorkerConfig::restart_needed`]).
pub async fn run_reloadable(
    cfg: WorkerConfig,
    shutdown: watch::Receiver<bool>,
    reload: mpsc::Receiver<WorkerConfig>,
) -> anyhow::Result<()> {
    // https fetches build TLS configs on blocking threads; without a provider they panic.
    gitmirror_common::install_crypto_provider();
    statefile::ensure_dir(&cfg.state_dir)?;
    let identity = Identity::load_or_create(&cfg.state_dir)?;
    let (state, mut store) = {
        let dir = cfg.state_dir.clone();
        tokio::task::spawn_blocking(move || crate::store::open(&dir))
            .await
            .context("loading the worker state")??
    };
    let mirrors = Arc::new(
        Mirrors::new(cfg.mirror_dir.clone())
            .with_io_timeout(cfg.fetch.timeout.min(mirror::DEFAULT_IO_TIMEOUT))
            .with_upstream(cfg.upstream_policy()),
    );
    mirrors.set_limits(cfg.limits());
    mirrors.set_pools(cfg.fetch.pools);
    mirrors.set_credentials(cfg.credentials.clone());
    // One look at every held mirror: blocking work, off the runtime.
    let (state, cleanup, changed) = {
        let m = mirrors.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state;
            let cleanup = m.prepare()?;
            let changed = reconcile(&mut state, &m);
            Ok::<_, Failure>((state, cleanup, changed))
        })
        .await
        .context("preparing the mirror directory")?
        .map_err(|f| anyhow::anyhow!("{}", f.message))?
    };
    if cleanup.tmp_removed > 0 {
        tracing::info!(
            count = cleanup.tmp_removed,
            "removed leftovers of interrupted clones"
        );
    }
    if cleanup.orphans_killed > 0 {
        tracing::warn!(
            count = cleanup.orphans_killed,
            "killed git processes a previous worker left running on its mirrors"
        );
    }
    if cleanup.trash_removed > 0 {
        tracing::info!(
            count = cleanup.trash_removed,
            "deleted trashed mirrors older than 72 h"
        );
    }
    if cleanup.trash_migrated > 0 {
        tracing::info!(
            count = cleanup.trash_migrated,
            to = %mirrors.trash_dir().display(),
            "moved trashed mirrors out of the mirror directory (issue 10: a git daemon exporting it served them)"
        );
    }
    if !changed.is_empty() {
        let records = changed
            .into_iter()
            .filter_map(|id| {
                let repo = state.repos.get(&id)?.clone();
                Some(Record::Repo { id, repo })
            })
            .collect();
        store.append(records);
    }
    tracing::info!(
        uuid = %identity.uuid,
        repos = state.repos.len(),
        mirror_dir = %cfg.mirror_dir.display(),
        coordinator = %cfg.coordinator,
        "worker started"
    );

    let (events_tx, events_rx) = mpsc::channel(256);
    let settings = LinkSettings {
        coordinator: cfg.coordinator.clone(),
        token: cfg.token.clone(),
        token_source: cfg.token_source.clone(),
        name: cfg.name.clone(),
        weight: cfg.weight,
        serve_url_base: cfg.serve_url_base.clone(),
        state_dir: cfg.state_dir.clone(),
    };
    let link_task = tokio::spawn(link::run(settings, identity, events_tx, shutdown.clone()));

    let mut worker = Worker::new(cfg, state, store, mirrors);
    worker.refresh_disk(true);
    notify::ready(&worker.summary());
    worker.main_loop(events_rx, shutdown, reload).await;
    worker.stop().await;
    if tokio::time::timeout(Duration::from_secs(3), link_task)
        .await
        .is_err()
    {
        tracing::warn!("the coordinator link did not close in time");
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Make the state agree with the disk after a crash or an operator's hands. Returns the
/// repos it changed.
fn reconcile(state: &mut Repos, mirrors: &Mirrors) -> Vec<String> {
    let mut changed = Vec::new();
    for (id, repo) in &mut state.repos {
        let exists = mirrors.exists(id);
        if exists && !repo.mirrored {
            // Cloned and renamed into place, but stopped before the state was saved.
            repo.mirrored = true;
            changed.push(id.clone());
        } else if !exists && repo.mirrored {
            tracing::warn!(repo = %id, path = %mirrors.path(id).display(), "mirror has vanished from disk; cloning it again");
            repo.mirrored = false;
            changed.push(id.clone());
        }
    }
    changed
}

/// A running operation on one repo.
struct Running {
    kind: OpKind,
    interrupt: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Clone,
    Fetch,
    Maintain,
    Dispose(Disposal),
}

/// What a finished operation reports back to the loop.
struct OpDone {
    id: String,
    result: OpResult,
}

enum OpResult {
    Fetch {
        url: String,
        clone: bool,
        started: Instant,
        result: Result<Reported, Failure>,
        /// The blocking thread ignored the interrupt; it is still running.
        abandoned: Option<tokio::task::JoinHandle<Result<Reported, Failure>>>,
        /// A holder's copy (SPEC §13) or the upstream.
        source: gitmirror_wire::TransferSource,
    },
    Disposed(Disposal, Result<(), String>),
    Maintained {
        verify: bool,
        result: Result<Maintenance, Failure>,
    },
    /// An abandoned fetch's thread has finally returned.
    Unstuck,
    /// A pool operation on project folder `id` ended (SPEC §14, plan C9).
    Pool {
        op: pool::ProjectOp,
        pool: std::path::PathBuf,
        result: Result<String, String>,
    },
    /// A survey of pools for the coordinator's report (SPEC §14, protocol 8).
    PoolSurvey {
        full: bool,
        survey: BTreeMap<String, pool::ProjectSurvey>,
    },
}

/// Diff `fetched` against the refs last reported for `id` (against no refs for a relist);
/// the full ref map is dropped.
fn diff_reported(
    refs: &RefsReader,
    id: &str,
    mut fetched: Fetched,
    relist: bool,
) -> Result<Reported, Failure> {
    let old = if relist {
        Refs::new()
    } else {
        refs.load(id).map_err(|e| {
            tracing::error!(repo = %id, "cannot read the refs last reported: {e}");
            Failure::local(format!("cannot read the refs last reported: {e}"))
        })?
    };
    let new = std::mem::take(&mut fetched.refs);
    Ok(Reported {
        relisted: relist,
        changes: ref_changes(&old, &new),
        ref_count: u32::try_from(new.len()).unwrap_or(u32::MAX),
        refs_digest: refs_digest(&new),
        refs_sha256: mirror::refs_sha256(&new),
        fetched,
    })
}

/// The connection as the loop sees it.
struct Conn {
    worker_id: u32,
    /// The protocol of the coordinator's `Welcome`: `Load` only from 5 on.
    protocol: u32,
    tx: mpsc::Sender<WorkerMsg>,
}

struct DiskState {
    free: u64,
    total: u64,
    low: bool,
    checked: Option<Instant>,
}

struct Worker {
    cfg: WorkerConfig,
    state: Repos,
    /// The state files: every change goes there as a journal record.
    store: Store,
    /// Repos changed in memory whose record is not queued yet (written at the next
    /// commit: with an outcome, an assignment, or the flush tick).
    dirty: HashSet<String>,
    /// Which outcomes may be sent, which were sent on this connection, which assignments
    /// to acknowledge: positions in the journal and report ids (SPEC §10).
    reports: Reports,
    /// Repos with records not yet written: nothing starts on them until they are, so a
    /// fetch reads the refs it diffs against after its last outcome's changes.
    unwritten: HashMap<String, u64>,
    unwritten_order: std::collections::VecDeque<(u64, String)>,
    mirrors: Arc<Mirrors>,
    schedule: Schedule,
    ops: JoinSet<OpDone>,
    running: HashMap<String, Running>,
    /// Repos whose abandoned fetch thread is still running: nothing else starts on them.
    stuck: HashSet<String>,
    /// Disposals that failed in this run (retried at the next start, not in a loop).
    disposal_failed: HashSet<String>,
    /// Mirrors due for a maintenance pass, oldest request first (and the same as a set).
    maintenance_due: std::collections::VecDeque<String>,
    maintenance_queued: HashSet<String>,
    conn: Option<Conn>,
    disk: DiskState,
    stopping: bool,
    last_status_line: String,
    /// Slots for refs pages being read (see `MAX_REFS_READS`).
    refs_reads: Arc<tokio::sync::Semaphore>,
    /// The last error of re-reading changed credentials files, logged once.
    credentials_error: Option<String>,
    /// Fleet-wide budgets (SPEC §18): see [`Budgeting`].
    budgeting: Budgeting,
    /// Fork pools (SPEC §14, plan C9, C10, C19): what runs on each project, ...
    locks: pool::ProjectLocks,
    /// ... project folders whose pool is due for a consolidation, and when ...
    pool_due: HashMap<String, i64>,
    /// ... when each was last consolidated in this run (the debounce) ...
    pool_last: HashMap<String, i64>,
    /// ... those due for a prune (after a consolidation, at most weekly) ...
    prune_due: HashSet<String>,
    /// ... projects whose plain mirrors are to join their pool (plan step 7), in order,
    /// and those queued or done in this run.
    migrate_due: std::collections::VecDeque<String>,
    migrated: HashSet<String>,
    /// The queues above are looked through at most once a second (they may hold
    /// thousands of projects; the loop passes far more often).
    pool_scan_after: i64,
    /// The peer plane (SPEC §13): listener, fleet CA, grants.
    peer: crate::peer_plane::Plane,
    /// Fork-pool states and totals told to the coordinator (SPEC §14, protocol 8).
    pool_report: PoolReport,
    /// Refs SHA-256 of the outcomes in the outbox that made one (C5), sent in `Outcomes7`.
    /// In memory only: an outcome resent after a restart goes without it (`None`), which
    /// the coordinator reads as "unknown", never as a mismatch.
    report_sha: HashMap<u64, [u8; 32]>,
    /// Outcomes in the outbox copied from a peer (SPEC §13), sent as such in `Outcomes7`;
    /// absent: from the upstream. In memory only, as `report_sha` (a peer's copy has the
    /// refs the coordinator published already, so read as an upstream result after a
    /// restart it changes nothing).
    report_source: HashMap<u64, gitmirror_wire::TransferSource>,
    /// Bytes received by the successful clone or fetch of each outcome in the outbox
    /// (nonzero only), sent as `transfer_bytes` in `Outcomes7`; in memory as `report_sha`
    /// (resent after a restart as 0: counted once, by the first send).
    report_bytes: HashMap<u64, u64>,
    /// Holders to copy a repo from instead of cloning it from the upstream (`Assign7`
    /// sources, SPEC §13 hand-over), until the repo is mirrored or dropped.
    peer_sources: HashMap<String, PeerSource>,
    /// Repos this worker follows (SPEC §13 replicas, `Assign7` role `Follower` with
    /// sources): copied from the holders named, never fetched from the upstream unless
    /// none serves; kept until the role, the repo or the connection's orders change.
    follow: HashMap<String, PeerSource>,
    /// The refs SHA-256 of each repo's copy as its last success left it (in memory): a
    /// follow order whose `expect` equals it needs no copy.
    copy_sha: HashMap<String, [u8; 32]>,
}

/// Where a new mirror may be copied from (SPEC §13): the holders' worker ids, best first,
/// and the refs hash their copy must have.
struct PeerSource {
    sources: Vec<u32>,
    expect: [u8; 32],
}

/// Fork-pool reports to the coordinator (SPEC §14, protocol 8): the whole list once per
/// connection, then the states of the project folders surveyed again after a clone, a
/// maintenance pass, a disposal or a pool operation in them. Surveys read the disk on a
/// blocking thread, one at a time, at most one a second.
#[derive(Default)]
struct PoolReport {
    /// What the coordinator was told, per project folder: member name → (state, members).
    sent: HashMap<String, BTreeMap<String, (gitmirror_wire::PoolState, u32)>>,
    /// Per folder with a pool: (pool bytes, member bytes, members).
    figures: HashMap<String, (u64, u64, u32)>,
    /// Folders to survey again (bounded: past [`MAX_MIGRATIONS_QUEUED`] the next survey
    /// is a whole one).
    dirty: HashSet<String>,
    /// The whole list is due (a new connection, or too many dirty folders).
    full: bool,
    /// A survey runs.
    running: bool,
    /// No survey starts before this (Unix ms).
    after: i64,
}

/// What the worker keeps about the coordinator's `HostBudgets` (SPEC §18). The shares
/// themselves live in the schedule.
#[derive(Default)]
struct Budgeting {
    /// `seq` of the last `HostBudgets` applied on this connection (0: none yet).
    seen: u64,
    /// How long shares stay in force without the coordinator.
    lease: Duration,
    /// When the connection was lost, while it is.
    lost_at: Option<Instant>,
    /// The lease ran out: shares are suspended until the next `HostBudgets`.
    suspended: bool,
    /// The last `HostDemand` sent, and when.
    last_sent: Option<(gitmirror_wire::HostDemand, Instant)>,
}

/// How often the demand for limited hosts is looked at (and sent when it changed).
const DEMAND_EVERY: Duration = Duration::from_millis(250);
/// An unchanged demand is sent again this often, so a lost message is not fatal.
const DEMAND_REFRESH: Duration = Duration::from_secs(5);

impl Worker {
    fn new(cfg: WorkerConfig, state: Repos, store: Store, mirrors: Arc<Mirrors>) -> Self {
        let mut schedule = Schedule::new(&cfg.fetch);
        let now = now_ms();
        for (id, repo) in &state.repos {
            if repo.mirrored {
                schedule.plan(id, repo.next_due_ms);
            } else {
                schedule.plan_urgent(id, now);
            }
        }
        let reports = Reports::resumed(state.outbox.keys().next_back().copied().unwrap_or(0));
        let peer = crate::peer_plane::Plane::new(&cfg, (*mirrors).clone());
        Self {
            peer,
            report_sha: HashMap::new(),
            report_source: HashMap::new(),
            report_bytes: HashMap::new(),
            peer_sources: HashMap::new(),
            follow: HashMap::new(),
            copy_sha: HashMap::new(),
            cfg,
            state,
            store,
            dirty: HashSet::new(),
            reports,
            unwritten: HashMap::new(),
            unwritten_order: std::collections::VecDeque::new(),
            mirrors,
            schedule,
            ops: JoinSet::new(),
            running: HashMap::new(),
            stuck: HashSet::new(),
            disposal_failed: HashSet::new(),
            maintenance_due: std::collections::VecDeque::new(),
            maintenance_queued: HashSet::new(),
            conn: None,
            disk: DiskState {
                free: 0,
                total: 0,
                low: false,
                checked: None,
            },
            stopping: false,
            last_status_line: String::new(),
            refs_reads: Arc::new(tokio::sync::Semaphore::new(MAX_REFS_READS)),
            credentials_error: None,
            budgeting: Budgeting::default(),
            locks: pool::ProjectLocks::default(),
            pool_due: HashMap::new(),
            pool_last: HashMap::new(),
            prune_due: HashSet::new(),
            migrate_due: std::collections::VecDeque::new(),
            migrated: HashSet::new(),
            pool_scan_after: 0,
            pool_report: PoolReport::default(),
        }
    }

    async fn main_loop(
        &mut self,
        mut events: mpsc::Receiver<LinkEvent>,
        mut shutdown: watch::Receiver<bool>,
        mut reload: mpsc::Receiver<WorkerConfig>,
    ) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(STATUS_EVERY);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval(TRASH_PURGE_EVERY);
        purge.reset(); // the start already purged
        let mut demand = tokio::time::interval(DEMAND_EVERY);
        demand.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog_period = notify::watchdog_period();
        let mut last_watchdog = Instant::now();
        let mut durable = self.store.durable_watch();
        let mut pass = true;
        let mut link_ended = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // The loop's progress point: reaching it proves the loop is not wedged.
            if let Some(p) = watchdog_period
                && last_watchdog.elapsed() >= p
            {
                notify::watchdog();
                last_watchdog = Instant::now();
            }
            if pass {
                self.start_due_work();
                pass = false;
            }
            let now = now_ms();
            // Never sleep past the status tick: a due time far ahead is simply looked at again.
            let until_due = self.schedule.next_wake(now).map(|due| {
                Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
            });
            let wake = Instant::now() + until_due.unwrap_or(STATUS_EVERY).min(STATUS_EVERY);
            let wake = match watchdog_period {
                Some(p) => wake.min(last_watchdog + p),
                None => wake,
            };
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // Nobody can ask for a stop any more: treat it as one.
                        break;
                    }
                }
                ev = events.recv(), if !link_ended => match ev {
                    Some(ev) => { self.on_link_event(ev); pass = true; }
                    None => {
                        // The link only ends on shutdown (or when it cannot set up TLS,
                        // which it logged); fetching goes on either way.
                        link_ended = true;
                        self.lose_conn();
                    }
                },
                Some(done) = self.ops.join_next(), if !self.ops.is_empty() => {
                    match done {
                        Ok(done) => self.on_done(done),
                        Err(e) => tracing::error!("a mirror task failed: {e}"),
                    }
                    if self.reports.send_now(Instant::now()) {
                        self.flush();
                    }
                    pass = true;
                }
                Some(new) = reload.recv() => {
                    self.schedule.set_limits(&new.fetch);
                    self.mirrors.set_limits(new.limits());
                    if new.fetch.pools && !self.cfg.fetch.pools {
                        // Turned on: every project's plain mirrors may join again.
                        self.migrated.clear();
                    }
                    self.mirrors.set_pools(new.fetch.pools);
                    self.cfg.fetch = new.fetch;
                    self.cfg.disk = new.disk;
                    self.apply_credentials(new.credentials);
                    self.refresh_disk(true);
                    tracing::info!("reloaded the fetch and disk settings and the credentials");
                    pass = true;
                }
                changed = durable.changed() => {
                    if changed.is_ok() {
                        self.on_durable();
                        pass = true;
                    }
                }
                _ = flush.tick() => self.flush(),
                _ = demand.tick(), if self.schedule.has_budgets() => {
                    if self.check_lease() {
                        pass = true;
                    }
                    self.send_demand(false);
                }
                _ = status.tick() => {
                    self.check_credential_files();
                    self.queue_periodic_maintenance();
                    self.refresh_disk(true);
                    self.send_status();
                    self.update_status_line();
                    pass = true;
                }
                _ = purge.tick() => {
                    let m = self.mirrors.clone();
                    tokio::task::spawn_blocking(move || {
                        let n = m.purge_trash(mirror::unix_secs());
                        if n > 0 {
                            tracing::info!(count = n, "deleted trashed mirrors older than 72 h");
                        }
                    });
                }
                _ = tokio::time::sleep_until(wake.into()) => { pass = true; }
            }
        }
    }

    /// Graceful stop: no new work, interrupt what runs, save state.
    async fn stop(&mut self) {
        notify::stopping();
        self.stopping = true;
        self.peer.close().await;
        tracing::info!(
            running = self.running.len(),
            "stopping: interrupting running fetches and saving state"
        );
        for r in self.running.values() {
            if matches!(r.kind, OpKind::Clone | OpKind::Fetch | OpKind::Maintain) {
                r.interrupt.store(true, Ordering::Relaxed);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.ops.is_empty() {
            match tokio::time::timeout_at(deadline, self.ops.join_next()).await {
                Ok(Some(Ok(done))) => self.on_done(done),
                Ok(Some(Err(e))) => tracing::error!("a mirror task failed: {e}"),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        running = self.ops.len(),
                        "some operations did not stop in time; they are redone at the next start"
                    );
                    break;
                }
            }
        }
        self.ops.abort_all();
        // Everything changed goes to the journal; wait (bounded) until it is durable.
        self.commit(Vec::new());
        let target = self.store.last_seq();
        let mut durable = self.store.durable_watch();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while *durable.borrow() < target {
            match tokio::time::timeout_at(deadline, durable.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::warn!(
                        "the worker state was not saved in time; the last changes are redone after the restart"
                    );
                    break;
                }
            }
        }
    }

    // ---- starting work ----

    /// A secret, key or known-hosts file changed on disk: read the entries again (SPEC
    /// §16). A file that became unusable keeps the running entries, with one error line
    /// per distinct problem.
    fn check_credential_files(&mut self) {
        let current = self.mirrors.credentials();
        if !current.changed_on_disk() {
            return;
        }
        match current.reload("credentials") {
            Ok(new) => {
                self.credentials_error = None;
                tracing::info!("a credentials file changed; reloaded the credentials");
                self.apply_credentials(Arc::new(new));
            }
            Err(e) => {
                let e = e.to_string();
                if self.credentials_error.as_ref() != Some(&e) {
                    tracing::error!(
                        "a credentials file changed but cannot be used; keeping the loaded credentials: {e}"
                    );
                    self.credentials_error = Some(e);
                }
            }
        }
    }

    /// Use `credentials` from now on; repos whose credential was refused are tried again
    /// at once (SPEC §16), not at their `max_interval` retry.
    fn apply_credentials(&mut self, credentials: Arc<gitmirror_common::credentials::Credentials>) {
        self.mirrors.set_credentials(credentials.clone());
        self.cfg.credentials = credentials;
        let now = now_ms();
        let refused: Vec<String> = self
            .state
            .repos
            .iter()
            .filter(|(_, r)| r.failing == Some(FailureClass::Auth))
            .map(|(id, _)| id.clone())
            .collect();
        if !refused.is_empty() {
            tracing::info!(
                count = refused.len(),
                "credentials changed; fetching the repos whose credential was refused now"
            );
        }
        for id in refused {
            self.schedule.plan_urgent(&id, now);
        }
    }

    fn busy(&self, id: &str) -> bool {
        self.running.contains_key(id) || self.stuck.contains(id)
    }

    fn start_due_work(&mut self) {
        if self.stopping {
            return;
        }
        let now = now_ms();
        let disk_low = self.refresh_disk(false);
        let mut waiting = Vec::new();
        let started = {
            let (repos, running, stuck, unwritten, locks) = (
                &self.state.repos,
                &self.running,
                &self.stuck,
                &self.unwritten,
                &self.locks,
            );
            let mut seeds = PoolSeeds::new(&self.mirrors, repos, running.keys());
            self.schedule.start_ready(
                now,
                |id| {
                    repos
                        .get(id)
                        .map(|r| host_of_url(&r.url))
                        .unwrap_or_default()
                },
                |id| {
                    if running.contains_key(id)
                        || stuck.contains(id)
                        || unwritten.contains_key(id)
                        || !may_start(locks, id, pool::ProjectOp::Member)
                    {
                        return false;
                    }
                    let Some(r) = repos.get(id) else { return false };
                    if !r.mirrored && disk_low {
                        if !r.waiting_reported {
                            waiting.push(id.to_owned());
                        }
                        return false;
                    }
                    r.mirrored || seeds.admit_clone(id, &r.url)
                },
            )
        };
        for id in started {
            self.start_fetch(id);
        }
        for id in waiting {
            self.report_waiting(&id, now);
        }
        let pending: Vec<(String, Disposal)> = self
            .state
            .disposals
            .iter()
            .filter(|(id, _)| {
                !self.busy(id)
                    && !self.disposal_failed.contains(*id)
                    && may_start(&self.locks, id, pool::ProjectOp::Member)
            })
            .map(|(id, d)| (id.clone(), *d))
            .collect();
        for (id, d) in pending {
            self.start_disposal(id, d);
        }
        self.start_maintenance();
        self.start_pool_op();
        self.start_pool_survey();
    }

    /// Queue every mirror whose periodic maintenance is due.
    fn queue_periodic_maintenance(&mut self) {
        let now = now_ms();
        let every = ms(MAINTENANCE_EVERY);
        let due: Vec<String> = self
            .state
            .repos
            .iter()
            .filter(|(_, r)| r.mirrored)
            .filter(|(_, r)| {
                r.last_maintenance_ms
                    .is_some_and(|t| now.saturating_sub(t) >= every)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.queue_maintenance(id);
        }
    }

    fn queue_maintenance(&mut self, id: String) {
        if self.maintenance_queued.insert(id.clone()) {
            self.maintenance_due.push_back(id);
        }
    }

    /// Start due maintenance on mirrors nothing else is working on, a few at a time.
    fn start_maintenance(&mut self) {
        let mut running = self
            .running
            .values()
            .filter(|r| r.kind == OpKind::Maintain)
            .count();
        let mut deferred = Vec::new();
        while running < MAX_MAINTENANCE
            && let Some(id) = self.maintenance_due.pop_front()
        {
            let Some(repo) = self.state.repos.get(&id) else {
                self.maintenance_queued.remove(&id);
                continue; // dropped meanwhile
            };
            if !repo.mirrored {
                self.maintenance_queued.remove(&id);
                continue;
            }
            // Never while anything else runs on the repo (SPEC §7.1); a fetch that falls
            // due meanwhile waits for the pass to finish.
            if self.busy(&id) || !may_start(&self.locks, &id, pool::ProjectOp::MemberRepack) {
                deferred.push(id);
                continue;
            }
            let now = now_ms();
            let verify = repo
                .last_verify_ms
                .is_none_or(|t| now.saturating_sub(t) >= ms(VERIFY_EVERY));
            let url = repo.url.clone();
            self.maintenance_queued.remove(&id);
            self.start_maintain(id, url, verify);
            running += 1;
        }
        for id in deferred.into_iter().rev() {
            self.maintenance_due.push_front(id);
        }
    }

    fn start_maintain(&mut self, id: String, url: String, verify: bool) {
        self.lock(&id, pool::ProjectOp::MemberRepack);
        let interrupt = Arc::new(AtomicBool::new(false));
        self.running.insert(
            id.clone(),
            Running {
                kind: OpKind::Maintain,
                interrupt: interrupt.clone(),
            },
        );
        tracing::debug!(repo = %id, verify, "maintaining");
        let mirrors = self.mirrors.clone();
        let holds = self.peer.holds();
        self.ops.spawn(async move {
            // C18: a repack under a running upload-pack can drop the packs it reads, so
            // maintenance waits for transfers of this repo (and refuses new ones).
            let _hold = match &holds {
                Some(h) => Some(h.maintenance(&id).await),
                None => None,
            };
            let bid = id.clone();
            let r = tokio::task::spawn_blocking(move || {
                mirrors.maintain(&bid, &url, verify, &interrupt)
            })
            .await;
            let result =
                r.unwrap_or_else(|e| Err(Failure::local(format!("maintenance task failed: {e}"))));
            OpDone {
                id,
                result: OpResult::Maintained { verify, result },
            }
        });
    }

    fn start_fetch(&mut self, id: String) {
        let Some(repo) = self.state.repos.get_mut(&id) else {
            self.schedule.finish(&id, None, now_ms());
            return;
        };
        // SPEC §13: a follower whose copy is the primary's last reported one has nothing
        // to fetch, from the upstream or a peer, until the next follow order (which plans
        // it at once); its schedule only keeps it in view.
        if repo.mirrored
            && self
                .follow
                .get(&id)
                .is_some_and(|f| self.copy_sha.get(&id) == Some(&f.expect))
        {
            let now = now_ms();
            let later = now.saturating_add(ms(self.cfg.fetch.max_interval));
            self.schedule.finish(&id, Some(later), now);
            return;
        }
        // A mirror that is not complete at the final path is cloned; one that is, fetched.
        let clone = !repo.mirrored;
        if repo.waiting_reported {
            repo.waiting_reported = false;
            self.dirty.insert(id.clone());
        }
        let url = repo.url.clone();
        let relist = repo.relist;
        let interrupt = Arc::new(AtomicBool::new(false));
        let kind = if clone { OpKind::Clone } else { OpKind::Fetch };
        self.lock(&id, pool::ProjectOp::Member);
        self.running.insert(
            id.clone(),
            Running {
                kind,
                interrupt: interrupt.clone(),
            },
        );
        tracing::debug!(repo = %id, %url, "{}", if clone { "cloning" } else { "fetching" });
        let mirrors = self.mirrors.clone();
        let timeout = self.cfg.fetch.timeout;
        let refs = self.store.refs();
        // SPEC §13 hand-over: a repo the coordinator named holders for (one this worker
        // does not hold, or holds an unverified, perhaps older copy of: a returning
        // worker) comes from them first, only what is missing for an older copy, each
        // attempt bounded by fetch.timeout; the upstream after them.
        let copy = match self.peer_sources.get(&id).or_else(|| self.follow.get(&id)) {
            Some(p) => {
                let holders = self.peer.holders(&p.sources);
                let expect = p.expect;
                self.peer
                    .client()
                    .filter(|_| !holders.is_empty())
                    .map(|c| (c, holders, expect))
            }
            _ => None,
        };
        self.ops.spawn(async move {
            let started = Instant::now();
            let copied = match copy {
                Some((client, holders, expect)) => {
                    copy_from_peers(&client, &mirrors, &id, &url, &holders, expect).await
                }
                None => None,
            };
            let (result, abandoned, source) = if let Some((from, fetched)) = copied {
                let (bid, brefs) = (id.clone(), refs.clone());
                let result = tokio::task::spawn_blocking(move || {
                    diff_reported(&brefs, &bid, fetched, relist)
                })
                .await
                .unwrap_or_else(|e| Err(Failure::local(format!("mirror task failed: {e}"))));
                (result, None, gitmirror_wire::TransferSource::Peer(from))
            } else {
                let (bid, burl, flag) = (id.clone(), url.clone(), interrupt.clone());
                let mut handle = tokio::task::spawn_blocking(move || {
                    let fetched = if clone {
                        mirrors.clone_new(&bid, &burl, &flag)
                    } else {
                        mirrors.fetch(&bid, &burl, &flag)
                    }?;
                    diff_reported(&refs, &bid, fetched, relist)
                });
                let timed_out = || {
                    Failure::new(
                        FailureClass::Transient,
                        format!("timed out after {}", humantime::format_duration(timeout)),
                    )
                };
                let joined = |r: Result<Result<Reported, Failure>, tokio::task::JoinError>| {
                    r.unwrap_or_else(|e| Err(Failure::local(format!("mirror task failed: {e}"))))
                };
                let (result, abandoned) = tokio::select! {
                    r = &mut handle => (joined(r), None),
                    _ = tokio::time::sleep(timeout) => {
                        interrupt.store(true, Ordering::Relaxed);
                        match tokio::time::timeout(interrupt_grace(timeout), &mut handle).await {
                            // Finished in the same instant: a success stands.
                            Ok(r) => match joined(r) {
                                Ok(f) => (Ok(f), None),
                                Err(_) => (Err(timed_out()), None),
                            },
                            Err(_) => (Err(timed_out()), Some(handle)),
                        }
                    }
                };
                (result, abandoned, gitmirror_wire::TransferSource::Upstream)
            };
            OpDone {
                id,
                result: OpResult::Fetch {
                    url,
                    clone,
                    started,
                    result,
                    abandoned,
                    source,
                },
            }
        });
    }

    fn start_disposal(&mut self, id: String, disposal: Disposal) {
        self.lock(&id, pool::ProjectOp::Member);
        let mirrors = self.mirrors.clone();
        self.running.insert(
            id.clone(),
            Running {
                kind: OpKind::Dispose(disposal),
                interrupt: Arc::new(AtomicBool::new(false)),
            },
        );
        self.ops.spawn(async move {
            let bid = id.clone();
            let r = tokio::task::spawn_blocking(move || match disposal {
                Disposal::Delete => mirrors.delete(&bid).map(|()| None),
                Disposal::Trash => mirrors.trash(&bid, mirror::unix_secs()),
            })
            .await;
            let result = match r {
                Ok(Ok(trashed)) => {
                    match (disposal, trashed) {
                        (Disposal::Delete, _) => tracing::info!(repo = %id, "deleted the mirror"),
                        (Disposal::Trash, Some(p)) => tracing::info!(repo = %id, trash = %p.display(), "moved the mirror to the trash; deleted after 72 h"),
                        (Disposal::Trash, None) => {}
                    }
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("task failed: {e}")),
            };
            OpDone { id, result: OpResult::Disposed(disposal, result) }
        });
    }

    fn report_waiting(&mut self, id: &str, now: i64) {
        let Some(repo) = self.state.repos.get_mut(id) else {
            return;
        };
        repo.waiting_reported = true;
        // The disk state change itself is logged once; per repo it is detail.
        tracing::debug!(repo = %id, "clone waits for free space on the mirror disk");
        let outcome = Outcome {
            report_id: 0,
            repo: id.to_owned(),
            url: repo.url.clone(),
            finished_ms: now,
            duration_ms: 0,
            result: FetchResult::Waiting {
                reason: "disk".into(),
            },
            changes: Vec::new(),
            ref_count: 0,
            refs_digest: 0,
            next_due_ms: now,
        };
        self.queue_outcome(outcome, None);
    }

    // ---- finished work ----

    fn on_done(&mut self, done: OpDone) {
        let OpDone { id, result } = done;
        match &result {
            OpResult::PoolSurvey { .. } | OpResult::Unstuck => {}
            OpResult::Pool { .. } => self.pool_changed(&format!("{id}/x")),
            OpResult::Fetch { clone: false, .. } => {}
            _ => self.pool_changed(&id),
        }
        match result {
            OpResult::PoolSurvey { full, survey } => self.on_pool_survey(full, survey),
            OpResult::Pool { op, pool, result } => self.on_pool_op_done(id, op, &pool, result),
            OpResult::Unstuck => {
                self.unlock(&id, pool::ProjectOp::Member);
                self.stuck.remove(&id);
                tracing::info!(repo = %id, "an abandoned fetch has finally returned");
            }
            OpResult::Maintained { verify, result } => {
                self.running.remove(&id);
                self.unlock(&id, pool::ProjectOp::MemberRepack);
                self.on_maintained(&id, verify, result);
            }
            OpResult::Disposed(disposal, result) => {
                self.running.remove(&id);
                self.unlock(&id, pool::ProjectOp::Member);
                match result {
                    Ok(()) => {
                        if self.state.disposals.get(&id) == Some(&disposal) {
                            self.state.disposals.remove(&id);
                            self.commit(vec![Record::Disposal {
                                id: id.clone(),
                                disposal: None,
                            }]);
                        }
                    }
                    Err(e) => {
                        // Left in `disposals`, so it is retried at the next start.
                        self.disposal_failed.insert(id.clone());
                        tracing::error!(repo = %id, "cannot remove the dropped mirror: {e}");
                    }
                }
                // Re-assigned while it was being removed: it is gone now, so clone it.
                if let Some(repo) = self.state.repos.get_mut(&id) {
                    repo.mirrored = self.mirrors.exists(&id);
                    self.dirty.insert(id.clone());
                    self.schedule.plan_urgent(&id, now_ms());
                }
            }
            OpResult::Fetch {
                url,
                clone,
                started,
                result,
                abandoned,
                source,
            } => {
                self.running.remove(&id);
                if abandoned.is_none() {
                    // An abandoned one keeps its project's lock until its thread returns.
                    self.unlock(&id, pool::ProjectOp::Member);
                }
                if let Some(handle) = abandoned {
                    tracing::error!(repo = %id, "fetch did not stop after its timeout; abandoning it (nothing else starts on this repo until it returns)");
                    self.stuck.insert(id.clone());
                    let sid = id.clone();
                    self.ops.spawn(async move {
                        let _ = handle.await;
                        OpDone {
                            id: sid,
                            result: OpResult::Unstuck,
                        }
                    });
                }
                let attempt = Attempt {
                    url,
                    clone,
                    took: started.elapsed(),
                    result,
                };
                self.on_fetch_done(id, attempt, source);
            }
        }
    }

    fn on_fetch_done(
        &mut self,
        id: String,
        attempt: Attempt,
        source: gitmirror_wire::TransferSource,
    ) {
        let now = now_ms();
        let Some(repo) = self.state.repos.get_mut(&id) else {
            // Dropped while running; its disposal starts on the next pass.
            self.schedule.finish(&id, None, now);
            return;
        };
        if self.stopping && attempt.result.is_err() {
            // Interrupted by the shutdown: not the upstream's fault, nothing to report.
            self.schedule.finish(&id, Some(now), now);
            return;
        }
        let first_passes = || {
            // The periodic passes count from the first mirror, spread over their period.
            let spread =
                |every: Duration| now.saturating_sub(rand::random_range(0..ms(every).max(1)));
            (spread(MAINTENANCE_EVERY), spread(VERIFY_EVERY))
        };
        let v = attempt::finished(&id, repo, &mut self.schedule, attempt, now, first_passes);
        if let Some(sha) = v.refs_sha256 {
            self.peer_sources.remove(&id);
            self.copy_sha.insert(id.clone(), sha);
        }
        if let Some(r) = v.rate_limited
            && self.conn.as_ref().is_some_and(|c| c.protocol >= 6)
        {
            self.send(WorkerMsg::RateLimited(r));
        }
        self.schedule.finish(&id, Some(v.next), now);
        // A relist's changes are from no refs: the refs last reported start again from none
        // (in the same batch, so a crash cannot leave the outcome without it).
        let reset = v.relisted.then(|| Record::Refs {
            id: id.clone(),
            refs: Refs::new(),
        });
        let report_id = self.queue_outcome(v.outcome, reset);
        if let (Some(sha), Some(report_id)) = (v.refs_sha256, report_id) {
            self.report_sha.insert(report_id, sha);
        }
        if let (gitmirror_wire::TransferSource::Peer(_), Some(report_id)) = (source, report_id) {
            self.report_source.insert(report_id, source);
        }
        if let (1.., Some(report_id)) = (v.received_bytes, report_id) {
            self.report_bytes.insert(report_id, v.received_bytes);
        }
        if v.pool_trigger {
            self.queue_consolidation(&id, now);
        }
        // A success (from upstream or a peer).
        if v.refs_sha256.is_some() {
            if matches!(source, gitmirror_wire::TransferSource::Peer(_))
                && let Some(project) = pool::project_of(&id)
            {
                // A peer's copy arrives as a plain mirror (SPEC §13, §14): its project's
                // migration is asked again, done once per run or not.
                self.migrated.remove(project);
            }
            self.queue_migration(&id);
        }
        if v.maintain {
            self.queue_maintenance(id);
        }
    }

    // ---- fork pools (SPEC §14, plan C9, C10, C19) ----

    /// Take `op`'s share of `id`'s project lock (ids without a project folder have none).
    fn lock(&mut self, id: &str, op: pool::ProjectOp) {
        if let Some(p) = pool::project_of(id) {
            self.locks.start(p, op);
        }
    }

    fn unlock(&mut self, id: &str, op: pool::ProjectOp) {
        if let Some(p) = pool::project_of(id) {
            self.locks.finish(p, op);
        }
    }

    /// After a clone of a pool member or a fetch of one that brought at least
    /// [`pool::CONSOLIDATE_AFTER_BYTES`]: consolidate its pool, at most every
    /// [`pool::CONSOLIDATE_EVERY`] (plan C19). One read of the member's alternates file.
    fn queue_consolidation(&mut self, id: &str, now: i64) {
        let Some(project) = pool::project_of(id) else {
            return;
        };
        if self.pool_due.contains_key(project) || self.mirrors.pool_of(id).is_none() {
            return;
        }
        let due = self.pool_last.get(project).map_or(now, |t| {
            t.saturating_add(ms(pool::CONSOLIDATE_EVERY)).max(now)
        });
        self.pool_due.insert(project.to_owned(), due);
        self.pool_scan_after = 0;
    }

    /// After a successful clone or fetch of `id` with `fetch.pools` on: its project's
    /// plain mirrors join the pool in the background (plan step 7), once per run (again
    /// after `fetch.pools` is turned on). No file is read here.
    fn queue_migration(&mut self, id: &str) {
        let Some(project) = pool::project_of(id) else {
            return;
        };
        // `migrated`: queued or done.
        if self.mirrors.pools()
            && self.migrate_due.len() < MAX_MIGRATIONS_QUEUED
            && self.migrated.insert(project.to_owned())
        {
            self.migrate_due.push_back(project.to_owned());
            self.pool_scan_after = 0;
        }
    }

    /// The coordinator takes pool reports (protocol 8).
    fn speaks_pools(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.protocol >= 8)
    }

    /// Repo `id`'s project may have changed its pool state: survey it again for the
    /// coordinator (protocol 8).
    fn pool_changed(&mut self, id: &str) {
        if !self.speaks_pools() {
            return;
        }
        if let Some(project) = pool::project_of(id) {
            if self.pool_report.dirty.len() >= MAX_MIGRATIONS_QUEUED {
                self.pool_report.full = true;
            } else {
                self.pool_report.dirty.insert(project.to_owned());
            }
        }
    }

    fn start_pool_survey(&mut self) {
        if !self.speaks_pools() || self.stopping {
            return;
        }
        let r = &mut self.pool_report;
        let now = now_ms();
        if r.running || now < r.after || (!r.full && r.dirty.is_empty()) {
            return;
        }
        r.running = true;
        r.after = now.saturating_add(1000);
        let full = r.full;
        let folders = if full {
            r.dirty.clear();
            None
        } else {
            Some(r.dirty.drain().collect())
        };
        let mirrors = self.mirrors.clone();
        self.ops.spawn(async move {
            let survey = tokio::task::spawn_blocking(move || {
                let credentials = mirrors.credentials();
                let credentialed = |url: &str| credentials.find(url).is_some();
                let rules = pool::SurveyRules {
                    pools_on: mirrors.pools(),
                    credentialed: &credentialed,
                };
                pool::survey(mirrors.root(), folders, &rules)
            })
            .await
            .unwrap_or_default();
            OpDone {
                id: String::new(),
                result: OpResult::PoolSurvey { full, survey },
            }
        });
    }

    /// Send what a survey found: the whole list, or the changes of the surveyed folders.
    fn on_pool_survey(&mut self, full: bool, survey: BTreeMap<String, pool::ProjectSurvey>) {
        self.pool_report.running = false;
        if !self.speaks_pools() {
            return;
        }
        if full != self.pool_report.full {
            // A whole list became due while a partial survey ran: the next one sends it.
            return;
        }
        let r = &mut self.pool_report;
        if full {
            r.full = false;
            r.sent.clear();
            r.figures.clear();
        }
        let mut out = Vec::new();
        for (folder, s) in survey {
            let members = s
                .states
                .iter()
                .filter(|(_, st)| *st == gitmirror_wire::PoolState::Member)
                .count() as u32;
            if s.pooled {
                r.figures
                    .insert(folder.clone(), (s.pool_bytes, s.member_bytes, members));
            } else {
                r.figures.remove(&folder);
            }
            let now: BTreeMap<String, (gitmirror_wire::PoolState, u32)> = s
                .states
                .into_iter()
                .filter(|(name, _)| self.state.repos.contains_key(&format!("{folder}/{name}")))
                .map(|(name, st)| (name, (st, members)))
                .collect();
            let before = r.sent.remove(&folder).unwrap_or_default();
            for (name, &(state, members)) in &now {
                if before.get(name) != Some(&(state, members)) {
                    out.push(gitmirror_wire::RepoPoolState {
                        repo: format!("{folder}/{name}"),
                        state,
                        members,
                    });
                }
            }
            for name in before.keys().filter(|n| !now.contains_key(*n)) {
                out.push(gitmirror_wire::RepoPoolState {
                    repo: format!("{folder}/{name}"),
                    state: gitmirror_wire::PoolState::Cleared,
                    members: 0,
                });
            }
            if !now.is_empty() {
                r.sent.insert(folder, now);
            }
        }
        for part in gitmirror_wire::pool_state_parts(out, full) {
            if !self.send(part) {
                break;
            }
        }
    }

    /// Start one due pool operation if none runs and the project's lock allows it: a due
    /// prune first (it waits until no op of the project's members runs: its project drains
    /// meanwhile and nothing else starts, so it waits at most for the members' running
    /// ops), else the earliest due consolidation (not while a member repacks), else the
    /// next project's migration (exclusive too, and only above `disk.min_free`; it drains
    /// its project only while nothing else is due).
    fn start_pool_op(&mut self) {
        if self.stopping || self.locks.pool_op_running() {
            return;
        }
        let now = now_ms();
        if self.pool_due.is_empty() && self.prune_due.is_empty() && self.migrate_due.is_empty() {
            self.locks.drain(None);
            return;
        }
        if now < self.pool_scan_after {
            return;
        }
        self.pool_scan_after = now.saturating_add(1000);
        if !self.mirrors.pools() {
            // Plan C14: turned off, no more joins (turned on again, they are asked again).
            self.migrate_due.clear();
        }
        let pick = if let Some(first) = self.prune_due.iter().min() {
            let Some(project) = self
                .prune_due
                .iter()
                .find(|p| self.locks.may_start(p, pool::ProjectOp::Prune))
            else {
                let first = first.clone();
                self.locks.drain(Some(&first));
                return;
            };
            (project.clone(), pool::ProjectOp::Prune)
        } else {
            let due = self
                .pool_due
                .iter()
                .filter(|(p, due)| {
                    **due <= now && self.locks.may_start(p, pool::ProjectOp::Consolidate)
                })
                .min_by_key(|(_, due)| **due)
                .map(|(p, _)| p.clone());
            match due {
                Some(project) => (project, pool::ProjectOp::Consolidate),
                None if !self.migrate_due.is_empty() && !self.refresh_disk(false) => {
                    self.start_migration();
                    return;
                }
                None => {
                    self.locks.drain(None);
                    return;
                }
            }
        };
        let (project, op) = pick;
        let Ok(pool_dir) = pool::project_pool_path(self.mirrors.root(), &project) else {
            self.pool_due.remove(&project);
            self.prune_due.remove(&project);
            return;
        };
        match op {
            pool::ProjectOp::Prune => self.prune_due.remove(&project),
            _ => {
                self.pool_due.remove(&project);
                self.pool_last.insert(project.clone(), now);
                true
            }
        };
        self.locks.start(&project, op);
        let mirrors = self.mirrors.clone();
        self.ops.spawn(async move {
            let p = pool_dir.clone();
            let r = tokio::task::spawn_blocking(move || match op {
                pool::ProjectOp::Prune => mirrors
                    .prune_pool(&p, pool::PRUNE_EXPIRE)
                    .map(|r| format!("{r:?}")),
                _ => mirrors.consolidate_pool(&p).map(|r| format!("{r:?}")),
            })
            .await;
            let result = match r {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("task failed: {e}")),
            };
            OpDone {
                id: project,
                result: OpResult::Pool {
                    op,
                    pool: pool_dir,
                    result,
                },
            }
        });
    }

    /// Start the first queued project's migration whose lock is free; when none is, the
    /// first queued project drains.
    fn start_migration(&mut self) {
        let Some(i) = self
            .migrate_due
            .iter()
            .position(|p| self.locks.may_start(p, pool::ProjectOp::Migrate))
        else {
            let first = self.migrate_due.front().cloned();
            self.locks.drain(first.as_deref());
            return;
        };
        let Some(project) = self.migrate_due.remove(i) else {
            return;
        };
        let Ok(pool_dir) = pool::project_pool_path(self.mirrors.root(), &project) else {
            return;
        };
        self.locks.start(&project, pool::ProjectOp::Migrate);
        let mirrors = self.mirrors.clone();
        let (dir, min_free) = (self.cfg.mirror_dir.clone(), self.cfg.disk.min_free);
        self.ops.spawn(async move {
            let folder = project.clone();
            let r = tokio::task::spawn_blocking(move || {
                let low = || disk::space(&dir).is_ok_and(|(f, t)| min_free.is_below(f, t));
                mirrors.migrate_project(&folder, low)
            })
            .await;
            let result = match r {
                Ok(Ok(0)) => Ok(String::new()),
                Ok(Ok(n)) => Ok(format!("{n} existing mirrors joined")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("task failed: {e}")),
            };
            OpDone {
                id: project,
                result: OpResult::Pool {
                    op: pool::ProjectOp::Migrate,
                    pool: pool_dir,
                    result,
                },
            }
        });
    }

    fn on_pool_op_done(
        &mut self,
        project: String,
        op: pool::ProjectOp,
        pool_dir: &std::path::Path,
        result: Result<String, String>,
    ) {
        self.locks.finish(&project, op);
        self.pool_scan_after = 0;
        match result {
            Ok(what) if what.is_empty() => {}
            Ok(what) => {
                tracing::info!(pool = %pool_dir.display(), ?op, "fork pool: {what}");
                let week = pool::PRUNE_EVERY.as_secs();
                if op == pool::ProjectOp::Consolidate
                    && pool::last_time(pool_dir, true)
                        .is_some_and(|t| mirror::unix_secs().saturating_sub(t) >= week)
                {
                    self.prune_due.insert(project);
                }
            }
            Err(e) => {
                tracing::warn!(pool = %pool_dir.display(), ?op, "fork pool operation failed: {e}");
                if op == pool::ProjectOp::Migrate {
                    // Asked again after the project's next successful fetch.
                    self.migrated.remove(&project);
                }
            }
        }
    }

    fn on_maintained(&mut self, id: &str, verify: bool, result: Result<Maintenance, Failure>) {
        let now = now_ms();
        let Some(repo) = self.state.repos.get_mut(id) else {
            return;
        };
        // Done or failed, the next periodic pass is a day away (no retry loop).
        repo.last_maintenance_ms = Some(now);
        if verify {
            repo.last_verify_ms = Some(now);
        }
        self.dirty.insert(id.to_owned());
        match result {
            Ok(m) => {
                if m.packs_after != m.packs_before {
                    tracing::debug!(repo = %id, before = m.packs_before, after = m.packs_after, "repacked");
                }
                for repair in &m.repairs {
                    tracing::info!(repo = %id, "maintenance: {repair}");
                }
                if m.recloned.is_some() {
                    // Report the re-cloned mirror's refs through an ordinary fetch.
                    self.schedule.plan_urgent(id, now);
                }
                for other in m.pool_rebuilt.unwrap_or_default() {
                    // Plan C16: the rebuilt pool may lack what they borrowed: verify each
                    // next (a failing one is re-cloned plain; migration rejoins it).
                    if let Some(r) = self.state.repos.get_mut(&other) {
                        r.last_verify_ms = None;
                        self.dirty.insert(other.clone());
                        self.queue_maintenance(other);
                    }
                }
            }
            Err(f) => tracing::warn!(repo = %id, "maintenance failed: {}", f.message),
        }
    }

    // ---- the coordinator ----

    fn on_link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up {
                worker_id,
                protocol,
                tx,
            } => {
                // Acknowledgements meant for the last connection are dropped: the
                // coordinator sends the difference again after the holdings.
                self.reports.connected();
                // Shares stay as they were until this connection's first HostBudgets.
                self.budgeting.seen = 0;
                self.budgeting.lost_at = None;
                self.budgeting.last_sent = None;
                self.conn = Some(Conn {
                    worker_id,
                    protocol,
                    tx,
                });
                // Protocol 7 (SPEC §13, C9): the peer plane before the holdings, so the
                // coordinator knows it before the first assignment.
                if protocol >= 7 {
                    self.send(WorkerMsg::PeerInfo(self.peer.info()));
                }
                // In parts of bounded size (protocol 3): 100k repos do not fit one frame.
                for part in gitmirror_wire::holdings_parts(self.state.holdings()) {
                    if !self.send(part) {
                        break;
                    }
                }
                // Protocol 8 (SPEC §14): the pool states follow the holdings, once surveyed.
                self.pool_report = PoolReport {
                    full: protocol >= 8,
                    ..PoolReport::default()
                };
                self.flush();
                self.send_status();
                self.update_status_line();
            }
            LinkEvent::Down => {
                self.lose_conn();
                self.peer.on_link_down();
                // SPEC §13 (C13): cut off from the coordinator, a follower hears of no
                // change: it goes back to its own upstream schedule (results that make no
                // event) until the next connection's follow orders.
                self.follow.clear();
                self.budgeting.lost_at = Some(Instant::now());
                self.update_status_line();
            }
            LinkEvent::Msg(CoordMsg::Assign(delta)) => self.on_assign(delta),
            LinkEvent::Msg(CoordMsg::OutcomeAck { upto }) => {
                let Some(upto) = self.reports.acknowledged(upto) else {
                    return;
                };
                self.report_sha.retain(|id, _| *id > upto);
                self.report_source.retain(|id, _| *id > upto);
                self.report_bytes.retain(|id, _| *id > upto);
                if self.state.acknowledge(upto) > 0 {
                    self.store.append(vec![Record::Ack { upto }]);
                }
            }
            LinkEvent::Msg(CoordMsg::FetchNow { repo }) => {
                if self.state.repos.contains_key(&repo) {
                    tracing::info!(repo = %repo, "fetch requested by the coordinator");
                    self.schedule.plan_urgent(&repo, now_ms());
                } else {
                    tracing::debug!(repo = %repo, "fetch requested for a repo this worker does not hold");
                }
            }
            LinkEvent::Msg(CoordMsg::Relist { repo }) => match self.state.repos.get_mut(&repo) {
                Some(r) => {
                    tracing::info!(repo = %repo, "the coordinator asked for the refs in full; relisting at the next fetch, now");
                    r.relist = true;
                    self.dirty.insert(repo.clone());
                    self.schedule.plan_urgent(&repo, now_ms());
                }
                None => {
                    tracing::debug!(repo = %repo, "relist requested for a repo this worker does not hold");
                }
            },
            LinkEvent::Msg(CoordMsg::RefsQuery(q)) => self.on_refs_query(q),
            LinkEvent::Msg(CoordMsg::HostBudgets(b)) => self.on_host_budgets(b),
            // Protocol 7 (SPEC §13): the assignment with peer sources.
            LinkEvent::Msg(CoordMsg::Assign7(delta)) => self.on_assign7(delta),
            LinkEvent::Msg(CoordMsg::PeerPlane(p)) => {
                if self.peer.on_plane(p.ca_cert_pem, p.lease_ms) {
                    self.send(WorkerMsg::PeerInfo(self.peer.info()));
                }
            }
            LinkEvent::Msg(CoordMsg::PeerGrants(g)) => self.peer.on_grants(g),
            LinkEvent::Msg(CoordMsg::PeerDirectory(d)) => self.peer.on_directory(d),
            // The link filters these out.
            LinkEvent::Msg(CoordMsg::Welcome(_) | CoordMsg::Refused(_) | CoordMsg::Enrolled(_)) => {
            }
        }
    }

    /// `GET /api/repos/{id}/refs` on the coordinator (SPEC §12): one page of the refs last
    /// reported, read from the state files and sent from a blocking thread, so the loop
    /// never waits on the disk.
    fn on_refs_query(&mut self, q: gitmirror_wire::RefsQuery) {
        use gitmirror_wire::refs_page;
        let Some(conn) = &self.conn else { return };
        let tx = conn.tx.clone();
        if !self.state.repos.contains_key(&q.repo) {
            let why = format!("this worker does not hold {}", q.repo);
            self.send(WorkerMsg::RefsPage(refs_page::error(&q, why)));
            return;
        }
        let Ok(permit) = self.refs_reads.clone().try_acquire_owned() else {
            let why = format!("busy: {MAX_REFS_READS} refs pages are being read; try again");
            self.send(WorkerMsg::RefsPage(refs_page::error(&q, why)));
            return;
        };
        let refs = self.store.refs();
        tokio::spawn(async move {
            let page = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                match refs.load(&q.repo) {
                    Ok(all) => refs_page::page(&q, &all),
                    Err(e) => {
                        tracing::error!(repo = %q.repo, "cannot read the refs last reported: {e}");
                        refs_page::error(&q, format!("cannot read the refs last reported: {e}"))
                    }
                }
            })
            .await;
            // A closed connection drops the page: the coordinator's query times out or
            // ends with the connection.
            if let Ok(page) = page {
                let _ = tx.send(WorkerMsg::RefsPage(page)).await;
            }
        });
    }

    /// `Assign7` (SPEC §13): a primary's upsert naming holders and the refs hash of their
    /// copy is cloned from them first ([`Self::start_fetch`]); the rest is `Assign`.
    ///
    /// A `Follower` upsert with sources (SPEC §13 replicas) is a follow order: the repo
    /// is copied from them whenever it is due, and at once when `expect` differs from
    /// this copy's refs hash; a `Primary` upsert ends following (the upstream schedule
    /// goes on). A follower without sources fetches from the upstream as before.
    fn on_assign7(&mut self, delta: gitmirror_wire::AssignDelta7) {
        use gitmirror_wire::RepoRole;
        for d in &delta.drop {
            self.peer_sources.remove(&d.id);
            self.follow.remove(&d.id);
        }
        let mut copy_now = Vec::new();
        for s in &delta.upsert {
            let source = s
                .expect
                .filter(|_| !s.sources.is_empty())
                .map(|expect| PeerSource {
                    sources: s.sources.clone(),
                    expect,
                });
            match (s.role, source) {
                (RepoRole::Follower, Some(p)) => {
                    self.peer_sources.remove(&s.id);
                    if self.copy_sha.get(&s.id) != Some(&p.expect) {
                        copy_now.push(s.id.clone());
                    }
                    self.follow.insert(s.id.clone(), p);
                }
                (RepoRole::Primary, Some(p)) => {
                    self.follow.remove(&s.id);
                    self.peer_sources.insert(s.id.clone(), p);
                    // Held with no copy yet (a hand-over cut by a restart, named again
                    // on reconnection): the copy from the holders now, not after the
                    // failed upstream attempt's back-off.
                    if self.state.repos.get(&s.id).is_some_and(|r| !r.mirrored) {
                        copy_now.push(s.id.clone());
                    }
                }
                (_, None) => {
                    self.follow.remove(&s.id);
                    self.peer_sources.remove(&s.id);
                }
            }
        }
        self.on_assign(delta.plain());
        let now = now_ms();
        for id in copy_now {
            if self.state.repos.contains_key(&id) {
                self.schedule.plan_urgent(&id, now);
            }
        }
    }

    fn on_assign(&mut self, delta: AssignDelta) {
        let now = now_ms();
        let seq = delta.seq;
        let (running, mirrors) = (&self.running, &self.mirrors);
        let applied = crate::assignment::apply(&mut self.state, delta, now, |id| {
            // A mirror being removed is not one to fetch into.
            !matches!(
                running.get(id),
                Some(Running {
                    kind: OpKind::Dispose(_),
                    ..
                })
            ) && mirrors.exists(id)
        });
        for id in applied.urgent {
            self.schedule.plan_urgent(&id, now);
        }
        self.dirty.extend(applied.changed);
        for id in &applied.forgotten {
            self.peer_sources.remove(id);
            self.follow.remove(id);
            self.copy_sha.remove(id);
            self.dirty.remove(id);
            self.schedule.forget(id);
        }
        let records = applied.records;
        // Acknowledged once durable (`on_durable`).
        let batch = self.commit(records);
        self.reports.applied(batch, seq);
        self.on_durable();
    }

    /// SPEC §18: this worker's shares of the fleet's host budgets, and the hosts paused
    /// for the whole fleet. Applied at once; the demand that follows acknowledges it.
    fn on_host_budgets(&mut self, b: gitmirror_wire::HostBudgets) {
        let now = now_ms();
        if self.budgeting.suspended || !self.schedule.has_budgets() {
            tracing::info!(
                hosts = b.limits.len(),
                "fleet-wide host budgets in force: {}",
                b.limits
                    .iter()
                    .map(|l| format!(
                        "{} (connections {}, per minute {})",
                        l.host,
                        l.connections.map_or("-".into(), |c| c.to_string()),
                        l.per_minute.map_or("-".into(), |c| c.to_string())
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.schedule.set_budgets(&b.limits, now);
        for p in &b.paused {
            let host = p.host.to_ascii_lowercase();
            let until = now.saturating_add(i64::try_from(p.remaining_ms).unwrap_or(i64::MAX));
            if self.schedule.paused_until(&host, now).is_none() {
                tracing::warn!(
                    %host,
                    secs = p.remaining_ms / 1000,
                    "upstream host paused for the whole fleet (a worker saw a rate limit); nothing on it starts until then"
                );
            }
            self.schedule.pause_host(&host, until);
        }
        self.budgeting.seen = b.seq;
        self.budgeting.lease = Duration::from_millis(b.lease_ms);
        self.budgeting.suspended = false;
        self.send_demand(true);
    }

    /// The lease of the shares ran out while the coordinator is unreachable: start
    /// nothing more on limited hosts (the coordinator gives the share to others once it
    /// declares this worker gone). Returns whether that just happened.
    fn check_lease(&mut self) -> bool {
        let Some(lost) = self.budgeting.lost_at else {
            return false;
        };
        if self.budgeting.suspended || lost.elapsed() < self.budgeting.lease {
            return false;
        }
        self.budgeting.suspended = true;
        self.schedule.suspend_budgets();
        tracing::warn!(
            "no coordinator for {:?}: this worker's shares of the host budgets ran out; nothing starts on a limited host until it is back",
            self.budgeting.lease
        );
        true
    }

    /// `HostDemand` when it changed (or `force`, or every [`DEMAND_REFRESH`]); only to a
    /// coordinator of protocol ≥ 6 that sent budgets.
    fn send_demand(&mut self, force: bool) {
        if self.conn.as_ref().is_none_or(|c| c.protocol < 6) || !self.schedule.has_budgets() {
            return;
        }
        let repos = &self.state.repos;
        let hosts = self.schedule.host_loads(now_ms(), |id| {
            repos
                .get(id)
                .map(|r| host_of_url(&r.url))
                .unwrap_or_default()
        });
        let demand = gitmirror_wire::HostDemand {
            seen: self.budgeting.seen,
            hosts,
        };
        let same = self
            .budgeting
            .last_sent
            .as_ref()
            .is_some_and(|(d, at)| *d == demand && at.elapsed() < DEMAND_REFRESH);
        if same && !force {
            return;
        }
        if self.send(WorkerMsg::HostDemand(demand.clone())) {
            self.budgeting.last_sent = Some((demand, Instant::now()));
        }
    }

    /// Queue `msg` for the coordinator. A full queue means the connection cannot keep up:
    /// drop it, the link reconnects and everything unacknowledged is sent again.
    fn send(&mut self, msg: WorkerMsg) -> bool {
        let Some(conn) = &self.conn else { return false };
        match conn.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("the coordinator connection is not keeping up; reconnecting");
                self.lose_conn();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.lose_conn();
                false
            }
        }
    }

    /// The connection is gone (or given up on): nothing more is sent on it.
    fn lose_conn(&mut self) {
        self.conn = None;
        self.reports.disconnected();
    }

    /// Queue the records of every changed repo, then `extra`, as one journal batch.
    /// Returns its sequence number.
    fn commit(&mut self, extra: Vec<Record>) -> u64 {
        let mut records = Vec::with_capacity(self.dirty.len() + extra.len());
        let mut touched: Vec<String> = Vec::new();
        for id in std::mem::take(&mut self.dirty) {
            if let Some(repo) = self.state.repos.get(&id) {
                records.push(Record::Repo {
                    id: id.clone(),
                    repo: repo.clone(),
                });
                touched.push(id);
            }
        }
        for r in &extra {
            match r {
                Record::Outcome(o) => touched.push(o.repo.clone()),
                Record::Remove { id } => touched.push(id.clone()),
                _ => {}
            }
        }
        records.extend(extra);
        if records.is_empty() {
            return self.store.last_seq();
        }
        let seq = self.store.append(records);
        for id in touched {
            self.unwritten.insert(id.clone(), seq);
            self.unwritten_order.push_back((seq, id));
        }
        seq
    }

    /// Put an outcome in the outbox and the journal (with its repo's record and `before`,
    /// in one batch); it is sent once durable.
    fn queue_outcome(&mut self, outcome: Outcome, before: Option<Record>) -> Option<u64> {
        self.dirty.insert(outcome.repo.clone());
        let report_id = self.state.push_outcome(outcome);
        let o = self.state.outbox.get(&report_id).cloned()?;
        let mut records: Vec<Record> = before.into_iter().collect();
        records.push(Record::Outcome(o));
        let seq = self.commit(records);
        self.reports.queued(seq, report_id);
        Some(report_id)
    }

    /// More of the journal is durable: outcomes may go, assignments be acknowledged, and
    /// repos whose records are written may start again.
    fn on_durable(&mut self) {
        let durable = self.store.durable();
        for seq in self.reports.durable(durable) {
            self.send(WorkerMsg::AssignAck { seq });
        }
        while let Some((seq, _)) = self.unwritten_order.front() {
            if *seq > durable {
                break;
            }
            if let Some((seq, id)) = self.unwritten_order.pop_front()
                && self.unwritten.get(&id) == Some(&seq)
            {
                self.unwritten.remove(&id);
            }
        }
        if self.reports.send_now(Instant::now()) {
            self.send_outcomes();
        }
    }

    /// Persist what changed, then send the durable outcomes not yet sent.
    fn flush(&mut self) {
        if !self.dirty.is_empty() {
            self.commit(Vec::new());
        }
        self.send_outcomes();
    }

    /// Send outcomes that are durable and not yet sent on this connection (never one that
    /// is not durably in the outbox).
    fn send_outcomes(&mut self) {
        let Some(conn) = &self.conn else { return };
        let Some(range) = self.reports.unsent() else {
            return;
        };
        let unsent: Vec<Outcome> = self
            .state
            .outbox
            .range(range)
            .map(|(_, o)| o.clone())
            .collect();
        // Batches bounded by bytes, an outcome's changes ahead of it when they do not fit
        // one (protocol 3); what counts as sent moves only past outcomes whose batch was
        // queued.
        // Protocol 7: with the refs hash, the source and the bytes received of each.
        let frames = if conn.protocol >= 7 {
            gitmirror_wire::chunk::outcome7_frames(unsent.into_iter().map(|o| {
                gitmirror_wire::Outcome7 {
                    refs_sha256: self.report_sha.get(&o.report_id).copied(),
                    source: self
                        .report_source
                        .get(&o.report_id)
                        .copied()
                        .unwrap_or(gitmirror_wire::TransferSource::Upstream),
                    transfer_bytes: self.report_bytes.get(&o.report_id).copied().unwrap_or(0),
                    outcome: o,
                }
            }))
        } else {
            gitmirror_wire::outcome_frames(unsent)
        };
        for msg in frames {
            let upto = match &msg {
                WorkerMsg::Outcomes(b) => b.outcomes.last().map(|o| o.report_id),
                WorkerMsg::Outcomes7(b) => b.outcomes.last().map(|o| o.outcome.report_id),
                _ => None,
            };
            if !self.send(msg) {
                return;
            }
            if let Some(upto) = upto {
                self.reports.sent(upto, Instant::now());
            }
        }
    }

    // ---- disk and status ----

    /// Measure free space if due (or `force`); returns whether it is below `disk.min_free`.
    fn refresh_disk(&mut self, force: bool) -> bool {
        let fresh = self
            .disk
            .checked
            .is_some_and(|t| t.elapsed() < DISK_CHECK_EVERY);
        if fresh && !force {
            return self.disk.low;
        }
        self.disk.checked = Some(Instant::now());
        match disk::space(&self.cfg.mirror_dir) {
            Ok((free, total)) => {
                self.disk.free = free;
                self.disk.total = total;
                let low = self.cfg.disk.min_free.is_below(free, total);
                if low != self.disk.low {
                    self.disk.low = low;
                    if low {
                        self.free_trash();
                        tracing::warn!(
                            free_bytes = free,
                            total_bytes = total,
                            "free space on the mirror disk is below disk.min_free: no new clones start, fetches go on"
                        );
                    } else {
                        tracing::info!(
                            free_bytes = free,
                            "free space on the mirror disk is back above disk.min_free: cloning resumes"
                        );
                    }
                    self.send_status();
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.cfg.mirror_dir.display(), "cannot measure free space: {e}")
            }
        }
        self.disk.low
    }

    /// Free space fell below `disk.min_free`: the trash goes first, oldest first, before
    /// its 72 h, until there is enough again (the next disk check sees the result).
    fn free_trash(&self) {
        let (m, dir, min_free) = (
            self.mirrors.clone(),
            self.cfg.mirror_dir.clone(),
            self.cfg.disk.min_free,
        );
        tokio::task::spawn_blocking(move || {
            let enough =
                || disk::space(&dir).is_ok_and(|(free, total)| !min_free.is_below(free, total));
            let n = m.purge_trash_until(enough);
            if n > 0 {
                tracing::warn!(
                    count = n,
                    "free space below disk.min_free: deleted trashed mirrors before their 72 h, oldest first"
                );
            }
        });
    }

    fn send_status(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let status = WorkerStatus {
            disk_free_bytes: self.disk.free,
            disk_total_bytes: self.disk.total,
            disk_low: self.disk.low,
            active_fetches: u32::try_from(self.active_fetches()).unwrap_or(u32::MAX),
            summary: self.summary(),
        };
        if !self.send(WorkerMsg::Status(status)) {
            return;
        }
        // Protocol 5 (issue 16): the load the coordinator's per-worker series show.
        if self.conn.as_ref().is_some_and(|c| c.protocol >= 5) {
            let load = gitmirror_wire::WorkerLoad {
                queued_fetches: u32::try_from(self.schedule.waiting(now_ms())).unwrap_or(u32::MAX),
                fetch_concurrency: u32::try_from(self.cfg.fetch.concurrency).unwrap_or(u32::MAX),
                disk_min_free_bytes: self.cfg.disk.min_free.bytes_of(self.disk.total),
            };
            self.send(WorkerMsg::Load(load));
        }
        // Protocol 8 (SPEC §14): pool totals, once the first survey is in.
        if self.conn.as_ref().is_some_and(|c| c.protocol >= 8) && !self.pool_report.full {
            let f = &self.pool_report.figures;
            let totals = gitmirror_wire::PoolTotals {
                pools: u32::try_from(f.len()).unwrap_or(u32::MAX),
                pool_bytes: f.values().map(|v| v.0).sum(),
                member_bytes: f.values().map(|v| v.1).sum(),
                members: f.values().map(|v| v.2).sum(),
            };
            self.send(WorkerMsg::PoolTotals(totals));
        }
    }

    fn active_fetches(&self) -> usize {
        self.running
            .values()
            .filter(|r| matches!(r.kind, OpKind::Clone | OpKind::Fetch))
            .count()
    }

    /// One line: repos held, mirrored, fetching, failing, disk.
    fn summary(&self) -> String {
        let held = self.state.repos.len();
        let mirrored = self.state.repos.values().filter(|r| r.mirrored).count();
        let failing = self
            .state
            .repos
            .values()
            .filter(|r| r.failing.is_some())
            .count();
        let mut s = format!(
            "{held} repos, {mirrored} mirrored, {} fetching, {failing} failing",
            self.active_fetches()
        );
        if self.disk.low {
            s.push_str(", disk low: clones paused");
        }
        s
    }

    fn update_status_line(&mut self) {
        let link = match &self.conn {
            Some(c) => format!("connected as worker {}", c.worker_id),
            None => "coordinator unreachable".to_owned(),
        };
        let line = format!("{link}; {}", self.summary());
        if line != self.last_status_line {
            notify::status(&line);
            self.last_status_line = line;
        }
    }
}

/// Seed first (SPEC §14, plan C12): with `fetch.pools`, while one clone of a project
/// none of whose repos is mirrored yet runs, the project's other clones wait queued, so
/// the first becomes the seed of the pool and the others receive only what it lacks
/// (instead of all cloning in full at once when a project arrives). Once a member is
/// mirrored nothing waits: the next clone creates the pool from it, or clones plain when
/// it cannot seed one (detached, too many refs), and clones after it borrow or go plain
/// alike. Repos with credentials are never pooled and neither wait nor hold others back.
/// Costs one look at the project's entries in the state per project and pass.
struct PoolSeeds<'a> {
    pools: bool,
    mirrors: &'a Mirrors,
    repos: &'a std::collections::BTreeMap<String, Repo>,
    /// Project folders with a pooling clone running or admitted in this pass.
    cloning: HashSet<String>,
    /// Project folders with a mirrored repo, as found in this pass.
    seeded: HashMap<String, bool>,
}

impl<'a> PoolSeeds<'a> {
    fn new<'i>(
        mirrors: &'a Mirrors,
        repos: &'a std::collections::BTreeMap<String, Repo>,
        running: impl Iterator<Item = &'i String>,
    ) -> Self {
        let mut seeds = Self {
            pools: mirrors.pools(),
            mirrors,
            repos,
            cloning: HashSet::new(),
            seeded: HashMap::new(),
        };
        if seeds.pools {
            for id in running {
                if let Some(r) = repos.get(id)
                    && !r.mirrored
                    && let Some(folder) = seeds.poolable_folder(id, &r.url)
                {
                    seeds.cloning.insert(folder.to_owned());
                }
            }
        }
        seeds
    }

    fn poolable_folder<'i>(&self, id: &'i str, url: &str) -> Option<&'i str> {
        let (folder, _) = id.rsplit_once('/')?;
        (self.pools && self.mirrors.credentials().find(url).is_none()).then_some(folder)
    }

    /// Whether the clone of `id` may start now.
    fn admit_clone(&mut self, id: &str, url: &str) -> bool {
        let Some(folder) = self.poolable_folder(id, url) else {
            return true;
        };
        if self.cloning.contains(folder) && !self.seeded(folder) {
            return false;
        }
        self.cloning.insert(folder.to_owned());
        true
    }

    /// Whether a repo directly in `folder` is mirrored (a seed exists or is being made a
    /// pool). The state's map is ordered, so the folder's entries are one range.
    fn seeded(&mut self, folder: &str) -> bool {
        if let Some(&seeded) = self.seeded.get(folder) {
            return seeded;
        }
        let prefix = format!("{folder}/");
        let seeded = self
            .repos
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(id, _)| id.starts_with(&prefix))
            .any(|(id, r)| r.mirrored && !id[prefix.len()..].contains('/'));
        self.seeded.insert(folder.to_owned(), seeded);
        seeded
    }
}

/// Projects queued for migration at most (each entry is a folder name; a fetch of a
/// member queues its project again when it did not fit).
const MAX_MIGRATIONS_QUEUED: usize = 4096;

/// Whether `op` may start on `id` under its project's lock (always for ids without a
/// project folder).
fn may_start(locks: &pool::ProjectLocks, id: &str, op: pool::ProjectOp) -> bool {
    pool::project_of(id).is_none_or(|p| locks.may_start(p, op))
}

/// A new mirror of `id` copied from the first of `holders` that serves one whose refs hash
/// to `expect` (SPEC §13): its worker id and the result; `None` when none did (each
/// failure logged; the caller clones from the upstream).
async fn copy_from_peers(
    client: &crate::peer::PeerClient,
    mirrors: &Mirrors,
    id: &str,
    url: &str,
    holders: &[gitmirror_wire::PeerEntry],
    expect: [u8; 32],
) -> Option<(u32, mirror::Fetched)> {
    for h in holders {
        let addr = match tokio::net::lookup_host(h.addr.as_str()).await {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                tracing::info!(repo = %id, peer = h.worker_id, addr = %h.addr, "cannot resolve the holder's address: {e}; next holder or the upstream");
                continue;
            }
        };
        let Some(addr) = addr else { continue };
        let holder = crate::peer::Holder {
            addr,
            fingerprint: h.fingerprint.clone(),
        };
        match client.fetch(mirrors, id, url, &holder, expect).await {
            Ok(fetched) => {
                tracing::info!(repo = %id, peer = h.worker_id, %addr, "copied from a peer");
                return Some((h.worker_id, fetched));
            }
            Err(f) => {
                tracing::info!(repo = %id, peer = h.worker_id, %addr, "copy from a peer failed: {}; next holder or the upstream", f.message);
            }
        }
    }
    None
}
