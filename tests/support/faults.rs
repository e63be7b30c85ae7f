//! The fault suite's common parts: one lab with sshd and the relay in the
//! server namespace, the commands that reach sshd through the relay (or
//! straight, for the plain-ssh baseline), a driver that injects faults while
//! a workload's data flows and measures how soon it flows again, and TCP
//! streams checked by sha256 through forwarded ports.

#![allow(dead_code)]

use super::data::{hash_while_reading, random_bytes, sha256_bytes};
use super::netns::{Fault, NetLab};
use super::process::wait_progress;
use super::relay::{proxy_command, RelayProcess, CLIENT_FLAGS};
use super::sshd::{SshdOptions, TestSshd};
use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A silent partition well past `--dead-after`.
pub const PARTITION: Fault = Fault::Partition(Duration::from_millis(2500));
/// A moment of TCP resets.
pub const RESET_STORM: Fault = Fault::ResetBurst(Duration::from_secs(1));
/// The three faults every workload meets, in turn.
pub const EVERY_FAULT: [Fault; 3] = [Fault::AddressChange, RESET_STORM, PARTITION];
/// Bound on each wait for the next slice of a workload to arrive.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the wait for the relay to log a resume after a fault ended.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(20);
/// "Data flowing again within a few seconds after the network is back."
pub const FLOWING_AGAIN: Duration = Duration::from_secs(8);
/// What counts as flowing again: this many more bytes at the far end.
const FLOW_DELTA: u64 = 64 << 10;
/// Bound on a whole workload.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Serializes the heavy tests of one test binary: the machine has 2 cores,
/// and two bulk transfers at once would starve each other (and the timing
/// checks). Light tests do not take it and run beside.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    resumeproxy::locks::lock(&LOCK)
}

/// A lab with sshd (on the namespace's loopback and on the veth, for plain
/// ssh) and the relay in the server namespace.
pub struct Bench {
    // Dropped in this order: relay, sshd, then the lab.
    pub relay: RelayProcess,
    pub sshd: TestSshd,
    pub lab: NetLab,
    /// The client's `ProxyCommand`.
    pub proxy: String,
}

impl Bench {
    /// Sets it up with the veth limited to `rate` (none if empty), or says
    /// why this machine cannot and returns `None`.
    pub fn start(rate: &str, relay_flags: &[&str]) -> Result<Option<Bench>> {
        Self::start_with(rate, relay_flags, CLIENT_FLAGS)
    }

    /// Like [`start`](Self::start), with these client flags.
    pub fn start_with(rate: &str, relay_flags: &[&str], client: &str) -> Result<Option<Bench>> {
        let program = Path::new(env!("CARGO_BIN_EXE_resumeproxyd"));
        Self::start_program(program, rate, relay_flags, client)
    }

    /// Like [`start_with`](Self::start_with), the relay run from the binary
    /// at `program` (a copy that an upgrade test replaces).
    pub fn start_program(
        program: &Path,
        rate: &str,
        relay_flags: &[&str],
        client: &str,
    ) -> Result<Option<Bench>> {
        let Some(lab) = NetLab::create()? else {
            return Ok(None);
        };
        if !rate.is_empty() {
            lab.rate_limit(rate)?;
        }
        let sshd = TestSshd::start_with(&SshdOptions {
            netns: Some(lab.server_ns().to_owned()),
            extra_listen: vec![lab.server_addr()],
        })?;
        let relay = RelayProcess::start_program_in_netns(
            program,
            lab.server_ns(),
            &format!("{}:0", lab.server_addr()),
            sshd.port(),
            relay_flags,
        )?;
        let proxy = proxy_command(relay.addr(), sshd.port(), client);
        Ok(Some(Bench {
            relay,
            sshd,
            lab,
            proxy,
        }))
    }

    /// `program` (ssh, scp, sftp) with the harness's options and
    /// `ProxyCommand` (or none, `direct`, for the plain-ssh baseline), and
    /// the client's private directories; run in the client namespace.
    pub fn client(&self, program: &str, direct: bool) -> Command {
        let mut command = Command::new(program);
        if !direct {
            command
                .arg("-o")
                .arg(format!("ProxyCommand={}", self.proxy));
        }
        command.args(if program == "ssh" {
            self.sshd.ssh_opts()
        } else {
            self.sshd.scp_opts()
        });
        self.sshd.private_env(&mut command);
        command
    }

    /// The host name to give ssh: anything through the relay (which
    /// connects only to its target), the server's veth address without.
    pub fn host(&self, direct: bool) -> String {
        if direct {
            self.lab.server_addr().to_string()
        } else {
            "127.0.0.1".into()
        }
    }

    /// `ssh [proxy] HOST remote` in the client namespace.
    pub fn ssh(&self, direct: bool, extra: &[&str], remote: &str) -> Command {
        let mut command = self.client("ssh", direct);
        command.args(extra).arg(self.host(direct)).arg(remote);
        self.lab.in_client(&command)
    }

    /// Runs `command` in the client namespace (environment kept).
    pub fn in_client(&self, command: &Command) -> Command {
        self.lab.in_client(command)
    }
}

/// What one injected fault did.
#[derive(Debug)]
pub struct Injected {
    pub fault: Fault,
    /// Bytes at the far end when it began.
    pub at: u64,
    pub detail: String,
    /// From the network being back until the relay logged the resume.
    pub resumed: Duration,
    /// From the network being back until data arrived again.
    pub flowing: Duration,
}

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {} MiB ({}): resumed {:.2?} and flowing {:.2?} after the network was back",
            self.fault.name(),
            self.at >> 20,
            self.detail,
            self.resumed,
            self.flowing
        )
    }
}

/// Injects `faults` in turn into a workload whose far end has received
/// `progress()` bytes of `total`: each after a further `step` arrived, and
/// only while at least half a step would be left after it. After each it
/// waits for the relay's resume (from the client's current address) and for
/// data to arrive again, within [`FLOWING_AGAIN`]. `running` tells whether
/// the workload still runs (an early end is a failure).
pub fn inject_while_flowing(
    bench: &Bench,
    progress: &dyn Fn() -> Result<u64>,
    running: &mut dyn FnMut() -> Result<bool>,
    faults: &[Fault],
    step: u64,
    total: u64,
) -> Result<Vec<Injected>> {
    let mut outcomes = Vec::new();
    let mut arrived = 0;
    for &fault in faults {
        if arrived + step + step / 2 > total {
            break;
        }
        arrived = wait_progress(progress, running, arrived + step, PROGRESS_TIMEOUT)
            .with_context(|| format!("before the {}", fault.name()))?;
        let resumes = bench.relay.count("session resumed");
        let detail = bench.lab.apply(fault)?;
        let back = Instant::now();
        let at_lift = progress()?;
        let line = bench
            .relay
            .wait_for_count("session resumed", resumes + 1, RESUME_TIMEOUT)
            .with_context(|| {
                format!(
                    "{} ({detail}): the relay never logged a resume",
                    fault.name()
                )
            })?;
        let resumed = back.elapsed();
        let client = format!("client={}:", bench.lab.client_addr());
        ensure!(
            line.contains(&client),
            "{}: the relay resumed from elsewhere than {client}: {line}",
            fault.name()
        );
        wait_progress(progress, running, at_lift + FLOW_DELTA, FLOWING_AGAIN).with_context(
            || {
                format!(
                    "{} ({detail}): data did not flow again in time",
                    fault.name()
                )
            },
        )?;
        outcomes.push(Injected {
            fault,
            at: arrived,
            detail,
            resumed,
            flowing: back.elapsed(),
        });
    }
    Ok(outcomes)
}

/// Bytes in all files under `path` (hidden ones too: rsync's temporary
/// files), 0 if it does not exist.
pub fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Waits for a bounded time until a TCP connection to `addr` from the
/// namespace `ns` succeeds (a forward's listener is up); returns it.
pub fn connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = NetLab::in_netns(ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(Into::into)
        });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("connecting to {addr} in {ns} for {timeout:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A port on 127.0.0.1 of `ns` free just now.
pub fn free_port_in(ns: &str) -> Result<u16> {
    NetLab::in_netns(ns, || {
        Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port())
    })
}

/// An echo server on 127.0.0.1 of `ns` (every connection gets back what it
/// sends, and end of stream after the sender's); returns its port.
pub fn echo_server(ns: &str) -> Result<u16> {
    let listener = NetLab::in_netns(ns, || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Into::into)
    })?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let Ok(mut reader) = conn.try_clone() else {
                    return;
                };
                let _ = std::io::copy(&mut reader, &mut conn);
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(port)
}

/// Opens a SOCKS5 CONNECT to 127.0.0.1:`port` (as seen by the SOCKS
/// server) over `stream`, as a SOCKS client would.
pub fn socks5_connect(stream: &mut TcpStream, port: u16) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(&[5, 1, 0])?;
    let mut choice = [0; 2];
    stream.read_exact(&mut choice)?;
    ensure!(choice == [5, 0], "SOCKS5 method answer {choice:?}");
    let [hi, lo] = port.to_be_bytes();
    stream.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, hi, lo])?;
    let mut reply = [0; 10];
    stream.read_exact(&mut reply)?;
    ensure!(reply[..2] == [5, 0], "SOCKS5 CONNECT answer {reply:?}");
    Ok(())
}

/// A long-lived stream through an echo server: `len` pseudo-random bytes
/// written, the same read back, each side checked by sha256.
pub struct EchoStream {
    received: Arc<AtomicU64>,
    writer: JoinHandle<Result<String>>,
    reader: JoinHandle<Result<(u64, String)>>,
    len: u64,
}

impl EchoStream {
    /// Starts writing and reading on `stream`. No read or write may block
    /// longer than `stall` (a bound, so a lost stream fails the test).
    pub fn start(stream: TcpStream, len: usize, seed: u64, stall: Duration) -> Result<EchoStream> {
        stream.set_read_timeout(Some(stall))?;
        stream.set_write_timeout(Some(stall))?;
        let mut out = stream.try_clone()?;
        let input = stream;
        let writer = std::thread::spawn(move || -> Result<String> {
            let data = random_bytes(len, seed);
            for chunk in data.chunks(64 << 10) {
                out.write_all(chunk).context("writing the stream")?;
            }
            out.shutdown(Shutdown::Write)?;
            Ok(sha256_bytes(&data))
        });
        let (received, reader) = hash_while_reading(input, "the echo");
        Ok(EchoStream {
            received,
            writer,
            reader,
            len: len as u64,
        })
    }

    /// Bytes echoed back so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Whether the stream is still going.
    pub fn running(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Waits (at most `timeout`) for the end; checks every byte came back
    /// once, in order.
    pub fn finish(self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !(self.reader.is_finished() && self.writer.is_finished()) {
            ensure!(
                Instant::now() < deadline,
                "the stream did not end within {timeout:?} ({} of {} bytes back)",
                self.received(),
                self.len
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let sent = self
            .writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        let (got, received) = self
            .reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(got == self.len, "{got} bytes came back of {}", self.len);
        ensure!(
            received == sent,
            "sha256 of the echo differs from what was sent"
        );
        Ok(())
    }
}

/// How a download fared through a fault.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// It went on: data flowed again this long after the network was back,
    /// and it finished with exit 0 and sha256 equal.
    Survived { flowing: Duration },
    /// It exited with this status, this long after the network was back,
    /// with this last line on stderr.
    Died {
        status: String,
        after: Duration,
        line: String,
    },
    /// Nothing more arrived within this long after the network was back;
    /// `note` says what sshd logged meanwhile, if it ended the connection.
    Stalled { for_: Duration, note: String },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Survived { flowing } => {
                write!(f, "survived: flowing {flowing:.1?} after the network was back; sha256 equal, exit 0")
            }
            Verdict::Died {
                status,
                after,
                line,
            } => write!(
                f,
                "died: {status}, by {after:.1?} after the network was back: {line}"
            ),
            Verdict::Stalled { for_, note } => {
                write!(
                    f,
                    "stalled: nothing arrived for {for_:.1?} after the network was back (killed){note}"
                )
            }
        }
    }
}

impl Verdict {
    pub fn survived(&self) -> bool {
        matches!(self, Verdict::Survived { .. })
    }
}

/// One download of the same file by ssh through resumeproxy and by plain
/// ssh straight to sshd, side by side over the same veth, through the same
/// fault: `fault` runs (and returns) once both have received `start` bytes.
/// Plain ssh counts as stalled when nothing arrives for `stall_bound` after
/// the network is back. Returns (through resumeproxy, plain ssh).
pub fn side_by_side(
    bench: &Bench,
    size: u64,
    start: u64,
    stall_bound: Duration,
    fault: &dyn Fn() -> Result<String>,
) -> Result<(Verdict, Verdict, String)> {
    use super::data::{sha256_file, write_random_file};
    use super::process::Watched;
    use std::fs::File;
    use std::process::Stdio;

    let src = bench.sshd.dir().join("side-by-side.src");
    write_random_file(&src, size, 77)?;
    let want = sha256_file(&src)?;
    let remote = format!("cat {}", src.display());
    let mut runs = Vec::new();
    for direct in [false, true] {
        let dst = bench
            .sshd
            .dir()
            .join(if direct { "plain.dst" } else { "proxied.dst" });
        let ssh = Watched::spawn(
            bench.ssh(direct, &[], &remote),
            Stdio::null(),
            Stdio::from(File::create(&dst)?),
        )?;
        runs.push((ssh, dst));
    }
    for (ssh, dst) in &mut runs {
        ssh.wait_for_bytes(dst, start, PROGRESS_TIMEOUT)?;
    }
    let resets_before = bench.sshd.log().matches("Connection reset by").count();
    let detail = fault()?;
    let back = Instant::now();
    let len = |dst: &Path| std::fs::metadata(dst).map_or(0, |m| m.len());
    let at_lift: Vec<u64> = runs.iter().map(|(_, dst)| len(dst)).collect();
    // First, for both at once: flowing again (Ok), exited or stalled (a verdict)?
    let mut early: Vec<Option<Result<Duration, Verdict>>> = vec![None, None];
    while early.iter().any(Option::is_none) {
        for (i, (ssh, dst)) in runs.iter_mut().enumerate() {
            if early[i].is_some() {
                continue;
            }
            let bound = if i == 1 { stall_bound } else { FLOWING_AGAIN };
            if let Some(status) = ssh.child.try_wait()? {
                early[i] = Some(if status.success() && len(dst) == size {
                    Ok(back.elapsed())
                } else {
                    Err(Verdict::Died {
                        status: status.to_string(),
                        after: back.elapsed(),
                        line: ssh.stderr.text().lines().last().unwrap_or("").to_owned(),
                    })
                });
            } else if len(dst) >= (at_lift[i] + FLOW_DELTA).min(size) {
                early[i] = Some(Ok(back.elapsed()));
            } else if back.elapsed() >= bound {
                let reset = "Connection reset by";
                let note = if bench.sshd.log().matches(reset).count() > resets_before {
                    format!("; sshd's side was reset (sshd: \"{reset} …\")")
                } else {
                    String::new()
                };
                early[i] = Some(Err(Verdict::Stalled { for_: bound, note }));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Then the ends of those that went on.
    let mut verdicts = Vec::new();
    for (i, ((ssh, dst), early)) in runs.iter_mut().zip(early).enumerate() {
        let verdict = match early.expect("decided") {
            Err(verdict) => verdict,
            Ok(flowing) => {
                let status = ssh.wait(RUN_TIMEOUT)?;
                if status.success() && sha256_file(dst)? == want {
                    Verdict::Survived { flowing }
                } else {
                    Verdict::Died {
                        status: format!("{status}, {} of {size} bytes", len(dst)),
                        after: back.elapsed(),
                        line: ssh.stderr.text().lines().last().unwrap_or("").to_owned(),
                    }
                }
            }
        };
        if i == 0 && !verdict.survived() {
            bail!(
                "through resumeproxy, {detail}: {verdict}; stderr:\n{}",
                ssh.stderr.text()
            );
        }
        verdicts.push(verdict);
    }
    let plain = verdicts.pop().expect("two");
    let proxied = verdicts.pop().expect("two");
    Ok((proxied, plain, detail))
}
