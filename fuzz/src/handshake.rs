//! The `handshake` target: what each side reads when a transport opens.
//!
//! Input: the bytes a peer sends first. The first [`PREAMBLE_LEN`] are its
//! preamble; what follows is split into messages as `handshake::relay` and
//! `handshake::client` do (limit [`MAX_PAYLOAD_LEN`]) and each message is
//! read as a [`Hello`] (the relay's view) and as a [`Reply`] (the client's).
//! The messages are read whether or not the preamble was accepted, so that
//! the decoders behind it are reached without a valid magic.
//!
//! Asserts, besides everything [`crate::frames::check_message`] asserts:
//! * nothing panics; an accepted preamble is this build's and encodes back
//!   to the same bytes; a refused one is described in printable ASCII of
//!   bounded length (it is logged);
//! * a hello's target goes through the relay's [`TargetPolicy`], with and
//!   without named targets allowed: it reaches the default target only when
//!   it names no host and the default port, a named target only when that
//!   target is allowed, and a refusal fits a [`Reply::Refused`] unclipped and
//!   survives its round trip;
//! * a resume's proof is accepted by [`resume_auth::verify`] exactly when it
//!   equals the proof [`resume_auth::proof`] computes;
//! * a relay's and a client's [`Connection`], fed the same bytes in pieces,
//!   read what the decoders above read: the preamble, then one message of at
//!   most [`MAX_HANDSHAKE_LEN`] as a hello (relay) or a reply (client); the
//!   relay answers a preamble with its own, a stranger with
//!   [`NOT_A_CLIENT_NOTICE`], another version with a refusal.

use crate::frames::check_message;
use crate::input::Input;
use bytes::BytesMut;
use resumeproxy::proto::connection::{Connection, Event, NOT_A_CLIENT_NOTICE};
use resumeproxy::proto::resume_auth;
use resumeproxy::proto::resume_auth::BINDING_LEN;
use resumeproxy::proto::wire::{
    split_message, split_message_within, Code, DecodeError, Hello, Preamble, Reply,
    MAX_HANDSHAKE_LEN, MAX_REASON_LEN, PREAMBLE_LEN, SECRET_LEN,
};
use resumeproxy::relay::target_policy::{AllowedTarget, Target, TargetPolicy};

/// The resume secret the target's relay holds for every session.
pub const SECRET: [u8; SECRET_LEN] = [0x5e; SECRET_LEN];
/// The channel binding of the target's connection.
pub const BINDING: [u8; BINDING_LEN] = [0xb1; BINDING_LEN];

/// The relays' targets in this harness: one that forwards only to its
/// default target, and a bastion that also allows two named ones.
fn policies() -> [TargetPolicy; 2] {
    let default = "127.0.0.1:22".parse().unwrap();
    [
        TargetPolicy {
            default,
            allowed: Vec::new(),
        },
        TargetPolicy {
            default,
            allowed: vec![
                "db.internal:22".parse().unwrap(),
                "[fd00::5]:2222".parse().unwrap(),
            ],
        },
    ]
}

/// Runs one `handshake` input.
pub fn run(data: &[u8]) {
    check_connections(data);
    let mut input = Input::new(data);
    let preamble = input.bytes(PREAMBLE_LEN);
    if let Ok(raw) = <&[u8; PREAMBLE_LEN]>::try_from(preamble) {
        check_preamble(raw);
    }
    let mut buf = BytesMut::from(input.rest());
    while let Ok(Some((kind, payload))) = split_message(&mut buf) {
        check_message(kind, &payload);
        if let Ok(hello) = Hello::decode(kind, payload.clone()) {
            check_hello(&hello);
        }
        // A reply needs nothing beyond its round trip: the client acts on
        // its fields as they are, and `check_message` checked `max_data`.
        let _ = Reply::decode(kind, payload);
    }
}

/// What a connection must read from `data`: the preamble's verdict, then
/// the first message (or what stopped it).
fn expected(data: &[u8]) -> Result<Option<(u8, bytes::Bytes)>, DecodeError> {
    let Some(raw) = data.get(..PREAMBLE_LEN) else {
        return Ok(None);
    };
    Preamble::decode(raw.try_into().expect("a preamble's length"))?;
    let mut rest = BytesMut::from(&data[PREAMBLE_LEN..]);
    split_message_within(&mut rest, MAX_HANDSHAKE_LEN)
}

/// Feeds `data` to `connection` in pieces of growing size, polling after
/// each, until it has an event or fails.
fn feed(connection: &mut Connection, data: &[u8]) -> Result<Option<Event>, DecodeError> {
    let mut at = 0;
    let mut piece = 1;
    loop {
        let polled = connection.poll_event();
        if !matches!(polled, Ok(None)) || at == data.len() {
            return polled;
        }
        let end = (at + piece).min(data.len());
        connection.receive(&data[at..end]);
        at = end;
        piece *= 2;
    }
}

fn check_connections(data: &[u8]) {
    let expected = expected(data);
    let preamble_ok = data.len() >= PREAMBLE_LEN
        && Preamble::decode(
            data[..PREAMBLE_LEN]
                .try_into()
                .expect("a preamble's length"),
        )
        .is_ok();

    let mut relay = Connection::relay();
    let read = feed(&mut relay, data);
    let mut answer = BytesMut::new();
    relay.write_to(&mut answer, usize::MAX);
    match (&expected, read) {
        (Ok(None), Ok(None)) => {}
        (Ok(Some((kind, payload))), read) => match (Hello::decode(*kind, payload.clone()), read) {
            (Ok(hello), Ok(Some(Event::HelloReceived(read)))) => {
                assert_eq!(hello, read);
                assert!(!relay.is_open() && !relay.is_closed(), "the answer is due");
            }
            (Err(e), Err(read)) => assert_eq!(e, read),
            (hello, read) => panic!("the relay read {read:?}, the decoder {hello:?}"),
        },
        (Err(e), Err(read)) => assert_eq!(e, &read),
        (expected, read) => panic!("the relay read {read:?}, expected {expected:?}"),
    }
    let current = Preamble::CURRENT.encode();
    match &expected {
        Err(DecodeError::BadMagic(_)) => assert_eq!(&answer[..], NOT_A_CLIENT_NOTICE),
        Err(DecodeError::BadVersion { .. }) => {
            assert_eq!(&answer[..PREAMBLE_LEN], &current);
            let mut refusal = answer.split_off(PREAMBLE_LEN);
            let (kind, payload) = split_message(&mut refusal).unwrap().unwrap();
            assert!(matches!(
                Reply::decode(kind, payload),
                Ok(Reply::Refused {
                    code: Code::Version,
                    ..
                })
            ));
        }
        _ if preamble_ok => assert_eq!(&answer[..], &current),
        _ => assert!(answer.is_empty()),
    }

    let mut client = Connection::client(&Hello::New {
        dead_after_ms: 1000,
        host: String::new(),
        port: 22,
    })
    .expect("a hello encodes");
    client.write_to(&mut BytesMut::new(), usize::MAX);
    let read = feed(&mut client, data);
    match (&expected, read) {
        (Ok(None), Ok(None)) => {}
        (Ok(Some((kind, payload))), read) => match (Reply::decode(*kind, payload.clone()), read) {
            (Ok(reply), Ok(Some(Event::ReplyReceived(read)))) => {
                let open = !matches!(reply, Reply::Refused { .. });
                assert_eq!(reply, read);
                assert_eq!(client.is_open(), open);
            }
            (Err(e), Err(read)) => assert_eq!(e, read),
            (reply, read) => panic!("the client read {read:?}, the decoder {reply:?}"),
        },
        (Err(e), Err(read)) => assert_eq!(e, &read),
        (expected, read) => panic!("the client read {read:?}, expected {expected:?}"),
    }
    assert_eq!(client.queued(), 0, "a client answers nothing");
}

fn check_preamble(raw: &[u8; PREAMBLE_LEN]) {
    match Preamble::decode(raw) {
        Ok(preamble) => {
            assert_eq!(preamble, Preamble::CURRENT);
            assert_eq!(&preamble.encode(), raw);
        }
        Err(DecodeError::BadMagic(shown)) => {
            assert!(
                shown.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "unprintable magic shown: {shown:?}"
            );
            assert!(shown.len() <= 4 * PREAMBLE_LEN);
        }
        Err(DecodeError::BadVersion { theirs, ours }) => {
            assert_ne!(theirs, ours);
            assert_eq!(raw, &Preamble { version: theirs }.encode());
        }
        Err(other) => panic!("preamble refused with {other:?}"),
    }
}

fn check_hello(hello: &Hello) {
    match hello {
        Hello::New { host, port, .. } => {
            for policy in policies() {
                check_target(&policy, host, *port);
            }
        }
        Hello::Resume { session, proof, .. } => {
            let expected = resume_auth::proof(&SECRET, session, &BINDING);
            assert_eq!(
                resume_auth::verify(&SECRET, session, &BINDING, proof),
                *proof == expected
            );
        }
    }
}

fn check_target(policy: &TargetPolicy, host: &str, port: u16) {
    match policy.decide(host, port) {
        Ok(Target::Default(addr)) => {
            assert!(host.is_empty() && port == addr.port() && addr == policy.default);
        }
        Ok(Target::Named(target)) => {
            let wanted = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            assert!(policy.allowed.contains(&target), "{target} is not allowed");
            assert_eq!(target.port, port);
            assert!(target.host.eq_ignore_ascii_case(wanted));
            let shown: AllowedTarget = target.to_string().parse().expect("shown as HOST:PORT");
            assert_eq!(shown, target);
        }
        Err(refused) => {
            let reason = refused.to_string();
            assert!(
                reason.len() <= MAX_REASON_LEN,
                "a refusal of {} bytes would be clipped",
                reason.len()
            );
            let refused = Reply::Refused {
                code: Code::TargetRefused,
                reason,
            };
            let mut buf = BytesMut::new();
            refused.encode(&mut buf);
            let (kind, payload) = split_message(&mut buf)
                .expect("a refusal is within limits")
                .expect("a refusal is whole");
            assert_eq!(Reply::decode(kind, payload).as_ref(), Ok(&refused));
        }
    }
}
