//! Whether the attached transport is alive, and whether it carries the
//! session's data.
//!
//! Two rules declare a transport dead ([`Dead`]):
//!
//! * **Silent**: nothing arrived from the peer for the dead-peer interval —
//!   a silent partition, a peer gone.
//! * **Stalled**: data this side sent has waited the dead-peer interval
//!   with no sign that the peer gets it — no ack, no data of the peer's
//!   own — while the peer's heartbeats still arrive. Liveness is progress,
//!   not packets: this is a path that passes small packets and loses large
//!   ones (a VPN or tunnel that shrank the path's MTU, with the ICMP that
//!   would say so filtered), where heartbeats alone would keep a dead link
//!   open for good.
//!
//! A slow peer is not a stalled one. A receiver that gets data, or holds
//! some back because its local end is slow, says so with a *keep-alive
//! ack*: an [`Ack`](crate::proto::wire::Frame::Ack) that repeats the
//! position it last acknowledged, at least every heartbeat interval. It
//! also repeats its position as its very first frame on every transport
//! (the *announcement*), which tells the other side that it sends
//! keep-alive acks at all: only then does the stall rule apply, so a peer
//! of an earlier release, which ignores repeated acks and never sends
//! them, is judged by silence alone.
//!
//! A transport also knows when it first *carries data* ([`Flow`]): the
//! peer's data arrives, or its acks for this side's data, or the answer to
//! a ping this side sent after the data it had queued (the stream is
//! ordered: that answer comes after what the peer had queued for this
//! side, and was sent after the peer read what this side had queued). A
//! resume is told to the user only then, not when its handshake — small
//! packets — went through.

use std::time::{Duration, Instant};

/// Why the attached transport is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dead {
    /// Nothing arrived from the peer for the dead-peer interval.
    Silent,
    /// This side's data waited the dead-peer interval with no sign that the
    /// peer gets it, while the peer's small frames still arrived.
    Stalled,
}

/// Whether the transport has carried data yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Not yet.
    Waiting,
    /// It has; the driver was not told yet.
    Started,
    /// It has, and the driver was told.
    Told,
}

/// The ping that confirms the flow on a new transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// To be sent once this side has queued what it had.
    Due,
    /// Sent with this token; its pong confirms the flow.
    Sent(u64),
    /// Answered, or no longer needed.
    Done,
}

/// The liveness of one attachment (see the module documentation).
#[derive(Debug)]
pub(super) struct Liveness {
    /// When something last arrived from the peer (or silence stopped
    /// counting).
    last_heard: Instant,
    /// When the peer last showed that it gets this side's data (an ack, or
    /// data of its own), or when data began to wait for it.
    progress_at: Instant,
    /// The peer announced that it sends keep-alive acks.
    peer_keeps_alive: bool,
    /// This side's announcement is still to be sent.
    announce_due: bool,
    /// The peer's data arrived (whole frames or part of one) since this
    /// side last sent an ack.
    data_heard: bool,
    /// When this side last sent an ack.
    ack_sent_at: Instant,
    probe: Probe,
    flow: Flow,
}

impl Liveness {
    /// A transport attached (or none yet) at `now`.
    pub(super) fn new(now: Instant) -> Liveness {
        Liveness {
            last_heard: now,
            progress_at: now,
            peer_keeps_alive: false,
            announce_due: true,
            data_heard: false,
            ack_sent_at: now,
            probe: Probe::Due,
            flow: Flow::Waiting,
        }
    }

    // ----- what arrived -----

    /// Bytes arrived from the peer, whole frames or not.
    pub(super) fn heard(&mut self, at: Instant) {
        self.last_heard = self.last_heard.max(at);
    }

    /// Data from the peer arrived (a whole frame, part of one, or its end
    /// marker): the peer is alive and sending, so acks for this side's data
    /// may wait behind its own.
    pub(super) fn data_arrived(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
        self.progress_at = now;
        self.data_heard = true;
        self.started();
    }

    /// An ack arrived. `repeated`: it acknowledges nothing new.
    pub(super) fn ack_arrived(&mut self, repeated: bool, now: Instant) {
        self.progress_at = now;
        if repeated && !self.peer_keeps_alive {
            // The peer's announcement: it comes before anything it had
            // queued, so it says nothing of the flow.
            self.peer_keeps_alive = true;
            return;
        }
        self.started();
    }

    /// A pong arrived for the ping with `token`.
    pub(super) fn pong_arrived(&mut self, token: u64) {
        if self.probe == Probe::Sent(token) {
            self.probe = Probe::Done;
            self.started();
        }
    }

    fn started(&mut self) {
        if self.flow == Flow::Waiting {
            self.flow = Flow::Started;
        }
        if self.probe == Probe::Due {
            self.probe = Probe::Done;
        }
    }

    // ----- what to send -----

    /// Whether this side's announcement is due; it is sent now.
    pub(super) fn take_announcement(&mut self, now: Instant) -> bool {
        let due = self.announce_due;
        if due {
            self.announce_due = false;
            self.ack_sent_at = now;
        }
        due
    }

    /// This side sent an ack.
    pub(super) fn ack_sent(&mut self, now: Instant) {
        self.ack_sent_at = now;
        self.data_heard = false;
    }

    /// This side sent data (or its end marker); `waiting` says whether
    /// earlier data was already waiting for the peer.
    pub(super) fn data_sent(&mut self, waiting: bool, now: Instant) {
        if !waiting {
            self.progress_at = now;
        }
    }

    /// Whether the probe ping is due; if so, it goes out with `token`.
    pub(super) fn take_probe(&mut self, token: u64) -> bool {
        let due = self.probe == Probe::Due;
        if due {
            self.probe = Probe::Sent(token);
        }
        due
    }

    /// When a keep-alive ack is due: every `heartbeat` while the peer's data
    /// arrives or this side holds some back (`holding`). `None` if none is.
    pub(super) fn keep_alive_at(&self, holding: bool, heartbeat: Duration) -> Option<Instant> {
        (self.data_heard || holding).then(|| self.ack_sent_at + heartbeat)
    }

    // ----- the clock -----

    /// When the transport will be dead if nothing changes: silence, or,
    /// with data waiting (`waiting`), a stall.
    pub(super) fn dead_at(&self, waiting: bool, dead_after: Duration) -> Instant {
        let silent = self.last_heard + dead_after;
        if waiting && self.peer_keeps_alive {
            silent.min(self.progress_at + dead_after)
        } else {
            silent
        }
    }

    /// Whether the transport is dead at `now`. While this side does not
    /// read (its local end is slow: `reading` is false) neither rule
    /// counts: the peer's frames, acks included, wait unread.
    pub(super) fn check(
        &mut self,
        now: Instant,
        reading: bool,
        waiting: bool,
        dead_after: Duration,
    ) -> Option<Dead> {
        if !reading {
            self.last_heard = now;
            self.progress_at = now;
        }
        if now.saturating_duration_since(self.last_heard) >= dead_after {
            return Some(Dead::Silent);
        }
        let stalled = waiting
            && self.peer_keeps_alive
            && now.saturating_duration_since(self.progress_at) >= dead_after;
        stalled.then_some(Dead::Stalled)
    }

    /// Whether the transport has carried data since it was attached; true
    /// only the first time it is asked after that happened.
    pub(super) fn take_flowing(&mut self) -> bool {
        let news = self.flow == Flow::Started;
        if news {
            self.flow = Flow::Told;
        }
        news
    }

    /// Whether the transport has carried data since it was attached.
    pub(super) fn is_flowing(&self) -> bool {
        self.flow != Flow::Waiting
    }
}
