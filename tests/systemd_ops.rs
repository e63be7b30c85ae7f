//! Operating the relay under systemd, with the test playing systemd (see
//! `support::systemd`) and following the shipped unit
//! (`systemd/resumeproxyd.service`):
//!
//! * `systemctl stop` (the unit's `KillSignal=`, a stop systemd will not
//!   follow with a start) ends every session at once, in words: the
//!   client's ssh exits 255 saying the relay is shutting down, within
//!   [`STOP_WITHIN`], the sessions leave the store, and the status line
//!   systemd shows says the relay stopped (not its last counts).
//! * A broken config file: a reload (the unit's `ExecReload=` lines, run
//!   as systemd runs them) fails, naming the key and its line, and changes
//!   nothing; a worker that crashes then is started again by "systemd" and
//!   runs with the file's last good version, kept in the store, saying
//!   loudly that the file is broken (its log and its status line); its
//!   session resumes and carries data. Once the file is mended, a reload
//!   applies it and keeps it instead. A first start with a broken file
//!   fails with exit 78 (`RestartPreventExitStatus=`), naming the mistake.
//! * Journal hygiene: the status line is told when it changes, never the
//!   same twice in a row; a relay whose stderr is the stream
//!   `$JOURNAL_STREAM` names (journald stamps each line) writes no
//!   timestamps of its own, and one whose stderr is anything else does.

mod support;

use anyhow::{ensure, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::process::Watched;
use support::relay::{proxy_command, RelayProcess};
use support::sshd::TestSshd;
use support::systemd::{FakeSystemd, State};
use support::unit::{unit_exec_reload, unit_signal, unit_store_max};

/// A stop ends the client within this long of the signal (it is told at
/// once; the bound leaves room for a loaded machine).
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// Bound on a message or a log line that follows an event at once.
const PROMPTLY: Duration = Duration::from_secs(10);
/// The client's flags: a long dead-peer interval, so that only the
/// relay's own words (or a kill) end a link.
const CLIENT: &str = "--dead-after 10s";

/// The names of the sessions the store keeps.
fn kept_sessions(state: &State) -> Vec<String> {
    let mut names: Vec<String> = state
        .names()
        .into_iter()
        .filter(|n| n.starts_with("session-"))
        .collect();
    names.dedup();
    names
}

/// The last `STATUS=` systemd was told.
fn last_status(state: &State) -> Option<String> {
    state
        .messages
        .iter()
        .rev()
        .find_map(|m| m.field("STATUS").map(str::to_owned))
}

#[test]
fn systemctl_stop_ends_every_session_at_once_in_words() -> Result<()> {
    let stop = unit_signal("KillSignal")?;
    let restart = unit_signal("RestartKillSignal")?;
    ensure!(
        stop != restart,
        "the unit stops and restarts with the same signal: the relay cannot tell them apart"
    );
    let systemd = FakeSystemd::start(unit_store_max()?)?;
    let sshd = TestSshd::start()?;
    let (mut relay, _) = systemd.start_relay(&[], "127.0.0.1:0", sshd.port(), &[])?;
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT);
    let mut ssh = sshd.idle_session(&proxy)?;
    systemd.wait_for("the session kept", PROMPTLY, |s| {
        kept_sessions(s).len() == 1
    })?;

    let stopped = Instant::now();
    ensure!(
        relay.stop_with(stop, PROMPTLY)?,
        "the relay failed on its KillSignal="
    );
    let status = ssh.wait(STOP_WITHIN)?;
    let took = stopped.elapsed();
    systemd.exited();
    let stderr = ssh.stderr.text();
    ensure!(
        status.code() == Some(255) && stderr.contains("the relay is shutting down"),
        "ssh {status} {took:?} after the stop; its stderr:\n{stderr}"
    );
    ensure!(
        !stderr.contains("restarting"),
        "a stop was told as a restart:\n{stderr}"
    );
    relay.wait_for_log("shutting down: closing 1 session", PROMPTLY)?;
    let state = systemd.state();
    ensure!(
        kept_sessions(&state).is_empty(),
        "the ended session is still kept: {:?}",
        state.names()
    );
    ensure!(!state.with_line("STOPPING=1").is_empty(), "no STOPPING=1");
    let last = last_status(&state);
    ensure!(
        last.as_deref() == Some("stopped: 1 session ended"),
        "systemd would show {last:?} for a stopped relay"
    );
    ensure!(
        state.violations.is_empty(),
        "systemd would object: {:?}",
        state.violations
    );
    let statuses: Vec<&str> = state
        .messages
        .iter()
        .filter_map(|m| m.field("STATUS"))
        .collect();
    ensure!(
        statuses.windows(2).all(|pair| pair[0] != pair[1]),
        "the same status told twice in a row: {statuses:?}"
    );
    println!("systemctl stop: ssh exited 255 {took:?} after the signal: {stderr}");
    Ok(())
}

/// An ssh session running `cat`, for lines to be echoed.
struct Echo {
    ssh: Watched,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Echo {
    fn start(sshd: &TestSshd, proxy: &str) -> Result<Echo> {
        let mut ssh = Watched::spawn(
            sshd.ssh_command(Some(proxy), "echo ready; exec cat"),
            Stdio::piped(),
            Stdio::piped(),
        )?;
        let stdin = ssh.child.stdin.take().context("ssh stdin")?;
        let stdout = ssh.child.stdout.take().context("ssh stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut echo = Echo { ssh, stdin, lines };
        echo.expect("ready")?;
        Ok(echo)
    }

    fn expect(&mut self, line: &str) -> Result<()> {
        let got = self.lines.recv_timeout(PROMPTLY).with_context(|| {
            format!(
                "no {line:?} from ssh; its stderr:\n{}",
                self.ssh.stderr.text()
            )
        })?;
        ensure!(got == line, "ssh said {got:?}, not {line:?}");
        Ok(())
    }

    /// Sends `line` and waits for it back.
    fn round_trip(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.expect(line)
    }
}

/// Runs the unit's `ExecReload=` lines as systemd does, one after the
/// other until one fails, with `--config config` added to the relay's own
/// and `$MAINPID` the relay's pid; returns whether all succeeded, and what
/// they said.
fn systemctl_reload(relay: &RelayProcess, config: &std::path::Path) -> Result<(bool, String)> {
    let mut said = String::new();
    for words in unit_exec_reload()? {
        let words: Vec<String> = words
            .into_iter()
            .map(|w| w.replace("$MAINPID", &relay.pid().to_string()))
            .collect();
        let (program, args) = words.split_first().context("an empty ExecReload=")?;
        let mut command = if program == "/usr/bin/resumeproxyd" {
            let mut command = Command::new(env!("CARGO_BIN_EXE_resumeproxyd"));
            command.args(args).arg("--config").arg(config);
            command
        } else {
            let mut command = Command::new(program);
            command.args(args);
            command
        };
        let out = command.output().with_context(|| format!("{words:?}"))?;
        said.push_str(&String::from_utf8_lossy(&out.stdout));
        said.push_str(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Ok((false, said));
        }
    }
    Ok((true, said))
}

#[test]
fn a_broken_config_file_fails_the_reload_and_a_restart_runs_on_the_last_good_one() -> Result<()> {
    let systemd = FakeSystemd::start(unit_store_max()?)?;
    let sshd = TestSshd::start()?;
    let config = sshd.dir().join("resumeproxyd.toml");
    std::fs::write(&config, "instance = \"relay-good\"\ngrace = \"1h\"\n")?;
    let config_text = config.display().to_string();
    let flags = ["--config", config_text.as_str()];
    let (mut relay, _) = systemd.start_relay(&[], "127.0.0.1:0", sshd.port(), &flags)?;
    let listen = relay.addr().to_string();
    ensure!(
        relay.log().contains("instance relay-good"),
        "{}",
        relay.log()
    );
    let proxy = proxy_command(relay.addr(), sshd.port(), CLIENT);
    let mut echo = Echo::start(&sshd, &proxy)?;
    echo.round_trip("before")?;
    systemd.wait_for("the session and the configuration kept", PROMPTLY, |s| {
        kept_sessions(s).len() == 1 && s.count("config-1") == 1
    })?;

    // Someone is editing the file: a key given twice.
    std::fs::write(
        &config,
        "instance = \"relay-good\"\n# editing\ninstance = \"relay-bad\"\n",
    )?;
    let mistake = "line 3: duplicate key `instance`";
    let (reloaded, said) = systemctl_reload(&relay, &config)?;
    ensure!(
        !reloaded && said.contains(mistake),
        "systemctl reload with a broken file: {}, it said {said:?}",
        if reloaded { "succeeded" } else { "failed" }
    );
    // The relay itself, told to reload anyway (a SIGHUP by hand), keeps
    // its settings and says why.
    relay.signal(libc::SIGHUP)?;
    relay.wait_for_log("configuration not reloaded", PROMPTLY)?;
    ensure!(relay.log().contains(mistake), "{}", relay.log());
    systemd.wait_for("a status saying the file is broken", PROMPTLY, |s| {
        last_status(s).is_some_and(|st| st.contains("CONFIG FILE BROKEN") && st.contains(mistake))
    })?;

    // The worker crashes while the file is broken: the next one runs.
    relay.kill();
    systemd.exited();
    let (relay, names) = systemd.start_relay(&[], &listen, sshd.port(), &flags)?;
    ensure!(
        names.iter().any(|n| n == "config-1"),
        "the new worker was not given the kept configuration: {names:?}"
    );
    let log = relay.log();
    ensure!(
        log.contains("THE CONFIG FILE IS BROKEN") && log.contains(mistake),
        "the new worker does not say the file is broken:\n{log}"
    );
    ensure!(
        log.contains("instance relay-good"),
        "the new worker does not run with the last good settings:\n{log}"
    );
    relay.wait_for_log("restored 1 of 1 session", PROMPTLY)?;
    relay.wait_for_log("session resumed", PROMPTLY)?;
    echo.round_trip("after the crash")?;
    systemd.wait_for("the new worker's status", PROMPTLY, |s| {
        last_status(s).is_some_and(|st| st.starts_with("1 session") && st.contains(mistake))
    })?;

    // Mended: a reload applies the file and keeps it in place of the old.
    std::fs::write(&config, "instance = \"relay-good\"\ngrace = \"2h\"\n")?;
    let (reloaded, said) = systemctl_reload(&relay, &config)?;
    ensure!(reloaded, "systemctl reload with a good file failed: {said}");
    relay.wait_for_log("configuration reloaded", PROMPTLY)?;
    systemd.wait_for("the mended file kept, and said", PROMPTLY, |s| {
        s.count("config-2") == 1
            && s.count("config-1") == 0
            && last_status(s).is_some_and(|st| !st.contains("BROKEN"))
    })?;
    echo.round_trip("after the reload")?;
    ensure!(
        systemd.state().violations.is_empty(),
        "systemd would object: {:?}",
        systemd.state().violations
    );

    // A first start (nothing kept) with a broken file fails, naming it.
    std::fs::write(&config, "grace = \"1h\"\ngrace = \"2h\"\n")?;
    let fresh = FakeSystemd::start(unit_store_max()?)?;
    let (mut command, _) = fresh.command(
        &[],
        std::path::Path::new(env!("CARGO_BIN_EXE_resumeproxyd")),
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
    )?;
    let out = command.stdin(Stdio::null()).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(78) && stderr.contains("line 2: duplicate key `grace`"),
        "a first start with a broken file: {}, {stderr}",
        out.status
    );
    drop(relay);
    Ok(())
}

/// A relay started by hand with its stderr on a pipe; `journal`: with
/// `$JOURNAL_STREAM` naming that pipe, as systemd names the journal's
/// stream. Returns its first log line.
fn first_log_line(sshd: &TestSshd, journal: bool) -> Result<String> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    ensure!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
        "pipe2: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both were just made, and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fstat writes one struct stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    ensure!(unsafe { libc::fstat(write.as_raw_fd(), &mut st) } == 0);
    let mut command = Command::new(env!("CARGO_BIN_EXE_resumeproxyd"));
    command
        .args(["--listen", "127.0.0.1:0", "--target"])
        .arg(format!("127.0.0.1:{}", sshd.port()))
        .arg("--key-file")
        .arg(&support::relay::test_key().0)
        .env("RESUMEPROXY_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write));
    if journal {
        command.env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino));
    } else {
        command.env_remove("JOURNAL_STREAM");
    }
    let mut child = command.spawn()?;
    // Our copy of the write end went with the command.
    drop(command);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut pipe = std::fs::File::from(read);
        let mut text = Vec::new();
        let mut byte = [0u8; 1];
        while pipe.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
            text.push(byte[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
    });
    let line = rx.recv_timeout(PROMPTLY);
    let _ = child.kill();
    let _ = child.wait();
    Ok(line?)
}

#[test]
fn on_the_journal_the_relay_writes_no_timestamps_of_its_own() -> Result<()> {
    let sshd = TestSshd::start()?;
    let stamped = |line: &str| {
        line.split_whitespace()
            .next()
            .is_some_and(|word| humantime::parse_rfc3339_weak(word).is_ok())
    };
    let journal = first_log_line(&sshd, true)?;
    ensure!(
        !journal.is_empty() && !stamped(&journal),
        "on the journal: {journal:?}"
    );
    let pipe = first_log_line(&sshd, false)?;
    ensure!(stamped(&pipe), "not on the journal: {pipe:?}");
    println!("on the journal: {journal:?}; elsewhere: {pipe:?}");
    Ok(())
}
