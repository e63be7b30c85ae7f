//! TLS 1.3 for the relay link (rustls with the *ring* provider), and the
//! transport it makes over TCP: [`connect`] on the client, [`accept`] on
//! the relay. (QUIC uses the same configurations; see `quic.rs`.)
//!
//! The relay authenticates with its raw public key (RFC 7250; see
//! [`identity`](super::identity)); the client checks that key against a pin
//! with a [`PinVerifier`], never against a CA. The client is not
//! authenticated by TLS: ssh authenticates the user end to end, and a resume
//! is authenticated by the session's secret, bound to the TLS connection it
//! travels on by [`channel_binding`].

use super::identity::{Fingerprint, RelayKey};
use super::{ConnectError, FixedPath, NetworkPath, Transport, TransportKind};
use crate::proto::fleet::InstanceName;
use crate::proto::resume_auth::BINDING_LEN;
use crate::units::format_duration;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, ServerConfig, SignatureScheme,
};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN protocol name: a TLS peer that is not a resumeproxy peer fails the
/// handshake instead of exchanging data. It names the protocol, not its
/// version, and stays as it is when the version changes: peers of two
/// versions meet, and the preamble refuses the other version in words
/// (`Code::Version`) where a changed ALPN would give a bare TLS alert.
pub const ALPN: &[u8] = b"resumeproxy/2";
/// Exporter label of the channel binding (RFC 8446 §7.5), with no context:
/// 32 bytes both ends of one connection derive (see `docs/protocol.md`).
pub const BINDING_LABEL: &[u8] = b"EXPORTER-resumeproxy-channel-binding";

/// The crypto provider both ends use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's TLS configuration: TLS 1.3 only, its raw public key, no
/// client certificates, no session tickets.
pub fn server_config(key: &RelayKey) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der()));
    let signing_key = provider.key_provider.load_private_key(private)?;
    let certified = CertifiedKey::new(vec![CertificateDer::from(key.spki_der())], signing_key);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(Arc::new(
            certified,
        ))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client's TLS configuration, trusting what `verifier` accepts.
pub fn client_config(verifier: Arc<PinVerifier>) -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// `tls` for a connection that names `instance` (the fleet instance that
/// holds its session) in its hello: with SNI on, which the client's
/// configuration otherwise leaves off. The relay is still checked by its
/// pinned key, never by the name.
pub fn naming(tls: &Arc<ClientConfig>, instance: Option<&InstanceName>) -> Arc<ClientConfig> {
    match instance {
        None => Arc::clone(tls),
        Some(_) => {
            let mut config = ClientConfig::clone(tls);
            config.enable_sni = true;
            Arc::new(config)
        }
    }
}

/// The server name of a connection to the relay at `peer`: the instance
/// that holds the session, which travels as SNI (what a balancer routes
/// by), or, for a new session, the relay's address, which TLS never sends.
pub fn server_name(instance: Option<&InstanceName>, peer: IpAddr) -> ServerName<'static> {
    instance
        .and_then(|name| ServerName::try_from(name.as_str().to_owned()).ok())
        .unwrap_or(ServerName::IpAddress(peer.into()))
}

/// Accepts a relay whose key matches one of the expected fingerprints, or,
/// with none expected (first use), any key — and remembers the key it saw,
/// so that the caller can pin it or say precisely what did not match.
#[derive(Debug)]
pub struct PinVerifier {
    expected: Vec<Fingerprint>,
    seen: Mutex<Option<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    /// A verifier accepting any of `expected` (any key at all if empty).
    pub fn new(expected: Vec<Fingerprint>) -> PinVerifier {
        PinVerifier {
            expected,
            seen: Mutex::new(None),
            provider: provider(),
        }
    }

    /// The key the relay presented in the latest handshake, if any.
    pub fn seen(&self) -> Option<Fingerprint> {
        *crate::locks::lock(&self.seen)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let fingerprint = Fingerprint::of_spki(end_entity.as_ref());
        *crate::locks::lock(&self.seen) = Some(fingerprint);
        if self.expected.is_empty() || self.expected.contains(&fingerprint) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Only TLS 1.3 is offered, so this is never asked.
        Err(Error::General("the relay link requires TLS 1.3".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// A value both ends of one TLS connection share and nobody else knows (a
/// keying-material exporter): a resume proof bound to it is worthless on any
/// other connection.
pub fn channel_binding<D>(
    connection: &rustls::ConnectionCommon<D>,
) -> Result<[u8; BINDING_LEN], Error> {
    let mut binding = [0u8; BINDING_LEN];
    connection.export_keying_material(&mut binding, BINDING_LABEL, None)?;
    Ok(binding)
}

/// Connects to the relay at `host:port` (trying each resolved address)
/// and completes the TLS handshake, all within `timeout`. A reconnect
/// names the `instance` that holds its session, as SNI. With
/// `max_segment`, TCP segments are at most that long both ways (see
/// `connect_tcp`).
pub async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
    tls: Arc<ClientConfig>,
    instance: Option<&InstanceName>,
    max_segment: Option<u32>,
) -> Result<Transport, ConnectError> {
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}", format_duration(timeout)),
        )
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = tokio::time::timeout_at(deadline, connect_tcp(host, port, max_segment))
        .await
        .map_err(|_| ConnectError::Tcp(timed_out()))?
        .map_err(ConnectError::Tcp)?;
    tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let peer = tcp.peer_addr().map_err(ConnectError::Tcp)?;
    let local = tcp.local_addr().ok();
    // The relay is identified by its pinned key, not by this name.
    let name = server_name(instance, peer.ip());
    let tls = naming(&tls, instance);
    let stream = tokio::time::timeout_at(deadline, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Tls(timed_out()))?
        .map_err(|e| {
            if turned_away(&e) {
                ConnectError::TurnedAway
            } else {
                ConnectError::Tls(e)
            }
        })?;
    let binding =
        channel_binding(stream.get_ref().1).map_err(|e| ConnectError::Tls(io::Error::other(e)))?;
    let relay_key = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|key| Fingerprint::of_spki(key.as_ref()));
    let path = TcpPath::new(stream.get_ref().0, FixedPath { peer, local });
    let mut transport =
        Transport::new(Box::new(stream), peer, TransportKind::Tls, binding).with_path(path);
    transport.relay_key = relay_key;
    Ok(transport)
}

/// A client's TCP connection to the relay: its fixed addresses, and its
/// socket, whose kernel counters tell what still passes.
struct TcpPath {
    fixed: FixedPath,
    /// The socket under the transport's stream, which lives as long as
    /// this path (both are the transport's).
    #[cfg(target_os = "linux")]
    socket: std::os::fd::RawFd,
}

impl TcpPath {
    fn new(tcp: &TcpStream, fixed: FixedPath) -> TcpPath {
        #[cfg(not(target_os = "linux"))]
        let _ = tcp;
        TcpPath {
            fixed,
            #[cfg(target_os = "linux")]
            socket: std::os::fd::AsRawFd::as_raw_fd(tcp),
        }
    }
}

impl NetworkPath for TcpPath {
    fn peer_now(&self) -> SocketAddr {
        self.fixed.peer_now()
    }

    fn fixed_local(&self) -> Option<SocketAddr> {
        self.fixed.fixed_local()
    }

    #[cfg(target_os = "linux")]
    fn since_peer_acked(&self) -> Option<Duration> {
        last_ack_received(self.socket)
    }
}

/// `TCP_INFO`'s `tcpi_last_ack_recv`: how long ago the socket `fd` last
/// received an acknowledgement.
#[cfg(target_os = "linux")]
fn last_ack_received(fd: std::os::fd::RawFd) -> Option<Duration> {
    // SAFETY: the socket under the transport's stream, open while the
    // transport (which owns this path too) lives.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let (info, _) = super::tcp_info::of(fd).ok()?;
    Some(Duration::from_millis(info.tcpi_last_ack_recv.into()))
}

/// A TCP connection to `host:port`, trying each resolved address in turn.
///
/// With `max_segment`, the socket's `TCP_MAXSEG` is set before it
/// connects: its SYN announces that size, so the relay's side never sends
/// larger segments either, and this side sends none larger (for a path
/// that loses large packets, see [`crate::proto::segment_size`]). Where
/// the option is not available the connection is made without it.
async fn connect_tcp(host: &str, port: u16, max_segment: Option<u32>) -> io::Result<TcpStream> {
    let Some(mss) = max_segment else {
        return TcpStream::connect((host, port)).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        limit_segments(&socket, mss);
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} resolves to no address"),
        )
    }))
}

/// Whether a connection here can ask for smaller TCP segments
/// (`TCP_MAXSEG` set before it connects, see [`connect`]): on Linux,
/// macOS and FreeBSD. Windows has no such option (its `TCP_MAXSEG` is
/// read-only); a client there keeps the system's size, and a path that
/// loses large packets is left to QUIC (`--transport auto`, the default,
/// or `quic`), which finds the path's size by itself.
pub const CAN_LIMIT_SEGMENTS: bool = cfg!(unix);

/// Sets `TCP_MAXSEG` on a socket not yet connected (best effort).
#[cfg(unix)]
fn limit_segments(socket: &tokio::net::TcpSocket, mss: u32) {
    if let Err(e) = socket2::SockRef::from(socket).set_tcp_mss(mss) {
        tracing::debug!("cannot limit TCP segments to {mss} bytes: {e}");
    }
}

/// Not available here ([`CAN_LIMIT_SEGMENTS`]): the connection uses the
/// system's segment size.
#[cfg(not(unix))]
fn limit_segments(_socket: &tokio::net::TcpSocket, mss: u32) {
    tracing::debug!("cannot limit TCP segments to {mss} bytes on this system");
}

/// Whether a failed handshake is the relay's way of turning a connection
/// away at a limit: a fatal `user_canceled` alert before its first answer
/// ("cancelled for a reason that is not a protocol failure").
fn turned_away(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(Error::AlertReceived(rustls::AlertDescription::UserCanceled))
    )
}

/// A TLS alert record in the clear, fatal, as a server sends before its
/// first answer: how the relay refuses a connection without a handshake.
pub fn plaintext_alert(description: rustls::AlertDescription) -> [u8; 7] {
    // Content type alert, legacy version 1.2, length 2, level fatal.
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(description)]
}

/// Completes the relay's side of the TLS handshake on an accepted
/// connection (the caller bounds it with a timeout). A client that does not
/// offer the resumeproxy protocol ([`ALPN`]) — another protocol, or none —
/// is refused at its hello, with TLS's `no_application_protocol` alert.
pub async fn accept(tcp: TcpStream, tls: &TlsAcceptor) -> io::Result<Transport> {
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr()?;
    let mut acceptor = rustls::server::Acceptor::default();
    let accepted = loop {
        tcp.readable().await?;
        match acceptor.read_tls(&mut NonBlocking(&tcp)) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((e, mut alert)) => {
                let _ = alert.write_all(&mut NonBlocking(&tcp));
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    };
    let offered = accepted
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ALPN));
    if !offered {
        let alert = plaintext_alert(rustls::AlertDescription::NoApplicationProtocol);
        let _ = io::Write::write_all(&mut NonBlocking(&tcp), &alert);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "another protocol: its TLS hello does not offer ALPN {}",
                String::from_utf8_lossy(ALPN)
            ),
        ));
    }
    let stream = tokio_rustls::StartHandshake::from_parts(accepted, tcp)
        .into_stream(Arc::clone(tls.config()))
        .await?;
    let binding = channel_binding(stream.get_ref().1).map_err(io::Error::other)?;
    let server_name = stream.get_ref().1.server_name().map(str::to_owned);
    let mut transport = Transport::new(Box::new(stream), peer, TransportKind::Tls, binding);
    transport.server_name = server_name;
    Ok(transport)
}

/// A tokio socket as `std::io` for rustls, without waiting: a call that
/// would block says so.
struct NonBlocking<'a>(&'a TcpStream);

impl io::Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::identity::RelayKey;
    use tokio::net::TcpListener;

    #[test]
    fn only_a_connection_that_names_an_instance_sends_sni() {
        let peer: IpAddr = "192.0.2.1".parse().expect("an address");
        let instance: InstanceName = "relay-2".parse().expect("a name");
        assert_eq!(server_name(None, peer), ServerName::IpAddress(peer.into()));
        assert_eq!(
            server_name(Some(&instance), peer),
            ServerName::try_from("relay-2").expect("a DNS name")
        );
        let tls = client_config(Arc::new(PinVerifier::new(Vec::new()))).expect("a config");
        assert!(!tls.enable_sni);
        assert!(Arc::ptr_eq(&naming(&tls, None), &tls));
        let named = naming(&tls, Some(&instance));
        assert!(named.enable_sni);
        assert_eq!(named.alpn_protocols, tls.alpn_protocols);
    }

    /// What the relay reads as the client's server name, over a real TLS
    /// handshake on loopback.
    async fn sni_seen(instance: Option<&InstanceName>) -> Option<String> {
        let key = RelayKey::generate().expect("a key");
        let acceptor = TlsAcceptor::from(server_config(&key).expect("a config"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let addr = listener.local_addr().expect("its address");
        let relay = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("a connection");
            accept(tcp, &acceptor)
                .await
                .expect("a handshake")
                .server_name
        });
        let verifier = Arc::new(PinVerifier::new(vec![key.fingerprint()]));
        let tls = client_config(verifier).expect("a config");
        let timeout = Duration::from_secs(5);
        let client = connect("127.0.0.1", addr.port(), timeout, tls, instance, None)
            .await
            .expect("connected");
        let seen = tokio::time::timeout(timeout, relay)
            .await
            .expect("in time")
            .expect("the relay's task");
        drop(client);
        seen
    }

    #[tokio::test]
    async fn the_relay_reads_the_instance_a_reconnect_names() {
        let instance: InstanceName = "relay-2".parse().expect("a name");
        assert_eq!(sni_seen(Some(&instance)).await.as_deref(), Some("relay-2"));
        assert_eq!(sni_seen(None).await, None);
    }
}
