//! The relay: accepts clients, connects each new session to its target (the
//! local sshd), and keeps that connection open while the client is away.
//!
//! Every session is one task that owns the sshd connection and the session's
//! [`Link`]. New transports reach it through a channel after the acceptor has
//! read their handshake; a session without a transport waits for one until
//! its grace period ends, then closes the sshd connection and is forgotten.
//!
//! At shutdown the relay stops accepting, every session tells its client why
//! (a [`Code::Shutdown`] close) and closes its sshd connection, and the relay
//! waits a moment for them to finish.
//!
//! Audit trail: every session start, resume and end is logged with the
//! session id, the client's address, the target, and the relay's local port
//! towards sshd, so that sshd's log (which sees the relay's address) can be
//! joined back to the real client.

use crate::cli::format_duration;
use crate::handshake::{self, HandshakeError};
use crate::link::{close_transport, Link, Outcome, Step};
use crate::session::{Session, SessionConfig, MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::transport::Transport;
use crate::wire::{Code, Hello, Reply, SessionId, SECRET_LEN, SESSION_ID_LEN};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default grace period: long enough for a laptop to sleep through a night.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(12 * 3600);
/// Longest time a new connection may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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

/// What the relay needs to know.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen for clients.
    pub listen: SocketAddr,
    /// Where sessions go (the local sshd).
    pub target: SocketAddr,
    /// How long a session without a client is kept.
    pub grace: Duration,
    /// Session tunables (the dead-peer interval is the client's).
    pub session: SessionConfig,
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
    config: RelayConfig,
    /// Live sessions, by id.
    table: Mutex<HashMap<SessionId, Entry>>,
    /// Cancelled when the relay shuts down.
    stop: CancellationToken,
    /// Every task the relay spawned, to wait for at shutdown.
    tasks: TaskTracker,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A bound relay, ready to run.
pub struct Relay {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Relay {
    /// Binds the listening socket.
    pub async fn bind(config: RelayConfig) -> io::Result<Relay> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Relay {
            listener,
            shared: Arc::new(Shared {
                config,
                table: Mutex::default(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves clients until `shutdown` completes; then stops accepting, tells
    /// every connected client that the relay is going away, closes every
    /// sshd connection, and returns within about [`SHUTDOWN_TIMEOUT`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            self.shared.tasks.spawn(async move {
                let stop = shared.stop.clone();
                tokio::select! {
                    result = accept(stream, peer, shared) => {
                        if let Err(e) = result {
                            tracing::info!(client = %peer, "connection refused: {e}");
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
        drop(self.listener);
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
    }
}

/// Why a new connection went nowhere.
#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake took longer than {}", format_duration(HANDSHAKE_TIMEOUT))]
    Timeout,
    #[error("{0}")]
    Refused(String),
}

/// Reads one connection's handshake and opens or resumes its session.
async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(), AcceptError> {
    let config = &shared.config;
    let mut transport = Transport::tcp(stream).map_err(HandshakeError::from)?;
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::relay(&mut transport))
        .await
        .map_err(|_| AcceptError::Timeout)??;
    match hello {
        Hello::New {
            dead_after_ms,
            host,
            port,
        } => {
            let dead_after = clamp_dead_after(dead_after_ms);
            let refusal = if !host.is_empty() {
                Some((
                    Code::TargetRefused,
                    format!("this relay forwards only to its own target, not to host {host:?}"),
                ))
            } else if port != config.target.port() {
                Some((
                    Code::TargetRefused,
                    format!(
                        "this relay forwards only to port {} (its --target), not to port {port}",
                        config.target.port()
                    ),
                ))
            } else {
                None
            };
            if let Some((code, reason)) = refusal {
                return refuse(&mut transport, code, reason).await;
            }
            let connected =
                tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(config.target))
                    .await;
            let target = match connected {
                Ok(Ok(target)) => target,
                Ok(Err(e)) => {
                    let reason = format!(
                        "the relay cannot connect to its target {}: {e}",
                        config.target
                    );
                    return refuse(&mut transport, Code::TargetUnreachable, reason).await;
                }
                Err(_) => {
                    let reason = format!("the relay's target {} does not answer", config.target);
                    return refuse(&mut transport, Code::TargetUnreachable, reason).await;
                }
            };
            target.set_nodelay(true).map_err(HandshakeError::from)?;
            let local_port = target.local_addr().map(|a| a.port()).unwrap_or(0);
            let session = SessionId(rand::random::<[u8; SESSION_ID_LEN]>());
            let secret = rand::random::<[u8; SECRET_LEN]>();
            let (tx, rx) = mpsc::channel(4);
            shared.table().insert(session, Entry { secret, attach: tx });
            let reply = Reply::Created {
                session,
                secret,
                grace_ms: config.grace.as_millis().try_into().unwrap_or(u64::MAX),
            };
            if let Err(e) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::reply(&mut transport, &reply))
                    .await
            {
                shared.table().remove(&session);
                return Err(AcceptError::Refused(format!("could not answer: {e}")));
            }
            tracing::info!(
                session = %session, client = %peer, target = %config.target, local_port,
                "session started"
            );
            let mut session_config = config.session;
            session_config.dead_after = dead_after;
            let task = run_session(
                session,
                target,
                transport,
                session_config,
                Arc::clone(&shared),
                rx,
            );
            shared.tasks.spawn(task);
            Ok(())
        }
        Hello::Resume {
            dead_after_ms,
            session,
            proof,
            received,
        } => {
            let found = shared
                .table()
                .get(&session)
                .map(|entry| (entry.secret == proof, entry.attach.clone()));
            let attach = match found {
                Some((false, _)) => {
                    tracing::warn!(session = %session, client = %peer, "resume with a wrong secret refused");
                    return refuse(
                        &mut transport,
                        Code::BadProof,
                        "wrong session secret".into(),
                    )
                    .await;
                }
                Some((true, attach)) => Some(attach),
                None => None,
            };
            let gone = "no such session on this relay: it expired after its grace period, or the relay was restarted";
            let Some(attach) = attach else {
                return refuse(&mut transport, Code::UnknownSession, gone.into()).await;
            };
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

fn clamp_dead_after(ms: u32) -> Duration {
    Duration::from_millis(ms.into()).clamp(MIN_DEAD_AFTER, MAX_DEAD_AFTER)
}

async fn refuse(transport: &mut Transport, code: Code, reason: String) -> Result<(), AcceptError> {
    let reply = Reply::Refused {
        code,
        reason: reason.clone(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake::reply(transport, &reply)).await;
    Err(AcceptError::Refused(reason))
}

/// What a session task waits for besides its link.
enum Wake {
    /// The client is back on a new transport.
    Attach(Attach),
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
            Some(attach) => Wake::Attach(attach),
            // The sender lives in the table until this task removes it.
            None => Wake::Shutdown,
        },
        () = stop.cancelled() => Wake::Shutdown,
        () = expiry => Wake::Expired,
    }
}

/// One session, from its first transport until it ends or expires.
async fn run_session(
    id: SessionId,
    target: TcpStream,
    first: Transport,
    session_config: SessionConfig,
    shared: Arc<Shared>,
    mut attach_rx: mpsc::Receiver<Attach>,
) {
    let config = &shared.config;
    let started = Instant::now();
    let mut session = Session::new(session_config, Instant::now());
    let mut current = Some(first);
    if let Err(e) = session.attach(0, Instant::now()) {
        tracing::error!(session = %id, "cannot start: {e}");
        current = None;
    }
    let (target_in, target_out) = target.into_split();
    let mut link = Link::new(session, target_in, target_out);
    let end_reason = loop {
        let Some(mut transport) = current.take() else {
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
                    current = resume(id, &mut link, attach, config).await;
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
        match link.run(Some(&mut transport), wake).await {
            Step::Other(Wake::Attach(attach)) => {
                // The client came back on a new transport before this side
                // noticed the old one die: the new one wins.
                drop(transport);
                link.session_mut().detach();
                current = resume(id, &mut link, attach, config).await;
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
            Step::Other(Wake::Expired) => unreachable!("no grace period while attached"),
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
                tracing::info!(session = %id, client = %transport.peer, "client lost: {reason}; keeping the session for {}", format_duration(config.grace));
            }
        }
    };
    shared.table().remove(&id);
    let stats = link.session().stats();
    tracing::info!(
        session = %id,
        duration = %format_duration(started.elapsed()),
        bytes_from_client = stats.bytes_received,
        bytes_to_client = stats.bytes_read_local,
        "session ended: {end_reason}"
    );
}

/// Attaches a client's new transport to the session; `None` if that failed.
async fn resume<R, W>(
    id: SessionId,
    link: &mut Link<R, W>,
    mut attach: Attach,
    config: &RelayConfig,
) -> Option<Transport>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let session = link.session_mut();
    if let Err(e) = session.check_resume(attach.peer_received) {
        tracing::warn!(session = %id, client = %attach.transport.peer, "resume refused: {e}");
        let _ = refuse(&mut attach.transport, Code::Protocol, e.to_string()).await;
        return None;
    }
    session.set_dead_after(attach.dead_after);
    let reply = Reply::Resumed {
        received: session.received_position(),
        grace_ms: config.grace.as_millis().try_into().unwrap_or(u64::MAX),
    };
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake::reply(&mut attach.transport, &reply),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::info!(session = %id, client = %attach.transport.peer, "resume failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(session = %id, client = %attach.transport.peer, "resume failed: client silent");
            return None;
        }
    }
    if let Err(e) = session.attach(attach.peer_received, Instant::now()) {
        // Checked above; kept so that a mistake cannot go unnoticed.
        tracing::error!(session = %id, client = %attach.transport.peer, "resume failed: {e}");
        return None;
    }
    tracing::info!(
        session = %id, client = %attach.transport.peer,
        replaying = session.unacked(),
        "session resumed"
    );
    Some(attach.transport)
}
