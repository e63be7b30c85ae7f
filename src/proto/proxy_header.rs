//! The PROXY protocol header (HAProxy's `send-proxy`/`send-proxy-v2`,
//! nginx's `proxy_protocol on`, Envoy's `proxy_protocol` transport socket):
//! what a balancer in front of the relay writes before the client's bytes,
//! to say which address the connection came from. Both versions are read:
//! version 1 is a line of text (nginx sends it), version 2 is binary.
//!
//! Behind a balancer every connection comes from the balancer's address,
//! so without this the relay would count every client as one source (its
//! per-source limits, the failed-resume limiter) and log the balancer as
//! every session's client. Only connections from addresses the relay is
//! told to trust are read for a header; its length is bounded, and
//! anything else is an error, never a guess.
//!
//! ```text
//! v1: "PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022\r\n"   (at most 107 bytes)
//!     "PROXY UNKNOWN …\r\n"
//! v2: signature:12  ver_cmd:1  family:1  len:2 (BE)  addresses and TLVs: len
//! ```
//!
//! [`measure`] says how long the header at the start of a connection is,
//! from as many of its first bytes as have come (so that a reader takes
//! exactly the header and leaves the client's bytes); [`parse`] reads it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first twelve bytes of every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Bytes of a version 2 header before its variable part.
pub const FIXED_LEN: usize = 16;
/// Longest variable part accepted: addresses (at most 216 bytes, for Unix
/// sockets) and some TLVs. A balancer sends a few dozen bytes.
pub const MAX_VARIABLE_LEN: usize = 1024;
/// The first bytes of every version 1 header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest version 1 header, its CRLF included (the specification's).
pub const V1_MAX_LEN: usize = 107;
/// Longest header of either version.
pub const MAX_LEN: usize = FIXED_LEN + MAX_VARIABLE_LEN;

/// Who the header says the connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A proxied client at this address.
    Client(SocketAddr),
    /// A client at an address of a family the relay has no use for (a
    /// Unix socket, `UNKNOWN`, or none given): the connection's own
    /// address stands.
    Unknown,
    /// The balancer's own connection (a version 2 `LOCAL` command): its
    /// health check, which carries no client.
    Local,
}

/// A header that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// It starts with neither version's signature.
    #[error("no PROXY protocol header (is the balancer set to send one: send-proxy-v2, proxy_protocol on?)")]
    NoSignature,
    /// Another version, or an unknown command.
    #[error("PROXY protocol version/command byte {0:#04x} is not v2 PROXY or LOCAL")]
    BadVersion(u8),
    /// Longer than [`MAX_VARIABLE_LEN`] (v2), or no line end within
    /// [`V1_MAX_LEN`] (v1).
    #[error("PROXY header of {0} bytes or more, longer than allowed")]
    TooLong(usize),
    /// Shorter than its address family needs.
    #[error("PROXY header too short for its addresses")]
    Truncated,
    /// A version 1 line that breaks the format; what is wrong.
    #[error("PROXY protocol v1 header: {0}")]
    BadLine(&'static str),
}

/// Whether a connection whose first byte is `byte` may start with a
/// header (of either version).
pub fn may_start_header(byte: u8) -> bool {
    byte == SIGNATURE[0] || byte == V1_PREFIX[0]
}

/// How long the header at the start of `bytes` (the first bytes of a
/// connection, as many as have come) is: `Ok(None)` while more are needed
/// to know; an error as soon as they cannot start a header. The length
/// may be more than `bytes` holds (a v2 header's variable part).
pub fn measure(bytes: &[u8]) -> Result<Option<usize>, HeaderError> {
    let starts = |prefix: &[u8]| {
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    };
    match bytes.first() {
        None => Ok(None),
        Some(&b) if b == SIGNATURE[0] => {
            if !starts(&SIGNATURE) {
                return Err(HeaderError::NoSignature);
            }
            match bytes.get(..FIXED_LEN) {
                Some(fixed) => {
                    header_len(fixed.try_into().map_err(|_| HeaderError::Truncated)?).map(Some)
                }
                None => Ok(None),
            }
        }
        Some(&b) if b == V1_PREFIX[0] => {
            if !starts(V1_PREFIX) {
                return Err(HeaderError::NoSignature);
            }
            let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
            match window.iter().position(|&b| b == b'\n') {
                Some(at) if at > 0 && window[at - 1] == b'\r' => Ok(Some(at + 1)),
                Some(_) => Err(HeaderError::BadLine("a line end without CR")),
                None if bytes.len() >= V1_MAX_LEN => Err(HeaderError::TooLong(V1_MAX_LEN)),
                None => Ok(None),
            }
        }
        Some(_) => Err(HeaderError::NoSignature),
    }
}

/// The length of the whole version 2 header whose first [`FIXED_LEN`]
/// bytes are `fixed`.
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

/// Parses a whole header of either version (as long as [`measure`] said).
pub fn parse(header: &[u8]) -> Result<Source, HeaderError> {
    if header.starts_with(V1_PREFIX) {
        return parse_v1(header);
    }
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

/// Parses a version 1 line, CRLF included: `PROXY TCP4|TCP6 SRC DST SPORT
/// DPORT`, one space between fields, or `PROXY UNKNOWN` and anything.
fn parse_v1(line: &[u8]) -> Result<Source, HeaderError> {
    use HeaderError::BadLine;
    if line.len() > V1_MAX_LEN {
        return Err(HeaderError::TooLong(line.len()));
    }
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(BadLine("not ended by CRLF"))?;
    if !text.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(BadLine("not printable ASCII"));
    }
    // Printable ASCII is UTF-8.
    let text = std::str::from_utf8(text).map_err(|_| BadLine("not printable ASCII"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(HeaderError::NoSignature);
    }
    let family = fields.next().ok_or(BadLine("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(Source::Unknown);
    }
    let (Some(source), Some(_destination), Some(port), Some(dest_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(BadLine("not four fields after the protocol"));
    };
    let ip: IpAddr = match family {
        "TCP4" => source
            .parse::<Ipv4Addr>()
            .map_err(|_| BadLine("a source that is not an IPv4 address"))?
            .into(),
        "TCP6" => source
            .parse::<Ipv6Addr>()
            .map_err(|_| BadLine("a source that is not an IPv6 address"))?
            .into(),
        _ => return Err(BadLine("a protocol other than TCP4, TCP6 or UNKNOWN")),
    };
    let port = v1_port(port)?;
    v1_port(dest_port)?;
    Ok(Source::Client(SocketAddr::new(ip, port)))
}

/// A version 1 port: decimal digits, no leading zero, at most 65535.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(HeaderError::BadLine("a port that is not a decimal number"));
    }
    text.parse()
        .map_err(|_| HeaderError::BadLine("a port above 65535"))
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

    #[test]
    fn version_1_lines_are_read() {
        let v4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022\r\n";
        let mut conn = v4.to_vec();
        conn.extend_from_slice(&[0x16, 0x03, 0x01]);
        assert_eq!(measure(&conn), Ok(Some(v4.len())));
        assert_eq!(
            parse(v4),
            Ok(Source::Client("203.0.113.7:36496".parse().unwrap()))
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 443 7022\r\n"),
            Ok(Source::Client("[2001:db8::7]:443".parse().unwrap()))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Source::Unknown));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"),
            Ok(Source::Unknown)
        );
        // Every prefix is "more, please", then the same length.
        for n in 0..v4.len() {
            assert_eq!(measure(&v4[..n]), Ok(None), "{n}");
        }
        // The longest line the specification allows is read; one byte more
        // without a line end is not.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(measure(longest.as_bytes()), Ok(Some(V1_MAX_LEN)));
        assert_eq!(parse(longest.as_bytes()), Ok(Source::Unknown));
        let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(measure(tcp6.as_bytes()), Ok(Some(tcp6.len())));
        assert!(matches!(parse(tcp6.as_bytes()), Ok(Source::Client(_))));
        let endless = [b'P'; 200];
        assert_eq!(measure(&endless), Err(HeaderError::NoSignature));
        let mut endless = V1_PREFIX.to_vec();
        endless.resize(V1_MAX_LEN, b'1');
        assert_eq!(measure(&endless), Err(HeaderError::TooLong(V1_MAX_LEN)));
    }

    #[test]
    fn what_breaks_version_1_is_an_error() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022\n"[..],
            b"PROXY TCP4 203.0.113.7  192.0.2.1 36496 7022\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 36496\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022 1\r\n",
            b"PROXY TCP4 2001:db8::7 192.0.2.1 36496 7022\r\n",
            b"PROXY TCP6 203.0.113.7 2001:db8::1 36496 7022\r\n",
            b"PROXY TCP4 203.0.113.07 192.0.2.1 36496 7022\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 036496 7022\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 7022\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 +3649 7022\r\n",
            b"PROXY UDP4 203.0.113.7 192.0.2.1 36496 7022\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022\t\r\n",
            b"PROXY\r\n",
        ] {
            let line = String::from_utf8_lossy(bad);
            let measured = measure(bad);
            if let Ok(Some(len)) = measured {
                assert!(parse(&bad[..len]).is_err(), "{line:?}");
            } else {
                assert!(measured.is_err(), "{line:?}: {measured:?}");
            }
        }
        assert_eq!(measure(b"PROXX"), Err(HeaderError::NoSignature));
        assert_eq!(
            measure(b"\r\n\r\n\0\r\nQUIX"),
            Err(HeaderError::NoSignature)
        );
        assert_eq!(measure(&[0x16, 3, 1]), Err(HeaderError::NoSignature));
        assert!(may_start_header(b'P') && may_start_header(b'\r'));
        assert!(!may_start_header(0x16));
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

        /// Any bytes after either prefix: [`measure`] stays within
        /// [`MAX_LEN`] (a v1 line within [`V1_MAX_LEN`]), and what it
        /// measures parses or is refused, never a panic.
        #[test]
        fn any_start_is_measured_within_bounds(
            v1 in proptest::prelude::any::<bool>(),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let mut bytes = if v1 { V1_PREFIX.to_vec() } else { SIGNATURE.to_vec() };
            bytes.extend_from_slice(&rest);
            if let Ok(Some(len)) = measure(&bytes) {
                let bound = if v1 { V1_MAX_LEN } else { MAX_LEN };
                proptest::prop_assert!(len <= bound);
                if let Some(header) = bytes.get(..len) {
                    let _ = parse(header);
                }
            }
        }
    }
}
