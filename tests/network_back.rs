//! The client follows the network as the kernel announces it (rtnetlink),
//! in the network-namespace lab (as root; skipped otherwise): the real
//! OpenSSH client and server through `resumeproxy` and `resumeproxyd`, over
//! TCP and over QUIC, with `--dead-after 30s` so that only the kernel's
//! events can explain a prompt reaction.
//!
//! While a download runs, the client's veth is set down (its address stays):
//! the client abandons its transport at once, with a line that says why,
//! instead of after `--dead-after`. Then it is set up again: the client
//! reconnects at once instead of after its backoff. Times are measured from
//! the start of the `ip` command (an upper bound: the kernel's event, and
//! often the resume, come before `ip` has exited) to the client's line and
//! to the relay logging the resume; they are printed and bounded. The
//! download arrives whole (sha256).

mod support;

use anyhow::{ensure, Result};
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::faults::{Bench, PROGRESS_TIMEOUT};
use support::netns::CLIENT_IF;
use support::process::{output_within, Watched};
use support::relay::LOST;
use support::sshd::{sha256_file, write_random_file};

/// How soon a link gone down must be noticed (`--dead-after` is 30 s).
const NOTICED_WITHIN: Duration = Duration::from_secs(1);
/// How soon after the link is back the session must have resumed. The
/// issue asks for 100 ms to the reconnect; this bound includes the
/// handshakes and the relay's log line, on 2 shared cores.
const RESUMED_WITHIN: Duration = Duration::from_millis(100);

/// `ip link set <client's veth> up|down` in the client's namespace.
fn set_link(bench: &Bench, state: &str) -> Result<()> {
    let mut ip = Command::new("ip");
    ip.args(["-n", bench.lab.client_ns(), "link", "set", CLIENT_IF, state]);
    let (status, stderr, _) = output_within(&mut ip, Duration::from_secs(20))?;
    ensure!(status.success(), "ip link set {state}: {stderr}");
    Ok(())
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
        let up = Instant::now();
        set_link(&bench, "up")?;
        let resumed = bench
            .relay
            .wait_for_count("session resumed", 1, Duration::from_secs(10))?;
        let back = up.elapsed();
        ensure!(
            back <= RESUMED_WITHIN,
            "{transport}: resumed only {back:?} after the link was up: {resumed}"
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
             resumed {back:.0?} after the link was up"
        );
    }
    Ok(())
}
