//! What a TCP socket has carried, as the kernel counts it.
//!
//! A relay worker that dies between a `read` from sshd and the line that
//! records it would lose those bytes, and one that dies between a `write` to
//! sshd and its record would send them twice. The kernel keeps its own
//! count, which outlives the worker with the socket: `TCP_INFO`'s
//! `tcpi_bytes_received` and `tcpi_bytes_acked`, with the queue lengths
//! `SIOCINQ` (received, not yet read) and `SIOCOUTQ` (written, not yet
//! acknowledged). So the bytes the application has read are
//! `bytes_received - inq` and the bytes it has written `bytes_acked + outq`,
//! up to control flags that TCP numbers like bytes.
//!
//! Measured on Linux 6.x (the tests below check each rule on real sockets):
//!
//! * the connecting side's `bytes_acked` counts its SYN (1 at connect); the
//!   accepting side's counts nothing. A session records both counts at its
//!   start ([`TcpCounters::base`]) and subtracts them, so neither matters.
//! * a FIN sent counts in `bytes_acked` once acknowledged and in `outq`
//!   until then: `bytes_acked + outq` is one more than the data written
//!   from the moment `shutdown(SHUT_WR)` is called.
//! * a FIN received counts in `bytes_received` at once, read or not, and
//!   `SIOCINQ` leaves it out: `bytes_received - inq` is one more than the
//!   data read from the moment the FIN arrives.
//!
//! Whether each FIN has been sent or received is read off the TCP state;
//! `CLOSE`, reached both after a clean close of both sides and after a
//! reset, cannot tell, so the caller says whether it had shut its side
//! down ([`TcpCounters::data_written`]); a socket in `CLOSE` that this side
//! never shut down was reset, and a reset connection carries nothing more.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Linux's TCP states (`include/net/tcp_states.h`).
mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const CLOSING: u8 = 11;
}

/// One reading of a TCP socket's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCounters {
    /// `tcpi_state`.
    pub state: u8,
    /// `tcpi_bytes_acked`: sequence space acknowledged by the peer.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`: sequence space received from the peer.
    pub bytes_received: u64,
    /// `SIOCINQ`: received data not yet read.
    pub inq: u64,
    /// `SIOCOUTQ`: written (data and FIN) not yet acknowledged.
    pub outq: u64,
}

/// A session's starting point: the counts of [`TcpCounters::read_total`] and
/// [`TcpCounters::written_total`] when it took the socket over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Base {
    /// Sequence space read before the session began.
    pub read: u64,
    /// Sequence space written before the session began (the SYN, on the
    /// connecting side).
    pub written: u64,
}

impl TcpCounters {
    /// Reads the counters of the TCP socket `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<TcpCounters> {
        let raw = fd.as_raw_fd();
        let (info, len) = crate::transport::tcp_info::of(fd)?;
        let needed =
            std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + std::mem::size_of::<u64>();
        if len < needed {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's TCP_INFO has no byte counters (Linux 4.1 or later is needed)",
            ));
        }
        Ok(TcpCounters {
            state: info.tcpi_state,
            bytes_acked: info.tcpi_bytes_acked,
            bytes_received: info.tcpi_bytes_received,
            inq: queue_len(raw, libc::FIONREAD)?,
            outq: queue_len(raw, libc::TIOCOUTQ)?,
        })
    }

    /// Sequence space the application has read, its FIN included once it
    /// arrived.
    pub fn read_total(&self) -> u64 {
        self.bytes_received.saturating_sub(self.inq)
    }

    /// Sequence space the application has written, a FIN included once
    /// `shutdown` was called.
    pub fn written_total(&self) -> u64 {
        self.bytes_acked.saturating_add(self.outq)
    }

    /// This reading as the starting point of a session.
    pub fn base(&self) -> Base {
        Base {
            read: self.read_total() - u64::from(self.fin_received(false)),
            written: self.written_total() - u64::from(self.fin_sent(false)),
        }
    }

    /// Whether the peer's FIN has arrived. `shut_down` says whether this
    /// side had called `shutdown(SHUT_WR)`: in `CLOSE`, only a connection
    /// closed by both sides has surely received one.
    pub fn fin_received(&self, shut_down: bool) -> bool {
        match self.state {
            state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING | state::TIME_WAIT => true,
            state::CLOSE => shut_down,
            _ => false,
        }
    }

    /// Whether this side's FIN is in the sequence space (see
    /// [`fin_received`](Self::fin_received) for `shut_down`).
    pub fn fin_sent(&self, shut_down: bool) -> bool {
        match self.state {
            state::FIN_WAIT1
            | state::FIN_WAIT2
            | state::LAST_ACK
            | state::CLOSING
            | state::TIME_WAIT => true,
            state::CLOSE => shut_down,
            _ => false,
        }
    }

    /// Data bytes read since `base`.
    pub fn data_read(&self, base: Base, shut_down: bool) -> u64 {
        (self.read_total() - u64::from(self.fin_received(shut_down))).saturating_sub(base.read)
    }

    /// Data bytes written since `base`.
    pub fn data_written(&self, base: Base, shut_down: bool) -> u64 {
        (self.written_total() - u64::from(self.fin_sent(shut_down))).saturating_sub(base.written)
    }

    /// Whether the connection is established (no FIN either way, no reset).
    pub fn is_established(&self) -> bool {
        self.state == state::ESTABLISHED
    }
}

fn queue_len(fd: libc::c_int, request: libc::Ioctl) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int.
    if unsafe { libc::ioctl(fd, request, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let connecting = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        (connecting, accepted)
    }

    fn counters(s: &TcpStream) -> TcpCounters {
        TcpCounters::of(s.as_fd()).expect("counters")
    }

    /// Waits (bounded) until the counters of `s` satisfy `done`: loopback
    /// delivers within microseconds, but not synchronously.
    fn settled(s: &TcpStream, done: impl Fn(&TcpCounters) -> bool) -> TcpCounters {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = counters(s);
            if done(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "counters never settled: {c:?}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_connecting_side_counts_its_syn_and_the_base_absorbs_it() {
        let (connecting, accepted) = pair();
        let c = counters(&connecting);
        assert_eq!((c.bytes_acked, c.written_total()), (1, 1), "{c:?}");
        assert_eq!(
            c.base(),
            Base {
                read: 0,
                written: 1
            }
        );
        assert_eq!(counters(&accepted).base(), Base::default());
    }

    #[test]
    fn data_read_and_written_are_what_the_application_moved() {
        let (mut connecting, mut accepted) = pair();
        let (cbase, abase) = (counters(&connecting).base(), counters(&accepted).base());
        connecting.write_all(&[7; 1000]).expect("write");
        // Written counts at once, acknowledged or not.
        assert_eq!(counters(&connecting).data_written(cbase, false), 1000);
        let a = settled(&accepted, |c| c.bytes_received == 1000);
        assert_eq!(a.data_read(abase, false), 0, "received but unread: {a:?}");
        let mut buf = [0; 400];
        accepted.read_exact(&mut buf).expect("read");
        assert_eq!(counters(&accepted).data_read(abase, false), 400);
    }

    #[test]
    fn a_fin_counts_on_both_sides_and_the_state_tells_it_apart() {
        let (mut connecting, mut accepted) = pair();
        let (cbase, abase) = (counters(&connecting).base(), counters(&accepted).base());
        connecting.write_all(&[1; 10]).expect("write");
        connecting.shutdown(Shutdown::Write).expect("shutdown");
        let c = counters(&connecting);
        assert_eq!(
            c.written_total() - cbase.written,
            11,
            "the FIN counts: {c:?}"
        );
        assert!(c.fin_sent(true));
        assert_eq!(c.data_written(cbase, true), 10);
        // The FIN arrived, nothing read yet: received counts it, inq does not.
        let a = settled(&accepted, |c| c.bytes_received == 11);
        assert_eq!((a.inq, a.read_total()), (10, 1), "{a:?}");
        assert!(a.fin_received(false));
        assert_eq!(a.data_read(abase, false), 0);
        let mut all = Vec::new();
        accepted.read_to_end(&mut all).expect("read");
        assert_eq!(all.len(), 10);
        assert_eq!(counters(&accepted).data_read(abase, false), 10);
        // Both sides closed: CLOSE (the accepting side) or a FIN state.
        accepted.shutdown(Shutdown::Write).expect("shutdown");
        let a = settled(&accepted, |c| c.state == state::CLOSE);
        assert_eq!(a.data_read(abase, true), 10, "{a:?}");
        assert_eq!(a.data_written(abase, true), 0, "{a:?}");
        let c = settled(&connecting, |c| c.bytes_received == 1);
        assert_eq!(c.data_read(cbase, true), 0, "{c:?}");
        assert_eq!(c.data_written(cbase, true), 10, "{c:?}");
    }
}
