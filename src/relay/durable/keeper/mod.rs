//! The keeper: what holds the relay's descriptors when systemd does not.
//!
//! `resumeproxyd` started by hand (a user-mode relay, a container, a test)
//! becomes this small process. It starts the relay's worker as its child and
//! plays systemd's part for it: the worker's `$NOTIFY_SOCKET` is the
//! keeper's, the worker stores its listeners and sshd connections there
//! (`FDSTORE=1`, see [`super::fd_store`]), and every new worker gets them
//! back as `$LISTEN_FDS`. So the worker has one code path, under systemd or
//! not.
//!
//! * The worker dies (a crash, `kill -9`, the OOM killer, a SIGTERM sent to
//!   it alone): the keeper starts a new one at once, with everything kept.
//!   One that keeps dying before it is ready is started again after a
//!   growing pause, and given up after [`MAX_FAILED_STARTS`].
//! * SIGUSR2: an upgrade. The worker is asked to stop (SIGTERM: it keeps its
//!   sessions), and the binary is started again from disk.
//! * SIGHUP is passed on to the worker (reload).
//! * SIGTERM or SIGINT: a stop for good. The worker is asked to end every
//!   session (SIGINT), and the keeper exits when it has.
//!
//! The keeper is single-threaded and does not use the async runtime: it
//! waits with `poll(2)` on a signalfd and its notify socket, and starts the
//! worker with `fork`/`execve` so that it controls exactly which
//! descriptors the worker gets. Only the worker's own process may talk to
//! the notify socket (its credentials are checked, as systemd's
//! `NotifyAccess=main` does).

mod system;

use super::fd_store::{receive_notify, NotifyDatagram};
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use system::{bind_notify, block_signals, child, describe_exit, exit_code, raise_fd_limit, signal};

/// Most descriptors the keeper holds (systemd's `FileDescriptorStoreMax=`).
pub const MAX_STORED: usize = 16 * 1024;
/// Worker starts in a row that may fail before becoming ready.
pub const MAX_FAILED_STARTS: u32 = 5;
/// Longest pause between failed starts.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// How long a worker asked to stop may take before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The worker's exit status for a mistake a restart cannot mend (bad
/// settings, a port in use): the keeper gives up at once.
pub const EXIT_CONFIG: i32 = 78;
/// Set in the worker's environment to the keeper's process id.
pub const KEEPER_ENV: &str = "RESUMEPROXYD_KEEPER";
/// Largest notify message accepted.
const MAX_MESSAGE: usize = 4096;

/// One kept descriptor.
struct Kept {
    name: String,
    fd: OwnedFd,
}

/// What the keeper was asked to do with the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Keep it running; start a new one if it dies.
    Run,
    /// Start the binary from disk again once this worker has stopped
    /// (asked to at `since`).
    Upgrade { since: Instant },
    /// Stop for good once the worker has ended its sessions (asked to at
    /// `since`).
    Stop { since: Instant },
}

impl Plan {
    /// When the worker was asked to stop, if it was.
    fn stop_asked(self) -> Option<Instant> {
        match self {
            Plan::Run => None,
            Plan::Upgrade { since } | Plan::Stop { since } => Some(since),
        }
    }
}

/// The running keeper.
struct Keeper {
    exe: PathBuf,
    args: Vec<OsString>,
    notify: OwnedFd,
    notify_name: String,
    signals: OwnedFd,
    kept: Vec<Kept>,
    worker: Option<libc::pid_t>,
    started_at: Instant,
    ready: bool,
    failed_starts: u32,
    plan: Plan,
    dropped_messages: u64,
}

/// Runs the keeper with the worker's arguments `args` (without the program
/// name) until the relay is stopped for good. Returns the exit status.
pub fn run(args: Vec<OsString>) -> ExitCode {
    match Keeper::new(args).and_then(Keeper::serve) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("the keeper failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether this process should become the keeper: nobody supervises it yet
/// (no `$NOTIFY_SOCKET`).
pub fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_none_or(|s| s.is_empty())
}

impl Keeper {
    fn new(args: Vec<OsString>) -> io::Result<Keeper> {
        let exe = std::env::current_exe()?;
        raise_fd_limit();
        let signals = block_signals()?;
        let notify_name = format!(
            "@resumeproxyd-keeper/{}/{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let notify = bind_notify(&notify_name)?;
        Ok(Keeper {
            exe,
            args,
            notify,
            notify_name,
            signals,
            kept: Vec::new(),
            worker: None,
            started_at: Instant::now(),
            ready: false,
            failed_starts: 0,
            plan: Plan::Run,
            dropped_messages: 0,
        })
    }

    fn serve(mut self) -> io::Result<ExitCode> {
        self.start_worker()?;
        loop {
            let timeout = match self.plan.stop_asked() {
                Some(since) => {
                    let left = STOP_TIMEOUT.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        if let Some(pid) = self.worker {
                            tracing::warn!(
                                "the worker did not stop within {}s; killing it",
                                STOP_TIMEOUT.as_secs()
                            );
                            signal(pid, libc::SIGKILL);
                        }
                    }
                    i32::try_from(left.as_millis().max(100)).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            let mut fds = [
                libc::pollfd {
                    fd: self.signals.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.notify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if fds[1].revents != 0 {
                self.drain();
            }
            if fds[0].revents != 0 {
                if let Some(code) = self.on_signal()? {
                    return Ok(code);
                }
            }
        }
    }

    /// Handles one pending signal; `Some` when the keeper is done.
    fn on_signal(&mut self) -> io::Result<Option<ExitCode>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            return Ok(None);
        }
        match info.ssi_signo as i32 {
            libc::SIGCHLD => self.reap(),
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => {
                if !matches!(self.plan, Plan::Stop { .. }) {
                    tracing::info!("stopping for good: ending every session");
                    self.plan = Plan::Stop {
                        since: Instant::now(),
                    };
                }
                match self.worker {
                    Some(pid) => {
                        signal(pid, libc::SIGINT);
                        Ok(None)
                    }
                    None => Ok(Some(ExitCode::SUCCESS)),
                }
            }
            libc::SIGUSR2 => {
                if self.plan == Plan::Run {
                    tracing::info!(
                        "upgrading: restarting the worker from {}",
                        self.exe.display()
                    );
                    self.plan = Plan::Upgrade {
                        since: Instant::now(),
                    };
                    if let Some(pid) = self.worker {
                        signal(pid, libc::SIGTERM);
                    }
                }
                Ok(None)
            }
            libc::SIGHUP => {
                if let Some(pid) = self.worker {
                    signal(pid, libc::SIGHUP);
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Collects exited children; starts a new worker if the plan says so.
    fn reap(&mut self) -> io::Result<Option<ExitCode>> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes one int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return Ok(None);
            }
            if Some(pid) != self.worker {
                continue;
            }
            // What it said before it died still counts: a session it kept
            // just before a crash must reach the next worker.
            self.drain();
            self.worker = None;
            let how = describe_exit(status);
            match self.plan {
                Plan::Stop { .. } => {
                    tracing::info!("the worker {how}; stopped");
                    return Ok(Some(exit_code(status)));
                }
                Plan::Upgrade { .. } => {
                    self.plan = Plan::Run;
                    self.failed_starts = 0;
                }
                Plan::Run => {
                    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == EXIT_CONFIG {
                        return Ok(Some(ExitCode::from(EXIT_CONFIG as u8)));
                    }
                    if self.ready {
                        self.failed_starts = 0;
                    } else {
                        self.failed_starts += 1;
                    }
                    if self.failed_starts >= MAX_FAILED_STARTS {
                        tracing::error!(
                            "the worker {how}, and failed to start {} times in a row; giving up",
                            self.failed_starts
                        );
                        return Ok(Some(ExitCode::FAILURE));
                    }
                    tracing::warn!(
                        "the worker {how} after {:.1}s; starting a new one with {} kept descriptors",
                        self.started_at.elapsed().as_secs_f64(),
                        self.kept.len()
                    );
                    if self.failed_starts > 0 {
                        let delay = Duration::from_millis(100 << self.failed_starts.min(6))
                            .min(MAX_RESTART_DELAY);
                        std::thread::sleep(delay);
                    }
                }
            }
            self.start_worker()?;
        }
    }

    /// Receives one notify message from the worker.
    /// Receives every notify message waiting.
    fn drain(&mut self) {
        while self.receive() {}
    }

    /// Receives one notify message from the worker; false when none waits.
    fn receive(&mut self) -> bool {
        let Some(datagram) = receive_notify(self.notify.as_fd(), MAX_MESSAGE) else {
            return false;
        };
        let NotifyDatagram {
            sender,
            payload,
            fds,
            truncated,
        } = datagram;
        if truncated || sender.is_none() || sender != self.worker {
            // Not from the worker (or cut short): its descriptors are closed.
            self.dropped_messages += 1;
            if self.dropped_messages.is_power_of_two() {
                tracing::warn!(
                    "ignored {} notify message(s) not from the worker",
                    self.dropped_messages
                );
            }
            return true;
        }
        let text = String::from_utf8_lossy(&payload).into_owned();
        self.apply(&text, fds);
        true
    }

    /// Carries out one message of the notify protocol.
    fn apply(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        };
        if field("READY") == Some("1") {
            self.ready = true;
            self.failed_starts = 0;
        }
        if field("FDSTORE") == Some("1") {
            let name = field("FDNAME").unwrap_or("stored").to_owned();
            for fd in fds {
                if self.kept.len() >= MAX_STORED {
                    tracing::error!(
                        "the keeper holds {MAX_STORED} descriptors already; not keeping {name}"
                    );
                    break;
                }
                self.kept.push(Kept {
                    name: name.clone(),
                    fd,
                });
            }
        } else if field("FDSTOREREMOVE") == Some("1") {
            if let Some(name) = field("FDNAME") {
                self.kept.retain(|k| k.name != name);
            }
        }
    }

    /// Starts a worker with every kept descriptor.
    fn start_worker(&mut self) -> io::Result<()> {
        let names: Vec<&str> = self.kept.iter().map(|k| k.name.as_str()).collect();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.as_bytes();
                !(k == b"NOTIFY_SOCKET" || k.starts_with(b"LISTEN_") || k == KEEPER_ENV.as_bytes())
            })
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let own = |s: String| CString::new(s).map_err(io::Error::other);
        env.push(own(format!("NOTIFY_SOCKET={}", self.notify_name))?);
        env.push(own(format!("{KEEPER_ENV}={}", std::process::id()))?);
        if !self.kept.is_empty() {
            env.push(own(format!("LISTEN_FDS={}", self.kept.len()))?);
            env.push(own(format!("LISTEN_FDNAMES={}", names.join(":")))?);
        }
        // Filled in by the child with its own pid (no allocation after fork).
        let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let exe = CString::new(self.exe.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut argv: Vec<CString> = vec![exe.clone()];
        for arg in &self.args {
            argv.push(CString::new(arg.as_bytes()).map_err(io::Error::other)?);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        if !self.kept.is_empty() {
            env_ptrs.push(listen_pid.as_ptr().cast());
        }
        env_ptrs.push(std::ptr::null());
        let sources: Vec<RawFd> = self.kept.iter().map(|k| k.fd.as_raw_fd()).collect();
        let mut temps: Vec<RawFd> = vec![-1; sources.len()];
        let keeper = std::process::id() as libc::pid_t;

        // SAFETY: fork in a single-threaded process; the child below calls
        // only async-signal-safe functions on memory prepared before it.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: the child; see above.
            unsafe {
                child(
                    keeper,
                    &sources,
                    &mut temps,
                    &mut listen_pid,
                    &exe,
                    &argv_ptrs,
                    &env_ptrs,
                )
            }
        }
        self.worker = Some(pid);
        self.started_at = Instant::now();
        self.ready = false;
        tracing::info!(
            "worker {pid} started with {} kept descriptors",
            self.kept.len()
        );
        Ok(())
    }
}
