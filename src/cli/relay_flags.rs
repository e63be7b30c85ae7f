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
restart) tells connected clients the relay is restarting and exits, keeping every session; SIGUSR2 \
to the keeper upgrades: the worker is restarted from the binary on disk; SIGHUP reloads (passed on \
by the keeper); SIGTERM or SIGINT to the keeper stops for good: every client is told the relay is \
shutting down (its ssh exits 255 with that reason), every sshd connection is closed, and the keeper \
exits. Under systemd, `systemctl stop` ends the sessions: systemd closes what it kept, and clients \
that find the relay's port refusing connections give up with exit 255.",
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
    /// effective settings as a config file; exits non-zero if it is invalid.
    CheckConfig {
        /// Options as for serving.
        #[command(flatten)]
        serve: ServeArgs,
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
