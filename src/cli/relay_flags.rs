//! The relay's command line, `resumeproxyd`: serving, and its subcommands
//! (`fingerprint`, `check-config`). The flags that are settings come from
//! their definitions in [`settings::relay`](super::settings::relay); the
//! others are defined here, with their help.

use super::settings::relay::RelayTable;
use super::settings::Given;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// `resumeproxyd`: the relay.
#[derive(Debug, Parser)]
#[command(
    name = "resumeproxyd",
    version,
    about = "Relay daemon for resumeproxy: keeps ssh sessions alive while their clients are away",
    long_about = "Runs beside sshd, on Linux (the client, resumeproxy, also runs on macOS, FreeBSD and \
Windows). Accepts resumeproxy clients, connects each new session to its \
target (by default the local sshd), and holds that connection open while the client is away, for up \
to the grace period. A client that comes back resumes exactly where it was.\n\n\
Clients connect with TLS 1.3 over TCP or with QUIC over UDP, both on the --listen port (open both in the firewall); the relay proves its identity with a key made on first start (--key-file, \
mode 0600), which clients pin by its fingerprint (`resumeproxyd fingerprint`). A resume must prove the \
session's secret, bound to the new connection; addresses that fail repeatedly are refused for a minute. \
The relay connects only to its --target and the targets named by --allow, and bounds what clients can \
make it hold (handshakes, sessions, detached sessions, replay buffers, frame size).\n\n\
The relay logs one line per session start, resume and end, with the session id, the client's \
address, the target, and its local port towards sshd (sshd logs that port with the relay's \
address, so its log can be joined back to the real client).\n\n\
Restarts, upgrades and crashes end no session. Started by hand, resumeproxyd is a small keeper \
process that runs the relay's worker as its child and holds what must outlive it: the listening \
sockets, every sshd connection, and each session's state (a memory file); under systemd \
(Type=notify, FileDescriptorStoreMax=) systemd's file descriptor store holds them and the keeper is \
not used. When the worker dies (a crash, SIGKILL, the OOM killer) a new one carries every session on \
and the clients resume, as after a network break. Signals: SIGTERM to the worker (systemctl \
restart: the unit's RestartKillSignal=) tells connected clients the relay is restarting and exits, \
keeping every session; SIGINT to the worker (systemctl stop: the unit's KillSignal=) stops for \
good; SIGUSR2 to the keeper upgrades: the worker is restarted from the binary on disk; SIGHUP \
reloads (passed on by the keeper); SIGTERM or SIGINT to the keeper stops for good. A stop for good \
tells every client at once that the relay is shutting down (its ssh exits 255 with that reason) \
and closes every sshd connection.\n\n\
A broken config file never stops a running relay. A reload with one changes nothing and says \
what is wrong (`check-config` names the mistake and its line; the unit runs `check-config \
--quiet` first, so `systemctl reload` fails). A restart with one (a crash, an upgrade) runs with \
the settings of the file's last good version, kept with the sockets, and says loudly, in the log \
and in systemd's status line, that the file is broken. Only a first start fails on it (exit 78).",
    after_long_help = "Environment:\n  RESUMEPROXY_LOG  log filter (tracing EnvFilter syntax, e.g. debug); overrides -v.\n\n\
See also: resumeproxy(1), sshd(8).",
    args_conflicts_with_subcommands = true
)]
pub struct RelayCli {
    /// Relay options.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Other commands.
    #[command(subcommand)]
    pub command: Option<RelayCommand>,
}

/// Subcommands of `resumeproxyd`.
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Print the fingerprint of the relay's key (creating the key if there is
    /// none), for clients' --relay-fingerprint or known_relays.
    Fingerprint {
        /// The relay's private key [default: as for serving].
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Config file naming the key file [default: as for serving].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Check the configuration (config file and flags) and print the
    /// effective settings as a config file; exits non-zero, naming the
    /// mistake and its line, if it is invalid.
    CheckConfig {
        /// Options as for serving.
        #[command(flatten)]
        serve: ServeArgs,
        /// Print nothing if the configuration is valid, only the mistake
        /// if it is not (the unit's ExecReload= runs this before the reload,
        /// so that `systemctl reload` fails on a broken file).
        #[arg(short, long)]
        quiet: bool,
    },
}

/// Options for serving clients. Unset settings come from the config file
/// (`/etc/resumeproxy/resumeproxyd.toml`, or `--config`), then from the
/// built-in defaults: flags win. The settings are defined in
/// [`settings::relay`](super::settings::relay).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Config file [default: /etc/resumeproxy/resumeproxyd.toml, if it
    /// exists; see resumeproxy.toml(5)].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The settings given as flags.
    #[command(flatten)]
    pub settings: Given<RelayTable>,
    /// More detail in the log; repeat for more (overrides the config file's
    /// log_level).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
