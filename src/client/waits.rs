//! What the client waits on besides its link: a signal asking it to end
//! (see [`super::ending`]), the time it gives the session to end after that,
//! requests on the control socket, and the network under the transport
//! changing. Both the connected and the detached phase run their link until
//! one of these happens.
//!
//! The network is followed through the kernel's own announcements
//! ([`NetWatcher`], rtnetlink): the interface under the transport going
//! down, or its address going, abandons the transport at once (not after
//! `--dead-after`); a link coming up, an address or a route appearing makes
//! a reconnecting client try at once (not after its backoff). Where netlink
//! is unavailable, the transport's address is polled instead (every
//! [`addresses::CHECK_INTERVAL`]).

use super::control::Request;
use super::ending::EndSignal;
use crate::transport::addresses;
use crate::transport::net_events::{self, NetEvent, NetWatcher, Reaction};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the session waits for besides the link itself.
pub(super) enum Interrupt {
    /// A signal asks the client to end.
    EndRequested(EndSignal),
    /// The time given to the session to end by itself is over.
    EndDue,
    /// A request on the control socket.
    Control(Request),
    /// Nothing the transport sends can arrive any more (its address or its
    /// interface is gone); why.
    PathGone(String),
    /// The network may be back: a reconnecting client tries now.
    NetworkBack,
}

type EndRequest = Option<Pin<Box<dyn Future<Output = EndSignal> + Send>>>;

/// The network path of the current transport.
#[derive(Debug, Clone, Copy)]
pub(super) enum Path {
    /// Made from a fixed local address (TCP), on this interface if known.
    Fixed {
        local: IpAddr,
        interface: Option<u32>,
    },
    /// Follows the route to the relay (QUIC migrates to a new address).
    Moving { relay: SocketAddr },
}

impl Path {
    /// The path of a transport whose local address is `fixed` (TCP) or
    /// that follows its route to `relay` (QUIC).
    pub(super) fn of(fixed: Option<SocketAddr>, relay: SocketAddr) -> Path {
        match fixed {
            Some(local) => Path::Fixed {
                local: local.ip(),
                interface: net_events::interface_of(local.ip()).map(|i| i.index),
            },
            None => Path::Moving { relay },
        }
    }

    /// What `event` means for this path: the reason it is gone, or whether
    /// to try now.
    fn react(&self, event: &NetEvent) -> Result<Reaction, String> {
        match *self {
            Path::Fixed { local, interface } => {
                match net_events::affects(event, local, interface) {
                    Reaction::AbandonNow => Err(match event {
                        NetEvent::AddressRemoved { .. } => {
                            format!("this machine no longer has the address {local}")
                        }
                        _ => "the network interface it used went down".to_string(),
                    }),
                    other => Ok(other),
                }
            }
            // QUIC follows the route to a new address by itself; only
            // when no usable route is left is the path gone.
            Path::Moving { relay } => match event {
                NetEvent::LinkDown { .. } | NetEvent::AddressRemoved { .. } => {
                    let usable = addresses::route_source(relay)
                        .and_then(net_events::interface_of)
                        .is_some_and(|i| i.up);
                    if usable {
                        Ok(Reaction::Nothing)
                    } else {
                        Err("no usable route to the relay any more".to_string())
                    }
                }
                _ => Ok(net_events::affects(event, relay.ip(), None)),
            },
        }
    }
}

/// What the client waits on besides its link.
pub(super) struct Waits {
    /// Resolves with the signal that asks the client to end (once).
    pub(super) end_request: EndRequest,
    /// When the session must be over, once a signal asked for it.
    pub(super) end_by: Option<Instant>,
    pub(super) control: Option<mpsc::Receiver<Request>>,
    /// The kernel's network events; `None` where netlink is unavailable.
    pub(super) net: Option<NetWatcher>,
    /// The current transport's path, while connected.
    pub(super) path: Option<Path>,
}

impl Waits {
    /// Resolves when a signal asks the client to end (once), when the
    /// session's time to end is over, when a control request arrives, when
    /// the transport's path is gone, or when the network may be back.
    pub(super) async fn next(&mut self) -> Interrupt {
        loop {
            let end_request = async {
                match self.end_request.as_mut() {
                    Some(request) => request.await,
                    None => std::future::pending().await,
                }
            };
            let end_due = async {
                match self.end_by {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            let control = async {
                match self.control.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            // Without netlink, a fixed address is polled.
            let poll = match (self.net.is_none(), self.path) {
                (true, Some(Path::Fixed { local, .. })) => Some(local),
                _ => None,
            };
            let polled = async {
                match poll {
                    Some(local) => {
                        addresses::gone(local).await;
                        local
                    }
                    None => std::future::pending().await,
                }
            };
            let net = async {
                match self.net.as_mut() {
                    Some(watcher) => watcher.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ip = polled => {
                    self.path = None;
                    return Interrupt::PathGone(format!(
                        "this machine no longer has the address {ip}"
                    ));
                }
                signal = end_request => {
                    self.end_request = None;
                    return Interrupt::EndRequested(signal);
                }
                () = end_due => return Interrupt::EndDue,
                request = control => match request {
                    Some(request) => return Interrupt::Control(request),
                    None => self.control = None,
                },
                event = net => match event {
                    Ok(event) => {
                        tracing::debug!("network: {event:?}");
                        let reaction = match self.path {
                            Some(path) => path.react(&event),
                            None => Ok(net_events::affects(
                                &event,
                                IpAddr::from([0, 0, 0, 0]),
                                None,
                            )),
                        };
                        match reaction {
                            Err(why) => {
                                self.path = None;
                                return Interrupt::PathGone(why);
                            }
                            Ok(Reaction::TryNow) => return Interrupt::NetworkBack,
                            Ok(Reaction::AbandonNow | Reaction::Nothing) => {}
                        }
                    }
                    Err(e) => {
                        tracing::debug!("no more network events ({e}); polling addresses");
                        self.net = None;
                    }
                },
            }
        }
    }
}
