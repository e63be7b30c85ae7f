//! ssh's pipes on Unix: driven by the reactor, not a thread pool.
//!
//! tokio's own stdin and stdout go through a thread pool (one hand-off per
//! read); instead, pipes, sockets and terminals are put in non-blocking
//! mode and driven by the reactor directly. Anything the reactor cannot
//! watch (a regular file, /dev/null) falls back to tokio's blocking-pool
//! handles. The original file status flags are put back when the handle is
//! dropped, so a terminal shared with the shell is left as it was.
//!
//! The descriptor number of a closed stdout stays taken (by /dev/null), so
//! a socket opened later can never land on fd 1 and receive what was meant
//! for ssh.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A standard descriptor (0 or 1) owned by this module. Dropping it closes
/// its file but keeps the number: /dev/null takes its place.
struct StdioFd(RawFd);

impl AsRawFd for StdioFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Drop for StdioFd {
    fn drop(&mut self) {
        park_on_dev_null(self.0);
    }
}

/// Points `fd` at /dev/null, closing what it referred to, in one step.
fn park_on_dev_null(fd: RawFd) {
    // SAFETY: open, dup2 and close on descriptors this module owns; no memory
    // is touched.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            libc::close(fd);
            return;
        }
        libc::dup2(null, fd);
        libc::close(null);
    }
}

/// A non-blocking file descriptor registered with the reactor.
struct NonBlockingFd {
    fd: AsyncFd<StdioFd>,
    /// File status flags before we set O_NONBLOCK.
    original_flags: libc::c_int,
}

impl NonBlockingFd {
    /// Takes ownership of `raw`, or gives it back untouched if the reactor
    /// cannot watch it.
    fn new(raw: RawFd) -> Result<NonBlockingFd, RawFd> {
        // SAFETY: fcntl on a descriptor number has no memory effects.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            return Err(raw);
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(raw);
        }
        // SAFETY: the caller hands over `raw` (0 or 1, open for the process's
        // life) and nothing else in this process uses it afterwards; it
        // refers to the same description until the StdioFd is dropped, which
        // happens only after the AsyncFd has deregistered it.
        match unsafe { AsyncFd::register(StdioFd(raw)) } {
            Ok(fd) => Ok(NonBlockingFd {
                fd,
                original_flags: flags,
            }),
            Err(e) => {
                let (fd, _) = e.into_parts();
                // SAFETY: restoring the flags read above.
                unsafe { libc::fcntl(fd.0, libc::F_SETFL, flags) };
                // Give the descriptor back untouched.
                std::mem::forget(fd);
                Err(raw)
            }
        }
    }
}

impl Drop for NonBlockingFd {
    fn drop(&mut self) {
        // SAFETY: restoring flags on a descriptor we still own.
        unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, self.original_flags) };
    }
}

/// Reads from fd 0.
pub enum Stdin {
    /// Driven by the reactor.
    Reactor(NonBlockingFdReader),
    /// Through tokio's blocking pool.
    Blocking(tokio::io::Stdin),
}

/// Writes to fd 1.
pub enum Stdout {
    /// Driven by the reactor; `None` once closed.
    Reactor(Option<NonBlockingFdWriter>),
    /// Through tokio's blocking pool.
    Blocking(tokio::io::Stdout),
}

/// The reading half, kept opaque.
pub struct NonBlockingFdReader(NonBlockingFd);
/// The writing half, kept opaque.
pub struct NonBlockingFdWriter(NonBlockingFd);

/// The size asked for the pipes to and from ssh (Linux's default is
/// 64 KiB): a 128 KiB read from ssh, or a write of a received frame to it,
/// then takes one system call and one wake-up, not two or more. It counts
/// against the user's pipe memory (`/proc/sys/fs/pipe-user-pages-soft`,
/// 64 MiB by default): 512 KiB per ssh.
#[cfg(target_os = "linux")]
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// Makes the pipe behind `fd`, if it is one, [`PIPE_SIZE`] large (Linux
/// only). A refusal (the user's pipe memory is used up) leaves it as it is.
#[cfg(target_os = "linux")]
fn grow_pipe(fd: RawFd) {
    // SAFETY: fstat writes one stat struct; fcntl on a descriptor number has
    // no memory effects.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFIFO
            && libc::fcntl(fd, libc::F_GETPIPE_SZ) < PIPE_SIZE
        {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
    }
}

/// The process's stdin and stdout as async handles. Call once.
pub fn take() -> (Stdin, Stdout) {
    #[cfg(target_os = "linux")]
    {
        grow_pipe(0);
        grow_pipe(1);
    }
    let stdin = match NonBlockingFd::new(0) {
        Ok(fd) => Stdin::Reactor(NonBlockingFdReader(fd)),
        Err(_) => Stdin::Blocking(tokio::io::stdin()),
    };
    let stdout = match NonBlockingFd::new(1) {
        Ok(fd) => Stdout::Reactor(Some(NonBlockingFdWriter(fd))),
        Err(_) => Stdout::Blocking(tokio::io::stdout()),
    };
    (stdin, stdout)
}

impl AsyncRead for Stdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdin::Blocking(s) => Pin::new(s).poll_read(cx, buf),
            Stdin::Reactor(NonBlockingFdReader(fd)) => loop {
                let mut guard = ready!(fd.fd.poll_read_ready(cx))?;
                let result = guard.try_io(|inner| {
                    // SAFETY: read(2) writes at most `len` bytes into the
                    // unfilled part of the buffer, which we then mark filled.
                    let unfilled = unsafe { buf.unfilled_mut() };
                    let n = unsafe {
                        libc::read(
                            inner.as_raw_fd(),
                            unfilled.as_mut_ptr().cast(),
                            unfilled.len(),
                        )
                    };
                    if n < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = n as usize;
                    // SAFETY: the kernel initialised these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    Ok(())
                });
                match result {
                    Ok(result) => return Poll::Ready(result),
                    Err(_would_block) => continue,
                }
            },
        }
    }
}

impl AsyncWrite for Stdout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stdout::Blocking(s) => Pin::new(s).poll_write(cx, data),
            Stdout::Reactor(None) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Stdout::Reactor(Some(NonBlockingFdWriter(fd))) => loop {
                let mut guard = ready!(fd.fd.poll_write_ready(cx))?;
                let result = guard.try_io(|inner| {
                    // SAFETY: write(2) only reads `data`.
                    let n =
                        unsafe { libc::write(inner.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match result {
                    Ok(result) => return Poll::Ready(result),
                    Err(_would_block) => continue,
                }
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdout::Blocking(s) => Pin::new(s).poll_flush(cx),
            Stdout::Reactor(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stdout::Blocking(s) => {
                ready!(Pin::new(&mut *s).poll_flush(cx))?;
                // tokio's handle cannot close fd 1; do it here so the reader
                // sees end of file.
                park_on_dev_null(1);
                Poll::Ready(Ok(()))
            }
            Stdout::Reactor(fd) => {
                // Dropping restores the flags, deregisters and closes the
                // pipe behind fd 1.
                fd.take();
                Poll::Ready(Ok(()))
            }
        }
    }
}
