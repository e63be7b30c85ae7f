//! The client's side of the simulation: what `client/` does, over the
//! simulated network — open a session, run it over its transport until the
//! transport is lost (reset, closed, or silent for the dead-peer interval),
//! then resume as the [`Reconnect`] policy says. A refused or failed open
//! is tried again as the client's [`Opening`] policy says (the relay busy
//! or restarting, or no answer: again after a backoff, until the connect
//! timeout).

use super::clock::{millis, Clock};
use super::local::Local;
use super::net::{LinkId, Net, Side, RELAY_INSTANCE};
use super::rng::Rng;
use super::trace::Trace;
use crate::proto::connection::{Connection, Event};
use crate::proto::fleet::InstanceName;
use crate::proto::opening::{OpenNext, Opening};
use crate::proto::reconnect::{Gone, Next, PortEvidence, Reconnect};
use crate::proto::resume_auth;
use crate::proto::session::{Dead, Session, SessionConfig};
use crate::proto::wire::{Code, Hello, Reply, SessionId, SECRET_LEN};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The client's address.
pub(super) const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// The client's bound on each connection (its default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// The session completed.
    Done,
    /// The session is gone (unknown to the relay, or unreachable past its grace).
    Gone(Gone),
    /// The relay refused or closed the session.
    Refused(String),
    /// The session could not be opened.
    Unreachable,
}

/// Where the client is.
pub(super) enum Phase {
    /// Its hello for a new session is out.
    Opening { link: LinkId, deadline: u64 },
    /// Its last open failed; the next attempt is due at `next_attempt`.
    Reopening { next_attempt: u64 },
    /// The session runs over `link`.
    Connected { link: LinkId },
    /// No transport; the next attempt is due at `next_attempt`.
    Detached {
        policy: Reconnect,
        next_attempt: u64,
    },
    /// A resume is out on `link`, given until `deadline`.
    Attempting {
        policy: Reconnect,
        link: LinkId,
        deadline: u64,
    },
    /// Done, well or badly; the session is dropped.
    Ended(Ending),
}

/// What the client learned when its session opened.
struct Opened {
    id: SessionId,
    secret: [u8; SECRET_LEN],
    grace: Duration,
    /// The instance that holds it, named by every resume.
    home: InstanceName,
}

/// The client.
pub(super) struct Client {
    pub(super) phase: Phase,
    pub(super) session: Option<Session>,
    pub(super) local: Local,
    opened: Option<Opened>,
    config: SessionConfig,
    /// Transports lost, by how: reset, closed, silent, stalled.
    pub(super) lost: [u32; 4],
    /// Resumes that worked.
    pub(super) resumes: u32,
    /// Resume attempts that did not.
    pub(super) failed_attempts: u32,
    /// The position its session had received up to when it ended.
    pub(super) received_at_end: u64,
    /// Its attempts to open, and until when they may run.
    opening: Opening,
    /// Opens that were refused or failed, and tried again.
    pub(super) failed_opens: u32,
}

impl Client {
    /// A client about to open a session, its local end `local`.
    pub(super) fn new(config: SessionConfig, local: Local) -> Client {
        Client {
            phase: Phase::Ended(Ending::Unreachable),
            session: None,
            local,
            opened: None,
            config,
            lost: [0; 4],
            resumes: 0,
            failed_attempts: 0,
            received_at_end: 0,
            opening: Opening::new(std::time::Instant::now(), CONNECT_TIMEOUT),
            failed_opens: 0,
        }
    }

    /// Opens: connects and asks for a new session, trying until the
    /// connect timeout.
    pub(super) fn open(&mut self, net: &mut Net, clock: &Clock, rng: &mut Rng) {
        self.opening = Opening::new(clock.now(), CONNECT_TIMEOUT);
        self.phase = self.attempt_open(net, clock, rng);
    }

    /// One attempt to open, given until the connect timeout.
    fn attempt_open(&mut self, net: &mut Net, clock: &Clock, rng: &mut Rng) -> Phase {
        let hello = Hello::New {
            dead_after_ms: u32::try_from(millis(self.config.dead_after)).unwrap_or(u32::MAX),
            host: String::new(),
            port: 22,
        };
        let conn = Connection::client(&hello).expect("a hello encodes");
        let link = net.connect(clock.ms, CLIENT_IP, rng.bytes(), conn);
        Phase::Opening {
            link,
            deadline: clock.ms_of(self.opening.deadline()),
        }
    }

    /// The link it reads and writes now, if any.
    pub(super) fn link(&self) -> Option<LinkId> {
        match self.phase {
            Phase::Opening { link, .. }
            | Phase::Connected { link }
            | Phase::Attempting { link, .. } => Some(link),
            Phase::Reopening { .. } | Phase::Detached { .. } | Phase::Ended(_) => None,
        }
    }

    /// Whether it reads from `link` now: during a handshake always, with a
    /// session while its local end keeps up.
    pub(super) fn wants_read(&mut self, net: &mut Net, link: LinkId) -> bool {
        if self.link() != Some(link) {
            return false;
        }
        let conn = &net.links[link].client.conn;
        match (&self.phase, &self.session) {
            (Phase::Connected { .. }, Some(session)) => conn.wants_read(session),
            _ => true,
        }
    }

    /// The user asks to resume now (`resumeproxy resume`): the wait ends,
    /// an attempt in progress is abandoned for a fresh one.
    pub(super) fn try_now(&mut self, net: &mut Net, clock: &Clock, trace: &mut Trace) {
        if !matches!(
            self.phase,
            Phase::Detached { .. } | Phase::Attempting { .. }
        ) {
            return;
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Ended(Ending::Unreachable));
        self.phase = match phase {
            Phase::Detached { mut policy, .. } => {
                policy.try_now();
                Phase::Detached {
                    policy,
                    next_attempt: clock.ms,
                }
            }
            Phase::Attempting {
                mut policy, link, ..
            } => {
                net.close(link, Side::Client);
                policy.try_now();
                Phase::Detached {
                    policy,
                    next_attempt: clock.ms,
                }
            }
            other => other,
        };
        trace.note(clock, "client: asked to resume now");
    }

    /// When it next needs the clock, in virtual milliseconds.
    pub(super) fn deadline(&self, net: &Net, clock: &Clock) -> Option<u64> {
        match (&self.phase, &self.session) {
            (Phase::Opening { deadline, .. } | Phase::Attempting { deadline, .. }, _) => {
                Some(*deadline)
            }
            (Phase::Detached { next_attempt, .. } | Phase::Reopening { next_attempt }, _) => {
                Some(*next_attempt)
            }
            (Phase::Connected { link }, Some(session)) => session
                .poll_timeout(net.links[*link].client.conn.can_transmit())
                .map(|at| clock.ms_of(at)),
            _ => None,
        }
    }

    /// Does what is due: reads the handshake or the frames, sends, notices
    /// a lost transport, attempts a resume.
    pub(super) fn poll(
        &mut self,
        net: &mut Net,
        clock: &Clock,
        rng: &mut Rng,
        trace: &mut Trace,
    ) -> Result<(), String> {
        let phase = std::mem::replace(&mut self.phase, Phase::Ended(Ending::Unreachable));
        self.phase = match phase {
            Phase::Opening { link, deadline } => {
                self.opening(link, deadline, net, clock, rng, trace)?
            }
            Phase::Reopening { next_attempt } if clock.ms >= next_attempt => {
                trace.note(clock, "client: tries to open again");
                self.attempt_open(net, clock, rng)
            }
            Phase::Connected { link } => self.connected(link, net, clock, trace)?,
            Phase::Detached {
                mut policy,
                next_attempt,
            } if clock.ms >= next_attempt => {
                let attempt = policy.begin();
                let (id, secret) = match &self.opened {
                    Some(opened) => (opened.id, opened.secret),
                    None => return Err("client: detached before a session opened".into()),
                };
                let session = self
                    .session
                    .as_ref()
                    .ok_or("client: detached without a session")?;
                let binding = rng.bytes();
                let home = self.opened.as_ref().map(|opened| opened.home.to_string());
                let hello = Hello::Resume {
                    dead_after_ms: u32::try_from(millis(self.config.dead_after))
                        .unwrap_or(u32::MAX),
                    session: id,
                    proof: resume_auth::proof(&secret, &id, &binding),
                    received: session.received_position(),
                };
                let conn = Connection::client(&hello).expect("a hello encodes");
                let link = net.connect(clock.ms, CLIENT_IP, binding, conn);
                net.links[link].server_name = home;
                trace.note(clock, format!("client: attempt {attempt} on link {link}"));
                let deadline = clock.ms + millis(policy.attempt_timeout());
                Phase::Attempting {
                    policy,
                    link,
                    deadline,
                }
            }
            Phase::Attempting {
                policy,
                link,
                deadline,
            } => self.attempting(policy, link, deadline, net, clock, rng, trace)?,
            other => other,
        };
        Ok(())
    }

    fn opening(
        &mut self,
        link: LinkId,
        deadline: u64,
        net: &mut Net,
        clock: &Clock,
        rng: &mut Rng,
        trace: &mut Trace,
    ) -> Result<Phase, String> {
        let reply = match answer(net, link, deadline, clock)? {
            Answer::Reply(reply) => reply,
            Answer::Pending => return Ok(Phase::Opening { link, deadline }),
            Answer::None => {
                net.close(link, Side::Client);
                return Ok(self.open_failed(None, "no answer", clock, rng, trace));
            }
        };
        match reply {
            Reply::Created {
                session: id,
                secret,
                grace_ms,
                max_data,
                home,
            } => {
                if home.instance.as_str() != RELAY_INSTANCE {
                    return Err(format!("client: opened at instance {}", home.instance));
                }
                let home = home.instance;
                self.config.max_data_len = max_data as usize;
                let mut session = Session::new(self.config, clock.now());
                session
                    .attach(0, clock.now())
                    .map_err(|e| format!("client: {e}"))?;
                self.session = Some(session);
                self.opened = Some(Opened {
                    id,
                    secret,
                    grace: Duration::from_millis(grace_ms),
                    home,
                });
                trace.note(clock, format!("client: session {id} open on link {link}"));
                Ok(Phase::Connected { link })
            }
            Reply::Refused { code, reason } => {
                net.close(link, Side::Client);
                Ok(self.open_failed(Some(code), &reason, clock, rng, trace))
            }
            Reply::Resumed { .. } => Err("client: a new session answered as a resume".into()),
        }
    }

    /// An attempt to open failed, refused with `refused`'s code or (with
    /// `None`) unanswered, for `why`: another after the backoff, if the
    /// client's policy says so.
    fn open_failed(
        &mut self,
        refused: Option<Code>,
        why: &str,
        clock: &Clock,
        rng: &mut Rng,
        trace: &mut Trace,
    ) -> Phase {
        match self.opening.failed(refused, clock.now(), rng.unit()) {
            OpenNext::Retry { at } => {
                self.failed_opens += 1;
                let next_attempt = clock.ms_of(at);
                trace.note(
                    clock,
                    format!("client: open failed ({why}); again at {next_attempt} ms"),
                );
                Phase::Reopening { next_attempt }
            }
            OpenNext::GiveUp => {
                trace.note(clock, format!("client: cannot open ({why})"));
                Phase::Ended(Ending::Unreachable)
            }
            OpenNext::Refused => Phase::Ended(Ending::Refused(why.to_string())),
        }
    }

    fn connected(
        &mut self,
        link: LinkId,
        net: &mut Net,
        clock: &Clock,
        trace: &mut Trace,
    ) -> Result<Phase, String> {
        let now = clock.now();
        let session = self
            .session
            .as_mut()
            .ok_or("client: connected without a session")?;
        let end = &mut net.links[link].client;
        if end.reset {
            return Ok(self.lose(link, 0, "reset", net, clock, trace));
        }
        end.conn
            .handle_frames(session, now)
            .map_err(|e| format!("client: {e}"))?;
        end.conn.transmit(session, now);
        // As the link driver: done once nothing waits for either side.
        let settled =
            !session.has_deliver() && (self.local.end_taken || !session.deliver_finished());
        if settled && end.conn.queued() == 0 {
            if let Some((code, reason)) = session.peer_close() {
                let ending = match code {
                    Code::Done => Ending::Done,
                    _ => Ending::Refused(reason.clone()),
                };
                net.close(link, Side::Client);
                return Ok(self.end(ending, clock, trace));
            }
            if session.is_finished() {
                end.conn.close(Code::Done, "session complete");
                net.close(link, Side::Client);
                return Ok(self.end(Ending::Done, clock, trace));
            }
        }
        if end.eof {
            return Ok(self.lose(link, 1, "closed by the other end", net, clock, trace));
        }
        let due = session.poll_timeout(end.conn.can_transmit());
        match due
            .filter(|&due| now >= due)
            .and_then(|_| session.handle_timeout(now))
        {
            Some(Dead::Silent) => return Ok(self.lose(link, 2, "silent", net, clock, trace)),
            Some(Dead::Stalled) => return Ok(self.lose(link, 3, "stalled", net, clock, trace)),
            None => {}
        }
        Ok(Phase::Connected { link })
    }

    /// The transport is lost (`how`: 0 reset, 1 closed, 2 silent, 3
    /// stalled): detach,
    /// and attempt to resume at once.
    fn lose(
        &mut self,
        link: LinkId,
        how: usize,
        why: &str,
        net: &mut Net,
        clock: &Clock,
        trace: &mut Trace,
    ) -> Phase {
        self.lost[how] += 1;
        net.close(link, Side::Client);
        let grace = self.opened.as_ref().map_or(Duration::ZERO, |o| o.grace);
        if let Some(session) = &mut self.session {
            session.detach();
        }
        trace.note(clock, format!("client: link {link} lost ({why})"));
        let policy = Reconnect::new(clock.now(), grace, CONNECT_TIMEOUT, self.config.dead_after);
        Phase::Detached {
            policy,
            next_attempt: clock.ms,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempting(
        &mut self,
        mut policy: Reconnect,
        link: LinkId,
        deadline: u64,
        net: &mut Net,
        clock: &Clock,
        rng: &mut Rng,
        trace: &mut Trace,
    ) -> Result<Phase, String> {
        let next = match answer(net, link, deadline, clock)? {
            Answer::Reply(reply) => {
                trace.note(clock, format!("client: link {link}: {reply:?}"));
                policy.answered(reply, clock.now(), rng.unit())
            }
            Answer::Pending => {
                return Ok(Phase::Attempting {
                    policy,
                    link,
                    deadline,
                })
            }
            Answer::None => policy.failed(clock.now(), rng.unit(), PortEvidence::default()),
        };
        let phase = match next {
            Next::Resume { peer_received } => {
                let session = self
                    .session
                    .as_mut()
                    .ok_or("client: resumed without a session")?;
                session
                    .attach(peer_received, clock.now())
                    .map_err(|e| format!("client: {e}"))?;
                self.resumes += 1;
                trace.note(clock, format!("client: resumed on link {link}"));
                return Ok(Phase::Connected { link });
            }
            Next::Retry { after } => {
                self.failed_attempts += 1;
                Phase::Detached {
                    policy,
                    next_attempt: clock.ms + millis(after),
                }
            }
            Next::Gone(gone) => self.end(Ending::Gone(gone), clock, trace),
            Next::Refused { reason, .. } => self.end(Ending::Refused(reason), clock, trace),
            Next::RelayGone { .. } => return Err("client: a refused connection".into()),
        };
        net.close(link, Side::Client);
        Ok(phase)
    }

    /// The client ends: its session (and what it would deliver) is dropped.
    fn end(&mut self, ending: Ending, clock: &Clock, trace: &mut Trace) -> Phase {
        trace.note(clock, format!("client: ends: {ending:?}"));
        if let Some(session) = self.session.take() {
            self.received_at_end = session.received_position();
        }
        Phase::Ended(ending)
    }
}

/// What came back for a hello.
enum Answer {
    Reply(Reply),
    /// Nothing yet, and there is time.
    Pending,
    /// Nothing, and nothing will: the link failed or the time is up.
    None,
}

/// The relay's answer on `link`, given until `deadline`.
fn answer(net: &mut Net, link: LinkId, deadline: u64, clock: &Clock) -> Result<Answer, String> {
    let end = &mut net.links[link].client;
    let event = if end.reset {
        None
    } else {
        end.conn
            .poll_event()
            .map_err(|e| format!("client: the relay's answer: {e}"))?
    };
    match event {
        Some(Event::ReplyReceived(reply)) => Ok(Answer::Reply(reply)),
        Some(Event::HelloReceived(_)) => Err("client: received a hello".into()),
        None if clock.ms < deadline && !end.reset && !end.eof => Ok(Answer::Pending),
        None => Ok(Answer::None),
    }
}
