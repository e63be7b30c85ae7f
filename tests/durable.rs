//! The durable relay: a restart, an upgrade or a crash of `resumeproxyd`'s
//! worker loses no session. Real ssh and sshd, real transfers checked by
//! sha256 at both ends, the worker killed with SIGKILL while they run.

mod support;

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::durable::{kill_worker, resumes_after_each_start, show_resumes};
use support::process::{file_len, wait_progress, wait_timeout, Watched};
use support::relay::{proxy_command, RelayProcess, CLIENT_FLAGS};
use support::sshd::TestSshd;

/// Bound on the whole transfer.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits until the file at `path` holds `bytes` (a transfer is making
/// progress), or fails after [`RUN_TIMEOUT`].
fn wait_for_growth(path: &Path, bytes: u64) -> Result<u64> {
    wait_progress(&|| Ok(file_len(path)), &mut || Ok(true), bytes, RUN_TIMEOUT)
        .with_context(|| format!("no progress in {}", path.display()))
}

/// Upload and download at once through the relay; the worker is killed
/// three times (SIGKILL) and upgraded once (SIGUSR2 to the keeper) while
/// they run. Both arrive whole, ssh exits 0, and every resume comes within
/// a second of the new worker listening.
#[test]
fn transfers_survive_three_worker_kills_and_an_upgrade() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT_FLAGS);
    let size: u64 = 256 << 20;
    let dir = sshd.dir();
    let (up_src, up_dst) = (dir.join("up.src"), dir.join("up.dst"));
    let (down_src, down_dst) = (dir.join("down.src"), dir.join("down.dst"));
    write_random_file(&up_src, size, 1)?;
    write_random_file(&down_src, size, 2)?;

    let mut up = sshd
        .ssh_command(Some(&proxy), &format!("cat > {}", up_dst.display()))
        .stdin(File::open(&up_src)?)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut down = sshd
        .ssh_command(Some(&proxy), &format!("cat {}", down_src.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&down_dst)?)
        .stderr(Stdio::piped())
        .spawn()?;

    let mut marks = (0, 0);
    for restart in 1..=4 {
        marks.0 = wait_for_growth(&up_dst, marks.0 + size / 16)?;
        marks.1 = wait_for_growth(&down_dst, marks.1 + size / 16)?;
        if restart < 4 {
            kill_worker(&relay)?;
        } else {
            relay.signal(libc::SIGUSR2)?;
            relay.wait_for_count("listening on", restart + 1, Duration::from_secs(20))?;
        }
    }
    let deadline = Instant::now() + RUN_TIMEOUT;
    for (name, child) in [("upload", &mut up), ("download", &mut down)] {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_timeout(child, left).context(name)?;
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr)?;
        }
        ensure!(
            status.success(),
            "{name}: ssh {status}; stderr:\n{stderr}\nrelay log:\n{}",
            relay.log()
        );
    }
    assert_eq!(sha256_file(&up_src)?, sha256_file(&up_dst)?, "upload");
    assert_eq!(sha256_file(&down_src)?, sha256_file(&down_dst)?, "download");
    let resumes = resumes_after_each_start(&relay, 2)?;
    println!(
        "resumes after each new worker listened: {}",
        show_resumes(&resumes)
    );
    Ok(())
}

/// QUIC clients through an upgrade and a SIGKILL, on loopback: a client on
/// `--transport quic` and one on `auto` both resume over QUIC within a
/// second of each new worker listening. The worker that stops for the
/// upgrade no longer reads the UDP socket once it has told its clients, so
/// their new connections wait for the next worker (were it still reading,
/// it would drop them: the QUIC client would try again only after a
/// second, and the `auto` one would fall back to TCP and remember UDP as
/// blocked); the new worker's stateless reset ends the connections of the
/// killed one.
#[test]
fn quic_clients_resume_over_quic_after_an_upgrade_and_a_kill() -> Result<()> {
    use std::io::Write;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let mut clients = Vec::new();
    for transport in ["quic", "auto"] {
        let flags = format!("--transport {transport} {CLIENT_FLAGS}");
        let proxy = proxy_command(relay.addr(), sshd.port(), &flags);
        // Logged in through the relay, the session open end to end: a
        // restart before the client heard that its session was open would
        // (rightly) make it open a new one instead of resuming.
        let command = sshd.ssh_command(Some(&proxy), "echo ready; exec cat");
        let (ssh, rest) = Watched::ready(command, Stdio::piped()).context(transport)?;
        clients.push((ssh, rest));
    }
    for n in 1..=2 {
        let line = relay.wait_for_count("session started", n, Duration::from_secs(10))?;
        ensure!(line.contains("transport=quic"), "{line}");
    }
    relay.signal(libc::SIGUSR2)?;
    relay.wait_for_count("listening on", 2, Duration::from_secs(20))?;
    relay.wait_for_count("session resumed", 2, Duration::from_secs(10))?;
    kill_worker(&relay)?;
    relay.wait_for_count("session resumed", 4, Duration::from_secs(10))?;
    for (mut ssh, rest) in clients {
        let mut stdin = ssh.child.stdin.take().context("stdin")?;
        stdin.write_all(b"still here\n")?;
        drop(stdin);
        let status = ssh.wait(Duration::from_secs(30))?;
        let out = rest
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        ensure!(
            status.success() && out == "still here\n",
            "ssh {status}, out {out:?}; stderr:\n{}",
            ssh.stderr.text()
        );
    }
    let resumes = resumes_after_each_start(&relay, 2)?;
    // `auto` races TCP against QUIC: on a loaded machine TCP may win a
    // resume (the session then moves back onto QUIC in the background, see
    // tests/quic.rs); what must not happen is UDP taken for blocked.
    let memory = sshd.dir().join("state/resumeproxy/udp-failed");
    ensure!(!memory.exists(), "UDP remembered as blocked");
    println!(
        "QUIC resumes after the upgrade, then the kill: {}",
        show_resumes(&resumes)
    );
    Ok(())
}
