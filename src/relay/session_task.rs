//! The task of one session, from its first transport (or its restoration
//! by a new worker) until it ends or expires.
//!
//! It owns the connection to sshd and the session's [`Link`]; what must
//! outlive the worker (the replay ring, the acknowledged offset, since when
//! the client is away, its address) is in the session's record
//! ([`SessionRecord`]), kept with the sshd connection by the supervisor.
//! New transports reach the task through its channel in the session table,
//! already authenticated; it checks the client's resume position, answers,
//! and re-sends. Without a transport it waits for one until the grace
//! period ends — counted across restarts of the worker — then closes the
//! sshd connection and is forgotten.
//!
//! When the relay stops for a restart, the task tells its client to come
//! back and leaves everything else as it is; when it stops for good, the
//! session ends like any other.
//!
//! Audit trail: every start, resume and end is logged with the session id,
//! the client's address, the target, and the relay's local port towards
//! sshd, so that sshd's log (which sees the relay's address) can be joined
//! back to the real client.

use super::accept::refuse;
use super::durable::record::{boot_clock_ms, SessionRecord};
use super::durable::restore::{restore, Restoring};
use super::durable::session_name;
use super::durable::sshd::{SshdReader, SshdWriter};
use super::refusal::Refusal;
use super::table::{Attach, Entry, SourceMark};
use super::{RelayConfig, Shared, Stop, CLOSE_TIMEOUT, RESTART_REASON, SHUTDOWN_REASON};
use crate::link::{close_transport, flush, Link, Outcome, Step};
use crate::proto::reconnect::hold_for;
use crate::proto::replay_ring::{RingBuffer, RingMemory};
use crate::proto::session::{Session, SessionConfig};
use crate::proto::wire::{Code, SessionId};
use crate::transport::Transport;
use crate::units::{count, format_duration};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Room in a session's channel for new transports.
pub(super) const ATTACH_QUEUE: usize = 4;

/// What the audit trail says of a session.
pub(super) struct Audit {
    pub(super) id: SessionId,
    /// The client's latest address.
    pub(super) client: SocketAddr,
    /// Where the session goes, as the log shows it.
    pub(super) target: String,
    /// The relay's port towards the target: what sshd logs.
    pub(super) local_port: u16,
    /// Counts the session against the address it was opened from.
    pub(super) _source: SourceMark,
}

/// How a session task begins.
pub(super) enum Start {
    /// A new session, its client on this transport.
    New(Box<Transport>),
    /// Carried on from an earlier worker; its client comes back.
    Restored,
}

/// How a session task ended.
enum Ending {
    /// The session is over, for this reason.
    Ended(String),
    /// The relay stops for a restart: the session lives on in the store.
    Paused,
}

/// What a session task waits for besides its link.
enum Wake {
    /// The client is back on a new transport.
    Attach(Box<Attach>),
    /// Nobody came back within the grace period.
    Expired,
    /// The relay is stopping.
    Stop,
}

/// The next [`Wake`]: a new transport, the relay stopping, or (if `grace`
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
            None => Wake::Stop,
        },
        () = stop.cancelled() => Wake::Stop,
        () = expiry => Wake::Expired,
    }
}

/// A session's session config: the relay's, with what the client asked for.
pub(super) fn session_config(
    relay: &SessionConfig,
    dead_after: Duration,
    max_data: usize,
) -> SessionConfig {
    SessionConfig {
        dead_after,
        max_data_len: max_data,
        // What the relay received and did not yet write to sshd would be
        // lost with its process: the client keeps it until then.
        ack_delivered: true,
        ..*relay
    }
}

/// A new session's state machine, its replay ring in `record`.
pub(super) fn new_session(
    config: SessionConfig,
    record: &Arc<SessionRecord>,
) -> Result<Session, String> {
    let ring = RingBuffer::new(Arc::clone(record) as Arc<dyn RingMemory>, 0, 0)
        .map_err(|e| e.to_string())?;
    Ok(Session::with_ring(config, ring, Instant::now()))
}

/// Runs one session, from `start` until it ends, expires or the relay stops.
pub(super) async fn run(
    audit: Audit,
    sshd: TcpStream,
    record: Arc<SessionRecord>,
    mut session: Session,
    start: Start,
    shared: Arc<Shared>,
    attach_rx: mpsc::Receiver<Attach>,
) {
    // The client judges its transport first (see `Session::judge_second`).
    session.judge_second();
    let mut current = match start {
        Start::New(transport) => match session.attach(0, Instant::now()) {
            Ok(()) => Some(*transport),
            Err(e) => {
                tracing::error!(session = %audit.id, "cannot start: {e}");
                None
            }
        },
        Start::Restored => None,
    };
    let (sshd_in, sshd_out) = sshd.into_split();
    let writer = SshdWriter::new(sshd_out, Arc::clone(&record));
    let mut task = SessionTask {
        audit,
        link: Link::new(session, SshdReader(sshd_in), writer),
        record,
        shared,
        attach_rx,
        started: Instant::now(),
    };
    let ending = loop {
        // Reloads apply from the next detach or resume on.
        let config = task.shared.config();
        let next = match current.take() {
            None => task.detached(&config).await,
            Some(transport) => task.attached(transport, &config).await,
        };
        match next {
            ControlFlow::Continue(transport) => current = transport,
            ControlFlow::Break(ending) => break ending,
        }
    };
    let shared = Arc::clone(&task.shared);
    match ending {
        Ending::Ended(reason) => task.end(&reason),
        Ending::Paused => drop(task),
    }
    shared.trim.released();
}

/// Carries on every session an earlier worker left in the store; returns
/// how many.
pub(super) fn restore_all(sessions: Vec<(String, Vec<OwnedFd>)>, shared: &Arc<Shared>) -> usize {
    let total = sessions.len();
    let mut restored = 0;
    for (name, fds) in sessions {
        match restore(fds) {
            Ok(restoring) => {
                spawn_restored(restoring, shared);
                restored += 1;
            }
            Err(e) => {
                tracing::warn!("a kept session ({name}) cannot be carried on: {e}; closing it");
                shared.store.forget(&name);
            }
        }
    }
    if total > 0 {
        tracing::info!(
            "restored {restored} of {} kept by {}",
            count(total, "session"),
            shared.store.keeper()
        );
    }
    restored
}

fn spawn_restored(restoring: Restoring, shared: &Arc<Shared>) {
    let Restoring {
        record,
        fixed,
        sshd,
        restored,
        written,
    } = restoring;
    let config = shared.config();
    let session_config = session_config(
        &config.session,
        Duration::from_millis(fixed.dead_after_ms.into()),
        fixed.max_data as usize,
    );
    let (from_sshd, unacked) = (restored.ring.end(), restored.ring.len());
    let session = Session::restore(session_config, restored, Instant::now());
    let client = record
        .client()
        .unwrap_or_else(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    let sshd = match sshd
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(sshd))
    {
        Ok(sshd) => sshd,
        Err(e) => {
            tracing::warn!(session = %fixed.id, "cannot carry the session on: {e}; closing it");
            shared.store.forget(&session_name(&fixed.id));
            return;
        }
    };
    let audit = Audit {
        id: fixed.id,
        client,
        target: fixed.target,
        local_port: fixed.local_port,
        _source: shared.table.add_source_unlimited(client.ip()),
    };
    tracing::info!(
        session = %audit.id, client = %audit.client, target = %audit.target,
        local_port = audit.local_port,
        from_sshd, to_sshd = written, unacked,
        "session restored"
    );
    let (tx, rx) = mpsc::channel(ATTACH_QUEUE);
    shared.table.insert(
        fixed.id,
        Entry {
            secret: fixed.secret,
            attach: tx,
        },
    );
    shared.tasks.spawn(run(
        audit,
        sshd,
        record,
        session,
        Start::Restored,
        Arc::clone(shared),
        rx,
    ));
}

/// One session's state: its link to sshd, its record, its audit trail, and
/// its door for new transports.
struct SessionTask {
    audit: Audit,
    link: Link<SshdReader, SshdWriter>,
    record: Arc<SessionRecord>,
    shared: Arc<Shared>,
    attach_rx: mpsc::Receiver<Attach>,
    started: Instant,
}

impl SessionTask {
    /// Serves sshd without a client until one comes back (the transport to
    /// go on with, if its resume worked) or the session ends.
    async fn detached(&mut self, config: &RelayConfig) -> ControlFlow<Ending, Option<Transport>> {
        let _detached = self.shared.table.mark_detached();
        let grace = hold_for(self.link.session(), config.grace);
        // Counted from when the client left, also by an earlier worker.
        let now = boot_clock_ms();
        let since = self.record.detached_since().unwrap_or_else(|| {
            self.record.set_detached_since(Some(now));
            now
        });
        let away = Duration::from_millis(now.saturating_sub(since));
        let left = grace.saturating_sub(away);
        let wake = next_wake(&mut self.attach_rx, &self.shared.stop, Some(left));
        match self.link.run(None, wake).await {
            Step::Other(Wake::Attach(attach)) => {
                ControlFlow::Continue(self.resume(attach, config).await)
            }
            Step::Other(Wake::Stop) => ControlFlow::Break(match self.shared.stop_mode() {
                Stop::Restart => Ending::Paused,
                Stop::EndAll => Ending::Ended(SHUTDOWN_REASON.to_string()),
            }),
            Step::Other(Wake::Expired) => ControlFlow::Break(Ending::Ended(format!(
                "expired: no client for {}",
                format_duration(grace)
            ))),
            Step::Link(outcome) => {
                ControlFlow::Break(Ending::Ended(format!("ended while detached: {outcome:?}")))
            }
        }
    }

    /// Serves sshd and the client over `transport` until the transport is
    /// lost or replaced (the one to go on with, if any) or the session ends.
    async fn attached(
        &mut self,
        mut transport: Transport,
        config: &RelayConfig,
    ) -> ControlFlow<Ending, Option<Transport>> {
        let wake = next_wake(&mut self.attach_rx, &self.shared.stop, None);
        let step = self.link.run(Some(&mut transport), wake).await;
        // QUIC follows a client that moved: log where it is now.
        self.audit.client = transport.peer_now();
        match step {
            Step::Other(Wake::Attach(attach)) => {
                // The client came back on a new, authenticated transport
                // before this side noticed the old one die: the new one wins
                // and the old one is retired. Unless the resume was refused
                // (a late attempt the client gave up on): then the session
                // is still on the old one.
                let resumed = self.resume(attach, config).await;
                if resumed.is_none() && self.link.session().is_attached() {
                    return ControlFlow::Continue(Some(transport));
                }
                drop(transport);
                ControlFlow::Continue(resumed)
            }
            Step::Other(Wake::Stop) => {
                let (code, reason, ending) = match self.shared.stop_mode() {
                    Stop::Restart => (Code::Restarting, RESTART_REASON, Ending::Paused),
                    Stop::EndAll => (
                        Code::Shutdown,
                        SHUTDOWN_REASON,
                        Ending::Ended(SHUTDOWN_REASON.to_string()),
                    ),
                };
                close_transport(&mut transport, code, reason, CLOSE_TIMEOUT).await;
                ControlFlow::Break(ending)
            }
            // No grace period runs while attached; were it to end anyway,
            // ending the session is safer than a panic.
            Step::Other(Wake::Expired) => {
                ControlFlow::Break(Ending::Ended("expired while attached (a bug)".to_string()))
            }
            // The client's side tells the user; here the link goes on.
            Step::Link(Outcome::Flowing) => ControlFlow::Continue(Some(transport)),
            Step::Link(Outcome::Finished) => {
                close_transport(
                    &mut transport,
                    Code::Done,
                    "session complete",
                    CLOSE_TIMEOUT,
                )
                .await;
                ControlFlow::Break(Ending::Ended("complete".to_string()))
            }
            Step::Link(Outcome::PeerClosed(Code::Done, _)) => {
                ControlFlow::Break(Ending::Ended("complete".to_string()))
            }
            Step::Link(Outcome::PeerClosed(code, reason)) => ControlFlow::Break(Ending::Ended(
                format!("client closed it ({code:?}): {reason}"),
            )),
            Step::Link(Outcome::Protocol(e)) => {
                let reason = e.to_string();
                close_transport(&mut transport, Code::Protocol, &reason, CLOSE_TIMEOUT).await;
                ControlFlow::Break(Ending::Ended(reason))
            }
            Step::Link(Outcome::TransportLost(reason)) => {
                drop(transport);
                self.shared.trim.released();
                self.link.session_mut().detach();
                self.record.set_detached_since(Some(boot_clock_ms()));
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
        // The client's position is checked before the answer goes out.
        let accepted = attach.transport.connection.accept_resume(
            session,
            attach.peer_received,
            config.grace,
            Instant::now(),
        );
        if let Err(e) = accepted {
            tracing::warn!(session = %id, client = %client, "resume refused: {e}");
            let _ = refuse(&mut attach.transport, Refusal::ResumeOutOfRange(e)).await;
            return None;
        }
        session.set_dead_after(attach.dead_after);
        let answered = tokio::time::timeout(
            config.limits.handshake_timeout,
            flush(&mut attach.transport),
        )
        .await;
        let failure = match answered {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("client silent".to_string()),
        };
        if let Some(why) = failure {
            session.detach();
            tracing::info!(session = %id, client = %client, "resume failed: {why}");
            return None;
        }
        attach.transport.open_windows();
        self.audit.client = client;
        self.record.set_client(client);
        self.record.set_detached_since(None);
        tracing::info!(
            session = %id, client = %client, target = %self.audit.target,
            local_port = self.audit.local_port,
            transport = %attach.transport.kind,
            replaying = session.unacked(),
            "session resumed"
        );
        Some(attach.transport)
    }

    /// Ends the session for good: its record, what the supervisor keeps of
    /// it, its sshd connection, its place in the table; and logs its end.
    fn end(self, end_reason: &str) {
        self.record.end();
        self.shared.store.forget(&session_name(&self.audit.id));
        self.link.local_out().close();
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
