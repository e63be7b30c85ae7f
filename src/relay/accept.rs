//! The accept path: from a connection just accepted to a session served.
//!
//! Completes the transport's own handshake (TLS on TCP, or QUIC), reads the
//! client's hello, and either opens a new session — if the target is
//! allowed and the relay has room — or authenticates a resume and hands the
//! new transport to its session's task. All of it within the handshake
//! timeout; every refusal goes back to the client with a code and a reason.

use super::admission::{Slot, Ticket, SILENT_AFTER};
use super::durable::crash::{self, Point};
use super::durable::record::{Fixed, SessionRecord};
use super::durable::session_name;
use super::durable::tcp_counters::TcpCounters;
use super::session_task::{self, Audit, Start, ATTACH_QUEUE};
use super::table::{Attach, Entry};
use super::target_policy::Target;
use super::{Shared, CLOSE_TIMEOUT, TARGET_CONNECT_TIMEOUT};
use crate::link::handshake::{self, HandshakeError, NOT_A_CLIENT_NOTICE};
use crate::proto::proxy_header;
use crate::proto::resume_auth::{self, Verdict, MAX_FAILURES};
use crate::proto::session::{MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use crate::proto::wire::{Code, Hello, Reply, SessionId, SECRET_LEN, SESSION_ID_LEN};
use crate::transport::{quic, tls, FixedPath, Transport};
use crate::units::format_duration;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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
    #[error("it starts with a PROXY protocol header: if it is your balancer, add its address to proxy_protocol_from")]
    UntrustedProxy,
    #[error("handshake took longer than {}", format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Refused(String),
    /// It sent nothing within [`SILENT_AFTER`], and another connection
    /// needed its place.
    #[error(
        "evicted: it sent nothing within {}, and another connection needed its place",
        format_duration(SILENT_AFTER)
    )]
    Evicted,
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
    if n > 0 && first[0] == proxy_header::SIGNATURE[0] {
        // A balancer's PROXY protocol header, from an address not trusted
        // to send one: the operator's to fix, the client's to hear nothing.
        return Err(AcceptError::UntrustedProxy);
    }
    if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
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

/// A TLS alert record, fatal `user_canceled`: "the handshake is cancelled
/// for a reason that is not a protocol failure". The client reads it as
/// the relay being at a connection limit.
const TURNED_AWAY_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 90];

/// Tells a TCP connection the relay will not take it (a TLS alert) and
/// ends it, without waiting for anything: the caller drops it.
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
    let _ = socket.send(&TURNED_AWAY_ALERT);
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
            let verdict = shared.failures().verdict(ip, Instant::now());
            if let Verdict::Refuse { retry_after } = verdict {
                let reason = format!(
                    "too many failed resume attempts from {ip}; try again in {}",
                    format_duration(retry_after)
                );
                return refuse(&mut transport, Code::Busy, reason).await;
            }
            let found = shared.table.lookup(&session);
            let gone = "no such session on this relay: it expired after its grace period, or the relay was restarted";
            let Some((secret, attach)) = found else {
                return refuse(&mut transport, Code::UnknownSession, gone.into()).await;
            };
            if !resume_auth::verify(&secret, &session, &transport.binding, &proof) {
                let failures = shared.failures().record_failure(ip, Instant::now());
                if failures <= MAX_FAILURES {
                    tracing::warn!(session = %session, client = %peer, "resume refused: wrong proof ({failures} from this address in the last minute)");
                }
                if failures == MAX_FAILURES {
                    tracing::warn!(client = %peer, "further resume attempts from {ip} are refused for a minute");
                }
                return refuse(&mut transport, Code::BadProof, "wrong session proof".into()).await;
            }
            let request = Attach {
                transport,
                peer_received: received,
                dead_after: clamp_dead_after(dead_after_ms),
            };
            if let Err(mpsc::error::SendError(mut request)) = attach.send(request).await {
                // The session ended between the lookup and now.
                return refuse(&mut request.transport, Code::UnknownSession, gone.into()).await;
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
    if config.fleet.draining {
        // Busy: the client tries again, and its balancer sends it elsewhere.
        let reason = format!(
            "this relay (instance {}) is draining: it takes no new sessions",
            config.fleet.instance
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    }
    let target = match config.targets.decide(host, port) {
        Ok(target) => target,
        Err(reason) => return refuse(&mut transport, Code::TargetRefused, reason).await,
    };
    let limits = config.limits;
    if shared.table.len() >= limits.max_sessions {
        let reason = format!(
            "the relay is at its limit of {} sessions (--max-sessions)",
            limits.max_sessions
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    }
    if shared.table.detached() >= limits.max_detached {
        let reason = format!(
            "the relay holds its limit of {} sessions whose clients are away (--max-detached)",
            limits.max_detached
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    }
    let Some(source_mark) = shared
        .table
        .add_source(peer.ip(), limits.max_sessions_per_source)
    else {
        let reason = format!(
            "the relay holds its limit of {} sessions from {} (--max-sessions-per-source)",
            limits.max_sessions_per_source,
            peer.ip()
        );
        return refuse(&mut transport, Code::Busy, reason).await;
    };
    let connect = async {
        match &target {
            Target::Default(addr) => TcpStream::connect(addr).await,
            Target::Named(named) => TcpStream::connect((named.host.as_str(), named.port)).await,
        }
    };
    let sshd = match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(sshd)) => sshd,
        Ok(Err(e)) => {
            let reason = format!("the relay cannot connect to its target {target}: {e}");
            return refuse(&mut transport, Code::TargetUnreachable, reason).await;
        }
        Err(_) => {
            let reason = format!("the relay's target {target} does not answer");
            return refuse(&mut transport, Code::TargetUnreachable, reason).await;
        }
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
            let reason = format!("the relay cannot hold another session now ({e})");
            return refuse(&mut transport, Code::Busy, reason).await;
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
            return Err(AcceptError::Refused(format!("cannot start a session: {e}")));
        }
    };
    let (tx, rx) = mpsc::channel(ATTACH_QUEUE);
    shared.table.insert(session, Entry { secret, attach: tx });
    let reply = Reply::Created {
        session,
        secret,
        grace_ms: config.grace.as_millis().try_into().unwrap_or(u64::MAX),
        max_data,
    };
    if let Err(e) = tokio::time::timeout(
        limits.handshake_timeout,
        handshake::reply(&mut transport, &reply),
    )
    .await
    {
        shared.table.remove(&session);
        discard(&record, shared, &name);
        return Err(AcceptError::Refused(format!("could not answer: {e}")));
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

/// Answers a hello with a refusal (best effort, within [`CLOSE_TIMEOUT`]).
pub(super) async fn refuse(
    transport: &mut Transport,
    code: Code,
    reason: String,
) -> Result<(), AcceptError> {
    let reply = Reply::Refused {
        code,
        reason: reason.clone(),
    };
    let answer = async {
        handshake::reply(transport, &reply).await?;
        // On QUIC, dropping the connection would drop the answer with it.
        transport.stream.shutdown().await?;
        Ok::<_, HandshakeError>(())
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, answer).await;
    Err(AcceptError::Refused(reason))
}
