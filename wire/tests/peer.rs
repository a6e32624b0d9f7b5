//! The peer plane's first frames (SPEC §13): golden bytes, and hostile input never panics
//! or allocates past the 4 KiB bound.

#![allow(clippy::unwrap_used)]

use gitmirror_wire::peer::*;
use proptest::prelude::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// postcard is positional: these bytes are the peer protocol. Add variants, never edit.
#[test]
fn spec_13_peer_first_frames_are_pinned() {
    let req = PeerRequest {
        protocol: PEER_PROTOCOL,
        service: PeerService::UploadPack,
        repo: "a/b/c".into(),
    };
    assert_eq!(
        hex(&encode_first(&req).unwrap()),
        "08000000010005612f622f63"
    );
    assert_eq!(
        hex(&encode_first(&PeerReply::Serving).unwrap()),
        "0100000000"
    );
    assert_eq!(
        hex(&encode_first(&PeerReply::Refused(PeerRefusal {
            code: refusal_code::NOT_GRANTED
        }))
        .unwrap()),
        "020000000103"
    );
    assert_eq!(PEER_ALPN, b"gitmirror-peer/1");
    // The refs hash of an empty set and of one ref, pinned (the coordinator keeps these).
    assert_eq!(
        hex(&refs_sha256(std::iter::empty())),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let one = refs_sha256([(
        &b"refs/heads/main"[..],
        &b"0123456789abcdef0123456789abcdef01234567"[..],
    )]);
    let mut text = b"refs/heads/main\0".to_vec();
    text.extend_from_slice(b"0123456789abcdef0123456789abcdef01234567\n");
    assert_eq!(one, sha256sum(&text), "sha256 of `name\\0oid\\n`");
}

/// Independent of the crate: the text hashed by coreutils' `sha256sum`.
fn sha256sum(b: &[u8]) -> [u8; 32] {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut h = [0u8; 32];
    for (i, byte) in h.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // Hostile first frames: any header and body is judged, never a panic; a header over
    // 4 KiB is refused before the body.
    #[test]
    fn spec_13_hostile_first_frames_never_panic(
        header in any::<[u8; 4]>(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        match first_len(header) {
            Ok(len) => prop_assert!(len <= MAX_PEER_REQUEST),
            Err(PeerFrameError::TooLarge { len, .. }) => prop_assert!(len > MAX_PEER_REQUEST),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
        let _ = decode_first::<PeerRequest>(&body);
        let _ = decode_first::<PeerReply>(&body);
    }

    #[test]
    fn spec_13_requests_round_trip(repo in "[a-z0-9/._-]{1,200}", protocol in any::<u32>()) {
        let req = PeerRequest { protocol, service: PeerService::UploadPack, repo };
        let frame = encode_first(&req).unwrap();
        let len = first_len(frame[..4].try_into().unwrap()).unwrap();
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert_eq!(decode_first::<PeerRequest>(&frame[4..]).unwrap(), req);
    }
}
