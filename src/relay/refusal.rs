//! Why the relay refuses a client's hello: one variant per reason, each with
//! the [`Code`] the refusal carries. Its words (`Display`) are what the
//! client's user reads and the relay's log says.

use super::shared::CLOSE_TIMEOUT;
use super::target_policy::{Target, TargetRefused};
use crate::link::flush;
use crate::proto::relay_endpoint::Refused;
use crate::proto::wire::Code;
use crate::transport::Transport;
use std::io;
use tokio::io::AsyncWriteExt;

/// A refused hello.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The target is not allowed.
    #[error("{0}")]
    Target(#[from] TargetRefused),
    /// Refused by what the relay is and holds (draining, a limit, a
    /// resume not authorized or out of range): see
    /// [`relay_endpoint`](crate::proto::relay_endpoint).
    #[error("{0}")]
    Relay(#[from] Refused),
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
}

impl Refusal {
    /// The code the refusal carries.
    pub(super) fn code(&self) -> Code {
        match self {
            Refusal::Target(_) => Code::TargetRefused,
            Refusal::NoRecord(_) => Code::Busy,
            Refusal::Relay(refused) => refused.code(),
            Refusal::TargetUnreachable { .. } | Refusal::TargetSilent(_) => Code::TargetUnreachable,
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
