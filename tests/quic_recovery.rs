//! QUIC recovers as promptly as TCP, in the namespace lab (as root;
//! skipped otherwise, see `support/netns.rs`).
//!
//! * **A worker crash.** 100 idle `--transport quic` sessions; the relay's
//!   worker is killed (SIGKILL) and the keeper starts the next: every
//!   session is resumed within 1.5 s of the kill (the relay's own log), and
//!   each carries an echo afterwards. A client learns that its connection is
//!   gone from the stateless reset the new worker answers its next packet
//!   with; none may be held back.
//! * **A relay gone for good, and a silent partition.** A `--transport
//!   quic` session outlives a 16 s silent partition (the client keeps
//!   trying: a silent network is no evidence), resumes and echoes; then the
//!   relay (keeper and worker) is killed, and within 15 s the client exits
//!   255 with the one line that says the relay is not running: its host
//!   answers the client's packets with ICMP port unreachable.
//! * **Back to QUIC when UDP returns.** An `auto` session on QUIC loses its
//!   link to a partition; the network comes back with UDP still blocked
//!   for 4 s more, so the session resumes over TCP and its probe of QUIC
//!   finds UDP blocked; once UDP works, the session is back on QUIC within
//!   15 s (the judgement is tried again after seconds, not minutes).
//! * **A partition shorter than `--dead-after`.** With `--dead-after 5s`,
//!   a silent partition of 4 s beside an idle session, then two of 2 s
//!   during a download, cost no resume at all: no line from either client,
//!   no loss in the relay's log, the download's sha256 equal. A sending
//!   relay's QUIC stack is the limit: it probes a silent path with a
//!   backoff that doubles (after a partition of P seconds its next packet
//!   may come up to P later), and quinn sends no acknowledgement while its
//!   congestion window is full, so during a download only partitions
//!   shorter than half of `--dead-after` are certain to cost nothing.

mod support;

use anyhow::{ensure, Result};
use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use support::data::{sha256_file, write_random_file};
use support::durable::{kill_worker, RESUMED};
use support::faults::{serial, Bench};
use support::process::{file_len, Watched, IDLE};
use support::quic_lab::{EchoLab, ECHO_TIMEOUT};
use support::relay::{CLIENT, LOST};

/// Idle sessions at the worker crash.
const IDLE_SESSIONS: usize = 100;
/// Every session resumed within this long of the kill (issue 18).
const BACK_WITHIN: Duration = Duration::from_millis(1500);
/// A `--transport quic` client ends within this long of its relay's death.
const GONE_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn every_idle_quic_session_is_back_within_a_second_and_a_half_of_a_worker_crash() -> Result<()> {
    let _serial = serial();
    let Some(lab) = EchoLab::start("quic-crash", &[])? else {
        return Ok(());
    };
    let flags = ["--transport", "quic", "--dead-after", "5s"];
    let mut clients = lab.open(IDLE_SESSIONS, &flags)?;
    let killed_at = SystemTime::now();
    let restart = kill_worker(&lab.relay)?;
    lab.relay
        .wait_for_count(RESUMED, IDLE_SESSIONS, Duration::from_secs(20))?;
    let mut back: Vec<Duration> = lab
        .relay
        .log_times(RESUMED)
        .iter()
        .map(|t| t.duration_since(killed_at).unwrap_or_default())
        .collect();
    back.sort();
    let last = back.last().copied().unwrap_or_default();
    eprintln!(
        "worker killed: the next listened after {restart:?}; {} sessions resumed, \
         median {:?}, last {last:?} after the kill",
        back.len(),
        back[back.len() / 2]
    );
    ensure!(
        last <= BACK_WITHIN,
        "the last session resumed {last:?} after the kill (resumes: {back:?})"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        client.echo(&format!("again {i}"), ECHO_TIMEOUT)?;
    }
    Ok(())
}

#[test]
fn a_quic_client_outlives_a_partition_but_not_its_relay() -> Result<()> {
    let _serial = serial();
    let Some(mut lab) = EchoLab::start("quic-gone", &[])? else {
        return Ok(());
    };
    let flags = ["--transport", "quic", "--dead-after", "5s"];
    let mut client = lab.open(1, &flags)?.remove(0);

    // Silence is no evidence: past what a stopped relay is given, the
    // client still tries, and resumes when the network is back.
    let partition = lab.lab.partition()?;
    std::thread::sleep(GONE_WITHIN + Duration::from_secs(1));
    ensure!(
        client.process.running()?,
        "the client gave up during a silent partition:\n{}",
        client.stderr().text()
    );
    partition.lift()?;
    lab.relay.wait_for_log(RESUMED, Duration::from_secs(20))?;
    client.echo("after the partition", ECHO_TIMEOUT)?;

    // A relay stopped for good: its host answers that nothing listens.
    let addr = lab.relay_addr();
    lab.relay.kill();
    let killed = Instant::now();
    let code = client.exit_code(GONE_WITHIN + Duration::from_secs(10))?;
    let took = killed.elapsed();
    let lines = client.stderr().starting_with(CLIENT);
    eprintln!("relay killed: the client exited {code:?} after {took:?}: {lines:?}");
    ensure!(code == Some(255), "exit code {code:?}: {lines:?}");
    ensure!(took <= GONE_WITHIN, "the client took {took:?} to give up");
    let expected = format!(
        "resumeproxy: relay at {addr} is not running (its host says nothing listens on its UDP \
         port, for 10s); the session is lost"
    );
    ensure!(
        lines.last() == Some(&expected),
        "its last line is not {expected:?}: {lines:?}"
    );
    Ok(())
}

#[test]
fn an_auto_session_is_back_on_quic_soon_after_udp_returns() -> Result<()> {
    let _serial = serial();
    let Some(lab) = EchoLab::start("quic-back", &[])? else {
        return Ok(());
    };
    let flags = ["--transport", "auto", "--dead-after", "1s"];
    let mut client = lab.open(1, &flags)?.remove(0);
    let opened = lab.relay.wait_for_log("session started", Duration::ZERO)?;
    ensure!(
        opened.contains("transport=quic"),
        "auto chose TCP: {opened}"
    );

    // The network comes back with UDP a while behind TCP: long enough for
    // the session's probe of QUIC to find UDP blocked.
    let partition = lab.lab.partition()?;
    client.stderr().wait_for(0, LOST, Duration::from_secs(10))?;
    let udp = lab.lab.block_udp()?;
    partition.lift()?;
    let over_tcp = lab
        .relay
        .wait_for_count(RESUMED, 1, Duration::from_secs(20))?;
    ensure!(over_tcp.contains("transport=tls"), "{over_tcp}");
    std::thread::sleep(Duration::from_secs(4));
    udp.lift()?;
    let udp_back = Instant::now();
    let moved = lab
        .relay
        .wait_for_count(RESUMED, 2, Duration::from_secs(30))?;
    let took = udp_back.elapsed();
    eprintln!("UDP back 4 s after TCP: the session was back on QUIC {took:?} after UDP: {moved}");
    ensure!(moved.contains("transport=quic"), "{moved}");
    ensure!(
        took <= Duration::from_secs(15),
        "back on QUIC only {took:?} after UDP"
    );
    client.echo("on QUIC again", ECHO_TIMEOUT)?;
    Ok(())
}

#[test]
fn a_partition_shorter_than_dead_after_costs_no_resume_on_quic() -> Result<()> {
    let _serial = serial();
    const SIZE: u64 = 256 << 20;
    /// Beside an idle session: the relay answers the client's next
    /// heartbeat as soon as the path is back.
    const IDLE_PARTITION: Duration = Duration::from_secs(4);
    /// During a download: the sending relay's next probe may come as late
    /// after the partition as the partition lasted.
    const BULK_PARTITION: Duration = Duration::from_secs(2);
    let flags = "--transport quic --dead-after 5s";
    let Some(bench) = Bench::start_with("400mbit", &[], flags)? else {
        return Ok(());
    };
    let lab = &bench.lab;
    let idle = Watched::idle(lab.in_client(&bench.sshd.ssh_command(Some(&bench.proxy), IDLE)))?;
    let partition = lab.partition()?;
    std::thread::sleep(IDLE_PARTITION);
    partition.lift()?;
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, SIZE, 19)?;
    let remote = format!("cat {}", src.display());
    let mut ssh = Watched::spawn(
        lab.in_client(&bench.sshd.ssh_command(Some(&bench.proxy), &remote)),
        Stdio::null(),
        Stdio::from(File::create(&dst)?),
    )?;
    let mut stalls = Vec::new();
    for at in [SIZE / 8, SIZE / 3] {
        ssh.wait_for_bytes(&dst, at, Duration::from_secs(60))?;
        let partition = lab.partition()?;
        std::thread::sleep(BULK_PARTITION);
        partition.lift()?;
        let lifted = Instant::now();
        let arrived = file_len(&dst);
        ssh.wait_for_bytes(&dst, arrived + (1 << 20), Duration::from_secs(30))?;
        stalls.push(lifted.elapsed());
    }
    let status = ssh.wait(Duration::from_secs(180))?;
    ensure!(status.success(), "ssh: {status}; {}", ssh.stderr.text());
    ensure!(
        sha256_file(&dst)? == sha256_file(&src)?,
        "sha256 of what arrived differs"
    );
    eprintln!(
        "--dead-after 5s: a 4 s partition beside an idle session, two 2 s partitions during a \
         download: data flowing again {stalls:?} after each"
    );
    for (what, lines) in [("download", &ssh.stderr), ("idle session", &idle.stderr)] {
        ensure!(
            lines.starting_with(CLIENT).is_empty(),
            "the {what}'s client spoke: {}",
            lines.text()
        );
    }
    ensure!(
        bench.relay.count("client lost") == 0 && bench.relay.count(RESUMED) == 0,
        "the relay lost a client:\n{}",
        bench.relay.log()
    );
    drop(idle);
    Ok(())
}
