//! QUIC for the relay link (quinn), beside TCP+TLS.
//!
//! One QUIC connection carries one session on one bidirectional stream,
//! opened by the client; the frames on it are the very same as on TCP, so
//! the session layer does not know which transport it runs on. The TLS
//! inside QUIC is the same TLS 1.3 with the same relay key and pinning (see
//! [`super::tls`]), and the channel binding comes from the same kind of
//! exporter, so a resume is proven the same way.
//!
//! What QUIC adds is connection migration: when the client's address
//! changes, its packets simply come from the new one and the relay follows
//! (after validating the new path), with no resume and nothing replayed.
//! The client helps it along with [`follow_local_address`], which moves the
//! endpoint to a fresh socket as soon as the route to the relay leaves from
//! another address.
//!
//! Keep-alives and the idle timeout follow the client's `--dead-after`, so
//! QUIC gives up on a silent path exactly when the session layer would.
//! What a connection may hold is sized to what the session needs, since on
//! a relay with many sessions it is most of their memory: the receive
//! window to what a gigabit per second needs over a few tens of
//! milliseconds (it fills only while the local end is slower than the
//! link), the send window to the path as it goes (`send_window.rs`), and
//! peers acknowledge every [`ACK_EVERY_PACKETS`] packets rather than every
//! other one, which spares a relay sending to many clients most of the
//! datagrams it would otherwise have to read.
//!
//! The session's last word also travels in QUIC's own close (`path.rs`): a
//! client exits right after it, and its QUIC stack, unlike a closed TCP
//! socket in the kernel, goes with it; a close frame lost on the way would
//! never be sent again. The client's stack stays a moment to answer what
//! the relay still sends with that close ([`CLIENT_LINGER`]).

mod batching;
mod client_socket;
mod path;
mod send_window;
mod socket;
mod stream;

pub use socket::{udp_socket, ReadStop};

use super::addresses;
use super::identity::Fingerprint;
use super::tls::{self, BINDING_LABEL};
use super::{ConnectError, QuicError, Transport, TransportKind};
use crate::proto::fleet::InstanceName;
use crate::proto::resume_auth::BINDING_LEN;
use crate::proto::session::MAX_DEAD_AFTER;
use batching::{Batching, BatchingRuntime};
use client_socket::{ClientSocket, Heard};
use path::QuicPath;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::pki_types::CertificateDer;
use socket::StoppableSocket;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream::QuicStream;

/// Bytes the peer may send on the session's stream ahead of what was read:
/// a gigabit per second over a round trip of 32 ms, what Linux's TCP
/// buffers reach by default. The session reads as it can deliver, so this
/// fills only while the local end is slower than the link.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Bytes the peer may send on the whole connection ahead of what was read:
/// the stream's, and room for the handshake's frames.
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW + HANDSHAKE_WINDOW;
/// Bytes a client may send the relay before its session is open.
pub const HANDSHAKE_WINDOW: u32 = 64 * 1024;
/// How long a client whose last word may not have arrived (the stream's
/// close was not acknowledged in time) keeps its endpoint before it exits:
/// its QUIC stack answers every packet the relay still sends with the
/// close again. A relay that has it sends nothing more.
pub const CLIENT_LINGER: Duration = Duration::from_secs(2);
/// Heartbeats per dead-peer interval a QUIC client sends (over TCP, and on
/// the relay, four; the relay answers each of the client's): an idle
/// session hears from its peer often enough that a partition shorter than
/// the interval costs no resume. After it, a heartbeat crosses within a
/// sixteenth of the interval, and what either end last heard before it was
/// no older than that.
pub const HEARTBEATS: u32 = 16;
/// A client's connection gives up on a silent path after this many
/// dead-peer intervals: the session judges silence itself (from what the
/// socket hears, see `client_socket.rs`), and abandons the connection first.
pub const IDLE_TIMEOUTS: u32 = 2;
/// Longest idle timeout the relay allows; the client's own (its
/// `--dead-after`) is shorter and wins, as QUIC takes the smaller one.
const RELAY_IDLE_TIMEOUT: Duration = MAX_DEAD_AFTER;

/// Packets the peer may receive before it must acknowledge them.
const ACK_EVERY_PACKETS: u32 = 10;

/// Which end a transport configuration is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Client,
    Relay,
}

/// The transport parameters of one end, with the given idle timeout.
fn transport_config(
    end: End,
    idle: Duration,
    keep_alive: Option<Duration>,
) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    // Only the client opens a stream, and only one; no datagrams at all
    // (quinn would otherwise buffer them, unread, for either end).
    let streams = if end == End::Relay { 1 } else { 0 };
    config.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.datagram_receive_buffer_size(None);
    config.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    // The relay opens its window once the session is (see `QuicPath`).
    config.receive_window(VarInt::from_u32(match end {
        End::Client => CONNECTION_WINDOW,
        End::Relay => HANDSHAKE_WINDOW,
    }));
    // Sized to the path as the connection goes (see `send_window.rs`).
    config.send_window(send_window::FLOOR);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_EVERY_PACKETS));
    config.ack_frequency_config(Some(acks));
    // Durations this short always fit QUIC's idle timeout field.
    config.max_idle_timeout(IdleTimeout::try_from(idle).ok());
    config.keep_alive_interval(keep_alive);
    path_size(&mut config);
    config
}

/// The datagram size every IPv4 and IPv6 path must carry for QUIC: where
/// a connection starts, and what it falls back to.
pub const BASE_DATAGRAM: u16 = 1200;
/// The largest datagram tried: an Ethernet MTU of 1500 less the IPv4 and
/// UDP headers (over IPv6 the path search finds its own).
pub const MAX_DATAGRAM: u16 = 1452;
/// How long after a black hole the larger sizes are tried again.
pub const BLACK_HOLE_RETRY: Duration = Duration::from_secs(60);
/// How often the path is searched for a larger size otherwise.
pub const PATH_SEARCH_EVERY: Duration = Duration::from_secs(600);

/// The path's datagram size (DPLPMTUD, RFC 8899): a connection starts at
/// [`BASE_DATAGRAM`] and searches upwards with probes, up to
/// [`MAX_DATAGRAM`]. When the path shrinks and large datagrams vanish
/// without a word (a VPN or tunnel coming up, its ICMP filtered), quinn's
/// black hole detection sees bursts of lost large packets while smaller
/// ones arrive and, after four such bursts — within a second or two of
/// bulk data — falls back to [`BASE_DATAGRAM`] and resends what was lost
/// in datagrams of that size; it searches upwards again
/// [`BLACK_HOLE_RETRY`] later (the probes are extra packets: their loss
/// costs no data). A new connection over the shrunk path starts at the
/// base size and stays there. Should all that not be enough, the session's
/// own rule (data unacknowledged while heartbeats arrive) abandons the
/// connection after the dead-peer interval.
fn path_size(config: &mut quinn::TransportConfig) {
    config.initial_mtu(BASE_DATAGRAM);
    config.min_mtu(BASE_DATAGRAM);
    let mut search = quinn::MtuDiscoveryConfig::default();
    search
        .upper_bound(MAX_DATAGRAM)
        .black_hole_cooldown(BLACK_HOLE_RETRY)
        .interval(PATH_SEARCH_EVERY);
    config.mtu_discovery_config(Some(search));
}

/// Derives the key that signs the relay's QUIC connection ids from the
/// reset key, so that every worker recognises every other's ids.
const CID_KEY_LABEL: &[u8] = b"resumeproxy quic connection ids";

/// The relay's QUIC endpoint on `socket` (UDP), with the relay's TLS
/// configuration (its key, TLS 1.3, the ALPN), and the switch that stops
/// its reading.
pub fn server_endpoint(
    socket: UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    max_handshakes: usize,
    reset_key: [u8; 32],
) -> io::Result<(quinn::Endpoint, ReadStop)> {
    let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        End::Relay,
        RELAY_IDLE_TIMEOUT,
        None,
    )));
    config.migration(true);
    config.max_incoming(max_handshakes.max(1));
    // Stateless resets keyed the same in every worker: a client still on
    // a connection to a worker that is gone learns it at its next packet.
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
    // So are the connection ids: quinn drops a packet whose id its
    // generator did not sign, before it would answer with a reset, and its
    // default generator signs with a key of its own process.
    let cid_key = ring::hmac::sign(&reset_key, CID_KEY_LABEL);
    let cid_key = u64::from_le_bytes(cid_key.as_ref()[..8].try_into().expect("8 bytes"));
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // Every client a new worker must tell gets its reset at once: quinn's
    // default sends one per 20 ms, and the packets a crash left queued all
    // come in one batch, so 100 idle clients would learn over seconds. No
    // reset amplifies (it is smaller than the packet that asked for it)
    // and only a packet with an id this relay signed gets one.
    endpoint_config.min_reset_interval(Duration::ZERO);
    let runtime = Arc::new(BatchingRuntime);
    let reads = ReadStop::default();
    let socket = Arc::new(StoppableSocket {
        inner: Batching::wrap(quinn::Runtime::wrap_udp_socket(&*runtime, socket)?),
        reads: reads.clone(),
    });
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(config), socket, runtime)?;
    Ok((endpoint, reads))
}

/// Completes the relay's side of a QUIC connection: the handshake and the
/// client's stream (the caller bounds it with a timeout).
pub async fn accept(incoming: quinn::Incoming) -> io::Result<Transport> {
    let connection = incoming.accept()?.await?;
    let (send, recv) = connection.accept_bi().await?;
    let server_name = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.server_name);
    let mut transport = transport(connection, send, recv, None)?;
    transport.server_name = server_name;
    Ok(transport)
}

/// The transport on a connection's stream; `heard`, on the client, is
/// what its socket heard besides QUIC.
fn transport(
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    heard: Option<Arc<Heard>>,
) -> io::Result<Transport> {
    let mut binding = [0u8; BINDING_LEN];
    connection
        .export_keying_material(&mut binding, BINDING_LABEL, &[])
        .map_err(|_| io::Error::other("cannot derive the channel binding"))?;
    let transport = Transport::new(
        Box::new(QuicStream::new(connection.clone(), send, recv)),
        connection.remote_address(),
        TransportKind::Quic,
        binding,
    );
    Ok(transport.with_path(QuicPath::new(connection, heard)))
}

/// A QUIC connection that failed, in words.
fn connect_error(e: quinn::ConnectionError) -> ConnectError {
    match e {
        // What the relay answers at its limit of connections in their
        // handshake.
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            ConnectError::TurnedAway
        }
        other => ConnectError::Quic(QuicError::Connection(other)),
    }
}

/// The client's QUIC endpoint: one UDP socket for every connection to one
/// relay, moved to a new socket when the local address changes.
#[derive(Debug, Clone)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    /// What its socket heard besides QUIC (it moves to each new socket).
    heard: Arc<Heard>,
}

impl QuicClient {
    /// An endpoint on an ephemeral port of the family of `relay`.
    pub fn new(relay: SocketAddr) -> io::Result<QuicClient> {
        let heard = Arc::new(Heard::default());
        let socket = ClientSocket::new(
            udp_socket(addresses::unspecified(relay))?,
            Arc::clone(&heard),
        )?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            Arc::new(socket),
            Arc::new(BatchingRuntime),
        )?;
        Ok(QuicClient { endpoint, heard })
    }

    /// What the endpoint's socket heard besides QUIC.
    pub fn heard(&self) -> &Heard {
        &self.heard
    }

    /// Connects to the relay at `addr` and opens the session's stream; the
    /// caller bounds it with a timeout. Keep-alives go four times per
    /// `dead_after`, and the connection's own idle timeout is longer (the
    /// session judges silence, see [`IDLE_TIMEOUTS`]). A reconnect names
    /// the `instance` that holds its session, as SNI. The relay's host
    /// saying that nothing listens on its UDP port ends the attempt at once.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        dead_after: Duration,
        instance: Option<&InstanceName>,
    ) -> Result<Transport, ConnectError> {
        let crypto = QuicClientConfig::try_from(tls::naming(&tls, instance))
            .map_err(|e| ConnectError::Quic(QuicError::Config(e)))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(
            End::Client,
            dead_after.saturating_mul(IDLE_TIMEOUTS),
            Some(dead_after / 4),
        )));
        // The relay is identified by its pinned key, not by this name.
        let name = instance.map_or_else(|| addr.ip().to_string(), |i| i.as_str().to_owned());
        let started = Instant::now();
        let connecting = self
            .endpoint
            .connect_with(config, addr, &name)
            .map_err(|e| ConnectError::Quic(QuicError::Start(e)))?;
        let opened = async {
            let connection = connecting.await.map_err(connect_error)?;
            let (send, recv) = connection.open_bi().await.map_err(connect_error)?;
            Ok::<_, ConnectError>((connection, send, recv))
        };
        let (connection, send, recv) = tokio::select! {
            opened = opened => opened?,
            () = self.heard.unreachable_after(started) => {
                return Err(ConnectError::Quic(QuicError::PortUnreachable));
            }
        };
        let relay_key = connection
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().map(|key| Fingerprint::of_spki(key.as_ref())));
        let mut transport = transport(connection, send, recv, Some(Arc::clone(&self.heard)))
            .map_err(|e| ConnectError::Quic(QuicError::Binding(e)))?;
        transport.relay_key = relay_key;
        Ok(transport)
    }

    /// Keeps the endpoint for at most `max`, until its connections have
    /// finished closing: a close the relay may not have heard is sent again
    /// to whatever the relay still sends.
    pub async fn linger(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.endpoint.wait_idle()).await;
    }

    /// Moves the endpoint to a new UDP socket: the relay sees packets from
    /// the new address and migrates the connection to it.
    fn rebind(&self, relay: SocketAddr) -> io::Result<()> {
        let socket = udp_socket(addresses::unspecified(relay))?;
        let socket = ClientSocket::new(socket, Arc::clone(&self.heard))?;
        self.endpoint.rebind_abstract(Arc::new(socket))
    }
}

/// Watches the route to `relay` and, when it starts to leave from another
/// local address (the old one was deleted, Wi-Fi changed), rebinds the
/// client's endpoint so that the relay hears from the new address at once
/// instead of at the next keep-alive. Runs until dropped.
pub async fn follow_local_address(client: QuicClient, relay: SocketAddr) {
    let mut current = addresses::route_source(relay);
    let mut ticks = tokio::time::interval(addresses::CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = addresses::route_source(relay);
        if now.is_none() || now == current {
            continue;
        }
        match client.rebind(relay) {
            Ok(()) => tracing::debug!(
                "the route to {relay} now leaves from {}; moved the QUIC path",
                now.map_or_else(|| "?".into(), |ip| ip.to_string())
            ),
            Err(e) => tracing::debug!("cannot move the QUIC path to a new socket: {e}"),
        }
        current = now;
    }
}
