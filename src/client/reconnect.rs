//! The detached phase: the transport is lost, the local end is still
//! served, and the client reconnects with capped, jittered backoff until it
//! resumes, or the relay says the session is gone, or the relay's grace
//! period has certainly passed.

use super::connector::Connector;
use super::control::Request;
use super::ending::{EndSignal, END_WAIT};
use super::open::{self, OpenError};
use super::trust::Expectation;
use super::waits::Interrupt;
use super::{Client, ClientConfig, ClientError, ClientEvent, ClientReport};
use crate::link::handshake;
use crate::link::{Outcome, Step};
use crate::proto::reconnect::{refusal_may_pass, Next, NotServed, PortEvidence, Reconnect};
use crate::proto::resume_auth;
use crate::proto::wire::{Code, Hello, Reply, SessionId, SECRET_LEN};
use crate::transport::identity::Fingerprint;
use crate::transport::{Transport, TransportKind};
use crate::units::format_duration;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

pub use crate::proto::reconnect::RELAY_GONE_AFTER;

/// What a resume needs to prove and say.
#[derive(Clone, Copy)]
pub(super) struct Resume {
    pub(super) session: SessionId,
    pub(super) secret: [u8; SECRET_LEN],
    /// The key the session was opened with: a reconnect must meet the same.
    pub(super) relay_key: Fingerprint,
    /// The position this side has received up to.
    pub(super) received: u64,
}

/// A resume not yet told to the user: its transport has not carried data
/// yet. Told (as one resume, from the first loss) once it does; if it is
/// lost first, the next resume carries it on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Untold {
    /// When the link was lost, before any transport carried data again.
    pub(super) lost_at: Instant,
    /// Attempts since then.
    pub(super) attempts: u32,
    /// The session's count of bytes replayed at that loss.
    pub(super) replayed_before: u64,
}

/// How the detached phase ended.
pub(super) enum AfterDetached {
    /// The client is done, well or badly.
    Ended(Result<ClientReport, ClientError>),
    /// The session resumed on this transport.
    Resumed(Box<Transport>),
}

/// What ends a spell of the link running detached.
enum Wake {
    Interrupt(Interrupt),
    Reconnected(Box<Result<Reconnected, ClientError>>),
}

/// A resumed session's new transport.
struct Reconnected {
    transport: Transport,
    /// The position the relay has received up to.
    peer_received: u64,
    /// Attempts it took.
    attempts: u32,
}

/// How one resume attempt ended.
enum Attempt {
    /// The relay answered, on this transport.
    Answered {
        transport: Box<Transport>,
        reply: Reply,
    },
    /// No usable answer: the network, the handshake, or the relay's key.
    Failed(OpenError),
    /// Nothing within the attempt's time.
    TimedOut,
}

impl<R, W, E> Client<R, W, E>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: FnMut(ClientEvent),
{
    /// Runs the link without a transport while reconnecting, until the
    /// session resumes or the client is done. `reason` says why the last
    /// transport was lost.
    pub(super) async fn detached(&mut self, reason: String) -> AfterDetached {
        let now = Instant::now();
        // A resume whose transport never carried data is not over yet.
        let untold = self.untold.take().unwrap_or(Untold {
            lost_at: now,
            attempts: 0,
            replayed_before: self.link.session().stats().bytes_replayed,
        });
        self.vitals.lost_at = Some(untold.lost_at);
        self.vitals.attempts.store(0, Ordering::Relaxed);
        (self.on_event)(ClientEvent::Lost { reason });
        if let Some(mss) = self.smaller.take() {
            (self.on_event)(ClientEvent::SmallerSegments { mss });
        }
        self.connector.limit_segments(self.segments.for_next(now));
        self.resume.received = self.link.session().received_position();
        let try_now = Notify::new();
        let attempts = Arc::clone(&self.vitals.attempts);
        let mut reconnecting = pin!(reconnect(
            &self.config,
            &self.connector,
            self.resume,
            Reconnect::new(
                now,
                self.grace,
                self.config.connect_timeout,
                self.config.session.dead_after,
            )
            .with_rtt(self.link.session().stats().rtt),
            &attempts,
            &try_now
        ));
        let reconnected = loop {
            let waits = &mut self.waits;
            let either = async {
                tokio::select! {
                    r = &mut reconnecting => Wake::Reconnected(Box::new(r)),
                    i = waits.next() => Wake::Interrupt(i),
                }
            };
            match self.link.run(None, either).await {
                Step::Other(Wake::Reconnected(result)) => match *result {
                    Ok(reconnected) => break reconnected,
                    Err(e) => return AfterDetached::Ended(Err(e)),
                },
                Step::Other(Wake::Interrupt(Interrupt::EndRequested(signal))) => {
                    // As `begin_ending`, on the fields the reconnect leaves free.
                    tracing::debug!("{signal} while reconnecting: ending the session");
                    self.ending = Some(signal);
                    self.input_ending.store(true, AtomicOrdering::SeqCst);
                    self.waits.end_by = Some(Instant::now() + END_WAIT);
                }
                Step::Other(Wake::Interrupt(Interrupt::EndDue)) => {
                    // Still no transport: the relay cannot be told.
                    let signal = self.ending.unwrap_or(EndSignal::Terminate);
                    return AfterDetached::Ended(Err(ClientError::EndedUntold {
                        addr: self.addr.clone(),
                        signal,
                    }));
                }
                Step::Other(Wake::Interrupt(Interrupt::PathGone(_))) => {}
                Step::Other(Wake::Interrupt(Interrupt::NetworkBack)) => {
                    tracing::debug!("the network may be back: trying now");
                    try_now.notify_one();
                }
                Step::Other(Wake::Interrupt(Interrupt::Control(request))) => {
                    if matches!(request, Request::Resume) {
                        try_now.notify_one();
                    }
                    self.vitals.answer(request, self.link.session(), None);
                }
                // Without a transport the link has nothing that could end it.
                Step::Link(outcome) => {
                    return AfterDetached::Ended(Err(ClientError::Protocol {
                        addr: self.addr.clone(),
                        reason: format!(
                            "the link ended while detached ({})",
                            outcome_words(&outcome)
                        ),
                    }))
                }
            }
        };
        let Reconnected {
            transport,
            peer_received,
            attempts,
        } = reconnected;
        if let Err(e) = self
            .link
            .session_mut()
            .attach(peer_received, Instant::now())
        {
            return AfterDetached::Ended(Err(ClientError::Protocol {
                addr: self.addr.clone(),
                reason: e.to_string(),
            }));
        }
        self.vitals.resumes += 1;
        self.vitals.lost_at = None;
        self.vitals.transport = transport.kind;
        // Told once the transport carries data (see `connected.rs`).
        self.untold = Some(Untold {
            attempts: untold.attempts + attempts,
            ..untold
        });
        AfterDetached::Resumed(Box::new(transport))
    }
}

/// Tries to resume until it works or the session is certainly gone, as
/// the [`Reconnect`] policy says.
///
/// `attempts_made` counts the attempts made (for status); `now` cuts the wait
/// before the next attempt short (`resumeproxy resume`).
async fn reconnect(
    config: &ClientConfig,
    connector: &Connector,
    resume: Resume,
    mut policy: Reconnect,
    attempts_made: &AtomicU32,
    now: &Notify,
) -> Result<Reconnected, ClientError> {
    let addr = config.relay_addr();
    let session = resume.session;
    let attempt_timeout = policy.attempt_timeout();
    loop {
        let attempts = policy.begin();
        attempts_made.store(attempts, Ordering::Relaxed);
        let attempt_started = Instant::now();
        let replace_after = policy.replace_after();
        let replace_due = async {
            match replace_after {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(attempt_timeout, resume_once(config, connector, &resume)) => {
                attempt.unwrap_or(Attempt::TimedOut)
            }
            () = now.notified() => {
                // The network may be back: an attempt still waiting on the
                // old path is not worth finishing.
                tracing::debug!("asked to try now; starting a fresh attempt");
                policy.try_now();
                continue;
            }
            () = replace_due => {
                // Its first packets were likely lost on a network that was
                // just coming up; the kernel would resend them only later.
                tracing::debug!(
                    "no answer within {} of the network coming back; starting a fresh attempt",
                    format_duration(replace_after.unwrap_or_default())
                );
                continue;
            }
        };
        let jitter: f64 = rand::random();
        let next = match attempt {
            Attempt::Answered { transport, reply } => {
                if let Reply::Refused {
                    code: Code::OtherInstance,
                    reason,
                } = &reply
                {
                    if transport.kind == TransportKind::Quic {
                        // A UDP balancer cannot route by name; TCP's can.
                        tracing::debug!("attempt {attempts} over QUIC: {reason}");
                        connector.quic_astray();
                        continue;
                    }
                }
                match &reply {
                    Reply::Refused { code, reason } if refusal_may_pass(*code) => {
                        tracing::debug!("attempt {attempts}: relay refused for now: {reason}");
                    }
                    Reply::Created { .. } => tracing::debug!(
                        "attempt {attempts}: relay answered a resume as a new session"
                    ),
                    _ => {}
                }
                match policy.answered(reply, Instant::now(), jitter) {
                    Next::Resume { peer_received } => {
                        return Ok(Reconnected {
                            transport: *transport,
                            peer_received,
                            attempts,
                        })
                    }
                    next => next,
                }
            }
            Attempt::Failed(OpenError::KeyChanged(seen)) => {
                let expectation = Expectation::for_relay(&config.trust, &addr).ok();
                if expectation.as_ref().is_some_and(|e| e.pins_another(&seen)) {
                    // A key the user trusts for this relay, not the
                    // session's: nothing nasty, but no resume there.
                    return Err(ClientError::SessionGone {
                        addr,
                        session,
                        reason: other_pinned_key(&seen, &resume.relay_key),
                    });
                }
                // Say where the key is pinned, as a new connection would:
                // the user removes that line if the change is expected.
                // Never blame a --relay-fingerprint the user did not give.
                let expectation = expectation
                    .filter(|e| !e.is_first_use() && !e.accepts(&seen))
                    .unwrap_or_else(|| Expectation::exactly(resume.relay_key));
                let changed = expectation.changed(&config.trust, &addr, seen);
                return Err(ClientError::KeyChanged(Box::new(changed)));
            }
            failed => {
                // Nothing serves the relay's port: TCP was refused, or
                // accepted and closed at once (seen by the TCP part of an
                // attempt, even one cut short while QUIC had its chance), or
                // the relay's host says nothing listens on its UDP port.
                let evidence = PortEvidence {
                    tcp_not_served: match &failed {
                        Attempt::Failed(OpenError::NotListening(_)) => Some(NotServed::Refused),
                        Attempt::Failed(OpenError::ClosedAtOnce(_)) => {
                            Some(NotServed::ClosedAtOnce)
                        }
                        _ => connector.tcp_not_served_since(attempt_started),
                    },
                    udp_unreachable_since: connector.udp_unreachable_since(),
                };
                match &failed {
                    Attempt::Failed(error) => {
                        tracing::debug!("attempt {attempts}: {}", error.reason())
                    }
                    _ => tracing::debug!(
                        "attempt {attempts}: no answer within {}",
                        format_duration(attempt_timeout)
                    ),
                }
                policy.failed(Instant::now(), jitter, evidence)
            }
        };
        match next {
            Next::Retry { after } => {
                tokio::select! {
                    () = tokio::time::sleep(after) => {}
                    () = now.notified() => {
                        tracing::debug!("asked to try now");
                        policy.try_now();
                    }
                }
            }
            Next::Gone(gone) => {
                return Err(ClientError::SessionGone {
                    addr,
                    session,
                    reason: gone.to_string(),
                })
            }
            Next::Refused { reason, .. } => return Err(ClientError::Refused { addr, reason }),
            Next::RelayGone(by) => return Err(ClientError::RelayGone { addr, by }),
            // Taken above, with the transport it came on.
            Next::Resume { .. } => {}
        }
    }
}

/// One resume attempt: connect, meet the session's key, prove the secret.
async fn resume_once(config: &ClientConfig, connector: &Connector, resume: &Resume) -> Attempt {
    let expectation = Expectation::exactly(resume.relay_key);
    let mut transport = match open::connect(config, connector, &expectation).await {
        Ok((transport, _)) => transport,
        Err(e) => return Attempt::Failed(e),
    };
    let hello = Hello::Resume {
        dead_after_ms: open::millis(config.session.dead_after),
        session: resume.session,
        proof: resume_auth::proof(&resume.secret, &resume.session, &transport.binding),
        received: resume.received,
    };
    match handshake::client(&mut transport, &hello).await {
        Ok(reply) => Attempt::Answered {
            transport: Box::new(transport),
            reply,
        },
        Err(e) => Attempt::Failed(open::handshake_failure(&e)),
    }
}

/// Why a session is gone whose reconnect met `seen`, a key pinned for its
/// relay, instead of `opened_with`, the key it was opened with.
fn other_pinned_key(seen: &Fingerprint, opened_with: &Fingerprint) -> String {
    format!(
        "it reached another pinned key of the relay ({seen}), not the one the session was opened with ({opened_with}): another instance of a fleet, its own being down or gone, or a rotated key"
    )
}

/// How a link ended, in words (for what should never happen).
fn outcome_words(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Finished => "finished".into(),
        Outcome::PeerClosed(_, reason) => format!("closed by the relay: {reason}"),
        Outcome::TransportLost(reason) => format!("lost: {reason}"),
        Outcome::Protocol(e) => e.to_string(),
        Outcome::Flowing => "data flows".into(),
    }
}
