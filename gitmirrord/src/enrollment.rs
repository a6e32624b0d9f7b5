//! Who may speak for a worker uuid (SPEC §17; design.md "Per-worker certificates").
//!
//! The join token *enrolls*: a worker without a certificate that knows the secret gets one
//! from the fleet's CA naming its uuid ([`gitmirror_common::ca`]). From then on only that
//! certificate speaks for the uuid: the registry keeps its fingerprint, a connection
//! presenting another (or none) is refused, and removing the worker forgets the
//! fingerprint, which revokes it. Workers of protocols 2 and 3 cannot enroll; one whose
//! uuid is not enrolled is admitted by the token as before ("legacy"), and its first
//! protocol-4 connection enrolls it.
//!
//! Pure: [`decide`] maps what the registry knows about a uuid and what the connection
//! proved to a decision; [`Pending`] is the bounded list of workers waiting for a person's
//! approval under `enroll: manual`.

use gitmirror_wire::{RefuseCode, close_code};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Coordinator key `enroll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A valid join token enrolls a new worker.
    #[default]
    Auto,
    /// A new worker waits, listed as pending, until `gitmirrord workers approve UUID`.
    Manual,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "manual" => Some(Self::Manual),
            _ => None,
        }
    }
}

/// What the registry knows about a uuid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing<'a> {
    /// Never seen (or forgotten).
    Unknown,
    /// Registered before certificates (or by a protocol 2/3 worker): no fingerprint yet.
    Legacy,
    /// Issued the certificate with this fingerprint, which the worker has not shown yet
    /// that it kept: it speaks for the uuid, and the token may still enroll it again.
    Enrolling(&'a str),
    /// Enrolled: only the certificate with this fingerprint speaks for it.
    Enrolled(&'a str),
    /// Removed by an operator: nothing speaks for it until it is approved again.
    Removed,
}

/// What the connection proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker<'a> {
    /// A certificate of the fleet's CA (TLS checked the signature), with this fingerprint.
    Certificate(&'a str),
    /// The join secret, no certificate.
    Token,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit under the standing it has.
    Admit,
    /// Admit, and issue it a certificate (protocol 4, by the join token).
    Enroll,
    /// List it as pending and refuse for now.
    Pending,
    /// Refuse with this code, close code and message.
    Refuse {
        code: RefuseCode,
        close: u32,
        message: String,
    },
}

/// The first protocol that can enroll.
pub const ENROLLING_PROTOCOL: u32 = 4;

/// Decide who may speak for `uuid`. `approved`: an operator ran `workers approve` for it
/// since it last enrolled.
pub fn decide(
    uuid: Uuid,
    standing: Standing<'_>,
    speaker: Speaker<'_>,
    protocol: u32,
    mode: Mode,
    approved: bool,
) -> Decision {
    let refuse = |code, close, message: String| Decision::Refuse {
        code,
        close,
        message,
    };
    match speaker {
        Speaker::Certificate(fp) => match standing {
            Standing::Enrolled(known) | Standing::Enrolling(known) if known == fp => {
                Decision::Admit
            }
            Standing::Removed => refuse(
                RefuseCode::Revoked,
                close_code::REVOKED,
                format!(
                    "worker {uuid} was removed from the fleet and its certificate revoked; \
                     `gitmirrord workers approve {uuid}` lets it enroll again"
                ),
            ),
            _ => refuse(
                RefuseCode::Revoked,
                close_code::REVOKED,
                format!(
                    "the certificate this worker presented is not the one enrolled for uuid \
                     {uuid} (revoked, or the coordinator's state is older than it); \
                     `gitmirrord workers approve {uuid}` lets it enroll again with the join token"
                ),
            ),
        },
        Speaker::Token => match standing {
            Standing::Enrolled(_) | Standing::Removed if approved => enroll(protocol),
            Standing::Enrolled(_) => refuse(
                RefuseCode::Enrolled,
                close_code::ENROLLED,
                format!(
                    "worker {uuid} is enrolled: only its certificate speaks for it, not the join \
                     token. If this is that worker and it lost its certificate (its state dir), \
                     `gitmirrord workers approve {uuid}` lets it enroll again"
                ),
            ),
            Standing::Removed => refuse(
                RefuseCode::Revoked,
                close_code::REVOKED,
                format!(
                    "worker {uuid} was removed from the fleet; `gitmirrord workers approve \
                     {uuid}` lets it enroll again"
                ),
            ),
            // A worker that may never have received its certificate enrolls again.
            Standing::Legacy | Standing::Enrolling(_) => enroll(protocol),
            Standing::Unknown if approved || mode == Mode::Auto => enroll(protocol),
            Standing::Unknown => Decision::Pending,
        },
    }
}

/// A protocol-4 worker gets a certificate; an older one is admitted by the token as before.
fn enroll(protocol: u32) -> Decision {
    if protocol >= ENROLLING_PROTOCOL {
        Decision::Enroll
    } else {
        Decision::Admit
    }
}

/// The refusal a pending worker gets.
pub fn pending_message(uuid: Uuid) -> String {
    format!(
        "this coordinator enrolls new workers only once a person approves them (enroll: \
         manual): run `gitmirrord workers approve {uuid}` on the coordinator; this worker \
         keeps trying"
    )
}

/// A worker waiting for approval, as `GET /api/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingWorker {
    pub uuid: Uuid,
    pub name: String,
    pub addr: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub attempts: u64,
}

/// Workers waiting for approval: bounded, the one seen least recently goes first. Not
/// persisted: a waiting worker keeps trying, so it is back within its retry interval.
#[derive(Debug, Default)]
pub struct Pending {
    workers: BTreeMap<Uuid, PendingWorker>,
}

/// At most this many pending workers are listed (a token holder could otherwise fill
/// memory with made-up uuids).
pub const MAX_PENDING: usize = 1000;
const MAX_NAME: usize = 200;

impl Pending {
    pub fn note(&mut self, uuid: Uuid, name: &str, addr: &str, now_ms: i64) {
        if let Some(p) = self.workers.get_mut(&uuid) {
            p.last_seen_ms = now_ms;
            p.attempts += 1;
            p.addr = addr.to_owned();
            return;
        }
        if self.workers.len() >= MAX_PENDING
            && let Some(stalest) = self
                .workers
                .values()
                .min_by_key(|p| (p.last_seen_ms, p.uuid))
                .map(|p| p.uuid)
        {
            self.workers.remove(&stalest);
        }
        self.workers.insert(
            uuid,
            PendingWorker {
                uuid,
                name: crate::registry::bounded(name, MAX_NAME),
                addr: addr.to_owned(),
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                attempts: 1,
            },
        );
    }

    pub fn remove(&mut self, uuid: &Uuid) -> Option<PendingWorker> {
        self.workers.remove(uuid)
    }

    pub fn contains(&self, uuid: &Uuid) -> bool {
        self.workers.contains_key(uuid)
    }

    pub fn list(&self) -> Vec<PendingWorker> {
        self.workers.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: Uuid = Uuid::from_u128(7);

    fn code(d: &Decision) -> Option<RefuseCode> {
        match d {
            Decision::Refuse { code, .. } => Some(*code),
            _ => None,
        }
    }

    // SPEC §17 "An enrolled uuid cannot be enrolled again with the join token: only its
    // certificate speaks for it" (issue 10 finding 1: a token holder replaced a worker by
    // asserting its uuid).
    #[test]
    fn spec_17_only_the_enrolled_certificate_speaks_for_a_uuid() {
        let enrolled = Standing::Enrolled("fp-a");
        for p in [2, 3, 4] {
            for mode in [Mode::Auto, Mode::Manual] {
                let d = decide(U, enrolled, Speaker::Token, p, mode, false);
                assert_eq!(
                    code(&d),
                    Some(RefuseCode::Enrolled),
                    "protocol {p} {mode:?}"
                );
            }
        }
        assert_eq!(
            decide(
                U,
                enrolled,
                Speaker::Certificate("fp-a"),
                4,
                Mode::Auto,
                false
            ),
            Decision::Admit
        );
        let other = decide(
            U,
            enrolled,
            Speaker::Certificate("fp-b"),
            4,
            Mode::Auto,
            false,
        );
        assert_eq!(code(&other), Some(RefuseCode::Revoked));
        // A certificate of the CA for a uuid the registry does not know (a state restored
        // from an older backup, or a forged uuid in Hello) is refused too.
        for s in [Standing::Unknown, Standing::Legacy, Standing::Removed] {
            let d = decide(U, s, Speaker::Certificate("fp-a"), 4, Mode::Auto, false);
            assert_eq!(code(&d), Some(RefuseCode::Revoked), "{s:?}");
        }
    }

    // SPEC §17: a certificate sent but not yet shown to be kept (the coordinator may have
    // died while sending it) does not lock its worker out: the token enrolls it again,
    // and the certificate, if the worker did keep it, speaks for it too.
    #[test]
    fn spec_17_an_unconfirmed_enrollment_can_be_repeated() {
        let s = Standing::Enrolling("fp-a");
        assert_eq!(
            decide(U, s, Speaker::Token, 4, Mode::Manual, false),
            Decision::Enroll
        );
        assert_eq!(
            decide(U, s, Speaker::Certificate("fp-a"), 4, Mode::Auto, false),
            Decision::Admit
        );
        let other = decide(U, s, Speaker::Certificate("fp-b"), 4, Mode::Auto, false);
        assert_eq!(code(&other), Some(RefuseCode::Revoked));
    }

    // SPEC §17 `workers remove` revokes; `workers approve` lets the uuid enroll again.
    #[test]
    fn spec_17_removed_stays_out_until_approved() {
        let d = decide(U, Standing::Removed, Speaker::Token, 4, Mode::Auto, false);
        assert_eq!(code(&d), Some(RefuseCode::Revoked));
        assert!(
            matches!(d, Decision::Refuse { message, .. } if message.contains("workers approve"))
        );
        assert_eq!(
            decide(U, Standing::Removed, Speaker::Token, 4, Mode::Auto, true),
            Decision::Enroll
        );
        // A worker that lost its certificate enrolls again once approved.
        assert_eq!(
            decide(
                U,
                Standing::Enrolled("x"),
                Speaker::Token,
                4,
                Mode::Manual,
                true
            ),
            Decision::Enroll
        );
    }

    // SPEC §17 `enroll`: auto enrolls a new uuid, manual lists it as pending until approved.
    #[test]
    fn spec_17_enroll_modes() {
        assert_eq!(
            decide(U, Standing::Unknown, Speaker::Token, 4, Mode::Auto, false),
            Decision::Enroll
        );
        assert_eq!(
            decide(U, Standing::Unknown, Speaker::Token, 4, Mode::Manual, false),
            Decision::Pending
        );
        assert_eq!(
            decide(U, Standing::Unknown, Speaker::Token, 4, Mode::Manual, true),
            Decision::Enroll
        );
        assert_eq!(Mode::parse("manual"), Some(Mode::Manual));
        assert_eq!(Mode::parse("Manual"), None);
    }

    // SPEC §12 "Upgrades" with §17: a worker registered before certificates, or an older
    // worker, is admitted by the token while its uuid is not enrolled; its first protocol-4
    // connection enrolls it (whatever `enroll` says: it was admitted before).
    #[test]
    fn spec_12_legacy_workers_are_admitted_until_they_enroll() {
        for p in [2, 3] {
            assert_eq!(
                decide(U, Standing::Legacy, Speaker::Token, p, Mode::Manual, false),
                Decision::Admit
            );
            assert_eq!(
                decide(U, Standing::Unknown, Speaker::Token, p, Mode::Auto, false),
                Decision::Admit
            );
            assert_eq!(
                decide(U, Standing::Unknown, Speaker::Token, p, Mode::Manual, false),
                Decision::Pending
            );
        }
        assert_eq!(
            decide(U, Standing::Legacy, Speaker::Token, 4, Mode::Manual, false),
            Decision::Enroll
        );
    }

    #[test]
    fn pending_is_bounded_and_drops_the_stalest() {
        let mut p = Pending::default();
        for i in 0..MAX_PENDING as u128 {
            p.note(Uuid::from_u128(i), "w", "a", i as i64);
        }
        p.note(Uuid::from_u128(0), "w", "a", 5000);
        p.note(Uuid::from_u128(99_999), &"n".repeat(10_000), "a", 6000);
        assert_eq!(p.len(), MAX_PENDING);
        assert!(p.contains(&Uuid::from_u128(0)), "seen again: kept");
        assert!(!p.contains(&Uuid::from_u128(1)), "the stalest went");
        let newest = p.remove(&Uuid::from_u128(99_999)).unwrap();
        assert_eq!(newest.name.len(), MAX_NAME);
        assert_eq!(
            p.list()
                .iter()
                .find(|w| w.uuid == Uuid::from_u128(0))
                .unwrap()
                .attempts,
            2
        );
    }
}
