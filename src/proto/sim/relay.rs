//! The relay's side of the simulation: what `relay/` does, over the
//! simulated network — read each connection's hello, open a session or
//! authorize a resume ([`resume_auth::authorize`]) and hand the new
//! transport to the session, where the new one wins over a transport the
//! relay still thinks alive; serve the session until its transport is lost;
//! hold it for its grace period ([`hold_for`]) and then drop it.

use super::local::Local;
use super::net::{LinkId, Net, Side, RELAY_INSTANCE};
use super::{millis, Clock, Rng, Trace};
use crate::proto::connection::Event;
use crate::proto::fleet::{Home, InstanceName, QuicRoute};
use crate::proto::reconnect::hold_for;
use crate::proto::resume_auth::{self, FailureLimiter, ResumeRefused};
use crate::proto::session::{Dead, Session, SessionConfig, MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::proto::wire::{Code, Hello, SessionId, SECRET_LEN};
use std::time::Duration;

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
}

impl RelayCounts {
    /// Adds `other`'s counts to these.
    pub(super) fn add(&mut self, other: &RelayCounts) {
        self.replaced += other.replaced;
        self.expired += other.expired;
        self.stale += other.stale;
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
    pub(super) counts: RelayCounts,
}

impl Relay {
    /// A relay with these session tunables and grace period; `local` is the
    /// sshd its session will reach.
    pub(super) fn new(config: SessionConfig, grace: Duration, local: Local) -> Relay {
        Relay {
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
                let local = self.local.take().ok_or("relay: a second new session")?;
                let id = SessionId(rng.bytes());
                let secret = rng.bytes();
                let conn = &mut net.links[link].relay.conn;
                let home = Home {
                    instance: RELAY_INSTANCE
                        .parse::<InstanceName>()
                        .map_err(|e| format!("relay: {e}"))?,
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
                let from = net.links[link].from;
                let binding = net.links[link].binding;
                let authorized = resume_auth::authorize(
                    &mut self.limiter,
                    from,
                    now,
                    live.as_ref().map(|held| &held.secret),
                    &id,
                    &binding,
                    &proof,
                );
                let held = match (authorized, live) {
                    (Ok(()), Some(held)) => held,
                    (authorized, _) => {
                        let refused = authorized.err().unwrap_or(ResumeRefused::UnknownSession);
                        self.counts.refused[match refused {
                            ResumeRefused::UnknownSession => 0,
                            ResumeRefused::BadProof { .. } => 1,
                            ResumeRefused::Throttled { .. } => 2,
                        }] += 1;
                        trace.note(clock, format!("relay: link {link} refused: {refused}"));
                        let conn = &mut net.links[link].relay.conn;
                        conn.refuse(refused.code(), &refused.to_string());
                        net.close(link, Side::Relay);
                        return Ok(());
                    }
                };
                let conn = &mut net.links[link].relay.conn;
                if let Err(e) = conn.accept_resume(&mut held.session, received, self.grace, now) {
                    let Some(old) = held.link else {
                        return Err(format!("relay: a resume from the real client refused: {e}"));
                    };
                    // An attempt the client gave up on, arriving late:
                    // refused, and the live transport kept.
                    self.counts.stale += 1;
                    trace.note(
                        clock,
                        format!("relay: link {link} stale ({e}); link {old} kept"),
                    );
                    conn.refuse(Code::Protocol, &e.to_string());
                    net.close(link, Side::Relay);
                    return Ok(());
                }
                if let Some(old) = held.link.take() {
                    // The client is back before the relay noticed it gone:
                    // the new transport won, the old one is retired.
                    net.close(old, Side::Relay);
                    self.counts.replaced += 1;
                    trace.note(clock, format!("relay: link {link} replaces link {old}"));
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
