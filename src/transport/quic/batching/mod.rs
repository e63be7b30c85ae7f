//! Two of quinn's send batches in one system call.
//!
//! quinn gives its socket at most ten datagrams at a time, one batch for
//! the kernel to cut into datagrams (GSO, segmentation offload), and up to
//! two such batches per turn of a connection's driver (one poll of its
//! task). Sending the two with one call halves the calls and cuts the
//! kernel's work per byte sent (raw 512 MiB–1 GiB streams on loopback:
//! the sender's CPU 0.89–0.94 of ten per call, the receiver's 0.82–0.98;
//! quinn itself patched to forty-four per call gained no more). So
//! within a driver's turn a full batch (ten datagrams of one size) is held
//! back, and the next one for the same peer, which usually follows at
//! once, goes with it. Anything else — a batch that is not full, a single
//! datagram (an acknowledgement, a keystroke), a batch for another peer —
//! first sends what is held and is never held itself; and what a turn
//! left held is sent as the turn ends ([`BatchingRuntime`] runs quinn's
//! drivers). Nothing waits longer than the rest of one turn, and the order
//! of what is sent never changes.
//!
//! Where the kernel cannot batch (no GSO), nothing is held.

use crate::locks::lock;
use quinn::udp::{EcnCodepoint, Transmit};
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

/// Datagrams in a full batch from quinn (its `MAX_TRANSMIT_SEGMENTS`): a
/// batch this large is held for the next one.
pub const FULL_BATCH: usize = 10;
/// The most bytes one send may carry: one IPv4 datagram's payload (the
/// kernel takes a batch as one datagram before it cuts it).
pub const MAX_SEND_BYTES: usize = 65_535 - 20 - 8;

/// A batch held back for the next one.
#[derive(Debug, Default, PartialEq)]
struct Held {
    contents: Vec<u8>,
    destination: Option<SocketAddr>,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    /// The size of each datagram in `contents`.
    segment_size: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.contents.is_empty()
    }

    /// Whether `transmit` is worth holding for the next: a full batch, all
    /// its datagrams of one size, with room for another beside it within
    /// `max_segments` (what the socket can send at once).
    fn worth_holding(transmit: &Transmit<'_>, max_segments: usize) -> bool {
        let Some(size) = transmit.segment_size.filter(|s| *s > 0) else {
            return false;
        };
        let len = transmit.contents.len();
        len.is_multiple_of(size)
            && len / size >= FULL_BATCH
            && len / size * 2 <= max_segments
            && len * 2 <= MAX_SEND_BYTES
    }

    /// Holds `transmit` (nothing is held).
    fn hold(&mut self, transmit: &Transmit<'_>) {
        self.contents.clear();
        self.contents.extend_from_slice(transmit.contents);
        self.destination = Some(transmit.destination);
        self.ecn = transmit.ecn;
        self.src_ip = transmit.src_ip;
        self.segment_size = transmit.segment_size.unwrap_or(transmit.contents.len());
    }

    /// Whether `transmit` can go in one send after what is held: same
    /// peer, source and marking, datagrams of the same size (its last may
    /// be shorter), within `max_segments` and [`MAX_SEND_BYTES`].
    fn takes(&self, transmit: &Transmit<'_>, max_segments: usize) -> bool {
        let size = self.segment_size;
        let fits_size = match transmit.segment_size {
            Some(s) => s == size,
            None => transmit.contents.len() <= size,
        };
        let len = self.contents.len() + transmit.contents.len();
        !self.is_empty()
            && self.destination == Some(transmit.destination)
            && self.ecn == transmit.ecn
            && self.src_ip == transmit.src_ip
            && fits_size
            && len <= MAX_SEND_BYTES
            && len.div_ceil(size) <= max_segments
    }

    /// Adds `transmit` (which [`takes`](Self::takes) accepted).
    fn append(&mut self, transmit: &Transmit<'_>) {
        self.contents.extend_from_slice(transmit.contents);
    }

    /// What is held, as one send.
    fn transmit(&self) -> Transmit<'_> {
        let single = self.contents.len() <= self.segment_size;
        Transmit {
            destination: self.destination.expect("a held batch has a peer"),
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: (!single).then_some(self.segment_size),
            src_ip: self.src_ip,
        }
    }
}

thread_local! {
    /// The turns of drivers under way on this thread (one, unless a
    /// driver polls another) and the sockets that held a batch in them.
    // The initializer is `const`; Debian's clippy 1.96 still asks for it
    // when it checks the Windows target (scripts/check-platforms).
    #[allow(clippy::missing_const_for_thread_local)]
    static TURN: RefCell<Turn> = const {
        RefCell::new(Turn {
            depth: 0,
            held: Vec::new(),
        })
    };
}

/// See [`TURN`].
struct Turn {
    depth: usize,
    /// The sockets that held a batch, to send when their turn ends (its
    /// capacity is kept from turn to turn).
    held: Vec<Arc<Batching>>,
}

/// quinn's socket, sending a full batch together with the next (see the
/// module's text).
pub(super) struct Batching {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    held: Mutex<Held>,
    /// Itself, for the turn's list.
    me: Weak<Batching>,
}

impl fmt::Debug for Batching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batching")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Batching {
    /// Wraps `inner`; batches are held only in turns of drivers that
    /// [`BatchingRuntime`] runs.
    pub(super) fn wrap(inner: Arc<dyn quinn::AsyncUdpSocket>) -> Arc<Batching> {
        Arc::new_cyclic(|me| Batching {
            inner,
            held: Mutex::default(),
            me: me.clone(),
        })
    }

    /// Sends what is held; on any outcome but "would block" it is gone
    /// (an error loses it as the network would, and QUIC sends it again).
    fn send_held(&self, held: &mut Held) -> io::Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        let sent = self.inner.try_send(&held.transmit());
        if !matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            held.contents.clear();
        }
        sent
    }

    /// Sends what is held now, if the socket takes it.
    fn flush(&self) -> io::Result<()> {
        self.send_held(&mut lock(&self.held))
    }

    /// Puts the socket on the turn's list (once); false outside a turn.
    fn in_turn(&self) -> bool {
        TURN.with_borrow_mut(|turn| {
            if turn.depth == 0 {
                return false;
            }
            if !turn.held.iter().any(|s| std::ptr::eq(Arc::as_ptr(s), self)) {
                if let Some(me) = self.me.upgrade() {
                    turn.held.push(me);
                }
            }
            true
        })
    }
}

impl Drop for Batching {
    fn drop(&mut self) {
        // The socket is let go (the endpoint moved to another): what is
        // held goes now if it can.
        let held = self.held.get_mut().unwrap_or_else(|p| p.into_inner());
        if !held.is_empty() {
            let _ = self.inner.try_send(&held.transmit());
        }
    }
}

impl quinn::AsyncUdpSocket for Batching {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let max_segments = self.inner.max_transmit_segments();
        let mut held = lock(&self.held);
        // Within a turn, what it holds is sent as it ends, or stays held
        // while the socket is full; outside one nothing is held.
        if !held.is_empty() && held.takes(transmit, max_segments) && self.in_turn() {
            held.append(transmit);
            return match self.send_held(&mut held) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                sent => sent,
            };
        }
        // What is held goes first; on "would block" quinn retries this one.
        self.send_held(&mut held)?;
        if Held::worth_holding(transmit, max_segments) && self.in_turn() {
            held.hold(transmit);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// quinn's runtime (tokio), whose drivers' turns end by sending what
/// their sockets hold (see the module's text).
#[derive(Debug)]
pub(super) struct BatchingRuntime;

impl quinn::Runtime for BatchingRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(Turns {
            future: Some(future),
            stuck: Vec::new(),
        });
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

/// A driver, whose every turn ends by sending what its sockets hold.
struct Turns {
    /// The driver, until it is done.
    future: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Sockets that were full with a batch held.
    stuck: Vec<Stuck>,
}

/// A socket that was full with a batch held, and the poller that wakes
/// the driver's task when it has room.
type Stuck = (Arc<Batching>, Pin<Box<dyn quinn::UdpPoller>>);

/// One driver's turn on this thread, ended however the poll ends.
struct TurnGuard {
    /// The sockets of outer turns on the list.
    base: usize,
}

impl TurnGuard {
    fn begin() -> TurnGuard {
        TURN.with_borrow_mut(|turn| {
            turn.depth += 1;
            TurnGuard {
                base: turn.held.len(),
            }
        })
    }

    /// The next socket that held a batch in this turn.
    fn next_held(&self) -> Option<Arc<Batching>> {
        TURN.with_borrow_mut(|turn| {
            if turn.held.len() > self.base {
                turn.held.pop()
            } else {
                None
            }
        })
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        TURN.with_borrow_mut(|turn| {
            turn.depth -= 1;
            turn.held.truncate(self.base);
        });
    }
}

impl Future for Turns {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let done = match this.future.as_mut() {
            Some(future) => {
                let turn = TurnGuard::begin();
                let done = future.as_mut().poll(cx).is_ready();
                while let Some(socket) = turn.next_held() {
                    if matches!(socket.flush(), Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                        let poller = Arc::clone(&socket.inner).create_io_poller();
                        this.stuck.push((socket, poller));
                    }
                }
                done
            }
            None => true,
        };
        if done {
            this.future = None;
        }
        // A full socket wakes this task when it has room.
        this.stuck.retain_mut(|(socket, poller)| loop {
            match poller.as_mut().poll_writable(cx) {
                Poll::Pending => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return false,
            }
            match socket.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return false,
            }
        });
        if this.future.is_none() && this.stuck.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests;
