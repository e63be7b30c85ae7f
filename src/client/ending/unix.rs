//! Signals that end the client on Unix: SIGHUP, SIGTERM, SIGINT.

use super::EndSignal;
use std::future::Future;
use tokio::signal::unix::{signal, Signal, SignalKind};

pub(super) fn end_requested() -> impl Future<Output = EndSignal> + Send + 'static {
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            Some(()) = recv(&mut hangup) => EndSignal::HangUp,
            Some(()) = recv(&mut terminate) => EndSignal::Terminate,
            Some(()) = recv(&mut interrupt) => EndSignal::Interrupt,
            else => std::future::pending::<EndSignal>().await,
        }
    }
}

/// The next signal from `signals`, if its handler could be installed (else
/// never).
async fn recv(signals: &mut Option<Signal>) -> Option<()> {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}
