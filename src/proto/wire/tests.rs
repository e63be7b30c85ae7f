//! The codec's properties: everything round-trips in any chunking, and no
//! input makes a decoder panic or buffer past its limit.

use super::*;
use crate::proto::fleet::{Home, InstanceName, QuicRoute};
use bytes::BufMut;
use proptest::prelude::*;
use std::net::SocketAddr;

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

/// Instance names: labels of letters, digits and inner hyphens, the last
/// one not a number, up to the longest a DNS name may be.
fn instance() -> impl Strategy<Value = InstanceName> {
    prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,3}\\.[a-z][a-z0-9]{0,5}",
        "[a-z]{1,10}",
        Just(format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        )),
    ]
    .prop_map(|name| name.parse().expect("an instance name"))
}

fn route() -> impl Strategy<Value = QuicRoute> {
    prop_oneof![
        Just(QuicRoute::Direct),
        Just(QuicRoute::TcpOnly),
        (any::<[u8; 4]>(), 1..=u16::MAX)
            .prop_filter("specified", |(ip, _)| *ip != [0; 4])
            .prop_map(|(ip, port)| QuicRoute::At(SocketAddr::from((ip, port)))),
        (any::<[u8; 16]>(), 1..=u16::MAX)
            .prop_filter("specified", |(ip, _)| *ip != [0; 16])
            .prop_map(|(ip, port)| QuicRoute::At(SocketAddr::from((ip, port)))),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            MIN_DATA_LEN as u32..=MAX_DATA_LEN as u32,
            instance(),
            route(),
        )
            .prop_map(
                |(id, secret, grace_ms, max_data, instance, quic)| Reply::Created {
                    session: SessionId(id),
                    secret,
                    grace_ms,
                    max_data,
                    home: Home { instance, quic },
                }
            ),
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

/// A created session's reply with `name` as its instance's name (raw, as a
/// hostile relay might send it) and `route` as its route's bytes.
fn created_with(name: &[u8], route: &[u8]) -> (u8, Bytes) {
    let mut payload = vec![0u8];
    payload.extend_from_slice(&[1; SESSION_ID_LEN + SECRET_LEN]);
    payload.extend_from_slice(&60_000u64.to_be_bytes());
    payload.extend_from_slice(&(MIN_DATA_LEN as u32).to_be_bytes());
    payload.push(name.len() as u8);
    payload.extend_from_slice(name);
    payload.extend_from_slice(route);
    (T_REPLY, Bytes::from(payload))
}

#[test]
fn a_created_sessions_home_is_checked_as_hostile_input() {
    let decode = |name: &[u8], route: &[u8]| {
        let (kind, payload) = created_with(name, route);
        Reply::decode(kind, payload)
    };
    match decode(b"relay-2", &[1]) {
        Ok(Reply::Created { home, .. }) => {
            assert_eq!(home.instance.as_str(), "relay-2");
            assert_eq!(home.quic, QuicRoute::TcpOnly);
        }
        other => panic!("{other:?}"),
    }
    let bad_name = Err(DecodeError::BadField("reply instance"));
    for name in [
        &b""[..],
        b"Relay-2",
        b"relay_2",
        b"10.0.0.1",
        b"relay-2.",
        b"-relay",
        b"relay 2",
        b"relay-2\0",
    ] {
        assert_eq!(decode(name, &[0]), bad_name, "{name:?}");
    }
    assert_eq!(decode(b"r\xc3", &[0]), Err(DecodeError::BadText("reply")));
    // Longer than a DNS name: refused before it is read.
    assert_eq!(
        decode(&[b'a'; 254], &[0]),
        Err(DecodeError::BadText("reply"))
    );
    let bad_address = Err(DecodeError::BadField("reply quic address"));
    assert_eq!(decode(b"r", &[4, 0, 0, 0, 0, 0x1b, 0x6e]), bad_address);
    assert_eq!(decode(b"r", &[4, 192, 0, 2, 1, 0, 0]), bad_address);
    let mut v6 = vec![6];
    v6.extend_from_slice(&[0; 16]);
    v6.extend_from_slice(&[0x1b, 0x6e]);
    assert_eq!(decode(b"r", &v6), bad_address);
    assert_eq!(
        decode(b"r", &[9]),
        Err(DecodeError::BadField("reply quic route"))
    );
    assert_eq!(
        decode(b"r", &[4, 192, 0]),
        Err(DecodeError::Truncated("reply"))
    );
    assert_eq!(decode(b"r", &[]), Err(DecodeError::Truncated("reply")));
    assert_eq!(
        decode(b"r", &[0, 0]),
        Err(DecodeError::TrailingBytes("reply"))
    );
}
