//! Golden bytes of every message (SPEC §4.2): a change to any encoding fails here.
//! postcard is positional, so these bytes are the protocol. To change a message, add a
//! variant (and a golden case) instead, or bump `PROTOCOL_VERSION`.

use gitmirror_wire::*;
use uuid::Uuid;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid() -> Uuid {
    Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff)
}

fn worker_msgs() -> Vec<(WorkerMsg, &'static str)> {
    vec![
        (
            WorkerMsg::Hello(Hello {
                protocol: 1,
                secret: "s".into(),
                uuid: uuid(),
                previous_id: Some(2),
                name: "w".into(),
                weight: 1.5,
                software: "0.1".into(),
                serve_url_base: Some("git://m/".into()),
            }),
            "HELLO",
        ),
        (
            WorkerMsg::Holdings(Holdings {
                repos: vec![HeldRepo {
                    id: "a/b/c".into(),
                    url: "git://h/c".into(),
                    mirrored: true,
                }],
            }),
            "HOLDINGS",
        ),
        (
            WorkerMsg::Outcomes(OutcomeBatch {
                outcomes: vec![
                    Outcome {
                        report_id: 300,
                        repo: "a/b/c".into(),
                        url: "git://h/c".into(),
                        finished_ms: 1_700_000_000_000,
                        duration_ms: 12,
                        result: FetchResult::Fetched,
                        changes: vec![RefChange {
                            name: "refs/heads/m".into(),
                            old: Some("aa".into()),
                            new: None,
                        }],
                        ref_count: 3,
                        refs_digest: 0x0123_4567_89ab_cdef,
                        next_due_ms: 1_700_000_060_000,
                    },
                    Outcome {
                        report_id: 301,
                        repo: "x/y/z".into(),
                        url: "u".into(),
                        finished_ms: 0,
                        duration_ms: 0,
                        result: FetchResult::Failed {
                            class: FailureClass::Gone,
                            message: "404".into(),
                        },
                        changes: vec![],
                        ref_count: 0,
                        refs_digest: 0,
                        next_due_ms: 0,
                    },
                    Outcome {
                        report_id: 302,
                        repo: "x/y/z".into(),
                        url: "u".into(),
                        finished_ms: 0,
                        duration_ms: 0,
                        result: FetchResult::Waiting {
                            reason: "disk".into(),
                        },
                        changes: vec![],
                        ref_count: 0,
                        refs_digest: 0,
                        next_due_ms: 0,
                    },
                    Outcome {
                        report_id: 303,
                        repo: "x/y/z".into(),
                        url: "u".into(),
                        finished_ms: 0,
                        duration_ms: 0,
                        result: FetchResult::Cloned,
                        changes: vec![],
                        ref_count: 0,
                        refs_digest: 0,
                        next_due_ms: 0,
                    },
                ],
            }),
            "OUTCOMES",
        ),
        (
            WorkerMsg::Status(WorkerStatus {
                disk_free_bytes: 1 << 30,
                disk_total_bytes: 1 << 40,
                disk_low: false,
                active_fetches: 2,
                summary: "ok".into(),
            }),
            "STATUS",
        ),
        (WorkerMsg::AssignAck { seq: 7 }, "ASSIGN_ACK"),
        (
            WorkerMsg::HoldingsPart(HoldingsPart {
                repos: vec![HeldRepo {
                    id: "a/b/c".into(),
                    url: "git://h/c".into(),
                    mirrored: false,
                }],
                last: true,
            }),
            "HOLDINGS_PART",
        ),
        (
            WorkerMsg::OutcomeChanges(OutcomeChanges {
                report_id: 300,
                changes: vec![RefChange {
                    name: "refs/heads/m".into(),
                    old: None,
                    new: Some("bb".into()),
                }],
            }),
            "OUTCOME_CHANGES",
        ),
        (
            WorkerMsg::RefsPage(RefsPage {
                query: 9,
                repo: "a/b/c".into(),
                refs: vec![RefEntry {
                    name: "refs/heads/m".into(),
                    id: "aa".into(),
                }],
                next: Some("refs/heads/m".into()),
                error: None,
            }),
            "REFS_PAGE",
        ),
        (
            WorkerMsg::Load(WorkerLoad {
                queued_fetches: 3,
                fetch_concurrency: 8,
                disk_min_free_bytes: 1 << 30,
            }),
            "LOAD",
        ),
        (
            WorkerMsg::HostDemand(HostDemand {
                seen: 4,
                hosts: vec![HostLoad {
                    host: "github.com".into(),
                    due: 12,
                    running: 2,
                    started_last_minute: 30,
                    share: Some(2),
                }],
            }),
            "HOST_DEMAND",
        ),
        (
            WorkerMsg::RateLimited(RateLimitReport {
                host: "github.com".into(),
                retry_after_ms: 5000,
            }),
            "RATE_LIMITED",
        ),
        (
            WorkerMsg::PeerInfo(PeerInfo {
                port: Some(7443),
                advertise: Some("w:1".into()),
                zone: Some("z".into()),
            }),
            "PEER_INFO",
        ),
        (
            WorkerMsg::Outcomes7(OutcomeBatch7 {
                outcomes: vec![Outcome7 {
                    outcome: Outcome {
                        report_id: 300,
                        repo: "a/b/c".into(),
                        url: "git://h/c".into(),
                        finished_ms: 1_700_000_000_000,
                        duration_ms: 12,
                        result: FetchResult::Cloned,
                        changes: vec![],
                        ref_count: 3,
                        refs_digest: 5,
                        next_due_ms: 1_700_000_060_000,
                    },
                    source: TransferSource::Peer(4),
                    transfer_bytes: 1000,
                    refs_sha256: Some([0xab; 32]),
                }],
            }),
            "OUTCOMES7",
        ),
        (
            WorkerMsg::PoolStates(PoolStates {
                full: true,
                states: vec![
                    RepoPoolState {
                        repo: "a/b/c".into(),
                        state: PoolState::Member,
                        members: 2,
                    },
                    RepoPoolState {
                        repo: "a/b/d".into(),
                        state: PoolState::Plain(PlainWhy::TooManyRefs),
                        members: 0,
                    },
                    RepoPoolState {
                        repo: "a/b/e".into(),
                        state: PoolState::Cleared,
                        members: 0,
                    },
                ],
            }),
            "POOL_STATES",
        ),
        (
            WorkerMsg::PoolTotals(PoolTotals {
                pools: 3,
                pool_bytes: 1 << 30,
                member_bytes: 1000,
                members: 7,
            }),
            "POOL_TOTALS",
        ),
    ]
}

fn coord_msgs() -> Vec<(CoordMsg, &'static str)> {
    vec![
        (
            CoordMsg::Welcome(Welcome {
                protocol: 1,
                worker_id: 5,
                software: "0.1".into(),
            }),
            "WELCOME",
        ),
        (
            CoordMsg::Refused(Refusal {
                code: RefuseCode::BadSecret,
                message: "no".into(),
            }),
            "REFUSED",
        ),
        (
            CoordMsg::Assign(AssignDelta {
                seq: 9,
                upsert: vec![RepoSpec {
                    id: "a/b/c".into(),
                    url: "git://h/c".into(),
                }],
                drop: vec![
                    DropOrder {
                        id: "d/e/f".into(),
                        reason: DropReason::Moved,
                    },
                    DropOrder {
                        id: "g/h/i".into(),
                        reason: DropReason::RemovedFromIndex,
                    },
                ],
            }),
            "ASSIGN",
        ),
        (CoordMsg::OutcomeAck { upto: 303 }, "OUTCOME_ACK"),
        (
            CoordMsg::FetchNow {
                repo: "a/b/c".into(),
            },
            "FETCH_NOW",
        ),
        (
            CoordMsg::Relist {
                repo: "a/b/c".into(),
            },
            "RELIST",
        ),
        (
            CoordMsg::RefsQuery(RefsQuery {
                query: 9,
                repo: "a/b/c".into(),
                after: Some("refs/heads/l".into()),
                limit: 1000,
            }),
            "REFS_QUERY",
        ),
        (
            CoordMsg::Enrolled(Enrolled {
                welcome: Welcome {
                    protocol: 4,
                    worker_id: 5,
                    software: "0.1".into(),
                },
                cert_pem: "c".into(),
                key_pem: "k".into(),
            }),
            "ENROLLED",
        ),
        (
            CoordMsg::Refused(Refusal {
                code: RefuseCode::Pending,
                message: "no".into(),
            }),
            "REFUSED_PENDING",
        ),
        (
            CoordMsg::HostBudgets(HostBudgets {
                seq: 4,
                lease_ms: 30_000,
                limits: vec![HostShare {
                    host: "github.com".into(),
                    connections: Some(2),
                    per_minute: None,
                }],
                paused: vec![HostPause {
                    host: "gitee.com".into(),
                    remaining_ms: 5000,
                }],
            }),
            "HOST_BUDGETS",
        ),
        (
            CoordMsg::PeerPlane(PeerPlane {
                ca_cert_pem: "ca".into(),
                lease_ms: 30_000,
            }),
            "PEER_PLANE",
        ),
        (
            CoordMsg::PeerDirectory(PeerDirectory {
                upsert: vec![PeerEntry {
                    worker_id: 4,
                    uuid: uuid(),
                    fingerprint: "fp".into(),
                    addr: "w:1".into(),
                    zone: None,
                }],
                remove: vec![2],
                last: true,
            }),
            "PEER_DIRECTORY",
        ),
        (
            CoordMsg::Assign7(AssignDelta7 {
                seq: 9,
                upsert: vec![RepoSpec7 {
                    id: "a/b/c".into(),
                    url: "git://h/c".into(),
                    role: RepoRole::Primary,
                    sources: vec![4, 5],
                    expect: Some([0xab; 32]),
                    next_due_ms: Some(1_700_000_060_000),
                }],
                drop: vec![DropOrder {
                    id: "d/e/f".into(),
                    reason: DropReason::Moved,
                }],
            }),
            "ASSIGN7",
        ),
        (
            CoordMsg::PeerGrants(PeerGrants {
                lease_ms: 30_000,
                grant: vec![PeerGrant {
                    repo: "a/b/c".into(),
                    fingerprint: "fp".into(),
                }],
                revoke: vec![],
            }),
            "PEER_GRANTS",
        ),
    ]
}

/// The pinned encodings, frame length prefix included.
const GOLDEN: &[(&str, &str)] = &[
    (
        "HELLO",
        "2f000000 00 01 0173 10 00112233445566778899aabbccddeeff 0102 0177 000000000000f83f \
         03302e31 01 086769743a2f2f6d2f",
    ),
    (
        "HOLDINGS",
        "13000000 01 01 05612f622f63 096769743a2f2f682f63 01",
    ),
    (
        "OUTCOMES",
        "7c000000 02 04 ac02 05612f622f63 096769743a2f2f682f63 80a0abfef962 0c 01 \
         01 0c726566732f68656164732f6d 01026161 00 03 ef9bafcdf8acd19101 c0c9b2fef962 \
         ad02 05782f792f7a 0175 00 00 02 02 03343034 00 00 00 00 \
         ae02 05782f792f7a 0175 00 00 03 04646973 6b 00 00 00 00 \
         af02 05782f792f7a 0175 00 00 00 00 00 00 00",
    ),
    (
        "STATUS",
        "11000000 03 8080808004 8080808080 20 00 02 026f6b",
    ),
    ("ASSIGN_ACK", "02000000 04 07"),
    (
        "HOLDINGS_PART",
        "14000000 05 01 05612f622f63 096769743a2f2f682f63 00 01",
    ),
    (
        "OUTCOME_CHANGES",
        "16000000 06 ac02 01 0c726566732f68656164732f6d 00 01026262",
    ),
    (
        "REFS_PAGE",
        "28000000 07 09 05612f622f63 01 0c726566732f68656164732f6d 026161 \
         01 0c726566732f68656164732f6d 00",
    ),
    // Protocol 5: variant 8 after protocol 3's RefsPage; varints 3, 8, 2^30.
    ("LOAD", "08000000 08 03 08 8080808004"),
    // Protocol 6 (SPEC §18): variants 9 and 10 after protocol 5's Load.
    (
        "HOST_DEMAND",
        "13000000 09 04 01 0a6769746875622e636f6d 0c 02 1e 01 02",
    ),
    ("RATE_LIMITED", "0e000000 0a 0a6769746875622e636f6d 8827"),
    // Protocol 7 (SPEC §13): variants 11 and 12 after protocol 6's RateLimited; the port
    // a u16 varint (7443), the outcome as protocol 2's, then source Peer(4), 1000 bytes,
    // Some(32 bytes) with no length prefix.
    ("PEER_INFO", "0c000000 0b 01933a 0103773a31 01017a"),
    (
        "OUTCOMES7",
        "4a000000 0c 01 ac02 05612f622f63 096769743a2f2f682f63 80a0abfef962 0c 00 00 03 05 \
         c0c9b2fef962 01 04 e807 01 \
         abababababababababababababababababababababababababababababababab",
    ),
    // Protocol 8 (SPEC §14): variants 13 and 14 after protocol 7's Outcomes7; Plain is
    // variant 2 with its reason (TooManyRefs, 1) after it, Cleared variant 3.
    (
        "POOL_STATES",
        "1c000000 0d 01 03 05612f622f63 00 02 05612f622f64 02 01 00 05612f622f65 03 00",
    ),
    ("POOL_TOTALS", "0a000000 0e 03 8080808004 e807 07"),
    ("WELCOME", "07000000 00 01 05 03302e31"),
    ("REFUSED", "05000000 01 01 026e6f"),
    (
        "ASSIGN",
        "22000000 02 09 01 05612f622f63 096769743a2f2f682f63 02 05642f652f66 00 05672f682f69 01",
    ),
    ("OUTCOME_ACK", "03000000 03 af02"),
    ("FETCH_NOW", "07000000 04 05612f622f63"),
    ("RELIST", "07000000 05 05612f622f63"),
    (
        "REFS_QUERY",
        "18000000 06 09 05612f622f63 01 0c726566732f68656164732f6c e807",
    ),
    ("ENROLLED", "0b000000 07 04 05 03302e31 0163 016b"),
    ("REFUSED_PENDING", "05000000 01 04 026e6f"),
    // Protocol 6 (SPEC §18): variant 8 after protocol 4's Enrolled.
    (
        "HOST_BUDGETS",
        "21000000 08 04 b0ea01 01 0a6769746875622e636f6d 01 02 00 01 0967697465652e636f6d 8827",
    ),
    // Protocol 7 (SPEC §13): variants 9 to 12 after protocol 6's HostBudgets.
    ("PEER_PLANE", "07000000 09 026361 b0ea01"),
    (
        "PEER_DIRECTORY",
        "1f000000 0a 01 04 10 00112233445566778899aabbccddeeff 026670 03773a31 00 01 02 01",
    ),
    (
        "ASSIGN7",
        "47000000 0b 09 01 05612f622f63 096769743a2f2f682f63 00 02 04 05 01 \
         abababababababababababababababababababababababababababababababab \
         01 c0c9b2fef962 01 05642f652f66 00",
    ),
    (
        "PEER_GRANTS",
        "0f000000 0c b0ea01 01 05612f622f63 026670 00",
    ),
];

fn golden(name: &str) -> String {
    let found = GOLDEN.iter().find(|(n, _)| *n == name);
    assert!(found.is_some(), "no golden bytes for {name}");
    found
        .map(|(_, h)| h.split_whitespace().collect())
        .unwrap_or_default()
}

#[test]
fn worker_messages_match_golden_bytes() {
    for (msg, name) in worker_msgs() {
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(hex(&frame), golden(name), "{name}");
        assert_eq!(
            decode::<WorkerMsg>(&frame[4..]).unwrap(),
            msg,
            "{name} round trip"
        );
    }
}

#[test]
fn coordinator_messages_match_golden_bytes() {
    for (msg, name) in coord_msgs() {
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(hex(&frame), golden(name), "{name}");
        assert_eq!(
            decode::<CoordMsg>(&frame[4..]).unwrap(),
            msg,
            "{name} round trip"
        );
    }
}

#[test]
fn every_variant_has_a_golden_case() {
    // Exhaustive matches: adding a variant without a golden case fails to compile here.
    for (m, _) in worker_msgs() {
        match m {
            WorkerMsg::Hello(_)
            | WorkerMsg::Holdings(_)
            | WorkerMsg::Outcomes(_)
            | WorkerMsg::Status(_)
            | WorkerMsg::AssignAck { .. }
            | WorkerMsg::HoldingsPart(_)
            | WorkerMsg::OutcomeChanges(_)
            | WorkerMsg::RefsPage(_)
            | WorkerMsg::Load(_)
            | WorkerMsg::HostDemand(_)
            | WorkerMsg::RateLimited(_)
            | WorkerMsg::PeerInfo(_)
            | WorkerMsg::Outcomes7(_)
            | WorkerMsg::PoolStates(_)
            | WorkerMsg::PoolTotals(_) => {}
        }
    }
    for (m, _) in coord_msgs() {
        match m {
            CoordMsg::Welcome(_)
            | CoordMsg::Refused(_)
            | CoordMsg::Assign(_)
            | CoordMsg::OutcomeAck { .. }
            | CoordMsg::FetchNow { .. }
            | CoordMsg::Relist { .. }
            | CoordMsg::RefsQuery(_)
            | CoordMsg::Enrolled(_)
            | CoordMsg::HostBudgets(_)
            | CoordMsg::PeerPlane(_)
            | CoordMsg::PeerDirectory(_)
            | CoordMsg::Assign7(_)
            | CoordMsg::PeerGrants(_) => {}
        }
    }
    assert_eq!(worker_msgs().len() + coord_msgs().len(), GOLDEN.len());
}

/// `cargo test -p gitmirror-wire --test golden -- --ignored --nocapture` prints the
/// encodings, for adding a case.
#[test]
#[ignore]
fn print_golden() {
    for (m, n) in worker_msgs() {
        println!("(\"{n}\", \"{}\"),", hex(&encode_frame(&m).unwrap()));
    }
    for (m, n) in coord_msgs() {
        println!("(\"{n}\", \"{}\"),", hex(&encode_frame(&m).unwrap()));
    }
}

/// SPEC §13 (protocol 7): the peer plane's messages only append variants, so every
/// protocol 6 message keeps its index and bytes, and a protocol 6 decoder refuses (rather
/// than misreads) a protocol 7 variant.
#[test]
fn spec_13_peer_messages_are_pinned() {
    let index = |frame: &[u8]| frame[4];
    for (m, name) in worker_msgs() {
        let i = index(&encode_frame(&m).unwrap());
        match m {
            WorkerMsg::PeerInfo(_) => assert_eq!(i, 11, "{name}"),
            WorkerMsg::Outcomes7(_) => assert_eq!(i, 12, "{name}"),
            WorkerMsg::PoolStates(_) => assert_eq!(i, 13, "{name}"),
            WorkerMsg::PoolTotals(_) => assert_eq!(i, 14, "{name}"),
            _ => assert!(i <= 10, "{name}"),
        }
    }
    for (m, name) in coord_msgs() {
        let i = index(&encode_frame(&m).unwrap());
        match m {
            CoordMsg::PeerPlane(_) => assert_eq!(i, 9, "{name}"),
            CoordMsg::PeerDirectory(_) => assert_eq!(i, 10, "{name}"),
            CoordMsg::Assign7(_) => assert_eq!(i, 11, "{name}"),
            CoordMsg::PeerGrants(_) => assert_eq!(i, 12, "{name}"),
            _ => assert!(i <= 8, "{name}"),
        }
    }
    assert_eq!(PROTOCOL_VERSION, 8);
    assert_eq!(MIN_PROTOCOL_VERSION, 2);
    assert_eq!(ALPN, b"gitmirror/8");
    assert_eq!(ALPN_PREVIOUS, b"gitmirror/7");
}

/// Protocol 5 (SPEC §16): `FailureClass::Auth` is appended (index 4), so the classes of
/// protocol 2–4 workers keep their bytes.
#[test]
fn failure_class_auth_is_appended_after_the_protocol_4_classes() {
    let bytes = |c: FailureClass| postcard::to_stdvec(&c).unwrap();
    assert_eq!(bytes(FailureClass::Transient), [0]);
    assert_eq!(bytes(FailureClass::Local), [3]);
    assert_eq!(bytes(FailureClass::Auth), [4]);
    assert_eq!(
        postcard::from_bytes::<FailureClass>(&[4]).unwrap(),
        FailureClass::Auth
    );
}
