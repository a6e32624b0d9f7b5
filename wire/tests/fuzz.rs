//! Property tests over arbitrary bytes for every decoder (SPEC §4.2: "the decoders are
//! fuzzed"). None may panic; whatever decodes must re-encode to the same bytes.

use gitmirror_wire::handshake::peek_protocol;
use gitmirror_wire::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

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
        let _ = ServerHandshake::new("s").on_first_frame(&body);
        let _ = peek_protocol(&body);
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
        match ServerHandshake::new("secret").on_first_frame(&bytes) {
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
