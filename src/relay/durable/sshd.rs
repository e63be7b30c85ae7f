//! The relay's local end, sshd's connection, as the link driver sees it.
//!
//! Two thin wrappers around the halves of the TCP stream. The writer marks
//! the session's record *before* it shuts its side down, which is how a new
//! worker tells a connection closed cleanly by both sides from a reset one
//! ([`super::tcp_counters`]). Both pass the crash points the durability
//! tests arm ([`super::crash`]) right after bytes moved and before anything
//! else happened to them.
//!
//! Dropping the writer does **not** shut sshd's connection down (tokio's
//! write half would): a worker that stops for a restart leaves the
//! connection exactly as it was, for the next one. A session that ends
//! closes it with [`SshdWriter::close`].

use super::crash::{self, Point};
use super::record::SessionRecord;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// What the relay reads from sshd.
pub(crate) struct SshdReader(pub(crate) OwnedReadHalf);

impl AsyncRead for SshdReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled().len() > before {
            crash::point(Point::SshdRead);
        }
        result
    }
}

/// What the relay writes to sshd.
pub(crate) struct SshdWriter {
    /// Always `Some` until dropped.
    half: Option<OwnedWriteHalf>,
    record: Arc<SessionRecord>,
}

impl SshdWriter {
    /// The writing half of sshd's connection, for the session `record`.
    pub(crate) fn new(half: OwnedWriteHalf, record: Arc<SessionRecord>) -> SshdWriter {
        SshdWriter {
            half: Some(half),
            record,
        }
    }

    /// Ends sshd's connection both ways (the session is over).
    pub(crate) fn close(&self) {
        if let Some(half) = &self.half {
            let _ = socket2::SockRef::from(half.as_ref()).shutdown(std::net::Shutdown::Both);
        }
    }

    fn half(&mut self) -> io::Result<&mut OwnedWriteHalf> {
        self.half
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for SshdWriter {
    fn drop(&mut self) {
        if let Some(half) = self.half.take() {
            // Leave the connection as it is: see the module's comment.
            half.forget();
        }
    }
}

impl AsyncWrite for SshdWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = match self.half() {
            Ok(half) => Pin::new(half).poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            crash::point(Point::SshdWrite);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.half() {
            Ok(half) => Pin::new(half).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.record.set_shut_down();
        match self.half() {
            Ok(half) => Pin::new(half).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
