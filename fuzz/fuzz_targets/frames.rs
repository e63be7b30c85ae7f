//! The `frames` target: see `resumeproxy_fuzz::frames` for its input and what it asserts.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| resumeproxy_fuzz::frames::run(data));
