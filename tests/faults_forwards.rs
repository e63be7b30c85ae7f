//! The fault suite, forwards and multiplexing (as root in network
//! namespaces; skipped with a printed reason otherwise): `ssh -L`, `ssh -R`
//! and `ssh -D` (a SOCKS5 client in the test) each carrying one long-lived
//! TCP stream to an echo server, and a ControlMaster master with several
//! multiplexed commands at once, all through `ProxyCommand resumeproxy`
//! while the client's address changes, TCP is reset for a second and the
//! link goes silent past `--dead-after`.
//!
//! What it proves: every stream comes back whole (sha256 of what was sent
//! equals sha256 of the echo: nothing lost, duplicated or reordered), each
//! multiplexed command's output or input equal by sha256 and exit 0, ssh
//! exits 0, and data flows again within a few seconds of the network being
//! back. Beside them runs the baseline: a download through resumeproxy and
//! one by plain ssh over the same veth through each fault (address change,
//! reset storm, short partition, flapping), printed as `BASELINE` lines.

mod support;

use anyhow::{ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use support::faults::{
    connect_in, echo_server, free_port_in, inject_while_flowing, serial, side_by_side,
    socks5_connect, Bench, EchoStream, EVERY_FAULT, PARTITION, RESET_STORM, RUN_TIMEOUT,
};
use support::master::{check_copies, copied, still_running, ControlMaster};
use support::netns::Fault;
use support::process::Watched;

/// The veth's rate for the forwards, both ways.
const RATE: &str = "400mbit";
/// Each echoed stream (so twice this crosses the link).
const STREAM: usize = 64 << 20;
/// Bytes between faults.
const STEP: u64 = 12 << 20;
/// No read or write of a stream blocks longer than this.
const STALL: Duration = Duration::from_secs(30);

/// Runs ssh with `forward` flags and a remote command that lasts until its
/// stdin closes; opens the stream with `open` once the forward is up, and
/// echoes [`STREAM`] bytes through it across every fault.
fn stream_through_forward(
    bench: &Bench,
    what: &str,
    forward: &[&str],
    open: &dyn Fn() -> Result<TcpStream>,
) -> Result<()> {
    let started = Instant::now();
    let mut ssh = Watched::spawn(
        bench.ssh(false, forward, "cat > /dev/null"),
        Stdio::piped(),
        Stdio::null(),
    )?;
    let stream = open().with_context(|| format!("{what}: {}", ssh.stderr.text()))?;
    let stream = EchoStream::start(stream, STREAM, 5, STALL)?;
    let progress = || Ok(stream.received());
    let outcomes = {
        let mut running = || Ok(stream.running());
        inject_while_flowing(
            bench,
            &progress,
            &mut running,
            &EVERY_FAULT,
            STEP,
            STREAM as u64,
        )
        .with_context(|| format!("{what}; ssh's stderr:\n{}", ssh.stderr.text()))?
    };
    stream
        .finish(RUN_TIMEOUT)
        .with_context(|| format!("{what}; ssh's stderr:\n{}", ssh.stderr.text()))?;
    drop(ssh.child.stdin.take());
    let status = ssh.wait(Duration::from_secs(20))?;
    ensure!(
        status.success(),
        "{what}: ssh {status}: {}",
        ssh.stderr.text()
    );
    ensure!(outcomes.len() == 3, "{} faults", outcomes.len());
    eprintln!(
        "{what}: {} MiB each way in {:.1?}",
        STREAM >> 20,
        started.elapsed()
    );
    for o in &outcomes {
        eprintln!("  {o}");
    }
    Ok(())
}

#[test]
fn local_forward_carries_a_stream_through_every_fault() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    let echo = echo_server(bench.lab.server_ns())?;
    let port = free_port_in(bench.lab.client_ns())?;
    let spec = format!("127.0.0.1:{port}:127.0.0.1:{echo}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    stream_through_forward(&bench, "ssh -L", &["-L", &spec], &|| {
        connect_in(bench.lab.client_ns(), addr, Duration::from_secs(20))
    })
}

#[test]
fn remote_forward_carries_a_stream_through_every_fault() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    let echo = echo_server(bench.lab.client_ns())?;
    let port = free_port_in(bench.lab.server_ns())?;
    let spec = format!("127.0.0.1:{port}:127.0.0.1:{echo}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    stream_through_forward(&bench, "ssh -R", &["-R", &spec], &|| {
        connect_in(bench.lab.server_ns(), addr, Duration::from_secs(20))
    })
}

#[test]
fn dynamic_forward_carries_a_socks_stream_through_every_fault() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    let echo = echo_server(bench.lab.server_ns())?;
    let port = free_port_in(bench.lab.client_ns())?;
    let spec = format!("127.0.0.1:{port}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    stream_through_forward(&bench, "ssh -D", &["-D", &spec], &|| {
        let mut stream = connect_in(bench.lab.client_ns(), addr, Duration::from_secs(20))?;
        socks5_connect(&mut stream, echo)?;
        Ok(stream)
    })
}

#[test]
fn control_master_with_multiplexed_commands_survives_every_fault() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    let dir = bench.sshd.dir();
    let master = ControlMaster::start(&bench, &dir.join("ctl"))?;
    let size = 48 << 20;
    let (pairs, mut commands) = master.four_copies(dir, size, 40)?;
    let started = Instant::now();
    let progress = || Ok(copied(&pairs));
    let outcomes = {
        let mut running = || Ok(still_running(&mut commands)? > 0);
        inject_while_flowing(
            &bench,
            &progress,
            &mut running,
            &EVERY_FAULT,
            40 << 20,
            4 * size,
        )
        .with_context(|| format!("master's stderr:\n{}", master.ssh.stderr.text()))?
    };
    check_copies(&mut commands, &pairs, RUN_TIMEOUT)?;
    master.finish().context("after the faults")?;
    eprintln!(
        "ControlMaster, 4 multiplexed commands of {} MiB: {:.1?}",
        size >> 20,
        started.elapsed()
    );
    for o in &outcomes {
        eprintln!("  {o}");
    }
    ensure!(outcomes.len() == 3, "{} faults", outcomes.len());
    Ok(())
}

/// Applies a fault; says what it did.
type Inject<'a> = &'a dyn Fn() -> Result<String>;

/// The baseline, measured by the same harness: a download through
/// resumeproxy and one by plain ssh straight to sshd, side by side over the
/// same veth, through each fault. Light (20 Mbit/s), so it runs beside the
/// heavy tests. Plain ssh must not survive the reset storm and the address
/// change; resumeproxy must survive everything.
#[test]
fn baseline_plain_ssh_beside_resumeproxy_through_each_fault() -> Result<()> {
    let Some(bench) = Bench::start("20mbit", &[])? else {
        return Ok(());
    };
    let flapping = || -> Result<String> {
        let breaks = bench.lab.flap(
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::from_secs(30),
            &AtomicBool::new(false),
        )?;
        Ok(format!("{} breaks, one every 2 s", breaks.len()))
    };
    let cases: [(&str, Inject, u64); 4] = [
        (
            "address change",
            &|| bench.lab.apply(Fault::AddressChange),
            16,
        ),
        ("reset storm 1s", &|| bench.lab.apply(RESET_STORM), 16),
        ("silent partition 2.5s", &|| bench.lab.apply(PARTITION), 16),
        ("flapping, 2s for 30s", &flapping, 48),
    ];
    let mut report = String::new();
    for (name, fault, mib) in cases {
        let (proxied, plain, detail) =
            side_by_side(&bench, mib << 20, 2 << 20, Duration::from_secs(12), fault)
                .with_context(|| name.to_owned())?;
        let line = format!(
            "BASELINE {name} ({detail}):\n  resumeproxy: {proxied}\n  plain ssh:   {plain}\n"
        );
        eprint!("{line}");
        report.push_str(&line);
        if name.starts_with("address") || name.starts_with("reset") {
            ensure!(!plain.survived(), "plain ssh survived the {name}");
        }
    }
    Ok(())
}
