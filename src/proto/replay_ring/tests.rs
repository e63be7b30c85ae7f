//! The ring's tests: its bytes, wraps and kept memory, and a model check.

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
