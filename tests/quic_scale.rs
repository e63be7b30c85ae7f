//! QUIC at scale, in the namespace lab (as root; skipped otherwise, see
//! `support/netns.rs`): what one relay serving many people sees.
//!
//! * **Bulk sessions end, and stay lean.** 100 ssh sessions over
//!   `--transport quic` each download 32 MiB at once (sha256 compared) and
//!   end together: the relay ends every one of them (none is kept for the
//!   grace period as if its client were lost), no connection to sshd is
//!   left, and the relay (keeper and worker) grows by at most 300 MiB while
//!   they run.
//! * **A burst gets its sessions.** 200 ssh sessions over QUIC started over
//!   4 s from one address, the relay's per-source handshake limit raised to
//!   allow them all at once: every one is running within 30 s, and the
//!   relay started 200 sessions and lost no client.
//! * **The excess is refused in words.** 100 QUIC clients from one address
//!   at a relay that takes 50 sessions from it: 50 get theirs, and each of
//!   the others ends with the relay's own reason.

mod support;

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::faults::{serial, Bench};
use support::process::{Watched, IDLE};
use support::quic_lab::EchoLab;
use support::relay::CLIENT;

/// Bulk sessions at once.
const BULK_SESSIONS: usize = 100;
/// What each downloads.
const BULK_SIZE: u64 = 32 << 20;
/// How much the relay may grow with them (issue 18).
const MAX_GROWTH_KIB: u64 = 300 * 1024;
/// Sessions in the burst, and how long it takes to start them.
const BURST: usize = 200;
const BURST_SPREAD: Duration = Duration::from_secs(4);
/// Bound on one relay event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for {pid}"))
}

/// The relay's size (keeper and worker), sampled until `stop`: the largest.
fn sample_peak(pids: [u32; 2], stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            let now: u64 = pids
                .iter()
                .map(|pid| status_kib(*pid, "VmRSS:").unwrap_or(0))
                .sum();
            peak = peak.max(now);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Starts ssh in the client namespace downloading `src`, hashing what
/// arrives on a thread: its process, and the thread (bytes, sha256).
fn download(
    bench: &Bench,
    src: &std::path::Path,
) -> Result<(Watched, std::thread::JoinHandle<(u64, String)>)> {
    let remote = format!("cat {}", src.display());
    let command = bench
        .lab
        .in_client(&bench.sshd.ssh_command(Some(&bench.proxy), &remote));
    let mut ssh = Watched::spawn(command, Stdio::null(), Stdio::piped())?;
    let mut out = ssh.child.stdout.take().context("ssh stdout")?;
    let hashing = std::thread::spawn(move || {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
        }
        (total, resumeproxy::units::hex(&hasher.finalize()))
    });
    Ok((ssh, hashing))
}

#[test]
fn a_hundred_bulk_quic_sessions_end_on_the_relay_and_stay_lean() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start_with("", &[], "--transport quic --dead-after 5s")? else {
        return Ok(());
    };
    let src = bench.sshd.dir().join("src");
    write_random_file(&src, BULK_SIZE, 23)?;
    let expected = sha256_file(&src)?;
    let keeper = bench.relay.pid();
    let worker = bench.relay.worker_pid().context("no worker in the log")?;
    let idle = status_kib(keeper, "VmRSS:")? + status_kib(worker, "VmRSS:")?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_peak([keeper, worker], Arc::clone(&stop));

    let started = Instant::now();
    let downloads = (0..BULK_SESSIONS)
        .map(|_| download(&bench, &src))
        .collect::<Result<Vec<_>>>()?;
    let mut last_exit = started;
    for (i, (mut ssh, hashing)) in downloads.into_iter().enumerate() {
        let status = ssh.wait(Duration::from_secs(300))?;
        last_exit = Instant::now();
        let (bytes, sha) = hashing
            .join()
            .map_err(|_| anyhow::anyhow!("hashing panicked"))?;
        ensure!(
            status.success() && sha == expected,
            "download {i}: {status}, {bytes} bytes, sha256 {sha}; stderr:\n{}",
            ssh.stderr.text()
        );
    }
    let took = last_exit - started;
    // Every session ends on the relay within moments of its client's exit
    // (not after its client is found silent: kept for the grace period).
    let ended = bench
        .relay
        .wait_for_count("session ended", BULK_SESSIONS, EVENT_TIMEOUT)
        .map(|_| last_exit.elapsed());
    stop.store(true, Ordering::Relaxed);
    let peak = peak
        .join()
        .map_err(|_| anyhow::anyhow!("sampling panicked"))?;
    let kept = bench.relay.count("keeping the session");
    let sshd_port = bench.sshd.port();
    let left = established_to(&bench, sshd_port)?;
    eprintln!(
        "{BULK_SESSIONS} × {} MiB over QUIC in {took:.1?}: {} sessions ended ({ended:?} after the \
         last ssh), {kept} kept as lost, {left} sshd connections left; relay {idle} KiB idle, \
         {peak} KiB at its peak (+{} KiB)",
        BULK_SIZE >> 20,
        bench.relay.count("session ended"),
        peak.saturating_sub(idle)
    );
    ended.map_err(|e| anyhow::anyhow!("{e}; the relay's log:\n{}", bench.relay.log()))?;
    ensure!(left == 0, "{left} connections to sshd are left");
    ensure!(
        peak.saturating_sub(idle) <= MAX_GROWTH_KIB,
        "the relay grew from {idle} KiB to {peak} KiB"
    );
    Ok(())
}

/// Established TCP connections to `port` in the lab's server namespace.
fn established_to(bench: &Bench, port: u16) -> Result<usize> {
    let filter = format!("( dport = :{port} )");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", bench.lab.server_ns()])
        .args(["ss", "-Htn", "state", "established"])
        .arg(filter)
        .output()
        .context("running ss")?;
    ensure!(out.status.success(), "ss: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

#[test]
fn a_burst_of_quic_sessions_from_one_address_all_start() -> Result<()> {
    let _serial = serial();
    let flags = ["--max-handshakes-per-source", "256"];
    let Some(bench) = Bench::start_with("", &flags, "--transport quic")? else {
        return Ok(());
    };
    let started = Instant::now();
    let mut sessions = Vec::with_capacity(BURST);
    for i in 0..BURST {
        let due = BURST_SPREAD * u32::try_from(i)? / u32::try_from(BURST)?;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let command = bench
            .lab
            .in_client(&bench.sshd.ssh_command(Some(&bench.proxy), IDLE));
        let mut ssh = Watched::spawn(command, Stdio::null(), Stdio::piped())?;
        let out = ssh.child.stdout.take().context("ssh stdout")?;
        let (tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() && line.trim() == "ready" {
                let _ = tx.send(());
            }
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        sessions.push((ssh, ready));
    }
    let spawned = started.elapsed();
    let deadline = started + Duration::from_secs(30);
    let mut failed = Vec::new();
    for (i, (ssh, ready)) in sessions.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left) {
            Ok(()) => {}
            Err(_) => failed.push(format!(
                "#{i}: {}",
                ssh.stderr.starting_with(CLIENT).join(" | ")
            )),
        }
    }
    let all_ready = started.elapsed();
    eprintln!(
        "{BURST} sessions started over {spawned:.1?}: {} running {all_ready:.1?} after the first; \
         the relay started {}",
        BURST - failed.len(),
        bench.relay.count("session started")
    );
    ensure!(
        failed.is_empty(),
        "{} of {BURST} sessions are not running after 30 s:\n{}",
        failed.len(),
        failed.join("\n")
    );
    bench
        .relay
        .wait_for_count("session started", BURST, EVENT_TIMEOUT)?;
    ensure!(
        bench.relay.count("client lost") == 0,
        "the relay lost clients:\n{}",
        bench.relay.log()
    );
    Ok(())
}

#[test]
fn quic_clients_over_a_limit_are_refused_in_words() -> Result<()> {
    let _serial = serial();
    const CLIENTS: usize = 100;
    const LIMIT: usize = 50;
    let limit = LIMIT.to_string();
    let Some(lab) = EchoLab::start("quic-limit", &["--max-sessions-per-source", &limit])? else {
        return Ok(());
    };
    let mut clients = (0..CLIENTS)
        .map(|_| lab.spawn(&["--transport", "quic", "--connect-timeout", "3s"]))
        .collect::<Result<Vec<_>>>()?;
    let mut served = 0;
    let mut refused = 0;
    let words = format!(
        "the relay holds its limit of {LIMIT} sessions from {} (--max-sessions-per-source)",
        lab.lab.client_addr()
    );
    for (i, client) in clients.iter_mut().enumerate() {
        if client
            .echo(&format!("hello {i}"), Duration::from_secs(20))
            .is_ok()
        {
            served += 1;
            continue;
        }
        let code = client.exit_code(Duration::from_secs(20))?;
        let lines = client.stderr().starting_with(CLIENT);
        let last = lines.last().cloned().unwrap_or_default();
        ensure!(
            code == Some(255) && last.ends_with(&words),
            "client {i} exited {code:?}, saying: {lines:?}"
        );
        refused += 1;
    }
    eprintln!(
        "{CLIENTS} QUIC clients at a limit of {LIMIT}: {served} served, {refused} refused in words"
    );
    ensure!(served == LIMIT, "{served} served");
    Ok(())
}
