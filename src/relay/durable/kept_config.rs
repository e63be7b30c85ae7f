//! The relay's last good configuration, kept with its sockets.
//!
//! A restart (a crash, `systemctl restart`, an upgrade) must not depend on
//! a file someone may be in the middle of editing. So the text of the
//! config file, as it was when it last read well, is kept in the store (a
//! sealed `memfd` named `config-N`, N counting up), and a new worker that
//! finds the file broken runs with that text instead, saying loudly that
//! the file is broken. A first start has nothing kept: a broken file stops
//! it. The store's side (which one is kept, replacing it) is
//! [`Store::take_config`](super::Store::take_config) and
//! [`Store::keep_config`](super::Store::keep_config); this module writes
//! and reads the memory file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Kept configurations are named with this prefix and their number.
pub(crate) const CONFIG_PREFIX: &str = "config-";
/// Longest text kept or read back (the config file's own bound).
pub const MAX_KEPT: usize = 1 << 20;

/// The name of the `generation`th kept configuration.
pub(crate) fn name(generation: u64) -> String {
    format!("{CONFIG_PREFIX}{generation}")
}

/// The number in a kept configuration's name, if `name` is one.
pub(crate) fn generation(name: &str) -> Option<u64> {
    name.strip_prefix(CONFIG_PREFIX)?.parse().ok()
}

/// A new `memfd` holding `text`, sealed: nothing can change it any more.
pub fn to_memfd(text: &str) -> io::Result<OwnedFd> {
    if text.len() > MAX_KEPT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "configuration too long to keep",
        ));
    }
    let cname = CString::new("resumeproxyd-config").map_err(io::Error::other)?;
    // SAFETY: memfd_create with a valid C string.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut written = 0;
    while written < text.len() {
        let rest = &text.as_bytes()[written..];
        // SAFETY: writes at most `rest.len()` bytes from `rest`.
        let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        written += n as usize;
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The text a kept `memfd` holds, read from its start (at most
/// [`MAX_KEPT`] bytes).
pub fn from_memfd(fd: &OwnedFd) -> io::Result<String> {
    // SAFETY: fstat writes one struct stat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = usize::try_from(stat.st_size).map_err(io::Error::other)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG || len > MAX_KEPT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a kept configuration",
        ));
    }
    let mut buf = vec![0u8; len];
    let mut read = 0;
    while read < len {
        let rest = &mut buf[read..];
        let offset = libc::off_t::try_from(read).map_err(io::Error::other)?;
        // SAFETY: reads at most `rest.len()` bytes into `rest`.
        let n =
            unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), offset) };
        match n {
            n if n < 0 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            0 => break,
            n => read += n as usize,
        }
    }
    buf.truncate(read);
    String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_text_reads_back_and_cannot_change() {
        let text = "grace = \"1h\"\nmax_sessions = 10\n";
        let fd = to_memfd(text).unwrap();
        assert_eq!(from_memfd(&fd).unwrap(), text);
        // Sealed: a write fails.
        // SAFETY: a one-byte write from a local.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert!(n < 0);
        assert_eq!(from_memfd(&to_memfd("").unwrap()).unwrap(), "");
        assert_eq!(generation(&name(7)), Some(7));
        assert_eq!(generation("session-00"), None);
        assert_eq!(generation("config-x"), None);
    }
}
