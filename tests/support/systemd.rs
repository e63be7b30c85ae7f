//! systemd's side of the notify and descriptor store protocol, played by the
//! test, so that the relay's worker can be run the way systemd runs it.
//!
//! [`FakeSystemd`] binds a unix datagram socket (systemd's
//! `/run/systemd/notify`), receives the worker's messages with `recvmsg(2)`
//! (descriptors as `SCM_RIGHTS`, the sender as `SCM_CREDENTIALS`) and does
//! with them what systemd's `service.c` does, written here from
//! `sd_notify(3)`, `systemd.service(5)` and systemd's own code, not from the
//! relay's:
//!
//! * only the main process may speak (`NotifyAccess=main`);
//! * `FDSTORE=1` keeps the descriptors under `FDNAME=` (`stored` when there
//!   is none, or when it breaks systemd's rules for names: at most 255
//!   ASCII characters, no control characters, no `:`); a descriptor that
//!   is already kept (the same open file) is not kept twice; no more than
//!   `FileDescriptorStoreMax=`; unless `FDPOLL=0`, one that reports
//!   `POLLHUP` or `POLLERR` is dropped;
//! * `FDSTOREREMOVE=1` closes every descriptor kept under `FDNAME=`;
//! * descriptors sent without `FDSTORE=1` are closed.
//!
//! A new worker gets every kept descriptor at 3, 4, … in systemd's order
//! (the store is a list that each new descriptor joins at its head: the
//! newest first), with `$LISTEN_FDS`, `$LISTEN_FDNAMES` and `$LISTEN_PID`
//! (the worker's own pid, which only the child knows: a shell sets it and
//! execs the worker, keeping its pid), and `$NOTIFY_SOCKET`.
//!
//! Whatever systemd would refuse, drop or warn about is recorded in
//! [`State::violations`], for the test to assert there is none.

#![allow(dead_code)]

use super::relay::RelayProcess;
use anyhow::{bail, Context, Result};
use resumeproxy::relay::durable::fd_store::receive_notify;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The first descriptor of `$LISTEN_FDS` (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// The longest notify message systemd reads (`NOTIFY_BUFFER_MAX`, `PIPE_BUF`).
pub const NOTIFY_BUFFER_MAX: usize = 4096;
/// The longest descriptor name systemd accepts (`FDNAME_MAX`).
pub const FDNAME_MAX: usize = 255;
/// How often the notify thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(100);

/// Whether systemd accepts `name` as a descriptor name (`fdname_is_valid`
/// in systemd's `fd-util.c`): ASCII without control characters, no `:` (it
/// separates the names in `$LISTEN_FDNAMES`), at most [`FDNAME_MAX`].
pub fn fdname_is_valid(name: &str) -> bool {
    name.len() <= FDNAME_MAX && name.bytes().all(|b| (b' '..0x7f).contains(&b) && b != b':')
}

/// One message systemd accepted from the main process.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sender (from its credentials).
    pub pid: u32,
    /// The assignments, one a line.
    pub text: String,
    /// How many descriptors came with it.
    pub fds: usize,
    /// When it was received.
    pub at: Instant,
}

impl Message {
    /// The value of `key=` in this message, if it is there.
    pub fn field(&self, key: &str) -> Option<&str> {
        field(&self.text, key)
    }
}

/// One kept descriptor.
#[derive(Debug)]
pub struct Kept {
    /// Its name.
    pub name: String,
    /// The descriptor.
    pub fd: OwnedFd,
    /// Dropped on `POLLHUP`/`POLLERR` (no `FDPOLL=0`).
    pub poll: bool,
}

/// What systemd knows of the service.
#[derive(Debug, Default)]
pub struct State {
    /// The main process, whose messages are accepted (`None` between a
    /// worker's death and the next start).
    pub main_pid: Option<u32>,
    /// Every accepted message, in order.
    pub messages: Vec<Message>,
    /// The descriptor store, newest first.
    pub store: Vec<Kept>,
    /// Descriptors offered again while kept already (not kept twice).
    pub duplicates: usize,
    /// Kept descriptors dropped on `POLLHUP`/`POLLERR`, by name.
    pub hung_up: Vec<String>,
    /// What systemd would refuse, drop or warn about.
    pub violations: Vec<String>,
    /// Received while no main pid was known yet (the worker is being
    /// started): handled once it is.
    pending: Vec<Received>,
}

impl State {
    /// The names of the kept descriptors, newest first.
    pub fn names(&self) -> Vec<String> {
        self.store.iter().map(|k| k.name.clone()).collect()
    }

    /// How many descriptors are kept under `name`.
    pub fn count(&self, name: &str) -> usize {
        self.store.iter().filter(|k| k.name == name).count()
    }

    /// Accepted messages that contain the line `line`.
    pub fn with_line(&self, line: &str) -> Vec<&Message> {
        self.messages
            .iter()
            .filter(|m| m.text.lines().any(|l| l == line))
            .collect()
    }

    /// Accepted messages that set `key=`.
    pub fn with_field(&self, key: &str) -> Vec<&Message> {
        self.messages
            .iter()
            .filter(|m| m.field(key).is_some())
            .collect()
    }

    /// Handles one message as systemd does.
    fn apply(&mut self, received: Received, store_max: usize) {
        let Received {
            pid,
            payload,
            fds,
            truncated,
            at,
        } = received;
        if truncated {
            self.violations
                .push(format!("a message from {pid:?} was truncated"));
            return;
        }
        let Some(pid) = pid else {
            self.violations
                .push("a message came without credentials".into());
            return;
        };
        if self.main_pid != Some(pid) {
            // NotifyAccess=main.
            self.violations.push(format!(
                "a message from {pid}, not the main process {:?}: {:?}",
                self.main_pid,
                String::from_utf8_lossy(&payload)
            ));
            return;
        }
        if payload.len() > NOTIFY_BUFFER_MAX {
            self.violations
                .push(format!("a message of {} bytes", payload.len()));
            return;
        }
        if payload.contains(&0) {
            self.violations
                .push("a message with a NUL byte in it".into());
            return;
        }
        let Ok(text) = String::from_utf8(payload) else {
            self.violations.push("a message that is not UTF-8".into());
            return;
        };
        for line in text.lines() {
            if !line.contains('=') {
                self.violations
                    .push(format!("{line:?} is not an assignment in {text:?}"));
            }
        }
        let message = Message {
            pid,
            text: text.clone(),
            fds: fds.len(),
            at,
        };
        let name = field(&text, "FDNAME");
        let valid_name = match name {
            Some(n) if fdname_is_valid(n) => Some(n.to_owned()),
            Some(n) => {
                self.violations
                    .push(format!("FDNAME={n:?} breaks systemd's rules; ignored"));
                None
            }
            None => None,
        };
        if field(&text, "FDSTORE") == Some("1") {
            if valid_name.is_none() {
                self.violations.push(format!(
                    "descriptors kept as \"stored\" (no usable FDNAME): {text:?}"
                ));
            }
            let name = valid_name.clone().unwrap_or_else(|| "stored".into());
            let poll = field(&text, "FDPOLL") != Some("0");
            for fd in fds {
                if self.store.iter().any(|k| same_fd(&k.fd, &fd)) {
                    self.duplicates += 1;
                    continue;
                }
                if self.store.len() >= store_max {
                    self.violations.push(format!(
                        "{name}: more than FileDescriptorStoreMax={store_max} descriptors"
                    ));
                    continue;
                }
                // systemd's LIST_PREPEND: the newest at the head.
                self.store.insert(
                    0,
                    Kept {
                        name: name.clone(),
                        fd,
                        poll,
                    },
                );
            }
        } else if !fds.is_empty() {
            self.violations.push(format!(
                "{} descriptors without FDSTORE=1 (closed): {text:?}",
                fds.len()
            ));
        }
        if field(&text, "FDSTOREREMOVE") == Some("1") {
            match valid_name {
                Some(name) => self.store.retain(|k| k.name != name),
                None => self
                    .violations
                    .push(format!("FDSTOREREMOVE=1 without a usable name: {text:?}")),
            }
        }
        self.messages.push(message);
    }
}

/// The value of `key=` in a notify message.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// Whether two descriptors are the same kernel object (systemd's `same_fd`
/// falls back to this when it cannot use `kcmp(2)`; a socket or a memfd
/// has one open file per inode unless reopened through `/proc`).
fn same_fd(a: &OwnedFd, b: &OwnedFd) -> bool {
    let stat = |fd: &OwnedFd| {
        // SAFETY: fstat writes one struct stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if x == y)
}

/// One datagram as it came off the socket.
#[derive(Debug)]
struct Received {
    /// The sender, from `SCM_CREDENTIALS`.
    pid: Option<u32>,
    /// The message.
    payload: Vec<u8>,
    /// The descriptors, from `SCM_RIGHTS`.
    fds: Vec<OwnedFd>,
    /// The message or its control data was cut short.
    truncated: bool,
    /// When it was received.
    at: Instant,
}

/// Receives one datagram without waiting, with the crate's own receive
/// (as the keeper does); `None` when none is queued. One byte more than
/// systemd reads, to see a message that is too long.
fn receive(socket: &OwnedFd) -> Option<Received> {
    let datagram = receive_notify(socket.as_fd(), NOTIFY_BUFFER_MAX + 1)?;
    Some(Received {
        pid: datagram.sender.and_then(|pid| u32::try_from(pid).ok()),
        payload: datagram.payload,
        fds: datagram.fds,
        truncated: datagram.truncated,
        at: Instant::now(),
    })
}

/// What the notify thread and the test share.
struct Shared {
    /// The notify socket.
    socket: OwnedFd,
    /// What systemd knows.
    state: Mutex<State>,
    /// Signalled whenever messages were handled.
    changed: Condvar,
    /// Tells the thread to end.
    stop: AtomicBool,
    /// `FileDescriptorStoreMax=`.
    store_max: usize,
}

impl Shared {
    /// Handles every datagram queued on the socket, and drops kept
    /// descriptors that hung up (unless kept with `FDPOLL=0`).
    fn drain(&self, state: &mut State) {
        while let Some(received) = receive(&self.socket) {
            if state.main_pid.is_none() {
                state.pending.push(received);
            } else {
                state.apply(received, self.store_max);
            }
        }
        let mut i = 0;
        while i < state.store.len() {
            if state.store[i].poll && hung_up(&state.store[i].fd) {
                let gone = state.store.remove(i);
                state.hung_up.push(gone.name);
            } else {
                i += 1;
            }
        }
        self.changed.notify_all();
    }
}

/// Whether `fd` reports `POLLHUP` or `POLLERR` now.
fn hung_up(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0 }
}

/// systemd, as far as one service with a descriptor store needs it. Its
/// socket is read by a thread of its own; dropping it stops the thread,
/// closes every kept descriptor and removes its directory.
pub struct FakeSystemd {
    /// What the thread and the test share.
    shared: Arc<Shared>,
    /// The thread that reads the socket.
    thread: Option<JoinHandle<()>>,
    /// The directory of the socket.
    dir: PathBuf,
    /// The socket's path.
    path: PathBuf,
}

impl FakeSystemd {
    /// Binds the notify socket (a path, as systemd's is) in a new
    /// directory; keeps at most `store_max` descriptors
    /// (`FileDescriptorStoreMax=`).
    pub fn start(store_max: usize) -> Result<FakeSystemd> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rp-systemd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let path = dir.join("notify");
        let socket = bind_notify(&path)?;
        let shared = Arc::new(Shared {
            socket,
            state: Mutex::default(),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            store_max,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            while !worker.stop.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: worker.socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, TICK.as_millis() as i32) };
                let mut state = worker.state.lock().unwrap();
                worker.drain(&mut state);
            }
        });
        Ok(FakeSystemd {
            shared,
            thread: Some(thread),
            dir,
            path,
        })
    }

    /// The notify socket's path (`$NOTIFY_SOCKET`).
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Locks what systemd knows, after handling every message queued.
    pub fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.shared.state.lock().unwrap();
        self.shared.drain(&mut state);
        state
    }

    /// Waits, at most `timeout`, until `done` holds; fails naming `what`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&State) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if done(&state) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "systemd saw no {what} within {timeout:?}; it keeps {:?}, its messages: {:?}",
                    state.names(),
                    state.messages.iter().map(|m| &m.text).collect::<Vec<_>>()
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(TICK))
                .unwrap()
                .0;
            self.shared.drain(&mut state);
        }
    }

    /// The worker `pid` was started: its messages are accepted from now
    /// on, those it sent already too (systemd knows the pid at fork).
    pub fn started(&self, pid: u32) {
        let mut state = self.shared.state.lock().unwrap();
        state.main_pid = Some(pid);
        for received in std::mem::take(&mut state.pending) {
            state.apply(received, self.shared.store_max);
        }
        self.shared.drain(&mut state);
    }

    /// The main process is gone (and reaped): what it sent before it died
    /// is handled, as systemd does before it acts on the death; then no
    /// process may speak until the next start.
    pub fn exited(&self) {
        let mut state = self.shared.state.lock().unwrap();
        self.shared.drain(&mut state);
        state.main_pid = None;
    }

    /// A command that starts `program` with `args` as systemd would start
    /// the service's main process now: every kept descriptor at 3, 4, …
    /// (newest first), `$LISTEN_FDS`, `$LISTEN_FDNAMES`, `$LISTEN_PID`
    /// (when there are any), `$NOTIFY_SOCKET`. `wrapper` (say, `strace
    /// -D …`) runs in front of it and must exec it in place, keeping the
    /// pid. Returns the command and the names passed, in order.
    pub fn command(
        &self,
        wrapper: &[&OsStr],
        program: &Path,
        args: &[&OsStr],
    ) -> Result<(Command, Vec<String>)> {
        let state = self.state();
        let names = state.names();
        let mut passed: Vec<OwnedFd> = Vec::with_capacity(state.store.len());
        for kept in &state.store {
            passed.push(
                kept.fd
                    .try_clone()
                    .context("duplicating a kept descriptor")?,
            );
        }
        drop(state);
        // The shell knows its pid ($$) and keeps it through `exec`.
        let script = if passed.is_empty() {
            r#"exec "$@""#
        } else {
            r#"LISTEN_PID=$$; export LISTEN_PID; exec "$@""#
        };
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(wrapper)
            .arg(program)
            .args(args);
        for var in [
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "LISTEN_PID",
            "NOTIFY_SOCKET",
            "RESUMEPROXYD_KEEPER",
        ] {
            command.env_remove(var);
        }
        command.env("NOTIFY_SOCKET", &self.path);
        if !passed.is_empty() {
            command
                .env("LISTEN_FDS", passed.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        let count = passed.len() as RawFd;
        let mut moved: Vec<RawFd> = vec![-1; passed.len()];
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe calls (fcntl, dup2) on memory prepared here.
        unsafe {
            command.pre_exec(move || {
                // First above the range, then into it: no descriptor is
                // overwritten before it was moved. (A close-on-exec
                // descriptor of the test's own that sits in the range is
                // replaced; it would have been closed by the exec anyway.)
                let above = LISTEN_FDS_START + count;
                for (fd, slot) in passed.iter().zip(moved.iter_mut()) {
                    *slot = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in moved.iter().enumerate() {
                    // dup2 leaves the new descriptor open across exec.
                    if libc::dup2(*fd, LISTEN_FDS_START + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok((command, names))
    }

    /// Starts `resumeproxyd` as the service's main process (see
    /// [`command`](Self::command)), listening on `listen` (the kept
    /// listener's address after the first start), sending sessions to
    /// `127.0.0.1:target`, with `extra` flags; returns it once it listens,
    /// and the names passed.
    pub fn start_relay(
        &self,
        wrapper: &[&OsStr],
        listen: &str,
        target: u16,
        extra: &[&str],
    ) -> Result<(RelayProcess, Vec<String>)> {
        let program = Path::new(env!("CARGO_BIN_EXE_resumeproxyd"));
        let (command, names) = self.command(wrapper, program, &[])?;
        let relay = RelayProcess::start_command(command, listen, target, extra)?;
        self.started(relay.pid());
        Ok((relay, names))
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A unix datagram socket bound at `path` that receives its senders'
/// credentials (`SO_PASSCRED`), as systemd's notify socket does.
fn bind_notify(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.len() >= addr.sun_path.len() {
        bail!("{} is too long for a unix socket", path.display());
    }
    for (slot, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = b as libc::c_char;
    }
    // SAFETY: socket/bind/setsockopt with valid pointers; results checked.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
            bail!(
                "bind {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            bail!("SO_PASSCRED: {}", std::io::Error::last_os_error());
        }
        Ok(socket)
    }
}
