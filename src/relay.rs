//! The relay: accepts clients, connects each new session to its target (the
//! local sshd), and keeps that connection open while the client is away.
//!
//! Every session is one task that owns the sshd connection and the session's
//! [`Link`]. New transports reach it through a channel after the acceptor has
//! read their handshake; a session without a transport waits for one until
//! its grace period ends, then closes the sshd connection and is forgotten.
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
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Default grace period: long enough for a laptop to sleep through a night.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(12 * 3600);
/// Longest time a new connection may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a connection to the target may take.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close notice may take to send.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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

type Table = Arc<Mutex<HashMap<SessionId, Entry>>>;

/// A bound relay, ready to run.
pub struct Relay {
    listener: TcpListener,
    config: Arc<RelayConfig>,
    table: Table,
}

impl Relay {
    /// Binds the listening socket.
    pub async fn bind(config: RelayConfig) -> io::Result<Relay> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Relay {
            listener,
            config: Arc::new(config),
            table: Arc::default(),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves clients until the task is dropped.
    pub async fn run(self) -> io::Result<()> {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let config = Arc::clone(&self.config);
            let table = Arc::clone(&self.table);
            tokio::spawn(async move {
                if let Err(e) = accept(stream, peer, config, table).await {
                    tracing::info!(client = %peer, "connection refused: {e}");
                }
            });
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
    config: Arc<RelayConfig>,
    table: Table,
) -> Result<(), AcceptError> {
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
            lock(&table).insert(session, Entry { secret, attach: tx });
            let reply = Reply::Created {
                session,
                secret,
                grace_ms: config.grace.as_millis().try_into().unwrap_or(u64::MAX),
            };
            if let Err(e) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::reply(&mut transport, &reply))
                    .await
            {
                lock(&table).remove(&session);
                return Err(AcceptError::Refused(format!("could not answer: {e}")));
            }
            tracing::info!(
                session = %session, client = %peer, target = %config.target, local_port,
                "session started"
            );
            let mut session_config = config.session;
            session_config.dead_after = dead_after;
            tokio::spawn(run_session(
                session,
                target,
                transport,
                session_config,
                config,
                table,
                rx,
            ));
            Ok(())
        }
        Hello::Resume {
            dead_after_ms,
            session,
            proof,
            received,
        } => {
            let found = lock(&table)
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

fn lock(table: &Table) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
    // A panic while holding the lock cannot leave the map half-changed.
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn refuse(transport: &mut Transport, code: Code, reason: String) -> Result<(), AcceptError> {
    let reply = Reply::Refused {
        code,
        reason: reason.clone(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake::reply(transport, &reply)).await;
    Err(AcceptError::Refused(reason))
}

/// One session, from its first transport until it ends or expires.
async fn run_session(
    id: SessionId,
    target: TcpStream,
    first: Transport,
    session_config: SessionConfig,
    config: Arc<RelayConfig>,
    table: Table,
    mut attach_rx: mpsc::Receiver<Attach>,
) {
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
            let detached_at = Instant::now();
            let deadline = tokio::time::Instant::from_std(detached_at + config.grace);
            match link
                .run(None, tokio::time::timeout_at(deadline, attach_rx.recv()))
                .await
            {
                Step::Other(Ok(Some(attach))) => {
                    current = resume(id, &mut link, attach, &config).await;
                    continue;
                }
                Step::Other(Ok(None)) => break "relay shutting down".to_string(),
                Step::Other(Err(_)) => {
                    break format!("expired: no client for {}", format_duration(config.grace))
                }
                Step::Link(outcome) => break format!("ended while detached: {outcome:?}"),
            }
        };
        match link.run(Some(&mut transport), attach_rx.recv()).await {
            Step::Other(Some(attach)) => {
                // The client came back on a new transport before this side
                // noticed the old one die: the new one wins.
                drop(transport);
                link.session_mut().detach();
                current = resume(id, &mut link, attach, &config).await;
            }
            Step::Other(None) => break "relay shutting down".to_string(),
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
    lock(&table).remove(&id);
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
        tracing::warn!(session = %id, client = %attach.transport.peer, "resume refused: {e}");
        close_transport(
            &mut attach.transport,
            Code::Protocol,
            &e.to_string(),
            CLOSE_TIMEOUT,
        )
        .await;
        return None;
    }
    tracing::info!(
        session = %id, client = %attach.transport.peer,
        replaying = session.unacked(),
        "session resumed"
    );
    Some(attach.transport)
}
