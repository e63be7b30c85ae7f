//! Helpers for `scripts/bench` where shell tools cannot do the job: a TCP echo
//! server, sink and source, one-byte ping-pong latency (p50/p99), resume time after a
//! network outage, holding many idle sessions on a relay, and many busy ones.
//!
//! A bench target with `harness = false`, so `cargo test` never builds it:
//! `cargo build --release --bench benchtool`. Run it with no arguments for usage.

use resumeproxy::client::transport_plan::TransportChoice;
use resumeproxy::client::trust::TrustSource;
use resumeproxy::client::{self, ClientConfig, ClientEvent};
use resumeproxy::proto::session::SessionConfig;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  benchtool echo ADDR                      TCP echo server (prints its port)
  benchtool sink ADDR                      TCP server that discards, holds connections open
  benchtool source ADDR MIB                TCP server that sends MIB MiB of zeroes to each
                                           connection, then closes it
  benchtool pingpong COUNT tcp ADDR        one-byte round trips over TCP
  benchtool pingpong COUNT cmd PROG ARGS…  one-byte round trips through PROG's stdin/stdout
  benchtool resume ROUNDS OUTAGE_MS DOWN_CMD UP_CMD TRIGGER_CMD|- PROG ARGS…
                                           outage, then time from UP_CMD to the first byte back
  benchtool idle N RELAY_HOST RELAY_PORT TARGET_PORT FINGERPRINT
                                           open N idle sessions, print 'ready', hold until stdin closes
  benchtool busy N MIB RELAY_HOST RELAY_PORT ECHO_PORT FINGERPRINT
                                           open N sessions to an echo target, send MIB MiB through
                                           each and read it back, all at once; print 'idle' and hold
                                           them open until a line on stdin; end them, print 'ended',
                                           hold until stdin closes";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["echo", addr] => serve(addr, true),
        ["sink", addr] => serve(addr, false),
        ["source", addr, mib] => source(addr, mib.parse().unwrap()),
        ["pingpong", count, "tcp", addr] => pingpong_tcp(count.parse().unwrap(), addr),
        ["pingpong", count, "cmd", prog @ ..] => pingpong_cmd(count.parse().unwrap(), prog),
        ["resume", rounds, outage, down, up, trigger, prog @ ..] => resume(
            rounds.parse().unwrap(),
            Duration::from_millis(outage.parse().unwrap()),
            down,
            up,
            trigger,
            prog,
        ),
        ["idle", n, host, port, target, fp] => idle(
            n.parse().unwrap(),
            host,
            port.parse().unwrap(),
            target.parse().unwrap(),
            fp,
        ),
        ["busy", n, mib, host, port, echo, fp] => busy(
            n.parse().unwrap(),
            mib.parse().unwrap(),
            host,
            port.parse().unwrap(),
            echo.parse().unwrap(),
            fp,
        ),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("benchtool: {e}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn serve(addr: &str, echo: bool) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        conn.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo && conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Sends `mib` MiB of zeroes to each connection, 256 KiB per write, and
/// closes it (what the peer sends is never read).
fn source(addr: &str, mib: usize) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        conn.set_nodelay(true)?;
        std::thread::spawn(move || {
            let buf = vec![0u8; 256 * 1024];
            for _ in 0..mib * 4 {
                if conn.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Prints `p50_us p99_us mean_us` of `samples`.
fn report(mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{:.1} {:.1} {:.1}",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}

fn round_trips(count: usize, w: &mut dyn Write, r: &mut dyn Read) -> Result<Vec<Duration>> {
    let mut byte = [0u8; 1];
    // Warm up (connection set-up, TLS, session handshake).
    for _ in 0..50 {
        w.write_all(b"x")?;
        w.flush()?;
        r.read_exact(&mut byte)?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        w.write_all(b"x")?;
        w.flush()?;
        r.read_exact(&mut byte)?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

fn pingpong_tcp(count: usize, addr: &str) -> Result<()> {
    let conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    let mut r = conn.try_clone()?;
    let mut w = conn;
    report(round_trips(count, &mut w, &mut r)?);
    Ok(())
}

fn spawn(prog: &[&str]) -> Result<std::process::Child> {
    Ok(Command::new(prog[0])
        .args(&prog[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

fn pingpong_cmd(count: usize, prog: &[&str]) -> Result<()> {
    let mut child = spawn(prog)?;
    let mut w = child.stdin.take().unwrap();
    let mut r = child.stdout.take().unwrap();
    let samples = round_trips(count, &mut w, &mut r)?;
    drop(w);
    let _ = child.wait();
    report(samples);
    Ok(())
}

fn sh(cmd: &str) -> Result<()> {
    let status = Command::new("/bin/sh").args(["-c", cmd]).status()?;
    if !status.success() {
        return Err(format!("`{cmd}` failed: {status}").into());
    }
    Ok(())
}

/// Each round: a round trip to make sure the link is up, the network goes
/// down (DOWN_CMD) for OUTAGE, one byte is sent into the outage, the network
/// comes back (UP_CMD, then TRIGGER_CMD unless `-`), and the time from the
/// network's return to that byte's echo is one sample (ms).
fn resume(
    rounds: usize,
    outage: Duration,
    down: &str,
    up: &str,
    trigger: &str,
    prog: &[&str],
) -> Result<()> {
    let mut child = spawn(prog)?;
    let mut w = child.stdin.take().unwrap();
    let mut r = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    let mut samples = Vec::new();
    for _ in 0..rounds {
        w.write_all(b"x")?;
        r.read_exact(&mut byte)?;
        sh(down)?;
        w.write_all(b"y")?;
        std::thread::sleep(outage);
        sh(up)?;
        let t = Instant::now();
        if trigger != "-" {
            sh(trigger)?;
        }
        r.read_exact(&mut byte)?;
        let took = t.elapsed();
        eprintln!(
            "benchtool: resumed after {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        samples.push(took.as_secs_f64() * 1e3);
        // Let the client settle (backoff reset, heartbeats) before the next round.
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(w);
    let _ = child.kill();
    let _ = child.wait();
    samples.sort_by(f64::total_cmp);
    println!(
        "{:.1} {:.1} {:.1}",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1]
    );
    Ok(())
}

/// A client configuration for the relay at `host:port`, pinned to `fp`,
/// for sessions to `target` on the relay's machine.
fn client_config(host: &str, port: u16, target: u16, fp: &str) -> Result<ClientConfig> {
    let fingerprint = fp.parse().map_err(|e| format!("{e:?}"))?;
    Ok(ClientConfig {
        relay_host: host.to_string(),
        relay_port: port,
        target_host: String::new(),
        target_port: target,
        session: SessionConfig {
            dead_after: Duration::from_secs(60),
            ..SessionConfig::default()
        },
        connect_timeout: Duration::from_secs(30),
        trust: TrustSource::Fingerprints(vec![fingerprint]),
        transport: TransportChoice::Tcp,
        udp_memory: None,
        fallback: Default::default(),
    })
}

/// Opens `n` sessions through the relay to an echo target and sends `mib`
/// MiB through each, all at once, reading it back; then holds them open
/// and idle (prints `idle`) until a line on stdin, ends them (prints
/// `ended`), and holds until stdin closes. The relay's memory can be read
/// at each step.
fn busy(n: usize, mib: usize, host: &str, port: u16, echo: u16, fp: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let template = client_config(host, port, echo, fp)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<()>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if line.is_err() || lines_tx.blocking_send(()).is_err() {
                    break;
                }
            }
        });
        let (done_tx, mut done) = tokio::sync::mpsc::channel::<bool>(n);
        let (ended_tx, mut ended) = tokio::sync::mpsc::channel::<bool>(n);
        let end = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        for i in 0..n {
            let (ours, theirs) = tokio::io::duplex(256 * 1024);
            let (r, w) = tokio::io::split(theirs);
            let config = template.clone();
            let ended_tx = ended_tx.clone();
            tokio::task::spawn_local(async move {
                let result = client::run(config, r, w, std::future::pending(), None, |_| {}).await;
                if let Err(e) = &result {
                    eprintln!("benchtool: session {i}: {e}");
                }
                let _ = ended_tx.send(result.is_ok()).await;
            });
            let done_tx = done_tx.clone();
            let end = end.clone();
            tokio::task::spawn_local(async move {
                let (mut from, mut to) = tokio::io::split(ours);
                let total = mib << 20;
                let send = async {
                    let chunk = vec![0x5au8; 64 * 1024];
                    let mut sent = 0;
                    while sent < total {
                        to.write_all(&chunk).await?;
                        sent += chunk.len();
                    }
                    std::io::Result::Ok(())
                };
                let receive = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0;
                    while got < total {
                        match from.read(&mut buf).await? {
                            0 => break,
                            k => got += k,
                        }
                    }
                    std::io::Result::Ok(got)
                };
                let (sent, got) = tokio::join!(send, receive);
                let ok = sent.is_ok() && matches!(got, Ok(g) if g == total);
                let _ = done_tx.send(ok).await;
                // Idle until told to end; then the end of our input ends
                // the session (the echo target closes in turn).
                end.cancelled().await;
                let _ = to.shutdown().await;
                let mut rest = Vec::new();
                let _ = from.read_to_end(&mut rest).await;
            });
        }
        drop(ended_tx);
        let mut ok = 0;
        for _ in 0..n {
            if done.recv().await == Some(true) {
                ok += 1;
            }
        }
        println!("idle {ok} {:.1}", started.elapsed().as_secs_f64());
        let _ = lines.recv().await;
        end.cancel();
        let mut finished = 0;
        while let Some(result) = ended.recv().await {
            finished += usize::from(result);
        }
        println!("ended {finished}");
        // Hold until stdin closes.
        while lines.recv().await.is_some() {}
    });
    Ok(())
}

/// Opens `n` sessions through the relay, each with an idle local end.
fn idle(n: usize, host: &str, port: u16, target: u16, fp: &str) -> Result<()> {
    let template = client_config(host, port, target, fp)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // At most a few handshakes at a time (the relay limits them per source).
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(n);
        let mut locals = Vec::new();
        for i in 0..n {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let (ours, theirs) = tokio::io::duplex(4096);
            locals.push(ours);
            let (r, w) = tokio::io::split(theirs);
            let config = template.clone();
            let ready = ready_tx.clone();
            tokio::task::spawn_local(async move {
                let mut permit = Some(permit);
                let on_ready = ready.clone();
                let result = client::run(config, r, w, std::future::pending(), None, move |e| {
                    if let ClientEvent::Connected { .. } = e {
                        if permit.take().is_some() {
                            let _ = on_ready.try_send(true);
                        }
                    }
                })
                .await;
                if let Err(e) = result {
                    eprintln!("benchtool: session {i}: {e}");
                    let _ = ready.try_send(false);
                }
            });
        }
        let mut ok = 0;
        for _ in 0..n {
            if ready_rx.recv().await == Some(true) {
                ok += 1;
            }
        }
        println!("ready {ok}");
        // Hold until stdin closes.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
        drop(locals);
    });
    Ok(())
}
