//! A fleet of relays behind nginx: three `resumeproxyd` instances behind
//! Debian's nginx 1.22 with its `stream` module, configured with the
//! shipped `packaging/nginx/resumeproxy.conf` (see `support/nginx.rs`), in
//! the namespace lab (as root; skipped otherwise, or without nginx and
//! libnginx-mod-stream). As `tests/fleet.rs` does for HAProxy:
//!
//! * 9 sessions spread over the instances, each an ssh running `cat` with
//!   a stream checked by sha256 both ways, through a client address change
//!   and a reset storm: every resume lands on the instance that holds its
//!   session (nginx routes it by SNI), every ssh exits 0, and each relay
//!   logs the client's own address, which nginx's PROXY protocol (version
//!   1) header gave it, not nginx's.
//! * Drained the nginx way (the instance marked `down` in `upstream
//!   relays`, nginx reloaded, and the relay set `draining`): its sessions
//!   resume to it through a reset storm and finish, new sessions go
//!   elsewhere. Then one instance killed for good (its keeper SIGKILLed):
//!   nginx, finding it refuse, sends its reconnects to the `backup` servers,
//!   which answer that they are another instance, and its clients exit 255
//!   with the session-gone line within seconds; the others finish.

mod support;

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use support::faults::serial;
use support::fleet::{field, Balancer, EchoSsh, FleetBench, Kind, INSTANCES};
use support::netns::Fault;
use support::process::wait_progress;

/// Client flags: notice a dead link within a second; TCP (nginx's stream
/// proxy routes TCP by SNI; QUIC goes to each instance's own address, see
/// docs/fleet.md).
const CLIENT: &str = "--dead-after 1s --transport tcp";
/// Bound on a whole session.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Sessions of the first run, and what each echoes.
const SESSIONS: usize = 9;
const SESSION_BYTES: u64 = 8 << 20;
/// Sessions that last through the drain and the kill.
const LONG_SESSIONS: usize = 6;
const LONG_BYTES: u64 = 16 << 20;
const LONG_RATE: u64 = 1 << 20;
/// New sessions while one instance drains.
const NEW_SESSIONS: usize = 4;
/// A dead instance's clients end within this long.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// How often the session on `port` (the relay's port towards sshd) was
/// resumed, on any instance.
fn resumes_of(bench: &FleetBench, port: u16) -> usize {
    bench
        .instances
        .iter()
        .map(|i| i.resumed_ports().iter().filter(|&&p| p == port).count())
        .sum()
}

/// The total echoed so far.
fn echoed(sessions: &[EchoSsh]) -> u64 {
    sessions.iter().map(EchoSsh::received).sum()
}

/// The bench, behind nginx; `None` where this machine cannot.
fn bench() -> Result<Option<FleetBench>> {
    FleetBench::start_behind(Kind::Nginx, &|_| Vec::new())
}

/// nginx, which the bench runs.
fn nginx(bench: &FleetBench) -> &support::nginx::Nginx {
    match &bench.balancer {
        Balancer::Nginx(nginx) => nginx,
        Balancer::HaProxy(_) => unreachable!("started behind nginx"),
    }
}

#[test]
fn sessions_behind_nginx_resume_on_their_own_instance_and_name_their_client() -> Result<()> {
    let _serial = serial();
    let Some(bench) = bench()? else {
        return Ok(());
    };
    let proxy = bench.proxy(CLIENT);
    // Where the sessions start from (the address changes later).
    let client = bench.lab.client_addr().to_string();
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        sessions.push(EchoSsh::spawn(
            &bench,
            &proxy,
            SESSION_BYTES,
            500 + i as u64,
            None,
        )?);
    }
    let mut homes = vec![0usize; INSTANCES];
    for session in &mut sessions {
        let port = session.wait_open()?;
        homes[bench.wait_instance_of(port, Duration::from_secs(10))?] += 1;
    }
    ensure!(
        homes.iter().all(|&n| n > 0),
        "least_conn left an instance without a session: {homes:?}"
    );
    let total = SESSION_BYTES * SESSIONS as u64;
    let mut report = Vec::new();
    for (at, fault) in [
        (total / 4, Fault::AddressChange),
        (total / 2, Fault::ResetBurst(Duration::from_secs(1))),
    ] {
        let progress = || Ok(echoed(&sessions));
        let mut running = || Ok(true);
        wait_progress(&progress, &mut running, at, RUN_TIMEOUT)
            .with_context(|| format!("before the {}", fault.name()))?;
        bench.check_resumes_went_home()?;
        let before: Vec<usize> = sessions
            .iter()
            .map(|s| resumes_of(&bench, s.port))
            .collect();
        bench.lab.apply(fault)?;
        let back = Instant::now();
        let deadline = back + Duration::from_secs(20);
        // Every session still running resumes at home (one whose last
        // exchange the fault cut short may have ended instead: its ssh
        // has everything, and finish() below checks it).
        let going = loop {
            let mut pending = Vec::new();
            let mut going = 0;
            for (session, &was) in sessions.iter_mut().zip(&before) {
                let resumed = resumes_of(&bench, session.port) > was;
                going += usize::from(resumed);
                if !resumed && session.running() {
                    pending.push(session.port);
                }
            }
            if pending.is_empty() {
                break going;
            }
            ensure!(
                Instant::now() < deadline,
                "{}: the sessions on {pending:?} did not resume",
                fault.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        bench.check_resumes_went_home()?;
        report.push(format!(
            "{}: {going} sessions resumed at home within {:.2?}",
            fault.name(),
            back.elapsed()
        ));
    }
    for session in sessions {
        session.finish(RUN_TIMEOUT)?;
    }
    let per_instance = bench.check_resumes_went_home()?;
    // nginx's PROXY header named the client, not nginx.
    for instance in &bench.instances {
        let log = instance.relay.log();
        for line in log.lines().filter(|l| l.contains("session started")) {
            let from = field(line, "client").unwrap_or_default();
            ensure!(
                from.starts_with(&format!("{client}:")),
                "{} logged a session from {from}, not the client {client}: {line}",
                instance.name
            );
        }
    }
    let routed = nginx(&bench)
        .access_log()
        .lines()
        .filter(|l| l.contains("sni=\"relay-"))
        .count();
    eprintln!(
        "{SESSIONS} sessions behind nginx, per instance {homes:?}; resumes per instance {per_instance:?}; \
         {routed} reconnects routed by SNI in nginx's access log"
    );
    for line in report {
        eprintln!("  {line}");
    }
    Ok(())
}

#[test]
fn behind_nginx_a_drained_instance_keeps_its_sessions_and_a_dead_ones_clients_end_at_once(
) -> Result<()> {
    let _serial = serial();
    let Some(bench) = bench()? else {
        return Ok(());
    };
    let proxy = bench.proxy(CLIENT);
    let mut long = Vec::new();
    for i in 0..LONG_SESSIONS {
        long.push(EchoSsh::spawn(
            &bench,
            &proxy,
            LONG_BYTES,
            600 + i as u64,
            Some(LONG_RATE),
        )?);
    }
    let mut home = Vec::new();
    for session in &mut long {
        let port = session.wait_open()?;
        home.push(bench.wait_instance_of(port, Duration::from_secs(10))?);
    }
    for i in 0..INSTANCES {
        ensure!(
            home.contains(&i),
            "no session on {}: {home:?}",
            bench.instances[i].name
        );
    }

    // Drain relay-1 the nginx way: `down` in `upstream relays`, a reload,
    // and the relay's own draining.
    let (drained, dead) = (0, 1);
    let name = bench.instances[drained].name.clone();
    let config = nginx(&bench).config()?;
    let relays = config
        .find("upstream relays {")
        .context("no upstream relays")?;
    let addr = format!(
        "{}:{}",
        bench.lab.server_addr(),
        support::fleet::relay_port(drained)
    );
    let line_at = relays + config[relays..].find(&addr).context("no server line")?;
    let end = line_at + config[line_at..].find(';').context("no ;")?;
    let drained_config = format!("{} down{}", &config[..end], &config[end..]);
    nginx(&bench).reload(&drained_config)?;
    bench.instances[drained].drain()?;
    let resumes_before = bench.instances[drained].resumed_ports().len();
    bench.lab.apply(Fault::ResetBurst(Duration::from_secs(1)))?;
    let ours = home.iter().filter(|&&h| h == drained).count();
    bench.instances[drained].relay.wait_for_count(
        "session resumed",
        resumes_before + ours,
        Duration::from_secs(20),
    )?;
    let started_before = bench.instances[drained].started_ports().len();
    let mut fresh = Vec::new();
    for i in 0..NEW_SESSIONS {
        fresh.push(EchoSsh::spawn(
            &bench,
            &proxy,
            1 << 20,
            650 + i as u64,
            None,
        )?);
    }
    for session in &mut fresh {
        let port = session.wait_open()?;
        let at = bench.wait_instance_of(port, Duration::from_secs(10))?;
        ensure!(at != drained, "a new session went to the drained {name}");
    }
    for session in fresh {
        session.finish(RUN_TIMEOUT)?;
    }
    ensure!(
        bench.instances[drained].started_ports().len() == started_before,
        "the drained instance started a session"
    );
    eprintln!(
        "drain: {name} marked down in nginx's `relays` and draining; its {ours} sessions resumed \
         to it through a reset storm; {NEW_SESSIONS} new sessions all went elsewhere"
    );

    // Kill relay-2 for good: its keeper, and so its worker.
    let dead_name = bench.instances[dead].name.clone();
    let mut bench = bench;
    // The clock starts before the kill: `kill` returns once the worker is
    // gone, and the clients may be told before that.
    let killed = Instant::now();
    bench.instances[dead].relay.kill();
    let mut exits = Vec::new();
    let mut survivors = Vec::new();
    for (session, at) in long.into_iter().zip(home) {
        if at != dead {
            survivors.push(session);
            continue;
        }
        let mut ssh = session.ssh;
        let status = ssh.wait(GONE_WITHIN.saturating_sub(killed.elapsed()))?;
        let took = killed.elapsed();
        ensure!(
            status.code() == Some(255),
            "a client of {dead_name}: ssh {status}"
        );
        let line = ssh
            .stderr
            .wait_for(0, "is gone from relay", Duration::from_secs(5))
            .with_context(|| format!("its stderr:\n{}", ssh.stderr.text()))?;
        exits.push((took, line));
    }
    for session in survivors {
        session.finish(RUN_TIMEOUT)?;
    }
    bench.check_resumes_went_home()?;
    eprintln!("{dead_name} killed: its clients exited 255 through nginx's backup servers:");
    for (took, line) in &exits {
        eprintln!("  after {took:.2?}: {line}");
    }
    Ok(())
}
