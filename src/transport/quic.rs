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
//! QUIC gives up on a silent path exactly when the session layer would; the
//! flow-control windows are sized for bulk transfers over long fat links.

use super::addresses;
use super::identity::Fingerprint;
use super::tls::{self, BINDING_LABEL};
use super::{ConnectError, NetworkPath, QuicError, Transport, TransportKind};
use crate::proto::fleet::InstanceName;
use crate::proto::resume_auth::BINDING_LEN;
use crate::proto::session::MAX_DEAD_AFTER;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes the peer may send on the session's stream ahead of what was read:
/// room for a bandwidth-delay product of 1 Gbit/s over 60 ms.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Bytes the peer may send on the whole connection ahead of what was read.
pub const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;
/// Bytes a client may send the relay before its session is open.
pub const HANDSHAKE_WINDOW: u32 = 64 * 1024;
/// Bytes this side may have sent and not yet had acknowledged.
pub const SEND_WINDOW: u64 = 2 * STREAM_WINDOW as u64;
/// Socket buffer asked for each way on UDP sockets (the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`): the default, some 200 KiB, drops
/// datagrams at a few hundred MiB/s, and every drop costs QUIC a congestion
/// window cut.
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;
/// Longest idle timeout the relay allows; the client's own (its
/// `--dead-after`) is shorter and wins, as QUIC takes the smaller one.
const RELAY_IDLE_TIMEOUT: Duration = MAX_DEAD_AFTER;

/// The session's stream: the two halves of one bidirectional QUIC stream.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Once the stream is finished: resolves when the peer has all of it.
    delivered: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl QuicStream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicStream {
        QuicStream {
            send,
            recv,
            delivered: None,
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    /// Writes as many of `bufs` as the stream takes now (frames are queued
    /// as header and payload slices: one call, not one per slice).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let send = &mut self.get_mut().send;
        let mut written = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            match AsyncWrite::poll_write(Pin::new(&mut *send), cx, buf) {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Poll::Ready(Err(e)) if written == 0 => return Poll::Ready(Err(e)),
                Poll::Pending if written == 0 => return Poll::Pending,
                // What was written counts; the error or the wait comes again.
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    /// Finishes the stream and waits until the peer has acknowledged all of
    /// it, so that a last frame is not lost when the process exits.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.delivered.is_none() {
            // Finishing twice is harmless; the first time counts.
            let _ = this.send.finish();
            let stopped = this.send.stopped();
            this.delivered = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        match this.delivered.as_mut() {
            Some(delivered) => delivered.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

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
    config.send_window(SEND_WINDOW);
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

/// Stops a relay endpoint's reading of its UDP socket, for good. The
/// socket outlives the worker (the keeper or systemd keeps it): what
/// arrives after the stop waits in the kernel's queue for the next worker.
/// A worker that stops for a restart stops reading first, so that its
/// clients' new connections are not taken by it and lost, but answered by
/// the next one.
#[derive(Debug, Clone, Default)]
pub struct ReadStop(Arc<AtomicBool>);

impl ReadStop {
    /// Stops reading; sending goes on.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// quinn's socket, with reading that [`ReadStop`] ends.
#[derive(Debug)]
struct StoppableSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    reads: ReadStop,
}

impl quinn::AsyncUdpSocket for StoppableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.reads.stopped() {
            // Never again: nothing needs waking.
            return Poll::Pending;
        }
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
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
    let runtime = Arc::new(quinn::TokioRuntime);
    let reads = ReadStop::default();
    let socket = Arc::new(StoppableSocket {
        inner: quinn::Runtime::wrap_udp_socket(&*runtime, socket)?,
        reads: reads.clone(),
    });
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(config), socket, runtime)?;
    Ok((endpoint, reads))
}

/// An endpoint on `socket`, serving with `server` if given.
fn endpoint(server: Option<quinn::ServerConfig>, socket: UdpSocket) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A UDP socket bound to `addr`, with [`UDP_SOCKET_BUFFER`] each way.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, only slower.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
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
    let mut transport = transport(connection, send, recv)?;
    transport.server_name = server_name;
    Ok(transport)
}

fn transport(
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> io::Result<Transport> {
    let mut binding = [0u8; BINDING_LEN];
    connection
        .export_keying_material(&mut binding, BINDING_LABEL, &[])
        .map_err(|_| io::Error::other("cannot derive the channel binding"))?;
    let transport = Transport::new(
        Box::new(QuicStream::new(send, recv)),
        connection.remote_address(),
        TransportKind::Quic,
        binding,
    );
    Ok(transport.with_path(QuicPath(connection)))
}

/// A QUIC connection's path: the peer's address moves with the client, and
/// the relay's receive window opens once the session does.
struct QuicPath(quinn::Connection);

impl NetworkPath for QuicPath {
    fn peer_now(&self) -> SocketAddr {
        self.0.remote_address()
    }

    fn fixed_local(&self) -> Option<SocketAddr> {
        None
    }

    /// Gives the peer the full receive window (see [`HANDSHAKE_WINDOW`]).
    fn open_windows(&self) {
        self.0
            .set_receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    }

    /// QUIC's smoothed round-trip time: known from the handshake on, and
    /// kept current by every ack, busy or idle.
    fn rtt(&self) -> Option<Duration> {
        Some(self.0.rtt())
    }
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
}

impl QuicClient {
    /// An endpoint on an ephemeral port of the family of `relay`.
    pub fn new(relay: SocketAddr) -> io::Result<QuicClient> {
        let endpoint = endpoint(None, udp_socket(addresses::unspecified(relay))?)?;
        Ok(QuicClient { endpoint })
    }

    /// Connects to the relay at `addr` and opens the session's stream; the
    /// caller bounds it with a timeout. The idle timeout is `dead_after`,
    /// with keep-alives four times as often. A reconnect names the
    /// `instance` that holds its session, as SNI.
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
            dead_after,
            Some(dead_after / 4),
        )));
        // The relay is identified by its pinned key, not by this name.
        let name = instance.map_or_else(|| addr.ip().to_string(), |i| i.as_str().to_owned());
        let connecting = self
            .endpoint
            .connect_with(config, addr, &name)
            .map_err(|e| ConnectError::Quic(QuicError::Start(e)))?;
        let connection = connecting.await.map_err(connect_error)?;
        let (send, recv) = connection.open_bi().await.map_err(connect_error)?;
        let relay_key = connection
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().map(|key| Fingerprint::of_spki(key.as_ref())));
        let mut transport = transport(connection, send, recv)
            .map_err(|e| ConnectError::Quic(QuicError::Binding(e)))?;
        transport.relay_key = relay_key;
        Ok(transport)
    }

    /// Moves the endpoint to a new UDP socket: the relay sees packets from
    /// the new address and migrates the connection to it.
    fn rebind(&self, relay: SocketAddr) -> io::Result<()> {
        self.endpoint
            .rebind(udp_socket(addresses::unspecified(relay))?)
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
