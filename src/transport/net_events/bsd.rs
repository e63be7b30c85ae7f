//! The watcher on macOS and FreeBSD: a `PF_ROUTE` socket, which the kernel
//! copies every routing message to ([`super::route_socket`] reads them).

use super::route_socket::{self, at, Flavour};
use super::Report;
use std::collections::VecDeque;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(super) use super::ifaddrs::interface_of;

#[cfg(target_os = "macos")]
const FLAVOUR: Flavour = Flavour::Darwin;
#[cfg(target_os = "freebsd")]
const FLAVOUR: Flavour = Flavour::FreeBsd;

// The parser's numbers and offsets are this platform's, checked when it is
// built for it.
const _: () = {
    assert!(route_socket::RTM_VERSION as libc::c_int == libc::RTM_VERSION);
    assert!(route_socket::RTM_ADD as libc::c_int == libc::RTM_ADD);
    assert!(route_socket::RTM_DELETE as libc::c_int == libc::RTM_DELETE);
    assert!(route_socket::RTM_CHANGE as libc::c_int == libc::RTM_CHANGE);
    assert!(route_socket::RTM_NEWADDR as libc::c_int == libc::RTM_NEWADDR);
    assert!(route_socket::RTM_DELADDR as libc::c_int == libc::RTM_DELADDR);
    assert!(route_socket::RTM_IFINFO as libc::c_int == libc::RTM_IFINFO);
    assert!(route_socket::IFF_UP as libc::c_int == libc::IFF_UP);
    assert!(route_socket::IFF_RUNNING as libc::c_int == libc::IFF_RUNNING);
    assert!(route_socket::RTA_IFA as libc::c_int == libc::RTA_IFA);
    assert!(route_socket::RTF_LOCAL as libc::c_int == libc::RTF_LOCAL);
    assert!(route_socket::RTF_BROADCAST as libc::c_int == libc::RTF_BROADCAST);
    assert!(route_socket::RTF_MULTICAST as libc::c_int == libc::RTF_MULTICAST);
    assert!(at::IFM_FLAGS == offset_of!(libc::if_msghdr, ifm_flags));
    assert!(at::IFM_INDEX == offset_of!(libc::if_msghdr, ifm_index));
    assert!(at::IFAM_ADDRS == offset_of!(libc::ifa_msghdr, ifam_addrs));
    assert!(at::IFAM_INDEX == offset_of!(libc::ifa_msghdr, ifam_index));
    assert!(at::IFAM_LEN == size_of::<libc::ifa_msghdr>());
    assert!(at::RTM_FLAGS == offset_of!(libc::rt_msghdr, rtm_flags));
    assert!(at::RTM_ERRNO == offset_of!(libc::rt_msghdr, rtm_errno));
};

#[cfg(target_os = "macos")]
const _: () = {
    assert!(route_socket::RTF_LLINFO as libc::c_int == libc::RTF_LLINFO);
    assert!(route_socket::RTF_WASCLONED as libc::c_int == libc::RTF_WASCLONED);
    assert!(libc::AF_INET6 == 30);
};

#[cfg(target_os = "freebsd")]
const _: () = {
    assert!(route_socket::RTF_LLINFO as libc::c_int == libc::RTF_LLDATA);
    assert!(route_socket::RTM_IFANNOUNCE as libc::c_int == libc::RTM_IFANNOUNCE);
    assert!(route_socket::IFAN_DEPARTURE as libc::c_int == libc::IFAN_DEPARTURE);
    assert!(route_socket::LINK_STATE_UP as libc::c_int == libc::LINK_STATE_UP);
    assert!(route_socket::LINK_STATE_DOWN as libc::c_int == libc::LINK_STATE_DOWN);
    assert!(
        at::IFM_LINK_STATE
            == offset_of!(libc::if_msghdr, ifm_data) + offset_of!(libc::if_data, ifi_link_state)
    );
    assert!(at::IFAN_INDEX == offset_of!(libc::if_announcemsghdr, ifan_index));
    assert!(at::IFAN_WHAT == offset_of!(libc::if_announcemsghdr, ifan_what));
    assert!(libc::AF_INET6 == 28);
};

/// Receive buffer: one message per read, the longest a few hundred bytes.
const RECV_BUFFER: usize = 16 * 1024;

/// What one read gave.
pub(super) enum Received {
    /// A message from the kernel, its reports added.
    Reports,
    /// The socket's queue overflowed: messages were lost.
    Overrun,
}

/// The routing socket and its receive buffer.
#[derive(Debug)]
pub(super) struct Socket {
    fd: AsyncFd<OwnedFd>,
    buf: Box<[u8]>,
}

impl Socket {
    pub(super) fn open() -> io::Result<Socket> {
        // SAFETY: socket has no memory-safety preconditions.
        let raw = unsafe { libc::socket(libc::PF_ROUTE, libc::SOCK_RAW, libc::AF_UNSPEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on our own descriptor; no memory is touched.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0
                || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
                || libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the descriptor is owned by the AsyncFd from here on.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Socket {
            fd,
            buf: vec![0; RECV_BUFFER].into_boxed_slice(),
        })
    }

    /// The next message: its reports go to `into`.
    pub(super) async fn recv(&mut self, into: &mut VecDeque<Report>) -> io::Result<Received> {
        let len = loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            // SAFETY: `buf` is writable for its length.
            let read = guard.try_io(|fd| {
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match read {
                Ok(Ok(len)) => break len,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Received::Overrun)
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        };
        let message = self.buf.get(..len).unwrap_or(&self.buf);
        into.extend(route_socket::parse(FLAVOUR, message));
        Ok(Received::Reports)
    }
}
