//! How much a QUIC connection may hold of what it was given to send and
//! the peer has not acknowledged yet: its send window, sized to the path
//! as Linux sizes a TCP socket's send buffer, not fixed at a size for the
//! longest, fattest path.
//!
//! Every byte in that window is a copy of one in the session's replay
//! buffer, so on a relay with many sessions it is most of their memory. A
//! window starts at [`FLOOR`], which fills a gigabit link whose round trip
//! is a few milliseconds. While writes find it full and the round trip is
//! still near its minimum (no queue builds on the way: the window, not the
//! path, is what holds the connection back), it tries twice the size; if
//! the connection then sends at least [`GAIN_EIGHTHS`]/8 as much, it keeps
//! the larger window and may try again, and if not (the peer's flow
//! control or the CPU is the limit, and a larger window would only hold
//! more bytes waiting) it goes back to the smaller one and tries again only
//! after [`HOLD`]. A round trip well above its minimum means a queue: the
//! path is full, and the window stays. It never exceeds [`CAP`], a default
//! replay buffer: a session cannot have more than that unacknowledged
//! anyway.
//!
//! Pure: the caller gives it the clock, what was sent and the round trip.

use std::time::{Duration, Instant};

/// The window a connection starts with: a gigabit per second over a round
/// trip of 4 ms.
pub const FLOOR: u64 = 512 * 1024;
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

/// A connection's round trip, as QUIC measures it.
#[derive(Debug, Clone, Copy)]
pub struct Rtt {
    /// The smoothed round trip.
    pub smoothed: Duration,
    /// The least round trip seen.
    pub least: Duration,
}

impl Rtt {
    /// Whether packets wait in a queue on the way: the round trip is half
    /// again its least, and some milliseconds more.
    fn queueing(&self) -> bool {
        self.smoothed > self.least * 3 / 2 + QUEUE_SLACK
    }
}

/// What a round trip may exceed its least by without counting as a queue
/// (timers, scheduling).
const QUEUE_SLACK: Duration = Duration::from_millis(2);

/// The send window of one connection.
#[derive(Debug, Clone)]
pub struct SendWindow {
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

impl Default for SendWindow {
    fn default() -> Self {
        SendWindow {
            window: FLOOR,
            blocked: false,
            last: None,
            trial: None,
            hold_until: None,
        }
    }
}

impl SendWindow {
    /// A write found the window full.
    pub fn blocked(&mut self) {
        self.blocked = true;
    }

    /// At `now`, with `sent` bytes written in all and the connection's
    /// round trip, smoothed and least (asked only when due): the new
    /// window, if it changes.
    pub fn look(&mut self, now: Instant, sent: u64, rtt: impl FnOnce() -> Rtt) -> Option<u64> {
        let Some((at, sent_then)) = self.last else {
            self.last = Some((now, sent));
            return None;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < MIN_INTERVAL {
            return None;
        }
        let rtt = rtt();
        if elapsed < rtt.smoothed * 2 {
            return None;
        }
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        // Bytes per second over the interval.
        let rate = sent.saturating_sub(sent_then).saturating_mul(1_000_000) / micros;
        self.last = Some((now, sent));
        let blocked = std::mem::take(&mut self.blocked);
        if let Some(before) = self.trial.take() {
            if rate.saturating_mul(8) < before.saturating_mul(GAIN_EIGHTHS) {
                self.window = (self.window / 2).max(FLOOR);
                self.hold_until = Some(now + HOLD);
                return Some(self.window);
            }
        }
        let held = self.hold_until.is_some_and(|until| now < until);
        if blocked && !held && !rtt.queueing() && self.window < CAP {
            self.trial = Some(rate);
            self.window = (self.window * 2).min(CAP);
            return Some(self.window);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Rtt = Rtt {
        smoothed: Duration::from_millis(25),
        least: Duration::from_millis(25),
    };

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
        let mut sw = SendWindow::default();
        // The path carries 5 MiB per look: the window grows while that
        // raises the rate; the try beyond brings nothing and is undone.
        let windows = run(&mut sw, 12, 5 << 20);
        assert_eq!(&windows[..3], [1 << 20, 2 << 20, 4 << 20], "{windows:?}");
        assert!(windows[3..].iter().all(|w| *w == 4 << 20 || *w == CAP));
        assert_eq!(windows.last(), Some(&(4 << 20)), "{windows:?}");
    }

    #[test]
    fn a_path_that_takes_no_more_keeps_the_window_small() {
        let mut sw = SendWindow::default();
        // A slow path (or a busy CPU): a larger window brings nothing, and
        // is tried again only after a while.
        let windows = run(&mut sw, 40, FLOOR);
        assert!(windows.iter().all(|w| *w <= 2 * FLOOR), "{windows:?}");
        let tries = windows.iter().filter(|w| **w == 2 * FLOOR).count();
        assert!(tries <= 3, "{tries} tries in 2 s: {windows:?}");
    }

    #[test]
    fn a_queue_on_the_path_keeps_the_window() {
        let mut sw = SendWindow::default();
        let start = Instant::now();
        let queued = Rtt {
            smoothed: Duration::from_millis(40),
            least: Duration::from_millis(10),
        };
        sw.look(start, 0, || queued);
        for i in 1..20 {
            sw.blocked();
            let sent = u64::from(i) << 20;
            assert_eq!(sw.look(start + MIN_INTERVAL * i, sent, || queued), None);
        }
    }

    #[test]
    fn an_idle_connection_does_not_grow_and_the_cap_holds() {
        let mut sw = SendWindow::default();
        let start = Instant::now();
        for i in 0..10 {
            // Never held back by the window.
            assert_eq!(
                sw.look(start + MIN_INTERVAL * i, 1024 * u64::from(i), || RTT),
                None
            );
        }
        let windows = run(&mut SendWindow::default(), 40, u64::MAX / 4);
        assert_eq!(windows.last(), Some(&CAP));
    }
}
