//! The relay: accepts clients, connects each new session to its target (the
//! local sshd), and keeps that connection open while the client is away.
//!
//! Clients come over TLS on TCP or over QUIC on UDP, both on the same port
//! number; after the transport's handshake both are served alike.
//!
//! Every session is one task that owns the sshd connection and the session's
//! [`Link`]. New transports reach it through a channel after the acceptor has
//! authenticated their resume; a session without a transport waits for one
//! until its grace period ends, then closes the sshd connection and is
//! forgotten.
//!
//! Every input is hostile until proven otherwise: connections in their
//! handshake are bounded in number ([`Admission`]) and time; sessions and
//! detached sessions are bounded; a resume must prove the session's secret
//! ([`resume_auth`]), and an address that keeps failing is refused for a
//! while. At a limit the relay refuses the new thing, with a reason, and
//! keeps serving what it has.
//!
//! At shutdown the relay stops accepting, every session tells its client why
//! (a [`Code::Shutdown`] close) and closes its sshd connection, and the relay
//! waits a moment for them to finish.
//!
//! Audit trail: every session start, resume and end is logged with the
//! session id, the client's address, the target, and the relay's local port
//! towards sshd, so that sshd's log (which sees the relay's address) can be
//! joined back to the real client.

use crate::admission::{Admission, Full};
use crate::cli::format_duration;
use crate::handshake::{self, HandshakeError, NOT_A_CLIENT_NOTICE};
use crate::link::{close_transport, Link, Outcome, Step};
use crate::resume_auth::{self, FailureLimiter, Verdict, MAX_FAILURES};
use crate::session::{Session, SessionConfig, MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::target_policy::{Target, TargetPolicy};
use crate::transport::Transport;
use crate::wire::{Code, Hello, Reply, SessionId, SECRET_LEN, SESSION_ID_LEN};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default grace period: long enough for a laptop to sleep through a night.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(12 * 3600);
/// Longest time a connection to the target may take.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close notice may take to send.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long sessions get at shutdown to tell their clients.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Grace period of a session whose streams have both ended, waiting only
/// for the client's last acknowledgement.
const ENDED_GRACE: Duration = Duration::from_secs(600);
/// What clients are told when the relay stops.
const SHUTDOWN_REASON: &str = "the relay is shutting down";
/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The relay's limits. At each, it refuses the new thing with a reason and
/// keeps serving what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time a connection may take from accept to a complete
    /// handshake (TLS and hello).
    pub handshake_timeout: Duration,
    /// Most sessions at once, attached or not.
    pub max_sessions: usize,
    /// Most sessions without a client at once.
    pub max_detached: usize,
    /// Most sessions opened from one client address, attached or not.
    pub max_sessions_per_source: usize,
    /// Most connections in their handshake at once.
    pub max_handshakes: usize,
    /// Most connections in their handshake from one source address.
    pub max_handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_sessions: 1024,
            max_detached: 256,
            max_sessions_per_source: 64,
            max_handshakes: 512,
            max_handshakes_per_source: 16,
        }
    }
}

/// What the relay needs to know.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen for clients.
    pub listen: SocketAddr,
    /// Where sessions may go.
    pub targets: TargetPolicy,
    /// How long a session without a client is kept.
    pub grace: Duration,
    /// Session tunables: replay buffer and frame size (the dead-peer
    /// interval is the client's).
    pub session: SessionConfig,
    /// Limits on what clients may make the relay hold.
    pub limits: Limits,
    /// TLS with the relay's key.
    pub tls: Arc<rustls::ServerConfig>,
}

/// A new transport for an existing session.
struct Attach {
    transport: Transport,
    peer_received: u64,
    dead_after: Duration,
}

/// What the session table keeps per session.
struct Entry {
    secret: [u8; SECRET_LEN],
    attach: mpsc::Sender<Attach>,
}

/// What every task of a relay shares.
struct Shared {
    /// The configuration; replaced by [`RelayHandle::reload`].
    config: std::sync::RwLock<Arc<RelayConfig>>,
    acceptor: TlsAcceptor,
    /// Live sessions, by id.
    table: Mutex<HashMap<SessionId, Entry>>,
    /// Sessions without a client.
    detached: AtomicUsize,
    /// Live sessions per address they were opened from.
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections in their handshake.
    admission: Arc<Admission>,
    /// Failed resumes per source address.
    failures: Mutex<FailureLimiter>,
    /// Cancelled when the relay shuts down.
    stop: CancellationToken,
    /// Every task the relay spawned, to wait for at shutdown.
    tasks: TaskTracker,
}

impl Shared {
    /// The current configuration.
    fn config(&self) -> Arc<RelayConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn per_source(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a session opened from `source` while the mark lives, unless
    /// that source has `max` already.
    fn add_source(self: &Arc<Self>, source: IpAddr, max: usize) -> Option<SourceMark> {
        let mut per_source = self.per_source();
        let count = per_source.entry(source).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceMark {
            shared: Arc::clone(self),
            source,
        })
    }

    /// Forgets a session opened from `source`.
    fn remove_source(&self, source: IpAddr) {
        let mut per_source = self.per_source();
        if let Some(count) = per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_source.remove(&source);
            }
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts one session against the address it was opened from while it lives.
struct SourceMark {
    shared: Arc<Shared>,
    source: IpAddr,
}

impl Drop for SourceMark {
    fn drop(&mut self) {
        self.shared.remove_source(self.source);
    }
}

/// Counts one session as detached while it lives.
struct DetachedMark<'a>(&'a AtomicUsize);

impl<'a> DetachedMark<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        DetachedMark(counter)
    }
}

impl Drop for DetachedMark<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts of what a relay holds, for status lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayCounts {
    /// Live sessions.
    pub sessions: usize,
    /// Of which without a client.
    pub detached: usize,
    /// Connections in their handshake.
    pub handshakes: usize,
}

/// Watches and reconfigures a running relay.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl RelayHandle {
    /// What the relay holds now.
    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            sessions: self.shared.table().len(),
            detached: self.shared.detached.load(Ordering::Relaxed),
            handshakes: self.shared.admission.in_progress(),
        }
    }

    /// Applies a new configuration without dropping anything: targets,
    /// grace period and limits take effect at once (a lower limit refuses
    /// new things, it closes nothing); replay buffer and frame size apply to
    /// new sessions. The listening address and the key cannot change while
    /// running; `listen` and `tls` of `config` are ignored.
    pub fn reload(&self, config: RelayConfig) {
        let limits = config.limits;
        self.shared
            .admission
            .set_limits(limits.max_handshakes, limits.max_handshakes_per_source);
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

/// A bound relay, ready to run.
pub struct Relay {
    listener: TcpListener,
    /// QUIC, unless its UDP port could not be had.
    quic: Option<quinn::Endpoint>,
    shared: Arc<Shared>,
}

impl Relay {
    /// Binds the listening sockets: TCP on the configured address, and UDP
    /// for QUIC on the same address and port. Without UDP (the port is
    /// taken, UDP is not allowed), the relay serves TCP alone and says so:
    /// clients with `--transport auto` use TCP.
    pub async fn bind(config: RelayConfig) -> io::Result<Relay> {
        let listener = TcpListener::bind(config.listen).await?;
        let limits = config.limits;
        let udp = listener.local_addr()?;
        let quic =
            match crate::quic::server_endpoint(udp, Arc::clone(&config.tls), limits.max_handshakes)
            {
                Ok(endpoint) => Some(endpoint),
                Err(e) => {
                    tracing::warn!("no QUIC: cannot listen on UDP {udp}: {e}; serving TCP only");
                    None
                }
            };
        Ok(Relay {
            listener,
            quic,
            shared: Arc::new(Shared {
                acceptor: TlsAcceptor::from(Arc::clone(&config.tls)),
                config: std::sync::RwLock::new(Arc::new(config)),
                table: Mutex::default(),
                detached: AtomicUsize::new(0),
                per_source: Mutex::default(),
                admission: Admission::new(limits.max_handshakes, limits.max_handshakes_per_source),
                failures: Mutex::default(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to watch and reconfigure the relay while it runs.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves clients until `shutdown` completes; then stops accepting, tells
    /// every connected client that the relay is going away, closes every
    /// sshd connection, and returns within about [`SHUTDOWN_TIMEOUT`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut refused_full = 0u64;
        loop {
            let (connection, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => (Incoming::Tcp(stream), peer),
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                Some(incoming) = quic_accept(self.quic.as_ref()) => {
                    // A source address is proven before it costs a handshake
                    // slot: a Retry round trip, as TCP's SYN-ACK would.
                    // Otherwise forged datagrams could hold every slot.
                    if !incoming.remote_address_validated() {
                        if incoming.may_retry() {
                            let _ = incoming.retry();
                        } else {
                            incoming.ignore();
                        }
                        continue;
                    }
                    let peer = incoming.remote_address();
                    (Incoming::Quic(Box::new(incoming)), peer)
                }
            };
            let slot = match self.shared.admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(full) => {
                    // Dropping the connection is the answer: nothing about
                    // it is known yet, and answering costs more than it did.
                    if let Incoming::Quic(incoming) = connection {
                        incoming.ignore();
                    }
                    refused_full += 1;
                    if refused_full.is_power_of_two() {
                        let why = match full {
                            Full::Total(n) => {
                                format!("{n} handshakes in progress (--max-handshakes)")
                            }
                            Full::Source(n) => format!(
                                "{n} handshakes in progress from {} (--max-handshakes-per-source)",
                                peer.ip()
                            ),
                        };
                        tracing::warn!(client = %peer, "connection dropped: {why}; {refused_full} dropped so far");
                    }
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            self.shared.tasks.spawn(async move {
                let stop = shared.stop.clone();
                tokio::select! {
                    result = accept(connection, peer, shared) => {
                        if let Err(e) = result {
                            tracing::info!(client = %peer, "connection refused: {e}");
                        }
                    }
                    () = stop.cancelled() => {}
                }
                drop(slot);
            });
        }
        drop(self.listener);
        // New QUIC connections are refused from now on; live ones close
        // with their sessions.
        if let Some(quic) = &self.quic {
            quic.set_server_config(None);
        }
        let sessions = self.shared.table().len();
        tracing::info!("shutting down: closing {sessions} sessions");
        self.shared.stop.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} tasks still running after {}; exiting anyway",
                self.shared.tasks.len(),
                format_duration(SHUTDOWN_TIMEOUT)
            );
        }
        // Let the last QUIC packets (the sessions' close notices) go out.
        if let Some(quic) = &self.quic {
            quic.close(0u32.into(), SHUTDOWN_REASON.as_bytes());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, quic.wait_idle()).await;
        }
    }
}

/// The next QUIC connection attempt; never, without QUIC.
async fn quic_accept(quic: Option<&quinn::Endpoint>) -> Option<quinn::Incoming> {
    match quic {
        Some(endpoint) => endpoint.accept().await,
        None => std::future::pending().await,
    }
}

/// A connection in its handshake.
enum Incoming {
    Tcp(TcpStream),
    Quic(Box<quinn::Incoming>),
}

/// Why a new connection went nowhere.
#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("QUIC: {0}")]
    Quic(io::Error),
    #[error("not a resumeproxy client (it did not start TLS)")]
    NotTls,
    #[error("handshake took longer than {}", format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Refused(String),
}

/// Reads one connection's handshake and opens or resumes its session.
async fn accept(
    connection: Incoming,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(), AcceptError> {
    let limit = shared.config().limits.handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let handshake = async {
        let mut transport = match connection {
            Incoming::Tcp(stream) => accept_tls(stream, &shared).await?,
            Incoming::Quic(incoming) => crate::quic::accept(*incoming)
                .await
                .map_err(AcceptError::Quic)?,
        };
        let hello = handshake::relay(&mut transport).await?;
        Ok::<_, AcceptError>((transport, hello))
    };
    let (transport, hello) = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| AcceptError::Timeout(limit))??;
    serve(transport, hello, peer, &shared).await
}

/// Completes the TLS handshake of a TCP connection.
async fn accept_tls(stream: TcpStream, shared: &Shared) -> Result<Transport, AcceptError> {
    let mut first = [0u8; 1];
    let n = stream
        .peek(&mut first)
        .await
        .map_err(HandshakeError::from)?;
    if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        // An ssh client pointed at this port, a scanner: say what this is.
        let mut stream = stream;
        let _ = stream.write_all(NOT_A_CLIENT_NOTICE).await;
        return Err(AcceptError::NotTls);
    }
    Transport::accept(stream, &shared.acceptor)
        .await
        .map_err(AcceptError::Tls)
}

/// Opens or resumes the session a client's hello asks for.
async fn serve(
    mut transport: Transport,
    hello: Hello,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), AcceptError> {
    match hello {
        Hello::New {
            dead_after_ms,
            host,
            port,
        } => open_session(transport, peer, shared, dead_after_ms, &host, port).await,
        Hello::Resume {
            dead_after_ms,
            session,
            proof,
            received,
        } => {
            let ip = peer.ip();
            let verdict = shared.failures().verdict(ip, Instant::now());
            if let Verdict::Refuse { retry_after } = verdict {
                let reason = format!(
                    "too many failed resume attempts from {ip}; try again in {}",
                    format_duration(retry_after)
                );
                return refuse(&mut transport, Code::Busy, reason).await;
            }
            let found = shared
                .table()
                .get(&session)
                .map(|entry| (entry.secret, entry.attach.clone()));
            let gone = "no such session on this relay: it expired after its grace period, or the relay was restarted";
            let Some((secret, attach)) = found else {
                return refuse(&mut transport, Code::UnknownSession, gone.into()).await;
            };
            if !resume_auth::verify(&secret, &session, &transport.binding, &proof) {
                let failures = shared.failures().record_failure(ip, Instant::now());
                if failures <= MAX_FAILURES {
                    tracing::warn!(session = %session, client = %peer, "resume refused: wrong proof ({failures} from this address in the last minute)");
                }
                if failures == MAX_FAILURES {
                    tracing::warn!(client = %peer, "further resume attempts from {ip} are refused for a minute");
                }
                return refuse(&mut transport, Code::BadProof, "wrong session proof".into()).await;
            }
            let request = Attach {
                transport,
                peer_received: received,
                dead_after: clamp_dead_after(dead_after_ms),
            };
            if let Err(mpsc::error::SendError(mut request)) = attach.send(request).await {
                // The session ended between the lookup and now.
                return refuse(&mut request.transport, Code::UnknownSession, gone.into()).await;
            }
            Ok(())
        }
    }
}

/// Opens a new session to the target a client asked for, if it is allowed
/// and the relay has room.
async fn open_session(
    mut transport: Transport,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    dead_after_ms: u32,
    host: &str,
    port: u16,
) -> Result<(), AcceptError> {
    let config = shared.config();
    let target = match config.targets.decide(host, port) {
        Ok(target) => target,
        Err(reason) => return refuse(&mut transport, Code::TargetRefused, reason).await,
    };
    let limits = config.limits;
    if shared.table().len() >= limits.max_sessions {
        let reason = format!(
            "the relay is at its limit of {} sessions (--max-sessions)",
            limits.max_sessions
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    }
    if shared.detached.load(Ordering::Relaxed) >= limits.max_detached {
        let reason = format!(
            "the relay holds its limit of {} sessions whose clients are away (--max-detached)",
            limits.max_detached
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    }
    let Some(source_mark) = shared.add_source(peer.ip(), limits.max_sessions_per_source) else {
        let reason = format!(
            "the relay holds its limit of {} sessions from {} (--max-sessions-per-source)",
            limits.max_sessions_per_source,
            peer.ip()
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    };
    let connect = async {
        match &target {
            Target::Default(addr) => TcpStream::connect(addr).await,
            Target::Named(named) => TcpStream::connect((named.host.as_str(), named.port)).await,
        }
    };
    let sshd = match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(sshd)) => sshd,
        Ok(Err(e)) => {
            let reason = format!("the relay cannot connect to its target {target}: {e}");
            return refuse(&mut transport, Code::TargetUnreachable, reason).await;
        }
        Err(_) => {
            let reason = format!("the relay's target {target} does not answer");
            return refuse(&mut transport, Code::TargetUnreachable, reason).await;
        }
    };
    sshd.set_nodelay(true).map_err(HandshakeError::from)?;
    let local_port = sshd.local_addr().map(|a| a.port()).unwrap_or(0);
    let session = SessionId(rand::random::<[u8; SESSION_ID_LEN]>());
    let secret = rand::random::<[u8; SECRET_LEN]>();
    let (tx, rx) = mpsc::channel(4);
    shared.table().insert(session, Entry { secret, attach: tx });
    let reply = Reply::Created {
        session,
        secret,
        grace_ms: config.grace.as_millis().try_into().unwrap_or(u64::MAX),
        max_data: u32::try_from(config.session.max_data_len).unwrap_or(u32::MAX),
    };
    if let Err(e) = tokio::time::timeout(
        limits.handshake_timeout,
        handshake::reply(&mut transport, &reply),
    )
    .await
    {
        shared.table().remove(&session);
        return Err(AcceptError::Refused(format!("could not answer: {e}")));
    }
    transport.open_windows();
    let audit = Audit {
        id: session,
        client: peer,
        target,
        local_port,
        _source: source_mark,
    };
    tracing::info!(
        session = %audit.id, client = %audit.client, target = %audit.target, local_port,
        transport = %transport.kind,
        "session started"
    );
    let mut session_config = config.session;
    session_config.dead_after = clamp_dead_after(dead_after_ms);
    let task = run_session(
        audit,
        sshd,
        transport,
        session_config,
        Arc::clone(shared),
        rx,
    );
    shared.tasks.spawn(task);
    Ok(())
}

/// What the audit trail says of a session.
struct Audit {
    id: SessionId,
    /// The client's latest address.
    client: SocketAddr,
    target: Target,
    /// The relay's port towards the target: what sshd logs.
    local_port: u16,
    /// Counts the session against the address it was opened from.
    _source: SourceMark,
}

fn clamp_dead_after(ms: u32) -> Duration {
    Duration::from_millis(ms.into()).clamp(MIN_DEAD_AFTER, MAX_DEAD_AFTER)
}

async fn refuse(transport: &mut Transport, code: Code, reason: String) -> Result<(), AcceptError> {
    let reply = Reply::Refused {
        code,
        reason: reason.clone(),
    };
    let answer = async {
        handshake::reply(transport, &reply).await?;
        // On QUIC, dropping the connection would drop the answer with it.
        transport.stream.shutdown().await?;
        Ok::<_, HandshakeError>(())
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, answer).await;
    Err(AcceptError::Refused(reason))
}

/// What a session task waits for besides its link.
enum Wake {
    /// The client is back on a new transport.
    Attach(Box<Attach>),
    /// Nobody came back within the grace period.
    Expired,
    /// The relay is shutting down.
    Shutdown,
}

/// The next [`Wake`]: a new transport, the relay's shutdown, or (if `grace`
/// is given) the grace period passing. A period too long for the clock never
/// passes.
async fn next_wake(
    attach_rx: &mut mpsc::Receiver<Attach>,
    stop: &CancellationToken,
    grace: Option<Duration>,
) -> Wake {
    let expiry = async {
        match grace.and_then(|g| tokio::time::Instant::now().checked_add(g)) {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        attach = attach_rx.recv() => match attach {
            Some(attach) => Wake::Attach(Box::new(attach)),
            // The sender lives in the table until this task removes it.
            None => Wake::Shutdown,
        },
        () = stop.cancelled() => Wake::Shutdown,
        () = expiry => Wake::Expired,
    }
}

/// One session, from its first transport until it ends or expires.
async fn run_session(
    mut audit: Audit,
    sshd: TcpStream,
    first: Transport,
    session_config: SessionConfig,
    shared: Arc<Shared>,
    mut attach_rx: mpsc::Receiver<Attach>,
) {
    let id = audit.id;
    let started = Instant::now();
    let mut session = Session::new(session_config, Instant::now());
    let mut current = Some(first);
    if let Err(e) = session.attach(0, Instant::now()) {
        tracing::error!(session = %id, "cannot start: {e}");
        current = None;
    }
    let (sshd_in, sshd_out) = sshd.into_split();
    let mut link = Link::new(session, sshd_in, sshd_out);
    let end_reason = loop {
        // Reloads apply from the next detach or resume on.
        let config = shared.config();
        let config = config.as_ref();
        let Some(mut transport) = current.take() else {
            let _detached = DetachedMark::new(&shared.detached);
            // Both streams are over and only the client's last ack is
            // missing: it has most likely exited, so do not hold on for long.
            let grace = if link.session().both_streams_ended() {
                config.grace.min(ENDED_GRACE)
            } else {
                config.grace
            };
            let wake = next_wake(&mut attach_rx, &shared.stop, Some(grace));
            match link.run(None, wake).await {
                Step::Other(Wake::Attach(attach)) => {
                    current = resume(&mut audit, &mut link, attach, config).await;
                    continue;
                }
                Step::Other(Wake::Shutdown) => break SHUTDOWN_REASON.to_string(),
                Step::Other(Wake::Expired) => {
                    break format!("expired: no client for {}", format_duration(grace))
                }
                Step::Link(outcome) => break format!("ended while detached: {outcome:?}"),
            }
        };
        let wake = next_wake(&mut attach_rx, &shared.stop, None);
        let step = link.run(Some(&mut transport), wake).await;
        // QUIC follows a client that moved: log where it is now.
        audit.client = transport.peer_now();
        match step {
            Step::Other(Wake::Attach(attach)) => {
                // The client came back on a new, authenticated transport
                // before this side noticed the old one die: the new one wins
                // and the old one is retired.
                drop(transport);
                link.session_mut().detach();
                current = resume(&mut audit, &mut link, attach, config).await;
            }
            Step::Other(Wake::Shutdown) => {
                close_transport(
                    &mut transport,
                    Code::Shutdown,
                    SHUTDOWN_REASON,
                    CLOSE_TIMEOUT,
                )
                .await;
                break SHUTDOWN_REASON.to_string();
            }
            // No grace period runs while attached; were it to end anyway,
            // ending the session is safer than a panic.
            Step::Other(Wake::Expired) => break "expired while attached (a bug)".to_string(),
            Step::Link(Outcome::Finished) => {
                close_transport(
                    &mut transport,
                    Code::Done,
                    "session complete",
                    CLOSE_TIMEOUT,
                )
                .await;
                break "complete".to_string();
            }
            Step::Link(Outcome::PeerClosed(Code::Done, _)) => break "complete".to_string(),
            Step::Link(Outcome::PeerClosed(code, reason)) => {
                break format!("client closed it ({code:?}): {reason}")
            }
            Step::Link(Outcome::Protocol(reason)) => {
                close_transport(&mut transport, Code::Protocol, &reason, CLOSE_TIMEOUT).await;
                break format!("protocol error: {reason}");
            }
            Step::Link(Outcome::TransportLost(reason)) => {
                link.session_mut().detach();
                tracing::info!(
                    session = %id, client = %audit.client, target = %audit.target,
                    local_port = audit.local_port,
                    "client lost: {reason}; keeping the session for {}", format_duration(config.grace)
                );
            }
        }
    };
    shared.table().remove(&id);
    let stats = link.session().stats();
    tracing::info!(
        session = %id, client = %audit.client, target = %audit.target,
        local_port = audit.local_port,
        duration = %format_duration(started.elapsed()),
        bytes_from_client = stats.bytes_received,
        bytes_to_client = stats.bytes_read_local,
        "session ended: {end_reason}"
    );
}

/// Attaches a client's new transport to the session; `None` if that failed.
async fn resume<R, W>(
    audit: &mut Audit,
    link: &mut Link<R, W>,
    mut attach: Box<Attach>,
    config: &RelayConfig,
) -> Option<Transport>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let id = audit.id;
    let client = attach.transport.peer;
    let session = link.session_mut();
    if let Err(e) = session.check_resume(attach.peer_received) {
        tracing::warn!(session = %id, client = %client, "resume refused: {e}");
        let _ = refuse(&mut attach.transport, Code::Protocol, e.to_string()).await;
        return None;
    }
    session.set_dead_after(attach.dead_after);
    let reply = Reply::Resumed {
        received: session.received_position(),
        grace_ms: config.grace.as_millis().try_into().unwrap_or(u64::MAX),
    };
    let answered = tokio::time::timeout(
        config.limits.handshake_timeout,
        handshake::reply(&mut attach.transport, &reply),
    )
    .await;
    let failure = match answered {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("client silent".to_string()),
    };
    if let Some(why) = failure {
        tracing::info!(session = %id, client = %client, "resume failed: {why}");
        return None;
    }
    if let Err(e) = session.attach(attach.peer_received, Instant::now()) {
        // Checked above; kept so that a mistake cannot go unnoticed.
        tracing::error!(session = %id, client = %client, "resume failed: {e}");
        return None;
    }
    attach.transport.open_windows();
    audit.client = client;
    tracing::info!(
        session = %id, client = %client, target = %audit.target,
        local_port = audit.local_port,
        transport = %attach.transport.kind,
        replaying = session.unacked(),
        "session resumed"
    );
    Some(attach.transport)
}
