//! The relay: accepts clients, connects each new session to its target (the
//! local sshd), and keeps that connection open while the client is away.
//!
//! Clients come over TLS on TCP or over QUIC on UDP, both on the same port
//! number; after the transport's handshake both are served alike. This
//! module holds the relay's accept loop and its handle; its configuration
//! and limits are in `config.rs`, what its tasks share and how it stops in
//! `shared.rs`. Each accepted connection is given a place (`admission.rs`)
//! and goes down the accept path (`accept.rs`), which opens a session or
//! resumes one found in the session table (`table.rs`); every session is
//! one task (`session_task.rs`) that owns the sshd connection and the
//! session's link. A refused hello is answered by `refusal.rs`.
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
mod config;
pub mod durable;
mod listeners;
mod proxied;
mod refusal;
mod session_task;
mod shared;
mod source_counts;
mod table;
pub mod target_policy;
mod trim;

use crate::locks;
use crate::transport::quic;
use crate::units::{count, format_duration};
pub use accept::TARGET_CONNECT_TIMEOUT;
pub use config::{Fleet, Limits, RelayConfig, DEFAULT_GRACE};
pub use shared::Stop;

use accept::{admit, Incoming};
use admission::Admission;
use durable::Store;
use shared::{Shared, CLOSE_TIMEOUT, RESTART_REASON, SHUTDOWN_REASON};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a worker stopping for a restart lets its QUIC connections'
/// closes go out (it no longer reads, so it waits for nothing else).
const RESTART_CLOSE_WAIT: Duration = Duration::from_millis(50);
/// How long sessions get at shutdown to tell their clients.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
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

/// The next QUIC connection attempt; never, without QUIC.
async fn quic_accept(quic: Option<&quinn::Endpoint>) -> Option<quinn::Incoming> {
    match quic {
        Some(endpoint) => endpoint.accept().await,
        None => std::future::pending().await,
    }
}
