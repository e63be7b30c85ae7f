//! The front end's command lines and config files: what a user types and
//! writes, turned into the settings the client and the relay run with.
//!
//! Command lines of both programs are defined once ([`ClientCli`],
//! [`RelayCli`]): `--help`, the man pages (`man/`, generated from these
//! definitions) and the README follow them. [`config`] reads the config
//! files and combines them with the flags; [`wrap`] runs a command through
//! the client; [`init_logging`] sets up logging.

mod client_flags;
pub mod config;
mod logging;
mod relay_flags;
pub mod wrap;

pub use client_flags::{ClientCli, ClientCommand, ConnectArgs, DemoArgs, LinkOptions};
pub use logging::init_logging;
pub use relay_flags::{RelayCli, RelayCommand, ServeArgs};

use crate::proto::session::{DEFAULT_DEAD_AFTER, MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::units::{format_bytes, format_duration, parse_duration, parse_size};
use std::time::Duration;

/// The relay's port when none is given.
pub(crate) const DEFAULT_RELAY_PORT: u16 = 7022;

/// Parses a replay buffer size within its bounds.
pub(crate) fn parse_replay_buffer(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    let (min, max) = (64 << 10, 1 << 30);
    if !(min..=max).contains(&size) {
        return Err(format!(
            "must be between {} and {}",
            format_bytes(min),
            format_bytes(max)
        ));
    }
    Ok(size)
}

/// Parses a frame size within its bounds.
pub(crate) fn parse_max_frame(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    let (min, max) = (
        crate::proto::wire::MIN_DATA_LEN as u64,
        crate::proto::wire::MAX_DATA_LEN as u64,
    );
    if !(min..=max).contains(&size) {
        return Err(format!(
            "must be between {} and {}",
            format_bytes(min),
            format_bytes(max)
        ));
    }
    Ok(size)
}

/// Parses a dead-peer interval within its bounds.
pub(crate) fn parse_dead_after(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < MIN_DEAD_AFTER || d > MAX_DEAD_AFTER {
        return Err(format!(
            "must be between {} and {} (default {})",
            format_duration(MIN_DEAD_AFTER),
            format_duration(MAX_DEAD_AFTER),
            format_duration(DEFAULT_DEAD_AFTER)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn bounded_values_parse_within_their_bounds() {
        assert!(parse_dead_after("1ms").is_err());
        assert_eq!(parse_dead_after("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_replay_buffer("8MiB"), Ok(8 << 20));
        assert!(parse_replay_buffer("1K").is_err());
        assert_eq!(parse_max_frame("16KiB"), Ok(16 << 10));
        assert!(parse_max_frame("1MiB").is_err());
    }

    #[test]
    fn command_lines_are_consistent() {
        ClientCli::command().debug_assert();
        RelayCli::command().debug_assert();
        let cli = ClientCli::try_parse_from(["resumeproxy", "--relay-port", "7022", "host", "22"])
            .unwrap();
        assert_eq!(cli.connect.host.as_deref(), Some("host"));
        assert_eq!(cli.connect.options.relay_port, Some(7022));
        let wrap = ClientCli::try_parse_from([
            "resumeproxy",
            "wrap",
            "--dead-after",
            "2s",
            "-q",
            "--",
            "rsync",
            "-a",
            "src/",
            "host:dst/",
        ])
        .unwrap();
        match wrap.command {
            Some(ClientCommand::Wrap { options, command }) => {
                assert_eq!(
                    options.to_args(),
                    ["--dead-after", "2000ms", "--quiet"].map(String::from)
                );
                assert_eq!(
                    command,
                    ["rsync", "-a", "src/", "host:dst/"].map(String::from)
                );
            }
            other => panic!("expected wrap, got {other:?}"),
        }
        assert!(ClientCli::try_parse_from(["resumeproxy", "demo", "--size", "1M"]).is_ok());
        assert!(ClientCli::try_parse_from(["resumeproxy", "host"]).is_err());
        assert!(ClientCli::try_parse_from([
            "resumeproxy",
            "--relay-fingerprint",
            "MD5:00",
            "host",
            "22"
        ])
        .is_err());

        let relay = RelayCli::try_parse_from([
            "resumeproxyd",
            "--allow",
            "db:22",
            "--allow",
            "[fd00::1]:2222",
            "--max-frame",
            "16KiB",
        ])
        .unwrap();
        assert_eq!(relay.serve.allow.len(), 2);
        assert_eq!(relay.serve.max_frame, Some(16 << 10));
        assert!(RelayCli::try_parse_from(["resumeproxyd", "--max-frame", "1MiB"]).is_err());
        assert!(RelayCli::try_parse_from(["resumeproxyd", "--allow", "db"]).is_err());
        assert!(RelayCli::try_parse_from(["resumeproxyd", "--max-sessions", "0"]).is_err());
        let fp = RelayCli::try_parse_from(["resumeproxyd", "fingerprint", "--key-file", "k"]);
        assert!(matches!(
            fp.unwrap().command,
            Some(RelayCommand::Fingerprint {
                key_file: Some(_),
                ..
            })
        ));
    }
}
