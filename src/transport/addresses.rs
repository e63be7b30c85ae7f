//! The client's own addresses: which one the route to the relay leaves from,
//! and whether an address is still the machine's.
//!
//! A laptop that changes networks loses the address its connections were
//! made from. A TCP connection from a deleted address is dead — nothing it
//! sends can be answered — but it goes silent rather than failing, so
//! without a look at the addresses the client would notice only after
//! `--dead-after`. [`gone`] notices within [`CHECK_INTERVAL`]. (QUIC
//! instead follows the route to its new source; see [`crate::transport::quic`].)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// How often the addresses are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The wildcard address of `addr`'s family, port 0.
pub fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// The local address the kernel would send from to reach `relay` now, if
/// there is a route (asks the routing table; sends nothing).
pub fn route_source(relay: SocketAddr) -> Option<IpAddr> {
    let socket = UdpSocket::bind(unspecified(relay)).ok()?;
    socket.connect(relay).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Whether `ip` is one of this machine's addresses (binding to it works).
pub fn is_local(ip: IpAddr) -> bool {
    match UdpSocket::bind((ip, 0)) {
        Ok(_) => true,
        // Only "not an address of ours" counts: any other failure (out of
        // descriptors, say) says nothing about the address.
        Err(e) => e.raw_os_error() != Some(super::errno::EADDRNOTAVAIL),
    }
}

/// Resolves once `ip` is no longer an address of this machine.
pub async fn gone(ip: IpAddr) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !is_local(ip) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_a_foreign_address_is_not() {
        assert!(is_local(Ipv4Addr::LOCALHOST.into()));
        // TEST-NET-3 (RFC 5737) is nobody's address.
        assert!(!is_local(Ipv4Addr::new(203, 0, 113, 77).into()));
    }

    #[test]
    fn the_route_to_loopback_leaves_from_loopback() {
        let relay = SocketAddr::from((Ipv4Addr::LOCALHOST, 7022));
        assert_eq!(route_source(relay), Some(Ipv4Addr::LOCALHOST.into()));
    }
}
