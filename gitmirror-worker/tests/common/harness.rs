//! Running the whole worker (`run`) against the test coordinator, with the worker's
//! messages collected on a channel so tests can wait on them with deadlines.

use super::coord::{FakeCoordinator, read_frame};
use gitmirror_common::units::FreeSpace;
use gitmirror_wire::{
    AssignDelta, CoordMsg, JoinToken, Outcome, RepoSpec, WorkerMsg, WorkerStatus, decode,
    encode_frame,
};
use gitmirror_worker::{DiskSection, FetchSection, WorkerConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub fn fetch_section(min_interval: Duration, max_interval: Duration) -> FetchSection {
    FetchSection {
        concurrency: 4,
        per_host_concurrency: 2,
        timeout: Duration::from_secs(60),
        min_interval,
        max_interval,
        ..FetchSection::default()
    }
}

pub fn config(
    coordinator: SocketAddr,
    token: JoinToken,
    root: &Path,
    fetch: FetchSection,
    min_free: FreeSpace,
) -> WorkerConfig {
    WorkerConfig::embedded(
        coordinator,
        token,
        root.join("repos"),
        root.join("state"),
        "test-worker".into(),
        1.0,
        fetch,
        DiskSection {
            min_free,
            ..DiskSection::default()
        },
        Some("git://mirror.example.org/".into()),
    )
    .unwrap()
}

pub struct Worker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn start(cfg: WorkerConfig) -> Worker {
    gitmirror_common::install_crypto_provider();
    let (stop, rx) = watch::channel(false);
    Worker {
        stop,
        task: tokio::spawn(gitmirror_worker::run(cfg, rx)),
    }
}

impl Worker {
    /// SPEC §11: a graceful stop within 10 s.
    pub async fn stop(self) {
        let t = Instant::now();
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stopped within 10 s")
            .unwrap()
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}

/// What the worker sent, one item per outcome, when it arrived.
#[derive(Debug)]
pub enum Event {
    Outcome(Instant, Outcome),
    Status(WorkerStatus),
    Other(WorkerMsg),
}

/// The coordinator's side of one accepted worker connection.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Event>,
    send: quinn::SendStream,
    _conn: quinn::Connection,
    seq: u64,
}

impl Inbox {
    pub async fn accept(coord: &FakeCoordinator, worker_id: u32) -> Self {
        let s = coord.accept(worker_id).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut recv = s.recv;
        tokio::spawn(async move {
            while let Some(body) = read_frame(&mut recv).await {
                let Ok(msg) = decode::<WorkerMsg>(&body) else {
                    break;
                };
                let now = Instant::now();
                let events: Vec<Event> = match msg {
                    WorkerMsg::Outcomes(b) => b
                        .outcomes
                        .into_iter()
                        .map(|o| Event::Outcome(now, o))
                        .collect(),
                    WorkerMsg::Outcomes7(b) => b
                        .outcomes
                        .into_iter()
                        .map(|o| Event::Outcome(now, o.outcome))
                        .collect(),
                    WorkerMsg::Status(st) => vec![Event::Status(st)],
                    other => vec![Event::Other(other)],
                };
                for e in events {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            rx,
            send: s.send,
            _conn: s.conn,
            seq: 0,
        }
    }

    pub async fn send(&mut self, msg: CoordMsg) {
        let frame = encode_frame(&msg).unwrap();
        self.send.write_all(&frame).await.unwrap();
    }

    /// Assign `(id, url)` pairs in one delta.
    pub async fn assign(&mut self, repos: &[(&str, &str)]) {
        self.seq += 1;
        let delta = AssignDelta {
            seq: self.seq,
            upsert: repos
                .iter()
                .map(|(id, url)| RepoSpec {
                    id: (*id).into(),
                    url: (*url).into(),
                })
                .collect(),
            drop: vec![],
        };
        self.send(CoordMsg::Assign(delta)).await;
    }

    /// The next event before `deadline`, if any.
    pub async fn next(&mut self, deadline: Instant) -> Option<Event> {
        tokio::time::timeout_at(deadline.into(), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next outcome that `pred` accepts within `within`; panics naming `what` if none.
    pub async fn outcome_where(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Outcome) -> bool,
    ) -> (Instant, Outcome) {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline).await {
                Some(Event::Outcome(t, o)) if pred(&o) => return (t, o),
                Some(_) => {}
                None => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Wait until each of `ids` has reported `Cloned`, in any order.
    pub async fn cloned(&mut self, ids: &[&str]) {
        let mut left: Vec<&str> = ids.to_vec();
        while !left.is_empty() {
            let (_, o) = self
                .outcome_where("the clones", Duration::from_secs(30), |o| {
                    o.result == gitmirror_wire::FetchResult::Cloned
                        && left.contains(&o.repo.as_str())
                })
                .await;
            left.retain(|id| *id != o.repo);
        }
    }

    /// Every outcome that arrives within `window`.
    pub async fn outcomes_during(&mut self, window: Duration) -> Vec<(Instant, Outcome)> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(e) = self.next(deadline).await {
            if let Event::Outcome(t, o) = e {
                out.push((t, o));
            }
        }
        out
    }

    /// The next status that `pred` accepts within `within`.
    pub async fn status_where(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&WorkerStatus) -> bool,
    ) -> WorkerStatus {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline).await {
                Some(Event::Status(s)) if pred(&s) => return s,
                Some(_) => {}
                None => panic!("timed out waiting for {what}"),
            }
        }
    }
}
