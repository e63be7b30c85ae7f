//! Ending on request: a client that gets SIGTERM, SIGINT or SIGHUP ends its
//! session on the relay, not only its own process.
//!
//! A process asked to end can never resume, so a session it leaves behind
//! would only hold a connection to sshd (and a place in the relay's
//! per-source count) for the whole grace period. Tools that close their
//! ProxyCommand with SIGTERM (paramiko, and with it Ansible and Fabric), a
//! Ctrl-C, and ssh itself (SIGHUP when it exits) all end it this way.
//!
//! On the signal the client takes what ssh already wrote (the local input is
//! read until it has nothing more to give, then ends: see `LocalInput`),
//! ends its outgoing stream there, and gives the session [`END_WAIT`] to end
//! by itself — sshd closes its side once it sees that end, and both streams
//! finish as on any normal exit. If it has not by then, the client sends the
//! relay a close ([`Code::Shutdown`](crate::proto::wire::Code::Shutdown),
//! which the relay takes as "the client ended it": it closes its sshd
//! connection and logs the session's end), waiting at most
//! [`END_CLOSE_TIMEOUT`] for it to go out. A client whose link is down when
//! the signal comes keeps trying to resume for [`END_WAIT`] only; so the
//! relay hears of the end, or the client has given up on telling it, within
//! `END_WAIT + END_CLOSE_TIMEOUT` of the signal, under a second.
//!
//! [`end_requested`] listens for the platform's signals (`unix.rs`,
//! `windows.rs`). On Windows a console's Ctrl-C and Ctrl-Break, its window
//! being closed, and the user logging off or the machine shutting down end
//! the session as SIGINT, SIGHUP and SIGTERM do on Unix.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// After a signal, how long the session may take to end by itself before
/// the client closes it.
pub const END_WAIT: Duration = Duration::from_millis(400);
/// How long the close that ends a signalled session may take to go out.
pub const END_CLOSE_TIMEOUT: Duration = Duration::from_millis(400);

/// A signal that asks the client to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSignal {
    /// SIGHUP: ssh exits, or the terminal went away.
    HangUp,
    /// SIGTERM: a program closing its ProxyCommand, or `kill`.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// Windows: Ctrl-Break.
    Break,
    /// Windows: the console window was closed (as SIGHUP).
    ConsoleClosed,
    /// Windows: the user logs off or the machine shuts down (as SIGTERM).
    Shutdown,
}

impl fmt::Display for EndSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndSignal::HangUp => "SIGHUP",
            EndSignal::Terminate => "SIGTERM",
            EndSignal::Interrupt => "SIGINT",
            EndSignal::Break => "Ctrl-Break",
            EndSignal::ConsoleClosed => "the console's closing",
            EndSignal::Shutdown => "logoff or shutdown",
        })
    }
}

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

/// The first request to end, from the platform's signals. The handlers are
/// in place when this returns (before the first connection); one that
/// cannot be installed is left out, and with none the future never ends.
pub fn end_requested() -> impl Future<Output = EndSignal> + Send + 'static {
    imp::end_requested()
}

/// The local end's input, which can be told to end once it has nothing more
/// to give right now: after a signal, what ssh already wrote still goes to
/// the relay, but the client does not wait for more.
pub(super) struct LocalInput<R> {
    inner: R,
    ending: Arc<AtomicBool>,
}

impl<R> LocalInput<R> {
    /// Wraps `inner`; the input ends early once `ending` is set.
    pub(super) fn new(inner: R, ending: Arc<AtomicBool>) -> LocalInput<R> {
        LocalInput { inner, ending }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LocalInput<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Nothing more now: as good as the end, once ending.
            Poll::Pending if this.ending.load(Ordering::SeqCst) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_ending_input_gives_what_is_there_then_ends() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        let ending = Arc::new(AtomicBool::new(false));
        let mut input = LocalInput::new(reader, Arc::clone(&ending));
        writer.write_all(b"already written").await.expect("write");
        let mut buf = [0u8; 64];
        let n = input.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"already written");
        // Not ending: an empty pipe is waited on.
        let waited = tokio::time::timeout(Duration::from_millis(50), input.read(&mut buf)).await;
        assert!(waited.is_err(), "read returned {waited:?}");
        writer.write_all(b"last words").await.expect("write");
        ending.store(true, Ordering::SeqCst);
        let n = input.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"last words");
        // Ending, with the writer still open: the end, at once.
        assert_eq!(input.read(&mut buf).await.expect("read"), 0);
    }
}
