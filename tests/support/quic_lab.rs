//! Many QUIC sessions in the namespace lab, without ssh: the real relay in
//! the server namespace in front of a TCP echo target of the test's own
//! (also in the server namespace), and the real `resumeproxy` clients in
//! the client namespace with their stdin and stdout piped to the test. A
//! session is checked by sending it a line and reading the same line back.
//!
//! Sessions are started a few at a time ([`EchoLab::open`]), so that what a
//! test measures afterwards (a worker crash, the relay's death) is not
//! blurred by a hundred handshakes at once (`tests/quic_scale.rs` measures
//! those).

#![allow(dead_code)]

use super::netns::NetLab;
use super::process::{Lines, Watched};
use super::relay::{test_key, RelayProcess};
use anyhow::{ensure, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sessions started at once by [`EchoLab::open`].
const WAVE: usize = 10;
/// Bound on a session's start, and on an echo.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(30);

/// The lab, the relay and its echo target.
pub struct EchoLab {
    // Dropped in this order: the relay, then the lab.
    pub relay: RelayProcess,
    pub lab: NetLab,
    /// Where the clients keep their state (pins, the UDP memory).
    pub dir: PathBuf,
    echo_port: u16,
}

/// One client: its process, and its pipes.
pub struct EchoClient {
    pub process: Watched,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl EchoLab {
    /// The lab with the relay (given `relay_flags`) in front of an echo
    /// target; `None` (said why) where the machine cannot host a lab.
    pub fn start(name: &str, relay_flags: &[&str]) -> Result<Option<EchoLab>> {
        let Some(lab) = NetLab::create()? else {
            return Ok(None);
        };
        let listener = NetLab::in_netns(lab.server_ns(), || {
            TcpListener::bind("127.0.0.1:0").context("binding the echo target")
        })?;
        let echo_port = listener.local_addr()?.port();
        std::thread::spawn(move || echo_each_connection(listener));
        let relay = RelayProcess::start_in_netns(
            lab.server_ns(),
            &format!("{}:0", lab.server_addr()),
            echo_port,
            relay_flags,
        )?;
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run"))?;
        std::fs::set_permissions(
            dir.join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        Ok(Some(EchoLab {
            relay,
            lab,
            dir,
            echo_port,
        }))
    }

    /// The relay's address.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay.addr()
    }

    /// The client's command, with `flags`, in the client namespace.
    pub fn client_command(&self, flags: &[&str]) -> Command {
        let relay = self.relay_addr();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxy"));
        cmd.args(["--relay-port", &relay.port().to_string()])
            .args(["--relay-fingerprint", &test_key().1])
            .args(flags)
            .arg(relay.ip().to_string())
            .arg(self.echo_port.to_string())
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env_remove("RESUMEPROXY_LOG");
        self.lab.in_client(&cmd)
    }

    /// Starts a client with `flags` (it opens its session in the
    /// background).
    pub fn spawn(&self, flags: &[&str]) -> Result<EchoClient> {
        let mut process =
            Watched::spawn(self.client_command(flags), Stdio::piped(), Stdio::piped())?;
        let stdin = process.child.stdin.take().context("client stdin")?;
        let stdout = process.child.stdout.take().context("client stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(EchoClient {
            process,
            stdin: Some(stdin),
            lines,
        })
    }

    /// Opens `n` sessions with `flags`, [`WAVE`] at a time, each checked
    /// with an echo.
    pub fn open(&self, n: usize, flags: &[&str]) -> Result<Vec<EchoClient>> {
        let mut clients: Vec<EchoClient> = Vec::with_capacity(n);
        while clients.len() < n {
            let wave = WAVE.min(n - clients.len());
            let first = clients.len();
            for _ in 0..wave {
                clients.push(self.spawn(flags)?);
            }
            for (i, client) in clients.iter_mut().enumerate().skip(first) {
                client
                    .echo(&format!("hello {i}"), ECHO_TIMEOUT)
                    .with_context(|| format!("opening session {i}"))?;
            }
        }
        Ok(clients)
    }
}

impl EchoClient {
    /// Sends `line` through the session and waits, at most `timeout`, for
    /// it to come back.
    pub fn echo(&mut self, line: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        let back = self.lines.recv_timeout(timeout).map_err(|_| {
            anyhow::anyhow!(
                "{line:?} did not come back within {timeout:?}; the client said:\n{}",
                self.process.stderr.text()
            )
        })?;
        ensure!(back.trim_end() == line, "sent {line:?}, got {back:?}");
        Ok(started.elapsed())
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> &Lines {
        &self.process.stderr
    }

    /// Waits, at most `timeout`, for it to exit; its exit code.
    pub fn exit_code(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let status = super::process::wait_timeout(&mut self.process.child, timeout)
            .with_context(|| format!("the client; it said:\n{}", self.process.stderr.text()))?;
        Ok(status.code())
    }
}

/// Echoes every connection to `listener` until its client closes, a
/// thread each (also the echo target of `tests/bursts.rs`).
pub fn echo_each_connection(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(mut from) = conn.try_clone() else {
                return;
            };
            let mut to = conn;
            let _ = std::io::copy(&mut from, &mut to);
        });
    }
}
