//! The simulated network: links between the client and the relay, each two
//! [`Connection`]s and a byte pipe each way, and the faults a real network
//! has — a silent partition (nothing gets through and nobody is told), a
//! reset that one end sees and the other does not, an outage during which
//! new connections get nowhere.

use crate::proto::connection::Connection;
use crate::proto::resume_auth::BINDING_LEN;
use bytes::{Buf, BytesMut};
use std::net::IpAddr;

/// The simulated relay's instance name: a relay on its own, the one the
/// network reaches.
pub(super) const RELAY_INSTANCE: &str = "sim-relay";

/// Index of a link in [`Net::links`].
pub(super) type LinkId = usize;

/// Which end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Relay,
}

/// One end of a link, as its owner sees it.
pub(super) struct End {
    pub(super) conn: Connection,
    /// The owner's next read or write fails (a reset, its address gone).
    pub(super) reset: bool,
    /// The peer closed its end and everything it sent was read.
    pub(super) eof: bool,
    /// The owner let go of it.
    pub(super) dropped: bool,
}

impl End {
    fn new(conn: Connection) -> End {
        End {
            conn,
            reset: false,
            eof: false,
            dropped: false,
        }
    }
}

/// Bytes on their way one direction, then perhaps the sender's close.
#[derive(Default)]
struct Pipe {
    bytes: BytesMut,
    fin: bool,
    /// A large write was lost on a shrunk link: nothing more gets through.
    stuck: bool,
}

/// The most a sender may have queued for its write to pass a shrunk link
/// (see [`Net::shrink`]): a few control frames, never a data frame's worth.
const SMALL_WRITE: usize = 64;

/// One transport between the client (or an attacker) and the relay.
pub(super) struct Link {
    /// Its channel binding, what a resume proof is bound to.
    pub(super) binding: [u8; BINDING_LEN],
    /// Where it comes from.
    pub(super) from: IpAddr,
    /// The instance its client named (its TLS server name), if any.
    pub(super) server_name: Option<String>,
    pub(super) client: End,
    pub(super) relay: End,
    to_relay: Pipe,
    to_client: Pipe,
    /// Nothing gets through any more, and neither end is told.
    blackholed: bool,
    /// Large writes are lost, small ones pass (see [`Net::shrink`]).
    shrunk: bool,
}

impl Link {
    /// The end `side` owns.
    pub(super) fn end(&mut self, side: Side) -> &mut End {
        match side {
            Side::Client => &mut self.client,
            Side::Relay => &mut self.relay,
        }
    }

    /// The sending end and its pipe, and the receiving end, for bytes from `side`.
    fn sending(&mut self, side: Side) -> (&mut End, &mut Pipe, &mut End) {
        match side {
            Side::Client => (&mut self.client, &mut self.to_relay, &mut self.relay),
            Side::Relay => (&mut self.relay, &mut self.to_client, &mut self.client),
        }
    }

    /// Bytes in flight, both ways.
    pub(super) fn in_flight(&self) -> usize {
        self.to_relay.bytes.len() + self.to_client.bytes.len()
    }
}

/// Every link ever made, and the state of the network.
#[derive(Default)]
pub(super) struct Net {
    pub(super) links: Vec<Link>,
    /// New connections get nowhere until this virtual millisecond.
    pub(super) down_until: u64,
}

impl Net {
    /// A new connection from `from`, its client end speaking `conn`; the
    /// relay's end starts its handshake. During an outage it is made but
    /// carries nothing.
    pub(super) fn connect(
        &mut self,
        now: u64,
        from: IpAddr,
        binding: [u8; BINDING_LEN],
        conn: Connection,
    ) -> LinkId {
        self.links.push(Link {
            binding,
            from,
            server_name: None,
            client: End::new(conn),
            relay: End::new(Connection::relay()),
            to_relay: Pipe::default(),
            to_client: Pipe::default(),
            blackholed: now < self.down_until,
            shrunk: false,
        });
        self.links.len() - 1
    }

    /// Whether nothing gets through link `id` (it was made during an
    /// outage, or went silent since).
    pub(super) fn is_blackholed(&self, id: LinkId) -> bool {
        self.links[id].blackholed
    }

    /// Moves up to `max` bytes `side` queued onto the wire; returns how
    /// many. On a blackholed link they are lost.
    pub(super) fn send(&mut self, id: LinkId, side: Side, max: usize) -> usize {
        let link = &mut self.links[id];
        let (blackholed, shrunk) = (link.blackholed, link.shrunk);
        let (from, pipe, _) = link.sending(side);
        if from.dropped || from.reset {
            return 0;
        }
        if shrunk && from.conn.queued() > SMALL_WRITE {
            // A full-sized segment vanished: as over TCP, nothing after it
            // gets through either.
            pipe.stuck = true;
        }
        if blackholed || pipe.stuck {
            return from.conn.write_to(&mut BytesMut::new(), max);
        }
        from.conn.write_to(&mut pipe.bytes, max)
    }

    /// Hands up to `max` bytes in flight towards `side` to its connection;
    /// returns how many. A read once the pipe is empty and its sender
    /// closed sees the end of the stream.
    pub(super) fn recv(&mut self, id: LinkId, side: Side, max: usize) -> usize {
        let link = &mut self.links[id];
        let from = match side {
            Side::Client => Side::Relay,
            Side::Relay => Side::Client,
        };
        let (_, pipe, to) = link.sending(from);
        if to.dropped || to.reset {
            return 0;
        }
        let n = max.min(pipe.bytes.len());
        if n > 0 {
            to.conn.receive(&pipe.bytes[..n]);
            pipe.bytes.advance(n);
        } else if pipe.fin {
            // As a socket: the read after the last byte returns nothing.
            to.eof = true;
        }
        n
    }

    /// The owner of `side` closes its end: what it queued goes out, then
    /// its close (unless the link is blackholed, or stuck that way).
    pub(super) fn close(&mut self, id: LinkId, side: Side) {
        let link = &mut self.links[id];
        let blackholed = link.blackholed;
        let (from, pipe, _) = link.sending(side);
        if from.dropped {
            return;
        }
        if !blackholed && !from.reset && !pipe.stuck {
            from.conn.write_to(&mut pipe.bytes, usize::MAX);
            pipe.fin = true;
        }
        from.dropped = true;
    }

    /// Link `id` goes silent both ways: what was in flight is lost, and
    /// nothing more gets through. Neither end is told.
    pub(super) fn blackhole(&mut self, id: LinkId) {
        let link = &mut self.links[id];
        link.blackholed = true;
        link.to_relay = Pipe::default();
        link.to_client = Pipe::default();
    }

    /// Link `id` comes to lose large writes: from now on, a side that sends
    /// while more than [`SMALL_WRITE`] bytes wait in its queue (a full
    /// segment, as a bulk sender's) loses them and everything after them,
    /// while a side that sends only small frames (acks, heartbeats) still
    /// gets through — a path whose MTU shrank, with no word of it. What was
    /// in flight arrives.
    pub(super) fn shrink(&mut self, id: LinkId) {
        self.links[id].shrunk = true;
    }

    /// `side` of link `id` sees an error at once; the other end hears
    /// nothing more (a middlebox's reset that reaches one side, an address
    /// that left the client's machine).
    pub(super) fn reset(&mut self, id: LinkId, side: Side) {
        self.blackhole(id);
        self.links[id].end(side).reset = true;
    }

    /// An outage until `until`: every link goes silent, and new ones get
    /// nowhere until it ends.
    pub(super) fn partition(&mut self, until: u64) {
        for id in 0..self.links.len() {
            self.blackhole(id);
        }
        self.down_until = self.down_until.max(until);
    }
}
