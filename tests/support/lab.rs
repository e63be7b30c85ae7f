//! Tests that need what a machine may not have: root (network namespaces,
//! dpkg), or a tool (tmux, rsync, HAProxy, strace, cargo-deb).
//!
//! Where one is missing, such a test says why and passes without running
//! — unless `RESUMEPROXY_LAB=required` (CI sets it: `.ci/run`), where it
//! fails instead, so that a green run says every test ran.

#![allow(dead_code)]

/// The variable that makes every lab test required.
pub const LAB_ENV: &str = "RESUMEPROXY_LAB";

/// Whether every lab test must run (`RESUMEPROXY_LAB=required`).
pub fn required() -> bool {
    std::env::var(LAB_ENV).is_ok_and(|v| v == "required")
}

/// A lab test cannot run here, because of `why`: prints it and returns
/// (the caller then passes without running), or, when lab tests are
/// [`required`], fails the test.
pub fn cannot_run(why: &str) {
    assert!(
        !required(),
        "this test cannot run here ({why}), and {LAB_ENV}=required"
    );
    eprintln!("skipping: {why} (set {LAB_ENV}=required to make this a failure)");
}

/// Part of a lab test cannot run here (`what` is not checked): prints it
/// (the test goes on with the rest), or, when lab tests are [`required`],
/// fails the test.
pub fn cannot_check(what: &str) {
    assert!(
        !required(),
        "part of this test cannot run here ({what}), and {LAB_ENV}=required"
    );
    eprintln!("not checked here: {what} (set {LAB_ENV}=required to make this a failure)");
}
