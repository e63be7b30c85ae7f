//! The relay's side of the simulation: what `relay/` does, over the
//! simulated network — read each connection's hello and do what the
//! relay's own decisions say ([`relay_endpoint`]: open a session or refuse
//! it while draining or at a limit, authorize a resume or send it to its
//! instance, attach it — stale, or replacing a transport the relay still
//! thinks alive); serve the session until its transport is lost; hold it
//! for its grace period ([`hold_for`]) and then drop it.
//!
//! Besides its one session, the relay may hold others' for a while
//! ([`Crowd`]: counts, at a limit, or draining), and its instance may go
//! down, the balancer sending the client's resumes to another.

use super::clock::{millis, Clock};
use super::local::Local;
use super::net::{LinkId, Net, Side, RELAY_INSTANCE};
use super::rng::Rng;
use super::trace::Trace;
use crate::proto::connection::Event;
use crate::proto::fleet::{Home, InstanceName, QuicRoute};
use crate::proto::reconnect::hold_for;
use crate::proto::relay_endpoint::{self, Attach, Open, Refused, RelayState, ResumeAsk};
use crate::proto::resume_auth::{FailureLimiter, ResumeRefused};
use crate::proto::session::{Dead, Session, SessionConfig, MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::proto::wire::{Code, Hello, SessionId, SECRET_LEN};
use std::convert::Infallible;
use std::time::Duration;

/// The instance that takes over when the session's goes down.
pub(super) const OTHER_INSTANCE: &str = "sim-relay-2";
/// The relay's limits (small, so that a crowd reaches them).
pub(super) const MAX_SESSIONS: usize = 8;
/// Most sessions without a client.
pub(super) const MAX_DETACHED: usize = 4;
/// Most sessions from one address.
pub(super) const MAX_PER_SOURCE: usize = 2;

/// What the relay holds besides the simulated session, and whether it
/// drains, until `until` (virtual milliseconds): other clients' sessions,
/// as counts; those from the simulated client's address count against it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Crowd {
    pub(super) draining: bool,
    pub(super) sessions: usize,
    pub(super) detached: usize,
    pub(super) from_source: usize,
    pub(super) until: u64,
}

/// How long a connection may take to say hello (the relay's default).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's one session.
pub(super) struct Held {
    id: SessionId,
    secret: [u8; SECRET_LEN],
    session: Session,
    /// The transport it is attached to.
    link: Option<LinkId>,
    /// Since when it has been without one, in virtual milliseconds.
    detached_since: u64,
    /// sshd.
    pub(super) local: Local,
    /// Why it ended, once it did (and left the table).
    pub(super) ended: Option<&'static str>,
}

impl Held {
    /// The session and sshd, while the session lives.
    pub(super) fn live(&mut self) -> Option<(&mut Session, &mut Local)> {
        match self.ended {
            None => Some((&mut self.session, &mut self.local)),
            Some(_) => None,
        }
    }

    /// The session's id.
    pub(super) fn id(&self) -> SessionId {
        self.id
    }
}

/// Counts of what the relay did, for the simulation's coverage.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RelayCounts {
    /// A resume won over a transport the relay still thought alive.
    pub(super) replaced: u32,
    /// Transports lost: reset, closed, silent, stalled.
    pub(super) lost: [u32; 4],
    /// Resumes refused: unknown session, wrong proof, throttled.
    pub(super) refused: [u32; 3],
    /// Sessions dropped after their grace period.
    pub(super) expired: u32,
    /// Late resumes refused while a live transport was kept.
    pub(super) stale: u32,
    /// Late resumes refused while the session had no transport.
    pub(super) late: u32,
    /// New sessions refused: draining, at the limit of sessions, of
    /// detached sessions, of sessions from the address.
    pub(super) busy: [u32; 4],
    /// Resumes sent to another instance after the session's went down.
    pub(super) other_instance: u32,
}

impl RelayCounts {
    /// Adds `other`'s counts to these.
    pub(super) fn add(&mut self, other: &RelayCounts) {
        self.replaced += other.replaced;
        self.expired += other.expired;
        self.stale += other.stale;
        self.late += other.late;
        self.other_instance += other.other_instance;
        for (a, b) in self.busy.iter_mut().zip(other.busy) {
            *a += b;
        }
        for (a, b) in self.lost.iter_mut().zip(other.lost) {
            *a += b;
        }
        for (a, b) in self.refused.iter_mut().zip(other.refused) {
            *a += b;
        }
    }
}

/// The relay.
pub(super) struct Relay {
    /// Connections in their handshake, and until when they may take.
    handshakes: Vec<(LinkId, u64)>,
    /// Links accepted so far (every one made outside an outage).
    accepted: usize,
    pub(super) held: Option<Held>,
    limiter: FailureLimiter,
    config: SessionConfig,
    grace: Duration,
    /// What its local end (sshd) writes, and what it must read.
    local: Option<Local>,
    /// The instance that answers now.
    instance: InstanceName,
    /// Others' sessions, for a while.
    crowd: Crowd,
    pub(super) counts: RelayCounts,
}

impl Relay {
    /// A relay with these session tunables and grace period; `local` is the
    /// sshd its session will reach.
    pub(super) fn new(config: SessionConfig, grace: Duration, local: Local, crowd: Crowd) -> Relay {
        Relay {
            instance: instance(RELAY_INSTANCE),
            crowd,
            handshakes: Vec::new(),
            accepted: 0,
            held: None,
            limiter: FailureLimiter::default(),
            config,
            grace,
            local: Some(local),
            counts: RelayCounts::default(),
        }
    }

    /// What it is and holds at `ms`, for the relay's decisions.
    fn state(&self, ms: u64) -> RelayState<'_> {
        let crowd = if ms < self.crowd.until {
            self.crowd
        } else {
            Crowd::default()
        };
        let own = self.held.as_ref().filter(|held| held.ended.is_none());
        let own_detached = own.is_some_and(|held| held.link.is_none());
        RelayState {
            instance: &self.instance,
            draining: crowd.draining,
            max_sessions: MAX_SESSIONS,
            max_detached: MAX_DETACHED,
            max_sessions_per_source: MAX_PER_SOURCE,
            sessions: crowd.sessions + usize::from(own.is_some()),
            detached: crowd.detached + usize::from(own_detached),
            from_source: crowd.from_source + usize::from(own.is_some()),
        }
    }

    /// The session's instance goes down: the session with it, and another
    /// instance answers from now on.
    pub(super) fn instance_down(&mut self, net: &mut Net, clock: &Clock, trace: &mut Trace) {
        let Some(held) = self.held.as_mut().filter(|held| held.ended.is_none()) else {
            return;
        };
        if let Some(link) = held.link.take() {
            net.close(link, Side::Relay);
        }
        held.ended = Some("instance down");
        self.instance = instance(OTHER_INSTANCE);
        trace.note(
            clock,
            format!("relay: instance down, {OTHER_INSTANCE} answers"),
        );
    }

    /// Whether it holds nothing any more: no session, no handshake.
    pub(super) fn idle(&self) -> bool {
        self.handshakes.is_empty() && self.held.as_ref().is_none_or(|h| h.ended.is_some())
    }

    /// The link its live session is attached to, if any.
    pub(super) fn link(&self) -> Option<LinkId> {
        self.held
            .as_ref()
            .filter(|held| held.ended.is_none())
            .and_then(|held| held.link)
    }

    /// Whether it reads from `link` now: during a handshake always, with a
    /// session while sshd keeps up.
    pub(super) fn wants_read(&mut self, net: &Net, link: LinkId) -> bool {
        if let Some(held) = &self.held {
            if held.ended.is_none() && held.link == Some(link) {
                return net.links[link].relay.conn.wants_read(&held.session);
            }
        }
        self.handshakes.iter().any(|(id, _)| *id == link)
    }

    /// When it next needs the clock, in virtual milliseconds.
    pub(super) fn deadline(&self, net: &Net, clock: &Clock) -> Option<u64> {
        let handshakes = self.handshakes.iter().map(|(_, deadline)| *deadline).min();
        let held = self.held.as_ref().filter(|h| h.ended.is_none());
        let session = held.and_then(|held| match held.link {
            Some(link) => held
                .session
                .poll_timeout(net.links[link].relay.conn.can_transmit())
                .map(|at| clock.ms_of(at)),
            None => Some(held.detached_since + millis(hold_for(&held.session, self.grace))),
        });
        [handshakes, session].into_iter().flatten().min()
    }

    /// Does what is due: accepts, answers hellos, serves the session,
    /// notices a lost transport, drops a session whose grace has passed.
    pub(super) fn poll(
        &mut self,
        net: &mut Net,
        clock: &Clock,
        rng: &mut Rng,
        trace: &mut Trace,
    ) -> Result<(), String> {
        while self.accepted < net.links.len() {
            let link = self.accepted;
            self.accepted += 1;
            if !net.is_blackholed(link) {
                self.handshakes
                    .push((link, clock.ms + millis(HANDSHAKE_TIMEOUT)));
            }
        }
        let mut i = 0;
        while i < self.handshakes.len() {
            let (link, deadline) = self.handshakes[i];
            let end = &mut net.links[link].relay;
            if end.reset || end.eof || clock.ms >= deadline {
                net.close(link, Side::Relay);
                self.handshakes.swap_remove(i);
                continue;
            }
            match end.conn.poll_event() {
                Ok(None) => i += 1,
                Ok(Some(Event::HelloReceived(hello))) => {
                    self.handshakes.swap_remove(i);
                    self.answer(link, hello, net, clock, rng, trace)?;
                }
                Ok(Some(Event::ReplyReceived(_))) => return Err("relay: received a reply".into()),
                Err(e) => return Err(format!("relay: a hello that does not decode: {e}")),
            }
        }
        self.serve(net, clock, trace)
    }

    /// Opens a session, or authorizes a resume and attaches the session to
    /// the new transport.
    fn answer(
        &mut self,
        link: LinkId,
        hello: Hello,
        net: &mut Net,
        clock: &Clock,
        rng: &mut Rng,
        trace: &mut Trace,
    ) -> Result<(), String> {
        let now = clock.now();
        match hello {
            Hello::New { dead_after_ms, .. } => {
                let from = net.links[link].from;
                let state = self.state(clock.ms);
                match relay_endpoint::open::<(), Infallible>(&state, from, Ok(())) {
                    Open::Open(()) => {}
                    Open::TargetRefused(never) => match never {},
                    Open::Refuse(refused) => {
                        let which = match refused {
                            Refused::Draining(_) => 0,
                            Refused::MaxSessions(_) => 1,
                            Refused::MaxDetached(_) => 2,
                            Refused::MaxPerSource { .. } => 3,
                            _ => return Err(format!("relay: a new session refused: {refused}")),
                        };
                        self.counts.busy[which] += 1;
                        trace.note(clock, format!("relay: link {link} refused: {refused}"));
                        let conn = &mut net.links[link].relay.conn;
                        conn.refuse(refused.code(), &refused.to_string());
                        net.close(link, Side::Relay);
                        return Ok(());
                    }
                }
                let local = self.local.take().ok_or("relay: a second new session")?;
                let id = SessionId(rng.bytes());
                let secret = rng.bytes();
                let conn = &mut net.links[link].relay.conn;
                let home = Home {
                    instance: self.instance.clone(),
                    quic: QuicRoute::Direct,
                };
                conn.accept_new(id, secret, self.grace, self.config.max_data_len, home);
                let mut config = self.config;
                config.dead_after = clamp_dead_after(dead_after_ms);
                let mut session = Session::new(config, now);
                session.attach(0, now).map_err(|e| format!("relay: {e}"))?;
                trace.note(clock, format!("relay: session {id} opened on link {link}"));
                self.held = Some(Held {
                    id,
                    secret,
                    session,
                    link: Some(link),
                    detached_since: clock.ms,
                    local,
                    ended: None,
                });
            }
            Hello::Resume {
                dead_after_ms,
                session: id,
                proof,
                received,
            } => {
                let live = self
                    .held
                    .as_mut()
                    .filter(|held| held.ended.is_none() && held.id == id);
                let ask = ResumeAsk {
                    session: &id,
                    proof: &proof,
                    binding: &net.links[link].binding,
                    from: net.links[link].from,
                    server_name: net.links[link].server_name.as_deref(),
                };
                let authorized = relay_endpoint::authorize(
                    &self.instance,
                    live.as_ref().map(|held| &held.secret),
                    &ask,
                    &mut self.limiter,
                    now,
                );
                let held = match (authorized, live) {
                    (Ok(()), Some(held)) => held,
                    (authorized, _) => {
                        let refused = authorized
                            .err()
                            .unwrap_or(Refused::Resume(ResumeRefused::UnknownSession));
                        match &refused {
                            Refused::Resume(ResumeRefused::UnknownSession) => {
                                self.counts.refused[0] += 1
                            }
                            Refused::Resume(ResumeRefused::BadProof { .. }) => {
                                self.counts.refused[1] += 1
                            }
                            Refused::Resume(ResumeRefused::Throttled { .. }) => {
                                self.counts.refused[2] += 1
                            }
                            Refused::OtherInstance(_) => self.counts.other_instance += 1,
                            other => return Err(format!("relay: a resume refused: {other}")),
                        }
                        trace.note(clock, format!("relay: link {link} refused: {refused}"));
                        let conn = &mut net.links[link].relay.conn;
                        conn.refuse(refused.code(), &refused.to_string());
                        net.close(link, Side::Relay);
                        return Ok(());
                    }
                };
                let given_up = net.links[link].client.dropped;
                let conn = &mut net.links[link].relay.conn;
                match relay_endpoint::attach(&held.session, received) {
                    Attach::Refuse(e) if given_up => {
                        // An attempt the client gave up on, arriving after
                        // the transport it was superseded by was lost too:
                        // refused, and the session waits on.
                        self.counts.late += 1;
                        trace.note(clock, format!("relay: link {link} late ({e})"));
                        conn.refuse(e.code(), &e.to_string());
                        net.close(link, Side::Relay);
                        return Ok(());
                    }
                    Attach::Refuse(e) => {
                        return Err(format!("relay: a resume from the real client refused: {e}"));
                    }
                    Attach::Stale(e) => {
                        // An attempt the client gave up on, arriving late:
                        // refused, and the live transport kept.
                        self.counts.stale += 1;
                        let old = held.link.map_or("none".into(), |old| old.to_string());
                        trace.note(
                            clock,
                            format!("relay: link {link} stale ({e}); link {old} kept"),
                        );
                        conn.refuse(e.code(), &e.to_string());
                        net.close(link, Side::Relay);
                        return Ok(());
                    }
                    Attach::Resume { replace_existing } => {
                        conn.accept_resume(&mut held.session, received, self.grace, now)
                            .map_err(|e| format!("relay: a resume decided, then refused: {e}"))?;
                        if replace_existing {
                            // The client is back before the relay noticed it
                            // gone: the new transport won, the old one is
                            // retired.
                            let old = held
                                .link
                                .take()
                                .ok_or("relay: replaced a transport it did not have")?;
                            net.close(old, Side::Relay);
                            self.counts.replaced += 1;
                            trace.note(clock, format!("relay: link {link} replaces link {old}"));
                        }
                    }
                }
                held.session.set_dead_after(clamp_dead_after(dead_after_ms));
                held.link = Some(link);
                trace.note(
                    clock,
                    format!("relay: resumed on link {link}, client had {received}"),
                );
            }
        }
        Ok(())
    }

    /// Serves the session: frames in and out, its end, a lost transport,
    /// its expiry.
    fn serve(&mut self, net: &mut Net, clock: &Clock, trace: &mut Trace) -> Result<(), String> {
        let now = clock.now();
        let grace = self.grace;
        let Some(held) = self.held.as_mut().filter(|h| h.ended.is_none()) else {
            return Ok(());
        };
        let Some(link) = held.link else {
            if clock.ms >= held.detached_since + millis(hold_for(&held.session, grace)) {
                held.ended = Some("expired");
                self.counts.expired += 1;
                trace.note(clock, "relay: session expired");
            }
            return Ok(());
        };
        let session = &mut held.session;
        let end = &mut net.links[link].relay;
        let lost = if end.reset {
            Some(0)
        } else {
            end.conn
                .handle_frames(session, now)
                .map_err(|e| format!("relay: {e}"))?;
            end.conn.transmit(session, now);
            let settled =
                !session.has_deliver() && (held.local.end_taken || !session.deliver_finished());
            let over = session.peer_close().is_some() || session.is_finished();
            if settled && end.conn.queued() == 0 && over {
                if session.peer_close().is_none() {
                    end.conn.close(Code::Done, "session complete");
                }
                net.close(link, Side::Relay);
                held.ended = Some("complete");
                trace.note(clock, "relay: session complete");
                return Ok(());
            }
            let due = session.poll_timeout(end.conn.can_transmit());
            if end.eof {
                Some(1)
            } else {
                match due
                    .filter(|&due| now >= due)
                    .and_then(|_| session.handle_timeout(now))
                {
                    Some(Dead::Silent) => Some(2),
                    Some(Dead::Stalled) => Some(3),
                    None => None,
                }
            }
        };
        if let Some(how) = lost {
            self.counts.lost[how] += 1;
            session.detach();
            net.close(link, Side::Relay);
            held.link = None;
            held.detached_since = clock.ms;
            trace.note(clock, format!("relay: link {link} lost ({how})"));
        }
        Ok(())
    }
}

/// The client's dead-peer interval, within the bounds the relay accepts.
fn clamp_dead_after(ms: u32) -> Duration {
    Duration::from_millis(ms.into()).clamp(MIN_DEAD_AFTER, MAX_DEAD_AFTER)
}

/// An instance name the simulation knows to be good.
fn instance(name: &str) -> InstanceName {
    name.parse().expect("a valid instance name")
}
