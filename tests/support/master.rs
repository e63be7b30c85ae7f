//! An ssh ControlMaster through the fault lab's client, and the commands
//! multiplexed over it: what the fault suite and the durable relay's lab
//! test both run through their faults.

#![allow(dead_code)]

use super::data::{sha256_file, write_random_file};
use super::faults::Bench;
use super::process::Watched;
use anyhow::{ensure, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the master may take to come up.
const UP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `ssh -O check`, and on the master's exit.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Files copied: (source, destination) pairs.
pub type Pairs = Vec<(PathBuf, PathBuf)>;

/// A ControlMaster (its own remote command reads its stdin to the end).
pub struct ControlMaster<'a> {
    bench: &'a Bench,
    /// `ControlPath=…`.
    control: String,
    /// The master's ssh.
    pub ssh: Watched,
}

impl<'a> ControlMaster<'a> {
    /// Starts a master through `bench` with its socket at `socket`, and
    /// waits until `ssh -O check` says it is up.
    pub fn start(bench: &'a Bench, socket: &Path) -> Result<ControlMaster<'a>> {
        let control = format!("ControlPath={}", socket.display());
        let options = [
            "-o",
            "ControlMaster=yes",
            "-o",
            &control,
            "-o",
            "ControlPersist=no",
        ];
        let ssh = Watched::spawn(
            bench.ssh(false, &options, "cat > /dev/null"),
            Stdio::piped(),
            Stdio::null(),
        )?;
        let mut master = ControlMaster {
            bench,
            control,
            ssh,
        };
        let deadline = Instant::now() + UP_TIMEOUT;
        while !master.check()? {
            ensure!(
                Instant::now() < deadline && master.ssh.running()?,
                "the master never came up: {}",
                master.ssh.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(master)
    }

    /// A multiplexed ssh, in the client namespace: `extra` options, then
    /// the host and `remote` (if any).
    pub fn mux(&self, extra: &[&str], remote: &str) -> Command {
        let mut command = self.bench.client("ssh", true);
        command
            .args(["-o", "ControlMaster=no", "-o", &self.control])
            .args(extra)
            .arg("127.0.0.1");
        if !remote.is_empty() {
            command.arg(remote);
        }
        self.bench.in_client(&command)
    }

    /// Whether the master answers `ssh -O check`.
    pub fn check(&self) -> Result<bool> {
        let mut check =
            Watched::spawn(self.mux(&["-O", "check"], ""), Stdio::null(), Stdio::null())?;
        Ok(check.wait(CHECK_TIMEOUT)?.success())
    }

    /// Four files of `size` bytes (seeded from `seed`) in `dir`, and four
    /// multiplexed commands that copy them at once: three download
    /// (`cat SRC` into DST), one uploads (`cat > DST` from SRC). Returns
    /// the (source, destination) pairs and the commands.
    pub fn four_copies(&self, dir: &Path, size: u64, seed: u64) -> Result<(Pairs, Vec<Watched>)> {
        // All files first, so that the commands start together.
        let mut pairs = Vec::new();
        for i in 0..4u64 {
            let (src, dst) = (dir.join(format!("src{i}")), dir.join(format!("dst{i}")));
            write_random_file(&src, size, seed + i)?;
            pairs.push((src, dst));
        }
        let mut commands = Vec::new();
        for (i, (src, dst)) in pairs.iter().enumerate() {
            commands.push(if i < 3 {
                Watched::spawn(
                    self.mux(&[], &format!("cat {}", src.display())),
                    Stdio::null(),
                    Stdio::from(File::create(dst)?),
                )?
            } else {
                Watched::spawn(
                    self.mux(&[], &format!("cat > {}", dst.display())),
                    Stdio::from(File::open(src)?),
                    Stdio::null(),
                )?
            });
        }
        Ok((pairs, commands))
    }

    /// Checks that the master still answers, then ends it (its stdin
    /// closed) and checks that it exits 0; returns it for its stderr.
    pub fn finish(mut self) -> Result<Watched> {
        ensure!(
            self.check()?,
            "the master is gone: {}",
            self.ssh.stderr.text()
        );
        drop(self.ssh.child.stdin.take());
        let status = self.ssh.wait(2 * CHECK_TIMEOUT)?;
        ensure!(
            status.success(),
            "master: {status}: {}",
            self.ssh.stderr.text()
        );
        Ok(self.ssh)
    }
}

/// Bytes at the copies' destinations so far.
pub fn copied(pairs: &Pairs) -> u64 {
    pairs
        .iter()
        .map(|(_, dst)| std::fs::metadata(dst).map_or(0, |m| m.len()))
        .sum()
}

/// How many of `commands` still run.
pub fn still_running(commands: &mut [Watched]) -> Result<usize> {
    let mut running = 0;
    for command in commands.iter_mut() {
        running += usize::from(command.running()?);
    }
    Ok(running)
}

/// Waits for every command to exit 0 (each within `timeout`), then checks
/// every destination's sha256 against its source's.
pub fn check_copies(commands: &mut [Watched], pairs: &Pairs, timeout: Duration) -> Result<()> {
    for (i, command) in commands.iter_mut().enumerate() {
        let status = command.wait(timeout)?;
        ensure!(
            status.success(),
            "command {i}: {status}: {}",
            command.stderr.text()
        );
    }
    for (src, dst) in pairs {
        ensure!(
            sha256_file(dst)? == sha256_file(src)?,
            "{} differs from {}",
            dst.display(),
            src.display()
        );
    }
    Ok(())
}
