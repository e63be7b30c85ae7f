//! The PROXY protocol's version 2 header (HAProxy's `send-proxy-v2`,
//! nginx's `proxy_protocol on`, Envoy's `proxy_protocol` transport socket):
//! what a balancer in front of the relay writes before the client's bytes,
//! to say which address the connection came from.
//!
//! Behind a balancer every connection comes from the balancer's address,
//! so without this the relay would count every client as one source (its
//! per-source limits, the failed-resume limiter) and log the balancer as
//! every session's client. Only connections from addresses the relay is
//! told to trust are read for a header; the header is binary, its length
//! bounded, and anything else is an error, never a guess.
//!
//! ```text
//! signature:12  ver_cmd:1  family:1  len:2 (BE)  addresses and TLVs: len
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first twelve bytes of every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Bytes before the variable part.
pub const FIXED_LEN: usize = 16;
/// Longest variable part accepted: addresses (at most 216 bytes, for Unix
/// sockets) and some TLVs. A balancer sends a few dozen bytes.
pub const MAX_VARIABLE_LEN: usize = 1024;

/// Who the header says the connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A proxied client at this address.
    Client(SocketAddr),
    /// A client at an address of a family the relay has no use for (a
    /// Unix socket, or none given): the connection's own address stands.
    Unknown,
    /// The balancer's own connection (a `LOCAL` command): its health
    /// check, which carries no client.
    Local,
}

/// A header that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// It does not start with the signature.
    #[error("no PROXY protocol v2 signature (is the balancer set to send-proxy-v2?)")]
    NoSignature,
    /// Another version, or an unknown command.
    #[error("PROXY protocol version/command byte {0:#04x} is not v2 PROXY or LOCAL")]
    BadVersion(u8),
    /// Longer than [`MAX_VARIABLE_LEN`].
    #[error("PROXY header of {0} bytes, more than {MAX_VARIABLE_LEN}")]
    TooLong(usize),
    /// Shorter than its address family needs.
    #[error("PROXY header too short for its addresses")]
    Truncated,
}

/// The length of the whole header whose first [`FIXED_LEN`] bytes are
/// `fixed`: what to read before [`parse`].
pub fn header_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, HeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(HeaderError::NoSignature);
    }
    let ver_cmd = fixed[12];
    if ver_cmd != 0x20 && ver_cmd != 0x21 {
        return Err(HeaderError::BadVersion(ver_cmd));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_VARIABLE_LEN {
        return Err(HeaderError::TooLong(len));
    }
    Ok(FIXED_LEN + len)
}

/// Parses a whole header (as long as [`header_len`] said).
pub fn parse(header: &[u8]) -> Result<Source, HeaderError> {
    let fixed: &[u8; FIXED_LEN] = header
        .get(..FIXED_LEN)
        .and_then(|f| f.try_into().ok())
        .ok_or(HeaderError::Truncated)?;
    let len = header_len(fixed)?;
    let body = header.get(FIXED_LEN..len).ok_or(HeaderError::Truncated)?;
    if fixed[12] == 0x20 {
        return Ok(Source::Local);
    }
    match fixed[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let b = body.get(..12).ok_or(HeaderError::Truncated)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(Source::Client(SocketAddr::from((ip, port))))
        }
        // TCP over IPv6.
        0x21 => {
            let b = body.get(..36).ok_or(HeaderError::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Source::Client(SocketAddr::from((
                Ipv6Addr::from(octets),
                port,
            ))))
        }
        // UNSPEC, UDP, Unix sockets: nothing the relay can count by.
        _ => Ok(Source::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, family]);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn addresses_are_read_from_proxy_headers() {
        let v4 = header(
            0x21,
            0x11,
            &[203, 0, 113, 7, 10, 0, 0, 1, 0x8e, 0x90, 0x1b, 0x6e],
        );
        assert_eq!(header_len(v4[..16].try_into().unwrap()), Ok(28));
        assert_eq!(
            parse(&v4),
            Ok(Source::Client("203.0.113.7:36496".parse().unwrap()))
        );
        let mut body = vec![0u8; 36];
        body[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body[32..34].copy_from_slice(&443u16.to_be_bytes());
        // TLVs after the addresses are skipped.
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0xaa, 0xbb]);
        assert_eq!(
            parse(&header(0x21, 0x21, &body)),
            Ok(Source::Client("[2001:db8::7]:443".parse().unwrap()))
        );
        assert_eq!(parse(&header(0x20, 0x00, &[])), Ok(Source::Local));
        assert_eq!(parse(&header(0x20, 0x11, &[0; 12])), Ok(Source::Local));
        assert_eq!(parse(&header(0x21, 0x00, &[])), Ok(Source::Unknown));
    }

    #[test]
    fn what_is_not_a_header_is_an_error() {
        let tls = [
            0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0, 0, 0xf0, 3, 3, 0, 0, 0, 0, 0,
        ];
        assert_eq!(header_len(&tls), Err(HeaderError::NoSignature));
        let v1 = b"PROXY TCP4 1.2.3";
        assert_eq!(header_len(v1), Err(HeaderError::NoSignature));
        let mut bad = header(0x11, 0x11, &[0; 12]);
        assert_eq!(parse(&bad), Err(HeaderError::BadVersion(0x11)));
        bad[12] = 0x21;
        bad[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&bad), Err(HeaderError::TooLong(2000)));
        assert_eq!(
            parse(&header(0x21, 0x11, &[1, 2, 3])),
            Err(HeaderError::Truncated)
        );
        assert_eq!(parse(&[0; 3]), Err(HeaderError::Truncated));
    }

    proptest::proptest! {
        /// Any bytes after the signature: an answer or an error, never a
        /// panic, and never a length past the bound.
        #[test]
        fn any_header_is_parsed_or_refused(rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&rest);
            if let Some(fixed) = bytes.get(..FIXED_LEN) {
                if let Ok(len) = header_len(fixed.try_into().unwrap()) {
                    proptest::prop_assert!(len <= FIXED_LEN + MAX_VARIABLE_LEN);
                }
            }
            let _ = parse(&bytes);
        }
    }
}
