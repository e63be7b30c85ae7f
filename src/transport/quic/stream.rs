//! The session's stream over QUIC: one bidirectional stream, read and
//! written as any byte stream, whose connection's send window follows the
//! path (see [`SendWindow`]).

use super::send_window::SendWindow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The session's stream: the two halves of one bidirectional QUIC stream.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Once the stream is finished: resolves when the peer has all of it.
    delivered: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// The connection, whose send window follows [`SendWindow`].
    connection: quinn::Connection,
    window: SendWindow,
    /// Bytes written so far.
    written: u64,
}

impl QuicStream {
    pub(super) fn new(
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> QuicStream {
        QuicStream {
            send,
            recv,
            delivered: None,
            connection,
            window: SendWindow::default(),
            written: 0,
        }
    }

    /// After a write: `written` more bytes, and whether the window held
    /// back the rest; resizes the window when due.
    fn wrote(&mut self, written: usize, held_back: bool) {
        self.written += written as u64;
        if held_back {
            self.window.blocked();
        }
        let connection = &self.connection;
        if let Some(window) = self
            .window
            .look(Instant::now(), self.written, || connection.rtt())
        {
            connection.set_send_window(window);
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = AsyncWrite::poll_write(Pin::new(&mut this.send), cx, buf);
        match &result {
            Poll::Ready(Ok(n)) => this.wrote(*n, *n < buf.len()),
            Poll::Pending => this.wrote(0, true),
            Poll::Ready(Err(_)) => {}
        }
        result
    }

    /// Writes as many of `bufs` as the stream takes now (frames are queued
    /// as header and payload slices: one call, not one per slice).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut written = 0;
        let mut held_back = false;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            match AsyncWrite::poll_write(Pin::new(&mut this.send), cx, buf) {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if n < buf.len() {
                        held_back = true;
                        break;
                    }
                }
                Poll::Ready(Err(e)) if written == 0 => return Poll::Ready(Err(e)),
                Poll::Pending if written == 0 => {
                    this.wrote(0, true);
                    return Poll::Pending;
                }
                // What was written counts; the error or the wait comes again.
                Poll::Ready(Err(_)) | Poll::Pending => {
                    held_back = true;
                    break;
                }
            }
        }
        this.wrote(written, held_back);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    /// Finishes the stream and waits until the peer has acknowledged all of
    /// it, so that a last frame is not lost when the process exits.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.delivered.is_none() {
            // Finishing twice is harmless; the first time counts.
            let _ = this.send.finish();
            let stopped = this.send.stopped();
            this.delivered = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        match this.delivered.as_mut() {
            Some(delivered) => delivered.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}
