//! A session carried on by a new process (the relay's next worker) from
//! what outlived the old one.

use super::{ReplayStore, Session, SessionConfig};
use crate::proto::replay_ring::RingBuffer;
use std::time::Instant;

/// What a new process knows of a session an earlier one ran (see
/// [`Session::restore`]).
#[derive(Debug)]
pub struct Restored {
    /// The unacknowledged bytes, as the ring kept them.
    pub ring: RingBuffer,
    /// The local end's stream has ended (after the ring's last byte).
    pub local_eof: bool,
    /// Bytes the local end took from the peer's stream.
    pub received: u64,
    /// The local end was told the peer's stream ended.
    pub peer_end: bool,
}

impl Session {
    /// A session carried on by a new process from what outlived the old
    /// one: the ring of unacknowledged bytes, and positions read off the
    /// kernel's counters. No transport is attached; the peer's resume says
    /// where it is.
    pub fn restore(config: SessionConfig, restored: Restored, now: Instant) -> Session {
        let Restored {
            ring,
            local_eof,
            received,
            peer_end,
        } = restored;
        let mut session = Session::with_store(config, ReplayStore::Ring(ring), now);
        session.local_eof = local_eof;
        session.sent_high = session.replay.end() + u64::from(local_eof);
        session.recv_next = received;
        session.peer_end = peer_end;
        session.delivered = received;
        session.end_delivered = peer_end;
        session.ack_sent = session.received_position();
        session.stats.bytes_read_local = session.replay.end();
        session.stats.bytes_received = received;
        session
    }
}
