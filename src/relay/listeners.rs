//! The relay's listening sockets: taken back from the store when an earlier
//! worker left them there, else bound anew and handed to the store.
//!
//! A kept listener never stopped listening: connections that arrived while
//! no worker ran wait in its queue and are accepted by the next one. A kept
//! socket on another address than the configured one (the settings changed
//! between two starts) is closed and the new address bound.

use super::config::RelayConfig;
use super::durable::{Store, AGENT_LISTENER, TCP_LISTENER, UDP_SOCKET};
use crate::transport::quic;
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The TCP listener on the configured address.
pub(super) fn tcp(config: &RelayConfig, store: &mut Store) -> io::Result<TcpListener> {
    kept_or_bound(TCP_LISTENER, "TCP listener", config.listen, store)
}

/// The listener of HAProxy's agent-check, if the configuration asks for
/// one (a kept one it no longer asks for is closed).
pub(super) fn agent(config: &RelayConfig, store: &mut Store) -> io::Result<Option<TcpListener>> {
    match config.fleet.agent_listen {
        Some(addr) => kept_or_bound(AGENT_LISTENER, "agent listener", addr, store).map(Some),
        None => {
            if store.take(AGENT_LISTENER).is_some() {
                store.forget(AGENT_LISTENER);
            }
            Ok(None)
        }
    }
}

/// The TCP listener kept under `name`, if it is on `wanted`; else one bound
/// there and handed to the store.
fn kept_or_bound(
    name: &str,
    what: &str,
    wanted: SocketAddr,
    store: &mut Store,
) -> io::Result<TcpListener> {
    if let Some(fd) = store.take(name) {
        let kept = std::net::TcpListener::from(fd);
        match kept.local_addr() {
            Ok(addr) if same_place(addr, wanted) => {
                kept.set_nonblocking(true)?;
                return TcpListener::from_std(kept);
            }
            Ok(addr) => {
                tracing::info!("the address of the {what} changed from {addr} to {wanted}");
                store.forget(name);
            }
            Err(e) => {
                tracing::warn!("a kept {what} is unusable ({e}); binding anew");
                store.forget(name);
            }
        }
    }
    let listener = std::net::TcpListener::bind(wanted)?;
    listener.set_nonblocking(true)?;
    if let Err(e) = store.keep(name, &[&listener]) {
        tracing::warn!("the {what} could not be kept: {e}; a restart will not find it");
    }
    TcpListener::from_std(listener)
}

/// The UDP socket for QUIC on `addr` (the TCP listener's own address).
pub(super) fn udp(addr: SocketAddr, store: &mut Store) -> io::Result<std::net::UdpSocket> {
    if let Some(fd) = store.take(UDP_SOCKET) {
        let kept = std::net::UdpSocket::from(fd);
        match kept.local_addr() {
            Ok(local) if local == addr => {
                kept.set_nonblocking(true)?;
                return Ok(kept);
            }
            _ => store.forget(UDP_SOCKET),
        }
    }
    let socket = quic::udp_socket(addr)?;
    if let Err(e) = store.keep(UDP_SOCKET, &[&socket]) {
        tracing::warn!("the UDP socket could not be kept: {e}; a restart will not find it");
    }
    Ok(socket)
}

/// Whether a kept listener on `kept` serves the configured `wanted`
/// (port 0 asks for any port: the kept one will do).
fn same_place(kept: SocketAddr, wanted: SocketAddr) -> bool {
    kept.ip() == wanted.ip() && (wanted.port() == 0 || kept.port() == wanted.port())
}
