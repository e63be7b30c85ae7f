//! A number of bytes that many owners in one process share: each takes
//! what it wants to hold beyond its own bound, if that much is left, and
//! gives it back when done. The QUIC send windows
//! (`transport::quic::send_window`) and the replay rings' kept pages
//! ([`crate::proto::replay_ring`]) each have one per process, so that what
//! they add on a busy relay stays bounded however many sessions it serves.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes shared by the owners of one process.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub const fn new(limit: u64) -> Budget {
        Budget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes of it, if that many are left.
    pub fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives `n` bytes back.
    pub fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_is_left_and_gets_it_back() {
        let b = Budget::new(10);
        assert!(b.take(6));
        assert!(!b.take(5), "6 + 5 is over the limit");
        assert!(b.take(4));
        b.give(6);
        assert!(b.take(6));
    }
}
