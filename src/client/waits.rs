//! What the client waits on besides its link: a signal asking it to end
//! (see [`super::ending`]), the time it gives the session to end after that,
//! requests on the control socket, and the transport's local address
//! leaving the machine. Both the connected and the detached phase run their
//! link until one of these happens.

use super::control::Request;
use super::ending::EndSignal;
use crate::transport::addresses;
use std::future::Future;
use std::net::IpAddr;
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
    /// The address the transport was made from is no longer this machine's.
    AddressGone(IpAddr),
}

type EndRequest = Option<Pin<Box<dyn Future<Output = EndSignal> + Send>>>;

/// What the client waits on besides its link.
pub(super) struct Waits {
    /// Resolves with the signal that asks the client to end (once).
    pub(super) end_request: EndRequest,
    /// When the session must be over, once a signal asked for it.
    pub(super) end_by: Option<Instant>,
    pub(super) control: Option<mpsc::Receiver<Request>>,
    /// The local address of the current transport, while it is one that
    /// cannot move (TCP).
    pub(super) address: Option<IpAddr>,
}

impl Waits {
    /// Resolves when a signal asks the client to end (once), when the
    /// session's time to end is over,
    /// when a control request arrives, or when the transport's local address
    /// is gone.
    pub(super) async fn next(&mut self) -> Interrupt {
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
            signal = end_request => {
                self.end_request = None;
                Interrupt::EndRequested(signal)
            }
            () = end_due => Interrupt::EndDue,
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
