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

use crate::proto::wire::{SessionId, PROOF_LEN, SECRET_LEN};
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
    fn tracking_stays_bounded() {
        let mut limiter = FailureLimiter::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            limiter.record_failure(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.windows.len() <= MAX_TRACKED);
    }
}
