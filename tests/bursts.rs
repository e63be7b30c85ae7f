//! Many sessions from one address at once, end to end: the real
//! `resumeproxyd` at its default limits and the real `resumeproxy`.
//!
//! * **A burst gets its sessions.** 100 clients started within a second from
//!   one address (a parallel job, an office behind one NAT address), each
//!   sending its own bytes to a TCP echo target and reading them back: every
//!   one gets its session and its bytes, exits 0 and says nothing (but that
//!   its start was slow, on a loaded machine), and the relay neither dropped
//!   nor refused a connection on the way (so no client owed its session to
//!   a retry).
//! * **Silent connections do not lock a source out.** Connections that fill
//!   a source's handshake slots and never send a byte are evicted, oldest
//!   first, for the next client from that address, which gets its session
//!   long before the handshake timeout would have freed a slot.
//! * **Memory comes back after a peak.** 50 sessions moving 8 MiB each way
//!   at once take the relay's worker to some 170 MiB; a second after they
//!   end, it is back within 8 MiB of its idle size, and the replay rings'
//!   shared memory is all given back.
//! * **A client turned away at a limit hears why.** When a source's slots
//!   and queue are held by connections that do send (slowly), the next
//!   client is told that the relay is at its limit, and its last line says
//!   so — not "is resumeproxyd running there?".

mod support;

use anyhow::{ensure, Context, Result};
use resumeproxy::relay::Limits;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::data::random_bytes;
use support::relay::{test_key, RelayProcess};
use support::security::closed_by_peer;

/// The tests of this file one at a time: the burst's hundred clients
/// would otherwise slow the others' clients past what they measure.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sessions in the burst.
const BURST: usize = 100;
/// Bytes each burst session sends and gets back.
const PER_SESSION: usize = 64 * 1024;
/// Upper bound for one relay log event to show up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP echo server on loopback, one thread per connection; it echoes
/// until its client closes, then closes. Returns its port.
fn echo_server() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || support::quic_lab::echo_each_connection(listener));
    Ok(port)
}

/// The relay's default limits, given as flags so that no settings file on
/// the machine can change them, plus `extra`.
fn default_limits(extra: &[&str]) -> Vec<String> {
    let limits = Limits::default();
    let mut flags: Vec<String> = [
        (
            "--handshake-timeout",
            format!("{}ms", limits.handshake_timeout.as_millis()),
        ),
        ("--max-handshakes", limits.max_handshakes.to_string()),
        (
            "--max-handshakes-per-source",
            limits.max_handshakes_per_source.to_string(),
        ),
        ("--max-sessions", limits.max_sessions.to_string()),
        ("--max-detached", limits.max_detached.to_string()),
        (
            "--max-sessions-per-source",
            limits.max_sessions_per_source.to_string(),
        ),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

/// The real client for the relay at `relay`, asking for `target_port`,
/// with its own private directories under `dir`.
fn client(relay: SocketAddr, target_port: u16, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxy"));
    cmd.args(["--relay-port", &relay.port().to_string()])
        .args(["--relay-fingerprint", &test_key().1])
        .args(extra)
        .arg(relay.ip().to_string())
        .arg(target_port.to_string())
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env_remove("RESUMEPROXY_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A private directory for clients, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(dir.join("run"))?;
        std::fs::set_permissions(
            dir.join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into())
}

/// What one client of the burst did.
struct Outcome {
    index: usize,
    ok: bool,
    stderr: String,
    took: Duration,
}

/// Feeds `input` to a started client, closes its input, and collects its
/// output, stderr and exit; the client is killed after `timeout`.
fn finish(mut child: Child, input: Vec<u8>, timeout: Duration) -> Result<(Vec<u8>, String, bool)> {
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // Dropping stdin ends the session's upward stream.
    });
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let ok = status.is_some_and(|s| s.success());
    let err = if status.is_none() {
        format!("{err}(killed after {timeout:?})")
    } else {
        err
    };
    Ok((out, err, ok))
}

/// A gate the clients wait at: each is started as `sh` waiting to read
/// from the gate's pipe, and all of them go on (exec the client) when the
/// test closes its end, so the burst is as tight as the machine can exec.
struct Gate {
    read: std::os::fd::OwnedFd,
    write: Option<std::os::fd::OwnedFd>,
}

impl Gate {
    fn new() -> Result<Gate> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        ensure!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
            "pipe2: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: both were just opened and are owned by nobody else.
        let (read, write) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        Ok(Gate {
            read,
            write: Some(write),
        })
    }

    /// `command` behind the gate: its stdio is kept, and it runs once the
    /// gate opens.
    fn behind(&self, command: &Command) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let mut gated = Command::new("/bin/sh");
        gated
            .arg("-c")
            .arg("read _ <&3; exec 3<&-; exec \"$0\" \"$@\"")
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => gated.env(key, value),
                None => gated.env_remove(key),
            };
        }
        gated
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = self.read.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; it gives the child the gate's
        // read end as fd 3 (without close-on-exec).
        unsafe {
            gated.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        gated
    }

    /// Lets everything behind the gate run.
    fn open(&mut self) {
        self.write = None;
    }
}

/// Starts `n` clients behind a gate and opens it, each client sending its
/// own `bytes` through the relay to the echo target and reading them back;
/// returns each outcome.
fn burst(
    relay: SocketAddr,
    echo: u16,
    dir: &Path,
    extra: &[&str],
    n: usize,
    bytes: usize,
) -> Result<Vec<Outcome>> {
    let mut gate = Gate::new()?;
    let mut children = Vec::with_capacity(n);
    for index in 0..n {
        let child = gate
            .behind(&client(relay, echo, dir, extra))
            .spawn()
            .context("starting a client")?;
        children.push((index, child));
    }
    gate.open();
    let opened = Instant::now();
    let handles: Vec<_> = children
        .into_iter()
        .map(|(index, child)| {
            std::thread::spawn(move || -> Result<Outcome> {
                let input = random_bytes(bytes, index as u64 + 1);
                let (out, stderr, exited_ok) =
                    finish(child, input.clone(), Duration::from_secs(60))?;
                Ok(Outcome {
                    index,
                    ok: exited_ok && out == input,
                    stderr,
                    took: opened.elapsed(),
                })
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for handle in handles {
        outcomes.push(
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    Ok(outcomes)
}

/// Whether a client's stderr says only that its start was slow — no attempt
/// failed, nothing was refused: a hundred handshakes at once on a loaded
/// machine may take the client past the time it tells the user.
fn only_slow(stderr: &str) -> bool {
    stderr.lines().all(|l| {
        l.starts_with("resumeproxy: relay at ") && l.ends_with(" not answering yet, retrying…")
    })
}

fn check_burst(relay: &RelayProcess, outcomes: &[Outcome], what: &str) -> Result<()> {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok || !only_slow(&o.stderr))
        .map(|o| format!("#{} ({:?}): {}", o.index, o.took, o.stderr.trim()))
        .collect();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    let starts = relay.log_times("session started");
    let spread = match (starts.iter().min(), starts.iter().max()) {
        (Some(first), Some(last)) => last.duration_since(*first).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    eprintln!(
        "{what}: {} of {BURST} sessions whole; the relay started {} sessions within {spread:?}; \
         the slowest client was done {slowest:?} after the gate opened",
        BURST - failed.len(),
        starts.len()
    );
    ensure!(
        failed.is_empty(),
        "{what}: {} of {BURST} clients failed or spoke:\n{}",
        failed.len(),
        failed.join("\n")
    );
    relay.wait_for_count("session ended", BURST, EVENT_TIMEOUT)?;
    for never in ["connection dropped", "connection refused", "evicted"] {
        ensure!(
            relay.count(never) == 0,
            "{what}: the relay logged {never:?}:\n{}",
            relay.log()
        );
    }
    Ok(())
}

#[test]
fn a_burst_of_sessions_from_one_address_all_get_their_session() -> Result<()> {
    let _serial = one_at_a_time();
    let echo = echo_server()?;
    let dir = TempDir::new("burst")?;
    let flags = default_limits(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for transport in ["tcp", "quic"] {
        let relay = RelayProcess::start(echo, &flags)?;
        let outcomes = burst(
            relay.addr(),
            echo,
            &dir.0,
            &["--transport", transport],
            BURST,
            PER_SESSION,
        )?;
        check_burst(&relay, &outcomes, transport)?;
        ensure!(
            relay.count("session started") == BURST,
            "{transport}: {} sessions started",
            relay.count("session started")
        );
    }
    Ok(())
}

/// Opens `n` TCP connections to `relay` that never send a byte.
fn silent_connections(relay: SocketAddr, n: usize) -> Result<Vec<std::net::TcpStream>> {
    (0..n)
        .map(|_| {
            let stream = std::net::TcpStream::connect(relay)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })
        .collect()
}

/// One session through the real client: some bytes to the echo target and
/// back. Returns whether they came back, the client's stderr, and how long
/// it took.
fn one_session(
    relay: SocketAddr,
    echo: u16,
    dir: &Path,
    extra: &[&str],
) -> Result<(bool, String, Duration)> {
    let started = Instant::now();
    let child = client(relay, echo, dir, extra).spawn()?;
    let input = random_bytes(4096, 99);
    let (out, stderr, ok) = finish(child, input.clone(), Duration::from_secs(30))?;
    Ok((ok && out == input, stderr, started.elapsed()))
}

#[test]
fn silent_connections_holding_a_sources_places_do_not_lock_it_out() -> Result<()> {
    let _serial = one_at_a_time();
    let echo = echo_server()?;
    let dir = TempDir::new("silent")?;
    let limits = Limits::default();
    let per_source = limits.max_handshakes_per_source;
    let flags = default_limits(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // Every place of 127.0.0.1 held by connections that say nothing; the
    // next client from 127.0.0.1 waits for the first of them to have been
    // silent for a second, and takes its place.
    let relay = RelayProcess::start(echo, &flags)?;
    let silent = silent_connections(relay.addr(), per_source)?;
    let (ok, stderr, took) = one_session(relay.addr(), echo, &dir.0, &["--transport", "tcp"])?;
    eprintln!("places held: session whole {ok} after {took:?}; {stderr}");
    // (On a loaded machine the client may say once that it is still trying.)
    ensure!(
        ok && stderr.lines().all(|l| l.contains("not answering yet")),
        "the client from the held source: {stderr}"
    );
    ensure!(
        took < limits.handshake_timeout / 2,
        "the session waited {took:?} (the handshake timeout is {:?})",
        limits.handshake_timeout
    );
    relay.wait_for_log(
        "connection evicted: it sent nothing within 1.0s",
        EVENT_TIMEOUT,
    )?;
    let closed = silent.iter().filter(|s| closed_by_peer(s)).count();
    ensure!(closed >= 1, "no silent connection was evicted");
    ensure!(
        relay.count("connection turned away") == 0,
        "{}",
        relay.log()
    );
    drop(silent);

    // Places and line both full of them: the client is turned away (it
    // hears why and tries again) until the silent ones have had their
    // second, and then gets its session.
    let relay = RelayProcess::start(echo, &flags)?;
    let silent = silent_connections(relay.addr(), 2 * per_source)?;
    let (ok, stderr, took) = one_session(relay.addr(), echo, &dir.0, &["--transport", "tcp"])?;
    eprintln!("places and line held: session whole {ok} after {took:?}; {stderr}");
    ensure!(ok, "the client from the held source: {stderr}");
    ensure!(
        stderr.lines().all(|l| l.contains("not answering yet")),
        "{stderr}"
    );
    ensure!(
        took < limits.handshake_timeout / 2,
        "the session waited {took:?}"
    );
    relay.wait_for_log(
        &format!("{per_source} handshakes in progress from 127.0.0.1 and {per_source} more waiting (--max-handshakes-per-source)"),
        EVENT_TIMEOUT,
    )?;
    relay.wait_for_log("connection evicted", EVENT_TIMEOUT)?;
    drop(silent);
    Ok(())
}

/// A connection that sends the first byte of a TLS hello and then nothing:
/// not silent, so it keeps its place until the handshake timeout.
fn stalled_connection(relay: SocketAddr) -> Result<std::net::TcpStream> {
    let mut stream = std::net::TcpStream::connect(relay)?;
    stream.write_all(&[0x16])?;
    Ok(stream)
}

#[test]
fn a_client_turned_away_at_a_limit_hears_why() -> Result<()> {
    let _serial = one_at_a_time();
    let echo = echo_server()?;
    let dir = TempDir::new("turned")?;
    let relay = RelayProcess::start(echo, &["--max-handshakes-per-source", "1"])?;
    // One holds the source's place, one its place in line.
    let _held = stalled_connection(relay.addr())?;
    let _waiting = stalled_connection(relay.addr())?;
    let (ok, stderr, took) = one_session(
        relay.addr(),
        echo,
        &dir.0,
        &["--transport", "tcp", "--connect-timeout", "2s"],
    )?;
    eprintln!("turned away: after {took:?}: {stderr}");
    ensure!(!ok, "the session opened past the limit");
    let last = stderr.lines().last().unwrap_or_default();
    ensure!(
        last == format!(
            "resumeproxy: cannot reach relay at {}: the relay turned the connection away: \
             it is at its limit of connections being set up, its log says which",
            relay.addr()
        ),
        "{stderr}"
    );
    ensure!(!stderr.contains("is resumeproxyd running"), "{stderr}");
    relay.wait_for_log(
        "1 handshakes in progress from 127.0.0.1 and 1 more waiting (--max-handshakes-per-source)",
        EVENT_TIMEOUT,
    )?;
    Ok(())
}

/// `VmRSS`, `RssShmem` and `VmHWM` of process `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} for {pid}"))
    };
    Ok((field("VmRSS:")?, field("RssShmem:")?, field("VmHWM:")?))
}

/// After a peak of busy sessions, the relay gives back what it took: the
/// replay rings' shared memory when they drain, the heap when the sessions
/// end.
#[test]
fn after_a_peak_the_relay_gives_its_memory_back() -> Result<()> {
    const SESSIONS: usize = 50;
    const EACH: usize = 8 << 20;
    let _serial = one_at_a_time();
    let echo = echo_server()?;
    let dir = TempDir::new("peak")?;
    let relay = RelayProcess::start(echo, &[])?;
    let worker = relay
        .worker_pid()
        .context("no worker started line in the relay's log")?;
    std::thread::sleep(Duration::from_millis(300));
    let (idle, _, _) = memory_kib(worker)?;
    let outcomes = burst(
        relay.addr(),
        echo,
        &dir.0,
        // Debug builds of fifty busy clients and the relay on two cores:
        // the last handshakes wait for CPU.
        &["--transport", "tcp", "--connect-timeout", "60s"],
        SESSIONS,
        EACH,
    )?;
    ensure!(
        outcomes.iter().all(|o| o.ok),
        "sessions failed: {:?}",
        outcomes
            .iter()
            .filter(|o| !o.ok)
            .map(|o| &o.stderr)
            .collect::<Vec<_>>()
    );
    relay.wait_for_count("session ended", SESSIONS, EVENT_TIMEOUT)?;
    let (_, _, peak) = memory_kib(worker)?;
    // Given back a second after the sessions ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (after, shared) = loop {
        let (rss, shared, _) = memory_kib(worker)?;
        if (rss <= idle + 8 * 1024 && shared == 0) || Instant::now() >= deadline {
            break (rss, shared);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "relay worker RSS: idle {idle} KiB, peak {peak} KiB, after the peak {after} KiB \
         (of it shared {shared} KiB)"
    );
    ensure!(
        peak > idle + 8 * 1024,
        "no peak to speak of ({idle} → {peak} KiB)"
    );
    ensure!(shared == 0, "the replay rings keep {shared} KiB");
    ensure!(
        after <= idle + 8 * 1024,
        "the relay kept {after} KiB after the peak ({idle} KiB before it, {peak} KiB at it)"
    );
    Ok(())
}
