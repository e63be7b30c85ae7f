//! The protocol, pure: no sockets, no tasks, no clock of its own.
//!
//! Everything here takes its inputs (bytes, frames, the time) as arguments
//! and returns what should happen, so it is property-tested and fuzzed
//! without a network. The layers above move the bytes.
//!
//! * [`wire`] — the codec: frames and handshake messages to and from bytes.
//! * [`session`] (with `replay.rs`) — the state machine of one resumable
//!   session: offsets, replay buffer, acks, end markers, resume positions.
//! * [`connection`] — one transport's protocol: the handshake (preambles,
//!   hello, reply, the relay's answer) and the frames read and written for
//!   a session, with the transport's read buffer and write queue.
//! * `write_queue.rs` — encoded frames waiting for a transport, written with
//!   vectored writes.
//! * [`budget`] — bytes that many owners in a process share (QUIC's send
//!   windows, the replay rings' kept pages).
//! * [`opening`] — when the client tries again to open a session, and
//!   when it stops.
//! * `backoff.rs` — the client's reconnect delays; [`reconnect`] — when
//!   the client attempts a resume and when it gives up, and how long the
//!   relay holds a session whose client is away.
//! * [`relay_endpoint`] — the relay's decisions on a hello: open a
//!   session or refuse it (draining, limits), authorize a resume or send it
//!   to its instance, and attach it (stale, or replacing a live transport).
//! * [`resume_auth`] — the proof that a resume comes from the session's
//!   owner, and the limiter of failed attempts.
//! * [`fleet`] — what a session knows of the fleet its relay is in: the
//!   instance that holds it, and how it comes back over QUIC.
//! * [`proxy_header`] — the PROXY protocol v2 header a balancer in front
//!   of the relay writes to say whose a connection is.
//! * [`segment_size`] — how large the client's TCP segments may be, after a
//!   path that lost large packets.
//! * `sim/` (tests) — the whole protocol simulated: client and relay logic
//!   over in-memory links with a virtual clock, thousands of seeded
//!   schedules of faults, each checking the stream contract.

pub(crate) mod backoff;
pub mod budget;
pub mod connection;
pub mod fleet;
pub mod opening;
pub mod proxy_header;
pub mod reconnect;
pub mod relay_endpoint;
pub(crate) mod replay;
pub mod replay_ring;
pub mod resume_auth;
pub mod segment_size;
pub mod session;
#[cfg(test)]
mod sim;
pub mod wire;
pub(crate) mod write_queue;
