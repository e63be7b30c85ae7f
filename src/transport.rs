//! Transports: the ordered, reliable byte streams a session's frames travel on.
//!
//! The session layer does not know which one it is on: a [`Transport`] is any
//! boxed `AsyncRead + AsyncWrite` plus the buffers that belong to one
//! connection (bytes read but not yet parsed, frames encoded but not yet
//! written). Both are thrown away with the transport when it breaks; the
//! session replays from its own buffer on the next one.
//!
//! Two kinds: TCP with `TCP_NODELAY` (writes are batched by the driver, so
//! Nagle would only add latency to interactive traffic) under TLS 1.3 (see
//! [`crate::tls`]), and QUIC (see [`crate::quic`]). [`crate::connector`]
//! chooses between them.

use crate::identity::Fingerprint;
use crate::tls::{channel_binding, BINDING_LEN};
use crate::write_queue::WriteQueue;
use bytes::BytesMut;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bytes reserved for each read from a transport.
pub const TRANSPORT_READ_SIZE: usize = 256 * 1024;

/// Any byte stream a session can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// Which kind of transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// TLS 1.3 over TCP.
    Tls,
    /// QUIC (its own TLS 1.3) over UDP.
    Quic,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportKind::Tls => f.write_str("tls"),
            TransportKind::Quic => f.write_str("quic"),
        }
    }
}

/// One connection between client and relay, with its buffers.
pub struct Transport {
    /// The byte stream.
    pub stream: Box<dyn ByteStream>,
    /// The other end's address.
    pub peer: SocketAddr,
    /// This end's address, where it is fixed for the connection's life
    /// (TCP; QUIC moves with the client).
    pub local: Option<SocketAddr>,
    /// What kind of stream it is.
    pub kind: TransportKind,
    /// On the client: the key the relay presented on this very connection.
    pub relay_key: Option<Fingerprint>,
    /// The QUIC connection, if that is what this is (its peer address moves
    /// with the client).
    pub quic: Option<quinn::Connection>,
    /// The connection's channel binding (see [`crate::tls::channel_binding`]).
    pub binding: [u8; BINDING_LEN],
    /// Bytes read and not yet parsed.
    pub read_buf: BytesMut,
    /// Frames encoded and not yet written.
    pub write_queue: WriteQueue,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Why a connection to the relay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP failed: refused, unreachable, timed out.
    #[error("{0}")]
    Tcp(io::Error),
    /// TCP worked, the TLS handshake did not.
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// QUIC failed: no answer over UDP, or its handshake failed.
    #[error("QUIC: {0}")]
    Quic(String),
}

impl ConnectError {
    /// The TLS library's own error, if that is what failed.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            ConnectError::Tls(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            ConnectError::Tcp(_) | ConnectError::Quic(_) => None,
        }
    }

    /// A QUIC connection that failed, in words.
    pub fn from_quic(e: quinn::ConnectionError) -> ConnectError {
        match e {
            quinn::ConnectionError::TimedOut => {
                ConnectError::Quic("no answer over UDP (is UDP blocked on the way?)".into())
            }
            other => ConnectError::Quic(other.to_string()),
        }
    }
}

impl Transport {
    /// A transport on `stream`, freshly connected to `peer`.
    pub fn new(
        stream: Box<dyn ByteStream>,
        peer: SocketAddr,
        kind: TransportKind,
        binding: [u8; BINDING_LEN],
    ) -> Transport {
        Transport {
            stream,
            peer,
            local: None,
            kind,
            relay_key: None,
            quic: None,
            binding,
            // Grown to TRANSPORT_READ_SIZE by the link once a session runs;
            // a connection still in its handshake holds only what it sent.
            read_buf: BytesMut::new(),
            write_queue: WriteQueue::new(),
        }
    }

    /// The other end's address now: after a QUIC migration, the new one.
    pub fn peer_now(&self) -> SocketAddr {
        self.quic
            .as_ref()
            .map_or(self.peer, quinn::Connection::remote_address)
    }

    /// Lets the peer send at full speed: a QUIC connection starts with a
    /// small receive window until its session is open (so that connections
    /// still in their handshake cannot make the relay buffer much).
    pub fn open_windows(&self) {
        if let Some(quic) = &self.quic {
            crate::quic::open_windows(quic);
        }
    }

    /// Connects to the relay at `host:port` (trying each resolved address)
    /// and completes the TLS handshake, all within `timeout`.
    pub async fn connect(
        host: &str,
        port: u16,
        timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Transport, ConnectError> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {}", crate::cli::format_duration(timeout)),
            )
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ConnectError::Tcp(timed_out()))?
            .map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let peer = tcp.peer_addr().map_err(ConnectError::Tcp)?;
        let local = tcp.local_addr().ok();
        // The relay is identified by its pinned key, not by a name.
        let name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
        let stream = tokio::time::timeout_at(deadline, TlsConnector::from(tls).connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Tls(timed_out()))?
            .map_err(ConnectError::Tls)?;
        let binding = channel_binding(stream.get_ref().1)
            .map_err(|e| ConnectError::Tls(io::Error::other(e)))?;
        let relay_key = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|key| Fingerprint::of_spki(key.as_ref()));
        let mut transport = Transport::new(Box::new(stream), peer, TransportKind::Tls, binding);
        transport.local = local;
        transport.relay_key = relay_key;
        Ok(transport)
    }

    /// Completes the relay's side of the TLS handshake on an accepted
    /// connection (the caller bounds it with a timeout).
    pub async fn accept(tcp: TcpStream, tls: &TlsAcceptor) -> io::Result<Transport> {
        tcp.set_nodelay(true)?;
        let peer = tcp.peer_addr()?;
        let stream = tls.accept(tcp).await?;
        let binding = channel_binding(stream.get_ref().1).map_err(io::Error::other)?;
        Ok(Transport::new(
            Box::new(stream),
            peer,
            TransportKind::Tls,
            binding,
        ))
    }
}
