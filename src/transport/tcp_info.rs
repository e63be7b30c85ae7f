//! The kernel's own account of a TCP socket (`TCP_INFO`, Linux): what it
//! carried and when it last heard from its peer. The relay reads its byte
//! counters to outlive its process; the client reads when the relay last
//! acknowledged anything (see [`NetworkPath::since_peer_acked`](super::NetworkPath::since_peer_acked)).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `TCP_INFO` of the socket `fd`, and how many of its bytes this kernel
/// filled (older kernels fill fewer fields).
pub fn of(fd: BorrowedFd<'_>) -> io::Result<(libc::tcp_info, usize)> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info, len as usize))
}
