//! The opening of a connection: each side's [`Preamble`], then the client's
//! [`Hello`] (a new session, or a resume with its proof) and the relay's
//! [`Reply`].

use super::{
    clip_reason, put_header, Code, DecodeError, Fields, Frame, MAGIC, MAX_DATA_LEN, MAX_HOST_LEN,
    MAX_REASON_LEN, MIN_DATA_LEN, PREAMBLE_LEN, PROOF_LEN, PROTOCOL_VERSION, SECRET_LEN,
    SESSION_ID_LEN, T_CLOSE, T_HELLO, T_REPLY,
};
use crate::proto::fleet::{Home, InstanceName, QuicRoute, MAX_NAME_LEN};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
        /// The instance that holds it, and how it comes back over QUIC.
        home: Home,
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

const HELLO_NEW: u8 = 0;
const HELLO_RESUME: u8 = 1;
const REPLY_CREATED: u8 = 0;
const REPLY_RESUMED: u8 = 1;
const REPLY_REFUSED: u8 = 2;
const ROUTE_DIRECT: u8 = 0;
const ROUTE_TCP_ONLY: u8 = 1;
const ROUTE_V4: u8 = 4;
const ROUTE_V6: u8 = 6;

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

    /// Decodes a message split off by [`split_message`](super::split_message).
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
                home,
            } => {
                // An instance name is at most MAX_NAME_LEN bytes: its
                // length fits a byte.
                let name = home.instance.as_str().as_bytes();
                let route_len = match home.quic {
                    QuicRoute::Direct | QuicRoute::TcpOnly => 1,
                    QuicRoute::At(SocketAddr::V4(_)) => 1 + 4 + 2,
                    QuicRoute::At(SocketAddr::V6(_)) => 1 + 16 + 2,
                };
                put_header(
                    dst,
                    T_REPLY,
                    1 + SESSION_ID_LEN + SECRET_LEN + 8 + 4 + 1 + name.len() + route_len,
                );
                dst.put_u8(REPLY_CREATED);
                dst.put_slice(&session.0);
                dst.put_slice(secret);
                dst.put_u64(*grace_ms);
                dst.put_u32(*max_data);
                dst.put_u8(name.len() as u8);
                dst.put_slice(name);
                match home.quic {
                    QuicRoute::Direct => dst.put_u8(ROUTE_DIRECT),
                    QuicRoute::TcpOnly => dst.put_u8(ROUTE_TCP_ONLY),
                    QuicRoute::At(SocketAddr::V4(addr)) => {
                        dst.put_u8(ROUTE_V4);
                        dst.put_slice(&addr.ip().octets());
                        dst.put_u16(addr.port());
                    }
                    QuicRoute::At(SocketAddr::V6(addr)) => {
                        dst.put_u8(ROUTE_V6);
                        dst.put_slice(&addr.ip().octets());
                        dst.put_u16(addr.port());
                    }
                }
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

    /// Decodes a message split off by [`split_message`](super::split_message). A [`Frame::Close`]
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
                let home = decode_home(&mut f)?;
                Reply::Created {
                    session,
                    secret,
                    grace_ms,
                    max_data,
                    home,
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

/// Reads a [`Home`]: the instance's name (a length byte, then a DNS name
/// in its canonical lower-case form, which is how a relay writes it), then
/// the QUIC route (a kind byte, and for an address its IP and port, neither
/// of them zero).
fn decode_home(f: &mut Fields) -> Result<Home, DecodeError> {
    let len = f.u8()? as usize;
    let text = f.text(len, MAX_NAME_LEN)?;
    let instance: InstanceName = text
        .parse()
        .map_err(|_| DecodeError::BadField("reply instance"))?;
    if instance.as_str() != text {
        return Err(DecodeError::BadField("reply instance"));
    }
    let quic = match f.u8()? {
        ROUTE_DIRECT => QuicRoute::Direct,
        ROUTE_TCP_ONLY => QuicRoute::TcpOnly,
        ROUTE_V4 => {
            let ip = IpAddr::V4(Ipv4Addr::from(f.array::<4>()?));
            QuicRoute::At(route_addr(ip, f.u16()?)?)
        }
        ROUTE_V6 => {
            let ip = IpAddr::V6(Ipv6Addr::from(f.array::<16>()?));
            QuicRoute::At(route_addr(ip, f.u16()?)?)
        }
        _ => return Err(DecodeError::BadField("reply quic route")),
    };
    Ok(Home { instance, quic })
}

/// An address a client can send QUIC to: not unspecified, not port 0.
fn route_addr(ip: IpAddr, port: u16) -> Result<SocketAddr, DecodeError> {
    if ip.is_unspecified() || port == 0 {
        return Err(DecodeError::BadField("reply quic address"));
    }
    Ok(SocketAddr::new(ip, port))
}
