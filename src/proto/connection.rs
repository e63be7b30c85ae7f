//! One transport's protocol, sans-IO: its handshake and its frames.
//!
//! A [`Connection`] is what travels on one transport between client and
//! relay, in the style of quinn-proto's `Connection`: it owns the bytes read
//! but not yet parsed and the bytes encoded but not yet written, turns the
//! first into handshake messages ([`Event`]s) and then into frames applied
//! to a [`Session`], and turns the session's frames into the second. It
//! does no I/O and has no clock: the caller reads into
//! [`read_buf`](Connection::read_buf) (or hands it bytes with
//! [`receive`](Connection::receive)), passes the time, and writes what
//! [`io_slices`](Connection::io_slices) holds. The link driver, the
//! simulation and the fuzzer all drive this one type.
//!
//! A connection opens with a preamble from each side, then the client's
//! [`Hello`] and the relay's [`Reply`]. What the relay answers — after it
//! looked the session up, checked the proof and its limits — is the
//! caller's decision, told with [`accept_new`](Connection::accept_new),
//! [`accept_resume`](Connection::accept_resume) (which checks the client's
//! position before it answers) or [`refuse`](Connection::refuse). After an
//! accepted reply the connection is open and carries frames until it is
//! [closed](Connection::close) or the transport breaks.
//!
//! The session outlives its connections: it is passed in where frames flow,
//! and a new connection takes over after a break.
//!
//! Bounds: a handshake message is at most [`MAX_HANDSHAKE_LEN`] and a frame
//! at most the session's [`Session::max_payload_in`], refused as soon as a
//! header announces more; during the handshake the read buffer grows only by
//! what the caller reads (see [`read_buf`](Connection::read_buf)).

use crate::proto::fleet::Home;
use crate::proto::session::{ProtocolError, Session};
use crate::proto::wire::{
    begins_data_frame, split_message_within, Code, DecodeError, Frame, Hello, Preamble, Reply,
    SessionId, MAX_HANDSHAKE_LEN, PREAMBLE_LEN, SECRET_LEN,
};
use crate::proto::write_queue::WriteQueue;
use bytes::{Buf, BufMut, BytesMut};
use std::io::IoSlice;
use std::time::{Duration, Instant};

pub use crate::proto::write_queue::MAX_IO_SLICES;

/// Bytes reserved for a read that continues a frame, from an open
/// connection's transport: bulk is flowing.
pub const READ_SIZE: usize = 256 * 1024;
/// Bytes reserved for a read into an empty buffer (keystrokes, acks): a
/// quiet session does not hold [`READ_SIZE`].
pub const FIRST_READ_SIZE: usize = 16 * 1024;
/// Encoded bytes queued for the transport before the session is asked for
/// more frames.
pub const WRITE_QUEUE_HIGH: usize = 512 * 1024;

/// What a relay sends to a peer that does not speak the protocol at all (an
/// ssh client pointed at the relay port, a port scanner): readable by a person.
pub const NOT_A_CLIENT_NOTICE: &[u8] =
    b"resumeproxyd: this port speaks the resumeproxy relay protocol; use `ProxyCommand resumeproxy %h %p` in ssh_config\r\n";

/// A handshake message arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// On the relay: the client's hello. Answer with
    /// [`Connection::accept_new`], [`Connection::accept_resume`] or
    /// [`Connection::refuse`].
    HelloReceived(Hello),
    /// On the client: the relay's reply. After [`Reply::Created`] or
    /// [`Reply::Resumed`] the connection is open: attach the session and let
    /// frames flow. After [`Reply::Refused`] it is over.
    ReplyReceived(Reply),
}

/// The peer sent what the protocol does not allow once frames flow; the
/// connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// Bytes that are not a frame.
    #[error("protocol error: {0}")]
    Decode(#[from] DecodeError),
    /// A frame the session refused.
    #[error("{0}")]
    Session(#[from] ProtocolError),
}

/// Which end of the transport this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Relay,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The handshake has not started: nothing is read or sent.
    Idle,
    /// Waiting for the peer's preamble.
    Preamble,
    /// On the relay: waiting for the hello.
    Hello,
    /// On the client: waiting for the reply.
    Reply,
    /// On the relay: the hello was handed out; the answer is due.
    Deciding,
    /// Frames flow.
    Open,
    /// Refused, failed, or closed: nothing more is read or sent but what
    /// is queued.
    Closed,
}

/// One transport's protocol state (see the module documentation).
#[derive(Debug)]
pub struct Connection {
    side: Side,
    state: State,
    /// Bytes read and not yet parsed.
    read_buf: BytesMut,
    /// How much of `read_buf` was there when it was last parsed: bytes
    /// beyond it are news from the peer.
    seen: usize,
    /// Bytes encoded and not yet written.
    write_queue: WriteQueue,
}

impl Default for Connection {
    /// A connection whose handshake has not started (a transport just
    /// made): it reads and sends nothing until it is replaced by
    /// [`Connection::client`] or [`Connection::relay`].
    fn default() -> Connection {
        Connection {
            state: State::Idle,
            ..Connection::new(Side::Relay)
        }
    }
}

impl Connection {
    fn new(side: Side) -> Connection {
        Connection {
            side,
            state: State::Preamble,
            // Grown to READ_SIZE once the connection is open; one still in
            // its handshake holds only what it was sent.
            read_buf: BytesMut::new(),
            seen: 0,
            write_queue: WriteQueue::new(),
        }
    }

    /// The client's end of a new transport: the preamble and `hello` are
    /// queued at once. A host too long for a hello is an error.
    pub fn client(hello: &Hello) -> Result<Connection, DecodeError> {
        let mut connection = Connection::new(Side::Client);
        let mut out = BytesMut::new();
        out.extend_from_slice(&Preamble::CURRENT.encode());
        hello.encode(&mut out)?;
        connection.write_queue.push_bytes(&out);
        Ok(connection)
    }

    /// The relay's end of a new transport: it answers the client's preamble
    /// with its own, and waits for the hello.
    pub fn relay() -> Connection {
        Connection::new(Side::Relay)
    }

    /// Whether frames flow.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection is over (refused, failed or closed); what is
    /// queued may still be written.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    // ----- input -----

    /// The buffer the next read from the transport appends to. Once the
    /// connection is open, an empty buffer gets room for [`FIRST_READ_SIZE`]
    /// bytes and one holding part of a frame room for [`READ_SIZE`]; during
    /// the handshake nothing is reserved beyond what the caller's read adds.
    ///
    /// Room is made in a fresh buffer of just that size, with the part of a
    /// frame not yet parsed copied over (as growing in place would copy
    /// it): the data frames parsed from the old buffer are slices of it,
    /// held until delivered, and growing a buffer that still has a prefix
    /// in use doubles it — a download through a slow local end held 5 MiB
    /// of read buffers that way.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.state == State::Open
            && self.read_buf.capacity() - self.read_buf.len() < READ_SIZE / 4
        {
            let want = if self.read_buf.is_empty() {
                FIRST_READ_SIZE
            } else {
                READ_SIZE
            };
            let mut fresh = BytesMut::with_capacity(self.read_buf.len() + want);
            fresh.extend_from_slice(&self.read_buf);
            self.read_buf = fresh;
        }
        &mut self.read_buf
    }

    /// The transport has nothing more for now: with nothing half-read, a
    /// buffer grown for bulk is given back, so that a session that falls
    /// quiet after a transfer does not keep it.
    pub fn read_idle(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > FIRST_READ_SIZE {
            self.read_buf = BytesMut::new();
        }
    }

    /// Bytes arrived from the transport (a copy; drivers read into
    /// [`read_buf`](Self::read_buf) instead).
    pub fn receive(&mut self, bytes: &[u8]) {
        self.read_buf.extend_from_slice(bytes);
    }

    /// Bytes held for parsing, and the room reserved for more.
    pub fn read_capacity(&self) -> usize {
        self.read_buf.capacity()
    }

    /// Takes the bytes read and not yet parsed (a test's tap passes them on).
    pub fn take_unread(&mut self) -> BytesMut {
        self.seen = 0;
        std::mem::take(&mut self.read_buf)
    }

    /// Whether the driver should read from the transport for `session`:
    /// the connection is open, the peer has not closed, and the local end
    /// keeps up (backpressure).
    pub fn wants_read(&self, session: &Session) -> bool {
        self.state == State::Open
            && session.peer_close().is_none()
            && session.wants_transport_read()
    }

    /// Parses the handshake from what was read: the next [`Event`], or
    /// `None` until more bytes arrive (or once the handshake is over).
    ///
    /// On the relay, a peer that is not a client is answered before the
    /// error is returned: with [`NOT_A_CLIENT_NOTICE`] if it does not speak
    /// the protocol, with a [`Code::Version`] refusal if it speaks another
    /// version. Write what is queued, best effort, and drop the transport.
    pub fn poll_event(&mut self) -> Result<Option<Event>, DecodeError> {
        let event = self.parse_handshake();
        if event.is_err() {
            self.state = State::Closed;
        }
        self.seen = self.read_buf.len();
        event
    }

    fn parse_handshake(&mut self) -> Result<Option<Event>, DecodeError> {
        if self.state == State::Preamble {
            let Some(raw) = self.read_buf.get(..PREAMBLE_LEN) else {
                return Ok(None);
            };
            let mut preamble = [0u8; PREAMBLE_LEN];
            preamble.copy_from_slice(raw);
            self.read_buf.advance(PREAMBLE_LEN);
            self.check_preamble(&preamble)?;
        }
        if !matches!(self.state, State::Hello | State::Reply) {
            return Ok(None);
        }
        // One handshake message, refused before it is buffered if too long.
        let Some((kind, payload)) = split_message_within(&mut self.read_buf, MAX_HANDSHAKE_LEN)?
        else {
            return Ok(None);
        };
        if self.state == State::Hello {
            let hello = Hello::decode(kind, payload)?;
            self.state = State::Deciding;
            return Ok(Some(Event::HelloReceived(hello)));
        }
        let reply = Reply::decode(kind, payload)?;
        self.state = match reply {
            Reply::Created { .. } | Reply::Resumed { .. } => State::Open,
            Reply::Refused { .. } => State::Closed,
        };
        Ok(Some(Event::ReplyReceived(reply)))
    }

    /// The peer's preamble; the relay answers a good one with its own, and
    /// a bad one with words the peer can show.
    fn check_preamble(&mut self, raw: &[u8; PREAMBLE_LEN]) -> Result<(), DecodeError> {
        match (Preamble::decode(raw), self.side) {
            (Ok(_), Side::Client) => self.state = State::Reply,
            (Ok(_), Side::Relay) => {
                self.write_queue.push_bytes(&Preamble::CURRENT.encode());
                self.state = State::Hello;
            }
            (Err(err), Side::Client) => return Err(err),
            (Err(err @ DecodeError::BadVersion { .. }), Side::Relay) => {
                self.write_queue.push_bytes(&Preamble::CURRENT.encode());
                self.answer(
                    &Reply::Refused {
                        code: Code::Version,
                        reason: format!("{err}; upgrade the older of resumeproxy and resumeproxyd"),
                    },
                    State::Closed,
                );
                return Err(err);
            }
            (Err(err), Side::Relay) => {
                self.write_queue.push_bytes(NOT_A_CLIENT_NOTICE);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Applies every complete frame read so far to `session` (nothing
    /// before the connection is open, nothing after the peer's close).
    /// Returns whether any frame was applied. Bytes that arrived since the
    /// last call tell the session that the peer is alive, whole frame or
    /// not: on a slow link one large frame can take longer than the
    /// dead-peer interval. Bytes of a data frame not yet complete tell it
    /// that the peer's data is coming ([`Session::heard_data`]).
    pub fn handle_frames(
        &mut self,
        session: &mut Session,
        now: Instant,
    ) -> Result<bool, ConnectionError> {
        self.handle_frames_inspect(session, now, |_| {})
    }

    /// [`handle_frames`](Self::handle_frames), showing `inspect` each frame
    /// before the session gets it (the fuzzer checks each against its model).
    pub fn handle_frames_inspect(
        &mut self,
        session: &mut Session,
        now: Instant,
        mut inspect: impl FnMut(&Frame),
    ) -> Result<bool, ConnectionError> {
        let news = self.read_buf.len() > self.seen;
        if news {
            session.heard(now);
        }
        let mut any = false;
        if self.state == State::Open {
            while session.peer_close().is_none() {
                let max_payload = session.max_payload_in();
                let Some((kind, payload)) = split_message_within(&mut self.read_buf, max_payload)?
                else {
                    break;
                };
                let frame = Frame::decode(kind, payload)?;
                inspect(&frame);
                session.handle_frame(frame, now)?;
                any = true;
            }
            // What is left is part of one frame, and holds the newest bytes.
            if news && begins_data_frame(&self.read_buf) {
                session.heard_data(now);
            }
        }
        self.seen = self.read_buf.len();
        Ok(any)
    }

    // ----- the relay's answer -----

    /// Answers the hello with a new session, which the caller has made:
    /// its id and secret, how long the relay keeps it while the client is
    /// away, the largest data frame it carries, and where it lives in its
    /// fleet. The connection is open.
    pub fn accept_new(
        &mut self,
        session: SessionId,
        secret: [u8; SECRET_LEN],
        grace: Duration,
        max_data: usize,
        home: Home,
    ) {
        let reply = Reply::Created {
            session,
            secret,
            grace_ms: millis(grace),
            max_data: u32::try_from(max_data).unwrap_or(u32::MAX),
            home,
        };
        self.answer(&reply, State::Open);
    }

    /// Answers a resume whose proof the caller has checked.
    ///
    /// First the client's position `peer_received` is checked against what
    /// `session` holds. Outside it, the error is returned and nothing
    /// changes: the caller [refuses](Self::refuse), and a late attempt the
    /// client already gave up on does not take the session from a live
    /// transport. Otherwise the session leaves the transport it was on, if
    /// any — the new transport wins; the caller retires the old one — the
    /// answer carries the session's own position, and the session is
    /// attached here, replaying from the client's.
    pub fn accept_resume(
        &mut self,
        session: &mut Session,
        peer_received: u64,
        grace: Duration,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        session.check_resume(peer_received)?;
        if session.is_attached() {
            session.detach();
        }
        let reply = Reply::Resumed {
            received: session.received_position(),
            grace_ms: millis(grace),
        };
        self.answer(&reply, State::Open);
        session.attach(peer_received, now)
    }

    /// Answers the hello with a refusal; the connection is over once it is
    /// written.
    pub fn refuse(&mut self, code: Code, reason: &str) {
        let reply = Reply::Refused {
            code,
            reason: reason.to_owned(),
        };
        self.answer(&reply, State::Closed);
    }

    fn answer(&mut self, reply: &Reply, next: State) {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        self.write_queue.push_bytes(&out);
        self.state = next;
    }

    // ----- output -----

    /// Queues `session`'s frames, until [`WRITE_QUEUE_HIGH`] bytes wait or
    /// the session has nothing more to send. Nothing unless open.
    pub fn transmit(&mut self, session: &mut Session, now: Instant) {
        if self.state != State::Open {
            return;
        }
        while self.write_queue.len() < WRITE_QUEUE_HIGH {
            match session.poll_transmit(now) {
                Some(frame) => self.write_queue.push(&frame),
                None => break,
            }
        }
    }

    /// Whether the session may queue more frames now: false while
    /// [`WRITE_QUEUE_HIGH`] bytes wait for the transport.
    pub fn can_transmit(&self) -> bool {
        self.write_queue.len() < WRITE_QUEUE_HIGH
    }

    /// Ends the connection with a [`Frame::Close`] after what is queued.
    pub fn close(&mut self, code: Code, reason: &str) {
        self.write_queue.push(&Frame::Close {
            code,
            reason: reason.to_owned(),
        });
        self.state = State::Closed;
    }

    /// Drops what waits to be written: the peer closed the session, and
    /// may have closed its connection right after, so nothing more goes to
    /// it (a write would find the connection gone, and the session taken for
    /// lost, with what the peer sent still to deliver).
    pub fn discard_queued(&mut self) {
        self.write_queue.clear();
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.write_queue.len()
    }

    /// Fills `slices` with the bytes waiting to be written, front first;
    /// returns how many slices were filled (at most [`MAX_IO_SLICES`] are
    /// useful). Report what was written with [`advance`](Self::advance).
    pub fn io_slices<'a>(&'a mut self, slices: &mut [IoSlice<'a>]) -> usize {
        self.write_queue.io_slices(slices)
    }

    /// The first `n` waiting bytes were written.
    pub fn advance(&mut self, n: usize) {
        self.write_queue.advance(n);
    }

    /// Moves up to `max` waiting bytes to `out`; returns how many. For
    /// simulations and tests: drivers write [`io_slices`](Self::io_slices).
    pub fn write_to(&mut self, out: &mut impl BufMut, max: usize) -> usize {
        let mut moved = 0;
        while moved < max && !self.write_queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            let n = self.write_queue.io_slices(&mut slices);
            let mut taken = 0;
            for slice in &slices[..n] {
                let take = slice.len().min(max - moved - taken);
                out.put_slice(&slice[..take]);
                taken += take;
            }
            self.write_queue.advance(taken);
            moved += taken;
        }
        moved
    }
}

/// A duration in whole milliseconds, as replies carry it.
fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
