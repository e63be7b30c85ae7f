//! The codec's properties: everything round-trips in any chunking, and no
//! input makes a decoder panic or buffer past its limit.

use super::*;
use bytes::BufMut;
use proptest::prelude::*;

fn code() -> impl Strategy<Value = Code> {
    any::<u8>().prop_map(Code::from_u8)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(offset, v)| Frame::Data {
                offset,
                bytes: Bytes::from(v)
            }),
        any::<u64>().prop_map(|position| Frame::Ack { position }),
        any::<u64>().prop_map(|token| Frame::Ping { token }),
        any::<u64>().prop_map(|token| Frame::Pong { token }),
        any::<u64>().prop_map(|offset| Frame::End { offset }),
        (code(), ".{0,100}").prop_map(|(code, reason)| Frame::Close { code, reason }),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        (any::<u32>(), "[a-z0-9.:-]{0,255}", any::<u16>()).prop_map(
            |(dead_after_ms, host, port)| Hello::New {
                dead_after_ms,
                host,
                port
            }
        ),
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u64>()
        )
            .prop_map(|(dead_after_ms, id, proof, received)| Hello::Resume {
                dead_after_ms,
                session: SessionId(id),
                proof,
                received
            }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            MIN_DATA_LEN as u32..=MAX_DATA_LEN as u32
        )
            .prop_map(|(id, secret, grace_ms, max_data)| Reply::Created {
                session: SessionId(id),
                secret,
                grace_ms,
                max_data,
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(received, grace_ms)| Reply::Resumed { received, grace_ms }),
        (code(), ".{0,100}").prop_map(|(code, reason)| Reply::Refused { code, reason }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(frame(), 0..20),
        cut in 1usize..4000,
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in wire.chunks(cut) {
            buf.extend_from_slice(chunk);
            while let Some((kind, payload)) = split_message(&mut buf).unwrap() {
                decoded.push(Frame::decode(kind, payload).unwrap());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn handshake_round_trips(h in hello(), r in reply()) {
        let mut buf = BytesMut::new();
        h.encode(&mut buf).unwrap();
        r.encode(&mut buf);
        let (k, p) = split_message(&mut buf).unwrap().unwrap();
        prop_assert_eq!(Hello::decode(k, p).unwrap(), h);
        let (k, p) = split_message(&mut buf).unwrap().unwrap();
        prop_assert_eq!(Reply::decode(k, p).unwrap(), r);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some((kind, payload))) = split_message(&mut buf) {
            let _ = Frame::decode(kind, payload.clone());
            let _ = Hello::decode(kind, payload.clone());
            let _ = Reply::decode(kind, payload);
        }
        if bytes.len() >= PREAMBLE_LEN {
            let mut p = [0u8; PREAMBLE_LEN];
            p.copy_from_slice(&bytes[..PREAMBLE_LEN]);
            let _ = Preamble::decode(&p);
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(kind: u8, bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let payload = Bytes::from(bytes);
        let _ = Frame::decode(kind, payload.clone());
        let _ = Hello::decode(kind, payload.clone());
        let _ = Reply::decode(kind, payload);
    }
}

#[test]
fn oversized_header_is_rejected_before_buffering() {
    let mut buf = BytesMut::new();
    put_header(&mut buf, T_DATA, MAX_PAYLOAD_LEN + 1);
    assert!(matches!(
        split_message(&mut buf),
        Err(DecodeError::TooLong { .. })
    ));
}

#[test]
fn preamble_rejects_ssh_banner_and_other_versions() {
    let err = Preamble::decode(b"SSH-2.0-").unwrap_err();
    assert_eq!(err, DecodeError::BadMagic("SSH-2.0-".into()));
    let mut p = Preamble::CURRENT.encode();
    p[7] = 99;
    assert!(matches!(
        Preamble::decode(&p),
        Err(DecodeError::BadVersion { theirs: 99, .. })
    ));
    assert_eq!(
        Preamble::decode(&Preamble::CURRENT.encode()),
        Ok(Preamble::CURRENT)
    );
}

#[test]
fn trailing_bytes_and_truncation_are_errors() {
    let mut buf = BytesMut::new();
    put_header(&mut buf, T_ACK, 9);
    buf.put_slice(&[0; 9]);
    let (k, p) = split_message(&mut buf).unwrap().unwrap();
    assert_eq!(Frame::decode(k, p), Err(DecodeError::TrailingBytes("ack")));
    assert_eq!(
        Frame::decode(T_END, Bytes::from_static(&[1, 2])),
        Err(DecodeError::Truncated("end"))
    );
}

#[test]
fn long_reasons_are_clipped_on_a_char_boundary() {
    let reason = "é".repeat(MAX_REASON_LEN);
    let mut buf = BytesMut::new();
    Frame::Close {
        code: Code::Busy,
        reason,
    }
    .encode(&mut buf);
    let (k, p) = split_message(&mut buf).unwrap().unwrap();
    match Frame::decode(k, p).unwrap() {
        Frame::Close { reason, .. } => assert_eq!(reason.len(), MAX_REASON_LEN),
        other => panic!("unexpected {other:?}"),
    }
}
