//! The two sides of the grace period, pure: how the client tries to resume
//! after it lost its transport, and how long the relay holds a session whose
//! client is away.
//!
//! The client ([`Reconnect`]) attempts at once, then again after capped,
//! jittered backoff; each attempt is bounded; a relay that is busy or
//! restarting is tried again; a relay that no longer knows the session ends
//! it, and so does a relay port that nothing has served for
//! [`RELAY_GONE_AFTER`] (refused, or accepted and closed at once by a
//! balancer); otherwise it never gives up before the relay's
//! grace period has certainly ended — counted from the client's loss, which
//! is never later than the relay's, plus [`GRACE_MARGIN`]. The relay
//! ([`hold_for`]) keeps a session for its grace period, or briefly once both
//! streams have ended.
//!
//! The caller supplies the clock and the random jitter, so the client, the
//! relay and the simulation of both run this same logic.

use crate::proto::backoff::Backoff;
use crate::proto::session::Session;
use crate::proto::wire::{Code, Reply};
use crate::units::format_duration;
use std::time::{Duration, Instant};

/// Shortest time a reconnect attempt is given.
pub const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra wait past the relay's grace period before the client gives up.
pub const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// How long every reconnect attempt must find nothing serving the relay's
/// port ([`NotServed`]: refused, or accepted and closed before the TLS
/// handshake) before the relay is taken to be stopped for good. A relay
/// that restarts keeps its listening socket (connections wait for the next
/// worker), so only a relay that is gone refuses — or, behind a balancer,
/// has the balancer accept and close; a middlebox that rejects connections
/// for a moment (a reset storm) is survived.
pub const RELAY_GONE_AFTER: Duration = Duration::from_secs(30);
/// How long the relay's host must have said that nothing listens on its
/// UDP port (ICMP port unreachable, with nothing heard from it since)
/// before the relay is taken to be stopped for good. Shorter than
/// [`RELAY_GONE_AFTER`]: a relay that restarts keeps its UDP socket too, so
/// the answer never comes from a restart, and a QUIC client has nothing
/// else to tell a stopped relay from a silent network.
pub const UDP_GONE_AFTER: Duration = Duration::from_secs(10);
/// How long the relay holds a session whose streams have both ended and
/// whose client is away: only the client's last acknowledgement is missing,
/// and the client has most likely exited.
pub const ENDED_GRACE: Duration = Duration::from_secs(600);
/// The first packets on a network that just came back are often lost (the
/// far end's queue or its neighbour table not yet up, an access point still
/// learning the client), and the kernel retransmits a TCP SYN or a QUIC
/// Initial only a second later. So after the network is back, an attempt
/// with no answer within this long — or four round trips of the session,
/// if longer — is replaced by a fresh one, the wait doubling each time.
pub const QUICK_RETRY: Duration = Duration::from_millis(50);
/// Fresh attempts after the network is back, before attempts run their
/// course again.
const QUICK_RETRIES: u32 = 3;

/// How long the relay holds `session`, away from its client, when its grace
/// period is `grace`.
pub fn hold_for(session: &Session, grace: Duration) -> Duration {
    if session.both_streams_ended() {
        grace.min(ENDED_GRACE)
    } else {
        grace
    }
}

/// Whether a relay's refusal may pass if asked again: it is at a limit now,
/// or restarting. The others (the target is not allowed or unreachable, the
/// versions differ, the session is unknown) will not.
pub fn refusal_may_pass(code: Code) -> bool {
    matches!(code, Code::Busy | Code::Restarting)
}

/// How an attempt that got no answer found nothing serving the relay's
/// port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServed {
    /// The connection was refused: nothing listens on the port.
    Refused,
    /// The connection was accepted, then closed before its TLS handshake
    /// was done, with not a word: a balancer with no relay behind it
    /// (nginx's `stream` proxy, whose upstream refused it).
    ClosedAtOnce,
}

/// What the client does after a resume attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The relay took the session back: attach it from the relay's position.
    Resume {
        /// The position the relay has received up to.
        peer_received: u64,
    },
    /// Attempt again after this delay.
    Retry {
        /// The delay.
        after: Duration,
    },
    /// The session is gone; the client ends.
    Gone(Gone),
    /// The relay refused the resume for good; the client ends.
    Refused {
        /// Why, for programs.
        code: Code,
        /// Why, for people.
        reason: String,
    },
    /// Nothing has served the relay's port for a while: the relay is
    /// stopped for good; the client ends.
    RelayGone(GoneBy),
}

/// What a failed attempt learned about the relay's port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortEvidence {
    /// How a TCP attempt found nothing serving it, if it did.
    pub tcp_not_served: Option<NotServed>,
    /// Since when the relay's host has said that nothing listens on its
    /// UDP port, with nothing heard from it since.
    pub udp_unreachable_since: Option<Instant>,
}

/// How the client knows nothing serves the relay's port any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GoneBy {
    /// Every TCP connection was refused for this long.
    #[error("connections refused for {}s", .0.as_secs())]
    Refused(Duration),
    /// For this long every TCP connection was accepted and closed before
    /// its TLS handshake (a balancer with nothing behind it).
    #[error(
        "for {}s every connection was closed before its TLS handshake: a balancer with no relay behind it?",
        .0.as_secs()
    )]
    ClosedAtOnce(Duration),
    /// Its host said, for this long, that nothing listens on its UDP port.
    #[error("its host says nothing listens on its UDP port, for {}s", .0.as_secs())]
    Unreachable(Duration),
}

/// Why the client knows its session is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gone {
    /// The relay said it does not hold the session (it expired, or this is
    /// another instance of a fleet than the one that holds it); its words.
    #[error("{0}")]
    Unknown(String),
    /// Nothing reached the relay for longer than its grace period (and the
    /// margin).
    #[error("the relay was unreachable for longer than its grace period of {}", format_duration(*.0))]
    Unreachable(Duration),
}

/// The client's resume attempts after one loss of its transport.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    lost_at: Instant,
    grace: Duration,
    attempt_timeout: Duration,
    attempts: u32,
    /// Since when every attempt found nothing serving the port, if the
    /// latest did.
    unserved_since: Option<Instant>,
    /// The session's round trip, as last measured, if known.
    rtt: Option<Duration>,
    /// Quick retries left since the network came back, and the wait of the
    /// next.
    quick: Option<(u32, Duration)>,
}

impl Reconnect {
    /// Attempts for a transport lost at `lost_at`, with the relay's `grace`
    /// period; each attempt gets at most `connect_timeout`, and no longer
    /// than the dead-peer interval `dead_after` (a path that answers
    /// nothing for that long is no better than a dead one), but at least
    /// [`MIN_ATTEMPT_TIMEOUT`]. The first attempt is due at once.
    pub fn new(
        lost_at: Instant,
        grace: Duration,
        connect_timeout: Duration,
        dead_after: Duration,
    ) -> Reconnect {
        Reconnect {
            backoff: Backoff::default(),
            lost_at,
            grace,
            attempt_timeout: connect_timeout.min(dead_after.max(MIN_ATTEMPT_TIMEOUT)),
            attempts: 0,
            unserved_since: None,
            rtt: None,
            quick: None,
        }
    }

    /// The session's round trip as last measured: quick retries after the
    /// network comes back wait at least four of them.
    pub fn with_rtt(mut self, rtt: Option<Duration>) -> Reconnect {
        self.rtt = rtt;
        self
    }

    /// How long one attempt may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// An attempt starts; returns its number, from 1.
    pub fn begin(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The network may be back (the kernel or the user says so): the next
    /// delay is short again, and the next attempts are quick (see
    /// [`QUICK_RETRY`]).
    pub fn try_now(&mut self) {
        self.backoff = Backoff::default();
        let first = QUICK_RETRY.max(self.rtt.map_or(Duration::ZERO, |rtt| rtt * 4));
        self.quick = Some((QUICK_RETRIES, first));
    }

    /// How long the attempt starting now may go unanswered before a fresh
    /// one replaces it: `None` (its whole timeout) unless the network just
    /// came back.
    pub fn replace_after(&mut self) -> Option<Duration> {
        let (left, wait) = self.quick?;
        self.quick = (left > 1).then(|| (left - 1, wait * 2));
        Some(wait.min(self.attempt_timeout))
    }

    /// The relay answered the attempt with `reply`. `jitter` in `[0, 1)`
    /// picks the delay if another attempt is due.
    pub fn answered(&mut self, reply: Reply, now: Instant, jitter: f64) -> Next {
        self.unserved_since = None;
        match reply {
            Reply::Resumed { received, .. } => Next::Resume {
                peer_received: received,
            },
            Reply::Refused {
                code: Code::UnknownSession | Code::OtherInstance,
                reason,
            } => Next::Gone(Gone::Unknown(reason)),
            Reply::Refused { code, reason } if !refusal_may_pass(code) => {
                Next::Refused { code, reason }
            }
            // Refused for now, or a new session where a resume was asked
            // for: no answer to this resume; try again.
            Reply::Refused { .. } | Reply::Created { .. } => self.retry(now, jitter),
        }
    }

    /// The attempt brought no usable answer: the network, the handshake, or
    /// nothing within [`attempt_timeout`](Self::attempt_timeout).
    /// `evidence` says whether nothing serves the relay's port.
    pub fn failed(&mut self, now: Instant, jitter: f64, evidence: PortEvidence) -> Next {
        if let Some(since) = evidence.udp_unreachable_since {
            if now.saturating_duration_since(since) >= UDP_GONE_AFTER {
                return Next::RelayGone(GoneBy::Unreachable(UDP_GONE_AFTER));
            }
        }
        match evidence.tcp_not_served {
            Some(how) => {
                let since = *self.unserved_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= RELAY_GONE_AFTER {
                    return Next::RelayGone(match how {
                        NotServed::Refused => GoneBy::Refused(RELAY_GONE_AFTER),
                        NotServed::ClosedAtOnce => GoneBy::ClosedAtOnce(RELAY_GONE_AFTER),
                    });
                }
            }
            None => self.unserved_since = None,
        }
        // An attempt is due by the time the evidence would say the relay is
        // gone, not a backoff later.
        let verdicts = [
            evidence
                .udp_unreachable_since
                .map(|since| since + UDP_GONE_AFTER),
            self.unserved_since.map(|since| since + RELAY_GONE_AFTER),
        ];
        match self.retry(now, jitter) {
            Next::Retry { after } => Next::Retry {
                after: verdicts
                    .into_iter()
                    .flatten()
                    .map(|at| at.saturating_duration_since(now))
                    .fold(after, Duration::min),
            },
            next => next,
        }
    }

    /// Another attempt after the backoff, unless the relay's grace period
    /// has certainly passed.
    fn retry(&mut self, now: Instant, jitter: f64) -> Next {
        if now.saturating_duration_since(self.lost_at) > self.grace + GRACE_MARGIN {
            return Next::Gone(Gone::Unreachable(self.grace));
        }
        Next::Retry {
            after: self.backoff.next_delay(jitter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::backoff::{BACKOFF_CAP, BACKOFF_INITIAL};
    use crate::proto::session::SessionConfig;
    use crate::proto::wire::Frame;

    const NONE: PortEvidence = PortEvidence {
        tcp_not_served: None,
        udp_unreachable_since: None,
    };
    const REFUSED: PortEvidence = PortEvidence {
        tcp_not_served: Some(NotServed::Refused),
        udp_unreachable_since: None,
    };
    const CLOSED: PortEvidence = PortEvidence {
        tcp_not_served: Some(NotServed::ClosedAtOnce),
        udp_unreachable_since: None,
    };

    #[test]
    fn failed_attempts_back_off_until_the_grace_period_has_certainly_passed() {
        let lost = Instant::now();
        let grace = Duration::from_secs(30);
        let mut policy =
            Reconnect::new(lost, grace, Duration::from_secs(5), Duration::from_secs(2));
        assert_eq!(policy.attempt_timeout(), Duration::from_secs(2));
        assert_eq!(policy.begin(), 1);
        assert_eq!(
            policy.failed(lost, 1.0, NONE),
            Next::Retry {
                after: BACKOFF_INITIAL
            }
        );
        let mut delays = Vec::new();
        for _ in 0..10 {
            match policy.failed(lost + grace, 1.0, NONE) {
                Next::Retry { after } => delays.push(after),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays.last(), Some(&BACKOFF_CAP));
        policy.try_now();
        assert_eq!(
            policy.failed(lost + grace + GRACE_MARGIN, 1.0, NONE),
            Next::Retry {
                after: BACKOFF_INITIAL
            }
        );
        let late = lost + grace + GRACE_MARGIN + Duration::from_millis(1);
        let gone = policy.failed(late, 0.5, NONE);
        assert_eq!(gone, Next::Gone(Gone::Unreachable(grace)));
        let Next::Gone(gone) = gone else { return };
        assert_eq!(
            gone.to_string(),
            "the relay was unreachable for longer than its grace period of 30.0s"
        );
    }

    #[test]
    fn a_port_where_nothing_listens_for_long_means_the_relay_is_gone() {
        let lost = Instant::now();
        let grace = Duration::from_secs(3600);
        let mut policy =
            Reconnect::new(lost, grace, Duration::from_secs(5), Duration::from_secs(5));
        let at = |s| lost + Duration::from_secs(s);
        assert!(matches!(
            policy.failed(at(0), 0.0, REFUSED),
            Next::Retry { .. }
        ));
        // An attempt that found something there starts the count again.
        assert!(matches!(
            policy.failed(at(20), 0.0, NONE),
            Next::Retry { .. }
        ));
        assert!(matches!(
            policy.failed(at(25), 0.0, REFUSED),
            Next::Retry { .. }
        ));
        // Accepted and closed at once counts as nothing there too.
        assert!(matches!(
            policy.failed(at(40), 0.0, CLOSED),
            Next::Retry { .. }
        ));
        assert!(matches!(
            policy.failed(at(54), 0.0, REFUSED),
            Next::Retry { .. }
        ));
        assert_eq!(
            policy.failed(at(55), 0.0, CLOSED),
            Next::RelayGone(GoneBy::ClosedAtOnce(RELAY_GONE_AFTER))
        );
        // So does an answer.
        let mut policy =
            Reconnect::new(lost, grace, Duration::from_secs(5), Duration::from_secs(5));
        policy.failed(at(0), 0.0, CLOSED);
        let busy = Reply::Refused {
            code: Code::Busy,
            reason: "busy".into(),
        };
        assert!(matches!(
            policy.answered(busy, at(20), 0.0),
            Next::Retry { .. }
        ));
        assert!(matches!(
            policy.failed(at(31), 0.0, CLOSED),
            Next::Retry { .. }
        ));
    }

    #[test]
    fn a_udp_port_said_unreachable_for_long_means_the_relay_is_gone() {
        let lost = Instant::now();
        let grace = Duration::from_secs(3600);
        let mut policy =
            Reconnect::new(lost, grace, Duration::from_secs(5), Duration::from_secs(5));
        let at = |s| lost + Duration::from_secs(s);
        let since = |s| PortEvidence {
            tcp_not_served: None,
            udp_unreachable_since: Some(at(s)),
        };
        assert!(matches!(
            policy.failed(at(5), 0.0, since(1)),
            Next::Retry { .. }
        ));
        // The next attempt is due when the evidence would be enough.
        let almost = at(10) + Duration::from_millis(900);
        assert_eq!(
            policy.failed(almost, 1.0, since(1)),
            Next::Retry {
                after: Duration::from_millis(100)
            }
        );
        // A datagram from the relay's side in between starts it again.
        assert!(matches!(
            policy.failed(at(12), 0.0, since(8)),
            Next::Retry { .. }
        ));
        assert_eq!(
            policy.failed(at(18), 0.0, since(8)),
            Next::RelayGone(GoneBy::Unreachable(UDP_GONE_AFTER))
        );
        // A silent network says nothing: the grace period is waited out.
        assert!(matches!(
            policy.failed(at(600), 0.0, NONE),
            Next::Retry { .. }
        ));
    }

    #[test]
    fn answers_resume_retry_or_end() {
        let now = Instant::now();
        let grace = Duration::from_secs(30);
        let mut policy = Reconnect::new(now, grace, Duration::from_secs(5), Duration::from_secs(5));
        let refused = |code| Reply::Refused {
            code,
            reason: "why".into(),
        };
        assert_eq!(
            policy.answered(
                Reply::Resumed {
                    received: 7,
                    grace_ms: 0
                },
                now,
                0.0
            ),
            Next::Resume { peer_received: 7 }
        );
        assert!(matches!(
            policy.answered(refused(Code::Busy), now, 0.0),
            Next::Retry { .. }
        ));
        assert!(matches!(
            policy.answered(refused(Code::Restarting), now, 0.0),
            Next::Retry { .. }
        ));
        assert_eq!(
            policy.answered(refused(Code::UnknownSession), now, 0.0),
            Next::Gone(Gone::Unknown("why".into()))
        );
        assert_eq!(
            policy.answered(refused(Code::BadProof), now, 0.0),
            Next::Refused {
                code: Code::BadProof,
                reason: "why".into()
            }
        );
    }

    #[test]
    fn a_session_whose_streams_ended_is_held_briefly() {
        let now = Instant::now();
        let grace = Duration::from_secs(12 * 3600);
        let mut session = Session::new(SessionConfig::default(), now);
        assert_eq!(hold_for(&session, grace), grace);
        session.attach(0, now).unwrap();
        session.local_eof();
        session.handle_frame(Frame::End { offset: 0 }, now).unwrap();
        assert!(session.both_streams_ended());
        assert_eq!(hold_for(&session, grace), ENDED_GRACE);
    }

    #[test]
    fn after_the_network_is_back_unanswered_attempts_are_replaced_quickly() {
        let start = Instant::now();
        let mut policy = Reconnect::new(
            start,
            Duration::from_secs(60),
            Duration::from_secs(15),
            Duration::from_secs(10),
        );
        assert_eq!(
            policy.replace_after(),
            None,
            "not before the network is back"
        );
        policy.try_now();
        let waits: Vec<_> = std::iter::from_fn(|| policy.replace_after()).collect();
        assert_eq!(
            waits,
            [QUICK_RETRY, QUICK_RETRY * 2, QUICK_RETRY * 4],
            "three quick replacements, then attempts run their course"
        );
        // A long path waits four of its round trips, never longer than an
        // attempt may take.
        let mut far = policy.clone().with_rtt(Some(Duration::from_millis(600)));
        far.try_now();
        assert_eq!(far.replace_after(), Some(Duration::from_millis(2400)));
        assert_eq!(far.replace_after(), Some(Duration::from_millis(4800)));
        assert_eq!(far.replace_after(), Some(Duration::from_millis(9600)));
        assert_eq!(far.replace_after(), None);
    }
}
