//! The simulation's virtual clock: milliseconds since the schedule began,
//! as the protocol's `Instant`s.

use std::time::{Duration, Instant};

/// The virtual clock: milliseconds since the schedule began.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    base: Instant,
    pub(super) ms: u64,
}

impl Clock {
    /// A clock at 0 ms.
    pub(super) fn start() -> Clock {
        Clock {
            base: Instant::now(),
            ms: 0,
        }
    }

    /// The time now, as the protocol takes it.
    pub(super) fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.ms)
    }

    /// An instant as virtual milliseconds, rounded up.
    pub(super) fn ms_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        ms + u64::from(Duration::from_millis(ms) < since)
    }
}

/// A duration in whole milliseconds.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
