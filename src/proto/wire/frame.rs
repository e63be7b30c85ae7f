//! Session frames: what flows once the handshake is done — data at its
//! offset, cumulative acks, heartbeats, the end marker, and the close with
//! its [`Code`].

use super::{
    clip_reason, put_header, DecodeError, Fields, DATA_PREFIX_LEN, MAX_DATA_LEN, MAX_REASON_LEN,
    T_ACK, T_CLOSE, T_DATA, T_END, T_PING, T_PONG,
};
use bytes::{BufMut, Bytes, BytesMut};

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
    /// The relay's process is restarting and keeps the session: reconnect
    /// at once and resume.
    Restarting,
    /// The resume reached an instance of a fleet other than the one it
    /// named, the one that holds the session (that one is down, and the
    /// balancer sent the connection elsewhere).
    OtherInstance,
    /// A code from a newer peer that this build does not know.
    Other(u8),
}

impl Code {
    /// The code's byte on the wire.
    pub(crate) fn to_u8(self) -> u8 {
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
            Code::Restarting => 10,
            Code::OtherInstance => 11,
            Code::Other(n) => n,
        }
    }

    /// The code that a byte on the wire stands for.
    pub(crate) fn from_u8(n: u8) -> Code {
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
            10 => Code::Restarting,
            11 => Code::OtherInstance,
            n => Code::Other(n),
        }
    }
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
    /// Cumulative acknowledgement: everything before this position was
    /// received. One that repeats the position last acknowledged is a
    /// keep-alive (the sender's data arrives, or is held back by a slow
    /// local end) or, as the first frame on a transport, the announcement
    /// that keep-alives will come (see the session's `liveness.rs`);
    /// peers of earlier releases take it as the no-op it is.
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

    /// Decodes a message split off by [`split_message`](super::split_message). A data payload is
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
