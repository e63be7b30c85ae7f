//! What the security tests (`tests/security_*.rs`, one file per promise of
//! SECURITY.md) share: bounds, the hostile
//! sources, a paced upload through a real ssh session, a TLS connection as
//! anybody can open one, and the check of a refusal.

#![allow(dead_code)]

use super::data::{random_bytes, sha256_file};
use super::process::{file_len, run_within, stderr_of, wait_progress};
use super::sshd::TestSshd;
use anyhow::{ensure, Context, Result};
use resumeproxy::proto::wire::{Code, Reply};
use resumeproxy::transport::tls::{self, PinVerifier};
use resumeproxy::transport::{Transport, TransportKind};
use resumeproxy::units::hex;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single ssh run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one relay log event to show up.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Where hostile connections come from: loopback, but not the real
/// client's 127.0.0.1, so that per-source limits tell them apart.
pub const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A second hostile source, for garbage and slowloris.
pub const ATTACKER_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Runs a command to completion within [`RUN_TIMEOUT`], killing it otherwise.
pub async fn run(cmd: std::process::Command, stdin: Stdio, stdout: Stdio) -> Result<Output> {
    run_within(cmd, stdin, stdout, RUN_TIMEOUT).await
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// A paced upload through a real ssh session, checked by sha256.
// ---------------------------------------------------------------------------

/// Bytes per write of a [`Stream`].
const STREAM_CHUNK: usize = 16 * 1024;
/// Pause between writes: a few MB/s, so the stream lasts as long as the test
/// needs it without filling the disk or the shared machine's cores.
const STREAM_PACE: Duration = Duration::from_millis(5);

/// `ssh … 'cat > DST'` fed by the test, a chunk at a time, until told to stop:
/// a transfer that is in flight for as long as the test wants.
pub struct Stream {
    ssh: tokio::process::Child,
    dst: PathBuf,
    stop: CancellationToken,
    writer: JoinHandle<std::io::Result<(u64, String)>>,
}

impl Stream {
    pub async fn start(sshd: &TestSshd, proxy: &str, dst: &Path) -> Result<Stream> {
        let mut cmd = sshd.ssh_command(Some(proxy), &format!("cat > {}", dst.display()));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut ssh = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .context("spawning ssh")?;
        let mut stdin = ssh.stdin.take().context("ssh stdin")?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let writer = tokio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            for seed in 1000u64.. {
                let chunk = random_bytes(STREAM_CHUNK, seed);
                // Never cut a write short: a partial chunk would go out
                // unhashed. A stuck session makes `finish` time out instead.
                stdin.write_all(&chunk).await?;
                hasher.update(&chunk);
                total += chunk.len() as u64;
                tokio::select! {
                    () = tokio::time::sleep(STREAM_PACE) => {}
                    () = stopped.cancelled() => break,
                }
            }
            stdin.shutdown().await?;
            drop(stdin);
            Ok((total, hex(&hasher.finalize())))
        });
        Ok(Stream {
            ssh,
            dst: dst.to_owned(),
            stop,
            writer,
        })
    }

    /// Bytes that have reached the remote end so far.
    pub fn arrived(&self) -> u64 {
        file_len(&self.dst)
    }

    /// Waits until `more` bytes beyond what has arrived now have arrived:
    /// the session is flowing.
    pub async fn wait_for_progress(&self, more: u64, timeout: Duration) -> Result<()> {
        let target = self.arrived() + more;
        // The writer feeds ssh on another worker meanwhile.
        tokio::task::block_in_place(|| {
            wait_progress(&|| Ok(self.arrived()), &mut || Ok(true), target, timeout)
        })
        .context("the stream did not move")?;
        Ok(())
    }

    /// Stops feeding, lets ssh finish, and checks that the remote copy is
    /// exactly what was sent. Returns ssh's stderr.
    pub async fn finish(self) -> Result<String> {
        self.stop.cancel();
        let (total, sent_hash) = tokio::time::timeout(RUN_TIMEOUT, self.writer)
            .await
            .context("the writer did not stop")???;
        let out = tokio::time::timeout(RUN_TIMEOUT, self.ssh.wait_with_output())
            .await
            .context("ssh did not finish")??;
        let stderr = stderr_of(&out);
        ensure!(out.status.success(), "ssh failed: {stderr}");
        ensure!(total > 0, "nothing was sent");
        assert_eq!(
            std::fs::metadata(&self.dst)?.len(),
            total,
            "bytes at the remote end"
        );
        assert_eq!(sha256_file(&self.dst)?, sent_hash, "sha256 of the stream");
        Ok(stderr)
    }
}

/// Opens a TLS connection to the relay from `source`, as anybody can: the
/// attacker need not trust the relay's key, so any key goes.
pub async fn connect_from(relay: SocketAddr, source: IpAddr) -> Result<Transport> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), socket.connect(relay)).await??;
    tcp.set_nodelay(true)?;
    let config = tls::client_config(Arc::new(PinVerifier::new(Vec::new())))?;
    let name = rustls::pki_types::ServerName::IpAddress(relay.ip().into());
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await??;
    let binding = tls::channel_binding(stream.get_ref().1)?;
    Ok(Transport::new(
        Box::new(stream),
        relay,
        TransportKind::Tls,
        binding,
    ))
}

/// Asserts a refusal with `code` whose reason contains `why`.
pub fn assert_refused(reply: &Reply, code: Code, why: &str) {
    match reply {
        Reply::Refused { code: c, reason } if *c == code && reason.contains(why) => {}
        other => panic!("expected a refusal ({code:?}, {why:?}), got {other:?}"),
    }
}

/// Whether the peer has closed `stream` (EOF or reset), reading past what
/// it said first (a connection turned away gets a TLS alert); `stream` is
/// non-blocking and never sent anything to.
pub fn closed_by_peer(mut stream: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}
