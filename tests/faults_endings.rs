//! The fault suite, endings (as root in network namespaces; skipped with a
//! printed reason otherwise): what happens when a session cannot go on.
//!
//! * An outage longer than the relay's `--grace`, whether the network is
//!   still down when the client gives up or comes back after the relay has
//!   given up: the relay ends the session and closes its connection to sshd
//!   (sshd's side of it is gone, seen with `ss` in the server namespace);
//!   the client exits 255 with one clear line, and so does ssh.
//! * The relay killed and restarted mid-transfer: the new relay does not
//!   know the session; the client learns that at its first reconnect and
//!   exits 255 with one clear line within seconds, without hanging.

mod support;

use anyhow::{bail, ensure, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::data::write_random_file;
use support::faults::Bench;
use support::process::{output_within, Watched, IDLE};
use support::relay::{proxy_command_with_status, wait_for_status, RelayProcess, CLIENT_FLAGS};

/// What the client says when its session is gone.
const GONE: &str = "is gone from relay";

/// A bench whose client also writes its exit status to `client.status`.
fn bench(relay_flags: &[&str], rate: &str) -> Result<Option<Bench>> {
    let Some(mut bench) = Bench::start(rate, relay_flags)? else {
        return Ok(None);
    };
    let status = bench.sshd.dir().join("client.status");
    bench.proxy =
        proxy_command_with_status(bench.relay.addr(), bench.sshd.port(), CLIENT_FLAGS, &status);
    Ok(Some(bench))
}

/// An ssh session that stays open doing nothing, once it has logged in.
fn idle_session(bench: &Bench) -> Result<Watched> {
    Watched::idle(bench.ssh(false, &[], IDLE))
}

/// TCP connections whose local port is sshd's, in the server namespace
/// (sshd's side of the relay's connections), as `ss` lists them.
fn sshd_connections(bench: &Bench) -> Result<Vec<String>> {
    let mut ss = Command::new("ss");
    ss.args(["-Htn", "state", "connected"])
        .arg(format!("( sport = :{} )", bench.sshd.port()));
    let (status, stderr, stdout) =
        output_within(&mut bench.lab.in_server(&ss), Duration::from_secs(10))?;
    ensure!(status.success(), "ss: {status}: {stderr}");
    Ok(stdout.lines().map(str::to_owned).collect())
}

/// Waits until sshd has no connection left (the relay closed its own).
fn wait_sshd_closed(bench: &Bench, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let conns = sshd_connections(bench)?;
        if conns.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            bail!("sshd still has connections after {timeout:?}: {conns:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ssh exited 255, the client too, with exactly one clear line about it.
fn ended_with_255(ssh: &mut Watched, status: &Path, timeout: Duration) -> Result<String> {
    // The client (ssh's ProxyCommand) may still be writing its line to the
    // stderr it shares with ssh when ssh exits: read to the end of it.
    let (exit, stderr) = ssh.finish(timeout, Duration::from_secs(10))?;
    ensure!(exit.code() == Some(255), "ssh: {exit}; stderr:\n{stderr}");
    let client = wait_for_status(status, Duration::from_secs(10))?;
    ensure!(client == "255", "client exit status {client}");
    let gone: Vec<_> = stderr.lines().filter(|l| l.contains(GONE)).collect();
    ensure!(gone.len() == 1, "want one clear line; stderr:\n{stderr}");
    ensure!(gone[0].starts_with("resumeproxy: session "), "{}", gone[0]);
    Ok(gone[0].to_owned())
}

#[test]
fn an_outage_past_grace_ends_both_sides_while_the_network_is_still_down() -> Result<()> {
    let Some(bench) = bench(&["--grace", "3s"], "")? else {
        return Ok(());
    };
    let status = bench.sshd.dir().join("client.status");
    let mut ssh = idle_session(&bench)?;
    ensure!(
        !sshd_connections(&bench)?.is_empty(),
        "no connection to sshd"
    );
    let started = Instant::now();
    let _partition = bench.lab.partition()?;
    let expired = bench
        .relay
        .wait_for_log("expired", Duration::from_secs(20))?;
    let closed = wait_sshd_closed(&bench, Duration::from_secs(10))?;
    // The client, still cut off, gives up a little after the grace period.
    let line = ended_with_255(&mut ssh, &status, Duration::from_secs(30))?;
    ensure!(line.contains("longer than its grace period"), "{line}");
    eprintln!(
        "network down for good: relay {expired:?}; sshd's connection gone {closed:.1?} later; \
         client gave up {:.1?} after the outage began: {line}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn an_outage_past_grace_ends_the_session_once_the_network_is_back() -> Result<()> {
    let Some(bench) = bench(&["--grace", "3s"], "")? else {
        return Ok(());
    };
    let status = bench.sshd.dir().join("client.status");
    let mut ssh = idle_session(&bench)?;
    let partition = bench.lab.partition()?;
    bench
        .relay
        .wait_for_log("expired", Duration::from_secs(20))?;
    wait_sshd_closed(&bench, Duration::from_secs(10))?;
    partition.lift()?;
    let back = Instant::now();
    let line = ended_with_255(&mut ssh, &status, Duration::from_secs(10))?;
    ensure!(line.contains("expired"), "{line}");
    eprintln!(
        "network back after the grace period: client exited 255 {:.1?} later: {line}",
        back.elapsed()
    );
    Ok(())
}

#[test]
fn a_relay_restarted_mid_transfer_ends_the_session_with_255_promptly() -> Result<()> {
    let Some(mut bench) = bench(&[], "100mbit")? else {
        return Ok(());
    };
    let status = bench.sshd.dir().join("client.status");
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, 256 << 20, 61)?;
    let mut ssh = Watched::spawn(
        bench.ssh(false, &[], &format!("cat {}", src.display())),
        Stdio::null(),
        Stdio::from(std::fs::File::create(&dst)?),
    )?;
    ssh.wait_for_bytes(&dst, 8 << 20, Duration::from_secs(30))?;
    let addr = bench.relay.addr();
    bench.relay.kill();
    let killed = Instant::now();
    // The kernel closed the killed relay's connection to sshd.
    wait_sshd_closed(&bench, Duration::from_secs(10))?;
    bench.relay = RelayProcess::start_in_netns(
        bench.lab.server_ns(),
        &addr.to_string(),
        bench.sshd.port(),
        &[],
    )?;
    let line = ended_with_255(&mut ssh, &status, Duration::from_secs(15))?;
    let took = killed.elapsed();
    ensure!(line.contains("restarted"), "{line}");
    ensure!(took < Duration::from_secs(10), "took {took:?}");
    let got = std::fs::metadata(&dst)?.len();
    ensure!(got < 256 << 20, "all arrived before the kill?");
    eprintln!(
        "relay killed at {} MiB and restarted: ssh exited 255 {took:.1?} after the kill: {line}",
        got >> 20
    );
    Ok(())
}
