//! Security, end to end: the relay is known by its key. A changed relay
//! key stops the client with the loud warning naming the known_relays file
//! and line, exit 255, file untouched; a wrong `--relay-fingerprint`
//! likewise; and a live session whose relay comes back with another key
//! ends the same way instead of resuming.

mod support;

use anyhow::{ensure, Context, Result};
use resumeproxy::transport::identity::{Fingerprint, RelayKey};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::process::{exit_and_stderr, stderr_of};
use support::relay::{
    proxy_command, proxy_command_with_status, wait_for_status, RelayProcess, CLIENT_FLAGS,
};
use support::security::{run, EVENT_TIMEOUT};
use support::sshd::TestSshd;
use tokio::io::AsyncReadExt;

fn fingerprint_of(key_file: &Path) -> Result<Fingerprint> {
    Ok(RelayKey::load_or_create(key_file)?.0.fingerprint())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_relay_key_stops_the_client_with_the_warning() -> Result<()> {
    let sshd = TestSshd::start()?;
    let key_a = sshd.dir().join("relay-a.key");
    let key_b = sshd.dir().join("relay-b.key");
    let (fp_a, fp_b) = (fingerprint_of(&key_a)?, fingerprint_of(&key_b)?);
    let known = sshd.dir().join("known_relays");
    let key_a_arg = key_a.display().to_string();
    let key_b_arg = key_b.display().to_string();
    let mut relay_a = RelayProcess::start(sshd.port(), &["--key-file", &key_a_arg])?;
    let addr = relay_a.addr();
    let flags = format!("{CLIENT_FLAGS} --known-relays {}", known.display());

    // First use pins relay A's key on line 1.
    let status = sshd.dir().join("first.status");
    let proxy = proxy_command_with_status(addr, sshd.port(), &flags, &status);
    let out = run(
        sshd.ssh_command(Some(&proxy), "echo first"),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    ensure!(out.status.success(), "first use: {}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!(
            "resumeproxy: pinned the key of relay {addr} ({fp_a}) in {}",
            known.display()
        )),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(wait_for_status(&status, Duration::from_secs(10))?, "0");
    let pinned = std::fs::read_to_string(&known)?;
    assert_eq!(pinned, format!("{addr} {fp_a}\n"));

    // A session is open when the relay comes back on the same address with
    // another key: the client does not resume, and says why.
    let mut cmd = sshd.ssh_command(
        Some(&proxy_command(addr, sshd.port(), &flags)),
        "echo ready; exec sleep 600",
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut idle = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?;
    let mut ready = [0u8; 6];
    let mut idle_out = idle.stdout.take().context("ssh stdout")?;
    tokio::time::timeout(EVENT_TIMEOUT, idle_out.read_exact(&mut ready)).await??;
    assert_eq!(&ready, b"ready\n");
    relay_a.kill();
    let relay_b =
        RelayProcess::start_on(&addr.to_string(), sshd.port(), &["--key-file", &key_b_arg])?;
    let (exit, stderr) = exit_and_stderr(&mut idle, EVENT_TIMEOUT).await?;
    assert_eq!(exit.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("RELAY IDENTIFICATION HAS CHANGED"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("The relay presented the key {fp_b}.")),
        "{stderr}"
    );
    assert!(!stderr.contains("resumed after"), "{stderr}");
    // It names the pin to remove, not a --relay-fingerprint nobody gave.
    assert!(
        stderr.contains(&format!("Pinned in {} (line 1): {fp_a}", known.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("--relay-fingerprint"), "{stderr}");

    // A new connection is refused before anything is sent, loudly.
    let status = sshd.dir().join("changed.status");
    let proxy = proxy_command_with_status(addr, sshd.port(), &flags, &status);
    let out = run(
        sshd.ssh_command(Some(&proxy), "echo never"),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran");
    assert_eq!(wait_for_status(&status, Duration::from_secs(10))?, "255");
    for expected in [
        "WARNING: RELAY IDENTIFICATION HAS CHANGED!".to_string(),
        format!("The relay presented the key {fp_b}."),
        format!("Pinned in {} (line 1): {fp_a}", known.display()),
        format!("sed -i '1d' {}", known.display()),
        "Refusing to connect.".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} in: {stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(&known)?,
        pinned,
        "the pin is left alone"
    );

    // An explicit fingerprint that is not the relay's.
    for wrong in [fp_a, Fingerprint::of_spki(b"no relay has this key")] {
        let flags = format!("{CLIENT_FLAGS} --relay-fingerprint {wrong}");
        let out = run(
            sshd.ssh_command(
                Some(&proxy_command(addr, sshd.port(), &flags)),
                "echo never",
            ),
            Stdio::null(),
            Stdio::piped(),
        )
        .await?;
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(255), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing ran");
        assert!(
            stderr.contains("RELAY IDENTIFICATION HAS CHANGED"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("Expected (--relay-fingerprint): {wrong}")),
            "{stderr}"
        );
    }
    assert_eq!(relay_b.count("session started"), 0, "{}", relay_b.log());
    Ok(())
}
