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
