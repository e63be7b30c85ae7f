//! The OS's numbers for the errors the transports put in words
//! ([`describe`](super::describe)) or act on ([`addresses`](super::addresses)):
//! `errno` values on Unix; on Windows the WinSock codes (`WSAE…`) its
//! sockets report, and the system's own for a denied access and a broken
//! pipe. Same names everywhere, so the code that matches them is shared.

#[cfg(unix)]
pub(crate) use libc::{
    EACCES, EADDRNOTAVAIL, ECONNREFUSED, ECONNRESET, EHOSTUNREACH, ENETDOWN, ENETUNREACH, EPERM,
    EPIPE, ETIMEDOUT,
};

#[cfg(windows)]
pub(crate) use windows::*;

/// Words for the codes only this platform reports to the client.
#[cfg(unix)]
pub(crate) fn platform_words(_code: i32) -> Option<&'static str> {
    None
}

#[cfg(windows)]
mod windows {
    use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_BROKEN_PIPE};
    use windows_sys::Win32::Networking::WinSock;

    pub(crate) const EPERM: i32 = ERROR_ACCESS_DENIED as i32;
    pub(crate) const EACCES: i32 = WinSock::WSAEACCES;
    pub(crate) const ENETUNREACH: i32 = WinSock::WSAENETUNREACH;
    pub(crate) const EHOSTUNREACH: i32 = WinSock::WSAEHOSTUNREACH;
    pub(crate) const ENETDOWN: i32 = WinSock::WSAENETDOWN;
    pub(crate) const EADDRNOTAVAIL: i32 = WinSock::WSAEADDRNOTAVAIL;
    pub(crate) const ECONNREFUSED: i32 = WinSock::WSAECONNREFUSED;
    pub(crate) const ECONNRESET: i32 = WinSock::WSAECONNRESET;
    pub(crate) const EPIPE: i32 = ERROR_BROKEN_PIPE as i32;
    pub(crate) const ETIMEDOUT: i32 = WinSock::WSAETIMEDOUT;

    /// Words for the codes only Windows reports to the client: WinSock
    /// refusing a kind of socket (as Wine does QUIC's UDP socket).
    pub(crate) fn platform_words(code: i32) -> Option<&'static str> {
        match code {
            WinSock::WSAEOPNOTSUPP => Some("not supported by this system's network stack"),
            WinSock::WSAEAFNOSUPPORT => Some("this system has no network of that address family"),
            _ => None,
        }
    }
}
