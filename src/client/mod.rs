//! The client: one ssh connection carried to a relay across transport breaks.
//!
//! Opens a session with the relay (`open.rs`), then runs the link between
//! the local end (ssh's pipes, or anything else) and the transport
//! (`connected.rs`). When the transport is lost it keeps serving the local
//! end and reconnects with capped, jittered backoff (`reconnect.rs`) until
//! it resumes, or the relay says the session is gone, or the relay's grace
//! period has certainly passed. One `Client` holds what the phases share.
//! A signal ends the session on the relay too ([`ending`]).
//!
//! Around that core: the [`connector`] races QUIC and TCP as its
//! [`transport_plan`] says, remembering ([`udp_memory`]) where UDP is
//! blocked; [`trust`] decides which relay keys
//! to accept, pinning them in `known_relays.rs`; the [`control`] socket lets
//! `resumeproxy status` and `resume` reach a running client (answered from
//! its vitals, `status.rs`); [`stdio`] is ssh's end of the pipe; [`direct`]
//! connects straight to the target where no relay answers at the start
//! (`--fallback direct`).

mod back_to_quic;
mod connected;
pub mod connector;
pub mod control;
pub mod direct;
pub mod ending;
pub(crate) mod known_relays;
mod open;
mod reconnect;
mod status;
pub mod stdio;
pub mod transport_plan;
pub mod trust;
pub mod udp_memory;
mod waits;

use crate::link::Link;
pub use crate::proto::reconnect::{GoneBy, UDP_GONE_AFTER};
use crate::proto::segment_size::SegmentSize;
use crate::proto::session::{Session, SessionConfig, SessionStats};
use crate::proto::wire::SessionId;
use crate::transport::identity::Fingerprint;
use crate::transport::net_events::NetWatcher;
use crate::transport::{Transport, TransportKind};
use crate::units::{format_duration, host_port};
use back_to_quic::QuicProbe;
use connected::AfterConnected;
use connector::Connector;
use control::Request;
use direct::Fallback;
use ending::{EndSignal, LocalInput};
use open::Opened;
pub use reconnect::RELAY_GONE_AFTER;
use reconnect::{AfterDetached, Resume, Untold};
use status::Vitals;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use transport_plan::TransportChoice;
use trust::{KeyChanged, TrustSource};
use waits::Waits;

/// How long a new connection may take, from connect to the relay's reply,
/// before the client gives up at start.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the client needs to know.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Relay host name or address.
    pub relay_host: String,
    /// Relay port.
    pub relay_port: u16,
    /// Target host as the relay should see it; empty for the relay's own target.
    pub target_host: String,
    /// Target port (sshd's port, `%p` in ssh_config).
    pub target_port: u16,
    /// Session tunables, dead-peer interval included.
    pub session: SessionConfig,
    /// Bound on the first connection and on each reconnect attempt.
    pub connect_timeout: Duration,
    /// Which relay keys to trust.
    pub trust: TrustSource,
    /// Which transports to use.
    pub transport: TransportChoice,
    /// Where clients remember relays UDP could not reach (see
    /// [`udp_memory`]); `None` to keep it to this process.
    pub udp_memory: Option<PathBuf>,
    /// What the caller does when no relay answers at the start: with
    /// [`Fallback::Direct`], a refusal ends the start at once (the caller
    /// connects straight to the target) instead of being tried again until
    /// the connect timeout.
    pub fallback: Fallback,
}

impl ClientConfig {
    /// The relay's name as pins record it: `host:port`, `[v6addr]:port`.
    pub fn relay_addr(&self) -> String {
        host_port(&self.relay_host, self.relay_port)
    }
}

/// Something the user may want to hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A relay seen for the first time had its key pinned.
    Pinned {
        /// `host:port`.
        relay: String,
        /// Its key.
        fingerprint: Fingerprint,
        /// The file the pin went to.
        file: PathBuf,
    },
    /// The session is not open yet, after a while of trying: the client
    /// goes on trying until the connect timeout.
    StartSlow {
        /// `host:port`.
        relay: String,
        /// Why the latest attempt failed, if one has.
        reason: Option<String>,
    },
    /// The session is open.
    Connected {
        /// The relay's address.
        relay: SocketAddr,
        /// Over what.
        transport: TransportKind,
    },
    /// The transport was lost; reconnecting.
    Lost {
        /// Why.
        reason: String,
    },
    /// The session resumed on a new transport, and data flows on it (a
    /// transport whose handshake passed but that carried nothing is not
    /// told: it is lost again, and says so).
    Resumed {
        /// Time since the loss.
        after: Duration,
        /// Attempts it took.
        attempts: u32,
        /// Bytes sent again.
        replayed: u64,
    },
    /// Data stopped on the link while small packets passed (a path that
    /// loses large packets, as through a VPN or tunnel): TCP connections now
    /// ask for segments of at most `mss` bytes. Told once per session; never
    /// where segments cannot be limited (Windows, see
    /// [`CAN_LIMIT_SEGMENTS`](crate::transport::tls::CAN_LIMIT_SEGMENTS)).
    SmallerSegments {
        /// The segment size, in bytes.
        mss: u32,
    },
}

/// What to check when the relay could not be reached — unless the relay
/// itself answered (its reasons start "the relay …": at a connection
/// limit, say), when it is running and listening after all.
fn unreachable_hint(reason: &str) -> &'static str {
    if reason.starts_with("the relay ") {
        ""
    } else {
        " (is resumeproxyd running there, and is --relay-port right?)"
    }
}

/// How the client ended badly; every one means exit status 255 for ssh.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// What answered at the start is not a relay this client can use.
    #[error("cannot reach relay at {addr}: {reason}{}", unreachable_hint(reason))]
    Unreachable {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// No relay answered at the start: refused, or nothing within the
    /// connect timeout (resets and cuts included). Where
    /// `--fallback direct` connects straight to the target.
    #[error("cannot reach relay at {addr}: {reason}{}", unreachable_hint(reason))]
    NoRelay {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// The relay refused to open the session.
    #[error("relay at {addr} refused the session: {reason}")]
    Refused {
        /// host:port
        addr: String,
        /// The relay's reason.
        reason: String,
    },
    /// The session no longer exists on the relay.
    #[error("session {session} is gone from relay {addr}: {reason}; the ssh connection is lost")]
    SessionGone {
        /// host:port
        addr: String,
        /// Which session.
        session: SessionId,
        /// Why.
        reason: String,
    },
    /// Nothing has served the relay's port for a while: every reconnect
    /// attempt found it refused, or accepted and closed at once by a
    /// balancer, for [`RELAY_GONE_AFTER`], or the relay's host said for
    /// [`UDP_GONE_AFTER`] that nothing listens on its UDP port. The relay
    /// was stopped for good.
    #[error("relay at {addr} is not running ({by}); the session is lost")]
    RelayGone {
        /// host:port
        addr: String,
        /// How the client knows.
        by: GoneBy,
    },
    /// The relay ended the session.
    #[error("relay at {addr} closed the session: {reason}; the ssh connection is lost")]
    Closed {
        /// host:port
        addr: String,
        /// The relay's reason.
        reason: String,
    },
    /// The relay presented a key other than the pinned one.
    #[error("{0}")]
    KeyChanged(Box<KeyChanged>),
    /// The relay's key could not be checked or pinned.
    #[error("cannot check the key of relay {addr}: {reason}")]
    Trust {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// The relay broke the protocol.
    #[error("relay at {addr}: {reason}")]
    Protocol {
        /// host:port
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A signal ended the client while it could not reach the relay: the
    /// relay keeps the session until its grace period ends.
    #[error("ended by {signal} before relay at {addr} could be told that the session is over")]
    EndedUntold {
        /// host:port
        addr: String,
        /// Which signal.
        signal: EndSignal,
    },
    /// A signal ended the client before the session opened.
    #[error("ended by {signal} while connecting to relay at {addr}")]
    EndedAtStart {
        /// host:port
        addr: String,
        /// Which signal.
        signal: EndSignal,
    },
}

/// What a completed session did.
#[derive(Debug, Clone, Copy)]
pub struct ClientReport {
    /// Session counters.
    pub stats: SessionStats,
    /// Transport breaks survived.
    pub resumes: u32,
}

/// Runs one session between `local_in`/`local_out` and the relay.
///
/// `end_request` resolves when a signal asks the client to end: it then
/// ends the session on the relay and returns within a second (see
/// [`ending`]). `control` brings requests from the control socket (see
/// [`control`]). `on_event` hears about losses and resumes.
pub async fn run<R, W>(
    config: ClientConfig,
    local_in: R,
    local_out: W,
    end_request: impl Future<Output = EndSignal> + Send + 'static,
    control: Option<mpsc::Receiver<Request>>,
    mut on_event: impl FnMut(ClientEvent),
) -> Result<ClientReport, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let addr = config.relay_addr();
    let connector = Arc::new(Connector::new(
        config.transport,
        &config.relay_host,
        config.relay_port,
        config.session.dead_after,
        config.udp_memory.clone(),
    ));
    let mut end_request: Pin<Box<dyn Future<Output = EndSignal> + Send>> = Box::pin(end_request);
    let opened = tokio::select! {
        opened = open::open_session(&config, &connector, &mut on_event) => opened?,
        signal = &mut end_request => {
            return Err(ClientError::EndedAtStart { addr, signal });
        }
    };
    let Opened {
        transport,
        session: session_id,
        secret,
        grace,
        max_data,
        relay_key,
        home,
    } = opened;
    // Every reconnect goes to the instance that holds the session.
    connector.settle(&home, transport.peer);
    on_event(ClientEvent::Connected {
        relay: transport.peer,
        transport: transport.kind,
    });
    tracing::debug!(session = %session_id, "session opened, relay grace {}", format_duration(grace));

    let mut session_config = config.session;
    session_config.max_data_len = max_data;
    let mut session = Session::new(session_config, Instant::now());
    session
        .attach(0, Instant::now())
        .map_err(|e| ClientError::Protocol {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let vitals = Vitals {
        id: session_id,
        relay: addr.clone(),
        instance: home.instance.to_string(),
        // Without --relay, the relay's own target: the host ssh was given.
        target: host_port(
            if config.target_host.is_empty() {
                &config.relay_host
            } else {
                &config.target_host
            },
            config.target_port,
        ),
        transport: transport.kind,
        opened: Instant::now(),
        resumes: 0,
        moves: 0,
        lost_at: None,
        attempts: Arc::default(),
    };
    let input_ending = Arc::new(AtomicBool::new(false));
    let local_in = LocalInput::new(local_in, Arc::clone(&input_ending));
    let client = Client {
        link: Link::new(session, local_in, local_out),
        input_ending,
        ending: None,
        waits: Waits {
            end_request: Some(end_request),
            end_by: None,
            control,
            net: match NetWatcher::new() {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    tracing::debug!("no network events ({e}): polling addresses instead");
                    None
                }
            },
            path: None,
        },
        vitals,
        resume: Resume {
            session: session_id,
            secret,
            relay_key,
            received: 0,
        },
        grace,
        addr,
        config,
        untold: None,
        segments: SegmentSize::new(),
        smaller: None,
        probe: QuicProbe::new(Arc::clone(&connector), relay_key),
        connector: Arc::clone(&connector),
        on_event,
    };
    let result = client.serve(transport).await;
    connector.linger().await;
    result
}

/// A client with an open session: what its phases share.
struct Client<R, W, E> {
    config: ClientConfig,
    connector: Arc<Connector>,
    /// While on TCP: QUIC probed in the background, to move onto.
    probe: QuicProbe,
    /// The relay as pins name it (see [`ClientConfig::relay_addr`]).
    addr: String,
    link: Link<LocalInput<R>, W>,
    /// Set when a signal asks the client to end: the local input then ends
    /// once it has nothing more to give.
    input_ending: Arc<AtomicBool>,
    /// The signal that asked the client to end, if one did.
    ending: Option<EndSignal>,
    waits: Waits,
    vitals: Vitals,
    /// What a resume must prove and say.
    resume: Resume,
    /// How long the relay keeps the session while the client is away.
    grace: Duration,
    /// A resume not yet told: its transport has not carried data yet.
    untold: Option<Untold>,
    /// The TCP segment size of reconnects.
    segments: SegmentSize,
    /// A smaller segment size to tell the user of, after the loss.
    smaller: Option<u32>,
    on_event: E,
}

impl<R, W, E> Client<R, W, E>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: FnMut(ClientEvent),
{
    /// Alternates the connected and the detached phase until the client is
    /// done.
    async fn serve(mut self, mut transport: Transport) -> Result<ClientReport, ClientError> {
        loop {
            let reason = match self.connected(&mut transport).await {
                AfterConnected::Ended(result) => return result,
                AfterConnected::Lost(reason) => reason,
            };
            self.waits.path = None;
            self.probe.stop();
            self.link.session_mut().detach();
            // Close the dead transport now: if it is only half dead, the relay
            // learns sooner that this client is coming back on a new one.
            drop(transport);
            transport = match self.detached(reason).await {
                AfterDetached::Ended(result) => return result,
                AfterDetached::Resumed(transport) => *transport,
            };
        }
    }

    /// A signal asks the client to end: take what the local end already
    /// wrote, end the outgoing stream after it, and give the session
    /// [`ending::END_WAIT`] to end by itself.
    fn begin_ending(&mut self, signal: EndSignal) {
        tracing::debug!("{signal}: ending the session");
        self.ending = Some(signal);
        self.input_ending.store(true, Ordering::SeqCst);
        self.waits.end_by = Some(Instant::now() + ending::END_WAIT);
    }

    /// What the session did, so far.
    fn report(&self) -> ClientReport {
        ClientReport {
            stats: self.link.session().stats(),
            resumes: self.vitals.resumes,
        }
    }
}
