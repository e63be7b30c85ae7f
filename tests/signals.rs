//! A client asked to end ends its session: the real OpenSSH client and
//! server through the real `resumeproxy` and `resumeproxyd`, with the
//! ProxyCommand killed by SIGTERM (as paramiko's `ProxyCommand.close()`
//! does), SIGINT and SIGHUP while ssh still runs.
//!
//! * Connected: within a second of the signal the relay has logged the
//!   session's end and sshd's connection from the relay is gone (`ss`); and
//!   since each end frees the session's place in the per-source count, a
//!   relay allowing 2 sessions per source takes 2 more after each round,
//!   round after round (6 sessions in all).
//! * Behind a target that does not close when its input ends (so the session
//!   cannot end by itself), with the client run as a library would (its
//!   pipes held by the test) and killed with SIGTERM right after 256 KiB were
//!   written to it: everything written reaches the target (sha256), the
//!   client closes the session, and the relay drops the target's connection
//!   within a second.
//! * Cut off from the relay (a silent partition in the fault injector): the
//!   client does not wait long for a relay it cannot reach; it is gone
//!   within a second of the signal.

mod support;

use anyhow::{bail, ensure, Context, Result};
use resumeproxy::demo::fault::FaultInjector;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::data::{random_bytes, sha256_bytes};
use support::process::{children_named, signal as kill, Watched};
use support::relay::{proxy_command, RelayProcess, CLIENT, LOST};
use support::sshd::TestSshd;

/// What the relay logs when a session is over, however it ended.
const ENDED: &str = "session ended";
/// The promise: the session is gone on the relay within this long.
const GONE_WITHIN: Duration = Duration::from_secs(1);

/// The `resumeproxy` process ssh runs as its ProxyCommand (ssh execs it
/// through the shell, so it is ssh's child).
fn proxy_of(ssh: &Watched) -> Result<u32> {
    let parent = ssh.child.id();
    children_named(parent, "resumeproxy")
        .first()
        .copied()
        .with_context(|| format!("ssh {parent} has no resumeproxy child"))
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// sshd's side of its TCP connections (the relay's, here), as `ss` lists them.
fn sshd_connections(sshd: &TestSshd) -> Result<usize> {
    let out = Command::new("ss")
        .args(["-Htn", "state", "connected"])
        .arg(format!("( sport = :{} )", sshd.port()))
        .output()
        .context("running ss")?;
    ensure!(out.status.success(), "ss: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Waits until sshd has at most `n` connections; returns how long it took.
fn wait_sshd_connections(sshd: &TestSshd, n: usize, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let now = sshd_connections(sshd)?;
        if now <= n {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            bail!("sshd still has {now} connections after {timeout:?} (want {n})");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_signalled_client_ends_its_session_on_the_relay_within_a_second() -> Result<()> {
    const PER_SOURCE: usize = 2;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &["--max-sessions-per-source", "2"])?;
    let proxy = proxy_command(relay.addr(), sshd.port(), "--dead-after 2s");
    let mut ended = 0;
    let mut figures = Vec::new();
    for (signal, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        // As many sessions as one source may hold: the next round gets its
        // own only if these are freed.
        let mut sessions = Vec::new();
        for _ in 0..PER_SOURCE {
            let ssh = sshd
                .idle_session(&proxy)
                .with_context(|| format!("a new session before the {name} round"))?;
            let pid = proxy_of(&ssh)?;
            sessions.push((ssh, pid));
        }
        ensure!(
            sshd_connections(&sshd)? >= PER_SOURCE,
            "sshd has fewer connections than sessions"
        );
        for (ssh, pid) in &mut sessions {
            let before = relay.count(ENDED);
            let open = sshd_connections(&sshd)?;
            kill(*pid, signal)?;
            let signalled = Instant::now();
            let line = relay
                .wait_for_count(ENDED, before + 1, GONE_WITHIN)
                .with_context(|| format!("{name}: the relay did not end the session"))?;
            let logged = signalled.elapsed();
            let closed = wait_sshd_connections(&sshd, open - 1, GONE_WITHIN)
                .with_context(|| format!("{name}: sshd's connection stayed"))?;
            let gone = signalled.elapsed();
            ensure!(gone <= GONE_WITHIN, "{name}: gone only after {gone:?}");
            let exit = ssh.wait(Duration::from_secs(5))?;
            ensure!(exit.code() == Some(255), "ssh after {name}: {exit}");
            // The client says nothing of its own after a signal.
            let said = ssh.stderr.starting_with(CLIENT);
            ensure!(said.is_empty(), "{name}: the client said {said:?}");
            ended += 1;
            figures.push(format!(
                "{name}: relay logged the end {logged:.0?} after the signal, \
                 sshd's connection gone after {:.0?} ({})",
                logged.max(closed),
                line.split("session ended").nth(1).unwrap_or("").trim()
            ));
        }
    }
    ensure!(ended == 3 * PER_SOURCE);
    for line in figures {
        eprintln!("{line}");
    }
    Ok(())
}

#[test]
fn a_signalled_client_cut_off_from_its_relay_exits_within_a_second() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let injector = runtime.block_on(FaultInjector::start(relay.addr()))?;
    let proxy = proxy_command(injector.addr(), sshd.port(), "--dead-after 1s");
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")] {
        let mut ssh = sshd.idle_session(&proxy)?;
        let pid = proxy_of(&ssh)?;
        // Cut off, and noticed: the client is reconnecting when the signal
        // comes.
        injector.set_partitioned(true);
        ssh.stderr.wait_for(0, LOST, Duration::from_secs(10))?;
        kill(pid, signal)?;
        let signalled = Instant::now();
        while alive(pid) {
            ensure!(
                signalled.elapsed() < Duration::from_secs(5),
                "{name}: the client still runs after {:?}",
                signalled.elapsed()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = signalled.elapsed();
        ensure!(took <= GONE_WITHIN, "{name}: the client took {took:?}");
        ssh.wait(Duration::from_secs(5))?;
        injector.set_partitioned(false);
        eprintln!("{name} while reconnecting: the client exited {took:.0?} after the signal");
    }
    Ok(())
}

/// What a target that holds its connections saw of one.
struct Held {
    /// Every byte that arrived.
    received: Vec<u8>,
    /// When the relay's side of the connection was found closed for good.
    closed_at: Instant,
}

/// A target that reads each connection to its end and then, unlike sshd,
/// keeps it open, writing a byte every few milliseconds until the relay's
/// side is closed for good (a write fails). Sends what it saw.
fn holding_target() -> Result<(u16, std::sync::mpsc::Receiver<Held>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut received = Vec::new();
                let _ = stream.read_to_end(&mut received);
                while stream.write_all(b".").is_ok() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = tx.send(Held {
                    received,
                    closed_at: Instant::now(),
                });
            });
        }
    });
    Ok((port, rx))
}

#[test]
fn sigterm_from_a_library_closes_a_session_that_cannot_end_by_itself() -> Result<()> {
    const WRITTEN: usize = 256 << 10;
    let (target, held) = holding_target()?;
    let relay = RelayProcess::start(target, &[])?;
    let dir = std::env::temp_dir().join(format!("resumeproxy-signals-{}", std::process::id()));
    let mut client = Command::new(env!("CARGO_BIN_EXE_resumeproxy"))
        .args(["--relay-port", &relay.addr().port().to_string()])
        .args(["--relay-fingerprint", &support::relay::test_key().1])
        .args(["--transport", "tcp", "--dead-after", "2s"])
        .arg(relay.addr().ip().to_string())
        .arg(target.to_string())
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = client.stdin.take().context("stdin")?;
    let data = random_bytes(WRITTEN, 5);
    relay.wait_for_log("session started", Duration::from_secs(10))?;
    // All of it written (the last of it may still sit in the pipe), then
    // the signal at once, as paramiko's close() would.
    stdin.write_all(&data)?;
    let pid = client.id();
    kill(pid, libc::SIGTERM)?;
    let signalled = Instant::now();
    let line = relay.wait_for_log(ENDED, GONE_WITHIN)?;
    let logged = signalled.elapsed();
    let seen = held
        .recv_timeout(GONE_WITHIN)
        .context("the relay kept its connection to the target")?;
    let closed = seen.closed_at.duration_since(signalled);
    let exit = support::process::wait_timeout(&mut client, Duration::from_secs(5))?;
    drop(stdin);
    assert_eq!(
        seen.received.len(),
        WRITTEN,
        "bytes that reached the target"
    );
    assert_eq!(sha256_bytes(&seen.received), sha256_bytes(&data), "sha256");
    ensure!(
        line.contains("client closed it") && line.contains("SIGTERM"),
        "{line}"
    );
    ensure!(
        closed <= GONE_WITHIN,
        "the target's connection closed after {closed:?}"
    );
    ensure!(exit.success(), "the client, having told the relay: {exit}");
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)?;
    ensure!(stderr.is_empty(), "the client said: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "SIGTERM right after {} KiB: all of it delivered; relay logged the end {logged:.0?} \
         and closed the target's connection {closed:.0?} after the signal",
        WRITTEN >> 10
    );
    Ok(())
}
