//! Property tests over arbitrary bytes for every decoder (SPEC §4.2: "the decoders are
//! fuzzed"). None may panic; whatever decodes must re-encode to the same bytes.

use gitmirror_wire::handshake::peek_protocol;
use gitmirror_wire::*;
use proptest::prelude::*;

/// Cases per decoder property: 4,096, or `PROPTEST_CASES` when that is larger (the long
/// form of docs/reliability.md).
fn decoder_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(4096, |n: u32| n.max(4096))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: decoder_cases(), .. ProptestConfig::default() })]

    #[test]
    fn worker_msg_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = decode::<WorkerMsg>(&bytes) {
            let frame = encode_frame(&msg).unwrap();
            prop_assert_eq!(decode::<WorkerMsg>(&frame[4..]).unwrap(), msg);
        }
    }

    #[test]
    fn coord_msg_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = decode::<CoordMsg>(&bytes) {
            let frame = encode_frame(&msg).unwrap();
            prop_assert_eq!(decode::<CoordMsg>(&frame[4..]).unwrap(), msg);
        }
    }

    /// Mutations of valid frames reach deeper into the decoders than random bytes.
    #[test]
    fn mutated_valid_messages_never_panic(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let msg = WorkerMsg::Outcomes(OutcomeBatch { outcomes: vec![Outcome {
            report_id: 1, repo: "a/b/c".into(), url: "git://h/c".into(), finished_ms: 5,
            duration_ms: 6, result: FetchResult::Failed { class: FailureClass::Local, message: "m".into() },
            changes: vec![RefChange { name: "refs/heads/x".into(), old: None, new: Some("ab".into()) }],
            ref_count: 1, refs_digest: 9, next_due_ms: 7 }] });
        let mut body = encode_frame(&msg).unwrap()[4..].to_vec();
        let i = pos.index(body.len());
        body[i] = byte;
        body.truncate(cut.index(body.len() + 1));
        let _ = decode::<WorkerMsg>(&body);
        let _ = ServerHandshake::new("s").on_first_frame(&body, false);
        let _ = peek_protocol(&body);
    }

    /// SPEC §13: mutated and truncated protocol 7 messages (both directions) decode to
    /// an error or to a message that round-trips; never a panic.
    #[test]
    fn spec_13_mutated_peer_messages_never_panic(
        w in worker_msg(),
        c in coord_msg(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut body in [encode_frame(&w).unwrap()[4..].to_vec(), encode_frame(&c).unwrap()[4..].to_vec()] {
            let i = pos.index(body.len());
            body[i] = byte;
            body.truncate(cut.index(body.len() + 1));
            // Compared as bytes: a mutated `weight` may be NaN.
            if let Ok(m) = decode::<WorkerMsg>(&body) {
                let again = encode_frame(&m).unwrap();
                let back = decode::<WorkerMsg>(&again[4..]).unwrap();
                prop_assert_eq!(encode_frame(&back).unwrap(), again);
            }
            if let Ok(m) = decode::<CoordMsg>(&body) {
                let again = encode_frame(&m).unwrap();
                prop_assert_eq!(decode::<CoordMsg>(&again[4..]).unwrap(), m);
            }
        }
    }

    #[test]
    fn frame_decoder_never_panics_or_overallocates(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let mut d = FrameDecoder::new();
        for c in &chunks {
            d.push(c);
            loop {
                match d.next_frame() {
                    Ok(Some(body)) => prop_assert!(body.len() <= MAX_FRAME),
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len, .. }) => { prop_assert!(len > MAX_FRAME); return Ok(()); }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
        prop_assert!(d.pending() <= chunks.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn handshakes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = peek_protocol(&bytes);
        match ServerHandshake::new("secret").on_first_frame(&bytes, false) {
            ServerVerdict::Accept(h) => prop_assert_eq!(h.secret, "secret"),
            ServerVerdict::Refuse { close_code, .. } => prop_assert!(close_code != close_code::NORMAL),
        }
        let client = ClientHandshake::new(Hello {
            protocol: PROTOCOL_VERSION, secret: "s".into(), uuid: uuid::Uuid::nil(), previous_id: None,
            name: "n".into(), weight: 1.0, software: "t".into(), serve_url_base: None,
        });
        let _ = client.on_reply(&bytes);
    }

    #[test]
    fn token_parser_never_panics(text in ".{0,200}") {
        if let Ok(t) = JoinToken::parse(&text) {
            prop_assert_eq!(JoinToken::parse(&t.format()).unwrap(), t);
        }
    }
}

/// Arbitrary worker messages of the kinds a peer sends first or soon after: `Hello` with
/// hostile fields (other versions, wrong secrets, odd weights), `Holdings`, `AssignAck`.
fn worker_msg() -> impl Strategy<Value = WorkerMsg> {
    let weight = prop_oneof![
        4 => Just(1.0f64),
        1 => Just(0.0f64),
        1 => Just(-1.0f64),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => any::<f64>(),
    ];
    let protocol = prop_oneof![
        4 => Just(PROTOCOL_VERSION),
        1 => 0u32..8,
        1 => any::<u32>(),
    ];
    let secret = prop_oneof![3 => Just("s3cret".to_owned()), 1 => ".{0,12}"];
    let hello = (
        protocol,
        secret,
        any::<u128>(),
        proptest::option::of(any::<u32>()),
        ".{0,16}",
        weight,
        proptest::option::of(".{0,16}"),
    )
        .prop_map(
            |(protocol, secret, uuid, previous_id, name, weight, base)| {
                WorkerMsg::Hello(Hello {
                    protocol,
                    secret,
                    uuid: uuid::Uuid::from_u128(uuid),
                    previous_id,
                    name,
                    weight,
                    software: "fuzz".into(),
                    serve_url_base: base,
                })
            },
        );
    let holdings =
        proptest::collection::vec((".{0,12}", ".{0,12}", any::<bool>()), 0..4).prop_map(|repos| {
            WorkerMsg::Holdings(Holdings {
                repos: repos
                    .into_iter()
                    .map(|(id, url, mirrored)| HeldRepo { id, url, mirrored })
                    .collect(),
            })
        });
    let refs_page = (
        any::<u64>(),
        ".{0,12}",
        proptest::collection::vec((".{0,16}", "[0-9a-f]{0,40}"), 0..4),
        proptest::option::of(".{0,16}"),
        proptest::option::of(".{0,16}"),
    )
        .prop_map(|(query, repo, refs, next, error)| {
            WorkerMsg::RefsPage(RefsPage {
                query,
                repo,
                refs: refs
                    .into_iter()
                    .map(|(name, id)| RefEntry { name, id })
                    .collect(),
                next,
                error,
            })
        });
    // Protocol 6 (SPEC §18).
    let demand = (
        any::<u64>(),
        proptest::collection::vec(
            (
                ".{0,12}",
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                proptest::option::of(any::<u32>()),
            ),
            0..4,
        ),
    )
        .prop_map(|(seen, hosts)| {
            WorkerMsg::HostDemand(HostDemand {
                seen,
                hosts: hosts
                    .into_iter()
                    .map(
                        |(host, due, running, started_last_minute, share)| HostLoad {
                            host,
                            due,
                            running,
                            started_last_minute,
                            share,
                        },
                    )
                    .collect(),
            })
        });
    let rate_limited = (".{0,12}", any::<u64>()).prop_map(|(host, retry_after_ms)| {
        WorkerMsg::RateLimited(RateLimitReport {
            host,
            retry_after_ms,
        })
    });
    // Protocol 7 (SPEC §13).
    let peer_info = (
        proptest::option::of(any::<u16>()),
        proptest::option::of(".{0,16}"),
        proptest::option::of(".{0,8}"),
    )
        .prop_map(|(port, advertise, zone)| {
            WorkerMsg::PeerInfo(PeerInfo {
                port,
                advertise,
                zone,
            })
        });
    let outcomes7 = (
        arb_outcome(),
        proptest::option::of(any::<u32>()),
        any::<u64>(),
        proptest::option::of(any::<[u8; 32]>()),
    )
        .prop_map(|(outcome, peer, transfer_bytes, refs_sha256)| {
            WorkerMsg::Outcomes7(OutcomeBatch7 {
                outcomes: vec![Outcome7 {
                    outcome,
                    source: peer.map_or(TransferSource::Upstream, TransferSource::Peer),
                    transfer_bytes,
                    refs_sha256,
                }],
            })
        });
    // Protocol 8 (SPEC §14).
    let pool_state = prop_oneof![
        Just(PoolState::Member),
        Just(PoolState::Joining),
        Just(PoolState::Cleared),
        prop_oneof![
            Just(PlainWhy::Credentials),
            Just(PlainWhy::TooManyRefs),
            Just(PlainWhy::Detached),
            Just(PlainWhy::PoolsOff),
        ]
        .prop_map(PoolState::Plain),
    ];
    let pool_states = (
        any::<bool>(),
        proptest::collection::vec((".{0,16}", pool_state, any::<u32>()), 0..4),
    )
        .prop_map(|(full, states)| {
            WorkerMsg::PoolStates(PoolStates {
                full,
                states: states
                    .into_iter()
                    .map(|(repo, state, members)| RepoPoolState {
                        repo,
                        state,
                        members,
                    })
                    .collect(),
            })
        });
    let pool_totals = (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
        |(pools, pool_bytes, member_bytes, members)| {
            WorkerMsg::PoolTotals(PoolTotals {
                pools,
                pool_bytes,
                member_bytes,
                members,
            })
        },
    );
    prop_oneof![
        3 => hello,
        1 => holdings,
        1 => any::<u64>().prop_map(|seq| WorkerMsg::AssignAck { seq }),
        1 => refs_page,
        1 => demand,
        1 => rate_limited,
        1 => peer_info,
        1 => outcomes7,
        1 => pool_states,
        1 => pool_totals,
    ]
}

/// One frame of a conversation: a message, or a frame of garbage.
#[derive(Debug, Clone)]
enum Sent {
    Msg(WorkerMsg),
    Garbage(Vec<u8>),
}

fn coord_msg() -> impl Strategy<Value = CoordMsg> {
    prop_oneof![
        3 => (prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()], any::<u32>())
            .prop_map(|(protocol, worker_id)| CoordMsg::Welcome(Welcome {
                protocol, worker_id, software: "fuzz".into(),
            })),
        1 => (".{0,24}", 0usize..7).prop_map(|(message, c)| CoordMsg::Refused(Refusal {
            code: [RefuseCode::VersionMismatch, RefuseCode::BadSecret, RefuseCode::NoFreeId,
                   RefuseCode::ProtocolError, RefuseCode::Pending, RefuseCode::Revoked,
                   RefuseCode::Enrolled][c],
            message,
        })),
        1 => (prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()], ".{0,12}", ".{0,12}")
            .prop_map(|(protocol, cert_pem, key_pem)| CoordMsg::Enrolled(Enrolled {
                welcome: Welcome { protocol, worker_id: 1, software: "fuzz".into() },
                cert_pem, key_pem,
            })),
        1 => any::<u64>().prop_map(|upto| CoordMsg::OutcomeAck { upto }),
        1 => ".{0,12}".prop_map(|repo| CoordMsg::FetchNow { repo }),
        1 => ".{0,12}".prop_map(|repo| CoordMsg::Relist { repo }),
        1 => (any::<u64>(), ".{0,12}", proptest::option::of(".{0,16}"), any::<u32>())
            .prop_map(|(query, repo, after, limit)| CoordMsg::RefsQuery(RefsQuery {
                query, repo, after, limit,
            })),
        1 => any::<u64>().prop_map(|seq| CoordMsg::Assign(AssignDelta {
            seq, upsert: vec![], drop: vec![],
        })),
        1 => (any::<u64>(), any::<u64>(), ".{0,12}", proptest::option::of(any::<u32>()),
              proptest::option::of(any::<u32>()), any::<u64>())
            .prop_map(|(seq, lease_ms, host, connections, per_minute, remaining_ms)| {
                CoordMsg::HostBudgets(HostBudgets {
                    seq, lease_ms,
                    limits: vec![HostShare { host: host.clone(), connections, per_minute }],
                    paused: vec![HostPause { host, remaining_ms }],
                })
            }),
        // Protocol 7 (SPEC §13).
        1 => (".{0,24}", any::<u64>()).prop_map(|(ca_cert_pem, lease_ms)| {
            CoordMsg::PeerPlane(PeerPlane { ca_cert_pem, lease_ms })
        }),
        1 => (any::<u32>(), ".{0,12}", ".{0,12}", proptest::option::of(".{0,6}"),
              proptest::collection::vec(any::<u32>(), 0..3), any::<bool>())
            .prop_map(|(worker_id, fingerprint, addr, zone, remove, last)| {
                CoordMsg::PeerDirectory(PeerDirectory {
                    upsert: vec![PeerEntry {
                        worker_id, uuid: uuid::Uuid::nil(), fingerprint, addr, zone,
                    }],
                    remove, last,
                })
            }),
        1 => (any::<u64>(), ".{0,12}", proptest::collection::vec(any::<u32>(), 0..3),
              proptest::option::of(any::<[u8; 32]>()), proptest::option::of(any::<i64>()),
              any::<bool>())
            .prop_map(|(seq, id, sources, expect, next_due_ms, follower)| {
                CoordMsg::Assign7(AssignDelta7 {
                    seq,
                    upsert: vec![RepoSpec7 {
                        url: format!("git://h/{id}"), id,
                        role: if follower { RepoRole::Follower } else { RepoRole::Primary },
                        sources, expect, next_due_ms,
                    }],
                    drop: vec![],
                })
            }),
        1 => (any::<u64>(), ".{0,12}", ".{0,12}").prop_map(|(lease_ms, repo, fingerprint)| {
            CoordMsg::PeerGrants(PeerGrants {
                lease_ms,
                grant: vec![PeerGrant { repo: repo.clone(), fingerprint: fingerprint.clone() }],
                revoke: vec![PeerGrant { repo, fingerprint }],
            })
        }),
    ]
}

proptest! {
    // `PROPTEST_CASES` sets the count (default 256).

    /// SPEC §4.2: a whole conversation as the coordinator reads it — arbitrary message
    /// sequences and garbage frames, framed and cut into arbitrary chunks. The frame
    /// decoder gives back exactly the frames sent; the handshake accepts the first frame
    /// only when it is a `Hello` of this version with the right secret and a usable
    /// weight, and refuses everything else with the fitting code; the rest decode to the
    /// messages sent (a later `Hello` is visible as such, for the caller to refuse).
    #[test]
    fn arbitrary_conversations_are_judged_frame_by_frame(
        sent in proptest::collection::vec(prop_oneof![
            6 => worker_msg().prop_map(Sent::Msg),
            1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Sent::Garbage),
        ], 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut bodies = Vec::new();
        for s in &sent {
            let frame = match s {
                Sent::Msg(m) => encode_frame(m).unwrap(),
                Sent::Garbage(g) => {
                    let mut f = (g.len() as u32).to_le_bytes().to_vec();
                    f.extend_from_slice(g);
                    f
                }
            };
            bodies.push(frame[4..].to_vec());
            stream.extend_from_slice(&frame);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            d.push(&stream[w[0]..w[1]]);
            while let Some(body) = d.next_frame().unwrap() {
                got.push(body);
            }
        }
        prop_assert_eq!(&got, &bodies);
        prop_assert_eq!(d.pending(), 0);

        let verdict = ServerHandshake::new("s3cret").on_first_frame(&got[0], false);
        match (&sent[0], &verdict) {
            (Sent::Msg(WorkerMsg::Hello(h)), ServerVerdict::Accept(a)) => {
                prop_assert!((MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol));
                prop_assert_eq!(&h.secret, "s3cret");
                prop_assert!(h.weight.is_finite() && h.weight > 0.0);
                prop_assert_eq!(&h.uuid, &a.uuid);
            }
            (_, ServerVerdict::Accept(a)) => prop_assert!(false, "accepted {:?} as {:?}", sent[0], a),
            (Sent::Msg(WorkerMsg::Hello(h)), ServerVerdict::Refuse { refusal, close_code: code }) => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol) {
                    prop_assert_eq!(refusal.code, RefuseCode::VersionMismatch);
                    prop_assert_eq!(*code, close_code::VERSION_MISMATCH);
                    let ours = format!("protocol {PROTOCOL_VERSION}");
                    let theirs = format!("speaks {}", h.protocol);
                    prop_assert!(refusal.message.contains(&ours), "{}", refusal.message);
                    prop_assert!(refusal.message.contains(&theirs), "{}", refusal.message);
                } else if h.secret != "s3cret" {
                    prop_assert_eq!(refusal.code, RefuseCode::BadSecret);
                    prop_assert_eq!(*code, close_code::BAD_SECRET);
                } else {
                    prop_assert!(!(h.weight.is_finite() && h.weight > 0.0), "{:?}", refusal);
                    prop_assert_eq!(*code, close_code::PROTOCOL_ERROR);
                }
            }
            (_, ServerVerdict::Refuse { close_code: code, .. }) => {
                // Not a Hello (or garbage that may still begin like one of another version).
                prop_assert!(
                    *code == close_code::PROTOCOL_ERROR || *code == close_code::VERSION_MISMATCH,
                    "code {}", code
                );
            }
        }
        for (s, body) in sent.iter().zip(&got).skip(1) {
            match s {
                Sent::Msg(m) => {
                    let back = decode::<WorkerMsg>(body).unwrap();
                    // NaN weights do not compare equal; compare the bytes instead.
                    prop_assert_eq!(encode_frame(&back).unwrap()[4..].to_vec(), body.clone());
                    prop_assert_eq!(
                        matches!(back, WorkerMsg::Hello(_)),
                        matches!(m, WorkerMsg::Hello(_))
                    );
                }
                Sent::Garbage(g) => {
                    // Garbage may decode (postcard takes non-canonical varints, so not
                    // necessarily back to the same bytes); what it decodes to is stable.
                    if let Ok(m) = decode::<WorkerMsg>(g) {
                        let once = encode_frame(&m).unwrap();
                        let twice = encode_frame(&decode::<WorkerMsg>(&once[4..]).unwrap()).unwrap();
                        prop_assert_eq!(once, twice);
                    }
                }
            }
        }
    }

    /// SPEC §4.2: the worker's side — whatever the coordinator answers first, the worker
    /// proceeds only on a `Welcome` of its own version, reports a version mismatch naming
    /// both versions, passes a refusal's message on, and calls anything else unexpected.
    #[test]
    fn client_handshake_judges_any_first_reply(reply in coord_msg()) {
        let client = ClientHandshake::new(Hello {
            protocol: PROTOCOL_VERSION, secret: "s".into(), uuid: uuid::Uuid::nil(),
            previous_id: None, name: "n".into(), weight: 1.0, software: "t".into(),
            serve_url_base: None,
        });
        let body = encode_frame(&reply).unwrap()[4..].to_vec();
        match (&reply, client.on_reply(&body)) {
            (CoordMsg::Welcome(w), Ok(got)) => {
                prop_assert_eq!(w.protocol, PROTOCOL_VERSION);
                prop_assert_eq!(w, &got.welcome);
                prop_assert!(got.enrolled.is_none());
            }
            (CoordMsg::Enrolled(e), Ok(got)) => {
                prop_assert_eq!(e.welcome.protocol, PROTOCOL_VERSION);
                prop_assert_eq!(Some(e), got.enrolled.as_ref());
            }
            (CoordMsg::Welcome(Welcome { protocol, .. })
                | CoordMsg::Enrolled(Enrolled { welcome: Welcome { protocol, .. }, .. }),
             Err(HandshakeError::VersionMismatch { ours, theirs })) => {
                let w = Welcome { protocol: *protocol, worker_id: 0, software: String::new() };
                prop_assert_eq!((ours, theirs), (PROTOCOL_VERSION, w.protocol));
                prop_assert_ne!(w.protocol, PROTOCOL_VERSION);
            }
            (CoordMsg::Refused(r), Err(HandshakeError::Refused { code, message })) => {
                prop_assert_eq!((r.code, &r.message), (code, &message));
            }
            (CoordMsg::Assign(_) | CoordMsg::OutcomeAck { .. } | CoordMsg::FetchNow { .. }
                | CoordMsg::Relist { .. } | CoordMsg::RefsQuery(_) | CoordMsg::HostBudgets(_)
                | CoordMsg::PeerPlane(_) | CoordMsg::PeerDirectory(_) | CoordMsg::Assign7(_)
                | CoordMsg::PeerGrants(_),
             Err(HandshakeError::Unexpected(_))) => {}
            (r, got) => prop_assert!(false, "{:?} gave {:?}", r, got),
        }
    }
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    (
        any::<u64>(),
        "[a-z/]{0,40}",
        proptest::collection::vec(
            (
                (0usize..3000).prop_map(|n| format!("refs/{}", "x".repeat(n))),
                proptest::option::of(any::<u8>().prop_map(|b| format!("{b:040x}"))),
                proptest::option::of(any::<u8>().prop_map(|b| format!("{b:040x}"))),
            ),
            0..500,
        ),
    )
        .prop_map(|(report_id, repo, changes)| Outcome {
            report_id,
            repo,
            url: "git://h/x".into(),
            finished_ms: 1,
            duration_ms: 1,
            result: FetchResult::Fetched,
            changes: changes
                .into_iter()
                .map(|(name, old, new)| RefChange { name, old, new })
                .collect(),
            ref_count: 1,
            refs_digest: 0,
            next_due_ms: 0,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// SPEC §12 "Wire": whatever the outcomes, every chunk fits in `CHUNK_BYTES` (or holds a
    /// single change too big to split) and the coordinator gets back exactly what was sent,
    /// in order.
    #[test]
    fn spec_12_outcome_chunks_round_trip(mut outcomes in proptest::collection::vec(arb_outcome(), 0..12)) {
        outcomes.sort_by_key(|o| o.report_id);
        outcomes.dedup_by_key(|o| o.report_id);
        let msgs = outcome_frames(outcomes.clone());
        for m in &msgs {
            let len = encode_frame(m).map(|f| f.len()).unwrap_or(usize::MAX);
            prop_assert!(len <= CHUNK_BYTES + 4, "{len}");
        }
        prop_assert_eq!(gitmirror_wire::chunk::reassemble(msgs).unwrap(), outcomes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// SPEC §12 "Event retention" (`GET /api/repos/{id}/refs`): whatever the refs, cursor
    /// and limit, the worker's page passes the coordinator's check, fits in `CHUNK_BYTES`,
    /// and following `next` gives every ref after the cursor exactly once, in order.
    #[test]
    fn spec_12_refs_pages_check_and_cover_any_refs(
        refs in proptest::collection::btree_map(
            (0usize..2000, "[a-z/]{0,12}").prop_map(|(n, s)| format!("refs/{s}{}", "x".repeat(n))),
            "[0-9a-f]{40}",
            0..300,
        ),
        after in proptest::option::of("refs/[a-z/]{0,6}"),
        limit in prop_oneof![Just(0u32), 1u32..50, Just(u32::MAX)],
    ) {
        let mut got = Vec::new();
        let mut cursor = after.clone();
        for _ in 0..=refs.len() + 1 {
            let q = RefsQuery { query: 1, repo: "a/b/c".into(), after: cursor.clone(), limit };
            let p = gitmirror_wire::refs_page::page(&q, &refs);
            prop_assert_eq!(gitmirror_wire::refs_page::check(&q, &p), Ok(()));
            let len = encode_frame(&WorkerMsg::RefsPage(p.clone())).map(|f| f.len()).unwrap_or(usize::MAX);
            prop_assert!(len <= CHUNK_BYTES, "{}", len);
            prop_assert!(p.error.is_none());
            got.extend(p.refs.into_iter().map(|e| (e.name, e.id)));
            cursor = p.next;
            if cursor.is_none() {
                break;
            }
        }
        prop_assert!(cursor.is_none(), "paging ended");
        let want: Vec<(String, String)> = refs
            .into_iter()
            .filter(|(n, _)| after.as_ref().is_none_or(|a| n > a))
            .collect();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: decoder_cases(), .. ProptestConfig::default() })]

    /// SPEC §12: the coordinator's check of a worker's refs page never panics, and what it
    /// accepts answers the query: same id and repo, no more refs than asked, names in
    /// order after the cursor, `next` its last ref.
    #[test]
    fn spec_12_refs_page_check_judges_any_page(
        query in any::<u64>(),
        after in proptest::option::of("[a-c/]{0,4}"),
        limit in any::<u32>(),
        p_query in prop_oneof![3 => Just(None), 1 => any::<u64>().prop_map(Some)],
        p_repo in prop_oneof![3 => Just("a/b/c".to_owned()), 1 => ".{0,8}"],
        names in proptest::collection::vec("[a-c/]{0,4}", 0..6),
        next in proptest::option::of("[a-c/]{0,4}"),
        error in proptest::option::of(".{0,8}"),
    ) {
        let q = RefsQuery { query, repo: "a/b/c".into(), after: after.clone(), limit };
        let p = RefsPage {
            query: p_query.unwrap_or(query),
            repo: p_repo,
            refs: names.iter().map(|n| RefEntry { name: n.clone(), id: "0".into() }).collect(),
            next,
            error,
        };
        if gitmirror_wire::refs_page::check(&q, &p).is_ok() {
            prop_assert_eq!(p.query, q.query);
            prop_assert_eq!(&p.repo, &q.repo);
            prop_assert!(p.refs.len() <= limit.clamp(1, gitmirror_wire::refs_page::MAX_REFS_LIMIT) as usize);
            let mut prev = after.as_deref();
            for r in &p.refs {
                prop_assert!(prev.is_none_or(|x| r.name.as_str() > x));
                prev = Some(&r.name);
            }
            if let Some(n) = &p.next {
                prop_assert_eq!(Some(n), p.refs.last().map(|r| &r.name));
            }
        }
    }
}
