//! The `proxy_header` target: see `resumeproxy_fuzz::proxy_header` for its input and what it asserts.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| resumeproxy_fuzz::proxy_header::run(data));
