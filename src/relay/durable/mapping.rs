//! Shared memory that outlives the process: a `memfd`, mapped.
//!
//! The descriptor goes to the store with the session's sshd connection; a
//! new worker maps the same pages and finds every byte where the old one
//! left it. A crash cannot tear what is written here: the pages belong to
//! the kernel, not to the process, and an aligned 8-byte store is all or
//! nothing.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A `memfd` mapped shared into this process.
#[derive(Debug)]
pub struct Mapping {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; what lives in it says how it
// may be accessed (atomics for the header, the ring's rule for the ring).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new zeroed `memfd` of `len` bytes (pages are only allocated when
    /// written), mapped. `name` shows in `/proc/PID/fd` and `/proc/PID/maps`.
    pub fn create(name: &str, len: usize) -> io::Result<Mapping> {
        let cname = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: memfd_create with a valid C string.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Mapping::map(fd, len)
    }

    /// Maps a `memfd` kept from an earlier process, whole.
    pub fn open(fd: OwnedFd) -> io::Result<Mapping> {
        // SAFETY: fstat writes one struct stat.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a memory file",
            ));
        }
        let len = usize::try_from(stat.st_size).map_err(io::Error::other)?;
        Mapping::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty memory file",
            ));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { fd, ptr, len })
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mappings have a size).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives the pages of `offset..offset + len` back to the system; they
    /// read as zeroes afterwards. Whole pages only: partial ones are kept.
    pub fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        let page = page_size();
        let from = offset.next_multiple_of(page);
        let to = (offset + len).min(self.len) / page * page;
        if to <= from {
            return Ok(());
        }
        // SAFETY: fallocate on our own memfd, within its size.
        let rc = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (to - from) as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for Mapping {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; nothing borrows it any
        // more (borrowers hold an Arc of the mapping).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_pages(m: &Mapping) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; m.len().div_ceil(page)];
        // SAFETY: mincore over our own mapping, one byte per page.
        let rc = unsafe { libc::mincore(m.as_ptr().cast(), m.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn a_second_mapping_sees_what_the_first_wrote_after_it_is_gone() {
        let first = Mapping::create("test", 3 * page_size()).expect("create");
        // SAFETY: within the mapping.
        unsafe { first.as_ptr().add(100).write(42) };
        // SAFETY: dup of our own fd.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(first.as_fd().as_raw_fd())) };
        drop(first);
        let second = Mapping::open(fd).expect("open");
        assert_eq!(second.len(), 3 * page_size());
        // SAFETY: within the mapping.
        assert_eq!(unsafe { second.as_ptr().add(100).read() }, 42);
    }

    #[test]
    fn released_pages_go_back_and_read_as_zero() {
        let page = page_size();
        let m = Mapping::create("test", 8 * page).expect("create");
        // SAFETY: within the mapping.
        unsafe { std::ptr::write_bytes(m.as_ptr(), 7, 8 * page) };
        assert_eq!(resident_pages(&m), 8);
        m.release(page / 2, 6 * page).expect("release");
        // Pages 1..6 are whole inside the range; 0 and 6 only partly.
        assert_eq!(resident_pages(&m), 3);
        // SAFETY: within the mapping.
        unsafe {
            assert_eq!(m.as_ptr().add(2 * page).read(), 0);
            assert_eq!(m.as_ptr().add(page / 2).read(), 7);
        }
    }

    #[test]
    fn a_socket_is_not_a_memory_file() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(Mapping::open(OwnedFd::from(a)).is_err());
    }
}
