//! The connected phase: the link runs over a live transport until the
//! session ends, or the transport is lost (it broke, went silent, or the
//! address it was made from left the machine).
//!
//! Meanwhile a signal may ask the client to end (it ends its stream and
//! then the session, see [`super::ending`]), and `resumeproxy status` may ask
//! how it goes.

use super::ending::END_CLOSE_TIMEOUT;
use super::waits::Interrupt;
use super::{Client, ClientError, ClientEvent, ClientReport};
use crate::link::{close_transport, Outcome, Step};
use crate::proto::wire::Code;
use crate::transport::Transport;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a close notice may take to send.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How the connected phase ended.
pub(super) enum AfterConnected {
    /// The client is done, well or badly.
    Ended(Result<ClientReport, ClientError>),
    /// The transport was lost, for this reason: reconnect.
    Lost(String),
}

impl<R, W, E> Client<R, W, E>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: FnMut(ClientEvent),
{
    /// Runs the link over `transport` until the client is done or the
    /// transport is lost.
    pub(super) async fn connected(&mut self, transport: &mut Transport) -> AfterConnected {
        loop {
            self.waits.address = transport.fixed_local().map(|a| a.ip());
            let step = self.link.run(Some(transport), self.waits.next()).await;
            match step {
                Step::Other(Interrupt::AddressGone(ip)) => {
                    return AfterConnected::Lost(format!(
                        "this machine no longer has the address {ip}"
                    ))
                }
                Step::Other(Interrupt::EndRequested(signal)) => self.begin_ending(signal),
                Step::Other(Interrupt::EndDue) => {
                    // The session did not end by itself: end it.
                    let reason = match self.ending {
                        Some(signal) => format!("the client was ended by {signal}"),
                        None => "the client was ended".to_string(),
                    };
                    tracing::debug!("closing the session: {reason}");
                    close_transport(transport, Code::Shutdown, &reason, END_CLOSE_TIMEOUT).await;
                    return AfterConnected::Ended(Ok(self.report()));
                }
                Step::Other(Interrupt::Control(request)) => {
                    self.vitals.answer(request, self.link.session());
                }
                Step::Link(Outcome::Finished) => {
                    close_transport(transport, Code::Done, "session complete", CLOSE_TIMEOUT).await;
                    return AfterConnected::Ended(Ok(self.report()));
                }
                Step::Link(Outcome::PeerClosed(Code::Done, _)) => {
                    return AfterConnected::Ended(Ok(self.report()))
                }
                // The relay's process restarts and keeps the session: come
                // back to the next one at once.
                Step::Link(Outcome::PeerClosed(Code::Restarting, reason)) => {
                    return AfterConnected::Lost(reason)
                }
                Step::Link(Outcome::PeerClosed(_, reason)) => {
                    return AfterConnected::Ended(Err(ClientError::Closed {
                        addr: self.addr.clone(),
                        reason,
                    }))
                }
                Step::Link(Outcome::Protocol(e)) => {
                    let reason = e.to_string();
                    close_transport(transport, Code::Protocol, &reason, CLOSE_TIMEOUT).await;
                    return AfterConnected::Ended(Err(ClientError::Protocol {
                        addr: self.addr.clone(),
                        reason,
                    }));
                }
                Step::Link(Outcome::TransportLost(lost)) => {
                    return AfterConnected::Lost(lost.to_string())
                }
            }
        }
    }
}
