//! `resumeproxyd`: the relay. See `resumeproxyd --help` and `man resumeproxyd`.
//!
//! The relay is a Linux program: its sessions outlive its process in memfds
//! and systemd's descriptor store (`resumeproxy::relay::durable`). Elsewhere
//! this binary only says so, so that building the package (`cargo install`)
//! works wherever the client does.

#[cfg(target_os = "linux")]
mod relay;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    relay::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "resumeproxyd: the relay runs on Linux only; this system can run the client, resumeproxy"
    );
    std::process::ExitCode::from(1)
}
