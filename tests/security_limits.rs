//! Security, end to end: every limit holds.
//!
//! * **Hostile traffic does not stop a real session.** 1,000 idle
//!   connections from one address (only `--max-handshakes-per-source` hold
//!   a place at a time and as many wait; the rest are turned away at once,
//!   and the silent ones give their places up to those waiting), garbage
//!   before TLS, inside TLS and after a session is open, a slowloris
//!   ClientHello trickled a byte a second, and a TLS connection that never
//!   says hello: the relay stays up, answers each with a refusal or a
//!   timeout in its log, the running transfer completes (sha256), a new
//!   session from another address opens while the flood is held, and once
//!   it is gone the relay's descriptors are back where they were.
//! * **One source cannot take every session.** Sessions opened and
//!   abandoned from one address stop at `--max-sessions-per-source`, so they
//!   cannot fill `--max-detached` and lock everyone else out.
//! * **Another protocol is not held.** A TLS client whose hello does not
//!   offer resumeproxy's ALPN is refused at its hello.

mod support;

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use resumeproxy::link::handshake::{self, NOT_A_CLIENT_NOTICE};
use resumeproxy::proto::wire::{split_message, Code, Hello, Preamble, Reply};
use resumeproxy::relay::Limits;
use resumeproxy::transport::tls::{self, PinVerifier};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::data::random_bytes;
use support::process::stderr_of;
use support::relay::{proxy_command, RelayProcess, CLIENT_FLAGS};
use support::security::{
    assert_refused, closed_by_peer, connect_from, run, Stream, ATTACKER, ATTACKER_2, EVENT_TIMEOUT,
};
use support::sshd::TestSshd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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

/// A TLS client of another protocol — its hello offers another ALPN, or
/// none — is refused at its hello with `no_application_protocol`, not held
/// until the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_of_another_protocol_is_refused_at_once() -> Result<()> {
    // No session is opened: the target is never connected to.
    let relay = RelayProcess::start(9, &[])?;
    for alpn in [vec![b"h2".to_vec()], Vec::new()] {
        let mut config = (*tls::client_config(Arc::new(PinVerifier::new(Vec::new())))?).clone();
        config.alpn_protocols = alpn.clone();
        let name = rustls::pki_types::ServerName::IpAddress(relay.addr().ip().into());
        let tcp = TcpStream::connect(relay.addr()).await?;
        let started = Instant::now();
        let result = tokio::time::timeout(
            EVENT_TIMEOUT,
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .context("the relay held the connection")?;
        let took = started.elapsed();
        let error = result.err().context("the handshake succeeded")?;
        let alert = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        ensure!(
            matches!(
                alert,
                Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::NoApplicationProtocol
                ))
            ),
            "ALPN {alpn:?}: {error}"
        );
        ensure!(
            took < Duration::from_secs(1),
            "ALPN {alpn:?}: refused after {took:?}"
        );
    }
    relay.wait_for_count(
        "connection refused: TLS: another protocol: its TLS hello does not offer ALPN resumeproxy/2",
        2,
        EVENT_TIMEOUT,
    )?;
    Ok(())
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
