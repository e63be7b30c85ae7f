//! The control channel on Unix: a UNIX socket, the entry in the directory.

use std::io;
use std::path::Path;
use tokio::net::{UnixListener, UnixStream};

/// What an entry's name ends in.
pub(super) const EXTENSION: &str = "sock";

/// One request's connection.
pub(super) type Stream = UnixStream;

/// A bound socket.
pub(super) struct Listener(UnixListener);

impl Listener {
    /// Binds the socket at `path`, replacing a stale one.
    pub(super) fn bind(path: &Path) -> io::Result<Listener> {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map(Listener)
    }

    /// The next connection.
    pub(super) async fn accept(&mut self) -> io::Result<Stream> {
        self.0.accept().await.map(|(stream, _)| stream)
    }
}

/// Connects to the socket at `path`.
pub(super) async fn connect(path: &Path) -> io::Result<Stream> {
    UnixStream::connect(path).await
}

/// Leaves at `path` the entry of a client that died (for tests).
#[cfg(test)]
pub(super) fn leave_stale(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).expect("bind a socket"));
}
