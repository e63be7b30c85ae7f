//! Memory given back after a peak.
//!
//! A relay runs for months, and its load comes in peaks: a hundred busy
//! sessions take their buffers (the transport's read buffer, TLS's, frames
//! queued), and give them back when they end or go quiet. glibc's
//! allocator keeps what was freed in its arenas for the next allocation,
//! so an idle relay after a peak would stay at the size of the peak. When
//! sessions end or lose their client, the relay therefore asks glibc to
//! return the free pages of every arena (`malloc_trim(0)`), [`QUIET`] after
//! the release, at most once per [`QUIET`]; and every [`EVERY`] in any case,
//! for sessions that stay open but fell quiet.
//!
//! (The replay buffers are not on the heap: each is a ring in shared
//! memory whose pages are given back when it drains, or once its session
//! is idle while the process keeps a few busy rings whole; see
//! [`RingMemory::drained`](crate::proto::replay_ring::RingMemory::drained).)

use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long after a release the trim waits: releases within it (a burst of
/// sessions ending) are trimmed by one call, and there is at most one call
/// per this long.
pub const QUIET: Duration = Duration::from_secs(1);
/// How often the relay trims regardless: sessions that stay open but fall
/// quiet after a transfer give their buffers back without any release the
/// relay would hear of. (A trim with little to return costs microseconds.)
pub const EVERY: Duration = Duration::from_secs(10);

/// Collects "memory was released" and trims a moment later.
#[derive(Debug, Default)]
pub struct Trimmer {
    released: Notify,
}

impl Trimmer {
    /// Something that held memory went away (a session ended, a transport
    /// was dropped).
    pub fn released(&self) {
        // One stored permit covers any number of releases until the trim.
        self.released.notify_one();
    }

    /// Trims [`QUIET`] after a release, and every [`EVERY`], until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.released.notified() => {
                    tokio::select! {
                        () = tokio::time::sleep(QUIET) => {}
                        () = stop.cancelled() => return,
                    }
                }
                () = tokio::time::sleep(EVERY) => {}
                () = stop.cancelled() => return,
            }
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Returns the allocator's free memory to the system, where it can (glibc:
/// the free pages of every arena, not only the top of the heap).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own arenas, under
    // their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
