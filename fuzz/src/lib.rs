//! Fuzz harnesses for resumeproxy: the logic behind each `cargo fuzz` target,
//! kept in a library so that the seed writer (`examples/write_seeds.rs`) and
//! the seed replay test (`tests/seeds.rs`) use exactly what the fuzzer runs.
//!
//! * [`frames`] — the frame decoder ([`resumeproxy::proto::wire::split_message_within`]
//!   and [`resumeproxy::proto::wire::Frame::decode`]) in any chunking.
//! * [`handshake`] — preambles, [`resumeproxy::proto::wire::Hello`] and
//!   [`resumeproxy::proto::wire::Reply`], and what the relay does with a hello's
//!   target before it connects anywhere.
//! * [`proxy_header`] — the PROXY protocol header (v1 and v2) a balancer
//!   writes first, read in any chunking as the relay reads it.
//! * [`session`] — the sans-IO [`resumeproxy::proto::session::Session`] driven by a
//!   hostile peer, against a model of what it must do.
//!
//! Each harness panics (a crash for libFuzzer) when a property fails; bad
//! input that the code rejects with an error is not a failure.

#![warn(missing_docs)]

pub mod alloc;
pub mod frames;
pub mod handshake;
pub mod input;
pub mod proxy_header;
pub mod session;
