//! The liveness rules (`liveness.rs`) on two sessions and a simulated
//! network: a path that loses large writes is found dead within the
//! dead-peer interval, by the stall rule on the side whose data waits and by
//! silence on the other; a slow but moving link — however slow its local
//! ends, however deep its buffers, one way or both — never is.

use super::tests::opening;
use super::*;
use crate::proto::connection::Connection;
use crate::proto::wire::MAX_DATA_LEN;
use bytes::BytesMut;
use proptest::prelude::*;

/// A connection, opened, over which a session's frames travel (the
/// handshake is the connection's own tests' business).
fn open_connection() -> Connection {
    let hello = crate::proto::wire::Hello::New {
        dead_after_ms: 1000,
        host: String::new(),
        port: 22,
    };
    let mut client = Connection::client(&hello).expect("a hello");
    let mut relay = Connection::relay();
    let mut wire = BytesMut::new();
    client.write_to(&mut wire, usize::MAX);
    relay.receive(&wire.split());
    relay.poll_event().expect("a hello").expect("one");
    relay.accept_new(
        crate::proto::wire::SessionId([0; 16]),
        [0; 32],
        Duration::ZERO,
        MAX_DATA_LEN,
        crate::proto::fleet::Home {
            instance: "relay-1".parse().expect("a name"),
            quic: crate::proto::fleet::QuicRoute::Direct,
        },
    );
    relay.write_to(&mut wire, usize::MAX);
    client.receive(&wire.split());
    client.poll_event().expect("a reply").expect("one");
    assert!(client.is_open() && relay.is_open());
    client
}

/// One side of the simulated link: its session, the connection its frames
/// go out and come in by, and its local end.
struct End {
    session: Session,
    connection: Connection,
    /// Bytes its local end still has to write.
    to_send: u64,
    /// Bytes its local end may take per millisecond (0: it takes nothing).
    take_rate: usize,
    /// Bytes its local end took.
    taken: u64,
    dead: Option<(Dead, Instant)>,
}

impl End {
    fn new(config: SessionConfig, to_send: u64, take_rate: usize, now: Instant) -> End {
        let mut session = Session::new(config, now);
        session.attach(0, now).expect("a fresh session attaches");
        End {
            session,
            connection: open_connection(),
            to_send,
            take_rate,
            taken: 0,
            dead: None,
        }
    }

    /// One millisecond of its local end and its session.
    fn step(&mut self, now: Instant) {
        let room = self.session.local_room().min(MAX_DATA_LEN) as u64;
        let n = room.min(self.to_send) as usize;
        if n > 0 {
            self.session.push_local(Bytes::from(vec![7u8; n]));
            self.to_send -= n as u64;
        }
        let mut budget = self.take_rate;
        while budget > 0 {
            let Some(front) = self.session.pending_delivery() else {
                break;
            };
            let n = front.len().min(budget);
            self.session.delivered(n);
            self.taken += n as u64;
            budget -= n;
        }
        self.connection.transmit(&mut self.session, now);
        if self.dead.is_none() {
            if let Some(dead) = self.session.handle_timeout(now) {
                self.dead = Some((dead, now));
            }
        }
    }
}

/// One direction of the network: a socket buffer that drains at a rate.
struct Path {
    /// What the kernels hold: the sender's send buffer, then the receiver's.
    buffer: BytesMut,
    /// Its bound: the sender's socket takes no more.
    capacity: usize,
    /// Bytes that cross per millisecond.
    rate: usize,
    /// From now on a write that is not small is lost, with everything
    /// after it (a path whose MTU shrank, as `sim/net.rs` models it).
    shrunk: bool,
    stuck: bool,
}

impl Path {
    fn new(rate: usize, capacity: usize) -> Path {
        Path {
            buffer: BytesMut::new(),
            capacity,
            rate,
            shrunk: false,
            stuck: false,
        }
    }

    /// One millisecond: what `from` queued enters the path, what crossed it
    /// reaches `to` (if `to` reads).
    fn carry(&mut self, from: &mut End, to: &mut End, now: Instant) {
        if self.shrunk && from.connection.queued() > 64 {
            self.stuck = true;
        }
        let room = self.capacity.saturating_sub(self.buffer.len());
        if self.stuck {
            from.connection.write_to(&mut BytesMut::new(), room);
        } else {
            from.connection.write_to(&mut self.buffer, room);
        }
        if to.connection.wants_read(&to.session) {
            let n = self.rate.min(self.buffer.len());
            if n > 0 {
                to.connection.receive(&self.buffer.split_to(n));
            }
            to.connection
                .handle_frames(&mut to.session, now)
                .expect("honest frames");
        }
    }
}

/// Two sessions over two paths, a millisecond at a time.
struct Link {
    a: End,
    b: End,
    a_to_b: Path,
    b_to_a: Path,
    now: Instant,
}

impl Link {
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += Duration::from_millis(1);
            let now = self.now;
            self.a.step(now);
            self.b.step(now);
            self.a_to_b.carry(&mut self.a, &mut self.b, now);
            self.b_to_a.carry(&mut self.b, &mut self.a, now);
        }
    }
}

fn config(dead_after: Duration, replay_capacity: usize, ack_delivered: bool) -> SessionConfig {
    SessionConfig {
        replay_capacity,
        dead_after,
        ack_delivered,
        ..SessionConfig::default()
    }
}

#[test]
fn a_path_that_loses_large_writes_is_dead_within_the_dead_peer_interval() {
    let dead_after = Duration::from_secs(2);
    // `a` sends in bulk, `b` only acks: a download (`a` is the relay, which
    // acknowledges only what its local end took) or an upload.
    for a_is_relay in [true, false] {
        let start = Instant::now();
        let mut link = Link {
            a: End::new(
                config(dead_after, 4 << 20, a_is_relay),
                1 << 30,
                1 << 20,
                start,
            ),
            b: End::new(config(dead_after, 4 << 20, !a_is_relay), 0, 1 << 20, start),
            a_to_b: Path::new(12_500, 1 << 20),
            b_to_a: Path::new(12_500, 1 << 20),
            now: start,
        };
        link.run(1000);
        assert!(link.b.taken > 1 << 20, "data flows at first");
        link.a_to_b.shrunk = true;
        // What was in flight still arrives.
        while !link.a_to_b.buffer.is_empty() {
            link.run(1);
        }
        let drained_at = link.now;
        link.run(dead_after.as_millis() as u64 + 1000);
        let (a_dead, a_at) = link.a.dead.expect("the sender finds it dead");
        let (b_dead, b_at) = link.b.dead.expect("the receiver finds it dead");
        // The sender hears the receiver's heartbeats: its data stalled.
        assert_eq!(a_dead, Dead::Stalled, "a is the relay: {a_is_relay}");
        // The receiver hears nothing: what the sender queued after its
        // data, heartbeats included, is lost with it.
        assert_eq!(b_dead, Dead::Silent);
        // Within the interval of the last sign of the other side's progress:
        // at most a heartbeat interval after the last bytes (a keep-alive
        // ack for the part of a frame that arrived).
        let heartbeat = dead_after / 4;
        for (side, at) in [("a", a_at), ("b", b_at)] {
            let after = at - drained_at;
            assert!(
                after >= dead_after - Duration::from_millis(5)
                    && after <= dead_after + heartbeat + Duration::from_millis(5),
                "{side} found it dead {after:?} after the last bytes arrived (dead-after {dead_after:?}, a is the relay: {a_is_relay})"
            );
        }
    }
}

#[test]
fn a_peer_that_never_announced_is_judged_by_silence_alone() {
    let start = Instant::now();
    let dead_after = Duration::from_secs(1);
    let mut a = Session::new(config(dead_after, 1 << 20, false), start);
    a.attach(0, start).unwrap();
    opening(&mut a, start);
    a.push_local(Bytes::from(vec![1u8; 1000]));
    assert!(matches!(a.poll_transmit(start), Some(Frame::Data { .. })));
    // Its data is never acknowledged, but the peer (of an earlier release:
    // no announcement) sends heartbeats.
    for ms in (0..=5000).step_by(200) {
        let now = start + Duration::from_millis(ms);
        a.handle_frame(Frame::Ping { token: ms }, now).unwrap();
        while a.poll_transmit(now).is_some() {}
        assert_eq!(a.handle_timeout(now), None, "at {ms} ms");
    }
    // The same with the announcement: a stall.
    let mut a = Session::new(config(dead_after, 1 << 20, false), start);
    a.attach(0, start).unwrap();
    a.handle_frame(Frame::Ack { position: 0 }, start).unwrap();
    a.push_local(Bytes::from(vec![1u8; 1000]));
    while a.poll_transmit(start).is_some() {}
    let mut stalled = None;
    for ms in (0..=5000).step_by(100) {
        let now = start + Duration::from_millis(ms);
        a.handle_frame(Frame::Ping { token: ms }, now).unwrap();
        while a.poll_transmit(now).is_some() {}
        if let Some(dead) = a.handle_timeout(now) {
            stalled = Some((dead, ms));
            break;
        }
    }
    assert_eq!(stalled, Some((Dead::Stalled, 1000)));
}

#[test]
fn a_receiver_that_holds_data_back_sends_keep_alive_acks() {
    let start = Instant::now();
    let dead_after = Duration::from_secs(1);
    let heartbeat = dead_after / 4;
    // The relay's way: it acknowledges only what its local end took, and
    // its local end takes nothing.
    let mut b = Session::new(config(dead_after, 1 << 20, true), start);
    b.attach(0, start).unwrap();
    opening(&mut b, start);
    b.handle_frame(
        Frame::Data {
            offset: 0,
            bytes: Bytes::from(vec![2u8; 100]),
        },
        start,
    )
    .unwrap();
    let mut acks = Vec::new();
    for ms in 0..=3000 {
        let now = start + Duration::from_millis(ms);
        while let Some(frame) = b.poll_transmit(now) {
            if let Frame::Ack { position } = frame {
                acks.push((ms, position));
            }
        }
    }
    // Nothing new to acknowledge: the same position, every heartbeat.
    assert!(acks.iter().all(|&(_, position)| position == 0), "{acks:?}");
    let times: Vec<u64> = acks.iter().map(|&(ms, _)| ms).collect();
    let every = heartbeat.as_millis() as u64;
    assert_eq!(
        times,
        (every..=3000).step_by(every as usize).collect::<Vec<_>>()
    );
    // Once it took everything and nothing arrives, it falls quiet.
    b.delivered(100);
    let later = start + Duration::from_secs(4);
    let frames: Vec<Frame> = std::iter::from_fn(|| b.poll_transmit(later)).collect();
    assert_eq!(frames, vec![Frame::Ack { position: 100 }]);
    let much_later = later + Duration::from_secs(1);
    assert!(matches!(
        b.poll_transmit(much_later),
        Some(Frame::Ping { .. })
    ));
    assert_eq!(b.poll_transmit(much_later), None);
}

#[test]
fn a_transport_carries_data_once_the_peer_answers_after_what_was_queued() {
    let t0 = Instant::now();
    let mut a = Session::new(SessionConfig::default(), t0);
    let mut b = Session::new(SessionConfig::default(), t0);
    a.attach(0, t0).unwrap();
    b.attach(0, t0).unwrap();
    // Idle both ways: the probe's pong says the transport works.
    let a_opening: Vec<Frame> = std::iter::from_fn(|| a.poll_transmit(t0)).collect();
    let b_opening: Vec<Frame> = std::iter::from_fn(|| b.poll_transmit(t0)).collect();
    for frame in b_opening {
        a.handle_frame(frame, t0).unwrap();
    }
    assert!(
        !a.take_flowing(),
        "the peer's announcement and probe say nothing"
    );
    for frame in a_opening {
        b.handle_frame(frame, t0).unwrap();
    }
    let answer: Vec<Frame> = std::iter::from_fn(|| b.poll_transmit(t0)).collect();
    assert!(matches!(answer[..], [Frame::Pong { .. }]), "{answer:?}");
    for frame in answer {
        a.handle_frame(frame, t0).unwrap();
    }
    assert!(a.take_flowing());
    assert!(!a.take_flowing(), "told once");
    assert!(a.is_flowing());

    // With data to replay, the probe goes after it: the data's ack (or the
    // pong) arrives only if the data did.
    a.detach();
    a.push_local(Bytes::from(vec![3u8; 5000]));
    a.attach(0, t0).unwrap();
    let sent: Vec<Frame> = std::iter::from_fn(|| a.poll_transmit(t0)).collect();
    assert!(
        matches!(
            sent[..],
            [Frame::Ack { .. }, Frame::Data { .. }, Frame::Ping { .. }]
        ),
        "{sent:?}"
    );
    a.handle_frame(Frame::Ack { position: 0 }, t0).unwrap();
    a.handle_frame(Frame::Ping { token: 9 }, t0).unwrap();
    assert!(!a.take_flowing(), "small frames alone are no flow");
    a.handle_frame(Frame::Ack { position: 5000 }, t0).unwrap();
    assert!(a.take_flowing());

    // Data from the peer is flow too.
    a.detach();
    a.attach(5000, t0).unwrap();
    assert!(!a.is_flowing());
    let data = Frame::Data {
        offset: b.received_position(),
        bytes: Bytes::from_static(b"x"),
    };
    a.handle_frame(Frame::Ack { position: 5000 }, t0).unwrap();
    a.handle_frame(data, t0).unwrap();
    assert!(a.take_flowing());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// A slow but moving link is never found dead: one way or both, from
    /// 100 kbit/s up, with deep buffers (the acks of one direction waiting
    /// behind the other's data), and local ends that take their data slowly
    /// or not at all for a while.
    #[test]
    fn a_slow_but_moving_link_is_never_found_dead(
        rate in prop_oneof![Just(13usize), Just(125), 13usize..2000],
        capacity_kib in 64usize..4096,
        replay_kib in 64usize..8192,
        dead_after_ms in 1000u64..5000,
        both_ways in any::<bool>(),
        ack_delivered in any::<bool>(),
        take_rate in prop_oneof![Just(0usize), 1usize..200, Just(1 << 20)],
        pause_ms in 0u64..20_000,
    ) {
        let start = Instant::now();
        let dead_after = Duration::from_millis(dead_after_ms);
        let replay = replay_kib << 10;
        let b_sends = if both_ways { 1 << 30 } else { 0 };
        let mut link = Link {
            a: End::new(config(dead_after, replay, false), 1 << 30, 1 << 20, start),
            b: End::new(config(dead_after, replay, ack_delivered), b_sends, take_rate, start),
            a_to_b: Path::new(rate, capacity_kib << 10),
            b_to_a: Path::new(rate, capacity_kib << 10),
            now: start,
        };
        // `b`'s local end is slow (or stopped) for a while, then keeps up.
        link.run(pause_ms);
        link.b.take_rate = 1 << 20;
        link.run(20_000);
        prop_assert_eq!(link.a.dead, None, "a");
        prop_assert_eq!(link.b.dead, None, "b");
        prop_assert!(link.b.taken > 0, "data flowed");
    }
}

#[test]
fn the_side_that_judges_second_waits_a_heartbeat_interval_more() {
    let start = Instant::now();
    let config = SessionConfig {
        dead_after: Duration::from_secs(4),
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, start);
    s.judge_second();
    s.attach(0, start).unwrap();
    assert_eq!(s.dead_after(), Duration::from_secs(5));
    assert_eq!(s.poll_timeout(false), Some(start + Duration::from_secs(5)));
    assert_eq!(s.handle_timeout(start + Duration::from_secs(4)), None);
    assert_eq!(
        s.handle_timeout(start + Duration::from_secs(5)),
        Some(Dead::Silent)
    );
}
