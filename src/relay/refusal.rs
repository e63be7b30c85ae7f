//! Why the relay refuses a client's hello: one variant per reason, each with
//! the [`Code`] the refusal carries. Its words (`Display`) are what the
//! client's user reads and the relay's log says.

use super::shared::CLOSE_TIMEOUT;
use super::target_policy::{Target, TargetRefused};
use crate::link::flush;
use crate::proto::fleet::{InstanceName, OtherInstance};
use crate::proto::resume_auth::ResumeRefused;
use crate::proto::session::ProtocolError;
use crate::proto::wire::Code;
use crate::transport::Transport;
use std::io;
use std::net::IpAddr;
use tokio::io::AsyncWriteExt;

/// A refused hello.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The target is not allowed.
    #[error("{0}")]
    Target(#[from] TargetRefused),
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
    MaxPerSource { max: usize, address: IpAddr },
    /// The session's record (its memory that outlives the relay's process)
    /// could not be made.
    #[error("the relay cannot hold another session now ({0})")]
    NoRecord(io::Error),
    /// Connecting to the target failed.
    #[error("the relay cannot connect to its target {target}: {error}")]
    TargetUnreachable { target: Target, error: io::Error },
    /// The target did not answer in time.
    #[error("the relay's target {0} does not answer")]
    TargetSilent(Target),
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

impl Refusal {
    /// The code the refusal carries.
    pub(super) fn code(&self) -> Code {
        match self {
            Refusal::Target(_) => Code::TargetRefused,
            Refusal::Draining(_)
            | Refusal::MaxSessions(_)
            | Refusal::MaxDetached(_)
            | Refusal::MaxPerSource { .. }
            | Refusal::NoRecord(_) => Code::Busy,
            Refusal::TargetUnreachable { .. } | Refusal::TargetSilent(_) => Code::TargetUnreachable,
            Refusal::Resume(refused) => refused.code(),
            Refusal::OtherInstance(_) => Code::OtherInstance,
            Refusal::ResumeOutOfRange(_) => Code::Protocol,
        }
    }
}

/// Answers a hello with `refusal` (best effort, within [`CLOSE_TIMEOUT`]),
/// and gives it back.
pub(super) async fn answer(transport: &mut Transport, refusal: Refusal) -> Refusal {
    transport
        .connection
        .refuse(refusal.code(), &refusal.to_string());
    let answer = async {
        flush(transport).await?;
        // On QUIC, dropping the connection would drop the answer with it.
        transport.stream.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, answer).await;
    // On QUIC, the refusal goes in the connection's close too: a client
    // slow to read its stream would otherwise lose it to the close.
    transport.close(refusal.code(), &refusal.to_string());
    refusal
}
