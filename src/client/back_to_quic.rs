//! Back to QUIC: a session that `auto` put on TCP probes QUIC in the
//! background and moves onto it when it answers.
//!
//! TCP often wins the race right after an outage or under load although UDP
//! works, and a session left on TCP loses what QUIC gives a roaming user
//! (an address change without a resume). So while a session runs over TCP
//! and UDP is not known to be blocked, the [`QuicProbe`] tries QUIC (see
//! [`Connector::probe_quic`]). When a QUIC connection answers, the client
//! stops reading the TCP transport, notes the position it has received up
//! to, and resumes the session over QUIC with the usual proof — the relay
//! lets a new authenticated transport win over the live one, and each side
//! re-sends from the position the other stated, so nothing is lost or
//! delivered twice. Until the relay's answer comes the local end is still
//! served (without a transport); if no answer comes, the session simply
//! goes on over TCP, and if the relay had switched after all, TCP breaks and
//! the session resumes as after any loss.
//!
//! A probe that hears nothing for [`UDP_PROBE_TIME`](super::connector::UDP_PROBE_TIME)
//! while TCP works is the evidence that UDP is blocked: QUIC is then left
//! alone for a while, from a few seconds after the first such probe to ten
//! minutes after many in a row (see [`super::udp_memory`]). A probe that
//! failed otherwise, or a move the relay did not answer, is tried again
//! after [`PROBE_AGAIN_AFTER`].

use super::connector::Connector;
use super::open;
use super::reconnect::Resume;
use super::trust::Expectation;
use super::ClientConfig;
use crate::link::handshake;
use crate::proto::resume_auth;
use crate::proto::wire::{Code, Hello, Reply};
use crate::transport::tls::{self, PinVerifier};
use crate::transport::{ConnectError, QuicError, Transport};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After a probe or a move that failed for another reason than silence,
/// how long until the next.
pub const PROBE_AGAIN_AFTER: Duration = Duration::from_secs(30);
/// How long the relay may take to answer the move (at most half the
/// dead-peer interval: the TCP transport is not read meanwhile).
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(1);

type Probing = Pin<Box<dyn Future<Output = Result<Transport, ConnectError>> + Send>>;

/// The background probe of a session on TCP.
pub(super) struct QuicProbe {
    connector: Arc<Connector>,
    /// The key the session was opened with: QUIC must present it too.
    relay_key: crate::transport::identity::Fingerprint,
    /// When to probe next; `None` while probing does not apply (the session
    /// is on QUIC, or the choice is not `auto`).
    next_at: Option<Instant>,
    /// The probe under way.
    running: Option<Probing>,
}

impl QuicProbe {
    pub(super) fn new(
        connector: Arc<Connector>,
        relay_key: crate::transport::identity::Fingerprint,
    ) -> QuicProbe {
        QuicProbe {
            connector,
            relay_key,
            next_at: None,
            running: None,
        }
    }

    /// The session is on a transport of this kind now: probe if it is TCP
    /// and UDP is not known to be blocked (or once that knowledge expires).
    pub(super) fn on(&mut self, transport: &Transport) {
        match transport.kind {
            crate::transport::TransportKind::Tls => {
                if self.next_at.is_none() && self.running.is_none() {
                    self.next_at = self.connector.quic_probe_at(Instant::now());
                }
            }
            crate::transport::TransportKind::Quic => self.stop(),
        }
    }

    /// No probing: the transport is gone, or is QUIC already.
    pub(super) fn stop(&mut self) {
        self.next_at = None;
        self.running = None;
    }

    /// Try again later (the probe or the move failed, and not for silence),
    /// or when UDP's blocked mark expires.
    pub(super) fn later(&mut self) {
        let now = Instant::now();
        self.next_at = self
            .connector
            .quic_probe_at(now)
            .map(|at| at.max(now + PROBE_AGAIN_AFTER));
    }

    /// Resolves with a QUIC transport that answered, or with why the probe
    /// failed. Cancel-safe: a probe under way is kept for the next call.
    pub(super) async fn next(&mut self) -> Result<Transport, ConnectError> {
        if self.running.is_none() {
            let Some(at) = self.next_at else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(at.into()).await;
            self.next_at = None;
            let verifier = Arc::new(PinVerifier::new(
                Expectation::exactly(self.relay_key).accepted,
            ));
            let tls =
                tls::client_config(verifier).map_err(|e| ConnectError::Quic(QuicError::Tls(e)))?;
            let connector = Arc::clone(&self.connector);
            tracing::debug!("probing QUIC in the background");
            self.running = Some(Box::pin(async move { connector.probe_quic(tls).await }));
        }
        let result = match self.running.as_mut() {
            Some(running) => running.await,
            None => std::future::pending().await,
        };
        self.running = None;
        if let Err(e) = &result {
            tracing::debug!("QUIC probe failed: {e}");
            if !e.is_quic_unanswered() {
                self.later();
            } else {
                self.next_at = self.connector.quic_probe_at(Instant::now());
            }
        }
        result
    }
}

/// The hello that moves the session onto `quic`, received up to `received`.
pub(super) fn move_hello(
    config: &ClientConfig,
    resume: &Resume,
    quic: &Transport,
    received: u64,
) -> Hello {
    Hello::Resume {
        dead_after_ms: open::millis(config.session.dead_after),
        session: resume.session,
        proof: resume_auth::proof(&resume.secret, &resume.session, &quic.binding),
        received,
    }
}

/// Why the session did not move onto QUIC.
pub(super) enum NotMoved {
    /// QUIC reached another instance of the fleet than the session's:
    /// the relay's words.
    Astray(String),
    /// Anything else, in words: another probe may work.
    Failed(String),
}

/// Asks the relay to move the session onto `quic`, waiting at most
/// `timeout`; the position it has received up to, if it did.
pub(super) async fn ask_move(
    quic: &mut Transport,
    hello: &Hello,
    timeout: Duration,
) -> Result<u64, NotMoved> {
    let failed = |why: String| Err(NotMoved::Failed(why));
    match tokio::time::timeout(timeout, handshake::client(quic, hello)).await {
        Ok(Ok(Reply::Resumed { received, .. })) => Ok(received),
        Ok(Ok(Reply::Refused {
            code: Code::OtherInstance,
            reason,
        })) => Err(NotMoved::Astray(reason)),
        Ok(Ok(Reply::Refused { reason, .. })) => failed(format!("the relay refused: {reason}")),
        Ok(Ok(Reply::Created { .. })) => failed("the relay answered with a new session".into()),
        Ok(Err(e)) => failed(e.to_string()),
        Err(_) => failed("no answer in time".into()),
    }
}
