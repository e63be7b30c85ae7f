//! What a running client tells `resumeproxy status` and `resumeproxy resume`
//! through its control socket (see [`super::control`]): the vitals it keeps
//! of itself, and its answers.

use super::control::{LinkState, Request, StatusReport};
use crate::proto::session::Session;
use crate::proto::wire::SessionId;
use crate::transport::TransportKind;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the client knows of itself, for status reports.
pub(super) struct Vitals {
    pub(super) id: SessionId,
    pub(super) relay: String,
    /// The relay's instance that holds the session.
    pub(super) instance: String,
    pub(super) target: String,
    pub(super) transport: TransportKind,
    pub(super) opened: Instant,
    pub(super) resumes: u32,
    /// Moves from TCP onto QUIC while connected.
    pub(super) moves: u32,
    /// When the link was lost, if it is down.
    pub(super) lost_at: Option<Instant>,
    /// Reconnect attempts since the loss, counted by the reconnect loop.
    pub(super) attempts: Arc<AtomicU32>,
}

impl Vitals {
    /// `transport_rtt`: what the transport measures itself (QUIC), which
    /// wins over the session's heartbeats (none flow while data does).
    fn report(&self, session: &Session, transport_rtt: Option<Duration>) -> StatusReport {
        let stats = session.stats();
        StatusReport {
            id: self.id.to_string(),
            pid: std::process::id(),
            relay: self.relay.clone(),
            instance: self.instance.clone(),
            target: self.target.clone(),
            transport: self.transport.to_string(),
            link: match self.lost_at {
                None => LinkState::Connected,
                Some(at) => LinkState::Reconnecting {
                    since_ms: millis64(at.elapsed()),
                    attempts: self.attempts.load(Ordering::Relaxed),
                },
            },
            uptime_ms: millis64(self.opened.elapsed()),
            bytes_sent: stats.bytes_read_local,
            bytes_received: stats.bytes_received,
            reconnects: self.resumes,
            moves: self.moves,
            rtt_us: transport_rtt
                .or(stats.rtt)
                .map(|d| d.as_micros().try_into().unwrap_or(u64::MAX)),
            unacked: session.unacked(),
        }
    }

    /// Answers a control request. A request to resume now is the reconnect
    /// loop's to act on; answering it here only acknowledges it (while
    /// connected there is nothing to hurry).
    pub(super) fn answer(
        &self,
        request: Request,
        session: &Session,
        transport_rtt: Option<Duration>,
    ) {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.report(session, transport_rtt));
            }
            Request::Resume => {}
        }
    }
}

fn millis64(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
