//! Shared pieces of the end-to-end tests.

pub mod durable;
pub mod faults;
pub mod netns;
pub mod relay;
pub mod sshd;
pub mod watch;
