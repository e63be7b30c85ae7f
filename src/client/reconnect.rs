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
use crate::proto::backoff::Backoff;
use crate::proto::resume_auth;
use crate::proto::wire::{Code, Hello, Reply, SessionId, SECRET_LEN};
use crate::transport::identity::Fingerprint;
use crate::transport::Transport;
use crate::units::format_duration;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

/// Shortest time a reconnect attempt is given.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra wait past the relay's grace period before giving up for good.
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// How long every reconnect attempt must be refused (nothing listens on the
/// relay's port) before the relay is taken to be stopped for good. A relay
/// that restarts keeps its listening socket (connections wait for the next
/// worker), so only a relay that is gone refuses; a middlebox that rejects
/// connections for a moment (a reset storm) is survived.
pub const RELAY_GONE_AFTER: Duration = Duration::from_secs(30);

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

/// How the detached phase ended.
pub(super) enum AfterDetached {
    /// The client is done, well or badly.
    Ended(Result<ClientReport, ClientError>),
    /// The session resumed on this transport.
    Resumed(Transport),
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
    /// The relay took the session back on this transport.
    Resumed {
        transport: Box<Transport>,
        /// The position the relay has received up to.
        peer_received: u64,
    },
    /// The relay answered, and refused.
    Refused { code: Code, reason: String },
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
        let lost_at = Instant::now();
        self.vitals.lost_at = Some(lost_at);
        self.vitals.attempts.store(0, Ordering::Relaxed);
        (self.on_event)(ClientEvent::Lost { reason });
        let replayed_before = self.link.session().stats().bytes_replayed;
        self.resume.received = self.link.session().received_position();
        let try_now = Notify::new();
        let attempts = Arc::clone(&self.vitals.attempts);
        let mut reconnecting = pin!(reconnect(
            &self.config,
            &self.connector,
            self.resume,
            self.grace,
            lost_at,
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
        (self.on_event)(ClientEvent::Resumed {
            after: lost_at.elapsed(),
            attempts,
            replayed: self.link.session().stats().bytes_replayed - replayed_before,
        });
        AfterDetached::Resumed(transport)
    }
}

/// Tries to resume until it works or the session is certainly gone.
///
/// `attempts_made` counts the attempts made (for status); `now` cuts the wait
/// before the next attempt short (`resumeproxy resume`).
async fn reconnect(
    config: &ClientConfig,
    connector: &Connector,
    resume: Resume,
    grace: Duration,
    lost_at: Instant,
    attempts_made: &AtomicU32,
    now: &Notify,
) -> Result<Reconnected, ClientError> {
    let addr = config.relay_addr();
    let session = resume.session;
    let mut backoff = Backoff::default();
    let mut attempts = 0;
    // Since when every attempt was refused, if the latest was.
    let mut refused_since: Option<Instant> = None;
    // A live path answers within a round trip or two; one that does not
    // answer within the dead-peer interval is no better than a dead one.
    let attempt_timeout = config
        .connect_timeout
        .min(config.session.dead_after.max(MIN_ATTEMPT_TIMEOUT));
    loop {
        attempts += 1;
        attempts_made.store(attempts, Ordering::Relaxed);
        let attempt_started = Instant::now();
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(attempt_timeout, resume_once(config, connector, &resume)) => {
                attempt.unwrap_or(Attempt::TimedOut)
            }
            () = now.notified() => {
                // The user says the network is back: an attempt still
                // waiting on the old path is not worth finishing.
                tracing::debug!("asked to try now; starting a fresh attempt");
                backoff = Backoff::default();
                continue;
            }
        };
        // Refused: nothing listens on the relay's port (seen by the TCP part
        // of an attempt, even one cut short while QUIC had its chance).
        let refused = match &attempt {
            Attempt::Failed(OpenError::NotListening(_)) => true,
            Attempt::Failed(_) | Attempt::TimedOut => connector.tcp_refused_since(attempt_started),
            Attempt::Resumed { .. } | Attempt::Refused { .. } => false,
        };
        if refused {
            let since = *refused_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= RELAY_GONE_AFTER {
                return Err(ClientError::RelayGone {
                    addr,
                    refused_for: RELAY_GONE_AFTER,
                });
            }
        } else {
            refused_since = None;
        }
        match attempt {
            Attempt::Resumed {
                transport,
                peer_received,
            } => {
                return Ok(Reconnected {
                    transport: *transport,
                    peer_received,
                    attempts,
                })
            }
            Attempt::Refused {
                code: Code::UnknownSession,
                reason,
            } => {
                return Err(ClientError::SessionGone {
                    addr,
                    session,
                    reason,
                })
            }
            Attempt::Refused { code, reason } if open::refusal_may_pass(code) => {
                tracing::debug!("attempt {attempts}: relay refused for now: {reason}");
            }
            Attempt::Refused { reason, .. } => return Err(ClientError::Refused { addr, reason }),
            Attempt::Failed(OpenError::KeyChanged(seen)) => {
                // Say where the key is pinned, as a new connection would:
                // the user removes that line if the change is expected. If
                // the trust source no longer refuses the new key (edited
                // meanwhile), the refusal is that a session must meet the
                // key it was opened with; never blame a --relay-fingerprint
                // the user did not give.
                let expectation = Expectation::for_relay(&config.trust, &addr)
                    .ok()
                    .filter(|e| !e.is_first_use() && !e.accepts(&seen))
                    .unwrap_or_else(|| Expectation::exactly(resume.relay_key));
                let changed = expectation.changed(&config.trust, &addr, seen);
                return Err(ClientError::KeyChanged(Box::new(changed)));
            }
            Attempt::Failed(error) => tracing::debug!("attempt {attempts}: {}", error.reason()),
            Attempt::TimedOut => tracing::debug!(
                "attempt {attempts}: no answer within {}",
                format_duration(attempt_timeout)
            ),
        }
        if lost_at.elapsed() > grace + GRACE_MARGIN {
            return Err(ClientError::SessionGone {
                addr,
                session,
                reason: format!(
                    "the relay was unreachable for longer than its grace period of {}",
                    format_duration(grace)
                ),
            });
        }
        let jitter: f64 = rand::random();
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay(jitter)) => {}
            () = now.notified() => {
                tracing::debug!("asked to try now");
                backoff = Backoff::default();
            }
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
        Ok(Reply::Resumed { received, .. }) => Attempt::Resumed {
            transport: Box::new(transport),
            peer_received: received,
        },
        Ok(Reply::Refused { code, reason }) => Attempt::Refused { code, reason },
        Ok(Reply::Created { .. }) => Attempt::Failed(OpenError::Unusable(
            "relay answered a resume as a new session".into(),
        )),
        Err(e) => Attempt::Failed(open::handshake_failure(&e)),
    }
}

/// How a link ended, in words (for what should never happen).
fn outcome_words(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Finished => "finished".into(),
        Outcome::PeerClosed(_, reason) => format!("closed by the relay: {reason}"),
        Outcome::TransportLost(reason) => format!("lost: {reason}"),
        Outcome::Protocol(reason) => format!("protocol error: {reason}"),
    }
}
