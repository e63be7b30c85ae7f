//! The client: one ssh connection carried to a relay across transport breaks.
//!
//! Opens a session with the relay, then runs the [`Link`] between the local
//! end (ssh's pipes, or anything else) and the transport. When the transport
//! is lost it keeps serving the local end and reconnects with capped, jittered
//! backoff until it resumes, or the relay says the session is gone, or the
//! relay's grace period has certainly passed.

use crate::backoff::Backoff;
use crate::cli::format_duration;
use crate::connector::{Connector, TransportChoice};
use crate::control::{LinkState, Request, StatusReport};
use crate::handshake;
use crate::identity::Fingerprint;
use crate::link::{close_transport, Link, Outcome, Step};
use crate::session::{Session, SessionConfig, SessionStats};
use crate::tls::{self, PinVerifier};
use crate::transport::{ConnectError, Transport, TransportKind};
use crate::trust::{self, Expectation, KeyChanged, TrustSource};
use crate::wire::{Code, Hello, Reply, SessionId, SECRET_LEN};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};

/// How long a new connection may take, from connect to the relay's reply,
/// before the client gives up at start.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After ssh has gone away, how long the client tries to tell the relay.
pub const LINGER: Duration = Duration::from_secs(3);
/// How long a close notice may take to send.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest time a reconnect attempt is given.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra wait past the relay's grace period before giving up for good.
const GRACE_MARGIN: Duration = Duration::from_secs(5);

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
    /// [`crate::udp_memory`]); `None` to keep it to this process.
    pub udp_memory: Option<PathBuf>,
}

impl ClientConfig {
    /// The relay's name as pins record it: `host:port`, `[v6addr]:port`.
    pub fn relay_addr(&self) -> String {
        crate::cli::host_port(&self.relay_host, self.relay_port)
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
    /// The session resumed on a new transport.
    Resumed {
        /// Time since the loss.
        after: Duration,
        /// Attempts it took.
        attempts: u32,
        /// Bytes sent again.
        replayed: u64,
    },
}

/// How the client ended badly; every one means exit status 255 for ssh.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay could not be reached at the start.
    #[error("cannot reach relay at {addr}: {reason} (is resumeproxyd running there, and is --relay-port right?)")]
    Unreachable {
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
}

/// What a completed session did.
#[derive(Debug, Clone, Copy)]
pub struct ClientReport {
    /// Session counters.
    pub stats: SessionStats,
    /// Transport breaks survived.
    pub resumes: u32,
}

/// What the session waits for besides the link itself.
enum Interrupt {
    /// ssh has gone (SIGHUP).
    HangUp,
    /// The time to tell the relay after ssh went is over.
    LingerOver,
    /// A request on the control socket.
    Control(Request),
    /// The address the transport was made from is no longer this machine's.
    AddressGone(IpAddr),
}

/// What ends a detached spell.
enum Detached {
    Interrupt(Interrupt),
    Reconnected(Box<Result<(Transport, u64, u32), ClientError>>),
}

type HangUp = Option<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// What the client waits on besides its link.
struct Waits {
    hangup: HangUp,
    linger_until: Option<Instant>,
    control: Option<mpsc::Receiver<Request>>,
    /// The local address of the current transport, while it is one that
    /// cannot move (TCP).
    address: Option<IpAddr>,
}

impl Waits {
    /// Resolves when ssh hangs up (once), when the linger time is over,
    /// when a control request arrives, or when the transport's local address
    /// is gone.
    async fn next(&mut self) -> Interrupt {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        let linger = async {
            match self.linger_until {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        let control = async {
            match self.control.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let address = async {
            match self.address {
                Some(ip) => {
                    crate::addresses::gone(ip).await;
                    ip
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ip = address => {
                self.address = None;
                Interrupt::AddressGone(ip)
            }
            () = hangup => {
                self.hangup = None;
                Interrupt::HangUp
            }
            () = linger => Interrupt::LingerOver,
            request = control => match request {
                Some(request) => Interrupt::Control(request),
                None => {
                    self.control = None;
                    std::future::pending().await
                }
            },
        }
    }
}

/// What the client knows of itself, for status reports.
struct Vitals {
    id: SessionId,
    relay: String,
    target: String,
    transport: TransportKind,
    opened: Instant,
    resumes: u32,
    /// When the link was lost, if it is down.
    lost_at: Option<Instant>,
    attempts: Arc<AtomicU32>,
}

impl Vitals {
    fn report(&self, session: &Session) -> StatusReport {
        let stats = session.stats();
        StatusReport {
            id: self.id.to_string(),
            pid: std::process::id(),
            relay: self.relay.clone(),
            target: self.target.clone(),
            transport: self.transport.to_string(),
            link: match self.lost_at {
                None => LinkState::Connected,
                Some(at) => LinkState::Reconnecting {
                    since_ms: millis64(at.elapsed()),
                    attempts: self.attempts.load(Ordering::Relaxed),
                },
            },
            uptime_ms: millis64(self.opened.elapsed()),
            bytes_sent: stats.bytes_read_local,
            bytes_received: stats.bytes_received,
            reconnects: self.resumes,
            rtt_us: stats
                .rtt
                .map(|d| d.as_micros().try_into().unwrap_or(u64::MAX)),
            unacked: session.unacked(),
        }
    }
}

fn millis64(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Runs one session between `local_in`/`local_out` and the relay.
///
/// `hangup` resolves when the local end is gone for good (ssh sent SIGHUP):
/// the client then ends the stream, tries for [`LINGER`] to tell the relay,
/// and returns. `control` brings requests from the control socket (see
/// [`crate::control`]). `on_event` hears about losses and resumes.
pub async fn run<R, W>(
    config: ClientConfig,
    local_in: R,
    local_out: W,
    hangup: impl Future<Output = ()> + Send + 'static,
    control: Option<mpsc::Receiver<Request>>,
    mut on_event: impl FnMut(ClientEvent),
) -> Result<ClientReport, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
    let connector = Connector::new(
        config.transport,
        &config.relay_host,
        config.relay_port,
        config.session.dead_after,
        config.udp_memory.clone(),
    );
    let opened = tokio::time::timeout(
        config.connect_timeout,
        open(&config, &connector, &expectation),
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
    let Opened {
        mut transport,
        session: session_id,
        secret,
        grace,
        max_data,
        relay_key,
    } = opened;
    let pinned =
        trust::pin_first_use(&config.trust, &expectation, &addr, &relay_key).map_err(|e| {
            ClientError::Trust {
                addr: addr.clone(),
                reason: format!("pinning its key: {e}"),
            }
        })?;
    if let Some(file) = pinned {
        on_event(ClientEvent::Pinned {
            relay: addr.clone(),
            fingerprint: relay_key,
            file,
        });
    }
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
    let mut link = Link::new(session, local_in, local_out);
    let mut waits = Waits {
        hangup: Some(Box::pin(hangup)),
        linger_until: None,
        control,
        address: None,
    };
    let mut vitals = Vitals {
        id: session_id,
        relay: addr.clone(),
        // Without --relay, the relay's own target: the host ssh was given.
        target: crate::cli::host_port(
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
        lost_at: None,
        attempts: Arc::default(),
    };
    let report = |link: &Link<R, W>, resumes| ClientReport {
        stats: link.session().stats(),
        resumes,
    };

    loop {
        waits.address = transport.local.map(|a| a.ip());
        let step = link.run(Some(&mut transport), waits.next()).await;
        let reason = match step {
            Step::Other(Interrupt::AddressGone(ip)) => {
                format!("this machine no longer has the address {ip}")
            }
            Step::Other(Interrupt::HangUp) => {
                tracing::debug!("ssh hung up; ending the session");
                link.hang_up();
                waits.linger_until = Some(Instant::now() + LINGER);
                continue;
            }
            Step::Other(Interrupt::LingerOver) => return Ok(report(&link, vitals.resumes)),
            Step::Other(Interrupt::Control(request)) => {
                answer(request, &vitals, link.session());
                continue;
            }
            Step::Link(Outcome::Finished) => {
                close_transport(
                    &mut transport,
                    Code::Done,
                    "session complete",
                    CLOSE_TIMEOUT,
                )
                .await;
                return Ok(report(&link, vitals.resumes));
            }
            Step::Link(Outcome::PeerClosed(Code::Done, _)) => {
                return Ok(report(&link, vitals.resumes))
            }
            Step::Link(Outcome::PeerClosed(_, reason)) => {
                return Err(ClientError::Closed { addr, reason })
            }
            Step::Link(Outcome::Protocol(reason)) => {
                close_transport(&mut transport, Code::Protocol, &reason, CLOSE_TIMEOUT).await;
                return Err(ClientError::Protocol { addr, reason });
            }
            Step::Link(Outcome::TransportLost(reason)) => reason,
        };

        waits.address = None;
        link.session_mut().detach();
        // Close the dead transport now: if it is only half dead, the relay
        // learns sooner that this client is coming back on a new one.
        drop(transport);
        let lost_at = Instant::now();
        vitals.lost_at = Some(lost_at);
        vitals.attempts.store(0, Ordering::Relaxed);
        on_event(ClientEvent::Lost { reason });
        let replayed_before = link.session().stats().bytes_replayed;
        let resume = Resume {
            session: session_id,
            secret,
            relay_key,
            received: link.session().received_position(),
        };
        let try_now = Notify::new();
        let attempts = Arc::clone(&vitals.attempts);
        let mut reconnecting = pin!(reconnect(
            &config, &connector, resume, grace, lost_at, &attempts, &try_now
        ));
        let (new_transport, peer_received, attempts) = loop {
            let either = async {
                tokio::select! {
                    r = &mut reconnecting => Detached::Reconnected(Box::new(r)),
                    i = waits.next() => Detached::Interrupt(i),
                }
            };
            match link.run(None, either).await {
                Step::Other(Detached::Reconnected(result)) => break (*result)?,
                Step::Other(Detached::Interrupt(Interrupt::HangUp)) => {
                    link.hang_up();
                    waits.linger_until = Some(Instant::now() + LINGER);
                }
                Step::Other(Detached::Interrupt(Interrupt::LingerOver)) => {
                    return Ok(report(&link, vitals.resumes))
                }
                Step::Other(Detached::Interrupt(Interrupt::AddressGone(_))) => {}
                Step::Other(Detached::Interrupt(Interrupt::Control(request))) => {
                    if matches!(request, Request::Resume) {
                        try_now.notify_one();
                    }
                    answer(request, &vitals, link.session());
                }
                // Without a transport the link has nothing that could end it.
                Step::Link(outcome) => {
                    return Err(ClientError::Protocol {
                        addr,
                        reason: format!("link ended while detached: {outcome:?}"),
                    })
                }
            }
        };
        transport = new_transport;
        link.session_mut()
            .attach(peer_received, Instant::now())
            .map_err(|e| ClientError::Protocol {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        vitals.resumes += 1;
        vitals.lost_at = None;
        vitals.transport = transport.kind;
        on_event(ClientEvent::Resumed {
            after: lost_at.elapsed(),
            attempts,
            replayed: link.session().stats().bytes_replayed - replayed_before,
        });
    }
}

/// Answers a control request.
fn answer(request: Request, vitals: &Vitals, session: &Session) {
    match request {
        Request::Status(reply) => {
            let _ = reply.send(vitals.report(session));
        }
        // While connected there is nothing to hurry.
        Request::Resume => {}
    }
}

enum OpenError {
    Io(String),
    Refused(String),
    KeyChanged(Fingerprint),
}

/// A session the relay created.
struct Opened {
    transport: Transport,
    session: SessionId,
    secret: [u8; SECRET_LEN],
    grace: Duration,
    max_data: usize,
    /// The key the relay presented.
    relay_key: Fingerprint,
}

/// Connects with TLS, checking the relay's key against `expectation`.
/// Returns the transport and the key the relay presented.
async fn connect(
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

/// What a resume needs to prove and say.
#[derive(Clone, Copy)]
struct Resume {
    session: SessionId,
    secret: [u8; SECRET_LEN],
    /// The key the session was opened with: a reconnect must meet the same.
    relay_key: Fingerprint,
    received: u64,
}

/// Tries to resume until it works or the session is certainly gone.
///
/// `attempts` counts the attempts made (for status); `now` cuts the wait
/// before the next attempt short (`resumeproxy resume`).
async fn reconnect(
    config: &ClientConfig,
    connector: &Connector,
    resume: Resume,
    grace: Duration,
    lost_at: Instant,
    attempts_made: &AtomicU32,
    now: &Notify,
) -> Result<(Transport, u64, u32), ClientError> {
    let addr = config.relay_addr();
    let session = resume.session;
    let mut backoff = Backoff::default();
    let mut attempts = 0;
    // A live path answers within a round trip or two; one that does not
    // answer within the dead-peer interval is no better than a dead one.
    let attempt_timeout = config
        .connect_timeout
        .min(config.session.dead_after.max(MIN_ATTEMPT_TIMEOUT));
    loop {
        attempts += 1;
        attempts_made.store(attempts, Ordering::Relaxed);
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(attempt_timeout, resume_once(config, connector, &resume)) => attempt,
            () = now.notified() => {
                // The user says the network is back: an attempt still
                // waiting on the old path is not worth finishing.
                tracing::debug!("asked to try now; starting a fresh attempt");
                backoff = Backoff::default();
                continue;
            }
        };
        match attempt {
            Ok(Ok(Ok((transport, peer_received)))) => {
                return Ok((transport, peer_received, attempts))
            }
            Ok(Ok(Err((Code::UnknownSession, reason)))) => {
                return Err(ClientError::SessionGone {
                    addr,
                    session,
                    reason,
                })
            }
            Ok(Ok(Err((Code::Busy, reason)))) => {
                tracing::debug!("attempt {attempts}: relay busy: {reason}");
            }
            Ok(Ok(Err((_, reason)))) => return Err(ClientError::Refused { addr, reason }),
            Ok(Err(OpenError::KeyChanged(seen))) => {
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
            Ok(Err(OpenError::Io(reason) | OpenError::Refused(reason))) => {
                tracing::debug!("attempt {attempts}: {reason}")
            }
            Err(_) => tracing::debug!(
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

type ResumeResult = Result<(Transport, u64), (Code, String)>;

/// One resume attempt: `Err` is a network failure, `Ok(Err)` a refusal.
async fn resume_once(
    config: &ClientConfig,
    connector: &Connector,
    resume: &Resume,
) -> Result<ResumeResult, OpenError> {
    let expectation = Expectation::exactly(resume.relay_key);
    let (mut transport, _) = connect(config, connector, &expectation).await?;
    let hello = Hello::Resume {
        dead_after_ms: millis(config.session.dead_after),
        session: resume.session,
        proof: crate::resume_auth::proof(&resume.secret, &resume.session, &transport.binding),
        received: resume.received,
    };
    match handshake::client(&mut transport, &hello).await {
        Ok(Reply::Resumed { received, .. }) => Ok(Ok((transport, received))),
        Ok(Reply::Refused { code, reason }) => Ok(Err((code, reason))),
        Ok(Reply::Created { .. }) => Err(OpenError::Io(
            "relay answered a resume as a new session".into(),
        )),
        Err(e) => Err(OpenError::Io(e.to_string())),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
