//! Command lines of both programs, defined once: `--help`, the man pages
//! (`man/`, generated from these definitions) and the README follow them.

use crate::connector::TransportChoice;
use crate::identity::Fingerprint;
use crate::session::{DEFAULT_DEAD_AFTER, MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::target_policy::AllowedTarget;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The relay's port when none is given.
pub const DEFAULT_RELAY_PORT: u16 = 7022;

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
Exit status: 0 when the session ended normally; \
255 (like ssh) when the relay cannot be reached, refuses the session, or the session is gone.",
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

/// How the client reaches and trusts its relay. Unset options come from the
/// config file (`$XDG_CONFIG_HOME/resumeproxy/config.toml`), then from the
/// built-in defaults: flags win.
#[derive(Debug, Clone, Default, Args)]
pub struct LinkOptions {
    /// Port of the resumeproxyd relay on HOST [default: 7022].
    #[arg(long, value_name = "PORT")]
    pub relay_port: Option<u16>,
    /// Abandon a link that has delivered nothing for this long (heartbeats flow
    /// every quarter of it while idle), and reconnect [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_dead_after)]
    pub dead_after: Option<Duration>,
    /// How to reach the relay: tcp (TLS over TCP), quic (UDP; roams across
    /// address changes without a resume), or auto (race both, QUIC first;
    /// fall back to TCP where UDP is blocked) [default: auto].
    #[arg(long, value_name = "KIND", value_enum)]
    pub transport: Option<TransportChoice>,
    /// Give up at start if the relay has not answered within this long
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Trust only the relay key with this fingerprint (as printed by
    /// `resumeproxyd fingerprint`), instead of the known_relays file.
    #[arg(long, value_name = "SHA256:…")]
    pub relay_fingerprint: Option<Fingerprint>,
    /// File of pinned relay keys [default: $XDG_CONFIG_HOME/resumeproxy/known_relays,
    /// or ~/.config/resumeproxy/known_relays]. A relay not named in it is
    /// pinned on first use; a relay whose key changed is refused.
    #[arg(long, value_name = "FILE")]
    pub known_relays: Option<PathBuf>,
    /// Connect to the relay on this host and ask it for HOST:PORT, which the
    /// relay must allow (--allow); without it, the relay runs on HOST and
    /// PORT is its own target's port.
    #[arg(long, value_name = "RELAYHOST")]
    pub relay: Option<String>,
    /// Config file [default: $XDG_CONFIG_HOME/resumeproxy/config.toml, or
    /// ~/.config/resumeproxy/config.toml; see resumeproxy.toml(5)].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print only errors: no line when the link is lost or resumed.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail on stderr; repeat for more.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl LinkOptions {
    /// The options as command-line arguments (only those set), to pass on.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value);
            }
        };
        push("--relay-port", self.relay_port.map(|p| p.to_string()));
        push("--dead-after", self.dead_after.map(format_duration_exact));
        push(
            "--transport",
            self.transport
                .and_then(|t| t.to_possible_value())
                .map(|v| v.get_name().to_owned()),
        );
        push(
            "--connect-timeout",
            self.connect_timeout.map(format_duration_exact),
        );
        push(
            "--relay-fingerprint",
            self.relay_fingerprint.map(|f| f.to_string()),
        );
        push(
            "--known-relays",
            self.known_relays.as_ref().map(|p| p.display().to_string()),
        );
        push("--relay", self.relay.clone());
        push(
            "--config",
            self.config.as_ref().map(|p| p.display().to_string()),
        );
        if self.quiet {
            args.push("--quiet".into());
        }
        for _ in 0..self.verbose {
            args.push("-v".into());
        }
        args
    }
}

/// A duration as `parse_duration` reads it back exactly: milliseconds.
fn format_duration_exact(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Subcommands of `resumeproxy`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show what it does, with nothing but this binary: push a stream both ways
    /// through a relay on loopback while a fault injector breaks the link, and
    /// check that every byte arrived.
    Demo(DemoArgs),
    /// List this user's live sessions: id, relay, state (connected, or
    /// reconnecting since when and how many attempts), uptime, bytes each
    /// way, reconnects, round-trip time, bytes waiting for acknowledgement.
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

/// Options of `resumeproxy demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Bytes to send each way (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Break the link this often.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub break_every: Duration,
}

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
On SIGTERM or SIGINT it stops accepting, tells each connected client that the relay is shutting \
down (their ssh exits 255 with that reason), closes every sshd connection and exits 0 within a few \
seconds. Sessions live in memory: a restarted relay knows none of them.",
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

/// Parses a replay buffer size within its bounds.
pub fn parse_replay_buffer(text: &str) -> Result<u64, String> {
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
pub fn parse_max_frame(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    let (min, max) = (
        crate::wire::MIN_DATA_LEN as u64,
        crate::wire::MAX_DATA_LEN as u64,
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

/// Parses a duration like `90s`, `10m`, `12h`, `1h30m`, `500ms`; a bare
/// number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 90s, 10m, 12h, 500ms)"))
}

/// Parses a dead-peer interval within its bounds.
pub fn parse_dead_after(text: &str) -> Result<Duration, String> {
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

/// Parses a byte count like `400MiB`, `1G`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?} (examples: 4096, 64K, 400MiB, 2G)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size too large: {text}"))
}

/// `host:port`, with an IPv6 address in brackets: `[::1]:7022`.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Renders a duration for people: `12.4s`, `850ms`, `12h`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Renders a byte count for people: `3.1 MiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_and_sizes_parse_as_documented() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_dead_after("1ms").is_err());
        assert_eq!(parse_size("400MiB"), Ok(400 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_millis(12_400)), "12.4s");
        assert_eq!(format_bytes(3_250_586), "3.1 MiB");
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
