//! The relay's command line, `resumeproxyd`: serving, and its subcommands
//! (`fingerprint`, `check-config`). Each flag is defined here once, with its
//! help.

use super::{parse_max_frame, parse_replay_buffer};
use crate::relay::target_policy::AllowedTarget;
use crate::units::parse_duration;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `resumeproxyd`: the relay.
#[derive(Debug, Parser)]
#[command(
    name = "resumeproxyd",
    version,
    about = "Relay daemon for resumeproxy: keeps ssh sessions alive while their clients are away",
    long_about = "Runs beside sshd. Accepts resumeproxy clients, connects each new session to its \
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

/// Options for serving clients. Unset options come from the config file
/// (`/etc/resumeproxy/resumeproxyd.toml`, or `--config`), then from the
/// built-in defaults: flags win.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Config file [default: /etc/resumeproxy/resumeproxyd.toml, if it
    /// exists; see resumeproxy.toml(5)].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on for clients [default: 0.0.0.0:7022].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Where sessions go by default; clients that name no host may ask only
    /// for this port [default: 127.0.0.1:22].
    #[arg(long, value_name = "ADDR:PORT")]
    pub target: Option<SocketAddr>,
    /// Also allow clients to ask for this target by name (bastion mode);
    /// repeatable, adds to the config file's list. Nothing else is ever
    /// connected to.
    #[arg(long, value_name = "HOST:PORT")]
    pub allow: Vec<AllowedTarget>,
    /// Keep a session whose client is away this long, then close its sshd
    /// connection [default: 12h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// The relay's private key, made (mode 0600) on first start if missing
    /// [default: $STATE_DIRECTORY/relay.key under systemd,
    /// /var/lib/resumeproxy/relay.key as root, else
    /// ~/.local/state/resumeproxy/relay.key].
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Longest time a connection may take from accept to a complete
    /// handshake, TLS and request [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Most sessions at once, connected or not [default: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: Option<u32>,
    /// Most sessions whose client is away, at once; new sessions are refused
    /// beyond it [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_detached: Option<u32>,
    /// Most sessions from one client address, connected or not: one source
    /// cannot take every session [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_source: Option<u32>,
    /// Most connections still in their handshake, at once [default: 512].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: Option<u32>,
    /// Most connections still in their handshake from one source address
    /// [default: 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes_per_source: Option<u32>,
    /// Unacknowledged bytes kept per session for replay towards the client;
    /// reading from sshd pauses when it is full (64KiB to 1GiB) [default: 8MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_replay_buffer)]
    pub replay_buffer: Option<u64>,
    /// Largest data frame either side may send (1KiB to 128KiB)
    /// [default: 128KiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_max_frame)]
    pub max_frame: Option<u64>,
    /// More detail in the log; repeat for more (overrides the config file's
    /// log_level).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
