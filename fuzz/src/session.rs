//! The `session` target: one [`Session`] driven as its driver (`link`) drives
//! it, through a [`Connection`], with a hostile peer and a model of what the
//! session must do.
//!
//! Input: a [`Setup`], then [`Op`]s until the input ends. The peer's bytes
//! arrive raw ([`Op::Raw`]) or as frames built around the session's current
//! positions ([`Op::Frame`]), so that both garbage and near-valid traffic
//! reach the state machine; either way they go through the real decoder.
//! A protocol error ends the run, as it ends the session. Each new transport
//! is a relay's connection that read a resume and answers it
//! ([`Connection::accept_resume`]).
//!
//! Asserts:
//! * nothing panics;
//! * every frame from the peer is accepted or refused exactly as the model
//!   predicts (data and end only at the next offset, acks only up to what was
//!   sent, resumes only within what is held);
//! * what the session sends is right: data at the next offset, within the
//!   frame limit, carrying exactly the bytes the local end wrote; the end
//!   marker at the stream's end; acks of exactly what was received; pongs
//!   with the ping's token; and once it has nothing more to send, nothing is
//!   owed (no stall) but a small ack, held back at most `ACK_DELAY`. Each
//!   frame encodes and decodes back to itself;
//! * the local end gets exactly the bytes the peer's accepted data carried,
//!   in order, and the session's counters, positions, backpressure
//!   ([`Session::local_room`], [`Session::wants_transport_read`]) and end
//!   state agree with the model after every step.

use crate::input::Input;
use bytes::{Bytes, BytesMut};
use resumeproxy::proto::connection::{Connection, ConnectionError, Event};
use resumeproxy::proto::session::{
    Session, SessionConfig, ACK_DELAY, DELIVER_ENTRY_COST, MAX_DEAD_AFTER, MIN_DEAD_AFTER,
};
use resumeproxy::proto::wire::{
    split_message_within, Code, Frame, Hello, Preamble, Reply, SessionId, MAX_DATA_LEN,
    MIN_DATA_LEN, PROOF_LEN,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most frames one [`Op::Transmit`] may produce before the session must
/// have run out of things to send (it holds at most this many data frames'
/// worth, since the replay buffer is bounded).
const MAX_TRANSMIT: usize = 1 << 20;

/// The session's tunables, as read from the input.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// [`SessionConfig::replay_capacity`]: 1 to 65536.
    pub replay: u16,
    /// [`SessionConfig::deliver_capacity`]: 0 to 65535.
    pub deliver: u16,
    /// [`SessionConfig::max_data_len`], above [`MIN_DATA_LEN`], wrapping
    /// within [`MAX_DATA_LEN`].
    pub max_data: u32,
    /// [`SessionConfig::dead_after`] in milliseconds, wrapping within its bounds.
    pub dead_after_ms: u32,
}

impl Setup {
    fn read(input: &mut Input) -> Setup {
        Setup {
            replay: input.u16(),
            deliver: input.u16(),
            max_data: input.u32(),
            dead_after_ms: input.u32(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.replay.to_be_bytes());
        out.extend_from_slice(&self.deliver.to_be_bytes());
        out.extend_from_slice(&self.max_data.to_be_bytes());
        out.extend_from_slice(&self.dead_after_ms.to_be_bytes());
    }

    fn config(&self) -> SessionConfig {
        let min_dead = MIN_DEAD_AFTER.as_millis() as u64;
        let dead_range = MAX_DEAD_AFTER.as_millis() as u64 - min_dead + 1;
        SessionConfig {
            replay_capacity: usize::from(self.replay) + 1,
            deliver_capacity: usize::from(self.deliver),
            dead_after: Duration::from_millis(
                min_dead + u64::from(self.dead_after_ms) % dead_range,
            ),
            max_data_len: MIN_DATA_LEN + self.max_data as usize % (MAX_DATA_LEN - MIN_DATA_LEN + 1),
            ack_delivered: false,
        }
    }
}

/// A stream position the peer names, relative to what the model knows.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// The position the peer has acknowledged, plus a delta.
    Acked(i8),
    /// The position sent on the current transport, plus a delta.
    Sent(i8),
    /// The highest position ever sent, plus a delta.
    SentHigh(i8),
    /// The position received from the peer, plus a delta.
    Received(i8),
    /// Any position.
    Exact(u64),
}

impl Pick {
    fn read(input: &mut Input) -> Pick {
        match input.u8() % 5 {
            0 => Pick::Acked(input.u8() as i8),
            1 => Pick::Sent(input.u8() as i8),
            2 => Pick::SentHigh(input.u8() as i8),
            3 => Pick::Received(input.u8() as i8),
            _ => Pick::Exact(input.u64()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Pick::Acked(d) => out.extend_from_slice(&[0, d as u8]),
            Pick::Sent(d) => out.extend_from_slice(&[1, d as u8]),
            Pick::SentHigh(d) => out.extend_from_slice(&[2, d as u8]),
            Pick::Received(d) => out.extend_from_slice(&[3, d as u8]),
            Pick::Exact(n) => {
                out.push(4);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    fn value(&self, model: &Model) -> u64 {
        let (base, delta) = match *self {
            Pick::Acked(d) => (model.acked, d),
            Pick::Sent(d) => (model.sent(), d),
            Pick::SentHigh(d) => (model.sent_high, d),
            Pick::Received(d) => (model.recv, d),
            Pick::Exact(n) => return n,
        };
        base.wrapping_add_signed(i64::from(delta))
    }
}

/// A frame the peer sends, built around the model's positions.
#[derive(Debug, Clone, Copy)]
pub enum PeerFrame {
    /// [`Frame::Data`] of `len` bytes (pattern bytes; the limit may be exceeded).
    Data {
        /// Its offset.
        offset: Pick,
        /// Its length.
        len: u16,
    },
    /// [`Frame::Ack`].
    Ack(Pick),
    /// [`Frame::Ping`].
    Ping(u64),
    /// [`Frame::Pong`]: the token of the session's latest ping, or this one.
    Pong(Option<u64>),
    /// [`Frame::End`].
    End(Pick),
    /// [`Frame::Close`] with this code and a reason of this many bytes.
    Close(u8, u8),
}

impl PeerFrame {
    fn read(input: &mut Input) -> PeerFrame {
        match input.u8() % 6 {
            0 => PeerFrame::Data {
                offset: Pick::read(input),
                len: input.u16(),
            },
            1 => PeerFrame::Ack(Pick::read(input)),
            2 => PeerFrame::Ping(input.u64()),
            3 => match input.u8() {
                0 => PeerFrame::Pong(None),
                _ => PeerFrame::Pong(Some(input.u64())),
            },
            4 => PeerFrame::End(Pick::read(input)),
            _ => PeerFrame::Close(input.u8(), input.u8()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            PeerFrame::Data { offset, len } => {
                out.push(0);
                offset.write(out);
                out.extend_from_slice(&len.to_be_bytes());
            }
            PeerFrame::Ack(p) => {
                out.push(1);
                p.write(out);
            }
            PeerFrame::Ping(token) => {
                out.push(2);
                out.extend_from_slice(&token.to_be_bytes());
            }
            PeerFrame::Pong(None) => out.extend_from_slice(&[3, 0]),
            PeerFrame::Pong(Some(token)) => {
                out.extend_from_slice(&[3, 1]);
                out.extend_from_slice(&token.to_be_bytes());
            }
            PeerFrame::End(p) => {
                out.push(4);
                p.write(out);
            }
            PeerFrame::Close(code, len) => out.extend_from_slice(&[5, code, len]),
        }
    }

    fn build(&self, model: &Model) -> Frame {
        match *self {
            PeerFrame::Data { offset, len } => {
                let offset = offset.value(model);
                let bytes = (0..u64::from(len))
                    .map(|i| peer_byte(offset.wrapping_add(i)))
                    .collect::<Vec<u8>>();
                Frame::Data {
                    offset,
                    bytes: Bytes::from(bytes),
                }
            }
            PeerFrame::Ack(p) => Frame::Ack {
                position: p.value(model),
            },
            PeerFrame::Ping(token) => Frame::Ping { token },
            PeerFrame::Pong(token) => Frame::Pong {
                token: token.unwrap_or(model.ping_in_flight.unwrap_or(0)),
            },
            PeerFrame::End(p) => Frame::End {
                offset: p.value(model),
            },
            PeerFrame::Close(code, len) => Frame::Close {
                code: match code {
                    0 => Code::Done,
                    _ => Code::Protocol,
                },
                reason: "r".repeat(usize::from(len)),
            },
        }
    }
}

/// One step of the driver.
#[derive(Debug, Clone)]
pub enum Op {
    /// The local end wrote this many bytes (as many as there is room for).
    Push(u16),
    /// The local end closed its output.
    LocalEof,
    /// The local end takes everything delivered.
    Pop,
    /// The local end stopped taking bytes.
    CloseOutput,
    /// Send everything the session wants sent.
    Transmit,
    /// These bytes arrive from the peer.
    Raw(Vec<u8>),
    /// This frame arrives from the peer.
    Frame(PeerFrame),
    /// A new transport is attached; the peer says it received up to here.
    /// (The current one, if any, is detached first.)
    Attach(Pick),
    /// The transport is lost.
    Detach,
    /// This many milliseconds pass (at most twice [`MAX_DEAD_AFTER`]).
    Tick(u32),
}

impl Op {
    fn read(input: &mut Input) -> Op {
        match input.u8() % 10 {
            0 => Op::Push(input.u16()),
            1 => Op::LocalEof,
            2 => Op::Pop,
            3 => Op::CloseOutput,
            4 => Op::Transmit,
            5 => {
                let len = usize::from(input.u16());
                Op::Raw(input.bytes(len).to_vec())
            }
            6 => Op::Frame(PeerFrame::read(input)),
            7 => Op::Attach(Pick::read(input)),
            8 => Op::Detach,
            _ => Op::Tick(input.u32()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Op::Push(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Op::LocalEof => out.push(1),
            Op::Pop => out.push(2),
            Op::CloseOutput => out.push(3),
            Op::Transmit => out.push(4),
            Op::Raw(bytes) => {
                out.push(5);
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Op::Frame(f) => {
                out.push(6);
                f.write(out);
            }
            Op::Attach(p) => {
                out.push(7);
                p.write(out);
            }
            Op::Detach => out.push(8),
            Op::Tick(ms) => {
                out.push(9);
                out.extend_from_slice(&ms.to_be_bytes());
            }
        }
    }
}

/// Writes a `session` input.
pub fn seed(setup: Setup, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    setup.write(&mut out);
    for op in ops {
        op.write(&mut out);
    }
    out
}

/// The grace period the harness's relay announces.
const GRACE: Duration = Duration::from_secs(60);

/// A relay's connection that has read a client's preamble and a resume
/// from position `received`, and waits for its answer.
fn hello_read(received: u64) -> Connection {
    let hello = Hello::Resume {
        dead_after_ms: 1000,
        session: SessionId([0x5e; 16]),
        proof: [0; PROOF_LEN],
        received,
    };
    let mut client = Connection::client(&hello).expect("a resume encodes");
    let mut relay = Connection::relay();
    let mut wire = Vec::new();
    client.write_to(&mut wire, usize::MAX);
    relay.receive(&wire);
    assert_eq!(
        relay.poll_event(),
        Ok(Some(Event::HelloReceived(hello))),
        "the relay reads the hello"
    );
    // Its preamble, already answered.
    let mut preamble = Vec::new();
    relay.write_to(&mut preamble, usize::MAX);
    assert_eq!(preamble, Preamble::CURRENT.encode());
    relay
}

/// What the relay's connection answered a resume: the session's position
/// (`Some`), or nothing yet (`None`: the caller refuses).
fn check_answer(connection: &mut Connection, received: Option<u64>) {
    let mut answer = BytesMut::new();
    connection.write_to(&mut answer, usize::MAX);
    match received {
        None => {
            assert!(answer.is_empty(), "answered a resume out of range");
            assert!(!connection.is_open());
        }
        Some(received) => {
            assert!(connection.is_open());
            let (kind, payload) = split_message_within(&mut answer, usize::MAX)
                .expect("a reply")
                .expect("a whole reply");
            assert_eq!(
                Reply::decode(kind, payload),
                Ok(Reply::Resumed {
                    received,
                    grace_ms: GRACE.as_millis() as u64
                })
            );
            assert!(answer.is_empty(), "frames before the session's turn");
        }
    }
}

/// The byte the local end writes at stream offset `at`.
fn local_byte(at: u64) -> u8 {
    (at % 251) as u8
}

/// The byte a built data frame carries at stream offset `at`.
fn peer_byte(at: u64) -> u8 {
    (at.wrapping_mul(7) % 253) as u8
}

/// What the session must be doing, kept independently of it.
#[derive(Debug, Default)]
struct Model {
    // Outgoing.
    /// Bytes the local end wrote.
    pushed: u64,
    /// The local end closed its output.
    eof: bool,
    /// Position the peer acknowledged (ack or resume).
    acked: u64,
    /// Highest position sent on any transport.
    sent_high: u64,
    /// Next data offset on the current transport.
    tx_next: u64,
    /// The end marker was sent on the current transport.
    tx_end_sent: bool,
    /// Position last acknowledged to the peer on the current transport.
    ack_sent: u64,
    /// A ping from the peer waits for its pong.
    pong_due: Option<u64>,
    /// Token of the session's unanswered ping.
    ping_in_flight: Option<u64>,

    // Incoming.
    /// Bytes accepted from the peer.
    recv: u64,
    /// The peer's end marker was accepted.
    peer_end: bool,
    /// Accepted bytes the local end has not taken.
    backlog: VecDeque<u8>,
    /// Chunks in `backlog` (each costs [`DELIVER_ENTRY_COST`]).
    backlog_chunks: usize,
    /// The local end stopped taking bytes.
    output_closed: bool,
    /// The peer closed the session.
    peer_closed: bool,

    // Transport.
    attached: bool,
}

impl Model {
    /// Position sent on the current transport.
    fn sent(&self) -> u64 {
        self.tx_next + u64::from(self.tx_end_sent)
    }

    fn received(&self) -> u64 {
        self.recv + u64::from(self.peer_end)
    }

    /// Whether the session must accept `frame` now.
    fn predict(&self, frame: &Frame) -> bool {
        let m = self;
        match frame {
            Frame::Data { offset, .. } | Frame::End { offset } => !m.peer_end && *offset == m.recv,
            Frame::Ack { position } => *position <= m.sent(),
            Frame::Ping { .. } | Frame::Pong { .. } | Frame::Close { .. } => true,
        }
    }

    /// Updates the model for an accepted frame.
    fn accept(&mut self, frame: Frame) {
        let m = self;
        match frame {
            Frame::Data { bytes, .. } => {
                m.recv += bytes.len() as u64;
                if !m.output_closed && !bytes.is_empty() {
                    m.backlog.extend(bytes.iter());
                    m.backlog_chunks += 1;
                }
            }
            Frame::Ack { position } => m.acked = m.acked.max(position),
            Frame::Ping { token } => m.pong_due = Some(token),
            Frame::Pong { token } => {
                if m.ping_in_flight == Some(token) {
                    m.ping_in_flight = None;
                }
            }
            Frame::End { .. } => m.peer_end = true,
            Frame::Close { .. } => m.peer_closed = true,
        }
    }

    fn lose_transport(&mut self) {
        self.attached = false;
        self.pong_due = None;
        self.ping_in_flight = None;
    }
}

/// The harness: a session, its model, the clock.
struct Driver {
    session: Session,
    /// The current transport's protocol; idle without one.
    connection: Connection,
    config: SessionConfig,
    model: Model,
    now: Instant,
}

/// Whether the run goes on after a step.
enum Next {
    Go,
    /// The peer broke the protocol: the session is over.
    Over,
}

/// Runs one `session` input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let config = Setup::read(&mut input).config();
    let now = Instant::now();
    let mut driver = Driver {
        session: Session::new(config, now),
        connection: Connection::default(),
        config,
        model: Model::default(),
        now,
    };
    driver.check();
    while !input.is_empty() {
        let op = Op::read(&mut input);
        let next = driver.step(op);
        driver.check();
        if let Next::Over = next {
            break;
        }
    }
}

impl Driver {
    fn step(&mut self, op: Op) -> Next {
        match op {
            Op::Push(n) => {
                let n = usize::from(n).min(self.session.local_room());
                if n > 0 {
                    let start = self.model.pushed;
                    let bytes: Vec<u8> = (start..start + n as u64).map(local_byte).collect();
                    self.session.push_local(Bytes::from(bytes));
                    self.model.pushed += n as u64;
                }
            }
            Op::LocalEof => {
                self.session.local_eof();
                self.model.eof = true;
            }
            Op::Pop => {
                while let Some(bytes) = self.session.pop_deliver() {
                    assert!(!bytes.is_empty(), "an empty chunk delivered");
                    for b in bytes {
                        assert_eq!(
                            Some(b),
                            self.model.backlog.pop_front(),
                            "wrong byte delivered"
                        );
                    }
                }
                assert!(
                    self.model.backlog.is_empty(),
                    "bytes accepted but not delivered"
                );
                self.model.backlog_chunks = 0;
            }
            Op::CloseOutput => {
                self.session.close_local_output();
                self.model.output_closed = true;
                self.model.backlog.clear();
                self.model.backlog_chunks = 0;
            }
            Op::Transmit => self.transmit(),
            Op::Raw(bytes) => return self.receive(&bytes),
            Op::Frame(frame) => {
                let mut wire = BytesMut::new();
                frame.build(&self.model).encode(&mut wire);
                return self.receive(&wire);
            }
            Op::Attach(pick) => {
                if self.model.attached {
                    self.session.detach();
                    self.connection = Connection::default();
                    self.model.lose_transport();
                }
                let at = pick.value(&self.model);
                let ok = self.model.acked <= at && at <= self.model.sent_high;
                assert_eq!(
                    self.session.check_resume(at).is_ok(),
                    ok,
                    "resume from {at}"
                );
                let mut connection = hello_read(at);
                let received = self.session.received_position();
                let accepted = connection.accept_resume(&mut self.session, at, GRACE, self.now);
                assert_eq!(accepted.is_ok(), ok, "resume from {at}: {accepted:?}");
                assert_eq!(self.session.is_attached(), ok);
                check_answer(&mut connection, ok.then_some(received));
                if ok {
                    self.connection = connection;
                    let m = &mut self.model;
                    m.attached = true;
                    m.acked = at;
                    m.tx_next = at.min(m.pushed);
                    m.tx_end_sent = m.eof && at == m.pushed + 1;
                    m.ack_sent = m.received();
                }
            }
            Op::Detach => {
                self.session.detach();
                self.connection = Connection::default();
                self.model.lose_transport();
            }
            Op::Tick(ms) => {
                let max = 2 * MAX_DEAD_AFTER.as_millis() as u32;
                self.now += Duration::from_millis(u64::from(ms % max));
                let deadline = self.session.poll_timeout(ms % 2 == 0);
                assert_eq!(deadline.is_some(), self.model.attached);
                if self.session.handle_timeout(self.now).is_some() {
                    assert!(self.model.attached, "a detached session timed out");
                    self.session.detach();
                    self.connection = Connection::default();
                    self.model.lose_transport();
                }
            }
        }
        Next::Go
    }

    /// Drains [`Session::poll_transmit`], checking every frame.
    fn transmit(&mut self) {
        let limit = self.session.max_payload_in();
        let mut count = 0;
        while let Some(frame) = self.session.poll_transmit(self.now) {
            assert!(self.model.attached, "sent {frame:?} with no transport");
            count += 1;
            assert!(count <= MAX_TRANSMIT, "the session never stops sending");
            let mut wire = BytesMut::new();
            frame.encode(&mut wire);
            let (kind, payload) = split_message_within(&mut wire, limit)
                .expect("the peer accepts what is sent")
                .expect("a whole frame");
            assert!(wire.is_empty());
            assert_eq!(Frame::decode(kind, payload).as_ref(), Ok(&frame));
            let m = &mut self.model;
            // Only the announcement (an ack repeating the position, first
            // on a transport) goes before a pong that is due.
            let announcement = matches!(frame, Frame::Ack { position } if position == m.ack_sent);
            if let Some(token) = m.pong_due.filter(|_| !announcement) {
                assert_eq!(frame, Frame::Pong { token }, "a ping waits for its pong");
                m.pong_due = None;
                continue;
            }
            match frame {
                Frame::Data { offset, bytes } => {
                    assert_eq!(offset, m.tx_next, "data out of order");
                    assert!(!bytes.is_empty() && bytes.len() <= self.config.max_data_len);
                    assert!(
                        offset + bytes.len() as u64 <= m.pushed,
                        "data never written"
                    );
                    for (i, b) in bytes.iter().enumerate() {
                        assert_eq!(*b, local_byte(offset + i as u64), "wrong data sent");
                    }
                    m.tx_next += bytes.len() as u64;
                    m.sent_high = m.sent_high.max(m.tx_next);
                }
                Frame::End { offset } => {
                    assert!(m.eof && !m.tx_end_sent, "an end marker not due");
                    assert_eq!(offset, m.pushed);
                    assert_eq!(m.tx_next, m.pushed, "end before the last data");
                    m.tx_end_sent = true;
                    m.sent_high = m.pushed + 1;
                }
                // An ack repeating the last position: the announcement, first
                // on each transport, or a keep-alive (see the session's
                // `liveness.rs`).
                Frame::Ack { position } if position == m.ack_sent => {}
                Frame::Ack { position } => {
                    assert_eq!(position, m.received(), "ack of the wrong position");
                    assert!(position > m.ack_sent, "an ack going back");
                    m.ack_sent = position;
                }
                Frame::Ping { token } => m.ping_in_flight = Some(token),
                other => panic!("the session sent {other:?}"),
            }
        }
        let m = &self.model;
        if m.attached {
            assert_eq!(m.pong_due, None, "pong not sent");
            if m.ack_sent != m.received() {
                // A small ack waits, at most ACK_DELAY, to ride on a frame
                // this side sends anyway.
                let due = self.session.poll_timeout(true);
                assert!(
                    due.is_some_and(|due| due <= self.now + ACK_DELAY),
                    "ack not sent, and not due within {ACK_DELAY:?}: {due:?}"
                );
            }
            assert_eq!(m.tx_next, m.pushed, "data not sent");
            assert!(!m.eof || m.tx_end_sent, "end not sent");
        }
    }

    /// Bytes from the peer, handled as the link does.
    fn receive(&mut self, bytes: &[u8]) -> Next {
        // With no transport nothing arrives; while the local end is slow the
        // link does not read.
        if !self.model.attached || !self.session.wants_transport_read() {
            return Next::Go;
        }
        self.connection.receive(bytes);
        // Each frame is predicted, and the model updated, before the
        // session gets it; the first refused one ends the run.
        let mut predicted = Vec::new();
        let model = &mut self.model;
        let handled = self
            .connection
            .handle_frames_inspect(&mut self.session, self.now, |frame| {
                assert!(!model.peer_closed, "{frame:?} read after the peer's close");
                let ok = model.predict(frame);
                if ok {
                    model.accept(frame.clone());
                }
                predicted.push((frame.clone(), ok));
            });
        let refused = predicted.iter().position(|(_, ok)| !ok);
        match handled {
            Ok(_) => assert_eq!(refused, None, "{predicted:?} all accepted"),
            Err(ConnectionError::Session(e)) => {
                assert_eq!(refused, Some(predicted.len() - 1), "{predicted:?}: {e}");
                return Next::Over;
            }
            Err(ConnectionError::Decode(_)) => {
                assert_eq!(refused, None, "{predicted:?} all accepted");
                return Next::Over;
            }
        }
        Next::Go
    }

    /// The session's observable state agrees with the model.
    fn check(&self) {
        let (s, m) = (&self.session, &self.model);
        assert_eq!(s.is_attached(), m.attached);
        assert_eq!(s.received_position(), m.received());
        let eof = u64::from(m.eof);
        assert!(m.acked <= m.pushed + eof);
        assert_eq!(s.unacked(), m.pushed + eof - m.acked, "unacked");
        let held = m.pushed - m.acked.min(m.pushed);
        let room = if m.eof {
            0
        } else {
            self.config.replay_capacity.saturating_sub(held as usize)
        };
        assert_eq!(s.local_room(), room, "room for the local end");
        assert!(
            held as usize <= self.config.replay_capacity,
            "replay buffer overfilled"
        );
        let stats = s.stats();
        assert_eq!(stats.bytes_read_local, m.pushed);
        assert_eq!(stats.bytes_received, m.recv);
        assert_eq!(s.has_deliver(), !m.backlog.is_empty());
        let queued = m.backlog.len() + DELIVER_ENTRY_COST * m.backlog_chunks;
        assert_eq!(
            s.wants_transport_read(),
            queued < self.config.deliver_capacity,
            "backpressure from the local end"
        );
        assert_eq!(s.deliver_finished(), m.peer_end && m.backlog.is_empty());
        assert_eq!(
            s.both_streams_ended(),
            m.eof && m.peer_end && m.backlog.is_empty()
        );
        assert_eq!(
            s.is_finished(),
            s.both_streams_ended() && m.acked == m.pushed + 1
        );
        assert_eq!(s.peer_close().is_some(), m.peer_closed);
    }
}
