//! Transport failures in words a user can read: what happened to the
//! connection, never a library's `Debug` output, error codes or URLs.
//!
//! The libraries under the transports speak for themselves: the OS gives
//! `Connection reset by peer (os error 104)`, rustls `peer closed connection
//! without sending TLS close_notify: https://docs.rs/…`, quinn `connection
//! lost: timed out`. Everything a transport reports up goes through here
//! first, so the client's lines (docs/troubleshooting.md) use one vocabulary.

use std::io;

/// An I/O error of a transport, in words.
pub fn io_error(e: &io::Error) -> String {
    if let Some(inner) = e.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return tls_error(tls);
        }
        if let Some(quinn::ReadError::ConnectionLost(lost)) =
            inner.downcast_ref::<quinn::ReadError>()
        {
            return quic_error(lost);
        }
        if let Some(quinn::WriteError::ConnectionLost(lost)) =
            inner.downcast_ref::<quinn::WriteError>()
        {
            return quic_error(lost);
        }
        if let Some(lost) = inner.downcast_ref::<quinn::ConnectionError>() {
            return quic_error(lost);
        }
    }
    if let Some(code) = e.raw_os_error() {
        if let Some(words) = os_error(code) {
            return words.to_string();
        }
    }
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused: nothing listens on its port".into(),
        ConnectionReset => "connection reset by the relay or by something on the way".into(),
        ConnectionAborted => "connection aborted".into(),
        BrokenPipe => "connection broken: the other end has gone".into(),
        NotConnected => "connection lost".into(),
        UnexpectedEof => "connection closed by the relay or by something on the way".into(),
        // This program's own timeouts say how long it waited.
        TimedOut if e.raw_os_error().is_none() => plain(&e.to_string()),
        TimedOut => "no answer in time".into(),
        AddrNotAvailable => {
            "this machine no longer has the address the connection was made from".into()
        }
        PermissionDenied => "sending is not permitted: a local firewall refuses it".into(),
        WriteZero => "the connection accepts no more bytes".into(),
        _ if e.to_string().starts_with("failed to lookup address") => {
            "cannot resolve the relay's name".into()
        }
        _ => format!("connection failed: {}", plain(&e.to_string())),
    }
}

/// Errors the OS reports by number, where its own words are obscure or
/// its kind is not yet stable in Rust: `errno` on Unix, WinSock's codes on
/// Windows ([`errno`](super::errno)).
fn os_error(code: i32) -> Option<&'static str> {
    use super::errno::*;
    Some(match code {
        EPERM | EACCES => "sending is not permitted: a local firewall refuses it",
        ENETUNREACH => "network unreachable: no route to the relay",
        EHOSTUNREACH => "host unreachable: no route to the relay",
        ENETDOWN => "network down",
        EADDRNOTAVAIL => "this machine no longer has the address the connection was made from",
        ECONNREFUSED => "connection refused: nothing listens on its port",
        ECONNRESET => "connection reset by the relay or by something on the way",
        EPIPE => "connection broken: the other end has gone",
        ETIMEDOUT => "no answer in time",
        _ => return platform_words(code),
    })
}

/// A TLS failure, in words.
pub fn tls_error(e: &rustls::Error) -> String {
    use rustls::Error::*;
    match e {
        InvalidMessage(_) | InappropriateMessage { .. } | InappropriateHandshakeMessage { .. } => {
            "TLS failed: the other end does not speak TLS as a relay does".into()
        }
        NoApplicationProtocol => {
            "TLS failed: it speaks TLS but not the resumeproxy protocol".into()
        }
        DecryptError => "TLS failed: data was altered on the way".into(),
        AlertReceived(_) => "TLS failed: the relay refused the handshake".into(),
        InvalidCertificate(_) => "TLS failed: the relay's key was not accepted".into(),
        PeerIncompatible(_) => {
            "TLS failed: the relay offers neither TLS 1.3 nor raw public keys".into()
        }
        _ => "TLS failed".into(),
    }
}

/// A QUIC connection that failed, in words.
pub fn quic_error(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError::*;
    match e {
        TimedOut => "nothing heard over QUIC: is UDP blocked on the way?".into(),
        Reset => "the relay reset the QUIC connection: it restarted, or no longer knows it".into(),
        ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::crypto(120) => {
            "the QUIC handshake failed: it speaks QUIC but not the resumeproxy protocol".into()
        }
        ConnectionClosed(close) if close.error_code.to_string().contains("crypto") => {
            "the QUIC handshake failed".into()
        }
        // The relay says why it closes (it restarts, it shuts down).
        ApplicationClosed(close) if close.reason.iter().any(u8::is_ascii_graphic) => {
            String::from_utf8_lossy(&close.reason)
                .chars()
                .filter(|c| !c.is_control())
                .collect()
        }
        ConnectionClosed(_) | ApplicationClosed(_) => "the relay closed the QUIC connection".into(),
        LocallyClosed => "the QUIC connection was closed by this client".into(),
        VersionMismatch => "the relay speaks another version of QUIC".into(),
        TransportError(_) => "QUIC failed: the other end broke the protocol".into(),
        CidsExhausted => "QUIC failed: out of connection ids".into(),
    }
}

/// `text` without what only a library's authors need: URLs, OS error
/// numbers.
fn plain(text: &str) -> String {
    let text = match text.find("https://") {
        Some(at) => text[..at].trim_end().trim_end_matches(':'),
        None => text,
    };
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut words = text.trim().to_string();
    if let Some(first) = words.get(..1) {
        let lower = first.to_lowercase();
        words.replace_range(..1, &lower);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_words_become_ours() {
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        assert_eq!(
            io_error(&eof),
            "connection closed by the relay or by something on the way"
        );
        let reset = io::Error::from_raw_os_error(crate::transport::errno::ECONNRESET);
        assert_eq!(
            io_error(&reset),
            "connection reset by the relay or by something on the way"
        );
        let denied = io::Error::from_raw_os_error(crate::transport::errno::EPERM);
        assert_eq!(
            io_error(&denied),
            "sending is not permitted: a local firewall refuses it"
        );
        let quic: io::Error =
            quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut).into();
        assert_eq!(
            io_error(&quic),
            "nothing heard over QUIC: is UDP blocked on the way?"
        );
        let restarting: io::Error = quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: 0u32.into(),
                reason: "the relay is restarting\n".into(),
            }),
        )
        .into();
        assert_eq!(io_error(&restarting), "the relay is restarting");
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(io_error(&tls), "TLS failed: data was altered on the way");
    }

    #[test]
    fn unknown_errors_lose_urls_and_numbers() {
        let odd = io::Error::other("Something odd: https://example.org/why");
        assert_eq!(io_error(&odd), "connection failed: something odd");
        assert_eq!(plain("Bad thing (os error 99)"), "bad thing");
    }
}
