//! systemd's notify and file descriptor store protocol: the worker's side,
//! and the supervisor's receive ([`receive_notify`]).
//!
//! The worker tells its supervisor how it is (`READY=1`, `STATUS=…`) with a
//! datagram to `$NOTIFY_SOCKET`, and hands it descriptors to keep
//! (`FDSTORE=1` with the descriptors attached as `SCM_RIGHTS`, named by
//! `FDNAME=`), or asks it to close them (`FDSTOREREMOVE=1`). On the next
//! start it gets them back as descriptors 3, 4, … with `$LISTEN_FDS`,
//! `$LISTEN_FDNAMES` and `$LISTEN_PID` ([`take_stored`]). The supervisor is
//! systemd (see `sd_notify(3)`, `sd_listen_fds_with_names(3)` and
//! `FileDescriptorStoreMax=` in `systemd.service(5)`), or the relay's own
//! keeper ([`super::keeper`]), which speaks the same protocol.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;
/// The first descriptor passed by `$LISTEN_FDS` (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The supervisor's notify socket, from `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
}

impl Notifier {
    /// The notify socket named by `$NOTIFY_SOCKET`, or `None` when nobody
    /// supervises this process.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) if !name.is_empty() => Notifier::connect(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the socket `name`: a path, or an abstract name
    /// written with a leading `@`.
    pub fn connect(name: &OsString) -> io::Result<Notifier> {
        let (addr, addr_len) = unix_addr(name.as_bytes())?;
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Notifier {
            socket,
            addr,
            addr_len,
        })
    }

    /// Sends `state` (`READY=1`, `STATUS=…`, `STOPPING=1`, …).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.send(state.as_bytes(), &[])
    }

    /// Asks the supervisor to keep `fds` under `name`, returned on the next
    /// start. `FDPOLL=0`: a socket whose peer hung up is kept all the same
    /// (a session may still owe its client the last bytes sshd sent).
    pub fn store(&self, name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        check_name(name)?;
        let message = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0");
        self.send(message.as_bytes(), fds)
    }

    /// Asks the supervisor to close what it keeps under `name`.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        self.send(format!("FDSTOREREMOVE=1\nFDNAME={name}").as_bytes(), &[])
    }

    fn send(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many descriptors for one message",
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let fd_bytes = std::mem::size_of_val(raw.as_slice());
        // SAFETY: CMSG_SPACE only computes a size.
        let space = if raw.is_empty() {
            0
        } else {
            unsafe { libc::CMSG_SPACE(fd_bytes as u32) as usize }
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&self.addr as *const libc::sockaddr_un) as *mut libc::c_void;
        msg.msg_namelen = self.addr_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer holds CMSG_SPACE(fd_bytes) bytes,
            // so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    fd_bytes,
                );
            }
        }
        loop {
            // SAFETY: `msg` points at live buffers (see above).
            let rc = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// One notify datagram as the supervisor receives it.
#[derive(Debug)]
pub struct NotifyDatagram {
    /// The sender's process, from `SCM_CREDENTIALS` (the socket needs
    /// `SO_PASSCRED`).
    pub sender: Option<libc::pid_t>,
    /// The message, at most the length asked for.
    pub payload: Vec<u8>,
    /// The descriptors, from `SCM_RIGHTS`, closed when dropped.
    pub fds: Vec<OwnedFd>,
    /// The message or its control data was cut short.
    pub truncated: bool,
}

/// Receives one datagram from a notify socket without waiting, with up to
/// `max_len` bytes of message, up to [`MAX_FDS_PER_MESSAGE`] descriptors
/// (close-on-exec) and the sender's credentials; `None` when none is
/// queued or receiving failed.
pub fn receive_notify(socket: BorrowedFd<'_>, max_len: usize) -> Option<NotifyDatagram> {
    let mut payload = vec![0u8; max_len];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let fd_space = MAX_FDS_PER_MESSAGE * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes sizes.
    let space = unsafe {
        libc::CMSG_SPACE(fd_space as u32)
            + libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
    } as usize;
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; its pointers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes live buffers.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let n = usize::try_from(n).ok()?;
    let mut fds = Vec::new();
    let mut sender = None;
    // SAFETY: walks the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
            if (*cmsg).cmsg_level == libc::SOL_SOCKET {
                if (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                } else if (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                    && len >= std::mem::size_of::<libc::ucred>()
                {
                    sender = Some(std::ptr::read_unaligned(data.cast::<libc::ucred>()).pid);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    payload.truncate(n.min(max_len));
    Some(NotifyDatagram {
        sender,
        payload,
        fds,
        truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
    })
}

/// Names are what systemd accepts: 1–255 printable ASCII characters, no `:`.
fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid descriptor name"),
        ))
    }
}

/// A `sockaddr_un` for a path, or an abstract name written `@name`.
pub(crate) fn unix_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, abstract_name) = match name.strip_prefix(b"@") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    // A path needs its terminating NUL; an abstract name starts with one.
    if bytes.is_empty() || bytes.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "notify socket name is empty or too long",
        ));
    }
    let start = usize::from(abstract_name);
    for (slot, &b) in addr.sun_path[start..].iter_mut().zip(bytes) {
        *slot = b as libc::c_char;
    }
    let path_offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = path_offset + start + bytes.len() + usize::from(!abstract_name);
    Ok((addr, len as libc::socklen_t))
}

/// Descriptors handed over by the supervisor, each with its name.
#[derive(Debug, Default)]
pub struct Stored {
    /// In the order they were passed.
    pub fds: Vec<(String, OwnedFd)>,
}

impl Stored {
    /// Takes the first descriptor named `name`.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let at = self.fds.iter().position(|(n, _)| n == name)?;
        Some(self.fds.remove(at).1)
    }

    /// Takes every descriptor named `name`.
    pub fn take_all(&mut self, name: &str) -> Vec<OwnedFd> {
        let (taken, kept) = std::mem::take(&mut self.fds)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.fds = kept;
        taken.into_iter().map(|(_, fd)| fd).collect()
    }
}

/// Takes the descriptors passed with `$LISTEN_FDS` (if they are meant for
/// this process: `$LISTEN_PID`), marks them close-on-exec, and removes the
/// variables so that no child inherits them.
pub fn take_stored() -> io::Result<Stored> {
    let var = |name: &str| std::env::var(name).ok();
    let (count, pid, names) = (var("LISTEN_FDS"), var("LISTEN_PID"), var("LISTEN_FDNAMES"));
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let Some(count) = count else {
        return Ok(Stored::default());
    };
    if pid.as_deref().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Stored::default());
    }
    let count: RawFd = count
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "LISTEN_FDS is not a number"))?;
    let names: Vec<String> = names
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut stored = Stored::default();
    for i in 0..count.max(0) {
        let fd = LISTEN_FDS_START + i;
        // SAFETY: fcntl on a number only inspects it.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the supervisor passed `fd` to this process to own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        stored.fds.push((name, owned));
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_systemds_rules() {
        assert!(check_name("session-00ff").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a:b").is_err());
        assert!(check_name("with space").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn abstract_and_path_addresses_have_their_lengths() {
        let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        let (addr, len) = unix_addr(b"@abc").expect("abstract");
        assert_eq!(len as usize, offset + 4);
        assert_eq!(addr.sun_path[0], 0);
        let (_, len) = unix_addr(b"/run/x").expect("path");
        assert_eq!(len as usize, offset + 7);
        assert!(unix_addr(&[b'a'; 200]).is_err());
    }
}
