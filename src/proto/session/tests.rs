//! Two sessions joined by a simulated, breakable transport, driven through
//! random schedules: the stream contract must hold for every one of them.

use super::*;
use crate::proto::connection::{Connection, Event};
use crate::proto::replay_ring::{HeapMemory, RingMemory};
use crate::proto::wire::{Frame, Hello, Reply, SessionId};
use bytes::BytesMut;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Ring memory that outlives a "process" of the simulation, as the relay's
/// memfd outlives its worker: the bytes and the acknowledged offset.
struct Kept {
    heap: HeapMemory,
    acked: AtomicU64,
}

// SAFETY: delegates to the heap memory.
unsafe impl RingMemory for Kept {
    fn as_ptr(&self) -> *mut u8 {
        self.heap.as_ptr()
    }
    fn capacity(&self) -> usize {
        self.heap.capacity()
    }
    fn acknowledged(&self, offset: u64) {
        self.acked.store(offset, Ordering::Relaxed);
    }
}

/// One endpoint of the simulation: a session and its local end.
struct Side {
    session: Session,
    /// What the local end writes (all of it, eventually).
    input: Vec<u8>,
    /// How much of `input` was handed to the session.
    pushed: usize,
    /// What the local end has read.
    output: Vec<u8>,
    /// The current transport's protocol.
    connection: Connection,
    /// The relay's way: the replay ring in memory that survives a crash.
    kept: Option<Arc<Kept>>,
    /// The local end was told the peer's stream ended.
    end_taken: bool,
}

impl Side {
    fn new(config: SessionConfig, input: Vec<u8>, now: Instant) -> Side {
        Side {
            session: Session::new(config, now),
            input,
            pushed: 0,
            output: Vec::new(),
            connection: Connection::default(),
            kept: None,
            end_taken: false,
        }
    }

    /// A side that runs as the relay does: its replay buffer a ring in
    /// memory that survives a crash, acknowledging only what its local end
    /// took.
    fn durable(mut config: SessionConfig, input: Vec<u8>, now: Instant) -> Side {
        config.ack_delivered = true;
        let kept = Arc::new(Kept {
            heap: HeapMemory::new(config.replay_capacity),
            acked: AtomicU64::new(0),
        });
        let ring = RingBuffer::new(Arc::clone(&kept) as Arc<dyn RingMemory>, 0, 0).expect("a ring");
        Side {
            kept: Some(kept),
            ..Side::new(config, input, now)
        }
        .with_session(Session::with_ring(config, ring, now))
    }

    fn with_session(mut self, session: Session) -> Side {
        self.session = session;
        self
    }

    /// The process dies and a new one carries the session on from what
    /// outlived it: the ring, and what the local end read and took (which
    /// the relay reads off the kernel's counters).
    fn crash(&mut self, now: Instant) {
        let Some(kept) = &self.kept else { return };
        let ring = RingBuffer::new(
            Arc::clone(kept) as Arc<dyn RingMemory>,
            kept.acked.load(Ordering::Relaxed),
            self.pushed as u64,
        )
        .expect("the kept range fits the ring");
        let restored = Restored {
            ring,
            local_eof: self.session.is_local_eof(),
            received: self.output.len() as u64,
            peer_end: self.end_taken,
        };
        self.session = Session::restore(*self.session.config(), restored, now);
        self.connection = Connection::default();
    }

    fn push(&mut self, n: usize) {
        let n = n
            .min(self.session.local_room())
            .min(self.input.len() - self.pushed);
        if n > 0 {
            let chunk = Bytes::copy_from_slice(&self.input[self.pushed..self.pushed + n]);
            self.session.push_local(chunk);
            self.pushed += n;
        }
        if self.pushed == self.input.len() && !self.session.is_local_eof() {
            self.session.local_eof();
        }
    }

    fn transmit(&mut self, wire: &mut BytesMut, now: Instant) {
        loop {
            self.connection.transmit(&mut self.session, now);
            if self.connection.write_to(wire, usize::MAX) == 0 {
                break;
            }
        }
    }

    /// Feeds up to `n` bytes from the wire; an error when the peer broke the protocol.
    fn receive(&mut self, wire: &mut BytesMut, n: usize, now: Instant) -> Result<(), String> {
        if !self.connection.wants_read(&self.session) {
            return Ok(());
        }
        let n = n.min(wire.len());
        self.connection.receive(&wire.split_to(n));
        self.connection
            .handle_frames(&mut self.session, now)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn pop(&mut self) {
        while let Some(bytes) = self.session.pop_deliver() {
            self.output.extend_from_slice(&bytes);
        }
        if self.session.deliver_finished() && !self.end_taken {
            self.session.local_output_shut();
            self.end_taken = true;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(bool, usize),
    Transmit(bool),
    Receive(bool, usize),
    Pop(bool),
    Break,
    Resume,
    Tick(u64),
    /// The durable side's process dies (and its transport with it).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1usize..3000).prop_map(|(s, n)| Op::Push(s, n)),
        4 => any::<bool>().prop_map(Op::Transmit),
        6 => (any::<bool>(), 1usize..5000).prop_map(|(s, n)| Op::Receive(s, n)),
        3 => any::<bool>().prop_map(Op::Pop),
        1 => Just(Op::Break),
        2 => Just(Op::Resume),
        1 => (0u64..1500).prop_map(Op::Tick),
        1 => Just(Op::Crash),
    ]
}

struct World {
    a: Side,
    b: Side,
    a_to_b: BytesMut,
    b_to_a: BytesMut,
    connected: bool,
    now: Instant,
    breaks: usize,
}

impl World {
    fn side(&mut self, first: bool) -> (&mut Side, &mut BytesMut, &mut BytesMut) {
        if first {
            (&mut self.a, &mut self.a_to_b, &mut self.b_to_a)
        } else {
            (&mut self.b, &mut self.b_to_a, &mut self.a_to_b)
        }
    }

    /// The transport breaks: whatever was in flight, whole frames or halves, is lost.
    fn break_link(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        self.breaks += 1;
        self.a_to_b.clear();
        self.b_to_a.clear();
        self.a.connection = Connection::default();
        self.b.connection = Connection::default();
        self.a.session.detach();
        self.b.session.detach();
    }

    /// A new transport: the resume handshake, `a` as the client and `b` as
    /// the relay, tells each side the other's position.
    fn resume(&mut self) {
        if self.connected {
            return;
        }
        let hello = Hello::Resume {
            dead_after_ms: 1000,
            session: SessionId([0; 16]),
            proof: [0; 32],
            received: self.a.session.received_position(),
        };
        let mut client = Connection::client(&hello).expect("a hello");
        let mut relay = Connection::relay();
        let mut wire = BytesMut::new();
        client.write_to(&mut wire, usize::MAX);
        relay.receive(&wire.split());
        let Ok(Some(Event::HelloReceived(Hello::Resume { received, .. }))) = relay.poll_event()
        else {
            panic!("b reads the hello");
        };
        relay
            .accept_resume(&mut self.b.session, received, Duration::ZERO, self.now)
            .expect("b resumes");
        relay.write_to(&mut wire, usize::MAX);
        client.receive(&wire.split());
        let Ok(Some(Event::ReplyReceived(Reply::Resumed { received, .. }))) = client.poll_event()
        else {
            panic!("a reads the reply");
        };
        self.a
            .session
            .attach(received, self.now)
            .expect("a resumes");
        self.a.connection = client;
        self.b.connection = relay;
        self.connected = true;
    }

    fn apply(&mut self, op: Op) -> Result<(), String> {
        let now = self.now;
        let connected = self.connected;
        match op {
            Op::Push(s, n) => self.side(s).0.push(n),
            Op::Transmit(s) if connected => {
                let (side, out, _) = self.side(s);
                side.transmit(out, now);
            }
            Op::Receive(s, n) if connected => {
                let (side, _, inbound) = self.side(s);
                side.receive(inbound, n, now)?;
            }
            Op::Pop(s) => self.side(s).0.pop(),
            Op::Break => self.break_link(),
            Op::Resume => self.resume(),
            Op::Crash => {
                self.break_link();
                self.b.crash(now);
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                let now = self.now;
                let dead_a = self.a.session.handle_timeout(now);
                let dead_b = self.b.session.handle_timeout(now);
                if dead_a.is_some() || dead_b.is_some() {
                    self.break_link();
                }
            }
            Op::Transmit(_) | Op::Receive(..) => {}
        }
        for side in [&self.a, &self.b] {
            let bound = side.session.config().replay_capacity as u64 + 1;
            if side.session.unacked() > bound {
                return Err(format!(
                    "replay buffer holds {} > {bound}",
                    side.session.unacked()
                ));
            }
        }
        Ok(())
    }

    /// Runs with a healthy link until both sessions are finished.
    fn finish(&mut self) -> Result<(), String> {
        self.resume();
        for _ in 0..100_000 {
            if self.a.session.is_finished() && self.b.session.is_finished() {
                return Ok(());
            }
            for s in [true, false] {
                self.apply(Op::Push(s, usize::MAX))?;
                self.apply(Op::Transmit(s))?;
                self.apply(Op::Receive(!s, usize::MAX))?;
                self.apply(Op::Pop(!s))?;
            }
            // Small acks wait for ACK_DELAY unless a frame carries them.
            self.apply(Op::Tick(ACK_DELAY.as_millis() as u64))?;
            self.resume();
        }
        Err("sessions did not finish".into())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_byte_arrives_exactly_once_across_any_breaks(
        a_in in proptest::collection::vec(any::<u8>(), 0..20_000),
        b_in in proptest::collection::vec(any::<u8>(), 0..20_000),
        replay_capacity in 1usize..6000,
        deliver_capacity in 1usize..6000,
        max_data_len in 1024usize..5000,
        durable in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let now = Instant::now();
        let config = SessionConfig {
            replay_capacity,
            deliver_capacity,
            dead_after: Duration::from_secs(1),
            max_data_len,
            ack_delivered: false,
        };
        let b = if durable {
            Side::durable(config, b_in.clone(), now)
        } else {
            Side::new(config, b_in.clone(), now)
        };
        let mut world = World {
            a: Side::new(config, a_in.clone(), now),
            b,
            a_to_b: BytesMut::new(),
            b_to_a: BytesMut::new(),
            connected: false,
            now,
            breaks: 0,
        };
        world.resume();
        for op in ops {
            world.apply(op).map_err(TestCaseError::fail)?;
        }
        world.finish().map_err(TestCaseError::fail)?;
        prop_assert!(world.a.output == b_in, "a received {} of {} bytes", world.a.output.len(), b_in.len());
        prop_assert!(world.b.output == a_in, "b received {} of {} bytes", world.b.output.len(), a_in.len());
        prop_assert!(world.a.session.deliver_finished() && world.b.session.deliver_finished());
    }
}

#[test]
fn resume_outside_the_held_range_is_a_protocol_error() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::default(), now);
    s.push_local(Bytes::from_static(b"0123456789"));
    s.attach(0, now).unwrap();
    assert!(
        s.attach(11, now).is_err(),
        "peer cannot have more than was read"
    );
    assert!(
        s.attach(5, now).is_err(),
        "peer cannot have bytes that were read but never sent"
    );
    s.handle_frame(Frame::Ack { position: 0 }, now).unwrap();
    while s.poll_transmit(now).is_some() {}
    s.handle_frame(Frame::Ack { position: 4 }, now).unwrap();
    assert!(
        s.attach(3, now).is_err(),
        "peer cannot have less than it acknowledged"
    );
    s.attach(4, now).unwrap();
    assert_eq!(
        s.poll_transmit(now),
        Some(Frame::Ack { position: 0 }),
        "the announcement"
    );
    match s.poll_transmit(now) {
        Some(Frame::Data { offset, bytes }) => {
            assert_eq!(offset, 4);
            assert_eq!(&bytes[..], b"456789");
        }
        other => panic!("expected replayed data, got {other:?}"),
    }
}

#[test]
fn acks_beyond_what_was_sent_and_data_out_of_order_are_rejected() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::default(), now);
    s.attach(0, now).unwrap();
    assert!(s.handle_frame(Frame::Ack { position: 1 }, now).is_err());
    let data = |offset| Frame::Data {
        offset,
        bytes: Bytes::from_static(b"ab"),
    };
    assert!(s.handle_frame(data(1), now).is_err());
    s.handle_frame(data(0), now).unwrap();
    s.handle_frame(Frame::End { offset: 2 }, now).unwrap();
    assert!(s.handle_frame(data(2), now).is_err());
    assert_eq!(s.received_position(), 3);
}

#[test]
fn silence_kills_the_transport_unless_the_local_end_is_slow() {
    let start = Instant::now();
    let config = SessionConfig {
        deliver_capacity: 4,
        dead_after: Duration::from_secs(4),
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, start);
    s.attach(0, start).unwrap();
    opening(&mut s, start);
    // A heartbeat goes out after a quarter of the interval.
    assert_eq!(s.poll_transmit(start), None);
    let t1 = start + Duration::from_secs(1);
    assert!(matches!(s.poll_transmit(t1), Some(Frame::Ping { .. })));
    assert_eq!(s.handle_timeout(start + Duration::from_millis(3999)), None);
    assert_eq!(
        s.handle_timeout(start + Duration::from_secs(4)),
        Some(Dead::Silent)
    );

    // With bytes waiting for a slow local end, silence does not count.
    let mut s = Session::new(config, start);
    s.attach(0, start).unwrap();
    s.handle_frame(
        Frame::Data {
            offset: 0,
            bytes: Bytes::from_static(b"full"),
        },
        start,
    )
    .unwrap();
    assert!(!s.wants_transport_read());
    assert_eq!(s.handle_timeout(start + Duration::from_secs(60)), None);
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

#[test]
fn bytes_of_an_incomplete_frame_keep_the_transport_alive() {
    let start = Instant::now();
    let config = SessionConfig {
        dead_after: Duration::from_secs(4),
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, start);
    s.attach(0, start).unwrap();
    // A large frame trickles in over a slow link: no frame completes for
    // longer than the dead-peer interval, but bytes keep arriving.
    for second in 1..=10 {
        s.heard(start + Duration::from_secs(second));
    }
    assert_eq!(s.handle_timeout(start + Duration::from_secs(10)), None);
    assert_eq!(
        s.handle_timeout(start + Duration::from_secs(14)),
        Some(Dead::Silent)
    );
}

#[test]
fn a_full_write_queue_arms_only_the_dead_peer_check() {
    let start = Instant::now();
    let mut s = Session::new(SessionConfig::default(), start);
    s.attach(0, start).unwrap();
    let heartbeat = start + s.config().heartbeat_interval();
    let dead = start + s.config().dead_after;
    assert_eq!(s.poll_timeout(true), Some(heartbeat));
    // Long past the heartbeat, with no room to send it, the timer must not
    // point into the past (the driver would spin).
    assert_eq!(s.poll_timeout(false), Some(dead));
}

#[test]
fn pong_measures_round_trip_time() {
    let start = Instant::now();
    let mut s = Session::new(SessionConfig::default(), start);
    s.attach(0, start).unwrap();
    opening(&mut s, start);
    let later = start + s.config().heartbeat_interval();
    let token = match s.poll_transmit(later) {
        Some(Frame::Ping { token }) => token,
        other => panic!("expected ping, got {other:?}"),
    };
    s.handle_frame(Frame::Pong { token }, later + Duration::from_millis(7))
        .unwrap();
    assert_eq!(s.stats().rtt, Some(Duration::from_millis(7)));
}

#[test]
fn tiny_frames_fill_the_local_queue_by_count() {
    let now = Instant::now();
    let config = SessionConfig {
        deliver_capacity: 64 * 1024,
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, now);
    s.attach(0, now).unwrap();
    let mut frames = 0u64;
    while s.wants_transport_read() {
        let data = Frame::Data {
            offset: frames,
            bytes: Bytes::from_static(b"x"),
        };
        s.handle_frame(data, now).unwrap();
        frames += 1;
    }
    // 64 KiB of budget at one byte plus the entry cost each: about a
    // thousand frames, not 65,536.
    assert_eq!(frames, (64 * 1024 / (1 + DELIVER_ENTRY_COST)) as u64 + 1);
    while s.pop_deliver().is_some() {}
    assert!(s.wants_transport_read());
}

/// Takes the frames a session sends first on a new transport, when it has
/// no data to send: the announcement (an ack repeating its position) and
/// the probe ping.
pub(super) fn opening(s: &mut Session, now: Instant) {
    assert!(
        matches!(s.poll_transmit(now), Some(Frame::Ack { .. })),
        "the announcement"
    );
    assert!(
        matches!(s.poll_transmit(now), Some(Frame::Ping { .. })),
        "the probe"
    );
}

/// Sends everything `from` has for `to` and lets `to` read it.
fn exchange(from: &mut Session, to: &mut Session, now: Instant) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = from.poll_transmit(now) {
        frames.push(frame.clone());
        to.handle_frame(frame, now).unwrap();
    }
    frames
}

#[test]
fn small_acks_ride_on_the_reply_or_wait_for_the_delay() {
    let t0 = Instant::now();
    let mut a = Session::new(SessionConfig::default(), t0);
    let mut b = Session::new(SessionConfig::default(), t0);
    a.attach(0, t0).unwrap();
    b.attach(0, t0).unwrap();
    exchange(&mut a, &mut b, t0);
    exchange(&mut b, &mut a, t0);
    exchange(&mut a, &mut b, t0);
    let is_ack = |f: &Frame| matches!(f, Frame::Ack { .. });

    // A keystroke: b does not ack it on its own at once…
    a.push_local(Bytes::from_static(b"x"));
    exchange(&mut a, &mut b, t0);
    assert!(exchange(&mut b, &mut a, t0).is_empty());
    assert_eq!(b.poll_timeout(true), Some(t0 + ACK_DELAY));
    // …but with its echo, in the same batch of frames.
    b.push_local(Bytes::from_static(b"x"));
    let frames = exchange(&mut b, &mut a, t0);
    assert!(frames.iter().any(is_ack) && frames.len() == 2, "{frames:?}");
    assert_eq!(a.unacked(), 0);

    // No reply: the ack goes out after ACK_DELAY.
    let t1 = t0 + ACK_DELAY;
    assert!(exchange(&mut a, &mut b, t0).is_empty());
    let frames = exchange(&mut a, &mut b, t1);
    assert!(frames.iter().all(is_ack) && frames.len() == 1, "{frames:?}");
    assert_eq!(b.unacked(), 0);

    // Bulk: acked as soon as ACK_EVERY bytes arrived.
    a.push_local(Bytes::from(vec![0u8; ACK_EVERY as usize]));
    exchange(&mut a, &mut b, t1);
    let frames = exchange(&mut b, &mut a, t1);
    assert!(frames.iter().all(is_ack) && frames.len() == 1, "{frames:?}");
}
