//! No watcher on the platforms not named in the parent module: the caller
//! polls.

use super::{Interface, Report};
use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;

/// What one read gave (never, here).
#[allow(dead_code)]
pub(super) enum Received {
    Reports,
    Overrun,
}

/// No socket.
#[derive(Debug)]
pub(super) struct Socket;

impl Socket {
    pub(super) fn open() -> io::Result<Socket> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no network change notifications on this platform",
        ))
    }

    pub(super) async fn recv(&mut self, _into: &mut VecDeque<Report>) -> io::Result<Received> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

pub(super) fn interface_of(_addr: IpAddr) -> Option<Interface> {
    None
}
