//! The relay's settings: the flags of `resumeproxyd` (and of
//! `resumeproxyd check-config`) and the keys of
//! `/etc/resumeproxy/resumeproxyd.toml`, in the order `--help` lists them.

use super::kinds::{Count, FilePath, List, Optional, Parsed, Size, Span, Switch, Words};
use super::{AnySetting, Fallback, Flag, Setting, Table};
use crate::cli::DEFAULT_RELAY_PORT;
use crate::proto::fleet::{InstanceName, QuicRoute};
use crate::proto::session::DEFAULT_REPLAY_CAPACITY;
use crate::proto::wire::{MAX_DATA_LEN, MIN_DATA_LEN};
use crate::relay::target_policy::AllowedTarget;
use crate::relay::{Limits, DEFAULT_GRACE};
use crate::transport::identity::default_key_path;
use std::net::{IpAddr, SocketAddr};

/// `listen`, `--listen`.
pub const LISTEN: Setting<Parsed<SocketAddr>> = Setting {
    key: "listen",
    flag: Flag::Long("listen"),
    kind: Parsed::new("ADDR:PORT"),
    doc: "Address and port to listen on for clients (TCP for TLS, UDP for QUIC)",
    default: Fallback::Is(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_RELAY_PORT))),
    reload: false,
};

/// `target`, `--target`.
pub const TARGET: Setting<Parsed<SocketAddr>> = Setting {
    key: "target",
    flag: Flag::Long("target"),
    kind: Parsed::new("ADDR:PORT"),
    doc: "Where sessions go by default; clients that name no host may ask only for this port",
    default: Fallback::Is(|| SocketAddr::from(([127, 0, 0, 1], 22))),
    reload: true,
};

/// `allow`, `--allow`.
pub const ALLOW: Setting<List<Parsed<AllowedTarget>>> = Setting {
    key: "allow",
    flag: Flag::Long("allow"),
    kind: List(Parsed::new("HOST:PORT")),
    doc: "Also allow clients to ask for this target by name (bastion mode); repeatable, adds to \
          the config file's list. Nothing else is ever connected to",
    default: Fallback::Is(Vec::new),
    reload: true,
};

/// `grace`, `--grace`.
pub const GRACE: Setting<Span> = Setting {
    key: "grace",
    flag: Flag::Long("grace"),
    kind: Span::ANY,
    doc: "Keep a session whose client is away this long, then close its sshd connection",
    default: Fallback::Is(|| DEFAULT_GRACE),
    reload: true,
};

/// `key_file`, `--key-file`.
pub const KEY_FILE: Setting<FilePath> = Setting {
    key: "key_file",
    flag: Flag::Long("key-file"),
    kind: FilePath { value_name: "PATH" },
    doc: "The relay's private key, made (mode 0600) on first start if missing",
    default: Fallback::Computed(
        "$STATE_DIRECTORY/relay.key under systemd, /var/lib/resumeproxy/relay.key as root, else \
         ~/.local/state/resumeproxy/relay.key",
        default_key_path,
    ),
    reload: false,
};

/// `instance`, `--instance`.
pub const INSTANCE: Setting<Parsed<InstanceName>> = Setting {
    key: "instance",
    flag: Flag::Long("instance"),
    kind: Parsed::new("NAME"),
    doc: "This relay's name among the relays behind one balancer: a DNS name, told to each new \
          session's client, which sends it as TLS SNI at every reconnect so that the balancer \
          routes the reconnect back here. Unique in the fleet; never renamed while it holds \
          sessions",
    default: Fallback::Computed("the machine's host name, made a DNS name", || {
        InstanceName::from_host_name(&host_name())
    }),
    reload: false,
};

/// `quic_address`, `--quic-address`.
pub const QUIC_ADDRESS: Setting<Parsed<QuicRoute>> = Setting {
    key: "quic_address",
    flag: Flag::Long("quic-address"),
    kind: Parsed::new("ADDR:PORT|direct|none"),
    doc: "Where this relay's clients reconnect over QUIC: direct (where they opened the session: \
          a relay reached directly), ADDR:PORT (this instance's own address, for a relay behind \
          a balancer, which cannot route UDP by instance), or none (over TCP only, routed by the \
          instance's name). A new value applies to new sessions",
    default: Fallback::Is(|| QuicRoute::Direct),
    reload: true,
};

/// `agent_listen`, `--agent-listen`.
pub const AGENT_LISTEN: Setting<Optional<Parsed<SocketAddr>>> = Setting {
    key: "agent_listen",
    flag: Flag::Long("agent-listen"),
    kind: Optional(Parsed::new("ADDR:PORT")),
    doc: "Answer HAProxy's agent-check on this TCP address: \"up ready\", or \"up drain\" while \
          draining, then close. Off when empty",
    default: Fallback::Is(|| None),
    reload: false,
};

/// `draining`, `--draining`.
pub const DRAINING: Setting<Switch> = Setting {
    key: "draining",
    flag: Flag::Long("draining"),
    kind: Switch,
    doc: "Take no new sessions (each is refused as busy, so its client tries again and the \
          balancer sends it to another instance) while every session here goes on and resumes \
          here. Set in the config file and reload (SIGHUP) to drain an instance",
    default: Fallback::Is(|| false),
    reload: true,
};

/// `proxy_protocol_from`, `--proxy-protocol-from`.
pub const PROXY_PROTOCOL_FROM: Setting<List<Parsed<IpAddr>>> = Setting {
    key: "proxy_protocol_from",
    flag: Flag::Long("proxy-protocol-from"),
    kind: List(Parsed::new("ADDR")),
    doc: "A balancer that starts each TCP connection with a PROXY protocol header, v1 or v2 \
          (HAProxy's send-proxy-v2, nginx's proxy_protocol on): the client address it gives \
          counts for that connection in every per-source limit and in the log; its connections \
          without one are closed. Repeatable, adds to the config file's list",
    default: Fallback::Is(Vec::new),
    reload: true,
};

/// `handshake_timeout`, `--handshake-timeout`.
pub const HANDSHAKE_TIMEOUT: Setting<Span> = Setting {
    key: "handshake_timeout",
    flag: Flag::Long("handshake-timeout"),
    kind: Span::ANY,
    doc: "Longest time a connection may take from accept to a complete handshake, TLS and request",
    default: Fallback::Is(|| Limits::default().handshake_timeout),
    reload: true,
};

/// `max_sessions`, `--max-sessions`.
pub const MAX_SESSIONS: Setting<Count> = Setting {
    key: "max_sessions",
    flag: Flag::Long("max-sessions"),
    kind: Count { min: 1 },
    doc: "Most sessions at once, connected or not",
    default: Fallback::Is(|| Limits::default().max_sessions),
    reload: true,
};

/// `max_detached`, `--max-detached`.
pub const MAX_DETACHED: Setting<Count> = Setting {
    key: "max_detached",
    flag: Flag::Long("max-detached"),
    kind: Count { min: 1 },
    doc: "Most sessions whose client is away, at once; new sessions are refused beyond it",
    default: Fallback::Is(|| Limits::default().max_detached),
    reload: true,
};

/// `max_sessions_per_source`, `--max-sessions-per-source`.
pub const MAX_SESSIONS_PER_SOURCE: Setting<Count> = Setting {
    key: "max_sessions_per_source",
    flag: Flag::Long("max-sessions-per-source"),
    kind: Count { min: 1 },
    doc: "Most sessions from one client address, connected or not: one source cannot take every \
          session",
    default: Fallback::Is(|| Limits::default().max_sessions_per_source),
    reload: true,
};

/// `max_handshakes`, `--max-handshakes`.
pub const MAX_HANDSHAKES: Setting<Count> = Setting {
    key: "max_handshakes",
    flag: Flag::Long("max-handshakes"),
    kind: Count { min: 1 },
    doc: "Most connections still in their handshake, at once",
    default: Fallback::Is(|| Limits::default().max_handshakes),
    reload: true,
};

/// `max_handshakes_per_source`, `--max-handshakes-per-source`.
pub const MAX_HANDSHAKES_PER_SOURCE: Setting<Count> = Setting {
    key: "max_handshakes_per_source",
    flag: Flag::Long("max-handshakes-per-source"),
    kind: Count { min: 1 },
    doc: "Most connections still in their handshake from one source address; as many more wait \
          for a place, and one that has sent nothing for a second gives its place up to them",
    default: Fallback::Is(|| Limits::default().max_handshakes_per_source),
    reload: true,
};

/// `replay_buffer`, `--replay-buffer`.
pub const REPLAY_BUFFER: Setting<Size> = Setting {
    key: "replay_buffer",
    flag: Flag::Long("replay-buffer"),
    kind: Size {
        min: 64 << 10,
        max: 1 << 30,
    },
    doc: "Unacknowledged bytes kept per session for replay towards the client; reading from sshd \
          pauses when it is full. A new value applies to new sessions",
    default: Fallback::Is(|| DEFAULT_REPLAY_CAPACITY),
    reload: true,
};

/// `max_frame`, `--max-frame`.
pub const MAX_FRAME: Setting<Size> = Setting {
    key: "max_frame",
    flag: Flag::Long("max-frame"),
    kind: Size {
        min: MIN_DATA_LEN as u64,
        max: MAX_DATA_LEN as u64,
    },
    doc: "Largest data frame either side may send. A new value applies to new sessions",
    default: Fallback::Is(|| MAX_DATA_LEN),
    reload: true,
};

/// `log_level`; on the command line, `-v` and `-vv`.
pub const LOG_LEVEL: Setting<Words> = Setting {
    key: "log_level",
    flag: Flag::FileOnly,
    kind: Words {
        value_name: "LEVEL",
        words: &["error", "warn", "info", "debug", "trace"],
    },
    doc: "What the log shows; -v (debug) and -vv (trace) on the command line win over it",
    default: Fallback::Is(|| "info".to_owned()),
    reload: false,
};

/// The relay's settings, as a [`Table`].
pub struct RelayTable;

impl Table for RelayTable {
    fn all() -> &'static [&'static dyn AnySetting] {
        &[
            &LISTEN,
            &TARGET,
            &ALLOW,
            &GRACE,
            &KEY_FILE,
            &INSTANCE,
            &QUIC_ADDRESS,
            &AGENT_LISTEN,
            &DRAINING,
            &PROXY_PROTOCOL_FROM,
            &HANDSHAKE_TIMEOUT,
            &MAX_SESSIONS,
            &MAX_DETACHED,
            &MAX_SESSIONS_PER_SOURCE,
            &MAX_HANDSHAKES,
            &MAX_HANDSHAKES_PER_SOURCE,
            &REPLAY_BUFFER,
            &MAX_FRAME,
            &LOG_LEVEL,
        ]
    }
}

/// The machine's host name (`gethostname`), empty if it cannot be had.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
