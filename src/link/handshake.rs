//! The opening of every transport: preambles, then [`Hello`] and [`Reply`].
//!
//! The only I/O besides the link driver, kept apart because it is strictly
//! request and answer. Callers bound each exchange with a timeout; these
//! functions never buffer more than one maximal message.

use crate::proto::wire::{
    split_message_within, Code, DecodeError, Hello, Preamble, Reply, MAX_HANDSHAKE_LEN,
    PREAMBLE_LEN,
};
use crate::transport::Transport;
use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a relay writes to a peer that does not speak the protocol at all (an
/// ssh client pointed at the relay port, a port scanner): readable by a person.
pub const NOT_A_CLIENT_NOTICE: &[u8] =
    b"resumeproxyd: this port speaks the resumeproxy relay protocol; use `ProxyCommand resumeproxy %h %p` in ssh_config\r\n";

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

/// Reads until `transport.read_buf` holds at least `n` bytes.
async fn fill(transport: &mut Transport, n: usize) -> Result<(), HandshakeError> {
    while transport.read_buf.len() < n {
        let read = transport.stream.read_buf(&mut transport.read_buf).await?;
        if read == 0 {
            return Err(HandshakeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during handshake",
            )));
        }
    }
    Ok(())
}

/// Reads the peer's preamble.
async fn read_preamble(transport: &mut Transport) -> Result<Preamble, HandshakeError> {
    fill(transport, PREAMBLE_LEN).await?;
    let mut raw = [0u8; PREAMBLE_LEN];
    raw.copy_from_slice(&transport.read_buf.split_to(PREAMBLE_LEN));
    Ok(Preamble::decode(&raw)?)
}

/// Reads one whole message, of at most [`MAX_HANDSHAKE_LEN`].
async fn read_message(transport: &mut Transport) -> Result<(u8, Bytes), HandshakeError> {
    loop {
        if let Some(message) = split_message_within(&mut transport.read_buf, MAX_HANDSHAKE_LEN)? {
            return Ok(message);
        }
        let read = transport.stream.read_buf(&mut transport.read_buf).await?;
        if read == 0 {
            return Err(HandshakeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during handshake",
            )));
        }
    }
}

/// Writes `bytes` and flushes.
async fn send(transport: &mut Transport, bytes: &[u8]) -> Result<(), HandshakeError> {
    transport.stream.write_all(bytes).await?;
    transport.stream.flush().await?;
    Ok(())
}

/// The client's side: sends the preamble and `hello`, returns the relay's reply.
pub async fn client(transport: &mut Transport, hello: &Hello) -> Result<Reply, HandshakeError> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&Preamble::CURRENT.encode());
    hello.encode(&mut out)?;
    send(transport, &out).await?;
    read_preamble(transport).await?;
    let (kind, payload) = read_message(transport).await?;
    Ok(Reply::decode(kind, payload)?)
}

/// The relay's side: reads the client's preamble and hello, answering a peer
/// that speaks something else with a reason it can print.
pub async fn relay(transport: &mut Transport) -> Result<Hello, HandshakeError> {
    let preamble = read_preamble(transport).await;
    let mut out = BytesMut::new();
    match preamble {
        Ok(_) => {}
        Err(HandshakeError::Decode(DecodeError::BadMagic(sent))) => {
            // Best effort: the connection is closed either way.
            let _ = send(transport, NOT_A_CLIENT_NOTICE).await;
            return Err(DecodeError::BadMagic(sent).into());
        }
        Err(HandshakeError::Decode(err @ DecodeError::BadVersion { .. })) => {
            out.extend_from_slice(&Preamble::CURRENT.encode());
            Reply::Refused {
                code: Code::Version,
                reason: format!("{err}; upgrade the older of resumeproxy and resumeproxyd"),
            }
            .encode(&mut out);
            let _ = send(transport, &out).await;
            return Err(err.into());
        }
        Err(err) => return Err(err),
    }
    out.extend_from_slice(&Preamble::CURRENT.encode());
    send(transport, &out).await?;
    let (kind, payload) = read_message(transport).await?;
    Ok(Hello::decode(kind, payload)?)
}

/// The relay's answer to a hello.
pub async fn reply(transport: &mut Transport, reply: &Reply) -> Result<(), HandshakeError> {
    let mut out = BytesMut::new();
    reply.encode(&mut out);
    send(transport, &out).await
}

#[cfg(test)]
mod tests {
    use super::*;
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
            transport.read_buf.capacity() < MAX_HANDSHAKE_LEN,
            "reserved {}",
            transport.read_buf.capacity()
        );
    }
}
