//! The durable relay under systemd, with the test playing systemd.
//!
//! Under systemd there is no keeper: systemd starts the worker itself
//! (`$NOTIFY_SOCKET` set, so `resumeproxyd` does not become a keeper),
//! keeps what the worker hands it with `FDSTORE=1`, and gives it all back
//! to the next worker as `$LISTEN_FDS` and `$LISTEN_FDNAMES`, in its own
//! order. [`support::systemd::FakeSystemd`] does that, written from
//! systemd's documentation and code rather than from the relay's keeper, and
//! records whatever systemd would refuse or warn about.
//!
//! Real ssh and sshd, an upload and a download at once, the worker killed
//! with SIGKILL twice and then stopped for a restart (the unit's
//! `RestartKillSignal=`, as `systemctl restart` sends it) while they run (neither can end before the
//! last restart: the test holds back the upload's last MiB and the
//! download's end), a new worker started by "systemd" with the kept
//! descriptors each time; both files arrive whole, ssh exits 0, each client
//! resumed once per restart, every new worker restored both sessions and said so (`READY=1`,
//! then a `STATUS=` with the sessions), the ended sessions were taken out
//! of the store, and systemd had nothing to object to.

mod support;

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::durable::{CLIENT_RESUMED, LISTENING, RESUMED, RESUME_WITHIN};
use support::process::Watched;
use support::relay::{proxy_command, RelayProcess};
use support::sshd::TestSshd;
use support::systemd::{fdname_is_valid, FakeSystemd, State, FDNAME_MAX};
use support::unit::{unit_signal, unit_store_max};

/// Bytes each way.
const SIZE: u64 = 64 << 20;
/// Bytes of the upload held back until the last restart.
const HELD: u64 = 1 << 20;
/// How each worker in turn is made to go during the transfers: killed
/// (SIGKILL, a crash) twice, then stopped for a restart (SIGTERM, as
/// `systemctl restart` and a package upgrade do).
const RESTARTS: [Restart; 3] = [Restart::Kill, Restart::Kill, Restart::Term];
/// Sessions (the upload and the download).
const SESSIONS: usize = 2;
/// Bound on the transfers.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on a message or a log line that follows an event at once.
const PROMPTLY: Duration = Duration::from_secs(10);
/// The client's flags: a link is given up for dead after 5 s of silence.
const CLIENT_FLAGS_SLOW_DEATH: &str = "--dead-after 5s";
/// The prefix of a session's descriptor name.
const SESSION: &str = "session-";

/// How a worker is made to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// SIGKILL.
    Kill,
    /// SIGTERM: it tells its clients and exits, keeping its sessions.
    Term,
}

/// The distinct session names kept, each with how many descriptors it is
/// kept as (two: its sshd connection and its record).
fn kept_sessions(state: &State) -> Vec<(String, usize)> {
    let mut names: Vec<String> = state
        .names()
        .into_iter()
        .filter(|n| n.starts_with(SESSION))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let count = state.count(&n);
            (n, count)
        })
        .collect()
}

/// The store holds one TCP listener, one UDP socket and `sessions`
/// sessions of two descriptors each.
fn check_store(state: &State, sessions: usize) -> Result<()> {
    ensure!(
        state.count("listen-tcp") == 1 && state.count("listen-udp") == 1,
        "the listeners are not kept once each: {:?}",
        state.names()
    );
    let kept = kept_sessions(state);
    ensure!(
        kept.len() == sessions && kept.iter().all(|(_, n)| *n == 2),
        "{sessions} sessions of two descriptors each should be kept: {kept:?}"
    );
    Ok(())
}

/// Every `FDSTORE=1` names its descriptors with a name systemd accepts
/// (and not empty), carries as many as the name says, and a session's
/// asks for no polling.
fn check_stores(state: &State) -> Result<()> {
    for message in state.with_line("FDSTORE=1") {
        let name = message
            .field("FDNAME")
            .with_context(|| format!("FDSTORE=1 without FDNAME=: {:?}", message.text))?;
        ensure!(
            !name.is_empty() && name.len() <= FDNAME_MAX && fdname_is_valid(name),
            "{name:?} is not a name systemd accepts"
        );
        let session = name.starts_with(SESSION);
        // sshd may close its end while the client still has bytes to get.
        ensure!(
            !session || message.field("FDPOLL") == Some("0"),
            "{name} kept without FDPOLL=0: systemd would close it when sshd hangs up"
        );
        let fds = if session { 2 } else { 1 };
        ensure!(
            message.fds == fds,
            "{name} came with {} descriptors, not {fds}",
            message.fds
        );
    }
    Ok(())
}

/// The status line sent right after the `n`th `READY=1` (1-based).
fn status_after_ready(state: &State, n: usize) -> Option<String> {
    let at = state
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.text.lines().any(|l| l == "READY=1"))
        .nth(n - 1)?
        .0;
    state.messages[at..]
        .iter()
        .find_map(|m| m.field("STATUS").map(str::to_owned))
}

/// How long after the worker listened each session resumed (the relay's
/// own timestamps).
fn resume_times(relay: &RelayProcess) -> Result<Vec<Duration>> {
    let listening = *relay
        .log_times(LISTENING)
        .first()
        .context("no listening line")?;
    Ok(relay
        .log_times(RESUMED)
        .iter()
        .map(|t| t.duration_since(listening).unwrap_or_default())
        .collect())
}

/// Transfers through two SIGKILLs and a SIGTERM of workers run by
/// "systemd" (see the module's doc).
#[test]
fn the_systemd_path_carries_transfers_through_worker_restarts() -> Result<()> {
    let store_max = unit_store_max()?;
    let systemd = FakeSystemd::start(store_max)?;
    let sshd = TestSshd::start()?;
    let (first, names) = systemd.start_relay(&[], "127.0.0.1:0", sshd.port(), &[])?;
    ensure!(names.is_empty(), "a first start got {names:?}");
    ensure!(
        first
            .log()
            .contains("sessions kept by systemd's descriptor store (0 restored)"),
        "the worker does not know systemd keeps its sessions:\n{}",
        first.log()
    );
    systemd.wait_for("READY=1", PROMPTLY, |s| s.with_line("READY=1").len() == 1)?;
    check_store(&systemd.state(), 0)?;
    let listen = first.addr().to_string();

    // A kill ends the client's connection at once (the kernel closes the
    // worker's sockets), and a stopping worker tells its clients: a long
    // --dead-after slows no resume, and spares the count of resumes a
    // spurious one on a loaded machine.
    let proxy = proxy_command(first.addr(), sshd.port(), CLIENT_FLAGS_SLOW_DEATH);
    let dir = sshd.dir();
    let (up_src, up_dst) = (dir.join("up.src"), dir.join("up.dst"));
    let (down_src, down_dst) = (dir.join("down.src"), dir.join("down.dst"));
    write_random_file(&up_src, SIZE, 11)?;
    write_random_file(&down_src, SIZE, 12)?;
    // Neither session can end before the last restart: the upload's last MiB
    // and the end of the download (`cat FILE -` goes on with ssh's stdin)
    // wait for the test.
    let mut up = Watched::spawn(
        sshd.ssh_command(Some(&proxy), &format!("cat > {}", up_dst.display())),
        Stdio::piped(),
        Stdio::null(),
    )?;
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let feeder = {
        let mut stdin = up.child.stdin.take().context("stdin")?;
        let mut src = File::open(&up_src)?;
        std::thread::spawn(move || -> std::io::Result<()> {
            std::io::copy(&mut (&mut src).take(SIZE - HELD), &mut stdin)?;
            let _ = gate.recv();
            std::io::copy(&mut src, &mut stdin)?;
            Ok(())
        })
    };
    let mut down = Watched::spawn(
        sshd.ssh_command(Some(&proxy), &format!("cat {} -", down_src.display())),
        Stdio::piped(),
        Stdio::from(File::create(&down_dst)?),
    )?;
    let down_stdin = down.child.stdin.take().context("stdin")?;
    systemd.wait_for("both sessions kept", PROMPTLY, |s| {
        kept_sessions(s).len() == SESSIONS
    })?;

    let mut workers = vec![first];
    let mut figures = Vec::new();
    for (i, how) in RESTARTS.into_iter().enumerate() {
        let restart = format!("{how:?} {}", i + 1);
        let mark = SIZE * (i as u64 + 1) / (RESTARTS.len() as u64 + 1);
        up.wait_for_bytes(&up_dst, mark, RUN_TIMEOUT)?;
        down.wait_for_bytes(&down_dst, mark, RUN_TIMEOUT)?;
        let signalled = Instant::now();
        let old = workers.last_mut().context("a worker")?;
        match how {
            // SIGKILL, and reaped.
            Restart::Kill => old.kill(),
            Restart::Term => ensure!(
                old.stop_with(unit_signal("RestartKillSignal")?, PROMPTLY)?,
                "{restart}: the worker failed"
            ),
        }
        systemd.exited();
        check_store(&systemd.state(), SESSIONS).with_context(|| format!("after {restart}"))?;
        let readies = systemd.state().with_line("READY=1").len();
        let (worker, names) = systemd.start_relay(&[], &listen, sshd.port(), &[])?;
        let listening = signalled.elapsed();
        let sessions = names.iter().filter(|n| n.starts_with(SESSION)).count();
        // The sessions, the two listeners and the last good configuration.
        ensure!(
            sessions == 2 * SESSIONS
                && names.len() == 2 * SESSIONS + 3
                && names.iter().filter(|n| n.starts_with("config-")).count() == 1,
            "the new worker got {names:?}"
        );
        // systemd's order: the newest first, the listeners (kept first) last.
        ensure!(
            names[names.len() - 2..]
                .iter()
                .all(|n| n.starts_with("listen-")),
            "not systemd's order: {names:?}"
        );
        let restored = format!(
            "restored {SESSIONS} of {SESSIONS} sessions kept by systemd's descriptor store"
        );
        worker
            .wait_for_log(&restored, PROMPTLY)
            .with_context(|| format!("after {restart}"))?;
        systemd.wait_for("READY=1 from the new worker", PROMPTLY, |s| {
            status_after_ready(s, readies + 1).is_some()
        })?;
        let status = status_after_ready(&systemd.state(), readies + 1).unwrap_or_default();
        ensure!(
            status.starts_with(&format!("{SESSIONS} sessions"))
                && status.contains(&format!("{SESSIONS} restored at start")),
            "the new worker's status: {status:?}"
        );
        worker
            .wait_for_count(RESUMED, SESSIONS, PROMPTLY)
            .with_context(|| format!("after {restart}"))?;
        let resumes = resume_times(&worker)?;
        let worst = resumes.iter().max().copied().unwrap_or_default();
        ensure!(
            worst <= RESUME_WITHIN,
            "after {restart} a client resumed {worst:?} after the worker listened"
        );
        figures.push((restart, listening, resumes, status));
        workers.push(worker);
    }

    let _ = go.send(());
    drop(down_stdin);
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("the feeder panicked"))?
        .context("feeding the upload")?;
    for (name, ssh) in [("upload", &mut up), ("download", &mut down)] {
        let (status, stderr) = ssh.finish(RUN_TIMEOUT, PROMPTLY)?;
        ensure!(status.success(), "{name}: ssh {status}; stderr:\n{stderr}");
        let resumed = stderr
            .lines()
            .filter(|l| l.contains(CLIENT_RESUMED))
            .count();
        ensure!(
            resumed == RESTARTS.len(),
            "{name}: the client resumed {resumed} times for {} restarts:\n{stderr}",
            RESTARTS.len()
        );
    }
    ensure!(
        sha256_file(&up_src)? == sha256_file(&up_dst)?,
        "upload sha256"
    );
    ensure!(
        sha256_file(&down_src)? == sha256_file(&down_dst)?,
        "download sha256"
    );
    // Ended sessions are taken out of the store (FDSTOREREMOVE=1).
    systemd.wait_for("the ended sessions removed", PROMPTLY, |s| {
        kept_sessions(s).is_empty()
    })?;

    let last = workers.last_mut().context("a worker")?;
    ensure!(last.terminate(PROMPTLY)?, "the worker failed on SIGTERM");
    systemd.exited();
    let state = systemd.state();
    check_stores(&state)?;
    ensure!(
        !state.with_line("STOPPING=1").is_empty(),
        "no STOPPING=1 on SIGTERM"
    );
    ensure!(
        state.violations.is_empty() && state.hung_up.is_empty(),
        "systemd would object: {:?}; dropped on hangup: {:?}",
        state.violations,
        state.hung_up
    );
    println!(
        "{} messages, {} FDSTORE=1, {} FDSTOREREMOVE=1, {} descriptors offered twice; \
         FileDescriptorStoreMax={store_max}",
        state.messages.len(),
        state.with_line("FDSTORE=1").len(),
        state.with_line("FDSTOREREMOVE=1").len(),
        state.duplicates
    );
    for (restart, listening, resumes, status) in &figures {
        let each: Vec<String> = resumes
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect();
        println!(
            "{restart}: new worker listening {}ms after the signal, clients resumed [{}] after that; {status}",
            listening.as_millis(),
            each.join(" ")
        );
    }
    Ok(())
}

/// The fake systemd keeps and objects where systemd does (the test above
/// is only as good as it): a descriptor kept once however often it is
/// offered, the newest first, no more than `FileDescriptorStoreMax=`,
/// removed by name; a name systemd ignores, and a message from another
/// process than the main one, are objections.
#[test]
fn the_fake_systemd_keeps_and_objects_as_systemd_does() -> Result<()> {
    use resumeproxy::relay::durable::fd_store::Notifier;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;
    let systemd = FakeSystemd::start(3)?;
    systemd.started(std::process::id());
    let notifier = Notifier::connect(&systemd.socket_path().as_os_str().to_owned())?;
    let raw = UnixDatagram::unbound()?;
    let send = |text: &str| raw.send_to(text.as_bytes(), systemd.socket_path());
    let fds: Vec<UnixDatagram> = (0..4)
        .map(|_| UnixDatagram::unbound())
        .collect::<std::io::Result<_>>()?;
    notifier.store("first", &[fds[0].as_fd()])?;
    notifier.store("second", &[fds[1].as_fd(), fds[2].as_fd()])?;
    notifier.store("again", &[fds[0].as_fd()])?;
    notifier.store("over", &[fds[3].as_fd()])?;
    send("FDSTOREREMOVE=1\nFDNAME=bad:name")?;
    send("READY=1")?;
    systemd.wait_for("READY=1", PROMPTLY, |s| s.with_line("READY=1").len() == 1)?;
    {
        let state = systemd.state();
        ensure!(
            state.names() == ["second", "second", "first"],
            "kept {:?}",
            state.names()
        );
        ensure!(state.duplicates == 1, "{} duplicates", state.duplicates);
        let objections = state.violations.join("\n");
        ensure!(
            state.violations.len() == 3
                && objections.contains("FileDescriptorStoreMax=3")
                && objections.contains("bad:name"),
            "objections: {objections}"
        );
    }
    notifier.remove("second")?;
    send("READY=1")?;
    systemd.wait_for("a second READY=1", PROMPTLY, |s| {
        s.with_line("READY=1").len() == 2
    })?;
    ensure!(systemd.state().names() == ["first"], "FDSTOREREMOVE=1");
    // Only the main process may speak (NotifyAccess=main).
    systemd.started(1);
    send("READY=1")?;
    systemd.wait_for("the objection", PROMPTLY, |s| s.violations.len() == 4)?;
    ensure!(systemd.state().with_line("READY=1").len() == 2);
    Ok(())
}
