//! Relays that UDP could not reach lately, remembered across client
//! processes: every `ssh` starts a new client, and where UDP is blocked each
//! would otherwise give QUIC its head start again.
//!
//! A judgement of "blocked" is a fact about the network that changes (the
//! café's Wi-Fi is left, an outage ends with UDP a moment behind TCP), so
//! it is re-checked, with backoff: QUIC is tried again [`RETRY_FIRST`] after
//! the first judgement, twice as long after each further one in a row, and
//! never later than [`RETRY_LONGEST`] ([`retry_after`]).
//!
//! One line per relay, `HOST:PORT UNIX-SECONDS STREAK` (when UDP was last
//! found blocked, and how many times in a row), in
//! `$XDG_STATE_HOME/resumeproxy/udp-failed`. Entries older than
//! [`RETRY_LONGEST`] are forgotten. The file is a hint: unreadable,
//! garbled or lost, it costs a head start, nothing else, so errors are
//! logged and otherwise ignored.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest file read; a longer one is ignored (and rewritten).
const MAX_FILE_LEN: u64 = 64 * 1024;
/// After UDP was first found blocked, how long until QUIC is tried again.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest UDP is taken to be blocked without trying again.
pub const RETRY_LONGEST: Duration = Duration::from_secs(600);
/// Judgements in a row past which the wait grows no more.
const MAX_STREAK: u32 = 16;

/// UDP found blocked on the way to a relay: when last, and how many times
/// in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked<T> {
    /// When it was last found blocked.
    pub at: T,
    /// Judgements of "blocked" in a row, from 1.
    pub streak: u32,
}

/// How long after its `streak`th judgement in a row UDP counts as blocked.
pub fn retry_after(streak: u32) -> Duration {
    let doublings = streak.clamp(1, MAX_STREAK) - 1;
    RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(RETRY_LONGEST)
}

/// The default file; `None` without a home directory to put it in (the
/// memory then stays within the process).
pub fn default_path() -> Option<PathBuf> {
    let state = crate::paths::state_home();
    state
        .is_absolute()
        .then(|| state.join("resumeproxy").join("udp-failed"))
}

/// What the file's `text` says of `relay` at `now` (seconds since the
/// epoch): how long ago UDP was last found blocked, and how many times in
/// a row; `None` if it is not, or longer ago than [`RETRY_LONGEST`].
pub(crate) fn failed_ago(text: &str, relay: &str, now: u64) -> Option<Blocked<Duration>> {
    entries(text)
        .filter(|(name, _)| *name == relay)
        .filter_map(|(_, entry)| {
            let ago = Duration::from_secs(now.checked_sub(entry.at)?);
            (ago < RETRY_LONGEST).then_some(Blocked {
                at: ago,
                streak: entry.streak,
            })
        })
        .min_by_key(|entry| entry.at)
}

/// The file's new text: `relay` recorded as found blocked (or forgotten,
/// with `None`), and every entry older than [`RETRY_LONGEST`] dropped.
pub(crate) fn updated(text: &str, relay: &str, blocked: Option<Blocked<u64>>, now: u64) -> String {
    let mut out = String::new();
    for (name, entry) in entries(text) {
        let fresh = now
            .checked_sub(entry.at)
            .is_some_and(|age| age < RETRY_LONGEST.as_secs());
        if name != relay && fresh {
            out.push_str(&format!("{name} {} {}\n", entry.at, entry.streak));
        }
    }
    if let Some(entry) = blocked {
        out.push_str(&format!("{relay} {} {}\n", entry.at, entry.streak));
    }
    out
}

/// The entries of the file's text; a line without a streak (written by an
/// older client) counts as one judgement.
fn entries(text: &str) -> impl Iterator<Item = (&str, Blocked<u64>)> {
    text.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let name = words.next()?;
        let at = words.next()?.parse().ok()?;
        let streak = match words.next() {
            Some(word) => word.parse().ok()?,
            None => 1,
        };
        Some((name, Blocked { at, streak }))
    })
}

/// Seconds since the epoch now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file's text; empty if missing, unreadable or too long.
pub(crate) fn read(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() <= MAX_FILE_LEN => std::fs::read_to_string(path).unwrap_or_default(),
        _ => String::new(),
    }
}

/// Replaces the file with `text` (atomically: a reader sees the old or the
/// new one); errors are only logged.
pub(crate) fn write(path: &Path, text: &str) {
    let result = (|| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
    })();
    if let Err(e) = result {
        tracing::debug!("cannot update {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(secs: u64, streak: u32) -> Option<Blocked<Duration>> {
        Some(Blocked {
            at: Duration::from_secs(secs),
            streak,
        })
    }

    #[test]
    fn a_recent_failure_is_remembered_an_old_one_is_not() {
        let text = "a:7022 1000 3\nb:7022 400 1\n";
        assert_eq!(failed_ago(text, "a:7022", 1100), blocked(100, 3));
        assert_eq!(failed_ago(text, "b:7022", 1100), None);
        assert_eq!(failed_ago(text, "c:7022", 1100), None);
    }

    #[test]
    fn garbage_lines_and_future_times_are_ignored_and_old_lines_read() {
        let text = "nonsense\na:7022 soon\na:7022 5000\nb:7022 1000 many\nc:7022 1000\n\n";
        assert_eq!(failed_ago(text, "a:7022", 1100), None);
        assert_eq!(failed_ago(text, "b:7022", 1100), None);
        assert_eq!(failed_ago(text, "c:7022", 1100), blocked(100, 1));
    }

    #[test]
    fn updating_records_forgets_and_drops_expired_entries() {
        let text = "a:7022 1000 1\nb:7022 400 2\nc:7022 1050 4\n";
        let again = Blocked {
            at: 1100,
            streak: 2,
        };
        assert_eq!(
            updated(text, "a:7022", Some(again), 1100),
            "c:7022 1050 4\na:7022 1100 2\n"
        );
        assert_eq!(updated(text, "c:7022", None, 1100), "a:7022 1000 1\n");
    }

    #[test]
    fn blocked_udp_is_tried_again_soon_then_less_and_less_often() {
        let waits: Vec<u64> = (1..=10).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(retry_after(0), RETRY_FIRST);
        assert_eq!(retry_after(u32::MAX), RETRY_LONGEST);
    }
}
