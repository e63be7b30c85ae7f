//! `--fallback direct`: when no relay answers at the start, the client
//! connects straight to the target instead — HOST:PORT, where ssh itself
//! would connect without a ProxyCommand — and passes bytes both ways, as
//! `nc` would. So one `ProxyCommand resumeproxy --fallback direct %h %p`
//! line can serve `Host *`: hosts with a relay get sessions that survive
//! the network; hosts without one work as before.
//!
//! Nothing is weakened: ssh authenticates the host and encrypts the
//! session end to end over this pipe exactly as over its own connection.
//! Only the resumable layer is missing: the connection does not survive a
//! network break. It is never taken once a session was opened through a
//! relay (a relay that goes away later ends its sessions as it always
//! does).

use crate::units::host_port;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bytes read at once each way.
const BUFFER: usize = 64 << 10;

/// What the client does when no relay answers at the start.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Give up (exit 255), saying why.
    #[default]
    None,
    /// Connect straight to HOST:PORT, as ssh would without a ProxyCommand;
    /// that connection does not survive a network break.
    Direct,
}

/// Why the direct connection failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// It could not be made.
    #[error("cannot connect to {target}: {error}")]
    Connect {
        /// HOST:PORT.
        target: String,
        /// Why.
        error: io::Error,
    },
    /// It broke while in use.
    #[error("the direct connection to {target} broke: {error}")]
    Broken {
        /// HOST:PORT.
        target: String,
        /// Why.
        error: io::Error,
    },
}

/// Connects to `host:port` within `timeout` (each of its addresses in turn)
/// and passes bytes between it and the local end until both directions
/// have ended: the local end's end is passed on as a half close, and the
/// target's as the end of `local_out`.
pub async fn pipe<R, W>(
    host: &str,
    port: u16,
    timeout: Duration,
    local_in: R,
    local_out: W,
) -> Result<(), DirectError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let target = host_port(host, port);
    let connect = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        for addr in tokio::net::lookup_host((host, port)).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let mut stream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(DirectError::Connect { target, error }),
        Err(_) => {
            let error = io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within {}",
                    crate::units::format_duration(timeout)
                ),
            );
            return Err(DirectError::Connect { target, error });
        }
    };
    let _ = stream.set_nodelay(true);
    let mut local = tokio::io::join(local_in, local_out);
    tokio::io::copy_bidirectional_with_sizes(&mut local, &mut stream, BUFFER, BUFFER)
        .await
        .map(drop)
        .map_err(|error| DirectError::Broken { target, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_both_ways_and_ends_are_passed_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).await.unwrap();
            conn.write_all(b"reply").await.unwrap();
            got
        });
        let (mut user_in, local_in) = tokio::io::duplex(1024);
        let (local_out, mut user_out) = tokio::io::duplex(1024);
        let piping = tokio::spawn(async move {
            pipe(
                "127.0.0.1",
                port,
                Duration::from_secs(5),
                local_in,
                local_out,
            )
            .await
        });
        user_in.write_all(b"hello").await.unwrap();
        drop(user_in);
        let mut reply = Vec::new();
        user_out.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        assert_eq!(target.await.unwrap(), b"hello");
        piping.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_target_that_refuses_is_named() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (_, local_in) = tokio::io::duplex(16);
        let (local_out, _) = tokio::io::duplex(16);
        let e = pipe(
            "127.0.0.1",
            port,
            Duration::from_secs(5),
            local_in,
            local_out,
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
            "{e}"
        );
    }
}
