//! The connected phase: the link runs over a live transport until the
//! session ends, or the transport is lost (it broke, went silent, or the
//! address it was made from left the machine).
//!
//! Meanwhile a signal may ask the client to end (it ends its stream and
//! then the session, see [`super::ending`]), and `resumeproxy status` may ask
//! how it goes.

use super::back_to_quic::{self, NotMoved, MOVE_TIMEOUT};
use super::ending::END_CLOSE_TIMEOUT;
use super::waits::{Interrupt, Path};
use super::{Client, ClientError, ClientEvent, ClientReport};
use crate::link::{close_transport, Lost, Outcome, Step};
use crate::proto::segment_size::Stepped;
use crate::proto::wire::Code;
use crate::transport::{tls, ConnectError, Transport, TransportKind};
use crate::units::format_duration;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a close notice may take to send.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the connected phase waits for besides its link.
enum Wake {
    Interrupt(Interrupt),
    /// The background probe of QUIC ended (see [`back_to_quic`]).
    Quic(Box<Result<Transport, ConnectError>>),
}

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
        self.probe.on(transport);
        loop {
            if self.waits.path.is_none() {
                self.waits.path = Some(Path::of(transport.fixed_local(), transport.peer_now()));
            }
            let (waits, probe) = (&mut self.waits, &mut self.probe);
            let other = async {
                tokio::select! {
                    interrupt = waits.next() => Wake::Interrupt(interrupt),
                    probed = probe.next() => Wake::Quic(Box::new(probed)),
                }
            };
            let step = match self.link.run(Some(transport), other).await {
                Step::Other(Wake::Quic(probed)) => match *probed {
                    Ok(quic) => match self.move_to_quic(transport, quic).await {
                        Some(after) => return after,
                        None => continue,
                    },
                    // Said and scheduled by the probe.
                    Err(_) => continue,
                },
                Step::Other(Wake::Interrupt(interrupt)) => Step::Other(interrupt),
                Step::Link(outcome) => Step::Link(outcome),
            };
            match step {
                Step::Other(Interrupt::PathGone(why)) => return AfterConnected::Lost(why),
                // Only a reconnecting client has anything to try.
                Step::Other(Interrupt::NetworkBack) => {}
                Step::Other(Interrupt::EndRequested(signal)) => self.begin_ending(signal),
                Step::Other(Interrupt::EndDue) => {
                    // The session did not end by itself: end it.
                    let reason = match self.ending {
                        Some(signal) => format!("the client was ended by {signal}"),
                        None => "the client was ended".to_string(),
                    };
                    tracing::debug!("closing the session: {reason}");
                    let acked =
                        close_transport(transport, Code::Shutdown, &reason, END_CLOSE_TIMEOUT)
                            .await;
                    self.connector.closed(transport, acked);
                    return AfterConnected::Ended(Ok(self.report()));
                }
                Step::Other(Interrupt::Control(request)) => {
                    self.vitals
                        .answer(request, self.link.session(), transport.rtt());
                }
                Step::Link(Outcome::Finished) => {
                    let acked =
                        close_transport(transport, Code::Done, "session complete", CLOSE_TIMEOUT)
                            .await;
                    self.connector.closed(transport, acked);
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
                Step::Link(Outcome::Flowing) => self.flowing(transport.kind),
                Step::Link(Outcome::TransportLost(lost)) => {
                    return AfterConnected::Lost(self.lost(&lost, transport))
                }
            }
        }
    }

    /// The transport carries data: a resume not yet told is told now, and
    /// a TCP segment size that carries is kept.
    fn flowing(&mut self, kind: TransportKind) {
        if kind == TransportKind::Tls {
            self.segments.carried(Instant::now());
        }
        if let Some(untold) = self.untold.take() {
            (self.on_event)(ClientEvent::Resumed {
                after: untold.lost_at.elapsed(),
                attempts: untold.attempts,
                replayed: self.link.session().stats().bytes_replayed - untold.replayed_before,
            });
        }
    }

    /// Why the transport was lost, in words. A TCP transport that carried
    /// nothing while small packets passed makes the next ones use smaller
    /// segments: its data stalled while the relay's heartbeats came; or
    /// the relay's data stopped while its TCP still acknowledged this
    /// side's heartbeats (the kernel says when it last did, on Linux); or,
    /// after a resume whose handshake passed, nothing came at all. Where
    /// segments cannot be made smaller (Windows), the size stays.
    fn lost(&mut self, lost: &Lost, transport: &Transport) -> String {
        let kind = transport.kind;
        let flowed = self.link.session().is_flowing();
        let acks_pass = |after: Duration| {
            transport
                .since_peer_acked()
                .is_some_and(|since| since < after / 2)
        };
        let (carried_nothing, reason) = match lost {
            Lost::Stalled(_) => (true, lost.to_string()),
            Lost::Silent(after) if !flowed && self.untold.is_some() => (
                true,
                format!(
                    "nothing heard for {} on the new link, though its handshake passed",
                    format_duration(*after)
                ),
            ),
            Lost::Silent(after) if acks_pass(*after) => (true, Lost::Stalled(*after).to_string()),
            Lost::Silent(_) => (!flowed, lost.to_string()),
            _ => (false, lost.to_string()),
        };
        if carried_nothing && kind == TransportKind::Tls && tls::CAN_LIMIT_SEGMENTS {
            match self.segments.carried_nothing(Instant::now()) {
                Stepped::Down { mss, first } => {
                    tracing::debug!("reconnecting with TCP segments of at most {mss} bytes");
                    if first {
                        self.smaller = Some(mss);
                    }
                }
                Stepped::Back(mss) => tracing::debug!(
                    "full-size TCP segments carried nothing again: back to {mss} bytes"
                ),
                Stepped::Smallest => {
                    tracing::debug!("already at the smallest TCP segments; reconnecting")
                }
            }
        }
        reason
    }

    /// Moves the session from `transport` (TCP) onto `quic`, which just
    /// answered: asks the relay to resume it there from what this side has
    /// received, serving the local end meanwhile. If the relay does not
    /// answer, the session goes on over `transport`; `Some` if the phase
    /// ends instead.
    async fn move_to_quic(
        &mut self,
        transport: &mut Transport,
        mut quic: Transport,
    ) -> Option<AfterConnected> {
        let received = self.link.session().received_position();
        let hello = back_to_quic::move_hello(&self.config, &self.resume, &quic, received);
        let timeout = MOVE_TIMEOUT.min(self.config.session.dead_after / 2);
        let asked = back_to_quic::ask_move(&mut quic, &hello, timeout);
        match self.link.run(None, asked).await {
            Step::Other(Ok(peer_received)) => {
                let session = self.link.session_mut();
                session.detach();
                if let Err(e) = session.attach(peer_received, Instant::now()) {
                    return Some(AfterConnected::Ended(Err(ClientError::Protocol {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    })));
                }
                // The TCP transport is retired here.
                *transport = quic;
                self.waits.path = Some(Path::of(transport.fixed_local(), transport.peer_now()));
                self.vitals.transport = transport.kind;
                self.vitals.moves += 1;
                self.connector.udp_works();
                self.probe.stop();
                tracing::debug!("moved the session onto QUIC (relay had {peer_received})");
                None
            }
            Step::Other(Err(NotMoved::Failed(why))) => {
                tracing::debug!("moving onto QUIC failed: {why}; staying on TCP");
                self.probe.later();
                None
            }
            Step::Other(Err(NotMoved::Astray(why))) => {
                tracing::debug!("moving onto QUIC failed: {why}; staying on TCP for good");
                self.connector.quic_astray();
                self.probe.stop();
                None
            }
            // Without a transport only the dead-peer check can end the link.
            Step::Link(Outcome::TransportLost(lost)) => {
                Some(AfterConnected::Lost(lost.to_string()))
            }
            Step::Link(_) => Some(AfterConnected::Lost(
                "the link ended while moving onto QUIC".into(),
            )),
        }
    }
}
