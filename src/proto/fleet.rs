//! What a session knows of the fleet its relay belongs to.
//!
//! Several relays may stand behind one address (an L4 balancer such as
//! HAProxy). A new session lands on any of them; the relay that holds it
//! tells the client its [`InstanceName`], and every reconnect names that
//! instance in the one place a balancer can read without terminating TLS:
//! the ClientHello's SNI. So the name must be a DNS name.
//!
//! A UDP balancer cannot read SNI (QUIC's Initial packets are encrypted),
//! so the relay also says how its sessions come back over QUIC
//! ([`QuicRoute`]): where they were opened (a relay reached directly), at
//! the instance's own address, or not at all (over TCP, routed by name).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Longest DNS name, in bytes (RFC 1035 §2.3.4, without the final dot).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label of a DNS name.
const MAX_LABEL_LEN: usize = 63;
/// The name of an instance whose host name offers nothing usable.
const FALLBACK_NAME: &str = "resumeproxyd";

/// The name of one relay instance: a DNS name (RFC 1123 labels of letters,
/// digits and hyphens, lower case), so that it can travel as TLS SNI and be
/// matched by a balancer. Not an address: its last label is not a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(String);

/// Why a text is not an instance name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    /// Nothing at all.
    #[error("an instance name cannot be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("{0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    /// A label is empty, too long, or has a character other than a letter,
    /// a digit or an inner hyphen.
    #[error("{0:?} is not a DNS name (labels of letters, digits and inner hyphens, at most 63 each, joined by dots)")]
    NotDns(String),
    /// It looks like an address.
    #[error("{0:?} looks like an address; an instance name is a DNS name (it travels as TLS SNI)")]
    Numeric(String),
}

impl InstanceName {
    /// The name, lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name made from a machine's host name: lower case, every character
    /// a DNS name cannot hold made a hyphen, each label trimmed to fit; a
    /// host name with nothing usable gives `resumeproxyd`.
    pub fn from_host_name(host: &str) -> InstanceName {
        let labels: Vec<String> = host
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase()
            .split('.')
            .map(|label| {
                let label: String = label
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .take(MAX_LABEL_LEN)
                    .collect();
                label.trim_matches('-').to_owned()
            })
            .filter(|label| !label.is_empty())
            .collect();
        let mut name = String::new();
        for label in labels {
            if name.len() + 1 + label.len() > MAX_NAME_LEN {
                break;
            }
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(&label);
        }
        name.parse()
            .unwrap_or_else(|_| InstanceName(FALLBACK_NAME.to_owned()))
    }
}

impl FromStr for InstanceName {
    type Err = BadName;

    fn from_str(text: &str) -> Result<InstanceName, BadName> {
        if text.is_empty() {
            return Err(BadName::Empty);
        }
        if text.len() > MAX_NAME_LEN {
            return Err(BadName::TooLong(text.to_owned()));
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !text.split('.').all(label_ok) {
            return Err(BadName::NotDns(text.to_owned()));
        }
        let last = text.rsplit('.').next().unwrap_or(text);
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadName::Numeric(text.to_owned()));
        }
        Ok(InstanceName(text.to_ascii_lowercase()))
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the sessions of a relay come back over QUIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicRoute {
    /// Where the session was opened: the relay is reached directly, not
    /// through a balancer that might send the reconnect elsewhere.
    Direct,
    /// At this address: the instance's own, beside the balancer's.
    At(SocketAddr),
    /// Not over QUIC: over TCP, where the balancer routes by the instance's
    /// name.
    TcpOnly,
}

impl QuicRoute {
    /// Where a QUIC reconnect of a session goes: `opened_at` is the
    /// relay's address the session was opened at (over either transport).
    /// `None`: not over QUIC at all.
    pub fn reconnect_to(self, opened_at: SocketAddr) -> Option<SocketAddr> {
        match self {
            QuicRoute::Direct => Some(opened_at),
            QuicRoute::At(addr) => Some(addr),
            QuicRoute::TcpOnly => None,
        }
    }
}

/// Where a session lives in its fleet, as the relay that created it says
/// (in `Reply::Created`): the instance that holds it, named as SNI by every
/// reconnect, and how its reconnects come back over QUIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The instance that holds the session.
    pub instance: InstanceName,
    /// How the session comes back over QUIC.
    pub quic: QuicRoute,
}

/// A connection that reached an instance other than the one its session
/// lives on: what the client named (as SNI), and which instance this is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this is instance {here}, not {named}, which holds it: {named} is down or gone")]
pub struct OtherInstance {
    /// The instance the client named: the session's.
    pub named: InstanceName,
    /// The instance it reached.
    pub here: InstanceName,
}

/// Whether a resume of a session this instance (`here`) does not hold went
/// astray: its connection named another instance (`sni`, the TLS server
/// name the client sent). A resume that names no instance, or this one,
/// or something that is not an instance name, is not: it is refused as a
/// session unknown here.
pub fn astray(sni: Option<&str>, here: &InstanceName) -> Option<OtherInstance> {
    let named: InstanceName = sni?.parse().ok()?;
    (named != *here).then(|| OtherInstance {
        named,
        here: here.clone(),
    })
}

/// The words of [`QuicRoute`]'s text form.
const DIRECT: &str = "direct";
const TCP_ONLY: &str = "none";

impl FromStr for QuicRoute {
    type Err = String;

    fn from_str(text: &str) -> Result<QuicRoute, String> {
        match text.trim() {
            DIRECT => Ok(QuicRoute::Direct),
            TCP_ONLY => Ok(QuicRoute::TcpOnly),
            other => match other.parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_unspecified() || addr.port() == 0 => Err(format!(
                    "{text:?} is not an address clients can send QUIC to (no unspecified address, no port 0)"
                )),
                Ok(addr) => Ok(QuicRoute::At(addr)),
                Err(_) => Err(format!(
                    "{text:?} is neither {DIRECT:?}, {TCP_ONLY:?} nor an ADDR:PORT"
                )),
            },
        }
    }
}

impl fmt::Display for QuicRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuicRoute::Direct => f.write_str(DIRECT),
            QuicRoute::At(addr) => write!(f, "{addr}"),
            QuicRoute::TcpOnly => f.write_str(TCP_ONLY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_dns_names() {
        for good in [
            "relay-1",
            "Relay-1.Example.COM",
            "r",
            "a1.b2",
            "x.y-z.example",
        ] {
            let name: InstanceName = good.parse().unwrap();
            assert_eq!(name.as_str(), good.to_ascii_lowercase());
        }
        assert_eq!("".parse::<InstanceName>(), Err(BadName::Empty));
        for bad in ["-a", "a-", "a..b", ".a", "a.", "a_b", "a b", "é", "a:1"] {
            assert!(
                matches!(bad.parse::<InstanceName>(), Err(BadName::NotDns(_))),
                "{bad}"
            );
        }
        for numeric in ["10.0.0.1", "7", "relay.1"] {
            assert!(
                matches!(numeric.parse::<InstanceName>(), Err(BadName::Numeric(_))),
                "{numeric}"
            );
        }
        let long = format!("{}.a", "a".repeat(252));
        assert!(matches!(
            long.parse::<InstanceName>(),
            Err(BadName::TooLong(_))
        ));
        assert!(format!("{}.a", "a".repeat(64))
            .parse::<InstanceName>()
            .is_err());
    }

    #[test]
    fn host_names_become_instance_names() {
        let made = |host: &str| InstanceName::from_host_name(host).to_string();
        assert_eq!(made("Bastion-2"), "bastion-2");
        assert_eq!(made("relay_1.corp.example."), "relay-1.corp.example");
        assert_eq!(made("__x__"), "x");
        assert_eq!(made(""), "resumeproxyd");
        assert_eq!(made("10.0.0.1"), "resumeproxyd");
        assert_eq!(made(&"a".repeat(100)), "a".repeat(63));
        let many = vec!["abcdefgh"; 40].join(".");
        assert!(made(&many).len() <= MAX_NAME_LEN);
        assert!(made(&many).parse::<InstanceName>().is_ok());
    }

    #[test]
    fn quic_reconnects_go_where_the_route_says() {
        let opened: SocketAddr = "192.0.2.1:7022".parse().unwrap();
        let own: SocketAddr = "192.0.2.11:7022".parse().unwrap();
        assert_eq!(QuicRoute::Direct.reconnect_to(opened), Some(opened));
        assert_eq!(QuicRoute::At(own).reconnect_to(opened), Some(own));
        assert_eq!(QuicRoute::TcpOnly.reconnect_to(opened), None);
    }

    #[test]
    fn a_resume_is_astray_only_when_it_names_another_instance() {
        let here: InstanceName = "relay-3".parse().unwrap();
        assert_eq!(astray(None, &here), None);
        assert_eq!(astray(Some("relay-3"), &here), None);
        assert_eq!(astray(Some("RELAY-3"), &here), None, "SNI is case-blind");
        assert_eq!(astray(Some("192.0.2.1"), &here), None);
        let astray = astray(Some("relay-2"), &here).expect("astray");
        assert_eq!(
            astray.to_string(),
            "this is instance relay-3, not relay-2, which holds it: relay-2 is down or gone"
        );
    }

    #[test]
    fn quic_routes_read_back_as_written() {
        for text in ["direct", "none", "192.0.2.7:7022", "[2001:db8::1]:7022"] {
            let route: QuicRoute = text.parse().unwrap();
            assert_eq!(route.to_string(), text);
        }
        assert!("sometimes".parse::<QuicRoute>().is_err());
        assert!("192.0.2.7".parse::<QuicRoute>().is_err());
        // What the wire refuses, the configuration refuses first.
        for unreachable in ["0.0.0.0:7022", "[::]:7022", "192.0.2.7:0"] {
            assert!(unreachable.parse::<QuicRoute>().is_err(), "{unreachable}");
        }
    }
}
