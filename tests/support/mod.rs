//! Shared pieces of the end-to-end tests.
//!
//! * [`process`] — child processes: bounded runs, stderr collected line by
//!   line, waiting for progress, process trees and signals.
//! * [`sshd`] — a private OpenSSH server.
//! * [`data`] — test data: seeded pseudo-random bytes and files
//!   (splitmix64), sha256.
//! * [`relay`] — the real `resumeproxyd`, and the `ProxyCommand`, flags and
//!   lines of the real client.
//! * [`netns`] — two network namespaces and the faults of a real network.
//! * [`faults`] — the fault suite's lab and workloads, on top of `netns`.
//! * [`quic_lab`] — many QUIC sessions in the lab, without ssh: the real
//!   relay before an echo target, the real clients piped to the test.
//! * [`security`] — what the security tests share: a paced upload, hostile
//!   connections, refusals.
//! * [`durable`] — the durable relay's tests: a relay binary to upgrade,
//!   worker kills, resume times.
//! * [`systemd`] — systemd's side of the notify and descriptor store
//!   protocol.
//! * [`unit`] — the relay's systemd unit, read as systemd reads it.
//! * [`lab`] — tests that need root or a tool: skipped where they cannot
//!   run, failed instead under `RESUMEPROXY_LAB=required`.
//! * [`master`] — an ssh ControlMaster in the fault lab, and commands
//!   multiplexed over it.
//! * [`fleet`] — three relays behind a balancer in the lab: [`haproxy`] or
//!   [`nginx`], each with its shipped configuration.

pub mod data;
pub mod durable;
pub mod faults;
pub mod fleet;
pub mod haproxy;
pub mod lab;
pub mod master;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod quic_lab;
pub mod relay;
pub mod security;
pub mod sshd;
pub mod systemd;
pub mod unit;
