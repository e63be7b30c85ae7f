//! The relay's restarts and stops, as its clients see them: the real
//! OpenSSH client and server through the real `resumeproxy` and
//! `resumeproxyd` (its keeper and worker), over TCP and over `auto` (QUIC).
//!
//! * An upgrade (SIGUSR2 to the keeper): each client is told the relay is
//!   restarting, says so in its one lost line, reconnects at once and
//!   resumes within a second of the new worker listening.
//! * A relay stopped for good (its keeper killed: nothing listens on its
//!   port any more): each client exits 255 with one clear line, not after
//!   the grace period: over TCP once every attempt has been refused for
//!   `RELAY_GONE_AFTER`, with `auto` once the relay's host has also said
//!   for `UDP_GONE_AFTER` that nothing listens on its UDP port.
//! * The same relay behind a balancer that accepts each connection and
//!   closes it when it cannot reach the relay (as nginx's `stream` proxy
//!   does): the clients see no refusal, but every attempt closed before its
//!   TLS handshake; they exit 255 in words after `RELAY_GONE_AFTER` too,
//!   within 40 s.

mod support;

use anyhow::{ensure, Result};
use resumeproxy::client::{RELAY_GONE_AFTER, UDP_GONE_AFTER};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use support::relay::{proxy_command, RelayProcess, CLIENT, RESUMED};
use support::sshd::TestSshd;

#[test]
fn an_upgraded_relay_is_resumed_at_once_with_its_reason() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let mut sessions = Vec::new();
    for transport in ["tcp", "auto"] {
        let flags = format!("--transport {transport} --dead-after 1s");
        let proxy = proxy_command(relay.addr(), sshd.port(), &flags);
        sessions.push((transport, sshd.idle_session(&proxy)?));
    }
    relay.signal(libc::SIGUSR2)?;
    relay.wait_for_count("listening on", 2, Duration::from_secs(20))?;
    let listening = Instant::now();
    for (transport, ssh) in &sessions {
        let resumed = ssh.stderr.wait_for(0, RESUMED, Duration::from_secs(5))?;
        let after = listening.elapsed();
        let lines = ssh.stderr.starting_with(CLIENT);
        ensure!(lines.len() == 2, "{transport}: {lines:?}");
        ensure!(
            lines[0].ends_with("lost (the relay is restarting), reconnecting…"),
            "{transport}: {lines:?}"
        );
        eprintln!(
            "{transport}: {}; {resumed} (seen {after:.2?} after the new worker listened)",
            lines[0]
        );
    }
    let times = relay.log_times("session resumed");
    let started = relay.log_times("listening on");
    ensure!(times.len() == 2 && started.len() == 2, "{}", relay.log());
    for resumed in times {
        let took = resumed.duration_since(started[1]).unwrap_or_default();
        ensure!(
            took <= Duration::from_secs(1),
            "resumed {took:?} after the new worker listened"
        );
    }
    Ok(())
}

#[test]
fn a_relay_stopped_for_good_ends_its_clients_after_relay_gone_after() -> Result<()> {
    let sshd = TestSshd::start()?;
    let mut relay = RelayProcess::start(sshd.port(), &[])?;
    let addr = relay.addr();
    let mut sessions = Vec::new();
    for transport in ["tcp", "auto"] {
        let flags = format!("--transport {transport} --dead-after 1s");
        let proxy = proxy_command(addr, sshd.port(), &flags);
        sessions.push((transport, sshd.idle_session(&proxy)?));
    }
    // The keeper and its worker gone, and their sockets with them. The
    // clock starts before the kill: refusals begin as soon as the worker's
    // sockets close, and `kill` returns only once it saw the worker gone.
    let killed = Instant::now();
    relay.kill();
    let bound = RELAY_GONE_AFTER + Duration::from_secs(10);
    // Each one's exit, as it comes.
    let mut exits = vec![None; sessions.len()];
    while exits.iter().any(Option::is_none) && killed.elapsed() < bound {
        for ((_, ssh), exit) in sessions.iter_mut().zip(&mut exits) {
            if exit.is_none() {
                *exit = ssh
                    .child
                    .try_wait()?
                    .map(|status| (status, killed.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for ((transport, ssh), exit) in sessions.iter_mut().zip(exits) {
        let (exit, took) = match exit {
            Some(exited) => exited,
            None => (ssh.wait(Duration::ZERO)?, killed.elapsed()),
        };
        ensure!(exit.code() == Some(255), "{transport}: ssh {exit}");
        // ssh's stderr is read on a thread: let it catch up.
        ssh.stderr
            .wait_for(0, "is not running", Duration::from_secs(5))?;
        let lines = ssh.stderr.starting_with(CLIENT);
        let (after, why) = match *transport {
            "tcp" => (
                RELAY_GONE_AFTER,
                format!("connections refused for {}s", RELAY_GONE_AFTER.as_secs()),
            ),
            _ => (
                UDP_GONE_AFTER,
                format!(
                    "its host says nothing listens on its UDP port, for {}s",
                    UDP_GONE_AFTER.as_secs()
                ),
            ),
        };
        let want =
            format!("resumeproxy: relay at {addr} is not running ({why}); the session is lost");
        ensure!(lines.len() == 2, "{transport}: {lines:?}");
        ensure!(lines[0].contains("lost ("), "{transport}: {lines:?}");
        ensure!(lines[1] == want, "{transport}: {lines:?}");
        ensure!(
            took >= after && took < after + Duration::from_secs(5),
            "{transport}: exited {took:?} after the relay was killed"
        );
        eprintln!(
            "{transport}: exit 255 {took:.1?} after the relay was killed: {}",
            lines[1]
        );
    }
    Ok(())
}

/// A TCP balancer on loopback in front of `relay`: each connection is
/// passed on to it, or, when the relay cannot be reached, accepted and
/// closed at once (nginx's `stream` proxy with its upstream down). Runs
/// until the test ends.
fn balancer(relay: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for incoming in listener.incoming() {
            let Ok(mut down) = incoming else { continue };
            // Unreachable: `down` is dropped, closed.
            let Ok(mut up) = TcpStream::connect(relay) else {
                continue;
            };
            let (Ok(mut down2), Ok(mut up2)) = (down.try_clone(), up.try_clone()) else {
                continue;
            };
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
fn behind_a_balancer_with_nothing_behind_it_clients_end_in_words() -> Result<()> {
    let sshd = TestSshd::start()?;
    let mut relay = RelayProcess::start(sshd.port(), &[])?;
    let front = balancer(relay.addr())?;
    let mut sessions = Vec::new();
    for transport in ["tcp", "auto"] {
        let flags = format!("--transport {transport} --dead-after 1s");
        let proxy = proxy_command(front, sshd.port(), &flags);
        sessions.push((transport, sshd.idle_session(&proxy)?));
    }
    let killed = Instant::now();
    relay.kill();
    let within = Duration::from_secs(40);
    for (transport, ssh) in &mut sessions {
        let exit = ssh.wait(within.saturating_sub(killed.elapsed()))?;
        let took = killed.elapsed();
        ensure!(exit.code() == Some(255), "{transport}: ssh {exit}");
        ssh.stderr
            .wait_for(0, "is not running", Duration::from_secs(5))?;
        let lines = ssh.stderr.starting_with(CLIENT);
        let want = format!(
            "resumeproxy: relay at {front} is not running (for {}s every connection was closed \
             before its TLS handshake: a balancer with no relay behind it?); the session is lost",
            RELAY_GONE_AFTER.as_secs()
        );
        ensure!(lines.len() == 2, "{transport}: {lines:?}");
        ensure!(lines[1] == want, "{transport}: {lines:?}");
        ensure!(
            took >= RELAY_GONE_AFTER && took < within,
            "{transport}: exited {took:?} after the relay was killed"
        );
        eprintln!(
            "{transport}: exit 255 {took:.1?} after the relay behind the balancer was killed: {}",
            lines[1]
        );
    }
    Ok(())
}
