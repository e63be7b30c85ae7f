//! The front end's command lines and config files: what a user types and
//! writes, turned into the settings the client and the relay run with.
//!
//! Every setting — a flag, a config-file key, a default — is defined once,
//! in [`settings`]; the command lines of both programs ([`ClientCli`],
//! [`RelayCli`]) take their flags from there and define the rest. `--help`,
//! the man pages (`man/`, generated from these definitions) and
//! `docs/options.md` follow them (`tests/man_pages.rs` checks). [`config`] reads the config
//! files and combines them with the flags; [`wrap`] runs a command through
//! the client; [`init_logging`] sets up logging.

mod client_flags;
pub mod config;
mod logging;
#[cfg(target_os = "linux")]
mod relay_flags;
pub mod settings;
pub mod wrap;

pub use client_flags::{ClientCli, ClientCommand, ConnectArgs, LinkOptions};
pub use logging::{init_logging, stderr_is_journal};
#[cfg(target_os = "linux")]
pub use relay_flags::{RelayCli, RelayCommand, ServeArgs};

/// The relay's port when none is given.
pub(crate) const DEFAULT_RELAY_PORT: u16 = 7022;

// The tests check the relay's side too, which is built on Linux only.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::settings::{client, relay};
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_lines_are_consistent() {
        ClientCli::command().debug_assert();
        RelayCli::command().debug_assert();
        let cli = ClientCli::try_parse_from(["resumeproxy", "--relay-port", "7022", "host", "22"])
            .unwrap();
        assert_eq!(cli.connect.host.as_deref(), Some("host"));
        assert_eq!(
            cli.connect.options.settings.get(&client::RELAY_PORT),
            Some(7022)
        );
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
                    ["--dead-after", "2s", "--quiet"].map(String::from)
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
        let allowed = relay.serve.settings.get(&relay::ALLOW).unwrap_or_default();
        assert_eq!(allowed.len(), 2);
        assert_eq!(relay.serve.settings.get(&relay::MAX_FRAME), Some(16 << 10));
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
