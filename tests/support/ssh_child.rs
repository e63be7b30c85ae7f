//! A child process (ssh, usually) whose stderr is collected line by line as
//! it comes, so that a test can wait for a line, and that is killed when
//! dropped.

#![allow(dead_code)]

use crate::support::netns::wait_timeout;
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
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

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
}

/// An ssh process whose stderr (which carries the client's lines too) is
/// collected as it comes; killed on drop.
pub struct Ssh {
    /// The ssh process.
    pub child: Child,
    /// Its stderr, line by line.
    pub stderr: Arc<Lines>,
}

impl Ssh {
    pub fn spawn(mut command: Command, stdin: Stdio, stdout: Stdio) -> Result<Ssh> {
        let mut child = command
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ssh")?;
        let pipe = child.stderr.take().context("ssh stderr")?;
        let stderr = Arc::new(Lines::default());
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        Ok(Ssh { child, stderr })
    }

    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        wait_timeout(&mut self.child, timeout).with_context(|| {
            format!(
                "ssh did not finish within {timeout:?}; its stderr:\n{}",
                self.stderr.text()
            )
        })
    }

    /// Waits until the file at `path` holds at least `bytes`, while ssh runs.
    pub fn wait_for_bytes(&mut self, path: &Path, bytes: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let len = std::fs::metadata(path).map_or(0, |m| m.len());
            if len >= bytes {
                return Ok(len);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "ssh exited with {status} after {len} bytes, before {bytes}; its stderr:\n{}",
                    self.stderr.text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {len} of {bytes} bytes arrived within {timeout:?}; ssh's stderr:\n{}",
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- ssh stderr ---\n{}", self.stderr.text());
        }
    }
}
