//! The answer to HAProxy's `agent-check`: how a balancer in front of a
//! fleet learns that this instance is draining, without its own
//! configuration being touched.
//!
//! HAProxy connects to the agent's port every `agent-inter`, reads one
//! line, and applies its words: `up` (the instance may be used, if its
//! health check agrees), then `ready` (take new connections at the
//! server's weight) or `drain` (weight 0: no new sessions from the
//! balanced backend; the instance's own, SNI-routed backend keeps sending
//! it its reconnects). The relay writes the line at once and closes;
//! it reads nothing, so a port scanner costs nothing either.
//!
//! The listening socket is kept like the relay's own (see
//! [`durable`](super::durable)): while a new worker starts, HAProxy's
//! connections wait in its queue, and an agent that does not answer is
//! not a failure to HAProxy (its health check decides).

use super::shared::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The agent's line while the relay takes new sessions.
pub const READY: &[u8] = b"up ready\n";
/// The agent's line while it drains.
pub const DRAIN: &[u8] = b"up drain\n";

/// The line for a relay that is `draining` or not.
pub fn answer(draining: bool) -> &'static [u8] {
    if draining {
        DRAIN
    } else {
        READY
    }
}

/// Answers every connection to `listener` until the relay stops.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let line = answer(shared.config().fleet.draining);
                // A fresh socket's buffer takes a line at once; a peer
                // that cannot take it learns nothing and checks again.
                let _ = stream.try_write(line);
                let socket = socket2::SockRef::from(&stream);
                let _ = socket.shutdown(std::net::Shutdown::Write);
            }
            Err(e) => {
                tracing::warn!("agent-check: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_are_haproxy_agent_words() {
        // One line each, `up` (operational) with the administrative word
        // that also undoes the other.
        assert_eq!(answer(false), b"up ready\n");
        assert_eq!(answer(true), b"up drain\n");
    }
}
