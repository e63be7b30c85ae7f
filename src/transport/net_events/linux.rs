//! The watcher on Linux: a `NETLINK_ROUTE` socket ([`super::netlink`]).

use super::Report;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Receive buffer: netlink(7) asks for at least 8 KiB per read; link
/// messages with statistics and VF lists can exceed that. A datagram
/// longer than this is cut (its last message then skipped).
const RECV_BUFFER: usize = 32 * 1024;
/// The socket's kernel-side queue: room for a burst (an interface with
/// many addresses and routes going down at once) before events drop.
const SOCKET_BUFFER: libc::c_int = 1 << 20;

/// What one read gave.
pub(super) enum Received {
    /// A datagram from the kernel (possibly cut at the buffer's length),
    /// its reports added.
    Reports,
    /// The socket's queue overflowed: events were lost.
    Overrun,
}

/// The subscribed `NETLINK_ROUTE` socket and its receive buffer.
#[derive(Debug)]
pub(super) struct Socket {
    fd: AsyncFd<OwnedFd>,
    buf: Box<[u8]>,
}

impl Socket {
    pub(super) fn open() -> io::Result<Socket> {
        // SAFETY: socket has no memory-safety preconditions.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A larger queue is best effort: the default still works.
        // SAFETY: the option value is a c_int of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                socklen::<libc::c_int>(),
            );
        }
        // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        // SAFETY: `addr` is a valid sockaddr_nl of the length given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                socklen::<libc::sockaddr_nl>(),
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is owned by the AsyncFd from here on,
        // and neither replaced nor closed while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Socket {
            fd,
            buf: vec![0; RECV_BUFFER].into_boxed_slice(),
        })
    }

    /// The next datagram from the kernel (others are ignored): its reports
    /// go to `into`.
    pub(super) async fn recv(&mut self, into: &mut VecDeque<Report>) -> io::Result<Received> {
        let len = loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            match guard.try_io(|fd| recv_from_kernel(fd.get_ref(), buf)) {
                Ok(Ok(Some(len))) => break len,
                // From a process, not the kernel: not ours to believe.
                Ok(Ok(None)) => continue,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Received::Overrun)
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        };
        let datagram = self.buf.get(..len).unwrap_or(&self.buf);
        into.extend(super::netlink::parse(datagram));
        Ok(Received::Reports)
    }
}

/// One datagram into `buf`: its length (at most `buf.len()`), or `None`
/// if it did not come from the kernel.
fn recv_from_kernel(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut from_len = socklen::<libc::sockaddr_nl>();
    // SAFETY: `buf` is writable for its length; `from` for `from_len`.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_nl).cast(),
            &mut from_len,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    Ok((from.nl_pid == 0).then_some(n.min(buf.len())))
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

pub(super) use super::ifaddrs::interface_of;
