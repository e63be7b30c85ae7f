//! The whole protocol, simulated: a client and a relay, each running its
//! side's real logic — the [`Session`], the [`Connection`] with real hello
//! and reply messages, the client's [`Reconnect`] policy with its backoff,
//! the relay's [`resume_auth::authorize`] and [`hold_for`] — over in-memory
//! links with a virtual clock, through thousands of seeded schedules.
//!
//! A schedule is a seed. It picks the streams each local end writes (ssh on
//! the client, sshd on the relay), the sessions' buffers, the dead-peer
//! interval and the grace period, and then a run of random steps: local
//! ends writing and reading in random sizes, bytes crossing each link in
//! random pieces, time passing, and faults — a silent partition with an
//! outage that keeps new connections out (each side learns of the break
//! when its own dead-peer interval runs out), a reset that only one side
//! sees (the client comes back while the relay still thinks its old
//! transport alive: the new one wins), a transport that stalls, outages
//! longer than the grace period (the relay drops the session; the client's
//! resume is refused as an unknown session, or it gives up), the session's
//! instance going down (another instance refuses the resume as another
//! instance's, and the client ends at once), an impatient user
//! (`resumeproxy resume`), and an attacker resuming with a wrong proof.
//! Some schedules start with the relay draining or holding others'
//! sessions up to one of its limits for a while: the client's open is
//! refused as busy and tried again, until it opens or its connect timeout
//! passes. The relay's decisions are the relay's own
//! ([`relay_endpoint`](crate::proto::relay_endpoint)); the client's are its
//! [`Opening`](crate::proto::opening::Opening) and [`Reconnect`] policies.
//! Then the network heals and the run goes on until the client has ended
//! and the relay holds nothing.
//!
//! Every schedule checks the stream contract: each local end reads only
//! what the other wrote, in order, exactly once, and the end of the stream
//! only after its last byte (checked as it reads, `local.rs`); when the
//! client ends well, both local ends have read everything, end markers
//! included; once the client is refused or gives up, or the relay drops the
//! session, nothing more reaches that local end. The replay buffers stay
//! within their bounds, and no honest peer ever sees a protocol error.
//!
//! A failing schedule panics with its seed and what happened in it. Re-run
//! one alone, its trace printed: `SIM_SEED=1234 cargo test --lib proto::sim`;
//! run more: `SIM_SCHEDULES=100000 cargo test --release --lib proto::sim`.
//!
//! `world.rs` is one schedule; `net.rs` the network, `client.rs` and
//! `relay.rs` the two sides, `local.rs` the local ends; `clock.rs`,
//! `rng.rs` and `trace.rs` its virtual time, its randomness and what it
//! notes; `tally.rs` what the schedules did, summed.

mod client;
mod clock;
mod local;
mod net;
mod relay;
mod rng;
mod tally;
mod trace;
mod world;

#[cfg(doc)]
use crate::proto::{
    connection::Connection, reconnect::hold_for, reconnect::Reconnect, resume_auth,
    session::Session,
};

use std::panic::{catch_unwind, AssertUnwindSafe};
use tally::Tally;
use world::World;

/// Schedules per `cargo test` (unless `SIM_SCHEDULES` says otherwise).
const SCHEDULES: u64 = 2000;

/// Runs the schedule of `seed`; a failure panics with the seed, what went
/// wrong, what happened, and how to run it alone.
fn run_one(seed: u64, echo: bool) -> Tally {
    let mut world = World::new(seed, echo);
    let result = catch_unwind(AssertUnwindSafe(|| world.run()));
    let failure = match result {
        Ok(Ok(())) => return world.tally,
        Ok(Err(failure)) => failure,
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
    };
    let trace = if echo {
        String::new()
    } else {
        let lines = &world.trace.lines;
        let skip = lines.len().saturating_sub(60);
        let mut shown = lines[..1.min(lines.len())].join("\n");
        if skip > 1 {
            shown += &format!("\n          … {} lines …", skip - 1);
        }
        shown + "\n" + &lines[skip.max(1).min(lines.len())..].join("\n")
    };
    panic!(
        "simulation schedule {seed} failed at {} ms: {failure}\n{trace}\nrun it alone: SIM_SEED={seed} cargo test --lib proto::sim",
        world.clock.ms
    );
}

#[test]
fn every_schedule_keeps_the_stream_contract() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed = seed.trim().parse().expect("SIM_SEED is a number");
        let tally = run_one(seed, true);
        eprintln!("{tally:?}");
        return;
    }
    let schedules = std::env::var("SIM_SCHEDULES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(SCHEDULES);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8)) as u64;
    let tally = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let mut seed = first;
                    while seed < schedules {
                        tally.add(&run_one(seed, false));
                        seed += threads;
                    }
                    tally
                })
            })
            .collect();
        let mut total = Tally::default();
        for worker in workers {
            match worker.join() {
                Ok(tally) => total.add(&tally),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        total
    });
    eprintln!("{tally:?}");
    assert_eq!(tally.schedules, schedules);
    // Every case the simulation is for was reached.
    let t = tally;
    let reached = [
        ("sessions completed", t.endings[0] * 2 > schedules),
        (
            "resumes refused as unknown after the grace period",
            t.endings[1] > 0,
        ),
        ("clients giving up after the grace period", t.endings[2] > 0),
        ("partitions", t.faults[0] > 0),
        ("resets seen by the client only", t.faults[1] > 0),
        ("resets seen by the relay only", t.faults[2] > 0),
        (
            "transports found silent by the client",
            t.client_lost[2] > 0,
        ),
        ("transports found silent by the relay", t.relay.lost[2] > 0),
        ("paths losing large writes", t.faults[4] > 0),
        (
            "transports found stalled (data unacknowledged, heartbeats heard)",
            t.client_lost[3] + u64::from(t.relay.lost[3]) > 0,
        ),
        ("resumes", t.resumes > 0),
        ("attempts that failed and backed off", t.failed_attempts > 0),
        (
            "new transports winning over live ones",
            t.relay.replaced > 0,
        ),
        (
            "late resumes refused, the live transport kept",
            t.relay.stale > 0,
        ),
        ("wrong proofs refused", t.relay.refused[1] > 0),
        ("attackers throttled", t.relay.refused[2] > 0),
        ("sessions expired", t.relay.expired > 0),
        ("new sessions refused while draining", t.relay.busy[0] > 0),
        (
            "new sessions refused at the limit of sessions",
            t.relay.busy[1] > 0,
        ),
        (
            "new sessions refused at the limit of detached sessions",
            t.relay.busy[2] > 0,
        ),
        (
            "new sessions refused at the limit per source",
            t.relay.busy[3] > 0,
        ),
        ("refused opens tried again", t.failed_opens > 0),
        ("opens given up at the connect timeout", t.endings[4] > 0),
        (
            "resumes sent to another instance, the client told at once",
            t.relay.other_instance > 0 && t.endings[6] > 0,
        ),
    ];
    for (what, ok) in reached {
        assert!(
            ok || schedules < SCHEDULES,
            "no {what} in {schedules} schedules: {t:?}"
        );
    }
}
