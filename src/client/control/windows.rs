//! The control channel on Windows: a named pipe only this user may open,
//! named in a file in the user's private directory.
//!
//! Pipes live in one namespace for the whole machine (`\\.\pipe\`), where
//! anyone can list them and could make one first under a name known in
//! advance. So the name is random (`\\.\pipe\resumeproxy-` and 32 hex
//! digits), made as the first instance of its name (so a squatter's pipe is
//! never taken for ours), with an access list that grants this user alone,
//! and closed to clients on other machines. The file `<pid>.pipe`, in the
//! private directory, holds the name: `status` reads it there, where only
//! the user can write, and so never talks to someone else's pipe.

use crate::paths::PrivateSecurity;
use std::io;
use std::path::Path;
use std::time::Duration;
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use windows_sys::Win32::Foundation::ERROR_PIPE_BUSY;

/// What an entry's name ends in.
pub(super) const EXTENSION: &str = "pipe";

/// What every pipe's name starts with.
const PREFIX: &str = r"\\.\pipe\resumeproxy-";
/// Longest entry read (a name is 53 characters).
const MAX_ENTRY: u64 = 256;
/// Wait between tries while every instance of a pipe is busy.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// A request, as served.
pub(super) type Stream = NamedPipeServer;

/// The pipe, with an instance waiting for the next connection.
pub(super) struct Listener {
    name: String,
    waiting: NamedPipeServer,
}

impl Listener {
    /// Makes a pipe with a fresh name and writes that name at `path`.
    pub(super) fn bind(path: &Path) -> io::Result<Listener> {
        let name = format!("{PREFIX}{}", crate::units::hex(&rand::random::<[u8; 16]>()));
        let waiting = instance(&name, true)?;
        std::fs::write(path, &name)?;
        Ok(Listener { name, waiting })
    }

    /// The next connection; a new instance waits for the one after.
    pub(super) async fn accept(&mut self) -> io::Result<Stream> {
        self.waiting.connect().await?;
        let next = instance(&self.name, false)?;
        Ok(std::mem::replace(&mut self.waiting, next))
    }
}

/// A server instance of the pipe `name`.
fn instance(name: &str, first: bool) -> io::Result<NamedPipeServer> {
    let security = PrivateSecurity::new("", "GA")?;
    // SAFETY: the attributes are valid while `security` lives, past the call.
    unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create_with_security_attributes_raw(name, security.attributes() as *mut _)
    }
}

/// Connects to the pipe named at `path`. A missing file, or a name nobody
/// serves, is `NotFound`: the client has gone.
pub(super) async fn connect(path: &Path) -> io::Result<NamedPipeClient> {
    let name = read_entry(path)?;
    loop {
        match ClientOptions::new().open(&name) {
            Ok(client) => return Ok(client),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pipe name in the entry at `path`.
fn read_entry(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut name = String::new();
    std::fs::File::open(path)?
        .take(MAX_ENTRY)
        .read_to_string(&mut name)?;
    let name = name.trim();
    if !is_pipe_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not the name of a resumeproxy pipe",
        ));
    }
    Ok(name.to_owned())
}

/// Whether `name` is one [`Listener::bind`] makes.
fn is_pipe_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Leaves at `path` the entry of a client that died (for tests).
#[cfg(test)]
pub(super) fn leave_stale(path: &Path) {
    std::fs::write(path, format!("{PREFIX}{}", "0".repeat(32))).expect("write an entry");
}
