//! Linux's rtnetlink messages, read: [`parse`] turns the bytes of one
//! `NETLINK_ROUTE` datagram into [`Report`]s.
//!
//! The Linux ABI (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h,
//! linux/if.h), defined here rather than taken from `libc` so that the
//! parser and its tests build on every platform. All integers are in the
//! host's byte order; addresses are in network order.

use super::{LinkState, NetEvent, Report};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `sizeof(struct nlmsghdr)`: len u32, type u16, flags u16, seq u32, pid u32.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_OVERRUN: u16 = 4;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
/// `sizeof(struct ifinfomsg)`: family u8, pad u8, type u16, index i32,
/// flags u32, change u32.
const IFINFOMSG_LEN: usize = 16;
/// `sizeof(struct ifaddrmsg)`: family u8, prefixlen u8, flags u8, scope u8,
/// index u32.
const IFADDRMSG_LEN: usize = 8;
/// `sizeof(struct rtmsg)`: family, dst_len, src_len, tos, table, protocol,
/// scope, type (u8 each), flags u32.
const RTMSG_LEN: usize = 12;
/// `sizeof(struct rtattr)`: len u16, type u16.
const RTA_HDRLEN: usize = 4;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_TENTATIVE: u32 = 0x40;
const RTA_TABLE: u16 = 15;
const RT_TABLE_LOCAL: u32 = 255;
const RTM_F_CLONED: u32 = 0x200;
/// The attribute type without its `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER` bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What the messages in one netlink datagram say, in order. A message that
/// is truncated, malformed or of no interest is skipped; a length that
/// cannot be trusted ends the datagram. Pure, allocation-free, never
/// panics; at most one report per 16 bytes of input.
pub fn parse(datagram: &[u8]) -> Reports<'_> {
    Reports { rest: datagram }
}

/// Iterator over the reports in a datagram; see [`parse`].
#[derive(Debug, Clone)]
pub struct Reports<'a> {
    rest: &'a [u8],
}

impl Iterator for Reports<'_> {
    type Item = Report;

    fn next(&mut self) -> Option<Report> {
        loop {
            let header = self.rest.get(..NLMSG_HDRLEN)?;
            let len = usize::try_from(u32_at(header, 0)?).ok()?;
            let ty = u16_at(header, 4)?;
            let Some(message) = self.rest.get(..len).filter(|_| len >= NLMSG_HDRLEN) else {
                // Shorter than its own header, or longer than what arrived:
                // nothing after it can be located.
                self.rest = &[];
                return None;
            };
            let payload = message.get(NLMSG_HDRLEN..)?;
            self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
            if let Some(report) = parse_message(ty, payload) {
                return Some(report);
            }
        }
    }
}

/// One message's report, from its type and the bytes after its header.
fn parse_message(ty: u16, payload: &[u8]) -> Option<Report> {
    match ty {
        RTM_NEWLINK | RTM_DELLINK => parse_link(ty, payload),
        RTM_NEWADDR | RTM_DELADDR => parse_addr(ty, payload).map(Report::Event),
        RTM_NEWROUTE | RTM_DELROUTE => parse_route(ty, payload).map(Report::Event),
        NLMSG_OVERRUN => Some(Report::Event(NetEvent::Overrun)),
        // NLMSG_ERROR (acks), NLMSG_NOOP, NLMSG_DONE and everything else.
        _ => None,
    }
}

fn parse_link(ty: u16, payload: &[u8]) -> Option<Report> {
    let info = payload.get(..IFINFOMSG_LEN)?;
    // Bridge port reports (AF_BRIDGE) say nothing of the device itself: an
    // RTM_DELLINK of theirs is a port leaving a bridge.
    if info[0] != AF_UNSPEC {
        return None;
    }
    let index = index_from(u32_at(info, 4)?)?;
    let flags = u32_at(info, 8)?;
    let state = if ty == RTM_DELLINK {
        LinkState::Gone
    } else if flags & IFF_UP == 0 {
        LinkState::Down
    } else if flags & IFF_RUNNING == 0 {
        LinkState::NoCarrier
    } else {
        LinkState::Running
    };
    Some(Report::Link { index, state })
}

fn parse_addr(ty: u16, payload: &[u8]) -> Option<NetEvent> {
    let msg = payload.get(..IFADDRMSG_LEN)?;
    let family = msg[0];
    let mut flags = u32::from(msg[2]);
    let index = index_from(u32_at(msg, 4)?)?;
    let (mut local, mut address) = (None, None);
    for (kind, data) in attributes(payload.get(IFADDRMSG_LEN..)?) {
        match kind {
            IFA_LOCAL => local = ip_from(family, data).or(local),
            IFA_ADDRESS => address = ip_from(family, data).or(address),
            IFA_FLAGS => flags = u32_at(data, 0).unwrap_or(flags),
            _ => {}
        }
    }
    // IFA_LOCAL is the machine's own address; IFA_ADDRESS is the peer's on
    // a point-to-point link, and the only one IPv6 usually sends.
    let addr = local.or(address)?;
    if ty == RTM_DELADDR {
        return Some(NetEvent::AddressRemoved { index, addr });
    }
    if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0 {
        // Not usable yet (or ever): the kernel reports it again when it is.
        return None;
    }
    Some(NetEvent::AddressAdded { index, addr })
}

fn parse_route(ty: u16, payload: &[u8]) -> Option<NetEvent> {
    let msg = payload.get(..RTMSG_LEN)?;
    let mut table = u32::from(msg[4]);
    let flags = u32_at(msg, 8)?;
    for (kind, data) in attributes(payload.get(RTMSG_LEN..)?) {
        if kind == RTA_TABLE {
            table = u32_at(data, 0).unwrap_or(table);
        }
    }
    if table == RT_TABLE_LOCAL || flags & RTM_F_CLONED != 0 {
        return None;
    }
    Some(if ty == RTM_NEWROUTE {
        NetEvent::RouteAdded
    } else {
        NetEvent::RouteRemoved
    })
}

/// The attributes (type without flag bits, data) in `bytes`; stops at the
/// first one whose length does not fit.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(bytes, 0)?);
        let kind = u16_at(bytes, 2)? & NLA_TYPE_MASK;
        let Some(data) = bytes.get(RTA_HDRLEN..len) else {
            bytes = &[];
            return None;
        };
        bytes = bytes.get(align4(len)..).unwrap_or(&[]);
        Some((kind, data))
    })
}

fn ip_from(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(data)
            .ok()
            .map(|b| Ipv4Addr::from(b).into()),
        AF_INET6 => <[u8; 16]>::try_from(data)
            .ok()
            .map(|b| Ipv6Addr::from(b).into()),
        _ => None,
    }
}

/// An interface index as the kernel sends it (an `int`); 0 and negative
/// ones name no interface.
fn index_from(raw: u32) -> Option<u32> {
    (raw != 0 && i32::try_from(raw).is_ok()).then_some(raw)
}

fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
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
mod tests {
    use super::super::Links;
    use super::*;
    use proptest::prelude::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 231, 7, 2));

    /// A netlink message: header, fixed part, attributes (type, data).
    fn message(ty: u16, fixed: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = fixed.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        for (kind, data) in attrs {
            let len = u16::try_from(RTA_HDRLEN + data.len()).unwrap();
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(data);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap();
        let mut msg = len.to_ne_bytes().to_vec();
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&7u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
        msg.extend_from_slice(&body);
        msg
    }

    fn link(ty: u16, family: u8, index: u32, flags: u32) -> Vec<u8> {
        let mut fixed = vec![family, 0, 1, 0];
        fixed.extend_from_slice(&index.to_ne_bytes());
        fixed.extend_from_slice(&flags.to_ne_bytes());
        fixed.extend_from_slice(&0xffff_ffffu32.to_ne_bytes());
        // An IFLA_IFNAME, as the kernel sends.
        message(ty, &fixed, &[(3, b"vclient\0")])
    }

    fn addr(ty: u16, index: u32, ip: IpAddr, flags: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let family = if ip.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut fixed = vec![family, 24, flags, 0];
        fixed.extend_from_slice(&index.to_ne_bytes());
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let mut all: Vec<(u16, &[u8])> = vec![(IFA_ADDRESS, &octets), (IFA_LOCAL, &octets)];
        all.extend_from_slice(attrs);
        message(ty, &fixed, &all)
    }

    fn route(ty: u16, table: u8, flags: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut fixed = vec![AF_INET, 24, 0, 0, table, 2, 0, 1];
        fixed.extend_from_slice(&flags.to_ne_bytes());
        message(ty, &fixed, attrs)
    }

    /// The reports in `bytes`, links as `LinkUp` (running) or `LinkDown`.
    fn events(bytes: &[u8]) -> Vec<NetEvent> {
        parse(bytes)
            .map(|report| match report {
                Report::Event(event) => event,
                Report::Link { index, state } => {
                    // A link not seen before: up only if running.
                    Links::default()
                        .update(index, state)
                        .expect("a first report is a change")
                }
            })
            .collect()
    }

    fn states(bytes: &[u8]) -> Vec<(u32, LinkState)> {
        parse(bytes)
            .filter_map(|report| match report {
                Report::Link { index, state } => Some((index, state)),
                Report::Event(_) => None,
            })
            .collect()
    }

    #[test]
    fn links_running_without_carrier_down_and_removed() {
        let up = IFF_UP | IFF_RUNNING | 0x1000;
        assert_eq!(
            states(&link(RTM_NEWLINK, AF_UNSPEC, 3, up)),
            [(3, LinkState::Running)]
        );
        assert_eq!(
            states(&link(RTM_NEWLINK, AF_UNSPEC, 3, IFF_UP)),
            [(3, LinkState::NoCarrier)]
        );
        assert_eq!(
            states(&link(RTM_NEWLINK, AF_UNSPEC, 3, IFF_RUNNING)),
            [(3, LinkState::Down)]
        );
        assert_eq!(
            states(&link(RTM_DELLINK, AF_UNSPEC, 3, up)),
            [(3, LinkState::Gone)]
        );
        // Bridge port reports and impossible indexes are not about a device.
        assert!(events(&link(RTM_DELLINK, 7, 3, up)).is_empty());
        assert!(events(&link(RTM_NEWLINK, AF_UNSPEC, 0, up)).is_empty());
        assert!(events(&link(RTM_NEWLINK, AF_UNSPEC, u32::MAX, up)).is_empty());
    }

    #[test]
    fn addresses_added_and_removed() {
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(
            events(&addr(RTM_NEWADDR, 4, V4, 0, &[])),
            [NetEvent::AddressAdded { index: 4, addr: V4 }]
        );
        assert_eq!(
            events(&addr(RTM_DELADDR, 4, v6, 0, &[])),
            [NetEvent::AddressRemoved { index: 4, addr: v6 }]
        );
        // IFA_LOCAL wins over IFA_ADDRESS (the peer, on point-to-point links).
        let mut fixed = vec![AF_INET, 32, 0, 0];
        fixed.extend_from_slice(&4u32.to_ne_bytes());
        let peer = [192, 0, 2, 9];
        let local = [192, 0, 2, 1];
        let ptp = message(
            RTM_NEWADDR,
            &fixed,
            &[(IFA_ADDRESS, &peer), (IFA_LOCAL, &local)],
        );
        assert_eq!(
            events(&ptp),
            [NetEvent::AddressAdded {
                index: 4,
                addr: Ipv4Addr::new(192, 0, 2, 1).into()
            }]
        );
    }

    #[test]
    fn tentative_addresses_wait_until_they_are_usable() {
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        let tentative = u8::try_from(IFA_F_TENTATIVE).unwrap();
        assert!(events(&addr(RTM_NEWADDR, 4, v6, tentative, &[])).is_empty());
        // IFA_FLAGS (32 bits) overrides the 8-bit field.
        let flags = IFA_F_DADFAILED.to_ne_bytes();
        assert!(events(&addr(RTM_NEWADDR, 4, v6, 0, &[(IFA_FLAGS, &flags)])).is_empty());
        let none = 0u32.to_ne_bytes();
        assert_eq!(
            events(&addr(RTM_NEWADDR, 4, v6, tentative, &[(IFA_FLAGS, &none)])),
            [NetEvent::AddressAdded { index: 4, addr: v6 }]
        );
        // Going away is news whatever state it was in.
        assert_eq!(
            events(&addr(RTM_DELADDR, 4, v6, tentative, &[])),
            [NetEvent::AddressRemoved { index: 4, addr: v6 }]
        );
    }

    #[test]
    fn an_address_of_the_wrong_length_is_no_address() {
        let mut fixed = vec![AF_INET, 24, 0, 0];
        fixed.extend_from_slice(&4u32.to_ne_bytes());
        let short = message(RTM_NEWADDR, &fixed, &[(IFA_LOCAL, &[10, 0, 0])]);
        assert!(events(&short).is_empty());
        let mut fixed6 = vec![AF_INET6, 64, 0, 0];
        fixed6.extend_from_slice(&4u32.to_ne_bytes());
        let v4_in_v6 = message(RTM_NEWADDR, &fixed6, &[(IFA_ADDRESS, &[10, 0, 0, 1])]);
        assert!(events(&v4_in_v6).is_empty());
    }

    #[test]
    fn routes_outside_the_local_table() {
        assert_eq!(
            events(&route(RTM_NEWROUTE, 254, 0, &[])),
            [NetEvent::RouteAdded]
        );
        assert_eq!(
            events(&route(RTM_DELROUTE, 254, 0, &[])),
            [NetEvent::RouteRemoved]
        );
        assert!(events(&route(RTM_NEWROUTE, 255, 0, &[])).is_empty());
        assert!(events(&route(RTM_NEWROUTE, 254, RTM_F_CLONED, &[])).is_empty());
        // RTA_TABLE (32 bits) overrides the 8-bit field.
        let local = RT_TABLE_LOCAL.to_ne_bytes();
        assert!(events(&route(RTM_NEWROUTE, 252, 0, &[(RTA_TABLE, &local)])).is_empty());
        let big = 1000u32.to_ne_bytes();
        assert_eq!(
            events(&route(RTM_NEWROUTE, 252, 0, &[(RTA_TABLE, &big)])),
            [NetEvent::RouteAdded]
        );
    }

    #[test]
    fn several_messages_in_one_datagram_and_unknown_ones_skipped() {
        let mut datagram = link(RTM_NEWLINK, AF_UNSPEC, 2, 0);
        datagram.extend(message(2, &[0; 20], &[])); // NLMSG_ERROR
        datagram.extend(message(1234, &[1, 2, 3], &[]));
        datagram.extend(addr(RTM_NEWADDR, 2, V4, 0, &[]));
        datagram.extend(message(NLMSG_OVERRUN, &[], &[]));
        assert_eq!(
            events(&datagram),
            [
                NetEvent::LinkDown { index: 2 },
                NetEvent::AddressAdded { index: 2, addr: V4 },
                NetEvent::Overrun
            ]
        );
    }

    #[test]
    fn truncated_and_lying_messages_are_skipped() {
        let whole = addr(RTM_NEWADDR, 2, V4, 0, &[]);
        for cut in 0..whole.len() {
            assert!(events(&whole[..cut]).is_empty(), "cut at {cut}");
        }
        // A short fixed part, with a header that tells the truth about it.
        assert!(events(&message(RTM_NEWLINK, &[0; 8], &[])).is_empty());
        assert!(events(&message(RTM_NEWROUTE, &[0; 4], &[])).is_empty());
        // A length smaller than the header ends the datagram.
        let mut liar = link(RTM_NEWLINK, AF_UNSPEC, 2, 0);
        liar[..4].copy_from_slice(&3u32.to_ne_bytes());
        liar.extend(link(RTM_NEWLINK, AF_UNSPEC, 5, 0));
        assert!(events(&liar).is_empty());
        // An attribute longer than its message ends the attributes, not
        // the message: the fixed part still counts (a link has no
        // attribute we need).
        let mut long_attr = link(RTM_NEWLINK, AF_UNSPEC, 2, 0);
        let at = NLMSG_HDRLEN + IFINFOMSG_LEN;
        long_attr[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert_eq!(events(&long_attr), [NetEvent::LinkDown { index: 2 }]);
        // ... and an address whose address attribute is cut has no address.
        let mut cut_addr = addr(RTM_NEWADDR, 2, V4, 0, &[]);
        let at = NLMSG_HDRLEN + IFADDRMSG_LEN;
        cut_addr[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert!(events(&cut_addr).is_empty());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let n = parse(&bytes).count();
            prop_assert!(n <= bytes.len() / NLMSG_HDRLEN);
        }

        #[test]
        fn damaged_real_messages_never_panic(
            at in 0usize..200,
            value in any::<u8>(),
            cut in 0usize..200,
        ) {
            let mut datagram = link(RTM_NEWLINK, AF_UNSPEC, 2, IFF_UP | IFF_RUNNING);
            datagram.extend(addr(RTM_NEWADDR, 2, "2001:db8::1".parse().unwrap(), 0, &[]));
            datagram.extend(route(RTM_NEWROUTE, 254, 0, &[(RTA_TABLE, &[1, 2, 3, 4])]));
            let len = datagram.len();
            datagram[at % len] = value;
            datagram.truncate(cut.max(1) * len / 200);
            prop_assert!(parse(&datagram).count() <= datagram.len() / NLMSG_HDRLEN);
        }
    }
}
