//! Shared pieces of the end-to-end tests.

pub mod netns;
pub mod relay;
pub mod ssh_child;
pub mod sshd;
