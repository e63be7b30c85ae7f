//! Windows' IP Helper notifications, read: what one callback's row says, as
//! a [`Report`]. The rows arrive as structs (`windows.rs` takes out the
//! fields); what they mean is decided here, on every platform, so that it
//! is tested here.
//!
//! * An interface row (`MIB_IPINTERFACE_ROW`, one per interface and IP
//!   version) added or changed gives the link's state from `Connected` (its
//!   media); deleted, the link is gone. Windows has no "administratively
//!   down" here: a disabled adapter's rows are deleted.
//! * An address row (`MIB_UNICASTIPADDRESS_ROW`) is usable once duplicate
//!   address detection has made it preferred (or deprecated: still usable);
//!   a tentative or duplicate one is reported when it becomes usable.
//! * A route row (`MIB_IPFORWARD_ROW2`): any but the host routes Windows
//!   makes for its own and broadcast addresses, and loopback routes.

use super::{LinkState, NetEvent, Report};
use std::net::IpAddr;

/// `MIB_NOTIFICATION_TYPE`: what happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `MibParameterNotification`: a field changed.
    Parameter,
    /// `MibAddInstance`.
    Added,
    /// `MibDeleteInstance`.
    Deleted,
    /// `MibInitialNotification`, or a kind not known: nothing to say.
    Other,
}

impl Change {
    /// From the callback's `notificationtype`.
    pub fn from_raw(raw: i32) -> Change {
        match raw {
            0 => Change::Parameter,
            1 => Change::Added,
            2 => Change::Deleted,
            _ => Change::Other,
        }
    }
}

/// `IpDadStateDeprecated`.
pub const DAD_DEPRECATED: i32 = 3;
/// `IpDadStatePreferred`.
pub const DAD_PREFERRED: i32 = 4;

/// What an interface row says.
pub fn interface(change: Change, index: u32, connected: bool) -> Option<Report> {
    if index == 0 {
        return None;
    }
    let state = match change {
        Change::Deleted => LinkState::Gone,
        Change::Added | Change::Parameter if connected => LinkState::Running,
        Change::Added | Change::Parameter => LinkState::NoCarrier,
        Change::Other => return None,
    };
    Some(Report::Link { index, state })
}

/// What an address row says (`addr` is `None` for a family not IP).
pub fn address(change: Change, index: u32, addr: Option<IpAddr>, dad_state: i32) -> Option<Report> {
    let addr = addr?;
    if index == 0 {
        return None;
    }
    let event = match change {
        Change::Deleted => NetEvent::AddressRemoved { index, addr },
        Change::Added | Change::Parameter
            if dad_state == DAD_PREFERRED || dad_state == DAD_DEPRECATED =>
        {
            NetEvent::AddressAdded { index, addr }
        }
        _ => return None,
    };
    Some(Report::Event(event))
}

/// What a route row says: its destination's prefix length, whether the
/// destination is IPv6, and whether it is a loopback route.
pub fn route(change: Change, prefix_len: u8, ipv6: bool, loopback: bool) -> Option<Report> {
    let host = if ipv6 { 128 } else { 32 };
    if loopback || prefix_len >= host {
        return None;
    }
    Some(Report::Event(match change {
        Change::Added | Change::Parameter => NetEvent::RouteAdded,
        Change::Deleted => NetEvent::RouteRemoved,
        Change::Other => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn interfaces_connected_disconnected_and_deleted() {
        let link = |index, state| Some(Report::Link { index, state });
        assert_eq!(
            interface(Change::from_raw(1), 7, true),
            link(7, LinkState::Running)
        );
        assert_eq!(
            interface(Change::from_raw(0), 7, false),
            link(7, LinkState::NoCarrier)
        );
        assert_eq!(
            interface(Change::from_raw(2), 7, true),
            link(7, LinkState::Gone)
        );
        assert_eq!(interface(Change::from_raw(3), 7, true), None);
        assert_eq!(interface(Change::from_raw(99), 7, true), None);
        assert_eq!(interface(Change::Added, 0, true), None);
    }

    #[test]
    fn addresses_once_usable_and_when_gone() {
        let ip: IpAddr = Ipv4Addr::new(10, 1, 2, 3).into();
        let added = Some(Report::Event(NetEvent::AddressAdded { index: 3, addr: ip }));
        assert_eq!(address(Change::Added, 3, Some(ip), DAD_PREFERRED), added);
        assert_eq!(
            address(Change::Parameter, 3, Some(ip), DAD_DEPRECATED),
            added
        );
        // Tentative (1), duplicate (2), invalid (0): not yet, or never.
        for state in 0..3 {
            assert_eq!(address(Change::Added, 3, Some(ip), state), None);
        }
        assert_eq!(
            address(Change::Deleted, 3, Some(ip), 1),
            Some(Report::Event(NetEvent::AddressRemoved {
                index: 3,
                addr: ip
            }))
        );
        assert_eq!(address(Change::Added, 3, None, DAD_PREFERRED), None);
        assert_eq!(address(Change::Other, 3, Some(ip), DAD_PREFERRED), None);
    }

    #[test]
    fn routes_but_not_host_or_loopback_ones() {
        let added = Some(Report::Event(NetEvent::RouteAdded));
        assert_eq!(route(Change::Added, 0, false, false), added);
        assert_eq!(route(Change::Parameter, 64, true, false), added);
        assert_eq!(
            route(Change::Deleted, 24, false, false),
            Some(Report::Event(NetEvent::RouteRemoved))
        );
        assert_eq!(route(Change::Added, 32, false, false), None);
        assert_eq!(route(Change::Added, 128, true, false), None);
        assert_eq!(route(Change::Added, 8, false, true), None);
        assert_eq!(route(Change::Other, 0, false, false), None);
    }
}
