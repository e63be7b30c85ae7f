//! One schedule of the simulation: the network, the client, the relay and
//! the clock, driven by one seed through random steps with faults, then
//! through the healed network until everything has ended; and the checks
//! at the end.

use super::client::{Client, Ending, Phase};
use super::clock::Clock;
use super::local::Local;
use super::net::{LinkId, Net, Side};
use super::relay::{Crowd, Relay, MAX_DETACHED, MAX_PER_SOURCE, MAX_SESSIONS};
use super::rng::Rng;
use super::tally::Tally;
use super::trace::Trace;
use crate::proto::connection::{Connection, Event};
use crate::proto::reconnect::Gone;
use crate::proto::session::SessionConfig;
use crate::proto::wire::{Code, Hello, Reply, SessionId, MAX_DATA_LEN, MIN_DATA_LEN, PROOF_LEN};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

/// An attacker's address.
const ATTACKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
/// Most steps after the faults before everything must have settled.
const SETTLE_STEPS: u32 = 100_000;

/// One schedule: the network, the two sides, the clock.
pub(super) struct World {
    pub(super) clock: Clock,
    rng: Rng,
    net: Net,
    client: Client,
    relay: Relay,
    pub(super) trace: Trace,
    /// The run of random steps before the network heals.
    chaos_steps: u64,
    faults_left: u64,
    grace: Duration,
    dead_after: Duration,
    /// The length of what sshd writes.
    relay_in_len: u64,
    /// Attackers' links.
    attackers: Vec<LinkId>,
    /// What each local end had read when its session ended.
    client_read_at_end: Option<usize>,
    relay_read_at_end: Option<usize>,
    pub(super) tally: Tally,
}

impl World {
    /// The schedule of `seed`.
    pub(super) fn new(seed: u64, echo: bool) -> World {
        let mut rng = Rng::new(seed ^ 0x5e55_1090_0000_0000);
        let stream = |rng: &mut Rng| {
            let len = match rng.next() % 8 {
                0 => 0,
                1 => rng.range(1, 100),
                _ => rng.range(100, 48 * 1024),
            };
            Rc::new((0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>())
        };
        let client_in = stream(&mut rng);
        let relay_in = stream(&mut rng);
        let dead_after = Duration::from_millis(rng.range(500, 2500));
        let client_config = SessionConfig {
            replay_capacity: rng.range(1024, 32 * 1024) as usize,
            deliver_capacity: rng.range(256, 16 * 1024) as usize,
            dead_after,
            max_data_len: MAX_DATA_LEN,
            ack_delivered: false,
        };
        // As the relay runs it: acknowledging only what sshd took.
        let relay_config = SessionConfig {
            replay_capacity: rng.range(1024, 32 * 1024) as usize,
            deliver_capacity: rng.range(256, 16 * 1024) as usize,
            max_data_len: rng.range(MIN_DATA_LEN as u64, 8192) as usize,
            ack_delivered: true,
            ..SessionConfig::default()
        };
        let grace = Duration::from_millis(rng.range(2000, 12_000));
        // Now and then the relay drains, or holds others' sessions up to a
        // limit, for up to twice the client's connect timeout.
        let until = rng.range(0, 10_000);
        let crowd = match rng.range(0, 24) {
            0 => Crowd {
                draining: true,
                until,
                ..Crowd::default()
            },
            1 => Crowd {
                sessions: MAX_SESSIONS,
                until,
                ..Crowd::default()
            },
            2 => Crowd {
                sessions: MAX_DETACHED,
                detached: MAX_DETACHED,
                until,
                ..Crowd::default()
            },
            3 => Crowd {
                sessions: MAX_PER_SOURCE,
                from_source: MAX_PER_SOURCE,
                until,
                ..Crowd::default()
            },
            _ => Crowd::default(),
        };
        let chaos_steps = rng.range(200, 2500);
        let faults_left = rng.range(0, 5);
        let clock = Clock::start();
        let mut trace = Trace {
            lines: Vec::new(),
            echo,
        };
        trace.note(
            &clock,
            format!(
                "seed {seed}: {} bytes up, {} down; client {client_config:?}; relay {relay_config:?}; grace {grace:?}; {crowd:?}; {chaos_steps} steps, {faults_left} faults",
                client_in.len(),
                relay_in.len()
            ),
        );
        let client_local = Local::new(Rc::clone(&client_in), Rc::clone(&relay_in));
        let relay_in_len = relay_in.len() as u64;
        let relay_local = Local::new(relay_in, client_in);
        World {
            clock,
            rng,
            net: Net::default(),
            client: Client::new(client_config, client_local),
            relay: Relay::new(relay_config, grace, relay_local, crowd),
            trace,
            chaos_steps,
            faults_left,
            grace,
            dead_after,
            relay_in_len,
            attackers: Vec::new(),
            client_read_at_end: None,
            relay_read_at_end: None,
            tally: Tally {
                schedules: 1,
                ..Tally::default()
            },
        }
    }

    /// Runs the schedule: random steps with faults, then the healed
    /// network until everything has ended; then the checks.
    pub(super) fn run(&mut self) -> Result<(), String> {
        self.client.open(&mut self.net, &self.clock, &mut self.rng);
        for _ in 0..self.chaos_steps {
            self.step()?;
        }
        self.trace.note(&self.clock, "the network heals");
        self.settle()?;
        self.check_end()
    }

    /// One random step, then each side does what is due.
    fn step(&mut self) -> Result<(), String> {
        match self.rng.next() % 100 {
            0..=9 => self.client_write(),
            10..=19 => self.relay_write(),
            20..=29 => self.client_read()?,
            30..=39 => self.relay_read()?,
            40..=79 => {
                if let Some(link) = self.pick_link() {
                    let side = if self.rng.chance(50) {
                        Side::Client
                    } else {
                        Side::Relay
                    };
                    let size = self.rng.size();
                    if self.rng.chance(50) {
                        self.net.send(link, side, size);
                    } else {
                        self.recv(link, side, size);
                    }
                }
            }
            80..=91 => {
                let step = self.rng.range(1, 40);
                self.advance(Some(step));
            }
            // Nothing in flight: time passes to what is due next.
            92..=94 if self.quiet() => self.advance(None),
            95 | 96 => self.fault(),
            _ => {
                if self.rng.chance(5) {
                    self.attack();
                } else if self.rng.chance(30) {
                    self.client
                        .try_now(&mut self.net, &self.clock, &mut self.trace);
                }
            }
        }
        self.poll()
    }

    /// Everything that can move moves, time passes to what is due, until
    /// the client has ended and the relay holds nothing.
    fn settle(&mut self) -> Result<(), String> {
        let limit = self.clock.ms + 40 * self.grace.as_millis() as u64 + 120_000;
        for _ in 0..SETTLE_STEPS {
            if matches!(self.client.phase, Phase::Ended(_)) && self.relay.idle() {
                return Ok(());
            }
            let before = self.progress();
            self.client_write();
            self.relay_write();
            self.client_read()?;
            self.relay_read()?;
            for link in 0..self.net.links.len() {
                for side in [Side::Client, Side::Relay] {
                    self.net.send(link, side, usize::MAX);
                    self.recv(link, side, usize::MAX);
                }
            }
            self.poll()?;
            let moved = self.progress() != before;
            self.advance(if moved { Some(20) } else { None });
            if self.clock.ms > limit {
                return Err("did not settle in virtual time".into());
            }
        }
        Err(format!("did not settle in {SETTLE_STEPS} steps"))
    }

    /// Whether nothing is on its way: no byte in flight or queued on a
    /// link either end still holds.
    fn quiet(&self) -> bool {
        self.net.links.iter().all(|link| {
            link.in_flight() == 0
                && (link.client.dropped || link.client.conn.queued() == 0)
                && (link.relay.dropped || link.relay.conn.queued() == 0)
        })
    }

    /// A measure of what moved: bytes read by either local end, bytes in
    /// flight, bytes queued.
    fn progress(&self) -> (usize, usize, usize) {
        let relay_read = self.relay.held.as_ref().map_or(0, |h| h.local.read);
        let flight = self.net.links.iter().map(|l| l.in_flight()).sum();
        let queued = self
            .net
            .links
            .iter()
            .map(|l| l.client.conn.queued() + l.relay.conn.queued())
            .sum();
        (self.client.local.read + relay_read, flight, queued)
    }

    /// Each side does what is due; the attackers read their answers; the
    /// bounds are checked.
    fn poll(&mut self) -> Result<(), String> {
        for _ in 0..2 {
            self.client
                .poll(&mut self.net, &self.clock, &mut self.rng, &mut self.trace)?;
            self.relay
                .poll(&mut self.net, &self.clock, &mut self.rng, &mut self.trace)?;
        }
        self.check_attackers()?;
        if matches!(self.client.phase, Phase::Ended(_)) && self.client_read_at_end.is_none() {
            self.client_read_at_end = Some(self.client.local.read);
        }
        if let Some(held) = &mut self.relay.held {
            if held.ended.is_some() && self.relay_read_at_end.is_none() {
                self.relay_read_at_end = Some(held.local.read);
            }
        }
        let sessions = [
            self.client.session.as_ref(),
            self.relay
                .held
                .as_mut()
                .and_then(|h| h.live())
                .map(|(s, _)| &*s),
        ];
        for session in sessions.into_iter().flatten() {
            let bound = session.config().replay_capacity as u64 + 1;
            if session.unacked() > bound {
                return Err(format!(
                    "a replay buffer holds {} > {bound}",
                    session.unacked()
                ));
            }
        }
        Ok(())
    }

    fn client_write(&mut self) {
        let size = self.rng.size();
        if let Some(session) = &mut self.client.session {
            self.client.local.write(session, size);
        }
    }

    fn relay_write(&mut self) {
        let size = self.rng.size();
        if let Some((session, local)) = self.relay.held.as_mut().and_then(|h| h.live()) {
            local.write(session, size);
        }
    }

    fn client_read(&mut self) -> Result<(), String> {
        let size = self.rng.size();
        match &mut self.client.session {
            Some(session) => self
                .client
                .local
                .read(session, size)
                .map_err(|e| format!("client's local end: {e}")),
            None => Ok(()),
        }
    }

    fn relay_read(&mut self) -> Result<(), String> {
        let size = self.rng.size();
        match self.relay.held.as_mut().and_then(|h| h.live()) {
            Some((session, local)) => local.read(session, size).map_err(|e| format!("sshd: {e}")),
            None => Ok(()),
        }
    }

    /// A link with something left to do, at random.
    fn pick_link(&mut self) -> Option<LinkId> {
        let live: Vec<LinkId> = (0..self.net.links.len())
            .filter(|&id| {
                let link = &self.net.links[id];
                !(link.client.dropped && link.relay.dropped)
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.rng.range(0, live.len() as u64 - 1) as usize])
    }

    /// Up to `max` bytes reach `side` of `link`, if it reads now.
    fn recv(&mut self, link: LinkId, side: Side, max: usize) {
        let wants = match side {
            Side::Client => {
                self.attackers.contains(&link) || self.client.wants_read(&mut self.net, link)
            }
            Side::Relay => self.relay.wants_read(&self.net, link),
        };
        if wants {
            self.net.recv(link, side, max);
        }
    }

    /// Time passes: by `step` at most (`None`: as far as the next thing due).
    fn advance(&mut self, step: Option<u64>) {
        let next = [
            self.client.deadline(&self.net, &self.clock),
            self.relay.deadline(&self.net, &self.clock),
            Some(self.net.down_until).filter(|&at| at > self.clock.ms),
        ]
        .into_iter()
        .flatten()
        .min();
        let target = match (next, step) {
            (Some(next), Some(step)) => next.min(self.clock.ms + step),
            (Some(next), None) => next,
            (None, Some(step)) => self.clock.ms + step,
            (None, None) => self.clock.ms + 1000,
        };
        self.clock.ms = target.max(self.clock.ms + 1);
    }

    /// A fault, once the session is open.
    fn fault(&mut self) {
        if self.faults_left == 0 || self.client.session.is_none() {
            return;
        }
        self.faults_left -= 1;
        let grace = self.grace.as_millis() as u64;
        let dead = self.dead_after.as_millis() as u64;
        let kind = match self.rng.range(0, 19) {
            0 => 5,
            n => (n % 5) as usize,
        };
        let client_link = self.client.link();
        let relay_link = self.relay.link();
        let what = match kind {
            0 => {
                let outage = match self.rng.range(0, 2) {
                    0 => self.rng.range(0, 2 * dead),
                    1 => self.rng.range(dead.min(grace), grace),
                    _ => self.rng.range(grace, 2 * grace + 10_000),
                };
                self.net.partition(self.clock.ms + outage);
                format!("partition, new connections blocked for {outage} ms")
            }
            1 => match client_link {
                Some(link) => {
                    self.net.reset(link, Side::Client);
                    format!("link {link} reset, seen by the client only")
                }
                None => return,
            },
            2 => match relay_link {
                Some(link) => {
                    self.net.reset(link, Side::Relay);
                    format!("link {link} reset, seen by the relay only")
                }
                None => return,
            },
            3 => match client_link {
                Some(link) => {
                    self.net.blackhole(link);
                    format!("link {link} stalls")
                }
                None => return,
            },
            4 => match client_link {
                Some(link) => {
                    self.net.shrink(link);
                    format!("link {link} loses large writes from now on")
                }
                None => return,
            },
            _ => {
                if self.relay.held.as_ref().is_none_or(|h| h.ended.is_some()) {
                    return;
                }
                self.relay
                    .instance_down(&mut self.net, &self.clock, &mut self.trace);
                "the session's instance goes down".to_string()
            }
        };
        self.tally.faults[kind] += 1;
        self.trace.note(&self.clock, format!("fault: {what}"));
    }

    /// An attacker resumes the session (its id may have leaked) with a
    /// proof it cannot have made.
    fn attack(&mut self) {
        let id = self
            .relay
            .held
            .as_ref()
            .map_or(SessionId([7; 16]), |h| h.id());
        let hello = Hello::Resume {
            dead_after_ms: 1000,
            session: id,
            proof: self.rng.bytes::<PROOF_LEN>(),
            received: 0,
        };
        let conn = Connection::client(&hello).expect("a hello encodes");
        let link = self
            .net
            .connect(self.clock.ms, ATTACKER_IP, self.rng.bytes(), conn);
        self.attackers.push(link);
        self.tally.attacks += 1;
        self.trace
            .note(&self.clock, format!("attacker on link {link}"));
    }

    /// An attacker is only ever refused.
    fn check_attackers(&mut self) -> Result<(), String> {
        for &link in &self.attackers {
            let end = &mut self.net.links[link].client;
            if end.dropped {
                continue;
            }
            match end.conn.poll_event() {
                Ok(None) if !end.reset && !end.eof => continue,
                Ok(None) => {}
                Ok(Some(Event::ReplyReceived(Reply::Refused {
                    code: Code::BadProof | Code::Busy | Code::UnknownSession,
                    ..
                }))) => {}
                other => return Err(format!("an attacker on link {link} got {other:?}")),
            }
            self.net.close(link, Side::Client);
        }
        Ok(())
    }

    /// The contract at the end.
    fn check_end(&mut self) -> Result<(), String> {
        let Phase::Ended(ending) = &self.client.phase else {
            return Err("the client did not end".into());
        };
        let held = self.relay.held.as_ref();
        let relay_complete = held.is_some_and(|h| h.local.complete());
        let index = match ending {
            Ending::Done => {
                if !self.client.local.complete() {
                    return Err(
                        "the client ended well, but its local end did not read everything".into(),
                    );
                }
                if !relay_complete {
                    return Err("the client ended well, but sshd did not read everything".into());
                }
                0
            }
            Ending::Gone(Gone::Unknown(_)) => match held.and_then(|h| h.ended) {
                Some("expired") => 1,
                // The relay completed the session, and its close did not
                // reach the client before the transport broke: sshd read
                // everything, and the client had received everything
                // (what its local end had not yet taken is lost with it).
                // Its instance went down: another told the client so.
                Some("instance down") => 6,
                Some("complete") => {
                    let all = self.relay_in_len + 1;
                    if !relay_complete || self.client.received_at_end != all {
                        return Err(format!(
                            "the relay completed the session, but the client had received {} of {all} positions",
                            self.client.received_at_end
                        ));
                    }
                    5
                }
                _ => return Err(
                    "the client was told its session is unknown, but the relay had not dropped it"
                        .into(),
                ),
            },
            Ending::Gone(Gone::Unreachable(_)) => 2,
            Ending::Refused(reason) => return Err(format!("the client was refused: {reason}")),
            Ending::Unreachable => 4,
        };
        if self.client_read_at_end != Some(self.client.local.read) {
            return Err("the client's local end read after its session ended".into());
        }
        if let Some(read) = self.relay_read_at_end {
            if held.map(|h| h.local.read) != Some(read) {
                return Err("sshd read after its session ended".into());
            }
        }
        self.tally.endings[index] += 1;
        self.tally.client_lost = self.client.lost.map(u64::from);
        self.tally.resumes = self.client.resumes.into();
        self.tally.failed_attempts = self.client.failed_attempts.into();
        self.tally.failed_opens = self.client.failed_opens.into();
        self.tally.relay = self.relay.counts;
        Ok(())
    }
}
