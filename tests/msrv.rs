//! `rust-version` in Cargo.toml is true: no locked dependency asks for a
//! newer compiler than the one it names.
//!
//! The toolchain of that version cannot be installed here, so it is not
//! built with; what can be checked is checked: every package in Cargo.lock's
//! resolution (for every platform) states the oldest compiler it supports
//! in its own `rust-version`, which `cargo metadata` reports, and the
//! highest of those is the floor. Our own code's use of the standard
//! library is checked against `rust-version` by clippy's `incompatible_msrv`
//! lint, which CI denies with the rest (`cargo clippy -- -D warnings`).

use std::process::Command;

/// `1.88` or `1.88.0` as numbers (major, minor, patch).
fn version(text: &str) -> [u32; 3] {
    let mut numbers = [0; 3];
    for (n, part) in numbers.iter_mut().zip(text.split('.')) {
        *n = part.parse().expect("a version number");
    }
    numbers
}

#[test]
fn rust_version_is_at_least_what_every_locked_dependency_needs() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let resolved: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("a resolution")
        .iter()
        .filter_map(|node| node["id"].as_str())
        .collect();
    let packages = metadata["packages"].as_array().expect("packages");
    let ours = packages
        .iter()
        .find(|p| p["name"] == "resumeproxy")
        .and_then(|p| p["rust_version"].as_str())
        .expect("Cargo.toml names a rust-version");
    let needs = packages
        .iter()
        .filter(|p| p["name"] != "resumeproxy")
        .filter(|p| p["id"].as_str().is_some_and(|id| resolved.contains(&id)))
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .expect("some dependency states a rust-version");
    eprintln!(
        "rust-version {ours}; the locked dependencies need at least {} ({})",
        needs
            .0
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join("."),
        needs.1
    );
    assert!(
        version(ours) >= needs.0,
        "rust-version = {ours:?} in Cargo.toml, but {} needs {:?}",
        needs.1,
        needs.0
    );
}
