//! Every committed seed runs through its harness without failing: the seeds
//! stay valid inputs, and the harnesses' assertions hold on real traffic.

use std::fs;
use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn frames_seeds_pass() {
    replay("frames", resumeproxy_fuzz::frames::run);
}

#[test]
fn handshake_seeds_pass() {
    replay("handshake", resumeproxy_fuzz::handshake::run);
}

#[test]
fn proxy_header_seeds_pass() {
    replay("proxy_header", resumeproxy_fuzz::proxy_header::run);
}

#[test]
fn session_seeds_pass() {
    replay("session", resumeproxy_fuzz::session::run);
}
