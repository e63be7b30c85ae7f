//! The link driver: runs a [`Session`] between its local end and its current
//! transport.
//!
//! Client and relay share it. The local end is ssh's stdin and stdout on the
//! client and the sshd socket on the relay; the transport comes and goes.
//! One poll function moves bytes in every direction that can move — local end
//! to session, transport to session, session to local end, session to
//! transport — until nothing can, then sleeps until any of them (or the
//! session's timer) can go on. No locks, no channels, no extra tasks: the
//! session is owned by the one future that drives it.
//!
//! While detached (no transport), the local end is still served: bytes from it
//! fill the replay buffer up to its bound, and bytes already received are
//! still written to it.
//!
//! The protocol on each transport — parsing frames, queueing them, the
//! handshake — is its [`Connection`]'s; the link only moves bytes between it
//! and the transport's stream. Every transport opens with [`handshake`]
//! before its link runs.

pub mod handshake;

use crate::proto::connection::{Connection, ConnectionError, MAX_IO_SLICES};
use crate::proto::session::{Dead, Session};
use crate::proto::wire::{Code, MAX_DATA_LEN};
use crate::transport::{describe, Transport, TransportKind};
use crate::units::format_duration;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;

/// Most bytes read from the local end at once (one data frame).
pub(crate) const LOCAL_READ_SIZE: usize = MAX_DATA_LEN;

/// Why [`Link::run`] returned on its own.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Both streams were delivered and acknowledged.
    Finished,
    /// The peer closed the session; everything it sent was delivered locally.
    PeerClosed(Code, String),
    /// The transport broke, closed, or went silent.
    TransportLost(Lost),
    /// The peer broke the protocol.
    Protocol(ConnectionError),
    /// The transport carries data, for the first time since it was
    /// attached (see [`Session::take_flowing`]); the link goes on when run
    /// again.
    Flowing,
}

/// How a transport was lost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Lost {
    /// The other end closed the stream.
    #[error("connection closed by the other end")]
    Closed,
    /// Reading or writing failed (in words, see [`describe`]).
    #[error("{}", describe::io_error(.0))]
    Io(#[from] io::Error),
    /// Nothing arrived for the dead-peer interval.
    #[error("nothing heard for {}", format_duration(*.0))]
    Silent(Duration),
    /// Data waited the dead-peer interval, unacknowledged, while the peer's
    /// heartbeats arrived: small packets pass, large ones are lost.
    #[error("data stopped for {} while small packets still pass", format_duration(*.0))]
    Stalled(Duration),
}

/// What ended one call of [`Link::run`].
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// The link itself.
    Link(Outcome),
    /// The caller's other future.
    Other(T),
}

/// State of the local end's input side (what the link writes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalOutput {
    Open,
    ShutDown,
    Failed,
}

/// A session wired to its local end.
pub(crate) struct Link<R, W> {
    session: Session,
    local_in: R,
    local_out: W,
    /// The local end may still produce bytes.
    local_in_open: bool,
    local_output: LocalOutput,
    timer: Pin<Box<Sleep>>,
    timer_deadline: Option<Instant>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Link<R, W> {
    /// Wires `session` to a local end.
    pub fn new(session: Session, local_in: R, local_out: W) -> Self {
        Link {
            session,
            local_in,
            local_out,
            local_in_open: true,
            local_output: LocalOutput::Open,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_deadline: None,
        }
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, to attach or detach a transport.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// What the link writes the peer's stream to.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // the relay's
    pub fn local_out(&self) -> &W {
        &self.local_out
    }

    /// Runs the link over `transport` (or detached, if `None`) until it ends
    /// by itself or `other` completes, whichever is first.
    pub async fn run<F: Future>(
        &mut self,
        mut transport: Option<&mut Transport>,
        other: F,
    ) -> Step<F::Output> {
        let mut other = pin!(other);
        if let Some(t) = transport.as_deref() {
            self.session.set_heartbeats(t.heartbeats());
        }
        poll_fn(|cx| {
            if let Poll::Ready(value) = other.as_mut().poll(cx) {
                return Poll::Ready(Step::Other(value));
            }
            self.poll_link(cx, transport.as_deref_mut()).map(Step::Link)
        })
        .await
    }

    /// No byte waits for the local end, and if the peer's stream has ended,
    /// the local end was told.
    fn local_output_settled(&self) -> bool {
        !self.session.has_deliver()
            && (self.local_output != LocalOutput::Open || !self.session.deliver_finished())
    }

    fn poll_link(
        &mut self,
        cx: &mut Context<'_>,
        mut transport: Option<&mut Transport>,
    ) -> Poll<Outcome> {
        loop {
            loop {
                let now = Instant::now();
                let mut progress = self.poll_local_read(cx);
                if let Some(t) = transport.as_deref_mut() {
                    match self.poll_transport_read(cx, t, now) {
                        Ok(moved) => progress |= moved,
                        Err(outcome) => return Poll::Ready(with_goodbye(outcome, t)),
                    }
                }
                progress |= self.poll_local_write(cx);
                if let Some(t) = transport.as_deref_mut() {
                    if self.session.peer_close().is_some() {
                        // What the peer sent is delivered, then its close
                        // is the outcome; nothing more goes to it.
                        t.connection.discard_queued();
                    } else {
                        t.connection.transmit(&mut self.session, now);
                        let was_queued = t.connection.queued();
                        match poll_write_queue(cx, t) {
                            Ok(_) => progress |= t.connection.queued() != was_queued,
                            Err(e) => {
                                let lost = Outcome::TransportLost(Lost::Io(e));
                                return Poll::Ready(with_goodbye(lost, t));
                            }
                        }
                    }
                    if self.local_output_settled() && t.connection.queued() == 0 {
                        if let Some((code, reason)) = self.session.peer_close() {
                            return Poll::Ready(Outcome::PeerClosed(*code, reason.clone()));
                        }
                        if self.session.is_finished() {
                            return Poll::Ready(Outcome::Finished);
                        }
                    }
                }
                if transport.is_some() && self.session.take_flowing() {
                    return Poll::Ready(Outcome::Flowing);
                }
                if !progress {
                    break;
                }
            }
            // After the peer's close only the local end is waited for (its
            // wakers are set): no heartbeat goes out, and the peer's
            // silence is no loss.
            if transport.is_some() && self.session.peer_close().is_some() {
                return Poll::Pending;
            }
            // Nothing can move: arm the session's timer.
            let can_transmit = transport
                .as_deref()
                .is_some_and(|t| t.connection.can_transmit());
            let Some(deadline) = self.session.poll_timeout(can_transmit) else {
                return Poll::Pending;
            };
            if self.timer_deadline != Some(deadline) {
                self.timer_deadline = Some(deadline);
                self.timer.as_mut().reset(deadline.into());
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer_deadline = None;
            // What the transport heard that carried no frame (on QUIC, an
            // acknowledgement while the peer's data waits to be resent).
            if let Some(at) = transport.as_deref().and_then(Transport::last_heard) {
                self.session.heard(at);
            }
            if let Some(dead) = self.session.handle_timeout(Instant::now()) {
                let after = self.session.dead_after();
                let lost = match dead {
                    Dead::Silent => Lost::Silent(after),
                    Dead::Stalled => Lost::Stalled(after),
                };
                return Poll::Ready(Outcome::TransportLost(lost));
            }
            // A heartbeat may be due: go round again.
        }
    }

    /// Local end → session. Returns whether anything happened.
    fn poll_local_read(&mut self, cx: &mut Context<'_>) -> bool {
        let room = self.session.local_room().min(LOCAL_READ_SIZE);
        if !self.local_in_open || room == 0 {
            return false;
        }
        // Straight into the replay buffer: no copy, and (on the relay) no
        // instant at which a byte read is not kept.
        let local_in = &mut self.local_in;
        let (polled, filled) = self.session.read_local(room, |buf| {
            let polled = Pin::new(local_in).poll_read(cx, buf);
            (polled, buf.filled().len())
        });
        match polled {
            Poll::Pending => false,
            Poll::Ready(Ok(())) if filled == 0 => {
                self.local_in_open = false;
                self.session.local_eof();
                true
            }
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                tracing::debug!("reading the local end failed: {e}; ending the stream there");
                self.local_in_open = false;
                self.session.local_eof();
                true
            }
        }
    }

    /// Transport → session. Returns whether anything happened, or how the
    /// transport ended.
    fn poll_transport_read(
        &mut self,
        cx: &mut Context<'_>,
        t: &mut Transport,
        now: Instant,
    ) -> Result<bool, Outcome> {
        let connection: &mut Connection = &mut t.connection;
        // Frames left over from the handshake.
        let mut progress = connection
            .handle_frames(&mut self.session, now)
            .map_err(Outcome::Protocol)?;
        if !connection.wants_read(&self.session) {
            return Ok(progress);
        }
        match poll_read_buf(Pin::new(&mut t.stream), cx, connection.read_buf()) {
            Poll::Pending => connection.read_idle(),
            Poll::Ready(Ok(0)) => return Err(Outcome::TransportLost(Lost::Closed)),
            Poll::Ready(Ok(_)) => {
                progress = true;
                connection
                    .handle_frames(&mut self.session, now)
                    .map_err(Outcome::Protocol)?;
            }
            Poll::Ready(Err(e)) => return Err(Outcome::TransportLost(Lost::Io(e))),
        }
        Ok(progress)
    }

    /// Session → local end. Returns whether anything happened.
    fn poll_local_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.local_output == LocalOutput::Open {
            let Some(chunk) = self.session.pending_delivery() else {
                break;
            };
            match Pin::new(&mut self.local_out).poll_write(cx, chunk) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.session.delivered(n);
                    progress = true;
                }
                Poll::Ready(result) => {
                    let why = result
                        .err()
                        .map_or("it accepts no more".into(), |e| e.to_string());
                    tracing::debug!(
                        "writing to the local end failed: {why}; dropping what it would get"
                    );
                    self.local_output = LocalOutput::Failed;
                    self.session.close_local_output();
                    return true;
                }
            }
        }
        if self.local_output == LocalOutput::Open && self.session.deliver_finished() {
            if let Poll::Ready(result) = Pin::new(&mut self.local_out).poll_shutdown(cx) {
                if let Err(e) = result {
                    tracing::debug!("closing the local end's input failed: {e}");
                }
                self.local_output = LocalOutput::ShutDown;
                self.session.local_output_shut();
                progress = true;
            }
        }
        progress
    }
}

/// A lost transport whose peer closed it with a last word (see
/// [`Transport::goodbye`]) is the peer's close, as if its close frame had
/// arrived: the frame itself may have been lost on the way.
fn with_goodbye(outcome: Outcome, transport: &Transport) -> Outcome {
    match (outcome, transport.goodbye()) {
        (Outcome::TransportLost(_), Some((code, reason))) => Outcome::PeerClosed(code, reason),
        (outcome, _) => outcome,
    }
}

/// Bytes read at a time, and dropped, while a closed TCP transport waits
/// for its peer to close too.
const LINGER_READ: usize = 4096;

/// Sends a [`Frame::Close`](crate::proto::wire::Frame::Close) after whatever is queued, waiting at most
/// `timeout`, then ends the transport with the same word in its own close
/// (see [`Transport::close`]). Best effort: the transport is dropped after
/// it either way. Returns whether the peer acknowledged the close in time.
///
/// On TCP it then reads, and drops, what the peer still sends until the
/// peer closes too (a lingering close): a socket closed with bytes unread
/// is reset, and a reset can overtake what was sent before it — a
/// balancer between the ends (HAProxy) drops what it still holds for the
/// other side, the close included.
pub(crate) async fn close_transport(
    transport: &mut Transport,
    code: Code,
    reason: &str,
    timeout: Duration,
) -> bool {
    transport.connection.close(code, reason);
    let delivered = async {
        // Shutting the stream down waits, on QUIC, until the peer has it all:
        // the process may exit right after.
        flush(transport).await?;
        poll_fn(|cx| Pin::new(&mut transport.stream).poll_shutdown(cx)).await?;
        if transport.kind == TransportKind::Tls {
            let mut scratch = [0u8; LINGER_READ];
            while matches!(transport.stream.read(&mut scratch).await, Ok(n) if n > 0) {}
        }
        Ok::<_, io::Error>(())
    };
    let delivered = matches!(tokio::time::timeout(timeout, delivered).await, Ok(Ok(())));
    transport.close(code, reason);
    delivered
}

/// Writes everything the transport's connection has queued (a handshake
/// message, an answer, a close), and flushes.
pub(crate) async fn flush(transport: &mut Transport) -> io::Result<()> {
    poll_fn(|cx| match poll_write_queue(cx, transport) {
        Ok(true) => Poll::Ready(Ok(())),
        Ok(false) => Poll::Pending,
        Err(e) => Poll::Ready(Err(e)),
    })
    .await
}

/// Writes from the connection's queue until it is empty (`Ok(true)`,
/// flushed) or the transport would block (`Ok(false)`).
fn poll_write_queue(cx: &mut Context<'_>, t: &mut Transport) -> io::Result<bool> {
    while t.connection.queued() > 0 {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            let n = t.connection.io_slices(&mut slices);
            match Pin::new(&mut t.stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "transport accepts no more bytes",
                    ))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Err(e),
            }
        };
        t.connection.advance(written);
    }
    match Pin::new(&mut t.stream).poll_flush(cx) {
        Poll::Pending => Ok(false),
        Poll::Ready(result) => result.map(|()| true),
    }
}
