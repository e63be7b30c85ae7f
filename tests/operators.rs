//! The operator-facing commands with the real OpenSSH client and server:
//!
//! * `resumeproxy status` shows a live session while it is connected and
//!   while it reconnects (with its attempts), and `resumeproxy resume` makes
//!   a reconnecting client try at once — well before its own schedule;
//! * `resumeproxy wrap -- rsync …` carries a tree through resumeproxy with an
//!   empty ssh_config (`-F /dev/null`), sha256 equal at both ends, and
//!   returns rsync's exit status.

mod support;

use anyhow::{bail, ensure, Context, Result};
use resumeproxy::client::control::{LinkState, StatusReport};
use resumeproxy::demo::fault::FaultInjector;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::relay::{proxy_command, test_key, RelayProcess};
use support::sshd::{client_status as status, TestSshd};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Polls `status` until `pred` holds for the one session, within `timeout`.
fn wait_status(
    sshd: &TestSshd,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&StatusReport) -> bool,
) -> Result<StatusReport> {
    let deadline = Instant::now() + timeout;
    loop {
        let reports = status(sshd)?;
        if let [report] = reports.as_slice() {
            if pred(report) {
                return Ok(report.clone());
            }
        }
        if Instant::now() >= deadline {
            bail!("status never showed {what}; last: {reports:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_session_and_resume_skips_the_wait() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let injector = FaultInjector::start(relay.addr()).await?;
    let proxy = proxy_command(injector.addr(), sshd.port(), "--dead-after 1s");
    let mut cmd = sshd.ssh_command(Some(&proxy), "echo ready; exec sleep 600");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut ssh = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(ssh.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??;
    ensure!(first.as_deref() == Some("ready"), "no session: {first:?}");

    let connected = tokio::task::block_in_place(|| {
        wait_status(&sshd, Duration::from_secs(5), "connected", |r| {
            r.link == LinkState::Connected
        })
    })?;
    assert_eq!(connected.relay, injector.addr().to_string());
    // The relay's own target, named as ssh named it (%h %p).
    assert_eq!(
        connected.target,
        format!("{}:{}", injector.addr().ip(), sshd.port())
    );
    assert_eq!(connected.transport, "tls");
    assert!(connected.bytes_received > 0, "{connected:?}");

    // A partition: the client notices within --dead-after and retries;
    // each attempt waits a second on the dead path before the next.
    injector.set_partitioned(true);
    let reconnecting = tokio::task::block_in_place(|| {
        wait_status(
            &sshd,
            Duration::from_secs(10),
            "a second attempt",
            |r| matches!(r.link, LinkState::Reconnecting { attempts, .. } if attempts >= 2),
        )
    })?;
    let LinkState::Reconnecting { attempts, .. } = reconnecting.link else {
        unreachable!()
    };
    // The network is back. Left alone, the client would finish its current
    // attempt (up to a second on the dead path) and then back off; asked,
    // it tries at once.
    injector.set_partitioned(false);
    let asked_at = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxy"));
    cmd.args(["resume", "--all"]);
    sshd.private_env(&mut cmd);
    let out = cmd.output()?;
    ensure!(out.status.success(), "resume failed: {out:?}");
    let back = tokio::task::block_in_place(|| {
        wait_status(&sshd, Duration::from_secs(5), "connected again", |r| {
            r.link == LinkState::Connected
        })
    })?;
    let took = asked_at.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "resumed {took:?} after `resume` (attempt {attempts} was under way)"
    );
    assert_eq!(back.reconnects, 1, "{back:?}");
    ssh.kill().await?;
    Ok(())
}

/// Files under `root`, relative, with their sha256, sorted.
fn tree_hashes(root: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root)?.display().to_string();
                out.push((rel, sha256_file(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_carries_rsync_with_an_empty_ssh_config() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let src = sshd.dir().join("src");
    for i in 0..20 {
        let dir = src.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir)?;
        write_random_file(&dir.join(format!("f{i}")), 1000 + i * 777, i)?;
    }
    write_random_file(&src.join("big"), 8 << 20, 99)?;
    let dst = sshd.dir().join("dst");

    // The remote shell says how to log in to the test sshd, and nothing
    // about resumeproxy (-F /dev/null: no ssh_config at all).
    let rsh = format!("ssh {}", sshd.ssh_opts().join(" "));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxy"));
    cmd.args(["wrap", "--relay-port", &relay.addr().port().to_string()])
        .args(["--relay-fingerprint", &test_key().1, "--"])
        .args(["rsync", "-a", "-e", &rsh])
        .arg(format!("{}/", src.display()))
        .arg(format!("127.0.0.1:{}/", dst.display()));
    sshd.private_env(&mut cmd);
    let out = tokio::task::block_in_place(|| cmd.output())?;
    assert!(out.status.success(), "wrap rsync: {out:?}");
    assert_eq!(tree_hashes(&src)?, tree_hashes(&dst)?);
    assert!(
        relay.log().contains("session ended: complete"),
        "the transfer went through the relay: {}",
        relay.log()
    );

    // The command's own exit status comes back (rsync: 23, partial transfer).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxy"));
    cmd.args(["wrap", "--relay-port", &relay.addr().port().to_string()])
        .args(["--relay-fingerprint", &test_key().1, "--"])
        .args(["rsync", "-a", "-e", &rsh])
        .arg(format!("127.0.0.1:{}/no-such-file", dst.display()))
        .arg(sshd.dir().join("nowhere"));
    sshd.private_env(&mut cmd);
    let out = tokio::task::block_in_place(|| cmd.output())?;
    assert_eq!(out.status.code(), Some(23), "{out:?}");
    Ok(())
}
