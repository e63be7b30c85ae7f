//! Where the relay may connect: its one default target, plus the named
//! targets of `--allow` (bastion mode). Nothing else — the relay is not an
//! open proxy. Pure: the caller connects.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A target named by `--allow HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedTarget {
    /// Host name or address, as written (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for AllowedTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<AllowedTarget, String> {
        let bad = || format!("{text:?} is not HOST:PORT");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(['[', ']', ' ']) {
            return Err(bad());
        }
        if host.contains(':') && !text.starts_with('[') {
            return Err(format!("{text:?}: write an IPv6 address as [ADDR]:PORT"));
        }
        let port = port.parse().map_err(|_| bad())?;
        Ok(AllowedTarget {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for AllowedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::units::host_port(&self.host, self.port))
    }
}

/// Where one session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The relay's default target.
    Default(SocketAddr),
    /// An allowed named target (resolved when connecting).
    Named(AllowedTarget),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Default(addr) => addr.fmt(f),
            Target::Named(target) => target.fmt(f),
        }
    }
}

/// Why a client may not go where it asked; [`Display`](fmt::Display) is the
/// reason its user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    /// No host named, and a port other than the default target's.
    #[error("this relay forwards only to port {default_port} (its --target), not to port {port}")]
    OtherPort {
        /// The port asked for.
        port: u16,
        /// The default target's port.
        default_port: u16,
    },
    /// A named target, and this relay allows none.
    #[error("this relay forwards only to its own target, not to {0} (the relay's operator can allow it with --allow {0})")]
    OnlyDefault(AllowedTarget),
    /// A named target that is not among those allowed.
    #[error("{0} is not among this relay's allowed targets (--allow)")]
    NotAllowed(AllowedTarget),
}

/// The relay's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Where a client that names no host goes (`--target`).
    pub default: SocketAddr,
    /// Named targets clients may ask for (`--allow`).
    pub allowed: Vec<AllowedTarget>,
}

impl TargetPolicy {
    /// Where a client asking for `host` (empty: the default target) and
    /// `port` may go, or why not.
    pub fn decide(&self, host: &str, port: u16) -> Result<Target, TargetRefused> {
        if host.is_empty() {
            if port == self.default.port() {
                return Ok(Target::Default(self.default));
            }
            return Err(TargetRefused::OtherPort {
                port,
                default_port: self.default.port(),
            });
        }
        let wanted = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Some(allowed) = self
            .allowed
            .iter()
            .find(|a| a.port == port && a.host.eq_ignore_ascii_case(wanted))
        {
            return Ok(Target::Named(allowed.clone()));
        }
        let named = AllowedTarget {
            host: wanted.to_owned(),
            port,
        };
        if self.allowed.is_empty() {
            Err(TargetRefused::OnlyDefault(named))
        } else {
            Err(TargetRefused::NotAllowed(named))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_and_allowed_targets_are_reachable() {
        let policy = TargetPolicy {
            default: "127.0.0.1:22".parse().unwrap(),
            allowed: vec![
                "db.internal:22".parse().unwrap(),
                "[fd00::5]:2222".parse().unwrap(),
            ],
        };
        assert_eq!(
            policy.decide("", 22),
            Ok(Target::Default("127.0.0.1:22".parse().unwrap()))
        );
        assert_eq!(
            policy.decide("", 23),
            Err(TargetRefused::OtherPort {
                port: 23,
                default_port: 22
            })
        );
        assert!(policy
            .decide("", 23)
            .unwrap_err()
            .to_string()
            .contains("only to port 22"));
        assert_eq!(
            policy.decide("DB.internal", 22).unwrap().to_string(),
            "db.internal:22"
        );
        assert_eq!(
            policy.decide("[fd00::5]", 2222).unwrap().to_string(),
            "[fd00::5]:2222"
        );
        assert!(matches!(
            policy.decide("db.internal", 23),
            Err(TargetRefused::NotAllowed(_))
        ));
        assert!(policy
            .decide("db.internal", 23)
            .unwrap_err()
            .to_string()
            .contains("not among"));
        let closed = TargetPolicy {
            allowed: vec![],
            ..policy
        };
        let refusal = closed.decide("evil.example", 25).unwrap_err().to_string();
        assert!(refusal.contains("--allow evil.example:25"), "{refusal}");
    }

    #[test]
    fn allow_entries_parse_strictly() {
        assert!("host".parse::<AllowedTarget>().is_err());
        assert!(":22".parse::<AllowedTarget>().is_err());
        assert!("h:port".parse::<AllowedTarget>().is_err());
        assert!("fd00::5:22".parse::<AllowedTarget>().is_err());
        assert_eq!(
            "h.example:2200"
                .parse::<AllowedTarget>()
                .unwrap()
                .to_string(),
            "h.example:2200"
        );
    }
}
