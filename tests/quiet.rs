//! A quiet, human terminal: what the client prints on ssh's stderr through
//! faults that make its sends fail, in the network-namespace lab (as root;
//! skipped otherwise).
//!
//! A download over `auto` (QUIC) meets UDP blocked (the session moves to
//! TCP), a reset storm, then a silent partition (iptables DROP on the
//! client's veth, INPUT and OUTPUT: every send fails with "operation not
//! permitted", which quinn logs as a warning), which a second download,
//! over QUIC only, meets too; meanwhile a third client tries to start (over
//! QUIC) during the partition and gives up. Every line on stderr must
//! have one of the shapes docs/troubleshooting.md documents, with a reason
//! from our own vocabulary: no library logs, no `Debug` output, no URLs, no
//! OS error numbers. The download arrives whole (sha256).

mod support;

use anyhow::{ensure, Result};
use std::fs::File;
use std::process::Stdio;
use std::time::Duration;
use support::data::{sha256_file, write_random_file};
use support::faults::{Bench, PROGRESS_TIMEOUT, RESUME_TIMEOUT};
use support::process::Watched;
use support::relay::{proxy_command, RESUMED};

/// The shapes of the client's lines: what comes before the reason, and
/// after it.
const SHAPES: &[(&str, &str)] = &[
    ("resumeproxy: link to ", "), reconnecting…"),
    ("resumeproxy: relay at ", "), retrying…"),
    ("resumeproxy: cannot reach relay at ", ""),
];

/// How the reasons the client gives begin (docs/troubleshooting.md).
const REASONS: &[&str] = &[
    "nothing heard for ",
    "data stopped for ",
    "nothing heard over QUIC",
    "no answer",
    "connection closed",
    "connection reset",
    "connection refused",
    "connection broken",
    "connection lost",
    "sending is not permitted",
    "network unreachable",
    "host unreachable",
    "network down",
    "this machine no longer has the address",
    "the network interface it used went down",
    "no usable route to the relay any more",
    "the relay is restarting",
    "the relay reset the QUIC connection",
    "the relay closed the QUIC connection",
    "the relay closed the connection during the TLS handshake",
    "the relay turned the connection away",
    "TLS handshake failed: ",
];

/// The line of a session the relay no longer holds, around its reason.
const GONE: (&str, &str, &str) = (
    "resumeproxy: session ",
    " is gone from relay ",
    "; the ssh connection is lost",
);

/// How the reasons for a session gone begin (docs/troubleshooting.md): the
/// relay's own words, or the client's.
const GONE_REASONS: &[&str] = &[
    "no such session on this relay",
    "the relay was unreachable for longer than its grace period",
    // A fleet's instance, reached by a reconnect of another's session.
    "this is instance ",
    // The same, found by its key (a key per instance), or a rotated key.
    "it reached another pinned key of the relay",
];

/// The line of a session that takes smaller TCP segments, around the
/// relay's host and the size.
const SMALLER: (&str, &str, &str) = (
    "resumeproxy: large packets to and from ",
    " are lost while small ones pass (a smaller path MTU: a VPN or tunnel?); this session uses TCP segments of at most ",
    " bytes from now on",
);

/// How ssh's own lines begin (ssh reports its ProxyCommand's exit so).
const SSH_LINES: &[&str] = &["kex_exchange_identification: ", "Connection closed by "];

/// Whether `line` is one of the client's documented lines (or ssh's own);
/// says why not.
fn check_line(line: &str) -> Result<()> {
    if SSH_LINES.iter().any(|s| line.starts_with(s)) {
        return Ok(());
    }
    for banned in [
        "https://", "os error", "Os {", "kind:", "WARN", "ERROR", "{", "}", "((",
    ] {
        ensure!(!line.contains(banned), "{banned:?} in {line:?}");
    }
    if line.starts_with("resumeproxy: relay at ") && line.ends_with(" not answering yet, retrying…")
    {
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix(SMALLER.0) {
        let (_, rest) = rest
            .split_once(SMALLER.1)
            .ok_or_else(|| anyhow::anyhow!("{line:?}"))?;
        let mss = rest
            .strip_suffix(SMALLER.2)
            .ok_or_else(|| anyhow::anyhow!("{line:?}"))?;
        ensure!(mss.parse::<u32>().is_ok(), "{line:?}");
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix(GONE.0) {
        let (_, rest) = rest
            .split_once(GONE.1)
            .ok_or_else(|| anyhow::anyhow!("{line:?}"))?;
        let rest = rest
            .strip_suffix(GONE.2)
            .ok_or_else(|| anyhow::anyhow!("{line:?}"))?;
        // After HOST:PORT, whose port is followed by ": ".
        let Some((_, reason)) = rest.split_once(": ") else {
            anyhow::bail!("no reason in {line:?}");
        };
        ensure!(
            GONE_REASONS.iter().any(|r| reason.starts_with(r)),
            "reason {reason:?} of {line:?} is not one of ours"
        );
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix("resumeproxy: resumed after ") {
        ensure!(rest.ends_with(" replayed"), "{line:?}");
        return Ok(());
    }
    for (before, after) in SHAPES {
        let Some(rest) = line.strip_prefix(before) else {
            continue;
        };
        ensure!(rest.ends_with(after), "{line:?}");
        let rest = &rest[..rest.len() - after.len()];
        // The reason follows "lost (", "yet (" or "HOST:PORT: ".
        let reason = match after.is_empty() {
            true => rest.split_once(": ").map(|(_, r)| r),
            false => rest.split_once(" (").map(|(_, r)| r),
        };
        let Some(reason) = reason else {
            anyhow::bail!("no reason in {line:?}");
        };
        ensure!(
            REASONS.iter().any(|r| reason.starts_with(r)),
            "reason {reason:?} of {line:?} is not one of ours"
        );
        return Ok(());
    }
    anyhow::bail!("{line:?} has none of the documented shapes")
}

/// The check itself, on lines of every documented kind and a few others.
#[test]
fn the_documented_shapes_are_told_from_others() {
    for ours in [
        "resumeproxy: link to relay.example lost (connection reset by the relay or by something on the way), reconnecting…",
        "resumeproxy: session 0123456789abcdef is gone from relay bastion.example:7022: this is instance relay-3, not relay-2, which holds it: relay-2 is down or gone; the ssh connection is lost",
        "resumeproxy: session 0123456789abcdef is gone from relay bastion.example:7022: it reached another pinned key of the relay (SHA256:a), not the one the session was opened with (SHA256:b): another instance of a fleet, its own being down or gone, or a rotated key; the ssh connection is lost",
        "resumeproxy: session 0123456789abcdef is gone from relay [2001:db8::1]:7022: no such session on this relay: it expired after its grace period, or the relay was restarted; the ssh connection is lost",
        "resumeproxy: link to relay.example lost (data stopped for 5.0s while small packets still pass), reconnecting…",
        "resumeproxy: link to relay.example lost (nothing heard for 5.0s on the new link, though its handshake passed), reconnecting…",
        "resumeproxy: large packets to and from relay.example are lost while small ones pass (a smaller path MTU: a VPN or tunnel?); this session uses TCP segments of at most 1200 bytes from now on",
    ] {
        assert!(check_line(ours).is_ok(), "{ours}: {:?}", check_line(ours));
    }
    for other in [
        "resumeproxy: session 0123 is gone from relay r:1: Os { code: 2 }; the ssh connection is lost",
        "resumeproxy: session 0123 is gone from relay r:1: something else; the ssh connection is lost",
        "resumeproxy: session 0123 is gone from relay r:1: this is instance relay-3",
        "WARN quinn: sending failed",
        "resumeproxy: large packets to and from relay.example are lost while small ones pass (a smaller path MTU: a VPN or tunnel?); this session uses TCP segments of at most many bytes from now on",
    ] {
        assert!(check_line(other).is_err(), "{other}");
    }
}

#[test]
fn the_client_speaks_only_in_its_own_lines_through_faults() -> Result<()> {
    let flags = "--transport auto --dead-after 1s";
    let Some(bench) = Bench::start_with("200mbit", &[], flags)? else {
        return Ok(());
    };
    let lab = &bench.lab;
    const SIZE: u64 = 160 << 20;
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, SIZE, 21)?;
    // The downloads stay open after their last byte until `hold` appears, so
    // that a transfer finishing early cannot leave a fault unseen.
    let hold = bench.sshd.dir().join("hold");
    let remote = format!(
        "cat {}; while [ ! -e {} ]; do sleep 0.05; done",
        src.display(),
        hold.display()
    );
    let mut ssh = Watched::spawn(
        lab.in_client(&bench.sshd.ssh_command(Some(&bench.proxy), &remote)),
        Stdio::null(),
        Stdio::from(File::create(&dst)?),
    )?;
    let resumed = |ssh: &Watched, n: usize| -> Result<()> {
        let deadline = std::time::Instant::now() + RESUME_TIMEOUT;
        while ssh.stderr.count(RESUMED) < n {
            ensure!(
                std::time::Instant::now() < deadline,
                "no resume {n}: {}",
                ssh.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };

    // UDP blocked: the QUIC session goes on over TCP.
    ssh.wait_for_bytes(&dst, SIZE / 5, PROGRESS_TIMEOUT)?;
    let udp = lab.block_udp()?;
    resumed(&ssh, 1)?;

    // A reset storm on TCP, UDP still blocked.
    ssh.wait_for_bytes(&dst, 2 * SIZE / 5, PROGRESS_TIMEOUT)?;
    let storm = lab.reset_burst()?;
    std::thread::sleep(Duration::from_secs(1));
    storm.lift()?;
    resumed(&ssh, 2)?;
    udp.lift()?;

    // A silent partition: every send fails locally. A second download,
    // over QUIC only, is running too, so that QUIC's sends fail.
    ssh.wait_for_bytes(&dst, 3 * SIZE / 5, PROGRESS_TIMEOUT)?;
    let quic_proxy = proxy_command(
        bench.relay.addr(),
        bench.sshd.port(),
        "--transport quic --dead-after 1s",
    );
    let quic_dst = bench.sshd.dir().join("quic.dst");
    let mut quic = Watched::spawn(
        lab.in_client(&bench.sshd.ssh_command(Some(&quic_proxy), &remote)),
        Stdio::null(),
        Stdio::from(File::create(&quic_dst)?),
    )?;
    quic.wait_for_bytes(&quic_dst, SIZE / 5, PROGRESS_TIMEOUT)?;
    let partition = lab.partition()?;
    // A new client starting meanwhile gives up after its connect timeout.
    let starter_proxy = proxy_command(
        bench.relay.addr(),
        bench.sshd.port(),
        "--transport quic --connect-timeout 2s",
    );
    let mut starter = Watched::spawn(
        lab.in_client(&bench.sshd.ssh_command(Some(&starter_proxy), "true")),
        Stdio::null(),
        Stdio::null(),
    )?;
    let started = starter.wait(Duration::from_secs(20))?;
    ensure!(started.code() == Some(255), "starter: {started}");
    starter
        .stderr
        .wait_for(0, "cannot reach relay", Duration::from_secs(5))?;
    partition.lift()?;
    resumed(&ssh, 3)?;
    resumed(&quic, 1)?;
    File::create(&hold)?;

    let status = ssh.wait(Duration::from_secs(180))?;
    ensure!(status.success(), "ssh {status}: {}", ssh.stderr.text());
    let status = quic.wait(Duration::from_secs(180))?;
    ensure!(
        status.success(),
        "ssh over QUIC {status}: {}",
        quic.stderr.text()
    );
    let want = sha256_file(&src)?;
    assert_eq!(sha256_file(&dst)?, want, "sha256");
    assert_eq!(sha256_file(&quic_dst)?, want, "sha256 over QUIC");
    let mut lines: Vec<String> = ssh.stderr.text().lines().map(str::to_owned).collect();
    lines.extend(quic.stderr.text().lines().map(str::to_owned));
    lines.extend(starter.stderr.text().lines().map(str::to_owned));
    for line in &lines {
        check_line(line)?;
    }
    eprintln!("{} lines, every one documented:", lines.len());
    for line in &lines {
        eprintln!("  {line}");
    }
    Ok(())
}
