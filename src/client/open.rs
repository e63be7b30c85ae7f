//! The open path: connect to the relay, check its key, ask for a new
//! session, and pin the key on first use.
//!
//! Also the one connection attempt that reconnects share ([`connect`]): a
//! transport, raced over QUIC and TCP by the [`Connector`], whose relay key
//! meets an [`Expectation`].

use super::connector::{not_served, Connector};
use super::direct::Fallback;
use super::trust::{self, Expectation};
use super::{ClientConfig, ClientError, ClientEvent};
use crate::link::handshake::{self, HandshakeError};
use crate::proto::fleet::Home;
use crate::proto::opening::{OpenNext, Opening};
use crate::proto::reconnect::NotServed;
use crate::proto::wire::{Code, Hello, Reply, SessionId, SECRET_LEN};
use crate::transport::identity::Fingerprint;
use crate::transport::tls::{self, PinVerifier};
use crate::transport::{describe, ConnectError, Transport};
use crate::units::format_duration;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After this long without a session at start, the user hears why the
/// client is still trying.
pub(super) const START_SLOW_AFTER: Duration = Duration::from_secs(1);
/// What a refused connection says.
const NOT_LISTENING: &str = "connection refused: nothing listens on its port";

/// Why a connection attempt went nowhere.
pub(super) enum OpenError {
    /// Nothing listens on the relay's port: the connection was refused.
    NotListening(String),
    /// The connection was accepted, then closed before its TLS handshake
    /// was done, with not a word (a balancer with no relay behind it):
    /// another attempt may work.
    ClosedAtOnce(String),
    /// The network or the handshake failed otherwise (a reset, a cut, no
    /// answer): another attempt may work.
    Io(String),
    /// What answered is not a relay this client can use (it does not speak
    /// TLS, or another protocol): no attempt will.
    Unusable(String),
    /// The relay refused the session.
    Refused(Code, String),
    /// The relay presented a key the expectation does not accept.
    KeyChanged(Fingerprint),
}

impl OpenError {
    /// Why, in words.
    pub(super) fn reason(&self) -> String {
        match self {
            OpenError::NotListening(reason)
            | OpenError::ClosedAtOnce(reason)
            | OpenError::Io(reason)
            | OpenError::Unusable(reason)
            | OpenError::Refused(_, reason) => reason.clone(),
            OpenError::KeyChanged(seen) => format!("the relay presented another key ({seen})"),
        }
    }
}

/// A session the relay created.
pub(super) struct Opened {
    pub(super) transport: Transport,
    pub(super) session: SessionId,
    pub(super) secret: [u8; SECRET_LEN],
    pub(super) grace: Duration,
    pub(super) max_data: usize,
    /// The key the relay presented.
    pub(super) relay_key: Fingerprint,
    /// Where the session lives in its fleet.
    pub(super) home: Home,
}

/// Opens a new session within the connect timeout, checking the relay's key
/// against what the trust source expects, and pins it if this is the first
/// use (telling `on_event`).
///
/// Starts like a resume: a refused, reset or cut attempt is tried again
/// with jittered backoff until the connect timeout, with one line for the
/// user if it takes longer than [`START_SLOW_AFTER`]; only a refusal that
/// cannot get better (the relay refused the session, its key changed, it is
/// not a relay) ends it at once.
pub(super) async fn open_session(
    config: &ClientConfig,
    connector: &Connector,
    on_event: &mut impl FnMut(ClientEvent),
) -> Result<Opened, ClientError> {
    let addr = config.relay_addr();
    let expectation =
        Expectation::for_relay(&config.trust, &addr).map_err(|e| ClientError::Trust {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let started = Instant::now();
    let mut opening = Opening::new(started, config.connect_timeout);
    let deadline = opening.deadline();
    let mut notice = SlowStart::new(started, addr.clone());
    let mut attempts = 0u32;
    let opened = loop {
        attempts += 1;
        let attempt =
            tokio::time::timeout_at(deadline.into(), open(config, connector, &expectation));
        let error = match notice.during(attempt, on_event).await {
            Ok(Ok(opened)) => break opened,
            Ok(Err(error)) => error,
            // Out of time with an attempt under way: the last attempt that
            // ended says why, if one did.
            Err(_) => {
                let reason = notice.last.take().unwrap_or_else(|| {
                    format!(
                        "no answer within {}",
                        format_duration(config.connect_timeout)
                    )
                });
                return Err(ClientError::NoRelay { addr, reason });
            }
        };
        let next = match error {
            OpenError::KeyChanged(seen) => {
                let changed = expectation.changed(&config.trust, &addr, seen);
                return Err(ClientError::KeyChanged(Box::new(changed)));
            }
            OpenError::Unusable(reason) => return Err(ClientError::Unreachable { addr, reason }),
            // Nothing listens there: with a fallback, no use trying again.
            OpenError::NotListening(reason) if config.fallback == Fallback::Direct => {
                return Err(ClientError::NoRelay { addr, reason })
            }
            error @ (OpenError::NotListening(_)
            | OpenError::ClosedAtOnce(_)
            | OpenError::Io(_)
            | OpenError::Refused(..)) => {
                let refused = match &error {
                    OpenError::Refused(code, _) => Some(*code),
                    _ => None,
                };
                // The last attempt starts a moment before the deadline, not after.
                let next = opening.failed(refused, Instant::now(), rand::random());
                let reason = error.reason();
                if next == OpenNext::Refused {
                    return Err(ClientError::Refused { addr, reason });
                }
                tracing::debug!("start, attempt {attempts}: {reason}");
                notice.failed(reason, on_event);
                let OpenNext::Retry { at } = next else {
                    let reason = notice.last.take().unwrap_or_default();
                    return Err(ClientError::NoRelay { addr, reason });
                };
                at
            }
        };
        notice
            .during(tokio::time::sleep_until(next.into()), on_event)
            .await;
    };
    if attempts > 1 {
        tracing::debug!(
            "session opened at attempt {attempts}, {} after the first",
            format_duration(started.elapsed())
        );
    }
    let pinned = trust::pin_first_use(&config.trust, &expectation, &addr, &opened.relay_key)
        .map_err(|e| ClientError::Trust {
            addr: addr.clone(),
            reason: format!("pinning its key: {e}"),
        })?;
    if let Some(file) = pinned {
        on_event(ClientEvent::Pinned {
            relay: addr,
            fingerprint: opened.relay_key,
            file,
        });
    }
    Ok(opened)
}

/// The one line a user gets when the start takes long: after
/// [`START_SLOW_AFTER`], with the reason of the latest failed attempt — or,
/// if none has failed yet, when the first one does, or at twice that time
/// with none.
struct SlowStart {
    started: Instant,
    /// When to say it (if a reason is known by then).
    at: Pin<Box<tokio::time::Sleep>>,
    /// `at` was moved on once, waiting for a reason.
    waited: bool,
    said: bool,
    /// `host:port`.
    relay: String,
    /// Why the latest attempt failed.
    last: Option<String>,
}

impl SlowStart {
    fn new(started: Instant, relay: String) -> SlowStart {
        SlowStart {
            started,
            at: Box::pin(tokio::time::sleep_until(
                (started + START_SLOW_AFTER).into(),
            )),
            waited: false,
            said: false,
            relay,
            last: None,
        }
    }

    /// An attempt failed for `reason`.
    fn failed(&mut self, reason: String, on_event: &mut impl FnMut(ClientEvent)) {
        self.last = Some(reason);
        if self.started.elapsed() >= START_SLOW_AFTER {
            self.say(on_event);
        }
    }

    fn say(&mut self, on_event: &mut impl FnMut(ClientEvent)) {
        if std::mem::replace(&mut self.said, true) {
            return;
        }
        on_event(ClientEvent::StartSlow {
            relay: self.relay.clone(),
            reason: self.last.clone(),
        });
    }

    /// Runs `future`, telling `on_event` once if the start takes long
    /// meanwhile.
    async fn during<F: Future>(
        &mut self,
        future: F,
        on_event: &mut impl FnMut(ClientEvent),
    ) -> F::Output {
        let mut future = pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return output,
                () = &mut self.at, if !self.said => {
                    if self.last.is_none() && !self.waited {
                        // Give the attempt under way a moment to say why.
                        self.waited = true;
                        let later = self.started + 2 * START_SLOW_AFTER;
                        self.at.as_mut().reset(later.into());
                    } else {
                        self.say(on_event);
                    }
                }
            }
        }
    }
}

/// Connects with TLS, checking the relay's key against `expectation`.
/// Returns the transport and the key the relay presented.
pub(super) async fn connect(
    config: &ClientConfig,
    connector: &Connector,
    expectation: &Expectation,
) -> Result<(Transport, Fingerprint), OpenError> {
    let verifier = Arc::new(PinVerifier::new(expectation.accepted.clone()));
    let tls = tls::client_config(Arc::clone(&verifier))
        .map_err(|e| OpenError::Unusable(format!("cannot set up TLS: {e}")))?;
    let connected = connector.connect(config.connect_timeout, tls).await;
    match (connected, verifier.seen()) {
        // The key of the connection that won (with `auto`, another attempt
        // may have been shown another key, and refused it).
        (Ok(transport), _) => match transport.relay_key {
            Some(key) => Ok((transport, key)),
            None => Err(OpenError::Unusable("the relay presented no key".into())),
        },
        (Err(_), Some(seen)) if !expectation.accepts(&seen) => Err(OpenError::KeyChanged(seen)),
        (Err(e), _) => Err(connect_failure(&e)),
    }
}

/// Connects and asks the relay for a new session.
async fn open(
    config: &ClientConfig,
    connector: &Connector,
    expectation: &Expectation,
) -> Result<Opened, OpenError> {
    let (mut transport, relay_key) = connect(config, connector, expectation).await?;
    let hello = Hello::New {
        dead_after_ms: millis(config.session.dead_after),
        host: config.target_host.clone(),
        port: config.target_port,
    };
    match handshake::client(&mut transport, &hello).await {
        Ok(Reply::Created {
            session,
            secret,
            grace_ms,
            max_data,
            home,
        }) => Ok(Opened {
            transport,
            session,
            secret,
            grace: Duration::from_millis(grace_ms),
            max_data: max_data as usize,
            relay_key,
            home,
        }),
        Ok(Reply::Refused { code, reason }) => Err(OpenError::Refused(code, reason)),
        Ok(Reply::Resumed { .. }) => Err(OpenError::Unusable(
            "relay answered a new session as a resume".into(),
        )),
        Err(e) => Err(handshake_failure(&e)),
    }
}

/// A handshake that failed: on the way (another attempt may work), or with
/// something that is not the protocol (no attempt will).
pub(super) fn handshake_failure(e: &HandshakeError) -> OpenError {
    match e {
        HandshakeError::Io(_) => OpenError::Io(e.to_string()),
        HandshakeError::Decode(_) => OpenError::Unusable(e.to_string()),
    }
}

/// A connection that failed, in words for the user, and whether another
/// attempt may work.
fn connect_failure(e: &ConnectError) -> OpenError {
    match e.tls_error() {
        Some(rustls::Error::InvalidMessage(_)) => {
            return OpenError::Unusable("it does not speak TLS: it is not a resumeproxy relay (if it is sshd, give the relay's port with --relay-port), or an older resumeproxyd".into())
        }
        Some(rustls::Error::NoApplicationProtocol) => {
            return OpenError::Unusable("it speaks TLS but not the resumeproxy protocol".into())
        }
        Some(other) => return OpenError::Unusable(describe::tls_error(other)),
        None => {}
    }
    match not_served(e) {
        Some(NotServed::Refused) => OpenError::NotListening(NOT_LISTENING.into()),
        Some(NotServed::ClosedAtOnce) => OpenError::ClosedAtOnce(
            "the connection was closed before its TLS handshake was done: a balancer with no relay behind it, or the relay at a connection limit (see its log)".into(),
        ),
        None => OpenError::Io(e.to_string()),
    }
}

/// A dead-peer interval as a hello carries it.
pub(super) fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
