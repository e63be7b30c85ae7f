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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Heap memory that remembers what the ring told it.
    struct Watched {
        heap: HeapMemory,
        acked: AtomicU64,
        drained: AtomicUsize,
        released: std::sync::Mutex<Vec<(usize, usize)>>,
    }

    // SAFETY: delegates to the heap memory.
    unsafe impl RingMemory for Watched {
        fn as_ptr(&self) -> *mut u8 {
            self.heap.as_ptr()
        }
        fn capacity(&self) -> usize {
            self.heap.capacity()
        }
        fn acknowledged(&self, offset: u64) {
            self.acked.store(offset, Ordering::Relaxed);
        }
        fn drained(&self) {
            self.drained.fetch_add(1, Ordering::Relaxed);
        }
        fn release(&self, at: usize, len: usize) {
            self.released.lock().expect("lock").push((at, len));
        }
    }

    /// A budget that lets no ring keep its memory.
    static NO_KEEP: Budget = Budget::new(0);

    fn watched(capacity: usize) -> Arc<Watched> {
        Arc::new(Watched {
            heap: HeapMemory::new(capacity),
            acked: AtomicU64::new(0),
            drained: AtomicUsize::new(0),
            released: std::sync::Mutex::default(),
        })
    }

    fn write(ring: &mut RingBuffer, mut data: &[u8]) {
        while !data.is_empty() {
            let ((), n) = ring.read_into(data.len(), |buf| {
                let n = buf.remaining();
                buf.put_slice(&data[..n]);
            });
            assert!(n > 0, "no room for {} bytes", data.len());
            data = &data[n..];
        }
    }

    /// How many bytes the ring would take in one read now.
    fn slot_len(ring: &mut RingBuffer, max: usize) -> usize {
        ring.read_into(max, |buf| buf.remaining()).0
    }

    #[test]
    fn slots_stop_at_the_wrap_and_slices_follow_it() {
        let mut ring = RingBuffer::new(Arc::new(HeapMemory::new(8)), 0, 0).expect("ring");
        write(&mut ring, b"abcdef");
        ring.acknowledge(4);
        assert_eq!(slot_len(&mut ring, 100), 2, "up to the wrap");
        write(&mut ring, b"ghij");
        assert_eq!((ring.start(), ring.end(), ring.len()), (4, 10, 6));
        assert_eq!(&ring.slice_from(4, 100)[..], b"efgh");
        assert_eq!(&ring.slice_from(8, 100)[..], b"ij");
        assert_eq!(&ring.slice_from(5, 2)[..], b"fg");
        assert!(ring.slice_from(3, 100).is_empty());
        assert!(ring.slice_from(10, 100).is_empty());
        assert_eq!(slot_len(&mut ring, 100), 2, "room is capacity minus held");
    }

    #[test]
    fn the_memory_hears_acks_and_is_given_back_when_drained() {
        let memory = watched(64 * 1024);
        let mut ring =
            RingBuffer::with_budget(Arc::clone(&memory) as Arc<dyn RingMemory>, 0, 0, &NO_KEEP)
                .expect("ring");
        write(&mut ring, &[1; 100]);
        ring.acknowledge(100);
        assert_eq!(memory.acked.load(Ordering::Relaxed), 100);
        assert_eq!(
            memory.drained.load(Ordering::Relaxed),
            0,
            "too little to give back"
        );
        write(&mut ring, &vec![2; RELEASE_AFTER]);
        ring.acknowledge(50);
        assert_eq!(
            memory.acked.load(Ordering::Relaxed),
            100,
            "stale acks change nothing"
        );
        ring.acknowledge(ring.end());
        assert_eq!(memory.drained.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_ring_that_never_drains_gives_back_what_was_acknowledged() {
        let chunk = RELEASE_EVERY as usize;
        let memory = watched(4 * chunk);
        let mut ring =
            RingBuffer::with_budget(Arc::clone(&memory) as Arc<dyn RingMemory>, 0, 0, &NO_KEEP)
                .expect("ring");
        let at = |n: f64| (n * chunk as f64) as u64;
        write(&mut ring, &vec![3; 3 * chunk]);
        ring.acknowledge(at(1.0) - 1);
        assert!(memory.released.lock().expect("lock").is_empty());
        ring.acknowledge(at(1.0) + 10);
        ring.acknowledge(at(1.5));
        // The ring wraps: offsets from 4 chunks on take the places of the
        // first ones, which are not given back again.
        write(&mut ring, &vec![4; 2 * chunk + chunk / 2]);
        ring.acknowledge(at(2.5) + 100);
        assert_eq!(
            *memory.released.lock().expect("lock"),
            [(0, chunk + 10), (chunk + chunk / 2, chunk + 100)]
        );
        assert_eq!(memory.drained.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_busy_ring_within_the_budget_keeps_its_memory_until_idle() {
        let chunk = RELEASE_EVERY as usize;
        // Room for one ring of four chunks.
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(4 * chunk as u64)));
        let memory = watched(4 * chunk);
        let mut ring =
            RingBuffer::with_budget(Arc::clone(&memory) as Arc<dyn RingMemory>, 0, 0, budget)
                .expect("ring");
        let other = watched(4 * chunk);
        let mut second =
            RingBuffer::with_budget(Arc::clone(&other) as Arc<dyn RingMemory>, 0, 0, budget)
                .expect("ring");
        write(&mut ring, &vec![5; 3 * chunk]);
        ring.acknowledge(2 * chunk as u64);
        write(&mut ring, &vec![6; 2 * chunk]);
        ring.acknowledge(4 * chunk as u64);
        assert!(ring.keeps_memory());
        assert!(memory.released.lock().expect("lock").is_empty());
        // The second ring finds the budget taken: it gives back as it goes.
        write(&mut second, &vec![7; 2 * chunk]);
        second.acknowledge(2 * chunk as u64);
        assert!(!second.keeps_memory());
        assert_eq!(other.drained.load(Ordering::Relaxed), 1);
        // Idle: what was acknowledged and not written again goes back, the
        // held chunk stays, and the budget is free for the second ring.
        ring.release_idle();
        assert!(!ring.keeps_memory());
        assert_eq!(
            *memory.released.lock().expect("lock"),
            [(chunk, 3 * chunk)],
            "offsets chunk..4 chunks (the first chunk's place holds offsets 4..5 chunks)"
        );
        assert_eq!(ring.len(), chunk);
        write(&mut second, &vec![8; 2 * chunk]);
        second.acknowledge(4 * chunk as u64);
        assert!(second.keeps_memory());
        // Once drained and idle, the whole ring goes back.
        second.release_idle();
        assert_eq!(other.drained.load(Ordering::Relaxed), 2);
        drop(ring);
        drop(second);
        assert!(
            budget.take(4 * chunk as u64),
            "dropped rings give the budget back"
        );
    }

    #[test]
    fn a_restored_range_must_fit() {
        let memory: Arc<dyn RingMemory> = Arc::new(HeapMemory::new(16));
        assert!(RingBuffer::new(Arc::clone(&memory), 100, 116).is_ok());
        assert!(RingBuffer::new(Arc::clone(&memory), 100, 117).is_err());
        assert!(RingBuffer::new(memory, 5, 4).is_err());
    }

    /// Memory whose given-back pages read as zeroes (as a memfd's do).
    struct Zeroing(HeapMemory);

    // SAFETY: delegates to the heap memory; `release` writes only the range
    // the ring gave back, which no slice of held bytes covers.
    unsafe impl RingMemory for Zeroing {
        fn as_ptr(&self) -> *mut u8 {
            self.0.as_ptr()
        }
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
        fn acknowledged(&self, _offset: u64) {}
        fn drained(&self) {
            // SAFETY: nothing is held when the ring drains.
            unsafe { std::ptr::write_bytes(self.as_ptr(), 0, self.capacity()) };
        }
        fn release(&self, at: usize, len: usize) {
            assert!(at + len <= self.capacity(), "{at}+{len} past the ring");
            // SAFETY: within the ring, and only acknowledged bytes.
            unsafe { std::ptr::write_bytes(self.as_ptr().add(at), 0, len) };
        }
    }

    proptest! {
        #[test]
        fn any_schedule_of_writes_and_acks_reads_back_in_order(
            capacity in 1usize..64,
            keep in any::<bool>(),
            steps in proptest::collection::vec((0usize..80, 0usize..80, 1usize..80, any::<bool>()), 1..60),
        ) {
            let memory = Arc::new(Zeroing(HeapMemory::new(capacity)));
            let budget: &'static Budget = if keep { Box::leak(Box::new(Budget::new(64))) } else { &NO_KEEP };
            let mut ring = RingBuffer::with_budget(memory, 0, 0, budget).expect("ring");
            let mut sent: Vec<u8> = Vec::new();
            for (write_n, ack_n, max, idle) in steps {
                if idle {
                    ring.release_idle();
                }
                let room = capacity - ring.len();
                let data: Vec<u8> = (0..write_n.min(room)).map(|i| (sent.len() + i) as u8).collect();
                write(&mut ring, &data);
                sent.extend_from_slice(&data);
                ring.acknowledge(ring.start() + (ack_n as u64).min(ring.len() as u64));
                let mut out = Vec::new();
                let mut off = ring.start();
                while off < ring.end() {
                    let s = ring.slice_from(off, max);
                    prop_assert!(!s.is_empty() && s.len() <= max);
                    out.extend_from_slice(&s);
                    off += s.len() as u64;
                }
                prop_assert_eq!(&out[..], &sent[ring.start() as usize..]);
            }
        }
    }
}
