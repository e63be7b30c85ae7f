//! `resumeproxy demo`: the product's promise, shown with nothing but the build.
//!
//! Starts, in this one process, a target server (standing in for sshd), a
//! relay on loopback, and a [`FaultInjector`] between client and relay; then
//! pushes a pseudo-random stream each way through a client session while the
//! injector breaks the link every `--break-every` (alternately resets and
//! silent partitions), and checks sha256 of what arrived against what was sent.

pub mod fault;

use crate::client::transport_plan::TransportChoice;
use crate::client::trust::TrustSource;
use crate::client::{self, ClientConfig, ClientEvent};
use crate::proto::session::SessionConfig;
use crate::relay::target_policy::TargetPolicy;
use crate::relay::{Fleet, Limits, Relay, RelayConfig};
use crate::transport::identity::RelayKey;
use crate::transport::tls;
use crate::units::{format_bytes, format_duration, hex, parse_duration, parse_size};
use clap::Args;
use fault::FaultInjector;
use sha2::{Digest, Sha256};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Dead-peer interval of the demo's client: short, so partitions are noticed fast.
const DEMO_DEAD_AFTER: Duration = Duration::from_secs(1);
/// How long each silent partition lasts: longer than the dead-peer interval.
const DEMO_PARTITION: Duration = Duration::from_millis(1500);

/// A deterministic pseudo-random byte stream of a given length: byte `i` is
/// byte `i % 8` of splitmix64(seed + i / 8), so any read sizes give the same stream.
pub(crate) struct PatternReader {
    len: u64,
    pos: u64,
    seed: u64,
}

impl PatternReader {
    /// `len` bytes from `seed`.
    pub fn new(len: u64, seed: u64) -> PatternReader {
        PatternReader { len, pos: 0, seed }
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            let within = (self.pos % 8) as usize;
            let word = splitmix64(self.seed.wrapping_add(self.pos / 8)).to_le_bytes();
            let take = (8 - within).min(out.len() - i);
            out[i..i + take].copy_from_slice(&word[within..within + take]);
            i += take;
            self.pos += take as u64;
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.len - self.pos)
            .min(128 * 1024) as usize;
        self.fill(buf.initialize_unfilled_to(n));
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// A sink that hashes everything written to it.
#[derive(Default)]
pub(crate) struct HashingWriter {
    hasher: Sha256,
    len: u64,
}

impl HashingWriter {
    /// Bytes written and their sha256, hex.
    pub fn finish(self) -> (u64, String) {
        (self.len, hex(&self.hasher.finalize()))
    }
}

impl AsyncWrite for HashingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.hasher.update(data);
        self.len += data.len() as u64;
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// sha256 of a [`PatternReader`] stream, computed directly.
async fn expected_hash(len: u64, seed: u64) -> String {
    let mut reader = PatternReader::new(len, seed);
    let mut sink = HashingWriter::default();
    // Infallible: both ends are in memory.
    let _ = tokio::io::copy(&mut reader, &mut sink).await;
    sink.finish().1
}

const UP_SEED: u64 = 0x5eed_0001;
const DOWN_SEED: u64 = 0x5eed_0002;

/// The target standing in for sshd: hashes what it receives, sends its own stream.
async fn start_target(size: u64) -> io::Result<(SocketAddr, oneshot::Receiver<(u64, String)>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (mut read, mut write) = stream.into_split();
        let send = async move {
            let mut source = PatternReader::new(size, DOWN_SEED);
            let _ = tokio::io::copy(&mut source, &mut write).await;
            let _ = write.shutdown().await;
        };
        let receive = async move {
            let mut sink = HashingWriter::default();
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.hasher.update(&buf[..n]);
                sink.len += n as u64;
            }
            sink.finish()
        };
        let ((), received) = tokio::join!(send, receive);
        let _ = tx.send(received);
    });
    Ok((addr, rx))
}

/// Options of `resumeproxy demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Bytes to send each way (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Break the link this often.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub break_every: Duration,
}

/// Runs the demo; returns whether every byte arrived intact.
pub async fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    let (target, target_report) = start_target(args.size).await?;
    // A throwaway key, pinned by the client directly: TLS as in production.
    let key = RelayKey::generate()?;
    let relay = Relay::bind(RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        targets: TargetPolicy {
            default: target,
            allowed: Vec::new(),
        },
        grace: Duration::from_secs(60),
        session: SessionConfig::default(),
        limits: Limits::default(),
        tls: tls::server_config(&key)?,
        quic_reset_key: key.quic_reset_key(),
        fleet: Fleet::default(),
    })
    .await?;
    let relay_addr = relay.local_addr()?;
    let relay_task = tokio::spawn(relay.run(std::future::pending()));
    let injector = Arc::new(FaultInjector::start(relay_addr).await?);
    println!(
        "resumeproxy demo: {} each way through a relay on {relay_addr}, link broken every {}",
        format_bytes(args.size),
        format_duration(args.break_every)
    );

    let resets = Arc::new(AtomicU64::new(0));
    let partitions = Arc::new(AtomicU64::new(0));
    let breaker = {
        let (injector, resets, partitions) = (
            Arc::clone(&injector),
            Arc::clone(&resets),
            Arc::clone(&partitions),
        );
        let every = args.break_every;
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(every).await;
                n += 1;
                if n.is_multiple_of(2) {
                    injector.set_partitioned(true);
                    partitions.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(DEMO_PARTITION).await;
                    injector.set_partitioned(false);
                } else if injector.kill_all() > 0 {
                    resets.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let config = ClientConfig {
        relay_host: injector.addr().ip().to_string(),
        relay_port: injector.addr().port(),
        target_host: String::new(),
        target_port: target.port(),
        session: SessionConfig {
            dead_after: DEMO_DEAD_AFTER,
            ..SessionConfig::default()
        },
        connect_timeout: Duration::from_secs(5),
        trust: TrustSource::Fingerprints(vec![key.fingerprint()]),
        // The fault injector breaks TCP connections.
        transport: TransportChoice::Tcp,
        udp_memory: None,
        fallback: Default::default(),
    };
    let started = Instant::now();
    let mut sink = HashingWriter::default();
    let mut resumed = 0u32;
    let mut replayed = 0u64;
    let result = client::run(
        config,
        PatternReader::new(args.size, UP_SEED),
        &mut sink,
        std::future::pending(),
        None,
        |event| {
            if let ClientEvent::Resumed { replayed: r, .. } = event {
                resumed += 1;
                replayed += r;
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    breaker.abort();
    relay_task.abort();
    result?;

    let (down_len, down_hash) = sink.finish();
    let (up_len, up_hash) = tokio::time::timeout(Duration::from_secs(10), target_report).await??;
    let up_expected = expected_hash(args.size, UP_SEED).await;
    let down_expected = expected_hash(args.size, DOWN_SEED).await;
    let up_ok = up_len == args.size && up_hash == up_expected;
    let down_ok = down_len == args.size && down_hash == down_expected;
    let rate = (up_len + down_len) as f64 / elapsed.as_secs_f64();
    println!(
        "moved {} up and {} down in {} ({}/s both ways together, sha256 on both ends included)",
        format_bytes(up_len),
        format_bytes(down_len),
        format_duration(elapsed),
        format_bytes(rate as u64)
    );
    println!(
        "injected {} resets and {} silent partitions; the session resumed {resumed} times, {} replayed",
        resets.load(Ordering::Relaxed),
        partitions.load(Ordering::Relaxed),
        format_bytes(replayed)
    );
    let verdict = |ok| if ok { "match" } else { "MISMATCH" };
    println!("sha256 up:   {up_hash} {}", verdict(up_ok));
    println!("sha256 down: {down_hash} {}", verdict(down_ok));
    Ok(up_ok && down_ok)
}
