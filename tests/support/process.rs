//! Child processes, in one place: running one within a bound, collecting
//! its stderr line by line as it comes (so a test waits for a line — the
//! client's "lost" and "resumed" lines travel through ssh's stderr —
//! instead of sleeping), waiting for a transfer to make progress, finding
//! a process's children, signalling and killing whole trees.

#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The remote command of an idle session: says `ready`, then waits.
pub const IDLE: &str = "echo ready; exec sleep 600";
/// Longest wait for a session's `ready` ([`Watched::ready`]).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of a child's stderr (or a relay's log), with a way to wait for
/// one, and for the end of the pipe.
#[derive(Default)]
pub struct Lines {
    state: Mutex<Collected>,
    grew: Condvar,
}

#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    /// The pipe was closed by every writer.
    ended: bool,
}

impl Lines {
    fn state(&self) -> MutexGuard<'_, Collected> {
        resumeproxy::locks::lock(&self.state)
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.state().lines.len()
    }

    /// Whether no line came yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All lines so far, joined.
    pub fn text(&self) -> String {
        self.state().lines.join("\n")
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let state = self.state();
        state.lines.iter().filter(|l| l.contains(needle)).count()
    }

    /// The lines that start with `prefix` (`resumeproxy:`, the client's).
    pub fn starting_with(&self, prefix: &str) -> Vec<String> {
        let state = self.state();
        state
            .lines
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The last line that satisfies `pick`, mapped by it.
    pub fn find_last<T>(&self, pick: impl Fn(&str) -> Option<T>) -> Option<T> {
        let state = self.state();
        state.lines.iter().rev().find_map(|l| pick(l))
    }

    /// The lines containing `needle`, mapped by `f`.
    pub fn map_matching<T>(&self, needle: &str, f: impl Fn(&str) -> Option<T>) -> Vec<T> {
        let state = self.state();
        state
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .filter_map(|l| f(l))
            .collect()
    }

    /// Waits for the `n`th line (from 1) at index `from` or later
    /// containing `needle`; returns it.
    pub fn wait_for_nth(
        &self,
        from: usize,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            let found = state
                .lines
                .iter()
                .skip(from)
                .filter(|l| l.contains(needle))
                .nth(n.max(1) - 1);
            if let Some(line) = found {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                match n {
                    0 | 1 => bail!("no line with {needle:?} within {timeout:?}"),
                    _ => bail!("fewer than {n} lines with {needle:?} within {timeout:?}"),
                }
            }
            state = self.wait(state, deadline - now);
        }
    }

    /// Waits for a line at index `from` or later containing `needle`.
    pub fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_nth(from, needle, 1, timeout)
    }

    /// Waits until every writer has closed the pipe (its last line is
    /// in), at most `timeout`; returns whether it has.
    pub fn wait_for_end(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        while !state.ended {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.wait(state, deadline - now);
        }
        true
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, Collected>,
        timeout: Duration,
    ) -> MutexGuard<'a, Collected> {
        self.grew
            .wait_timeout(state, timeout)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
    }

    /// Collects the lines of `pipe` on a thread, until it closes.
    pub fn collect(pipe: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.state().lines.push(line);
                sink.grew.notify_all();
            }
            sink.state().ended = true;
            sink.grew.notify_all();
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

    /// Spawns an ssh `command` running [`IDLE`], and returns once it has
    /// said `ready` (logged in, session open); its further output is read
    /// and dropped, as ssh's user would.
    pub fn idle(command: Command) -> Result<Watched> {
        Ok(Watched::ready(command, Stdio::null())?.0)
    }

    /// Spawns an ssh `command` whose remote side first says `ready`, with
    /// `stdin`, and returns once that line came through (logged in, the
    /// session open end to end; at most [`READY_TIMEOUT`]), with the rest
    /// of its output, delivered when ssh closes it.
    pub fn ready(command: Command, stdin: Stdio) -> Result<(Watched, mpsc::Receiver<String>)> {
        let mut ssh = Watched::spawn(command, stdin, Stdio::piped())?;
        let stdout = ssh.child.stdout.take().context("ssh stdout")?;
        let (first_tx, first_rx) = mpsc::channel();
        let (rest_tx, rest_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = first_tx.send(line);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            let _ = rest_tx.send(rest);
        });
        let first = first_rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        anyhow::ensure!(
            first.trim() == "ready",
            "the session did not start: {first:?}; stderr:\n{}",
            ssh.stderr.text()
        );
        Ok((ssh, rest_rx))
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

    /// Waits for it to exit (at most `timeout`), then for the end of its
    /// stderr (at most `flush`: what it started, such as ssh's
    /// ProxyCommand, may write a last line after it is gone); returns its
    /// status and all its stderr.
    pub fn finish(&mut self, timeout: Duration, flush: Duration) -> Result<(ExitStatus, String)> {
        let status = self.wait(timeout)?;
        self.stderr.wait_for_end(flush);
        Ok((status, self.stderr.text()))
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits until the file at `path` holds at least `bytes`, while it runs.
    pub fn wait_for_bytes(&mut self, path: &Path, bytes: u64, timeout: Duration) -> Result<u64> {
        self.wait_for_progress(&|| Ok(file_len(path)), bytes, timeout)
    }

    /// Waits until `progress` reports at least `bytes`, while it runs.
    pub fn wait_for_progress(
        &mut self,
        progress: &dyn Fn() -> Result<u64>,
        bytes: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let stderr = Arc::clone(&self.stderr);
        wait_progress(progress, &mut || self.running(), bytes, timeout)
            .with_context(|| format!("its stderr:\n{}", stderr.text()))
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

/// The length of the file at `path`, 0 if there is none yet.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until `progress()` reaches `bytes` (returns it) while `running()`:
/// the one way the tests wait for a transfer to move.
pub fn wait_progress(
    progress: &dyn Fn() -> Result<u64>,
    running: &mut dyn FnMut() -> Result<bool>,
    bytes: u64,
    timeout: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = progress()?;
        if now >= bytes {
            return Ok(now);
        }
        if !running()? {
            bail!("the workload ended at {now} bytes, before {bytes}");
        }
        if Instant::now() >= deadline {
            bail!("{now} of {bytes} bytes within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit within `timeout`; kills it and fails otherwise.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("wait for a child")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not exit within {timeout:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` within `timeout` (killing it after); returns its status,
/// stderr and stdout. Both pipes are drained by threads, so a chatty child
/// cannot block.
pub fn wait_output(mut child: Child, timeout: Duration) -> Result<(ExitStatus, String, String)> {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_timeout(&mut child, timeout)?;
    let stderr = stderr.join().unwrap_or_default();
    let stdout = stdout.join().unwrap_or_default();
    Ok((status, stderr, stdout))
}

/// Runs `command` with no input, within `timeout`; returns its status,
/// stderr and stdout.
pub fn output_within(
    command: &mut Command,
    timeout: Duration,
) -> Result<(ExitStatus, String, String)> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    wait_output(child, timeout)
}

/// Runs `cmd` (ssh, usually) to completion within `timeout`, with its stderr
/// captured, killing it otherwise.
pub async fn run_within(
    mut cmd: Command,
    stdin: Stdio,
    stdout: Stdio,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .context("spawning ssh")?;
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .context("ssh did not finish in time")?
        .context("waiting for ssh")
}

/// A finished command's stderr, as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits (at most `timeout`) for a running child with piped stderr to exit,
/// then returns its status and all it wrote to stderr.
pub async fn exit_and_stderr(
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<(ExitStatus, String)> {
    use tokio::io::AsyncReadExt;
    let exit = tokio::time::timeout(timeout, child.wait())
        .await
        .context("the child did not exit in time")??;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("stderr not piped")?
        .read_to_string(&mut stderr)
        .await?;
    Ok((exit, stderr))
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("a pid")?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// One process, as `/proc/PID/stat` shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub parent: u32,
    /// The program's name (`comm`, at most 15 bytes).
    pub name: String,
}

/// Every process (Linux /proc; empty elsewhere).
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid …"; comm may hold spaces and ')'.
            let (_, rest) = stat.split_once(" (")?;
            let (name, after) = rest.rsplit_once(") ")?;
            let parent = after.split_whitespace().nth(1)?.parse().ok()?;
            Some(Proc {
                pid,
                parent,
                name: name.to_owned(),
            })
        })
        .collect()
}

/// The children of `parent` running program `name`.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.parent == parent && p.name == name)
        .map(|p| p.pid)
        .collect()
}

/// PIDs of all descendants of `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for p in &all {
            if p.parent == parent && !found.contains(&p.pid) {
                found.push(p.pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// Kills `child` and every process descending from it (sshd's per-connection
/// processes and user sessions), then reaps `child`. Best effort.
pub fn kill_tree(child: &mut Child) {
    // Collect descendants before killing the parent: once it is gone they are
    // re-parented and can no longer be found this way.
    let descendants = descendants(child.id());
    let _ = child.kill();
    for pid in descendants {
        let _ = signal(pid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// What a thread returned; an error if it panicked.
pub fn joined<T>(handle: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("a thread panicked"))?
}
