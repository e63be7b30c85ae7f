//! The wire codec: what travels between `resumeproxy` and `resumeproxyd`.
//!
//! Pure: bytes in, values out, and back. No I/O, no clocks. Every decoder
//! returns a [`DecodeError`] on bad input and never panics; every size limit is
//! a named constant below. The decoders are property-tested and fuzzed.
//!
//! A connection starts with a [`Preamble`] from each side (magic and protocol
//! version), then one handshake message each way ([`Hello`] from the client,
//! [`Reply`] from the relay), then session [`Frame`]s in both directions until
//! the transport breaks or a [`Frame::Close`] is sent.
//!
//! Every message after the preamble has the same header, stable across
//! protocol versions so that a refusal can always be read:
//!
//! ```text
//! +--------+----------------+------------------+
//! | type:1 | length:4 (BE)  | payload: length  |
//! +--------+----------------+------------------+
//! ```
//!
//! All integers are big-endian.
//!
//! This module holds the limits, the errors and the message header;
//! `handshake.rs` the preamble, [`Hello`] and [`Reply`];
//! `frame.rs` the session [`Frame`]s and their [`Code`]s.

mod frame;
mod handshake;
#[cfg(test)]
mod tests;

pub use frame::{Code, Frame};
pub use handshake::{Hello, Preamble, Reply, SessionId};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The first bytes each side sends: identifies the protocol.
pub const MAGIC: [u8; 6] = *b"RSPRXY";
/// The protocol version this build speaks. 3: a new session's
/// [`Reply::Created`] says where it lives in a fleet.
pub const PROTOCOL_VERSION: u16 = 3;
/// Length of a [`Preamble`] on the wire.
pub const PREAMBLE_LEN: usize = MAGIC.len() + 2;
/// Length of every message header (type and payload length).
pub const HEADER_LEN: usize = 5;
/// Largest payload of one [`Frame::Data`].
pub const MAX_DATA_LEN: usize = 128 * 1024;
/// Bytes of a [`Frame::Data`] payload before its data (the offset).
pub const DATA_PREFIX_LEN: usize = 8;
/// Largest payload of any message; anything longer is rejected before it is buffered.
pub const MAX_PAYLOAD_LEN: usize = MAX_DATA_LEN + DATA_PREFIX_LEN;
/// Largest reason text in a [`Reply::Refused`] or [`Frame::Close`], in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest target host name in a [`Hello::New`], in bytes.
pub const MAX_HOST_LEN: usize = 255;
/// Largest payload of a hello or a reply (a refusal's reason is at most
/// [`MAX_REASON_LEN`]): a peer still in its handshake cannot make the other
/// side reserve a data frame's worth of memory.
pub const MAX_HANDSHAKE_LEN: usize = 2 * MAX_REASON_LEN;
/// Length of a session id.
pub const SESSION_ID_LEN: usize = 16;
/// Length of the per-session resume secret.
pub const SECRET_LEN: usize = 32;
/// Length of a resume proof (see [`crate::proto::resume_auth`]).
pub const PROOF_LEN: usize = 32;
/// Smallest data frame limit a relay may announce.
pub const MIN_DATA_LEN: usize = 1024;

/// Why bytes from the peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The peer does not speak this protocol at all.
    #[error("not a resumeproxy peer (it sent {0:?})")]
    BadMagic(String),
    /// The peer speaks another version of this protocol.
    #[error("peer speaks protocol version {theirs}, this build speaks {ours}")]
    BadVersion {
        /// The version the peer announced.
        theirs: u16,
        /// [`PROTOCOL_VERSION`].
        ours: u16,
    },
    /// A message announced a payload longer than allowed.
    #[error("message of type {kind:#04x} announces {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The message type byte.
        kind: u8,
        /// The announced length.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// A message type this decoder does not know, or that is not allowed here.
    #[error("unexpected message type {0:#04x}")]
    UnknownType(u8),
    /// A payload ended before all its fields.
    #[error("truncated {0} message")]
    Truncated(&'static str),
    /// A payload had bytes after its last field.
    #[error("{0} message has trailing bytes")]
    TrailingBytes(&'static str),
    /// A text field is not UTF-8, or is too long.
    #[error("invalid text in {0} message")]
    BadText(&'static str),
    /// A field has a value outside its range.
    #[error("invalid {0}")]
    BadField(&'static str),
}

// Message types.
pub(super) const T_HELLO: u8 = 0x01;
pub(super) const T_REPLY: u8 = 0x02;
pub(super) const T_DATA: u8 = 0x10;
pub(super) const T_ACK: u8 = 0x11;
pub(super) const T_PING: u8 = 0x12;
pub(super) const T_PONG: u8 = 0x13;
pub(super) const T_END: u8 = 0x14;
pub(super) const T_CLOSE: u8 = 0x15;

/// Splits one complete message (type and payload) off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole message; fails as
/// soon as the header announces more than [`MAX_PAYLOAD_LEN`], so a hostile
/// peer cannot make the reader buffer more than one maximal message.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, DecodeError> {
    split_message_within(buf, MAX_PAYLOAD_LEN)
}

/// Whether `buf`, bytes of a message not yet complete (what is left after
/// [`split_message`] took the complete ones), begins a [`Frame::Data`]: the
/// peer's data is arriving, one frame slower than the link.
pub fn begins_data_frame(buf: &[u8]) -> bool {
    buf.first() == Some(&T_DATA)
}

/// Like [`split_message`], with a lower bound on the payload: `max_payload`
/// (at most [`MAX_PAYLOAD_LEN`]).
pub fn split_message_within(
    buf: &mut BytesMut,
    max_payload: usize,
) -> Result<Option<(u8, Bytes)>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let max = max_payload.min(MAX_PAYLOAD_LEN);
    if len > max {
        return Err(DecodeError::TooLong { kind, len, max });
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some((kind, buf.split_to(len).freeze())))
}

/// A cursor over one payload that turns short reads into [`DecodeError::Truncated`].
pub(super) struct Fields {
    payload: Bytes,
    what: &'static str,
}

impl Fields {
    pub(super) fn new(payload: Bytes, what: &'static str) -> Fields {
        Fields { payload, what }
    }

    pub(super) fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.payload.remaining() < n {
            Err(DecodeError::Truncated(self.what))
        } else {
            Ok(())
        }
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.payload.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.payload.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.payload.get_u32())
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.payload.get_u64())
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.payload.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A text of `len` bytes (length read by the caller), at most `max`.
    pub(super) fn text(&mut self, len: usize, max: usize) -> Result<String, DecodeError> {
        if len > max {
            return Err(DecodeError::BadText(self.what));
        }
        self.need(len)?;
        let raw = self.payload.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadText(self.what))
    }

    /// Everything left.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.payload)
    }

    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.payload.has_remaining() {
            Err(DecodeError::TrailingBytes(self.what))
        } else {
            Ok(())
        }
    }
}

/// Writes a header for a payload of `len` bytes.
pub(super) fn put_header(dst: &mut BytesMut, kind: u8, len: usize) {
    dst.put_u8(kind);
    // Every payload we build is bounded far below u32::MAX by the constants above.
    dst.put_u32(len as u32);
}

/// Truncates a reason to [`MAX_REASON_LEN`] at a character boundary.
pub(super) fn clip_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}
