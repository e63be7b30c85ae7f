//! The system calls the keeper makes, each behind a small function: starting
//! the worker between `fork` and `execve`, its signals (a signalfd), its
//! notify socket, the descriptor limit, and a child's exit status in words.
//! What the keeper decides with them is in [`super`].

use crate::relay::durable::fd_store::{unix_addr, LISTEN_FDS_START};
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

/// The child's side of [`super::Keeper::start_worker`]: puts the kept descriptors
/// at 3, 4, …, undoes the keeper's signal mask, dies with the keeper, and
/// runs the worker. Never returns.
///
/// # Safety
/// Runs between `fork` and `execve`: only async-signal-safe calls.
pub(super) unsafe fn child(
    keeper: libc::pid_t,
    sources: &[RawFd],
    temps: &mut [RawFd],
    listen_pid: &mut [u8; 32],
    exe: &CString,
    argv: &[*const libc::c_char],
    env: &[*const libc::c_char],
) -> ! {
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // The worker does not outlive the keeper (it would hold the ports).
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    if libc::getppid() != keeper {
        libc::_exit(1);
    }
    // First above the target range, then down into it: no target overwrites
    // a source not yet moved.
    let above = LISTEN_FDS_START + sources.len() as RawFd;
    for (src, tmp) in sources.iter().zip(temps.iter_mut()) {
        *tmp = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, above);
        if *tmp < 0 {
            libc::_exit(1);
        }
    }
    for (i, tmp) in temps.iter().enumerate() {
        // dup2 clears close-on-exec on the new descriptor.
        if libc::dup2(*tmp, LISTEN_FDS_START + i as RawFd) < 0 {
            libc::_exit(1);
        }
    }
    // LISTEN_PID=<this pid>, written into the prepared buffer.
    let mut pid = libc::getpid() as u32;
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let prefix = b"LISTEN_PID=".len();
    for i in 0..n {
        listen_pid[prefix + i] = digits[n - 1 - i];
    }
    listen_pid[prefix + n] = 0;
    libc::execve(exe.as_ptr(), argv.as_ptr(), env.as_ptr());
    libc::_exit(127);
}

/// Raises the soft limit on open descriptors to the hard one: the keeper
/// and its worker each hold two per session.
pub(super) fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Blocks the signals the keeper handles and returns a signalfd for them.
pub(super) fn block_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The keeper's notify socket, receiving the sender's credentials.
pub(super) fn bind_notify(name: &str) -> io::Result<OwnedFd> {
    let (addr, len) = unix_addr(name.as_bytes())?;
    // SAFETY: socket/bind/setsockopt with checked results and valid pointers.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        if libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
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
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }
}

pub(super) fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, sig) };
}

/// How a child ended, in words.
pub(super) fn describe_exit(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            libc::SIGKILL => "SIGKILL".to_string(),
            libc::SIGSEGV => "SIGSEGV".to_string(),
            libc::SIGABRT => "SIGABRT (a panic or an abort)".to_string(),
            libc::SIGTERM => "SIGTERM".to_string(),
            other => format!("signal {other}"),
        };
        format!("was killed by {name}")
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}

pub(super) fn exit_code(status: libc::c_int) -> ExitCode {
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::FAILURE
    }
}
