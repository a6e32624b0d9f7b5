//! Message types. Append-only: see the crate documentation.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Worker → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// First message on a connection. Its first field is the protocol version, so that a
    /// peer of any version can read that much (see [`crate::handshake::peek_protocol`]).
    Hello(Hello),
    /// Sent right after `Welcome`, and whenever asked: every repo the worker holds a mirror
    /// of (or is cloning), so the coordinator can send the difference.
    Holdings(Holdings),
    /// Fetch outcomes since the last batch; resent until acknowledged.
    Outcomes(OutcomeBatch),
    /// Periodic summary of the worker's health.
    Status(WorkerStatus),
    /// The worker has applied every assignment delta up to and including `seq`.
    AssignAck { seq: u64 },
    /// Protocol 3: one part of the worker's holdings, in place of one big `Holdings`
    /// (see [`crate::chunk`]). The coordinator acts on the holdings when `last` arrives.
    HoldingsPart(HoldingsPart),
    /// Protocol 3: some of the ref changes of the outcome `report_id`, sent ahead of the
    /// `Outcomes` batch that carries it, so one outcome never has to fit in one frame.
    OutcomeChanges(OutcomeChanges),
    /// Protocol 3: the answer to [`CoordMsg::RefsQuery`] (see [`crate::refs_page`]).
    RefsPage(RefsPage),
    /// Protocol 5: the worker's fetch load and disk floor, sent with each `Status` (so at
    /// its bounded rate) and only when the coordinator's `Welcome` says protocol ≥ 5, for
    /// the coordinator's per-worker series (issue 16). Appended: workers of protocol 2–4
    /// never send it.
    Load(WorkerLoad),
    /// Protocol 6 (SPEC §18): this worker's demand and use of each limited host the
    /// coordinator's last `HostBudgets` named, sent when it changes (at most a few times a
    /// second) and only to a coordinator of protocol ≥ 6. Appended.
    HostDemand(HostDemand),
    /// Protocol 6 (SPEC §18): an upstream host answered with a rate limit (429, 503 with
    /// `Retry-After`, or exhausted rate-limit headers); sent at once, so the coordinator
    /// can pause the host for the whole fleet. Appended.
    RateLimited(RateLimitReport),
    /// Protocol 7 (SPEC §13): the worker's peer plane, sent right after `Welcome` and
    /// before the holdings (so the coordinator knows it before the first assignment), and
    /// only to a coordinator of protocol ≥ 7. A worker without `peer_listen` sends it too,
    /// with `port: None`. Appended.
    PeerInfo(PeerInfo),
    /// Protocol 7: outcomes with where the objects came from (C6). Replaces `Outcomes` on a
    /// connection of protocol ≥ 7; chunked and acknowledged the same way. Appended.
    Outcomes7(OutcomeBatch7),
    /// Protocol 8 (SPEC §14): the fork-pool state of repos that are not plain mirrors for
    /// no reason, in parts of at most [`crate::chunk::CHUNK_BYTES`]
    /// ([`crate::chunk::pool_state_parts`]): the whole list once after the holdings
    /// (`full` on its first part), then the repos whose state changed. Only to a
    /// coordinator of protocol ≥ 8. Appended.
    PoolStates(PoolStates),
    /// Protocol 8 (SPEC §14): the worker's pool totals, sent with each `Status` to a
    /// coordinator of protocol ≥ 8. Appended.
    PoolTotals(PoolTotals),
}

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordMsg {
    /// Answer to `Hello`: the worker is accepted under this id.
    Welcome(Welcome),
    /// Answer to `Hello`: the worker is refused; the connection closes after this.
    Refused(Refusal),
    /// A change to the worker's assignment.
    Assign(AssignDelta),
    /// Every outcome with `report_id <= upto` is durably recorded; the worker may forget them.
    OutcomeAck { upto: u64 },
    /// Fetch this repo now (an operator asked for it).
    FetchNow { repo: String },
    /// Protocol 3: fetch this repo now and report its refs in full, as changes from no
    /// refs. Sent to the owner when its refs differ from the ones the coordinator published
    /// in a way its changes do not explain (a report that predates a failover, or a mirror
    /// that saw what was never announced): see design.md "Published refs and relists".
    Relist { repo: String },
    /// Protocol 3: send one page of the refs last reported for a repo, for
    /// `GET /api/repos/{id}/refs` (SPEC §12): the coordinator keeps no ref names.
    RefsQuery(RefsQuery),
    /// Protocol 4: answer to a `Hello` that enrolled the worker with the join token (SPEC
    /// §17): `Welcome` plus the certificate the fleet's CA issued to its uuid, and its key.
    /// Every later connection of this worker presents that certificate. The worker stores
    /// it before it sends anything else: its first `Holdings` after `Enrolled` tells the
    /// coordinator it kept it, and from then on the token no longer speaks for its uuid.
    Enrolled(Enrolled),
    /// Protocol 6 (SPEC §18): the fleet-wide limits as they apply to this worker: its
    /// share of every limited host's budget and the hosts paused for the whole fleet. Each
    /// message replaces the previous one. Sent only to workers of protocol ≥ 6. Appended.
    HostBudgets(HostBudgets),
    /// Protocol 7 (SPEC §13): the fleet CA certificate, over the pinned channel, and how
    /// long peer grants stay valid after the worker lost the coordinator. Sent after
    /// `Welcome` to workers of protocol ≥ 7; the worker saves the certificate so its
    /// listener keeps working while the coordinator is away. Appended.
    PeerPlane(PeerPlane),
    /// Protocol 7: changes to the peers this worker is told to use (only those; never the
    /// whole fleet), in parts bounded by bytes ([`crate::chunk::directory_parts`]).
    /// Appended.
    PeerDirectory(PeerDirectory),
    /// Protocol 7: `Assign` with, per repo, the holders to copy from, the refs hash they
    /// must match, and when the first upstream fetch is due. Replaces `Assign` on a
    /// connection of protocol ≥ 7; acknowledged by `AssignAck` like it. Appended.
    Assign7(AssignDelta7),
    /// Protocol 7: which askers this holder may serve which repos to (C4). Appended.
    PeerGrants(PeerGrants),
}

/// `Debug` is written by hand: it must not print the join secret (issue 10 finding 5).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The join secret (the part of the token after the certificate hash).
    pub secret: String,
    /// Persisted identity of the worker.
    pub uuid: Uuid,
    /// The id this worker had last time, if any.
    pub previous_id: Option<u32>,
    pub name: String,
    pub weight: f64,
    /// Software version string, for the status API.
    pub software: String,
    /// Base URL under which this worker serves its mirrors (`serve_url_base`), if any.
    pub serve_url_base: Option<String>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let Hello {
            protocol,
            secret: _,
            uuid,
            previous_id,
            name,
            weight,
            software,
            serve_url_base,
        } = self;
        f.debug_struct("Hello")
            .field("protocol", protocol)
            .field("secret", &format_args!("<redacted>"))
            .field("uuid", uuid)
            .field("previous_id", previous_id)
            .field("name", name)
            .field("weight", weight)
            .field("software", software)
            .field("serve_url_base", serve_url_base)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub worker_id: u32,
    pub software: String,
}

/// `Debug` is written by hand: it must not print the key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    pub welcome: Welcome,
    /// The worker's certificate (PEM), naming its uuid, signed by the fleet's CA.
    pub cert_pem: String,
    /// Its private key (PEM), sent inside TLS; the worker keeps it mode 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("welcome", &self.welcome)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseCode {
    VersionMismatch,
    BadSecret,
    NoFreeId,
    ProtocolError,
    /// Protocol 4: the coordinator enrolls new workers only once a person approves them
    /// (`enroll: manual`); this one is listed as pending. Try again later.
    Pending,
    /// Protocol 4: the certificate presented is not (or no longer) the one enrolled for
    /// this uuid: the worker was removed, or the coordinator's state is older than it.
    Revoked,
    /// Protocol 4: the uuid is enrolled, so only its certificate speaks for it, not the
    /// join token.
    Enrolled,
}

impl RefuseCode {
    /// The code a worker of `protocol` can decode: the ones protocol 4 added read as
    /// `BadSecret` (the nearest meaning) by older workers.
    pub fn for_protocol(self, protocol: u32) -> Self {
        match self {
            Self::Pending | Self::Revoked | Self::Enrolled if protocol < 4 => Self::BadSecret,
            c => c,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefuseCode,
    /// One line for the worker's log, e.g. naming both protocol versions.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holdings {
    pub repos: Vec<HeldRepo>,
}

/// A part of the holdings (protocol 3). Parts arrive in order; the last has `last: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldingsPart {
    pub repos: Vec<HeldRepo>,
    pub last: bool,
}

/// Ref changes of one outcome sent ahead of it (protocol 3). The outcome's own `changes`
/// are the final part; parts of one outcome are contiguous and the batch holding that
/// outcome follows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeChanges {
    pub report_id: u64,
    pub changes: Vec<RefChange>,
}

/// A question for the refs of one repo (protocol 3), answered by a [`RefsPage`] with the
/// same `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefsQuery {
    /// Chosen by the coordinator, unique per connection.
    pub query: u64,
    pub repo: String,
    /// List refs whose name sorts after this one (the previous page's `next`).
    pub after: Option<String>,
    /// Refs in the page at most (the page is also bounded by bytes).
    pub limit: u32,
}

/// One page of a repo's refs, sorted by name (protocol 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefsPage {
    pub query: u64,
    pub repo: String,
    pub refs: Vec<RefEntry>,
    /// `after` for the following page; `None` on the last page.
    pub next: Option<String>,
    /// Why there are no refs to give (e.g. the repo is not held here); `refs` is empty.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    pub name: String,
    /// Hex object id.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldRepo {
    pub id: String,
    pub url: String,
    /// A complete mirror exists at the final path.
    pub mirrored: bool,
}

/// An assignment change. `seq` increases by one per delta sent to this worker uuid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignDelta {
    pub seq: u64,
    /// Repos to hold (new ones, or a new URL for one already held).
    pub upsert: Vec<RepoSpec>,
    /// Repos to stop holding, and what to do with the mirror.
    pub drop: Vec<DropOrder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSpec {
    pub id: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropOrder {
    pub id: String,
    pub reason: DropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    /// Another worker has the repo now and holds a complete mirror: delete ours.
    Moved,
    /// The repo left the index: move the mirror to `.trash/`.
    RemovedFromIndex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeBatch {
    pub outcomes: Vec<Outcome>,
}

/// The result of one clone or fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Worker-local, strictly increasing, persisted across restarts: the dedupe key.
    pub report_id: u64,
    pub repo: String,
    pub url: String,
    /// Unix time in milliseconds when the attempt finished.
    pub finished_ms: i64,
    pub duration_ms: u64,
    pub result: FetchResult,
    /// Ref changes against the refs last acknowledged for this repo.
    pub changes: Vec<RefChange>,
    /// Refs in the mirror after the attempt.
    pub ref_count: u32,
    /// [`crate::refs::digest`] of every ref in the mirror after the attempt (protocol 2):
    /// lets the coordinator recognise refs it has already published. (Defaults to 0 when
    /// missing from a self-describing format, e.g. a worker's saved outbox.)
    #[serde(default)]
    pub refs_digest: u64,
    /// When the worker plans the next attempt (Unix ms).
    pub next_due_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FetchResult {
    /// First complete mirror.
    Cloned,
    /// Fetched; refs may or may not have changed (see `changes`).
    Fetched,
    Failed {
        class: FailureClass,
        message: String,
    },
    /// Not attempted, for the given reason (e.g. no disk space for a clone).
    Waiting { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    Transient,
    RateLimited,
    Gone,
    Local,
    /// Protocol 5 (SPEC §16): the upstream refused the credential a `credentials` entry
    /// gave (401/403, permission denied, unknown SSH host key). The message starts with
    /// `credential <match>: `, naming the entry, never its secret.
    Auth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefChange {
    pub name: String,
    /// Hex object id before, `None` when the ref was created.
    pub old: Option<String>,
    /// Hex object id after, `None` when the ref was deleted.
    pub new: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    /// Below `disk.min_free`: no new clone starts.
    pub disk_low: bool,
    pub active_fetches: u32,
    /// One-line summary for the status API.
    pub summary: String,
}

/// What [`WorkerStatus`] (fixed since protocol 2) does not say about a worker's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Fetches and clones that are due and wait for a slot (`fetch.concurrency`, the
    /// per-host limit, a rate-limited host, low disk).
    pub queued_fetches: u32,
    /// `fetch.concurrency`: the most fetches and clones that run at once.
    pub fetch_concurrency: u32,
    /// `disk.min_free` in bytes on the mirror directory's file system (a percentage
    /// resolved against its size); below it no new clone starts.
    pub disk_min_free_bytes: u64,
}

/// This worker's share of the fleet's upstream budgets (SPEC §18), and the paused hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBudgets {
    /// Increases with every `HostBudgets` the coordinator sends; the worker echoes the last
    /// one it applied in [`HostDemand::seen`], which is how the coordinator knows a smaller
    /// share is in force.
    pub seq: u64,
    /// How long the worker may keep using these shares after it lost the coordinator
    /// (milliseconds); after that it starts nothing on a limited host until a new
    /// `HostBudgets` arrives. The coordinator frees the share only later than that.
    pub lease_ms: u64,
    pub limits: Vec<HostShare>,
    pub paused: Vec<HostPause>,
}

/// One limited host (as written in `host_limits`: a name, or a suffix starting with `.`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostShare {
    pub host: String,
    /// Fetches this worker may run against the host at once; `None`: no such limit.
    pub connections: Option<u32>,
    /// Fetches this worker may start against the host per minute; `None`: no such limit.
    pub per_minute: Option<u32>,
}

/// A host nobody in the fleet may contact for `remaining_ms` from when this was sent
/// (a duration, not a time: the two machines' clocks need not agree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPause {
    pub host: String,
    pub remaining_ms: u64,
}

/// The worker's demand for the limited hosts of the last `HostBudgets` (SPEC §18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDemand {
    /// `seq` of the last `HostBudgets` applied; 0 before the first.
    pub seen: u64,
    pub hosts: Vec<HostLoad>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLoad {
    /// The limited host, as the coordinator named it.
    pub host: String,
    /// Fetches due on it that wait for a slot.
    pub due: u32,
    /// Fetches running against it now.
    pub running: u32,
    /// Fetches started against it in the last minute.
    pub started_last_minute: u32,
    /// The connection share the worker applies now (`None`: unlimited), so a restarted
    /// coordinator learns what each worker holds.
    pub share: Option<u32>,
}

/// An upstream host asked to be left alone for `retry_after_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitReport {
    /// The host as in the repo's URL, lower case.
    pub host: String,
    pub retry_after_ms: u64,
}

/// A worker's peer plane (protocol 7). `port: None`: no `peer_listen`, nothing to dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// UDP port of the QUIC peer listener.
    pub port: Option<u16>,
    /// `peer_advertise` (`host:port`), when the address the coordinator sees is not the
    /// one other workers should dial.
    pub advertise: Option<String>,
    /// `zone`, for placement with replicas (S3).
    pub zone: Option<String>,
}

/// SHA-256 of a repo's sorted `name\0oid\n` list ([`crate::peer::refs_sha256`]).
pub type RefsSha256 = [u8; 32];

/// Where the objects of an outcome came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferSource {
    Upstream,
    /// From the peer with this worker id.
    Peer(u32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeBatch7 {
    pub outcomes: Vec<Outcome7>,
}

/// [`Outcome`] plus what protocol 7 adds (postcard is positional: `Outcome` cannot grow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome7 {
    pub outcome: Outcome,
    pub source: TransferSource,
    /// Bytes received for this attempt (pack data), for
    /// `gitmirror_transfer_bytes_total{source}`.
    pub transfer_bytes: u64,
    /// Refs hash of the mirror after the attempt; `None` when there is no mirror.
    pub refs_sha256: Option<RefsSha256>,
}

/// The fleet CA and the grant lease (protocol 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPlane {
    pub ca_cert_pem: String,
    /// Grants lapse this long after the worker lost the coordinator (milliseconds).
    pub lease_ms: u64,
}

/// One peer a worker may be told to fetch from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub worker_id: u32,
    pub uuid: Uuid,
    /// Fingerprint of its certificate (SHA-256 of the DER, base64url, as the registry names it): pinned by the
    /// asker, so a wrong address fails closed.
    pub fingerprint: String,
    /// `host:port` to dial.
    pub addr: String,
    pub zone: Option<String>,
}

/// A change to the peer directory. Parts of one change arrive in order; `last` ends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDirectory {
    /// Added or changed peers.
    pub upsert: Vec<PeerEntry>,
    /// Worker ids no longer to use.
    pub remove: Vec<u32>,
    pub last: bool,
}

/// The role of a worker for one repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepoRole {
    /// Fetches upstream and makes the events (R = 1: the owner).
    Primary,
    /// Copies from the primary (replicas, S4).
    Follower,
}

/// An assignment change of protocol 7. `seq` is shared with `Assign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignDelta7 {
    pub seq: u64,
    pub upsert: Vec<RepoSpec7>,
    pub drop: Vec<DropOrder>,
}

impl AssignDelta7 {
    /// The delta without the peer fields, as protocol 6 says it.
    pub fn plain(self) -> AssignDelta {
        AssignDelta {
            seq: self.seq,
            upsert: self
                .upsert
                .into_iter()
                .map(|s| RepoSpec {
                    id: s.id,
                    url: s.url,
                })
                .collect(),
            drop: self.drop,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSpec7 {
    pub id: String,
    pub url: String,
    pub role: RepoRole,
    /// Worker ids (of the peer directory) holding a verified copy, best first; empty:
    /// fetch upstream.
    pub sources: Vec<u32>,
    /// The refs hash the copy must have before it is swapped in (C5).
    pub expect: Option<RefsSha256>,
    /// The previous holder's next upstream fetch (Unix ms), so a seed does not make every
    /// moved repo due at once (C12).
    pub next_due_ms: Option<i64>,
}

/// Grant changes for a holder (C4): serve `repo` to the certificate `fingerprint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerGrants {
    /// How long each grant stands once the worker lost the coordinator (milliseconds).
    pub lease_ms: u64,
    pub grant: Vec<PeerGrant>,
    pub revoke: Vec<PeerGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerGrant {
    pub repo: String,
    pub fingerprint: String,
}

/// Fork-pool states of some of a worker's repos (protocol 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStates {
    /// The first part of a whole list: the coordinator forgets every state this worker
    /// reported before. Otherwise the states replace those of the same repos.
    pub full: bool,
    pub states: Vec<RepoPoolState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoPoolState {
    pub repo: String,
    pub state: PoolState,
    /// Members of the repo's pool on this worker (0 when it has no pool).
    pub members: u32,
}

/// Where a repo's objects live (SPEC §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolState {
    /// It borrows from its project's pool (`objects/info/alternates`).
    Member,
    /// Its project has a pool it does not borrow from yet: it waits to join (migration)
    /// or is being cloned against it.
    Joining,
    /// A plain mirror, kept plain for this reason.
    Plain(PlainWhy),
    /// Nothing to say any more (a plain mirror with no pool, or the repo is gone): the
    /// coordinator forgets the state it had.
    Cleared,
}

/// Why a repo of a pooled project stays a plain mirror (SPEC §14, §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlainWhy {
    /// Its URL matches a `credentials` entry (a pool serves any object by id).
    Credentials,
    /// Its upstream advertises more than 100,000 refs.
    TooManyRefs,
    /// An operator detached it (`gitmirror.pool=false`).
    Detached,
    /// `fetch.pools` is off on its worker.
    PoolsOff,
}

/// A worker's pool totals (protocol 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTotals {
    /// Pools under `mirror_dir/.pools/`.
    pub pools: u32,
    /// Pack bytes of the pools.
    pub pool_bytes: u64,
    /// Pack bytes of the pools' members, their own objects only.
    pub member_bytes: u64,
    /// Members of all pools.
    pub members: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    // issue 10 finding 5: a Hello debug-formatted (a log of the first frame, a test's
    // assertion message) does not print the join secret, alone or inside a WorkerMsg.
    // (Seen failing before the fix: the derived Debug printed it.)
    #[test]
    fn issue10_f5_hello_debug_does_not_print_the_secret() {
        let hello = Hello {
            protocol: 3,
            secret: "j0in-SECRET".into(),
            uuid: Uuid::from_u128(7),
            previous_id: Some(2),
            name: "w1".into(),
            weight: 1.0,
            software: "x".into(),
            serve_url_base: None,
        };
        let msg = WorkerMsg::Hello(hello.clone());
        for shown in [
            format!("{hello:?}"),
            format!("{hello:#?}"),
            format!("{msg:?}"),
        ] {
            assert!(!shown.contains("j0in-SECRET"), "{shown}");
            assert!(
                shown.contains("<redacted>") && shown.contains("w1"),
                "{shown}"
            );
        }
    }
}
