//! `--fallback direct`, the real OpenSSH client and a test sshd, the real
//! `resumeproxy` as ProxyCommand:
//!
//! * No relay on the host (its port refuses): the client connects straight
//!   to sshd at once (well within `--connect-timeout`), says so in one
//!   line, and carries the session: a 4 MiB upload arrives whole (sha256),
//!   ssh and the client exit 0.
//! * A relay port where nothing answers (a listener that never accepts):
//!   the fallback comes after `--connect-timeout` — here set in the client's
//!   config file, `fallback = "direct"` with it, no flags.
//! * Without the fallback the same refusal ends the client with 255, as
//!   before; with it, a target that refuses too ends it with 255 in words.
//! * Never after a session was opened through a relay: a relay stopped
//!   for good ends the session (255, the relay's words), with no direct
//!   connection.

mod support;

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::process::Watched;
use support::relay::{proxy_command, proxy_command_with_status, wait_for_status, RelayProcess};
use support::sshd::TestSshd;

/// The line the fallback says.
const FALLBACK_LINE: &str = "; connecting straight to ";
/// Bound on a session of this test.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A local port where nothing listens.
fn closed_port() -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// ssh through `proxy` running `command` with `stdin`; its status and
/// stderr.
fn ssh(
    sshd: &TestSshd,
    proxy: &str,
    command: &str,
    stdin: Stdio,
) -> Result<(std::process::ExitStatus, String, Duration)> {
    let started = Instant::now();
    let mut ssh = Watched::spawn(sshd.ssh_command(Some(proxy), command), stdin, Stdio::null())?;
    let (status, stderr) = ssh.finish(RUN_TIMEOUT, Duration::from_secs(5))?;
    Ok((status, stderr, started.elapsed()))
}

/// The client's own lines in `stderr`.
fn client_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("resumeproxy: "))
        .collect()
}

#[test]
fn no_relay_means_straight_to_sshd_and_a_session_through_a_relay_never_is() -> Result<()> {
    let sshd = TestSshd::start()?;
    let dir = sshd.dir();

    // Refused: straight to sshd, at once; an upload arrives whole.
    let nothing = closed_port()?;
    let status_file = dir.join("client.status");
    let proxy = proxy_command_with_status(
        nothing,
        sshd.port(),
        "--fallback direct --connect-timeout 5s",
        &status_file,
    );
    let (src, dst) = (dir.join("up.src"), dir.join("up.dst"));
    write_random_file(&src, 4 << 20, 31)?;
    let (status, stderr, took) = ssh(
        &sshd,
        &proxy,
        &format!("cat > {}", dst.display()),
        Stdio::from(File::open(&src)?),
    )?;
    ensure!(status.success(), "ssh {status}: {stderr}");
    let lines = client_lines(&stderr);
    let want = format!(
        "resumeproxy: no relay at {nothing} (connection refused: nothing listens on its port); \
         connecting straight to 127.0.0.1:{}: this connection will not survive a network break",
        sshd.port()
    );
    ensure!(lines == [want.as_str()], "the client said {lines:?}");
    ensure!(
        sha256_file(&src)? == sha256_file(&dst)?,
        "the upload through the direct connection differs"
    );
    let client = wait_for_status(&status_file, Duration::from_secs(10))?;
    ensure!(client == "0", "the client exited {client}");
    ensure!(
        took < Duration::from_secs(4),
        "a refusal fell back only after {took:?} (the connect timeout is 5s)"
    );
    println!("refused: straight to sshd; ssh took {took:.2?} for a 4 MiB upload");

    // Nothing answers: the fallback after --connect-timeout, from the
    // config file.
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let config = dir.join("config/resumeproxy");
    std::fs::create_dir_all(&config)?;
    std::fs::write(
        config.join("config.toml"),
        "fallback = \"direct\"\nconnect_timeout = \"1s\"\n",
    )?;
    let proxy = proxy_command(silent.local_addr()?, sshd.port(), "");
    let (status, stderr, took) = ssh(&sshd, &proxy, "echo direct-ok", Stdio::null())?;
    std::fs::remove_file(config.join("config.toml"))?;
    ensure!(status.success(), "ssh {status}: {stderr}");
    let lines = client_lines(&stderr);
    ensure!(
        lines.len() == 1 && lines[0].contains(FALLBACK_LINE),
        "the client said {lines:?}"
    );
    ensure!(
        took >= Duration::from_secs(1),
        "fell back after {took:?}, before the connect timeout"
    );
    println!("silent: {}, after {took:.2?}", lines[0]);

    // Without the fallback: 255, as ever. With it, a target that refuses
    // too: 255, in words.
    let proxy = proxy_command(nothing, sshd.port(), "--connect-timeout 1s");
    let (status, stderr, _) = ssh(&sshd, &proxy, "true", Stdio::null())?;
    ensure!(
        status.code() == Some(255)
            && stderr.contains("cannot reach relay")
            && !stderr.contains(FALLBACK_LINE),
        "without --fallback: ssh {status}: {stderr}"
    );
    let no_sshd = closed_port()?;
    let proxy = format!(
        "{} --fallback direct --relay-port {} %h {}",
        env!("CARGO_BIN_EXE_resumeproxy"),
        nothing.port(),
        no_sshd.port()
    );
    let (status, stderr, _) = ssh(&sshd, &proxy, "true", Stdio::null())?;
    let lines = client_lines(&stderr);
    ensure!(
        status.code() == Some(255)
            && lines.len() == 2
            && lines[1].starts_with(&format!(
                "resumeproxy: cannot connect to 127.0.0.1:{}: ",
                no_sshd.port()
            )),
        "a target that refuses: ssh {status}: {lines:?}"
    );

    // A session opened through a relay never falls back.
    let mut relay = RelayProcess::start(sshd.port(), &[])?;
    let proxy = proxy_command(relay.addr(), sshd.port(), "--fallback direct");
    let mut idle = sshd.idle_session(&proxy)?;
    ensure!(
        relay.terminate(Duration::from_secs(10))?,
        "the relay failed on SIGTERM"
    );
    let status = idle.wait(Duration::from_secs(10))?;
    idle.stderr.wait_for_end(Duration::from_secs(5));
    let stderr = idle.stderr.text();
    ensure!(
        status.code() == Some(255)
            && stderr.contains("the relay is shutting down")
            && !stderr.contains(FALLBACK_LINE),
        "a session through a stopped relay: ssh {status}: {stderr}"
    );
    let _ = Path::new(&status_file);
    Ok(())
}

#[test]
fn the_fallback_is_read_from_the_config_file_and_its_flag_alike() -> Result<()> {
    use resumeproxy::cli::config::ClientSettings;
    use resumeproxy::cli::settings::client;
    use resumeproxy::cli::LinkOptions;
    use resumeproxy::client::direct::Fallback;
    let dir = std::env::temp_dir().join(format!("rp-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("config.toml");
    std::fs::write(&file, "fallback = \"direct\"\n")?;
    let mut flags = LinkOptions {
        config: Some(file.clone()),
        ..LinkOptions::default()
    };
    let settings = ClientSettings::resolve(&flags).context("the config file")?;
    ensure!(settings.fallback == Fallback::Direct);
    flags.settings.set(&client::FALLBACK, Fallback::None);
    ensure!(
        ClientSettings::resolve(&flags)?.fallback == Fallback::None,
        "the flag wins"
    );
    std::fs::write(&file, "fallback = \"sometimes\"\n")?;
    let e = ClientSettings::resolve(&flags).unwrap_err().to_string();
    ensure!(
        e.contains("line 1: fallback: \"sometimes\" is not one of none, direct"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
