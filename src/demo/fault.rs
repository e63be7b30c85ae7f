//! A userspace fault injector: a TCP forwarder on loopback that breaks the
//! connections going through it on command.
//!
//! Put it between client and relay (`client → injector → relay`), then:
//!
//! * [`FaultInjector::kill_all`] resets every connection (RST both ways), as
//!   a crashed middlebox or a changed address does;
//! * [`FaultInjector::set_partitioned`] is a silent partition: every
//!   connection, old and new, stays open but forwards nothing, so only a
//!   dead-peer timer can notice. Bytes read but not yet forwarded are lost,
//!   like packets in flight. Connections frozen by a partition stay frozen
//!   after it heals (their ends will have given up on them); new ones work.
//!
//! Used by `resumeproxy demo` and the end-to-end tests.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes copied per read.
const FORWARD_BUFFER: usize = 64 * 1024;

/// What a forwarded connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Frozen,
    Killed,
}

#[derive(Default)]
struct Shared {
    connections: Mutex<Vec<watch::Sender<Mode>>>,
    partitioned: AtomicBool,
    accepted: AtomicU64,
}

impl Shared {
    /// Sets every live connection to `mode`; returns how many there were.
    fn set_all(&self, mode: Mode) -> usize {
        let mut connections = crate::locks::lock(&self.connections);
        connections.retain(|c| !c.is_closed());
        for c in connections.iter() {
            c.send_if_modified(|m| {
                let change = *m != Mode::Killed && *m != mode;
                if change {
                    *m = mode;
                }
                change
            });
        }
        connections.len()
    }
}

/// A breakable TCP forwarder; see the module docs.
pub struct FaultInjector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl FaultInjector {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultInjector> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        Ok(FaultInjector {
            addr,
            shared,
            acceptor,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Resets every current connection; returns how many there were.
    pub fn kill_all(&self) -> usize {
        self.shared.set_all(Mode::Killed)
    }

    /// Starts (`true`) or heals (`false`) a silent partition.
    pub fn set_partitioned(&self, partitioned: bool) {
        self.shared.partitioned.store(partitioned, Ordering::SeqCst);
        if partitioned {
            self.shared.set_all(Mode::Frozen);
        }
    }
}

impl Drop for FaultInjector {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.shared.set_all(Mode::Killed);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let initial = if shared.partitioned.load(Ordering::SeqCst) {
            Mode::Frozen
        } else {
            Mode::Forward
        };
        let (tx, rx) = watch::channel(initial);
        crate::locks::lock(&shared.connections).push(tx);
        tokio::spawn(forward(client, upstream, rx));
    }
}

/// Forwards one connection until both directions end or it is killed.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    // A connection accepted during a partition never reaches upstream.
    if *mode.borrow() == Mode::Frozen {
        until(&mut mode, |m| *m == Mode::Killed).await;
        reset(&client);
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, mode.clone());
        let down = pump(server_read, client_write, mode.clone());
        let both = async { tokio::join!(up, down) };
        tokio::select! {
            _ = both => {}
            _ = until(&mut mode, |m| *m == Mode::Killed) => {}
        }
    }
    if *mode.borrow() == Mode::Killed {
        reset(&client);
        reset(&server);
    }
}

/// Waits until the mode satisfies `f` (or the injector is gone).
async fn until(mode: &mut watch::Receiver<Mode>, f: impl FnMut(&Mode) -> bool) {
    // The guard `wait_for` returns must not live across an await.
    let _ = mode.wait_for(f).await.map(|_| ());
}

/// Makes the coming close send RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Copies one direction; stops forwarding for good once frozen.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; FORWARD_BUFFER];
    let frozen = |m: &Mode| *m != Mode::Forward;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = until(&mut mode, frozen) => break,
        };
        tokio::select! {
            written = to.write_all(&buf[..n]) => if written.is_err() { return },
            _ = until(&mut mode, frozen) => break,
        }
    }
    // Frozen: hold both sockets open, forward nothing, until killed.
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn forwards_then_kills_with_reset_and_freezes_silently() {
        let injector = FaultInjector::start(echo_server().await).await.unwrap();
        let mut c = TcpStream::connect(injector.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        assert_eq!(injector.kill_all(), 1);
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "killed connection must end, got {read:?}"
        );

        let mut c = TcpStream::connect(injector.addr()).await.unwrap();
        injector.set_partitioned(true);
        c.write_all(b"lost").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(silent.is_err(), "a partitioned connection must stay silent");
        injector.set_partitioned(false);
        let mut c = TcpStream::connect(injector.addr()).await.unwrap();
        c.write_all(b"back").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }
}
