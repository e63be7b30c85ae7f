//! The session state machine: one resumable, bidirectional byte stream.
//!
//! Sans-IO, in the style of quinn-proto and rustls: the driver feeds it events
//! (bytes read from the local end, frames from the peer, the clock, a transport
//! lost or a new one attached) and drains what it wants done (frames to send,
//! bytes to write to the local end, whether the transport is dead). It knows
//! nothing of sockets, tasks or which transport carries its frames, so it is
//! property-tested with random data, chunking and transport breaks.
//!
//! # Positions
//!
//! Each direction is a byte stream with 64-bit offsets. The end marker counts
//! as one more position after the last byte (like TCP's FIN), so one number —
//! a *position* — says both how many bytes arrived and whether the end did:
//! a peer that received `n` bytes and the end marker is at position `n + 1`.
//! Acks carry positions; so do the resume handshakes, where each side tells the
//! other the position it has received up to, and the other side re-sends from
//! there ([`Session::attach`]).
//!
//! # What is acknowledged
//!
//! The client acknowledges what it received. The relay, whose process may
//! die and be restarted, acknowledges only what its local end (sshd) took
//! ([`SessionConfig::ack_delivered`]): what it received and had not yet
//! written is not kept anywhere that outlives it, so the client must keep
//! it. A relay session detached from its client drops what it had not
//! delivered, so that the position it tells at the next resume is always
//! one a restarted process could tell too.
//!
//! # Liveness
//!
//! A transport is dead when the peer is silent for the dead-peer interval,
//! or when this side's data waits that long with no sign that the peer
//! gets it while its heartbeats still arrive (a path that loses large
//! packets); a resume is told only once the new transport carries data.
//! See `liveness.rs`.

mod attach;
mod config;
mod error;
mod kept_memory;
mod liveness;
mod local_end;
mod restore;

pub use config::{
    SessionConfig, DEFAULT_DEAD_AFTER, DEFAULT_DELIVER_CAPACITY, DEFAULT_REPLAY_CAPACITY,
    HEARTBEATS, MAX_DEAD_AFTER, MIN_DEAD_AFTER,
};
pub use error::ProtocolError;
pub use liveness::Dead;
pub use restore::Restored;

use liveness::Liveness;

use crate::proto::replay::{ReplayBuffer, ReplayStore};
use crate::proto::replay_ring::RingBuffer;
use crate::proto::wire::{Code, Frame, DATA_PREFIX_LEN, MIN_DATA_LEN};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one queued chunk for the local end costs besides its bytes, as
/// counted against [`SessionConfig::deliver_capacity`]: a peer sending tiny
/// frames fills the queue by count, not just by bytes.
pub const DELIVER_ENTRY_COST: usize = 64;
/// Received payloads shorter than this are copied out of the transport's
/// read buffer, so that a few tiny frames cannot keep whole read buffers
/// alive; larger ones are kept zero-copy.
pub const DELIVER_COPY_BELOW: usize = 4096;
/// Received bytes after which an ack goes out at once. Smaller amounts wait
/// (up to [`ACK_DELAY`]) to ride along with the next frame this side sends
/// anyway: an interactive reply, a heartbeat. A quarter of the smallest
/// replay buffer a relay may have (64 KiB), so no sender waits on the delay.
pub const ACK_EVERY: u64 = 16 * 1024;
/// While a transport is attached, most bytes read from the local end and
/// not yet framed for it: enough to keep it busy, not so many that a
/// transport slower than the local end fills the replay buffer with bytes
/// it has not even sent (its memory is what the transport has in flight).
pub const READ_AHEAD: u64 = 256 * 1024;
/// Longest an ack of fewer than [`ACK_EVERY`] bytes is held back.
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// Counters for status and the user's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes read from the local end.
    pub bytes_read_local: u64,
    /// Bytes received from the peer (each counted once, however often sent).
    pub bytes_received: u64,
    /// Bytes sent again after a resume.
    pub bytes_replayed: u64,
    /// Latest heartbeat round-trip time.
    pub rtt: Option<Duration>,
}

/// One side of a resumable session (client and relay run the same machine).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,

    // Outgoing: local end → peer.
    /// Bytes read from the local end and not yet acknowledged.
    replay: ReplayStore,
    /// While the replay ring keeps memory: when to look whether bytes came
    /// in since, and its end then (`kept_memory.rs`).
    idle_release: Option<(Instant, u64)>,
    /// The local end closed; the end marker sits at `replay.end()`.
    local_eof: bool,
    /// Next offset to send on the current transport.
    send_next: u64,
    /// The end marker was sent on the current transport.
    end_sent: bool,
    /// Highest position ever sent, on any transport: a peer that resumes
    /// claiming more than this would skip bytes it never saw.
    sent_high: u64,
    /// The peer acknowledged the end marker.
    end_acked: bool,

    // Incoming: peer → local end.
    /// Next offset expected from the peer.
    recv_next: u64,
    /// The peer's end marker arrived.
    peer_end: bool,
    /// Highest position acknowledged to the peer.
    ack_sent: u64,
    /// When bytes not yet acknowledged first arrived (see [`ACK_DELAY`]).
    ack_pending_since: Option<Instant>,
    /// Received bytes waiting for the local end.
    deliver: VecDeque<Bytes>,
    /// Memory `deliver` accounts for: its bytes plus [`DELIVER_ENTRY_COST`]
    /// per chunk.
    deliver_len: usize,
    /// The local end no longer takes bytes: received bytes are dropped.
    local_output_closed: bool,
    /// Received bytes the local end took (or that were dropped for it).
    delivered: u64,
    /// The local end was told the peer's stream ended.
    end_delivered: bool,

    // Transport and liveness.
    /// A transport is attached.
    attached: bool,
    /// Whether it is alive and carries data.
    live: Liveness,
    /// When something was last sent.
    last_sent: Instant,
    /// Heartbeats per dead-peer interval.
    heartbeats: u32,
    /// This side judges a transport dead one heartbeat interval after the
    /// peer would (see [`judge_second`](Self::judge_second)).
    judges_second: bool,
    /// A ping to answer.
    pong_due: Option<u64>,
    /// The latest ping sent and when.
    ping_in_flight: Option<(u64, Instant)>,
    /// Token of the next ping.
    next_ping: u64,
    /// The peer closed the session.
    peer_close: Option<(Code, String)>,

    stats: SessionStats,
}

impl Session {
    /// A new session with nothing sent or received and no transport attached.
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        let replay = ReplayStore::Heap(ReplayBuffer::new(config.replay_capacity));
        Session::with_store(config, replay, now)
    }

    /// A new session that keeps what it sends in `ring` (the relay's, in
    /// memory that outlives its process) instead of on the heap. The ring's
    /// size bounds the replay buffer.
    pub fn with_ring(config: SessionConfig, ring: RingBuffer, now: Instant) -> Session {
        Session::with_store(config, ReplayStore::Ring(ring), now)
    }

    fn with_store(config: SessionConfig, replay: ReplayStore, now: Instant) -> Session {
        let start = replay.start();
        let end = replay.end();
        Session {
            config,
            replay,
            idle_release: None,
            local_eof: false,
            send_next: start,
            end_sent: false,
            sent_high: end,
            end_acked: false,
            recv_next: 0,
            peer_end: false,
            ack_sent: 0,
            ack_pending_since: None,
            deliver: VecDeque::new(),
            deliver_len: 0,
            local_output_closed: false,
            delivered: 0,
            end_delivered: false,
            attached: false,
            live: Liveness::new(now),
            last_sent: now,
            heartbeats: HEARTBEATS,
            judges_second: false,
            pong_due: None,
            ping_in_flight: None,
            next_ping: 0,
            peer_close: None,
            stats: SessionStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Changes the dead-peer interval (the relay adopts the client's).
    pub fn set_dead_after(&mut self, dead_after: Duration) {
        self.config.dead_after = dead_after;
    }

    /// Largest message payload the peer may send: a data frame of
    /// [`SessionConfig::max_data_len`] bytes, or any control frame.
    pub fn max_payload_in(&self) -> usize {
        (self.config.max_data_len + DATA_PREFIX_LEN).max(MIN_DATA_LEN + DATA_PREFIX_LEN)
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    // ----- transport -----

    /// The position received up to, which a resume handshake tells the peer.
    pub fn received_position(&self) -> u64 {
        self.recv_next + u64::from(self.peer_end)
    }

    /// The position acknowledgements carry: what was received, or, with
    /// [`SessionConfig::ack_delivered`], what the local end took.
    fn ack_position(&self) -> u64 {
        if self.config.ack_delivered {
            self.delivered + u64::from(self.end_delivered)
        } else {
            self.received_position()
        }
    }

    /// Whether the end of the peer's stream may be acknowledged.
    fn end_ackable(&self) -> bool {
        if self.config.ack_delivered {
            self.end_delivered
        } else {
            self.peer_end
        }
    }

    /// Bytes (and end marker) the peer has not acknowledged.
    pub fn unacked(&self) -> u64 {
        self.replay.len() as u64 + u64::from(self.local_eof && !self.end_acked)
    }

    /// Whether a transport is attached.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Something arrived from the peer at `at`, whether or not it completes
    /// a frame (bytes of one; on QUIC, an acknowledgement): the transport
    /// is alive. (On a slow link one large frame can take longer
    /// than the dead-peer interval to arrive.)
    pub fn heard(&mut self, at: Instant) {
        self.live.heard(at);
    }

    /// Part of a data frame arrived from the peer: its data is coming, so
    /// an ack (a keep-alive one, if nothing completed) goes out within the
    /// heartbeat interval, and the transport carries data.
    pub fn heard_data(&mut self, now: Instant) {
        self.live.data_arrived(now);
    }

    /// Sends `per_interval` heartbeats per dead-peer interval while idle
    /// (the transport's choice; [`HEARTBEATS`] otherwise).
    pub fn set_heartbeats(&mut self, per_interval: u32) {
        self.heartbeats = per_interval.max(1);
    }

    /// This side judges a transport dead (silent, or stalled) one heartbeat
    /// interval after the peer, which uses the same dead-peer interval,
    /// would. The relay does: the client is the side that can act on a
    /// dead transport (reconnect, with smaller segments where large
    /// packets are lost), and a transport the relay closed first would
    /// look like any other loss to it. Both ends measure from nearly the
    /// same moment, a round trip apart, so without this the two
    /// judgements race.
    pub fn judge_second(&mut self) {
        self.judges_second = true;
    }

    /// How long a transport may be silent (or stalled) before this side
    /// judges it dead: the dead-peer interval, and on the side that
    /// [judges second](Self::judge_second) a heartbeat interval more.
    pub fn dead_after(&self) -> Duration {
        if self.judges_second {
            self.config.dead_after + self.heartbeat_interval()
        } else {
            self.config.dead_after
        }
    }

    /// How long this side may stay silent before it sends a heartbeat.
    fn heartbeat_interval(&self) -> Duration {
        self.config.dead_after / self.heartbeats
    }

    /// A frame from the peer.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), ProtocolError> {
        self.live.heard(now);
        match frame {
            Frame::Data { offset, bytes } => {
                if self.peer_end {
                    return Err(ProtocolError::DataAfterEnd { offset });
                }
                if offset != self.recv_next {
                    return Err(ProtocolError::OutOfOrder {
                        what: "data",
                        offset,
                        expected: self.recv_next,
                    });
                }
                self.recv_next += bytes.len() as u64;
                self.stats.bytes_received += bytes.len() as u64;
                if !bytes.is_empty() {
                    self.ack_pending_since.get_or_insert(now);
                    self.live.data_arrived(now);
                }
                if self.local_output_closed {
                    self.delivered = self.recv_next;
                } else if !bytes.is_empty() {
                    let bytes = if bytes.len() < DELIVER_COPY_BELOW {
                        Bytes::copy_from_slice(&bytes)
                    } else {
                        bytes
                    };
                    self.deliver_len += bytes.len() + DELIVER_ENTRY_COST;
                    self.deliver.push_back(bytes);
                }
            }
            Frame::Ack { position } => {
                let sent = self.send_next + u64::from(self.end_sent);
                if position > sent {
                    return Err(ProtocolError::AckBeyondSent { position, sent });
                }
                let repeated = position <= self.acked_position();
                self.replay.acknowledge(position);
                self.watch_kept_memory(now);
                if self.local_eof && position == self.replay.end() + 1 {
                    self.end_acked = true;
                }
                self.live.ack_arrived(repeated, now);
            }
            Frame::Ping { token } => self.pong_due = Some(token),
            Frame::Pong { token } => {
                self.live.pong_arrived(token);
                if let Some((sent_token, at)) = self.ping_in_flight {
                    if sent_token == token {
                        self.stats.rtt = Some(now.saturating_duration_since(at));
                        self.ping_in_flight = None;
                    }
                }
            }
            Frame::End { offset } => {
                if self.peer_end {
                    return Err(ProtocolError::SecondEnd);
                }
                if offset != self.recv_next {
                    return Err(ProtocolError::OutOfOrder {
                        what: "end",
                        offset,
                        expected: self.recv_next,
                    });
                }
                self.peer_end = true;
                self.live.data_arrived(now);
                if self.local_output_closed {
                    self.end_delivered = true;
                }
            }
            Frame::Close { code, reason } => self.peer_close = Some((code, reason)),
        }
        Ok(())
    }

    /// The peer's [`Frame::Close`], if it sent one.
    pub fn peer_close(&self) -> Option<&(Code, String)> {
        self.peer_close.as_ref()
    }

    /// The next frame to send on the attached transport, or `None` when there
    /// is nothing to send (or no transport). Call until `None` (or until the
    /// transport's write queue is full) after every event.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Frame> {
        if !self.attached {
            return None;
        }
        let frame = self.next_frame(now)?;
        self.last_sent = now;
        Some(frame)
    }

    fn next_frame(&mut self, now: Instant) -> Option<Frame> {
        // First on every transport: the announcement (see `liveness.rs`).
        if self.live.take_announcement(now) {
            return Some(Frame::Ack {
                position: self.ack_sent,
            });
        }
        if let Some(token) = self.pong_due.take() {
            return Some(Frame::Pong { token });
        }
        let position = self.ack_position();
        if position > self.ack_sent && self.ack_due(now) {
            self.ack_sent = position;
            self.ack_pending_since = None;
            self.live.ack_sent(now);
            return Some(Frame::Ack { position });
        }
        if self.send_next < self.replay.end() {
            self.live.data_sent(self.waiting(), now);
            let bytes = self
                .replay
                .slice_from(self.send_next, self.config.max_data_len);
            let offset = self.send_next;
            self.send_next += bytes.len() as u64;
            self.sent_high = self.sent_high.max(self.send_next);
            return Some(Frame::Data { offset, bytes });
        }
        if self.local_eof && !self.end_sent {
            self.live.data_sent(self.waiting(), now);
            self.end_sent = true;
            self.sent_high = self.replay.end() + 1;
            return Some(Frame::End {
                offset: self.replay.end(),
            });
        }
        // After what was queued: its pong confirms that data flows.
        if self.live.take_probe(self.next_ping) {
            return Some(self.ping(now));
        }
        let heartbeat = self.heartbeat_interval();
        if self
            .live
            .keep_alive_at(self.holding_back(), heartbeat)
            .is_some_and(|at| now >= at)
        {
            self.live.ack_sent(now);
            return Some(Frame::Ack {
                position: self.ack_sent,
            });
        }
        if now.saturating_duration_since(self.last_sent) >= heartbeat {
            return Some(self.ping(now));
        }
        None
    }

    fn ping(&mut self, now: Instant) -> Frame {
        let token = self.next_ping;
        self.next_ping += 1;
        self.ping_in_flight = Some((token, now));
        Frame::Ping { token }
    }

    /// The position the peer has acknowledged up to (the end marker counts
    /// as one).
    fn acked_position(&self) -> u64 {
        self.replay.start() + u64::from(self.end_acked)
    }

    /// Whether data (or the end marker) sent on this transport waits for
    /// the peer's acknowledgement.
    fn waiting(&self) -> bool {
        self.send_next + u64::from(self.end_sent) > self.acked_position()
    }

    /// Whether this side holds back some of the peer's data: it stopped
    /// reading (its local end is slow), or it received bytes it does not
    /// acknowledge yet (see [`SessionConfig::ack_delivered`]).
    fn holding_back(&self) -> bool {
        !self.wants_transport_read() || self.ack_position() < self.received_position()
    }

    /// Whether an ack of what was received should go now: enough bytes (or
    /// the end marker) arrived, this side sends a frame anyway, or the ack
    /// was held back for [`ACK_DELAY`].
    fn ack_due(&self, now: Instant) -> bool {
        self.ack_position() - self.ack_sent >= ACK_EVERY
            || self.end_ackable()
            || self.send_next < self.replay.end()
            || (self.local_eof && !self.end_sent)
            || now.saturating_duration_since(self.last_sent) >= self.heartbeat_interval()
            || self
                .ack_pending_since
                .is_none_or(|since| now.saturating_duration_since(since) >= ACK_DELAY)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    /// `can_transmit` says whether the driver could send a frame now; while
    /// it cannot (its write queue is full), no heartbeat is due, only the
    /// dead-peer check — otherwise an overdue heartbeat would wake it at once,
    /// again and again.
    pub fn poll_timeout(&self, can_transmit: bool) -> Option<Instant> {
        if !self.attached {
            return None;
        }
        let dead = self.live.dead_at(self.waiting(), self.dead_after());
        let dead = self.idle_release.map_or(dead, |(at, _)| dead.min(at));
        if !can_transmit {
            return Some(dead);
        }
        let interval = self.heartbeat_interval();
        let heartbeat = self.last_sent + interval;
        let ack = match self.ack_pending_since {
            Some(since) if self.ack_position() > self.ack_sent => since + ACK_DELAY,
            _ => heartbeat,
        };
        let keep_alive = self
            .live
            .keep_alive_at(self.holding_back(), interval)
            .unwrap_or(heartbeat);
        Some(heartbeat.min(dead).min(ack).min(keep_alive))
    }

    /// The clock advanced. Returns why the attached transport is dead, if
    /// it is: nothing arrived for the dead-peer interval ([`Dead::Silent`]),
    /// or this side's data waited that long with no sign that the peer gets
    /// it while its heartbeats arrived ([`Dead::Stalled`]). Neither counts
    /// while this side is not reading (its local end is slow).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Dead> {
        self.check_kept_memory(now);
        if !self.attached {
            return None;
        }
        let reading = self.wants_transport_read();
        let waiting = self.waiting();
        self.live.check(now, reading, waiting, self.dead_after())
    }

    /// Whether the attached transport has carried data since it was
    /// attached (the peer's data or acks arrived, or the answer to a ping
    /// sent after this side's data): true once, the first time it is asked
    /// after that happened. A resume is told to the user then.
    pub fn take_flowing(&mut self) -> bool {
        self.attached && self.live.take_flowing()
    }

    /// Whether the attached transport has carried data since it was attached.
    pub fn is_flowing(&self) -> bool {
        self.attached && self.live.is_flowing()
    }

    /// Both streams have ended and every received byte was handed to the
    /// local end; at most the peer's acknowledgement of the end is missing.
    pub fn both_streams_ended(&self) -> bool {
        self.local_eof && self.deliver_finished()
    }

    /// Both streams ended and were acknowledged, and every received byte was
    /// handed to the local end: the session is complete.
    pub fn is_finished(&self) -> bool {
        self.both_streams_ended() && self.end_acked
    }
}

#[cfg(test)]
mod liveness_tests;
#[cfg(test)]
mod tests;
