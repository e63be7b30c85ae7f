//! Logging for both programs: `tracing` to stderr, filtered by `-v`/`-q` or
//! `RESUMEPROXY_LOG`.

/// Sends `tracing` output to stderr: `default_filter` unless
/// `RESUMEPROXY_LOG` says otherwise; timestamps only where asked for (journald
/// and ssh's terminal add their own context).
pub fn init_logging(default_filter: &str, with_time: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESUMEPROXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if with_time {
        builder.init();
    } else {
        builder.without_time().init();
    }
}

/// Whether stderr goes to the journal, which stamps every line with its
/// own time: systemd sets `$JOURNAL_STREAM` to the device and inode
/// (`dev:ino`) of the stream it connects a service's stderr to, and a
/// process whose stderr is that stream is on the journal (one whose stderr
/// was redirected elsewhere, or a child that inherited only the variable,
/// is not).
pub fn stderr_is_journal() -> bool {
    names_stream(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_identity(),
    )
}

/// Whether `journal_stream` (`dev:ino`) names the stream `identity`.
fn names_stream(journal_stream: Option<&str>, identity: Option<(u64, u64)>) -> bool {
    let named = journal_stream
        .and_then(|v| v.split_once(':'))
        .and_then(|(dev, ino)| Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?)));
    named.is_some() && named == identity
}

/// The device and inode of stderr.
#[cfg(unix)]
fn stderr_identity() -> Option<(u64, u64)> {
    // SAFETY: fstat writes one struct stat; descriptor 2 is only looked at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// No journal outside Unix.
#[cfg(not(unix))]
fn stderr_identity() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_named_is_the_journal() {
        let stream = Some((64769, 1234567));
        assert!(names_stream(Some("64769:1234567"), stream));
        assert!(!names_stream(Some("64769:1234568"), stream));
        assert!(!names_stream(Some("not-a-stream"), stream));
        assert!(!names_stream(None, stream));
        assert!(!names_stream(Some("64769:1234567"), None));
    }
}
