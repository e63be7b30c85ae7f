//! The replay buffer: bytes sent to the peer but not yet acknowledged.
//!
//! A sender keeps every byte until the peer acknowledges it, so that after a
//! transport break it can send again whatever the peer did not receive. The
//! buffer is bounded; when it is full the sender stops reading its local end,
//! and backpressure reaches ssh or sshd through TCP flow control.
//!
//! Chunks are kept as they were read ([`Bytes`], shared, never copied), each
//! with its stream offset, so a send is a cheap slice of a chunk. That is
//! the client's store; the relay keeps its bytes in a ring of memory that
//! outlives its process ([`crate::proto::replay_ring`]). A session holds
//! either ([`ReplayStore`]) and reads its local end straight into it
//! ([`ReplayStore::read_into`]): the reader fills a [`ReadBuf`] over the
//! store's free memory, which says how much of it was initialised, and
//! only that much is kept. (tokio's `ReadBuf` is a plain buffer type: no
//! I/O comes with it.)

use crate::proto::replay_ring::RingBuffer;
use crate::proto::wire::MAX_DATA_LEN;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use tokio::io::ReadBuf;

/// Bytes reserved at once for reads from the local end into a
/// [`ReplayBuffer`] (one data frame's worth).
pub const READ_RESERVE: usize = MAX_DATA_LEN;

/// Where a session keeps the bytes it sent until the peer acknowledges them.
#[derive(Debug)]
pub enum ReplayStore {
    /// Chunks on the heap, as read.
    Heap(ReplayBuffer),
    /// A ring in memory that may outlive the process.
    Ring(RingBuffer),
}

impl ReplayStore {
    /// Offset of the first unacknowledged byte.
    pub fn start(&self) -> u64 {
        match self {
            ReplayStore::Heap(b) => b.start(),
            ReplayStore::Ring(r) => r.start(),
        }
    }

    /// Offset just past the last byte held.
    pub fn end(&self) -> u64 {
        match self {
            ReplayStore::Heap(b) => b.end(),
            ReplayStore::Ring(r) => r.end(),
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        (self.end() - self.start()) as usize
    }

    /// How many more bytes may be read in.
    pub fn room(&self) -> usize {
        match self {
            ReplayStore::Heap(b) => b.room(),
            ReplayStore::Ring(r) => r.capacity() - r.len(),
        }
    }

    /// Reads bytes in: `read` gets a buffer over room for up to `max` bytes
    /// (possibly fewer: a ring stops at its wrap) and fills what it can;
    /// what it filled is kept. Returns `read`'s result and how many bytes
    /// were kept.
    pub fn read_into<T>(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut ReadBuf<'_>) -> T,
    ) -> (T, usize) {
        match self {
            ReplayStore::Heap(b) => b.read_into(max, read),
            ReplayStore::Ring(r) => r.read_into(max, read),
        }
    }

    /// Drops everything before `offset`, which the peer has acknowledged.
    pub fn acknowledge(&mut self, offset: u64) {
        match self {
            ReplayStore::Heap(b) => b.acknowledge(offset),
            ReplayStore::Ring(r) => r.acknowledge(offset),
        }
    }

    /// Whether memory of acknowledged bytes is kept for the next ones, to
    /// be given back once idle ([`RingBuffer::release_idle`]).
    pub fn keeps_memory(&self) -> bool {
        matches!(self, ReplayStore::Ring(r) if r.keeps_memory())
    }

    /// No bytes came in for a while: gives kept memory back.
    pub fn release_idle(&mut self) {
        if let ReplayStore::Ring(r) = self {
            r.release_idle();
        }
    }

    /// Up to `max` bytes starting at `offset`, without copying.
    pub fn slice_from(&self, offset: u64, max: usize) -> Bytes {
        match self {
            ReplayStore::Heap(b) => b.slice_from(offset, max),
            ReplayStore::Ring(r) => r.slice_from(offset, max),
        }
    }
}

/// Unacknowledged bytes of one outgoing stream, from [`start`](Self::start)
/// to [`end`](Self::end).
#[derive(Debug)]
pub struct ReplayBuffer {
    /// Chunks in order, each with the stream offset of its first byte.
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the first byte held: everything before it was acknowledged.
    start: u64,
    /// Offset just past the last byte held.
    end: u64,
    /// Most bytes held at once.
    capacity: usize,
    /// Memory the next read from the local end goes into.
    pending: BytesMut,
}

impl ReplayBuffer {
    /// An empty buffer at offset 0 that holds at most `capacity` bytes.
    pub fn new(capacity: usize) -> ReplayBuffer {
        ReplayBuffer {
            chunks: VecDeque::new(),
            start: 0,
            end: 0,
            capacity,
            pending: BytesMut::new(),
        }
    }

    /// Reads bytes in without a copy: `read` fills a buffer over memory for
    /// up to `max` bytes (at most the room), and what it filled becomes a
    /// chunk. Returns `read`'s result and the chunk's length.
    pub fn read_into<T>(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut ReadBuf<'_>) -> T,
    ) -> (T, usize) {
        let max = max.min(self.room());
        if self.pending.capacity() < max {
            self.pending.reserve(max.max(READ_RESERVE));
        }
        // `pending` is empty (every read splits off what it filled): its
        // spare capacity is the slot.
        let slot: &mut [MaybeUninit<u8>] = &mut self.pending.spare_capacity_mut()[..max];
        let (result, n) = fill(slot, read);
        // SAFETY: `fill` counts only bytes of the slot that the `ReadBuf`
        // over it holds as filled, and a `ReadBuf` fills only initialised
        // bytes; the slot is the start of `pending`'s spare capacity.
        unsafe { self.pending.set_len(n) };
        let chunk = self.pending.split().freeze();
        self.push(chunk);
        (result, n)
    }

    /// Offset of the first unacknowledged byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset just past the last byte pushed.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// How many more bytes may be pushed.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// Appends bytes read from the local end. The caller reads at most
    /// [`room`](Self::room) bytes; anything beyond is still kept (nothing is
    /// ever dropped) but a debug build asserts.
    pub fn push(&mut self, bytes: Bytes) {
        debug_assert!(bytes.len() <= self.room(), "replay buffer overfilled");
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len() as u64;
        self.chunks.push_back((self.end, bytes));
        self.end += len;
    }

    /// Drops everything before `offset`, which the peer has acknowledged.
    /// Offsets at or before [`start`](Self::start) change nothing; the caller
    /// checks that `offset` is not past [`end`](Self::end).
    pub fn acknowledge(&mut self, offset: u64) {
        let offset = offset.min(self.end);
        if offset <= self.start {
            return;
        }
        while let Some((chunk_start, chunk)) = self.chunks.front_mut() {
            let chunk_end = *chunk_start + chunk.len() as u64;
            if chunk_end <= offset {
                self.chunks.pop_front();
            } else {
                if *chunk_start < offset {
                    let skip = (offset - *chunk_start) as usize;
                    *chunk = chunk.slice(skip..);
                    *chunk_start = offset;
                }
                break;
            }
        }
        self.start = offset;
    }

    /// Up to `max` bytes starting at `offset`, without copying (never more
    /// than one chunk). Empty when `offset` is outside `start..end`.
    pub fn slice_from(&self, offset: u64, max: usize) -> Bytes {
        if offset < self.start || offset >= self.end {
            return Bytes::new();
        }
        // The chunk holding `offset` is the last one starting at or before it.
        let idx = self.chunks.partition_point(|(s, _)| *s <= offset) - 1;
        let (chunk_start, chunk) = &self.chunks[idx];
        let from = (offset - chunk_start) as usize;
        let to = chunk.len().min(from + max);
        chunk.slice(from..to)
    }
}

/// Lets `read` fill `slot` through a [`ReadBuf`]; returns its result and
/// how many bytes at the start of `slot` it filled — and so initialised.
/// Bytes are counted only while the `ReadBuf` is still the one over `slot`
/// (`read` could swap in another): otherwise none are.
pub(crate) fn fill<T>(
    slot: &mut [MaybeUninit<u8>],
    read: impl FnOnce(&mut ReadBuf<'_>) -> T,
) -> (T, usize) {
    let start = slot.as_ptr().cast::<u8>();
    let len = slot.len();
    let mut buf = ReadBuf::uninit(slot);
    let result = read(&mut buf);
    let filled = buf.filled();
    let ours = filled.as_ptr() == start && buf.capacity() == len;
    (result, if ours { filled.len() } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_what_the_reader_filled_is_kept() {
        let mut r = ReplayBuffer::new(100);
        let (_, n) = r.read_into(10, |buf| buf.put_slice(b"abc"));
        assert_eq!(n, 3);
        let (_, n) = r.read_into(10, |_| ());
        assert_eq!(n, 0, "a reader that fills nothing adds nothing");
        // A reader that puts another buffer in place of the slot's
        // cannot make the slot count as filled.
        let (_, n) = r.read_into(10, |buf| {
            let other: &'static mut [u8] = Box::leak(Box::new([7u8; 10]));
            let mut swapped = ReadBuf::new(other);
            swapped.set_filled(10);
            std::mem::swap(buf, &mut swapped);
        });
        assert_eq!(n, 0);
        assert_eq!(r.len(), 3);
        assert_eq!(&r.slice_from(0, 100)[..], b"abc");
        let (_, n) = r.read_into(1000, |buf| {
            assert_eq!(buf.remaining(), 97, "at most the room");
            buf.put_slice(&[1; 97]);
        });
        assert_eq!((n, r.room()), (97, 0));
    }

    #[test]
    fn slices_span_chunks_and_acks_trim_them() {
        let mut r = ReplayBuffer::new(100);
        r.push(Bytes::from_static(b"hello "));
        r.push(Bytes::from_static(b"world"));
        assert_eq!(r.len(), 11);
        assert_eq!(r.room(), 89);
        assert_eq!(&r.slice_from(0, 100)[..], b"hello ");
        assert_eq!(&r.slice_from(3, 2)[..], b"lo");
        assert_eq!(&r.slice_from(6, 100)[..], b"world");
        r.acknowledge(8);
        assert_eq!(r.start(), 8);
        assert_eq!(&r.slice_from(8, 100)[..], b"rld");
        assert!(r.slice_from(7, 100).is_empty());
        assert!(r.slice_from(11, 100).is_empty());
        r.acknowledge(3); // stale ack: nothing changes
        assert_eq!(r.start(), 8);
        r.acknowledge(11);
        assert!(r.is_empty());
        assert_eq!(r.room(), 100);
    }

    proptest! {
        #[test]
        fn reassembles_any_chunking_and_acks(
            data in proptest::collection::vec(any::<u8>(), 1..2000),
            cuts in proptest::collection::vec(1usize..300, 1..20),
            acks in proptest::collection::vec(0usize..2000, 0..10),
            max in 1usize..400,
        ) {
            let mut r = ReplayBuffer::new(data.len());
            let mut pos = 0;
            for c in cuts.iter().cycle() {
                if pos >= data.len() { break; }
                let end = (pos + c).min(data.len());
                r.push(Bytes::copy_from_slice(&data[pos..end]));
                pos = end;
            }
            let mut start = 0u64;
            for a in acks {
                let a = (a as u64).min(data.len() as u64);
                r.acknowledge(a);
                start = start.max(a);
                prop_assert_eq!(r.start(), start);
            }
            let mut out = Vec::new();
            let mut off = r.start();
            while off < r.end() {
                let s = r.slice_from(off, max);
                prop_assert!(!s.is_empty() && s.len() <= max);
                out.extend_from_slice(&s);
                off += s.len() as u64;
            }
            prop_assert_eq!(&out[..], &data[start as usize..]);
        }
    }
}
