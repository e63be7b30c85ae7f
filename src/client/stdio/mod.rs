//! The client's local end: its own stdin and stdout, as ssh hands them over.
//!
//! [`take`] gives them as async handles, each the platform's way: on Unix
//! the pipes are driven by the reactor in non-blocking mode (`unix.rs`); on
//! Windows, where an anonymous pipe cannot be made non-blocking, each
//! direction has a thread of its own (`threaded.rs`, `windows.rs`).
//!
//! Dropping (or shutting down) the writer closes the pipe behind stdout:
//! that is how ssh learns that the stream from sshd has ended.

#[cfg(any(windows, test))]
mod threaded;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::{take, NonBlockingFdReader, NonBlockingFdWriter, Stdin, Stdout};
#[cfg(windows)]
pub use windows::{take, Stdin, Stdout};
