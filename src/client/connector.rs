//! How the client reaches its relay: over TCP+TLS, over QUIC, or both raced
//! (`auto`, the default).
//!
//! `auto` is Happy Eyeballs for transports: QUIC starts first, TCP follows
//! after `QUIC_HEAD_START`, and whichever completes its handshake first
//! carries the session. It runs at the first connection and at every
//! reconnect. TCP winning a race is no evidence that UDP is blocked (right
//! after an outage, or under load, QUIC's first packets are often just
//! slower): a session that lands on TCP probes QUIC in the background and
//! moves onto it when it answers (see `back_to_quic.rs`). Only a QUIC
//! probe that hears nothing for `UDP_PROBE_TIME` while TCP works marks UDP
//! as blocked on the way to this relay; QUIC is then left alone for a
//! while — by this client, and by the next ones too — and tried again with
//! backoff, from a few seconds after the first such judgement to ten
//! minutes after many in a row (see [`crate::client::udp_memory`]).
//!
//! Once the session is open, the relay has said where it lives in its fleet
//! ([`Home`]): every reconnect names that instance as TLS SNI (over TCP the
//! balancer routes by it), and QUIC goes where the relay said — where the
//! session was opened, the instance's own address, or nowhere (TCP only,
//! whatever the choice).

use super::transport_plan::{plan, retry_at, Plan, TransportChoice};
use super::udp_memory::{self, Blocked};
use crate::locks::lock;
use crate::proto::fleet::{Home, InstanceName};
use crate::proto::reconnect::NotServed;
use crate::transport::quic::{self, QuicClient};
use crate::transport::{ConnectError, QuicError, Transport, TransportKind};
use crate::units::{format_duration, host_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// How long QUIC runs alone before TCP joins the race.
pub(crate) const QUIC_HEAD_START: Duration = Duration::from_millis(250);
/// How long QUIC must hear nothing, while TCP works, for UDP to count as
/// blocked.
pub(crate) const UDP_PROBE_TIME: Duration = Duration::from_secs(3);
/// After TCP failed outright (refused, unreachable), how much longer QUIC
/// alone is waited for: a host that refuses TCP on the relay's port rarely
/// runs a relay on its UDP port.
const QUIC_AFTER_TCP_FAILED: Duration = Duration::from_secs(1);

/// Where an open session's reconnects go.
#[derive(Debug, Clone)]
struct Way {
    /// The instance that holds the session: named as SNI.
    instance: InstanceName,
    /// Where QUIC reconnects go; `None`: over TCP only.
    quic: Option<SocketAddr>,
}

/// Connects the client to its relay, again and again.
pub(crate) struct Connector {
    choice: TransportChoice,
    host: String,
    port: u16,
    dead_after: Duration,
    /// When UDP was last found blocked, and how many times in a row.
    udp_blocked: Mutex<Option<Blocked<Instant>>>,
    /// Where other clients learn of it, and this one learned from them.
    memory: Option<PathBuf>,
    /// The QUIC endpoint, made at the first QUIC attempt, and the task that
    /// moves it when the local address changes.
    quic: Mutex<Option<(QuicClient, SocketAddr, AbortHandle)>>,
    /// When the latest TCP connection attempt ended, and whether (and how)
    /// it found nothing serving the relay's port.
    last_tcp: Mutex<Option<(Instant, Option<NotServed>)>>,
    /// Once the session is open: where its reconnects go.
    way: Mutex<Option<Way>>,
    /// The largest TCP segment new connections ask for (see
    /// [`crate::proto::segment_size`]); `None`: the system's own.
    max_segment: Mutex<Option<u32>>,
    /// The session's last word went out over QUIC without the relay
    /// acknowledging it in time (see [`Connector::linger`]).
    close_unconfirmed: AtomicBool,
}

impl Connector {
    /// A connector to the relay at `host:port`; QUIC connections give up on
    /// a path silent for `dead_after`. With `memory` (a
    /// [`udp_memory`] file), what one client learns of UDP to this relay,
    /// the next ones know.
    pub fn new(
        choice: TransportChoice,
        host: &str,
        port: u16,
        dead_after: Duration,
        memory: Option<PathBuf>,
    ) -> Connector {
        let connector = Connector {
            choice,
            host: host.to_owned(),
            port,
            dead_after,
            udp_blocked: Mutex::new(None),
            memory,
            quic: Mutex::new(None),
            last_tcp: Mutex::new(None),
            way: Mutex::new(None),
            max_segment: Mutex::new(None),
            close_unconfirmed: AtomicBool::new(false),
        };
        if choice == TransportChoice::Auto {
            if let Some(path) = &connector.memory {
                let text = udp_memory::read(path);
                let relay = connector.relay();
                let ago = udp_memory::failed_ago(&text, &relay, udp_memory::unix_now());
                if let Some(ago) = ago {
                    tracing::debug!(
                        "UDP to {relay} was found blocked {} ago ({} in a row)",
                        format_duration(ago.at),
                        ago.streak
                    );
                }
                *lock(&connector.udp_blocked) = ago.and_then(|ago| {
                    Some(Blocked {
                        at: Instant::now().checked_sub(ago.at)?,
                        streak: ago.streak,
                    })
                });
            }
        }
        connector
    }

    /// The session is open at `home`, at the relay address `opened_at`:
    /// from now on every connection names its instance, and QUIC goes
    /// where its route says.
    pub(crate) fn settle(&self, home: &Home, opened_at: SocketAddr) {
        let quic = home.quic.reconnect_to(opened_at);
        tracing::debug!(
            "the session lives on instance {}; QUIC reconnects: {}",
            home.instance,
            quic.map_or_else(|| "none".to_owned(), |addr| addr.to_string())
        );
        *lock(&self.way) = Some(Way {
            instance: home.instance.clone(),
            quic,
        });
    }

    /// New TCP connections ask for segments of at most `mss` bytes (`None`:
    /// the system's own size).
    pub(crate) fn limit_segments(&self, mss: Option<u32>) {
        *lock(&self.max_segment) = mss;
    }

    /// A QUIC connection reached another instance than the session's (a
    /// UDP balancer cannot route by name): from now on the session comes
    /// back over TCP only, where the balancer can.
    pub(crate) fn quic_astray(&self) {
        if let Some(way) = lock(&self.way).as_mut() {
            if way.quic.take().is_some() {
                tracing::debug!(
                    "QUIC reached another instance than {}: reconnecting over TCP only",
                    way.instance
                );
            }
        }
    }

    /// Whether the session may come back over QUIC (before it is open: yes).
    fn quic_allowed(&self) -> bool {
        lock(&self.way)
            .as_ref()
            .is_none_or(|way| way.quic.is_some())
    }

    /// The instance a connection names, once the session is open.
    fn instance(&self) -> Option<InstanceName> {
        lock(&self.way).as_ref().map(|way| way.instance.clone())
    }

    /// The relay as the memory file names it.
    fn relay(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// Records whether UDP worked (QUIC won) or not (TCP won), here and in
    /// the memory file.
    fn remember(&self, udp_works: bool) {
        let streak = {
            let mut blocked = lock(&self.udp_blocked);
            let before = blocked.take();
            if udp_works && before.is_none() {
                // Nothing was remembered, so there is nothing to forget.
                return;
            }
            let streak = before.map_or(0, |b| b.streak).saturating_add(1);
            *blocked = (!udp_works).then(|| Blocked {
                at: Instant::now(),
                streak,
            });
            streak
        };
        let Some(path) = &self.memory else { return };
        let now = udp_memory::unix_now();
        let text = udp_memory::read(path);
        let blocked = (!udp_works).then_some(Blocked { at: now, streak });
        let text = udp_memory::updated(&text, &self.relay(), blocked, now);
        udp_memory::write(path, &text);
    }

    /// When a session on TCP should next probe QUIC: `None` unless the
    /// choice is `auto`; now if UDP is not known to be blocked, else when
    /// that knowledge expires.
    pub(crate) fn quic_probe_at(&self, now: Instant) -> Option<Instant> {
        if self.choice != TransportChoice::Auto || !self.quic_allowed() {
            return None;
        }
        Some(match *lock(&self.udp_blocked) {
            Some(blocked) => retry_at(blocked).max(now),
            None => now,
        })
    }

    /// Probes QUIC for a session running over TCP: QUIC attempts, one after
    /// another, for up to [`UDP_PROBE_TIME`]. A QUIC transport that answers
    /// is returned (and UDP remembered as working once the session moved
    /// onto it, see [`Connector::udp_works`]); one that never hears back
    /// marks UDP as blocked. Other failures (the relay answered, and
    /// refused) mark nothing.
    pub(crate) async fn probe_quic(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Transport, ConnectError> {
        let deadline = tokio::time::Instant::now() + UDP_PROBE_TIME;
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, self.connect_quic(Arc::clone(&tls))).await;
            match attempt {
                Ok(Ok(transport)) => return Ok(transport),
                Ok(Err(e)) if e.is_quic_unanswered() && tokio::time::Instant::now() < deadline => {
                    // quinn gave up after the dead-peer interval: go on
                    // listening until the probe's time is over.
                }
                Ok(Err(e)) if e.is_quic_unanswered() => {
                    self.udp_blocked();
                    return Err(e);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.udp_blocked();
                    return Err(quic_timed_out(UDP_PROBE_TIME));
                }
            }
        }
    }

    /// QUIC carries a session: UDP to this relay works.
    pub(crate) fn udp_works(&self) {
        self.remember(true);
    }

    /// QUIC heard nothing while TCP worked: UDP is blocked on the way.
    fn udp_blocked(&self) {
        self.remember(false);
        if let Some(blocked) = *lock(&self.udp_blocked) {
            tracing::debug!(
                "QUIC heard nothing for {} while TCP works: using only TCP for {}",
                format_duration(UDP_PROBE_TIME),
                format_duration(udp_memory::retry_after(blocked.streak))
            );
        }
    }

    /// One connection to the relay, with its transport's handshake done,
    /// within `timeout`.
    pub async fn connect(
        &self,
        timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Transport, ConnectError> {
        let udp_blocked = *lock(&self.udp_blocked);
        match plan(
            self.choice,
            udp_blocked,
            Instant::now(),
            self.quic_allowed(),
        ) {
            Plan::Tcp => self.connect_tcp(timeout, tls).await,
            Plan::Quic => tokio::time::timeout(timeout, self.connect_quic(tls))
                .await
                .unwrap_or_else(|_| Err(quic_timed_out(timeout))),
            Plan::Race => self.race(timeout, tls).await,
        }
    }

    async fn connect_tcp(
        &self,
        timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Transport, ConnectError> {
        let instance = self.instance();
        let max_segment = *lock(&self.max_segment);
        let result = crate::transport::tls::connect(
            &self.host,
            self.port,
            timeout,
            tls,
            instance.as_ref(),
            max_segment,
        )
        .await;
        let not_served = result.as_ref().err().and_then(not_served);
        *lock(&self.last_tcp) = Some((Instant::now(), not_served));
        result
    }

    /// Whether the latest TCP attempt, made since `since`, found nothing
    /// serving the relay's port, and how. (With `auto`, an attempt cut
    /// short while QUIC was still given its chance knows this too.)
    pub(crate) fn tcp_not_served_since(&self, since: Instant) -> Option<NotServed> {
        match *lock(&self.last_tcp) {
            Some((at, not_served)) if at >= since => not_served,
            _ => None,
        }
    }

    /// Since when the relay's host has said that nothing listens on its UDP
    /// port, with nothing heard from it since (see
    /// [`PortEvidence`](crate::proto::reconnect::PortEvidence)).
    pub(crate) fn udp_unreachable_since(&self) -> Option<Instant> {
        lock(&self.quic)
            .as_ref()
            .and_then(|(client, _, _)| client.heard().unreachable_since())
    }

    /// A QUIC connection: to the relay's name at first, then where the
    /// session's route says.
    async fn connect_quic(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Transport, ConnectError> {
        let way = lock(&self.way).clone();
        let addr = match way.as_ref().and_then(|way| way.quic) {
            Some(addr) => addr,
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| ConnectError::Quic(QuicError::Lookup(e)))?
                .next()
                .ok_or_else(|| ConnectError::Quic(QuicError::NoAddress(self.host.clone())))?,
        };
        let client = self.quic_client(addr)?;
        let instance = way.map(|way| way.instance);
        client
            .connect(addr, tls, self.dead_after, instance.as_ref())
            .await
    }

    /// The QUIC endpoint for `relay`, made (with its address follower) on
    /// first use or when the relay's address changed.
    fn quic_client(&self, relay: SocketAddr) -> Result<QuicClient, ConnectError> {
        let mut quic = lock(&self.quic);
        if let Some((client, addr, _)) = quic.as_ref() {
            if *addr == relay {
                return Ok(client.clone());
            }
        }
        let client =
            QuicClient::new(relay).map_err(|e| ConnectError::Quic(QuicError::Endpoint(e)))?;
        let follower = tokio::spawn(quic::follow_local_address(client.clone(), relay));
        if let Some((_, _, old)) = quic.replace((client.clone(), relay, follower.abort_handle())) {
            old.abort();
        }
        Ok(client)
    }

    /// QUIC first, TCP after [`QUIC_HEAD_START`]; the first to connect wins.
    async fn race(
        &self,
        timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Transport, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut quic = pin!(tokio::time::timeout_at(
            deadline,
            self.connect_quic(Arc::clone(&tls))
        ));
        let mut tcp = pin!(async {
            tokio::time::sleep(QUIC_HEAD_START.min(timeout)).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.connect_tcp(left, tls).await
        });
        let mut quic_failed: Option<ConnectError> = None;
        let mut tcp_failed: Option<ConnectError> = None;
        // Once TCP has failed, QUIC gets only a little longer.
        let mut quic_cutoff = pin!(tokio::time::sleep_until(deadline));
        loop {
            tokio::select! {
                result = &mut quic, if quic_failed.is_none() => {
                    match result.unwrap_or_else(|_| Err(quic_timed_out(timeout))) {
                        Ok(transport) => {
                            self.remember(true);
                            return Ok(transport);
                        }
                        Err(e) => {
                            tracing::debug!("QUIC attempt failed: {e}");
                            if let Some(tcp_error) = tcp_failed {
                                return Err(tcp_error);
                            }
                            quic_failed = Some(e);
                        }
                    }
                }
                result = &mut tcp, if tcp_failed.is_none() => match result {
                    Ok(transport) => {
                        // No evidence about UDP: QUIC may only be slower
                        // (its first packets lost, right after an outage).
                        // The session probes it in the background.
                        tracing::debug!("TCP connected before QUIC");
                        return Ok(transport);
                    }
                    Err(e) => {
                        if quic_failed.is_some() {
                            return Err(e);
                        }
                        tracing::debug!("TCP attempt failed: {e}; waiting a moment for QUIC");
                        let cutoff = tokio::time::Instant::now() + QUIC_AFTER_TCP_FAILED;
                        quic_cutoff.as_mut().reset(cutoff.min(deadline));
                        tcp_failed = Some(e);
                    }
                },
                () = &mut quic_cutoff, if tcp_failed.is_some() => {
                    return Err(tcp_failed.unwrap_or_else(|| quic_timed_out(timeout)));
                }
            }
        }
    }
}

impl Connector {
    /// The session was closed over `transport`; `acknowledged` says whether
    /// the relay acknowledged the close in time.
    pub(crate) fn closed(&self, transport: &Transport, acknowledged: bool) {
        if transport.kind == TransportKind::Quic && !acknowledged {
            self.close_unconfirmed.store(true, Ordering::Relaxed);
        }
    }

    /// Before the process exits: if a close over QUIC went unacknowledged,
    /// keeps the QUIC endpoint for up to [`quic::CLIENT_LINGER`], which
    /// sends the close again to every packet the relay still sends (as a
    /// TCP socket's close goes on in the kernel after its process exited).
    pub(crate) async fn linger(&self) {
        if !self.close_unconfirmed.load(Ordering::Relaxed) {
            return;
        }
        let client = lock(&self.quic)
            .as_ref()
            .map(|(client, _, _)| client.clone());
        if let Some(client) = client {
            tracing::debug!("the relay did not acknowledge the close yet: lingering");
            client.linger(quic::CLIENT_LINGER).await;
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some((_, _, follower)) = lock(&self.quic).take() {
            follower.abort();
        }
    }
}

/// Whether a connection that failed found nothing serving the relay's
/// port, and how: refused, or accepted and then closed (or reset) before
/// its TLS handshake was done, without a TLS alert.
pub(super) fn not_served(e: &ConnectError) -> Option<NotServed> {
    use std::io::ErrorKind;
    match e {
        ConnectError::Tcp(io) if io.kind() == ErrorKind::ConnectionRefused => {
            Some(NotServed::Refused)
        }
        ConnectError::Tls(io)
            if e.tls_error().is_none()
                && matches!(
                    io.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
        {
            Some(NotServed::ClosedAtOnce)
        }
        _ => None,
    }
}

fn quic_timed_out(timeout: Duration) -> ConnectError {
    ConnectError::Quic(QuicError::TimedOut(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_relays_word_decides_where_reconnects_go() {
        use crate::proto::fleet::QuicRoute;
        let connector = Connector::new(
            TransportChoice::Auto,
            "bastion.example",
            7022,
            Duration::from_secs(5),
            None,
        );
        let now = Instant::now();
        assert!(connector.quic_allowed(), "before the session opens");
        assert_eq!(connector.instance(), None);
        assert_eq!(connector.quic_probe_at(now), Some(now));
        let opened_at: SocketAddr = "192.0.2.1:7022".parse().unwrap();
        let mut home = Home {
            instance: "relay-2".parse().unwrap(),
            quic: QuicRoute::TcpOnly,
        };
        connector.settle(&home, opened_at);
        assert_eq!(connector.instance(), Some(home.instance.clone()));
        assert!(!connector.quic_allowed());
        assert_eq!(connector.quic_probe_at(now), None, "no probing");
        home.quic = QuicRoute::Direct;
        connector.settle(&home, opened_at);
        assert!(connector.quic_allowed());
        connector.quic_astray();
        assert!(!connector.quic_allowed(), "QUIC reached another instance");
        assert_eq!(connector.quic_probe_at(now), None);
    }
}
