//! Connections from a balancer that speaks the PROXY protocol (v1 or v2,
//! see [`proxy_header`]): the header it writes first says which client the
//! connection is for, and that address stands for the connection from
//! then on — in admission's per-source places, the per-source session
//! limit, the failed-resume limiter and the log. The header is read before
//! the connection is admitted, within [`HEADER_TIMEOUT`] (a balancer
//! writes it with the connection); a connection from a trusted address
//! that does not start with one is closed, and so, quietly, is one the
//! balancer made for itself (a `LOCAL` header: HAProxy's health check
//! sends one, then closes).

use super::accept::{self, Incoming};
use super::shared::Shared;
use crate::proto::proxy_header::{self, Source};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer may take to write its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the header of a connection `balancer` made, then admits it as
/// the client's (on a task of the relay's).
pub(super) fn spawn(stream: TcpStream, balancer: SocketAddr, shared: &Arc<Shared>) {
    let accepted = tokio::time::Instant::now();
    let task_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        let shared = task_shared;
        let mut stream = stream;
        let read = tokio::select! {
            read = tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream)) => read,
            () = shared.stop.cancelled() => return,
        };
        match read {
            Ok(Ok(Source::Client(client))) => {
                accept::admit(&shared, Incoming::Tcp(stream), client, accepted);
            }
            Ok(Ok(Source::Unknown)) => {
                accept::admit(&shared, Incoming::Tcp(stream), balancer, accepted);
            }
            Ok(Ok(Source::Local)) => {}
            // A check without a header (a connect, then a close).
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) => {}
            Ok(Err(e)) => {
                tracing::info!(client = %balancer, "connection refused: {e}");
            }
            Err(_) => tracing::info!(
                client = %balancer,
                "connection refused: no PROXY protocol header within {HEADER_TIMEOUT:?}"
            ),
        }
    });
}

/// Reads exactly the header, leaving what follows (the client's TLS hello)
/// in the socket: what has come is looked at without being taken, and
/// taken only as far as it is header.
async fn read_header(stream: &mut TcpStream) -> io::Result<Source> {
    let mut header = Vec::with_capacity(64);
    let mut peeked = vec![0u8; proxy_header::MAX_LEN];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let taken = header.len();
        header.extend_from_slice(&peeked[..n]);
        match proxy_header::measure(&header).map_err(io::Error::other)? {
            Some(len) => {
                header.resize(len, 0);
                stream.read_exact(&mut header[taken..]).await?;
                return proxy_header::parse(&header).map_err(io::Error::other);
            }
            // All of it is header, and more is to come: take it, so that
            // the next look waits for what follows.
            None => {
                stream.read_exact(&mut header[taken..]).await?;
            }
        }
    }
}
