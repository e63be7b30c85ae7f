//! What every task of a relay shares ([`Shared`]: its configuration, the
//! session table, admission, the store), and how the relay stops ([`Stop`]),
//! with what its clients are told then.

use super::admission::Admission;
use super::config::RelayConfig;
use super::durable::Store;
use super::table::SessionTable;
use super::trim;
use crate::locks;
use crate::proto::resume_auth::FailureLimiter;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a close notice may take to send.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// What clients are told when the relay stops for good.
pub(super) const SHUTDOWN_REASON: &str = "the relay is shutting down";
/// What clients are told when the relay's process restarts.
pub(super) const RESTART_REASON: &str = "the relay is restarting";

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

/// What every task of a relay shares.
pub(super) struct Shared {
    /// The configuration; replaced by [`RelayHandle::reload`](super::RelayHandle::reload).
    pub(super) config: RwLock<Arc<RelayConfig>>,
    pub(super) acceptor: TlsAcceptor,
    /// Live sessions, by id, and the counts the limits apply to.
    pub(super) table: Arc<SessionTable>,
    /// Connections in their handshake.
    pub(super) admission: Arc<Admission>,
    /// Connections evicted from their place for another, so far.
    pub(super) evicted: AtomicU64,
    /// Connections turned away beyond the line, so far.
    pub(super) turned_away: AtomicU64,
    /// Gives memory back after sessions and connections end.
    pub(super) trim: trim::Trimmer,
    /// Failed resumes per source address.
    pub(super) failures: Mutex<FailureLimiter>,
    /// Cancelled when the relay shuts down.
    pub(super) stop: CancellationToken,
    /// How it shuts down, once `stop` is cancelled.
    pub(super) stop_mode: std::sync::OnceLock<Stop>,
    /// Where what outlives the process is kept.
    pub(super) store: Store,
    /// Set when the relay told its supervisor it stops: no status line of
    /// the running relay may follow.
    pub(super) status_stopped: Mutex<bool>,
    /// Every task the relay spawned, to wait for at shutdown.
    pub(super) tasks: TaskTracker,
}

impl Shared {
    /// The current configuration.
    pub(super) fn config(&self) -> Arc<RelayConfig> {
        Arc::clone(&locks::read(&self.config))
    }

    /// How the relay stops; only meaningful once `stop` is cancelled.
    pub(super) fn stop_mode(&self) -> Stop {
        self.stop_mode.get().copied().unwrap_or(Stop::EndAll)
    }

    pub(super) fn failures(&self) -> MutexGuard<'_, FailureLimiter> {
        locks::lock(&self.failures)
    }
}
