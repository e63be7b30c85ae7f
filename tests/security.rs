//! Security, end to end: the real OpenSSH client and a test sshd, the real
//! `resumeproxyd` and `resumeproxy` as ProxyCommand, against the promises of
//! README's "Security and the trust model".
//!
//! * **Nothing in clear.** A recorder on the wire between client and relay
//!   sees TLS records from the first byte, and none of what ssh alone would
//!   show (its `SSH-2.0-` banner, its key-exchange algorithm names), nor the
//!   session's payload both ways, nor resumeproxy's own preamble, nor the
//!   relay's public key; the same recorder in front of bare sshd sees ssh's
//!   banner and algorithm names, so the check can tell.
//! * **Resume is authenticated.** While a real session streams, a hostile
//!   client that knows the live session's full id resumes it with a wrong
//!   proof and with a replayed one (a proof the relay really accepted,
//!   captured and sent again on another TLS connection): each is refused and
//!   logged, the live transport is untouched, and after 5 failures the source
//!   is refused unchecked (`Busy`) while the real client still resumes. The
//!   stream arrives whole (sha256), with exactly the resumes the test caused.
//! * **A changed relay key stops the client** with the loud warning naming
//!   the known_relays file and line, exit 255, file untouched; a wrong
//!   `--relay-fingerprint` likewise; and a live session whose relay comes back
//!   with another key ends the same way instead of resuming.
//! * **Hostile traffic does not stop a real session.** 1,000 idle connections
//!   from one address (only `--max-handshakes-per-source` hold a place at a
//!   time and as many wait; the rest are turned away at once, and the
//!   silent ones give their places up to those waiting),
//!   garbage before TLS, inside TLS and after a session is open, a
//!   slowloris ClientHello trickled a byte a second, and a TLS connection
//!   that never says hello: the relay stays up, answers each with a refusal
//!   or a timeout in its log, the running transfer completes (sha256), a new
//!   session from another address opens while the flood is held, and once it
//!   is gone the relay's descriptors are back where they were.
//! * **Not an open proxy.** In bastion mode (`--relay`), a target not named
//!   by `--allow` is refused with the reason (naming `--allow`) and never
//!   connected to; an allowed one works.
//!
//! * **One source cannot take every session.** Sessions opened and abandoned
//!   from one address stop at `--max-sessions-per-source`, so they cannot
//!   fill `--max-detached` and lock everyone else out.
//!
//! How the resume test learns the live session's id and secret: they never
//! leave TLS, and logs and `resumeproxy status` show only the id's first 8
//! bytes. So the client reaches the relay through a *tap* that holds the
//! relay's private key (the test owns it): an insider, the one place the full
//! id exists outside the two ends. The tap relays the client's own resumes
//! honestly (re-proving them for its leg to the relay, as only a holder of
//! the secret can) and records the proofs the relay accepted; the hostile
//! client is not the tap, and gets only what the tap learned.

mod support;

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use resumeproxy::demo::fault::FaultInjector;
use resumeproxy::link::handshake::{self, NOT_A_CLIENT_NOTICE};
use resumeproxy::proto::resume_auth;
use resumeproxy::proto::resume_auth::BINDING_LEN;
use resumeproxy::proto::wire::{
    split_message, Code, Hello, Preamble, Reply, SessionId, MAGIC, PROOF_LEN, SECRET_LEN,
};
use resumeproxy::relay::Limits;
use resumeproxy::transport::identity::{Fingerprint, RelayKey};
use resumeproxy::transport::tls::{self, PinVerifier};
use resumeproxy::transport::{Transport, TransportKind};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::relay::{
    proxy_command, proxy_command_with_status, test_key, wait_for_status, RelayProcess,
};
use support::sshd::{
    exit_and_stderr, random_bytes, run_within, sha256_file, stderr_of, write_random_file, TestSshd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Client flags for every test: notice a dead link within a second.
const CLIENT_FLAGS: &str = "--dead-after 1s";
/// Upper bound for any single ssh run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one relay log event to show up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Where hostile connections come from: loopback, but not the real
/// client's 127.0.0.1, so that per-source limits tell them apart.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A second hostile source, for garbage and slowloris.
const ATTACKER_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Runs a command to completion within [`RUN_TIMEOUT`], killing it otherwise.
async fn run(cmd: std::process::Command, stdin: Stdio, stdout: Stdio) -> Result<Output> {
    run_within(cmd, stdin, stdout, RUN_TIMEOUT).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
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
struct Stream {
    ssh: tokio::process::Child,
    dst: PathBuf,
    stop: CancellationToken,
    writer: JoinHandle<std::io::Result<(u64, String)>>,
}

impl Stream {
    async fn start(sshd: &TestSshd, proxy: &str, dst: &Path) -> Result<Stream> {
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
    fn arrived(&self) -> u64 {
        std::fs::metadata(&self.dst).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits until `more` bytes beyond what has arrived now have arrived:
    /// the session is flowing.
    async fn wait_for_progress(&self, more: u64, timeout: Duration) -> Result<()> {
        let target = self.arrived() + more;
        let deadline = Instant::now() + timeout;
        while self.arrived() < target {
            if Instant::now() >= deadline {
                bail!(
                    "the stream did not move: {} of {target} bytes within {timeout:?}",
                    self.arrived()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops feeding, lets ssh finish, and checks that the remote copy is
    /// exactly what was sent. Returns ssh's stderr.
    async fn finish(self) -> Result<String> {
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

// ---------------------------------------------------------------------------
// 1. Nothing in clear.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 2. Wrong and replayed resume proofs.
// ---------------------------------------------------------------------------

/// What the tap learned.
#[derive(Default)]
struct Learned {
    /// The session the client opened, with its secret.
    session: Option<(SessionId, [u8; SECRET_LEN])>,
    /// Resume proofs the tap sent the relay for the client, in order.
    accepted_proofs: Vec<[u8; PROOF_LEN]>,
}

/// An insider between client and relay that holds the relay's key (see the
/// module docs): it terminates the client's TLS, opens its own to the
/// relay, passes the handshake on — re-proving the client's resumes for its
/// own leg — and then copies frames both ways.
struct Tap {
    addr: SocketAddr,
    learned: Arc<Mutex<Learned>>,
    acceptor: JoinHandle<()>,
}

impl Tap {
    async fn start(relay: SocketAddr) -> Result<Tap> {
        let key = RelayKey::load(&test_key().0)?;
        let tls_acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&key)?);
        let upstream = tls::client_config(Arc::new(PinVerifier::new(vec![key.fingerprint()])))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let learned: Arc<Mutex<Learned>> = Arc::default();
        let state = Arc::clone(&learned);
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream, state) = (
                    tls_acceptor.clone(),
                    Arc::clone(&upstream),
                    Arc::clone(&state),
                );
                tokio::spawn(async move {
                    let _ = tap_one(client, relay, acceptor, upstream, state).await;
                });
            }
        });
        Ok(Tap {
            addr,
            learned,
            acceptor,
        })
    }

    fn session(&self) -> Option<(SessionId, [u8; SECRET_LEN])> {
        self.learned.lock().unwrap().session
    }

    fn accepted_proofs(&self) -> Vec<[u8; PROOF_LEN]> {
        self.learned.lock().unwrap().accepted_proofs.clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn tap_one(
    client: TcpStream,
    relay: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<rustls::ClientConfig>,
    learned: Arc<Mutex<Learned>>,
) -> Result<()> {
    let mut down = tls::accept(client, &acceptor).await?;
    let hello = handshake::relay(&mut down).await?;
    let mut up = tls::connect(
        &relay.ip().to_string(),
        relay.port(),
        Duration::from_secs(5),
        upstream,
    )
    .await?;
    let hello = match hello {
        Hello::Resume {
            dead_after_ms,
            session,
            proof: _,
            received,
        } => {
            let (_, secret) = learned.lock().unwrap().session.context("unknown session")?;
            let proof = resume_auth::proof(&secret, &session, &up.binding);
            learned.lock().unwrap().accepted_proofs.push(proof);
            Hello::Resume {
                dead_after_ms,
                session,
                proof,
                received,
            }
        }
        new => new,
    };
    let reply = handshake::client(&mut up, &hello).await?;
    if let Reply::Created {
        session, secret, ..
    } = &reply
    {
        learned.lock().unwrap().session = Some((*session, *secret));
    }
    // The relay's answer, passed on as it is: a tap is not a relay.
    let mut answer = BytesMut::new();
    reply.encode(&mut answer);
    down.stream.write_all(&answer).await?;
    // Bytes read past the handshake belong to the session.
    let early = up.connection.take_unread();
    down.stream.write_all(&early).await?;
    let early = down.connection.take_unread();
    up.stream.write_all(&early).await?;
    tokio::io::copy_bidirectional(&mut down.stream, &mut up.stream).await?;
    Ok(())
}

/// Opens a TLS connection to the relay from `source`, as anybody can: the
/// attacker need not trust the relay's key, so any key goes.
async fn connect_from(relay: SocketAddr, source: IpAddr) -> Result<Transport> {
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

/// A resume of `session` from `source`, with the proof `prove` makes for the
/// new connection's channel binding; returns the relay's answer.
async fn hostile_resume(
    relay: SocketAddr,
    source: IpAddr,
    session: SessionId,
    prove: impl FnOnce(&[u8; BINDING_LEN]) -> [u8; PROOF_LEN],
) -> Result<Reply> {
    let mut transport = connect_from(relay, source).await?;
    let hello = Hello::Resume {
        dead_after_ms: 1000,
        session,
        proof: prove(&transport.binding),
        received: 0,
    };
    let reply =
        tokio::time::timeout(EVENT_TIMEOUT, handshake::client(&mut transport, &hello)).await??;
    Ok(reply)
}

/// Asserts a refusal with `code` whose reason contains `why`.
fn assert_refused(reply: &Reply, code: Code, why: &str) {
    match reply {
        Reply::Refused { code: c, reason } if *c == code && reason.contains(why) => {}
        other => panic!("expected a refusal ({code:?}, {why:?}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_replayed_resume_proofs_fail_and_the_real_session_goes_on() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let tap = Tap::start(relay.addr()).await?;
    let injector = FaultInjector::start(tap.addr).await?;
    let proxy = proxy_command(injector.addr(), sshd.port(), CLIENT_FLAGS);
    let stream = Stream::start(&sshd, &proxy, &sshd.dir().join("stream.dst")).await?;
    stream
        .wait_for_progress(256 * 1024, EVENT_TIMEOUT)
        .await
        .context("session start")?;
    let (session, secret) = tap.session().context("the tap saw no session")?;
    let started = relay.wait_for_log("session started", Duration::ZERO)?;
    assert!(
        started.contains(&session.to_string()),
        "logs show the id's prefix: {started}"
    );
    assert!(
        !relay.log().contains(&hex(&session.0)),
        "the full session id is not in the relay's log"
    );

    // The real client resumes once, so that there is an accepted proof to
    // replay.
    injector.kill_all();
    relay.wait_for_count("session resumed", 1, EVENT_TIMEOUT)?;
    let accepted = tap.accepted_proofs();
    assert_eq!(accepted.len(), 1, "the client's one resume");
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;

    // A wrong proof, then a replay. A proof is an HMAC keyed with the
    // session's secret over the session id and the channel binding of the
    // TLS connection it travels on, so "replayed" can only mean: the very
    // bytes the relay accepted on one connection, sent again on another.
    // These are those bytes, taken where no one on the path could see them
    // (inside the tap), which is more than an eavesdropper ever gets.
    let reply = hostile_resume(relay.addr(), ATTACKER, session, |_| rand::random()).await?;
    assert_refused(&reply, Code::BadProof, "wrong session proof");
    let replayed = accepted[0];
    let reply = hostile_resume(relay.addr(), ATTACKER, session, |binding| {
        // The relay would take it only on the connection it was made for.
        assert!(!resume_auth::verify(&secret, &session, binding, &replayed));
        replayed
    })
    .await?;
    assert_refused(&reply, Code::BadProof, "wrong session proof");
    // Three more wrong ones use up the source's allowance ...
    for _ in 0..3 {
        let reply = hostile_resume(relay.addr(), ATTACKER, session, |_| rand::random()).await?;
        assert_refused(&reply, Code::BadProof, "wrong session proof");
    }
    relay.wait_for_count("resume refused: wrong proof", 5, EVENT_TIMEOUT)?;
    relay.wait_for_log(
        "further resume attempts from 127.0.0.2 are refused",
        EVENT_TIMEOUT,
    )?;
    // ... after which the source is refused unchecked, even with a proof
    // that would have been right: it is not even looked at.
    let reply = hostile_resume(relay.addr(), ATTACKER, session, |binding| {
        resume_auth::proof(&secret, &session, binding)
    })
    .await?;
    assert_refused(&reply, Code::Busy, "too many failed resume attempts");
    // Another source is still checked.
    let reply = hostile_resume(relay.addr(), ATTACKER_2, session, |_| rand::random()).await?;
    assert_refused(&reply, Code::BadProof, "wrong session proof");

    // The live session never noticed: no loss or resume beyond the test's
    // own break, and still flowing.
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;
    assert_eq!(relay.count("session resumed"), 1, "{}", relay.log());
    assert!(
        relay.count("client lost") <= 1,
        "only the test's own break: {}",
        relay.log()
    );

    // The real client, from its own address, still resumes.
    injector.kill_all();
    relay.wait_for_count("session resumed", 2, EVENT_TIMEOUT)?;
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;

    let stderr = stream.finish().await?;
    assert_eq!(
        stderr.matches("resumeproxy: resumed after").count(),
        2,
        "the client resumed exactly for the two breaks: {stderr}"
    );
    assert_eq!(relay.count("session resumed"), 2, "{}", relay.log());
    relay.wait_for_log("session ended: complete", EVENT_TIMEOUT)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. A changed relay key.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 4. Hostile traffic.
// ---------------------------------------------------------------------------

/// Raises this process's soft limit on open files to at least `want` (up to
/// the hard limit).
fn raise_fd_limit(want: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        if limit.rlim_cur < want as libc::rlim_t {
            limit.rlim_cur = (want as libc::rlim_t).min(limit.rlim_max);
            ensure!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
                "setrlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    ensure!(
        limit.rlim_cur >= want as libc::rlim_t,
        "cannot have {want} open files (hard limit {})",
        limit.rlim_max
    );
    Ok(())
}

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// A plain TCP connection to `relay` from `source` (blocking std socket).
fn tcp_from(relay: SocketAddr, source: IpAddr) -> Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&relay.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Whether the peer has closed `stream` (EOF or reset), reading past what
/// it said first (a connection turned away gets a TLS alert); `stream` is
/// non-blocking and never sent anything to.
fn closed_by_peer(mut stream: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Sends `bytes` on a fresh connection from `source` and returns all the
/// relay answers until it closes (bounded by `timeout`).
async fn garbage(relay: SocketAddr, source: IpAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut tcp = socket.connect(relay).await?;
    // The relay may close before reading all of it: that is its answer.
    let _ = tcp.write_all(bytes).await;
    read_to_close(&mut tcp).await
}

/// Reads until the peer closes, at most [`EVENT_TIMEOUT`]; a reset or an
/// unclean TLS end counts as closing.
async fn read_to_close(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .context("the relay kept a bad connection open")?;
    Ok(answer)
}

/// Sends `bytes` inside TLS, as a client that passed the TLS handshake and
/// then misbehaves; returns what the relay answered inside TLS.
async fn garbage_in_tls(relay: SocketAddr, source: IpAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut transport = connect_from(relay, source).await?;
    let _ = transport.stream.write_all(bytes).await;
    let _ = transport.stream.flush().await;
    read_to_close(&mut transport.stream).await
}

/// A TLS ClientHello as the real client sends it, sent one byte a second;
/// returns how long the relay let it go on, and how many bytes it got.
async fn slowloris(relay: SocketAddr, source: IpAddr) -> Result<(Duration, usize)> {
    let config = tls::client_config(Arc::new(PinVerifier::new(Vec::new())))?;
    let name = rustls::pki_types::ServerName::IpAddress(relay.ip().into());
    let mut connection = rustls::ClientConnection::new(config, name)?;
    let mut hello = Vec::new();
    connection.write_tls(&mut hello)?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut tcp = socket.connect(relay).await?;
    let started = Instant::now();
    let (mut read, mut write) = tcp.split();
    let mut sent = 0;
    let trickle = async {
        for byte in &hello {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            () = trickle => {}
            () = closed => {}
        }
    })
    .await
    .context("the relay never cut the slow handshake")?;
    ensure!(sent < hello.len(), "the whole ClientHello went through");
    Ok((started.elapsed(), sent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traffic_neither_crashes_the_relay_nor_stops_a_session() -> Result<()> {
    const IDLE: usize = 1000;
    // The relay's defaults, given explicitly so that no config file on the
    // machine can change them.
    let defaults = Limits::default();
    let per_source = defaults.max_handshakes_per_source;
    let handshake_timeout = defaults.handshake_timeout;
    raise_fd_limit(IDLE as u64 + 512)?;
    let sshd = TestSshd::start()?;
    let mut relay = RelayProcess::start(
        sshd.port(),
        &[
            "--handshake-timeout",
            &format!("{}ms", handshake_timeout.as_millis()),
            "--max-handshakes-per-source",
            &per_source.to_string(),
        ],
    )?;
    let pid = relay.pid();
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT_FLAGS);
    let stream = Stream::start(&sshd, &proxy, &sshd.dir().join("stream.dst")).await?;
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;
    // With one session open (which holds descriptors of its own).
    let fds_before = fd_count(pid)?;

    // The slow handshakes run alongside everything else: one trickles its
    // ClientHello, one completes TLS and then says nothing.
    let addr = relay.addr();
    let slow = tokio::spawn(slowloris(addr, ATTACKER_2));
    let silent = tokio::spawn(async move {
        let mut transport = connect_from(addr, ATTACKER_2).await?;
        let started = Instant::now();
        read_to_close(&mut transport.stream).await?;
        anyhow::Ok(started.elapsed())
    });

    // 1,000 idle connections from one address: the relay admits its
    // per-source allowance, lets as many wait, and turns the rest away at
    // once; a second later the silent ones it admitted give their places to
    // those waiting, which hold them until the handshake timeout.
    // The first connections are the ones admitted: their clock starts now.
    let opened = Instant::now();
    let idle = tokio::task::block_in_place(|| -> Result<Vec<std::net::TcpStream>> {
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            let stream = tcp_from(addr, ATTACKER)?;
            stream.set_nonblocking(true)?;
            idle.push(stream);
        }
        Ok(idle)
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = loop {
        let open = idle.iter().filter(|s| !closed_by_peer(s)).count();
        if open <= per_source || Instant::now() >= deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(open, per_source, "idle connections the relay holds");
    relay.wait_for_log(
        &format!(
            "{per_source} handshakes in progress from 127.0.0.2 and {per_source} more waiting (--max-handshakes-per-source)"
        ),
        EVENT_TIMEOUT,
    )?;

    // Garbage, each kind answered and closed.
    let scanner = garbage(addr, ATTACKER_2, b"SSH-2.0-OpenSSH_9.6 scanner\r\n").await?;
    assert_eq!(scanner, NOT_A_CLIENT_NOTICE, "what an ssh client hears");
    let mut fake_tls = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    fake_tls.extend(random_bytes(64 * 1024, 7));
    garbage(addr, ATTACKER_2, &fake_tls).await?;
    let http = garbage_in_tls(addr, ATTACKER_2, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert_eq!(http, NOT_A_CLIENT_NOTICE, "what a stray TLS client hears");
    let mut huge = Preamble::CURRENT.encode().to_vec();
    huge.extend_from_slice(&[0x01, 0xff, 0xff, 0xff, 0xff]);
    let answer = garbage_in_tls(addr, ATTACKER_2, &huge).await?;
    assert_eq!(
        answer,
        Preamble::CURRENT.encode(),
        "only the relay's preamble"
    );
    let answer = garbage_in_tls(addr, ATTACKER_2, &Preamble { version: 99 }.encode()).await?;
    let mut answer = BytesMut::from(&answer[Preamble::CURRENT.encode().len()..]);
    let (kind, payload) = split_message(&mut answer)?.context("no reply to a bad version")?;
    assert_refused(&Reply::decode(kind, payload)?, Code::Version, "upgrade");
    // A client that opens a session and then sends garbage: the relay ends
    // that session (and its sshd connection), and nothing else.
    let mut transport = connect_from(addr, ATTACKER_2).await?;
    let hello = Hello::New {
        dead_after_ms: 1000,
        host: String::new(),
        port: sshd.port(),
    };
    let reply =
        tokio::time::timeout(EVENT_TIMEOUT, handshake::client(&mut transport, &hello)).await??;
    ensure!(matches!(reply, Reply::Created { .. }), "{reply:?}");
    transport
        .stream
        .write_all(&[0x7f, 0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .await?;
    read_to_close(&mut transport.stream).await?;
    for logged in [
        "session ended: protocol error: unexpected message type 0x7f",
        "not a resumeproxy client (it did not start TLS)",
        "connection refused: TLS:",
        "not a resumeproxy peer",
        "more than the limit",
        "peer speaks protocol version 99",
    ] {
        relay.wait_for_log(logged, EVENT_TIMEOUT)?;
    }

    // A new session from the real client's address opens while the flood
    // is held, and the running transfer keeps moving.
    let out = run(
        sshd.ssh_command(Some(&proxy), "echo fresh"),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    ensure!(out.status.success(), "new session: {}", stderr_of(&out));
    assert_eq!(out.stdout, b"fresh\n");
    open = idle.iter().filter(|s| !closed_by_peer(s)).count();
    assert!(
        opened.elapsed() < handshake_timeout && open == per_source,
        "the new session opened while the flood held its slots ({open} open after {:?})",
        opened.elapsed()
    );
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;

    // The held ones time out; so does the slow one.
    let timed_out = format!(
        "handshake took longer than {:.1}s",
        handshake_timeout.as_secs_f64()
    );
    relay.wait_for_count(&timed_out, per_source + 2, EVENT_TIMEOUT)?;
    relay.wait_for_log("connection evicted: it sent nothing within", EVENT_TIMEOUT)?;
    let (lasted, sent) = slow.await??;
    assert!(
        lasted < handshake_timeout + Duration::from_secs(3),
        "the slow handshake was cut after {lasted:?} ({sent} bytes)"
    );
    let lasted = silent.await??;
    assert!(
        lasted < handshake_timeout + Duration::from_secs(3),
        "the silent TLS connection was cut after {lasted:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle.iter().any(|s| !closed_by_peer(s)) {
        ensure!(
            Instant::now() < deadline,
            "held connections were never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(idle);

    assert!(relay.is_running(), "the relay is alive");
    let stderr = stream.finish().await?;
    assert!(
        !stderr.contains("resumed after") && !stderr.contains("lost"),
        "the transfer was never disturbed: {stderr}"
    );
    relay.wait_for_count("session ended: complete", 2, EVENT_TIMEOUT)?;
    assert!(!relay.log().contains("panicked"), "{}", relay.log());

    // Everything is given back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fds = fd_count(pid)?;
        if fds < fds_before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the relay holds {fds} descriptors, {fds_before} with one session before the flood"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = peak_rss_kib(pid)?;
    assert!(peak < 128 * 1024, "relay peak memory {peak} KiB");
    assert!(relay.is_running(), "the relay is alive");
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Targets.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// One source cannot take every session.
// ---------------------------------------------------------------------------

/// Opening a session needs no secret (ssh authenticates the user later, end
/// to end), so clients from one address could open sessions and vanish until
/// `--max-detached` (or `--max-sessions`) is full, and then every new session
/// from anyone would be refused for the whole grace period.
/// `--max-sessions-per-source` stops that: here one address may hold 4 of the
/// 8 detached sessions; its fifth is refused with the limit's name, and a
/// real ssh session from another address still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_abandoned_by_one_source_do_not_lock_out_everyone_else() -> Result<()> {
    const PER_SOURCE: usize = 4;
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(
        sshd.port(),
        &["--max-detached", "8", "--max-sessions-per-source", "4"],
    )?;
    let mut refused = Vec::new();
    for attempt in 0..2 * PER_SOURCE {
        let mut transport = connect_from(relay.addr(), ATTACKER).await?;
        let hello = Hello::New {
            dead_after_ms: 1000,
            host: String::new(),
            port: sshd.port(),
        };
        let reply = tokio::time::timeout(EVENT_TIMEOUT, handshake::client(&mut transport, &hello))
            .await??;
        match reply {
            Reply::Created { .. } if attempt < PER_SOURCE => {}
            Reply::Refused {
                code: Code::Busy,
                reason,
            } if attempt >= PER_SOURCE => refused.push(reason),
            other => bail!("attempt {attempt}: {other:?}"),
        }
    }
    assert!(
        refused
            .iter()
            .all(|r| r.contains("--max-sessions-per-source")),
        "{refused:?}"
    );
    relay.wait_for_count("client lost", PER_SOURCE, EVENT_TIMEOUT)?;
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT_FLAGS);
    let out = run(
        sshd.ssh_command(Some(&proxy), "echo still open"),
        Stdio::null(),
        Stdio::piped(),
    )
    .await?;
    ensure!(
        out.status.success(),
        "a new session from another address: {}",
        stderr_of(&out)
    );
    Ok(())
}
