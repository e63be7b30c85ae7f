//! The connection on its own: handshakes from both ends, the relay's
//! answers, and frames in any chunking.

use super::*;
use crate::proto::session::SessionConfig;
use crate::proto::wire::{MAX_DATA_LEN, PROOF_LEN};
use bytes::Bytes;

const GRACE: Duration = Duration::from_secs(30);

/// Where the tests' sessions live.
fn home() -> Home {
    Home {
        instance: "relay-1".parse().unwrap(),
        quic: crate::proto::fleet::QuicRoute::Direct,
    }
}

fn new_hello() -> Hello {
    Hello::New {
        dead_after_ms: 1000,
        host: String::new(),
        port: 22,
    }
}

/// Moves everything `from` has queued to `to`, in pieces of `chunk` bytes.
fn pass(from: &mut Connection, to: &mut Connection, chunk: usize) {
    let mut wire = Vec::new();
    from.write_to(&mut wire, usize::MAX);
    for piece in wire.chunks(chunk) {
        to.receive(piece);
    }
}

/// A client and a relay connection through a new session's handshake, and
/// each side's session attached.
fn opened(now: Instant) -> (Connection, Session, Connection, Session) {
    let mut client = Connection::client(&new_hello()).unwrap();
    let mut relay = Connection::relay();
    assert_eq!(relay.poll_event(), Ok(None), "nothing read yet");
    pass(&mut client, &mut relay, 3);
    assert_eq!(
        relay.poll_event(),
        Ok(Some(Event::HelloReceived(new_hello())))
    );
    assert!(!relay.is_open(), "the relay decides first");
    relay.accept_new(
        SessionId([1; 16]),
        [2; SECRET_LEN],
        GRACE,
        MAX_DATA_LEN,
        home(),
    );
    assert!(relay.is_open());
    pass(&mut relay, &mut client, 5);
    let Ok(Some(Event::ReplyReceived(Reply::Created {
        grace_ms, home: h, ..
    }))) = client.poll_event()
    else {
        panic!("the client reads the reply");
    };
    assert_eq!(grace_ms, 30_000);
    assert_eq!(h, home());
    assert!(client.is_open());
    let mut a = Session::new(SessionConfig::default(), now);
    let mut b = Session::new(SessionConfig::default(), now);
    a.attach(0, now).unwrap();
    b.attach(0, now).unwrap();
    (client, a, relay, b)
}

#[test]
fn a_new_session_opens_and_frames_flow_both_ways_in_any_chunking() {
    let now = Instant::now();
    for chunk in [1, 7, 4096] {
        let (mut client, mut a, mut relay, mut b) = opened(now);
        a.push_local(Bytes::from(vec![7u8; 10_000]));
        a.local_eof();
        b.push_local(Bytes::from_static(b"hello"));
        for _ in 0..4 {
            client.transmit(&mut a, now);
            relay.transmit(&mut b, now);
            pass(&mut client, &mut relay, chunk);
            pass(&mut relay, &mut client, chunk);
            relay.handle_frames(&mut b, now).unwrap();
            client.handle_frames(&mut a, now).unwrap();
        }
        let mut got = Vec::new();
        while let Some(bytes) = b.pop_deliver() {
            got.extend_from_slice(&bytes);
        }
        assert_eq!(got, vec![7u8; 10_000], "chunk {chunk}");
        assert!(b.deliver_finished());
        assert_eq!(a.pop_deliver().as_deref(), Some(&b"hello"[..]));
        assert_eq!(a.unacked(), 0, "acknowledged");
    }
}

#[test]
fn frames_sent_right_after_the_reply_wait_for_the_session() {
    let now = Instant::now();
    let mut client = Connection::client(&new_hello()).unwrap();
    let mut relay = Connection::relay();
    pass(&mut client, &mut relay, usize::MAX);
    relay.poll_event().unwrap();
    relay.accept_new(
        SessionId([1; 16]),
        [2; SECRET_LEN],
        GRACE,
        MAX_DATA_LEN,
        home(),
    );
    let mut b = Session::new(SessionConfig::default(), now);
    b.attach(0, now).unwrap();
    b.push_local(Bytes::from_static(b"banner"));
    relay.transmit(&mut b, now);
    // The reply and the first frame arrive in one read.
    pass(&mut relay, &mut client, usize::MAX);
    assert!(matches!(
        client.poll_event(),
        Ok(Some(Event::ReplyReceived(Reply::Created { .. })))
    ));
    let mut a = Session::new(SessionConfig::default(), now);
    a.attach(0, now).unwrap();
    assert_eq!(client.handle_frames(&mut a, now), Ok(true));
    assert_eq!(a.pop_deliver().as_deref(), Some(&b"banner"[..]));
}

#[test]
fn the_relay_answers_a_stranger_in_words_and_another_version_with_a_refusal() {
    let mut relay = Connection::relay();
    relay.receive(b"SSH-2.0-OpenSSH_9.6\r\n");
    assert!(matches!(relay.poll_event(), Err(DecodeError::BadMagic(_))));
    assert!(relay.is_closed());
    let mut said = Vec::new();
    relay.write_to(&mut said, usize::MAX);
    assert_eq!(said, NOT_A_CLIENT_NOTICE);

    let mut relay = Connection::relay();
    relay.receive(&Preamble { version: 99 }.encode());
    assert!(matches!(
        relay.poll_event(),
        Err(DecodeError::BadVersion { theirs: 99, .. })
    ));
    let mut client = Connection::client(&new_hello()).unwrap();
    client.write_to(&mut Vec::new(), usize::MAX);
    let mut said = BytesMut::new();
    relay.write_to(&mut said, usize::MAX);
    let (preamble, refusal) = said.split_at(PREAMBLE_LEN);
    assert_eq!(preamble, Preamble::CURRENT.encode());
    client.receive(preamble);
    client.receive(refusal);
    match client.poll_event() {
        Ok(Some(Event::ReplyReceived(Reply::Refused { code, reason }))) => {
            assert_eq!(code, Code::Version);
            assert!(reason.contains("upgrade the older"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(client.is_closed());
}

#[test]
fn an_oversized_hello_is_refused_as_soon_as_its_header_is_in() {
    let mut relay = Connection::relay();
    relay.receive(&Preamble::CURRENT.encode());
    relay.receive(&[0x01]);
    relay.receive(&u32::try_from(MAX_HANDSHAKE_LEN + 1).unwrap().to_be_bytes());
    assert!(matches!(
        relay.poll_event(),
        Err(DecodeError::TooLong { .. })
    ));
    assert!(relay.read_capacity() < MAX_HANDSHAKE_LEN);
    assert!(relay.is_closed());
}

#[test]
fn a_resume_is_checked_before_it_is_answered() {
    let now = Instant::now();
    let mut session = Session::new(SessionConfig::default(), now);
    session.push_local(Bytes::from_static(b"0123456789"));
    session.attach(0, now).unwrap();
    while session.poll_transmit(now).is_some() {}
    session.detach();
    // A relay's connection that read a resume from `received`.
    let deciding = |received| {
        let mut relay = Connection::relay();
        relay.receive(&Preamble::CURRENT.encode());
        let mut hello = BytesMut::new();
        let resume = Hello::Resume {
            dead_after_ms: 1000,
            session: SessionId([1; 16]),
            proof: [0; PROOF_LEN],
            received,
        };
        resume.encode(&mut hello).unwrap();
        relay.receive(&hello);
        relay.poll_event().unwrap();
        relay.write_to(&mut Vec::new(), usize::MAX);
        relay
    };
    // The client claims bytes that were never sent: refused, unanswered
    // until the caller says so.
    let mut relay = deciding(11);
    assert!(relay.accept_resume(&mut session, 11, GRACE, now).is_err());
    assert_eq!(relay.queued(), 0);
    assert!(!session.is_attached());
    relay.refuse(Code::Protocol, "out of range");
    assert!(relay.is_closed());

    let mut relay = deciding(4);
    relay.accept_resume(&mut session, 4, GRACE, now).unwrap();
    assert!(relay.is_open() && session.is_attached());
    relay.transmit(&mut session, now);
    let mut said = BytesMut::new();
    relay.write_to(&mut said, usize::MAX);
    let (kind, payload) = split_message_within(&mut said, MAX_HANDSHAKE_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(
        Reply::decode(kind, payload),
        Ok(Reply::Resumed {
            received: 0,
            grace_ms: 30_000
        })
    );
    // The session's first frame is its announcement (see `liveness.rs`).
    let (kind, payload) = split_message_within(&mut said, usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(Frame::decode(kind, payload), Ok(Frame::Ack { position: 0 }));
    let (kind, payload) = split_message_within(&mut said, usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        Frame::decode(kind, payload),
        Ok(Frame::Data {
            offset: 4,
            bytes: Bytes::from_static(b"456789")
        })
    );

    // While the session is live on that connection, a late attempt (from
    // before the client's acknowledgement of 4) does not take it; a new
    // one does: the new transport wins.
    let mut late = deciding(2);
    assert!(late.accept_resume(&mut session, 2, GRACE, now).is_err());
    assert!(session.is_attached() && late.queued() == 0);
    let mut newer = deciding(10);
    newer.accept_resume(&mut session, 10, GRACE, now).unwrap();
    assert!(session.is_attached() && newer.is_open());
}

#[test]
fn a_frame_over_the_sessions_limit_is_refused_and_a_partial_one_keeps_it_alive() {
    let start = Instant::now();
    let (mut client, mut a, _, _) = opened(start);
    let limit = a.max_payload_in();
    let mut header = vec![0x10];
    header.extend_from_slice(&u32::try_from(limit).unwrap().to_be_bytes());
    client.receive(&header);
    let later = start + Duration::from_secs(3);
    assert_eq!(client.handle_frames(&mut a, later), Ok(false));
    let dead_after = a.config().dead_after;
    assert_eq!(
        a.handle_timeout(start + dead_after),
        None,
        "bytes arrived at 3 s"
    );
    // Once open, the read buffer keeps room for a large read.
    let buf = client.read_buf();
    assert!(buf.capacity() - buf.len() >= READ_SIZE / 4);

    let (mut client, mut a, _, _) = opened(start);
    let mut header = vec![0x10];
    header.extend_from_slice(&u32::try_from(limit + 1).unwrap().to_be_bytes());
    client.receive(&header);
    assert!(matches!(
        client.handle_frames(&mut a, start),
        Err(ConnectionError::Decode(DecodeError::TooLong { .. }))
    ));
}

#[test]
fn errors_read_as_protocol_errors() {
    let decode = ConnectionError::Decode(DecodeError::UnknownType(0x7f));
    assert_eq!(
        decode.to_string(),
        "protocol error: unexpected message type 0x7f"
    );
    let session = ConnectionError::Session(ProtocolError::SecondEnd);
    assert_eq!(session.to_string(), "protocol error: second end marker");
}
