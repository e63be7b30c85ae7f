//! A balancer's PROXY protocol header, either version: the real OpenSSH
//! client and a test sshd, `resumeproxy` as ProxyCommand, and between it
//! and `resumeproxyd --proxy-protocol-from 127.0.0.1` a forwarder that
//! starts each connection with a header naming a client address of its
//! own making, as nginx (`proxy_protocol on`: version 1, a line of text)
//! and HAProxy (`send-proxy-v2`: version 2, binary) do. The session works
//! and the relay logs the address the header names; a header that breaks
//! version 1's format is refused, with the reason in the relay's log.

mod support;

use anyhow::{ensure, Result};
use resumeproxy::proto::proxy_header::SIGNATURE;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use support::relay::{proxy_command, RelayProcess};
use support::sshd::TestSshd;

/// Which header the forwarder writes.
#[derive(Clone, Copy)]
enum Header {
    /// nginx's: `PROXY TCP4 …\r\n`.
    V1,
    /// HAProxy's.
    V2,
    /// Version 1 with two spaces where one belongs.
    BadV1,
}

/// The header for a client at `client` connecting to `to`.
fn header(kind: Header, client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(t)) = (client, to) else {
        unreachable!("IPv4 only here")
    };
    match kind {
        Header::V1 => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            c.ip(),
            t.ip(),
            c.port(),
            t.port()
        )
        .into_bytes(),
        Header::BadV1 => format!(
            "PROXY TCP4  {} {} {} {}\r\n",
            c.ip(),
            t.ip(),
            c.port(),
            t.port()
        )
        .into_bytes(),
        Header::V2 => {
            let mut out = SIGNATURE.to_vec();
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&t.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&t.port().to_be_bytes());
            out
        }
    }
}

/// A balancer on loopback: each connection to it goes to `relay`, after a
/// header saying it came from `client`. Runs until the test ends.
fn balancer(relay: SocketAddr, kind: Header, client: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for incoming in listener.incoming() {
            let Ok(down) = incoming else { continue };
            let Ok(mut up) = TcpStream::connect(relay) else {
                continue;
            };
            if up.write_all(&header(kind, client, relay)).is_err() {
                continue;
            }
            let (Ok(mut down2), Ok(mut up2)) = (down.try_clone(), up.try_clone()) else {
                continue;
            };
            let mut down = down;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down2, &mut up2);
                let _ = up2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok(addr)
}

#[test]
fn both_versions_name_the_client_and_a_bad_line_is_refused() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &["--proxy-protocol-from", "127.0.0.1"])?;
    for (i, kind) in [Header::V1, Header::V2].into_iter().enumerate() {
        let client = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7 + i as u8), 40000 + i as u16));
        let front = balancer(relay.addr(), kind, client)?;
        let proxy = proxy_command(front, sshd.port(), "");
        let out = sshd
            .ssh_command(Some(&proxy), "echo through-the-balancer")
            .output()?;
        ensure!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == "through-the-balancer",
            "the session through the balancer: ssh {}, {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let started = relay.wait_for_log(&format!("client={client}"), Duration::from_secs(10))?;
        ensure!(
            started.contains("session started"),
            "the relay did not log the header's client: {started}"
        );
    }
    let client = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 99), 40099));
    let front = balancer(relay.addr(), Header::BadV1, client)?;
    let proxy = proxy_command(front, sshd.port(), "--connect-timeout 1s");
    let out = sshd.ssh_command(Some(&proxy), "true").output()?;
    ensure!(
        out.status.code() == Some(255),
        "a session behind a broken header: ssh {}",
        out.status
    );
    relay.wait_for_log(
        "connection refused: PROXY protocol v1 header",
        Duration::from_secs(10),
    )?;
    ensure!(
        !relay.log().contains(&format!("client={client}")),
        "a broken header's address was believed:\n{}",
        relay.log()
    );
    Ok(())
}
