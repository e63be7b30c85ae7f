//! A session's tunables: buffer bounds, the dead-peer interval, the largest
//! frame — with their defaults and the bounds the front ends check.

use crate::proto::wire::MAX_DATA_LEN;
use std::time::Duration;

/// Default bound on unacknowledged bytes per direction.
pub const DEFAULT_REPLAY_CAPACITY: usize = 8 * 1024 * 1024;
/// Default bound on received bytes waiting for the local end to take them.
pub const DEFAULT_DELIVER_CAPACITY: usize = 512 * 1024;
/// Default dead-peer interval: a transport silent this long is abandoned.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(5);
/// Shortest dead-peer interval accepted from a user or a peer.
pub const MIN_DEAD_AFTER: Duration = Duration::from_millis(500);
/// Longest dead-peer interval accepted from a user or a peer.
pub const MAX_DEAD_AFTER: Duration = Duration::from_secs(600);

/// Tunables of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most unacknowledged bytes kept for replay; reading from the local end
    /// stops when it is reached.
    pub replay_capacity: usize,
    /// Most received bytes queued for the local end; reading from the
    /// transport stops when it is reached.
    pub deliver_capacity: usize,
    /// A transport from which nothing arrived for this long is dead.
    pub dead_after: Duration,
    /// Largest data frame payload sent or accepted (the relay sets it and
    /// tells the client).
    pub max_data_len: usize,
    /// Acknowledge only what the local end took, not everything received
    /// (the relay: what it received and did not yet write to sshd would be
    /// lost with its process, so the client keeps it until then).
    pub ack_delivered: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            deliver_capacity: DEFAULT_DELIVER_CAPACITY,
            dead_after: DEFAULT_DEAD_AFTER,
            max_data_len: MAX_DATA_LEN,
            ack_delivered: false,
        }
    }
}

/// Heartbeats per dead-peer interval, unless the transport asks for more:
/// three can be lost.
pub const HEARTBEATS: u32 = 4;

impl SessionConfig {
    /// How long the sender may stay silent before it sends a heartbeat: a
    /// quarter of the dead-peer interval ([`HEARTBEATS`]), so three can be
    /// lost.
    pub fn heartbeat_interval(&self) -> Duration {
        self.dead_after / HEARTBEATS
    }
}
