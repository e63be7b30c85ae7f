//! The UDP sockets under QUIC: bound with large buffers, and, on the
//! relay, with reading that a restart can stop.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Socket buffer asked for each way on UDP sockets (the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`): the default, some 200 KiB, drops
/// datagrams at a few hundred MiB/s, and every drop costs QUIC a congestion
/// window cut.
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;
/// Stops a relay endpoint's reading of its UDP socket, for good. The
/// socket outlives the worker (the keeper or systemd keeps it): what
/// arrives after the stop waits in the kernel's queue for the next worker.
/// A worker that stops for a restart stops reading first, so that its
/// clients' new connections are not taken by it and lost, but answered by
/// the next one.
#[derive(Debug, Clone, Default)]
pub struct ReadStop(Arc<AtomicBool>);

impl ReadStop {
    /// Stops reading; sending goes on.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// quinn's socket, with reading that [`ReadStop`] ends.
#[derive(Debug)]
pub(super) struct StoppableSocket {
    pub(super) inner: Arc<dyn quinn::AsyncUdpSocket>,
    pub(super) reads: ReadStop,
}

impl quinn::AsyncUdpSocket for StoppableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.reads.stopped() {
            // Never again: nothing needs waking.
            return Poll::Pending;
        }
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

/// A UDP socket bound to `addr`, with [`UDP_SOCKET_BUFFER`] each way.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, only slower.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
