//! The client's UDP socket under QUIC, and what it hears besides QUIC.
//!
//! Two things QUIC itself does not tell: when the last datagram came from
//! the relay's side (any datagram, an acknowledgement as well as data: the
//! path is alive, even while the relay's data waits for its retransmission
//! timer), and whether the relay's host answers that nothing listens on its
//! UDP port (ICMP port unreachable, which quinn ignores: an attacker can
//! forge one). A relay that was stopped for good is told apart from a
//! silent network by the second; the first keeps a session through a short
//! partition (see [`Heard`]).
//!
//! The error queue is read on Linux (`IP_RECVERR`); elsewhere only
//! datagrams are heard.

use super::batching::Batching;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Notify;

/// What the client's socket heard from the relay's side.
#[derive(Debug, Default)]
pub struct Heard {
    state: Mutex<HeardState>,
    unreachable: Notify,
}

#[derive(Debug, Default, Clone, Copy)]
struct HeardState {
    /// When the last datagram arrived.
    datagram: Option<Instant>,
    /// The first "port unreachable" since the last datagram.
    unreachable_since: Option<Instant>,
    /// The latest "port unreachable".
    unreachable_at: Option<Instant>,
}

impl Heard {
    fn state(&self) -> HeardState {
        *crate::locks::lock(&self.state)
    }

    /// When the last datagram arrived, if one did.
    pub fn last_datagram(&self) -> Option<Instant> {
        self.state().datagram
    }

    /// Since when the relay's host says nothing listens on its UDP port,
    /// with no datagram from it since — once a datagram has come from the
    /// relay's side at all: a port that never answered (UDP rejected from
    /// the start, a balancer that passes TCP alone, while the session runs
    /// over TCP) says nothing about whether the relay is still there.
    pub fn unreachable_since(&self) -> Option<Instant> {
        let state = self.state();
        state.datagram.and(state.unreachable_since)
    }

    /// Resolves when the relay's host says, after `since`, that nothing
    /// listens on its UDP port.
    pub async fn unreachable_after(&self, since: Instant) {
        loop {
            let told = self.unreachable.notified();
            if self.state().unreachable_at.is_some_and(|at| at >= since) {
                return;
            }
            told.await;
        }
    }

    fn datagram(&self, now: Instant) {
        let mut state = crate::locks::lock(&self.state);
        state.datagram = Some(now);
        state.unreachable_since = None;
    }

    fn port_unreachable(&self, now: Instant) {
        {
            let mut state = crate::locks::lock(&self.state);
            state.unreachable_since.get_or_insert(now);
            state.unreachable_at = Some(now);
        }
        self.unreachable.notify_waiters();
    }
}

/// Receives that may report a queued error, in one poll, before the
/// socket yields (and wakes itself) so that a flood of ICMP errors cannot
/// hold the thread.
const MAX_ERROR_ROUNDS: usize = 16;

/// quinn's socket, with what it hears recorded in [`Heard`].
#[derive(Debug)]
pub(super) struct ClientSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fd: i32,
    heard: Arc<Heard>,
}

impl ClientSocket {
    /// Wraps `socket` for quinn, recording into `heard`.
    pub(super) fn new(socket: std::net::UdpSocket, heard: Arc<Heard>) -> io::Result<ClientSocket> {
        let fd = raw_fd(&socket);
        #[cfg(target_os = "linux")]
        errors::enable(&socket);
        let runtime = quinn::TokioRuntime;
        let inner = Batching::wrap(quinn::Runtime::wrap_udp_socket(&runtime, socket)?);
        Ok(ClientSocket { inner, fd, heard })
    }

    /// Reads the errors the kernel queued for the socket.
    fn read_errors(&self) {
        #[cfg(target_os = "linux")]
        if errors::drain(self.fd) {
            self.heard.port_unreachable(Instant::now());
        }
    }
}

#[cfg(unix)]
fn raw_fd(socket: &std::net::UdpSocket) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(socket)
}

#[cfg(not(unix))]
fn raw_fd(_socket: &std::net::UdpSocket) -> i32 {
    -1
}

impl quinn::AsyncUdpSocket for ClientSocket {
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
        // Each queued error is reported once: a few rounds at most.
        for _ in 0..MAX_ERROR_ROUNDS {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => {
                    self.heard.datagram(Instant::now());
                    return Poll::Ready(Ok(n));
                }
                // The kernel reports a queued error on the next receive
                // too: it is read from the queue, not passed to quinn.
                Poll::Ready(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) || e.raw_os_error().is_some_and(is_unreachable) =>
                {
                    self.read_errors();
                }
                Poll::Pending => {
                    self.read_errors();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
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

/// Errors a receive reports for an ICMP error queued earlier.
fn is_unreachable(errno: i32) -> bool {
    #[cfg(unix)]
    {
        [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EPROTO].contains(&errno)
    }
    #[cfg(not(unix))]
    {
        let _ = errno;
        false
    }
}

/// The socket's error queue (`IP_RECVERR`): ICMP errors for what it sent.
#[cfg(target_os = "linux")]
mod errors {
    use std::os::fd::AsRawFd;

    /// Asks the kernel to queue ICMP errors for the socket (an unconnected
    /// UDP socket hears of none otherwise).
    pub(super) fn enable(socket: &std::net::UdpSocket) {
        let on: libc::c_int = 1;
        let fd = socket.as_raw_fd();
        for (level, name) in [
            (libc::SOL_IP, libc::IP_RECVERR),
            (libc::SOL_IPV6, libc::IPV6_RECVERR),
        ] {
            // SAFETY: setsockopt with an int option on our own socket; the
            // one that does not apply to its family fails harmlessly.
            unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Reads every queued error; whether one said that nothing listens on
    /// the port a datagram went to.
    pub(super) fn drain(fd: i32) -> bool {
        let mut refused = false;
        // A bound on the loop: the queue is bounded by the socket's buffer.
        for _ in 0..64 {
            let mut data = [0u8; 64];
            let mut control = [0u64; 64];
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: zeroed msghdr is valid; its pointers are set below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: recvmsg into buffers that outlive the call.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            // SAFETY: walking the control messages the kernel wrote into
            // `control`, within `msg_controllen`.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    let level = (*cmsg).cmsg_level;
                    let kind = (*cmsg).cmsg_type;
                    if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                        || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
                    {
                        let err = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                        let err = std::ptr::read_unaligned(err);
                        let from_icmp = err.ee_origin == libc::SO_EE_ORIGIN_ICMP
                            || err.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
                        if from_icmp && err.ee_errno == libc::ECONNREFUSED as u32 {
                            refused = true;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_port_unreachable_counts_only_where_the_relay_was_heard() {
        let start = Instant::now();
        let heard = Heard::default();
        heard.port_unreachable(start);
        assert_eq!(heard.unreachable_since(), None);
        heard.datagram(start + Duration::from_secs(1));
        assert_eq!(heard.unreachable_since(), None);
        let later = start + Duration::from_secs(2);
        heard.port_unreachable(later);
        heard.port_unreachable(later + Duration::from_secs(1));
        assert_eq!(heard.unreachable_since(), Some(later));
        heard.datagram(later + Duration::from_secs(2));
        assert_eq!(heard.unreachable_since(), None);
    }
}
