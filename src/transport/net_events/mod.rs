//! The machine's network changes as they happen, from the kernel (rtnetlink).
//!
//! Why: without it the client learns of a network change late. A link that
//! goes down without losing its address is noticed only after
//! `--dead-after`, an address that goes only at the next look
//! (`addresses::CHECK_INTERVAL`), and a network that comes *back*
//! (link up, a new address, a route) only when the reconnect backoff runs
//! out, up to 2 s later. The kernel announces each of these on a
//! `NETLINK_ROUTE` socket the moment it happens; [`NetWatcher`] listens
//! there, and [`affects`] says what the client should do about an event:
//! abandon its transport at once, or try to reconnect at once.
//!
//! The socket is our own (a few `libc` calls), not the `rtnetlink` crates:
//! we need five multicast groups and three message shapes, read-only, and
//! the parser is the part worth owning. [`netlink::parse`] is a pure
//! function over the bytes of one datagram: every length is checked, a
//! truncated or unknown message is skipped, nothing is allocated, and it
//! never panics (unit tests with hand-built messages, and a property test
//! with random bytes).
//!
//! The other platforms announce the same changes their own way, and say
//! them in the same [`Report`]s:
//!
//! * macOS and FreeBSD: a `PF_ROUTE` socket (`bsd.rs`), whose messages
//!   [`route_socket::parse`] reads like the netlink parser (and is tested
//!   the same way, on every platform);
//! * Windows: the IP Helper's change notifications for interfaces,
//!   addresses and routes (`NotifyIpInterfaceChange` and its siblings,
//!   `windows.rs`), whose rows [`ip_helper`] reads (tested everywhere too).
//!
//! The crates that watch networks across platforms were weighed: none
//! reports a link's carrier or a route (they diff address lists), and each
//! would bring a large Windows binding or an async runtime of its own.
//!
//! Where no watcher can be had (another platform, or the socket refused),
//! [`NetWatcher::new`] fails and the caller keeps polling as before.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;

pub mod ip_helper;
pub mod netlink;
pub mod route_socket;

#[cfg(unix)]
mod ifaddrs;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as imp;
#[cfg(any(target_os = "macos", target_os = "freebsd"))]
mod bsd;
#[cfg(any(target_os = "macos", target_os = "freebsd"))]
use bsd as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;
#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    windows
)))]
mod other;
#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    windows
)))]
use other as imp;

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

/// What one message from the system says (a netlink message on Linux).
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

/// Events from the system, as they happen: on Linux a non-blocking
/// `NETLINK_ROUTE` socket subscribed to link, address and route changes
/// (IPv4 and IPv6), registered with tokio; on macOS and FreeBSD a
/// `PF_ROUTE` socket; on Windows the IP Helper's notifications.
///
/// A link is reported when its state changes (see [`Links`]; the first
/// report of an interface always passes). On Linux the socket belongs to
/// the network namespace of the thread that made it.
#[derive(Debug)]
pub struct NetWatcher {
    socket: imp::Socket,
    /// Reports not yet returned (on Linux one datagram's: at most one per
    /// 16 bytes of the receive buffer).
    pending: VecDeque<Report>,
    /// Last reported state of each link.
    links: Links,
}

impl NetWatcher {
    /// Opens and subscribes the socket. Fails where no watcher is available
    /// (another platform; refused by a sandbox or a seccomp filter); the
    /// caller then goes on polling. Must be called within a tokio runtime.
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
            match self.socket.recv(&mut self.pending).await? {
                imp::Received::Reports => {}
                imp::Received::Overrun => {
                    // What was dropped may have changed any link.
                    self.links.forget();
                    return Ok(NetEvent::Overrun);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 231, 7, 2));

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
