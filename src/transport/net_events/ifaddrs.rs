//! The interface that carries an address, from `getifaddrs` (Unix).

use super::Interface;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The interface with `addr` among `getifaddrs`' entries; `up` if it is
/// up and running (`IFF_UP`, `IFF_RUNNING`).
pub(super) fn interface_of(addr: IpAddr) -> Option<Interface> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs made.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        // SAFETY: a non-null ifa_addr points at a sockaddr of the
        // family it names, which selects the type read.
        let here = unsafe { address_of(entry.ifa_addr) };
        if here != Some(addr) || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated interface name.
        let index = unsafe { libc::if_nametoindex(entry.ifa_name) };
        if index == 0 {
            continue;
        }
        let flags = entry.ifa_flags;
        let up = flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_RUNNING as u32 != 0;
        found = Some(Interface { index, up });
        break;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The IP address in `sa`, if it is an IPv4 or IPv6 one.
///
/// # Safety
/// `sa` is null or points at a sockaddr whose `sa_family` names its type.
unsafe fn address_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*sa.cast::<libc::sockaddr_in>();
            Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
        }
        libc::AF_INET6 => {
            let sin6 = &*sa.cast::<libc::sockaddr_in6>();
            Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
        }
        _ => None,
    }
}
