//! Crashes injected at random points of the relay's worker lose and
//! duplicate nothing.
//!
//! Each run starts `resumeproxyd` (keeper and worker) with
//! `RESUMEPROXYD_CRASH_AT=POINT:N` (see `src/relay/durable/crash.rs`): the
//! worker aborts the Nth time it passes POINT. (The binaries `cargo test`
//! builds have the crash points: `Cargo.toml` turns their feature on for
//! the tests only.) The keeper hands the variable
//! to every worker it starts, so each new worker aborts again N passes
//! later, and the run goes on through as many crashes as it takes. Two
//! `resumeproxy` clients (ssh's ProxyCommand, here with their stdin and
//! stdout piped to the test) go through the relay to a TCP target of the
//! test's own, which sends each connection the same known stream and hashes
//! what it receives; each client sends a stream of its own, over TCP or
//! QUIC. Every run
//! checks, each way and for each client, that the lengths and sha256 are
//! the ones sent (nothing lost, duplicated or moved), and that the clients
//! exit 0.
//!
//! Points, counts and sizes come from a seeded generator; the seed is
//! printed, and `RESUMEPROXY_CRASH_SEED=<seed>` runs the same schedule again
//! (`RESUMEPROXY_CRASH_RUN=<i>` only its run `i`).
//!
//! Counts are kept from the smallest for `sshd-read`: a new worker starts
//! its restored sessions, which read from the target at once, before it
//! tells the keeper it is ready; a worker that crashes before that counts
//! as a failed start (with a growing pause), and after five in a row the
//! keeper gives up, ending every session. A session that crashes every
//! worker within moments of its start is a crash loop that has to end
//! somewhere, but the count says "failed to start" of workers that carried
//! sessions on.

mod support;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::data::{sha256_bytes, SplitMix64};
use support::durable::{pattern_bytes, MemDir};
use support::process::{joined, Watched};
use support::relay::{proxy_command, RelayProcess};

/// Runs in all, on [`THREADS`] threads at once.
const RUNS: u64 = 24;
/// Runs at once (the machine has two cores; a run is mostly waiting).
const THREADS: u64 = 2;
/// Clients in each run.
const CLIENTS: usize = 2;
/// Bound on one run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The variable that arms a crash point (`src/relay/durable/crash.rs`).
const CRASH_ENV: &str = "RESUMEPROXYD_CRASH_AT";

/// One run's schedule.
#[derive(Debug, Clone)]
struct Plan {
    point: &'static str,
    n: u64,
    /// The clients' `--transport`.
    transport: &'static str,
    /// Bytes the target sends each connection.
    down: usize,
    /// Bytes each client sends.
    up: Vec<usize>,
    seed: u64,
}

impl Plan {
    fn draw(rng: &mut SplitMix64) -> Plan {
        // Counts that crash a run a few times, not hundreds: a pass is a
        // read from or a write to the target (up to some tens of KiB), an
        // acknowledgement from a client, or a new session.
        let (point, n) = match rng.range(0, 3) {
            // A new worker reads from the target for its restored sessions
            // before it tells the keeper it is ready; one that crashes
            // before that counts as a failed start, and the keeper gives
            // up after five in a row (see the module's doc).
            0 => ("sshd-read", rng.range(16, 60)),
            1 => ("sshd-write", rng.range(1, 50)),
            2 => ("client-ack", rng.range(1, 50)),
            // With one pass per new session, the first would crash every
            // worker before any session could start.
            _ => ("session-published", rng.range(2, CLIENTS as u64)),
        };
        let mib = |rng: &mut SplitMix64| (rng.range(2 << 20, 8 << 20)) as usize;
        let transport = if rng.range(0, 1) == 0 { "tcp" } else { "quic" };
        Plan {
            point,
            n,
            transport,
            down: mib(rng),
            up: (0..CLIENTS).map(|_| mib(rng)).collect(),
            seed: rng.next_u64(),
        }
    }
}

/// What the target received on one connection that ended.
type Received = (u64, String);

/// The test's target: every connection gets `down` and then the end of the
/// stream; what each sends is hashed, and kept once it ended.
struct Target {
    port: u16,
    received: Arc<(Mutex<Vec<Received>>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Target {
    fn start(down: Arc<Vec<u8>>) -> Result<Target> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let received: Arc<(Mutex<Vec<Received>>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve(conn, Arc::clone(&down), Arc::clone(&sink)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Target {
            port,
            received,
            stop,
        })
    }

    /// Waits until `n` connections have ended; returns what they received.
    fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let (lock, grew) = &*self.received;
        let deadline = Instant::now() + timeout;
        let mut done = lock.lock().unwrap();
        while done.len() < n {
            let now = Instant::now();
            ensure!(
                now < deadline,
                "the target saw {} of {n} streams end",
                done.len()
            );
            done = grew.wait_timeout(done, deadline - now).unwrap().0;
        }
        Ok(done.clone())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, down: Arc<Vec<u8>>, sink: Arc<(Mutex<Vec<Received>>, Condvar)>) {
    let _ = conn.set_nonblocking(false);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    std::thread::spawn(move || {
        for chunk in down.chunks(64 << 10) {
            if out.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = out.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut conn = conn;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 << 10];
        let mut len = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
                // A connection the relay dropped (its session was never
                // answered) did not end: nothing to keep.
                Err(_) => return,
            }
        }
        let hash: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (lock, grew) = &*sink;
        lock.lock().unwrap().push((len, hash));
        grew.notify_all();
    });
}

/// One client: `resumeproxy` with its stdin fed `up` and its stdout hashed.
struct Client {
    ssh: Watched,
    writer: JoinHandle<Result<()>>,
    reader: JoinHandle<Result<Received>>,
}

impl Client {
    fn start(proxy: &str, home: &MemDir, up: Arc<Vec<u8>>) -> Result<Client> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec {proxy}"))
            .env("XDG_RUNTIME_DIR", home.path().join("run"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_STATE_HOME", home.path().join("state"));
        let mut ssh = Watched::spawn(command, Stdio::piped(), Stdio::piped())?;
        let mut stdin = ssh.child.stdin.take().context("stdin")?;
        let mut stdout = ssh.child.stdout.take().context("stdout")?;
        let writer = std::thread::spawn(move || -> Result<()> {
            for chunk in up.chunks(64 << 10) {
                stdin.write_all(chunk).context("writing to the client")?;
            }
            Ok(())
        });
        let reader = std::thread::spawn(move || -> Result<Received> {
            let mut hasher = Sha256::new();
            let mut buf = vec![0; 64 << 10];
            let mut len = 0u64;
            loop {
                let n = stdout.read(&mut buf).context("reading from the client")?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Ok((
                len,
                hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ))
        });
        Ok(Client {
            ssh,
            writer,
            reader,
        })
    }
}

/// What a run did.
struct Outcome {
    crashes: usize,
    before_ready: usize,
    took: Duration,
}

/// One run: the relay armed as `plan` says, its clients to the end, and
/// every stream checked.
fn run(plan: &Plan) -> Result<Outcome> {
    let down = Arc::new(pattern_bytes(plan.down, plan.seed));
    let target = Target::start(Arc::clone(&down))?;
    let mut relay_cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxyd"));
    relay_cmd.env(CRASH_ENV, format!("{}:{}", plan.point, plan.n));
    if let Ok(level) = std::env::var("RESUMEPROXY_CRASH_RELAY_LOG") {
        relay_cmd.env("RESUMEPROXY_LOG", level);
    }
    let relay = RelayProcess::start_command(relay_cmd, "127.0.0.1:0", target.port, &[])?;
    // A start cut by a crash over QUIC waits for the handshake's own
    // timeout (three times its first probe timeout, some 3 s) before the
    // next attempt: a start in a storm of crashes takes longer than the
    // default --connect-timeout.
    let flags = format!(
        "--transport {} --dead-after 1s --connect-timeout 30s",
        plan.transport
    );
    let proxy = proxy_command(relay.addr(), target.port, &flags);
    let home = MemDir::new("crash-client")?;
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut sent = Vec::new();
    for (i, &len) in plan.up.iter().enumerate() {
        let up = Arc::new(pattern_bytes(len, plan.seed ^ (i as u64 + 1)));
        sent.push((len as u64, sha256_bytes(&up)));
        clients.push(Client::start(&proxy, &home, up)?);
    }
    let want_down = (down.len() as u64, sha256_bytes(&down));
    let log = || format!("relay log:\n{}", relay.log());
    for (i, client) in clients.into_iter().enumerate() {
        let Client {
            mut ssh,
            writer,
            reader,
        } = client;
        let status = ssh
            .wait(RUN_TIMEOUT.saturating_sub(started.elapsed()))
            .with_context(|| format!("client {i}; {}", log()))?;
        let stderr = ssh.stderr.text();
        ensure!(
            status.success(),
            "client {i}: {status}; stderr:\n{stderr}\n{}",
            log()
        );
        joined(writer).with_context(|| format!("client {i}: {stderr}"))?;
        let got = joined(reader).with_context(|| format!("client {i}: {stderr}"))?;
        ensure!(
            got == want_down,
            "client {i} received {} bytes (sha256 {}), the target sent {} (sha256 {})\n{}",
            got.0,
            got.1,
            want_down.0,
            want_down.1,
            log()
        );
    }
    let received = target
        .wait_for(CLIENTS, Duration::from_secs(10))
        .with_context(log)?;
    // A connection the relay made for a session that a crash cut before
    // it was published (its client opened another) ends with nothing.
    let mut received: Vec<Received> = received.into_iter().filter(|(len, _)| *len > 0).collect();
    received.sort();
    sent.sort();
    ensure!(
        received == sent,
        "the target received {received:?}, the clients sent {sent:?}\n{}",
        log()
    );
    Ok(Outcome {
        crashes: relay.count("SIGABRT"),
        before_ready: crashes_before_ready(&relay.log()),
        took: started.elapsed(),
    })
}

/// Workers that crashed before they listened (the keeper counts them as
/// failed starts).
fn crashes_before_ready(log: &str) -> usize {
    let mut listening = true;
    let mut count = 0;
    for line in log.lines() {
        if line.contains("worker ") && line.contains(" started with ") {
            listening = false;
        } else if line.contains("listening on") {
            listening = true;
        } else if line.contains("SIGABRT") && !listening {
            count += 1;
        }
    }
    count
}

#[test]
fn crashes_at_random_points_lose_and_duplicate_nothing() -> Result<()> {
    let seed = match std::env::var("RESUMEPROXY_CRASH_SEED") {
        Ok(text) => text.parse().context("RESUMEPROXY_CRASH_SEED")?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    eprintln!("crash schedule seed {seed} (RESUMEPROXY_CRASH_SEED={seed} runs it again)");
    let mut rng = SplitMix64(seed);
    let mut plans: Vec<Plan> = (0..RUNS).map(|_| Plan::draw(&mut rng)).collect();
    // RESUMEPROXY_CRASH_RUN=<i>: only that run of the schedule.
    if let Ok(only) = std::env::var("RESUMEPROXY_CRASH_RUN") {
        let i: usize = only.parse().context("RESUMEPROXY_CRASH_RUN")?;
        plans = plans.into_iter().skip(i).take(1).collect();
    }
    let started = Instant::now();
    let results: Vec<Result<(Plan, Outcome)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let plans = &plans;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for plan in plans.iter().skip(t as usize).step_by(THREADS as usize) {
                        let outcome = run(plan).with_context(|| {
                            format!("seed {seed}, {plan:?} (RESUMEPROXY_CRASH_SEED={seed})")
                        });
                        let failed = outcome.is_err();
                        out.push(outcome.map(|o| (plan.clone(), o)));
                        if failed {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut hit = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for result in &results {
        match result {
            Ok((plan, outcome)) => {
                eprintln!(
                    "  {}:{} {}, down {} KiB, up {:?} KiB: {} crashes ({} before ready), {:.1?}",
                    plan.point,
                    plan.n,
                    plan.transport,
                    plan.down >> 10,
                    plan.up.iter().map(|u| u >> 10).collect::<Vec<_>>(),
                    outcome.crashes,
                    outcome.before_ready,
                    outcome.took
                );
                let entry = hit.entry(plan.point).or_default();
                entry.0 += 1;
                entry.1 += outcome.crashes;
            }
            Err(e) => bail!("{e:?}"),
        }
    }
    eprintln!(
        "{} runs in {:.1?}, seed {seed}; runs and crashes by point: {hit:?}",
        results.len(),
        started.elapsed()
    );
    let crashes: usize = hit.values().map(|(_, c)| c).sum();
    ensure!(crashes > 0, "no run crashed the worker");
    Ok(())
}

/// A session whose client is slow to write its output (ssh busy, a slow
/// pipe) when the relay ends it: the relay closes its transport once its
/// close is acknowledged (QUIC) or flushed (TCP), and the client, which
/// still has bytes to write out and sends its heartbeats meanwhile, must
/// take the relay's close as the end and not the connection it then finds
/// gone as a lost link (it would reconnect, hear "session gone" and exit
/// 255 after a session that was complete).
#[test]
fn a_client_slow_to_write_its_output_ends_with_the_relays_close() -> Result<()> {
    for transport in ["tcp", "quic"] {
        let down = Arc::new(pattern_bytes(512 << 10, 7));
        let target = Target::start(Arc::clone(&down))?;
        let relay = RelayProcess::start(target.port, &[])?;
        let flags = format!("--transport {transport} --dead-after 1s");
        let proxy = proxy_command(relay.addr(), target.port, &flags);
        let home = MemDir::new("slow-client")?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec {proxy}"))
            .env("XDG_RUNTIME_DIR", home.path().join("run"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_STATE_HOME", home.path().join("state"));
        let mut client = Watched::spawn(command, Stdio::piped(), Stdio::piped())?;
        drop(client.child.stdin.take());
        let mut stdout = client.child.stdout.take().context("stdout")?;
        // Nothing is read until the relay has ended the session.
        relay
            .wait_for_log("session ended", Duration::from_secs(20))
            .with_context(|| format!("{transport}: {}", client.stderr.text()))?;
        std::thread::sleep(Duration::from_millis(1500));
        let mut got = Vec::new();
        stdout.read_to_end(&mut got)?;
        let status = client.wait(Duration::from_secs(20))?;
        ensure!(
            status.success() && got.len() == down.len(),
            "{transport}: client {status}, {} of {} bytes; stderr:\n{}\nrelay log:\n{}",
            got.len(),
            down.len(),
            client.stderr.text(),
            relay.log()
        );
        ensure!(
            sha256_bytes(&got) == sha256_bytes(&down),
            "{transport}: sha256"
        );
    }
    Ok(())
}
