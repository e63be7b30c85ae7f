//! Crashes on purpose, for tests: `RESUMEPROXYD_CRASH_AT=POINT:N` makes the
//! worker abort at the `N`th time it passes `POINT` (counted from its
//! start), as a bug or the OOM killer would end it: no cleanup, no last
//! word. The durability tests set it to random points and counts and check
//! that no byte is lost or duplicated.
//!
//! Points are where a crash is most likely to lose something: right after
//! bytes left a socket and before anything else happened to them.
//!
//! Compiled in only with the `crash-points` feature, which only the tests
//! turn on (`Cargo.toml`): in any other build [`point`] is empty and the
//! variable means nothing. With the feature and without the variable,
//! [`point`] is one relaxed load.

#[cfg(feature = "crash-points")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "crash-points")]
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
#[cfg(feature = "crash-points")]
pub const CRASH_ENV: &str = "RESUMEPROXYD_CRASH_AT";

/// Places in the worker where a test may crash it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Bytes were read from sshd into the ring, not yet committed.
    SshdRead,
    /// Bytes were written to sshd, not yet counted as delivered.
    SshdWrite,
    /// An acknowledgement from the client was applied.
    ClientAck,
    /// A new session's record is published, the client not yet answered.
    SessionPublished,
}

#[cfg(feature = "crash-points")]
impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::SshdRead => "sshd-read",
            Point::SshdWrite => "sshd-write",
            Point::ClientAck => "client-ack",
            Point::SessionPublished => "session-published",
        }
    }
}

/// The armed point and count, if any.
#[cfg(feature = "crash-points")]
fn armed() -> Option<(&'static str, u64)> {
    static ARMED: OnceLock<Option<(&'static str, u64)>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let spec = std::env::var(CRASH_ENV).ok()?;
        let (name, n) = spec.split_once(':')?;
        let n = n.parse().ok()?;
        [
            Point::SshdRead,
            Point::SshdWrite,
            Point::ClientAck,
            Point::SessionPublished,
        ]
        .into_iter()
        .find(|p| p.name() == name)
        .map(|p| (p.name(), n))
    })
}

/// Passes `point`: aborts the process if it is armed and this is the
/// `N`th pass.
#[cfg(feature = "crash-points")]
pub fn point(point: Point) {
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let Some((name, n)) = armed() else { return };
    if name == point.name() && PASSES.fetch_add(1, Ordering::Relaxed) + 1 == n {
        std::process::abort();
    }
}

/// Passes `point`: nothing, in a build without the crash points.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_point: Point) {}
