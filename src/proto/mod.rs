//! The protocol, pure: no sockets, no tasks, no clock of its own.
//!
//! Everything here takes its inputs (bytes, frames, the time) as arguments
//! and returns what should happen, so it is property-tested and fuzzed
//! without a network. The layers above move the bytes.
//!
//! * [`wire`] — the codec: frames and handshake messages to and from bytes.
//! * [`session`] (with `replay.rs`) — the state machine of one resumable
//!   session: offsets, replay buffer, acks, end markers, resume positions.
//! * `write_queue.rs` — encoded frames waiting for a transport, written with
//!   vectored writes.
//! * `backoff.rs` — the client's reconnect delays.
//! * [`resume_auth`] — the proof that a resume comes from the session's
//!   owner, and the limiter of failed attempts.
//! * [`fleet`] — what a session knows of the fleet its relay is in: the
//!   instance that holds it, and how it comes back over QUIC.
//! * [`proxy_header`] — the PROXY protocol v2 header a balancer in front
//!   of the relay writes to say whose a connection is.

pub(crate) mod backoff;
pub mod fleet;
pub mod proxy_header;
pub(crate) mod replay;
pub mod replay_ring;
pub mod resume_auth;
pub mod session;
pub mod wire;
pub(crate) mod write_queue;
