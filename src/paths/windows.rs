//! Private files, directories and pipes on Windows: a protected access
//! control list (no inherited entries) that grants this user alone.
//!
//! The list is written in SDDL, with the user's SID from the process's
//! token: `D:P(A;OICI;FA;;;S-1-5-21-…)` for a directory (and, inherited,
//! what is made in it), `D:P(A;;FA;;;…)` for a file, `D:P(A;;GA;;;…)` for a
//! named pipe. A new directory or file gets it as it is made, so it is
//! never open to anyone else for a moment.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::FromRawHandle;
use std::path::{Path, PathBuf};
use std::ptr;
use windows_sys::Win32::Foundation::{
    CloseHandle, LocalFree, ERROR_ALREADY_EXISTS, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    SetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    GetSecurityDescriptorDacl, GetTokenInformation, TokenUser, ACL, DACL_SECURITY_INFORMATION,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY,
    TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateDirectoryW, CreateFileW, FILE_APPEND_DATA, FILE_ATTRIBUTE_NORMAL, FILE_READ_ATTRIBUTES,
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_ALWAYS, SYNCHRONIZE,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

pub(super) fn config_home() -> Option<PathBuf> {
    known_folder("APPDATA")
}

pub(super) fn state_home() -> Option<PathBuf> {
    known_folder("LOCALAPPDATA")
}

fn known_folder(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
}

pub(super) fn is_root() -> bool {
    false
}

pub(super) fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let security = PrivateSecurity::new("OICI", "FA")?;
    let wide = wide(dir.as_os_str());
    // SAFETY: `wide` is a NUL-terminated path; the attributes outlive the call.
    if unsafe { CreateDirectoryW(wide.as_ptr(), security.attributes()) } == 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(ERROR_ALREADY_EXISTS as i32) {
            return Err(e);
        }
    }
    Ok(())
}

pub(super) fn keep_private(dir: &Path) -> io::Result<()> {
    let security = PrivateSecurity::new("OICI", "FA")?;
    let wide = wide(dir.as_os_str());
    // SAFETY: `wide` is NUL-terminated; the list belongs to `security`,
    // which outlives the call; the other pointers may be null.
    let status = unsafe {
        SetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            security.dacl()?,
            ptr::null(),
        )
    };
    if status != 0 {
        let e = io::Error::from_raw_os_error(status as i32);
        return Err(io::Error::new(
            e.kind(),
            format!("cannot make {} private to you: {e}", dir.display()),
        ));
    }
    Ok(())
}

pub(super) fn append_private(path: &Path) -> io::Result<File> {
    let security = PrivateSecurity::new("", "FA")?;
    let wide = wide(path.as_os_str());
    // SAFETY: `wide` is NUL-terminated; the attributes outlive the call; the
    // template handle may be null.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            FILE_APPEND_DATA | FILE_READ_ATTRIBUTES | SYNCHRONIZE,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            security.attributes(),
            OPEN_ALWAYS,
            FILE_ATTRIBUTE_NORMAL,
            ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just opened and own.
    Ok(unsafe { File::from_raw_handle(handle) })
}

/// A security descriptor that grants this user alone, and the
/// `SECURITY_ATTRIBUTES` that carry it to a call that makes an object.
pub struct PrivateSecurity {
    descriptor: PSECURITY_DESCRIPTOR,
    attributes: SECURITY_ATTRIBUTES,
}

impl PrivateSecurity {
    /// Grants `rights` (SDDL: `FA` for a file, `GA` for a pipe) to this
    /// user, with the ACE flags `inherit` (`OICI` for a directory whose
    /// contents inherit it, else empty).
    pub fn new(inherit: &str, rights: &str) -> io::Result<PrivateSecurity> {
        let sddl = format!("D:P(A;{inherit};{rights};;;{})", user_sid()?);
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        let wide = wide(OsStr::new(&sddl));
        // SAFETY: `wide` is NUL-terminated; the descriptor is allocated by
        // the call and freed in Drop.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PrivateSecurity {
            descriptor,
            attributes: SECURITY_ATTRIBUTES {
                nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: descriptor,
                bInheritHandle: 0,
            },
        })
    }

    /// The attributes, for a call that makes an object (valid while `self`
    /// lives).
    pub fn attributes(&self) -> *const SECURITY_ATTRIBUTES {
        &self.attributes
    }

    /// The access list inside the descriptor.
    fn dacl(&self) -> io::Result<*const ACL> {
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = ptr::null_mut();
        // SAFETY: the descriptor is valid while `self` lives; the outputs
        // are written by the call.
        let ok = unsafe {
            GetSecurityDescriptorDacl(self.descriptor, &mut present, &mut dacl, &mut defaulted)
        };
        if ok == 0 || present == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(dacl)
    }
}

impl Drop for PrivateSecurity {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(self.descriptor) };
    }
}

/// This process's user, as a SID string (`S-1-5-21-…`).
fn user_sid() -> io::Result<String> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: the pseudo-handle of this process; the token is closed below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // TOKEN_USER and the SID after it: 8-byte aligned, well over the size
    // of the largest SID (68 bytes) and its header.
    let mut buf = [0u64; 64];
    let mut len = 0u32;
    // SAFETY: `buf` is writable for the length given; the token is open.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenUser,
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf) as u32,
            &mut len,
        )
    };
    let error = io::Error::last_os_error();
    // SAFETY: the token opened above, closed once.
    unsafe { CloseHandle(token) };
    if ok == 0 {
        return Err(error);
    }
    // SAFETY: the call filled `buf` with a TOKEN_USER whose SID points into it.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is valid while `buf` lives; `text` is allocated by the
    // call and freed below.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `text` is a NUL-terminated UTF-16 string from the call.
    let string = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        String::from_utf16_lossy(std::slice::from_raw_parts(text, len))
    };
    // SAFETY: allocated by ConvertSidToStringSidW.
    unsafe { LocalFree(text.cast()) };
    Ok(string)
}

/// `text` as a NUL-terminated UTF-16 string.
fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(Some(0)).collect()
}
