//! End-to-end: the real OpenSSH client and server through the real
//! `resumeproxy` and `resumeproxyd` binaries, with a userspace fault injector
//! between client and relay that resets connections and makes silent
//! partitions. Every transfer is checked by sha256 of both ends.

mod support;

use anyhow::{ensure, Context, Result};
use resumeproxy::demo::fault::FaultInjector;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::process::{exit_and_stderr, run_within, stderr_of};
use support::relay::{
    proxy_command, proxy_command_with_status, wait_for_status, RelayProcess, CLIENT_FLAGS, RESUMED,
};
use support::sshd::{free_port, TestSshd};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A silent partition in these tests: longer than `--dead-after`.
const PARTITION: Duration = Duration::from_millis(1500);
/// Upper bound for any single ssh run.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Breaks the link through `injector` every `every`, alternating a reset of
/// every connection and a silent partition, until dropped.
struct Breaker {
    task: JoinHandle<()>,
    resets: Arc<AtomicU64>,
    partitions: Arc<AtomicU64>,
}

impl Breaker {
    fn start(injector: Arc<FaultInjector>, every: Duration) -> Breaker {
        let resets = Arc::new(AtomicU64::new(0));
        let partitions = Arc::new(AtomicU64::new(0));
        let (r, p) = (Arc::clone(&resets), Arc::clone(&partitions));
        let task = tokio::spawn(async move {
            for n in 1u64.. {
                tokio::time::sleep(every).await;
                if n % 2 == 1 {
                    if injector.kill_all() > 0 {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    injector.set_partitioned(true);
                    p.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(PARTITION).await;
                    injector.set_partitioned(false);
                }
            }
        });
        Breaker {
            task,
            resets,
            partitions,
        }
    }

    /// Stops breaking; returns (resets, partitions) injected.
    fn stop(self) -> (u64, u64) {
        self.task.abort();
        (
            self.resets.load(Ordering::SeqCst),
            self.partitions.load(Ordering::SeqCst),
        )
    }
}

/// Runs a command to completion within [`RUN_TIMEOUT`], killing it otherwise.
async fn run(cmd: std::process::Command, stdin: Stdio, stdout: Stdio) -> Result<Output> {
    run_within(cmd, stdin, stdout, RUN_TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_output_arrives_and_both_ends_finish_cleanly() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let status = sshd.dir().join("client.status");
    let proxy = proxy_command_with_status(relay.addr(), sshd.port(), CLIENT_FLAGS, &status);
    let out = run(
        sshd.ssh_command(Some(&proxy), "echo hello through resumeproxy"),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    ensure!(out.status.success(), "ssh failed: {}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through resumeproxy\n"
    );
    assert_eq!(
        wait_for_status(&status, Duration::from_secs(10))?,
        "0",
        "client exit status"
    );
    relay.wait_for_log("session ended: complete", Duration::from_secs(10))?;
    let started = relay.wait_for_log("session started", Duration::ZERO)?;
    assert!(
        started.contains("local_port="),
        "audit line names the port towards sshd: {started}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfers_both_ways_survive_resets_and_silent_partitions() -> Result<()> {
    const SIZE: u64 = 256 << 20;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let injector = Arc::new(FaultInjector::start(relay.addr()).await?);
    let proxy = proxy_command(injector.addr(), sshd.port(), CLIENT_FLAGS);

    let up_src = sshd.dir().join("up.src");
    let up_dst = sshd.dir().join("up.dst");
    let down_src = sshd.dir().join("down.src");
    let down_dst = sshd.dir().join("down.dst");
    write_random_file(&up_src, SIZE, 1)?;
    write_random_file(&down_src, SIZE, 2)?;

    let breaker = Breaker::start(Arc::clone(&injector), Duration::from_secs(1));
    let upload = run(
        sshd.ssh_command(Some(&proxy), &format!("cat > {}", up_dst.display())),
        Stdio::from(File::open(&up_src)?),
        Stdio::null(),
    );
    let download = run(
        sshd.ssh_command(Some(&proxy), &format!("cat {}", down_src.display())),
        Stdio::null(),
        Stdio::from(File::create(&down_dst)?),
    );
    let (up, down) = tokio::join!(upload, download);
    let (resets, partitions) = breaker.stop();
    let (up, down) = (up?, down?);

    ensure!(up.status.success(), "upload failed: {}", stderr_of(&up));
    ensure!(
        down.status.success(),
        "download failed: {}",
        stderr_of(&down)
    );
    assert_eq!(
        sha256_file(&up_dst)?,
        sha256_file(&up_src)?,
        "upload sha256"
    );
    assert_eq!(
        sha256_file(&down_dst)?,
        sha256_file(&down_src)?,
        "download sha256"
    );
    assert!(
        resets >= 1 && partitions >= 1,
        "faults injected: {resets} resets, {partitions} partitions"
    );
    for (what, out) in [("upload", &up), ("download", &down)] {
        let resumed = stderr_of(out).matches(RESUMED).count();
        assert!(resumed >= 1, "{what} never resumed: {}", stderr_of(out));
    }
    Ok(())
}

/// Echoes every byte back.
async fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_forward_carries_a_stream_across_breaks() -> Result<()> {
    const SIZE: usize = 32 << 20;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let injector = Arc::new(FaultInjector::start(relay.addr()).await?);
    let proxy = proxy_command(injector.addr(), sshd.port(), CLIENT_FLAGS);
    let echo = echo_server().await?;
    let local_port = free_port()?;

    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-o").arg(format!("ProxyCommand={proxy}"));
    cmd.args(sshd.ssh_opts());
    cmd.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local_port}:127.0.0.1:{}", echo.port()),
        "127.0.0.1",
    ]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut ssh = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?;

    // Readiness: the forward accepts once ssh has logged in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", local_port)).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => anyhow::bail!("forward never opened: {e}"),
        }
    };

    let breaker = Breaker::start(Arc::clone(&injector), Duration::from_secs(1));
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent_hash = Sha256::digest(&data);
    let (mut r, mut w) = stream.split();
    let writer = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await?;
            // Keep the stream long-lived, so breaks land in the middle of it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.shutdown().await
    };
    let reader = async {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < SIZE {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
        }
        Ok::<_, std::io::Error>((total, hasher.finalize()))
    };
    let (written, read) =
        tokio::time::timeout(RUN_TIMEOUT, async { tokio::join!(writer, reader) }).await?;
    let (resets, partitions) = breaker.stop();
    written?;
    let (total, echoed_hash) = read?;
    assert_eq!(total, SIZE, "bytes echoed through the forward");
    assert_eq!(echoed_hash, sent_hash, "sha256 through the forward");
    assert!(
        resets + partitions >= 2,
        "faults injected: {resets} resets, {partitions} partitions"
    );
    assert!(
        relay.count("session resumed") >= 1,
        "no resume happened:\n{}",
        relay.log()
    );
    ssh.kill().await?;
    Ok(())
}

/// Starts an ssh session that stays open doing nothing, once it is logged in.
async fn idle_session(sshd: &TestSshd, proxy: &str) -> Result<tokio::process::Child> {
    let mut cmd = sshd.ssh_command(Some(proxy), "echo ready; exec sleep 600");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ssh = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(ssh.stdout.take().context("ssh stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??;
    ensure!(
        first.as_deref() == Some("ready"),
        "session did not start: {first:?}"
    );
    Ok(ssh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_outlives_grace_ends_with_255_and_a_clear_line() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &["--grace", "2s"])?;
    let injector = FaultInjector::start(relay.addr()).await?;
    let status = sshd.dir().join("client.status");
    let proxy = proxy_command_with_status(injector.addr(), sshd.port(), CLIENT_FLAGS, &status);
    let mut ssh = idle_session(&sshd, &proxy).await?;

    injector.set_partitioned(true);
    let expired = relay.wait_for_log("expired", Duration::from_secs(20))?;
    injector.set_partitioned(false);
    assert!(expired.contains("session ended"), "{expired}");

    let (exit, stderr) = exit_and_stderr(&mut ssh, Duration::from_secs(20)).await?;
    assert_eq!(exit.code(), Some(255), "ssh exit; stderr: {stderr}");
    assert_eq!(
        wait_for_status(&status, Duration::from_secs(10))?,
        "255",
        "client exit status"
    );
    let gone: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("is gone from relay"))
        .collect();
    assert_eq!(gone.len(), 1, "one clear line; stderr: {stderr}");
    assert!(gone[0].starts_with("resumeproxy: session "), "{}", gone[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_closing_delivers_everything_and_the_client_exits_0() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let status = sshd.dir().join("client.status");
    let file = sshd.dir().join("payload");
    write_random_file(&file, 8 << 20, 3)?;
    let copy = sshd.dir().join("copy");
    let proxy = proxy_command_with_status(relay.addr(), sshd.port(), CLIENT_FLAGS, &status);
    // The remote shell sends the file, gives sshd a moment to pass it on, then
    // kills its own sshd process: the server side ends the connection.
    let remote = format!("cat {}; sleep 1; kill -9 $PPID", file.display());
    let out = run(
        sshd.ssh_command(Some(&proxy), &remote),
        Stdio::null(),
        Stdio::from(File::create(&copy)?),
    )
    .await?;
    assert_eq!(
        sha256_file(&copy)?,
        sha256_file(&file)?,
        "everything sshd sent arrived"
    );
    assert_eq!(
        out.status.code(),
        Some(255),
        "ssh reports the lost connection"
    );
    assert_eq!(
        wait_for_status(&status, Duration::from_secs(10))?,
        "0",
        "client exit status; ssh said: {}",
        stderr_of(&out)
    );
    relay.wait_for_log("session ended: complete", Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_fails_fast_with_one_line() -> Result<()> {
    let sshd = TestSshd::start()?;
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let proxy = proxy_command(nobody, sshd.port(), CLIENT_FLAGS);
    let started = Instant::now();
    let out = run(
        sshd.ssh_command(Some(&proxy), "true"),
        Stdio::null(),
        Stdio::null(),
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(255));
    let stderr = stderr_of(&out);
    let line = format!(
        "resumeproxy: cannot reach relay at 127.0.0.1:{}",
        nobody.port()
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with(&line)).count(),
        1,
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_port_the_relay_does_not_allow_is_refused_with_its_reason() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let proxy = proxy_command(relay.addr(), sshd.port().wrapping_add(1), CLIENT_FLAGS);
    let out = run(
        sshd.ssh_command(Some(&proxy), "true"),
        Stdio::null(),
        Stdio::null(),
    )
    .await?;
    assert_eq!(out.status.code(), Some(255));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!(
            "refused the session: this relay forwards only to port {}",
            sshd.port()
        )),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_ends_the_session_with_255_promptly() -> Result<()> {
    let sshd = TestSshd::start()?;
    let mut relay = RelayProcess::start(sshd.port(), &[])?;
    let addr = relay.addr();
    let proxy = proxy_command(addr, sshd.port(), CLIENT_FLAGS);
    let mut ssh = idle_session(&sshd, &proxy).await?;

    relay.kill();
    let _restarted = RelayProcess::start_on(&addr.to_string(), sshd.port(), &[])?;
    let (exit, stderr) = exit_and_stderr(&mut ssh, Duration::from_secs(15)).await?;
    assert_eq!(exit.code(), Some(255), "{stderr}");
    assert!(stderr.contains("is gone from relay"), "{stderr}");
    Ok(())
}

/// SIGTERM (systemd stopping the relay): the relay tells the client why and
/// closes sshd's connection; the client exits 255 with that reason at once,
/// instead of reconnecting to a relay that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_relay_tells_the_client_why() -> Result<()> {
    let sshd = TestSshd::start()?;
    let mut relay = RelayProcess::start(sshd.port(), &[])?;
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT_FLAGS);
    let mut ssh = idle_session(&sshd, &proxy).await?;

    let exited_cleanly = tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(10)))?;
    assert!(exited_cleanly, "relay exit status on SIGTERM");
    assert!(
        relay
            .log()
            .contains("session ended: the relay is shutting down"),
        "{}",
        relay.log()
    );
    let (exit, stderr) = exit_and_stderr(&mut ssh, Duration::from_secs(5)).await?;
    assert_eq!(exit.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("closed the session: the relay is shutting down"),
        "{stderr}"
    );
    Ok(())
}
