//! How large the TCP segments of a client's next connection may be.
//!
//! A VPN or tunnel that comes up mid-session shrinks the path's MTU, and
//! where the ICMP that would say so ("fragmentation needed") is filtered,
//! packets above the new size vanish while small ones pass. Each new TCP
//! connection starts at the full segment size again, so reconnecting alone
//! never helps: its handshake (small packets) passes, its data does not.
//! After such a link, the client asks the kernel for smaller segments
//! (`TCP_MAXSEG` before connect), which also sets the size the relay sends
//! with: the client's SYN announces it, and the relay's side of the
//! connection never sends larger ones. The size steps down, 1200 bytes then
//! 536 (the smallest every IPv4 host must take), as long as the smaller
//! size carries nothing either; a size that carried data is kept, and the
//! full size is tried again at a reconnect [`RETRY_LARGER_AFTER`] later
//! (if it carries nothing, the smaller size comes back at once).
//!
//! QUIC needs none of this: quinn finds the path's size itself and falls
//! back to 1200-byte datagrams when large ones are lost.

use std::time::{Duration, Instant};

/// The segment sizes tried, largest first, after the full size.
pub const STEPS: [u32; 2] = [1200, 536];
/// How long a smaller size must have carried the session before the full
/// size is tried again, at the next reconnect.
pub const RETRY_LARGER_AFTER: Duration = Duration::from_secs(600);

/// What a link that carried nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepped {
    /// Reconnects now ask for segments of at most this size; `first`: the
    /// first time in this session (the user is told once).
    Down {
        /// The segment size.
        mss: u32,
        /// Whether it is the session's first step down.
        first: bool,
    },
    /// The full size, tried again, carried nothing: back to this size.
    Back(u32),
    /// Already at the smallest size.
    Smallest,
}

/// The segment size of one session's TCP connections (see the module
/// documentation).
#[derive(Debug, Clone, Default)]
pub struct SegmentSize {
    /// 0: the full size; `n`: `STEPS[n - 1]`.
    level: usize,
    /// The level that carried data, and since when it is known to (or since
    /// the full size, tried again, failed).
    carried: Option<(usize, Instant)>,
    /// The full size is being tried again; this level carried data before.
    trying_from: Option<usize>,
    /// The session stepped down at least once.
    stepped: bool,
}

impl SegmentSize {
    /// The full size, as the system chooses.
    pub fn new() -> SegmentSize {
        SegmentSize::default()
    }

    /// The segment size a connection made now should ask for (`None`: the
    /// system's own), trying the full size again once a smaller one has
    /// carried the session for [`RETRY_LARGER_AFTER`].
    pub fn for_next(&mut self, now: Instant) -> Option<u32> {
        if let Some((level, since)) = self.carried {
            let due = now.saturating_duration_since(since) >= RETRY_LARGER_AFTER;
            if level > 0 && level == self.level && due && self.trying_from.is_none() {
                self.trying_from = Some(level);
                self.level = 0;
            }
        }
        self.mss()
    }

    /// The size connections ask for now.
    pub fn mss(&self) -> Option<u32> {
        self.level.checked_sub(1).map(|step| STEPS[step])
    }

    /// A link made at the current size carried data.
    pub fn carried(&mut self, now: Instant) {
        if self.carried.map(|(level, _)| level) != Some(self.level) {
            self.carried = Some((self.level, now));
        }
        self.trying_from = None;
    }

    /// A link made at the current size carried nothing while its small
    /// packets passed (its handshake, the peer's heartbeats).
    pub fn carried_nothing(&mut self, now: Instant) -> Stepped {
        if let Some(level) = self.trying_from.take() {
            self.level = level;
            // The next try waits as long again.
            self.carried = Some((level, now));
            return Stepped::Back(STEPS[level - 1]);
        }
        if self.level == STEPS.len() {
            return Stepped::Smallest;
        }
        self.level += 1;
        let first = !self.stepped;
        self.stepped = true;
        Stepped::Down {
            mss: STEPS[self.level - 1],
            first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_down_while_nothing_is_carried_then_stays() {
        let t0 = Instant::now();
        let mut size = SegmentSize::new();
        assert_eq!(size.for_next(t0), None);
        assert_eq!(
            size.carried_nothing(t0),
            Stepped::Down {
                mss: 1200,
                first: true
            }
        );
        assert_eq!(size.for_next(t0), Some(1200));
        assert_eq!(
            size.carried_nothing(t0),
            Stepped::Down {
                mss: 536,
                first: false
            }
        );
        assert_eq!(size.carried_nothing(t0), Stepped::Smallest);
        assert_eq!(size.for_next(t0), Some(536));
    }

    #[test]
    fn a_size_that_carries_is_kept_and_the_full_size_tried_again_later() {
        let t0 = Instant::now();
        let mut size = SegmentSize::new();
        size.carried(t0);
        size.carried_nothing(t0);
        assert_eq!(size.for_next(t0), Some(1200));
        size.carried(t0);
        // Reconnects soon after keep the smaller size…
        let soon = t0 + RETRY_LARGER_AFTER / 2;
        assert_eq!(size.for_next(soon), Some(1200));
        size.carried(soon);
        // …a reconnect later tries the full size…
        let later = t0 + RETRY_LARGER_AFTER;
        assert_eq!(size.for_next(later), None);
        // …and goes back at once if it carries nothing, for as long again.
        assert_eq!(size.carried_nothing(later), Stepped::Back(1200));
        assert_eq!(size.for_next(later), Some(1200));
        size.carried(later);
        assert_eq!(size.for_next(later + RETRY_LARGER_AFTER / 2), Some(1200));
        let much_later = later + RETRY_LARGER_AFTER;
        assert_eq!(size.for_next(much_later), None);
        // If it carries, the full size stays.
        assert_eq!(size.for_next(much_later), None);
        size.carried(much_later);
        assert_eq!(size.for_next(much_later + RETRY_LARGER_AFTER), None);
        assert_eq!(size.mss(), None);
        // Stepping down again is not the first time.
        assert_eq!(
            size.carried_nothing(t0),
            Stepped::Down {
                mss: 1200,
                first: false
            }
        );
    }
}
