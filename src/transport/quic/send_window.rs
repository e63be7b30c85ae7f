//! How much a QUIC connection may hold of what it was given to send and
//! the peer has not acknowledged yet: its send window, sized to the path
//! as Linux sizes a TCP socket's send buffer, not fixed at a size for the
//! longest, fattest path.
//!
//! Every byte in that window is a copy of one in the session's replay
//! buffer, so on a relay with many sessions it is most of their memory. A
//! window starts at [`FLOOR`], which fills a gigabit link whose round trip
//! is a couple of milliseconds. While writes find it full and the
//! connection uses more than half of it each round trip (at the rate it
//! sends, over its smoothed round trip: the window may be what holds it
//! back), it tries twice the size; if the connection then sends at least
//! [`GAIN_EIGHTHS`]/8 as much, it keeps the larger window and may try
//! again, and if not (the path, the peer's flow control or the CPU is the
//! limit, and a larger window would only hold more bytes waiting) it goes
//! back to the smaller one and tries again only after [`HOLD`]. A window
//! its writes no longer fill shrinks by half at each look. It never
//! exceeds [`CAP`], a default replay buffer: a session cannot have more
//! than that unacknowledged anyway.
//!
//! What the windows of all connections of a process hold beyond their
//! floor is bounded too, by a [`Budget`] ([`BUDGET`] on a relay): on a
//! busy relay, round trips and rates are what the CPU makes them, and a
//! larger window can seem to help by chance.
//!
//! Pure: the caller gives it the clock, what was sent and the round trip.

use crate::proto::budget::Budget;
use std::time::{Duration, Instant};

/// The window a connection starts with: a gigabit per second over a round
/// trip of 2 ms.
pub const FLOOR: u64 = 256 * 1024;
/// What all windows of a process may hold beyond their floor.
pub const BUDGET: u64 = 32 << 20;
/// The process's budget.
pub static PROCESS_BUDGET: Budget = Budget::new(BUDGET);
/// The largest window: the default replay buffer.
pub const CAP: u64 = 8 << 20;
/// Shortest time between two looks at the window (and at least two round
/// trips).
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// A larger window is kept when the rate with it is at least this many
/// eighths of the rate before it.
pub const GAIN_EIGHTHS: u64 = 9;
/// After a larger window brought nothing, how long until the next try.
pub const HOLD: Duration = Duration::from_secs(1);

/// The send window of one connection.
#[derive(Debug)]
pub struct SendWindow {
    budget: &'static Budget,
    window: u64,
    /// Since the last look: whether a write found the window full.
    blocked: bool,
    /// The last look: when, and the bytes sent by then.
    last: Option<(Instant, u64)>,
    /// A larger window on trial: the rate before it.
    trial: Option<u64>,
    /// No trial before this.
    hold_until: Option<Instant>,
}

impl Drop for SendWindow {
    fn drop(&mut self) {
        self.budget.give(self.window - FLOOR);
    }
}

impl Default for SendWindow {
    fn default() -> Self {
        SendWindow::new(&PROCESS_BUDGET)
    }
}

impl SendWindow {
    /// A window at [`FLOOR`], growing out of `budget`.
    pub fn new(budget: &'static Budget) -> SendWindow {
        SendWindow {
            budget,
            window: FLOOR,
            blocked: false,
            last: None,
            trial: None,
            hold_until: None,
        }
    }

    /// Sets the window to `window`, taking from or giving back to the
    /// budget; whether the budget allowed it.
    fn resize(&mut self, window: u64) -> bool {
        if window > self.window && !self.budget.take(window - self.window) {
            return false;
        }
        if window < self.window {
            self.budget.give(self.window - window);
        }
        self.window = window;
        true
    }

    /// A write found the window full.
    pub fn blocked(&mut self) {
        self.blocked = true;
    }

    /// At `now`, with `sent` bytes written in all and the connection's
    /// smoothed round trip (asked only when due): the new window, if it
    /// changes.
    pub fn look(&mut self, now: Instant, sent: u64, rtt: impl FnOnce() -> Duration) -> Option<u64> {
        let Some((at, sent_then)) = self.last else {
            self.last = Some((now, sent));
            return None;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < MIN_INTERVAL {
            return None;
        }
        let rtt = rtt();
        if elapsed < rtt * 2 {
            return None;
        }
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        // Bytes per second over the interval.
        let rate = sent.saturating_sub(sent_then).saturating_mul(1_000_000) / micros;
        self.last = Some((now, sent));
        let blocked = std::mem::take(&mut self.blocked);
        let smaller = (self.window / 2).max(FLOOR);
        if let Some(before) = self.trial.take() {
            if rate.saturating_mul(8) < before.saturating_mul(GAIN_EIGHTHS) {
                self.resize(smaller);
                self.hold_until = Some(now + HOLD);
                return Some(self.window);
            }
        }
        if !blocked {
            return (smaller < self.window && self.resize(smaller)).then_some(self.window);
        }
        let held = self.hold_until.is_some_and(|until| now < until);
        // Bytes in flight each round trip at this rate.
        let per_round_trip =
            u64::try_from(u128::from(rate) * rtt.as_micros() / 1_000_000).unwrap_or(u64::MAX);
        let window_used = per_round_trip.saturating_mul(2) >= self.window;
        if window_used && !held && self.window < CAP {
            if !self.resize((self.window * 2).min(CAP)) {
                self.hold_until = Some(now + HOLD);
                return None;
            }
            self.trial = Some(rate);
            return Some(self.window);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(25);

    /// A budget of its own, as large as a relay's.
    fn budget() -> &'static Budget {
        Box::leak(Box::new(Budget::new(BUDGET)))
    }

    /// A bulk sender (writes always find the window full) over a path
    /// that carries `path_per_look` bytes between two looks, 50 ms apart,
    /// with two round trips per look: the window in use after each look.
    fn run(sw: &mut SendWindow, looks: u32, path_per_look: u64) -> Vec<u64> {
        let start = Instant::now();
        let mut sent = 0;
        let mut windows = Vec::new();
        sw.look(start, 0, || RTT);
        for i in 1..=looks {
            sent += (sw.window * 2).min(path_per_look);
            sw.blocked();
            sw.look(start + MIN_INTERVAL * i, sent, || RTT);
            windows.push(sw.window);
        }
        windows
    }

    #[test]
    fn a_long_fat_path_grows_the_window_to_what_it_carries() {
        let mut sw = SendWindow::new(budget());
        // The path carries 5 MiB per look: the window grows while that
        // raises the rate; the try beyond brings nothing and is undone.
        let windows = run(&mut sw, 12, 5 << 20);
        assert_eq!(
            &windows[..4],
            [512 << 10, 1 << 20, 2 << 20, 4 << 20],
            "{windows:?}"
        );
        assert!(windows[3..].iter().all(|w| *w == 4 << 20 || *w == CAP));
        assert_eq!(windows.last(), Some(&(4 << 20)), "{windows:?}");
    }

    #[test]
    fn a_path_that_takes_no_more_keeps_the_window_small() {
        let mut sw = SendWindow::new(budget());
        // A slow path (or a busy CPU): a larger window brings nothing, and
        // is tried again only after a while.
        let windows = run(&mut sw, 40, FLOOR);
        assert!(windows.iter().all(|w| *w <= 2 * FLOOR), "{windows:?}");
        let tries = windows.iter().filter(|w| **w == 2 * FLOOR).count();
        assert!(tries <= 3, "{tries} tries in 2 s: {windows:?}");
    }

    #[test]
    fn a_connection_that_sends_slowly_for_its_round_trip_keeps_its_window() {
        let mut sw = SendWindow::new(budget());
        let start = Instant::now();
        // Held back, but at 2 MB/s over 40 ms it uses a sixth of it: the
        // window is not what holds it back (a busy relay, a slow path).
        let rtt = || Duration::from_millis(40);
        sw.look(start, 0, rtt);
        for i in 1..20 {
            sw.blocked();
            let sent = u64::from(i) * 100_000;
            assert_eq!(sw.look(start + MIN_INTERVAL * i, sent, rtt), None);
        }
    }

    #[test]
    fn what_windows_hold_beyond_their_floor_is_bounded_for_all_of_them() {
        let budget = Box::leak(Box::new(Budget::new(3 * FLOOR)));
        let mut one = SendWindow::new(budget);
        let mut two = SendWindow::new(budget);
        // A fast path: both would grow, the budget lets them have 3 floors
        // more between them.
        let first = run(&mut one, 4, u64::MAX / 4);
        let second = run(&mut two, 4, u64::MAX / 4);
        assert_eq!(first.last(), Some(&(4 * FLOOR)), "{first:?}");
        assert!(second.iter().all(|w| *w == FLOOR), "{second:?}");
        drop(one);
        let second = run(&mut two, 40, u64::MAX / 4);
        assert_eq!(second.last(), Some(&(4 * FLOOR)), "{second:?}");
    }

    #[test]
    fn an_idle_connection_does_not_grow_and_the_cap_holds() {
        let mut sw = SendWindow::new(budget());
        let start = Instant::now();
        for i in 0..10 {
            // Never held back by the window.
            assert_eq!(
                sw.look(start + MIN_INTERVAL * i, 1024 * u64::from(i), || RTT),
                None
            );
        }
        let windows = run(&mut SendWindow::new(budget()), 40, u64::MAX / 4);
        assert_eq!(windows.last(), Some(&CAP));
    }
}
