//! Security, end to end: nothing in clear. The real OpenSSH client and a
//! test sshd, the real `resumeproxyd` and `resumeproxy` as ProxyCommand:
//! a recorder on the wire between client and relay sees TLS records from
//! the first byte, and none of what ssh alone would show (its `SSH-2.0-`
//! banner, its key-exchange algorithm names), nor the session's payload
//! both ways, nor resumeproxy's own preamble, nor the relay's public key;
//! the same recorder in front of bare sshd sees ssh's banner and algorithm
//! names, so the check can tell. (SECURITY.md;
//! the other promises are in the other `security_*.rs`.)

mod support;

use anyhow::{ensure, Context, Result};
use resumeproxy::proto::wire::MAGIC;
use resumeproxy::transport::identity::RelayKey;
use std::fs::File;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::data::{sha256_file, write_random_file};
use support::process::stderr_of;
use support::relay::{
    proxy_command_with_status, test_key, wait_for_status, RelayProcess, CLIENT_FLAGS,
};
use support::security::{contains, run};
use support::sshd::TestSshd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What one connection carried, each way.
#[derive(Default)]
struct Capture {
    up: Vec<u8>,
    down: Vec<u8>,
}

/// A TCP forwarder on loopback that records every byte, both ways.
struct Recorder {
    addr: SocketAddr,
    captures: Arc<Mutex<Vec<Arc<Mutex<Capture>>>>>,
    acceptor: JoinHandle<()>,
}

impl Recorder {
    async fn start(upstream: SocketAddr) -> Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let captures: Arc<Mutex<Vec<Arc<Mutex<Capture>>>>> = Arc::default();
        let all = Arc::clone(&captures);
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let capture = Arc::new(Mutex::new(Capture::default()));
                all.lock().unwrap().push(Arc::clone(&capture));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(record(
                    client_read,
                    server_write,
                    Arc::clone(&capture),
                    true,
                ));
                tokio::spawn(record(server_read, client_write, capture, false));
            }
        });
        Ok(Recorder {
            addr,
            captures,
            acceptor,
        })
    }

    /// Each connection's capture so far.
    fn captures(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.captures
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let c = c.lock().unwrap();
                (c.up.clone(), c.down.clone())
            })
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Copies one direction, recording what passes before passing it on.
async fn record(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    capture: Arc<Mutex<Capture>>,
    up: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut capture = capture.lock().unwrap();
            let side = if up {
                &mut capture.up
            } else {
                &mut capture.down
            };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_ssh_stream_appears_in_clear_on_the_wire() -> Result<()> {
    const MARKER: &str = "resumeproxy-security-marker-5f0c1e7a";
    const SIZE: usize = 8 * 1024;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let recorder = Recorder::start(relay.addr()).await?;
    let status = sshd.dir().join("client.status");
    let proxy = proxy_command_with_status(recorder.addr, sshd.port(), CLIENT_FLAGS, &status);

    // Known data both ways: down, a marker line and a file; up, another file.
    let down_src = sshd.dir().join("down.src");
    let up_src = sshd.dir().join("up.src");
    let up_dst = sshd.dir().join("up.dst");
    write_random_file(&down_src, SIZE as u64, 11)?;
    write_random_file(&up_src, SIZE as u64, 12)?;
    let remote = format!(
        "echo {MARKER}; cat {}; cat > {}",
        down_src.display(),
        up_dst.display()
    );
    let out = run(
        sshd.ssh_command(Some(&proxy), &remote),
        Stdio::from(File::open(&up_src)?),
        Stdio::piped(),
    )
    .await?;
    ensure!(out.status.success(), "ssh failed: {}", stderr_of(&out));
    let mut expected = format!("{MARKER}\n").into_bytes();
    expected.extend_from_slice(&std::fs::read(&down_src)?);
    assert!(
        out.stdout == expected,
        "what ssh printed is not what was sent"
    );
    assert_eq!(sha256_file(&up_dst)?, sha256_file(&up_src)?, "upload");
    // Everything has passed the recorder once the client has exited.
    assert_eq!(wait_for_status(&status, Duration::from_secs(10))?, "0");

    let captures = recorder.captures();
    assert_eq!(captures.len(), 1, "one connection, no reconnects");
    let (up, down) = &captures[0];
    assert!(
        up.len() > SIZE && down.len() > SIZE,
        "the capture holds the whole session: {} bytes up, {} down",
        up.len(),
        down.len()
    );
    for (what, bytes) in [("client to relay", up), ("relay to client", down)] {
        assert_eq!(
            bytes[..2],
            [0x16, 0x03],
            "{what} starts with a TLS handshake record"
        );
    }
    // What a bare ssh session shows anyone on the path, what resumeproxy's
    // own protocol looks like, and who the relay is.
    let relay_key = RelayKey::load(&test_key().0)?.spki_der();
    let raw_key = &relay_key[relay_key.len() - 32..];
    let needles: [(&str, &[u8]); 6] = [
        ("ssh's banner", b"SSH-2.0-"),
        ("ssh's key exchange", b"curve25519"),
        ("ssh's host key type", b"ssh-ed25519"),
        ("the marker", MARKER.as_bytes()),
        ("resumeproxy's preamble", &MAGIC),
        ("the relay's public key", raw_key),
    ];
    // Any stretch of 63 bytes of the payload holds one of these windows.
    let down_data = std::fs::read(&down_src)?;
    let up_data = std::fs::read(&up_src)?;
    let windows = down_data
        .chunks_exact(32)
        .chain(up_data.chunks_exact(32))
        .collect::<Vec<_>>();
    for (what, bytes) in [("client to relay", up), ("relay to client", down)] {
        for (name, needle) in needles {
            assert!(!contains(bytes, needle), "{name} in clear {what}");
        }
        for window in &windows {
            assert!(!contains(bytes, window), "payload in clear {what}");
        }
    }

    // The control: the same recorder in front of sshd itself, without
    // resumeproxy, sees what ssh shows anyone on the path.
    let bare = Recorder::start(SocketAddr::from(([127, 0, 0, 1], sshd.port()))).await?;
    let mut opts = sshd.ssh_opts();
    let port = opts
        .iter()
        .position(|o| o == "-p")
        .context("no -p in ssh_opts")?;
    opts[port + 1] = bare.addr.port().to_string();
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(&opts).arg("127.0.0.1").arg("true");
    let out = run(cmd, Stdio::null(), Stdio::null()).await?;
    ensure!(out.status.success(), "bare ssh: {}", stderr_of(&out));
    let captures = bare.captures();
    let (up, down) = captures.first().context("bare ssh was not recorded")?;
    for (what, bytes) in [("client to sshd", up), ("sshd to client", down)] {
        assert!(contains(bytes, b"SSH-2.0-"), "{what}: the banner");
        assert!(contains(bytes, b"curve25519"), "{what}: the key exchange");
    }
    Ok(())
}
