//! The relay: accepts clients, connects each new session to its target (the
//! local sshd), and keeps that connection open while the client is away.
//!
//! Clients come over TLS on TCP or over QUIC on UDP, both on the same port
//! number; after the transport's handshake both are served alike. This
//! module holds the relay's configuration, its limits and its accept loop.
//! Each accepted connection goes down the accept path (`accept.rs`), which
//! opens a session or resumes one found in the session table (`table.rs`);
//! every session is one task (`session_task.rs`) that owns the sshd
//! connection and the session's link.
//!
//! Every input is hostile until proven otherwise: connections in their
//! handshake are bounded in number (`admission.rs`: a connection without a
//! place waits in line, and one that says nothing gives its place up) and
//! time; sessions and
//! detached sessions are bounded; a resume must prove the session's secret
//! ([`resume_auth`](crate::proto::resume_auth)), and an address that keeps
//! failing is refused for a while. At a limit the relay refuses the new
//! thing, with a reason, and keeps serving what it has. Sessions go only
//! where the [`target_policy`] allows.
//!
//! Sessions outlive the relay's process ([`durable`]): their sshd
//! connections and records are kept by systemd or the keeper, and a new
//! worker carries them on ([`Relay::bind_with`] restores them before it
//! accepts anything). So there are two ways to stop ([`Stop`]): for a
//! restart, every connected client is told the relay is restarting (a
//! [`Code::Restarting`](crate::proto::wire::Code::Restarting) close) and
//! comes back to the next worker; for good, every client is told the relay
//! is shutting down ([`Code::Shutdown`](crate::proto::wire::Code::Shutdown))
//! and every sshd connection is closed.

mod accept;
pub(crate) mod admission;
pub mod agent;
pub mod durable;
mod listeners;
mod proxied;
mod refusal;
mod session_task;
mod source_counts;
mod table;
pub mod target_policy;
mod trim;

use crate::locks;
use crate::proto::fleet::{InstanceName, QuicRoute};
use crate::proto::resume_auth::FailureLimiter;
use crate::proto::session::SessionConfig;
use crate::transport::quic;
use crate::units::{count, format_duration};
use accept::{AcceptError, Incoming};
use admission::{Admission, Admit, Full, SILENT_AFTER};
use durable::Store;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use table::SessionTable;
use target_policy::TargetPolicy;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default grace period: long enough for a laptop to sleep through a night.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(12 * 3600);
/// Longest time a connection to the target may take.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close notice may take to send.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a worker stopping for a restart lets its QUIC connections'
/// closes go out (it no longer reads, so it waits for nothing else).
const RESTART_CLOSE_WAIT: Duration = Duration::from_millis(50);
/// How long sessions get at shutdown to tell their clients.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// What clients are told when the relay stops for good.
const SHUTDOWN_REASON: &str = "the relay is shutting down";
/// What clients are told when the relay's process restarts.
const RESTART_REASON: &str = "the relay is restarting";

/// How the relay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its process will be restarted and carry every session on: clients
    /// are told to come back, sshd connections are left as they are.
    Restart,
    /// For good: every session ends, clients are told, sshd connections
    /// are closed.
    EndAll,
}

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
            max_detached: 512,
            max_sessions_per_source: 256,
            max_handshakes: 512,
            max_handshakes_per_source: 64,
        }
    }
}

/// The relay as one instance of a fleet behind a balancer (see
/// [`fleet`](crate::proto::fleet)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// This instance's name: new sessions are told it, reconnects send it
    /// as SNI.
    pub instance: InstanceName,
    /// How sessions opened here come back over QUIC.
    pub quic_route: QuicRoute,
    /// Where HAProxy's agent-check is answered, if anywhere.
    pub agent_listen: Option<SocketAddr>,
    /// Taking no new sessions; those here go on.
    pub draining: bool,
    /// Balancers whose TCP connections start with a PROXY protocol (v1 or v2)
    /// header naming the client.
    pub proxy_protocol_from: Vec<IpAddr>,
}

impl Default for Fleet {
    /// A relay on its own: named `resumeproxyd`, reached directly.
    fn default() -> Self {
        Fleet {
            instance: InstanceName::from_host_name(""),
            quic_route: QuicRoute::Direct,
            agent_listen: None,
            draining: false,
            proxy_protocol_from: Vec::new(),
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
    /// Keys QUIC's stateless resets. The same across restarts (the relay
    /// derives it from its key), so that a new worker's reset ends a
    /// client's connection to the old one at once.
    pub quic_reset_key: [u8; 32],
    /// Its place in a fleet: name, QUIC route, agent, draining.
    pub fleet: Fleet,
}

/// What every task of a relay shares.
struct Shared {
    /// The configuration; replaced by [`RelayHandle::reload`].
    config: RwLock<Arc<RelayConfig>>,
    acceptor: TlsAcceptor,
    /// Live sessions, by id, and the counts the limits apply to.
    table: Arc<SessionTable>,
    /// Connections in their handshake.
    admission: Arc<Admission>,
    /// Connections evicted from their place for another, so far.
    evicted: AtomicU64,
    /// Connections turned away beyond the line, so far.
    turned_away: AtomicU64,
    /// Gives memory back after sessions and connections end.
    trim: trim::Trimmer,
    /// Failed resumes per source address.
    failures: Mutex<FailureLimiter>,
    /// Cancelled when the relay shuts down.
    stop: CancellationToken,
    /// How it shuts down, once `stop` is cancelled.
    stop_mode: std::sync::OnceLock<Stop>,
    /// Where what outlives the process is kept.
    store: Store,
    /// Set when the relay told its supervisor it stops: no status line of
    /// the running relay may follow.
    status_stopped: Mutex<bool>,
    /// Every task the relay spawned, to wait for at shutdown.
    tasks: TaskTracker,
}

impl Shared {
    /// The current configuration.
    fn config(&self) -> Arc<RelayConfig> {
        Arc::clone(&locks::read(&self.config))
    }

    /// How the relay stops; only meaningful once `stop` is cancelled.
    fn stop_mode(&self) -> Stop {
        self.stop_mode.get().copied().unwrap_or(Stop::EndAll)
    }

    fn failures(&self) -> MutexGuard<'_, FailureLimiter> {
        locks::lock(&self.failures)
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
    /// Connections waiting for a place to start it.
    pub waiting: usize,
    /// Sessions carried on from an earlier process at start.
    pub restored: usize,
}

/// Watches and reconfigures a running relay.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    restored: usize,
}

impl RelayHandle {
    /// What the relay holds now.
    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            sessions: self.shared.table.len(),
            detached: self.shared.table.detached(),
            handshakes: self.shared.admission.in_progress(),
            waiting: self.shared.admission.waiting(),
            restored: self.restored,
        }
    }

    /// Tells the supervisor (systemd or the keeper) `state`.
    pub fn notify(&self, state: &str) {
        self.shared.store.notify(state);
    }

    /// Tells the supervisor the running relay's status (`STATUS=…`, with
    /// `READY=1`), unless it has begun to stop: its last status stands.
    pub fn notify_status(&self, state: &str) {
        let stopped = locks::lock(&self.shared.status_stopped);
        if !*stopped {
            self.shared.store.notify(state);
        }
    }

    /// Keeps `text`, the config file as it just read well, for the next
    /// worker to run with should the file be broken by then (see
    /// [`durable::kept_config`]).
    pub fn keep_config(&self, text: &str) {
        self.shared.store.keep_config(text);
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
        *locks::write(&self.shared.config) = Arc::new(config);
    }
}

/// A bound relay, ready to run.
pub struct Relay {
    listener: TcpListener,
    /// HAProxy's agent-check, if configured.
    agent: Option<TcpListener>,
    /// QUIC, unless its UDP port could not be had, and the switch that
    /// stops its reading.
    quic: Option<(quinn::Endpoint, quic::ReadStop)>,
    shared: Arc<Shared>,
    /// Sessions carried on from an earlier process.
    restored: usize,
}

impl Relay {
    /// A relay that keeps nothing beyond its process (the demo, tests):
    /// [`bind_with`](Self::bind_with) and an empty [`Store`].
    pub async fn bind(config: RelayConfig) -> io::Result<Relay> {
        Relay::bind_with(config, Store::none()).await
    }

    /// Takes the listening sockets from `store` or binds them — TCP on the
    /// configured address, and UDP for QUIC on the same address and port —
    /// and carries on every session an earlier process left in `store`,
    /// before anything is accepted. Without UDP (the port is taken, UDP is
    /// not allowed), the relay serves TCP alone and says so: clients with
    /// `--transport auto` use TCP.
    pub async fn bind_with(config: RelayConfig, mut store: Store) -> io::Result<Relay> {
        let listener = listeners::tcp(&config, &mut store)?;
        let limits = config.limits;
        let udp = listener.local_addr()?;
        let quic = match listeners::udp(udp, &mut store).and_then(|socket| {
            quic::server_endpoint(
                socket,
                Arc::clone(&config.tls),
                limits.max_handshakes,
                config.quic_reset_key,
            )
        }) {
            Ok(endpoint) => Some(endpoint),
            Err(e) => {
                tracing::warn!("no QUIC: cannot listen on UDP {udp}: {e}; serving TCP only");
                None
            }
        };
        let agent = listeners::agent(&config, &mut store)?;
        let sessions = store.take_sessions();
        store.drop_unclaimed();
        let shared = Arc::new(Shared {
            acceptor: TlsAcceptor::from(Arc::clone(&config.tls)),
            config: RwLock::new(Arc::new(config)),
            table: Arc::default(),
            admission: Admission::new(limits.max_handshakes, limits.max_handshakes_per_source),
            evicted: AtomicU64::new(0),
            turned_away: AtomicU64::new(0),
            trim: trim::Trimmer::default(),
            failures: Mutex::default(),
            stop: CancellationToken::new(),
            stop_mode: std::sync::OnceLock::new(),
            store,
            status_stopped: Mutex::new(false),
            tasks: TaskTracker::new(),
        });
        let restored = session_task::restore_all(sessions, &shared);
        Ok(Relay {
            listener,
            agent,
            quic,
            shared,
            restored,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where HAProxy's agent-check is answered, if anywhere.
    pub fn agent_addr(&self) -> Option<SocketAddr> {
        self.agent
            .as_ref()
            .and_then(|agent| agent.local_addr().ok())
    }

    /// Who keeps the relay's sessions across its restarts.
    pub fn keeper(&self) -> durable::Keeper {
        self.shared.store.keeper()
    }

    /// A handle to watch and reconfigure the relay while it runs.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: Arc::clone(&self.shared),
            restored: self.restored,
        }
    }

    /// Serves clients until `shutdown` completes; then stops accepting and
    /// stops as it says ([`Stop`]), returning within about
    /// [`SHUTDOWN_TIMEOUT`].
    pub async fn run(mut self, shutdown: impl Future<Output = Stop>) {
        let mut shutdown = pin!(shutdown);
        let shared = Arc::clone(&self.shared);
        self.shared
            .tasks
            .spawn(async move { shared.trim.run(shared.stop.clone()).await });
        if let Some(agent) = self.agent.take() {
            let shared = Arc::clone(&self.shared);
            self.shared.tasks.spawn(agent::serve(agent, shared));
        }
        let mode = loop {
            let (connection, peer) = tokio::select! {
                mode = &mut shutdown => break mode,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if self.shared.config().fleet.proxy_protocol_from.contains(&peer.ip()) {
                            // A balancer's connection: its header says whose
                            // it is, before anything is counted.
                            proxied::spawn(stream, peer, &self.shared);
                            continue;
                        }
                        (Incoming::Tcp(stream), peer)
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                Some(incoming) = quic_accept(self.quic.as_ref().map(|(e, _)| e)) => {
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
            admit(&self.shared, connection, peer, tokio::time::Instant::now());
        };
        drop(self.listener);
        // New QUIC connections are refused from now on; live ones close
        // with their sessions.
        if let Some((quic, _)) = &self.quic {
            quic.set_server_config(None);
        }
        let sessions = self.shared.table.len();
        let mode = if self.shared.store.is_durable() {
            mode
        } else {
            Stop::EndAll
        };
        // What the supervisor shows from now on (`systemctl status`): not
        // the counts of a relay that no longer serves.
        let status = match mode {
            Stop::Restart => format!(
                "restarting: {} kept by {}",
                count(sessions, "session"),
                self.shared.store.keeper()
            ),
            Stop::EndAll => format!("stopped: {} ended", count(sessions, "session")),
        };
        match mode {
            Stop::Restart => tracing::info!("{status}"),
            Stop::EndAll => {
                tracing::info!("shutting down: closing {}", count(sessions, "session"))
            }
        }
        // For a restart, QUIC clients are told by their connections' own
        // close, at once, and the UDP socket is no longer read: their new
        // connections wait in its queue for the next worker. Were this
        // worker still reading, it would take them and drop them, and each
        // client would try again only after its handshake's first timeout
        // (a second). Their sessions' own close notices then fail at once;
        // TCP clients get theirs as before, and their new connections wait
        // in the kept listener's queue.
        if let (Stop::Restart, Some((quic, reads))) = (mode, &self.quic) {
            reads.stop();
            quic.close(0u32.into(), RESTART_REASON.as_bytes());
        }
        let _ = self.shared.stop_mode.set(mode);
        {
            // The last status: none of the running relay's may follow it.
            let mut stopped = locks::lock(&self.shared.status_stopped);
            *stopped = true;
            self.shared.stop.cancel();
            self.shared
                .store
                .notify(&format!("STOPPING=1\nSTATUS={status}"));
        }
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
        if let Some((quic, _)) = &self.quic {
            let (reason, wait) = match mode {
                // Nothing more is read: only the closes are to go out.
                Stop::Restart => (RESTART_REASON, RESTART_CLOSE_WAIT),
                Stop::EndAll => (SHUTDOWN_REASON, CLOSE_TIMEOUT),
            };
            quic.close(0u32.into(), reason.as_bytes());
            let _ = tokio::time::timeout(wait, quic.wait_idle()).await;
        }
    }
}

/// Gives a new connection from `peer` (accepted at `accepted`) a place to
/// run its handshake in, or a place in line, and serves it; or turns it
/// away when even the line is full.
fn admit(
    shared: &Arc<Shared>,
    connection: Incoming,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
) {
    let place = match shared.admission.admit(peer.ip()) {
        Ok(Admit::Now(slot) | Admit::Evicted(slot)) => accept::Place::Now(slot),
        Ok(Admit::Queued(ticket)) => accept::Place::Queued(ticket),
        Err(full) => {
            // Turned away at once, with a word the client can read
            // (a TLS alert, QUIC's refusal) and nothing more: nothing
            // about the connection is known yet, and answering must
            // not cost more than it did.
            match connection {
                Incoming::Tcp(stream) => accept::turn_away(&stream),
                Incoming::Quic(incoming) => incoming.refuse(),
            }
            let turned_away = shared.turned_away.fetch_add(1, Ordering::Relaxed) + 1;
            if turned_away.is_power_of_two() {
                let why = match full {
                    Full::Total(n) => {
                        format!("{n} connections waiting for a place to start their handshake (--max-handshakes)")
                    }
                    Full::Source(n) => format!(
                        "{n} handshakes in progress from {} and {n} more waiting (--max-handshakes-per-source)",
                        peer.ip()
                    ),
                };
                tracing::warn!(client = %peer, "connection turned away: {why}; {turned_away} turned away so far");
            }
            return;
        }
    };
    let task_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        let shared = task_shared;
        let stop = shared.stop.clone();
        tokio::select! {
            result = accept::accept(connection, peer, place, accepted, Arc::clone(&shared)) => {
                if result.is_err() {
                    shared.trim.released();
                }
                match result {
                    Ok(()) => {}
                    Err(AcceptError::Evicted) => {
                        let n = shared.evicted.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::info!(client = %peer, "connection evicted: it sent nothing within {}, and another connection needed its place; {n} evicted so far", format_duration(SILENT_AFTER));
                        }
                    }
                    Err(e) if e.given_up() => tracing::debug!(client = %peer, "connection given up: {e}"),
                    Err(e) => tracing::info!(client = %peer, "connection refused: {e}"),
                }
            }
            () = stop.cancelled() => {}
        }
    });
}

/// The next QUIC connection attempt; never, without QUIC.
async fn quic_accept(quic: Option<&quinn::Endpoint>) -> Option<quinn::Incoming> {
    match quic {
        Some(endpoint) => endpoint.accept().await,
        None => std::future::pending().await,
    }
}
