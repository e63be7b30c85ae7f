//! A replay buffer in one fixed region of memory, used as a ring.
//!
//! The relay keeps the bytes it read from sshd, until the client has
//! acknowledged them, in memory that outlives its process (a `memfd`
//! mapping kept in the descriptor store): a worker that crashes loses none
//! of them. Reads from sshd land straight in the ring ([`RingBuffer::read_into`]),
//! so there is no instant at which a byte has left the kernel and is not in
//! the ring; sends are slices of the ring itself ([`RingBuffer::slice_from`]),
//! without a copy.
//!
//! The ring is pure: where its memory lives, and what happens when the peer
//! acknowledges or the ring runs empty, is the [`RingMemory`]'s business.
//!
//! # Memory given back, and kept
//!
//! Acknowledged bytes need no memory, and a relay with many sessions should
//! not hold a full ring for each: a ring gives the pages of what was
//! acknowledged back ([`RingMemory::drained`], [`RingMemory::release`]).
//! But a page given back during a stream is needed again as soon as the
//! ring comes round to it, and faulting it in (and zeroing it) again costs
//! more than the bytes it holds are worth. So a ring that would give memory
//! back while bytes flow first asks its process's [`KEEP_BUDGET`] for its
//! capacity: with it, it keeps its pages until the session is idle
//! ([`RingBuffer::release_idle`], called by the session after
//! [`IDLE_RELEASE`] without a byte read in), then gives back what was
//! acknowledged and returns the budget. Without it (many busy sessions), it
//! gives memory back as it goes, as above. Keeping pages never keeps bytes
//! longer: what is held is the same either way.
//!
//! # The one rule that makes the slices safe
//!
//! A slice handed out covers bytes between the acknowledged offset and the
//! end. Its memory is written again only after the peer acknowledged those
//! bytes, and a peer acknowledges only what reached it, so no slice of them
//! is still waiting to be sent: slices wait only in the write queue of the
//! current transport, which is dropped with the transport. A resume re-sends
//! from the peer's position, never below it.

use crate::proto::budget::Budget;
use crate::proto::replay::fill;
use bytes::Bytes;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::ReadBuf;

/// Bytes written to the ring since it was last drained after which, once it
/// drains, its memory is given back ([`RingMemory::drained`]).
pub const RELEASE_AFTER: usize = 16 * 1024;
/// Acknowledged bytes after which their memory is given back even though
/// the ring does not drain ([`RingMemory::release`]): a ring that a busy
/// transfer keeps partly full holds about what is unacknowledged, not its
/// whole capacity.
pub const RELEASE_EVERY: u64 = 256 * 1024;
/// Ring memory the busy rings of a process may keep instead of giving it
/// back as they go (each takes its whole capacity: two default rings).
pub const KEEP_BUDGET: u64 = 16 << 20;
/// The process's budget of kept ring memory.
pub static KEEP: Budget = Budget::new(KEEP_BUDGET);
/// How long a ring that keeps its memory must see no new bytes before it
/// gives back what was acknowledged ([`RingBuffer::release_idle`]).
pub const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// The memory a [`RingBuffer`] lives in.
///
/// # Safety
/// [`as_ptr`](Self::as_ptr) must point at [`capacity`](Self::capacity)
/// bytes, initialised (zeroed pages will do), valid and unmoved for as long
/// as the value lives, and used by nothing but the ring built on it.
pub unsafe trait RingMemory: Send + Sync + 'static {
    /// The first byte of the ring.
    fn as_ptr(&self) -> *mut u8;
    /// The ring's size in bytes.
    fn capacity(&self) -> usize;
    /// The peer acknowledged every byte before `offset`: where a new process
    /// would start from.
    fn acknowledged(&self, offset: u64);
    /// The ring holds nothing: the memory's pages may be given back. Their
    /// contents are not needed again.
    fn drained(&self) {}
    /// The bytes at `at..at + len` of the ring were acknowledged: the
    /// pages wholly inside may be given back (the ring writes them again
    /// only once it wraps around to them).
    fn release(&self, _at: usize, _len: usize) {}
}

/// Memory on the heap, for a ring nothing has to outlive.
pub struct HeapMemory(Box<[std::cell::UnsafeCell<u8>]>);

impl HeapMemory {
    /// `capacity` zeroed bytes.
    pub fn new(capacity: usize) -> HeapMemory {
        HeapMemory(
            (0..capacity)
                .map(|_| std::cell::UnsafeCell::new(0))
                .collect(),
        )
    }
}

// SAFETY: the box never moves or shrinks; the ring is its only user.
unsafe impl RingMemory for HeapMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr() as *mut u8
    }
    fn capacity(&self) -> usize {
        self.0.len()
    }
    fn acknowledged(&self, _offset: u64) {}
}

// SAFETY: the bytes are only reached through the ring, whose rule above
// keeps readers and the writer apart.
unsafe impl Sync for HeapMemory {}

/// Unacknowledged bytes of one outgoing stream in a ring, from
/// [`start`](Self::start) to [`end`](Self::end).
pub struct RingBuffer {
    memory: Arc<dyn RingMemory>,
    start: u64,
    end: u64,
    /// Bytes written since the memory was last given back.
    written_since_release: usize,
    /// Offset before which the memory was given back.
    released_to: u64,
    /// Where [`keeping`](Self::keeping) takes its capacity from.
    budget: &'static Budget,
    /// The ring holds its capacity of the budget and gives nothing back
    /// until [`release_idle`](Self::release_idle).
    kept: bool,
}

impl Drop for RingBuffer {
    fn drop(&mut self) {
        if self.kept {
            self.budget.give(self.capacity() as u64);
        }
    }
}

impl std::fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuffer")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("capacity", &self.memory.capacity())
            .finish()
    }
}

/// A range that does not fit the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a ring of {capacity} bytes cannot hold offsets {start}..{end}")]
pub struct RingRangeError {
    /// The range asked for.
    pub start: u64,
    /// Its end.
    pub end: u64,
    /// The ring's size.
    pub capacity: usize,
}

impl RingBuffer {
    /// A ring on `memory` holding offsets `start..end` (a new one: `0..0`;
    /// a restored one: what the memory kept).
    pub fn new(
        memory: Arc<dyn RingMemory>,
        start: u64,
        end: u64,
    ) -> Result<RingBuffer, RingRangeError> {
        RingBuffer::with_budget(memory, start, end, &KEEP)
    }

    /// [`new`](Self::new), keeping memory within `budget` instead of the
    /// process's [`KEEP`].
    pub fn with_budget(
        memory: Arc<dyn RingMemory>,
        start: u64,
        end: u64,
        budget: &'static Budget,
    ) -> Result<RingBuffer, RingRangeError> {
        let capacity = memory.capacity();
        if capacity == 0 || start > end || end - start > capacity as u64 {
            return Err(RingRangeError {
                start,
                end,
                capacity,
            });
        }
        Ok(RingBuffer {
            memory,
            start,
            end,
            written_since_release: 0,
            released_to: start,
            budget,
            kept: false,
        })
    }

    /// Offset of the first unacknowledged byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset just past the last byte written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The ring's size.
    pub fn capacity(&self) -> usize {
        self.memory.capacity()
    }

    /// Reads bytes in without a copy: `read` fills a buffer over up to
    /// `max` bytes of free ring, contiguous (so possibly fewer than the
    /// room, at the wrap), and what it filled is kept. Returns `read`'s
    /// result and how many bytes were kept.
    pub fn read_into<T>(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut ReadBuf<'_>) -> T,
    ) -> (T, usize) {
        let (result, n) = fill(self.read_slot(max), read);
        self.commit(n);
        (result, n)
    }

    /// Where the next bytes go: up to `max` bytes of free ring, contiguous.
    fn read_slot(&mut self, max: usize) -> &mut [MaybeUninit<u8>] {
        let capacity = self.capacity();
        let at = (self.end % capacity as u64) as usize;
        let room = capacity - self.len();
        let len = max.min(room).min(capacity - at);
        // SAFETY: `at + len <= capacity`; the free part of the ring is
        // referenced by no slice (see the module's rule), and `&mut self`
        // keeps a second slot from being taken meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.as_ptr().add(at).cast::<MaybeUninit<u8>>(),
                len,
            )
        }
    }

    /// The first `n` bytes of the last [`read_slot`](Self::read_slot) now
    /// hold data (`n` is at most the slot's length).
    fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.capacity() - self.len(), "ring overfilled");
        self.end += n as u64;
        self.written_since_release += n;
    }

    /// Drops everything before `offset`, which the peer has acknowledged.
    /// Offsets at or before [`start`](Self::start) change nothing.
    pub fn acknowledge(&mut self, offset: u64) {
        let offset = offset.min(self.end);
        if offset <= self.start {
            return;
        }
        self.start = offset;
        self.memory.acknowledged(offset);
        if self.start == self.end && self.written_since_release >= RELEASE_AFTER {
            if !self.keeping() {
                self.drain();
            }
        } else if self.start - self.released_to >= RELEASE_EVERY.min(self.capacity() as u64 / 4)
            && !self.keeping()
        {
            self.release_acknowledged();
        }
    }

    /// Whether the ring keeps its memory rather than giving it back now:
    /// it does while it holds its capacity of the budget, which it takes
    /// here if that much is left.
    fn keeping(&mut self) -> bool {
        if !self.kept {
            self.kept = self.budget.take(self.capacity() as u64);
        }
        self.kept
    }

    /// Whether the ring keeps memory that [`release_idle`](Self::release_idle)
    /// would give back.
    pub fn keeps_memory(&self) -> bool {
        self.kept
    }

    /// No bytes came in for a while ([`IDLE_RELEASE`]): gives back the
    /// memory of what was acknowledged and kept, and the budget it held.
    pub fn release_idle(&mut self) {
        if !self.kept {
            return;
        }
        self.kept = false;
        self.budget.give(self.capacity() as u64);
        if self.start == self.end {
            if self.written_since_release > 0 {
                self.drain();
            }
        } else if self.start > self.released_to {
            self.release_acknowledged();
        }
    }

    /// Gives the whole ring back: it holds nothing.
    fn drain(&mut self) {
        self.memory.drained();
        self.written_since_release = 0;
        self.released_to = self.start;
    }

    /// Gives back the memory of what was acknowledged since the last time.
    fn release_acknowledged(&mut self) {
        let capacity = self.capacity() as u64;
        // Only offsets whose place in the ring was not written again since:
        // those before `end - capacity` share theirs with what is held now.
        let from = self.released_to.max(self.end.saturating_sub(capacity));
        let at = (from % capacity) as usize;
        let len = (self.start - from) as usize;
        let first = len.min(self.capacity() - at);
        self.memory.release(at, first);
        if len > first {
            self.memory.release(0, len - first);
        }
        self.released_to = self.start;
    }

    /// Up to `max` bytes starting at `offset`, without copying (never past
    /// the wrap). Empty when `offset` is outside `start..end`.
    pub fn slice_from(&self, offset: u64, max: usize) -> Bytes {
        if offset < self.start || offset >= self.end {
            return Bytes::new();
        }
        let capacity = self.capacity();
        let at = (offset % capacity as u64) as usize;
        let len = ((self.end - offset) as usize).min(capacity - at).min(max);
        Bytes::from_owner(RingSlice {
            memory: Arc::clone(&self.memory),
            at,
            len,
        })
    }
}

/// Part of a ring, kept alive by the ring's memory.
struct RingSlice {
    memory: Arc<dyn RingMemory>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for RingSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: in bounds (checked by `slice_from`), and not written while
        // the slice can still be sent (the module's rule).
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr().add(self.at), self.len) }
    }
}

#[cfg(test)]
mod tests;
