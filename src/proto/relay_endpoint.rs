//! The relay's decisions on a client's hello, sans-IO, in the style of
//! quinn-proto's `Endpoint`: the relay's state comes in as plain data (is
//! it draining, which instance it is, its limits and what it holds, what
//! its session table knows of the session asked for), and a decision comes
//! out. The relay's accept path and session task (`relay/accept.rs`,
//! `relay/session_task.rs`) do only the I/O around these functions, and the
//! simulation (`sim/relay.rs`) calls the same ones, so that every refusal
//! and every resume, stale or replacing, runs the real logic under test.
//!
//! A hello meets three decisions, in order:
//!
//! * [`open`] — a new session: refused while the instance drains, when the
//!   target is not allowed, or at a limit (sessions, sessions without a
//!   client, sessions from this address); else opened.
//! * [`authorize`] — a resume, on the accept path: a session this instance
//!   does not hold, asked for by name of another instance, went astray
//!   ([`Refused::OtherInstance`]: its instance is down); else the proof is
//!   checked, and failures are counted per address ([`resume_auth`]).
//! * [`attach`] — the resume, at its session: the client's position must
//!   lie within what the session holds. A position outside it, while a
//!   live transport carries the session, is a late attempt the client gave
//!   up on: refused, and the live transport kept ([`Attach::Stale`]).
//!   Otherwise the new transport takes the session, replacing a transport
//!   the relay still thought alive if there is one.

use crate::proto::fleet::{self, InstanceName, OtherInstance};
use crate::proto::resume_auth::{self, FailureLimiter, ResumeRefused, BINDING_LEN};
use crate::proto::session::{ProtocolError, Session};
use crate::proto::wire::{Code, SessionId, PROOF_LEN, SECRET_LEN};
use std::net::IpAddr;
use std::time::Instant;

/// What the relay is and holds when a new session is asked for.
#[derive(Debug, Clone, Copy)]
pub struct RelayState<'a> {
    /// This instance's name.
    pub instance: &'a InstanceName,
    /// Taking no new sessions (a fleet instance on its way out).
    pub draining: bool,
    /// Most sessions at once (`--max-sessions`).
    pub max_sessions: usize,
    /// Most sessions without a client (`--max-detached`).
    pub max_detached: usize,
    /// Most sessions from one address (`--max-sessions-per-source`).
    pub max_sessions_per_source: usize,
    /// Sessions held now.
    pub sessions: usize,
    /// Of which without a client.
    pub detached: usize,
    /// Of which opened from the asking address.
    pub from_source: usize,
}

/// Why the relay refuses a hello, as far as the relay's state decides it
/// (the target's policy and reachability are the relay's to add). Its words
/// (`Display`) are what the client's user reads and the relay's log says.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// This instance of a fleet is draining: it takes no new sessions.
    #[error("this relay (instance {0}) is draining: it takes no new sessions")]
    Draining(InstanceName),
    /// `--max-sessions` sessions are live.
    #[error("the relay is at its limit of {0} sessions (--max-sessions)")]
    MaxSessions(usize),
    /// `--max-detached` sessions wait for their clients.
    #[error("the relay holds its limit of {0} sessions whose clients are away (--max-detached)")]
    MaxDetached(usize),
    /// `--max-sessions-per-source` sessions came from this address.
    #[error(
        "the relay holds its limit of {max} sessions from {address} (--max-sessions-per-source)"
    )]
    MaxPerSource {
        /// The limit.
        max: usize,
        /// The address at it.
        address: IpAddr,
    },
    /// The resume was not authorized (throttled, unknown session, wrong proof).
    #[error("{0}")]
    Resume(#[from] ResumeRefused),
    /// A resume named another instance of the fleet, which holds its
    /// session (the balancer sent it here because that one is down).
    #[error("{0}")]
    OtherInstance(OtherInstance),
    /// The client's resume position is outside what the session holds.
    #[error("{0}")]
    ResumeOutOfRange(#[from] ProtocolError),
}

impl Refused {
    /// The code the refusal carries. `Busy` (draining, a limit) is tried
    /// again by the client; its balancer may send it elsewhere.
    pub fn code(&self) -> Code {
        match self {
            Refused::Draining(_)
            | Refused::MaxSessions(_)
            | Refused::MaxDetached(_)
            | Refused::MaxPerSource { .. } => Code::Busy,
            Refused::Resume(refused) => refused.code(),
            Refused::OtherInstance(_) => Code::OtherInstance,
            Refused::ResumeOutOfRange(_) => Code::Protocol,
        }
    }
}

/// What becomes of a hello for a new session.
#[derive(Debug)]
pub enum Open<T, E> {
    /// Open it, to this target.
    Open(T),
    /// The target is not allowed (the relay's policy said why).
    TargetRefused(E),
    /// Refused by the relay's state.
    Refuse(Refused),
}

/// Decides a hello for a new session from `source`, whose target the
/// relay's policy judged `target`. Draining comes first (a draining
/// instance says so whatever was asked), then the target, then the limits.
pub fn open<T, E>(state: &RelayState<'_>, source: IpAddr, target: Result<T, E>) -> Open<T, E> {
    if state.draining {
        return Open::Refuse(Refused::Draining(state.instance.clone()));
    }
    let target = match target {
        Ok(target) => target,
        Err(refused) => return Open::TargetRefused(refused),
    };
    if state.sessions >= state.max_sessions {
        return Open::Refuse(Refused::MaxSessions(state.max_sessions));
    }
    if state.detached >= state.max_detached {
        return Open::Refuse(Refused::MaxDetached(state.max_detached));
    }
    if state.from_source >= state.max_sessions_per_source {
        return Open::Refuse(Refused::MaxPerSource {
            max: state.max_sessions_per_source,
            address: source,
        });
    }
    Open::Open(target)
}

/// A resume hello, as the accept path sees it.
#[derive(Debug, Clone, Copy)]
pub struct ResumeAsk<'a> {
    /// The session asked for.
    pub session: &'a SessionId,
    /// The proof sent.
    pub proof: &'a [u8; PROOF_LEN],
    /// The connection's channel binding (what the proof is bound to).
    pub binding: &'a [u8; BINDING_LEN],
    /// The client's address.
    pub from: IpAddr,
    /// The instance the connection named (its TLS server name), if any.
    pub server_name: Option<&'a str>,
}

/// Decides whether a resume may reach its session: `held` is the session's
/// secret if this instance holds it. Failed proofs are counted in
/// `limiter`, per address, at `now`.
pub fn authorize(
    instance: &InstanceName,
    held: Option<&[u8; SECRET_LEN]>,
    ask: &ResumeAsk<'_>,
    limiter: &mut FailureLimiter,
    now: Instant,
) -> Result<(), Refused> {
    if held.is_none() {
        if let Some(astray) = fleet::astray(ask.server_name, instance) {
            return Err(Refused::OtherInstance(astray));
        }
    }
    // Without a secret, refused as an unknown session (unless throttled).
    resume_auth::authorize(
        limiter,
        ask.from,
        now,
        held,
        ask.session,
        ask.binding,
        ask.proof,
    )?;
    Ok(())
}

/// What becomes of an authorized resume at its session.
#[derive(Debug)]
pub enum Attach {
    /// The new transport takes the session; `replace_existing`: from a
    /// transport the relay still thought alive (the client came back
    /// before the relay noticed it gone), which is retired.
    Resume {
        /// A live transport is replaced.
        replace_existing: bool,
    },
    /// A late attempt the client gave up on: refused, and the live
    /// transport kept.
    Stale(Refused),
    /// Refused; the session, without a transport, waits on.
    Refuse(Refused),
}

/// Decides a resume at `session`, whose client says it has received up to
/// `peer_received`.
pub fn attach(session: &Session, peer_received: u64) -> Attach {
    let attached = session.is_attached();
    match session.check_resume(peer_received) {
        Ok(()) => Attach::Resume {
            replace_existing: attached,
        },
        Err(e) if attached => Attach::Stale(e.into()),
        Err(e) => Attach::Refuse(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::session::SessionConfig;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn state(instance: &InstanceName) -> RelayState<'_> {
        RelayState {
            instance,
            draining: false,
            max_sessions: 4,
            max_detached: 2,
            max_sessions_per_source: 3,
            sessions: 0,
            detached: 0,
            from_source: 0,
        }
    }

    fn code<T, E>(open: Open<T, E>) -> Option<Code> {
        match open {
            Open::Refuse(refused) => Some(refused.code()),
            _ => None,
        }
    }

    #[test]
    fn a_new_session_is_refused_while_draining_before_anything_else() {
        let here: InstanceName = "relay-1".parse().unwrap();
        let draining = RelayState {
            draining: true,
            sessions: 4,
            ..state(&here)
        };
        let decided = open::<(), &str>(&draining, A, Err("not allowed"));
        assert!(matches!(decided, Open::Refuse(Refused::Draining(_))));
        assert!(matches!(
            open::<(), &str>(&state(&here), A, Err("not allowed")),
            Open::TargetRefused("not allowed")
        ));
    }

    #[test]
    fn each_limit_refuses_as_busy() {
        let here: InstanceName = "relay-1".parse().unwrap();
        let base = state(&here);
        let full = [
            RelayState {
                sessions: 4,
                ..base
            },
            RelayState {
                detached: 2,
                ..base
            },
            RelayState {
                from_source: 3,
                ..base
            },
        ];
        for at_limit in full {
            assert_eq!(code(open::<_, ()>(&at_limit, A, Ok(()))), Some(Code::Busy));
        }
        assert!(matches!(open::<_, ()>(&base, A, Ok(7)), Open::Open(7)));
    }

    #[test]
    fn a_session_held_elsewhere_is_another_instances() {
        let here: InstanceName = "relay-1".parse().unwrap();
        let ask = ResumeAsk {
            session: &SessionId([1; 16]),
            proof: &[0; PROOF_LEN],
            binding: &[0; BINDING_LEN],
            from: A,
            server_name: Some("relay-2"),
        };
        let mut limiter = FailureLimiter::default();
        let now = Instant::now();
        let refused = authorize(&here, None, &ask, &mut limiter, now).unwrap_err();
        assert_eq!(refused.code(), Code::OtherInstance);
        let here_named = ResumeAsk {
            server_name: Some("relay-1"),
            ..ask
        };
        let refused = authorize(&here, None, &here_named, &mut limiter, now).unwrap_err();
        assert_eq!(refused.code(), Code::UnknownSession);
        let refused = authorize(&here, Some(&[3; SECRET_LEN]), &ask, &mut limiter, now);
        assert_eq!(refused.unwrap_err().code(), Code::BadProof);
    }

    #[test]
    fn a_resume_out_of_range_is_stale_only_while_attached() {
        let now = Instant::now();
        let mut session = Session::new(SessionConfig::default(), now);
        assert!(matches!(attach(&session, 1), Attach::Refuse(_)));
        assert!(matches!(
            attach(&session, 0),
            Attach::Resume {
                replace_existing: false
            }
        ));
        session.attach(0, now).unwrap();
        assert!(matches!(attach(&session, 1), Attach::Stale(_)));
        assert!(matches!(
            attach(&session, 0),
            Attach::Resume {
                replace_existing: true
            }
        ));
    }
}
