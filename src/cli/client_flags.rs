//! The client's command line, `resumeproxy`: connecting (`%h %p`, the
//! ProxyCommand), and its subcommands (`status`, `resume`, `wrap`, `demo`,
//! `completions`). The flags that are settings come from their definitions
//! in [`settings::client`](super::settings::client); the others are defined
//! here, with their help.

use super::settings::client::ClientTable;
use super::settings::Given;
#[cfg(target_os = "linux")]
use crate::demo::DemoArgs;
use crate::transport::identity::Fingerprint;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// `resumeproxy`: the client.
#[derive(Debug, Parser)]
#[command(
    name = "resumeproxy",
    version,
    about = "SSH connections that survive the network (client; use as ssh's ProxyCommand)",
    long_about = "Carries one ssh connection to a resumeproxyd relay beside sshd, across any number of \
network breaks: Wi-Fi changes, sleeping laptops, VPN flaps, silent partitions. Neither ssh nor sshd \
ever sees the drop.\n\nUse it as a ProxyCommand in ssh_config:\n\n    Host myserver\n        \
ProxyCommand resumeproxy --relay-port 7022 %h %p\n\n\
The link to the relay is QUIC or TLS 1.3 over TCP (--transport; auto races both). The relay is known by its key, as ssh knows hosts: on first use the \
client pins the key's fingerprint in known_relays (and says so); a relay that later presents another key \
is refused with a warning naming the line to remove if the change is expected. --relay-fingerprint \
pins a key given by the relay's operator (`resumeproxyd fingerprint`) instead.\n\n\
SIGTERM, SIGINT and SIGHUP end the session on the relay too (within a second), after sending what ssh \
already wrote.\n\n\
Exit status: 0 when the session ended normally, or a signal ended it and the relay was told; \
255 (like ssh) when the relay cannot be reached, refuses the session, or the session is gone, or a \
signal ended the client while it could not reach the relay, or the relay was stopped for good (every \
reconnect attempt refused for 30s: nothing listens on its port; a restarting relay keeps its port).",
    after_long_help = "Environment:\n  RESUMEPROXY_LOG  log filter (tracing EnvFilter syntax, e.g. debug); overrides -v and -q.\n\n\
See also: resumeproxyd(8), ssh_config(5) ProxyCommand.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct ClientCli {
    /// Connection options.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Other commands.
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
}

/// Options for carrying a connection: a host and port, and how.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// How to reach the relay.
    #[command(flatten)]
    pub options: LinkOptions,
    /// Host the relay runs on (`%h` in ssh_config), or with --relay the
    /// target host the relay should connect to.
    #[arg(required = true)]
    pub host: Option<String>,
    /// Port of sshd behind the relay (`%p` in ssh_config); the relay must allow it.
    #[arg(required = true)]
    pub port: Option<u16>,
}

/// How the client reaches and trusts its relay. Unset settings come from
/// the config file (`$XDG_CONFIG_HOME/resumeproxy/config.toml`), then from
/// the built-in defaults: flags win. The settings are defined in
/// [`settings::client`](super::settings::client).
#[derive(Debug, Clone, Default, Args)]
pub struct LinkOptions {
    /// The settings given as flags.
    #[command(flatten)]
    pub settings: Given<ClientTable>,
    /// Trust only the relay key with this fingerprint (as printed by
    /// `resumeproxyd fingerprint`), instead of the known_relays file;
    /// repeatable: any of them (the keys of a fleet's instances).
    #[arg(long, value_name = "SHA256:…", action = clap::ArgAction::Append)]
    pub relay_fingerprint: Vec<Fingerprint>,
    /// Connect to the relay on this host and ask it for HOST:PORT, which the
    /// relay must allow (--allow); without it, the relay runs on HOST and
    /// PORT is its own target's port.
    #[arg(long, value_name = "RELAYHOST")]
    pub relay: Option<String>,
    /// Config file [default: $XDG_CONFIG_HOME/resumeproxy/config.toml, or
    /// ~/.config/resumeproxy/config.toml; see resumeproxy.toml(5)].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More detail on stderr; repeat for more.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
}

impl LinkOptions {
    /// The options as command-line arguments (only those given), to pass on.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = self.settings.to_args();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value);
            }
        };
        for fingerprint in &self.relay_fingerprint {
            push("--relay-fingerprint", Some(fingerprint.to_string()));
        }
        push("--relay", self.relay.clone());
        push(
            "--config",
            self.config.as_ref().map(|p| p.display().to_string()),
        );
        for _ in 0..self.verbose {
            args.push("-v".into());
        }
        args
    }
}

/// Subcommands of `resumeproxy`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show what it does, with nothing but this binary: push a stream both ways
    /// through a relay on loopback while a fault injector breaks the link, and
    /// check that every byte arrived.
    #[cfg(target_os = "linux")]
    Demo(DemoArgs),
    /// List this user's live sessions: id, relay, the relay's instance
    /// holding it (in a fleet, the one every reconnect goes to), transport, state
    /// (connected, or reconnecting since when and how many attempts), uptime,
    /// bytes each way, reconnects, moves from TCP back onto QUIC, round-trip
    /// time, bytes waiting for acknowledgement.
    Status {
        /// One JSON object per session, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Make reconnecting clients try now instead of waiting out their
    /// backoff: for the moment the network is back.
    Resume {
        /// The session (a prefix of its id, as `status` shows it).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every session of this user.
        #[arg(long)]
        all: bool,
    },
    /// Run ssh, scp, sftp, rsync or git once through resumeproxy, without
    /// touching ssh_config; exits with the command's status. Options given
    /// before `wrap` are passed on to the ProxyCommand.
    Wrap {
        /// Options for the ProxyCommand.
        #[command(flatten)]
        options: LinkOptions,
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn relay_fingerprints_repeat_and_pass_on() {
        let (a, b) = (
            Fingerprint::of_spki(b"relay-1").to_string(),
            Fingerprint::of_spki(b"relay-2").to_string(),
        );
        let cli = ClientCli::try_parse_from([
            "resumeproxy",
            "--relay-fingerprint",
            &a,
            "--relay-fingerprint",
            &b,
            "bastion",
            "22",
        ])
        .unwrap();
        let options = cli.connect.options;
        assert_eq!(options.relay_fingerprint.len(), 2);
        assert_eq!(
            options.to_args(),
            ["--relay-fingerprint", &a, "--relay-fingerprint", &b]
        );
    }
}
