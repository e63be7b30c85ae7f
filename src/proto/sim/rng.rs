//! The simulation's randomness: one seed, one schedule.

/// Deterministic randomness (splitmix64): one seed, one schedule.
pub(super) struct Rng(u64);

impl Rng {
    /// The randomness of `seed`.
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A number in `[0, 1)` (backoff jitter).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Random bytes (ids, secrets, channel bindings).
    pub(super) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        out
    }

    /// A size for one read or write: often small, sometimes everything.
    pub(super) fn size(&mut self) -> usize {
        let n = match self.next() % 4 {
            0 => self.range(1, 16),
            1 => self.range(1, 1500),
            2 => self.range(1, 16 * 1024),
            _ => 1 << 20,
        };
        n as usize
    }
}
