//! The watcher on Windows: the IP Helper's change notifications for
//! interfaces, unicast addresses and routes ([`super::ip_helper`] says what
//! each row means).
//!
//! Windows calls the callbacks on threads of its own; each puts its report
//! in a queue the watcher drains. The queue is bounded: past
//! [`MAX_QUEUED`] reports the rest is dropped and the watcher reports an
//! overrun, as the kernel's socket does on Linux.

use super::ip_helper::{self, Change};
use super::{Interface, Report};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::NetworkManagement::IpHelper::{
    CancelMibChangeNotify2, FreeMibTable, GetIfEntry2, GetUnicastIpAddressTable,
    NotifyIpInterfaceChange, NotifyRouteChange2, NotifyUnicastIpAddressChange, MIB_IF_ROW2,
    MIB_IPFORWARD_ROW2, MIB_IPINTERFACE_ROW, MIB_UNICASTIPADDRESS_ROW, MIB_UNICASTIPADDRESS_TABLE,
};
use windows_sys::Win32::NetworkManagement::Ndis::IfOperStatusUp;
use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR_INET};

/// Reports queued at most between two reads.
const MAX_QUEUED: usize = 4096;

/// What one read gave.
pub(super) enum Received {
    /// Reports, added.
    Reports,
    /// Reports were dropped: anything may have changed.
    Overrun,
}

/// What the callbacks and the watcher share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    reports: VecDeque<Report>,
    overrun: bool,
}

impl Shared {
    /// From a callback: queues `report` (`None`: a row that could not be
    /// read, so anything may have changed).
    fn push(&self, report: Option<Option<Report>>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        match report {
            Some(None) => return,
            Some(Some(report)) if queue.reports.len() < MAX_QUEUED => {
                queue.reports.push_back(report)
            }
            _ => queue.overrun = true,
        }
        drop(queue);
        self.ready.notify_one();
    }
}

/// A registration, cancelled when dropped.
struct Registration(HANDLE);

// SAFETY: a notification handle is not tied to the thread that made it.
unsafe impl Send for Registration {}
// SAFETY: as above; it is only read, to cancel it.
unsafe impl Sync for Registration {}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: a handle from a Notify… call, cancelled once. The call
        // returns once no callback of it runs any more.
        unsafe { CancelMibChangeNotify2(self.0) };
    }
}

/// The three registrations and their queue.
pub(super) struct Socket {
    // Cancelled (dropped) before `shared`, which their callbacks use.
    registrations: Vec<Registration>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpHelperNotifications")
    }
}

impl Socket {
    pub(super) fn open() -> io::Result<Socket> {
        let shared = Arc::new(Shared::default());
        let context = Arc::as_ptr(&shared).cast::<c_void>();
        let mut socket = Socket {
            registrations: Vec::new(),
            shared,
        };
        let mut handle: HANDLE = std::ptr::null_mut();
        // SAFETY (the three calls): the callbacks match the signatures the
        // calls expect; `context` points at `shared`, which outlives every
        // registration (see `Socket`'s fields).
        let status = unsafe {
            NotifyIpInterfaceChange(AF_UNSPEC, Some(on_interface), context, false, &mut handle)
        };
        socket.register(status, handle)?;
        let status = unsafe {
            NotifyUnicastIpAddressChange(AF_UNSPEC, Some(on_address), context, false, &mut handle)
        };
        socket.register(status, handle)?;
        let status =
            unsafe { NotifyRouteChange2(AF_UNSPEC, Some(on_route), context, false, &mut handle) };
        socket.register(status, handle)?;
        Ok(socket)
    }

    fn register(&mut self, status: u32, handle: HANDLE) -> io::Result<()> {
        if status != 0 {
            return Err(io::Error::from_raw_os_error(status as i32));
        }
        self.registrations.push(Registration(handle));
        Ok(())
    }

    /// The reports queued since the last read (waiting for one): they go
    /// to `into`.
    pub(super) async fn recv(&mut self, into: &mut VecDeque<Report>) -> io::Result<Received> {
        loop {
            {
                let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                if std::mem::take(&mut queue.overrun) {
                    queue.reports.clear();
                    return Ok(Received::Overrun);
                }
                if !queue.reports.is_empty() {
                    into.extend(queue.reports.drain(..));
                    return Ok(Received::Reports);
                }
            }
            // A report queued since the check left a permit: not missed.
            self.shared.ready.notified().await;
        }
    }
}

/// The shared queue behind a callback's context.
///
/// # Safety
/// `context` is the pointer [`Socket::open`] registered, while it lives.
unsafe fn shared<'a>(context: *const c_void) -> &'a Shared {
    &*context.cast::<Shared>()
}

unsafe extern "system" fn on_interface(
    context: *const c_void,
    row: *const MIB_IPINTERFACE_ROW,
    change: i32,
) {
    let report = row.as_ref().map(|row| {
        ip_helper::interface(Change::from_raw(change), row.InterfaceIndex, row.Connected)
    });
    shared(context).push(report);
}

unsafe extern "system" fn on_address(
    context: *const c_void,
    row: *const MIB_UNICASTIPADDRESS_ROW,
    change: i32,
) {
    let report = row.as_ref().map(|row| {
        ip_helper::address(
            Change::from_raw(change),
            row.InterfaceIndex,
            ip_of(&row.Address),
            row.DadState,
        )
    });
    shared(context).push(report);
}

unsafe extern "system" fn on_route(
    context: *const c_void,
    row: *const MIB_IPFORWARD_ROW2,
    change: i32,
) {
    let report = row.as_ref().map(|row| {
        let prefix = &row.DestinationPrefix;
        ip_helper::route(
            Change::from_raw(change),
            prefix.PrefixLength,
            prefix.Prefix.si_family == AF_INET6,
            row.Loopback,
        )
    });
    shared(context).push(report);
}

/// The IP address in `sa`, if it is IPv4 or IPv6.
fn ip_of(sa: &SOCKADDR_INET) -> Option<IpAddr> {
    // SAFETY: the family, shared by every variant, says which one is there.
    unsafe {
        match sa.si_family {
            AF_INET => Some(Ipv4Addr::from(sa.Ipv4.sin_addr.S_un.S_addr.to_ne_bytes()).into()),
            AF_INET6 => Some(Ipv6Addr::from(sa.Ipv6.sin6_addr.u.Byte).into()),
            _ => None,
        }
    }
}

pub(super) fn interface_of(addr: IpAddr) -> Option<Interface> {
    let mut table: *mut MIB_UNICASTIPADDRESS_TABLE = std::ptr::null_mut();
    // SAFETY: the call allocates the table, freed below.
    if unsafe { GetUnicastIpAddressTable(AF_UNSPEC, &mut table) } != 0 || table.is_null() {
        return None;
    }
    // SAFETY: the table holds NumEntries rows from `Table` on.
    let rows = unsafe {
        std::slice::from_raw_parts((*table).Table.as_ptr(), (*table).NumEntries as usize)
    };
    let found = rows
        .iter()
        .find(|row| ip_of(&row.Address) == Some(addr))
        .map(|row| row.InterfaceIndex);
    // SAFETY: allocated by GetUnicastIpAddressTable, freed once; `rows` is
    // not used after.
    unsafe { FreeMibTable(table.cast()) };
    let index = found?;
    // SAFETY: the row is plain data; all zeroes is valid.
    let mut row: MIB_IF_ROW2 = unsafe { std::mem::zeroed() };
    row.InterfaceIndex = index;
    // SAFETY: a row keyed by its index, as the call expects, filled by it.
    let status = unsafe { GetIfEntry2(&mut row) };
    // An interface whose state cannot be read is taken to be up: a wrong
    // "down" would abandon a working transport, a wrong "up" only leaves
    // its loss to --dead-after.
    Some(Interface {
        index,
        up: status != 0 || row.OperStatus == IfOperStatusUp,
    })
}
