//! The accept path: from a connection just accepted to a session served.
//!
//! Completes the transport's own handshake (TLS on TCP, or QUIC), reads the
//! client's hello, and either opens a new session — if the target is
//! allowed and the relay has room — or authenticates a resume and hands the
//! new transport to its session's task. What to do is decided by
//! [`relay_endpoint`], from the relay's state
//! as plain data; this module does the I/O. All of it within the handshake
//! timeout; every refusal goes back to the client with a code and a reason.

use super::admission::{Admit, Full, Slot, Ticket, SILENT_AFTER};
use super::durable::crash::{self, Point};
use super::durable::record::{Fixed, SessionRecord};
use super::durable::session_name;
use super::durable::tcp_counters::TcpCounters;
use super::refusal::{self, Refusal};
use super::session_task::{self, Audit, Start, ATTACH_QUEUE};
use super::shared::Shared;
use super::table::{Attach, Entry};
use super::target_policy::Target;
use crate::link::flush;
use crate::link::handshake::{self, HandshakeError, NOT_A_CLIENT_NOTICE};
use crate::proto::fleet::Home;
use crate::proto::proxy_header;
use crate::proto::relay_endpoint::{self, Open, Refused, RelayState, ResumeAsk};
use crate::proto::resume_auth::{ResumeRefused, MAX_FAILURES};
use crate::proto::session::{MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::proto::wire::{Hello, SessionId, SECRET_LEN, SESSION_ID_LEN};
use crate::transport::{quic, tls, FixedPath, Transport};
use crate::units::format_duration;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Longest time a connection to the target may take.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A connection in its handshake.
pub(super) enum Incoming {
    Tcp(TcpStream),
    Quic(Box<quinn::Incoming>),
}

/// Why a new connection went nowhere.
#[derive(Debug, thiserror::Error)]
pub(super) enum AcceptError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("QUIC: {0}")]
    Quic(io::Error),
    #[error("not a resumeproxy client (it did not start TLS)")]
    NotTls,
    /// The client closed it before it said anything: the losing half of an
    /// `auto` race, or a connection check.
    #[error("the client closed it before it said anything")]
    GivenUp,
    #[error("it starts with a PROXY protocol header: if it is your balancer, add its address to proxy_protocol_from")]
    UntrustedProxy,
    #[error("handshake took longer than {}", format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Refused(Refusal),
    #[error("cannot start a session: {0}")]
    Start(String),
    #[error("could not answer: {0}")]
    Unanswered(io::Error),
    /// It sent nothing within [`SILENT_AFTER`], and another connection
    /// needed its place.
    #[error(
        "evicted: it sent nothing within {}, and another connection needed its place",
        format_duration(SILENT_AFTER)
    )]
    Evicted,
}

impl AcceptError {
    /// Whether the client gave the connection up before its hello, closing
    /// it without a word: what the losing half of every `auto` race does
    /// (QUIC and TCP are both tried, and the slower one is dropped), so not
    /// worth an operator's attention.
    pub(super) fn given_up(&self) -> bool {
        match self {
            AcceptError::GivenUp => true,
            AcceptError::Tls(e)
            | AcceptError::Quic(e)
            | AcceptError::Handshake(HandshakeError::Io(e)) => dropped_by_peer(e),
            _ => false,
        }
    }
}

/// The peer closed or reset a TCP connection, or closed a QUIC one as
/// quinn does when it is dropped (application code 0, no reason).
fn dropped_by_peer(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    ) {
        return true;
    }
    let Some(inner) = e.get_ref() else {
        return false;
    };
    let closed = match inner.downcast_ref::<quinn::ReadError>() {
        Some(quinn::ReadError::ConnectionLost(lost)) => Some(lost),
        _ => inner.downcast_ref::<quinn::ConnectionError>(),
    };
    matches!(
        closed,
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code.into_inner() == 0 && close.reason.is_empty()
    )
}

/// Where a new connection stands with [admission](super::admission).
pub(super) enum Place {
    /// It holds a place.
    Now(Slot),
    /// It waits in line for one.
    Queued(Ticket),
}

/// Reads one connection's handshake and opens or resumes its session, all
/// within the handshake timeout from `accepted` (time in line included),
/// holding its place until then.
pub(super) async fn accept(
    connection: Incoming,
    peer: SocketAddr,
    place: Place,
    accepted: tokio::time::Instant,
    shared: Arc<Shared>,
) -> Result<(), AcceptError> {
    let limit = shared.config().limits.handshake_timeout;
    let deadline = accepted + limit;
    let handshake = async {
        let slot = match place {
            Place::Now(slot) => slot,
            Place::Queued(ticket) => ticket.wait().await,
        };
        let mut transport = match connection {
            Incoming::Tcp(stream) => accept_tls(stream, peer, &slot, accepted, &shared).await?,
            Incoming::Quic(incoming) => quic::accept(*incoming).await.map_err(AcceptError::Quic)?,
        };
        let hello = handshake::relay(&mut transport).await?;
        Ok::<_, AcceptError>((transport, hello, slot))
    };
    let (transport, hello, _slot) = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| AcceptError::Timeout(limit))??;
    serve(transport, hello, peer, &shared).await
}

/// Completes the TLS handshake of a TCP connection. Until its first byte
/// comes, the connection may lose its place to another (see
/// [`Slot::silent`]).
async fn accept_tls(
    stream: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
    accepted: tokio::time::Instant,
    shared: &Shared,
) -> Result<Transport, AcceptError> {
    let mut first = [0u8; 1];
    let silent_at = accepted + SILENT_AFTER;
    let mut said_silent = false;
    let n = loop {
        tokio::select! {
            biased;
            n = stream.peek(&mut first) => break n.map_err(HandshakeError::from)?,
            () = slot.evicted() => {
                turn_away(&stream);
                return Err(AcceptError::Evicted);
            }
            () = tokio::time::sleep_until(silent_at), if !said_silent => {
                said_silent = true;
                if slot.silent() {
                    turn_away(&stream);
                    return Err(AcceptError::Evicted);
                }
            }
        }
    };
    if !slot.spoke() {
        turn_away(&stream);
        return Err(AcceptError::Evicted);
    }
    if n > 0 && proxy_header::may_start_header(first[0]) {
        // A balancer's PROXY protocol header, from an address not trusted
        // to send one: the operator's to fix, the client's to hear nothing.
        return Err(AcceptError::UntrustedProxy);
    }
    if n == 0 {
        return Err(AcceptError::GivenUp);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        // An ssh client pointed at this port, a scanner: say what this is.
        let mut stream = stream;
        let _ = stream.write_all(NOT_A_CLIENT_NOTICE).await;
        return Err(AcceptError::NotTls);
    }
    let mut transport = tls::accept(stream, &shared.acceptor)
        .await
        .map_err(AcceptError::Tls)?;
    // Behind a balancer that says whose the connection is, the client's.
    if transport.peer != peer {
        transport.peer = peer;
        transport = transport.with_path(FixedPath { peer, local: None });
    }
    Ok(transport)
}

/// Tells a TCP connection the relay will not take it and ends it, without
/// waiting for anything (the caller drops it). What it is told is a TLS
/// alert, fatal `user_canceled`: "the handshake is cancelled for a reason
/// that is not a protocol failure", which the client reads as the relay
/// being at a connection limit.
pub(super) fn turn_away(stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    // Read what already came (its TLS hello): closing a socket with unread
    // bytes resets the connection, and the reset can overtake the alert.
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    for _ in 0..4 {
        match socket.recv(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = socket.send(&tls::plaintext_alert(
        rustls::AlertDescription::UserCanceled,
    ));
    let _ = socket.shutdown(std::net::Shutdown::Write);
}

/// Opens or resumes the session a client's hello asks for.
async fn serve(
    mut transport: Transport,
    hello: Hello,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), AcceptError> {
    match hello {
        Hello::New {
            dead_after_ms,
            host,
            port,
        } => open_session(transport, peer, shared, dead_after_ms, &host, port).await,
        Hello::Resume {
            dead_after_ms,
            session,
            proof,
            received,
        } => {
            let ip = peer.ip();
            let found = shared.table.lookup(&session);
            let ask = ResumeAsk {
                session: &session,
                proof: &proof,
                binding: &transport.binding,
                from: ip,
                server_name: transport.server_name.as_deref(),
            };
            let authorized = relay_endpoint::authorize(
                &shared.config().fleet.instance,
                found.as_ref().map(|(secret, _)| secret),
                &ask,
                &mut shared.failures(),
                Instant::now(),
            );
            if let Err(refused) = authorized {
                if let Refused::Resume(ResumeRefused::BadProof { failures }) = refused {
                    if failures <= MAX_FAILURES {
                        tracing::warn!(session = %session, client = %peer, "resume refused: wrong proof ({failures} from this address in the last minute)");
                    }
                    if failures == MAX_FAILURES {
                        tracing::warn!(client = %peer, "further resume attempts from {ip} are refused for a minute");
                    }
                }
                return refuse(&mut transport, refused.into()).await;
            }
            let gone = || Refused::Resume(ResumeRefused::UnknownSession).into();
            let Some((_, attach)) = found else {
                return refuse(&mut transport, gone()).await;
            };
            let request = Attach {
                transport,
                peer_received: received,
                dead_after: clamp_dead_after(dead_after_ms),
            };
            if let Err(mpsc::error::SendError(mut request)) = attach.send(request).await {
                // The session ended between the lookup and now.
                return refuse(&mut request.transport, gone()).await;
            }
            Ok(())
        }
    }
}

/// Opens a new session to the target a client asked for, if it is allowed
/// and the relay has room.
async fn open_session(
    mut transport: Transport,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    dead_after_ms: u32,
    host: &str,
    port: u16,
) -> Result<(), AcceptError> {
    let config = shared.config();
    let limits = config.limits;
    let state = RelayState {
        instance: &config.fleet.instance,
        draining: config.fleet.draining,
        max_sessions: limits.max_sessions,
        max_detached: limits.max_detached,
        max_sessions_per_source: limits.max_sessions_per_source,
        sessions: shared.table.len(),
        detached: shared.table.detached(),
        from_source: shared.table.opened_from(peer.ip()),
    };
    // Busy when draining: the client tries again, and its balancer sends
    // it elsewhere.
    let target = match relay_endpoint::open(&state, peer.ip(), config.targets.decide(host, port)) {
        Open::Open(target) => target,
        Open::TargetRefused(refused) => return refuse(&mut transport, refused.into()).await,
        Open::Refuse(refused) => return refuse(&mut transport, refused.into()).await,
    };
    // Counted now: another session from this address may have opened since.
    let Some(source_mark) = shared
        .table
        .add_source(peer.ip(), limits.max_sessions_per_source)
    else {
        let refused = Refused::MaxPerSource {
            max: limits.max_sessions_per_source,
            address: peer.ip(),
        };
        return refuse(&mut transport, refused.into()).await;
    };
    let connect = async {
        match &target {
            Target::Default(addr) => TcpStream::connect(addr).await,
            Target::Named(named) => TcpStream::connect((named.host.as_str(), named.port)).await,
        }
    };
    let sshd = match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(sshd)) => sshd,
        Ok(Err(error)) => {
            let refusal = Refusal::TargetUnreachable { target, error };
            return refuse(&mut transport, refusal).await;
        }
        Err(_) => return refuse(&mut transport, Refusal::TargetSilent(target)).await,
    };
    sshd.set_nodelay(true).map_err(HandshakeError::from)?;
    let local_port = sshd.local_addr().map(|a| a.port()).unwrap_or(0);
    let session = SessionId(rand::random::<[u8; SESSION_ID_LEN]>());
    let secret = rand::random::<[u8; SECRET_LEN]>();
    let dead_after = clamp_dead_after(dead_after_ms);
    let max_data = u32::try_from(config.session.max_data_len).unwrap_or(u32::MAX);
    // The session's record, kept with its sshd connection before the
    // client hears of the session: from then on it outlives this process.
    let kept = TcpCounters::of(std::os::fd::AsFd::as_fd(&sshd)).and_then(|counters| {
        let fixed = Fixed {
            id: session,
            secret,
            target: target.to_string(),
            max_data,
            dead_after_ms: u32::try_from(dead_after.as_millis()).unwrap_or(u32::MAX),
            local_port,
            created_unix_ms: unix_millis(),
            base: counters.base(),
        };
        SessionRecord::create(&fixed, config.session.replay_capacity)
    });
    let record = match kept {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(client = %peer, "cannot set up a session's record: {e}");
            return refuse(&mut transport, Refusal::NoRecord(e)).await;
        }
    };
    record.set_client(peer);
    let name = session_name(&session);
    if let Err(e) = shared.store.keep(&name, &[&sshd, record.mapping()]) {
        tracing::warn!(session = %session, "the session could not be kept by {}: {e}; it will not outlive this process", shared.store.keeper());
    }
    record.publish();
    crash::point(Point::SessionPublished);
    let session_config =
        session_task::session_config(&config.session, dead_after, max_data as usize);
    let state = match session_task::new_session(session_config, &record) {
        Ok(state) => state,
        Err(e) => {
            discard(&record, shared, &name);
            return Err(AcceptError::Start(e));
        }
    };
    let (tx, rx) = mpsc::channel(ATTACH_QUEUE);
    shared.table.insert(session, Entry { secret, attach: tx });
    let home = Home {
        instance: config.fleet.instance.clone(),
        quic: config.fleet.quic_route,
    };
    transport
        .connection
        .accept_new(session, secret, config.grace, max_data as usize, home);
    let answered = tokio::time::timeout(limits.handshake_timeout, flush(&mut transport))
        .await
        .unwrap_or_else(|elapsed| Err(io::Error::new(io::ErrorKind::TimedOut, elapsed)));
    if let Err(e) = answered {
        // A client that never heard of the session cannot come back to it.
        shared.table.remove(&session);
        discard(&record, shared, &name);
        return Err(AcceptError::Unanswered(e));
    }
    transport.open_windows();
    let audit = Audit {
        id: session,
        client: peer,
        target: target.to_string(),
        local_port,
        _source: source_mark,
    };
    tracing::info!(
        session = %audit.id, client = %audit.client, target = %audit.target, local_port,
        transport = %transport.kind,
        "session started"
    );
    let task = session_task::run(
        audit,
        sshd,
        record,
        state,
        Start::New(Box::new(transport)),
        Arc::clone(shared),
        rx,
    );
    shared.tasks.spawn(task);
    Ok(())
}

/// Drops a session that never started: its record, and what the
/// supervisor keeps of it.
fn discard(record: &SessionRecord, shared: &Shared, name: &str) {
    record.end();
    shared.store.forget(name);
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The client's dead-peer interval, within the bounds the relay accepts.
fn clamp_dead_after(ms: u32) -> Duration {
    Duration::from_millis(ms.into()).clamp(MIN_DEAD_AFTER, MAX_DEAD_AFTER)
}

/// Answers a hello with a refusal, and fails with it.
async fn refuse(transport: &mut Transport, refusal: Refusal) -> Result<(), AcceptError> {
    Err(AcceptError::Refused(
        refusal::answer(transport, refusal).await,
    ))
}

/// Gives a new connection from `peer` (accepted at `accepted`) a place to
/// run its handshake in, or a place in line, and serves it; or turns it
/// away when even the line is full.
pub(super) fn admit(
    shared: &Arc<Shared>,
    connection: Incoming,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
) {
    let place = match shared.admission.admit(peer.ip()) {
        Ok(Admit::Now(slot) | Admit::Evicted(slot)) => Place::Now(slot),
        Ok(Admit::Queued(ticket)) => Place::Queued(ticket),
        Err(full) => {
            // Turned away at once, with a word the client can read
            // (a TLS alert, QUIC's refusal) and nothing more: nothing
            // about the connection is known yet, and answering must
            // not cost more than it did.
            match connection {
                Incoming::Tcp(stream) => turn_away(&stream),
                Incoming::Quic(incoming) => incoming.refuse(),
            }
            let turned_away = shared.turned_away.fetch_add(1, Ordering::Relaxed) + 1;
            if turned_away.is_power_of_two() {
                let why = match full {
                    Full::Total(n) => {
                        format!("{n} connections waiting for a place to start their handshake (--max-handshakes)")
                    }
                    Full::Source(n) => format!(
                        "{n} handshakes in progress from {} and {n} more waiting (--max-handshakes-per-source)",
                        peer.ip()
                    ),
                };
                tracing::warn!(client = %peer, "connection turned away: {why}; {turned_away} turned away so far");
            }
            return;
        }
    };
    let task_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        let shared = task_shared;
        let stop = shared.stop.clone();
        tokio::select! {
            result = accept(connection, peer, place, accepted, Arc::clone(&shared)) => {
                if result.is_err() {
                    shared.trim.released();
                }
                match result {
                    Ok(()) => {}
                    Err(AcceptError::Evicted) => {
                        let n = shared.evicted.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::info!(client = %peer, "connection evicted: it sent nothing within {}, and another connection needed its place; {n} evicted so far", format_duration(SILENT_AFTER));
                        }
                    }
                    Err(e) if e.given_up() => tracing::debug!(client = %peer, "connection given up: {e}"),
                    Err(e) => tracing::info!(client = %peer, "connection refused: {e}"),
                }
            }
            () = stop.cancelled() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quic_closed(code: u32, reason: &'static [u8]) -> io::Error {
        let close = quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(code),
            reason: bytes::Bytes::from_static(reason),
        };
        quinn::ConnectionError::ApplicationClosed(close).into()
    }

    #[test]
    fn the_losing_half_of_a_race_is_told_from_a_refusal() {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(AcceptError::GivenUp.given_up());
        assert!(AcceptError::Tls(eof()).given_up());
        assert!(AcceptError::Handshake(HandshakeError::Io(eof())).given_up());
        assert!(AcceptError::Quic(quic_closed(0, b"")).given_up());
        let lost = quinn::ReadError::ConnectionLost(match quic_closed(0, b"").into_inner() {
            Some(inner) => *inner
                .downcast::<quinn::ConnectionError>()
                .expect("a QUIC error"),
            None => unreachable!("built with an inner error"),
        });
        assert!(AcceptError::Handshake(HandshakeError::Io(lost.into())).given_up());
        // A close that says something, a timeout, a refusal: the operator's.
        assert!(!AcceptError::Quic(quic_closed(0, b"bye")).given_up());
        assert!(!AcceptError::Quic(quic_closed(7, b"")).given_up());
        assert!(!AcceptError::Timeout(Duration::from_secs(10)).given_up());
        assert!(!AcceptError::NotTls.given_up());
        assert!(!AcceptError::UntrustedProxy.given_up());
    }
}
