//! Console events that end the client on Windows: Ctrl-C, Ctrl-Break, the
//! console window closing, logoff, shutdown.
//!
//! Windows gives a process a few seconds after the last three before it
//! ends it; the session's end takes under a second (see the parent module).

use super::EndSignal;
use std::future::Future;
use tokio::signal::windows;

pub(super) fn end_requested() -> impl Future<Output = EndSignal> + Send + 'static {
    let mut ctrl_c = windows::ctrl_c().ok();
    let mut ctrl_break = windows::ctrl_break().ok();
    let mut close = windows::ctrl_close().ok();
    let mut logoff = windows::ctrl_logoff().ok();
    let mut shutdown = windows::ctrl_shutdown().ok();
    async move {
        tokio::select! {
            Some(()) = recv(ctrl_c.as_mut().map(|s| s.recv())) => EndSignal::Interrupt,
            Some(()) = recv(ctrl_break.as_mut().map(|s| s.recv())) => EndSignal::Break,
            Some(()) = recv(close.as_mut().map(|s| s.recv())) => EndSignal::ConsoleClosed,
            Some(()) = recv(logoff.as_mut().map(|s| s.recv())) => EndSignal::Shutdown,
            Some(()) = recv(shutdown.as_mut().map(|s| s.recv())) => EndSignal::Shutdown,
            else => std::future::pending::<EndSignal>().await,
        }
    }
}

/// What `next` gives, if its handler could be installed (else never).
async fn recv<F: Future<Output = Option<()>>>(next: Option<F>) -> Option<()> {
    match next {
        Some(next) => next.await,
        None => std::future::pending().await,
    }
}
