//! The coordinator's main loop (STYLE habit 2: `run(config, sockets, shutdown)`).
//!
//! `run` loads the state, starts the QUIC server, the HTTP API, the index poller and the
//! webhook deliverers, and then owns the [`Fleet`] in one loop that handles, in order:
//! stop and reload requests, connection events, HTTP questions, index deltas and a
//! once-a-second tick (liveness, debounced saving, the systemd status line and the
//! watchdog, which is fed only from here). After each durable append it publishes the
//! newest event number on a `watch`, which long-polls and webhooks wait on.

use crate::api::{Answer, Query, Reply, View};
use crate::config::Config;
use crate::enrollment::{self, Decision, Pending, Speaker};
use crate::events::appender::{Appender, Done};
use crate::events::{Event, EventKind, EventLog};
use crate::fleet::Fleet;
use crate::http::{self, HttpCall, HttpCtx};
use crate::index::{Delta, IndexSettings, Indexes};
use crate::poller::{self, IndexHandle};
use crate::refs_query::{RefsQueries, RefsRequest};
use crate::registry::{Introduction, Registry};
use crate::repo_store::{self, RepoStore};
use crate::server::{self, Admission, ConnEvent, OUTBOUND_QUEUE};
use crate::state;
use crate::webhook::{self, Webhooks};
use anyhow::Context;
use gitmirror_common::statefile::StateError;
use gitmirror_common::trust::WorkerCert;
use gitmirror_common::{notify, now_ms};
use gitmirror_wire::Acks;
use gitmirror_wire::{CoordMsg, OutcomeBatch, Refusal, RefuseCode, WorkerMsg, close_code};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

const TICK: Duration = Duration::from_secs(1);
/// How often host budgets are rebalanced when something changed (SPEC §18: unused share
/// flows back within seconds). O(workers × limited hosts) a turn, and only when dirty.
const BUDGET_TICK: Duration = Duration::from_millis(200);
/// How often the registry is rewritten and repo status changes are journaled.
const SAVE_REGISTRY_EVERY: Duration = Duration::from_secs(1);
const SAVE_REPOS_EVERY: Duration = Duration::from_secs(2);
/// API requests answered in a row, ahead of the other work waiting, before the loop
/// takes the next of that.
const HTTP_FIRST: usize = 4;
/// A turn of the main loop this long is logged at debug (target `gitmirrord::turns`).
const SLOW_TURN: Duration = Duration::from_millis(10);

/// Most repo records copied for the repo store in one turn of the main loop (~1–4 µs each:
/// about a millisecond a turn; 4,096 made turns of 50 ms and more at 1M repos under load,
/// which every API request then waited behind, and 1,024 still 10–25 ms when the CPU was
/// short: a longer turn is more often preempted).
const SAVE_CHUNK: usize = 512;
/// Chunks of repo status queued for the store's writer at most (it writes all it finds
/// queued with one fsync): 8 × 512 records, whatever the disk's pace.
const MAX_QUEUED_SAVES: usize = 8;
/// How often the main loop looks whether repo status is due to be saved (a chunk per look:
/// up to ~50,000 repos a second).
const SAVE_TICK: Duration = Duration::from_millis(10);
/// An index change this big is followed by handing the freed heap back (crate::heap).
const LARGE_DELTA: usize = 10_000;

/// CPU time of the calling thread so far (zero where the clock is not available).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The sockets `run` serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// QUIC (UDP) for workers: `listen`.
    pub quic: UdpSocket,
    /// The HTTP API: `http_listen`.
    pub http: TcpListener,
    /// Push hooks only: `hooks_listen` (SPEC §15).
    pub hooks: Option<TcpListener>,
}

impl Listeners {
    pub fn bind(cfg: &Config) -> anyhow::Result<Self> {
        let quic = UdpSocket::bind(cfg.listen)
            .with_context(|| format!("cannot bind UDP {} for workers (listen)", cfg.listen))?;
        let http = TcpListener::bind(cfg.http_listen).with_context(|| {
            format!(
                "cannot bind TCP {} for the API (http_listen)",
                cfg.http_listen
            )
        })?;
        let hooks = match cfg.hooks_listen {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).with_context(|| {
                format!("cannot bind TCP {addr} for push hooks (hooks_listen)")
            })?),
        };
        Ok(Self { quic, http, hooks })
    }
}

/// What `run` listens to besides its sockets: stop, poll the indexes now, and reload the
/// configuration file (SIGHUP).
pub struct Control {
    shutdown: watch::Receiver<bool>,
    poll_now: mpsc::Receiver<()>,
    reload: mpsc::Receiver<()>,
}

/// The other end of [`Control`].
#[derive(Clone)]
pub struct ControlHandle {
    shutdown: Arc<watch::Sender<bool>>,
    poll_now: mpsc::Sender<()>,
    reload: mpsc::Sender<()>,
}

pub fn control() -> (ControlHandle, Control) {
    let (stx, srx) = watch::channel(false);
    let (ptx, prx) = mpsc::channel(4);
    let (rtx, rrx) = mpsc::channel(1);
    (
        ControlHandle {
            shutdown: Arc::new(stx),
            poll_now: ptx,
            reload: rtx,
        },
        Control {
            shutdown: srx,
            poll_now: prx,
            reload: rrx,
        },
    )
}

impl ControlHandle {
    /// Ask `run` to stop gracefully.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Ask `run` to poll every index now.
    pub fn poll_now(&self) {
        let _ = self.poll_now.try_send(());
    }

    /// Ask `run` to reload its configuration file and poll every index (SIGHUP). Reloads
    /// asked for while one is pending are merged into it.
    pub fn reload(&self) {
        let _ = self.reload.try_send(());
    }

    /// Resolves once a stop was asked for.
    pub fn stop_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Run the coordinator until `ctl` says stop; state is saved on the way out.
pub async fn run(cfg: Config, listeners: Listeners, ctl: Control) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = cfg.state_dir.clone();
    // The QUIC endpoint first (accepting once the state is loaded): workers of the
    // previous process get their stateless resets while the rest loads.
    let (identity, ca, endpoint) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            gitmirror_common::statefile::ensure_dir(&dir)?;
            let identity = gitmirror_common::trust::Identity::load_or_create(&dir)?;
            let ca = gitmirror_common::ca::Ca::load_or_create(&dir)?;
            let endpoint = gitmirror_common::trust::endpoint_config(&dir)?;
            Ok((identity, ca, endpoint))
        })
        .await
        .context("loading the coordinator's identity")??
    };
    let (conn_tx, conn_rx) = mpsc::channel::<ConnEvent>(1024);
    let quic_addr = listeners.quic.local_addr().ok();
    let secret_file = Arc::new(gitmirror_common::trust::SecretFile::new(
        cfg.state_dir.join(gitmirror_common::trust::SECRET_FILE),
    ));
    let (open_quic, quic_opened) = tokio::sync::watch::channel(false);
    let server = server::start(
        listeners.quic,
        &identity,
        ca.client_verifier()?,
        endpoint,
        secret_file,
        &cfg.liveness,
        conn_tx,
        quic_opened,
    )?;
    // SPEC §16: the index poller re-reads them when a file changes; SIGHUP replaces them.
    let index_credentials =
        gitmirror_common::credentials::SharedCredentials::new(cfg.credentials.clone());
    let loaded = {
        let cfg = cfg.clone();
        let index_credentials = index_credentials.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let file = state::load_registry(&cfg.state_dir)?;
            // SPEC §14: the placement in force; a switch is saved at once, and the owners'
            // fingerprint (`ring::owners_fingerprint`) makes the fleet rescore every repo.
            let (placement, switched) = state::resolve_placement(file.placement, cfg.placement);
            let persisted = file.placement;
            // The owner function likewise (design.md "Owner function: points on a circle").
            let (hashing, hashing_switched) =
                state::resolve_hashing(file.hashing, file.placement.is_some(), cfg.hashing);
            let persisted_hashing = file.hashing;
            let registry = Registry::restore(cfg.max_workers, file, now_ms())
                .with_max_weight(cfg.max_worker_weight)
                .with_placement(placement)
                .with_hashing(hashing);
            if let Some(from) = hashing_switched {
                tracing::warn!(
                    "hashing switches from {} to {}: every repo is placed again; repos that move do so make before break",
                    from.as_str(),
                    hashing.as_str()
                );
            }
            if let Some(from) = switched {
                tracing::warn!(
                    "placement switches from {} to {} (SPEC §14): every repo is placed again; repos that move do so make before break",
                    from.as_str(),
                    placement.as_str()
                );
            }
            if persisted != Some(placement) || persisted_hashing != Some(hashing) {
                state::save_registry(&cfg.state_dir, &registry.to_file())?;
            }
            tracing::info!(
                placement = placement.as_str(),
                hashing = hashing.as_str(),
                "placement in force"
            );
            // The event log reads beside the index and repo status (a third of a 1M start).
            let events = {
                let (dir, options) = (cfg.state_dir.clone(), cfg.events);
                std::thread::Builder::new()
                    .name("event-log-open".into())
                    .spawn(move || {
                        let t = Instant::now();
                        (
                            EventLog::open_with(&dir, options),
                            t.elapsed().as_secs_f32(),
                        )
                    })
                    .context("starting a thread to read the event log")?
            };
            let t = Instant::now();
            let indexes = Indexes::open(
                cfg.indexes.clone(),
                IndexSettings {
                    dir: cfg.state_dir.join("index"),
                    allow_file_urls: cfg.allow_file_urls,
                    purge_protect_percent: cfg.purge_protect_percent,
                    credentials: index_credentials.clone(),
                },
            )?;
            let mut fleet =
                Fleet::from_entries(cfg.liveness.dead_after, registry, indexes.entries());
            let index_s = t.elapsed().as_secs_f32();
            let t = Instant::now();
            let mut records = 0usize;
            let mut restorer = fleet.restorer();
            let opened = repo_store::open(&cfg.state_dir, &mut |id, saved| {
                records += 1;
                restorer.restore(id, saved);
            })?;
            drop(restorer);
            let repos_s = t.elapsed().as_secs_f32();
            let (log, events_s) = events.join().map_err(|_| {
                anyhow::anyhow!("reading the event log failed (the thread panicked)")
            })?;
            let mut log = log?;
            let t = Instant::now();
            fleet.restore_published(&log.take_published());
            fleet.merge_report_ids(log.report_ids());
            let events_s = events_s + t.elapsed().as_secs_f32();
            let cursors = webhook::load(&cfg.state_dir)?;
            let t = Instant::now();
            if cfg.replicas.any_replicated() {
                tracing::info!(replicas = %cfg.replicas.describe(), "replicas (SPEC §13)");
            }
            fleet.set_replicas(cfg.replicas.clone());
            let kept = fleet.finish_start(opened.owners);
            // Start-up time grows with the fleet: these lines say where it went.
            tracing::info!(records, repos_s, index_s, events_s, "state read");
            tracing::info!(
                secs = t.elapsed().as_secs_f32(),
                owners = if kept {
                    "kept (same members as saved)"
                } else {
                    "recomputed"
                },
                "fleet built"
            );
            // What reading the repo status, the index and the event log freed.
            gitmirror_common::heap::release_free();
            Ok((fleet, opened.store, indexes, log, cursors))
        })
        .await
        .context("loading the coordinator's state")?
    };
    let (fleet, repo_store, indexes, log, cursors) = loaded?;
    let last_seq = log.last_seq();
    let recent: VecDeque<Event> = log
        .recent(crate::page::RECENT_EVENTS)
        .unwrap_or_default()
        .into();
    let (seq_tx, seq_rx) = watch::channel(last_seq);
    let log = Arc::new(Mutex::new(log));
    let (appender, appended) =
        Appender::start(log.clone()).context("starting the event log's writer")?;
    let webhooks = Webhooks::start(
        &cfg.state_dir,
        cursors,
        &cfg.webhooks,
        log.clone(),
        seq_rx.clone(),
    )
    .await;
    let http_auth = Arc::new(RwLock::new(crate::http_auth::HttpAuth::from_config(&cfg)));

    // Poller → scorer → main loop: the scorer scores a part while the loop applies the one
    // before (crate::scorer).
    let (delta_tx, scorer_rx) = mpsc::channel::<poller::DeltaPart>(1);
    let (scored_tx, delta_rx) = mpsc::channel::<poller::DeltaPart>(16);
    let scoring = crate::scorer::Members::default();
    crate::scorer::start(scorer_rx, scored_tx, scoring.clone())
        .context("starting the index scorer")?;
    let index = poller::start(indexes, delta_tx).context("starting the index poller")?;
    let (call_tx, call_rx) = mpsc::channel::<HttpCall>(64);
    let http_addr = listeners.http.local_addr().ok();
    let hook_gate = Arc::new(crate::hooks::HookGate::new(
        crate::hooks::HookSettings::from_config(&cfg),
    ));
    let http_ctx = HttpCtx {
        calls: call_tx,
        events: log.clone(),
        last_seq: seq_rx,
        index: index.clone(),
        auth: http_auth.clone(),
        hooks: hook_gate.clone(),
        hooks_only: false,
    };
    let hooks_http = match listeners.hooks {
        None => None,
        Some(l) => {
            let addr = l.local_addr().ok();
            let server = http::start(
                l,
                HttpCtx {
                    hooks_only: true,
                    ..http_ctx.clone()
                },
            )
            .context("starting the push-hook listener")?;
            tracing::info!(
                "push hooks (and nothing else) on http://{}",
                addr.map_or("?".into(), |a| a.to_string())
            );
            Some(server)
        }
    };
    let http = http::start(listeners.http, http_ctx).context("starting the HTTP API")?;

    let (local_worker, local) = match (&cfg.local_worker, quic_addr) {
        (Some(lw), Some(addr)) => {
            let (task, local) = start_local_worker(&cfg, lw, addr, &identity, &ctl)?;
            (Some(task), Some(local))
        }
        _ => (None, None),
    };

    // SPEC §18: a coordinator that ran before may have given shares that workers not yet
    // back still use; see design.md "Fleet-wide upstream budgets".
    let restarted = fleet.registry().iter().next().is_some();
    let budgets = crate::host_budget::Budgets::new(
        cfg.host_limits.clone(),
        u64::try_from(cfg.liveness.dead_after.as_millis()).unwrap_or(u64::MAX),
        now_ms(),
        restarted,
    );
    let mut main = MainLoop {
        budgets,
        cfg,
        local,
        seq: seq_tx,
        recent,
        events_by_kind: BTreeMap::new(),
        webhooks: Some(webhooks),
        http_auth,
        dir,
        fleet,
        conns: HashMap::new(),
        appender,
        acks: Acks::default(),
        appending: HashMap::new(),
        index,
        index_credentials,
        started,
        saving: None,
        registry_dirty: false,
        repo_store: Arc::new(repo_store),
        last_registry_save: Instant::now(),
        last_repos_save: Instant::now(),
        last_status: String::new(),
        refs: RefsQueries::default(),
        handover: crate::handover::Handover::default(),
        peers_listening: false,
        transfer_bytes: crate::metrics::TransferBytes::default(),
        follows: HashMap::new(),
        warned_no_peer: HashSet::new(),
        no_peer_seen: HashSet::new(),
        status_urls: None,
        pools: crate::pools::Pools::default(),
        ca,
        pending: Pending::default(),
        hook_gate,
        hook_urls: None,
        coalescer: crate::hooks::coalesce::Coalescer::new(Duration::ZERO),
        hook_fetches: 0,
        delta_entries: 0,
        scoring,
        scoring_gen: None,
    };
    main.hooks_configured();
    let summary = main.fleet.summary();
    tracing::info!(
        "gitmirrord {} ready: workers connect to {} (QUIC), API on http://{}; {summary}",
        env!("CARGO_PKG_VERSION"),
        quic_addr.map_or("?".into(), |a| a.to_string()),
        http_addr.map_or("?".into(), |a| a.to_string()),
    );
    notify::ready(&summary);
    main.last_status = summary;
    // Loading a big state can outlast `dead_after`: restored workers get it from now.
    main.fleet.serving_from(now_ms());
    let _ = open_quic.send(true);

    main.serve(conn_rx, call_rx, delta_rx, appended, ctl).await;

    tracing::info!("stopping");
    notify::stopping();
    if let Some(worker) = local_worker {
        // `ctl` said stop, so the embedded worker is stopping too: let it save its state.
        // Its own error was logged when it happened.
        if let Err(e) = worker.await {
            tracing::error!("local worker task: {e}");
        }
    }
    http.stop();
    if let Some(h) = &hooks_http {
        h.stop();
    }
    server.shutdown().await;
    main.webhooks_shutdown().await;
    main.save_all()
        .await
        .context("saving state on the way out")?;
    tracing::info!("stopped; state saved");
    Ok(())
}

/// The embedded worker's configuration in force, and where reloaded ones go.
struct LocalWorker {
    cfg: gitmirror_worker::WorkerConfig,
    reload: mpsc::Sender<gitmirror_worker::WorkerConfig>,
}

/// Start the embedded worker (SPEC §2.1 `local_worker`): an ordinary worker in this
/// process that connects to this coordinator over loopback with its join token.
fn start_local_worker(
    cfg: &Config,
    lw: &crate::config::LocalWorker,
    quic_addr: std::net::SocketAddr,
    identity: &gitmirror_common::trust::Identity,
    ctl: &Control,
) -> anyhow::Result<(tokio::task::JoinHandle<anyhow::Result<()>>, LocalWorker)> {
    let mut coordinator = quic_addr;
    if coordinator.ip().is_unspecified() {
        coordinator.set_ip(match coordinator {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let wcfg = gitmirror_worker::WorkerConfig::embedded(
        coordinator,
        identity.join_token(),
        lw.mirror_dir.clone(),
        lw.state_dir
            .clone()
            .unwrap_or_else(|| cfg.state_dir.join("local-worker")),
        lw.name.clone().unwrap_or_else(host_name),
        lw.weight.unwrap_or(1.0),
        lw.fetch.clone(),
        lw.disk.clone(),
        lw.serve_url_base.clone(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{}: local_worker.{}: {}",
            cfg.path.display(),
            e.key,
            e.detail
        )
    })?;
    let deny = lw
        .upstream_deny()
        .map_err(|d| anyhow::anyhow!("{}: local_worker.upstream_deny: {d}", cfg.path.display()))?;
    // The coordinator's `credentials` serve its embedded worker's upstreams too (SPEC §16).
    let wcfg = wcfg
        .with_upstream_deny(deny)
        .with_credentials(cfg.credentials.clone());
    // It follows the coordinator's secret file, so a rotation does not lock it out.
    let wcfg = wcfg.with_token_source(gitmirror_worker::config::TokenSource::CoordinatorSecret(
        cfg.state_dir.join(gitmirror_common::trust::SECRET_FILE),
    ));
    tracing::info!(
        "starting the local worker {:?}: mirrors in {}",
        wcfg.name,
        wcfg.mirror_dir.display()
    );
    let span = tracing::info_span!("local_worker");
    let (reload, reloads) = mpsc::channel(1);
    let local = LocalWorker {
        cfg: wcfg.clone(),
        reload,
    };
    let run = gitmirror_worker::run_reloadable(wcfg, ctl.shutdown.clone(), reloads);
    // Said when it happens: a worker that cannot start (unreadable state, unusable
    // mirror_dir) leaves the coordinator serving without it.
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let result = run.await;
            if let Err(e) = &result {
                tracing::error!("the local worker stopped: {e:#}");
            }
            result
        },
        span,
    ));
    Ok((task, local))
}

/// The machine's host name, the default name of the local worker.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// How long a worker's peer grants outlive its connection to this coordinator (C4).
const PEER_GRANT_LEASE_MS: u64 = 60_000;

struct Conn {
    id: u64,
    /// The worker's protocol (its `Hello`): budgets only from 6 on (SPEC §18), the peer
    /// plane from 7 (SPEC §13).
    protocol: u32,
    /// Its `PeerInfo` (protocol 7), sent again on every connection, so kept with the
    /// connection and not in the registry (design.md "Peer plane": S2).
    peer: Option<gitmirror_wire::PeerInfo>,
    outbox: mpsc::Sender<CoordMsg>,
    handle: quinn::Connection,
}

struct MainLoop {
    /// Fleet-wide upstream budgets and paused hosts (SPEC §18).
    budgets: crate::host_budget::Budgets,
    /// The configuration in force (reloaded on SIGHUP).
    cfg: Config,
    /// The embedded worker, when `local_worker` is set.
    local: Option<LocalWorker>,
    /// The newest durable event's seq, for long-polls and webhooks.
    seq: watch::Sender<u64>,
    /// The last events, newest last, for the status page.
    recent: VecDeque<Event>,
    /// Events appended since start, by kind (`gitmirror_events_total`).
    events_by_kind: BTreeMap<&'static str, u64>,
    webhooks: Option<Webhooks>,
    http_auth: Arc<RwLock<crate::http_auth::HttpAuth>>,
    dir: PathBuf,
    fleet: Fleet,
    conns: HashMap<Uuid, Conn>,
    /// Event appends and the reads that must follow them, off this loop.
    appender: Appender,
    /// Which outcome batches may be acknowledged, as their events become durable.
    acks: Acks,
    /// Per append job, the fleet's outcome batch whose events it holds
    /// ([`Fleet::durable`]).
    appending: HashMap<u64, u64>,
    index: IndexHandle,
    /// `credentials` as the index poller uses them (SPEC §16).
    index_credentials: gitmirror_common::credentials::SharedCredentials,
    started: Instant,
    /// The registry save in flight.
    saving: Option<tokio::task::JoinHandle<Result<(), StateError>>>,
    /// The registry changed and was not yet handed to a save.
    registry_dirty: bool,
    /// Repo status changes go here every [`SAVE_REPOS_EVERY`] (journaled by its thread).
    repo_store: Arc<RepoStore>,
    last_registry_save: Instant,
    last_repos_save: Instant,
    last_status: String,
    /// `GET /api/repos/{id}/refs` queries waiting for a worker's page.
    refs: RefsQueries,
    /// Hand-over from peers (SPEC §13): refs hashes and holders named in assignments.
    handover: crate::handover::Handover,
    /// Some connected worker's peer plane listens: only then are refs hashes kept.
    peers_listening: bool,
    /// `gitmirror_transfer_bytes_total{source}` (SPEC §13).
    transfer_bytes: crate::metrics::TransferBytes,
    /// Follow orders waiting for the primary's outcomes to be acknowledged (SPEC §13):
    /// per primary, (report id, repo) of its changes of replicated repos.
    follows: HashMap<Uuid, Vec<(u64, String)>>,
    /// Workers already warned about as followers without a peer plane (SPEC §13), and
    /// those seen without one at the last tick (a new worker's plane starts a moment
    /// after its holdings: two ticks in a row before the warning).
    warned_no_peer: HashSet<Uuid>,
    no_peer_seen: HashSet<Uuid>,
    /// `/api/status`'s `worker:url`, kept while it does not change.
    status_urls: Option<crate::api::WorkerUrls>,
    /// Fork-pool states and totals the workers report (SPEC §14; not persisted).
    pools: crate::pools::Pools,
    /// The fleet's CA: issues each enrolling worker its certificate (SPEC §17).
    ca: gitmirror_common::ca::Ca,
    /// Workers waiting for `workers approve` (`enroll: manual`).
    pending: Pending,
    /// Push hooks (SPEC §15): what the HTTP tasks check, counted.
    hook_gate: Arc<crate::hooks::HookGate>,
    /// Normalised URL → repos, kept while `push_hooks` is set.
    hook_urls: Option<crate::hooks::urls::UrlIndex>,
    coalescer: crate::hooks::coalesce::Coalescer,
    /// Push-triggered fetches sent (`gitmirror_hook_fetches_total`).
    hook_fetches: u64,
    /// Entries of the index change whose parts are being applied.
    delta_entries: usize,
    /// The member set published to the index scorer, and the generation it is of.
    scoring: crate::scorer::Members,
    scoring_gen: Option<u64>,
}

impl MainLoop {
    async fn serve(
        &mut self,
        mut conns: mpsc::Receiver<ConnEvent>,
        mut calls: mpsc::Receiver<HttpCall>,
        mut deltas: mpsc::Receiver<poller::DeltaPart>,
        mut appended: mpsc::UnboundedReceiver<Done>,
        mut ctl: Control,
    ) {
        let watchdog = notify::watchdog_period();
        let mut tick = tokio::time::interval(watchdog.map_or(TICK, |p| p.min(TICK)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save_tick = tokio::time::interval(SAVE_TICK);
        save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget_tick = tokio::time::interval(BUDGET_TICK);
        budget_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if *ctl.shutdown.borrow() {
            return;
        }
        let mut http_streak = 0;
        loop {
            // Set as an arm begins its work: the wait for it is not the turn.
            let started: Instant;
            // A system call: only when long turns are logged.
            let cpu_started = tracing::enabled!(target: "gitmirrord::turns", tracing::Level::DEBUG)
                .then(thread_cpu);
            // API requests first, a few in a row at most: each waits for the turn in
            // progress only, not for every worker batch and save ready beside it (the
            // select below picks among ready arms at random), and the other arms (the
            // watchdog's tick among them) still come round after [`HTTP_FIRST`] requests.
            let waiting_call = if http_streak < HTTP_FIRST {
                calls.try_recv().ok()
            } else {
                None
            };
            let arm = if let Some(call) = waiting_call {
                started = Instant::now();
                http_streak += 1;
                let kind = call.query.kind();
                self.on_http(call).await;
                kind
            } else {
                http_streak = 0;
                tokio::select! {
                    changed = ctl.shutdown.changed() => {
                        started = Instant::now();
                        if changed.is_err() || *ctl.shutdown.borrow() {
                            return;
                        }
                        "shutdown"
                    }
                    Some(()) = ctl.poll_now.recv() => {
                        started = Instant::now();
                        self.index.poll_now();
                        "poll"
                    }
                    Some(()) = ctl.reload.recv() => {
                        started = Instant::now();
                        self.reload().await;
                        "reload"
                    }
                    Some(ev) = conns.recv() => {
                        started = Instant::now();
                        self.on_conn(ev).await;
                        "worker"
                    }
                    Some(call) = calls.recv() => {
                        started = Instant::now();
                        let kind = call.query.kind();
                        self.on_http(call).await;
                        kind
                    }
                    Some(done) = appended.recv() => {
                        started = Instant::now();
                        self.on_appended(done);
                        "appended"
                    }
                    Some(part) = deltas.recv() => {
                        started = Instant::now();
                        let poller::DeltaPart { delta, last, scored } = part;
                        self.hook_urls_forget(&delta);
                        let sends = self.fleet.apply_index_part_scored(&delta, last, scored.as_ref());
                        self.hook_urls_learn(&delta);
                        self.delta_entries += delta.len();
                        // A whole index is ~200 bytes an entry: gone before the deltas queue.
                        drop(delta);
                        self.dispatch(sends);
                        if last && std::mem::take(&mut self.delta_entries) >= LARGE_DELTA {
                            // The read's and the delta's freed heap, kept by glibc otherwise.
                            tokio::task::spawn_blocking(gitmirror_common::heap::release_free);
                        }
                        "index"
                    }
                    // Only while repos wait to be saved: an idle loop is not woken 100
                    // times a second (the owners' fingerprint alone is saved on the tick).
                    _ = save_tick.tick(), if self.fleet.unsaved_len() > 0 => {
                        started = Instant::now();
                        self.save_repos_if_due();
                        "save"
                    }
                    _ = budget_tick.tick() => {
                        started = Instant::now();
                        let sends = self.budgets.tick(now_ms());
                        self.send_budgets(sends);
                        "budgets"
                    }
                    _ = tick.tick() => {
                        started = Instant::now();
                        let sends = self.fleet.tick(now_ms());
                        self.dispatch(sends);
                        self.warn_no_peer_plane();
                        for repo in self.coalescer.due(now_ms()) {
                            self.push_fetch(&repo);
                        }
                        self.save_if_due().await;
                        self.save_repos_if_due();
                        let status = self.fleet.summary();
                        if status != self.last_status {
                            notify::status(&status);
                            self.last_status = status;
                        }
                        // The progress point: this loop just did a full round.
                        if watchdog.is_some() {
                            notify::watchdog();
                        }
                        "tick"
                    }
                }
            };
            let members_gen = self.fleet.members_generation();
            if self.scoring_gen != Some(members_gen) {
                self.scoring_gen = Some(members_gen);
                self.scoring.publish(self.fleet.scoring_snapshot());
            }
            // Every request and worker waits behind the turn in progress: long ones are
            // what to look at when the API is slow (`RUST_LOG=gitmirrord::turns=debug`).
            let took = started.elapsed();
            if took >= SLOW_TURN {
                // `cpu_ms` far below `ms`: the thread waited for a core, not for its work.
                let cpu_ms = cpu_started.map(|c| thread_cpu().saturating_sub(c).as_millis() as u64);
                tracing::debug!(target: "gitmirrord::turns", arm, ms = took.as_millis() as u64, cpu_ms, "a long turn of the main loop");
            }
        }
    }

    /// The directory entry of `uuid`'s peer plane, when it is connected and listens: the
    /// address it advertises, else the one its connection comes from with its port.
    fn peer_entry(&self, uuid: &Uuid) -> Option<gitmirror_wire::PeerEntry> {
        let c = self.conns.get(uuid)?;
        let info = c.peer.as_ref()?;
        let port = info.port?;
        let w = self.fleet.worker(uuid)?;
        let addr = match &info.advertise {
            Some(a) => a.clone(),
            None => std::net::SocketAddr::new(c.handle.remote_address().ip(), port).to_string(),
        };
        Some(gitmirror_wire::PeerEntry {
            worker_id: w.id,
            uuid: *uuid,
            fingerprint: w.cert.clone()?,
            addr,
            zone: info.zone.clone(),
        })
    }

    /// Whether some connected worker's peer plane listens, after a change of one; with
    /// none, the refs hashes are dropped (a fleet without peers keeps none).
    fn peers_changed(&mut self) {
        self.peers_listening = self
            .conns
            .values()
            .any(|c| c.peer.as_ref().is_some_and(|p| p.port.is_some()));
        if !self.peers_listening && !self.handover.is_empty() {
            self.handover = crate::handover::Handover::default();
        }
    }

    /// Each outcome's provenance (a copy from a peer; its refs hash against the one held),
    /// then the refs hash of each upstream success `uuid` reports for a repo it is the
    /// primary of (SPEC §13, C5, C6). A changed hash of a repo with replicas waits in
    /// `follows` for the outcome's acknowledgement, when its followers are told to copy.
    fn provenance(
        &mut self,
        uuid: Uuid,
        outcomes: &[gitmirror_wire::Outcome7],
    ) -> Vec<crate::fleet::Provenance> {
        let mut out = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let id = o.outcome.repo.as_str();
            let peer = match o.source {
                gitmirror_wire::TransferSource::Upstream => false,
                gitmirror_wire::TransferSource::Peer(from) => {
                    if self.fleet.registry().by_id(from).is_none() {
                        tracing::info!(repo = %id, "{} says it copied from worker {from}, which this coordinator does not know; read as a copy", self.worker_label(&uuid));
                    }
                    true
                }
            };
            let held = self.handover.expect(id);
            out.push(crate::fleet::Provenance {
                peer,
                matches: o.refs_sha256.zip(held).map(|(a, b)| a == b),
            });
            let (
                Some(sha),
                gitmirror_wire::FetchResult::Cloned | gitmirror_wire::FetchResult::Fetched,
            ) = (o.refs_sha256, &o.outcome.result)
            else {
                continue;
            };
            if peer || !self.peers_listening {
                continue;
            }
            if let Some((key, repo)) = self.fleet.repos().get_key_value(id)
                && repo.owner == Some(uuid)
            {
                if repo.replica.is_some() && held != Some(sha) {
                    self.follows
                        .entry(uuid)
                        .or_default()
                        .push((o.outcome.report_id, id.to_owned()));
                }
                self.handover.record(key.clone(), sha);
            }
        }
        out
    }

    /// SPEC §13: with replicas, a worker in sync without a usable peer plane: below
    /// protocol 7 or without a certificate it fetches the repos it follows from the
    /// upstream; without `peer_listen` it copies from peers but serves nobody, so when it
    /// is a primary its followers go to the upstream. Either multiplies the upstream's
    /// load: one warning naming it. O(workers) a tick.
    fn warn_no_peer_plane(&mut self) {
        if !self.cfg.replicas.any_replicated() {
            return;
        }
        let mut missing: Vec<(Uuid, &'static str)> = Vec::new();
        for (u, c) in &self.conns {
            if !self.fleet.is_synced(u) || self.warned_no_peer.contains(u) {
                continue;
            }
            let why = if c.protocol < 7 {
                "its protocol is below 7"
            } else if self.fleet.worker(u).is_none_or(|w| w.cert.is_none()) {
                "it has no certificate"
            } else if c.peer.as_ref().is_none_or(|p| p.port.is_none()) {
                "no peer_listen"
            } else {
                continue;
            };
            missing.push((*u, why));
        }
        let seen: HashSet<Uuid> = missing.iter().map(|(u, _)| *u).collect();
        for (u, why) in &missing {
            if !self.no_peer_seen.contains(u) {
                continue;
            }
            self.warned_no_peer.insert(*u);
            tracing::warn!(
                "{} has no usable peer plane ({why}): with replicas {} the copies it should take or serve come from the upstream instead, multiplying the upstream's load",
                self.worker_label(u),
                self.cfg.replicas.describe()
            );
        }
        self.no_peer_seen = seen;
        // Removed workers are forgotten (O(warned) a tick, at most the workers).
        let fleet = &self.fleet;
        self.warned_no_peer.retain(|u| fleet.worker(u).is_some());
    }

    fn worker_label(&self, uuid: &Uuid) -> String {
        match self.fleet.worker(uuid) {
            Some(w) => format!("worker {} ({})", w.id, w.name),
            None => format!("worker {uuid}"),
        }
    }

    async fn on_conn(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Connected {
                conn,
                hello,
                cert,
                addr,
                outbox,
                handle,
                reply,
            } => {
                let speaker = match &cert {
                    Some(fp) => Speaker::Certificate(fp),
                    None => Speaker::Token,
                };
                let registry = self.fleet.registry();
                let decision = enrollment::decide(
                    hello.uuid,
                    registry.standing(&hello.uuid),
                    speaker,
                    hello.protocol,
                    self.cfg.enroll,
                    registry.is_approved(&hello.uuid),
                );
                let issued = match decision {
                    Decision::Refuse {
                        code,
                        close,
                        message,
                    } => {
                        // The connection task logs the refusal.
                        let _ = reply.send(Err((Refusal { code, message }, close)));
                        return;
                    }
                    Decision::Pending => {
                        if !self.pending.contains(&hello.uuid) {
                            tracing::info!(
                                "worker {:?} (uuid {}) at {addr} waits for approval (enroll: manual): `gitmirrord workers approve {}`",
                                hello.name,
                                hello.uuid,
                                hello.uuid
                            );
                        }
                        self.pending
                            .note(hello.uuid, &hello.name, &addr.to_string(), now_ms());
                        let refusal = Refusal {
                            code: RefuseCode::Pending,
                            message: enrollment::pending_message(hello.uuid),
                        };
                        let _ = reply.send(Err((refusal, close_code::PENDING)));
                        return;
                    }
                    Decision::Admit => {
                        if cert.is_some() {
                            self.fleet.cert_confirmed(&hello.uuid);
                        }
                        None
                    }
                    Decision::Enroll => match self.ca.issue(&hello.uuid.to_string()) {
                        Ok(i) => Some(i),
                        Err(e) => {
                            tracing::error!(
                                "cannot issue a certificate to worker {}: {e:#}",
                                hello.uuid
                            );
                            let refusal = Refusal {
                                code: RefuseCode::ProtocolError,
                                message: "the coordinator could not issue a certificate (its log says why)".into(),
                            };
                            let _ = reply.send(Err((refusal, close_code::PROTOCOL_ERROR)));
                            return;
                        }
                    },
                };
                let intro = Introduction {
                    uuid: hello.uuid,
                    previous_id: hello.previous_id,
                    name: &hello.name,
                    weight: hello.weight,
                    software: &hello.software,
                    protocol: hello.protocol,
                    serve_url_base: hello.serve_url_base.as_deref(),
                    addr: Some(addr.to_string()),
                };
                match self.fleet.connect(&intro, now_ms()) {
                    Err(e) => {
                        let refusal = Refusal {
                            code: RefuseCode::NoFreeId,
                            message: e.to_string(),
                        };
                        let _ = reply.send(Err((refusal, close_code::NO_FREE_ID)));
                    }
                    Ok(joined) => {
                        self.pending.remove(&hello.uuid);
                        let enrolled = issued.map(|i| {
                            self.fleet.enrolled(&hello.uuid, i.fingerprint);
                            WorkerCert {
                                cert_pem: i.cert_pem,
                                key_pem: i.key_pem,
                            }
                        });
                        // The fingerprint is on disk before the certificate leaves: a
                        // coordinator that crashed after sending it must still know it.
                        if (joined.new_id || enrolled.is_some())
                            && !self.save_registry_now().await
                            && enrolled.is_some()
                        {
                            let refusal = Refusal {
                                code: RefuseCode::ProtocolError,
                                message: "the coordinator could not save the registry (its log says why); try again".into(),
                            };
                            let _ = reply.send(Err((refusal, close_code::PROTOCOL_ERROR)));
                            return;
                        }
                        let uuid = hello.uuid;
                        self.acks.connected(uuid);
                        if let Some(old) = self.conns.insert(
                            uuid,
                            Conn {
                                id: conn,
                                protocol: hello.protocol,
                                peer: None,
                                outbox,
                                handle,
                            },
                        ) {
                            old.handle.close(
                                quinn::VarInt::from_u32(close_code::REPLACED),
                                b"replaced by a newer connection of the same worker",
                            );
                            self.peers_changed();
                        }
                        let admission = Admission {
                            id: joined.id,
                            enrolled,
                        };
                        // SPEC §18: known to the budgets before the reply, so that a
                        // reply that fails is a loss there too.
                        let budgeted = self.budgets.connected(uuid, hello.protocol);
                        if reply.send(Ok(admission)).is_err() {
                            self.lost(uuid);
                        }
                        // SPEC §13 (C2): the fleet CA over the pinned channel, before
                        // anything can name this worker as a holder or grant it a transfer.
                        if hello.protocol >= 7 {
                            let plane = gitmirror_wire::PeerPlane {
                                ca_cert_pem: self.ca.cert_pem(),
                                lease_ms: PEER_GRANT_LEASE_MS,
                            };
                            self.send(uuid, CoordMsg::PeerPlane(plane));
                        }
                        // The budgets before the first assignment, so a worker never
                        // starts a fetch on a limited host without its share.
                        if budgeted {
                            let sends = self.budgets.take_sends(now_ms());
                            self.send_budgets(sends);
                        } else if !self.budgets.limits().is_empty() {
                            tracing::warn!(
                                "{} speaks protocol {} (< 6): it gets no share of host_limits and is not limited by them (only by its own fetch.per_host_concurrency)",
                                self.worker_label(&uuid),
                                hello.protocol
                            );
                        }
                        self.dispatch(joined.sends);
                    }
                }
            }
            ConnEvent::Message { conn, uuid, msg } => {
                if self.conns.get(&uuid).map(|c| c.id) != Some(conn) {
                    return; // a replaced connection's last words
                }
                let now = now_ms();
                match msg {
                    WorkerMsg::Holdings(h) => {
                        // A worker sends Holdings only after it stored its certificate.
                        self.fleet.cert_confirmed(&uuid);
                        let sends = self.fleet.holdings(uuid, &h, now);
                        self.dispatch(sends);
                    }
                    WorkerMsg::Outcomes(batch) => self.on_outcomes(uuid, batch, &[], now).await,
                    // Protocol 7 (SPEC §13): the owner's refs hashes are kept for
                    // hand-overs (while some worker listens for peers); a copy from a peer
                    // is otherwise read as any outcome (its refs are the published ones).
                    WorkerMsg::Outcomes7(batch) => {
                        // Bytes by source, each outcome once: those the fleet will
                        // skip as already recorded (a resend) are not counted again.
                        let seen = self.fleet.worker(&uuid).map_or(0, |w| w.last_report_id);
                        for o in batch.outcomes.iter().filter(|o| o.outcome.report_id > seen) {
                            self.transfer_bytes.add(o.source, o.transfer_bytes);
                        }
                        let prov = self.provenance(uuid, &batch.outcomes);
                        let batch = OutcomeBatch {
                            outcomes: batch.outcomes.into_iter().map(|o| o.outcome).collect(),
                        };
                        self.on_outcomes(uuid, batch, &prov, now).await
                    }
                    WorkerMsg::PeerInfo(info) => {
                        tracing::debug!(?info, "{} peer plane", self.worker_label(&uuid));
                        let zone = info.zone.clone();
                        self.fleet.set_peer_plane(uuid, info.port.is_some());
                        if let Some(c) = self.conns.get_mut(&uuid) {
                            c.peer = Some(info);
                        }
                        self.peers_changed();
                        let sends = self.fleet.set_zone(uuid, zone.as_deref());
                        self.dispatch(sends);
                    }
                    WorkerMsg::PoolStates(p) => self.on_pool_states(uuid, p),
                    WorkerMsg::PoolTotals(t) => self.pools.totals(uuid, t),
                    WorkerMsg::Status(s) => self.fleet.worker_status(uuid, &s, now),
                    WorkerMsg::Load(l) => self.fleet.worker_load(uuid, l, now),
                    WorkerMsg::HostDemand(d) => self.budgets.demand(uuid, &d),
                    WorkerMsg::RateLimited(r) => self.on_rate_limited(uuid, &r, now),
                    WorkerMsg::AssignAck { seq } => {
                        if !self.fleet.assign_ack(uuid, seq) {
                            tracing::warn!(
                                "{} acknowledged assignment {seq}, which was never sent",
                                self.worker_label(&uuid)
                            );
                        }
                    }
                    WorkerMsg::RefsPage(page) => {
                        if let Err(e) = self.refs.answer(uuid, page) {
                            self.protocol_error(uuid, &e);
                        }
                    }
                    // The connection's session (`gitmirror_wire::FromWorker`) refuses a
                    // second Hello and puts chunked lists back together before here.
                    WorkerMsg::Hello(_)
                    | WorkerMsg::HoldingsPart(_)
                    | WorkerMsg::OutcomeChanges(_) => {}
                }
            }
            ConnEvent::Closed { conn, uuid } => {
                if self.conns.get(&uuid).map(|c| c.id) == Some(conn) {
                    self.lost(uuid);
                }
            }
        }
    }

    /// Pool states from a worker (SPEC §14, protocol 8): kept for the repos the fleet
    /// assigns to it (as owner or holder); any other repo, known or not, is ignored with
    /// one log line per report.
    fn on_pool_states(&mut self, uuid: Uuid, report: gitmirror_wire::PoolStates) {
        let fleet = &self.fleet;
        let applied = self.pools.apply(uuid, report, |id| {
            fleet
                .repo(id)
                .is_some_and(|r| r.owner == Some(uuid) || r.holders.contains_key(&uuid))
        });
        if applied.not_assigned > 0 || applied.over_limit > 0 {
            tracing::warn!(
                "{} reported the fork-pool state of {} repos not assigned to it (the first: {:?}) and {} past the limit of {}: ignored",
                self.worker_label(&uuid),
                applied.not_assigned,
                applied.first_refused.as_deref().map(crate::redact::text),
                applied.over_limit,
                crate::pools::MAX_STATES_PER_WORKER
            );
        }
    }

    /// A worker saw a rate-limit answer (SPEC §18): pause the host for the whole fleet
    /// and tell every worker now. One log line per pause, not per report.
    fn on_rate_limited(&mut self, uuid: Uuid, r: &gitmirror_wire::RateLimitReport, now: i64) {
        if let Some(p) = self.budgets.rate_limited(&r.host, r.retry_after_ms, now) {
            tracing::warn!(
                host = %p.host,
                until = %gitmirror_common::rfc3339_ms(p.until_ms),
                "upstream host rate limited {}: paused for the whole fleet until then",
                self.worker_label(&uuid)
            );
        }
        let sends = self.budgets.take_sends(now);
        self.send_budgets(sends);
    }

    fn send_budgets(&mut self, sends: Vec<(Uuid, gitmirror_wire::HostBudgets)>) {
        for (uuid, msg) in sends {
            if self.conns.get(&uuid).is_some_and(|c| c.protocol >= 6) {
                self.send(uuid, CoordMsg::HostBudgets(msg));
            }
        }
    }

    /// The worker's current connection is gone (or was closed by us).
    fn lost(&mut self, uuid: Uuid) {
        self.budgets.lost(uuid, now_ms());
        if self.conns.remove(&uuid).is_some_and(|c| c.peer.is_some()) {
            self.peers_changed();
        }
        self.fleet.disconnect(uuid, now_ms());
        self.refs.lost(uuid);
    }

    /// The worker broke the protocol: close its connection (it reconnects and resyncs).
    fn protocol_error(&mut self, uuid: Uuid, why: &str) {
        tracing::warn!(
            "closing the connection of {}: {why}",
            self.worker_label(&uuid)
        );
        if let Some(c) = self.conns.get(&uuid) {
            c.handle.close(
                quinn::VarInt::from_u32(close_code::PROTOCOL_ERROR),
                b"protocol error",
            );
        }
        self.lost(uuid);
    }

    /// `GET /api/repos/{id}/refs`: send the query to the repo's holder; the HTTP task
    /// waits for the page, the loop does not.
    fn refs_query(&mut self, req: &RefsRequest) -> Reply {
        let conns = &self.conns;
        let target =
            match crate::refs_query::target(&self.fleet, &req.repo, |u| conns.contains_key(u)) {
                Ok(t) => t,
                Err(a) => return a.into(),
            };
        match self.refs.ask(&target, req.clone(), Instant::now()) {
            Ok((msg, reply)) => {
                self.send(target.uuid, msg);
                reply
            }
            Err(a) => a.into(),
        }
    }

    async fn on_outcomes(
        &mut self,
        uuid: Uuid,
        batch: OutcomeBatch,
        prov: &[crate::fleet::Provenance],
        now: i64,
    ) {
        self.load_published_refs(&batch).await;
        let report = self.fleet.outcomes_from(uuid, &batch.outcomes, prov, now);
        // Per-ref maps live for one batch only (a clone in it may have made one too).
        for o in batch.outcomes.iter().filter(|o| !o.changes.is_empty()) {
            self.fleet.set_published_refs(&o.repo, None);
        }
        self.dispatch(report.sends);
        for repo in report.relists {
            self.send(uuid, CoordMsg::Relist { repo });
        }
        let mut job = None;
        if !report.events.is_empty() {
            // What each event publishes: the digest of the whole ref set its outcome
            // reports (the fleet's `published` after it), kept in the log (SPEC §10).
            let digests: HashMap<u64, u64> = batch
                .outcomes
                .iter()
                .map(|o| (o.report_id, o.refs_digest))
                .collect();
            let repos: Vec<String> = report.events.iter().map(|e| e.repo.clone()).collect();
            match self.appender.append(report.events, digests) {
                Ok(j) => {
                    self.appending.insert(j, report.batch);
                    job = Some(j);
                }
                Err(e) => {
                    self.not_recorded(uuid, report.batch, &repos, &e.to_string());
                    return;
                }
            }
        }
        // Acknowledged once its events, and those of the worker's earlier batches, are
        // durable ([`MainLoop::on_appended`]).
        if let Some(upto) = self.acks.batch(uuid, report.upto, job) {
            self.acknowledge(uuid, upto);
        }
    }

    fn acknowledge(&mut self, uuid: Uuid, upto: u64) {
        self.fleet.recorded(uuid, upto);
        self.send(uuid, CoordMsg::OutcomeAck { upto });
        // SPEC §13: the primary's changes are durable; its followers copy them now.
        if let Some(waiting) = self.follows.get_mut(&uuid) {
            let due: Vec<String> = waiting
                .iter()
                .filter(|(r, _)| *r <= upto)
                .map(|(_, id)| id.clone())
                .collect();
            waiting.retain(|(r, _)| *r > upto);
            if waiting.is_empty() {
                self.follows.remove(&uuid);
            }
            if !due.is_empty() {
                let sends = self.fleet.follow(uuid, &due);
                self.dispatch(sends);
            }
        }
    }

    /// An append job is done: publish its events, acknowledge what waited for it.
    fn on_appended(&mut self, done: Done) {
        match done {
            Done::Durable { job, events } => {
                if let Some(batch) = self.appending.remove(&job) {
                    self.fleet
                        .durable(batch, events.iter().map(|e| e.repo.as_str()));
                }
                self.published(events);
                if let Some((uuid, upto)) = self.acks.durable(job) {
                    self.acknowledge(uuid, upto);
                }
            }
            Done::Failed { job, repos, error } => {
                let batch = self.appending.remove(&job).unwrap_or_default();
                if let Some(uuid) = self.acks.failed(job) {
                    self.not_recorded(uuid, batch, &repos, &error);
                } else {
                    self.fleet
                        .not_durable(batch, repos.iter().map(String::as_str));
                }
            }
        }
    }

    /// Events of `uuid`'s outcome `batch` could not be made durable: the fleet drops what
    /// they would have published, and the worker's connection is closed so that it
    /// resends every outcome not acknowledged ([`Acks::failed`]).
    fn not_recorded(&mut self, uuid: Uuid, batch: u64, repos: &[String], error: &str) {
        self.acks.block(uuid);
        tracing::error!(
            "{error}; outcomes of {} are not acknowledged; closing its connection so that it resends them",
            self.worker_label(&uuid)
        );
        self.fleet
            .not_durable(batch, repos.iter().map(String::as_str));
        if let Some(c) = self.conns.get(&uuid) {
            c.handle.close(
                quinn::VarInt::from_u32(close_code::RESEND),
                b"outcomes not recorded: resend",
            );
        }
        self.lost(uuid);
    }

    /// The published values of the refs that the fetches in `batch` changed, read from the
    /// event log (its overlays or checkpoint) into the fleet for this batch only, so no
    /// per-ref map stays in memory (design.md "Event log at scale").
    async fn load_published_refs(&mut self, batch: &OutcomeBatch) {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in &batch.outcomes {
            if matches!(o.result, gitmirror_wire::FetchResult::Fetched) && !o.changes.is_empty() {
                wanted
                    .entry(o.repo.clone())
                    .or_default()
                    .extend(o.changes.iter().map(|c| c.name.clone()));
            }
        }
        if wanted.is_empty() {
            return;
        }
        // After every append queued before, so that the values are those published last.
        let read = self
            .appender
            .read(move |log| {
                wanted
                    .into_iter()
                    .map(|(repo, names)| {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        let refs = log.published_refs(&repo, &names);
                        (repo, refs)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let Ok(read) = read else {
            return;
        };
        for (repo, refs) in read {
            match refs {
                Ok(refs) => self.fleet.set_published_refs(&repo, refs),
                // The digest alone decides for this repo, as before any event.
                Err(e) => tracing::error!(repo = %repo, "reading its published refs: {e}"),
            }
        }
    }

    /// Events are durable: count them, keep the last few, and wake long-polls and webhooks.
    fn published(&mut self, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let now = now_ms();
        for e in events {
            self.fleet.history_mut().event(&e, now);
            let kind = match e.kind {
                EventKind::Cloned => "cloned",
                EventKind::Updated => "updated",
                EventKind::Removed => "removed",
            };
            *self.events_by_kind.entry(kind).or_insert(0) += 1;
            self.recent.push_back(e);
            if self.recent.len() > crate::page::RECENT_EVENTS {
                self.recent.pop_front();
            }
        }
        self.seq.send_replace(last);
    }

    fn dispatch(&mut self, sends: Vec<crate::fleet::Outgoing>) {
        for s in sends {
            let seven = self.conns.get(&s.worker).is_some_and(|c| c.protocol >= 7);
            let plan = if seven {
                self.handover
                    .plan(&self.fleet, s.worker, &s.delta, |u| self.peer_entry(u))
            } else {
                None
            };
            let Some(plan) = plan else {
                self.send(s.worker, CoordMsg::Assign(s.delta));
                continue;
            };
            // The holders hear of their grants first; an asker that comes before its
            // grant is refused and tries the next holder, the upstream, then again.
            for (holder, grant) in plan.grants {
                self.send(
                    holder,
                    CoordMsg::PeerGrants(gitmirror_wire::PeerGrants {
                        lease_ms: crate::handover::LEASE_MS,
                        grant,
                        revoke: Vec::new(),
                    }),
                );
            }
            for part in gitmirror_wire::chunk::directory_parts(plan.peers, Vec::new()) {
                self.send(s.worker, part);
            }
            self.send(s.worker, CoordMsg::Assign7(plan.delta));
        }
        // After the deltas, on the same stream: a claimed mirror to verify by a fetch.
        for (worker, repo) in self.fleet.take_fetch_now() {
            self.send(worker, CoordMsg::FetchNow { repo });
        }
    }

    fn send(&mut self, uuid: Uuid, msg: CoordMsg) {
        let Some(c) = self.conns.get(&uuid) else {
            return;
        };
        match c.outbox.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    "{} is not reading: {OUTBOUND_QUEUE} messages are queued for it; closing its connection (it resyncs when it reconnects)",
                    self.worker_label(&uuid)
                );
                c.handle.close(
                    quinn::VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"outbound queue full: the worker is not reading",
                );
                self.lost(uuid);
            }
            Err(TrySendError::Closed(_)) => self.lost(uuid),
        }
    }

    /// Bounded work on the loop (SPEC §12): counters, lookups and one page, copied into
    /// owned views; the HTTP task encodes them.
    async fn on_http(&mut self, call: HttpCall) {
        let answer: Reply = match &call.query {
            Query::Fetch(id) => self.fetch_now(id).into(),
            Query::Hook(urls) => self.on_hook(urls).into(),
            Query::Approve(uuid) => self.approve_worker(*uuid).await.into(),
            Query::Remove(uuid) => self.remove_worker(*uuid).await.into(),
            Query::Pending => Reply::json(200, self.pending.list()),
            Query::Drain { worker, drain } => self.drain_worker(worker, *drain).await.into(),
            Query::Block { id, reason, by } => self.block_repo(id, reason, by).await.into(),
            Query::Unblock(id) => self.unblock_repo(id).await.into(),
            Query::Index => self.index_view(),
            Query::Metrics => self.metrics(),
            Query::Page => self.page().into(),
            Query::RepoPage(id) => self.repo_page(id).into(),
            Query::RepoSearch {
                q,
                after,
                urls,
                url_after,
            } => Answer::html(
                200,
                crate::repo_page::search(
                    &self.fleet,
                    q,
                    after.as_deref(),
                    urls,
                    url_after.as_deref(),
                ),
            )
            .into(),
            Query::Refs(r) => self.refs_query(r),
            q => {
                let view = View {
                    fleet: &self.fleet,
                    now_ms: now_ms(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    url_limit: self.cfg.status_url_limit,
                };
                // SPEC §14: the pool reports go into the repo and worker views here (one
                // lookup per repo or worker shown).
                let pools = &self.pools;
                let pooled = match q {
                    Query::Repo(id) => view.repo(id).map(|mut d| {
                        pools.fill_repo(&self.fleet, &mut d);
                        // A kilobyte or so: encoded here in microseconds, where handing it
                        // to a blocking thread would cost that thread's wake-up.
                        Answer::json(200, &d).into()
                    }),
                    Query::Workers => {
                        let mut ws = view.workers();
                        ws.iter_mut().for_each(|w| pools.fill_worker(w));
                        Some(Reply::json(200, ws))
                    }
                    Query::Worker(id, page) => view.worker(*id, page).map(|mut d| {
                        pools.fill_worker(&mut d.worker);
                        Reply::json(200, d)
                    }),
                    _ => None,
                };
                if let Some(reply) = pooled {
                    reply
                } else if *q == Query::Status {
                    // The index part (rejected entries and all) is copied off the loop.
                    let mut status = view.status_with(Vec::new(), &mut self.status_urls);
                    status.workers.iter_mut().for_each(|w| pools.fill_worker(w));
                    status.hosts = self.budgets.view(now_ms());
                    let index = self.index.clone();
                    let skipped = self.blocked_skipped();
                    Reply::Render(Box::new(move || {
                        status.index = index_with_skipped(index.status(), skipped);
                        Answer::json(200, &status)
                    }))
                } else {
                    view.answer(q, Vec::new())
                }
            }
        };
        let _ = call.reply.send(answer);
    }

    fn webhook_metrics(&self) -> Vec<crate::metrics::WebhookMetric> {
        self.webhooks
            .as_ref()
            .map(Webhooks::metrics)
            .unwrap_or_default()
    }

    /// `GET /metrics`: the counters are copied here; index state is read and the text
    /// rendered off the loop.
    fn metrics(&self) -> Reply {
        let fleet = crate::metrics::FleetCounts::take(
            self.fleet.registry(),
            self.fleet.census(),
            self.fleet.fetch_stats(),
            now_ms(),
        )
        .with_planned_moves(self.fleet.planned_moves());
        let uptime_secs = self.started.elapsed().as_secs();
        let event_seq = *self.seq.borrow();
        let events = self.events_by_kind.clone();
        let webhooks = self.webhook_metrics();
        let index = self.index.clone();
        let batches_waiting = self.acks.waiting_batches();
        let hooks = crate::metrics::HookMetrics {
            results: self.hook_gate.counts(),
            fetches: self.hook_fetches,
            gaps_open: self.coalescer.len(),
        };
        let hosts = self.budgets.view(now_ms());
        let pools = self.pools.fleet();
        let transfer = self.transfer_bytes;
        Reply::Render(Box::new(move || {
            let polls = index.polls();
            let index = index.status();
            Answer::metrics(crate::metrics::render(&crate::metrics::Inputs {
                fleet,
                uptime_secs,
                index: &index,
                index_polls: &polls,
                event_seq,
                events: &events,
                webhooks: &webhooks,
                batches_waiting,
                hooks: &hooks,
                hosts: &hosts,
                pools,
                transfer,
            }))
        }))
    }

    /// `GET /`.
    fn page(&self) -> Answer {
        let index = self.index.status();
        let webhooks = self.webhook_metrics();
        let recent: Vec<Event> = self.recent.iter().cloned().collect();
        let (max_interval_secs, max_interval_from) = self.max_interval();
        let html = crate::page::render(
            &self.fleet,
            &crate::page::PageInputs {
                now_ms: now_ms(),
                uptime_secs: self.started.elapsed().as_secs(),
                recent: &recent,
                last_seq: *self.seq.borrow(),
                index: &index,
                webhooks: &webhooks,
                hosts: &self.budgets.view(now_ms()),
                max_interval_secs,
                max_interval_from,
            },
        );
        Answer::html(200, html)
    }

    /// `max_interval` the pages compare staleness with: the embedded worker's, else the
    /// worker's default (the coordinator does not know remote workers' settings).
    fn max_interval(&self) -> (u64, &'static str) {
        match &self.cfg.local_worker {
            Some(l) => (
                l.fetch.max_interval.as_secs(),
                "local_worker.fetch.max_interval",
            ),
            None => (
                gitmirror_worker::FetchSection::default()
                    .max_interval
                    .as_secs(),
                "the worker default",
            ),
        }
    }

    /// `GET /repos/{id}`: a lookup and the repo's bounded history.
    fn repo_page(&self, id: &str) -> Answer {
        let (max_interval_secs, max_interval_from) = self.max_interval();
        let inputs = crate::repo_page::RepoPageInputs {
            now_ms: now_ms(),
            uptime_secs: self.started.elapsed().as_secs(),
            max_interval_secs,
            max_interval_from,
            pools: &self.pools,
        };
        match crate::repo_page::render(&self.fleet, id, &inputs) {
            Some(html) => Answer::html(200, html),
            None => match crate::repo_page::blocked(&self.fleet, id, inputs.now_ms) {
                Some(html) => Answer::html(200, html),
                None => Answer::html(404, crate::repo_page::not_found(id)),
            },
        }
    }

    async fn webhooks_shutdown(&mut self) {
        if let Some(w) = self.webhooks.take() {
            w.shutdown().await;
        }
    }

    /// SIGHUP (SPEC §11): re-read the configuration file and apply what can change while
    /// running; name every changed setting that needs a restart; poll the indexes now. A
    /// file that does not load leaves everything as it was.
    async fn reload(&mut self) {
        let path = self.cfg.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let new = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::error!(
                    "SIGHUP: the configuration was not reloaded, the running one stays in force: {e}"
                );
                self.index.poll_now();
                return;
            }
            Err(e) => {
                tracing::error!("SIGHUP: reading the configuration failed: {e}");
                return;
            }
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let plan = crate::reload::plan(&self.cfg, &new);
        if plan.log_level {
            match gitmirror_common::logging::set_level(&new.log_level) {
                Ok(gitmirror_common::logging::LevelChange::OverriddenByEnv) => tracing::warn!(
                    "SIGHUP: log_level is now {:?}, but RUST_LOG is set and keeps overriding it",
                    new.log_level
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("SIGHUP: cannot apply log_level: {e}"),
            }
        }
        if plan.indexes {
            self.index.set_sources(new.indexes.clone());
        }
        // Always taken: an entry's file may have changed while the file did not.
        self.index_credentials.set(new.credentials.clone());
        if let Some(local) = &mut self.local
            && local.cfg.credentials != new.credentials
        {
            local.cfg.credentials = new.credentials.clone();
            if local.reload.try_send(local.cfg.clone()).is_err() {
                tracing::warn!(
                    "SIGHUP: the local worker is busy with an earlier reload; send SIGHUP again"
                );
            }
        }
        if plan.webhooks
            && let Some(w) = &mut self.webhooks
        {
            w.set(&new.webhooks).await;
        }
        if plan.local_worker
            && let (Some(local), Some(lw)) = (&mut self.local, &new.local_worker)
        {
            local.cfg.fetch = lw.fetch.clone();
            local.cfg.disk = lw.disk.clone();
            if local.reload.try_send(local.cfg.clone()).is_err() {
                tracing::warn!(
                    "SIGHUP: the local worker is busy with an earlier reload; send SIGHUP again"
                );
            }
        }
        if plan.host_limits {
            self.budgets.set_limits(new.host_limits.clone());
        }
        if plan.hooks {
            self.hook_gate
                .reload(crate::hooks::HookSettings::from_config(&new));
        }
        if plan.api_token {
            let auth = crate::http_auth::HttpAuth::from_config(&new);
            match self.http_auth.write() {
                Ok(mut t) => *t = auth,
                Err(e) => *e.into_inner() = auth,
            }
        }
        self.index.poll_now();
        tracing::info!(
            "SIGHUP: reloaded {}: {}; polling every index now",
            new.path.display(),
            if plan.applied.is_empty() {
                "no reloadable setting changed".to_owned()
            } else {
                plan.applied.join(", ")
            }
        );
        for (key, what) in &plan.needs_restart {
            tracing::warn!(
                "SIGHUP: {key} changed ({what}) but needs a restart of gitmirrord to apply; still running with the old value"
            );
        }
        // Keep the restart-only settings as they run, so the next reload names them again.
        self.cfg = crate::reload::merge(&self.cfg, new);
        if plan.hooks {
            self.hooks_configured();
        }
    }

    /// `POST /api/repos/{id}/fetch`.
    fn fetch_now(&mut self, id: &str) -> Answer {
        let Some(repo) = self.fleet.repo(id) else {
            return Answer::error(404, &format!("no repo {id:?} in any index"));
        };
        let Some(owner) = repo.owner else {
            return Answer::error(409, &format!("repo {id} is unassigned: no live worker"));
        };
        let worker = self.fleet.worker(&owner).map(|w| w.id);
        if !self.conns.contains_key(&owner) {
            return Answer::error(
                503,
                &format!(
                    "worker {} owning {id} is not connected",
                    worker.unwrap_or_default()
                ),
            );
        }
        self.fleet
            .asked(id, owner, crate::events::Trigger::Manual, now_ms());
        self.send(
            owner,
            CoordMsg::FetchNow {
                repo: id.to_owned(),
            },
        );
        Answer::json(202, &serde_json::json!({ "repo": id, "worker": worker }))
    }

    /// `push_hooks` set or changed: the URL map exists exactly while hooks are configured
    /// (built here, ~1 s a million repos), and the gap is the configured one.
    fn hooks_configured(&mut self) {
        self.coalescer.set_gap(self.cfg.hooks_min_gap);
        if self.cfg.push_hooks.is_empty() {
            self.hook_urls = None;
            return;
        }
        if self.hook_urls.is_none() {
            let t = Instant::now();
            let idx = crate::hooks::urls::UrlIndex::build(
                self.fleet.repos().iter().map(|(id, r)| (id, &*r.url)),
            );
            tracing::info!(
                hooks = self.cfg.push_hooks.len(),
                urls = idx.len(),
                secs = t.elapsed().as_secs_f32(),
                "push hooks: URL map built"
            );
            self.hook_urls = Some(idx);
        }
    }

    /// Before an index delta is applied: the URLs it removes or replaces leave the map.
    fn hook_urls_forget(&mut self, delta: &Delta) {
        for id in &delta.removed {
            self.handover.forget(id);
        }
        let Some(idx) = &mut self.hook_urls else {
            return;
        };
        let gone = delta.removed.iter().map(String::as_str);
        for id in gone.chain(delta.changed.iter().map(|e| e.id.as_str())) {
            if let Some(r) = self.fleet.repo(id) {
                idx.remove(id, &r.url);
            }
        }
    }

    /// After an index delta is applied: its added and changed entries join the map.
    fn hook_urls_learn(&mut self, delta: &Delta) {
        let Some(idx) = &mut self.hook_urls else {
            return;
        };
        for e in delta.added.iter().chain(&delta.changed) {
            if let Some((id, r)) = self.fleet.repos().get_key_value(e.id.as_str()) {
                idx.insert(id.clone(), &r.url);
            }
        }
    }

    /// `POST /api/hooks/{name}`, authenticated (SPEC §15): match, coalesce, fetch.
    fn on_hook(&mut self, urls: &[String]) -> Answer {
        use crate::hooks::{CallResult, coalesce::Push};
        let ids = match &self.hook_urls {
            Some(idx) => {
                let fleet = &self.fleet;
                idx.lookup(urls, |id| fleet.repo(id).map(|r| &*r.url))
            }
            None => Vec::new(),
        };
        if ids.is_empty() {
            self.hook_gate.count(CallResult::Unmatched);
            tracing::debug!("push hook: no repo has any of the URLs {urls:?}");
        } else {
            self.hook_gate.count(CallResult::Matched);
        }
        let now = now_ms();
        for id in &ids {
            match self.coalescer.push(id, now) {
                Push::Fetch => {
                    self.push_fetch(id);
                }
                Push::Marked => {
                    tracing::debug!(repo = %id, "push hook: a fetch is marked for the end of the gap");
                }
                Push::Full => tracing::warn!(
                    repo = %id,
                    "push hook: {} repos are in their hooks_min_gap already; this push waits for polling",
                    crate::hooks::coalesce::MAX_OPEN
                ),
            }
        }
        Answer::json(202, &serde_json::json!({ "matched": ids }))
    }

    /// A push-triggered fetch of `id` (SPEC §15), as `POST /api/repos/{id}/fetch` does it;
    /// an unassigned repo or a disconnected owner is left to polling.
    fn push_fetch(&mut self, id: &str) {
        let Some(owner) = self.fleet.repo(id).and_then(|r| r.owner) else {
            tracing::info!(repo = %id, "push hook: not fetched now: no live worker holds it");
            return;
        };
        if !self.conns.contains_key(&owner) {
            tracing::info!(repo = %id, "push hook: not fetched now: its worker is not connected");
            return;
        }
        tracing::info!(repo = %id, "push hook: fetching now");
        self.fleet
            .asked(id, owner, crate::events::Trigger::Push, now_ms());
        self.hook_fetches += 1;
        self.send(
            owner,
            CoordMsg::FetchNow {
                repo: id.to_owned(),
            },
        );
    }

    /// `POST /api/workers/{uuid}/approve` (SPEC §17): the join token may enroll it once.
    /// Answered once the registry says so on disk.
    async fn approve_worker(&mut self, uuid: Uuid) -> Answer {
        self.fleet.approve_worker(uuid);
        let was_pending = self.pending.remove(&uuid).is_some();
        if !self.save_registry_now().await {
            return Answer::error(
                500,
                "approved, but the registry could not be saved (the log says why); try again",
            );
        }
        tracing::info!("worker {uuid} approved: the join token may enroll it once");
        Answer::json(
            200,
            &serde_json::json!({ "uuid": uuid, "approved": true, "was_pending": was_pending }),
        )
    }

    /// `POST /api/workers/{uuid}/remove` (SPEC §17): revoke its certificate, close its
    /// connection and move its repos. Answered once the revocation is on disk.
    async fn remove_worker(&mut self, uuid: Uuid) -> Answer {
        self.pending.remove(&uuid);
        self.pools.forget(&uuid);
        let (known, sends) = self.fleet.remove_worker(uuid, now_ms());
        if let Some(c) = self.conns.get(&uuid) {
            c.handle.close(
                quinn::VarInt::from_u32(close_code::REMOVED),
                b"this worker was removed from the fleet",
            );
            self.lost(uuid);
        }
        self.dispatch(sends);
        if !self.save_registry_now().await {
            return Answer::error(
                500,
                "removed, but the registry could not be saved (the log says why); try again",
            );
        }
        Answer::json(
            200,
            &serde_json::json!({ "uuid": uuid, "removed": true, "known": known }),
        )
    }

    /// `POST /api/workers/{id or uuid}/drain|undrain` (SPEC §5). Answered once the
    /// registry says so on disk.
    async fn drain_worker(&mut self, worker: &str, drain: bool) -> Answer {
        let uuid = match worker.parse::<u32>() {
            Ok(id) => self.fleet.registry().by_id(id).map(|w| w.uuid),
            Err(_) => worker
                .parse::<Uuid>()
                .ok()
                .filter(|u| self.fleet.worker(u).is_some()),
        };
        let Some(uuid) = uuid else {
            return Answer::error(404, &format!("no worker {worker:?} (an id or a uuid)"));
        };
        let d = match self.fleet.set_drained(uuid, drain) {
            Ok(d) => d,
            Err(crate::fleet::DrainError::Unknown) => {
                return Answer::error(404, &format!("no worker {worker:?}"));
            }
            Err(e) => return Answer::error(409, &e.to_string()),
        };
        self.dispatch(d.sends);
        if !self.save_registry_now().await {
            return Answer::error(
                500,
                "done, but the registry could not be saved (the log says why); try again",
            );
        }
        let id = self.fleet.worker(&uuid).map(|w| w.id);
        Answer::json(
            200,
            &serde_json::json!({ "id": id, "uuid": uuid, "drained": drain, "changed": d.changed, "moving": d.moving }),
        )
    }

    /// `POST /api/repos/{id}/block` (a takedown): every holder is told to drop it; the
    /// block is on disk before the answer.
    async fn block_repo(&mut self, id: &str, reason: &str, by: &str) -> Answer {
        if self.fleet.repo(id).is_none()
            && self.fleet.registry().blocked(id).is_none()
            && crate::index::validate::repo_id(id).is_err()
        {
            return Answer::error(400, &format!("{id:?} is not a repo id"));
        }
        let b = crate::registry::Blocked {
            reason: reason.to_owned(),
            at_ms: now_ms(),
            by: by.to_owned(),
        };
        let holders = self.fleet.repo(id).map_or(0, |r| r.holders.len());
        let (new, sends) = self.fleet.block(id, b);
        self.dispatch(sends);
        if new {
            tracing::warn!(repo = %id, "repo blocked by {by}: {reason}; its {holders} mirrors are dropped fleet-wide");
        }
        if !self.save_registry_now().await {
            return Answer::error(
                500,
                "blocked, but the registry could not be saved (the log says why); try again",
            );
        }
        Answer::json(
            200,
            &serde_json::json!({ "id": id, "blocked": true, "changed": new }),
        )
    }

    /// `POST /api/repos/{id}/unblock`: back at once when an index lists it.
    async fn unblock_repo(&mut self, id: &str) -> Answer {
        let Some((back, sends)) = self.fleet.unblock(id) else {
            return Answer::error(404, &format!("repo {id:?} is not blocked"));
        };
        self.dispatch(sends);
        tracing::warn!(repo = %id, "repo unblocked by an operator; {}", if back { "an index lists it: it is assigned again" } else { "no index lists it now" });
        if !self.save_registry_now().await {
            return Answer::error(
                500,
                "unblocked, but the registry could not be saved (the log says why); try again",
            );
        }
        Answer::json(
            200,
            &serde_json::json!({ "id": id, "blocked": false, "back": back }),
        )
    }

    /// `GET /api/index`: the poller's view (read off the loop) with the blocked entries
    /// each index lists among its skipped ones, reason "blocked: …".
    fn index_view(&self) -> Reply {
        let skipped = self.blocked_skipped();
        let index = self.index.clone();
        Reply::Render(Box::new(move || {
            Answer::json(200, &index_with_skipped(index.status(), skipped))
        }))
    }

    /// Blocked repos an index lists, as that index's skipped entries (O(blocked)).
    fn blocked_skipped(&self) -> Vec<(String, crate::index::Rejected)> {
        self.fleet
            .registry()
            .blocked_all()
            .iter()
            .filter_map(|(id, b)| {
                let e = self.fleet.blocked_entry(id)?;
                Some((
                    e.index.clone(),
                    crate::index::Rejected {
                        path: id.clone(),
                        reason: format!("blocked: {}", b.reason),
                    },
                ))
            })
            .collect()
    }

    // ----- saving -----

    /// Wait for the registry save in flight, if any; a failed save leaves it dirty.
    async fn finish_save(&mut self) -> Result<(), StateError> {
        let Some(h) = self.saving.take() else {
            return Ok(());
        };
        match h.await {
            Ok(r) => r,
            Err(e) => Err(StateError::Io {
                action: "save",
                path: self.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Repo status every [`SAVE_REPOS_EVERY`], or sooner in chunks of [`SAVE_CHUNK`] when
    /// that many wait (a whole index assigned, a clone wave): never a long turn, and the
    /// store keeps up with tens of thousands of changed repos a second.
    fn save_repos_if_due(&mut self) {
        if self.repo_store.queued() >= MAX_QUEUED_SAVES {
            // The writer is behind; what waits stays coalesced in the fleet.
            return;
        }
        let waiting = self.fleet.unsaved_len();
        if waiting >= SAVE_CHUNK
            || (waiting > 0 && self.last_repos_save.elapsed() >= SAVE_REPOS_EVERY)
            || self.fleet.owners_unsaved()
        {
            // The store's thread writes them.
            self.repo_store
                .save(self.fleet.take_repo_changes(SAVE_CHUNK));
            self.last_repos_save = Instant::now();
        }
    }

    async fn save_if_due(&mut self) {
        self.registry_dirty |= self.fleet.take_registry_dirty();
        if self.saving.as_ref().is_some_and(|h| h.is_finished())
            && let Err(e) = self.finish_save().await
        {
            tracing::error!("{e}");
            self.registry_dirty = true;
        }
        if self.saving.is_some()
            || !self.registry_dirty
            || self.last_registry_save.elapsed() < SAVE_REGISTRY_EVERY
        {
            return;
        }
        self.registry_dirty = false;
        self.last_registry_save = Instant::now();
        let reg = self.fleet.registry_file();
        let dir = self.dir.clone();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            state::save_registry(&dir, &reg)
        }));
    }

    /// A new worker id is written before the worker hears of it.
    /// Save the registry now; `false` when that failed (logged; it stays dirty).
    async fn save_registry_now(&mut self) -> bool {
        // What is saved now need not be saved again by `save_if_due`.
        self.fleet.take_registry_dirty();
        self.registry_dirty = false;
        if let Err(e) = self.finish_save().await {
            tracing::error!("{e}");
            self.registry_dirty = true;
        }
        let reg = self.fleet.registry_file();
        let dir = self.dir.clone();
        let r = tokio::task::spawn_blocking(move || state::save_registry(&dir, &reg)).await;
        match r {
            Ok(Ok(())) => {
                self.last_registry_save = Instant::now();
                true
            }
            Ok(Err(e)) => {
                tracing::error!("{e}");
                self.registry_dirty = true;
                false
            }
            Err(e) => {
                tracing::error!("saving the registry: {e}");
                self.registry_dirty = true;
                false
            }
        }
    }

    async fn save_all(&mut self) -> Result<(), StateError> {
        if let Err(e) = self.finish_save().await {
            tracing::error!("{e}");
        }
        self.fleet.take_registry_dirty();
        let reg = self.fleet.registry_file();
        self.repo_store
            .save(self.fleet.take_repo_changes(usize::MAX));
        let (dir, store) = (self.dir.clone(), self.repo_store.clone());
        tokio::task::spawn_blocking(move || {
            state::save_registry(&dir, &reg)?;
            store.sync().map_err(|e| StateError::Io {
                action: "save the repo state in",
                path: dir.clone(),
                source: std::io::Error::other(e),
            })
        })
        .await
        .map_err(|e| StateError::Io {
            action: "save",
            path: self.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

/// The poller's view of the indexes with the blocked entries each lists among its
/// rejected ones, redacted as shown (SPEC §9: reasons quote URLs).
fn index_with_skipped(
    mut status: Vec<crate::index::IndexStatus>,
    skipped: Vec<(String, crate::index::Rejected)>,
) -> Vec<crate::index::IndexStatus> {
    for (name, r) in skipped {
        if let Some(s) = status.iter_mut().find(|s| s.name == name) {
            s.rejected.push(r);
        }
    }
    status.into_iter().map(crate::api::redact_index).collect()
}
