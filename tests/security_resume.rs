//! Security, end to end: resume is authenticated. While a real session
//! streams, a hostile client that knows the live session's full id resumes
//! it with a wrong proof and with a replayed one (a proof the relay really
//! accepted, captured and sent again on another TLS connection): each is
//! refused and logged, the live transport is untouched, and after 5
//! failures the source is refused unchecked (`Busy`) while the real client
//! still resumes. The stream arrives whole (sha256), with exactly the
//! resumes the test caused.
//!
//! How the test learns the live session's id and secret: they never
//! leave TLS, and logs and `resumeproxy status` show only the id's first 8
//! bytes. So the client reaches the relay through a *tap* that holds the
//! relay's private key (the test owns it): an insider, the one place the full
//! id exists outside the two ends. The tap relays the client's own resumes
//! honestly (re-proving them for its leg to the relay, as only a holder of
//! the secret can) and records the proofs the relay accepted; the hostile
//! client is not the tap, and gets only what the tap learned.

mod support;

use anyhow::{Context, Result};
use bytes::BytesMut;
use resumeproxy::demo::fault::FaultInjector;
use resumeproxy::link::handshake;
use resumeproxy::proto::resume_auth;
use resumeproxy::proto::resume_auth::BINDING_LEN;
use resumeproxy::proto::wire::{Code, Hello, Reply, SessionId, PROOF_LEN, SECRET_LEN};
use resumeproxy::transport::identity::RelayKey;
use resumeproxy::transport::tls::{self, PinVerifier};
use resumeproxy::units::hex;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::relay::{proxy_command, test_key, RelayProcess, CLIENT_FLAGS, RESUMED};
use support::security::{
    assert_refused, connect_from, Stream, ATTACKER, ATTACKER_2, EVENT_TIMEOUT,
};
use support::sshd::TestSshd;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the tap learned.
#[derive(Default)]
struct Learned {
    /// The session the client opened, with its secret.
    session: Option<(SessionId, [u8; SECRET_LEN])>,
    /// Resume proofs the tap sent the relay for the client, in order.
    accepted_proofs: Vec<[u8; PROOF_LEN]>,
}

/// An insider between client and relay that holds the relay's key (see the
/// module docs): it terminates the client's TLS, opens its own to the
/// relay, passes the handshake on — re-proving the client's resumes for its
/// own leg — and then copies frames both ways.
struct Tap {
    addr: SocketAddr,
    learned: Arc<Mutex<Learned>>,
    acceptor: JoinHandle<()>,
}

impl Tap {
    async fn start(relay: SocketAddr) -> Result<Tap> {
        let key = RelayKey::load(&test_key().0)?;
        let tls_acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&key)?);
        let upstream = tls::client_config(Arc::new(PinVerifier::new(vec![key.fingerprint()])))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let learned: Arc<Mutex<Learned>> = Arc::default();
        let state = Arc::clone(&learned);
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream, state) = (
                    tls_acceptor.clone(),
                    Arc::clone(&upstream),
                    Arc::clone(&state),
                );
                tokio::spawn(async move {
                    let _ = tap_one(client, relay, acceptor, upstream, state).await;
                });
            }
        });
        Ok(Tap {
            addr,
            learned,
            acceptor,
        })
    }

    fn session(&self) -> Option<(SessionId, [u8; SECRET_LEN])> {
        self.learned.lock().unwrap().session
    }

    fn accepted_proofs(&self) -> Vec<[u8; PROOF_LEN]> {
        self.learned.lock().unwrap().accepted_proofs.clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn tap_one(
    client: TcpStream,
    relay: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<rustls::ClientConfig>,
    learned: Arc<Mutex<Learned>>,
) -> Result<()> {
    let mut down = tls::accept(client, &acceptor).await?;
    let hello = handshake::relay(&mut down).await?;
    let mut up = tls::connect(
        &relay.ip().to_string(),
        relay.port(),
        Duration::from_secs(5),
        upstream,
        None,
        None,
    )
    .await?;
    let hello = match hello {
        Hello::Resume {
            dead_after_ms,
            session,
            proof: _,
            received,
        } => {
            let (_, secret) = learned.lock().unwrap().session.context("unknown session")?;
            let proof = resume_auth::proof(&secret, &session, &up.binding);
            learned.lock().unwrap().accepted_proofs.push(proof);
            Hello::Resume {
                dead_after_ms,
                session,
                proof,
                received,
            }
        }
        new => new,
    };
    let reply = handshake::client(&mut up, &hello).await?;
    if let Reply::Created {
        session, secret, ..
    } = &reply
    {
        learned.lock().unwrap().session = Some((*session, *secret));
    }
    // The relay's answer, passed on as it is: a tap is not a relay.
    let mut answer = BytesMut::new();
    reply.encode(&mut answer);
    down.stream.write_all(&answer).await?;
    // Bytes read past the handshake belong to the session.
    let early = up.connection.take_unread();
    down.stream.write_all(&early).await?;
    let early = down.connection.take_unread();
    up.stream.write_all(&early).await?;
    tokio::io::copy_bidirectional(&mut down.stream, &mut up.stream).await?;
    Ok(())
}

/// A resume of `session` from `source`, with the proof `prove` makes for the
/// new connection's channel binding; returns the relay's answer.
async fn hostile_resume(
    relay: SocketAddr,
    source: IpAddr,
    session: SessionId,
    prove: impl FnOnce(&[u8; BINDING_LEN]) -> [u8; PROOF_LEN],
) -> Result<Reply> {
    let mut transport = connect_from(relay, source).await?;
    let hello = Hello::Resume {
        dead_after_ms: 1000,
        session,
        proof: prove(&transport.binding),
        received: 0,
    };
    let reply =
        tokio::time::timeout(EVENT_TIMEOUT, handshake::client(&mut transport, &hello)).await??;
    Ok(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_replayed_resume_proofs_fail_and_the_real_session_goes_on() -> Result<()> {
    let sshd = TestSshd::start()?;
    let relay = RelayProcess::start(sshd.port(), &[])?;
    let tap = Tap::start(relay.addr()).await?;
    let injector = FaultInjector::start(tap.addr).await?;
    let proxy = proxy_command(injector.addr(), sshd.port(), CLIENT_FLAGS);
    let stream = Stream::start(&sshd, &proxy, &sshd.dir().join("stream.dst")).await?;
    stream
        .wait_for_progress(256 * 1024, EVENT_TIMEOUT)
        .await
        .context("session start")?;
    let (session, secret) = tap.session().context("the tap saw no session")?;
    let started = relay.wait_for_log("session started", Duration::ZERO)?;
    assert!(
        started.contains(&session.to_string()),
        "logs show the id's prefix: {started}"
    );
    assert!(
        !relay.log().contains(&hex(&session.0)),
        "the full session id is not in the relay's log"
    );

    // The real client resumes once, so that there is an accepted proof to
    // replay.
    injector.kill_all();
    relay.wait_for_count("session resumed", 1, EVENT_TIMEOUT)?;
    let accepted = tap.accepted_proofs();
    assert_eq!(accepted.len(), 1, "the client's one resume");
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;

    // A wrong proof, then a replay. A proof is an HMAC keyed with the
    // session's secret over the session id and the channel binding of the
    // TLS connection it travels on, so "replayed" can only mean: the very
    // bytes the relay accepted on one connection, sent again on another.
    // These are those bytes, taken where no one on the path could see them
    // (inside the tap), which is more than an eavesdropper ever gets.
    let reply = hostile_resume(relay.addr(), ATTACKER, session, |_| rand::random()).await?;
    assert_refused(&reply, Code::BadProof, "wrong session proof");
    let replayed = accepted[0];
    let reply = hostile_resume(relay.addr(), ATTACKER, session, |binding| {
        // The relay would take it only on the connection it was made for.
        assert!(!resume_auth::verify(&secret, &session, binding, &replayed));
        replayed
    })
    .await?;
    assert_refused(&reply, Code::BadProof, "wrong session proof");
    // Three more wrong ones use up the source's allowance ...
    for _ in 0..3 {
        let reply = hostile_resume(relay.addr(), ATTACKER, session, |_| rand::random()).await?;
        assert_refused(&reply, Code::BadProof, "wrong session proof");
    }
    relay.wait_for_count("resume refused: wrong proof", 5, EVENT_TIMEOUT)?;
    relay.wait_for_log(
        "further resume attempts from 127.0.0.2 are refused",
        EVENT_TIMEOUT,
    )?;
    // ... after which the source is refused unchecked, even with a proof
    // that would have been right: it is not even looked at.
    let reply = hostile_resume(relay.addr(), ATTACKER, session, |binding| {
        resume_auth::proof(&secret, &session, binding)
    })
    .await?;
    assert_refused(&reply, Code::Busy, "too many failed resume attempts");
    // Another source is still checked.
    let reply = hostile_resume(relay.addr(), ATTACKER_2, session, |_| rand::random()).await?;
    assert_refused(&reply, Code::BadProof, "wrong session proof");

    // The live session never noticed: no loss or resume beyond the test's
    // own break, and still flowing.
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;
    assert_eq!(relay.count("session resumed"), 1, "{}", relay.log());
    assert!(
        relay.count("client lost") <= 1,
        "only the test's own break: {}",
        relay.log()
    );

    // The real client, from its own address, still resumes.
    injector.kill_all();
    relay.wait_for_count("session resumed", 2, EVENT_TIMEOUT)?;
    stream.wait_for_progress(256 * 1024, EVENT_TIMEOUT).await?;

    let stderr = stream.finish().await?;
    assert_eq!(
        stderr.matches(RESUMED).count(),
        2,
        "the client resumed exactly for the two breaks: {stderr}"
    );
    assert_eq!(relay.count("session resumed"), 2, "{}", relay.log());
    relay.wait_for_log("session ended: complete", EVENT_TIMEOUT)?;
    Ok(())
}
