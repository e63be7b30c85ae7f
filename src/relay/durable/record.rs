//! A session's record: what a new worker needs to carry the session on.
//!
//! One `memfd` per session ([`Mapping`]), kept in the descriptor store with
//! the session's sshd connection under one name. Its first page is the
//! header; the rest is the replay ring towards the client
//! ([`crate::proto::replay_ring`]), which this record backs as its
//! [`RingMemory`].
//!
//! ```text
//! page 0   header: magic, layout, state, ring size, fixed fields (written
//!          once, before the state says LIVE), and the few words that
//!          change: acknowledged offset, flags, detached-since, client
//! page 1…  ring: the bytes read from sshd that the client has not
//!          acknowledged
//! ```
//!
//! Crash-consistent at every instant: fixed fields are written before the
//! state is set to [`State::Live`] (release), and read only after it is
//! seen (acquire); each changing field is one aligned 8-byte word. What
//! the worker read from and wrote to sshd is not kept here at all: the
//! kernel counts it ([`super::tcp_counters`]), relative to the
//! [`Base`] recorded when the session began.

use super::crash::{self, Point};
use super::mapping::{page_size, Mapping};
use super::tcp_counters::Base;
use crate::proto::replay_ring::RingMemory;
use crate::proto::wire::{SessionId, SECRET_LEN, SESSION_ID_LEN};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Identifies a session record (and its layout version, the last byte).
const MAGIC: u64 = u64::from_be_bytes(*b"RPXYSES\x01");
/// Bytes before the ring: one page on every system we run on.
pub const HEADER_LEN: usize = 4096;
/// Longest target text kept (a host name and a port).
const MAX_TARGET_LEN: usize = 300;

// Header layout: 8-byte words, then bytes.
const W_MAGIC: usize = 0;
const W_STATE: usize = 1;
const W_CAPACITY: usize = 2;
const W_ACKED: usize = 3;
const W_FLAGS: usize = 4;
const W_DETACHED_SINCE: usize = 5;
const W_BASE_READ: usize = 6;
const W_BASE_WRITTEN: usize = 7;
const W_CREATED_UNIX_MS: usize = 8;
const W_LIMITS: usize = 9; // max_data (low 32) | dead_after_ms (high 32)
const W_LOCAL_PORT: usize = 10;
const W_CLIENT_PORT: usize = 11; // port (low 16) | 1 << 16 when set
const W_CLIENT_IP_HI: usize = 12;
const W_CLIENT_IP_LO: usize = 13;
const B_ID: usize = 256;
const B_SECRET: usize = B_ID + SESSION_ID_LEN;
const B_TARGET_LEN: usize = B_SECRET + SECRET_LEN;
const B_TARGET: usize = B_TARGET_LEN + 2;

/// Flag: the worker shut down its sending side towards sshd (the client's
/// end marker was delivered). Set before `shutdown(2)` is called.
const FLAG_SHUT_DOWN: u64 = 1;

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being written: a worker that finds it so died before the session
    /// was ever offered to a client.
    Writing,
    /// A session to carry on.
    Live,
    /// The session ended; what is left is to be closed.
    Ended,
}

impl State {
    fn to_word(self) -> u64 {
        match self {
            State::Writing => 0,
            State::Live => 1,
            State::Ended => 2,
        }
    }

    fn from_word(w: u64) -> Option<State> {
        match w {
            0 => Some(State::Writing),
            1 => Some(State::Live),
            2 => Some(State::Ended),
            _ => None,
        }
    }
}

/// What a record says of its session, fixed at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    /// The session's id.
    pub id: SessionId,
    /// Its resume secret.
    pub secret: [u8; SECRET_LEN],
    /// Its target, as the audit trail shows it.
    pub target: String,
    /// Largest data frame.
    pub max_data: u32,
    /// The client's dead-peer interval.
    pub dead_after_ms: u32,
    /// The relay's port towards sshd.
    pub local_port: u16,
    /// When the session began (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// The sshd socket's counters when the session took it over.
    pub base: Base,
}

/// Why a kept record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The memory file could not be mapped.
    #[error("cannot map it: {0}")]
    Io(#[from] io::Error),
    /// It is not a session record of this layout.
    #[error("it is not a session record this build can read")]
    Foreign,
    /// It is one, but not of a session to carry on.
    #[error("its session {0:?}")]
    NotLive(State),
    /// Its fields are out of bounds.
    #[error("it is damaged: {0}")]
    Damaged(&'static str),
}

/// A session's record, mapped.
#[derive(Debug)]
pub struct SessionRecord {
    map: Mapping,
}

impl SessionRecord {
    /// A new record for a session with a ring of `capacity` bytes, in state
    /// [`State::Writing`] until [`publish`](Self::publish).
    pub fn create(fixed: &Fixed, capacity: usize) -> io::Result<Arc<SessionRecord>> {
        let capacity = capacity.next_multiple_of(page_size());
        let map = Mapping::create(
            &format!("resumeproxyd-session-{}", fixed.id),
            HEADER_LEN + capacity,
        )?;
        let record = SessionRecord { map };
        record.word(W_MAGIC).store(MAGIC, Ordering::Relaxed);
        record
            .word(W_CAPACITY)
            .store(capacity as u64, Ordering::Relaxed);
        record
            .word(W_BASE_READ)
            .store(fixed.base.read, Ordering::Relaxed);
        record
            .word(W_BASE_WRITTEN)
            .store(fixed.base.written, Ordering::Relaxed);
        record
            .word(W_CREATED_UNIX_MS)
            .store(fixed.created_unix_ms, Ordering::Relaxed);
        let limits = u64::from(fixed.max_data) | (u64::from(fixed.dead_after_ms) << 32);
        record.word(W_LIMITS).store(limits, Ordering::Relaxed);
        record
            .word(W_LOCAL_PORT)
            .store(fixed.local_port.into(), Ordering::Relaxed);
        let target = fixed.target.as_bytes();
        let target = &target[..target.len().min(MAX_TARGET_LEN)];
        // SAFETY: the header page is ours alone until published; every
        // offset below lies within it.
        unsafe {
            let base = record.map.as_ptr();
            std::ptr::copy_nonoverlapping(fixed.id.0.as_ptr(), base.add(B_ID), SESSION_ID_LEN);
            std::ptr::copy_nonoverlapping(fixed.secret.as_ptr(), base.add(B_SECRET), SECRET_LEN);
            std::ptr::copy_nonoverlapping(
                (target.len() as u16).to_le_bytes().as_ptr(),
                base.add(B_TARGET_LEN),
                2,
            );
            std::ptr::copy_nonoverlapping(target.as_ptr(), base.add(B_TARGET), target.len());
        }
        Ok(Arc::new(record))
    }

    /// Maps a kept record and reads its fixed fields; only a
    /// [`State::Live`] record is returned.
    pub fn open(fd: OwnedFd) -> Result<(Arc<SessionRecord>, Fixed), RecordError> {
        let map = Mapping::open(fd)?;
        if map.len() <= HEADER_LEN {
            return Err(RecordError::Foreign);
        }
        let record = SessionRecord { map };
        if record.word(W_MAGIC).load(Ordering::Relaxed) != MAGIC {
            return Err(RecordError::Foreign);
        }
        let state = State::from_word(record.word(W_STATE).load(Ordering::Acquire))
            .ok_or(RecordError::Damaged("unknown state"))?;
        if state != State::Live {
            return Err(RecordError::NotLive(state));
        }
        let capacity = record.word(W_CAPACITY).load(Ordering::Relaxed);
        if capacity != (record.map.len() - HEADER_LEN) as u64 {
            return Err(RecordError::Damaged("ring size does not match the file"));
        }
        let limits = record.word(W_LIMITS).load(Ordering::Relaxed);
        let mut id = [0u8; SESSION_ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        let mut target_len = [0u8; 2];
        // SAFETY: the header is published (state seen with acquire) and
        // fixed from then on; every offset lies within the first page.
        let target = unsafe {
            let base = record.map.as_ptr();
            std::ptr::copy_nonoverlapping(base.add(B_ID), id.as_mut_ptr(), SESSION_ID_LEN);
            std::ptr::copy_nonoverlapping(base.add(B_SECRET), secret.as_mut_ptr(), SECRET_LEN);
            std::ptr::copy_nonoverlapping(base.add(B_TARGET_LEN), target_len.as_mut_ptr(), 2);
            let len = usize::from(u16::from_le_bytes(target_len));
            if len > MAX_TARGET_LEN {
                return Err(RecordError::Damaged("target too long"));
            }
            let bytes = std::slice::from_raw_parts(base.add(B_TARGET), len);
            String::from_utf8_lossy(bytes).into_owned()
        };
        let fixed = Fixed {
            id: SessionId(id),
            secret,
            target,
            max_data: limits as u32,
            dead_after_ms: (limits >> 32) as u32,
            local_port: record.word(W_LOCAL_PORT).load(Ordering::Relaxed) as u16,
            created_unix_ms: record.word(W_CREATED_UNIX_MS).load(Ordering::Relaxed),
            base: Base {
                read: record.word(W_BASE_READ).load(Ordering::Relaxed),
                written: record.word(W_BASE_WRITTEN).load(Ordering::Relaxed),
            },
        };
        Ok((Arc::new(record), fixed))
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        debug_assert!((index + 1) * 8 <= B_ID);
        // SAFETY: the mapping is page-aligned and at least a header long,
        // so the word is aligned and in bounds; all access to it is atomic.
        unsafe { &*self.map.as_ptr().add(index * 8).cast::<AtomicU64>() }
    }

    /// Marks the record as a session to carry on: from here, a new worker
    /// restores it.
    pub fn publish(&self) {
        self.word(W_STATE)
            .store(State::Live.to_word(), Ordering::Release);
    }

    /// Marks the session as over: a worker that dies before the record is
    /// removed from the store does not bring it back.
    pub fn end(&self) {
        self.word(W_STATE)
            .store(State::Ended.to_word(), Ordering::Release);
    }

    /// The memory file, to keep in the store.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// The offset the client acknowledged last (towards it, data only).
    pub fn acked(&self) -> u64 {
        self.word(W_ACKED).load(Ordering::Relaxed)
    }

    /// The ring's size.
    pub fn ring_capacity(&self) -> usize {
        self.map.len() - HEADER_LEN
    }

    /// Whether the worker had shut down its sending side towards sshd.
    pub fn shut_down(&self) -> bool {
        self.word(W_FLAGS).load(Ordering::Relaxed) & FLAG_SHUT_DOWN != 0
    }

    /// Says the worker is about to shut down its sending side towards sshd.
    pub fn set_shut_down(&self) {
        self.word(W_FLAGS)
            .fetch_or(FLAG_SHUT_DOWN, Ordering::Relaxed);
    }

    /// Since when (boot clock, milliseconds) the session has had no client;
    /// `None` while it has one.
    pub fn detached_since(&self) -> Option<u64> {
        match self.word(W_DETACHED_SINCE).load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// Records that the session has no client since `ms` (see
    /// [`boot_clock_ms`]), or has one again (`None`).
    pub fn set_detached_since(&self, ms: Option<u64>) {
        self.word(W_DETACHED_SINCE)
            .store(ms.map_or(0, |ms| ms.max(1)), Ordering::Relaxed);
    }

    /// The client's latest address (for the audit trail).
    pub fn client(&self) -> Option<SocketAddr> {
        let port = self.word(W_CLIENT_PORT).load(Ordering::Relaxed);
        if port & (1 << 16) == 0 {
            return None;
        }
        let hi = self.word(W_CLIENT_IP_HI).load(Ordering::Relaxed);
        let lo = self.word(W_CLIENT_IP_LO).load(Ordering::Relaxed);
        let ip = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Some(SocketAddr::new(ip, port as u16))
    }

    /// Records the client's address. Three words: a worker dying halfway
    /// leaves an address that is wrong in the log, nothing worse.
    pub fn set_client(&self, addr: SocketAddr) {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let bits = u128::from(ip);
        self.word(W_CLIENT_IP_HI)
            .store((bits >> 64) as u64, Ordering::Relaxed);
        self.word(W_CLIENT_IP_LO)
            .store(bits as u64, Ordering::Relaxed);
        self.word(W_CLIENT_PORT)
            .store(u64::from(addr.port()) | (1 << 16), Ordering::Relaxed);
    }
}

// SAFETY: the ring is the mapping past the header, page-aligned, zeroed
// when new, fixed in place while the record lives, and used only by the
// session's ring.
unsafe impl RingMemory for SessionRecord {
    fn as_ptr(&self) -> *mut u8 {
        // SAFETY: the mapping is longer than the header.
        unsafe { self.map.as_ptr().add(HEADER_LEN) }
    }

    fn capacity(&self) -> usize {
        self.ring_capacity()
    }

    fn acknowledged(&self, offset: u64) {
        self.word(W_ACKED).store(offset, Ordering::Relaxed);
        crash::point(Point::ClientAck);
    }

    fn drained(&self) {
        if let Err(e) = self.map.release(HEADER_LEN, self.ring_capacity()) {
            tracing::debug!("giving a drained ring's memory back failed: {e}");
        }
    }

    fn release(&self, at: usize, len: usize) {
        if let Err(e) = self.map.release(HEADER_LEN + at, len) {
            tracing::debug!("giving acknowledged memory back failed: {e}");
        }
    }
}

/// The boot clock in milliseconds: it counts across processes (and
/// suspend), so a new worker can tell how long a session has had no client.
pub fn boot_clock_ms() -> u64 {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd};

    fn fixed() -> Fixed {
        Fixed {
            id: SessionId([7; SESSION_ID_LEN]),
            secret: [9; SECRET_LEN],
            target: "sshd.example:22".into(),
            max_data: 131072,
            dead_after_ms: 5000,
            local_port: 40000,
            created_unix_ms: 1_700_000_000_000,
            base: Base {
                read: 0,
                written: 1,
            },
        }
    }

    fn reopen(record: &SessionRecord) -> Result<(Arc<SessionRecord>, Fixed), RecordError> {
        // SAFETY: dup of our own descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(record.mapping().as_fd().as_raw_fd())) };
        SessionRecord::open(fd)
    }

    #[test]
    fn only_a_published_record_comes_back_with_every_field() {
        let record = SessionRecord::create(&fixed(), 10_000).expect("create");
        assert!(matches!(
            reopen(&record),
            Err(RecordError::NotLive(State::Writing))
        ));
        record.publish();
        record.acknowledged(1234);
        record.set_shut_down();
        record.set_client("203.0.113.7:4000".parse().expect("addr"));
        record.set_detached_since(Some(99));
        let (again, fields) = reopen(&record).expect("open");
        assert_eq!(fields, fixed());
        assert_eq!(again.acked(), 1234);
        assert!(again.shut_down());
        assert_eq!(
            again.client(),
            Some("203.0.113.7:4000".parse().expect("addr"))
        );
        assert_eq!(again.detached_since(), Some(99));
        assert_eq!(again.ring_capacity() % page_size(), 0);
        assert!(again.ring_capacity() >= 10_000);
        record.end();
        assert!(matches!(
            reopen(&record),
            Err(RecordError::NotLive(State::Ended))
        ));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let map = Mapping::create("other", 2 * HEADER_LEN).expect("create");
        // SAFETY: dup of our own descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(map.as_fd().as_raw_fd())) };
        assert!(matches!(SessionRecord::open(fd), Err(RecordError::Foreign)));
    }
}
