//! Messages built byte by byte to the layouts of xnu's and FreeBSD's
//! headers (sizes as `libc` gives them for each target; `bsd.rs` checks
//! the offsets the parser uses against `libc` when built there).

use super::*;
use proptest::prelude::*;
use Flavour::{Darwin, FreeBsd};

const AF_LINK: u8 = 18;

/// A message of `len` bytes (the header's own size) of type `ty`, with
/// `fields` written at their offsets, then `tail`.
fn message(ty: u8, len: usize, fields: &[(usize, &[u8])], tail: &[u8]) -> Vec<u8> {
    let mut msg = vec![0; len];
    msg[2] = RTM_VERSION;
    msg[3] = ty;
    for (at, bytes) in fields {
        msg[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    msg.extend_from_slice(tail);
    let total = u16::try_from(msg.len()).unwrap();
    msg[..2].copy_from_slice(&total.to_ne_bytes());
    msg
}

/// `RTM_IFINFO`: `sizeof(struct if_msghdr)` is 112 on macOS, 168 on FreeBSD.
fn ifinfo(flavour: Flavour, index: u16, flags: u32, link_state: u8) -> Vec<u8> {
    let len = if flavour == Darwin { 112 } else { 168 };
    message(
        RTM_IFINFO,
        len,
        &[
            (at::IFM_FLAGS, &flags.to_ne_bytes()),
            (at::IFM_INDEX, &index.to_ne_bytes()),
            (at::IFM_LINK_STATE, &[link_state]),
        ],
        &[],
    )
}

fn ifannounce(index: u16, what: u16) -> Vec<u8> {
    message(
        RTM_IFANNOUNCE,
        24,
        &[
            (at::IFAN_INDEX, &index.to_ne_bytes()),
            (6, b"em0"),
            (at::IFAN_WHAT, &what.to_ne_bytes()),
        ],
        &[],
    )
}

fn sockaddr_in(ip: [u8; 4]) -> Vec<u8> {
    let mut sa = vec![16, AF_INET, 0, 0];
    sa.extend_from_slice(&ip);
    sa.extend_from_slice(&[0; 8]);
    sa
}

fn sockaddr_in6(flavour: Flavour, ip: Ipv6Addr) -> Vec<u8> {
    let mut sa = vec![28, flavour.af_inet6(), 0, 0, 0, 0, 0, 0];
    sa.extend_from_slice(&ip.octets());
    sa.extend_from_slice(&[0; 4]);
    sa
}

/// A `sockaddr_dl` naming `en0` (RTAX_IFP).
fn sockaddr_dl(index: u16) -> Vec<u8> {
    let mut sa = vec![20, AF_LINK];
    sa.extend_from_slice(&index.to_ne_bytes());
    sa.extend_from_slice(&[6, 3, 0, 0]);
    sa.extend_from_slice(b"en0");
    sa.resize(20, 0);
    sa
}

/// `RTM_NEWADDR`/`RTM_DELADDR` with socket addresses for the bits of
/// `present`, in bit order, each padded as the flavour pads.
fn ifaddr(flavour: Flavour, ty: u8, index: u16, addrs: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let present: u32 = addrs.iter().map(|(bit, _)| bit).sum();
    let mut tail = Vec::new();
    for (_, sa) in addrs {
        tail.extend_from_slice(sa);
        let padded = if sa.is_empty() || sa[0] == 0 {
            flavour.sockaddr_align().max(sa.len())
        } else {
            sa.len().next_multiple_of(flavour.sockaddr_align())
        };
        tail.resize(tail.len() + padded - sa.len(), 0);
    }
    message(
        ty,
        at::IFAM_LEN,
        &[
            (at::IFAM_ADDRS, &present.to_ne_bytes()),
            (at::IFAM_INDEX, &index.to_ne_bytes()),
        ],
        &tail,
    )
}

/// `RTM_ADD` and co.: `sizeof(struct rt_msghdr)` is 92 on macOS, 152 on
/// FreeBSD; a default route's destination follows.
fn route(flavour: Flavour, ty: u8, flags: u32, errno: i32) -> Vec<u8> {
    let len = if flavour == Darwin { 92 } else { 152 };
    message(
        ty,
        len,
        &[
            (4, &3u16.to_ne_bytes()),
            (at::RTM_FLAGS, &flags.to_ne_bytes()),
            (12, &1u32.to_ne_bytes()),
            (at::RTM_ERRNO, &errno.to_ne_bytes()),
        ],
        &sockaddr_in([0, 0, 0, 0]),
    )
}

fn reports(flavour: Flavour, bytes: &[u8]) -> Vec<Report> {
    parse(flavour, bytes).collect()
}

fn link(index: u32, state: LinkState) -> Vec<Report> {
    vec![Report::Link { index, state }]
}

fn event(event: NetEvent) -> Vec<Report> {
    vec![Report::Event(event)]
}

#[test]
fn links_on_macos_carry_their_carrier_in_iff_running() {
    let up = IFF_UP | IFF_RUNNING | 0x8800;
    use LinkState::*;
    assert_eq!(reports(Darwin, &ifinfo(Darwin, 4, up, 0)), link(4, Running));
    assert_eq!(
        reports(Darwin, &ifinfo(Darwin, 4, IFF_UP, 0)),
        link(4, NoCarrier)
    );
    assert_eq!(
        reports(Darwin, &ifinfo(Darwin, 4, IFF_RUNNING, 0)),
        link(4, Down)
    );
    // Byte 20 is not a link state on macOS.
    assert_eq!(
        reports(Darwin, &ifinfo(Darwin, 4, IFF_UP, LINK_STATE_UP)),
        link(4, NoCarrier)
    );
    assert!(reports(Darwin, &ifinfo(Darwin, 0, up, 0)).is_empty());
}

#[test]
fn links_on_freebsd_carry_their_carrier_in_the_link_state() {
    use LinkState::*;
    let running = IFF_UP | IFF_RUNNING;
    assert_eq!(
        reports(FreeBsd, &ifinfo(FreeBsd, 2, IFF_UP, LINK_STATE_UP)),
        link(2, Running)
    );
    assert_eq!(
        reports(FreeBsd, &ifinfo(FreeBsd, 2, running, LINK_STATE_DOWN)),
        link(2, NoCarrier)
    );
    // Unknown (a tun, a bridge): IFF_RUNNING says.
    assert_eq!(
        reports(FreeBsd, &ifinfo(FreeBsd, 2, running, 0)),
        link(2, Running)
    );
    assert_eq!(
        reports(FreeBsd, &ifinfo(FreeBsd, 2, 0, LINK_STATE_UP)),
        link(2, Down)
    );
    // An interface that departs is gone; one that arrives is announced
    // again by RTM_IFINFO.
    assert_eq!(reports(FreeBsd, &ifannounce(7, 1)), link(7, Gone));
    assert!(reports(FreeBsd, &ifannounce(7, 0)).is_empty());
    // The same type number means something else on macOS.
    assert!(reports(Darwin, &ifannounce(7, 1)).is_empty());
}

#[test]
fn addresses_come_from_the_interfaces_address_among_the_others() {
    let v4 = Ipv4Addr::new(192, 168, 1, 23);
    for flavour in [Darwin, FreeBsd] {
        // Netmask (truncated, as the kernel sends it), interface name,
        // address, broadcast.
        let added = ifaddr(
            flavour,
            RTM_NEWADDR,
            5,
            &[
                (0x4, vec![7, 0, 0, 0, 255, 255, 255]),
                (0x10, sockaddr_dl(5)),
                (RTA_IFA, sockaddr_in(v4.octets())),
                (0x80, sockaddr_in([192, 168, 1, 255])),
            ],
        );
        assert_eq!(
            reports(flavour, &added),
            event(NetEvent::AddressAdded {
                index: 5,
                addr: v4.into()
            }),
            "{flavour:?}"
        );
        let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let removed = ifaddr(
            flavour,
            RTM_DELADDR,
            5,
            &[(0x4, vec![0]), (RTA_IFA, sockaddr_in6(flavour, v6))],
        );
        assert_eq!(
            reports(flavour, &removed),
            event(NetEvent::AddressRemoved {
                index: 5,
                addr: v6.into()
            }),
            "{flavour:?}"
        );
        // A link-local address has its interface's index embedded.
        let embedded: Ipv6Addr = "fe80:5::1c2:3".parse().unwrap();
        let local = ifaddr(
            flavour,
            RTM_NEWADDR,
            5,
            &[(RTA_IFA, sockaddr_in6(flavour, embedded))],
        );
        assert_eq!(
            reports(flavour, &local),
            event(NetEvent::AddressAdded {
                index: 5,
                addr: "fe80::1c2:3".parse::<Ipv6Addr>().unwrap().into()
            })
        );
        // No address, or not an IP one.
        assert!(reports(
            flavour,
            &ifaddr(flavour, RTM_NEWADDR, 5, &[(0x10, sockaddr_dl(5))])
        )
        .is_empty());
        assert!(reports(
            flavour,
            &ifaddr(flavour, RTM_NEWADDR, 5, &[(RTA_IFA, sockaddr_dl(5))])
        )
        .is_empty());
    }
    // Each flavour's own AF_INET6.
    let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
    let darwins = ifaddr(
        Darwin,
        RTM_NEWADDR,
        5,
        &[(RTA_IFA, sockaddr_in6(Darwin, v6))],
    );
    assert!(reports(FreeBsd, &darwins).is_empty());
}

#[test]
fn routes_but_not_those_the_system_makes_for_itself() {
    for flavour in [Darwin, FreeBsd] {
        let up_gateway = 0x1 | 0x2 | 0x800;
        assert_eq!(
            reports(flavour, &route(flavour, RTM_ADD, up_gateway, 0)),
            event(NetEvent::RouteAdded)
        );
        assert_eq!(
            reports(flavour, &route(flavour, RTM_CHANGE, up_gateway, 0)),
            event(NetEvent::RouteAdded)
        );
        assert_eq!(
            reports(flavour, &route(flavour, RTM_DELETE, up_gateway, 0)),
            event(NetEvent::RouteRemoved)
        );
        // A request that failed (echoed to every routing socket).
        assert!(reports(flavour, &route(flavour, RTM_ADD, up_gateway, 17)).is_empty());
        for own in [RTF_LLINFO, RTF_LOCAL, RTF_BROADCAST, RTF_MULTICAST] {
            assert!(reports(flavour, &route(flavour, RTM_ADD, 0x5 | own, 0)).is_empty());
        }
    }
    // A route cloned per destination on macOS; the bit is unused on FreeBSD.
    assert!(reports(Darwin, &route(Darwin, RTM_ADD, 0x5 | RTF_WASCLONED, 0)).is_empty());
    assert_eq!(
        reports(FreeBsd, &route(FreeBsd, RTM_DELETE, 0x5 | RTF_WASCLONED, 0)),
        event(NetEvent::RouteRemoved)
    );
}

#[test]
fn several_messages_in_one_read_and_others_skipped() {
    let mut read = ifinfo(Darwin, 4, IFF_UP, 0);
    let mut old = route(Darwin, RTM_ADD, 0x3, 0);
    old[2] = 4; // another version
    read.extend(old);
    read.extend(message(0x4, 92, &[], &[])); // RTM_GET
    read.extend(message(0xf, 20, &[], &[])); // RTM_NEWMADDR
    read.extend(route(Darwin, RTM_DELETE, 0x3, 0));
    assert_eq!(
        reports(Darwin, &read),
        [
            Report::Link {
                index: 4,
                state: LinkState::NoCarrier
            },
            Report::Event(NetEvent::RouteRemoved)
        ]
    );
}

#[test]
fn truncated_and_lying_messages_are_skipped() {
    let whole = ifaddr(
        FreeBsd,
        RTM_NEWADDR,
        2,
        &[(0x4, vec![0]), (RTA_IFA, sockaddr_in([10, 0, 0, 2]))],
    );
    for cut in 0..whole.len() {
        assert!(reports(FreeBsd, &whole[..cut]).is_empty(), "cut at {cut}");
    }
    // A header that tells the truth about a short message.
    let short = message(RTM_IFINFO, 10, &[], &[]);
    assert!(reports(Darwin, &short).is_empty());
    // A length under 4 ends the read.
    let mut liar = route(Darwin, RTM_ADD, 0x3, 0);
    liar[..2].copy_from_slice(&3u16.to_ne_bytes());
    liar.extend(route(Darwin, RTM_ADD, 0x3, 0));
    assert!(reports(Darwin, &liar).is_empty());
    // A socket address longer than its message: no address.
    let mut long = whole.clone();
    let ifa_at = at::IFAM_LEN + FreeBsd.sockaddr_align();
    long[ifa_at] = 200;
    assert!(reports(FreeBsd, &long).is_empty());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        darwin in any::<bool>(),
    ) {
        let flavour = if darwin { Darwin } else { FreeBsd };
        prop_assert!(parse(flavour, &bytes).count() <= bytes.len() / 4);
    }

    #[test]
    fn damaged_real_messages_never_panic(at in 0usize..400, value in any::<u8>(), cut in 0usize..400) {
        let mut read = ifinfo(FreeBsd, 2, IFF_UP, LINK_STATE_UP);
        read.extend(ifaddr(FreeBsd, RTM_NEWADDR, 2, &[(RTA_IFA, sockaddr_in6(FreeBsd, Ipv6Addr::LOCALHOST))]));
        read.extend(route(FreeBsd, RTM_ADD, 0x3, 0));
        let len = read.len();
        read[at % len] = value;
        read.truncate(cut.max(1) * len / 400);
        prop_assert!(parse(FreeBsd, &read).count() <= read.len() / 4);
    }
}
