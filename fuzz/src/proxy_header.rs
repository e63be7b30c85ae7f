//! The `proxy_header` target: the PROXY protocol header (v1 and v2) a
//! balancer writes before its client's bytes, read as the relay reads it.
//!
//! Input: one byte for how many chunk sizes follow (1 to
//! [`MAX_CHUNK_SIZES`]), the chunk sizes (a byte each, plus one), then the
//! connection's first bytes. They arrive in chunks of those sizes, in turn,
//! and are read the way `relay/proxied.rs` reads a connection: look at all
//! that has arrived and not been taken, [`measure`] it with what was taken
//! before; take it all while the header is not complete, else take exactly
//! the header and [`parse`] it.
//!
//! Asserts:
//! * nothing panics;
//! * chunking changes nothing: the outcome is the one of the whole stream
//!   read at once;
//! * what is taken is the header and nothing after it (the client's TLS
//!   hello stays for the TLS layer), and never more than [`MAX_LEN`] bytes
//!   — a v1 line never more than [`V1_MAX_LEN`];
//! * a v1 header accepted is one line of printable ASCII ending in CRLF.

use crate::input::Input;
use resumeproxy::proto::proxy_header::{
    measure, parse, HeaderError, Source, MAX_LEN, V1_MAX_LEN, V1_PREFIX,
};

/// Most chunk sizes one input names.
pub const MAX_CHUNK_SIZES: u8 = 8;

/// How reading a connection's header ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A header of this many bytes, saying this.
    Read(usize, Result<Source, HeaderError>),
    /// Not a header (known from the bytes taken and looked at).
    Refused(HeaderError),
    /// The connection ended before the header did.
    Ended,
}

/// Writes a `proxy_header` input: chunk sizes (1 to 256 each, at most
/// [`MAX_CHUNK_SIZES`]), then `stream`.
pub fn seed(chunks: &[usize], stream: &[u8]) -> Vec<u8> {
    assert!(!chunks.is_empty() && chunks.len() <= usize::from(MAX_CHUNK_SIZES));
    let mut out = vec![chunks.len() as u8 - 1];
    for &c in chunks {
        out.push(u8::try_from(c - 1).expect("chunk size 1..=256"));
    }
    out.extend_from_slice(stream);
    out
}

/// Runs one `proxy_header` input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let count = usize::from(input.u8() % MAX_CHUNK_SIZES) + 1;
    let chunks: Vec<usize> = (0..count).map(|_| usize::from(input.u8()) + 1).collect();
    let stream = input.rest();
    let whole = read(stream, &[stream.len().max(1)]);
    let chunked = read(stream, &chunks);
    assert_eq!(chunked, whole, "chunks {chunks:?} changed the outcome");
    if let Outcome::Read(len, result) = &whole {
        assert!(*len <= MAX_LEN);
        if stream.starts_with(V1_PREFIX) {
            assert!(*len <= V1_MAX_LEN);
            if result.is_ok() {
                let line = &stream[..*len];
                assert!(line.ends_with(b"\r\n"));
                assert!(line[..len - 2].iter().all(|b| (b' '..=b'~').contains(b)));
            }
        }
    }
}

/// Reads the header of a connection whose bytes are `stream`, arriving in
/// chunks of `chunks` sizes in turn, as the relay does; checks that what
/// it takes is header only.
fn read(stream: &[u8], chunks: &[usize]) -> Outcome {
    let mut arrived = 0;
    let mut taken = 0;
    for &chunk in chunks.iter().cycle() {
        arrived = (arrived + chunk).min(stream.len());
        if arrived == taken {
            return Outcome::Ended;
        }
        match measure(&stream[..arrived]) {
            Err(e) => {
                assert!(taken <= MAX_LEN);
                return Outcome::Refused(e);
            }
            Ok(Some(len)) => {
                assert!(len > taken, "the header ends within what was taken already");
                if len > stream.len() {
                    return Outcome::Ended;
                }
                return Outcome::Read(len, parse(&stream[..len]));
            }
            Ok(None) => {
                // All of it is header so far: taken.
                taken = arrived;
                assert!(taken <= MAX_LEN, "{taken} bytes taken without a header");
            }
        }
    }
    unreachable!("cycle never ends")
}
