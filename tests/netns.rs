//! End-to-end in real network namespaces (as root; skipped otherwise): the
//! real OpenSSH client in a "client" namespace, sshd and `resumeproxyd` in a
//! "server" namespace, a veth pair between them, and the faults of a real
//! network applied by the kernel: an address change of the client, a burst
//! of TCP resets (iptables REJECT with tcp-reset) and a silent partition
//! (iptables DROP) longer than the client's `--dead-after`.
//!
//! The acceptance criterion: a 400 MiB transfer through `ProxyCommand
//! resumeproxy` survives all three, in both directions, with sha256 equal and
//! ssh exiting 0. The veth is limited to 400 Mbit/s both ways. The faults
//! come in turn, each kind three times per transfer; each is injected only
//! after a further slice of the file has arrived at the far end (so it lands
//! while data flows), and the next only after the client has said it resumed
//! and the relay has logged the resume from the client's current address.
//!
//! A third test is the baseline: plain ssh over the same veth, without the
//! proxy, dies of the same burst of resets.

mod support;

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::faults::Bench;
use support::netns::NetLab;
use support::process::Watched as Ssh;
use support::relay::{proxy_command, RelayProcess, CLIENT_FLAGS, LOST, RESUMED};
use support::sshd::{SshdOptions, TestSshd};

/// The transfer in each direction.
const SIZE: u64 = 400 << 20;
/// A silent partition: well past `--dead-after`.
const PARTITION: Duration = Duration::from_millis(2500);
/// How long TCP is answered with resets.
const RESET_BURST: Duration = Duration::from_secs(1);
/// Bytes that must arrive at the far end before each fault (and so between
/// one fault's resume and the next fault). Faults go on, in turn, while at
/// least one and a half steps are left: 9 faults, each kind 3 times, the last
/// with some 40 MiB still to go.
const STEP: u64 = 40 << 20;
/// The faults, in the order they come.
const SCHEDULE: [Fault; 3] = [Fault::AddressChange, Fault::ResetBurst, Fault::Partition];
/// Rate limit of the veth, both ways: a real link's bandwidth and queue.
const RATE: &str = "400mbit";
/// Bound on each wait for the next [`STEP`] to arrive.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the wait for a resume after a fault was injected.
const RESUME_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a whole ssh run.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    AddressChange,
    ResetBurst,
    Partition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Upload,
    Download,
}

/// What one fault did.
struct Outcome {
    fault: Fault,
    /// Bytes at the far end when it was injected.
    at: u64,
    /// How it was applied.
    detail: String,
    /// The client's line about the loss.
    lost: String,
    /// The client's line about the resume.
    resumed: String,
    /// The relay's line about the resume.
    relay_line: String,
    /// From the start of the fault until the client said it resumed.
    took: Duration,
}

/// Applies `fault` to the client, for its whole duration.
fn inject(lab: &NetLab, fault: Fault) -> Result<String> {
    match fault {
        Fault::AddressChange => {
            let (old, new) = lab.move_client()?;
            Ok(format!("client address {old} -> {new}"))
        }
        Fault::ResetBurst => {
            let burst = lab.reset_burst()?;
            std::thread::sleep(RESET_BURST);
            burst.lift()?;
            Ok(format!("TCP answered with RST for {RESET_BURST:?}"))
        }
        Fault::Partition => {
            let partition = lab.partition()?;
            std::thread::sleep(PARTITION);
            partition.lift()?;
            Ok(format!("all packets dropped for {PARTITION:?}"))
        }
    }
}

fn transfer_survives_every_fault(direction: Direction) -> Result<()> {
    let Some(lab) = NetLab::create()? else {
        return Ok(());
    };
    let started = Instant::now();
    lab.rate_limit(RATE)?;
    let sshd = TestSshd::start_with(&SshdOptions {
        netns: Some(lab.server_ns().to_owned()),
        ..SshdOptions::default()
    })?;
    let relay = RelayProcess::start_in_netns(
        lab.server_ns(),
        &format!("{}:0", lab.server_addr()),
        sshd.port(),
        &[],
    )?;
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT_FLAGS);

    let src = sshd.dir().join("src");
    let dst = sshd.dir().join("dst");
    write_random_file(&src, SIZE, direction as u64 + 1)?;
    // Hashing 400 MiB takes a while in a debug build: do the source's while
    // the transfer runs.
    let src_hash = {
        let src = src.clone();
        std::thread::spawn(move || sha256_file(&src))
    };
    let (remote, stdin, stdout) = match direction {
        Direction::Upload => (
            format!("cat > {}", dst.display()),
            Stdio::from(File::open(&src)?),
            Stdio::null(),
        ),
        Direction::Download => (
            format!("cat {}", src.display()),
            Stdio::null(),
            Stdio::from(File::create(&dst)?),
        ),
    };
    let transfer_started = Instant::now();
    let mut ssh = Ssh::spawn(
        lab.in_client(&sshd.ssh_command(Some(&proxy), &remote)),
        stdin,
        stdout,
    )?;

    let mut outcomes = Vec::new();
    let mut arrived = 0;
    for fault in SCHEDULE.iter().copied().cycle() {
        if arrived + STEP + STEP / 2 > SIZE {
            break;
        }
        arrived = ssh.wait_for_bytes(&dst, arrived + STEP, PROGRESS_TIMEOUT)?;
        let from = ssh.stderr.len();
        let relay_resumes = relay.count("session resumed");
        let t0 = Instant::now();
        let detail = inject(&lab, fault)?;
        let resumed = ssh
            .stderr
            .wait_for(from, RESUMED, RESUME_TIMEOUT)
            .with_context(|| format!("{fault:?} ({detail}): the client never resumed"))?;
        let took = t0.elapsed();
        let lost = ssh.stderr.wait_for(from, LOST, Duration::ZERO)?;
        let relay_line = relay
            .wait_for_count("session resumed", relay_resumes + 1, RESUME_TIMEOUT)
            .with_context(|| format!("{fault:?}: the relay never logged the resume"))?;
        // After an address change, from the new address.
        let client = format!("client={}:", lab.client_addr());
        ensure!(
            relay_line.contains(&client),
            "{fault:?}: the relay resumed from elsewhere than {client}: {relay_line}"
        );
        outcomes.push(Outcome {
            fault,
            at: arrived,
            detail,
            lost,
            resumed,
            relay_line,
            took,
        });
    }

    let status = ssh.wait(RUN_TIMEOUT)?;
    let transfer_took = transfer_started.elapsed();
    ensure!(
        status.success(),
        "{direction:?}: ssh exited with {status}; its stderr:\n{}",
        ssh.stderr.text()
    );
    let src_hash = src_hash
        .join()
        .map_err(|_| anyhow::anyhow!("hashing the source panicked"))??;
    assert_eq!(
        sha256_file(&dst)?,
        src_hash,
        "{direction:?}: sha256 of what arrived"
    );
    let resumes = ssh.stderr.count(RESUMED);
    assert!(
        resumes >= outcomes.len(),
        "{resumes} resumes for {} faults",
        outcomes.len()
    );
    for fault in SCHEDULE {
        assert!(outcomes.iter().any(|o| o.fault == fault), "no {fault:?}");
    }

    eprintln!(
        "{direction:?} of {} MiB at {RATE}: ssh ran {transfer_took:.1?}, test {:.1?}; {} faults, {resumes} resumes",
        SIZE >> 20,
        started.elapsed(),
        outcomes.len()
    );
    for o in &outcomes {
        eprintln!(
            "  {:?} at {} MiB ({}): resumed {:.2?} after the fault began\n    {}\n    {}\n    relay: {}",
            o.fault,
            o.at >> 20,
            o.detail,
            o.took,
            o.lost,
            o.resumed,
            o.relay_line
        );
    }
    Ok(())
}

#[test]
fn a_400_mib_upload_survives_an_address_change_resets_and_a_partition() -> Result<()> {
    transfer_survives_every_fault(Direction::Upload)
}

#[test]
fn a_400_mib_download_survives_an_address_change_resets_and_a_partition() -> Result<()> {
    transfer_survives_every_fault(Direction::Download)
}

/// The baseline: plain ssh, straight to sshd over the same veth, dies of the
/// same reset burst.
#[test]
fn plain_ssh_dies_of_the_same_reset_burst() -> Result<()> {
    let Some(lab) = NetLab::create()? else {
        return Ok(());
    };
    lab.rate_limit(RATE)?;
    let sshd = TestSshd::start_with(&SshdOptions {
        netns: Some(lab.server_ns().to_owned()),
        extra_listen: vec![lab.server_addr()],
    })?;
    let dst = sshd.dir().join("dst");
    // The harness's ssh, with its options, to the server's veth address.
    let mut direct = Command::new(sshd.ssh_command(None, "").get_program());
    direct
        .args(sshd.ssh_opts())
        .arg(lab.server_addr().to_string())
        .arg("head -c 1G /dev/zero");
    let mut ssh = Ssh::spawn(
        lab.in_client(&direct),
        Stdio::null(),
        Stdio::from(File::create(&dst)?),
    )?;
    ssh.wait_for_bytes(&dst, STEP, PROGRESS_TIMEOUT)?;
    inject(&lab, Fault::ResetBurst)?;
    let status = ssh.wait(RESUME_TIMEOUT)?;
    let got = std::fs::metadata(&dst)?.len();
    assert!(
        status.code() == Some(255) && got < 1 << 30,
        "plain ssh did not die of the reset burst ({status}, {got} bytes); stderr:\n{}",
        ssh.stderr.text()
    );
    eprintln!(
        "plain ssh under the reset burst: {status} after {} MiB: {}",
        got >> 20,
        ssh.stderr.text().trim()
    );
    Ok(())
}

/// A TCP connection from an address the client no longer has is dead, but
/// silent: the client notices the address is gone (it looks every 250 ms)
/// and resumes at once, long before its `--dead-after` of 30 s.
#[test]
fn an_address_change_is_noticed_long_before_dead_after() -> Result<()> {
    let flags = "--transport tcp --dead-after 30s";
    let Some(bench) = Bench::start_with(RATE, &[], flags)? else {
        return Ok(());
    };
    let (lab, sshd, proxy) = (&bench.lab, &bench.sshd, &bench.proxy);
    let (src, dst) = (sshd.dir().join("src"), sshd.dir().join("dst"));
    write_random_file(&src, 4 * STEP, 5)?;
    let mut ssh = Ssh::spawn(
        lab.in_client(&sshd.ssh_command(Some(proxy), &format!("cat {}", src.display()))),
        Stdio::null(),
        Stdio::from(File::create(&dst)?),
    )?;
    ssh.wait_for_bytes(&dst, STEP, PROGRESS_TIMEOUT)?;
    let moved = Instant::now();
    let (old, _) = lab.move_client()?;
    let resumed = ssh.stderr.wait_for(0, RESUMED, Duration::from_secs(5))?;
    let took = moved.elapsed();
    let lost = ssh.stderr.wait_for(0, LOST, Duration::ZERO)?;
    assert!(
        lost.contains(&format!("no longer has the address {old}")),
        "{lost}"
    );
    let status = ssh.wait(RUN_TIMEOUT)?;
    ensure!(status.success(), "ssh: {status}; {}", ssh.stderr.text());
    assert_eq!(
        sha256_file(&dst)?,
        sha256_file(&src)?,
        "sha256 of what arrived"
    );
    eprintln!("address change noticed and resumed {took:.2?} after it:\n  {lost}\n  {resumed}");
    Ok(())
}
