//! Authenticated resume: how a client proves it owns a session, and how the
//! relay keeps guessers from trying often.
//!
//! The relay gives each new session an unguessable id and a secret, inside
//! TLS. A resume carries not the secret but a proof: an HMAC-SHA256, keyed
//! with the secret, of the session id and the new connection's
//! channel binding: a value of [`BINDING_LEN`] bytes that both ends of one
//! connection derive from its keys (the transport layer exports it, from
//! TLS or QUIC alike). The relay computes the same and compares in constant
//! time. A proof seen on one connection is worthless on any other, so
//! neither a replay nor a relay-side log can be turned into a resume.
//!
//! [`authorize`] is the relay's whole check of a resume, in its order: an
//! address that failed too often is refused unchecked, then an unknown
//! session, then a wrong proof (which counts as a failure).

use crate::proto::wire::{Code, SessionId, PROOF_LEN, SECRET_LEN};
use crate::units::format_duration;
use ring::hmac;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Length of a connection's channel binding, the value a proof is bound to.
pub const BINDING_LEN: usize = 32;
/// Domain separation for the proof.
const PROOF_CONTEXT: &[u8] = b"resumeproxy resume proof v2";

/// The proof that the holder of `secret` resumes `session` on the connection
/// whose channel binding is `binding`.
pub fn proof(
    secret: &[u8; SECRET_LEN],
    session: &SessionId,
    binding: &[u8; BINDING_LEN],
) -> [u8; PROOF_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(PROOF_CONTEXT);
    context.update(&session.0);
    context.update(binding);
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(context.sign().as_ref());
    out
}

/// Checks a proof in constant time.
pub fn verify(
    secret: &[u8; SECRET_LEN],
    session: &SessionId,
    binding: &[u8; BINDING_LEN],
    proof: &[u8; PROOF_LEN],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut message = Vec::with_capacity(PROOF_CONTEXT.len() + session.0.len() + BINDING_LEN);
    message.extend_from_slice(PROOF_CONTEXT);
    message.extend_from_slice(&session.0);
    message.extend_from_slice(binding);
    hmac::verify(&key, &message, proof).is_ok()
}

/// Failed resume attempts allowed per source address per window.
pub const MAX_FAILURES: u32 = 5;
/// The window over which failures are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most source addresses tracked; beyond it the oldest windows are dropped.
const MAX_TRACKED: usize = 4096;

/// What the relay should do with a resume attempt from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check it.
    Check,
    /// Refuse it unchecked: too many failures lately.
    Refuse {
        /// When the address may try again.
        retry_after: Duration,
    },
}

/// Counts failed resume attempts per source address (pure; the caller
/// passes the clock).
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: HashMap<IpAddr, (Instant, u32)>,
}

impl FailureLimiter {
    /// Whether an attempt from `addr` may be checked now.
    pub fn verdict(&self, addr: IpAddr, now: Instant) -> Verdict {
        match self.windows.get(&addr) {
            Some(&(start, count)) if count >= MAX_FAILURES => {
                let ends = start + FAILURE_WINDOW;
                if now < ends {
                    Verdict::Refuse {
                        retry_after: ends - now,
                    }
                } else {
                    Verdict::Check
                }
            }
            _ => Verdict::Check,
        }
    }

    /// Records a failed attempt from `addr`; returns the count in the
    /// current window (the caller logs the first few, then one line that
    /// further failures are refused).
    pub fn record_failure(&mut self, addr: IpAddr, now: Instant) -> u32 {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&addr) {
            self.windows
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
            if self.windows.len() >= MAX_TRACKED {
                // Still full of live windows: forget the oldest.
                if let Some(oldest) = self
                    .windows
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(a, _)| *a)
                {
                    self.windows.remove(&oldest);
                }
            }
        }
        let entry = self.windows.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1
    }
}

/// Why the relay refuses a resume before it reaches the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// The source address failed too often lately; refused unchecked.
    #[error("too many failed resume attempts from {ip}; try again in {}", format_duration(*.retry_after))]
    Throttled {
        /// The source address.
        ip: IpAddr,
        /// When it may try again.
        retry_after: Duration,
    },
    /// The relay holds no such session.
    #[error("no such session on this relay: it expired after its grace period, or the relay was restarted")]
    UnknownSession,
    /// The proof does not match the session's secret and this connection.
    #[error("wrong session proof")]
    BadProof {
        /// Failures from this address in the current window, this one
        /// included (the relay logs the first few).
        failures: u32,
    },
}

impl ResumeRefused {
    /// The code the refusal carries.
    pub fn code(&self) -> Code {
        match self {
            ResumeRefused::Throttled { .. } => Code::Busy,
            ResumeRefused::UnknownSession => Code::UnknownSession,
            ResumeRefused::BadProof { .. } => Code::BadProof,
        }
    }
}

/// The relay's check of a resume of `session` from `ip` on the connection
/// whose channel binding is `binding`: `secret` is the session's, if the
/// relay holds it. A wrong proof is recorded in `limiter`.
pub fn authorize(
    limiter: &mut FailureLimiter,
    ip: IpAddr,
    now: Instant,
    secret: Option<&[u8; SECRET_LEN]>,
    session: &SessionId,
    binding: &[u8; BINDING_LEN],
    proof: &[u8; PROOF_LEN],
) -> Result<(), ResumeRefused> {
    if let Verdict::Refuse { retry_after } = limiter.verdict(ip, now) {
        return Err(ResumeRefused::Throttled { ip, retry_after });
    }
    let secret = secret.ok_or(ResumeRefused::UnknownSession)?;
    if !verify(secret, session, binding, proof) {
        let failures = limiter.record_failure(ip, now);
        return Err(ResumeRefused::BadProof { failures });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_for_its_secret_session_and_connection() {
        let secret = [7u8; SECRET_LEN];
        let session = SessionId([1; 16]);
        let binding = [9u8; BINDING_LEN];
        let p = proof(&secret, &session, &binding);
        assert!(verify(&secret, &session, &binding, &p));
        assert!(!verify(&[8; SECRET_LEN], &session, &binding, &p));
        assert!(!verify(&secret, &SessionId([2; 16]), &binding, &p));
        assert!(
            !verify(&secret, &session, &[0; BINDING_LEN], &p),
            "replayed on another connection"
        );
        let mut flipped = p;
        flipped[31] ^= 1;
        assert!(!verify(&secret, &session, &binding, &flipped));
    }

    #[test]
    fn failures_are_limited_per_address_and_window() {
        let mut limiter = FailureLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for n in 1..=MAX_FAILURES {
            assert_eq!(limiter.verdict(a, t0), Verdict::Check);
            assert_eq!(limiter.record_failure(a, t0), n);
        }
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            limiter.verdict(a, later),
            Verdict::Refuse {
                retry_after: FAILURE_WINDOW - Duration::from_secs(10)
            }
        );
        assert_eq!(limiter.verdict(b, later), Verdict::Check);
        assert_eq!(limiter.verdict(a, t0 + FAILURE_WINDOW), Verdict::Check);
        assert_eq!(limiter.record_failure(a, t0 + FAILURE_WINDOW), 1);
    }

    #[test]
    fn a_resume_is_throttled_then_looked_up_then_proven() {
        let mut limiter = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let secret = [7u8; SECRET_LEN];
        let session = SessionId([1; 16]);
        let binding = [9u8; BINDING_LEN];
        let good = proof(&secret, &session, &binding);
        let check = |limiter: &mut FailureLimiter, secret, proof| {
            authorize(limiter, ip, now, secret, &session, &binding, proof)
        };
        assert_eq!(check(&mut limiter, Some(&secret), &good), Ok(()));
        assert_eq!(
            check(&mut limiter, None, &good),
            Err(ResumeRefused::UnknownSession)
        );
        for failures in 1..=MAX_FAILURES {
            let refused = check(&mut limiter, Some(&secret), &[0; PROOF_LEN]);
            assert_eq!(refused, Err(ResumeRefused::BadProof { failures }));
        }
        let refused = check(&mut limiter, Some(&secret), &good).unwrap_err();
        assert_eq!(refused.code(), Code::Busy);
        assert!(
            refused
                .to_string()
                .starts_with("too many failed resume attempts from 192.0.2.1; try again in"),
            "{refused}"
        );
    }

    #[test]
    fn tracking_stays_bounded() {
        let mut limiter = FailureLimiter::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            limiter.record_failure(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.windows.len() <= MAX_TRACKED);
    }
}
