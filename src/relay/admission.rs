//! Admission of connections still in their handshake ("unauthenticated"):
//! bounded in total and per source address, so that idle or slow
//! connections (slowloris) from one place cannot starve everyone else —
//! and so that a burst of real clients from one address (a parallel job,
//! an office behind one NAT address) is served rather than turned away.
//!
//! A connection that finds no place is not dropped at once:
//!
//! * if its source is at its limit and holds a connection that has sent
//!   nothing for [`SILENT_AFTER`] (a real client sends its TLS hello at
//!   once), the oldest such connection is evicted and the new one takes its
//!   place ([`Admit::Evicted`]); when the total is full, the oldest silent
//!   connection of any source is;
//! * otherwise it waits in line ([`Admit::Queued`]), as many per source as
//!   may be in their handshake and as many in total; places go to the
//!   longest waiting connection whose source has room, and a connection
//!   that falls silent while others of its source wait gives its place up;
//! * only beyond the line is it turned away ([`Full`]).
//!
//! Places are counted per source address; the session table counts its
//! sessions per source with [`super::source_counts`].

use crate::locks;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A connection that has sent nothing for this long after it was admitted
/// may be evicted for another from its source. A real client sends its TLS
/// hello with the end of TCP's handshake; this leaves room for that hello
/// to be lost and sent again.
pub const SILENT_AFTER: Duration = Duration::from_secs(1);

/// Places for connections in their handshake, and the line for them.
#[derive(Debug)]
pub struct Admission {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    max_total: usize,
    max_per_source: usize,
    /// Places held, over all sources.
    total: usize,
    /// Connections waiting, over all sources.
    waiting: usize,
    /// Ids in order of arrival: the oldest is the smallest.
    next_id: u64,
    sources: HashMap<IpAddr, Source>,
    /// Places whose connection has been silent for [`SILENT_AFTER`], by id.
    silent: BTreeMap<u64, IpAddr>,
}

/// What one source address holds and waits for.
#[derive(Debug, Default)]
struct Source {
    /// Places held, by id (oldest first).
    held: BTreeMap<u64, Held>,
    /// Connections waiting for a place, oldest first.
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Held {
    /// Cancelled when the place is taken from its connection.
    evict: CancellationToken,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Told when the place is granted.
    grant: oneshot::Sender<CancellationToken>,
}

/// Why a connection was turned away: no place, no connection that has
/// been silent to take one from, and the line is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// As many connections wait as may be in their handshake at once.
    Total(usize),
    /// As many from this source address are in their handshake as may be,
    /// and as many wait.
    Source(usize),
}

/// What [`Admission::admit`] gave a new connection.
#[derive(Debug)]
pub enum Admit {
    /// A place, at once.
    Now(Slot),
    /// A place, taken from a connection of that source (or, with every
    /// place held, of any source) that had sent nothing.
    Evicted(Slot),
    /// A place in line.
    Queued(Ticket),
}

/// A connection's place; gives it back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
    evict: CancellationToken,
}

/// A connection's place in line; leaves the line when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
    granted: Option<oneshot::Receiver<CancellationToken>>,
    /// The place went to a [`Slot`]: the ticket has nothing to give back.
    settled: bool,
}

impl Admission {
    /// At most `max_total` handshakes at once, `max_per_source` from any one
    /// address; as many again may wait.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            state: Mutex::new(State {
                max_total,
                max_per_source,
                ..State::default()
            }),
        })
    }

    /// Changes the bounds; places already taken are kept, and waiting
    /// connections that now fit are let in.
    pub fn set_limits(&self, max_total: usize, max_per_source: usize) {
        let mut state = self.state();
        state.max_total = max_total;
        state.max_per_source = max_per_source;
        state.grant_waiting();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        locks::lock(&self.state)
    }

    /// Finds a place for a connection from `source`: at once, by evicting a
    /// silent connection, or in line. `Err` when all of them are full.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admit, Full> {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        let source_full = state.held_by(source) >= state.max_per_source;
        let total_full = state.total >= state.max_total;
        if !source_full && !total_full {
            let evict = state.hold(source, id);
            return Ok(Admit::Now(self.slot(source, id, evict)));
        }
        // The oldest silent connection of this source, or, if only the
        // total is full, of any source.
        let victim = if source_full {
            state.oldest_silent_of(source)
        } else {
            state.silent.first_key_value().map(|(&id, &ip)| (id, ip))
        };
        if let Some((victim, victim_source)) = victim {
            // Its place goes to this connection, not to the line: nobody in
            // line could have had it (a connection that falls silent while
            // one it could make room for waits gives its place up).
            state.take(victim_source, victim);
            let evict = state.hold(source, id);
            return Ok(Admit::Evicted(self.slot(source, id, evict)));
        }
        let (max_total, max_per_source) = (state.max_total, state.max_per_source);
        let line = state.sources.get(&source).map_or(0, |s| s.waiting.len());
        if line >= max_per_source {
            return Err(Full::Source(max_per_source));
        }
        if state.waiting >= max_total {
            return Err(Full::Total(max_total));
        }
        let (grant, granted) = oneshot::channel();
        state
            .sources
            .entry(source)
            .or_default()
            .waiting
            .push_back(Waiter { id, grant });
        state.waiting += 1;
        Ok(Admit::Queued(Ticket {
            admission: Arc::clone(self),
            source,
            id,
            granted: Some(granted),
            settled: false,
        }))
    }

    fn slot(self: &Arc<Self>, source: IpAddr, id: u64, evict: CancellationToken) -> Slot {
        Slot {
            admission: Arc::clone(self),
            source,
            id,
            evict,
        }
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.state().total
    }

    /// Connections waiting for a place.
    pub fn waiting(&self) -> usize {
        self.state().waiting
    }
}

impl State {
    fn held_by(&self, source: IpAddr) -> usize {
        self.sources.get(&source).map_or(0, |s| s.held.len())
    }

    /// Counts a place for `id` from `source`; returns its eviction token.
    fn hold(&mut self, source: IpAddr, id: u64) -> CancellationToken {
        let evict = CancellationToken::new();
        self.sources.entry(source).or_default().held.insert(
            id,
            Held {
                evict: evict.clone(),
            },
        );
        self.total += 1;
        evict
    }

    fn oldest_silent_of(&self, source: IpAddr) -> Option<(u64, IpAddr)> {
        // Silent places are few; those of one source fewer still.
        self.silent
            .iter()
            .find(|(_, &ip)| ip == source)
            .map(|(&id, &ip)| (id, ip))
    }

    /// Frees the place `id` of `source` (if it is still held), cancelling
    /// its token, and lets waiting connections in.
    fn release(&mut self, source: IpAddr, id: u64) {
        if self.take(source, id) {
            self.grant_waiting();
        }
    }

    /// Frees the place `id` of `source`, if it is still held, cancelling
    /// its token; returns whether it was held.
    fn take(&mut self, source: IpAddr, id: u64) -> bool {
        let Some(entry) = self.sources.get_mut(&source) else {
            return false;
        };
        let Some(held) = entry.held.remove(&id) else {
            return false;
        };
        held.evict.cancel();
        self.silent.remove(&id);
        self.total = self.total.saturating_sub(1);
        self.forget_if_idle(source);
        true
    }

    fn forget_if_idle(&mut self, source: IpAddr) {
        if self
            .sources
            .get(&source)
            .is_some_and(|s| s.held.is_empty() && s.waiting.is_empty())
        {
            self.sources.remove(&source);
        }
    }

    /// Gives free places to waiting connections, the longest waiting
    /// first among those whose source has room.
    fn grant_waiting(&mut self) {
        while self.waiting > 0 && self.total < self.max_total {
            let max = self.max_per_source;
            let next = self
                .sources
                .iter()
                .filter(|(_, s)| s.held.len() < max)
                .filter_map(|(&ip, s)| s.waiting.front().map(|w| (w.id, ip)))
                .min();
            let Some((_, source)) = next else { return };
            let Some(waiter) = self
                .sources
                .get_mut(&source)
                .and_then(|s| s.waiting.pop_front())
            else {
                return;
            };
            self.waiting -= 1;
            let evict = self.hold(source, waiter.id);
            if waiter.grant.send(evict).is_err() {
                // It gave up meanwhile (its ticket is being dropped).
                self.sources
                    .get_mut(&source)
                    .and_then(|s| s.held.remove(&waiter.id));
                self.total -= 1;
                self.forget_if_idle(source);
            }
        }
    }

    /// Whether freeing a place of `source` would let a waiting connection in.
    fn would_let_in(&self, source: IpAddr) -> bool {
        if self
            .sources
            .get(&source)
            .is_some_and(|s| !s.waiting.is_empty())
        {
            return true;
        }
        self.total >= self.max_total
            && self.sources.iter().any(|(&ip, s)| {
                ip != source && !s.waiting.is_empty() && s.held.len() < self.max_per_source
            })
    }
}

impl Slot {
    /// Resolves when the place was taken from this connection, which must
    /// then end.
    pub async fn evicted(&self) {
        self.evict.cancelled().await;
    }

    /// Whether the place was taken from this connection.
    #[cfg(test)]
    fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }

    /// The connection has sent nothing for [`SILENT_AFTER`]: its place may
    /// go to another. If a connection is waiting for it, it goes now, and
    /// this returns `true`: the connection must end.
    pub fn silent(&self) -> bool {
        let mut state = self.admission.state();
        let held = state
            .sources
            .get(&self.source)
            .is_some_and(|s| s.held.contains_key(&self.id));
        if !held {
            return true;
        }
        if state.would_let_in(self.source) {
            state.release(self.source, self.id);
            return true;
        }
        state.silent.insert(self.id, self.source);
        false
    }

    /// The connection sent its first bytes: it keeps its place. Returns
    /// `false` if the place was taken from it already.
    pub fn spoke(&self) -> bool {
        let mut state = self.admission.state();
        state.silent.remove(&self.id);
        !self.evict.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.state().release(self.source, self.id);
    }
}

impl Ticket {
    /// Waits for the place (cancel-safe: drop the future and the ticket to
    /// leave the line).
    pub async fn wait(mut self) -> Slot {
        let granted = self.granted.take().expect("a ticket waits once");
        // The sender lives in the line until it sends: a ticket is left
        // only by dropping it.
        let evict = granted.await.unwrap_or_default();
        let slot = Slot {
            admission: Arc::clone(&self.admission),
            source: self.source,
            id: self.id,
            evict,
        };
        // The place is the slot's now; the ticket's drop must not free it.
        self.settled = true;
        slot
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.admission.state();
        let source = self.source;
        let id = self.id;
        let left_line = state.sources.get_mut(&source).and_then(|s| {
            let at = s.waiting.iter().position(|w| w.id == id)?;
            s.waiting.remove(at)
        });
        if left_line.is_some() {
            state.waiting -= 1;
            state.forget_if_idle(source);
        } else {
            // Granted while the ticket was being given up.
            state.release(source, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));

    fn now(admit: Result<Admit, Full>) -> Slot {
        match admit {
            Ok(Admit::Now(slot)) => slot,
            other => panic!("not admitted at once: {other:?}"),
        }
    }

    fn queued(admit: Result<Admit, Full>) -> Ticket {
        match admit {
            Ok(Admit::Queued(ticket)) => ticket,
            other => panic!("not queued: {other:?}"),
        }
    }

    /// The ticket's place, if it was granted; a ticket still in line
    /// leaves it.
    async fn granted(ticket: Ticket) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(20), ticket.wait())
            .await
            .ok()
    }

    #[test]
    fn places_are_bounded_per_source_and_in_total_and_given_back() {
        let admission = Admission::new(3, 2);
        let a1 = now(admission.admit(A));
        let _a2 = now(admission.admit(A));
        let _b1 = now(admission.admit(B));
        assert_eq!(admission.in_progress(), 3);
        drop(a1);
        assert_eq!(admission.in_progress(), 2);
        let _a3 = now(admission.admit(A));
        assert_eq!(admission.in_progress(), 3);
    }

    #[tokio::test]
    async fn a_full_source_queues_and_its_line_is_bounded() {
        let admission = Admission::new(10, 2);
        let a1 = now(admission.admit(A));
        let _a2 = now(admission.admit(A));
        let t1 = queued(admission.admit(A));
        let t2 = queued(admission.admit(A));
        assert_eq!(admission.admit(A).unwrap_err(), Full::Source(2));
        // Another source is not held up by A's line.
        let _b1 = now(admission.admit(B));
        assert_eq!(admission.waiting(), 2);
        // A freed place goes to the first in line, and only it.
        drop(a1);
        assert_eq!(admission.waiting(), 1);
        assert_eq!(admission.in_progress(), 3);
        let a3 = granted(t1).await.expect("the first in line got the place");
        assert!(granted(t2).await.is_none());
        drop(a3);
        assert_eq!(admission.in_progress(), 2, "t2 gave up: its place is free");
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn a_full_total_queues_and_places_go_to_the_longest_waiting_that_fits() {
        let admission = Admission::new(2, 1);
        let a1 = now(admission.admit(A));
        let b1 = now(admission.admit(B));
        // C waits for the total; A waits for its source.
        let tc = queued(admission.admit(C));
        let ta = queued(admission.admit(A));
        // B's place frees: A is still full, so C, though A waits too.
        drop(b1);
        let c1 = granted(tc).await.expect("C let in");
        // A's own place frees: A's line goes next.
        drop(a1);
        let a2 = granted(ta).await.expect("A let in");
        assert_eq!(admission.in_progress(), 2);
        drop((c1, a2));
        assert_eq!(admission.in_progress(), 0);
        assert!(admission.state().sources.is_empty(), "all forgotten");
    }

    #[tokio::test]
    async fn a_silent_connection_is_evicted_for_the_next_from_its_source() {
        let admission = Admission::new(10, 2);
        let a1 = now(admission.admit(A));
        let a2 = now(admission.admit(A));
        // Not yet known to be silent: the next one waits.
        let t = queued(admission.admit(A));
        // a1 falls silent while t waits: it gives its place up at once.
        assert!(a1.silent(), "a1 must end");
        assert!(a1.is_evicted());
        let a3 = granted(t).await.expect("the waiting one got a1's place");
        // a2 falls silent with nobody waiting: it keeps its place until
        // someone from its source needs it.
        assert!(!a2.silent());
        let _b = now(admission.admit(B));
        assert!(!a2.is_evicted(), "another source does not evict it");
        let a4 = match admission.admit(A) {
            Ok(Admit::Evicted(slot)) => slot,
            other => panic!("expected an eviction: {other:?}"),
        };
        assert!(a2.is_evicted());
        assert!(!a2.spoke(), "a late first byte does not win the place back");
        assert!(a3.spoke());
        assert!(!a3.is_evicted());
        drop((a1, a2));
        assert_eq!(admission.in_progress(), 3, "a3, a4 and b");
        drop((a3, a4));
        assert_eq!(admission.in_progress(), 1);
    }

    #[test]
    fn with_every_place_held_the_oldest_silent_of_any_source_goes() {
        let admission = Admission::new(2, 2);
        let a1 = now(admission.admit(A));
        let b1 = now(admission.admit(B));
        assert!(!b1.silent());
        assert!(!a1.silent());
        match admission.admit(C) {
            Ok(Admit::Evicted(_c)) => {}
            other => panic!("expected an eviction: {other:?}"),
        }
        assert!(a1.is_evicted(), "the older silent one");
        assert!(!b1.is_evicted());
    }

    #[test]
    fn a_connection_that_spoke_is_never_evicted() {
        let admission = Admission::new(10, 1);
        let a1 = now(admission.admit(A));
        assert!(!a1.silent());
        assert!(a1.spoke());
        let _t = queued(admission.admit(A));
        assert!(!a1.is_evicted());
        assert_eq!(admission.admit(A).unwrap_err(), Full::Source(1));
    }

    #[tokio::test]
    async fn raising_the_limits_lets_waiting_connections_in() {
        let admission = Admission::new(10, 1);
        let _a1 = now(admission.admit(A));
        let t = queued(admission.admit(A));
        admission.set_limits(10, 2);
        let a2 = granted(t).await;
        assert!(a2.is_some());
        assert_eq!(admission.in_progress(), 2);
    }
}
