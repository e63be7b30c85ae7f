//! Security, end to end: the relay is not an open proxy. In bastion mode
//! (`--relay`), a target not named by `--allow` is refused with the reason
//! (naming `--allow`) and never connected to; an allowed one works.

mod support;

use anyhow::{ensure, Result};
use std::net::SocketAddr;
use std::process::Stdio;
use support::process::stderr_of;
use support::relay::{test_key, RelayProcess, CLIENT_FLAGS};
use support::security::{run, EVENT_TIMEOUT};
use support::sshd::TestSshd;

/// ProxyCommand for bastion mode: ask the relay at `relay` for `target`.
fn bastion_command(relay: SocketAddr, target: &str) -> String {
    format!(
        "{} --relay {} --relay-port {} --relay-fingerprint {} {CLIENT_FLAGS} {target}",
        env!("CARGO_BIN_EXE_resumeproxy"),
        relay.ip(),
        relay.port(),
        test_key().1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_not_allowed_is_refused_and_never_connected_to() -> Result<()> {
    let sshd = TestSshd::start()?;
    let port = sshd.port();
    // Something the relay must never reach: it counts who connects.
    let canary = std::net::TcpListener::bind("127.0.0.1:0")?;
    canary.set_nonblocking(true)?;
    let canary_port = canary.local_addr()?.port();

    // No --allow: named targets are refused, the relay's own included.
    let closed = RelayProcess::start(port, &[])?;
    let out = run(
        sshd.ssh_command(Some(&bastion_command(closed.addr(), "%h %p")), "echo never"),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    let line = format!(
        "resumeproxy: relay at {} refused the session: this relay forwards only to its own target, \
         not to 127.0.0.1:{port} (the relay's operator can allow it with --allow 127.0.0.1:{port})",
        closed.addr()
    );
    assert!(stderr.contains(&line), "{stderr}");
    closed.wait_for_log(
        "connection refused: this relay forwards only",
        EVENT_TIMEOUT,
    )?;

    // --allow names sshd: that target works, and only that one.
    let allow = format!("127.0.0.1:{port}");
    let open = RelayProcess::start(port, &["--allow", &allow])?;
    let out = run(
        sshd.ssh_command(
            Some(&bastion_command(open.addr(), "%h %p")),
            "echo via bastion",
        ),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    ensure!(out.status.success(), "allowed target: {}", stderr_of(&out));
    assert_eq!(out.stdout, b"via bastion\n");
    let started = open.wait_for_log("session started", EVENT_TIMEOUT)?;
    assert!(started.contains(&format!("target={allow}")), "{started}");

    for target in [
        format!("127.0.0.1 {canary_port}"),
        format!("localhost {canary_port}"),
    ] {
        let out = run(
            sshd.ssh_command(Some(&bastion_command(open.addr(), &target)), "echo never"),
            Stdio::null(),
            Stdio::piped(),
        )
        .await?;
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(255), "{stderr}");
        let host = target.split(' ').next().unwrap_or_default();
        assert!(
            stderr.contains(&format!(
                "refused the session: {host}:{canary_port} is not among this relay's allowed targets (--allow)"
            )),
            "{stderr}"
        );
    }
    // The relay logs each refusal (its log may trail the client's exit).
    open.wait_for_count("not among this relay's allowed targets", 2, EVENT_TIMEOUT)?;
    match canary.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the relay connected to a target it does not allow: {other:?}"),
    }
    Ok(())
}
