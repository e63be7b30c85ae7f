//! resumeproxy: SSH connections that survive the network.
//!
//! A transparent resumable proxy under stock OpenSSH. `resumeproxy` (the
//! client, an ssh `ProxyCommand`) and `resumeproxyd` (the relay beside sshd)
//! carry one byte stream each way in sequence-numbered, acknowledged frames
//! over a reconnectable transport; after a break each side replays what the
//! other has not acknowledged, so neither ssh nor sshd ever sees the drop.
//!
//! The modules follow the layers of the design (`DESIGN.md`):
//!
//! 1. [`wire`] — the codec: frames to and from bytes. Pure.
//! 2. [`session`] (with [`replay`]) — the sans-IO state machine: offsets,
//!    replay buffer, acks, end markers, resume.
//! 3. [`transport`] — the byte transports a session can run over (TCP and
//!    [`quic`], chosen by the client's [`connector`]), secured
//!    by [`tls`]: the relay's [`identity`], the client's [`trust`] in it
//!    ([`known_relays`]), and [`resume_auth`] for proving a resume.
//! 4. Drivers — [`link`] runs a session over its local end and current
//!    transport; [`client`] and [`relay`] are the two programs' cores.
//! 5. Front ends — [`cli`], [`demo`], and the binaries in `src/bin/`.

#![warn(missing_docs)]

pub mod addresses;
pub mod admission;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod connector;
pub mod control;
pub mod demo;
pub mod fault;
pub mod handshake;
pub mod identity;
pub mod known_relays;
pub mod link;
pub mod paths;
pub mod quic;
pub mod relay;
pub mod replay;
pub mod resume_auth;
pub mod sd_notify;
pub mod session;
pub mod stdio;
pub mod target_policy;
pub mod tls;
pub mod transport;
pub mod trust;
pub mod udp_memory;
pub mod wire;
pub mod wrap;
pub mod write_queue;
