//! Config files of both programs (TOML), and how they combine with flags:
//! a flag wins over the file, the file over the built-in default.
//!
//! * client: `$XDG_CONFIG_HOME/resumeproxy/config.toml` (default
//!   `~/.config/resumeproxy/config.toml`), or `--config`;
//! * relay: `/etc/resumeproxy/resumeproxyd.toml`, or `--config`.
//!
//! A missing default file is no error; a missing file named by `--config` is.
//! Unknown keys are errors, so a typo does not silently do nothing. The
//! format is documented in `resumeproxy.toml(5)`, generated from
//! [`CLIENT_KEYS`] and [`RELAY_KEYS`].

use super::{
    parse_dead_after, parse_max_frame, parse_replay_buffer, LinkOptions, ServeArgs,
    DEFAULT_RELAY_PORT,
};
use crate::client::connector::TransportChoice;
use crate::proto::session::DEFAULT_DEAD_AFTER;
use crate::relay::target_policy::{AllowedTarget, TargetPolicy};
use crate::relay::Limits;
use crate::transport::identity::default_key_path;
use crate::units::{format_bytes, format_duration, parse_duration};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The relay's config file unless `--config` says otherwise.
pub const RELAY_CONFIG_PATH: &str = "/etc/resumeproxy/resumeproxyd.toml";
/// Longest config file read.
const MAX_FILE_LEN: u64 = 1 << 20;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// One documented key: name, value form, default, meaning.
pub type KeyDoc = (&'static str, &'static str, &'static str, &'static str);

/// The client's keys, for the man page.
pub const CLIENT_KEYS: &[KeyDoc] = &[
    (
        "relay_port",
        "PORT",
        "7022",
        "the relay's port (--relay-port)",
    ),
    (
        "dead_after",
        "DURATION",
        "\"5s\"",
        "abandon a silent link after this long (--dead-after)",
    ),
    (
        "transport",
        "tcp|quic|auto",
        "\"auto\"",
        "how to reach the relay (--transport)",
    ),
    (
        "connect_timeout",
        "DURATION",
        "\"5s\"",
        "give up at start after this long (--connect-timeout)",
    ),
    (
        "known_relays",
        "PATH",
        "\"~/.config/resumeproxy/known_relays\"",
        "pinned relay keys (--known-relays)",
    ),
    ("quiet", "BOOL", "false", "no lost/resumed lines (--quiet)"),
];

/// The relay's keys, for the man page.
pub const RELAY_KEYS: &[KeyDoc] = &[
    ("listen", "ADDR:PORT", "\"0.0.0.0:7022\"", "where clients connect (--listen)"),
    ("target", "ADDR:PORT", "\"127.0.0.1:22\"", "default target (--target)"),
    ("allow", "[HOST:PORT, …]", "[]", "named targets clients may ask for (--allow); reloaded on SIGHUP"),
    ("grace", "DURATION", "\"12h\"", "keep a detached session this long (--grace); reloaded on SIGHUP"),
    ("key_file", "PATH", "see --key-file", "the relay's private key (--key-file)"),
    ("handshake_timeout", "DURATION", "\"10s\"", "accept to complete handshake (--handshake-timeout); reloaded on SIGHUP"),
    ("max_sessions", "N", "1024", "sessions at once (--max-sessions); reloaded on SIGHUP"),
    ("max_detached", "N", "256", "detached sessions at once (--max-detached); reloaded on SIGHUP"),
    ("max_sessions_per_source", "N", "64", "sessions from one client address (--max-sessions-per-source); reloaded on SIGHUP"),
    ("max_handshakes", "N", "512", "handshakes in progress (--max-handshakes); reloaded on SIGHUP"),
    ("max_handshakes_per_source", "N", "16", "handshakes in progress per source address (--max-handshakes-per-source); reloaded on SIGHUP"),
    ("replay_buffer", "SIZE", "\"8MiB\"", "replay buffer per session, for new sessions (--replay-buffer); reloaded on SIGHUP"),
    ("max_frame", "SIZE", "\"128KiB\"", "data frame size, for new sessions (--max-frame); reloaded on SIGHUP"),
    ("log_level", "LEVEL", "\"info\"", "error, warn, info, debug or trace (-v)"),
];

/// The client's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    relay_port: Option<u16>,
    dead_after: Option<String>,
    transport: Option<TransportChoice>,
    connect_timeout: Option<String>,
    known_relays: Option<PathBuf>,
    quiet: Option<bool>,
}

/// The relay's config file, and what `check-config` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sessions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_detached: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sessions_per_source: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_handshakes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_handshakes_per_source: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_buffer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_frame: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
}

/// Reads and parses `path`; `None` if it is the default and missing.
fn read<T: for<'de> Deserialize<'de>>(
    path: &Path,
    explicit: bool,
) -> Result<Option<T>, ConfigError> {
    let error = |reason: String| ConfigError {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
        Ok(meta) if meta.len() > MAX_FILE_LEN => {
            return Err(error(format!("larger than {}", format_bytes(MAX_FILE_LEN))))
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?,
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| error(e.message().to_owned()))
}

/// What the client runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// The relay's port.
    pub relay_port: u16,
    /// Dead-peer interval.
    pub dead_after: Duration,
    /// Which transports to use.
    pub transport: TransportChoice,
    /// Bound on the first connection and each attempt.
    pub connect_timeout: Duration,
    /// The known_relays file.
    pub known_relays: PathBuf,
    /// No lost/resumed lines.
    pub quiet: bool,
}

impl ClientSettings {
    /// Flags over the config file over the defaults.
    pub fn resolve(flags: &LinkOptions) -> Result<ClientSettings, ConfigError> {
        let path = flags
            .config
            .clone()
            .unwrap_or_else(|| crate::paths::config_dir().join("config.toml"));
        let file: ClientFile = read(&path, flags.config.is_some())?.unwrap_or_default();
        let error = |key: &str, reason: String| ConfigError {
            path: path.display().to_string(),
            reason: format!("{key}: {reason}"),
        };
        let dead_after = match (&flags.dead_after, &file.dead_after) {
            (Some(d), _) => *d,
            (None, Some(text)) => parse_dead_after(text).map_err(|e| error("dead_after", e))?,
            (None, None) => DEFAULT_DEAD_AFTER,
        };
        let connect_timeout = match (&flags.connect_timeout, &file.connect_timeout) {
            (Some(d), _) => *d,
            (None, Some(text)) => parse_duration(text).map_err(|e| error("connect_timeout", e))?,
            (None, None) => crate::client::DEFAULT_CONNECT_TIMEOUT,
        };
        Ok(ClientSettings {
            relay_port: flags
                .relay_port
                .or(file.relay_port)
                .unwrap_or(DEFAULT_RELAY_PORT),
            dead_after,
            transport: flags.transport.or(file.transport).unwrap_or_default(),
            connect_timeout,
            known_relays: flags
                .known_relays
                .clone()
                .or(file.known_relays)
                .unwrap_or_else(crate::client::known_relays::default_path),
            quiet: flags.quiet || (flags.verbose == 0 && file.quiet.unwrap_or(false)),
        })
    }
}

/// What the relay runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where sessions may go.
    pub targets: TargetPolicy,
    /// How long a detached session is kept.
    pub grace: Duration,
    /// The relay's key.
    pub key_file: PathBuf,
    /// Limits.
    pub limits: Limits,
    /// Replay buffer per session.
    pub replay_buffer: usize,
    /// Data frame size.
    pub max_frame: usize,
    /// Log filter.
    pub log_level: String,
}

impl RelaySettings {
    /// Flags over the config file over the defaults.
    pub fn resolve(flags: &ServeArgs) -> Result<RelaySettings, ConfigError> {
        let path = flags
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(RELAY_CONFIG_PATH));
        let file: RelayFile = read(&path, flags.config.is_some())?.unwrap_or_default();
        let error = |key: &str, reason: String| ConfigError {
            path: path.display().to_string(),
            reason: format!("{key}: {reason}"),
        };
        let addr = |key: &str, text: &Option<String>| -> Result<Option<SocketAddr>, ConfigError> {
            text.as_deref()
                .map(|t| t.parse().map_err(|e| error(key, format!("{t:?}: {e}"))))
                .transpose()
        };
        let duration =
            |key: &str, text: &Option<String>| -> Result<Option<Duration>, ConfigError> {
                text.as_deref()
                    .map(|t| parse_duration(t).map_err(|e| error(key, e)))
                    .transpose()
            };
        let size = |key: &str,
                    text: &Option<String>,
                    parse: fn(&str) -> Result<u64, String>|
         -> Result<Option<u64>, ConfigError> {
            text.as_deref()
                .map(|t| parse(t).map_err(|e| error(key, e)))
                .transpose()
        };
        let mut allowed = Vec::new();
        for text in file.allow.iter().flatten() {
            allowed.push(
                text.parse::<AllowedTarget>()
                    .map_err(|e| error("allow", e))?,
            );
        }
        allowed.extend(flags.allow.iter().cloned());
        let defaults = Limits::default();
        let count =
            |flag: Option<u32>, file: Option<u32>, default: usize, key: &str| match flag.or(file) {
                Some(0) => Err(error(key, "must be at least 1".into())),
                Some(n) => Ok(n as usize),
                None => Ok(default),
            };
        let level = match flags.verbose {
            0 => file.log_level.clone().unwrap_or_else(|| "info".into()),
            1 => "debug".into(),
            _ => "trace".into(),
        };
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(error("log_level", format!("{level:?} is not a level")));
        }
        Ok(RelaySettings {
            listen: flags
                .listen
                .or(addr("listen", &file.listen)?)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_RELAY_PORT))),
            targets: TargetPolicy {
                default: flags
                    .target
                    .or(addr("target", &file.target)?)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 22))),
                allowed,
            },
            grace: flags
                .grace
                .or(duration("grace", &file.grace)?)
                .unwrap_or(crate::relay::DEFAULT_GRACE),
            key_file: flags
                .key_file
                .clone()
                .or(file.key_file.clone())
                .unwrap_or_else(default_key_path),
            limits: Limits {
                handshake_timeout: flags
                    .handshake_timeout
                    .or(duration("handshake_timeout", &file.handshake_timeout)?)
                    .unwrap_or(defaults.handshake_timeout),
                max_sessions: count(
                    flags.max_sessions,
                    file.max_sessions,
                    defaults.max_sessions,
                    "max_sessions",
                )?,
                max_detached: count(
                    flags.max_detached,
                    file.max_detached,
                    defaults.max_detached,
                    "max_detached",
                )?,
                max_sessions_per_source: count(
                    flags.max_sessions_per_source,
                    file.max_sessions_per_source,
                    defaults.max_sessions_per_source,
                    "max_sessions_per_source",
                )?,
                max_handshakes: count(
                    flags.max_handshakes,
                    file.max_handshakes,
                    defaults.max_handshakes,
                    "max_handshakes",
                )?,
                max_handshakes_per_source: count(
                    flags.max_handshakes_per_source,
                    file.max_handshakes_per_source,
                    defaults.max_handshakes_per_source,
                    "max_handshakes_per_source",
                )?,
            },
            replay_buffer: flags
                .replay_buffer
                .or(size(
                    "replay_buffer",
                    &file.replay_buffer,
                    parse_replay_buffer,
                )?)
                .map_or(crate::proto::session::DEFAULT_REPLAY_CAPACITY, |n| {
                    n as usize
                }),
            max_frame: flags
                .max_frame
                .or(size("max_frame", &file.max_frame, parse_max_frame)?)
                .map_or(crate::proto::wire::MAX_DATA_LEN, |n| n as usize),
            log_level: level,
        })
    }

    /// The settings as a config file (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        let file = RelayFile {
            listen: Some(self.listen.to_string()),
            target: Some(self.targets.default.to_string()),
            allow: Some(self.targets.allowed.iter().map(|a| a.to_string()).collect()),
            grace: Some(format_duration(self.grace)),
            key_file: Some(self.key_file.clone()),
            handshake_timeout: Some(format_duration(self.limits.handshake_timeout)),
            max_sessions: Some(self.limits.max_sessions as u32),
            max_detached: Some(self.limits.max_detached as u32),
            max_sessions_per_source: Some(self.limits.max_sessions_per_source as u32),
            max_handshakes: Some(self.limits.max_handshakes as u32),
            max_handshakes_per_source: Some(self.limits.max_handshakes_per_source as u32),
            replay_buffer: Some(size_text(self.replay_buffer)),
            max_frame: Some(size_text(self.max_frame)),
            log_level: Some(self.log_level.clone()),
        };
        toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// The config format's man page, `resumeproxy.toml(5)`, in roff, from
/// [`CLIENT_KEYS`] and [`RELAY_KEYS`].
pub fn man_page() -> String {
    fn escape(text: &str) -> String {
        text.replace('\\', "\\e").replace('-', "\\-")
    }
    fn keys(out: &mut String, keys: &[KeyDoc]) {
        for (name, form, default, meaning) in keys {
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR = \\fI{}\\fR\n{} (default: {})\n",
                escape(name),
                escape(form),
                escape(meaning),
                escape(default)
            ));
        }
    }
    let mut out = String::from(".TH resumeproxy.toml 5 \"\" \"resumeproxy\" \"File Formats\"\n");
    out.push_str(".SH NAME\nresumeproxy.toml \\- config files of resumeproxy and resumeproxyd\n");
    out.push_str(".SH SYNOPSIS\n\\fI$XDG_CONFIG_HOME/resumeproxy/config.toml\\fR (client; default \\fI~/.config/resumeproxy/config.toml\\fR)\n.br\n\\fI/etc/resumeproxy/resumeproxyd.toml\\fR (relay)\n");
    out.push_str(".SH DESCRIPTION\nTOML files of \\fIkey = value\\fR lines. Every key is optional; a flag on the command line wins over the file, the file over the built\\-in default. Unknown keys are errors. A missing default file is no error; a missing file named by \\fB\\-\\-config\\fR is. DURATION is written like \\fB\"90s\"\\fR, \\fB\"10m\"\\fR, \\fB\"12h\"\\fR; SIZE like \\fB\"8MiB\"\\fR.\n");
    out.push_str(".SH CLIENT KEYS\n");
    keys(&mut out, CLIENT_KEYS);
    out.push_str(".SH RELAY KEYS\n");
    keys(&mut out, RELAY_KEYS);
    out.push_str(".PP\n\\fBresumeproxyd check\\-config\\fR validates the relay's file and prints the effective settings in this format. On SIGHUP the relay rereads its file and applies the keys marked as reloaded without dropping a session.\n");
    out.push_str(".SH EXAMPLE\n.nf\n# /etc/resumeproxy/resumeproxyd.toml\nlisten = \"0.0.0.0:7022\"\ntarget = \"127.0.0.1:22\"\nallow = [\"db.internal:22\"]\ngrace = \"12h\"\nmax_sessions = 256\n.fi\n");
    out.push_str(".SH SEE ALSO\nresumeproxy(1), resumeproxyd(8)\n");
    out
}

/// A size as the config file writes it: whole MiB or KiB where exact.
fn size_text(bytes: usize) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}MiB", bytes >> 20)
    } else if bytes % (1 << 10) == 0 {
        format!("{}KiB", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resumeproxy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let path = write(
            "relay.toml",
            "grace = \"1h\"\nmax_sessions = 10\nallow = [\"db:22\"]\nreplay_buffer = \"1MiB\"\n",
        );
        let flags = ServeArgs {
            config: Some(path.clone()),
            max_sessions: Some(20),
            allow: vec!["web:2222".parse().unwrap()],
            ..ServeArgs::default()
        };
        let s = RelaySettings::resolve(&flags).unwrap();
        assert_eq!(s.grace, Duration::from_secs(3600));
        assert_eq!(s.limits.max_sessions, 20);
        assert_eq!(s.limits.max_detached, Limits::default().max_detached);
        assert_eq!(s.replay_buffer, 1 << 20);
        assert_eq!(s.targets.allowed.len(), 2);
        // What check-config prints reads back to the same settings.
        let printed = write("printed.toml", &s.to_toml());
        let again = RelaySettings::resolve(&ServeArgs {
            config: Some(printed),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn mistakes_are_named() {
        let typo = write("typo.toml", "grcae = \"1h\"\n");
        let e = RelaySettings::resolve(&ServeArgs {
            config: Some(typo),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("grcae"), "{e}");
        let bad = write("bad.toml", "max_frame = \"1GiB\"\n");
        let e = RelaySettings::resolve(&ServeArgs {
            config: Some(bad),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("max_frame"), "{e}");
        let missing = RelaySettings::resolve(&ServeArgs {
            config: Some("/nonexistent/resumeproxyd.toml".into()),
            ..ServeArgs::default()
        });
        assert!(missing.is_err());

        let client = write("client.toml", "dead_after = \"2s\"\nrelay_port = 7100\n");
        let flags = LinkOptions {
            config: Some(client),
            relay_port: Some(7200),
            ..LinkOptions::default()
        };
        let c = ClientSettings::resolve(&flags).unwrap();
        assert_eq!((c.relay_port, c.dead_after), (7200, Duration::from_secs(2)));
    }
}
