//! The client follows the network as the kernel announces it (rtnetlink),
//! in the network-namespace lab (as root; skipped otherwise): the real
//! OpenSSH client and server through `resumeproxy` and `resumeproxyd`, over
//! TCP and over QUIC, with `--dead-after 30s` so that only the kernel's
//! events can explain a prompt reaction.
//!
//! While a download runs, the client's veth is set down (its address stays):
//! the client abandons its transport at once, with a line that says why,
//! instead of after `--dead-after`. Then it is set up again: the client
//! reconnects at once instead of after its backoff. The loss is timed from
//! the start of the `ip` command (an upper bound: the kernel's event comes
//! before `ip` has exited) to the client's line; the resume from the link
//! carrying packets again — the first reply of a UDP echo across it, probed
//! every 5 ms (on a loaded machine the link drops what is sent for up to a
//! second after `ip link set up`, until the kernel gets to its carrier) —
//! to the relay's log line. Both are printed and bounded. The download
//! arrives whole (sha256).

mod support;

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::faults::{Bench, PROGRESS_TIMEOUT};
use support::netns::{NetLab, CLIENT_IF};
use support::process::{output_within, Watched};
use support::relay::LOST;

/// How soon a link gone down must be noticed (`--dead-after` is 30 s).
const NOTICED_WITHIN: Duration = Duration::from_secs(1);
/// How soon after the link carries packets again the session must have
/// resumed. The issue asks for 100 ms to the reconnect; this bound includes
/// the handshakes and the relay's log line, on 2 shared cores.
const RESUMED_WITHIN: Duration = Duration::from_millis(100);

/// `ip link set <client's veth> up|down` in the client's namespace.
fn set_link(bench: &Bench, state: &str) -> Result<()> {
    let mut ip = Command::new("ip");
    ip.args(["-n", bench.lab.client_ns(), "link", "set", CLIENT_IF, state]);
    let (status, stderr, _) = output_within(&mut ip, Duration::from_secs(20))?;
    ensure!(status.success(), "ip link set {state}: {stderr}");
    Ok(())
}

/// When the path from the client's namespace to the server's carries
/// packets again: a UDP echo in the server's namespace, and from the
/// client's a datagram every 5 ms until one comes back (sends fail while
/// the link is down). Started before the link is set up; returns the time
/// of the first echo, as microseconds since 1970.
struct PathProbe {
    first_echo: std::thread::JoinHandle<Result<i64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl PathProbe {
    fn start(bench: &Bench) -> Result<PathProbe> {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        let server_ns = bench.lab.server_ns().to_owned();
        let client_ns = bench.lab.client_ns().to_owned();
        let server_addr = bench.lab.server_addr();
        let echo = NetLab::in_netns(&server_ns, || Ok(UdpSocket::bind((server_addr, 0))?))?;
        let target = echo.local_addr()?;
        let probe = NetLab::in_netns(&client_ns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?))?;
        let stop = Arc::new(AtomicBool::new(false));
        echo.set_read_timeout(Some(Duration::from_millis(50)))?;
        let echo_stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !echo_stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        probe.set_read_timeout(Some(Duration::from_millis(5)))?;
        let probe_stop = Arc::clone(&stop);
        let first_echo = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 64];
            while Instant::now() < deadline && !probe_stop.load(Ordering::Relaxed) {
                // Fails while the link is down: then the wait is the pause.
                if probe.send_to(b"probe", target).is_err() {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if probe.recv_from(&mut buf).is_ok() {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                    return Ok(i64::try_from(now.as_micros())?);
                }
            }
            bail!("no echo across the link within 10 s")
        });
        Ok(PathProbe { first_echo, stop })
    }

    /// The time of the first echo (microseconds since 1970).
    fn first_echo(self) -> Result<i64> {
        let result = self
            .first_echo
            .join()
            .map_err(|_| anyhow::anyhow!("the probe panicked"))?;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    }
}

/// Microseconds since 1970 of a UTC time stamp that starts with
/// `YYYY-MM-DDTHH:MM:SS.ffffff` (the relay's log lines).
fn stamp_micros(stamp: &str) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, min, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac: String = stamp
        .get(20..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let micros = format!("{frac:0<6}").get(..6)?.parse::<i64>().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000_000 + s * 1_000_000 + micros)
}

#[test]
fn stamps_are_read() {
    assert_eq!(stamp_micros("1970-01-01T00:00:01.5Z"), Some(1_500_000));
    let relay = "2026-12-01T06:04:26.839083Z  INFO session resumed";
    assert_eq!(stamp_micros(relay), Some(1_796_105_066_839_083));
    let (feb, mar) = ("2026-02-28T23:59:59.999999Z", "2026-03-01T00:00:00.000000Z");
    assert_eq!(
        stamp_micros(mar).zip(stamp_micros(feb)).map(|(m, f)| m - f),
        Some(1)
    );
}

#[test]
fn a_link_down_is_abandoned_at_once_and_a_link_up_reconnects_at_once() -> Result<()> {
    let _serial = support::faults::serial();
    for (transport, why) in [
        ("tcp", "the network interface it used went down"),
        ("quic", "no usable route to the relay any more"),
    ] {
        let flags = format!("--transport {transport} --dead-after 30s");
        let Some(bench) = Bench::start_with("400mbit", &[], &flags)? else {
            return Ok(());
        };
        const SIZE: u64 = 128 << 20;
        let src = bench.sshd.dir().join("src");
        let dst = bench.sshd.dir().join("dst");
        write_random_file(&src, SIZE, 31)?;
        let remote = format!("cat {}", src.display());
        let mut ssh = Watched::spawn(
            bench
                .lab
                .in_client(&bench.sshd.ssh_command(Some(&bench.proxy), &remote)),
            Stdio::null(),
            Stdio::from(File::create(&dst)?),
        )?;
        ssh.wait_for_bytes(&dst, SIZE / 4, PROGRESS_TIMEOUT)?;
        let from = ssh.stderr.len();
        let down = Instant::now();
        set_link(&bench, "down")?;
        let lost = ssh.stderr.wait_for(from, LOST, Duration::from_secs(10))?;
        let noticed = down.elapsed();
        ensure!(lost.contains(why), "{transport}: {lost}");
        ensure!(
            noticed <= NOTICED_WITHIN,
            "{transport}: noticed after {noticed:?}"
        );
        let probe = PathProbe::start(&bench)?;
        let up = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let up = i64::try_from(up.as_micros())?;
        set_link(&bench, "up")?;
        let carries = probe.first_echo()?;
        let resumed = bench
            .relay
            .wait_for_count("session resumed", 1, Duration::from_secs(10))?;
        let resumed_at =
            stamp_micros(&resumed).with_context(|| format!("no time stamp in {resumed:?}"))?;
        let (back, carrier) = (resumed_at - carries, carries - up);
        let (back_ms, carrier_ms) = (back as f64 / 1000.0, carrier as f64 / 1000.0);
        ensure!(
            back <= i64::try_from(RESUMED_WITHIN.as_micros())?,
            "{transport}: resumed only {back_ms:.1} ms after the link carried packets again \
             ({carrier_ms:.0} ms after ip link set up): {resumed}\n{}",
            ssh.stderr.text()
        );
        let exit = ssh.wait(Duration::from_secs(120))?;
        ensure!(
            exit.success(),
            "{transport}: ssh {exit}: {}",
            ssh.stderr.text()
        );
        assert_eq!(
            sha256_file(&dst)?,
            sha256_file(&src)?,
            "{transport}: sha256"
        );
        eprintln!(
            "{transport}: link down noticed after {noticed:.0?} ({lost}); \
             resumed {back_ms:+.1} ms from the link carrying packets again \
             ({carrier_ms:.0} ms after ip link set up)"
        );
    }
    Ok(())
}
