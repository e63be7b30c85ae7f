//! The fault suite, the relay's own process (as root in network namespaces;
//! skipped with a printed reason otherwise): ssh through the relay, the
//! relay's worker killed with SIGKILL three times and upgraded once (a new
//! binary renamed over the one the keeper was started from, then SIGUSR2)
//! while data flows.
//!
//! What it proves: a 1 GiB upload and a 1 GiB download at once, over TLS on
//! TCP and over QUIC, arrive whole (sha256 equal) with ssh exiting 0; a
//! `-L` forward's streams and a ControlMaster's multiplexed commands come
//! through the kills whole too; each client resumes once per new worker,
//! within a second of that worker listening (the relay's own timestamps);
//! and the upgrade really starts the new file from disk.

mod support;

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::data::{hash_in_background, sha256_file};
use support::durable::{
    kill_worker, resumes_after_each_start, show_resumes, upgrade, write_pattern_file, MemDir,
    RelayCopy, CLIENT_RESUMED,
};
use support::faults::{
    connect_in, echo_server, free_port_in, serial, Bench, EchoStream, RUN_TIMEOUT,
};
use support::master::{check_copies, copied, still_running, ControlMaster};
use support::process::{joined, wait_progress, Watched};

/// Each transfer's size.
const SIZE: u64 = 1 << 30;
/// Bound on each wait for the next slice of a workload.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);
/// Kills of the worker, then one upgrade.
const KILLS: usize = 3;
/// Each echoed stream of the forward test.
const STREAM: usize = 48 << 20;
/// No read or write of a stream blocks longer than this.
const STALL: Duration = Duration::from_secs(30);

/// What is done to the relay's worker at the `i`th event (from 0): killed,
/// and the last time upgraded.
/// Says what it did and how soon after the signal a new worker listened.
fn restart(bench: &Bench, copy: &RelayCopy, i: usize) -> Result<String> {
    let (what, took) = if i < KILLS {
        ("SIGKILL", kill_worker(&bench.relay)?)
    } else {
        ("upgrade", upgrade(&bench.relay, copy)?)
    };
    Ok(format!(
        "{what}: a new worker listened {took:.0?} after the signal"
    ))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The whole test, over `transport` (`tcp` or `quic`).
fn gib_each_way_through_kills_and_an_upgrade(transport: &str) -> Result<()> {
    let _serial = serial();
    let copy = RelayCopy::new()?;
    let client = format!("--transport {transport} --dead-after 1s");
    let Some(bench) = Bench::start_program(copy.path(), "", &[], &client)? else {
        return Ok(());
    };
    let files = MemDir::new("durable")?;
    let dir = files.path();
    let (up_src, up_dst) = (dir.join("up.src"), dir.join("up.dst"));
    let (down_src, down_dst) = (dir.join("down.src"), dir.join("down.dst"));
    let made = Instant::now();
    write_pattern_file(&up_src, SIZE, 21)?;
    write_pattern_file(&down_src, SIZE, 22)?;
    eprintln!("files made in {:.1?}", made.elapsed());
    let hashes = (hash_in_background(&up_src), hash_in_background(&down_src));
    let started = Instant::now();
    let ssh = |remote: String| {
        bench
            .lab
            .in_client(&bench.sshd.ssh_command(Some(&bench.proxy), &remote))
    };
    let mut up = Watched::spawn(
        ssh(format!("cat > {}", up_dst.display())),
        Stdio::from(File::open(&up_src)?),
        Stdio::null(),
    )?;
    let mut down = Watched::spawn(
        ssh(format!("cat {}", down_src.display())),
        Stdio::null(),
        Stdio::from(File::create(&down_dst)?),
    )?;
    let kind = if transport == "quic" { "quic" } else { "tls" };
    for n in 1..=2 {
        let line = bench
            .relay
            .wait_for_count("session started", n, Duration::from_secs(20))?;
        ensure!(line.contains(&format!("transport={kind}")), "{line}");
    }

    // An event after each eighth of each transfer: one direction may be
    // faster than the other, and both must still run at every event.
    let step = SIZE / 8;
    let mut marks = (0, 0);
    let mut events = Vec::new();
    for i in 0..=KILLS {
        let at = step * (i as u64 + 1);
        marks.0 = up.wait_for_bytes(&up_dst, at, PROGRESS_TIMEOUT)?;
        marks.1 = down.wait_for_bytes(&down_dst, at, PROGRESS_TIMEOUT)?;
        ensure!(
            up.running()? && down.running()? && file_len(&up_dst) < SIZE,
            "a transfer ended before event {i}: {} and {} bytes",
            file_len(&up_dst),
            file_len(&down_dst)
        );
        let what = restart(&bench, &copy, i)?;
        events.push(format!(
            "at {}/{} MiB, {what}",
            marks.0 >> 20,
            marks.1 >> 20
        ));
    }
    for (name, ssh) in [("upload", &mut up), ("download", &mut down)] {
        let status = ssh.wait(RUN_TIMEOUT)?;
        ensure!(
            status.success(),
            "{name}: ssh {status}; stderr:\n{}\nrelay log:\n{}",
            ssh.stderr.text(),
            bench.relay.log()
        );
    }
    let took = started.elapsed();
    ensure!(
        file_len(&up_dst) == SIZE && file_len(&down_dst) == SIZE,
        "lengths: up {}, down {}",
        file_len(&up_dst),
        file_len(&down_dst)
    );
    assert_eq!(sha256_file(&up_dst)?, joined(hashes.0)?, "upload");
    assert_eq!(sha256_file(&down_dst)?, joined(hashes.1)?, "download");
    let clients = || {
        format!(
            "upload's client:\n{}\ndownload's client:\n{}",
            up.stderr.text(),
            down.stderr.text()
        )
    };
    let resumes = resumes_after_each_start(&bench.relay, 2).with_context(clients)?;
    for (name, ssh) in [("upload", &up), ("download", &down)] {
        let seen = ssh.stderr.count(CLIENT_RESUMED);
        ensure!(
            seen == KILLS + 1,
            "{name}: the client resumed {seen} times for {} new workers:\n{}",
            KILLS + 1,
            ssh.stderr.text()
        );
    }
    eprintln!(
        "{transport}: 1 GiB up and 1 GiB down in {took:.1?} through {KILLS} SIGKILLs and an upgrade"
    );
    for event in &events {
        eprintln!("  {event}");
    }
    eprintln!(
        "  resumes after each new worker listened: {}",
        show_resumes(&resumes)
    );
    Ok(())
}

#[test]
fn tcp_gib_each_way_through_three_worker_kills_and_an_upgrade() -> Result<()> {
    gib_each_way_through_kills_and_an_upgrade("tcp")
}

#[test]
fn quic_gib_each_way_through_three_worker_kills_and_an_upgrade() -> Result<()> {
    gib_each_way_through_kills_and_an_upgrade("quic")
}

/// `ssh -L` with two streams to an echo server beside sshd, through three
/// SIGKILLs of the worker and an upgrade: every byte echoed back once, in
/// order, and ssh exits 0.
#[test]
fn local_forward_streams_survive_worker_kills() -> Result<()> {
    let _serial = serial();
    let copy = RelayCopy::new()?;
    let Some(bench) = Bench::start_program(copy.path(), "", &[], "--dead-after 1s")? else {
        return Ok(());
    };
    let echo = echo_server(bench.lab.server_ns())?;
    let port = free_port_in(bench.lab.client_ns())?;
    let spec = format!("127.0.0.1:{port}:127.0.0.1:{echo}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut ssh = Watched::spawn(
        bench.ssh(false, &["-L", &spec], "cat > /dev/null"),
        Stdio::piped(),
        Stdio::null(),
    )?;
    let mut streams = Vec::new();
    for seed in [31, 32] {
        let stream = connect_in(bench.lab.client_ns(), addr, Duration::from_secs(20))
            .with_context(|| ssh.stderr.text())?;
        streams.push(EchoStream::start(stream, STREAM, seed, STALL)?);
    }
    let progress = || Ok(streams.iter().map(EchoStream::received).min().unwrap_or(0));
    let mut running = || Ok(streams.iter().all(EchoStream::running));
    let step = STREAM as u64 / 6;
    let mut mark = 0;
    for i in 0..=KILLS {
        mark = wait_progress(&progress, &mut running, mark + step, PROGRESS_TIMEOUT)
            .with_context(|| ssh.stderr.text())?;
        restart(&bench, &copy, i)?;
    }
    for stream in streams {
        stream
            .finish(RUN_TIMEOUT)
            .with_context(|| format!("ssh's stderr:\n{}", ssh.stderr.text()))?;
    }
    drop(ssh.child.stdin.take());
    let status = ssh.wait(Duration::from_secs(20))?;
    ensure!(status.success(), "ssh {status}: {}", ssh.stderr.text());
    let resumes = resumes_after_each_start(&bench.relay, 1)?;
    ensure!(
        ssh.stderr.count(CLIENT_RESUMED) == KILLS + 1,
        "{}",
        ssh.stderr.text()
    );
    eprintln!(
        "ssh -L, 2 streams of {} MiB each way: resumes after each new worker listened: {}",
        STREAM >> 20,
        show_resumes(&resumes)
    );
    Ok(())
}

/// A ControlMaster with four multiplexed commands (three downloads, one
/// upload) through three SIGKILLs of the worker and an upgrade: each
/// equal by sha256 and exit 0, and the master still answers `-O check`.
#[test]
fn control_master_streams_survive_worker_kills() -> Result<()> {
    let _serial = serial();
    let copy = RelayCopy::new()?;
    let Some(bench) = Bench::start_program(copy.path(), "", &[], "--dead-after 1s")? else {
        return Ok(());
    };
    let dir = bench.sshd.dir();
    let master = ControlMaster::start(&bench, &dir.join("ctl"))?;
    let size: u64 = 64 << 20;
    let (pairs, mut commands) = master.four_copies(dir, size, 50)?;
    // An event after each eighth of all four: the upload is faster than
    // the downloads, and at every event at least two commands still run.
    let progress = || Ok(copied(&pairs));
    let step = 4 * size / 8;
    for i in 0..=KILLS {
        let mut running = || Ok(still_running(&mut commands)? > 0);
        wait_progress(
            &progress,
            &mut running,
            step * (i as u64 + 1),
            PROGRESS_TIMEOUT,
        )
        .with_context(|| format!("master's stderr:\n{}", master.ssh.stderr.text()))?;
        let still = still_running(&mut commands)?;
        ensure!(still >= 2, "only {still} commands still run at event {i}");
        restart(&bench, &copy, i)?;
    }
    check_copies(&mut commands, &pairs, RUN_TIMEOUT)?;
    let master = master.finish()?;
    let resumes = resumes_after_each_start(&bench.relay, 1)?;
    ensure!(
        master.stderr.count(CLIENT_RESUMED) == KILLS + 1,
        "{}",
        master.stderr.text()
    );
    eprintln!(
        "ControlMaster, 4 commands of {} MiB: resumes after each new worker listened: {}",
        size >> 20,
        show_resumes(&resumes)
    );
    Ok(())
}
