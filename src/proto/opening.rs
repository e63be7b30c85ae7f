//! When the client tries again to open a session, and when it stops: pure,
//! like the [`Reconnect`](super::reconnect::Reconnect) policy that takes
//! over once the session is open. The client's open path
//! (`client/open.rs`) and the simulation (`sim/client.rs`) both follow it.
//!
//! Every attempt runs within the connect timeout, counted from the first.
//! An attempt that failed — no answer, a connection that broke, or a
//! refusal that may pass (the relay busy or restarting:
//! [`refusal_may_pass`]) — is tried again after a jittered `Backoff`; the
//! last one starts [`LAST_ATTEMPT`] before the timeout at the latest, and
//! none after. A refusal that will not pass ends the open at once.

use crate::proto::backoff::Backoff;
use crate::proto::reconnect::refusal_may_pass;
use crate::proto::wire::Code;
use std::time::{Duration, Instant};

/// The last attempt at start has at least this long before the connect
/// timeout.
pub const LAST_ATTEMPT: Duration = Duration::from_millis(100);

/// The open's attempts so far, and until when they may run.
#[derive(Debug, Clone)]
pub struct Opening {
    deadline: Instant,
    backoff: Backoff,
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenNext {
    /// Try again at this instant.
    Retry {
        /// When the next attempt starts.
        at: Instant,
    },
    /// The connect timeout is (all but) over: the relay is unreachable.
    GiveUp,
    /// The relay refused the session for good.
    Refused,
}

impl Opening {
    /// An open whose first attempt starts at `started`, all of them within
    /// `connect_timeout`.
    pub fn new(started: Instant, connect_timeout: Duration) -> Opening {
        Opening {
            deadline: started + connect_timeout,
            backoff: Backoff::default(),
        }
    }

    /// When every attempt must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// An attempt failed at `now`: refused with `refused`'s code, or (with
    /// `None`) without an answer. `jitter` in `[0, 1)` spreads the backoff.
    pub fn failed(&mut self, refused: Option<Code>, now: Instant, jitter: f64) -> OpenNext {
        if refused.is_some_and(|code| !refusal_may_pass(code)) {
            return OpenNext::Refused;
        }
        let latest = self.deadline.checked_sub(LAST_ATTEMPT).unwrap_or(now);
        if now >= latest {
            return OpenNext::GiveUp;
        }
        let at = (now + self.backoff.next_delay(jitter)).min(latest);
        OpenNext::Retry { at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_tried_again_until_the_timeout_and_a_refusal_ends_it() {
        let start = Instant::now();
        let mut opening = Opening::new(start, Duration::from_secs(5));
        let Some(OpenNext::Retry { at }) = Some(opening.failed(Some(Code::Busy), start, 0.5))
        else {
            panic!("busy is tried again");
        };
        assert!(at > start && at < start + Duration::from_secs(5));
        assert_eq!(
            opening.failed(Some(Code::TargetRefused), start, 0.5),
            OpenNext::Refused
        );
        let late = start + Duration::from_secs(5) - LAST_ATTEMPT;
        assert_eq!(opening.failed(None, late, 0.5), OpenNext::GiveUp);
        let near = late - Duration::from_millis(1);
        assert_eq!(
            opening.failed(None, near, 0.99),
            OpenNext::Retry { at: late },
            "the last attempt starts before the timeout"
        );
    }
}
