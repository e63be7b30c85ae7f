//! What the relay needs to know: its configuration ([`RelayConfig`]), its
//! limits ([`Limits`]) and its place in a fleet ([`Fleet`]). Replaced as a
//! whole at a reload.

use super::target_policy::TargetPolicy;
use crate::proto::fleet::{InstanceName, QuicRoute};
use crate::proto::session::SessionConfig;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Default grace period: long enough for a laptop to sleep through a night.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(12 * 3600);
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
