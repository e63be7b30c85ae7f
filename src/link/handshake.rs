//! The opening of every transport: preambles, then [`Hello`] and [`Reply`].
//!
//! The messages and their rules are the transport's [`Connection`]'s; this
//! is the I/O around them, kept apart from the link driver because it is
//! strictly request and answer: read until the connection has an
//! [`Event`], writing whatever it queued on the way. Callers bound each
//! exchange with a timeout. The relay answers a hello through the
//! connection ([`Connection::accept_new`], [`Connection::accept_resume`],
//! [`Connection::refuse`]) and sends the answer with
//! `link::flush`.

pub use crate::proto::connection::NOT_A_CLIENT_NOTICE;

use crate::link::flush;
use crate::proto::connection::{Connection, Event};
use crate::proto::wire::{DecodeError, Hello, Reply};
use crate::transport::Transport;
use std::io;
use tokio::io::AsyncReadExt;

/// A handshake that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The transport failed or closed.
    #[error("{}", crate::transport::describe::io_error(.0))]
    Io(#[from] io::Error),
    /// The peer sent something that is not the protocol.
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// Reads and writes for the connection until its next [`Event`]. What the
/// connection queued goes out first, even when it failed (a relay's notice
/// or refusal to a peer it cannot serve: best effort).
async fn next_event(transport: &mut Transport) -> Result<Event, HandshakeError> {
    loop {
        let polled = transport.connection.poll_event();
        if transport.connection.queued() > 0 {
            let sent = flush(transport).await;
            if polled.is_ok() {
                sent?;
            }
        }
        match polled? {
            Some(event) => return Ok(event),
            None => {
                let read = transport
                    .stream
                    .read_buf(transport.connection.read_buf())
                    .await?;
                if read == 0 {
                    return Err(HandshakeError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during handshake",
                    )));
                }
            }
        }
    }
}

/// The client's side: sends the preamble and `hello`, returns the relay's
/// reply. After an accepting reply the connection is open.
pub async fn client(transport: &mut Transport, hello: &Hello) -> Result<Reply, HandshakeError> {
    transport.connection = Connection::client(hello)?;
    match next_event(transport).await {
        Ok(Event::ReplyReceived(reply)) => Ok(reply),
        Ok(Event::HelloReceived(_)) => {
            Err(io::Error::other("a client's connection received a hello").into())
        }
        // A refusal the relay also put in the transport's own close (see
        // `Transport::close`): its frame may have been lost with the close.
        Err(e) => match transport.goodbye() {
            Some((code, reason)) => Ok(Reply::Refused { code, reason }),
            None => Err(e),
        },
    }
}

/// The relay's side: reads the client's preamble and hello, answering a peer
/// that speaks something else with a reason it can print. The connection
/// then waits for the relay's answer.
pub async fn relay(transport: &mut Transport) -> Result<Hello, HandshakeError> {
    transport.connection = Connection::relay();
    match next_event(transport).await? {
        Event::HelloReceived(hello) => Ok(hello),
        Event::ReplyReceived(_) => {
            Err(io::Error::other("a relay's connection received a reply").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{Preamble, MAX_HANDSHAKE_LEN};
    use crate::transport::TransportKind;
    use tokio::io::AsyncWriteExt;

    /// A hello announcing more than a handshake message may hold is refused
    /// as soon as its header is in, before anything is reserved for it.
    #[tokio::test]
    async fn an_oversized_hello_is_refused_before_it_is_buffered() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut transport = Transport::new(
            Box::new(near),
            "127.0.0.1:1".parse().expect("an address"),
            TransportKind::Tls,
            [0; crate::proto::resume_auth::BINDING_LEN],
        );
        let mut sent = Preamble::CURRENT.encode().to_vec();
        let announced = u32::try_from(MAX_HANDSHAKE_LEN + 1).expect("small");
        sent.push(1);
        sent.extend_from_slice(&announced.to_be_bytes());
        far.write_all(&sent).await.expect("write");
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), relay(&mut transport))
            .await
            .expect("refused at once, not waiting for the payload");
        assert!(
            matches!(result, Err(HandshakeError::Decode(_))),
            "{result:?}"
        );
        assert!(
            transport.connection.read_capacity() < MAX_HANDSHAKE_LEN,
            "reserved {}",
            transport.connection.read_capacity()
        );
    }
}
