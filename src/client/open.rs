//! The open path: connect to the relay, check its key, ask for a new
//! session, and pin the key on first use.
//!
//! Also the one connection attempt that reconnects share ([`connect`]): a
//! transport, raced over QUIC and TCP by the [`Connector`], whose relay key
//! meets an [`Expectation`].

use super::connector::Connector;
use super::trust::{self, Expectation};
use super::{ClientConfig, ClientError, ClientEvent};
use crate::link::handshake;
use crate::proto::wire::{Hello, Reply, SessionId, SECRET_LEN};
use crate::transport::identity::Fingerprint;
use crate::transport::tls::{self, PinVerifier};
use crate::transport::{ConnectError, Transport};
use crate::units::format_duration;
use std::sync::Arc;
use std::time::Duration;

/// Why a connection attempt went nowhere.
pub(super) enum OpenError {
    /// The network or the handshake failed.
    Io(String),
    /// The relay refused the session.
    Refused(String),
    /// The relay presented a key the expectation does not accept.
    KeyChanged(Fingerprint),
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
}

/// Opens a new session within the connect timeout, checking the relay's key
/// against what the trust source expects, and pins it if this is the first
/// use (telling `on_event`).
pub(super) async fn open_session(
    config: &ClientConfig,
    connector: &Connector,
    on_event: &mut impl FnMut(ClientEvent),
) -> Result<Opened, ClientError> {
    let addr = config.relay_addr();
    let unreachable = |reason: String| ClientError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let expectation =
        Expectation::for_relay(&config.trust, &addr).map_err(|e| ClientError::Trust {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let opened = tokio::time::timeout(
        config.connect_timeout,
        open(config, connector, &expectation),
    )
    .await;
    let opened = match opened {
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {}",
                format_duration(config.connect_timeout)
            )))
        }
        Ok(Err(OpenError::Io(reason))) => return Err(unreachable(reason)),
        Ok(Err(OpenError::Refused(reason))) => return Err(ClientError::Refused { addr, reason }),
        Ok(Err(OpenError::KeyChanged(seen))) => {
            let changed = expectation.changed(&config.trust, &addr, seen);
            return Err(ClientError::KeyChanged(Box::new(changed)));
        }
        Ok(Ok(opened)) => opened,
    };
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

/// Connects with TLS, checking the relay's key against `expectation`.
/// Returns the transport and the key the relay presented.
pub(super) async fn connect(
    config: &ClientConfig,
    connector: &Connector,
    expectation: &Expectation,
) -> Result<(Transport, Fingerprint), OpenError> {
    let verifier = Arc::new(PinVerifier::new(expectation.accepted.clone()));
    let tls =
        tls::client_config(Arc::clone(&verifier)).map_err(|e| OpenError::Io(e.to_string()))?;
    let connected = connector.connect(config.connect_timeout, tls).await;
    match (connected, verifier.seen()) {
        // The key of the connection that won (with `auto`, another attempt
        // may have been shown another key, and refused it).
        (Ok(transport), _) => match transport.relay_key {
            Some(key) => Ok((transport, key)),
            None => Err(OpenError::Io("the relay presented no key".into())),
        },
        (Err(_), Some(seen)) if !expectation.accepts(&seen) => Err(OpenError::KeyChanged(seen)),
        (Err(e), _) => Err(OpenError::Io(describe_connect_error(&e))),
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
        }) => Ok(Opened {
            transport,
            session,
            secret,
            grace: Duration::from_millis(grace_ms),
            max_data: max_data as usize,
            relay_key,
        }),
        Ok(Reply::Refused { reason, .. }) => Err(OpenError::Refused(reason)),
        Ok(Reply::Resumed { .. }) => Err(OpenError::Io(
            "relay answered a new session as a resume".into(),
        )),
        Err(e) => Err(OpenError::Io(e.to_string())),
    }
}

/// Turns a failed connection into words for the user.
fn describe_connect_error(e: &ConnectError) -> String {
    match e.tls_error() {
        Some(rustls::Error::InvalidMessage(_)) => {
            "it does not speak TLS: it is not a resumeproxy relay (if it is sshd, give the relay's port with --relay-port), or an older resumeproxyd".into()
        }
        Some(rustls::Error::NoApplicationProtocol) => {
            "it speaks TLS but not the resumeproxy protocol".into()
        }
        _ if matches!(e, ConnectError::Tls(io) if io.kind() == std::io::ErrorKind::UnexpectedEof) => {
            "the relay closed the connection during the TLS handshake (it may be at a connection limit; see its log)".into()
        }
        _ => e.to_string(),
    }
}

/// A dead-peer interval as a hello carries it.
pub(super) fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
