//! What outlives the relay's worker process.
//!
//! A restart, an upgrade or a crash of the worker must not end a session.
//! Its sockets (the listeners, every connection to sshd) are kept by
//! systemd's file descriptor store or, without systemd, by the keeper
//! process ([`keeper`]) that speaks the same protocol ([`fd_store`]). Each
//! session's record ([`record`]: its id, secret, and the replay ring towards
//! its client) lives in a `memfd` kept beside its sshd connection; what the
//! worker read from and wrote to sshd is read back from the kernel's own
//! counters ([`tcp_counters`]). A new worker finds all of it in
//! `$LISTEN_FDS` and carries every session on (`restore`); its clients
//! resume as after a network break.
//!
//! [`Store`] is the relay's one handle on all this; an in-process relay (the
//! demo, tests) has a store that keeps nothing.

pub mod crash;
pub mod fd_store;
pub mod keeper;
pub mod kept_config;
pub mod mapping;
pub mod record;
pub(crate) mod restore;
pub(crate) mod sshd;
pub mod tcp_counters;

use crate::proto::wire::SessionId;
use fd_store::{Notifier, Stored};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

/// The name the TCP listener is kept under.
pub(crate) const TCP_LISTENER: &str = "listen-tcp";
/// The name the UDP socket (QUIC) is kept under.
pub(crate) const UDP_SOCKET: &str = "listen-udp";
/// The name the agent-check listener is kept under.
pub(crate) const AGENT_LISTENER: &str = "listen-agent";
/// Session descriptors are kept under this prefix and the session's id.
const SESSION_PREFIX: &str = "session-";

/// Who keeps the relay's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeper {
    /// Nobody: a restart of this process ends every session.
    Nobody,
    /// systemd's file descriptor store.
    Systemd,
    /// The keeper process that started this worker.
    KeeperProcess,
}

impl std::fmt::Display for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Keeper::Nobody => "nobody",
            Keeper::Systemd => "systemd's descriptor store",
            Keeper::KeeperProcess => "the keeper process",
        })
    }
}

/// The relay's handle on what outlives it: the supervisor's notify socket,
/// and what the supervisor handed back at start.
#[derive(Debug)]
pub struct Store {
    notifier: Option<Notifier>,
    keeper: Keeper,
    stored: Stored,
    /// The number of the configuration kept now, if one is.
    config: Mutex<Option<u64>>,
}

impl Store {
    /// A store that keeps nothing (an in-process relay).
    pub fn none() -> Store {
        Store {
            notifier: None,
            keeper: Keeper::Nobody,
            stored: Stored::default(),
            config: Mutex::new(None),
        }
    }

    /// The store of a worker run by systemd or by the keeper (from
    /// `$NOTIFY_SOCKET` and `$LISTEN_FDS`); one that keeps nothing if
    /// neither runs it.
    pub fn from_env() -> io::Result<Store> {
        let stored = fd_store::take_stored()?;
        let notifier = Notifier::from_env()?;
        let keeper = match &notifier {
            None => Keeper::Nobody,
            Some(_) if std::env::var_os(keeper::KEEPER_ENV).is_some() => Keeper::KeeperProcess,
            Some(_) => Keeper::Systemd,
        };
        std::env::remove_var(keeper::KEEPER_ENV);
        Ok(Store {
            notifier,
            keeper,
            stored,
            config: Mutex::new(None),
        })
    }

    /// Who keeps the descriptors.
    pub fn keeper(&self) -> Keeper {
        self.keeper
    }

    /// Whether sessions outlive this process.
    pub fn is_durable(&self) -> bool {
        self.keeper != Keeper::Nobody
    }

    /// Tells the supervisor `state` (`READY=1`, `STATUS=…`); nothing without one.
    pub fn notify(&self, state: &str) {
        if let Some(notifier) = &self.notifier {
            if let Err(e) = notifier.notify(state) {
                tracing::debug!("telling the supervisor {state:?} failed: {e}");
            }
        }
    }

    /// Takes a kept descriptor back.
    pub(crate) fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.stored.take(name)
    }

    /// Takes back every session's descriptors, by session.
    pub(crate) fn take_sessions(&mut self) -> Vec<(String, Vec<OwnedFd>)> {
        let mut names: Vec<String> = self
            .stored
            .fds
            .iter()
            .filter(|(name, _)| name.starts_with(SESSION_PREFIX))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let fds = self.stored.take_all(&name);
                (name, fds)
            })
            .filter(|(_, fds)| !fds.is_empty())
            .collect()
    }

    /// The last good configuration file's text an earlier worker kept
    /// (see [`kept_config`]), if there is one; an error if it cannot be
    /// read. The newest is taken; older ones (a worker that died between
    /// keeping a new one and forgetting the old) are forgotten.
    pub fn take_config(&mut self) -> io::Result<Option<String>> {
        let mut kept: Vec<(u64, String)> = self
            .stored
            .fds
            .iter()
            .filter_map(|(name, _)| Some((kept_config::generation(name)?, name.clone())))
            .collect();
        kept.sort();
        let Some((newest, name)) = kept.pop() else {
            return Ok(None);
        };
        for (_, old) in kept {
            self.stored.take_all(&old);
            self.forget(&old);
        }
        *crate::locks::lock(&self.config) = Some(newest);
        match self.stored.take_all(&name).pop() {
            Some(fd) => kept_config::from_memfd(&fd).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps `text`, the config file as it just read well, as the last
    /// good configuration, in place of the one kept before. Without a
    /// supervisor, nothing.
    pub fn keep_config(&self, text: &str) {
        if self.notifier.is_none() {
            return;
        }
        let mut kept = crate::locks::lock(&self.config);
        let next = kept.map_or(1, |n| n + 1);
        let stored =
            kept_config::to_memfd(text).and_then(|fd| self.keep(&kept_config::name(next), &[&fd]));
        match stored {
            Ok(()) => {
                // The new one first, then the old one goes: a crash in
                // between leaves two, and the next worker takes the newer.
                if let Some(old) = kept.replace(next) {
                    self.forget(&kept_config::name(old));
                }
            }
            Err(e) => tracing::warn!(
                "the configuration could not be kept ({e}): a restart will need a good config file"
            ),
        }
    }

    /// Descriptors kept that nothing claimed (names of an older build):
    /// closed, and forgotten by the supervisor.
    pub(crate) fn drop_unclaimed(&mut self) {
        let unclaimed: Vec<String> = std::mem::take(&mut self.stored.fds)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for name in unclaimed {
            tracing::warn!("closing a kept descriptor nothing claimed: {name}");
            self.forget(&name);
        }
    }

    /// Has the supervisor keep `fds` under `name`.
    pub(crate) fn keep(&self, name: &str, fds: &[&dyn AsFd]) -> io::Result<()> {
        match &self.notifier {
            Some(notifier) => {
                let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
                notifier.store(name, &borrowed)
            }
            None => Ok(()),
        }
    }

    /// Has the supervisor close what it keeps under `name`.
    pub(crate) fn forget(&self, name: &str) {
        if let Some(notifier) = &self.notifier {
            if let Err(e) = notifier.remove(name) {
                tracing::warn!("the supervisor could not be told to close {name}: {e}");
            }
        }
    }
}

/// The name a session's descriptors are kept under.
pub(crate) fn session_name(id: &SessionId) -> String {
    let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SESSION_PREFIX}{hex}")
}
