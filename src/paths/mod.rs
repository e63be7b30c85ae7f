//! Per-user directories and private files, each the platform's way, and
//! whether this process is root (which picks system-wide places).
//!
//! On Unix the directories are those of the XDG base directory
//! specification, and "private" is a mode: 0700 for a directory, 0600 for a
//! file. On Windows they are the user's application data folders
//! (`%APPDATA%`, `%LOCALAPPDATA%`; an `XDG_*` variable set to an absolute
//! path still wins, as on Unix), and "private" is an access control list
//! that grants this user alone (`windows.rs`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;
#[cfg(windows)]
pub use windows::PrivateSecurity;

/// `$VAR` if set to an absolute path, else `$HOME/fallback` (or
/// `./fallback` without a home).
pub fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    from_env(var).unwrap_or_else(|| home().join(fallback))
}

/// `$VAR`, if it is set to an absolute path.
fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
}

/// The user's home directory: `$HOME` (on Windows `%USERPROFILE%` if
/// `HOME` is not set), else `.`.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| {
            cfg!(windows)
                .then(|| std::env::var_os("USERPROFILE"))
                .flatten()
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where the user's configuration goes: `$XDG_CONFIG_HOME` (default
/// `~/.config`); on Windows, unless that is set, `%APPDATA%`.
pub fn config_home() -> PathBuf {
    from_env("XDG_CONFIG_HOME")
        .or_else(imp::config_home)
        .unwrap_or_else(|| home().join(".config"))
}

/// Where the user's state goes: `$XDG_STATE_HOME` (default
/// `~/.local/state`); on Windows, unless that is set, `%LOCALAPPDATA%`.
pub fn state_home() -> PathBuf {
    from_env("XDG_STATE_HOME")
        .or_else(imp::state_home)
        .unwrap_or_else(|| home().join(".local").join("state"))
}

/// `$XDG_CONFIG_HOME/resumeproxy` (default `~/.config/resumeproxy`; on
/// Windows `%APPDATA%\resumeproxy`).
pub fn config_dir() -> PathBuf {
    config_home().join("resumeproxy")
}

/// Whether this process runs as root (effective user id 0). Never on
/// Windows, which has no such user.
pub fn is_root() -> bool {
    imp::is_root()
}

/// Makes `dir` and any missing parents; those it makes are private to this
/// user (Unix: mode 0700). One that exists is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    imp::create_private_dir(dir)
}

/// Makes `dir` like [`create_private_dir`], and sees that nobody else can
/// enter it: on Unix a directory others can enter is refused (the error
/// says how to fix it); on Windows its access list is set to this user
/// alone.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    imp::create_private_dir(dir)?;
    imp::keep_private(dir)
}

/// Opens `path` to append to it, creating it private to this user (Unix:
/// mode 0600) if it is missing.
pub fn append_private(path: &Path) -> io::Result<File> {
    imp::append_private(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_private_directory_and_file_are_made_used_and_kept() {
        let root = std::env::temp_dir().join(format!("resumeproxy-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("a").join("b");
        private_dir(&dir).expect("made private");
        // Again: it exists, and is still private.
        private_dir(&dir).expect("kept private");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for made in [root.join("a"), dir.clone()] {
                let mode = std::fs::metadata(&made).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o700, "{}", made.display());
            }
        }
        let file = dir.join("pins");
        append_private(&file).unwrap().write_all(b"one\n").unwrap();
        append_private(&file).unwrap().write_all(b"two\n").unwrap();
        let mut text = String::new();
        std::fs::File::open(&file)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "one\ntwo\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // One that others can enter is refused, with the fix.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let refused = private_dir(&dir).unwrap_err().to_string();
            assert!(refused.contains("chmod 700"), "{refused}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
