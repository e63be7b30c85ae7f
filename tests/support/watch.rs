//! Child processes whose stderr is collected line by line as it comes, so a
//! test can wait for a line (the client's "lost" and "resumed" lines travel
//! through ssh's stderr) instead of sleeping.

#![allow(dead_code)]

use super::netns::wait_timeout;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines of a child's stderr, with a way to wait for one.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Lines {
    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Whether no line came yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All lines so far, joined.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits for a line at index `from` or later containing `needle`.
    pub fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("no line with {needle:?} within {timeout:?}");
            }
            lines = self.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Collects the lines of `pipe` on a thread, until it closes.
    pub fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        lines
    }
}

/// A child (ssh, scp, rsync, sftp…) whose stderr (which carries the client's
/// lines too) is collected as it comes; killed on drop.
pub struct Watched {
    pub child: Child,
    pub stderr: Arc<Lines>,
}

impl Watched {
    /// Spawns `command` with these stdin and stdout, and stderr collected.
    pub fn spawn(mut command: Command, stdin: Stdio, stdout: Stdio) -> Result<Watched> {
        let mut child = command
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let pipe = child.stderr.take().context("child stderr")?;
        Ok(Watched {
            child,
            stderr: Lines::collect(pipe),
        })
    }

    /// Waits for it to exit, at most `timeout` (then kills it and fails).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        wait_timeout(&mut self.child, timeout).with_context(|| {
            format!(
                "it did not finish within {timeout:?}; its stderr:\n{}",
                self.stderr.text()
            )
        })
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits until the file at `path` holds at least `bytes`, while it runs.
    pub fn wait_for_bytes(&mut self, path: &Path, bytes: u64, timeout: Duration) -> Result<u64> {
        self.wait_for_progress(
            || Ok(std::fs::metadata(path).map_or(0, |m| m.len())),
            bytes,
            timeout,
        )
    }

    /// Waits until `progress` reports at least `bytes`, while it runs.
    pub fn wait_for_progress(
        &mut self,
        progress: impl Fn() -> Result<u64>,
        bytes: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let len = progress()?;
            if len >= bytes {
                return Ok(len);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "it exited with {status} after {len} bytes, before {bytes}; its stderr:\n{}",
                    self.stderr.text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {len} of {bytes} bytes arrived within {timeout:?}; stderr:\n{}",
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of {:?} ---\n{}",
                self.child.id(),
                self.stderr.text()
            );
        }
    }
}
