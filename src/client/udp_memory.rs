//! Relays that UDP could not reach lately, remembered across client
//! processes: every `ssh` starts a new client, and where UDP is blocked each
//! would otherwise give QUIC its head start again.
//!
//! One line per relay, `HOST:PORT UNIX-SECONDS` (when TCP won the race), in
//! `$XDG_STATE_HOME/resumeproxy/udp-failed`. Entries older than
//! the connector's `UDP_RETRY_AFTER` are forgotten.
//! The file is a hint: unreadable, garbled or lost, it costs a head start,
//! nothing else, so errors are logged and otherwise ignored.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest file read; a longer one is ignored (and rewritten).
const MAX_FILE_LEN: u64 = 64 * 1024;

/// The default file; `None` without a home directory to put it in (the
/// memory then stays within the process).
pub fn default_path() -> Option<PathBuf> {
    let state = crate::paths::state_home();
    state
        .is_absolute()
        .then(|| state.join("resumeproxy").join("udp-failed"))
}

/// How long ago UDP last failed for `relay`, per the file's `text`, if
/// within `keep` of `now` (seconds since the epoch).
pub(crate) fn failed_ago(text: &str, relay: &str, now: u64, keep: Duration) -> Option<Duration> {
    entries(text)
        .filter(|(name, _)| *name == relay)
        .filter_map(|(_, at)| now.checked_sub(at))
        .map(Duration::from_secs)
        .filter(|ago| *ago < keep)
        .min()
}

/// The file's new text: `relay` recorded as failed at `now` (or forgotten,
/// with `None`), and every entry older than `keep` dropped.
pub(crate) fn updated(
    text: &str,
    relay: &str,
    failed_at: Option<u64>,
    now: u64,
    keep: Duration,
) -> String {
    let mut out = String::new();
    for (name, at) in entries(text) {
        let fresh = now.checked_sub(at).is_some_and(|age| age < keep.as_secs());
        if name != relay && fresh {
            out.push_str(&format!("{name} {at}\n"));
        }
    }
    if let Some(at) = failed_at {
        out.push_str(&format!("{relay} {at}\n"));
    }
    out
}

fn entries(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let name = words.next()?;
        let at = words.next()?.parse().ok()?;
        Some((name, at))
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

    const KEEP: Duration = Duration::from_secs(600);

    #[test]
    fn a_recent_failure_is_remembered_an_old_one_is_not() {
        let text = "a:7022 1000\nb:7022 400\n";
        assert_eq!(
            failed_ago(text, "a:7022", 1100, KEEP),
            Some(Duration::from_secs(100))
        );
        assert_eq!(failed_ago(text, "b:7022", 1100, KEEP), None);
        assert_eq!(failed_ago(text, "c:7022", 1100, KEEP), None);
    }

    #[test]
    fn garbage_lines_and_future_times_are_ignored() {
        let text = "nonsense\na:7022 soon\na:7022 5000\n\n";
        assert_eq!(failed_ago(text, "a:7022", 1100, KEEP), None);
    }

    #[test]
    fn updating_records_forgets_and_drops_expired_entries() {
        let text = "a:7022 1000\nb:7022 400\nc:7022 1050\n";
        assert_eq!(
            updated(text, "a:7022", Some(1100), 1100, KEEP),
            "c:7022 1050\na:7022 1100\n"
        );
        assert_eq!(updated(text, "c:7022", None, 1100, KEEP), "a:7022 1000\n");
    }
}
