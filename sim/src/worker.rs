//! One simulated worker: the real protocol over real QUIC, without git.
//!
//! It connects as `gitmirror-worker`'s link does (certificate pinned by the join token,
//! the same QUIC transport, the same reconnect backoff), says `Hello` through
//! `wire::ClientHandshake`, sends its holdings (in parts) and resends what was not acknowledged, applies
//! every `Assign` delta and answers `AssignAck`, and reports outcomes: a `Cloned` for each
//! newly assigned repo as fast as its window allows, then `Fetched` at the rate the swarm
//! sets, a share of them moving the repo's one ref (`refs/heads/main`) to a new value.
//! Ref values are made from (repo number, version), so the coordinator's events can be
//! checked against what was sent.

use crate::index::{repo_id, repo_number, repo_url};
use crate::socket;
use crate::swarm::Shared;
use gitmirror_common::{frames, trust};
use gitmirror_wire::{
    AssignDelta, ClientHandshake, CoordMsg, FetchResult, FromCoordinator, HeldRepo, Hello,
    HostDemand, HostLoad, MAX_FRAME, Outcome, OutcomeBatch, PROTOCOL_VERSION, RefChange, WorkerMsg,
    WorkerStatus, close_code,
};
use quinn::VarInt;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// The values `gitmirror-worker/src/link.rs` uses, so reconnections behave as a real
/// worker's do (that module is private to the worker crate).
pub const KEEPALIVE: Duration = Duration::from_secs(5);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// The QUIC handshake is given up after this (`CONNECT_TIMEOUT` there).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a worker makes and sends outcomes (the real worker batches within 50 ms).
const TICK: Duration = Duration::from_millis(50);
/// How often a worker of the `budget` phase looks at its fetches and demand.
const BUDGET_TICK: Duration = Duration::from_millis(25);
/// Most outcomes in one `Outcomes` frame, as the real worker sends.
const BATCH: usize = 1000;
const REF: &str = "refs/heads/main";

pub(crate) enum Cmd {
    /// Go silent at once (power cut).
    Kill,
    /// Close the connection cleanly and end.
    Stop,
}

/// What the phases can see of one worker.
#[derive(Debug, Default)]
pub struct WorkerView {
    held: AtomicUsize,
    synced: AtomicBool,
    /// `Welcome`s received.
    sessions: AtomicU64,
    /// The id the coordinator gave, plus one (0: none yet).
    id: AtomicU64,
}

impl WorkerView {
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::SeqCst)
    }
    pub fn id(&self) -> Option<u32> {
        self.id
            .load(Ordering::SeqCst)
            .checked_sub(1)
            .map(|i| i as u32)
    }
}

/// A fabricated object id: 40 hex digits naming repo and version.
pub fn object_id(r: u32, version: u32) -> String {
    format!("{r:016x}{version:024x}")
}

/// Repo number and version of an id made by [`object_id`].
pub fn parse_object_id(id: &str) -> Option<(u32, u32)> {
    let (r, v) = (id.get(..16)?, id.get(16..)?);
    Some((
        u32::from_str_radix(r, 16).ok()?,
        u32::from_str_radix(v, 16).ok()?,
    ))
}

struct Slot {
    pos: usize,
    mirrored: bool,
}

struct Worker {
    name: String,
    uuid: Uuid,
    shared: Arc<Shared>,
    view: Arc<WorkerView>,
    previous_id: Option<u32>,
    /// TLS with the certificate this worker enrolled with (SPEC §17); `None` before.
    client_config: Option<quinn::ClientConfig>,
    held: Vec<u32>,
    slots: HashMap<u32, Slot>,
    to_clone: VecDeque<u32>,
    /// Unacknowledged outcomes, oldest first; resent after a reconnect.
    outbox: VecDeque<Outcome>,
    next_report_id: u64,
    cursor: usize,
    credit: f64,
    last_tick: Instant,
    synced: bool,
    /// This connection's steps (connect started, welcomed, greeting written), for the
    /// debug line when it syncs: where a re-attachment's time goes.
    steps: [Option<Instant>; 3],
    budget: Budget,
}

/// The limited host of the `budget` phase as this worker sees it (SPEC §18).
#[derive(Default)]
struct Budget {
    /// The connection share in force; none before the first `HostBudgets` (nothing
    /// starts: a simulated worker only learns of the limit from it).
    share: Option<u32>,
    /// `seq` of the last `HostBudgets` applied on this connection.
    seen: u64,
    /// When each running fetch ends.
    running: Vec<Instant>,
    last: Option<(HostDemand, Instant)>,
    served: bool,
    n: u64,
}

/// The host the `budget` phase limits: every simulated repo's URL is on it.
pub const BUDGET_HOST: &str = "git.example.invalid";
/// A simulated worker's `fetch.per_host_concurrency` (the real default).
const PER_HOST: usize = 4;

enum End {
    Killed,
    Stopped,
    /// Was welcomed, then the connection went; the text says why.
    Lost(String),
    /// Never reached `Welcome`.
    NotConnected(String),
}

/// Run one worker until it is killed or stopped.
pub(crate) async fn run(
    name: String,
    uuid: Uuid,
    shared: Arc<Shared>,
    view: Arc<WorkerView>,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let mut w = Worker {
        name,
        uuid,
        shared,
        view,
        previous_id: None,
        client_config: None,
        held: Vec::new(),
        slots: HashMap::new(),
        to_clone: VecDeque::new(),
        outbox: VecDeque::new(),
        next_report_id: 1,
        cursor: 0,
        credit: 0.0,
        last_tick: Instant::now(),
        synced: false,
        steps: [None; 3],
        budget: Budget::default(),
    };
    let (sock, cutter) = match socket::bind(([127, 0, 0, 1], 0).into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(worker = %w.name, "cannot open a UDP socket: {e}");
            return;
        }
    };
    let endpoint = match quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        sock,
        Arc::new(quinn::TokioRuntime),
    ) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(worker = %w.name, "cannot start a QUIC endpoint: {e}");
            return;
        }
    };
    let mut delay = BACKOFF_START;
    loop {
        match w.session(&endpoint, &mut cmds).await {
            End::Killed => {
                cutter.cut();
                w.vanish();
                return;
            }
            End::Stopped => {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
                return;
            }
            End::Lost(why) => {
                tracing::debug!(worker = %w.name, "connection lost: {why}");
                w.unsync();
                delay = BACKOFF_START;
            }
            End::NotConnected(why) => {
                tracing::debug!(worker = %w.name, "cannot connect: {why}");
            }
        }
        // As the real link: full jitter in the upper half, doubling up to the cap.
        let wait = delay.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        delay = (delay * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Kill) => { cutter.cut(); w.vanish(); return; }
                Some(Cmd::Stop) | None => return,
            },
        }
    }
}

impl Worker {
    /// The connection is gone: the next one must sync again.
    fn unsync(&mut self) {
        if self.synced {
            self.synced = false;
            self.view.synced.store(false, Ordering::SeqCst);
            self.shared.synced_add(-1);
        }
    }

    /// Killed: everything it held and had in flight is gone.
    fn vanish(&mut self) {
        self.unsync();
        for &r in &self.held {
            self.shared.release(r);
        }
        let unmirrored = self.slots.values().filter(|s| !s.mirrored).count();
        self.shared.unmirrored_add(-(unmirrored as i64));
        self.shared.outstanding_add(-(self.outbox.len() as i64));
        self.held.clear();
        self.slots.clear();
        self.to_clone.clear();
        self.outbox.clear();
        self.view.held.store(0, Ordering::SeqCst);
    }

    async fn session(&mut self, endpoint: &quinn::Endpoint, cmds: &mut mpsc::Receiver<Cmd>) -> End {
        self.steps = [Some(Instant::now()), None, None];
        let connect = async {
            let conn = endpoint
                .connect_with(
                    self.client_config
                        .clone()
                        .unwrap_or_else(|| self.shared.client_config.clone()),
                    self.shared.coordinator,
                    trust::SERVER_NAME,
                )
                .map_err(|e| format!("connect: {e}"))?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, conn)
                .await
                .map_err(|_| "connect: no answer to the QUIC handshake".to_owned())?
                .map_err(|e| format!("connect: {e}"))?;
            let (send, recv, id) = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.hello(&conn))
                .await
                .map_err(|_| "no Welcome in time".to_owned())??;
            Ok::<_, String>((conn, send, recv, id))
        };
        let (conn, mut send, recv, id) = tokio::select! {
            r = connect => match r {
                Ok(v) => v,
                Err(e) => {
                    self.shared.count(&self.shared.counters.failed_connects, 1);
                    return End::NotConnected(e);
                }
            },
            cmd = cmds.recv() => return match cmd {
                Some(Cmd::Kill) => End::Killed,
                Some(Cmd::Stop) | None => End::Stopped,
            },
        };
        self.previous_id = Some(id);
        self.view.id.store(u64::from(id) + 1, Ordering::SeqCst);
        self.view.sessions.fetch_add(1, Ordering::SeqCst);
        self.shared.count(&self.shared.counters.welcomes, 1);
        self.steps[1] = Some(Instant::now());

        let (tx, mut rx) = mpsc::channel(1024);
        let mut reader = tokio::spawn(read_loop(recv, tx));
        let end = match self.greet(&mut send).await {
            Err(e) => End::Lost(e),
            Ok(()) => {
                self.serve(&conn, &mut send, &mut rx, &mut reader, cmds)
                    .await
            }
        };
        match end {
            End::Stopped => {
                let _ = send.finish();
                conn.close(VarInt::from_u32(close_code::NORMAL), b"simulation over");
            }
            End::Killed => {}
            End::Lost(_) | End::NotConnected(_) => {
                conn.close(VarInt::from_u32(close_code::NORMAL), b"reconnecting")
            }
        }
        reader.abort();
        end
    }

    /// `Hello` → `Welcome`: the streams and the worker id. A certificate the coordinator
    /// issues is presented from the next connection on, as a real worker does.
    async fn hello(
        &mut self,
        conn: &quinn::Connection,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, u32), String> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let hs = ClientHandshake::new(Hello {
            protocol: PROTOCOL_VERSION,
            secret: self.shared.token.secret.clone(),
            uuid: self.uuid,
            previous_id: self.previous_id,
            name: self.name.clone(),
            weight: 1.0,
            software: format!("gitmirror-sim {}", env!("CARGO_PKG_VERSION")),
            serve_url_base: None,
        });
        let frame = hs.hello_frame().map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        let body = frames::read(&mut recv, MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the coordinator ended the stream before Welcome".to_owned())?;
        let welcomed = hs.on_reply(&body).map_err(|e| e.to_string())?;
        if let Some(e) = welcomed.enrolled {
            let cert = trust::WorkerCert {
                cert_pem: e.cert_pem,
                key_pem: e.key_pem,
            };
            let config = trust::transport(KEEPALIVE, IDLE_TIMEOUT)
                .and_then(|t| trust::client_config(&self.shared.token, Some(&cert), t))
                .map_err(|e| format!("the issued certificate: {e:#}"))?;
            self.client_config = Some(config);
        }
        Ok((send, recv, welcomed.welcome.worker_id))
    }

    /// After `Welcome`: `Holdings`, a `Status`, then every unacknowledged outcome again.
    async fn greet(&mut self, send: &mut quinn::SendStream) -> Result<(), String> {
        // A new connection: nothing applied on it yet (the share stays until then).
        self.budget.seen = 0;
        self.budget.last = None;
        let held: Vec<HeldRepo> = self
            .held
            .iter()
            .map(|&r| HeldRepo {
                id: repo_id(r),
                url: repo_url(r),
                mirrored: self.slots.get(&r).is_some_and(|s| s.mirrored),
            })
            .collect();
        // In bounded parts, as the real worker sends them (protocol 3).
        for part in gitmirror_wire::holdings_parts(held) {
            write(send, &part).await?;
        }
        let status = WorkerStatus {
            disk_free_bytes: 1 << 40,
            disk_total_bytes: 2 << 40,
            disk_low: false,
            active_fetches: 0,
            summary: "simulated".into(),
        };
        write(send, &WorkerMsg::Status(status)).await?;
        for msg in gitmirror_wire::outcome_frames(self.outbox.iter().cloned()) {
            write(send, &msg).await?;
        }
        self.steps[2] = Some(Instant::now());
        Ok(())
    }

    async fn serve(
        &mut self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        rx: &mut mpsc::Receiver<CoordMsg>,
        reader: &mut tokio::task::JoinHandle<String>,
        cmds: &mut mpsc::Receiver<Cmd>,
    ) -> End {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget_tick = tokio::time::interval(BUDGET_TICK);
        budget_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.last_tick = Instant::now();
        loop {
            // Outside the budget phase the tick stays unpolled: 1,000 workers waking 40
            // times a second took CPU from the coordinator they measure. The outcome tick
            // wakes the loop within 50 ms of the phase setting a demand.
            let budgeting = self.budget.share.is_some()
                || self.budget.seen > 0
                || !self.budget.running.is_empty()
                || self.shared.budget.demand.load(Ordering::Relaxed) > 0;
            tokio::select! {
                _ = budget_tick.tick(), if budgeting => {
                    if let Err(e) = self.budget_turn(send, false).await {
                        return End::Lost(e);
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else {
                        let why = reader.await.unwrap_or_else(|e| e.to_string());
                        return End::Lost(conn.close_reason().map_or(why, |r| r.to_string()));
                    };
                    if let Err(e) = self.on_msg(msg, send).await {
                        return End::Lost(e);
                    }
                }
                _ = tick.tick() => {
                    let made = self.produce();
                    for chunk in made.chunks(BATCH) {
                        let batch = OutcomeBatch { outcomes: chunk.to_vec() };
                        if let Err(e) = write(send, &WorkerMsg::Outcomes(batch)).await {
                            return End::Lost(e);
                        }
                    }
                }
                cmd = cmds.recv() => return match cmd {
                    Some(Cmd::Kill) => End::Killed,
                    Some(Cmd::Stop) | None => End::Stopped,
                },
            }
        }
    }

    async fn on_msg(&mut self, msg: CoordMsg, send: &mut quinn::SendStream) -> Result<(), String> {
        match msg {
            CoordMsg::Assign(_) | CoordMsg::Assign7(_) => {
                let delta = match msg {
                    CoordMsg::Assign7(d) => d.plain(),
                    CoordMsg::Assign(d) => d,
                    _ => return Ok(()),
                };
                let seq = delta.seq;
                self.apply(delta);
                write(send, &WorkerMsg::AssignAck { seq }).await?;
                if !self.synced {
                    let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                        (Some(a), Some(b)) => b.saturating_duration_since(a).as_millis(),
                        _ => 0,
                    };
                    let [connect, welcomed, greeted] = self.steps;
                    tracing::debug!(
                        worker = %self.name,
                        welcome_ms = ms(connect, welcomed),
                        greet_ms = ms(welcomed, greeted),
                        assign_ms = ms(greeted, Some(Instant::now())),
                        "synced"
                    );
                    self.synced = true;
                    self.view.synced.store(true, Ordering::SeqCst);
                    self.shared.synced_add(1);
                }
            }
            CoordMsg::OutcomeAck { upto } => self.acked(upto),
            // A simulated fetch is instant; the next tick reports the repo anyway.
            CoordMsg::FetchNow { .. } | CoordMsg::Relist { .. } => {}
            // A simulated worker keeps no ref names: answered at once, so no query hangs.
            CoordMsg::RefsQuery(q) => {
                let why = "a simulated worker keeps no ref names".to_owned();
                let page = gitmirror_wire::refs_page::error(&q, why);
                write(send, &WorkerMsg::RefsPage(page)).await?;
            }
            CoordMsg::HostBudgets(b) => {
                self.budget.share = b
                    .limits
                    .iter()
                    .find(|l| l.host == BUDGET_HOST)
                    .and_then(|l| l.connections);
                self.budget.seen = b.seq;
                self.budget_turn(send, true).await?;
            }
            // Protocol 7 (SPEC §13): a simulated worker copies nothing from peers.
            CoordMsg::PeerPlane(_) | CoordMsg::PeerDirectory(_) | CoordMsg::PeerGrants(_) => {}
            CoordMsg::Welcome(_) | CoordMsg::Refused(_) | CoordMsg::Enrolled(_) => {
                return Err("the coordinator repeated its handshake answer".into());
            }
        }
        Ok(())
    }

    /// The `budget` phase: end the fetches whose time is up, start what the share and
    /// the per-host limit allow, and report the demand when it changed (or `force`: the
    /// acknowledgement of a `HostBudgets`).
    async fn budget_turn(
        &mut self,
        send: &mut quinn::SendStream,
        force: bool,
    ) -> Result<(), String> {
        let shared = self.shared.clone();
        let counters = &shared.budget;
        let now = Instant::now();
        let before = self.budget.running.len();
        self.budget.running.retain(|end| *end > now);
        for _ in self.budget.running.len()..before {
            counters.end();
        }
        let demand = counters.demand.load(Ordering::SeqCst) as usize;
        let share = self.budget.share.unwrap_or(0) as usize;
        while self.budget.running.len() < demand.min(share).min(PER_HOST) {
            // 100–600 ms a fetch, spread by a cheap hash of this worker and a counter.
            self.budget.n += 1;
            let h = (self.uuid.as_u128() as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(self.budget.n.wrapping_mul(0xbf58_476d_1ce4_e5b9));
            let ms = 100 + (h >> 33) % 500;
            self.budget.running.push(now + Duration::from_millis(ms));
            counters.start();
            if !self.budget.served {
                self.budget.served = true;
                counters.workers_served.fetch_add(1, Ordering::SeqCst);
            }
        }
        if self.budget.share.is_none() && self.budget.seen == 0 {
            return Ok(());
        }
        let running = u32::try_from(self.budget.running.len()).unwrap_or(u32::MAX);
        let d = HostDemand {
            seen: self.budget.seen,
            hosts: vec![HostLoad {
                host: BUDGET_HOST.into(),
                due: u32::try_from(demand)
                    .unwrap_or(u32::MAX)
                    .saturating_sub(running),
                running,
                started_last_minute: 0,
                share: self.budget.share,
            }],
        };
        let same = self
            .budget
            .last
            .as_ref()
            .is_some_and(|(l, at)| *l == d && at.elapsed() < Duration::from_secs(5));
        if force || !same {
            write(send, &WorkerMsg::HostDemand(d.clone())).await?;
            self.budget.last = Some((d, now));
        }
        Ok(())
    }

    fn apply(&mut self, delta: AssignDelta) {
        let c = &self.shared.counters;
        self.shared.count(&c.deltas, 1);
        self.shared.count(&c.upserts, delta.upsert.len() as u64);
        self.shared.count(&c.drops, delta.drop.len() as u64);
        for spec in delta.upsert {
            let Some(r) = repo_number(&spec.id).filter(|&r| r < self.shared.repos) else {
                self.shared.count(&c.unknown_repos, 1);
                continue;
            };
            if self.slots.contains_key(&r) {
                continue; // a new URL for a repo held: nothing to simulate
            }
            self.slots.insert(
                r,
                Slot {
                    pos: self.held.len(),
                    mirrored: false,
                },
            );
            self.held.push(r);
            self.to_clone.push_back(r);
            self.shared.hold(r);
            self.shared.unmirrored_add(1);
        }
        for order in delta.drop {
            let Some(r) = repo_number(&order.id) else {
                self.shared.count(&c.unknown_repos, 1);
                continue;
            };
            let Some(slot) = self.slots.remove(&r) else {
                continue;
            };
            self.held.swap_remove(slot.pos);
            if let Some(&moved) = self.held.get(slot.pos)
                && let Some(s) = self.slots.get_mut(&moved)
            {
                s.pos = slot.pos;
            }
            if !slot.mirrored {
                self.shared.unmirrored_add(-1);
            }
            self.shared.release(r);
        }
        self.view.held.store(self.held.len(), Ordering::SeqCst);
    }

    fn acked(&mut self, upto: u64) {
        let mut n = 0u64;
        let (mut clones, mut changes) = (0u64, 0u64);
        while self.outbox.front().is_some_and(|o| o.report_id <= upto) {
            if let Some(o) = self.outbox.pop_front() {
                n += 1;
                match o.result {
                    FetchResult::Cloned => clones += 1,
                    _ if !o.changes.is_empty() => changes += 1,
                    _ => {}
                }
            }
        }
        let c = &self.shared.counters;
        self.shared.count(&c.outcomes_acked, n);
        self.shared.count(&c.clones_acked, clones);
        self.shared.count(&c.changes_acked, changes);
        self.shared.outstanding_add(-(n as i64));
    }

    /// The outcomes due now: clones first (unpaced), then fetches at the swarm's rate,
    /// both within the window of unacknowledged outcomes.
    fn produce(&mut self) -> Vec<Outcome> {
        let now = Instant::now();
        let dt = now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        let mut room = self.shared.window.saturating_sub(self.outbox.len());
        let mut made = Vec::new();
        while room > 0 {
            let Some(r) = self.to_clone.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&r) else {
                continue; // dropped before it was cloned
            };
            if slot.mirrored {
                continue;
            }
            slot.mirrored = true;
            self.shared.unmirrored_add(-1);
            let v = self.shared.version(r);
            let id = object_id(r, v);
            let change = RefChange {
                name: REF.into(),
                old: None,
                new: Some(id.clone()),
            };
            made.push(self.outcome(r, FetchResult::Cloned, vec![change], &id));
            self.shared.clone_sent();
            room -= 1;
        }

        let rate = self.shared.per_worker_rate();
        if rate > 0.0 && !self.held.is_empty() {
            // At most one second's worth saved up, so a stall is not followed by a burst.
            self.credit = (self.credit + rate * dt).min(rate.max(1.0));
            let due = self.credit.floor() as usize;
            let n = due.min(room);
            self.credit -= due as f64;
            self.shared
                .count(&self.shared.counters.throttled, (due - n) as u64);
            let share = self.shared.change_share();
            for _ in 0..n {
                let r = self.held[self.cursor % self.held.len()];
                self.cursor = self.cursor.wrapping_add(1);
                if !self.slots.get(&r).is_some_and(|s| s.mirrored) {
                    continue;
                }
                if rand::random::<f64>() < share {
                    let (old, new) = self.shared.change(r);
                    let id = object_id(r, new);
                    let change = RefChange {
                        name: REF.into(),
                        old: Some(object_id(r, old)),
                        new: Some(id.clone()),
                    };
                    made.push(self.outcome(r, FetchResult::Fetched, vec![change], &id));
                } else {
                    let id = object_id(r, self.shared.version(r));
                    made.push(self.outcome(r, FetchResult::Fetched, Vec::new(), &id));
                }
            }
        }
        self.shared
            .count(&self.shared.counters.outcomes_sent, made.len() as u64);
        self.shared.outstanding_add(made.len() as i64);
        self.outbox.extend(made.iter().cloned());
        made
    }

    fn outcome(
        &mut self,
        r: u32,
        result: FetchResult,
        changes: Vec<RefChange>,
        id: &str,
    ) -> Outcome {
        let report_id = self.next_report_id;
        self.next_report_id += 1;
        let now = gitmirror_common::now_ms();
        Outcome {
            report_id,
            repo: repo_id(r),
            url: repo_url(r),
            finished_ms: now,
            duration_ms: 5,
            result,
            changes,
            ref_count: 1,
            refs_digest: gitmirror_wire::refs::digest([(REF, id)]),
            next_due_ms: now + 60_000,
        }
    }
}

async fn write(send: &mut quinn::SendStream, msg: &WorkerMsg) -> Result<(), String> {
    frames::write(send, msg)
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Forward coordinator messages until the stream ends; returns why it ended.
async fn read_loop(mut recv: quinn::RecvStream, tx: mpsc::Sender<CoordMsg>) -> String {
    let mut session = FromCoordinator::new();
    loop {
        let body = match frames::read(&mut recv, MAX_FRAME).await {
            Ok(Some(b)) => b,
            Ok(None) => return "the coordinator ended the stream".into(),
            Err(e) => return e.to_string(),
        };
        let msg = match session.on_frame(&body) {
            Ok(m) => m,
            Err(e) => return format!("protocol error: {e}"),
        };
        if tx.send(msg).await.is_err() {
            return "worker stopping".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_round_trip() {
        let id = object_id(123_456, 7);
        assert_eq!(id.len(), 40);
        assert_eq!(parse_object_id(&id), Some((123_456, 7)));
        assert_eq!(parse_object_id("zz"), None);
    }
}
