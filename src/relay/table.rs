//! The session table: which sessions the relay holds, how to reach each
//! one's task with a new transport, and the counts its limits are checked
//! against (sessions per source address, sessions without a client).
//!
//! The acceptor looks sessions up here and hands authenticated transports
//! to their tasks through the [`Entry`]'s channel; each task removes its
//! entry when it ends. Counts are kept by marks that give their place back
//! when dropped, so no path can forget to.

use super::source_counts::SourceCounts;
use crate::locks;
use crate::proto::wire::{SessionId, SECRET_LEN};
use crate::transport::Transport;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// A new transport for an existing session, its resume authenticated.
pub(super) struct Attach {
    pub(super) transport: Transport,
    /// The position the client has received up to.
    pub(super) peer_received: u64,
    /// The client's dead-peer interval.
    pub(super) dead_after: Duration,
}

/// What the session table keeps per session.
pub(super) struct Entry {
    /// What a resume must prove knowledge of.
    pub(super) secret: [u8; SECRET_LEN],
    /// The session task's door for new transports.
    pub(super) attach: mpsc::Sender<Attach>,
}

/// Live sessions, and the counts the relay's limits apply to.
#[derive(Default)]
pub(super) struct SessionTable {
    entries: Mutex<HashMap<SessionId, Entry>>,
    /// Sessions without a client.
    detached: AtomicUsize,
    /// Live sessions per address they were opened from.
    per_source: Mutex<SourceCounts>,
}

impl SessionTable {
    fn entries(&self) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        locks::lock(&self.entries)
    }

    fn per_source(&self) -> MutexGuard<'_, SourceCounts> {
        locks::lock(&self.per_source)
    }

    /// Live sessions.
    pub(super) fn len(&self) -> usize {
        self.entries().len()
    }

    /// Sessions without a client.
    pub(super) fn detached(&self) -> usize {
        self.detached.load(Ordering::Relaxed)
    }

    /// Adds a session.
    pub(super) fn insert(&self, id: SessionId, entry: Entry) {
        self.entries().insert(id, entry);
    }

    /// Forgets a session.
    pub(super) fn remove(&self, id: &SessionId) {
        self.entries().remove(id);
    }

    /// A session's secret and the door to its task, if it is live.
    pub(super) fn lookup(
        &self,
        id: &SessionId,
    ) -> Option<([u8; SECRET_LEN], mpsc::Sender<Attach>)> {
        self.entries()
            .get(id)
            .map(|entry| (entry.secret, entry.attach.clone()))
    }

    /// Counts a session opened from `source` while the mark lives, unless
    /// that source has `max` already.
    pub(super) fn add_source(self: &Arc<Self>, source: IpAddr, max: usize) -> Option<SourceMark> {
        if !self.per_source().try_add(source, max) {
            return None;
        }
        Some(SourceMark {
            table: Arc::clone(self),
            source,
        })
    }

    /// How many sessions were opened from `source`.
    pub(super) fn opened_from(&self, source: IpAddr) -> usize {
        self.per_source().count(source)
    }

    /// Counts a session carried on from an earlier worker against `source`,
    /// whatever that source holds already: it was admitted once.
    pub(super) fn add_source_unlimited(self: &Arc<Self>, source: IpAddr) -> SourceMark {
        self.per_source().try_add(source, usize::MAX);
        SourceMark {
            table: Arc::clone(self),
            source,
        }
    }

    /// Counts a session as detached while the mark lives.
    pub(super) fn mark_detached(self: &Arc<Self>) -> DetachedMark {
        self.detached.fetch_add(1, Ordering::Relaxed);
        DetachedMark(Arc::clone(self))
    }
}

/// Counts one session against the address it was opened from while it lives.
pub(super) struct SourceMark {
    table: Arc<SessionTable>,
    source: IpAddr,
}

impl Drop for SourceMark {
    fn drop(&mut self) {
        self.table.per_source().remove(self.source);
    }
}

/// Counts one session as detached while it lives.
pub(super) struct DetachedMark(Arc<SessionTable>);

impl Drop for DetachedMark {
    fn drop(&mut self) {
        self.0.detached.fetch_sub(1, Ordering::Relaxed);
    }
}
