//! Starting like resuming: the real OpenSSH client and server through the
//! real `resumeproxy` and `resumeproxyd`, with faults at the very start.
//!
//! * A relay that starts listening only after the client began (nothing on
//!   its port: connections refused), over TCP and over `auto`: the client
//!   says once, after a second, that the relay is not answering yet and
//!   that it retries; the session opens as soon as the relay listens.
//! * The first connections reset at once, cut in the TLS handshake, and cut
//!   after the relay's first answer (a forwarder in front of the relay): the
//!   session opens on the next attempt, with no word to the user.
//! * What cannot get better still ends at once (a key that is not the
//!   pinned one), and a relay that never comes ends the client with 255 and
//!   the last attempt's reason when `--connect-timeout` is over.

mod support;

use anyhow::{ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::process::Watched;
use support::relay::{proxy_command, RelayProcess, CLIENT};
use support::sshd::{free_port, TestSshd};

/// What the client says when the start takes long.
const NOT_YET: &str = "not answering yet";

#[test]
fn a_relay_that_starts_late_is_waited_for_over_tcp_and_auto() -> Result<()> {
    let sshd = TestSshd::start()?;
    for transport in ["tcp", "auto"] {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let flags = format!("--transport {transport} --connect-timeout 20s");
        let proxy = proxy_command(addr, sshd.port(), &flags);
        let started = Instant::now();
        let mut ssh = Watched::spawn(
            sshd.ssh_command(Some(&proxy), "echo late but there"),
            Stdio::null(),
            Stdio::piped(),
        )?;
        let said = ssh.stderr.wait_for(0, NOT_YET, Duration::from_secs(10))?;
        let said_after = started.elapsed();
        let relay = RelayProcess::start_on(&addr.to_string(), sshd.port(), &[])?;
        let listening = Instant::now();
        let opened = relay.wait_for_log("session started", Duration::from_secs(10))?;
        let waited = listening.elapsed();
        let exit = ssh.wait(Duration::from_secs(30))?;
        let mut out = String::new();
        ssh.child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        ensure!(
            exit.success(),
            "{transport}: ssh {exit}: {}",
            ssh.stderr.text()
        );
        assert_eq!(out, "late but there\n");
        let lines = ssh.stderr.starting_with(CLIENT);
        ensure!(
            lines == [said.clone()],
            "{transport}: one line, and only that: {lines:?}"
        );
        ensure!(
            said == format!("resumeproxy: relay at {addr} not answering yet (connection refused: nothing listens on its port), retrying…"),
            "{said}"
        );
        ensure!(
            said_after >= Duration::from_secs(1) && said_after < Duration::from_secs(3),
            "said after {said_after:?}"
        );
        eprintln!(
            "{transport}: '{said}' {said_after:.1?} after the start; session over {} \
             {waited:.2?} after the relay listened",
            if opened.contains("transport=quic") {
                "QUIC"
            } else {
                "TCP"
            },
        );
    }
    Ok(())
}

/// How the forwarder treats the nth connection.
#[derive(Debug, Clone, Copy)]
enum Treat {
    /// Reset at once.
    Reset,
    /// Read the client's first bytes (its TLS hello), then reset.
    CutInHandshake,
    /// Forward the client's hello and the relay's first answer, then reset.
    CutAfterAnswer,
    /// Forward both ways.
    Forward,
}

/// A forwarder to `relay` that treats its connections as `plan` says, in
/// order, and forwards the rest. Returns its address and how many it took.
fn forwarder(relay: SocketAddr, plan: Vec<Treat>) -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(client) = stream else { break };
            count.fetch_add(1, Ordering::SeqCst);
            let treat = plan.get(n).copied().unwrap_or(Treat::Forward);
            std::thread::spawn(move || {
                let _ = handle(client, relay, treat);
            });
        }
    });
    Ok((addr, accepted))
}

/// Closes `stream` with a RST.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn handle(mut client: TcpStream, relay: SocketAddr, treat: Treat) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    match treat {
        Treat::Reset => reset(client),
        Treat::CutInHandshake => {
            let _ = client.read(&mut buf)?;
            reset(client);
        }
        Treat::CutAfterAnswer => {
            let mut upstream = TcpStream::connect(relay)?;
            let n = client.read(&mut buf)?;
            upstream.write_all(&buf[..n])?;
            let n = upstream.read(&mut buf)?;
            client.write_all(&buf[..n])?;
            reset(client);
            reset(upstream);
        }
        Treat::Forward => {
            let upstream = TcpStream::connect(relay)?;
            let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
                let _ = u2.shutdown(Shutdown::Write);
            });
            let (mut u, mut c) = (upstream, client);
            let _ = std::io::copy(&mut u, &mut c);
            let _ = c.shutdown(Shutdown::Write);
            let _ = up.join();
        }
    }
    Ok(())
}

#[test]
fn resets_and_cut_handshakes_at_the_start_are_retried() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let plan = vec![Treat::Reset, Treat::CutInHandshake, Treat::CutAfterAnswer];
    let (front, accepted) = forwarder(relay.addr(), plan)?;
    let proxy = proxy_command(front, sshd.port(), "");
    let started = Instant::now();
    let mut ssh = Watched::spawn(
        sshd.ssh_command(Some(&proxy), "echo through"),
        Stdio::null(),
        Stdio::piped(),
    )?;
    let exit = ssh.wait(Duration::from_secs(30))?;
    ensure!(exit.success(), "ssh {exit}: {}", ssh.stderr.text());
    let took = started.elapsed();
    let attempts = accepted.load(Ordering::SeqCst);
    ensure!(attempts == 4, "{attempts} connections");
    let lines = ssh.stderr.starting_with(CLIENT);
    ensure!(lines.is_empty(), "the client said {lines:?}");
    eprintln!("3 connections reset or cut at the start: ssh done after {took:.2?}, 4 attempts");
    Ok(())
}

#[test]
fn what_cannot_get_better_ends_at_once_and_a_relay_that_never_comes_at_the_timeout() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    // Another key than the relay's.
    let wrong = resumeproxy::transport::identity::Fingerprint::of_spki(b"no relay has this key");
    let flags = format!("--relay-fingerprint {wrong}");
    let started = Instant::now();
    let mut ssh = Watched::spawn(
        sshd.ssh_command(
            Some(&proxy_command(relay.addr(), sshd.port(), &flags)),
            "true",
        ),
        Stdio::null(),
        Stdio::null(),
    )?;
    let exit = ssh.wait(Duration::from_secs(10))?;
    let took = started.elapsed();
    ensure!(exit.code() == Some(255), "{exit}");
    ensure!(
        ssh.stderr
            .text()
            .contains("RELAY IDENTIFICATION HAS CHANGED"),
        "{}",
        ssh.stderr.text()
    );
    ensure!(took < Duration::from_secs(1), "a changed key took {took:?}");

    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let proxy = proxy_command(nobody, sshd.port(), "--connect-timeout 2s");
    let started = Instant::now();
    let mut ssh = Watched::spawn(
        sshd.ssh_command(Some(&proxy), "true"),
        Stdio::null(),
        Stdio::null(),
    )?;
    let exit = ssh.wait(Duration::from_secs(10))?;
    let gave_up = started.elapsed();
    ensure!(exit.code() == Some(255), "{exit}");
    // ssh's stderr is read on a thread: let it catch up.
    ssh.stderr
        .wait_for(0, "cannot reach relay", Duration::from_secs(5))?;
    let lines = ssh.stderr.starting_with(CLIENT);
    ensure!(lines.len() == 2, "{lines:?}");
    ensure!(lines[0].contains(NOT_YET), "{lines:?}");
    ensure!(
        lines[1].starts_with(&format!("resumeproxy: cannot reach relay at {nobody}: "))
            && lines[1].contains("nothing listens on its port"),
        "{lines:?}"
    );
    ensure!(
        gave_up >= Duration::from_millis(1500) && gave_up < Duration::from_secs(4),
        "gave up after {gave_up:?}"
    );
    eprintln!(
        "changed key: exit 255 after {took:.2?}; nobody listening, --connect-timeout 2s: \
         exit 255 after {gave_up:.2?}: {}",
        lines[1]
    );
    Ok(())
}
