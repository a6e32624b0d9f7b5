//! Index polling (SPEC §3.3, §3.4) on a thread of its own: `Indexes::poll` runs git and
//! blocks, so it never runs on the async runtime. Each non-empty delta goes to the main
//! loop in order, in parts of at most [`PART_ENTRIES`]; the latest `GET /api/index` view
//! is kept for the HTTP side, with the number of polls per index and result for
//! `GET /metrics`.

use crate::index::{Delta, IndexError, IndexSource, IndexStatus, Indexes};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub enum IndexCmd {
    /// Poll every index now (SIGHUP).
    PollNow,
    /// Apply the held update of one index (`POST /api/index/{name}/accept`).
    Accept {
        name: String,
        reply: oneshot::Sender<Result<(), IndexError>>,
    },
    /// Replace the configured indexes (SIGHUP); the next poll applies them.
    SetSources(Vec<IndexSource>),
}

/// `(index, result)` → polls since start; result is `changed`, `unchanged` or `error`.
pub type PollCounts = BTreeMap<(String, String), u64>;

/// The handle the rest of the coordinator uses.
#[derive(Clone)]
pub struct IndexHandle {
    status: Arc<Mutex<Vec<IndexStatus>>>,
    polls: Arc<Mutex<PollCounts>>,
    cmds: Sender<IndexCmd>,
    /// The URL-substring search snapshot, rebuilt here when the index changes.
    urls: crate::url_search::SharedUrls,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the index poller has stopped")]
    Stopped,
    #[error("the index poller is busy (a poll is running); try again shortly")]
    Busy,
}

impl IndexHandle {
    pub fn status(&self) -> Vec<IndexStatus> {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Polls since start per index and result.
    pub fn polls(&self) -> PollCounts {
        self.polls
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The current URL search snapshot.
    pub fn urls(&self) -> Arc<crate::url_search::UrlIndex> {
        self.urls.get()
    }

    /// A handle with no poller behind it (for tests of the HTTP layer).
    pub fn detached() -> (Self, Receiver<IndexCmd>) {
        let (cmds, rx) = channel();
        (
            Self {
                status: Arc::new(Mutex::new(Vec::new())),
                polls: Arc::new(Mutex::new(BTreeMap::new())),
                cmds,
                urls: Default::default(),
            },
            rx,
        )
    }

    pub fn poll_now(&self) {
        let _ = self.cmds.send(IndexCmd::PollNow);
    }

    /// Replace the configured indexes; they apply at the next poll (ask for one with
    /// [`IndexHandle::poll_now`]).
    pub fn set_sources(&self, sources: Vec<IndexSource>) {
        let _ = self.cmds.send(IndexCmd::SetSources(sources));
    }

    pub async fn accept(&self, name: &str) -> Result<(), AcceptError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(IndexCmd::Accept {
                name: name.to_owned(),
                reply,
            })
            .map_err(|_| AcceptError::Stopped)?;
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(r)) => r.map_err(AcceptError::Index),
            Ok(Err(_)) => Err(AcceptError::Stopped),
            Err(_) => Err(AcceptError::Busy),
        }
    }
}

/// Start the poller thread. It stops when every [`IndexHandle`] is dropped or the main
/// loop stops taking deltas.
pub fn start(indexes: Indexes, deltas: mpsc::Sender<DeltaPart>) -> std::io::Result<IndexHandle> {
    let status = Arc::new(Mutex::new(indexes.status()));
    let polls = Arc::new(Mutex::new(BTreeMap::new()));
    let (cmds, rx) = channel();
    let urls = crate::url_search::SharedUrls::default();
    let handle = IndexHandle {
        status: status.clone(),
        polls: polls.clone(),
        cmds,
        urls: urls.clone(),
    };
    std::thread::Builder::new()
        .name("index-poller".into())
        .spawn(move || {
            index_urls(&indexes, &urls);
            poll_loop(indexes, rx, deltas, status, polls, urls)
        })?;
    Ok(handle)
}

/// Count the polls that happened between two status views: an index whose `last_poll`
/// moved (or every index, for a forced poll) was polled; its result is `error` when it
/// has an error now, `changed` when its commit moved, else `unchanged`.
fn count_polls(
    before: &[IndexStatus],
    after: &[IndexStatus],
    forced: bool,
    failed: bool,
    polls: &Mutex<PollCounts>,
) {
    let mut counts = polls.lock().unwrap_or_else(|e| e.into_inner());
    for a in after {
        let b = before.iter().find(|b| b.name == a.name);
        let polled =
            forced || a.last_poll.is_some() && b.map(|b| &b.last_poll) != Some(&a.last_poll);
        if !polled {
            continue;
        }
        let result = if failed || a.last_error.is_some() {
            "error"
        } else if b.map(|b| &b.commit) != Some(&a.commit) {
            "changed"
        } else {
            "unchanged"
        };
        *counts
            .entry((a.name.clone(), result.to_owned()))
            .or_insert(0) += 1;
    }
}

fn publish(indexes: &Indexes, status: &Mutex<Vec<IndexStatus>>) {
    let s = indexes.status();
    match status.lock() {
        Ok(mut g) => *g = s,
        Err(e) => *e.into_inner() = s,
    }
}

/// Rebuild the URL search snapshot from the effective entries (issue 16; O(repos), here
/// on the poller's thread, after each change).
fn index_urls(indexes: &Indexes, urls: &crate::url_search::SharedUrls) {
    let t = std::time::Instant::now();
    let u = crate::url_search::UrlIndex::build(indexes.entries());
    tracing::debug!(
        urls = u.len(),
        bytes = u.heap_bytes(),
        ms = t.elapsed().as_millis() as u64,
        "URL search index built"
    );
    urls.set(u);
}

/// What the poller sends the main loop: one part of an index change.
#[derive(Debug)]
pub struct DeltaPart {
    pub delta: Delta,
    /// The change's last part: the fleet has the whole index content once it is applied.
    pub last: bool,
    /// Its new entries' owners, scored on the way ([`crate::scorer`]).
    pub scored: Option<crate::scorer::Scored>,
}

/// The most entries one [`DeltaPart`] carries: the main loop applies a part in one turn
/// (65,536 new repos at 1,000 workers: ~0.3 s of scoring on two cores), and the workers
/// get the first assignments while later parts are applied.
pub const PART_ENTRIES: usize = 65_536;

/// Send a delta on, in parts; false when the main loop is gone.
fn forward(delta: Delta, deltas: &mpsc::Sender<DeltaPart>) -> bool {
    if delta.is_empty() {
        return true;
    }
    tracing::info!(
        "index update: {} added, {} changed, {} removed",
        delta.added.len(),
        delta.changed.len(),
        delta.removed.len()
    );
    let parts = delta.into_parts(PART_ENTRIES);
    let n = parts.len();
    parts.into_iter().enumerate().all(|(i, delta)| {
        deltas
            .blocking_send(DeltaPart {
                delta,
                last: i + 1 == n,
                scored: None,
            })
            .is_ok()
    })
}

fn poll_loop(
    mut indexes: Indexes,
    cmds: Receiver<IndexCmd>,
    deltas: mpsc::Sender<DeltaPart>,
    status: Arc<Mutex<Vec<IndexStatus>>>,
    polls: Arc<Mutex<PollCounts>>,
    urls: crate::url_search::SharedUrls,
) {
    loop {
        let wait = indexes.next_poll_in();
        let force = match cmds.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
            Ok(IndexCmd::PollNow) => true,
            Ok(IndexCmd::SetSources(sources)) => {
                indexes.set_sources(sources);
                publish(&indexes, &status);
                continue;
            }
            Ok(IndexCmd::Accept { name, reply }) => {
                let r = indexes.accept(&name);
                publish(&indexes, &status);
                let r = match r {
                    Ok(delta) => {
                        tracing::info!("held update of index {name} accepted");
                        let changed = !delta.is_empty();
                        if !forward(delta, &deltas) {
                            return;
                        }
                        if changed {
                            index_urls(&indexes, &urls);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
                continue;
            }
        };
        let before = indexes.status();
        let polled = indexes.poll(force);
        count_polls(&before, &indexes.status(), force, polled.is_err(), &polls);
        match polled {
            Ok(delta) => {
                publish(&indexes, &status);
                let changed = !delta.is_empty();
                if !changed {
                    tracing::debug!("indexes polled: no change");
                }
                if !forward(delta, &deltas) {
                    return;
                }
                // After the delta is on its way: the search lags the fleet by the build.
                if changed {
                    index_urls(&indexes, &urls);
                }
            }
            Err(e) => {
                publish(&indexes, &status);
                // The error may quote an index URL with a password (SPEC §9).
                tracing::error!("index poll failed: {}", crate::redact::text(&e.to_string()));
                // Do not spin on a persistent error.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
