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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The first bytes each side sends: identifies the protocol.
pub const MAGIC: [u8; 6] = *b"RSPRXY";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
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

/// The protocol identification each side sends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Protocol version spoken by the sender.
    pub version: u16,
}

impl Preamble {
    /// The preamble of this build.
    pub const CURRENT: Preamble = Preamble {
        version: PROTOCOL_VERSION,
    };

    /// Encodes the preamble.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..MAGIC.len()].copy_from_slice(&MAGIC);
        out[MAGIC.len()..].copy_from_slice(&self.version.to_be_bytes());
        out
    }

    /// Decodes a preamble from exactly [`PREAMBLE_LEN`] bytes. A version other
    /// than [`PROTOCOL_VERSION`] is reported as [`DecodeError::BadVersion`].
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Preamble, DecodeError> {
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::BadMagic(printable(bytes)));
        }
        let version = u16::from_be_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::BadVersion {
                theirs: version,
                ours: PROTOCOL_VERSION,
            });
        }
        Ok(Preamble { version })
    }
}

/// Renders unknown bytes for an error message, readable if they are text.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// An unguessable session identifier, chosen by the relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are enough to tell sessions apart in logs.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Why a connection or session was refused or closed; carried with a reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The session ended normally: both streams were delivered.
    Done,
    /// The peer broke the protocol.
    Protocol,
    /// The peer speaks an unsupported protocol version.
    Version,
    /// The session is not known to the relay (expired, or the relay restarted).
    UnknownSession,
    /// The resume proof was wrong.
    BadProof,
    /// The relay does not allow the requested target.
    TargetRefused,
    /// The relay could not connect to the target.
    TargetUnreachable,
    /// The relay is at a limit (sessions, memory, …).
    Busy,
    /// The relay is shutting down.
    Shutdown,
    /// The relay's connection to the target failed mid-session.
    TargetFailed,
    /// A code from a newer peer that this build does not know.
    Other(u8),
}

impl Code {
    fn to_u8(self) -> u8 {
        match self {
            Code::Done => 0,
            Code::Protocol => 1,
            Code::Version => 2,
            Code::UnknownSession => 3,
            Code::BadProof => 4,
            Code::TargetRefused => 5,
            Code::TargetUnreachable => 6,
            Code::Busy => 7,
            Code::Shutdown => 8,
            Code::TargetFailed => 9,
            Code::Other(n) => n,
        }
    }

    fn from_u8(n: u8) -> Code {
        match n {
            0 => Code::Done,
            1 => Code::Protocol,
            2 => Code::Version,
            3 => Code::UnknownSession,
            4 => Code::BadProof,
            5 => Code::TargetRefused,
            6 => Code::TargetUnreachable,
            7 => Code::Busy,
            8 => Code::Shutdown,
            9 => Code::TargetFailed,
            n => Code::Other(n),
        }
    }
}

/// The client's handshake message: open a new session, or resume one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Open a new session to a target.
    New {
        /// The client's dead-peer interval in milliseconds; the relay uses the
        /// same, so both ends agree when a transport is dead.
        dead_after_ms: u32,
        /// Target host; empty means the relay's own default target.
        host: String,
        /// Target port.
        port: u16,
    },
    /// Resume an existing session on this new transport.
    Resume {
        /// The client's dead-peer interval in milliseconds.
        dead_after_ms: u32,
        /// Which session.
        session: SessionId,
        /// Proof that the client holds the session's secret, bound to this
        /// connection (see [`crate::proto::resume_auth`]).
        proof: [u8; PROOF_LEN],
        /// Stream position the client has received up to (see [`crate::proto::session`]).
        received: u64,
    },
}

/// The relay's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A new session was created.
    Created {
        /// Its id.
        session: SessionId,
        /// The secret a resume must prove knowledge of.
        secret: [u8; SECRET_LEN],
        /// How long the relay keeps the session while the client is away, in milliseconds.
        grace_ms: u64,
        /// Largest data frame payload either side may send in this session
        /// (at least [`MIN_DATA_LEN`], at most [`MAX_DATA_LEN`]).
        max_data: u32,
    },
    /// The session was resumed.
    Resumed {
        /// Stream position the relay has received up to.
        received: u64,
        /// How long the relay keeps the session while the client is away, in milliseconds.
        grace_ms: u64,
    },
    /// The request was refused.
    Refused {
        /// Why, for programs.
        code: Code,
        /// Why, for people.
        reason: String,
    },
}

/// A session message, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream bytes starting at `offset`.
    Data {
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes, at most [`MAX_DATA_LEN`].
        bytes: Bytes,
    },
    /// Cumulative acknowledgement: everything before this position was received.
    Ack {
        /// Stream position received up to (the end marker counts as one position).
        position: u64,
    },
    /// Heartbeat; answered with a [`Frame::Pong`] carrying the same token.
    Ping {
        /// Opaque token.
        token: u64,
    },
    /// Answer to a [`Frame::Ping`].
    Pong {
        /// The ping's token.
        token: u64,
    },
    /// End of stream: no byte follows `offset`.
    End {
        /// Final stream length.
        offset: u64,
    },
    /// The sender ends the session.
    Close {
        /// Why, for programs.
        code: Code,
        /// Why, for people.
        reason: String,
    },
}

const T_HELLO: u8 = 0x01;
const T_REPLY: u8 = 0x02;
const T_DATA: u8 = 0x10;
const T_ACK: u8 = 0x11;
const T_PING: u8 = 0x12;
const T_PONG: u8 = 0x13;
const T_END: u8 = 0x14;
const T_CLOSE: u8 = 0x15;

const HELLO_NEW: u8 = 0;
const HELLO_RESUME: u8 = 1;
const REPLY_CREATED: u8 = 0;
const REPLY_RESUMED: u8 = 1;
const REPLY_REFUSED: u8 = 2;

/// Splits one complete message (type and payload) off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole message; fails as
/// soon as the header announces more than [`MAX_PAYLOAD_LEN`], so a hostile
/// peer cannot make the reader buffer more than one maximal message.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, DecodeError> {
    split_message_within(buf, MAX_PAYLOAD_LEN)
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
struct Fields {
    payload: Bytes,
    what: &'static str,
}

impl Fields {
    fn new(payload: Bytes, what: &'static str) -> Fields {
        Fields { payload, what }
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.payload.remaining() < n {
            Err(DecodeError::Truncated(self.what))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.payload.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.payload.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.payload.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.payload.get_u64())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.payload.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A text of `len` bytes (length read by the caller), at most `max`.
    fn text(&mut self, len: usize, max: usize) -> Result<String, DecodeError> {
        if len > max {
            return Err(DecodeError::BadText(self.what));
        }
        self.need(len)?;
        let raw = self.payload.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadText(self.what))
    }

    /// Everything left.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.payload)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.payload.has_remaining() {
            Err(DecodeError::TrailingBytes(self.what))
        } else {
            Ok(())
        }
    }
}

/// Writes a header for a payload of `len` bytes.
fn put_header(dst: &mut BytesMut, kind: u8, len: usize) {
    dst.put_u8(kind);
    // Every payload we build is bounded far below u32::MAX by the constants above.
    dst.put_u32(len as u32);
}

/// Truncates a reason to [`MAX_REASON_LEN`] at a character boundary.
fn clip_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Hello {
    /// Appends the encoded message to `dst`. A host longer than
    /// [`MAX_HOST_LEN`] is an error for the caller to report.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), DecodeError> {
        match self {
            Hello::New {
                dead_after_ms,
                host,
                port,
            } => {
                if host.len() > MAX_HOST_LEN {
                    return Err(DecodeError::BadText("hello"));
                }
                put_header(dst, T_HELLO, 1 + 4 + 2 + 1 + host.len());
                dst.put_u8(HELLO_NEW);
                dst.put_u32(*dead_after_ms);
                dst.put_u16(*port);
                dst.put_u8(host.len() as u8);
                dst.put_slice(host.as_bytes());
            }
            Hello::Resume {
                dead_after_ms,
                session,
                proof,
                received,
            } => {
                put_header(dst, T_HELLO, 1 + 4 + SESSION_ID_LEN + PROOF_LEN + 8);
                dst.put_u8(HELLO_RESUME);
                dst.put_u32(*dead_after_ms);
                dst.put_slice(&session.0);
                dst.put_slice(proof);
                dst.put_u64(*received);
            }
        }
        Ok(())
    }

    /// Decodes a message split off by [`split_message`].
    pub fn decode(kind: u8, payload: Bytes) -> Result<Hello, DecodeError> {
        if kind != T_HELLO {
            return Err(DecodeError::UnknownType(kind));
        }
        let mut f = Fields::new(payload, "hello");
        let hello = match f.u8()? {
            HELLO_NEW => {
                let dead_after_ms = f.u32()?;
                let port = f.u16()?;
                let len = f.u8()? as usize;
                let host = f.text(len, MAX_HOST_LEN)?;
                Hello::New {
                    dead_after_ms,
                    host,
                    port,
                }
            }
            HELLO_RESUME => Hello::Resume {
                dead_after_ms: f.u32()?,
                session: SessionId(f.array()?),
                proof: f.array()?,
                received: f.u64()?,
            },
            _ => return Err(DecodeError::BadField("hello kind")),
        };
        f.finish()?;
        Ok(hello)
    }
}

impl Reply {
    /// Appends the encoded message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Reply::Created {
                session,
                secret,
                grace_ms,
                max_data,
            } => {
                put_header(dst, T_REPLY, 1 + SESSION_ID_LEN + SECRET_LEN + 8 + 4);
                dst.put_u8(REPLY_CREATED);
                dst.put_slice(&session.0);
                dst.put_slice(secret);
                dst.put_u64(*grace_ms);
                dst.put_u32(*max_data);
            }
            Reply::Resumed { received, grace_ms } => {
                put_header(dst, T_REPLY, 1 + 8 + 8);
                dst.put_u8(REPLY_RESUMED);
                dst.put_u64(*received);
                dst.put_u64(*grace_ms);
            }
            Reply::Refused { code, reason } => {
                let reason = clip_reason(reason);
                put_header(dst, T_REPLY, 1 + 1 + 2 + reason.len());
                dst.put_u8(REPLY_REFUSED);
                dst.put_u8(code.to_u8());
                dst.put_u16(reason.len() as u16);
                dst.put_slice(reason.as_bytes());
            }
        }
    }

    /// Decodes a message split off by [`split_message`]. A [`Frame::Close`]
    /// in place of a reply (how a relay of another version refuses) is read
    /// as [`Reply::Refused`].
    pub fn decode(kind: u8, payload: Bytes) -> Result<Reply, DecodeError> {
        if kind == T_CLOSE {
            return match Frame::decode(kind, payload)? {
                Frame::Close { code, reason } => Ok(Reply::Refused { code, reason }),
                _ => Err(DecodeError::UnknownType(kind)),
            };
        }
        if kind != T_REPLY {
            return Err(DecodeError::UnknownType(kind));
        }
        let mut f = Fields::new(payload, "reply");
        let reply = match f.u8()? {
            REPLY_CREATED => {
                let session = SessionId(f.array()?);
                let secret = f.array()?;
                let grace_ms = f.u64()?;
                let max_data = f.u32()?;
                if !(MIN_DATA_LEN..=MAX_DATA_LEN).contains(&(max_data as usize)) {
                    return Err(DecodeError::BadField("reply max_data"));
                }
                Reply::Created {
                    session,
                    secret,
                    grace_ms,
                    max_data,
                }
            }
            REPLY_RESUMED => Reply::Resumed {
                received: f.u64()?,
                grace_ms: f.u64()?,
            },
            REPLY_REFUSED => {
                let code = Code::from_u8(f.u8()?);
                let len = f.u16()? as usize;
                let reason = f.text(len, MAX_REASON_LEN)?;
                Reply::Refused { code, reason }
            }
            _ => return Err(DecodeError::BadField("reply kind")),
        };
        f.finish()?;
        Ok(reply)
    }
}

impl Frame {
    /// Appends the encoded frame to `dst`, payload included.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_head(dst);
        if let Frame::Data { bytes, .. } = self {
            dst.put_slice(bytes);
        }
    }

    /// Appends everything but a [`Frame::Data`]'s payload bytes, so that the
    /// payload can be written from where it already is (vectored writes).
    /// For other frames this is the whole encoding.
    pub fn encode_head(&self, dst: &mut BytesMut) {
        match self {
            Frame::Data { offset, bytes } => {
                put_header(dst, T_DATA, DATA_PREFIX_LEN + bytes.len());
                dst.put_u64(*offset);
            }
            Frame::Ack { position } => {
                put_header(dst, T_ACK, 8);
                dst.put_u64(*position);
            }
            Frame::Ping { token } => {
                put_header(dst, T_PING, 8);
                dst.put_u64(*token);
            }
            Frame::Pong { token } => {
                put_header(dst, T_PONG, 8);
                dst.put_u64(*token);
            }
            Frame::End { offset } => {
                put_header(dst, T_END, 8);
                dst.put_u64(*offset);
            }
            Frame::Close { code, reason } => {
                let reason = clip_reason(reason);
                put_header(dst, T_CLOSE, 1 + 2 + reason.len());
                dst.put_u8(code.to_u8());
                dst.put_u16(reason.len() as u16);
                dst.put_slice(reason.as_bytes());
            }
        }
    }

    /// Decodes a message split off by [`split_message`]. A data payload is
    /// not copied: it shares `payload`'s buffer.
    pub fn decode(kind: u8, payload: Bytes) -> Result<Frame, DecodeError> {
        let frame = match kind {
            T_DATA => {
                let mut f = Fields::new(payload, "data");
                let offset = f.u64()?;
                let bytes = f.rest();
                if bytes.len() > MAX_DATA_LEN {
                    return Err(DecodeError::TooLong {
                        kind,
                        len: bytes.len(),
                        max: MAX_DATA_LEN,
                    });
                }
                return Ok(Frame::Data { offset, bytes });
            }
            T_ACK => Self::one_u64(payload, "ack", |position| Frame::Ack { position })?,
            T_PING => Self::one_u64(payload, "ping", |token| Frame::Ping { token })?,
            T_PONG => Self::one_u64(payload, "pong", |token| Frame::Pong { token })?,
            T_END => Self::one_u64(payload, "end", |offset| Frame::End { offset })?,
            T_CLOSE => {
                let mut f = Fields::new(payload, "close");
                let code = Code::from_u8(f.u8()?);
                let len = f.u16()? as usize;
                let reason = f.text(len, MAX_REASON_LEN)?;
                f.finish()?;
                Frame::Close { code, reason }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(frame)
    }

    fn one_u64(
        payload: Bytes,
        what: &'static str,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<Frame, DecodeError> {
        let mut f = Fields::new(payload, what);
        let value = f.u64()?;
        f.finish()?;
        Ok(make(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code() -> impl Strategy<Value = Code> {
        any::<u8>().prop_map(Code::from_u8)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..2048)
            )
                .prop_map(|(offset, v)| Frame::Data {
                    offset,
                    bytes: Bytes::from(v)
                }),
            any::<u64>().prop_map(|position| Frame::Ack { position }),
            any::<u64>().prop_map(|token| Frame::Ping { token }),
            any::<u64>().prop_map(|token| Frame::Pong { token }),
            any::<u64>().prop_map(|offset| Frame::End { offset }),
            (code(), ".{0,100}").prop_map(|(code, reason)| Frame::Close { code, reason }),
        ]
    }

    fn hello() -> impl Strategy<Value = Hello> {
        prop_oneof![
            (any::<u32>(), "[a-z0-9.:-]{0,255}", any::<u16>()).prop_map(
                |(dead_after_ms, host, port)| Hello::New {
                    dead_after_ms,
                    host,
                    port
                }
            ),
            (
                any::<u32>(),
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                any::<u64>()
            )
                .prop_map(|(dead_after_ms, id, proof, received)| Hello::Resume {
                    dead_after_ms,
                    session: SessionId(id),
                    proof,
                    received
                }),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            (
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                any::<u64>(),
                MIN_DATA_LEN as u32..=MAX_DATA_LEN as u32
            )
                .prop_map(|(id, secret, grace_ms, max_data)| Reply::Created {
                    session: SessionId(id),
                    secret,
                    grace_ms,
                    max_data,
                }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(received, grace_ms)| Reply::Resumed { received, grace_ms }),
            (code(), ".{0,100}").prop_map(|(code, reason)| Reply::Refused { code, reason }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_chunking(
            frames in proptest::collection::vec(frame(), 0..20),
            cut in 1usize..4000,
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let wire = wire.freeze();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some((kind, payload)) = split_message(&mut buf).unwrap() {
                    decoded.push(Frame::decode(kind, payload).unwrap());
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn handshake_round_trips(h in hello(), r in reply()) {
            let mut buf = BytesMut::new();
            h.encode(&mut buf).unwrap();
            r.encode(&mut buf);
            let (k, p) = split_message(&mut buf).unwrap().unwrap();
            prop_assert_eq!(Hello::decode(k, p).unwrap(), h);
            let (k, p) = split_message(&mut buf).unwrap().unwrap();
            prop_assert_eq!(Reply::decode(k, p).unwrap(), r);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some((kind, payload))) = split_message(&mut buf) {
                let _ = Frame::decode(kind, payload.clone());
                let _ = Hello::decode(kind, payload.clone());
                let _ = Reply::decode(kind, payload);
            }
            if bytes.len() >= PREAMBLE_LEN {
                let mut p = [0u8; PREAMBLE_LEN];
                p.copy_from_slice(&bytes[..PREAMBLE_LEN]);
                let _ = Preamble::decode(&p);
            }
        }

        #[test]
        fn arbitrary_payloads_never_panic(kind: u8, bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let payload = Bytes::from(bytes);
            let _ = Frame::decode(kind, payload.clone());
            let _ = Hello::decode(kind, payload.clone());
            let _ = Reply::decode(kind, payload);
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_buffering() {
        let mut buf = BytesMut::new();
        put_header(&mut buf, T_DATA, MAX_PAYLOAD_LEN + 1);
        assert!(matches!(
            split_message(&mut buf),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn preamble_rejects_ssh_banner_and_other_versions() {
        let err = Preamble::decode(b"SSH-2.0-").unwrap_err();
        assert_eq!(err, DecodeError::BadMagic("SSH-2.0-".into()));
        let mut p = Preamble::CURRENT.encode();
        p[7] = 99;
        assert!(matches!(
            Preamble::decode(&p),
            Err(DecodeError::BadVersion { theirs: 99, .. })
        ));
        assert_eq!(
            Preamble::decode(&Preamble::CURRENT.encode()),
            Ok(Preamble::CURRENT)
        );
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let mut buf = BytesMut::new();
        put_header(&mut buf, T_ACK, 9);
        buf.put_slice(&[0; 9]);
        let (k, p) = split_message(&mut buf).unwrap().unwrap();
        assert_eq!(Frame::decode(k, p), Err(DecodeError::TrailingBytes("ack")));
        assert_eq!(
            Frame::decode(T_END, Bytes::from_static(&[1, 2])),
            Err(DecodeError::Truncated("end"))
        );
    }

    #[test]
    fn long_reasons_are_clipped_on_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON_LEN);
        let mut buf = BytesMut::new();
        Frame::Close {
            code: Code::Busy,
            reason,
        }
        .encode(&mut buf);
        let (k, p) = split_message(&mut buf).unwrap().unwrap();
        match Frame::decode(k, p).unwrap() {
            Frame::Close { reason, .. } => assert_eq!(reason.len(), MAX_REASON_LEN),
            other => panic!("unexpected {other:?}"),
        }
    }
}
