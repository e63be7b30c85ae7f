//! Capped, jittered exponential backoff between reconnect attempts.
//!
//! Pure: the caller supplies the random numbers, so schedules are testable.

use std::time::Duration;

/// Delay before the second attempt (the first is immediate).
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The delays between successive reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF_INITIAL, BACKOFF_CAP)
    }
}

impl Backoff {
    /// Starts at `initial`, doubling up to `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            next: initial.min(cap),
            cap,
        }
    }

    /// The next delay. `jitter` in `[0, 1)` picks it from the upper half of the
    /// current step, so that clients that lost the relay together do not all
    /// come back at the same instant.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_stays_within_jitter() {
        let mut b = Backoff::default();
        let lows: Vec<_> = (0..8).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(lows[0], Duration::from_millis(50));
        assert_eq!(lows[1], Duration::from_millis(100));
        assert_eq!(lows[7], Duration::from_secs(1));
        let mut b = Backoff::default();
        let highs: Vec<_> = (0..8).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(highs[0], BACKOFF_INITIAL);
        assert!(highs.iter().all(|d| *d <= BACKOFF_CAP));
        assert_eq!(highs[7], BACKOFF_CAP);
    }
}
