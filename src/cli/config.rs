//! Config files of both programs (TOML), and how they combine with flags:
//! a flag wins over the file, the file over the built-in default.
//!
//! * client: `$XDG_CONFIG_HOME/resumeproxy/config.toml` (default
//!   `~/.config/resumeproxy/config.toml`), or `--config`;
//! * relay: `/etc/resumeproxy/resumeproxyd.toml`, or `--config`.
//!
//! A missing default file is no error; a missing file named by `--config` is.
//! Unknown keys are errors, so a typo does not silently do nothing, and so
//! is any bad value in the file, even one a flag overrides. The keys are
//! the settings of [`settings`](super::settings); their page,
//! `resumeproxy.toml(5)`, is generated from there ([`man_page`]).

use super::settings::client::{self, ClientTable};
use super::settings::{Given, Resolver, Table};
use super::LinkOptions;
use crate::client::direct::Fallback;
use crate::client::transport_plan::TransportChoice;
use crate::units::format_bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;
// The relay's side: Linux only, like the relay.
#[cfg(target_os = "linux")]
use super::settings::relay::{self, RelayTable};
#[cfg(target_os = "linux")]
use super::ServeArgs;
#[cfg(target_os = "linux")]
use crate::relay::target_policy::TargetPolicy;
#[cfg(target_os = "linux")]
use crate::relay::{Fleet, Limits};
#[cfg(target_os = "linux")]
use std::net::SocketAddr;

/// The relay's config file unless `--config` says otherwise.
#[cfg(target_os = "linux")]
pub const RELAY_CONFIG_PATH: &str = "/etc/resumeproxy/resumeproxyd.toml";
/// Longest config file read.
const MAX_FILE_LEN: u64 = 1 << 20;

/// A config file that could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads the config file at `path`: its text, or `None` if it is the
/// default file and missing.
fn read_text(path: &Path, explicit: bool) -> Result<Option<String>, ConfigError> {
    let error = |reason: String| ConfigError {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(e) => Err(error(e.to_string())),
        Ok(meta) if meta.len() > MAX_FILE_LEN => {
            Err(error(format!("larger than {}", format_bytes(MAX_FILE_LEN))))
        }
        Ok(_) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| error(e.to_string())),
    }
}

/// Checks a config file's `text` (from `path`): its values, or what is
/// wrong, with the line (`line 3: duplicate key `grace``).
fn parse<T: Table>(path: &Path, text: &str) -> Result<Given<T>, ConfigError> {
    let error = |reason: String| ConfigError {
        path: path.display().to_string(),
        reason,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let Some(span) = e.span() else {
            return error(e.message().to_owned());
        };
        let at = text.get(span.clone()).unwrap_or_default().trim();
        let line = line_of(text, span.start);
        let message = e.message();
        if at.is_empty() || at.len() > 40 || at.contains('\n') {
            error(format!("line {line}: {message}"))
        } else if message.ends_with(" key") {
            error(format!("line {line}: {message} `{at}`"))
        } else {
            error(format!("line {line}, at `{at}`: {message}"))
        }
    })?;
    Given::from_toml(table).map_err(|(key, reason)| match key_line(text, &key) {
        Some(line) => error(format!("line {line}: {reason}")),
        None => error(reason),
    })
}

/// The line (from 1) of the byte at `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

/// The line where the top-level `key` of the TOML `text` is given.
fn key_line(text: &str, key: &str) -> Option<usize> {
    use std::collections::BTreeMap;
    let keys: BTreeMap<toml::Spanned<String>, serde::de::IgnoredAny> = toml::from_str(text).ok()?;
    let span = keys.keys().find(|k| k.get_ref() == key)?.span();
    Some(line_of(text, span.start))
}

/// Reads and checks the config file at `path`: nothing if it is the
/// default file and missing.
fn read<T: Table>(path: &Path, explicit: bool) -> Result<Given<T>, ConfigError> {
    match read_text(path, explicit)? {
        Some(text) => parse(path, &text),
        None => Ok(Given::default()),
    }
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
    /// What to do when no relay answers at the start.
    pub fallback: Fallback,
}

impl ClientSettings {
    /// Flags over the config file over the defaults.
    pub fn resolve(flags: &LinkOptions) -> Result<ClientSettings, ConfigError> {
        let path = flags
            .config
            .clone()
            .unwrap_or_else(|| crate::paths::config_dir().join("config.toml"));
        let file = read::<ClientTable>(&path, flags.config.is_some())?;
        let mut settings = Resolver::new(&flags.settings, file);
        Ok(ClientSettings {
            relay_port: settings.get(&client::RELAY_PORT),
            dead_after: settings.get(&client::DEAD_AFTER),
            transport: settings.get(&client::TRANSPORT),
            connect_timeout: settings.get(&client::CONNECT_TIMEOUT),
            fallback: settings.get(&client::FALLBACK),
            known_relays: settings.get(&client::KNOWN_RELAYS),
            // -v on the command line wins over `quiet` in the file.
            quiet: settings.get(&client::QUIET) && flags.verbose == 0,
        })
    }
}

#[cfg(target_os = "linux")]
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
    /// Its place in a fleet.
    pub fleet: Fleet,
    /// Log filter.
    pub log_level: String,
    /// Every setting as the config file writes it, in order: what
    /// `check-config` prints.
    written: Vec<(&'static str, String)>,
}

#[cfg(target_os = "linux")]
impl RelaySettings {
    /// Flags over the config file over the defaults.
    pub fn resolve(flags: &ServeArgs) -> Result<RelaySettings, ConfigError> {
        Ok(RelaySettings::resolve_or_kept(flags, None)?.settings)
    }

    /// The relay's config file: `--config`, or the default.
    fn path(flags: &ServeArgs) -> PathBuf {
        flags
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(RELAY_CONFIG_PATH))
    }

    /// Flags over the config file over the defaults — or, when the file
    /// cannot be used and `kept` (the file's text as it last read well)
    /// can, flags over `kept` over the defaults, with the file's error
    /// beside them (to be said loudly): a running relay's restart does not
    /// depend on a file being edited.
    pub fn resolve_or_kept(flags: &ServeArgs, kept: Option<&str>) -> Result<Resolved, ConfigError> {
        let path = RelaySettings::path(flags);
        let read = read_text(&path, flags.config.is_some()).and_then(|text| {
            let text = text.unwrap_or_default();
            Ok((parse::<RelayTable>(&path, &text)?, text))
        });
        let (file, text, broken) = match (read, kept) {
            (Ok((file, text)), _) => (file, text, None),
            (Err(e), Some(kept)) => match parse::<RelayTable>(&path, kept) {
                Ok(file) => (file, kept.to_owned(), Some(e)),
                // What was kept no longer reads (an upgrade dropped a key):
                // the file's own error stands.
                Err(_) => return Err(e),
            },
            (Err(e), None) => return Err(e),
        };
        Ok(Resolved {
            settings: RelaySettings::from_file(flags, file),
            text,
            broken,
        })
    }

    /// Flags over the config file's values `file` over the defaults.
    fn from_file(flags: &ServeArgs, file: Given<RelayTable>) -> RelaySettings {
        let mut settings = Resolver::new(&flags.settings, file);
        let verbose = match flags.verbose {
            0 => None,
            1 => Some("debug".to_owned()),
            _ => Some("trace".to_owned()),
        };
        RelaySettings {
            listen: settings.get(&relay::LISTEN),
            targets: TargetPolicy {
                default: settings.get(&relay::TARGET),
                allowed: settings.get(&relay::ALLOW),
            },
            grace: settings.get(&relay::GRACE),
            key_file: settings.get(&relay::KEY_FILE),
            fleet: Fleet {
                instance: settings.get(&relay::INSTANCE),
                quic_route: settings.get(&relay::QUIC_ADDRESS),
                agent_listen: settings.get(&relay::AGENT_LISTEN),
                draining: settings.get(&relay::DRAINING),
                proxy_protocol_from: settings.get(&relay::PROXY_PROTOCOL_FROM),
            },
            limits: Limits {
                handshake_timeout: settings.get(&relay::HANDSHAKE_TIMEOUT),
                max_sessions: settings.get(&relay::MAX_SESSIONS),
                max_detached: settings.get(&relay::MAX_DETACHED),
                max_sessions_per_source: settings.get(&relay::MAX_SESSIONS_PER_SOURCE),
                max_handshakes: settings.get(&relay::MAX_HANDSHAKES),
                max_handshakes_per_source: settings.get(&relay::MAX_HANDSHAKES_PER_SOURCE),
            },
            replay_buffer: settings.get(&relay::REPLAY_BUFFER),
            max_frame: settings.get(&relay::MAX_FRAME),
            log_level: settings.get_or(&relay::LOG_LEVEL, verbose),
            written: settings.picked(),
        }
    }

    /// The settings as a config file (what `check-config` prints): every
    /// key, in the order of [`settings::relay`](super::settings::relay).
    pub fn to_toml(&self) -> String {
        self.written
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect()
    }
}

#[cfg(target_os = "linux")]
/// The relay's settings, and where they came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The settings.
    pub settings: RelaySettings,
    /// The config file's text they were read from (empty without a file):
    /// what the relay keeps as its last good configuration.
    pub text: String,
    /// Why the config file could not be used, when the settings come from
    /// the kept text instead.
    pub broken: Option<ConfigError>,
}

#[cfg(target_os = "linux")]
/// The config format's man page, `resumeproxy.toml(5)`, in roff, from the
/// definitions of the settings.
pub fn man_page() -> String {
    fn escape(text: &str) -> String {
        text.replace('\\', "\\e").replace('-', "\\-")
    }
    fn keys<T: Table>(out: &mut String) {
        for setting in T::all() {
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR = \\fI{}\\fR\n{}",
                escape(setting.key()),
                escape(&setting.form()),
                escape(setting.doc()),
            ));
            if let Some(bounds) = setting.bounds() {
                out.push_str(&format!(" ({})", escape(&bounds)));
            }
            out.push_str(".\n");
            if let Some(flag) = setting.flag() {
                out.push_str(&format!("Flag: \\fB{}\\fR. ", escape(&flag)));
            }
            if setting.reloads() {
                out.push_str("Reloaded on SIGHUP. ");
            }
            out.push_str(&format!("Default: {}.\n", escape(&setting.default_toml())));
        }
    }
    let mut out = String::from(".TH resumeproxy.toml 5 \"\" \"resumeproxy\" \"File Formats\"\n");
    out.push_str(".SH NAME\nresumeproxy.toml \\- config files of resumeproxy and resumeproxyd\n");
    out.push_str(".SH SYNOPSIS\n\\fI$XDG_CONFIG_HOME/resumeproxy/config.toml\\fR (client; default \\fI~/.config/resumeproxy/config.toml\\fR)\n.br\n\\fI/etc/resumeproxy/resumeproxyd.toml\\fR (relay)\n");
    out.push_str(".SH DESCRIPTION\nTOML files of \\fIkey = value\\fR lines. Every key is optional and is also a flag of the same name with \\- for _ (unless said otherwise); a flag on the command line wins over the file, the file over the built\\-in default. Unknown keys and bad values are errors. A missing default file is no error; a missing file named by \\fB\\-\\-config\\fR is. DURATION is written like \\fB\"90s\"\\fR, \\fB\"10m\"\\fR, \\fB\"12h\"\\fR; SIZE like \\fB\"8MiB\"\\fR; N and PORT are numbers.\n");
    out.push_str(".SH CLIENT KEYS\n");
    keys::<ClientTable>(&mut out);
    out.push_str(".SH RELAY KEYS\n");
    keys::<RelayTable>(&mut out);
    out.push_str(".PP\n\\fBresumeproxyd check\\-config\\fR validates the relay's file and prints the effective settings in this format. On SIGHUP the relay rereads its file and applies the keys marked as reloaded without dropping a session.\n");
    out.push_str(".SH EXAMPLE\n.nf\n# /etc/resumeproxy/resumeproxyd.toml\nlisten = \"0.0.0.0:7022\"\ntarget = \"127.0.0.1:22\"\nallow = [\"db.internal:22\"]\ngrace = \"12h\"\nmax_sessions = 256\n.fi\n");
    out.push_str(".SH SEE ALSO\nresumeproxy(1), resumeproxyd(8)\n");
    out
}

// The tests check the relay's side too, which is built on Linux only.
#[cfg(all(test, target_os = "linux"))]
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
        let mut flags = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        flags.settings.set(&relay::MAX_SESSIONS, 20);
        flags
            .settings
            .set(&relay::ALLOW, vec!["web:2222".parse().unwrap()]);
        let s = RelaySettings::resolve(&flags).unwrap();
        assert_eq!(s.grace, Duration::from_secs(3600));
        assert_eq!(s.limits.max_sessions, 20);
        assert_eq!(s.limits.max_detached, Limits::default().max_detached);
        assert_eq!(s.replay_buffer, 1 << 20);
        assert_eq!(s.targets.allowed.len(), 2);
        // What check-config prints reads back to the same settings, and
        // names every key, in order.
        let text = s.to_toml();
        let keys: Vec<&str> = text.lines().filter_map(|l| l.split(" = ").next()).collect();
        let all: Vec<&str> = RelayTable::all().iter().map(|s| s.key()).collect();
        assert_eq!(keys, all, "{text}");
        assert!(text.contains("handshake_timeout = \"10s\"\n"), "{text}");
        assert!(
            text.contains("allow = [\"db:22\", \"web:2222\"]\n"),
            "{text}"
        );
        let printed = write("printed.toml", &text);
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

        for (text, error) in [
            (
                "max_sessions = \"10\"\n",
                "max_sessions: expected a whole number, not string",
            ),
            ("max_sessions = 0\n", "max_sessions: must be at least 1"),
            (
                "log_level = \"loud\"\n",
                "log_level: \"loud\" is not one of error",
            ),
            ("allow = \"db:22\"\n", "allow: expected a list"),
            (
                "instance = \"relay_1\"\n",
                "instance: \"relay_1\" is not a DNS name",
            ),
            (
                "quic_address = \"sometimes\"\n",
                "quic_address: \"sometimes\" is neither",
            ),
            ("draining = \"yes\"\n", "draining: expected true or false"),
        ] {
            let bad = write("bad.toml", text);
            let e = RelaySettings::resolve(&ServeArgs {
                config: Some(bad),
                ..ServeArgs::default()
            })
            .unwrap_err();
            assert!(e.to_string().contains(error), "{e}");
        }

        let client = write(
            "client.toml",
            "dead_after = \"2s\"\nrelay_port = 7100\nquiet = true\n",
        );
        let mut flags = LinkOptions {
            config: Some(client),
            ..LinkOptions::default()
        };
        flags.settings.set(&client::RELAY_PORT, 7200);
        let c = ClientSettings::resolve(&flags).unwrap();
        assert_eq!((c.relay_port, c.dead_after), (7200, Duration::from_secs(2)));
        assert!(c.quiet);
        flags.verbose = 1;
        assert!(!ClientSettings::resolve(&flags).unwrap().quiet, "-v wins");
    }

    #[test]
    fn mistakes_name_their_key_and_line() {
        let resolve = |name: &str, text: &str| {
            RelaySettings::resolve(&ServeArgs {
                config: Some(write(name, text)),
                ..ServeArgs::default()
            })
            .unwrap_err()
            .to_string()
        };
        let e = resolve(
            "dup.toml",
            "# a relay\ngrace = \"1h\"\nmax_sessions = 10\ngrace = \"2h\"\n",
        );
        assert!(
            e.ends_with("dup.toml: line 4: duplicate key `grace`"),
            "{e}"
        );
        let e = resolve("typo2.toml", "grace = \"1h\"\n\n  grcae = \"1h\"\n");
        assert!(e.contains("line 3: unknown key \"grcae\""), "{e}");
        let e = resolve("value.toml", "grace = \"1h\"\nmax_sessions = 0\n");
        assert!(
            e.contains("line 2: max_sessions: must be at least 1"),
            "{e}"
        );
        let e = resolve("syntax.toml", "grace = \"1h\"\nmax_sessions = = 3\n");
        assert!(e.contains("line 2, at `=`: "), "{e}");
    }

    #[test]
    fn a_broken_file_gives_way_to_the_kept_text_and_says_why() {
        let path = write("kept.toml", "grace = \"1h\"\n");
        let flags = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let good = RelaySettings::resolve_or_kept(&flags, None).unwrap();
        assert_eq!(
            (good.text.as_str(), good.broken.is_none()),
            ("grace = \"1h\"\n", true)
        );
        // The file is being edited: a typo.
        std::fs::write(&path, "grace = \"2h\"\ngrace = \"3h\"\n").unwrap();
        assert!(RelaySettings::resolve_or_kept(&flags, None).is_err());
        let kept = RelaySettings::resolve_or_kept(&flags, Some(&good.text)).unwrap();
        assert_eq!(kept.settings, good.settings);
        assert_eq!(kept.text, good.text);
        let why = kept.broken.unwrap().to_string();
        assert!(why.contains("line 2: duplicate key `grace`"), "{why}");
        // A kept text that no longer reads: the file's error stands.
        let e = RelaySettings::resolve_or_kept(&flags, Some("gone_key = 1\n")).unwrap_err();
        assert!(e.to_string().contains("duplicate key"), "{e}");
        // A good file wins over the kept text.
        std::fs::write(&path, "grace = \"2h\"\n").unwrap();
        let new = RelaySettings::resolve_or_kept(&flags, Some(&good.text)).unwrap();
        assert_eq!(new.settings.grace, Duration::from_secs(7200));
        assert!(new.broken.is_none());
    }

    #[test]
    fn defaults_are_the_layers_own() {
        let s = RelaySettings::resolve(&ServeArgs {
            config: Some(write("empty.toml", "")),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.grace, crate::relay::DEFAULT_GRACE);
        assert_eq!(
            s.replay_buffer,
            crate::proto::session::DEFAULT_REPLAY_CAPACITY
        );
        assert_eq!(s.listen.port(), crate::cli::DEFAULT_RELAY_PORT);
        assert_eq!(s.log_level, "info");
        assert_eq!(s.fleet.quic_route, crate::proto::fleet::QuicRoute::Direct);
        assert_eq!((s.fleet.agent_listen, s.fleet.draining), (None, false));
    }

    #[test]
    fn a_fleet_instance_reads_back_as_written() {
        let path = write(
            "fleet.toml",
            "instance = \"Relay-2.example\"\nquic_address = \"192.0.2.2:7022\"\n\
             agent_listen = \"127.0.0.1:7112\"\ndraining = true\n",
        );
        let s = RelaySettings::resolve(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.fleet.instance.as_str(), "relay-2.example");
        assert_eq!(
            s.fleet.agent_listen,
            Some("127.0.0.1:7112".parse().unwrap())
        );
        assert!(s.fleet.draining);
        let text = s.to_toml();
        assert!(text.contains("instance = \"relay-2.example\"\n"), "{text}");
        assert!(
            text.contains("quic_address = \"192.0.2.2:7022\"\n"),
            "{text}"
        );
        let printed = write("fleet-printed.toml", &text);
        let again = RelaySettings::resolve(&ServeArgs {
            config: Some(printed),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(again, s);
        // Off, the agent is the empty string, and reads back as off.
        let off = write("fleet-off.toml", "agent_listen = \"\"\n");
        let s = RelaySettings::resolve(&ServeArgs {
            config: Some(off),
            ..ServeArgs::default()
        })
        .unwrap();
        assert!(s.to_toml().contains("agent_listen = \"\"\n"));
        assert_eq!(s.fleet.agent_listen, None);
    }
}
