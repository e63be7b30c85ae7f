//! The `handshake` target: see `resumeproxy_fuzz::handshake` for its input and what it asserts.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| resumeproxy_fuzz::handshake::run(data));
