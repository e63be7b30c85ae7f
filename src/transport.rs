//! Transports: the ordered, reliable byte streams a session's frames travel on.
//!
//! The session layer does not know which one it is on: a [`Transport`] is any
//! boxed `AsyncRead + AsyncWrite` plus the buffers that belong to one
//! connection (bytes read but not yet parsed, frames encoded but not yet
//! written). Both are thrown away with the transport when it breaks; the
//! session replays from its own buffer on the next one.
//!
//! Today: plain TCP with `TCP_NODELAY` (writes are batched by the driver, so
//! Nagle would only add latency to interactive traffic).

use crate::write_queue::WriteQueue;
use bytes::BytesMut;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bytes reserved for each read from a transport.
pub const TRANSPORT_READ_SIZE: usize = 256 * 1024;

/// Any byte stream a session can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// Which kind of transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain TCP.
    Tcp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportKind::Tcp => f.write_str("tcp"),
        }
    }
}

/// One connection between client and relay, with its buffers.
pub struct Transport {
    /// The byte stream.
    pub stream: Box<dyn ByteStream>,
    /// The other end's address.
    pub peer: SocketAddr,
    /// What kind of stream it is.
    pub kind: TransportKind,
    /// Bytes read and not yet parsed.
    pub read_buf: BytesMut,
    /// Frames encoded and not yet written.
    pub write_queue: WriteQueue,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Wraps an established TCP connection.
    pub fn tcp(stream: TcpStream) -> io::Result<Transport> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(Transport {
            stream: Box::new(stream),
            peer,
            kind: TransportKind::Tcp,
            read_buf: BytesMut::with_capacity(TRANSPORT_READ_SIZE),
            write_queue: WriteQueue::new(),
        })
    }

    /// Connects over TCP to `host:port`, trying each resolved address, all
    /// within `timeout`.
    pub async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<Transport> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {}", crate::cli::format_duration(timeout)),
                )
            })??;
        Transport::tcp(stream)
    }
}
