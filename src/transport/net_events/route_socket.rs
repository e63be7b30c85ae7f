//! The BSD routing socket's messages, read: [`parse`] turns what one read
//! of a `PF_ROUTE` socket gave (macOS, FreeBSD) into [`Report`]s.
//!
//! The ABI (`net/route.h`, `net/if.h` of xnu and of FreeBSD), defined here
//! rather than taken from `libc` so that the parser and its tests build and
//! run on every platform; `bsd.rs` checks each offset against `libc`'s own
//! structs at compile time on the real targets. All integers are in the
//! host's byte order (little-endian on every machine these run on).
//!
//! Every message starts with its length (u16), version (u8) and type (u8).
//! What is read:
//!
//! * `RTM_IFINFO` (`if_msghdr`): a link's flags (`IFF_UP`) and its carrier
//!   (`IFF_RUNNING` on macOS; on FreeBSD `ifi_link_state`, which is where
//!   its drivers report the carrier, else `IFF_RUNNING`);
//! * `RTM_IFANNOUNCE` (FreeBSD): an interface departing;
//! * `RTM_NEWADDR`, `RTM_DELADDR` (`ifa_msghdr`): the address is the
//!   `RTAX_IFA` socket address among those that follow the header;
//! * `RTM_ADD`, `RTM_CHANGE`, `RTM_DELETE` (`rt_msghdr`): a route, unless it
//!   failed (`rtm_errno`) or is one the system makes for itself (neighbour
//!   cache entries, routes cloned per destination, local, broadcast and
//!   multicast ones), which are as noisy there as cloned routes on Linux.

use super::{LinkState, NetEvent, Report};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whose messages: the layouts agree but for a few numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// macOS (xnu).
    Darwin,
    /// FreeBSD.
    FreeBsd,
}

impl Flavour {
    /// `AF_INET6`.
    fn af_inet6(self) -> u8 {
        match self {
            Flavour::Darwin => 30,
            Flavour::FreeBsd => 28,
        }
    }

    /// What each socket address after a header is padded to.
    fn sockaddr_align(self) -> usize {
        match self {
            Flavour::Darwin => 4,
            Flavour::FreeBsd => 8,
        }
    }

    /// Route flags of the routes the system makes for itself.
    fn own_routes(self) -> u32 {
        let shared = RTF_LOCAL | RTF_BROADCAST | RTF_MULTICAST | RTF_LLINFO;
        match self {
            Flavour::Darwin => shared | RTF_WASCLONED,
            Flavour::FreeBsd => shared,
        }
    }
}

pub(super) const RTM_VERSION: u8 = 5;
pub(super) const RTM_ADD: u8 = 0x1;
pub(super) const RTM_DELETE: u8 = 0x2;
pub(super) const RTM_CHANGE: u8 = 0x3;
pub(super) const RTM_NEWADDR: u8 = 0xc;
pub(super) const RTM_DELADDR: u8 = 0xd;
pub(super) const RTM_IFINFO: u8 = 0xe;
/// FreeBSD only.
pub(super) const RTM_IFANNOUNCE: u8 = 0x11;
pub(super) const IFAN_DEPARTURE: u16 = 1;
pub(super) const IFF_UP: u32 = 0x1;
pub(super) const IFF_RUNNING: u32 = 0x40;
pub(super) const LINK_STATE_DOWN: u8 = 1;
pub(super) const LINK_STATE_UP: u8 = 2;
/// `RTF_LLINFO` on macOS, `RTF_LLDATA` on FreeBSD: a neighbour entry.
pub(super) const RTF_LLINFO: u32 = 0x400;
/// macOS only.
pub(super) const RTF_WASCLONED: u32 = 0x20000;
pub(super) const RTF_LOCAL: u32 = 0x20_0000;
pub(super) const RTF_BROADCAST: u32 = 0x40_0000;
pub(super) const RTF_MULTICAST: u32 = 0x80_0000;
/// The bit of the interface's address among the socket addresses.
pub(super) const RTA_IFA: u32 = 0x20;
/// Socket addresses a header can be followed by (`RTAX_MAX`).
const RTAX_MAX: u32 = 8;
const AF_INET: u8 = 2;

/// Where the fields are: the same in both flavours.
pub(super) mod at {
    /// `if_msghdr.ifm_flags` (i32).
    pub const IFM_FLAGS: usize = 8;
    /// `if_msghdr.ifm_index` (u16).
    pub const IFM_INDEX: usize = 12;
    /// `if_msghdr.ifm_data.ifi_link_state` (u8), FreeBSD.
    pub const IFM_LINK_STATE: usize = 20;
    /// `ifa_msghdr.ifam_addrs` (i32).
    pub const IFAM_ADDRS: usize = 4;
    /// `ifa_msghdr.ifam_index` (u16).
    pub const IFAM_INDEX: usize = 12;
    /// `sizeof(struct ifa_msghdr)`: the socket addresses follow.
    pub const IFAM_LEN: usize = 20;
    /// `if_announcemsghdr.ifan_index` (u16), FreeBSD.
    pub const IFAN_INDEX: usize = 4;
    /// `if_announcemsghdr.ifan_what` (u16), FreeBSD.
    pub const IFAN_WHAT: usize = 22;
    /// `rt_msghdr.rtm_flags` (i32).
    pub const RTM_FLAGS: usize = 8;
    /// `rt_msghdr.rtm_errno` (i32).
    pub const RTM_ERRNO: usize = 24;
}

/// What the messages in `bytes` (one read of the socket) say, in order. A
/// message that is truncated, of another version or of no interest is
/// skipped; a length that cannot be trusted ends the read. Pure,
/// allocation-free, never panics; at most one report per 4 bytes.
pub fn parse(flavour: Flavour, bytes: &[u8]) -> Reports<'_> {
    Reports {
        flavour,
        rest: bytes,
    }
}

/// Iterator over the reports in a read; see [`parse`].
#[derive(Debug, Clone)]
pub struct Reports<'a> {
    flavour: Flavour,
    rest: &'a [u8],
}

impl Iterator for Reports<'_> {
    type Item = Report;

    fn next(&mut self) -> Option<Report> {
        loop {
            let len = usize::from(u16_at(self.rest, 0)?);
            let Some(message) = self.rest.get(..len).filter(|_| len >= 4) else {
                self.rest = &[];
                return None;
            };
            self.rest = &self.rest[len..];
            if message[2] != RTM_VERSION {
                continue;
            }
            if let Some(report) = parse_message(self.flavour, message) {
                return Some(report);
            }
        }
    }
}

fn parse_message(flavour: Flavour, message: &[u8]) -> Option<Report> {
    match message[3] {
        RTM_IFINFO => parse_link(flavour, message),
        RTM_IFANNOUNCE if flavour == Flavour::FreeBsd => {
            let index = index_from(u16_at(message, at::IFAN_INDEX)?)?;
            (u16_at(message, at::IFAN_WHAT)? == IFAN_DEPARTURE).then_some(Report::Link {
                index,
                state: LinkState::Gone,
            })
        }
        ty @ (RTM_NEWADDR | RTM_DELADDR) => parse_addr(flavour, ty, message).map(Report::Event),
        ty @ (RTM_ADD | RTM_CHANGE | RTM_DELETE) => {
            let flags = u32_at(message, at::RTM_FLAGS)?;
            if u32_at(message, at::RTM_ERRNO)? != 0 || flags & flavour.own_routes() != 0 {
                return None;
            }
            Some(Report::Event(if ty == RTM_DELETE {
                NetEvent::RouteRemoved
            } else {
                NetEvent::RouteAdded
            }))
        }
        _ => None,
    }
}

fn parse_link(flavour: Flavour, message: &[u8]) -> Option<Report> {
    let flags = u32_at(message, at::IFM_FLAGS)?;
    let index = index_from(u16_at(message, at::IFM_INDEX)?)?;
    let carrier = match (flavour, message.get(at::IFM_LINK_STATE)) {
        (Flavour::FreeBsd, Some(&LINK_STATE_UP)) => true,
        (Flavour::FreeBsd, Some(&LINK_STATE_DOWN)) => false,
        // Unknown (virtual links), or macOS.
        _ => flags & IFF_RUNNING != 0,
    };
    let state = if flags & IFF_UP == 0 {
        LinkState::Down
    } else if carrier {
        LinkState::Running
    } else {
        LinkState::NoCarrier
    };
    Some(Report::Link { index, state })
}

fn parse_addr(flavour: Flavour, ty: u8, message: &[u8]) -> Option<NetEvent> {
    let present = u32_at(message, at::IFAM_ADDRS)?;
    let index = index_from(u16_at(message, at::IFAM_INDEX)?)?;
    let mut rest = message.get(at::IFAM_LEN..)?;
    let mut addr = None;
    for bit in (0..RTAX_MAX).map(|i| 1u32 << i) {
        if present & bit == 0 {
            continue;
        }
        let sa_len = usize::from(*rest.first()?);
        let sockaddr = rest.get(..sa_len)?;
        if bit == RTA_IFA {
            addr = ip_from(flavour, sockaddr);
            break;
        }
        let padded = if sa_len == 0 {
            flavour.sockaddr_align()
        } else {
            sa_len.next_multiple_of(flavour.sockaddr_align())
        };
        rest = rest.get(padded..)?;
    }
    let addr = addr?;
    Some(if ty == RTM_DELADDR {
        NetEvent::AddressRemoved { index, addr }
    } else {
        NetEvent::AddressAdded { index, addr }
    })
}

/// The address in a `sockaddr_in` or `sockaddr_in6`. A link-local IPv6
/// address comes with the interface's index in its second 16-bit word (the
/// KAME stack's "embedded scope"), which is taken out.
fn ip_from(flavour: Flavour, sockaddr: &[u8]) -> Option<IpAddr> {
    let family = *sockaddr.get(1)?;
    if family == AF_INET {
        let octets: [u8; 4] = sockaddr.get(4..8)?.try_into().ok()?;
        return Some(Ipv4Addr::from(octets).into());
    }
    if family == flavour.af_inet6() {
        let mut octets: [u8; 16] = sockaddr.get(8..24)?.try_into().ok()?;
        if octets[0] == 0xfe && octets[1] & 0xc0 == 0x80 {
            octets[2] = 0;
            octets[3] = 0;
        }
        return Some(Ipv6Addr::from(octets).into());
    }
    None
}

/// An interface index as sent (a u16); 0 names no interface.
fn index_from(raw: u16) -> Option<u32> {
    (raw != 0).then_some(u32::from(raw))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests;
