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
//!   equals the proof [`resume_auth::proof`] computes.

use crate::frames::check_message;
use crate::input::Input;
use bytes::BytesMut;
use resumeproxy::proto::resume_auth;
use resumeproxy::relay::target_policy::{AllowedTarget, Target, TargetPolicy};
use resumeproxy::proto::resume_auth::BINDING_LEN;
use resumeproxy::proto::wire::{
    split_message, Code, DecodeError, Hello, Preamble, Reply, MAX_REASON_LEN, PREAMBLE_LEN,
    SECRET_LEN,
};

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
        Err(reason) => {
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
