//! The relay's listening sockets: taken back from the store when an earlier
//! worker left them there, else bound anew and handed to the store.
//!
//! A kept listener never stopped listening: connections that arrived while
//! no worker ran wait in its queue and are accepted by the next one. A kept
//! socket on another address than the configured one (the settings changed
//! between two starts) is closed and the new address bound.

use super::durable::{Store, TCP_LISTENER, UDP_SOCKET};
use super::RelayConfig;
use crate::transport::quic;
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The TCP listener on the configured address.
pub(super) fn tcp(config: &RelayConfig, store: &mut Store) -> io::Result<TcpListener> {
    if let Some(fd) = store.take(TCP_LISTENER) {
        let kept = std::net::TcpListener::from(fd);
        match kept.local_addr() {
            Ok(addr) if same_place(addr, config.listen) => {
                kept.set_nonblocking(true)?;
                return TcpListener::from_std(kept);
            }
            Ok(addr) => {
                tracing::info!(
                    "the listening address changed from {addr} to {}",
                    config.listen
                );
                store.forget(TCP_LISTENER);
            }
            Err(e) => {
                tracing::warn!("a kept TCP listener is unusable ({e}); binding anew");
                store.forget(TCP_LISTENER);
            }
        }
    }
    let listener = std::net::TcpListener::bind(config.listen)?;
    listener.set_nonblocking(true)?;
    if let Err(e) = store.keep(TCP_LISTENER, &[&listener]) {
        tracing::warn!("the TCP listener could not be kept: {e}; a restart will not find it");
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
