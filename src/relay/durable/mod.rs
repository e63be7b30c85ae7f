//! What outlives the relay's worker process.
//!
//! A restart, an upgrade or a crash of the worker must not end a session.
//! Its sockets (the listeners, every connection to sshd) are kept by
//! systemd's file descriptor store or, without systemd, by the keeper
//! process ([`keeper`]) that speaks the same protocol ([`fd_store`]); what
//! the worker read from and wrote to sshd is read back from the kernel's
//! own counters ([`tcp_counters`]).

pub mod crash;
pub mod fd_store;
pub mod keeper;
pub mod mapping;
pub mod record;
pub mod tcp_counters;
