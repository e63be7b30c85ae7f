//! The session's local end (ssh's pipes on the client, sshd's socket on the
//! relay): bytes read from it into the replay buffer, with backpressure,
//! and received bytes handed to it in order.

use super::{Session, DELIVER_ENTRY_COST, READ_AHEAD};
use bytes::{Buf, Bytes};
use tokio::io::ReadBuf;

impl Session {
    /// How many bytes may be read from the local end now: zero when the
    /// replay buffer is full (backpressure) or the local end has closed,
    /// and, while a transport is attached, no more than keeps
    /// [`READ_AHEAD`] bytes waiting for it (what the transport cannot take
    /// yet stays in the local end's own buffers, not in the replay buffer).
    pub fn local_room(&self) -> usize {
        if self.local_eof {
            return 0;
        }
        let room = self.replay.room();
        if !self.attached {
            return room;
        }
        let waiting = self.replay.end().saturating_sub(self.send_next);
        room.min(usize::try_from(READ_AHEAD.saturating_sub(waiting)).unwrap_or(0))
    }

    /// Reads from the local end straight into the replay buffer: `read`
    /// gets a buffer over room for up to `max` bytes (at most
    /// [`local_room`](Self::local_room); fewer at a ring's wrap) and fills
    /// what it can, and what it filled is kept. Returns `read`'s result.
    pub fn read_local<T>(&mut self, max: usize, read: impl FnOnce(&mut ReadBuf<'_>) -> T) -> T {
        let max = max.min(self.local_room());
        let (result, n) = self.replay.read_into(max, read);
        self.stats.bytes_read_local += n as u64;
        result
    }

    /// Bytes read from the local end (at most [`local_room`](Self::local_room)),
    /// copied in.
    pub fn push_local(&mut self, bytes: Bytes) {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = self.read_local(rest.len(), |buf| {
                let n = buf.remaining();
                buf.put_slice(&rest[..n]);
                n
            });
            if n == 0 {
                break;
            }
            rest = &rest[n..];
        }
    }

    /// The local end closed its output: an end marker follows the last byte.
    pub fn local_eof(&mut self) {
        self.local_eof = true;
    }

    /// Whether the local end has closed its output.
    pub fn is_local_eof(&self) -> bool {
        self.local_eof
    }

    /// Next received bytes for the local end, in order.
    pub fn pop_deliver(&mut self) -> Option<Bytes> {
        let bytes = self.deliver.pop_front()?;
        self.deliver_len -= bytes.len() + DELIVER_ENTRY_COST;
        self.delivered += bytes.len() as u64;
        Some(bytes)
    }

    /// The received bytes the local end should take next, if any: write
    /// them, then say how many it took with [`delivered`](Self::delivered).
    pub fn pending_delivery(&self) -> Option<&Bytes> {
        self.deliver.front()
    }

    /// The local end took the first `n` bytes of
    /// [`pending_delivery`](Self::pending_delivery).
    pub fn delivered(&mut self, n: usize) {
        let Some(front) = self.deliver.front_mut() else {
            return;
        };
        let n = n.min(front.len());
        front.advance(n);
        self.deliver_len -= n;
        self.delivered += n as u64;
        if front.is_empty() {
            self.deliver.pop_front();
            self.deliver_len -= DELIVER_ENTRY_COST;
        }
    }

    /// The local end was told the peer's stream ended (its input was shut
    /// down) after taking every byte.
    pub fn local_output_shut(&mut self) {
        if self.deliver_finished() {
            self.end_delivered = true;
        }
    }

    /// Whether bytes wait for the local end.
    pub fn has_deliver(&self) -> bool {
        !self.deliver.is_empty()
    }

    /// The peer's stream has ended and every byte of it was handed out by
    /// [`pop_deliver`](Self::pop_deliver): the local end's input can be closed.
    pub fn deliver_finished(&self) -> bool {
        self.peer_end && self.deliver.is_empty()
    }

    /// The local end no longer accepts bytes (it closed or failed): drop what
    /// waits and whatever arrives later. Those bytes still count as received,
    /// so the peer's replay buffer keeps draining.
    pub fn close_local_output(&mut self) {
        self.local_output_closed = true;
        self.deliver.clear();
        self.deliver_len = 0;
        self.delivered = self.recv_next;
        self.end_delivered = self.peer_end;
    }

    /// Whether the driver should read frames from the transport: false while
    /// the local end is slow and enough bytes wait for it (backpressure).
    pub fn wants_transport_read(&self) -> bool {
        self.deliver_len < self.config.deliver_capacity
    }
}
