//! `GET /api/repos/{id}/refs?after=&limit=` (SPEC §12 "Event retention"): a page of a
//! repo's refs as its holder last reported them.
//!
//! The coordinator keeps digests, not ref names, so the main loop asks the worker holding a
//! mirror (the owner, or a holder with a complete mirror while the owner has none yet) with
//! a `RefsQuery` and leaves the waiting to the HTTP task: [`RefsQueries`] keeps query id →
//! reply channel, answered when the `RefsPage` arrives or the worker disconnects, and
//! forgotten at the next query once the HTTP side stopped waiting ([`DEADLINE`], then
//! `504`). The loop never waits, and keeps at most [`MAX_PENDING`] queries (a quarter of
//! the HTTP connection slots).

use crate::api::{Answer, Reply};
use crate::fleet::Fleet;
use gitmirror_wire::refs_page::{self, MAX_REFS_LIMIT};
use gitmirror_wire::{CoordMsg, RefEntry, RefsPage, RefsQuery};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

/// `limit` when none is given.
pub const DEFAULT_LIMIT: u32 = 1000;
/// How long the HTTP side waits for the worker's page.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Queries waiting at once: a quarter of the HTTP connection slots, so requests held by
/// slow workers leave the rest of the API its slots.
pub const MAX_PENDING: usize = crate::http::MAX_CONNECTIONS / 4;

/// What the HTTP side asks the main loop.
#[derive(Debug, Clone, PartialEq)]
pub struct RefsRequest {
    pub repo: String,
    pub after: Option<String>,
    pub limit: u32,
}

impl RefsRequest {
    /// From the request's `after` and `limit` parameters; a bad `limit` is a `400`
    /// naming it.
    pub fn parse(repo: String, after: Option<&str>, limit: Option<&str>) -> Result<Self, Answer> {
        let limit = match limit {
            None | Some("") => DEFAULT_LIMIT,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_REFS_LIMIT).contains(&n) => n,
                _ => {
                    return Err(Answer::error(
                        400,
                        &format!("limit={v:?} is not a number from 1 to {MAX_REFS_LIMIT}"),
                    ));
                }
            },
        };
        Ok(Self {
            repo,
            after: after.filter(|a| !a.is_empty()).map(str::to_owned),
            limit,
        })
    }
}

/// The answer's JSON.
#[derive(Debug, Serialize)]
pub struct RefsAnswer {
    pub repo: String,
    /// Id of the worker whose refs these are.
    pub worker: u32,
    pub refs: Vec<RefEntry>,
    /// `after=` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// The worker to ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub uuid: Uuid,
    pub id: u32,
    /// `worker 3 (name)`, for answers and logs.
    pub label: String,
}

/// Whom to ask for `repo`'s refs: the owner when it has a complete mirror, else another
/// holder that has one; only connected workers of protocol 3 or later, which know the
/// question. `404` for an unknown repo, `503` when no such holder is connected.
pub fn target(
    fleet: &Fleet,
    repo: &str,
    connected: impl Fn(&Uuid) -> bool,
) -> Result<Target, Answer> {
    let Some(r) = fleet.repo(repo) else {
        return Err(Answer::error(
            404,
            &format!("no repo {repo:?} in any index"),
        ));
    };
    let owner = r.owner;
    // Owner first; the holders are one or two.
    let mut candidates: Vec<Uuid> = owner.into_iter().collect();
    candidates.extend(r.holders.keys().filter(|h| Some(**h) != owner).copied());
    let mut old_protocol = None;
    for uuid in candidates {
        if r.holders.mirrored(&uuid) != Some(true) || !connected(&uuid) {
            continue;
        }
        let Some(w) = fleet.worker(&uuid) else {
            continue;
        };
        let label = format!("worker {} ({})", w.id, w.name);
        if w.protocol < 3 {
            old_protocol.get_or_insert((label, w.protocol));
            continue;
        }
        return Ok(Target {
            uuid,
            id: w.id,
            label,
        });
    }
    let why = match old_protocol {
        Some((label, p)) => format!(
            "{label} holds {repo} but speaks protocol {p}, which cannot list refs; upgrade it"
        ),
        None => format!("no connected worker holds a complete mirror of {repo}"),
    };
    Err(Answer::error(503, &why))
}

struct Pending {
    uuid: Uuid,
    worker: u32,
    label: String,
    query: RefsQuery,
    reply: oneshot::Sender<Reply>,
    asked: Instant,
}

/// Queries sent to workers and not answered yet.
#[derive(Default)]
pub struct RefsQueries {
    /// The id of the next query; every id below it was sent once.
    next: u64,
    pending: HashMap<u64, Pending>,
}

impl RefsQueries {
    /// Register a query to `t`: the message to send it, and the reply for the HTTP side,
    /// which waits at most [`DEADLINE`] and then answers `504` naming the worker.
    pub fn ask(
        &mut self,
        t: &Target,
        req: RefsRequest,
        now: Instant,
    ) -> Result<(CoordMsg, Reply), Answer> {
        self.expire(now);
        if self.pending.len() >= MAX_PENDING {
            return Err(Answer::error(
                503,
                &format!("{MAX_PENDING} refs queries are waiting for workers already; try again"),
            )
            .with_header("Retry-After", "1"));
        }
        let id = self.next;
        self.next += 1;
        let query = RefsQuery {
            query: id,
            repo: req.repo,
            after: req.after,
            limit: req.limit,
        };
        let (reply, answer) = oneshot::channel();
        self.pending.insert(
            id,
            Pending {
                uuid: t.uuid,
                worker: t.id,
                label: t.label.clone(),
                query: query.clone(),
                reply,
                asked: now,
            },
        );
        let late = Answer::json(
            504,
            &serde_json::json!({
                "error": format!(
                    "{} did not send the refs of {} within {}s",
                    t.label,
                    query.repo,
                    DEADLINE.as_secs()
                ),
                "worker": t.id,
            }),
        );
        Ok((
            CoordMsg::RefsQuery(query),
            Reply::Await {
                answer,
                deadline: DEADLINE,
                late,
            },
        ))
    }

    /// A `RefsPage` from `uuid`. `Err` says why it breaks the protocol (the caller closes
    /// that connection): a query never sent, or sent to another worker, or a page that is
    /// not an answer to it ([`refs_page::check`]). A page for a query that was answered or
    /// given up on already is dropped.
    pub fn answer(&mut self, uuid: Uuid, page: RefsPage) -> Result<(), String> {
        let Some(p) = self.pending.get(&page.query) else {
            if page.query < self.next {
                tracing::debug!(
                    query = page.query,
                    "a refs page after its query was given up"
                );
                return Ok(());
            }
            return Err(format!(
                "a refs page for query {}, which was never sent",
                page.query
            ));
        };
        if p.uuid != uuid {
            return Err(format!(
                "a refs page for query {}, which was sent to {}",
                page.query, p.label
            ));
        }
        refs_page::check(&p.query, &page)?;
        let Some(p) = self.pending.remove(&page.query) else {
            return Ok(());
        };
        let reply = match page.error {
            Some(why) => Reply::Ready(Answer::json(
                503,
                &serde_json::json!({
                    "error": format!("{}: {}", p.label, refs_page::short(&why)),
                    "worker": p.worker,
                }),
            )),
            // Encoded by the HTTP task, off the loop.
            None => Reply::json(
                200,
                RefsAnswer {
                    repo: page.repo,
                    worker: p.worker,
                    refs: page.refs,
                    next: page.next,
                },
            ),
        };
        let _ = p.reply.send(reply);
        Ok(())
    }

    /// `uuid`'s connection ended: its queries get `503` now rather than a `504` later.
    /// O(pending), at most [`MAX_PENDING`].
    pub fn lost(&mut self, uuid: Uuid) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.uuid == uuid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(p) = self.pending.remove(&id) {
                let a = Answer::json(
                    503,
                    &serde_json::json!({
                        "error": format!("{} disconnected before it sent the refs", p.label),
                        "worker": p.worker,
                    }),
                );
                let _ = p.reply.send(Reply::Ready(a));
            }
        }
    }

    /// Forget queries the HTTP side no longer waits for. O(pending).
    pub fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| !p.reply.is_closed() && now.duration_since(p.asked) <= DEADLINE);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests;
