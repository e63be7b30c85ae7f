//! The machine's network changes as they happen, from the kernel (rtnetlink).
//!
//! Why: without it the client learns of a network change late. A link that
//! goes down without losing its address is noticed only after
//! `--dead-after`, an address that goes only at the next look
//! ([`crate::transport::addresses::CHECK_INTERVAL`]), and a network that comes *back*
//! (link up, a new address, a route) only when the reconnect backoff runs
//! out, up to 2 s later. The kernel announces each of these on a
//! `NETLINK_ROUTE` socket the moment it happens; [`NetWatcher`] listens
//! there, and [`affects`] says what the client should do about an event:
//! abandon its transport at once, or try to reconnect at once.
//!
//! The socket is our own (a few `libc` calls), not the `rtnetlink` crates:
//! we need five multicast groups and three message shapes, read-only, and
//! the parser is the part worth owning. [`parse`] is a pure function over
//! the bytes of one datagram: every length is checked, a truncated or
//! unknown message is skipped, nothing is allocated, and it never panics
//! (unit tests with hand-built messages, and a property test with random
//! bytes).
//!
//! Where netlink is unavailable (not Linux, or the socket is refused),
//! [`NetWatcher::new`] fails and the caller keeps polling as before.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A change of the machine's network, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetEvent {
    /// Interface `index` became more usable: it was set up (a virtual
    /// link such as a veth or a VPN's tun carries packets at once; hardware
    /// also needs its carrier, which is a second `LinkUp`), or it got its
    /// carrier back.
    LinkUp {
        /// The interface's index (`if_nametoindex`).
        index: u32,
    },
    /// Interface `index` became less usable: it lost its carrier, was set
    /// down, or was removed.
    LinkDown {
        /// The interface's index.
        index: u32,
    },
    /// A usable address appeared on interface `index` (an IPv6 address
    /// still in duplicate address detection is reported once it is done).
    AddressAdded {
        /// The interface's index.
        index: u32,
        /// The address.
        addr: IpAddr,
    },
    /// An address was removed from interface `index`.
    AddressRemoved {
        /// The interface's index.
        index: u32,
        /// The address.
        addr: IpAddr,
    },
    /// A route was added (outside the kernel's `local` table, which only
    /// mirrors the machine's own addresses).
    RouteAdded,
    /// A route was removed (outside the `local` table).
    RouteRemoved,
    /// The kernel dropped events because they came faster than they were
    /// read: anything may have changed.
    Overrun,
}

/// What the client should do about a [`NetEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// The transport's local address or its interface is gone: nothing it
    /// sends can arrive. Abandon it now, do not wait for `--dead-after`.
    AbandonNow,
    /// The network may have come back: if reconnecting, try now instead of
    /// waiting out the backoff.
    TryNow,
    /// Nothing to do.
    Nothing,
}

/// How usable a link is, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkState {
    /// Removed (`RTM_DELLINK`).
    Gone,
    /// Administratively down (no `IFF_UP`).
    Down,
    /// Up, without carrier (`IFF_UP` without `IFF_RUNNING`): hardware
    /// cannot send yet; a virtual link often already can (the kernel
    /// reports its carrier up to a second late).
    NoCarrier,
    /// Up, with carrier (`IFF_UP` and `IFF_RUNNING`).
    Running,
}

/// What one netlink message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Report {
    /// The state of interface `index` now. Not a change in itself: the
    /// kernel repeats `RTM_NEWLINK` whenever any attribute of a link
    /// changes; [`Links::update`] turns these into [`NetEvent::LinkUp`] and
    /// [`NetEvent::LinkDown`].
    Link {
        /// The interface's index.
        index: u32,
        /// Its state.
        state: LinkState,
    },
    /// Any other event, as it is.
    Event(NetEvent),
}

/// Link states remembered to report only changes; beyond this many
/// interfaces the memory starts over (and repeats a report or two).
const MAX_LINKS: usize = 4096;

/// The last known state of each link: turns the kernel's repeated reports
/// into changes. Pure.
#[derive(Debug, Default, Clone)]
pub struct Links {
    states: HashMap<u32, LinkState>,
}

impl Links {
    /// The change that `state`, reported for `index`, makes: `LinkUp` if
    /// the link became more usable, `LinkDown` if less, `None` if it is
    /// as it was. A link not seen before is up if it is running, and down
    /// otherwise.
    pub fn update(&mut self, index: u32, state: LinkState) -> Option<NetEvent> {
        let before = if state == LinkState::Gone {
            self.states.remove(&index)
        } else {
            if self.states.len() >= MAX_LINKS && !self.states.contains_key(&index) {
                self.states.clear();
            }
            self.states.insert(index, state)
        };
        let better = match before {
            Some(before) if before == state => return None,
            Some(before) => state > before,
            None => state == LinkState::Running,
        };
        Some(if better {
            NetEvent::LinkUp { index }
        } else {
            NetEvent::LinkDown { index }
        })
    }

    /// Forgets every link (after lost events): the next report of each
    /// counts as its first.
    pub fn forget(&mut self) {
        self.states.clear();
    }
}

/// What `event` means for a transport whose local address is `local_addr`,
/// on the interface `if_index` (from [`interface_of`], if it was known).
///
/// * The interface going down, or the address going, abandons the transport.
/// * A link coming up, an address appearing or a route being added (and
///   lost events) are a reason to try now; an extra attempt is cheap, a
///   missed one costs the backoff.
/// * Anything else (another interface going down, another address going, a
///   route removed) is left to the address check and `--dead-after`.
pub fn affects(event: &NetEvent, local_addr: IpAddr, if_index: Option<u32>) -> Reaction {
    match *event {
        NetEvent::LinkDown { index } if Some(index) == if_index => Reaction::AbandonNow,
        NetEvent::AddressRemoved { addr, .. } if addr == local_addr.to_canonical() => {
            Reaction::AbandonNow
        }
        NetEvent::LinkUp { .. }
        | NetEvent::AddressAdded { .. }
        | NetEvent::RouteAdded
        | NetEvent::Overrun => Reaction::TryNow,
        NetEvent::LinkDown { .. } | NetEvent::AddressRemoved { .. } | NetEvent::RouteRemoved => {
            Reaction::Nothing
        }
    }
}

// ---------------------------------------------------------------- parsing
//
// The Linux ABI (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h,
// linux/if.h), defined here rather than taken from `libc` so that the
// parser and its tests build on every platform. All integers are in the
// host's byte order; addresses are in network order.

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

// ---------------------------------------------------------------- interfaces

/// The interface that carries one of this machine's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// Its index, as in [`NetEvent`]s.
    pub index: u32,
    /// Whether it is up and has carrier (`IFF_UP` and `IFF_RUNNING`): when
    /// it is not, nothing sent from the address leaves the machine.
    pub up: bool,
}

/// The interface that carries the local address `addr` now, or `None` if
/// no interface has it (or the interfaces cannot be listed). Answers "is
/// the interface under my transport down?" (`!up`), and gives the index
/// [`affects`] compares events with.
pub fn interface_of(addr: IpAddr) -> Option<Interface> {
    imp::interface_of(addr.to_canonical())
}

// ---------------------------------------------------------------- the watcher

/// Events from the kernel, as they happen: a non-blocking `NETLINK_ROUTE`
/// socket subscribed to link, address and route changes (IPv4 and IPv6),
/// registered with tokio.
///
/// A link is reported when its state changes (see [`Links`]; the first
/// report of an interface always passes). The socket belongs to the network
/// namespace of the thread that made it.
#[derive(Debug)]
pub struct NetWatcher {
    socket: imp::Socket,
    /// One datagram's reports, not yet returned (at most one per 16 bytes
    /// of the receive buffer).
    pending: VecDeque<Report>,
    /// Last reported state of each link.
    links: Links,
}

impl NetWatcher {
    /// Opens and subscribes the socket. Fails where netlink is unavailable
    /// (not Linux; refused by a sandbox or a seccomp filter); the caller then
    /// goes on polling. Must be called within a tokio runtime.
    pub fn new() -> io::Result<NetWatcher> {
        Ok(NetWatcher {
            socket: imp::Socket::open()?,
            pending: VecDeque::new(),
            links: Links::default(),
        })
    }

    /// The next event. Cancel-safe: an event is taken off the socket and
    /// returned in the same poll.
    pub async fn next(&mut self) -> io::Result<NetEvent> {
        loop {
            while let Some(report) = self.pending.pop_front() {
                match report {
                    Report::Event(event) => return Ok(event),
                    Report::Link { index, state } => {
                        if let Some(event) = self.links.update(index, state) {
                            return Ok(event);
                        }
                    }
                }
            }
            match self.socket.recv().await? {
                imp::Received::Datagram(bytes) => self.pending.extend(parse(bytes)),
                imp::Received::Overrun => {
                    // What was dropped may have changed any link.
                    self.links.forget();
                    return Ok(NetEvent::Overrun);
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::Interface;
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// Receive buffer: netlink(7) asks for at least 8 KiB per read; link
    /// messages with statistics and VF lists can exceed that. A datagram
    /// longer than this is cut (its last message then skipped).
    const RECV_BUFFER: usize = 32 * 1024;
    /// The socket's kernel-side queue: room for a burst (an interface with
    /// many addresses and routes going down at once) before events drop.
    const SOCKET_BUFFER: libc::c_int = 1 << 20;

    /// What one read gave.
    pub(super) enum Received<'a> {
        /// A datagram from the kernel (possibly cut at the buffer's length).
        Datagram(&'a [u8]),
        /// The socket's queue overflowed: events were lost.
        Overrun,
    }

    /// The subscribed `NETLINK_ROUTE` socket and its receive buffer.
    #[derive(Debug)]
    pub(super) struct Socket {
        fd: AsyncFd<OwnedFd>,
        buf: Box<[u8]>,
    }

    impl Socket {
        pub(super) fn open() -> io::Result<Socket> {
            // SAFETY: socket has no memory-safety preconditions.
            let raw = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::NETLINK_ROUTE,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a descriptor we just opened and own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // A larger queue is best effort: the default still works.
            // SAFETY: the option value is a c_int of the size given.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&SOCKET_BUFFER as *const libc::c_int).cast(),
                    socklen::<libc::c_int>(),
                );
            }
            // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = (libc::RTMGRP_LINK
                | libc::RTMGRP_IPV4_IFADDR
                | libc::RTMGRP_IPV6_IFADDR
                | libc::RTMGRP_IPV4_ROUTE
                | libc::RTMGRP_IPV6_ROUTE) as u32;
            // SAFETY: `addr` is a valid sockaddr_nl of the length given.
            let bound = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    socklen::<libc::sockaddr_nl>(),
                )
            };
            if bound != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the descriptor is owned by the AsyncFd from here on,
            // and neither replaced nor closed while registered.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
            Ok(Socket {
                fd,
                buf: vec![0; RECV_BUFFER].into_boxed_slice(),
            })
        }

        /// The next datagram from the kernel (others are ignored).
        pub(super) async fn recv(&mut self) -> io::Result<Received<'_>> {
            let len = loop {
                let mut guard = self.fd.readable().await?;
                let buf = &mut self.buf;
                match guard.try_io(|fd| recv_from_kernel(fd.get_ref(), buf)) {
                    Ok(Ok(Some(len))) => break len,
                    // From a process, not the kernel: not ours to believe.
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        return Ok(Received::Overrun)
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            };
            Ok(Received::Datagram(self.buf.get(..len).unwrap_or(&self.buf)))
        }
    }

    /// One datagram into `buf`: its length (at most `buf.len()`), or `None`
    /// if it did not come from the kernel.
    fn recv_from_kernel(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = socklen::<libc::sockaddr_nl>();
        // SAFETY: `buf` is writable for its length; `from` for `from_len`.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut from_len,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        Ok((from.nl_pid == 0).then_some(n.min(buf.len())))
    }

    fn socklen<T>() -> libc::socklen_t {
        libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
    }

    pub(super) fn interface_of(addr: IpAddr) -> Option<Interface> {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list`, freed below.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return None;
        }
        let mut found = None;
        let mut cursor = list;
        while !cursor.is_null() {
            // SAFETY: `cursor` is a node of the list getifaddrs made.
            let entry = unsafe { &*cursor };
            cursor = entry.ifa_next;
            // SAFETY: a non-null ifa_addr points at a sockaddr of the
            // family it names, which selects the type read.
            let here = unsafe { address_of(entry.ifa_addr) };
            if here != Some(addr) || entry.ifa_name.is_null() {
                continue;
            }
            // SAFETY: ifa_name is a NUL-terminated interface name.
            let index = unsafe { libc::if_nametoindex(entry.ifa_name) };
            if index == 0 {
                continue;
            }
            let flags = entry.ifa_flags;
            let up = flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_RUNNING as u32 != 0;
            found = Some(Interface { index, up });
            break;
        }
        // SAFETY: `list` came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(list) };
        found
    }

    /// The IP address in `sa`, if it is an IPv4 or IPv6 one.
    ///
    /// # Safety
    /// `sa` is null or points at a sockaddr whose `sa_family` names its type.
    unsafe fn address_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
        if sa.is_null() {
            return None;
        }
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Interface;
    use std::io;
    use std::net::IpAddr;

    #[allow(dead_code)]
    pub(super) enum Received<'a> {
        Datagram(&'a [u8]),
        Overrun,
    }

    #[derive(Debug)]
    pub(super) struct Socket;

    impl Socket {
        pub(super) fn open() -> io::Result<Socket> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "network events need Linux's rtnetlink",
            ))
        }

        pub(super) async fn recv(&mut self) -> io::Result<Received<'_>> {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }

    pub(super) fn interface_of(_addr: IpAddr) -> Option<Interface> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 231, 7, 2));

    /// A netlink message: header, fixed part, attributes (type, data).
    fn message(ty: u16, fixed: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = fixed.to_vec();
        while body.len() % 4 != 0 {
            body.push(0);
        }
        for (kind, data) in attrs {
            let len = u16::try_from(RTA_HDRLEN + data.len()).unwrap();
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(data);
            while body.len() % 4 != 0 {
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

    #[test]
    fn what_the_client_does_about_each_event() {
        let other: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        let ours = Some(4);
        let cases = [
            (NetEvent::LinkDown { index: 4 }, Reaction::AbandonNow),
            (NetEvent::LinkDown { index: 5 }, Reaction::Nothing),
            (NetEvent::LinkUp { index: 4 }, Reaction::TryNow),
            (NetEvent::LinkUp { index: 5 }, Reaction::TryNow),
            (
                NetEvent::AddressRemoved { index: 4, addr: V4 },
                Reaction::AbandonNow,
            ),
            // The address moved to another interface and went from there.
            (
                NetEvent::AddressRemoved { index: 9, addr: V4 },
                Reaction::AbandonNow,
            ),
            (
                NetEvent::AddressRemoved {
                    index: 4,
                    addr: other,
                },
                Reaction::Nothing,
            ),
            (
                NetEvent::AddressAdded {
                    index: 4,
                    addr: other,
                },
                Reaction::TryNow,
            ),
            (NetEvent::RouteAdded, Reaction::TryNow),
            (NetEvent::RouteRemoved, Reaction::Nothing),
            (NetEvent::Overrun, Reaction::TryNow),
        ];
        for (event, reaction) in cases {
            assert_eq!(affects(&event, V4, ours), reaction, "{event:?}");
        }
        // Without a known interface, only the address can tell.
        assert_eq!(
            affects(&NetEvent::LinkDown { index: 4 }, V4, None),
            Reaction::Nothing
        );
        // A dual-stack socket reports IPv4 addresses mapped into IPv6.
        let mapped: IpAddr = "::ffff:10.231.7.2".parse().unwrap();
        assert_eq!(
            affects(
                &NetEvent::AddressRemoved { index: 4, addr: V4 },
                mapped,
                ours
            ),
            Reaction::AbandonNow
        );
    }

    #[test]
    fn loopback_is_carried_by_an_interface_that_is_up() {
        // `lo` is up in every namespace that can run the tests.
        let lo = interface_of(Ipv4Addr::LOCALHOST.into());
        if cfg!(target_os = "linux") {
            let lo = lo.expect("127.0.0.1 is on lo");
            assert!(lo.up && lo.index > 0, "{lo:?}");
        }
        assert_eq!(interface_of(Ipv4Addr::new(203, 0, 113, 77).into()), None);
    }

    #[tokio::test]
    async fn the_watcher_opens_where_netlink_is_available() {
        match NetWatcher::new() {
            Ok(mut watcher) => {
                // Nothing changes here: reading must wait, not fail or spin.
                let read =
                    tokio::time::timeout(std::time::Duration::from_millis(50), watcher.next())
                        .await;
                if let Ok(event) = read {
                    // Someone else changed this machine's network meanwhile.
                    event.expect("a read that returns is an event");
                }
            }
            Err(e) => eprintln!("no netlink here ({e}): callers poll instead"),
        }
    }

    #[test]
    fn a_link_is_reported_when_it_gets_more_or_less_usable() {
        use LinkState::*;
        let up = Some(NetEvent::LinkUp { index: 3 });
        let down = Some(NetEvent::LinkDown { index: 3 });
        let mut links = Links::default();
        // `ip link set down`, then `up`: the veth carries packets at once,
        // its carrier is reported up to a second later.
        let steps = [
            (Running, up),
            (Running, None),
            (Down, down),
            (Down, None),
            (NoCarrier, up),
            (Running, up),
            // The cable is pulled, and plugged back in.
            (NoCarrier, down),
            (NoCarrier, None),
            (Running, up),
            (Gone, down),
        ];
        for (i, (state, change)) in steps.into_iter().enumerate() {
            assert_eq!(links.update(3, state), change, "step {i}: {state:?}");
        }
        // Removed, then the index is reused: a first report again.
        assert_eq!(links.update(3, NoCarrier), down);
        // Each link on its own.
        assert_eq!(
            links.update(4, Running),
            Some(NetEvent::LinkUp { index: 4 })
        );
        assert_eq!(links.update(3, NoCarrier), None);
        links.forget();
        assert_eq!(links.update(3, NoCarrier), down);
    }

    #[test]
    fn the_memory_of_links_is_bounded() {
        let mut links = Links::default();
        for index in 1..=u32::try_from(MAX_LINKS * 3).unwrap() {
            links.update(index, LinkState::Running);
            assert!(links.states.len() <= MAX_LINKS);
        }
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

        #[test]
        fn any_reports_make_a_consistent_memory(
            reports in proptest::collection::vec((1u32..6, 0u8..4), 0..64),
        ) {
            // Whatever the order, a change is reported exactly when the
            // state differs from the last one reported for that link.
            let mut links = Links::default();
            let mut last: HashMap<u32, LinkState> = HashMap::new();
            for (index, state) in reports {
                let state = [LinkState::Gone, LinkState::Down, LinkState::NoCarrier, LinkState::Running][usize::from(state)];
                let change = links.update(index, state);
                let before = if state == LinkState::Gone { last.remove(&index) } else { last.insert(index, state) };
                prop_assert_eq!(change.is_none(), before == Some(state));
            }
        }
    }
}
