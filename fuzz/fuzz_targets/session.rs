//! The `session` target: see `resumeproxy_fuzz::session` for its input and what it asserts.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| resumeproxy_fuzz::session::run(data));
