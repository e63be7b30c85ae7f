//! Per-user directories, as the XDG base directory specification places
//! them, and whether this process is root (which picks system-wide ones).

use std::path::PathBuf;

/// `$VAR` if set to an absolute path, else `$HOME/fallback` (or
/// `./fallback` without a home).
pub fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var).map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    home().join(fallback)
}

/// The user's home directory: `$HOME`, else `.`.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$XDG_CONFIG_HOME/resumeproxy` (default `~/.config/resumeproxy`).
pub fn config_dir() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config").join("resumeproxy")
}

/// Whether this process runs as root (effective user id 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
