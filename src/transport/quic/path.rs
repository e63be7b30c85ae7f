//! A QUIC connection's network path, as the drivers see it: where the
//! peer is now, the round trip, the relay's window opening with the
//! session, and the session's last word in QUIC's own close.

use super::client_socket::Heard;
use super::{CONNECTION_WINDOW, HEARTBEATS};
use crate::proto::wire::Code;
use crate::transport::NetworkPath;
use quinn::VarInt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// QUIC application error codes from here on carry a session's last word
/// (its [`Code`] added): "resumeproxy goodbye". Code 0, what quinn sends
/// when a connection is dropped, says nothing.
const GOODBYE_BASE: u32 = 0x7270_6700;
/// Longest reason read from a peer's close.
const MAX_GOODBYE_REASON: usize = 256;
/// A QUIC connection's path: the peer's address moves with the client, and
/// the relay's receive window opens once the session does.
pub(super) struct QuicPath {
    connection: quinn::Connection,
    /// On the client: what its socket heard besides QUIC.
    heard: Option<Arc<Heard>>,
}

impl QuicPath {
    /// The path of `connection`; `heard` on the client.
    pub(super) fn new(connection: quinn::Connection, heard: Option<Arc<Heard>>) -> QuicPath {
        QuicPath { connection, heard }
    }
}

impl NetworkPath for QuicPath {
    fn peer_now(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    fn fixed_local(&self) -> Option<SocketAddr> {
        None
    }

    /// Gives the peer the full receive window (see [`HANDSHAKE_WINDOW`]).
    fn open_windows(&self) {
        self.connection
            .set_receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    }

    /// QUIC's smoothed round-trip time: known from the handshake on, and
    /// kept current by every ack, busy or idle.
    fn rtt(&self) -> Option<Duration> {
        Some(self.connection.rtt())
    }

    /// The client sends [`HEARTBEATS`]; the relay answers each (so it
    /// hears, and is heard, as often) and keeps the default.
    fn heartbeats(&self) -> u32 {
        match self.heard {
            Some(_) => HEARTBEATS,
            None => crate::proto::session::HEARTBEATS,
        }
    }

    /// On the client: when its socket last heard a datagram from the
    /// relay's side (an acknowledgement counts: the path is alive).
    fn last_heard(&self) -> Option<Instant> {
        self.heard.as_ref()?.last_datagram()
    }

    fn close(&self, code: Code, reason: &str) {
        let reason = truncated(reason, MAX_GOODBYE_REASON);
        self.connection.close(goodbye_code(code), reason.as_bytes());
    }

    fn goodbye(&self) -> Option<(Code, String)> {
        match self.connection.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(close) => {
                let code = goodbye_of(close.error_code)?;
                let reason = String::from_utf8_lossy(&close.reason);
                let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
                Some((code, truncated(&reason, MAX_GOODBYE_REASON).to_owned()))
            }
            _ => None,
        }
    }
}

/// The QUIC application error code that carries `code` (see [`GOODBYE_BASE`]).
fn goodbye_code(code: Code) -> VarInt {
    VarInt::from_u32(GOODBYE_BASE + u32::from(code.to_u8()))
}

/// The session's code in a QUIC application error code, if it carries one.
fn goodbye_of(error_code: VarInt) -> Option<Code> {
    let offset = error_code.into_inner().checked_sub(GOODBYE_BASE.into())?;
    u8::try_from(offset).ok().map(Code::from_u8)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goodbye_code_carries_the_sessions_code_and_nothing_else_does() {
        for code in [
            Code::Done,
            Code::Shutdown,
            Code::Restarting,
            Code::Other(200),
        ] {
            assert_eq!(goodbye_of(goodbye_code(code)), Some(code));
        }
        // What quinn sends for a dropped connection, and codes of others.
        assert_eq!(goodbye_of(VarInt::from_u32(0)), None);
        assert_eq!(goodbye_of(VarInt::from_u32(GOODBYE_BASE - 1)), None);
        assert_eq!(goodbye_of(VarInt::from_u32(GOODBYE_BASE + 256)), None);
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("ab\u{e9}c", 3), "ab");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
