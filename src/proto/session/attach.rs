//! A transport lost and a new one attached: what a session drops when its
//! transport goes, and the resume check — the peer's position must lie
//! between what it already acknowledged and what was ever sent — before
//! this side re-sends from there.

use super::liveness::Liveness;
use super::{ProtocolError, Session};
use std::time::Instant;

impl Session {
    /// The transport was lost; frames queued for it are gone too.
    pub fn detach(&mut self) {
        self.attached = false;
        self.release_kept_memory();
        self.pong_due = None;
        self.ping_in_flight = None;
        if self.config.ack_delivered {
            // Not acknowledged, so the peer still has it: it comes again.
            let dropped = self.recv_next - self.delivered;
            self.stats.bytes_received -= dropped;
            self.recv_next = self.delivered;
            self.peer_end = self.end_delivered;
            self.deliver.clear();
            self.deliver_len = 0;
            self.ack_pending_since = None;
        }
    }

    /// Checks a peer's resume position against what this side holds: it must
    /// lie between what the peer already acknowledged and what was ever sent.
    /// The relay asks before it answers a resume; [`attach`](Self::attach)
    /// asks again.
    pub fn check_resume(&self, peer_received: u64) -> Result<(), ProtocolError> {
        let acked = self.replay.start() + u64::from(self.end_acked);
        if peer_received < acked || peer_received > self.sent_high {
            return Err(ProtocolError::ResumeOutOfRange {
                peer_received,
                acked,
                sent_high: self.sent_high,
            });
        }
        Ok(())
    }

    /// A new transport is attached, over which the peer said it has received
    /// up to `peer_received`. Acknowledges everything before it and re-sends
    /// the rest. A position outside what this side still holds is a protocol
    /// error, never a guess.
    pub fn attach(&mut self, peer_received: u64, now: Instant) -> Result<(), ProtocolError> {
        self.check_resume(peer_received)?;
        self.replay.acknowledge(peer_received);
        self.watch_kept_memory(now);
        if self.local_eof && peer_received == self.replay.end() + 1 {
            self.end_acked = true;
        }
        let resume_at = peer_received.min(self.replay.end());
        self.stats.bytes_replayed += self.send_next.saturating_sub(resume_at);
        self.send_next = resume_at;
        self.end_sent = self.end_acked;
        self.ack_sent = self.received_position();
        self.ack_pending_since = None;
        self.attached = true;
        // A close the peer sent over the old transport (a relay restarting)
        // does not carry over to the new one.
        self.peer_close = None;
        self.live = Liveness::new(now);
        self.last_sent = now;
        self.pong_due = None;
        self.ping_in_flight = None;
        Ok(())
    }
}
