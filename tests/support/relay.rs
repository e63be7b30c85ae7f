//! Runs the real `resumeproxyd` binary for end-to-end tests, and builds the
//! `ProxyCommand` that points the real ssh at it: the client's flags and
//! the lines it prints, for every test, are here.
//!
//! The relay listens on a free loopback port it picks itself; the harness
//! learns the port from its "listening on" log line and keeps every later log
//! line, so tests can wait for events ("session resumed", "expired") instead
//! of sleeping.

#![allow(dead_code)]

use super::process::{self, wait_timeout, Lines};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long the relay may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The client's flags in most tests: notice a silent link within a
/// second. ([`proxy_command`] adds `--transport tcp` and the pinned key
/// unless told otherwise.)
pub const CLIENT_FLAGS: &str = "--dead-after 1s";
/// How every line the client prints (through ssh's stderr) starts.
pub const CLIENT: &str = "resumeproxy:";
/// What the client prints when it has resumed.
pub const RESUMED: &str = "resumeproxy: resumed after";
/// What the client prints when it has lost the link.
pub const LOST: &str = "resumeproxy: link to";

/// The relay key every test relay of this process uses (unless a test gives
/// its own `--key-file`), and its fingerprint, which [`proxy_command`] pins.
/// One key, kept in cargo's scratch directory for tests, so that a relay
/// restarted on the same port is the same relay to its clients.
pub fn test_key() -> &'static (PathBuf, String) {
    static KEY: OnceLock<(PathBuf, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-relay.key");
        let (key, _) = resumeproxy::transport::identity::RelayKey::load_or_create(&path)
            .expect("making the test relay key");
        (path, key.fingerprint().to_string())
    })
}

/// A running `resumeproxyd`, killed on drop.
pub struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Lines>,
}

impl RelayProcess {
    /// Starts the relay on 127.0.0.1 (a free port) with `--target
    /// 127.0.0.1:target_port` and any `extra` flags.
    pub fn start(target_port: u16, extra: &[&str]) -> Result<RelayProcess> {
        Self::start_on("127.0.0.1:0", target_port, extra)
    }

    /// Like [`start`](Self::start), on a given listen address.
    pub fn start_on(listen: &str, target_port: u16, extra: &[&str]) -> Result<RelayProcess> {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_resumeproxyd")),
            listen,
            target_port,
            extra,
        )
    }

    /// Like [`start_on`](Self::start_on), inside the network namespace
    /// `netns` (`ip netns exec`, needs root); `--target` is that namespace's
    /// own 127.0.0.1.
    pub fn start_in_netns(
        netns: &str,
        listen: &str,
        target_port: u16,
        extra: &[&str],
    ) -> Result<RelayProcess> {
        let program = Path::new(env!("CARGO_BIN_EXE_resumeproxyd"));
        Self::start_program_in_netns(program, netns, listen, target_port, extra)
    }

    /// Like [`start_in_netns`](Self::start_in_netns), running the relay
    /// binary at `program` (a copy, for an upgrade test).
    pub fn start_program_in_netns(
        program: &Path,
        netns: &str,
        listen: &str,
        target_port: u16,
        extra: &[&str],
    ) -> Result<RelayProcess> {
        let mut command = Command::new("ip");
        // `ip netns exec` execs the relay in place: the child is the relay.
        command.args(["netns", "exec", netns]).arg(program);
        Self::spawn(command, listen, target_port, extra)
    }

    /// Starts `command` (the relay, perhaps behind a wrapper that execs it
    /// in place, with its environment or descriptors prepared) with the
    /// harness's arguments appended, and waits for it to listen.
    pub fn start_command(
        command: Command,
        listen: &str,
        target_port: u16,
        extra: &[&str],
    ) -> Result<RelayProcess> {
        Self::spawn(command, listen, target_port, extra)
    }

    fn spawn(
        mut command: Command,
        listen: &str,
        target_port: u16,
        extra: &[&str],
    ) -> Result<RelayProcess> {
        if !extra.contains(&"--key-file") {
            command.arg("--key-file").arg(&test_key().0);
        }
        // A test may ask for more (debug) by setting it on its command.
        if !command.get_envs().any(|(key, _)| key == "RESUMEPROXY_LOG") {
            command.env("RESUMEPROXY_LOG", "info");
        }
        let mut child = command
            .arg("--listen")
            .arg(listen)
            .arg("--target")
            .arg(format!("127.0.0.1:{target_port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting resumeproxyd")?;
        let stderr = child.stderr.take().context("relay stderr")?;
        let log = Lines::collect(stderr);
        let mut relay = RelayProcess {
            child,
            addr: "0.0.0.0:0".parse()?,
            log,
        };
        let line = relay
            .wait_for_log("listening on", START_DEADLINE)
            .with_context(|| format!("relay did not start; its log:\n{}", relay.log()))?;
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .context("no address in the relay's listening line")?;
        relay.addr = addr
            .parse()
            .with_context(|| format!("bad address in {line:?}"))?;
        Ok(relay)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's process id (for `/proc/PID/...`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the relay is still running (it has neither crashed nor exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the relay logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log.count(needle)
    }

    /// Waits until a log line contains `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_count(needle, 1, timeout)
    }

    /// Waits until `n` log lines contain `needle`; returns the `n`th.
    pub fn wait_for_count(&self, needle: &str, n: usize, timeout: Duration) -> Result<String> {
        self.log
            .wait_for_nth(0, needle, n, timeout)
            .map_err(|e| anyhow::anyhow!("in the relay's log: {e}"))
    }

    /// Stops the relay with SIGTERM (a keeper stops for good; a worker
    /// run by systemd stops for a restart, as `systemctl restart` makes it)
    /// and waits, at most `timeout`, for it to exit; returns whether it
    /// exited successfully.
    pub fn terminate(&mut self, timeout: Duration) -> Result<bool> {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// Sends `signal` and waits, at most `timeout`, for the relay to exit;
    /// returns whether it exited successfully.
    pub fn stop_with(&mut self, signal: libc::c_int, timeout: Duration) -> Result<bool> {
        self.signal(signal)?;
        let status = wait_timeout(&mut self.child, timeout)
            .with_context(|| format!("the relay, after signal {signal}"))?;
        Ok(status.success())
    }

    /// The process id of the relay's current worker (the keeper's child),
    /// from the keeper's last "worker N started" line.
    pub fn worker_pid(&self) -> Option<u32> {
        self.log.find_last(|line| {
            let rest = line.split("worker ").nth(1)?;
            let (pid, after) = rest.split_once(' ')?;
            after.starts_with("started").then(|| pid.parse().ok())?
        })
    }

    /// When each log line containing `needle` was written (the relay's
    /// own timestamps).
    pub fn log_times(&self, needle: &str) -> Vec<std::time::SystemTime> {
        self.log.map_matching(needle, |line| {
            humantime::parse_rfc3339_weak(line.split_whitespace().next()?).ok()
        })
    }

    /// Sends `signal` to the relay's process (the keeper).
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        process::signal(self.child.id(), signal).context("signalling the relay")
    }

    /// Kills the relay now (as a crash or restart would).
    pub fn kill(&mut self) {
        let worker = self.worker_pid();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The worker dies with its keeper (it is sent SIGKILL when the
        // keeper goes), a moment later: until it has, it holds the port.
        if let Some(pid) = worker {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- resumeproxyd log ---\n{}", self.log());
        }
    }
}

/// `ProxyCommand` running the real client against a relay at `relay`, for
/// sshd on `sshd_port`, with `extra` client flags. Unless `extra` says how to
/// trust the relay, the client pins the [`test_key`] with
/// `--relay-fingerprint` (so no test touches the user's known_relays).
/// Unless `extra` chooses a transport, the client uses TCP: the fault
/// injector and the faults these tests make are TCP's (QUIC's own tests
/// choose it).
pub fn proxy_command(relay: SocketAddr, sshd_port: u16, extra: &str) -> String {
    let trust = if extra.contains("--relay-fingerprint") || extra.contains("--known-relays") {
        String::new()
    } else {
        format!("--relay-fingerprint {} ", test_key().1)
    };
    let transport = if extra.contains("--transport") {
        ""
    } else {
        "--transport tcp "
    };
    format!(
        "{} --relay-port {} {trust}{transport}{extra} {} {sshd_port}",
        env!("CARGO_BIN_EXE_resumeproxy"),
        relay.port(),
        relay.ip()
    )
}

/// Like [`proxy_command`], but also writes the client's exit status to
/// `status_file` (ssh does not report its ProxyCommand's status).
///
/// The wrapping shell must not hold ssh's pipes, or ssh would never see the
/// client close its output: it moves them to fds 3 and 4, starts the client
/// on them in the background, closes its own copies, and waits. It ignores
/// the SIGHUP ssh sends its ProxyCommand on exit, so it lives to write the
/// status; the client then learns that ssh left through its pipes.
pub fn proxy_command_with_status(
    relay: SocketAddr,
    sshd_port: u16,
    extra: &str,
    status_file: &Path,
) -> String {
    format!(
        "sh -c 'trap \"\" HUP; exec 3<&0 4>&1 </dev/null >/dev/null; \
         {} <&3 >&4 3<&- 4>&- & exec 3<&- 4>&-; wait $!; \
         echo $? > {status}.tmp && mv {status}.tmp {status}'",
        proxy_command(relay, sshd_port, extra),
        status = status_file.display()
    )
}

/// Waits for the status file written by [`proxy_command_with_status`] (the
/// client may still be finishing after ssh has exited) and returns it.
pub fn wait_for_status(status_file: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(status) = std::fs::read_to_string(status_file) {
            return Ok(status.trim().to_owned());
        }
        if Instant::now() >= deadline {
            bail!(
                "the client did not exit within {timeout:?} (no {})",
                status_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
