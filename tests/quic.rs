//! The QUIC transport with the real OpenSSH client and server.
//!
//! * On loopback (any user): ssh runs over `--transport quic`, and the relay
//!   logs the session as QUIC.
//! * In the network-namespace lab (as root; skipped otherwise, see
//!   `support/netns.rs`):
//!   - with `--transport quic`, a 512 MiB download goes on through two
//!     changes of the client's address with sha256 equal and no resume at
//!     all: no loss or resume line from the client, none in the relay's log,
//!     `resumeproxy status` shows zero reconnects — QUIC migrated the
//!     connection — and QUIC's round-trip time; and data flows again within
//!     seconds of each change;
//!   - with UDP dropped on the client's link, `auto` is connected over TCP
//!     within a second or two, its background probe of QUIC finds UDP
//!     blocked, and the next client remembers: with UDP open again, it still
//!     uses TCP (for a few seconds after the first such judgement, longer
//!     after more in a row);
//!   - a QUIC connection killed by a silent partition mid-transfer is
//!     resumed, and one killed by UDP becoming blocked is resumed over TCP;
//!   - `auto` comes back to QUIC: a partition at whose end TCP wins (UDP
//!     comes back a moment after TCP) leaves the session on TCP only until
//!     its background probe of QUIC answers; then the session moves onto
//!     QUIC without a break, while a download runs (sha256), and `status`
//!     shows the move.

mod support;

use anyhow::{ensure, Result};
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::data::{hash_in_background, sha256_file, write_random_file};
use support::faults::Bench;
use support::process::{joined, Watched as Ssh};
use support::relay::{proxy_command, RelayProcess, LOST, RESUMED};
use support::sshd::client_status as status;
use support::sshd::TestSshd;

/// Rate limit of the lab's link, both ways.
const RATE: &str = "400mbit";
/// Bound on each wait for a further slice of a transfer.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a whole ssh run.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on the wait for a resume.
const RESUME_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts ssh in the client namespace downloading `src` to `dst` through
/// the bench's client.
fn download(bench: &Bench, src: &Path, dst: &Path) -> Result<Ssh> {
    let remote = format!("cat {}", src.display());
    Ssh::spawn(
        bench
            .lab
            .in_client(&bench.sshd.ssh_command(Some(&bench.proxy), &remote)),
        Stdio::null(),
        Stdio::from(File::create(dst)?),
    )
}

#[test]
fn ssh_runs_over_quic_on_loopback() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let src = sshd.dir().join("src");
    write_random_file(&src, 8 << 20, 7)?;
    let proxy = proxy_command(relay.addr(), sshd.port(), "--transport quic");
    let out = sshd
        .ssh_command(Some(&proxy), &format!("cat {}", src.display()))
        .output()?;
    ensure!(
        out.status.success(),
        "ssh over QUIC failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        support::data::sha256_bytes(&out.stdout),
        sha256_file(&src)?,
        "sha256 of what arrived"
    );
    let started = relay.wait_for_log("session started", Duration::from_secs(5))?;
    assert!(started.contains("transport=quic"), "{started}");
    relay.wait_for_log("session ended: complete", Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn quic_carries_512_mib_through_two_address_changes_without_a_resume() -> Result<()> {
    let flags = "--transport quic --dead-after 2s";
    let Some(bench) = Bench::start_with(RATE, &[], flags)? else {
        return Ok(());
    };
    let lab = &bench.lab;
    const SIZE: u64 = 512 << 20;
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, SIZE, 11)?;
    let src_hash = hash_in_background(&src);
    let started = Instant::now();
    let mut ssh = download(&bench, &src, &dst)?;

    let mut arrived = 0;
    let mut pauses = Vec::new();
    for at in [SIZE / 4, SIZE / 2] {
        arrived = ssh.wait_for_bytes(&dst, at, PROGRESS_TIMEOUT)?;
        let (old, new) = lab.move_client()?;
        let moved = Instant::now();
        // Data must keep coming: the next MiB within a few seconds.
        let next = ssh.wait_for_bytes(&dst, arrived + (1 << 20), Duration::from_secs(5))?;
        pauses.push((old, new, moved.elapsed(), next));
    }
    let reports = status(&bench.sshd)?;
    let status = ssh.wait(RUN_TIMEOUT)?;
    ensure!(
        status.success(),
        "ssh exited with {status}; stderr:\n{}",
        ssh.stderr.text()
    );
    assert_eq!(
        sha256_file(&dst)?,
        joined(src_hash)?,
        "sha256 of what arrived"
    );
    assert_eq!(ssh.stderr.count(LOST), 0, "{}", ssh.stderr.text());
    assert_eq!(ssh.stderr.count(RESUMED), 0, "{}", ssh.stderr.text());
    assert_eq!(bench.relay.count("client lost"), 0, "{}", bench.relay.log());
    assert_eq!(
        bench.relay.count("session resumed"),
        0,
        "{}",
        bench.relay.log()
    );
    let [report] = reports.as_slice() else {
        panic!("expected one live session, status showed {reports:?}");
    };
    assert_eq!(report.transport, "quic", "{report:?}");
    assert_eq!(report.reconnects, 0, "{report:?}");
    // Taken while data flows (no heartbeats): QUIC's own round-trip time.
    assert!(
        report.rtt_us.is_some_and(|rtt| rtt > 0),
        "no round-trip time: {report:?}"
    );
    let opened = bench
        .relay
        .wait_for_log("session started", Duration::ZERO)?;
    assert!(opened.contains("transport=quic"), "{opened}");

    eprintln!(
        "512 MiB over QUIC at {RATE} in {:.1?} with {} address changes, 0 resumes",
        started.elapsed(),
        pauses.len()
    );
    for (old, new, took, next) in pauses {
        eprintln!(
            "  {old} -> {new} at {arrived} bytes: next MiB after {took:.2?} ({next} bytes)",
            arrived = next - (1 << 20)
        );
    }
    let _ = arrived;
    Ok(())
}

#[test]
fn auto_connects_over_tcp_within_seconds_when_udp_is_blocked() -> Result<()> {
    let Some(bench) = Bench::start_with(RATE, &[], "--transport auto")? else {
        return Ok(());
    };
    let (lab, proxy) = (&bench.lab, &bench.proxy);
    let blocked = lab.block_udp()?;
    // A session long enough for its background probe of QUIC to find UDP
    // blocked (it hears nothing for a few seconds while TCP works).
    let mut ssh = Ssh::spawn(
        lab.in_client(
            &bench
                .sshd
                .ssh_command(Some(proxy), "echo over-tcp; exec sleep 6"),
        ),
        Stdio::null(),
        Stdio::piped(),
    )?;
    let spawned = Instant::now();
    let opened = bench
        .relay
        .wait_for_log("session started", Duration::from_secs(10))?;
    let took = spawned.elapsed();
    assert!(opened.contains("transport=tls"), "{opened}");
    assert!(
        took < Duration::from_secs(2),
        "the session opened only after {took:?}"
    );
    let status = ssh.wait(Duration::from_secs(20))?;
    ensure!(status.success(), "ssh: {status}; {}", ssh.stderr.text());
    eprintln!("UDP blocked: auto opened the session over TCP {took:.2?} after ssh started");

    // The next client knows, even with UDP open again.
    let memory = bench.sshd.dir().join("state/resumeproxy/udp-failed");
    let remembered = std::fs::read_to_string(&memory)?;
    eprintln!("remembered after the probe: {remembered}");
    assert!(
        remembered.starts_with(&format!("{} ", bench.relay.addr())),
        "{remembered}"
    );
    blocked.lift()?;
    let out = lab
        .in_client(&bench.sshd.ssh_command(Some(proxy), "true"))
        .output()?;
    ensure!(out.status.success(), "second ssh: {out:?}");
    let second = bench
        .relay
        .wait_for_count("session started", 2, Duration::from_secs(5))?;
    assert!(second.contains("transport=tls"), "{second}");
    Ok(())
}

#[test]
fn a_dead_quic_connection_is_resumed_over_quic_or_tcp() -> Result<()> {
    let Some(bench) = Bench::start_with(RATE, &[], "--transport auto --dead-after 1s")? else {
        return Ok(());
    };
    let lab = &bench.lab;
    const SIZE: u64 = 256 << 20;
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, SIZE, 13)?;
    let src_hash = hash_in_background(&src);
    let mut ssh = download(&bench, &src, &dst)?;
    let opened = bench
        .relay
        .wait_for_log("session started", Duration::from_secs(10))?;
    assert!(
        opened.contains("transport=quic"),
        "auto chose TCP: {opened}"
    );

    // A silent partition outlives --dead-after: the QUIC connection dies
    // and the session resumes when the network is back.
    ssh.wait_for_bytes(&dst, SIZE / 4, PROGRESS_TIMEOUT)?;
    let from = ssh.stderr.len();
    let partition = lab.partition()?;
    std::thread::sleep(Duration::from_millis(2500));
    partition.lift()?;
    let resumed = ssh.stderr.wait_for(from, RESUMED, RESUME_TIMEOUT)?;
    let first = bench
        .relay
        .wait_for_count("session resumed", 1, RESUME_TIMEOUT)?;

    // Then UDP is blocked for good: the session goes on over TCP.
    let arrived = ssh.wait_for_bytes(&dst, SIZE / 2, PROGRESS_TIMEOUT)?;
    let from = ssh.stderr.len();
    let _blocked = lab.block_udp()?;
    let over_tcp = ssh.stderr.wait_for(from, RESUMED, RESUME_TIMEOUT)?;
    let second = bench
        .relay
        .wait_for_count("session resumed", 2, RESUME_TIMEOUT)?;
    assert!(second.contains("transport=tls"), "{second}");

    let status = ssh.wait(RUN_TIMEOUT)?;
    ensure!(status.success(), "ssh: {status}; {}", ssh.stderr.text());
    assert_eq!(
        sha256_file(&dst)?,
        joined(src_hash)?,
        "sha256 of what arrived"
    );
    eprintln!("partition: {resumed}\n  relay: {first}");
    eprintln!("UDP blocked at {arrived} bytes: {over_tcp}\n  relay: {second}");
    Ok(())
}

#[test]
fn auto_comes_back_to_quic_after_tcp_won_the_race() -> Result<()> {
    let Some(bench) = Bench::start_with(RATE, &[], "--transport auto --dead-after 1s")? else {
        return Ok(());
    };
    let lab = &bench.lab;
    const SIZE: u64 = 256 << 20;
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, SIZE, 17)?;
    let src_hash = hash_in_background(&src);
    let mut ssh = download(&bench, &src, &dst)?;
    let opened = bench
        .relay
        .wait_for_log("session started", Duration::from_secs(10))?;
    assert!(
        opened.contains("transport=quic"),
        "auto chose TCP: {opened}"
    );

    // A partition, at whose end TCP wins: UDP comes back after TCP.
    ssh.wait_for_bytes(&dst, SIZE / 4, PROGRESS_TIMEOUT)?;
    let from = ssh.stderr.len();
    let partition = lab.partition()?;
    ssh.stderr.wait_for(from, LOST, RESUME_TIMEOUT)?;
    let udp = lab.block_udp()?;
    partition.lift()?;
    let over_tcp = bench
        .relay
        .wait_for_count("session resumed", 1, RESUME_TIMEOUT)?;
    assert!(over_tcp.contains("transport=tls"), "{over_tcp}");
    udp.lift()?;
    let udp_back = Instant::now();
    let moved = bench
        .relay
        .wait_for_count("session resumed", 2, Duration::from_secs(20))?;
    let took = udp_back.elapsed();
    assert!(moved.contains("transport=quic"), "{moved}");
    let reports = status(&bench.sshd)?;

    let exit = ssh.wait(RUN_TIMEOUT)?;
    ensure!(exit.success(), "ssh: {exit}; {}", ssh.stderr.text());
    assert_eq!(
        sha256_file(&dst)?,
        joined(src_hash)?,
        "sha256 of what arrived"
    );
    let [report] = reports.as_slice() else {
        panic!("expected one live session, status showed {reports:?}");
    };
    assert_eq!(report.transport, "quic", "{report:?}");
    assert_eq!(report.moves, 1, "{report:?}");
    assert_eq!(report.reconnects, 1, "{report:?}");
    // The move is no break: one loss, one resume, both of the partition.
    assert_eq!(ssh.stderr.count(LOST), 1, "{}", ssh.stderr.text());
    assert_eq!(ssh.stderr.count(RESUMED), 1, "{}", ssh.stderr.text());
    ensure!(
        took < Duration::from_secs(10),
        "moved {took:?} after UDP came back"
    );
    eprintln!("TCP won after the partition; the session was back on QUIC {took:.2?} after UDP was: {moved}");
    Ok(())
}
