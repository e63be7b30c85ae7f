//! Counting by source address: how many of something (sessions) each
//! client address holds, each bounded. The session table bounds sessions
//! per source with it.

use std::collections::HashMap;
use std::net::IpAddr;

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

    /// How many `source` holds.
    pub fn count(&self, source: IpAddr) -> usize {
        self.0.get(&source).copied().unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn a_source_at_zero_is_forgotten() {
        let mut counts = SourceCounts::default();
        assert!(counts.try_add(A, 1));
        assert!(!counts.try_add(A, 1));
        counts.remove(A);
        assert!(counts.0.is_empty());
        counts.remove(A);
        assert!(counts.try_add(A, 1));
    }
}
