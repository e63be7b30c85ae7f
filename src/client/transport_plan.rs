//! Which transports one connection attempt tries: the user's choice
//! ([`TransportChoice`]), what this client (and those before it) learned of
//! UDP on the way to this relay, and whether the relay lets the session come
//! back over QUIC at all. Pure: the [`super::connector`] acts on the
//! `Plan`.

use super::udp_memory::{self, Blocked};
use std::time::Instant;

/// Which transports the client may use.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// TLS over TCP only: where UDP is blocked.
    Tcp,
    /// QUIC only: roams across address changes without a resume.
    Quic,
    /// Race QUIC and TCP, keep what connects first.
    #[default]
    Auto,
}

/// What one connection attempt tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// TCP only.
    Tcp,
    /// QUIC only.
    Quic,
    /// QUIC with a head start, then TCP.
    Race,
}

/// The plan for an attempt at `now`, given the user's choice, when UDP
/// was last found blocked (if it was), and whether the session may come
/// back over QUIC at all (its relay may say it may not: see
/// [`Home`](crate::proto::fleet::Home)).
pub(crate) fn plan(
    choice: TransportChoice,
    udp_blocked: Option<Blocked<Instant>>,
    now: Instant,
    quic_allowed: bool,
) -> Plan {
    if !quic_allowed {
        return Plan::Tcp;
    }
    match choice {
        TransportChoice::Tcp => Plan::Tcp,
        TransportChoice::Quic => Plan::Quic,
        TransportChoice::Auto => match udp_blocked {
            Some(blocked) if now < retry_at(blocked) => Plan::Tcp,
            _ => Plan::Race,
        },
    }
}

/// When UDP found `blocked` is tried again.
pub(crate) fn retry_at(blocked: Blocked<Instant>) -> Instant {
    blocked.at + udp_memory::retry_after(blocked.streak)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(at: Instant, streak: u32) -> Option<Blocked<Instant>> {
        Some(Blocked { at, streak })
    }

    #[test]
    fn auto_races_unless_udp_was_found_blocked_lately() {
        let now = Instant::now();
        let auto = TransportChoice::Auto;
        assert_eq!(plan(auto, None, now, true), Plan::Race);
        assert_eq!(plan(auto, blocked(now, 1), now, true), Plan::Tcp);
        // The first judgement holds for seconds, many in a row for longer.
        let soon = now + udp_memory::RETRY_FIRST;
        assert_eq!(plan(auto, blocked(now, 1), soon, true), Plan::Race);
        assert_eq!(plan(auto, blocked(now, 3), soon, true), Plan::Tcp);
        let later = now + udp_memory::RETRY_LONGEST;
        assert_eq!(plan(auto, blocked(now, 50), later, true), Plan::Race);
    }

    #[test]
    fn explicit_choices_are_kept() {
        let now = Instant::now();
        assert_eq!(plan(TransportChoice::Tcp, None, now, true), Plan::Tcp);
        assert_eq!(
            plan(TransportChoice::Quic, blocked(now, 1), now, true),
            Plan::Quic
        );
    }

    #[test]
    fn a_session_without_a_quic_route_comes_back_over_tcp_whatever_the_choice() {
        let now = Instant::now();
        for choice in [
            TransportChoice::Tcp,
            TransportChoice::Quic,
            TransportChoice::Auto,
        ] {
            assert_eq!(plan(choice, None, now, false), Plan::Tcp, "{choice:?}");
        }
    }
}
