//! What the durable relay's tests share: a copy of the relay's binary that
//! an upgrade replaces on disk, killing the worker and upgrading it through
//! the keeper, and the resume times read from the relay's own log.
//!
//! The relay's log is the keeper's stderr, which its workers share: the
//! keeper's "worker N started" lines name each worker, each worker's
//! "listening on" line says when it began to accept, and "session resumed"
//! lines say when each client came back. Their timestamps are the relay's
//! own, so a resume time does not include the harness's reaction time.

#![allow(dead_code)]

use super::data::random_bytes;
use super::relay::RelayProcess;
use anyhow::{ensure, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Each client resumes within this long of the new worker listening.
pub const RESUME_WITHIN: Duration = Duration::from_secs(1);
/// Bound on the wait for the keeper's next worker to listen.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// The line a worker logs when it begins to accept.
pub const LISTENING: &str = "listening on";
/// The line the relay logs for each session a client resumed.
pub const RESUMED: &str = "session resumed";
/// What the client prints (through ssh's stderr) when it has resumed.
pub const CLIENT_RESUMED: &str = "resumeproxy: resumed after";

/// A copy of `resumeproxyd` in a directory of its own, removed on drop: a
/// relay started from it can be upgraded by replacing the file.
pub struct RelayCopy {
    dir: PathBuf,
    path: PathBuf,
}

impl RelayCopy {
    /// Copies the relay's binary.
    pub fn new() -> Result<RelayCopy> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("relay-copy-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let path = dir.join("resumeproxyd");
        std::fs::copy(env!("CARGO_BIN_EXE_resumeproxyd"), &path)
            .with_context(|| format!("copying the relay to {}", path.display()))?;
        Ok(RelayCopy { dir, path })
    }

    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the binary as a package manager does: a fresh copy under
    /// another name, renamed over the old one (writing into a running
    /// binary fails with ETXTBSY). Returns the new file's inode.
    pub fn replace(&self) -> Result<u64> {
        let fresh = self.dir.join("resumeproxyd.new");
        std::fs::copy(env!("CARGO_BIN_EXE_resumeproxyd"), &fresh)
            .with_context(|| format!("copying the relay to {}", fresh.display()))?;
        std::fs::rename(&fresh, &self.path)
            .with_context(|| format!("renaming over {}", self.path.display()))?;
        Ok(std::fs::metadata(&self.path)?.ino())
    }
}

impl Drop for RelayCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The inode of the binary process `pid` runs (also when it was deleted or
/// replaced on disk since).
pub fn exe_inode(pid: u32) -> Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/exe"))
        .with_context(|| format!("/proc/{pid}/exe"))?
        .ino())
}

/// A directory in memory (`/dev/shm`), removed on drop: the files of big
/// transfers there cost no disk I/O (the disks of these machines are slower than
/// the transfers).
pub struct MemDir(PathBuf);

impl MemDir {
    pub fn new(name: &str) -> Result<MemDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("resumeproxy-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(MemDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for MemDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `len` bytes of a pattern no two MiB of which are alike: one MiB
/// of [`random_bytes`] from `seed`, rotated by a different offset for each
/// MiB. Fast in a debug build (copies, not arithmetic per byte), and as
/// good as random for sha256: a byte lost, duplicated or moved changes it.
pub fn write_pattern_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    for_pattern(len, seed, |block| file.write_all(block))?;
    file.flush()?;
    Ok(())
}

/// The first `len` bytes of the pattern [`write_pattern_file`] writes.
pub fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let _ = for_pattern(len as u64, seed, |block| {
        out.extend_from_slice(block);
        Ok(())
    });
    out
}

fn for_pattern(
    len: u64,
    seed: u64,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    const BLOCK: usize = 1 << 20;
    let base = random_bytes(BLOCK, seed);
    let mut block = vec![0u8; BLOCK];
    let mut left = len;
    let mut i: usize = 0;
    while left > 0 {
        // 7919 is odd: every MiB of the first 2^20 gets its own rotation.
        let r = i.wrapping_mul(7919) % BLOCK;
        block[..BLOCK - r].copy_from_slice(&base[r..]);
        block[BLOCK - r..].copy_from_slice(&base[..r]);
        let n = usize::try_from(left).map_or(BLOCK, |l| l.min(BLOCK));
        each(&block[..n])?;
        left -= n as u64;
        i += 1;
    }
    Ok(())
}

/// The relay's current worker.
pub fn worker(relay: &RelayProcess) -> Result<u32> {
    relay
        .worker_pid()
        .with_context(|| format!("no worker in the relay's log:\n{}", relay.log()))
}

fn send(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: a signal to a process of this test.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    ensure!(rc == 0, "kill {pid}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Kills the relay's worker with SIGKILL and waits for the keeper's next
/// one to listen; returns how long that took from the signal.
pub fn kill_worker(relay: &RelayProcess) -> Result<Duration> {
    let starts = relay.count(LISTENING);
    let pid = worker(relay)?;
    send(pid, libc::SIGKILL)?;
    let sent = Instant::now();
    relay
        .wait_for_count(LISTENING, starts + 1, WORKER_START_TIMEOUT)
        .context("after a SIGKILL of the worker")?;
    let next = worker(relay)?;
    ensure!(next != pid, "the keeper names no new worker after {pid}");
    Ok(sent.elapsed())
}

/// Upgrades a relay started from `copy`: replaces the binary on disk, sends
/// SIGUSR2 to the keeper and waits for the new worker to listen. Checks the
/// keeper says it starts the binary from `copy`'s path, that the old worker
/// stopped for a restart (keeping its sessions), and that the new worker
/// runs the new file. Returns how long from the signal until the new
/// worker listened.
pub fn upgrade(relay: &RelayProcess, copy: &RelayCopy) -> Result<Duration> {
    let starts = relay.count(LISTENING);
    let upgrades = relay.count("upgrading:");
    let restarts = relay.count("restarting:");
    let old = worker(relay)?;
    let old_inode = exe_inode(old)?;
    let new_inode = copy.replace()?;
    ensure!(old_inode != new_inode, "the binary's inode did not change");
    relay.signal(libc::SIGUSR2)?;
    let sent = Instant::now();
    let said = relay.wait_for_count("upgrading:", upgrades + 1, WORKER_START_TIMEOUT)?;
    let from = format!("restarting the worker from {}", copy.path().display());
    ensure!(
        said.contains(&from),
        "the keeper said {said:?}, not {from:?}"
    );
    relay
        .wait_for_count(LISTENING, starts + 1, WORKER_START_TIMEOUT)
        .context("after the upgrade")?;
    ensure!(
        relay.count("restarting:") > restarts,
        "the old worker did not stop for a restart:\n{}",
        relay.log()
    );
    let new = worker(relay)?;
    ensure!(new != old, "the keeper names no new worker after {old}");
    let runs = exe_inode(new)?;
    ensure!(
        runs == new_inode,
        "the new worker {new} runs inode {runs}, not the new binary's {new_inode}"
    );
    Ok(sent.elapsed())
}

/// For every worker after the first, how long after it listened each
/// session resumed (the relay's own timestamps): at least `sessions`
/// resumes each, none later than [`RESUME_WITHIN`].
pub fn resumes_after_each_start(
    relay: &RelayProcess,
    sessions: usize,
) -> Result<Vec<Vec<Duration>>> {
    let starts = relay.log_times(LISTENING);
    let resumes = relay.log_times(RESUMED);
    let mut all = Vec::new();
    for (i, start) in starts.iter().enumerate().skip(1) {
        let next = starts
            .get(i + 1)
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX.into()));
        let these: Vec<Duration> = resumes
            .iter()
            .filter(|t| *t >= start && *t < &next)
            .map(|t| t.duration_since(*start).unwrap_or_default())
            .collect();
        ensure!(
            these.len() >= sessions,
            "after start {i}: {} of {sessions} sessions resumed; log:\n{}",
            these.len(),
            relay.log()
        );
        let worst = these.iter().max().copied().unwrap_or_default();
        ensure!(
            worst <= RESUME_WITHIN,
            "after start {i}, a session resumed {worst:?} after the worker listened; log:\n{}",
            relay.log()
        );
        all.push(these);
    }
    Ok(all)
}

/// Resume times as a short text: `[4ms 6ms] [3ms 9ms] …`.
pub fn show_resumes(all: &[Vec<Duration>]) -> String {
    all.iter()
        .map(|these| {
            let each: Vec<String> = these
                .iter()
                .map(|d| format!("{}ms", d.as_millis()))
                .collect();
            format!("[{}]", each.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
