//! A fleet of relays behind one address: three `resumeproxyd` instances
//! behind Debian's HAProxy, configured with the shipped
//! `packaging/haproxy/resumeproxy.cfg` (see `support/fleet.rs`), in the
//! namespace lab (as root; skipped otherwise, or without haproxy).
//!
//! * 30 sessions spread over the instances, each an ssh running `cat`
//!   with a stream checked by sha256 both ways, through a client address
//!   change, a 10 s silent partition and a reset storm: every resume lands
//!   on the instance that holds its session (each relay's log names only
//!   sessions it started, and none refused an unknown one), every ssh
//!   exits 0, and every session ends on its relay — or, if a fault cut its
//!   last exchange short, is held by it as "Ending the client" in
//!   `docs/options.md` says. Prints sessions and throughput per instance.
//! * One instance drained (`draining = true`, reload): HAProxy sees it
//!   drain through the agent-check, its sessions resume to it and finish,
//!   new sessions go elsewhere. Then one instance killed for good (its
//!   keeper SIGKILLed): its clients exit 255 with the session-gone line
//!   within seconds, the others finish.
//! * A key per instance, every one pinned for the bastion's name: the
//!   clients of an instance killed for good meet another pinned key when
//!   they reconnect, and exit 255 saying so (not the impostor's warning).
//! * QUIC: with a per-instance QUIC address, reconnects go to it (the
//!   shared address no longer answers UDP); with `quic_address = none`,
//!   `auto` resumes over TCP; with `direct`, a QUIC reconnect that the UDP
//!   balancer sends to another instance is told so, and the session
//!   resumes at home over TCP. New sessions open over QUIC through a UDP
//!   "balancer" (DNAT in the server namespace).

mod support;

use anyhow::{ensure, Context, Result};
use resumeproxy::transport::identity::RelayKey;
use std::time::{Duration, Instant, SystemTime};
use support::faults::serial;
use support::fleet::{field, ports_of, EchoSsh, FleetBench, INSTANCES};
use support::netns::Fault;
use support::process::wait_progress;

/// Client flags: notice a dead link within a second.
const CLIENT: &str = "--dead-after 1s --transport tcp";
/// Bound on a whole session.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Sessions of the big run.
const SESSIONS: usize = 30;
/// Bytes each of them echoes.
const SESSION_BYTES: u64 = 12 << 20;

/// The total echoed so far.
fn echoed(sessions: &[EchoSsh]) -> u64 {
    sessions.iter().map(EchoSsh::received).sum()
}

/// How long after a fault is lifted a relay may still notice the link it
/// broke (the dead-peer interval, and some).
const NOTICED_WITHIN: Duration = Duration::from_secs(2);

/// Whether the session on `port`, whose ssh is done, was left to its relay
/// by a fault in its last exchange: ssh had everything and exited, and its
/// client could not tell the relay (it gets `END_WAIT`, 400 ms, for that).
/// The relay keeps such a session for its grace period (docs/options.md, "Ending the
/// client"): its last line of it is `client lost`, logged while one of the
/// `faults` (from, to) broke the link.
fn held(relay_log: &str, port: u16, faults: &[(SystemTime, SystemTime)]) -> bool {
    let port = port.to_string();
    let Some(last) = relay_log
        .lines()
        .rev()
        .find(|l| field(l, "local_port") == Some(port.as_str()))
    else {
        return false;
    };
    let at = last
        .split_whitespace()
        .next()
        .and_then(|stamp| humantime::parse_rfc3339(stamp).ok());
    last.contains("client lost")
        && at.is_some_and(|at| {
            faults
                .iter()
                .any(|&(from, to)| from <= at && at <= to + NOTICED_WITHIN)
        })
}

#[test]
fn thirty_sessions_resume_on_their_own_instance_through_faults() -> Result<()> {
    let _serial = serial();
    let Some(bench) = FleetBench::start(&|_| Vec::new())? else {
        return Ok(());
    };
    let proxy = bench.proxy(CLIENT);
    let started = Instant::now();
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        sessions.push(EchoSsh::spawn(
            &bench,
            &proxy,
            SESSION_BYTES,
            100 + i as u64,
            None,
        )?);
    }
    let mut homes = vec![Vec::new(); INSTANCES];
    for (i, session) in sessions.iter_mut().enumerate() {
        let port = session.wait_open()?;
        homes[bench.wait_instance_of(port, Duration::from_secs(10))?].push(i);
    }
    eprintln!("{SESSIONS} sessions open in {:.1?}", started.elapsed());
    let total = SESSION_BYTES * SESSIONS as u64;
    let faults = [
        (total / 10, Fault::AddressChange),
        (total / 4, Fault::Partition(Duration::from_secs(10))),
        (total / 2, Fault::ResetBurst(Duration::from_secs(1))),
    ];
    let mut report = Vec::new();
    let mut fault_windows = Vec::new();
    for (at, fault) in faults {
        let progress = || Ok(echoed(&sessions));
        let mut running = || Ok(true);
        wait_progress(&progress, &mut running, at, RUN_TIMEOUT)
            .with_context(|| format!("before the {}", fault.name()))?;
        let resumes: usize = bench.check_resumes_went_home()?.iter().sum();
        let from = SystemTime::now();
        let detail = bench.lab.apply(fault)?;
        fault_windows.push((from, SystemTime::now()));
        let back = Instant::now();
        let at_lift = echoed(&sessions);
        // Every session still going resumes, and data flows again.
        let going = sessions.iter().filter(|s| s.received() < s.len).count();
        let deadline = back + Duration::from_secs(20);
        while bench.check_resumes_went_home()?.iter().sum::<usize>() < resumes + going {
            ensure!(
                Instant::now() < deadline,
                "{}: not every session resumed",
                fault.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let resumed = back.elapsed();
        wait_progress(
            &progress,
            &mut running,
            at_lift + (1 << 20),
            Duration::from_secs(10),
        )?;
        report.push(format!(
            "{} ({detail}): {going} sessions resumed within {resumed:.2?} of the network being back",
            fault.name()
        ));
    }
    let mut took = Vec::new();
    let mut stderr = Vec::new();
    for session in sessions {
        stderr.push((session.port, std::sync::Arc::clone(&session.ssh.stderr)));
        took.push(session.finish(RUN_TIMEOUT)?);
    }
    let wall = started.elapsed();
    let resumes = bench.check_resumes_went_home()?;
    // The relays log each end once the client has said goodbye; a
    // session whose goodbye a fault cut short is held instead.
    let deadline = Instant::now() + Duration::from_secs(10);
    let held_per_instance = loop {
        let mut open = String::new();
        let mut held_per_instance = vec![0; INSTANCES];
        for (i, instance) in bench.instances.iter().enumerate() {
            let log = instance.relay.log();
            let ended = ports_of(&log, "session ended");
            for port in instance.started_ports() {
                if ended.contains(&port) {
                    continue;
                }
                if held(&log, port, &fault_windows) {
                    held_per_instance[i] += 1;
                    continue;
                }
                let port_text = port.to_string();
                for line in log
                    .lines()
                    .filter(|l| field(l, "local_port") == Some(port_text.as_str()))
                {
                    open.push_str(&format!("{}: {line}\n", instance.name));
                }
                for (_, lines) in stderr.iter().filter(|(p, _)| *p == port) {
                    open.push_str(&format!("its client said:\n{}\n", lines.text()));
                }
            }
        }
        if open.is_empty() {
            break held_per_instance;
        }
        ensure!(
            Instant::now() < deadline,
            "not every session ended on its relay; those still open:\n{open}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "{SESSIONS} sessions of {} MiB each way through HAProxy, in {wall:.1?}:",
        SESSION_BYTES >> 20
    );
    for line in &report {
        eprintln!("  {line}");
    }
    eprintln!("  | instance | sessions | resumes | MiB from clients | MiB to clients | MiB/s (both ways, over the run) |");
    eprintln!("  |---|---|---|---|---|---|");
    for (i, instance) in bench.instances.iter().enumerate() {
        let carried = instance.carried();
        let held = held_per_instance[i];
        ensure!(
            carried.sessions + held == homes[i].len(),
            "{} ended {} sessions and holds {held}, started {}",
            instance.name,
            carried.sessions,
            homes[i].len()
        );
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let sessions = match held {
            0 => carried.sessions.to_string(),
            held => format!(
                "{} (+{held} held: a fault cut its goodbye)",
                carried.sessions
            ),
        };
        eprintln!(
            "  | {} | {} | {} | {:.0} | {:.0} | {:.1} |",
            instance.name,
            sessions,
            resumes[i],
            mib(carried.from_clients),
            mib(carried.to_clients),
            mib(carried.from_clients + carried.to_clients) / wall.as_secs_f64()
        );
        ensure!(!homes[i].is_empty(), "{} got no session", instance.name);
    }
    let longest = took.iter().max().copied().unwrap_or_default();
    eprintln!("  longest session {longest:.1?}");
    Ok(())
}

/// Sessions of the drain-and-death run, at first.
const LONG_SESSIONS: usize = 6;
/// Bytes each of them echoes, and how fast.
const LONG_BYTES: u64 = 24 << 20;
const LONG_RATE: u64 = 1 << 20;
/// Sessions started while one instance drains.
const NEW_SESSIONS: usize = 6;
/// How soon the clients of an instance gone for good must have exited.
const GONE_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn a_drained_instance_keeps_its_sessions_and_a_dead_one_ends_its_own() -> Result<()> {
    let _serial = serial();
    let Some(bench) = FleetBench::start(&|_| Vec::new())? else {
        return Ok(());
    };
    let proxy = bench.proxy(CLIENT);
    let mut long = Vec::new();
    for i in 0..LONG_SESSIONS {
        long.push(EchoSsh::spawn(
            &bench,
            &proxy,
            LONG_BYTES,
            200 + i as u64,
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

    // Drain relay-1: its config file and a reload, nothing else.
    let (drained, dead) = (0, 1);
    let name = bench.instances[drained].name.clone();
    let started_before = bench.instances[drained].started_ports().len();
    let asked = Instant::now();
    bench.instances[drained].drain()?;
    let seen = bench
        .haproxy()
        .wait_status("relays", &name, "DRAIN", Duration::from_secs(10))?;
    let drain_seen = asked.elapsed();
    ensure!(
        bench.haproxy().status(&name, &name)?.starts_with("UP"),
        "the drained instance's own backend must stay up"
    );
    // Its sessions still resume to it.
    let resumes_before = bench.instances[drained].resumed_ports().len();
    bench.lab.apply(Fault::ResetBurst(Duration::from_secs(1)))?;
    let ours = home.iter().filter(|&&h| h == drained).count();
    bench.instances[drained].relay.wait_for_count(
        "session resumed",
        resumes_before + ours,
        Duration::from_secs(20),
    )?;
    // New sessions go elsewhere.
    let mut fresh = Vec::new();
    for i in 0..NEW_SESSIONS {
        fresh.push(EchoSsh::spawn(
            &bench,
            &proxy,
            1 << 20,
            300 + i as u64,
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
        "drain: HAProxy saw {name} drain {drain_seen:.2?} after the reload was asked ({seen:.2?} after it was done); \
         its {ours} sessions resumed to it through a reset storm; {NEW_SESSIONS} new sessions all went elsewhere"
    );

    // Kill relay-2 for good: its keeper, and so its worker.
    let dead_name = bench.instances[dead].name.clone();
    let mut bench = bench;
    bench.instances[dead].relay.kill();
    let killed = Instant::now();
    let down =
        bench
            .haproxy()
            .wait_status(&dead_name, &dead_name, "DOWN", Duration::from_secs(20))?;
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
    eprintln!(
        "{dead_name} killed: HAProxy marked it down after {down:.2?}; its clients exited 255:"
    );
    for (took, line) in &exits {
        eprintln!("  after {took:.2?}: {line}");
    }
    Ok(())
}

/// Sessions of the run with a key per instance.
const KEYED_SESSIONS: usize = 3;

#[test]
fn with_a_key_per_instance_a_dead_instances_clients_exit_and_say_why() -> Result<()> {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("resumeproxy-fleet-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let keys: Vec<_> = (0..INSTANCES)
        .map(|i| dir.join(format!("relay-{}.key", i + 1)))
        .collect();
    let mut pins = String::new();
    for key in &keys {
        let (key, _) = RelayKey::load_or_create(key)?;
        pins.push_str(&format!("--relay-fingerprint {} ", key.fingerprint()));
    }
    let Some(bench) =
        FleetBench::start(&|i| vec!["--key-file".into(), keys[i].display().to_string()])?
    else {
        return Ok(());
    };
    // Every instance's key pinned for the bastion's one name.
    let proxy = bench.proxy(&format!("{pins}{CLIENT}"));
    let mut sessions = Vec::new();
    for i in 0..KEYED_SESSIONS {
        sessions.push(EchoSsh::spawn(
            &bench,
            &proxy,
            LONG_BYTES,
            700 + i as u64,
            Some(LONG_RATE),
        )?);
    }
    let mut homes = Vec::new();
    for session in &mut sessions {
        let port = session.wait_open()?;
        homes.push(bench.wait_instance_of(port, Duration::from_secs(10))?);
    }
    let dead = homes[0];
    let dead_name = bench.instances[dead].name.clone();
    let mut bench = bench;
    bench.instances[dead].relay.kill();
    let killed = Instant::now();
    let mut exits = Vec::new();
    let mut survivors = Vec::new();
    for (session, at) in sessions.into_iter().zip(homes) {
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
            .wait_for(0, "another pinned key", Duration::from_secs(5))
            .with_context(|| format!("its stderr:\n{}", ssh.stderr.text()))?;
        ensure!(
            !ssh.stderr.text().contains("IDENTIFICATION HAS CHANGED"),
            "a trusted key met as an impostor's:\n{}",
            ssh.stderr.text()
        );
        exits.push((took, line));
    }
    for session in survivors {
        session.finish(RUN_TIMEOUT)?;
    }
    bench.check_resumes_went_home()?;
    std::fs::remove_dir_all(&dir)?;
    eprintln!("a key per instance, every key pinned; {dead_name} killed, its clients exited 255:");
    for (took, line) in &exits {
        eprintln!("  after {took:.2?}: {line}");
    }
    Ok(())
}

/// Sessions of each QUIC run, and what each echoes.
const QUIC_SESSIONS: usize = 3;
const QUIC_BYTES: u64 = 16 << 20;
const QUIC_RATE: u64 = 2 << 20;

/// A UDP "balancer" in front of the instances: DNAT in the server
/// namespace, new flows to the balancer's port taken by each instance in
/// turn (a UDP balancer cannot read SNI, so this is all one can do).
fn udp_balancer(bench: &FleetBench, op: &str) -> Result<()> {
    let port = bench.balancer().port().to_string();
    let ip = bench.lab.server_addr();
    for i in 0..INSTANCES {
        let every = (INSTANCES - i).to_string();
        let to = format!("{ip}:{}", 7101 + i);
        bench.lab.server_iptables(&[
            "-t",
            "nat",
            op,
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            &port,
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            &every,
            "--packet",
            "0",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])?;
    }
    Ok(())
}

/// Drops (or stops dropping) UDP to the balancer's port before any NAT:
/// QUIC to the shared address goes nowhere, whatever conntrack remembers.
fn shared_udp_dropped(bench: &FleetBench, op: &str) -> Result<()> {
    let port = bench.balancer().port().to_string();
    bench.lab.server_iptables(&[
        "-t",
        "raw",
        op,
        "PREROUTING",
        "-p",
        "udp",
        "--dport",
        &port,
        "-j",
        "DROP",
    ])
}

/// Opens sessions over `auto`, checks they started over QUIC, cuts the
/// link for longer than the dead-peer interval, and checks every resume
/// landed home over `transport` with every byte echoed once.
fn quic_run(bench: &FleetBench, seed: u64, transport: &str) -> Result<Vec<(usize, String)>> {
    let proxy = bench.proxy("--dead-after 1s --transport auto");
    let mut sessions = Vec::new();
    for i in 0..QUIC_SESSIONS {
        sessions.push(EchoSsh::spawn(
            bench,
            &proxy,
            QUIC_BYTES,
            seed + i as u64,
            Some(QUIC_RATE),
        )?);
    }
    let mut homes = Vec::new();
    for session in &mut sessions {
        let port = session.wait_open()?;
        let home = bench.wait_instance_of(port, Duration::from_secs(10))?;
        let log = bench.instances[home].relay.log();
        let line = log
            .lines()
            .find(|l| l.contains("session started") && l.contains(&format!("local_port={port} ")))
            .context("its start")?;
        ensure!(
            line.contains("transport=quic"),
            "not opened over QUIC: {line}"
        );
        homes.push((home, port));
    }
    let progress = || Ok(echoed(&sessions));
    let mut running = || Ok(true);
    wait_progress(
        &progress,
        &mut running,
        QUIC_BYTES / 4 * QUIC_SESSIONS as u64,
        RUN_TIMEOUT,
    )?;
    shared_udp_dropped(bench, "-I")?;
    let resumes: usize = bench.check_resumes_went_home()?.iter().sum();
    bench.lab.apply(Fault::Partition(Duration::from_secs(3)))?;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(20);
    while bench.check_resumes_went_home()?.iter().sum::<usize>() < resumes + QUIC_SESSIONS {
        ensure!(Instant::now() < deadline, "not every session resumed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let resumed = back.elapsed();
    for session in sessions {
        session.finish(RUN_TIMEOUT)?;
    }
    shared_udp_dropped(bench, "-D")?;
    let mut lines = Vec::new();
    for (home, port) in homes {
        let log = bench.instances[home].relay.log();
        for line in log
            .lines()
            .filter(|l| l.contains("session resumed") && l.contains(&format!("local_port={port} ")))
        {
            ensure!(
                line.contains(&format!("transport={transport}")),
                "resumed over another transport than {transport}: {line}"
            );
            lines.push((home, line.to_owned()));
        }
    }
    eprintln!("  {QUIC_SESSIONS} sessions resumed within {resumed:.2?} of a 3 s partition, over {transport}");
    Ok(lines)
}

#[test]
fn quic_reconnects_go_to_the_instance_address_or_over_tcp() -> Result<()> {
    let _serial = serial();
    let Some(bench) = FleetBench::start(&|_| Vec::new())? else {
        return Ok(());
    };
    udp_balancer(&bench, "-A")?;
    // In the config files, not as flags (which a reload would not change).
    let ip = bench.lab.server_addr();
    for (i, instance) in bench.instances.iter().enumerate() {
        instance.set_config(&format!("quic_address = \"{ip}:{}\"\n", 7101 + i))?;
    }
    eprintln!("each instance gives its own QUIC address:");
    quic_run(&bench, 400, "quic")?;
    for instance in &bench.instances {
        instance.set_config("quic_address = \"none\"\n")?;
    }
    eprintln!("each instance gives none (quic_address = \"none\"):");
    quic_run(&bench, 500, "tls")?;
    bench.check_resumes_went_home()?;
    for instance in &bench.instances {
        instance.set_config("")?;
    }
    eprintln!("each instance gives direct (the default), and QUIC goes astray:");
    direct_run(&bench, 600)?;
    bench.check_resumes_went_home()?;
    Ok(())
}

/// Where every new UDP flow to the balancer's port goes once the UDP
/// "balancer" is replaced by [`udp_to_first`]: the first instance.
const UDP_HOME: usize = 0;

/// Sends every new UDP flow to the balancer's port to the first instance
/// (flows conntrack already knows keep their instance).
fn udp_to_first(bench: &FleetBench, op: &str) -> Result<()> {
    let port = bench.balancer().port().to_string();
    let to = format!("{}:{}", bench.lab.server_addr(), 7101 + UDP_HOME);
    bench.lab.server_iptables(&[
        "-t",
        "nat",
        op,
        "PREROUTING",
        "-p",
        "udp",
        "--dport",
        &port,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ])
}

/// With `direct` (reconnects over QUIC go where the session was opened: the
/// balancer's address), sessions open over QUIC through the UDP balancer;
/// then the client's address changes, and every new flow goes to the first
/// instance. Sessions of the first instance simply migrate; the others'
/// QUIC paths reach an instance that does not hold them (reset), their
/// QUIC reconnects are told `OtherInstance`, and they resume at home over
/// TCP, routed by SNI.
fn direct_run(bench: &FleetBench, seed: u64) -> Result<()> {
    let proxy = bench.proxy("--dead-after 1s --transport auto");
    let mut sessions = Vec::new();
    for i in 0..QUIC_SESSIONS {
        sessions.push(EchoSsh::spawn(
            bench,
            &proxy,
            QUIC_BYTES,
            seed + i as u64,
            Some(QUIC_RATE),
        )?);
    }
    let mut away = Vec::new();
    for session in &mut sessions {
        let port = session.wait_open()?;
        let home = bench.wait_instance_of(port, Duration::from_secs(10))?;
        if home != UDP_HOME {
            away.push((home, port));
        }
    }
    ensure!(
        !away.is_empty(),
        "every session opened on {}: the UDP balancer did not spread them",
        bench.instances[UDP_HOME].name
    );
    let progress = || Ok(echoed(&sessions));
    let mut running = || Ok(true);
    wait_progress(
        &progress,
        &mut running,
        QUIC_BYTES / 4 * QUIC_SESSIONS as u64,
        RUN_TIMEOUT,
    )?;
    let astray_before = bench.instances[UDP_HOME].relay.count("which holds it");
    let resumes: usize = bench.check_resumes_went_home()?.iter().sum();
    udp_balancer(bench, "-D")?;
    udp_to_first(bench, "-A")?;
    let detail = bench.lab.apply(Fault::AddressChange)?;
    let moved = Instant::now();
    let deadline = moved + Duration::from_secs(20);
    while bench.check_resumes_went_home()?.iter().sum::<usize>() < resumes + away.len() {
        ensure!(
            Instant::now() < deadline,
            "not every session away from {} resumed",
            bench.instances[UDP_HOME].name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let resumed = moved.elapsed();
    for session in sessions {
        session.finish(RUN_TIMEOUT)?;
    }
    udp_to_first(bench, "-D")?;
    udp_balancer(bench, "-A")?;
    for (home, port) in &away {
        let log = bench.instances[*home].relay.log();
        for line in log
            .lines()
            .filter(|l| l.contains("session resumed") && l.contains(&format!("local_port={port} ")))
        {
            ensure!(
                line.contains("transport=tls"),
                "resumed over QUIC, which cannot reach its instance: {line}"
            );
        }
    }
    let astray = bench.instances[UDP_HOME].relay.count("which holds it") - astray_before;
    ensure!(
        astray > 0,
        "no QUIC reconnect reached {} and was told it is another instance",
        bench.instances[UDP_HOME].name
    );
    eprintln!(
        "  {detail}: {} sessions away from {} resumed over tls within {resumed:.2?} \
         ({astray} QUIC reconnects told OtherInstance there)",
        away.len(),
        bench.instances[UDP_HOME].name
    );
    Ok(())
}
