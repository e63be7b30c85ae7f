//! The task of one session, from its first transport until it ends or
//! expires.
//!
//! It owns the connection to sshd and the session's [`Link`]. New
//! transports reach it through its channel in the session table, already
//! authenticated; it checks the client's resume position, answers, and
//! re-sends. Without a transport it waits for one until the grace period
//! ends, then closes the sshd connection and is forgotten. Its state lives
//! in one [`SessionTask`], so that what keeps a session (the link, the
//! audit trail) is apart from the table that finds it.
//!
//! Audit trail: every start, resume and end is logged with the session id,
//! the client's address, the target, and the relay's local port towards
//! sshd, so that sshd's log (which sees the relay's address) can be joined
//! back to the real client.

use super::accept::refuse;
use super::table::{Attach, SourceMark};
use super::target_policy::Target;
use super::{RelayConfig, Shared, CLOSE_TIMEOUT, SHUTDOWN_REASON};
use crate::link::handshake;
use crate::link::{close_transport, Link, Outcome, Step};
use crate::proto::session::{Session, SessionConfig};
use crate::proto::wire::{Code, Reply, SessionId};
use crate::transport::Transport;
use crate::units::format_duration;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Grace period of a session whose streams have both ended, waiting only
/// for the client's last acknowledgement.
const ENDED_GRACE: Duration = Duration::from_secs(600);

/// What the audit trail says of a session.
pub(super) struct Audit {
    pub(super) id: SessionId,
    /// The client's latest address.
    pub(super) client: SocketAddr,
    pub(super) target: Target,
    /// The relay's port towards the target: what sshd logs.
    pub(super) local_port: u16,
    /// Counts the session against the address it was opened from.
    pub(super) _source: SourceMark,
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

/// Runs one session, from its first transport until it ends or expires.
pub(super) async fn run(
    audit: Audit,
    sshd: TcpStream,
    first: Transport,
    session_config: SessionConfig,
    shared: Arc<Shared>,
    attach_rx: mpsc::Receiver<Attach>,
) {
    let mut session = Session::new(session_config, Instant::now());
    let mut current = Some(first);
    if let Err(e) = session.attach(0, Instant::now()) {
        tracing::error!(session = %audit.id, "cannot start: {e}");
        current = None;
    }
    let (sshd_in, sshd_out) = sshd.into_split();
    let mut task = SessionTask {
        audit,
        link: Link::new(session, sshd_in, sshd_out),
        shared,
        attach_rx,
        started: Instant::now(),
    };
    let end_reason = loop {
        // Reloads apply from the next detach or resume on.
        let config = task.shared.config();
        let next = match current.take() {
            None => task.detached(&config).await,
            Some(transport) => task.attached(transport, &config).await,
        };
        match next {
            ControlFlow::Continue(transport) => current = transport,
            ControlFlow::Break(reason) => break reason,
        }
    };
    task.end(&end_reason);
}

/// One session's state: its link to sshd, its audit trail, and its door
/// for new transports.
struct SessionTask<R, W> {
    audit: Audit,
    link: Link<R, W>,
    shared: Arc<Shared>,
    attach_rx: mpsc::Receiver<Attach>,
    started: Instant,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> SessionTask<R, W> {
    /// Serves sshd without a client until one comes back (the transport to
    /// go on with, if its resume worked) or the session ends (why).
    async fn detached(&mut self, config: &RelayConfig) -> ControlFlow<String, Option<Transport>> {
        let _detached = self.shared.table.mark_detached();
        // Both streams are over and only the client's last ack is
        // missing: it has most likely exited, so do not hold on for long.
        let grace = if self.link.session().both_streams_ended() {
            config.grace.min(ENDED_GRACE)
        } else {
            config.grace
        };
        let wake = next_wake(&mut self.attach_rx, &self.shared.stop, Some(grace));
        match self.link.run(None, wake).await {
            Step::Other(Wake::Attach(attach)) => {
                ControlFlow::Continue(self.resume(attach, config).await)
            }
            Step::Other(Wake::Shutdown) => ControlFlow::Break(SHUTDOWN_REASON.to_string()),
            Step::Other(Wake::Expired) => {
                ControlFlow::Break(format!("expired: no client for {}", format_duration(grace)))
            }
            Step::Link(outcome) => ControlFlow::Break(format!("ended while detached: {outcome:?}")),
        }
    }

    /// Serves sshd and the client over `transport` until the transport is
    /// lost or replaced (the one to go on with, if any) or the session ends
    /// (why).
    async fn attached(
        &mut self,
        mut transport: Transport,
        config: &RelayConfig,
    ) -> ControlFlow<String, Option<Transport>> {
        let wake = next_wake(&mut self.attach_rx, &self.shared.stop, None);
        let step = self.link.run(Some(&mut transport), wake).await;
        // QUIC follows a client that moved: log where it is now.
        self.audit.client = transport.peer_now();
        match step {
            Step::Other(Wake::Attach(attach)) => {
                // The client came back on a new, authenticated transport
                // before this side noticed the old one die: the new one wins
                // and the old one is retired.
                drop(transport);
                self.link.session_mut().detach();
                ControlFlow::Continue(self.resume(attach, config).await)
            }
            Step::Other(Wake::Shutdown) => {
                close_transport(
                    &mut transport,
                    Code::Shutdown,
                    SHUTDOWN_REASON,
                    CLOSE_TIMEOUT,
                )
                .await;
                ControlFlow::Break(SHUTDOWN_REASON.to_string())
            }
            // No grace period runs while attached; were it to end anyway,
            // ending the session is safer than a panic.
            Step::Other(Wake::Expired) => {
                ControlFlow::Break("expired while attached (a bug)".to_string())
            }
            Step::Link(Outcome::Finished) => {
                close_transport(
                    &mut transport,
                    Code::Done,
                    "session complete",
                    CLOSE_TIMEOUT,
                )
                .await;
                ControlFlow::Break("complete".to_string())
            }
            Step::Link(Outcome::PeerClosed(Code::Done, _)) => {
                ControlFlow::Break("complete".to_string())
            }
            Step::Link(Outcome::PeerClosed(code, reason)) => {
                ControlFlow::Break(format!("client closed it ({code:?}): {reason}"))
            }
            Step::Link(Outcome::Protocol(reason)) => {
                close_transport(&mut transport, Code::Protocol, &reason, CLOSE_TIMEOUT).await;
                ControlFlow::Break(format!("protocol error: {reason}"))
            }
            Step::Link(Outcome::TransportLost(reason)) => {
                self.link.session_mut().detach();
                tracing::info!(
                    session = %self.audit.id, client = %self.audit.client, target = %self.audit.target,
                    local_port = self.audit.local_port,
                    "client lost: {reason}; keeping the session for {}", format_duration(config.grace)
                );
                ControlFlow::Continue(None)
            }
        }
    }

    /// Attaches a client's new transport to the session; `None` if that failed.
    async fn resume(&mut self, mut attach: Box<Attach>, config: &RelayConfig) -> Option<Transport> {
        let id = self.audit.id;
        let client = attach.transport.peer;
        let session = self.link.session_mut();
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
        self.audit.client = client;
        tracing::info!(
            session = %id, client = %client, target = %self.audit.target,
            local_port = self.audit.local_port,
            transport = %attach.transport.kind,
            replaying = session.unacked(),
            "session resumed"
        );
        Some(attach.transport)
    }

    /// Forgets the session and logs its end.
    fn end(self, end_reason: &str) {
        self.shared.table.remove(&self.audit.id);
        let stats = self.link.session().stats();
        tracing::info!(
            session = %self.audit.id, client = %self.audit.client, target = %self.audit.target,
            local_port = self.audit.local_port,
            duration = %format_duration(self.started.elapsed()),
            bytes_from_client = stats.bytes_received,
            bytes_to_client = stats.bytes_read_local,
            "session ended: {end_reason}"
        );
    }
}
