//! ssh's pipes on Windows: a thread for each direction (`threaded.rs`).
//!
//! The handles are taken from the process (not through `std::io::stdin`,
//! which would translate a console's input): they are ours from here on.
//! Standard output's slot is pointed at `NUL` as its pipe is taken, so that
//! once the pipe is closed, nothing written to standard output later can
//! reach whatever handle takes its number.

use super::threaded::{ThreadedReader, ThreadedWriter};
use std::fs::File;
use std::io;
use std::os::windows::io::{FromRawHandle, IntoRawHandle};
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Console::{
    GetStdHandle, SetStdHandle, STD_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};

/// Reads standard input.
pub type Stdin = ThreadedReader;
/// Writes standard output.
pub type Stdout = ThreadedWriter;

/// The process's stdin and stdout as async handles. Call once.
///
/// A missing handle (a process started without one) reads as empty and
/// swallows writes; if a thread cannot be started, the process cannot run
/// and says so.
pub fn take() -> (Stdin, Stdout) {
    let input = std_handle(STD_INPUT_HANDLE);
    let output = std_handle(STD_OUTPUT_HANDLE);
    if output.is_some() {
        if let Ok(nul) = File::options().write(true).open("NUL") {
            // SAFETY: hands the slot a handle we own and give up.
            unsafe { SetStdHandle(STD_OUTPUT_HANDLE, nul.into_raw_handle() as HANDLE) };
        }
    }
    let stdin = match input {
        Some(file) => ThreadedReader::spawn(file),
        None => ThreadedReader::spawn(io::empty()),
    };
    let stdout = match output {
        Some(file) => ThreadedWriter::spawn(file),
        None => ThreadedWriter::spawn(io::sink()),
    };
    match (stdin, stdout) {
        (Ok(stdin), Ok(stdout)) => (stdin, stdout),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("resumeproxy: cannot start a thread for ssh's pipes: {e}");
            std::process::exit(255);
        }
    }
}

/// The standard handle `which`, as a file we own, if the process has one.
fn std_handle(which: STD_HANDLE) -> Option<File> {
    // SAFETY: GetStdHandle has no preconditions.
    let handle = unsafe { GetStdHandle(which) };
    if handle.is_null() || handle == INVALID_HANDLE_VALUE {
        return None;
    }
    // SAFETY: the process's standard handle, taken over by this module
    // alone (the client uses it nowhere else).
    Some(unsafe { File::from_raw_handle(handle) })
}
