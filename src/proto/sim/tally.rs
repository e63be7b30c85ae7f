//! What the schedules did, summed, for the check that every case the
//! simulation is for was reached.

use super::relay::RelayCounts;

/// What the schedules did, summed: the simulation must reach every case.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub(super) schedules: u64,
    /// Client endings: done, gone (unknown session), gone (unreachable),
    /// refused, never opened, gone (the relay had completed the session),
    /// gone (the session's instance went down).
    pub(super) endings: [u64; 7],
    /// Faults injected: partitions, client-side resets, relay-side resets,
    /// stalls, paths that lose large writes, the session's instance down.
    pub(super) faults: [u64; 6],
    /// Transports the client lost: reset, closed, silent, stalled.
    pub(super) client_lost: [u64; 4],
    pub(super) resumes: u64,
    pub(super) failed_attempts: u64,
    /// Opens refused (the relay busy) or unanswered, and tried again.
    pub(super) failed_opens: u64,
    pub(super) relay: RelayCounts,
    pub(super) attacks: u64,
}

impl Tally {
    pub(super) fn add(&mut self, other: &Tally) {
        self.schedules += other.schedules;
        for (a, b) in self.endings.iter_mut().zip(other.endings) {
            *a += b;
        }
        for (a, b) in self.faults.iter_mut().zip(other.faults) {
            *a += b;
        }
        for (a, b) in self.client_lost.iter_mut().zip(other.client_lost) {
            *a += b;
        }
        self.relay.add(&other.relay);
        self.resumes += other.resumes;
        self.failed_attempts += other.failed_attempts;
        self.failed_opens += other.failed_opens;
        self.attacks += other.attacks;
    }
}
