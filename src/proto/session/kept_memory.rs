//! The relay's replay ring keeps the memory of acknowledged bytes while
//! bytes flow, and gives it back once none came in for
//! [`IDLE_RELEASE`] (see [`crate::proto::replay_ring`]): the session is
//! the one with a clock, so it watches.

use super::Session;
use crate::proto::replay_ring::IDLE_RELEASE;
use std::time::Instant;

impl Session {
    /// After an acknowledgement: if the replay ring now keeps memory and
    /// nothing watches it yet, looks again [`IDLE_RELEASE`] from `now`.
    pub(super) fn watch_kept_memory(&mut self, now: Instant) {
        if self.idle_release.is_none() && self.replay.keeps_memory() {
            self.idle_release = Some((now + IDLE_RELEASE, self.replay.end()));
        }
    }

    /// At a timeout: once the look is due, gives the kept memory back if no
    /// byte came in since the last look, or looks again later.
    pub(super) fn check_kept_memory(&mut self, now: Instant) {
        let Some((at, end)) = self.idle_release else {
            return;
        };
        if now < at {
            return;
        }
        if self.replay.end() == end || !self.replay.keeps_memory() {
            self.release_kept_memory();
        } else {
            self.idle_release = Some((now + IDLE_RELEASE, self.replay.end()));
        }
    }

    /// Gives the kept memory back now (the session is idle, or lost its
    /// transport).
    pub(super) fn release_kept_memory(&mut self) {
        self.replay.release_idle();
        self.idle_release = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Session, SessionConfig};
    use crate::proto::budget::Budget;
    use crate::proto::replay_ring::{HeapMemory, RingBuffer, RingMemory, IDLE_RELEASE};
    use crate::proto::wire::Frame;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Heap memory that counts how often the ring gave all of it back.
    struct Counted(HeapMemory, AtomicUsize);

    // SAFETY: delegates to the heap memory.
    unsafe impl RingMemory for Counted {
        fn as_ptr(&self) -> *mut u8 {
            self.0.as_ptr()
        }
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
        fn acknowledged(&self, _offset: u64) {}
        fn drained(&self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads `n` bytes in, sends them, and has them acknowledged at `now`.
    fn round(s: &mut Session, n: usize, now: Instant) {
        s.push_local(Bytes::from(vec![1; n]));
        while s.poll_transmit(now).is_some() {}
        let position = s.replay.end();
        s.handle_frame(Frame::Ack { position }, now).expect("ack");
    }

    #[test]
    fn kept_ring_memory_goes_back_once_no_bytes_came_in_for_a_while() {
        let start = Instant::now();
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1 << 20)));
        let memory = Arc::new(Counted(HeapMemory::new(1 << 20), AtomicUsize::new(0)));
        let ring =
            RingBuffer::with_budget(Arc::clone(&memory) as Arc<dyn RingMemory>, 0, 0, budget)
                .expect("ring");
        let config = SessionConfig {
            ack_delivered: true,
            ..SessionConfig::default()
        };
        let mut s = Session::with_ring(config, ring, start);
        s.attach(0, start).expect("attach");
        round(&mut s, 64 * 1024, start);
        assert!(s.replay.keeps_memory(), "drained while bytes flow: kept");
        assert!(s
            .poll_timeout(true)
            .is_some_and(|t| t <= start + IDLE_RELEASE));
        // Bytes came in before the look: it looks again later.
        let later = start + IDLE_RELEASE / 2;
        round(&mut s, 64 * 1024, later);
        let first_look = start + IDLE_RELEASE;
        assert_eq!(s.handle_timeout(first_look), None);
        assert_eq!(memory.1.load(Ordering::Relaxed), 0);
        assert!(s.replay.keeps_memory());
        // None since: given back, and the budget with it.
        let second_look = first_look + IDLE_RELEASE + Duration::from_millis(1);
        assert_eq!(s.handle_timeout(second_look), None);
        assert_eq!(memory.1.load(Ordering::Relaxed), 1);
        assert!(!s.replay.keeps_memory());
        assert!(budget.take(1 << 20));
    }
}
