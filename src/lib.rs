//! resumeproxy: SSH connections that survive the network.
//!
//! A transparent resumable proxy under stock OpenSSH. `resumeproxy` (the
//! client, an ssh `ProxyCommand`) and `resumeproxyd` (the relay beside sshd)
//! carry one byte stream each way in sequence-numbered, acknowledged frames
//! over a reconnectable transport; after a break each side replays what the
//! other has not acknowledged, so neither ssh nor sshd ever sees the drop.
//!
//! The five layers of the design (`DESIGN.md` at the repository's root) are
//! five places, and imports point only downwards (`tests/layers.rs` checks it):
//!
//! 1. [`proto`] — the protocol, pure and sans-IO: the wire codec, the session
//!    state machine with its replay buffer, the write queue, backoff, and
//!    the resume proof.
//! 2. [`transport`] — the byte transports a session runs over: TLS 1.3 on
//!    TCP and QUIC, the relay's identity, the client's own addresses.
//! 3. [`link`] — the driver both programs share: it runs a session between
//!    its local end and its current transport, and opens each transport
//!    with the handshake.
//! 4. [`client`] and [`relay`] — the two programs' cores: the client's
//!    open, connected and reconnect phases; the relay's accept path,
//!    session table and session tasks.
//! 5. Front ends — [`cli`] (command lines, config files, logging, `wrap`),
//!    [`demo`] (with the fault injector the tests use too), and the binaries
//!    in `src/bin/`.
//!
//! The relay, and with it the demo, is a Linux program (`relay::durable`
//! keeps its sessions in memfds and systemd's descriptor store); the rest
//! builds wherever the client runs: Linux, macOS, FreeBSD and Windows, with
//! the platform's own code in small modules at the edges.
//!
//! [`units`] (durations, sizes, `host:port`, hex), [`paths`] (per-user
//! directories, whether we are root) and [`locks`] (locks that outlive a
//! panic) are small helpers every layer may use.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
#[cfg(target_os = "linux")]
pub mod demo;
pub mod link;
pub mod locks;
pub mod paths;
pub mod proto;
#[cfg(target_os = "linux")]
pub mod relay;
pub mod transport;
pub mod units;
