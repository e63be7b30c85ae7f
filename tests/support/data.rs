//! Test data: seeded pseudo-random bytes (splitmix64, so that a run can be
//! repeated and both ends of a transfer can make the same bytes), files of
//! them, and sha256 of what went in and what came out.

#![allow(dead_code)]

use anyhow::{Context, Result};
use resumeproxy::units::hex;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Block size used for file hashing and random file generation.
const BLOCK: usize = 1 << 20;

/// sha256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Reads `input` to its end on another thread, hashing it and counting
/// what arrived (in the returned counter, as it arrives); the thread returns
/// the length and the sha256. `what` names the stream in an error.
pub fn hash_while_reading(
    mut input: impl Read + Send + 'static,
    what: &'static str,
) -> (Arc<AtomicU64>, JoinHandle<Result<(u64, String)>>) {
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    let reader = std::thread::spawn(move || -> Result<(u64, String)> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .with_context(|| format!("reading {what}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            count.store(total, Ordering::SeqCst);
        }
        Ok((total, hex(&hasher.finalize())))
    });
    (received, reader)
}

/// Hashes `path` on another thread (hundreds of MiB take a while in a debug
/// build); [`joined`](super::process::joined) waits for it.
pub fn hash_in_background(path: &Path) -> JoinHandle<Result<String>> {
    let path = path.to_owned();
    std::thread::spawn(move || sha256_file(&path))
}

/// sha256 of `b`, as lowercase hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b);
    hex(&hasher.finalize())
}

/// Writes `len` bytes of deterministic pseudo-random data to `path` (created or
/// truncated).
///
/// The data is the little-endian byte stream of a splitmix64 generator seeded
/// with `seed`, truncated to `len`; identical to [`random_bytes`] with the same
/// arguments. Fast (1 MiB blocks), not cryptographic.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut rng = SplitMix64(seed);
    let mut buf = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(BLOCK, |l| l.min(BLOCK));
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    file.flush()
        .with_context(|| format!("flush {}", path.display()))?;
    Ok(())
}

/// `len` bytes of the same deterministic stream [`write_random_file`] writes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let mut out = vec![0u8; len];
    for block in out.chunks_mut(BLOCK) {
        rng.fill(block);
    }
    out
}

/// splitmix64. [`fill`](Self::fill) consumes whole u64s (little-endian), so
/// a stream filled in blocks whose sizes are multiples of 8 is the same
/// whatever the block size.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (near enough for tests).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Fills `buf` with the stream's next bytes: a whole u64 for every 8
    /// bytes, and one for a shorter rest.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}
