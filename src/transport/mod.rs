//! Transports: the ordered, reliable byte streams a session's frames travel on.
//!
//! The session layer does not know which one it is on: a [`Transport`] is any
//! boxed `AsyncRead + AsyncWrite` plus the protocol state of that one
//! connection (a [`Connection`]: its handshake, the bytes read but not yet
//! parsed, the frames encoded but not yet written). It is thrown away with
//! the transport when it breaks; the session replays from its own buffer on
//! the next one.
//!
//! Two kinds: TCP with `TCP_NODELAY` (writes are batched by the driver, so
//! Nagle would only add latency to interactive traffic) under TLS 1.3 (see
//! [`tls`]), and QUIC (see `quic.rs`). What little differs between them once
//! they are open — whether addresses move, whether a flow-control window
//! opens with the session — each kind says through [`NetworkPath`], so this
//! module needs neither. The relay's [`identity`] is what both present; the
//! client's own addresses (`addresses.rs`) tell it when a path has left the machine.

pub(crate) mod addresses;
pub mod describe;
mod errno;
pub mod identity;
pub mod net_events;
// The relay's half of QUIC (its endpoint, accept) is used on Linux only.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod quic;
#[cfg(target_os = "linux")]
pub mod tcp_info;
pub mod tls;

use crate::proto::connection::Connection;
use crate::proto::resume_auth::BINDING_LEN;
use crate::proto::wire::Code;
use crate::units::format_duration;
use identity::Fingerprint;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

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

/// The network path under a transport's byte stream: what the drivers ask
/// of it besides bytes. Each kind of transport answers for itself.
pub trait NetworkPath: Send + Sync {
    /// The other end's address now (QUIC follows a client that moved).
    fn peer_now(&self) -> SocketAddr;
    /// This end's address, where it is fixed for the connection's life
    /// (TCP); `None` where it moves with the client (QUIC) or is not known.
    fn fixed_local(&self) -> Option<SocketAddr>;
    /// Lets the peer send at full speed once its session is open; a kind
    /// that starts with a small window (QUIC on the relay) opens it here.
    fn open_windows(&self) {}
    /// The path's round-trip time as the transport measures it, where it
    /// does (QUIC, always, from its acks); `None` where it does not.
    fn rtt(&self) -> Option<Duration> {
        None
    }
    /// How long ago the peer's transport last acknowledged anything this
    /// side sent, where the transport says (TCP, from the kernel's
    /// `TCP_INFO`): when its data stopped arriving, whether small packets
    /// — this side's heartbeats, their acknowledgements — still passed.
    fn since_peer_acked(&self) -> Option<Duration> {
        None
    }
    /// How many heartbeats the session sends per dead-peer interval while
    /// idle.
    fn heartbeats(&self) -> u32 {
        crate::proto::session::HEARTBEATS
    }
    /// When the path last carried anything from the peer, where the
    /// transport knows more than the session's frames tell (QUIC's
    /// acknowledgements, on the client).
    fn last_heard(&self) -> Option<Instant> {
        None
    }
    /// Puts the session's last word (`code`, `reason`) in the transport's
    /// own close too, where it has one (QUIC's `CONNECTION_CLOSE`, which
    /// its stack sends again to every packet the peer still sends): the
    /// peer learns it even when the stream's last frames were lost. The
    /// transport is closed from then on.
    fn close(&self, _code: Code, _reason: &str) {}
    /// The last word the peer put in the transport's own close, if it
    /// closed it with one (see [`close`](Self::close)).
    fn goodbye(&self) -> Option<(Code, String)> {
        None
    }
}

/// A path whose addresses do not change: TCP, or a stream made in a test.
#[derive(Debug, Clone, Copy)]
pub struct FixedPath {
    /// The other end's address.
    pub peer: SocketAddr,
    /// This end's address, if known.
    pub local: Option<SocketAddr>,
}

impl NetworkPath for FixedPath {
    fn peer_now(&self) -> SocketAddr {
        self.peer
    }

    fn fixed_local(&self) -> Option<SocketAddr> {
        self.local
    }
}

/// One connection between client and relay, with its buffers.
pub struct Transport {
    /// The byte stream.
    pub stream: Box<dyn ByteStream>,
    /// The other end's address when the connection was made.
    pub peer: SocketAddr,
    /// What kind of stream it is.
    pub kind: TransportKind,
    /// On the client: the key the relay presented on this very connection.
    pub relay_key: Option<Fingerprint>,
    /// On the relay: the server name (TLS SNI) the client sent, if any —
    /// a reconnect names the fleet instance that holds its session.
    pub server_name: Option<String>,
    /// The connection's channel binding (see [`tls::channel_binding`]): what
    /// a resume proof is bound to.
    pub binding: [u8; BINDING_LEN],
    /// The protocol on this connection: its handshake, then frames, with
    /// the bytes read and not yet parsed and those queued to be written.
    pub connection: Connection,
    /// The network path under the stream.
    path: Box<dyn NetworkPath>,
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
    #[error("{}", describe::io_error(.0))]
    Tcp(io::Error),
    /// TCP worked, the TLS handshake did not.
    #[error("TLS handshake failed: {}", describe::io_error(.0))]
    Tls(io::Error),
    /// QUIC failed: no answer over UDP, or its handshake failed.
    #[error("{0}")]
    Quic(QuicError),
    /// The relay answered and turned the connection away before its
    /// handshake: it is at a limit of connections in their handshake.
    /// Another attempt, a moment later, may pass.
    #[error("the relay turned the connection away: it is at its limit of connections being set up, its log says which")]
    TurnedAway,
}

/// Why a QUIC connection to the relay could not be made; its words are
/// [`describe`]'s.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The connection failed: no answer over UDP, a handshake that failed,
    /// a close.
    #[error("{}", describe::quic_error(.0))]
    Connection(quinn::ConnectionError),
    /// The relay's host said that nothing listens on its UDP port (ICMP
    /// port unreachable).
    #[error("nothing listens on the relay's UDP port (its host says so)")]
    PortUnreachable,
    /// Nothing came back within the attempt's time.
    #[error("no answer over QUIC within {}: is UDP blocked on the way?", format_duration(*.0))]
    TimedOut(Duration),
    /// Looking the relay's name up failed.
    #[error("{}", describe::io_error(.0))]
    Lookup(io::Error),
    /// The relay's name has no address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// The client's UDP socket could not be made.
    #[error("cannot open a UDP socket: {}", describe::io_error(.0))]
    Endpoint(io::Error),
    /// The TLS configuration could not be made.
    #[error("cannot set up TLS: {0}")]
    Tls(rustls::Error),
    /// The TLS configuration does not suit QUIC.
    #[error("cannot set up QUIC: {0}")]
    Config(quinn::crypto::rustls::NoInitialCipherSuite),
    /// The connection could not be started.
    #[error("cannot start a QUIC connection: {0}")]
    Start(quinn::ConnectError),
    /// The connection's channel binding could not be derived.
    #[error("{}", describe::io_error(.0))]
    Binding(io::Error),
}

impl ConnectError {
    /// The TLS library's own error, if that is what failed.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            ConnectError::Tls(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            ConnectError::Tcp(_) | ConnectError::Quic(_) | ConnectError::TurnedAway => None,
        }
    }

    /// QUIC heard nothing back: UDP is blocked on the way, or nothing
    /// listens on the relay's UDP port.
    pub fn is_quic_unanswered(&self) -> bool {
        matches!(
            self,
            ConnectError::Quic(
                QuicError::TimedOut(_) | QuicError::Connection(quinn::ConnectionError::TimedOut)
            )
        )
    }
}

impl Transport {
    /// A transport on `stream`, freshly connected to `peer`, on a path that
    /// does not move and whose local address is not known (see
    /// [`with_path`](Self::with_path)).
    pub fn new(
        stream: Box<dyn ByteStream>,
        peer: SocketAddr,
        kind: TransportKind,
        binding: [u8; BINDING_LEN],
    ) -> Transport {
        Transport {
            stream,
            peer,
            kind,
            relay_key: None,
            server_name: None,
            binding,
            // Replaced when the handshake starts, as client or as relay.
            connection: Connection::default(),
            path: Box::new(FixedPath { peer, local: None }),
        }
    }

    /// The same transport on the given network path.
    pub fn with_path(mut self, path: impl NetworkPath + 'static) -> Transport {
        self.path = Box::new(path);
        self
    }

    /// The other end's address now: after a QUIC migration, the new one.
    pub fn peer_now(&self) -> SocketAddr {
        self.path.peer_now()
    }

    /// This end's address, while it is one that cannot move (TCP).
    pub fn fixed_local(&self) -> Option<SocketAddr> {
        self.path.fixed_local()
    }

    /// The round-trip time the transport itself measures, if it does
    /// (QUIC); see [`NetworkPath::rtt`].
    pub fn rtt(&self) -> Option<Duration> {
        self.path.rtt()
    }

    /// How long ago the peer's transport last acknowledged something, if it
    /// says (TCP); see [`NetworkPath::since_peer_acked`].
    pub fn since_peer_acked(&self) -> Option<Duration> {
        self.path.since_peer_acked()
    }

    /// Heartbeats per dead-peer interval (see [`NetworkPath::heartbeats`]).
    pub fn heartbeats(&self) -> u32 {
        self.path.heartbeats()
    }

    /// When the path last carried anything from the peer, if the
    /// transport knows (see [`NetworkPath::last_heard`]).
    pub fn last_heard(&self) -> Option<Instant> {
        self.path.last_heard()
    }

    /// Ends the transport with the session's last word in its own close,
    /// where it has one (see [`NetworkPath::close`]).
    pub fn close(&self, code: Code, reason: &str) {
        self.path.close(code, reason);
    }

    /// The peer's last word, if it closed the transport with one (see
    /// [`NetworkPath::goodbye`]).
    pub fn goodbye(&self) -> Option<(Code, String)> {
        self.path.goodbye()
    }

    /// Lets the peer send at full speed: a QUIC connection starts with a
    /// small receive window until its session is open (so that connections
    /// still in their handshake cannot make the relay buffer much).
    pub fn open_windows(&self) {
        self.path.open_windows();
    }
}
