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
//!   exits 0. Prints sessions and throughput per instance.
//! * One instance drained (`draining = true`, reload): HAProxy sees it
//!   drain through the agent-check, its sessions resume to it and finish,
//!   new sessions go elsewhere. Then one instance killed for good (its
//!   keeper SIGKILLed): its clients exit 255 with the session-gone line
//!   within seconds, the others finish.
//! * QUIC: with a per-instance QUIC address, reconnects go to it (the
//!   shared address no longer answers UDP); with `quic_address = none`,
//!   `auto` resumes over TCP. New sessions open over QUIC through a UDP
//!   "balancer" (DNAT in the server namespace).

mod support;

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use support::faults::{serial, wait_progress};
use support::fleet::{EchoSsh, FleetBench, INSTANCES};
use support::netns::Fault;

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
    for (at, fault) in faults {
        let progress = || Ok(echoed(&sessions));
        let mut running = || Ok(true);
        wait_progress(&progress, &mut running, at, RUN_TIMEOUT)
            .with_context(|| format!("before the {}", fault.name()))?;
        let resumes: usize = bench.check_resumes_went_home()?.iter().sum();
        let detail = bench.lab.apply(fault)?;
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
    for session in sessions {
        took.push(session.finish(RUN_TIMEOUT)?);
    }
    let wall = started.elapsed();
    let resumes = bench.check_resumes_went_home()?;
    // The relays log each end once the client has said goodbye.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bench
        .instances
        .iter()
        .map(|i| i.carried().sessions)
        .sum::<usize>()
        < SESSIONS
    {
        ensure!(
            Instant::now() < deadline,
            "not every session ended on its relay"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
        ensure!(
            carried.sessions == homes[i].len(),
            "{} ended {} sessions, started {}",
            instance.name,
            carried.sessions,
            homes[i].len()
        );
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        eprintln!(
            "  | {} | {} | {} | {:.0} | {:.0} | {:.1} |",
            instance.name,
            carried.sessions,
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
