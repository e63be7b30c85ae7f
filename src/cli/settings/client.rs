//! The client's settings: the flags of `resumeproxy` (and of `resumeproxy
//! wrap`) and the keys of `~/.config/resumeproxy/config.toml`, in the order
//! `--help` lists them.

use super::kinds::{Choice, FilePath, Port, Span, Switch};
use super::{AnySetting, Fallback, Flag, Setting, Table};
use crate::cli::DEFAULT_RELAY_PORT;
use crate::client::direct::Fallback as NoRelayFallback;
use crate::client::transport_plan::TransportChoice;
use crate::client::DEFAULT_CONNECT_TIMEOUT;
use crate::proto::session::{DEFAULT_DEAD_AFTER, MAX_DEAD_AFTER, MIN_DEAD_AFTER};

/// `relay_port`, `--relay-port`.
pub const RELAY_PORT: Setting<Port> = Setting {
    key: "relay_port",
    flag: Flag::Long("relay-port"),
    kind: Port,
    doc: "Port of the resumeproxyd relay on HOST",
    default: Fallback::Is(|| DEFAULT_RELAY_PORT),
    reload: false,
};

/// `dead_after`, `--dead-after`.
pub const DEAD_AFTER: Setting<Span> = Setting {
    key: "dead_after",
    flag: Flag::Long("dead-after"),
    kind: Span {
        min: MIN_DEAD_AFTER,
        max: MAX_DEAD_AFTER,
    },
    doc: "Abandon a link that has delivered nothing for this long (heartbeats flow every quarter \
          of it while idle, every sixteenth over QUIC), or whose data has waited this long for \
          the relay's acknowledgement while its heartbeats arrive (large packets lost on the \
          way), and reconnect",
    default: Fallback::Is(|| DEFAULT_DEAD_AFTER),
    reload: false,
};

/// `transport`, `--transport`.
pub const TRANSPORT: Setting<Choice<TransportChoice>> = Setting {
    key: "transport",
    flag: Flag::Long("transport"),
    kind: Choice::new("KIND"),
    doc: "How to reach the relay: tcp (TLS over TCP), quic (UDP; roams across address changes \
          without a resume), or auto (race both, QUIC first; fall back to TCP where UDP is \
          blocked)",
    default: Fallback::Is(TransportChoice::default),
    reload: false,
};

/// `connect_timeout`, `--connect-timeout`.
pub const CONNECT_TIMEOUT: Setting<Span> = Setting {
    key: "connect_timeout",
    flag: Flag::Long("connect-timeout"),
    kind: Span::ANY,
    doc: "At start, retry a connection that is refused, reset or cut (with jittered backoff, \
          over every transport allowed) until this long has passed, then give up with the last \
          attempt's reason",
    default: Fallback::Is(|| DEFAULT_CONNECT_TIMEOUT),
    reload: false,
};

/// `fallback`, `--fallback`.
pub const FALLBACK: Setting<Choice<NoRelayFallback>> = Setting {
    key: "fallback",
    flag: Flag::Long("fallback"),
    kind: Choice::new("MODE"),
    doc: "When no relay answers at the start (its port refuses, or nothing answers within \
          --connect-timeout): none (give up, exit 255), or direct (connect straight to HOST:PORT \
          as ssh would without a ProxyCommand, and say so in one line; that connection does not \
          survive a network break, and ssh still authenticates the host). Never once a session \
          was opened through a relay. For `Host *` in ssh_config",
    default: Fallback::Is(NoRelayFallback::default),
    reload: false,
};

/// `known_relays`, `--known-relays`.
pub const KNOWN_RELAYS: Setting<FilePath> = Setting {
    key: "known_relays",
    flag: Flag::Long("known-relays"),
    kind: FilePath { value_name: "FILE" },
    doc: "File of pinned relay keys. A relay not named in it is pinned on first use; a relay \
          whose key changed is refused",
    default: Fallback::Computed(
        "$XDG_CONFIG_HOME/resumeproxy/known_relays, or ~/.config/resumeproxy/known_relays",
        crate::client::known_relays::default_path,
    ),
    reload: false,
};

/// `quiet`, `-q`, `--quiet`.
pub const QUIET: Setting<Switch> = Setting {
    key: "quiet",
    flag: Flag::LongAndShort("quiet", 'q'),
    kind: Switch,
    doc: "Print only errors: no line when the link is lost or resumed",
    default: Fallback::Is(|| false),
    reload: false,
};

/// The client's settings, as a [`Table`].
pub struct ClientTable;

impl Table for ClientTable {
    fn all() -> &'static [&'static dyn AnySetting] {
        &[
            &RELAY_PORT,
            &DEAD_AFTER,
            &TRANSPORT,
            &CONNECT_TIMEOUT,
            &FALLBACK,
            &KNOWN_RELAYS,
            &QUIET,
        ]
    }
}
