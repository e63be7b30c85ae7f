//! Admission of connections still in their handshake ("unauthenticated"):
//! bounded in total and per source address, so that idle or slow
//! connections (slowloris) from one place cannot starve everyone else.
//!
//! The per-source count ([`SourceCounts`]) is the relay's one way of
//! counting by address: the session table bounds sessions per source with
//! it too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts of connections in their handshake.
#[derive(Debug)]
pub struct Admission {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    per_source: SourceCounts,
}

/// How many of something each source address holds, each bounded.
#[derive(Debug, Default)]
pub struct SourceCounts(HashMap<IpAddr, usize>);

impl SourceCounts {
    /// Counts one more from `source`, unless it holds `max` already.
    pub fn try_add(&mut self, source: IpAddr, max: usize) -> bool {
        let count = self.0.entry(source).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// Counts one fewer from `source`; a source at zero is forgotten.
    pub fn remove(&mut self, source: IpAddr) {
        if let Some(count) = self.0.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.0.remove(&source);
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Too many handshakes in progress overall.
    Total(usize),
    /// Too many from this source address.
    Source(usize),
}

/// A connection's place; gives it back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    /// At most `max_total` handshakes at once, `max_per_source` from any one
    /// address.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            counts: Mutex::new(Counts {
                max_total,
                max_per_source,
                ..Counts::default()
            }),
        })
    }

    /// Changes the bounds; places already taken are kept.
    pub fn set_limits(&self, max_total: usize, max_per_source: usize) {
        let mut counts = self.counts();
        counts.max_total = max_total;
        counts.max_per_source = max_per_source;
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `source`, if there is one.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Full> {
        let mut counts = self.counts();
        let (max_total, max_per_source) = (counts.max_total, counts.max_per_source);
        if counts.total >= max_total {
            return Err(Full::Total(max_total));
        }
        if !counts.per_source.try_add(source, max_per_source) {
            return Err(Full::Source(max_per_source));
        }
        counts.total += 1;
        Ok(Slot {
            admission: Arc::clone(self),
            source,
        })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        counts.per_source.remove(self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_source_and_in_total_and_given_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::Source(2));
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Full::Total(3));
        drop(a1);
        assert_eq!(admission.in_progress(), 2);
        let _a3 = admission.admit(a).unwrap();
        assert_eq!(admission.in_progress(), 3);
    }

    #[test]
    fn a_source_at_zero_is_forgotten() {
        let mut counts = SourceCounts::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(counts.try_add(a, 1));
        assert!(!counts.try_add(a, 1));
        counts.remove(a);
        assert!(counts.0.is_empty());
        counts.remove(a);
        assert!(counts.try_add(a, 1));
    }
}
