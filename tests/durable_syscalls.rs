//! Every system call the durable relay makes is one its unit allows.
//!
//! systemd cannot run units on the machines these tests run on, so the
//! unit's sandbox is checked against what the worker does instead: the
//! worker runs the way systemd runs it (the test plays systemd, see
//! `support::systemd`) under `strace -f`, through the durable path — a
//! start that binds and hands its listeners to the store, a session over
//! TCP (a download) and one over QUIC (an echo) started and kept, the
//! worker killed with SIGKILL mid-transfer, a new worker that takes
//! everything back from `$LISTEN_FDS` and carries both sessions on, the
//! sessions' ends (`FDSTOREREMOVE=1`), a reload (SIGHUP, `ExecReload=`)
//! and a stop (the unit's `KillSignal=`); and `resumeproxyd check-config
//! --quiet` (`ExecReload=`). Then:
//!
//! * every call traced is allowed by the unit's `SystemCallFilter=` lines,
//!   read from `systemd/resumeproxyd.service` and expanded with
//!   `systemd-analyze syscall-filter` (an allow-list starts with
//!   `@default`; a `~` line takes out of it, in order);
//! * every socket family used is in `RestrictAddressFamilies=`;
//! * nothing maps memory writable and executable at once, nor makes it
//!   executable later (`MemoryDenyWriteExecute=yes`), makes a namespace
//!   (`RestrictNamespaces=yes`), opens another process's `/proc` entries
//!   (`ProcSubset=pid`) or opens a file for writing anywhere but in its
//!   state directory (`ProtectSystem=strict`, `StateDirectory=`: the first
//!   worker makes the relay's key there, as on a first start).
//!
//! Skipped, with the reason printed, without `strace` or `systemd-analyze`,
//! or where `ptrace` is not allowed.

mod support;

use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::durable::{MemDir, RESUMED};
use support::process::{output_within, Watched};
use support::relay::{proxy_command, RelayProcess, CLIENT_FLAGS};
use support::sshd::TestSshd;
use support::systemd::FakeSystemd;
use support::unit::{
    unit_families, unit_file, unit_signal, unit_store_max, ListSetting, SyscallSets,
};

/// Bytes of the download (traced, each call slowed down).
const SIZE: u64 = 32 << 20;
/// Bound on the download.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on what follows an event at once (a traced worker is slow).
const PROMPTLY: Duration = Duration::from_secs(30);

/// `name` on `$PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why the test cannot run here, if it cannot.
fn missing(strace: Option<&Path>, analyze: Option<&Path>) -> Option<String> {
    let Some(strace) = strace else {
        return Some("no strace on $PATH".into());
    };
    if analyze.is_none() {
        return Some("no systemd-analyze on $PATH".into());
    }
    let probe = Command::new(strace)
        .args(["-D", "-f", "-qq", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "strace cannot trace here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("strace does not run: {e}")),
    }
}

/// The `strace` in front of one worker: its calls (and its threads'),
/// written to `out`. `-D` keeps the worker the direct child, with the pid
/// systemd gave it (`$LISTEN_PID`), and strace a detached grandchild.
fn strace_wrapper<'a>(strace: &'a Path, out: &'a Path) -> Vec<&'a OsStr> {
    let mut words: Vec<&OsStr> = vec![strace.as_os_str()];
    words.extend(["-D", "-f", "-qq", "-o"].map(OsStr::new));
    words.push(out.as_os_str());
    words.push(OsStr::new("--"));
    words
}

/// The tracer of process `pid` (from `/proc/PID/status`).
fn tracer_of(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .context("no TracerPid")?
        .trim()
        .parse()?;
    ensure!(tracer != 0, "process {pid} is not traced");
    Ok(tracer)
}

/// Waits until process `pid` has exited (gone, or a zombie nobody reaped):
/// strace has written all it will.
fn wait_gone(pid: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if stat.is_empty() || state.starts_with('Z') || state.starts_with('X') {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "strace ({pid}) did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one trace shows.
#[derive(Default)]
struct Trace {
    /// Every system call's name.
    calls: BTreeSet<String>,
    /// Every socket family (`socket(2)`, `socketpair(2)`).
    families: BTreeSet<String>,
    /// Calls another setting of the unit refuses: the setting, the call.
    refused: Vec<(&'static str, String)>,
}

impl Trace {
    /// Reads an `strace -f` output file; `writable` is the one directory
    /// the unit lets the relay write in (`StateDirectory=`).
    fn read(path: &Path, writable: &Path, into: &mut Trace) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(!text.is_empty(), "{} is empty", path.display());
        for line in text.lines() {
            // `PID call(args…) = result`, `PID <... call resumed>…`,
            // `PID --- SIGNAL … ---`, `PID +++ … +++`.
            let rest = line
                .split_once(' ')
                .map_or(line, |(pid, rest)| {
                    if pid.bytes().all(|b| b.is_ascii_digit()) {
                        rest
                    } else {
                        line
                    }
                })
                .trim_start();
            if rest.starts_with("<...") || rest.starts_with("---") || rest.starts_with("+++") {
                continue;
            }
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                continue;
            }
            into.calls.insert(name.to_owned());
            if name == "socket" || name == "socketpair" {
                let family = args.split([',', ')']).next().unwrap_or("").trim();
                into.families.insert(family.to_owned());
            }
            if let Some(setting) = refused_by(name, args, writable) {
                into.refused.push((setting, rest.to_owned()));
            }
        }
        Ok(())
    }
}

/// The unit's setting (other than the two lists) that refuses the call
/// `name(args…`, if one does; `writable` is the one directory the relay
/// may write in.
fn refused_by(name: &str, args: &str, writable: &Path) -> Option<&'static str> {
    let arg = |n: usize| args.split(", ").nth(n).unwrap_or("");
    match name {
        // Memory writable and executable at once, or made executable later.
        "mmap" | "mmap2" if arg(2).contains("PROT_WRITE") && arg(2).contains("PROT_EXEC") => {
            Some("MemoryDenyWriteExecute=yes")
        }
        "mprotect" | "pkey_mprotect" if arg(2).contains("PROT_EXEC") => {
            Some("MemoryDenyWriteExecute=yes")
        }
        "clone" | "clone3" | "unshare" | "setns" if args.contains("CLONE_NEW") => {
            Some("RestrictNamespaces=yes")
        }
        "open" | "openat" | "openat2" => {
            let path = args.split('"').nth(1).unwrap_or("");
            let proc_ok = match path.strip_prefix("/proc/") {
                None => true,
                Some(rest) => {
                    let first = rest.split('/').next().unwrap_or("");
                    first == "self"
                        || first == "thread-self"
                        || (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()))
                }
            };
            let writes = ["O_WRONLY", "O_RDWR", "O_CREAT"]
                .iter()
                .any(|flag| args.contains(flag));
            if !proc_ok {
                Some("ProcSubset=pid")
            } else if writes && !Path::new(path).starts_with(writable) {
                Some("ProtectSystem=strict")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// An ssh session running `cat` over QUIC, its output lines in a channel.
struct Echo {
    /// ssh, its stderr collected.
    ssh: Watched,
    /// What `cat` reads.
    stdin: std::process::ChildStdin,
    /// What `cat` wrote, line by line.
    lines: mpsc::Receiver<String>,
}

impl Echo {
    /// Starts ssh through `proxy` (a QUIC client) running `cat`.
    fn start(sshd: &TestSshd, proxy: &str) -> Result<Echo> {
        let mut ssh = Watched::spawn(
            sshd.ssh_command(Some(proxy), "cat"),
            Stdio::piped(),
            Stdio::piped(),
        )?;
        let stdin = ssh.child.stdin.take().context("stdin")?;
        let stdout = ssh.child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Echo { ssh, stdin, lines })
    }

    /// Sends `line` and waits for it to come back.
    fn echo(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        let back = self
            .lines
            .recv_timeout(PROMPTLY)
            .with_context(|| format!("no echo of {line:?}:\n{}", self.ssh.stderr.text()))?;
        ensure!(back == line, "sent {line:?}, got {back:?}");
        Ok(())
    }
}

/// The durable path, traced, against the unit's sandbox (see the module's
/// doc).
#[test]
fn the_durable_path_makes_only_calls_the_unit_allows() -> Result<()> {
    let strace = on_path("strace");
    let analyze = on_path("systemd-analyze");
    if let Some(why) = missing(strace.as_deref(), analyze.as_deref()) {
        support::lab::cannot_run(&why);
        return Ok(());
    }
    let (strace, analyze) = (strace.unwrap_or_default(), analyze.unwrap_or_default());
    let unit = unit_file()?;
    let mut sets = SyscallSets::new(&analyze);
    let filter = sets.unit_filter(&unit)?;
    let families = unit_families(&unit)?;

    let traces = MemDir::new("strace")?;
    let systemd = FakeSystemd::start(unit_store_max()?)?;
    let sshd = TestSshd::start()?;
    // A new key, made by the first worker as on a first start under
    // systemd (in StateDirectory=).
    let state_dir = traces.path().join("state");
    let key = state_dir.join("relay.key");
    let key_text = key.to_string_lossy().into_owned();
    let key_flags = ["--key-file", key_text.as_str()];
    // ExecReload= runs the check under the same filter (here before any
    // key).
    let check_trace = traces.path().join("check-config");
    let (status, stderr, _) = output_within(
        Command::new(&strace)
            .args(["-f", "-qq", "-o"])
            .arg(&check_trace)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_resumeproxyd"))
            .args(["check-config", "--quiet"])
            .args(key_flags)
            .arg("--target")
            .arg(format!("127.0.0.1:{}", sshd.port())),
        PROMPTLY,
    )?;
    ensure!(status.success(), "check-config: {status}: {stderr}");
    let first_trace = traces.path().join("first");
    let (first, _) = systemd.start_relay(
        &strace_wrapper(&strace, &first_trace),
        "127.0.0.1:0",
        sshd.port(),
        &key_flags,
    )?;
    let first_tracer = tracer_of(first.pid())?;
    let listen = first.addr().to_string();
    ensure!(
        first.log().contains("created a new key"),
        "the first worker did not make the key:\n{}",
        first.log()
    );
    let (status, stderr, fingerprint) = output_within(
        Command::new(env!("CARGO_BIN_EXE_resumeproxyd"))
            .arg("fingerprint")
            .args(key_flags),
        PROMPTLY,
    )?;
    ensure!(status.success(), "fingerprint: {status}: {stderr}");
    let client_flags = format!("--relay-fingerprint {} {CLIENT_FLAGS}", fingerprint.trim());

    let down_src = sshd.dir().join("down.src");
    let down_dst = sshd.dir().join("down.dst");
    write_random_file(&down_src, SIZE, 21)?;
    let tcp = proxy_command(first.addr(), sshd.port(), &client_flags);
    // `cat FILE -`: the session goes on (with ssh's stdin) until the test
    // ends it, so it is alive at the kill however fast the file went.
    let mut down = Watched::spawn(
        sshd.ssh_command(Some(&tcp), &format!("cat {} -", down_src.display())),
        Stdio::piped(),
        Stdio::from(File::create(&down_dst)?),
    )?;
    let down_stdin = down.child.stdin.take().context("stdin")?;
    let quic = proxy_command(
        first.addr(),
        sshd.port(),
        &format!("--transport quic {client_flags}"),
    );
    let mut echo = Echo::start(&sshd, &quic)?;
    echo.echo("before the kill")?;
    down.wait_for_bytes(&down_dst, SIZE / 4, RUN_TIMEOUT)?;

    let mut workers: Vec<RelayProcess> = vec![first];
    workers[0].kill();
    systemd.exited();
    wait_gone(first_tracer, PROMPTLY)?;
    let second_trace = traces.path().join("second");
    let (second, names) = systemd.start_relay(
        &strace_wrapper(&strace, &second_trace),
        &listen,
        sshd.port(),
        &key_flags,
    )?;
    let second_tracer = tracer_of(second.pid())?;
    ensure!(
        names.iter().filter(|n| n.starts_with("session-")).count() == 4,
        "the new worker got {names:?}"
    );
    second
        .wait_for_log("restored 2 of 2 sessions", PROMPTLY)
        .context("the restore")?;
    second.wait_for_count(RESUMED, 2, PROMPTLY)?;
    workers.push(second);
    echo.echo("after the kill")?;
    drop(echo.stdin);
    let (status, stderr) = echo.ssh.finish(PROMPTLY, PROMPTLY)?;
    ensure!(
        status.success(),
        "the QUIC session: ssh {status}:\n{stderr}"
    );
    drop(down_stdin);
    let (status, stderr) = down.finish(RUN_TIMEOUT, PROMPTLY)?;
    ensure!(status.success(), "the download: ssh {status}:\n{stderr}");
    ensure!(
        sha256_file(&down_src)? == sha256_file(&down_dst)?,
        "download sha256"
    );
    systemd.wait_for("the ended sessions removed", PROMPTLY, |s| {
        !s.names().iter().any(|n| n.starts_with("session-"))
    })?;
    // ExecReload=: SIGHUP.
    workers[1].signal(libc::SIGHUP)?;
    workers[1].wait_for_log("configuration reloaded", PROMPTLY)?;
    // systemctl stop.
    ensure!(
        workers[1].stop_with(unit_signal("KillSignal")?, PROMPTLY)?,
        "the worker failed on its KillSignal="
    );
    systemd.exited();
    wait_gone(second_tracer, PROMPTLY)?;
    let violations = systemd.state().violations.clone();
    ensure!(
        violations.is_empty(),
        "systemd would object: {violations:?}"
    );

    let mut trace = Trace::default();
    for path in [&check_trace, &first_trace, &second_trace] {
        Trace::read(path, &state_dir, &mut trace)?;
    }
    let denied: Vec<&String> = trace.calls.iter().filter(|c| !filter.allows(c)).collect();
    let foreign: Vec<&String> = trace
        .families
        .iter()
        .filter(|f| !families.allows(f))
        .collect();
    println!(
        "{} system calls used: {}",
        trace.calls.len(),
        trace.calls.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    let version = Command::new(&analyze).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    println!(
        "socket families used: {}; SystemCallFilter= allows {} calls (sets of {})",
        trace.families.iter().cloned().collect::<Vec<_>>().join(" "),
        filter.names.len(),
        version.lines().next().unwrap_or("systemd-analyze")
    );
    ensure!(
        denied.is_empty(),
        "calls the unit's SystemCallFilter= denies: {denied:?}"
    );
    ensure!(
        foreign.is_empty(),
        "socket families RestrictAddressFamilies= denies: {foreign:?}"
    );
    ensure!(
        trace.refused.is_empty(),
        "the unit's sandbox refuses: {:?}",
        trace.refused
    );
    Ok(())
}

/// The unit's list settings merge as systemd's `load-fragment.c` merges
/// them (the check above is only as good as this).
#[test]
fn list_settings_merge_as_systemd_merges_them() -> Result<()> {
    let expand = |word: &str| -> Result<BTreeSet<String>> {
        Ok(match word {
            "@set" => ["a", "b", "c"].map(String::from).into(),
            other => BTreeSet::from([other.to_owned()]),
        })
    };
    let merge = |lines: &[&str]| -> Result<ListSetting> {
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        ListSetting::merge(&lines, expand, BTreeSet::from(["seed".to_owned()]))?
            .context("no setting")
    };
    // An allow-list (with its seed); a `~` line takes out, `name:errno`
    // names the call.
    let allow = merge(&["@set", "~b", "~c:EPERM"])?;
    ensure!(allow.allow && allow.allows("a") && allow.allows("seed"));
    ensure!(!allow.allows("b") && !allow.allows("c") && !allow.allows("z"));
    // A deny-list; a plain line takes out of it.
    let deny = merge(&["~@set", "b"])?;
    ensure!(!deny.allow && !deny.allows("a") && deny.allows("b") && deny.allows("z"));
    // An empty value starts again.
    let again = merge(&["~a", "", "b"])?;
    ensure!(again.allow && again.allows("b") && !again.allows("a"));
    Ok(())
}
