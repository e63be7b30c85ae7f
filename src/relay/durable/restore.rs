//! Carrying on a session an earlier worker ran, from what it kept.
//!
//! A kept session is two descriptors under one name: its record (a memfd,
//! see [`super::record`]) and its connection to sshd. The record says who
//! the session is and holds the ring of bytes the client has not
//! acknowledged; the kernel's counters on the sshd socket say how far the
//! old worker got with sshd each way ([`super::tcp_counters`]):
//!
//! * towards the client, the ring ends where the worker's reads from sshd
//!   ended (every byte read went straight into the ring), and sshd's end of
//!   stream is there if its FIN arrived and nothing is left to read;
//! * from the client, the session has received exactly what was written to
//!   sshd (the relay acknowledges nothing else), and the client's end of
//!   stream if the worker had shut its side down.
//!
//! Anything that does not add up is refused with a reason, and the
//! session's descriptors are closed: its client will hear "session gone".

use super::record::{Fixed, RecordError, SessionRecord};
use super::tcp_counters::TcpCounters;
use crate::proto::replay_ring::{RingBuffer, RingMemory};
use crate::proto::session::Restored;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// A kept session, ready to be carried on.
pub(crate) struct Restoring {
    /// Its record.
    pub(crate) record: Arc<SessionRecord>,
    /// What the record says of it.
    pub(crate) fixed: Fixed,
    /// Its connection to sshd.
    pub(crate) sshd: std::net::TcpStream,
    /// Its streams as the old worker left them.
    pub(crate) restored: Restored,
    /// Bytes the old worker wrote to sshd (for the log).
    pub(crate) written: u64,
}

/// Why a kept session cannot be carried on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    /// Not the two descriptors a session is kept as.
    #[error("kept as {0} descriptors, not a record and a socket")]
    Shape(usize),
    /// The record is unusable (or of a session that had ended).
    #[error("its record: {0}")]
    Record(#[from] RecordError),
    /// The socket's counters could not be read.
    #[error("its sshd connection: {0}")]
    Socket(io::Error),
    /// The counters and the record disagree.
    #[error("its positions do not add up: {0}")]
    Inconsistent(String),
}

/// Turns a session's kept descriptors back into a session.
pub(crate) fn restore(fds: Vec<OwnedFd>) -> Result<Restoring, RestoreError> {
    let count = fds.len();
    let (sockets, files): (Vec<OwnedFd>, Vec<OwnedFd>) = fds.into_iter().partition(is_socket);
    let (Ok([socket]), Ok([file])) = (
        <[OwnedFd; 1]>::try_from(sockets),
        <[OwnedFd; 1]>::try_from(files),
    ) else {
        return Err(RestoreError::Shape(count));
    };
    let (record, fixed) = SessionRecord::open(file)?;
    let sshd = std::net::TcpStream::from(socket);
    let counters =
        TcpCounters::of(std::os::fd::AsFd::as_fd(&sshd)).map_err(RestoreError::Socket)?;
    let shut_down = record.shut_down();
    let read = counters.data_read(fixed.base, shut_down);
    let written = counters.data_written(fixed.base, shut_down);
    let start = record.acked();
    let ring =
        RingBuffer::new(Arc::clone(&record) as Arc<dyn RingMemory>, start, read).map_err(|e| {
            RestoreError::Inconsistent(format!(
                "{read} bytes read from sshd, {start} acknowledged by the client: {e}"
            ))
        })?;
    let restored = Restored {
        ring,
        local_eof: counters.fin_received(shut_down) && counters.inq == 0,
        received: written,
        peer_end: counters.fin_sent(shut_down),
    };
    Ok(Restoring {
        record,
        fixed,
        sshd,
        restored,
        written,
    })
}

fn is_socket(fd: &OwnedFd) -> bool {
    // SAFETY: fstat writes one struct stat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}
