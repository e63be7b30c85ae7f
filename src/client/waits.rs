//! What the client waits on besides its link: ssh hanging up, the linger
//! time after it, requests on the control socket, and the transport's local
//! address leaving the machine. Both the connected and the detached phase
//! run their link until one of these happens.

use super::control::Request;
use crate::transport::addresses;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the session waits for besides the link itself.
pub(super) enum Interrupt {
    /// ssh has gone (SIGHUP).
    HangUp,
    /// The time to tell the relay after ssh went is over.
    LingerOver,
    /// A request on the control socket.
    Control(Request),
    /// The address the transport was made from is no longer this machine's.
    AddressGone(IpAddr),
}

type HangUp = Option<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// What the client waits on besides its link.
pub(super) struct Waits {
    pub(super) hangup: HangUp,
    pub(super) linger_until: Option<Instant>,
    pub(super) control: Option<mpsc::Receiver<Request>>,
    /// The local address of the current transport, while it is one that
    /// cannot move (TCP).
    pub(super) address: Option<IpAddr>,
}

impl Waits {
    /// Resolves when ssh hangs up (once), when the linger time is over,
    /// when a control request arrives, or when the transport's local address
    /// is gone.
    pub(super) async fn next(&mut self) -> Interrupt {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        let linger = async {
            match self.linger_until {
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
        let address = async {
            match self.address {
                Some(ip) => {
                    addresses::gone(ip).await;
                    ip
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ip = address => {
                self.address = None;
                Interrupt::AddressGone(ip)
            }
            () = hangup => {
                self.hangup = None;
                Interrupt::HangUp
            }
            () = linger => Interrupt::LingerOver,
            request = control => match request {
                Some(request) => Interrupt::Control(request),
                None => {
                    self.control = None;
                    std::future::pending().await
                }
            },
        }
    }
}
