//! `docs/protocol.md` is the wire protocol for anyone writing a second
//! implementation; this test holds it to the code. It reads the document's
//! tables and examples and checks them against the codec:
//!
//! * the message-type table names every type the decoders accept, and each
//!   name's type byte is the one the encoder writes;
//! * the code table names every close and refusal code, with its number;
//! * the constants table gives each limit and name its value in the code;
//! * every example (a fenced block starting `example: NAME`: hex on the
//!   left, a comment after two spaces) is exactly what the encoder writes
//!   for the value below of that name, and decodes back to it; the resume
//!   proof's documented construction (HMAC-SHA256 over its input) gives the
//!   documented proof, and the code's proof is the same.
//!
//! `PRINT_PROTOCOL_EXAMPLES=1 cargo test --test protocol_doc -- --nocapture`
//! prints every example as the code encodes it, to paste into the document.

use bytes::{Bytes, BytesMut};
use resumeproxy::proto::fleet::{Home, InstanceName, QuicRoute, MAX_NAME_LEN};
use resumeproxy::proto::proxy_header::{self, Source};
use resumeproxy::proto::resume_auth::{self, BINDING_LEN};
use resumeproxy::proto::session::{MAX_DEAD_AFTER, MIN_DEAD_AFTER};
use resumeproxy::proto::wire::{self, Code, Frame, Hello, Preamble, Reply, SessionId};
use resumeproxy::transport::tls::{ALPN, BINDING_LABEL};
use std::collections::BTreeMap;
use std::path::Path;

fn document() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the table whose header row starts with `first_column`: the
/// cells of each, trimmed, without the backticks of code spans.
fn table(doc: &str, first_column: &str) -> Vec<Vec<String>> {
    let mut lines = doc.lines().skip_while(|line| {
        line.split('|')
            .nth(1)
            .is_none_or(|cell| cell.trim() != first_column)
    });
    assert!(
        lines.next().is_some(),
        "docs/protocol.md has no table headed {first_column:?}"
    );
    lines
        .skip(1) // |---|---|
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

/// A number as the document writes it: `0x15`, `131072`, `128 KiB`.
fn number(text: &str) -> u64 {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }
    let (digits, unit) = text.split_once(' ').unwrap_or((text, ""));
    let n: u64 = digits
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    n * match unit {
        "" | "bytes" => 1,
        "KiB" => 1024,
        "ms" => 1,
        "s" => 1000,
        other => panic!("{text:?}: unknown unit {other:?}"),
    }
}

/// The examples: `example: NAME` blocks, as bytes.
fn examples(doc: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("example: ") {
            current = Some((name.trim().to_owned(), Vec::new()));
            continue;
        }
        let Some((_, bytes)) = current.as_mut() else {
            continue;
        };
        if line.starts_with("```") {
            let (name, bytes) = current.take().expect("in an example");
            assert!(
                out.insert(name.clone(), bytes).is_none(),
                "two examples named {name}"
            );
            continue;
        }
        let hex = line.split("  ").next().unwrap_or("");
        for token in hex.split_whitespace() {
            assert!(
                token.len() % 2 == 0 && token.bytes().all(|b| b.is_ascii_hexdigit()),
                "not hex in an example: {token:?} in {line:?} (a comment goes after two spaces)"
            );
            for pair in token.as_bytes().chunks(2) {
                let pair = std::str::from_utf8(pair).expect("ASCII");
                bytes.push(u8::from_str_radix(pair, 16).expect("hex"));
            }
        }
    }
    assert!(current.is_none(), "an example is not closed");
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The values the document's examples encode.
const SESSION: SessionId = SessionId([
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
]);

fn secret() -> [u8; wire::SECRET_LEN] {
    std::array::from_fn(|i| 0x20 + i as u8)
}

fn binding() -> [u8; BINDING_LEN] {
    std::array::from_fn(|i| 0xa0 + i as u8)
}

fn instance(name: &str) -> InstanceName {
    name.parse().expect("an instance name")
}

/// Every message example: its name, and what it is.
enum Message {
    Hello(Hello),
    Reply(Reply),
    Frame(Frame),
}

fn messages() -> Vec<(&'static str, Message)> {
    let created = |quic| {
        Message::Reply(Reply::Created {
            session: SESSION,
            secret: secret(),
            grace_ms: 12 * 3600 * 1000,
            max_data: 128 * 1024,
            home: Home {
                instance: instance("relay-1"),
                quic,
            },
        })
    };
    vec![
        (
            "hello-new",
            Message::Hello(Hello::New {
                dead_after_ms: 5000,
                host: String::new(),
                port: 22,
            }),
        ),
        (
            "hello-new-bastion",
            Message::Hello(Hello::New {
                dead_after_ms: 5000,
                host: "db.internal".into(),
                port: 22,
            }),
        ),
        (
            "hello-resume",
            Message::Hello(Hello::Resume {
                dead_after_ms: 5000,
                session: SESSION,
                proof: resume_auth::proof(&secret(), &SESSION, &binding()),
                received: 4097,
            }),
        ),
        ("reply-created", created(QuicRoute::Direct)),
        ("reply-created-tcp-only", created(QuicRoute::TcpOnly)),
        (
            "reply-created-v4",
            created(QuicRoute::At("203.0.113.11:7022".parse().expect("addr"))),
        ),
        (
            "reply-created-v6",
            created(QuicRoute::At("[2001:db8::11]:7022".parse().expect("addr"))),
        ),
        (
            "reply-resumed",
            Message::Reply(Reply::Resumed {
                received: 1025,
                grace_ms: 12 * 3600 * 1000,
            }),
        ),
        (
            "reply-refused",
            Message::Reply(Reply::Refused {
                code: Code::TargetRefused,
                reason: "this relay forwards only to port 22".into(),
            }),
        ),
        (
            "frame-data",
            Message::Frame(Frame::Data {
                offset: 1024,
                bytes: Bytes::from_static(b"ls\n"),
            }),
        ),
        ("frame-ack", Message::Frame(Frame::Ack { position: 1027 })),
        ("frame-ping", Message::Frame(Frame::Ping { token: 7 })),
        ("frame-pong", Message::Frame(Frame::Pong { token: 7 })),
        ("frame-end", Message::Frame(Frame::End { offset: 4096 })),
        (
            "frame-close",
            Message::Frame(Frame::Close {
                code: Code::Done,
                reason: "session complete".into(),
            }),
        ),
    ]
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    match message {
        Message::Hello(hello) => hello.encode(&mut out).expect("encodable"),
        Message::Reply(reply) => reply.encode(&mut out),
        Message::Frame(frame) => frame.encode(&mut out),
    }
    out.to_vec()
}

/// Decodes `bytes` as one whole message of `like`'s kind, and checks it is `like`.
fn decodes_to(bytes: &[u8], like: &Message) -> bool {
    let mut buf = BytesMut::from(bytes);
    let Ok(Some((kind, payload))) = wire::split_message(&mut buf) else {
        return false;
    };
    if !buf.is_empty() {
        return false;
    }
    match like {
        Message::Hello(hello) => Hello::decode(kind, payload).as_ref() == Ok(hello),
        Message::Reply(reply) => Reply::decode(kind, payload).as_ref() == Ok(reply),
        Message::Frame(frame) => Frame::decode(kind, payload).as_ref() == Ok(frame),
    }
}

/// The resume proof's input, as the document describes it.
const PROOF_CONTEXT: &[u8] = b"resumeproxy resume proof v2";

/// The PROXY protocol v2 header HAProxy writes for a client at
/// 198.51.100.4:40110 reaching 10.0.0.11:7022, its `LOCAL` health check,
/// and the v1 line nginx writes for the same client.
fn proxy_examples() -> Vec<(&'static str, Vec<u8>, Source)> {
    let mut v4 = proxy_header::SIGNATURE.to_vec();
    v4.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    v4.extend_from_slice(&[198, 51, 100, 4, 10, 0, 0, 11]);
    v4.extend_from_slice(&40110u16.to_be_bytes());
    v4.extend_from_slice(&7022u16.to_be_bytes());
    let mut local = proxy_header::SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    vec![
        (
            "proxy-v4",
            v4,
            Source::Client("198.51.100.4:40110".parse().expect("addr")),
        ),
        ("proxy-local", local, Source::Local),
        (
            "proxy-v1",
            b"PROXY TCP4 198.51.100.4 10.0.0.11 40110 7022\r\n".to_vec(),
            Source::Client("198.51.100.4:40110".parse().expect("addr")),
        ),
    ]
}

/// Every example the code can produce, by name.
fn encoded_examples() -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = messages()
        .iter()
        .map(|(name, message)| (name.to_string(), encode(message)))
        .collect();
    out.insert("preamble".into(), Preamble::CURRENT.encode().to_vec());
    out.insert("proof-key".into(), secret().to_vec());
    let mut input = PROOF_CONTEXT.to_vec();
    input.extend_from_slice(&SESSION.0);
    input.extend_from_slice(&binding());
    out.insert("proof-input".into(), input);
    out.insert(
        "proof".into(),
        resume_auth::proof(&secret(), &SESSION, &binding()).to_vec(),
    );
    for (name, bytes, _) in proxy_examples() {
        out.insert(name.into(), bytes);
    }
    out
}

#[test]
fn the_examples_are_what_the_codec_writes_and_reads() {
    let encoded = encoded_examples();
    if std::env::var_os("PRINT_PROTOCOL_EXAMPLES").is_some() {
        for (name, bytes) in &encoded {
            println!("example: {name}\n{}\n", hex(bytes));
        }
    }
    let documented = examples(&document());
    for (name, bytes) in &encoded {
        let Some(doc) = documented.get(name) else {
            panic!("docs/protocol.md lacks the example {name}: {}", hex(bytes));
        };
        assert_eq!(
            hex(doc),
            hex(bytes),
            "docs/protocol.md's example {name} is not what the code writes"
        );
    }
    for name in documented.keys() {
        assert!(
            encoded.contains_key(name),
            "docs/protocol.md's example {name} is not checked by this test"
        );
    }
    for (name, message) in messages() {
        assert!(
            decodes_to(&documented[name], &message),
            "docs/protocol.md's example {name} does not decode to its value"
        );
    }
    for (name, _, source) in proxy_examples() {
        assert_eq!(proxy_header::parse(&documented[name]), Ok(source), "{name}");
    }
}

#[test]
fn the_proof_is_the_documented_hmac() {
    let documented = examples(&document());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &documented["proof-key"]);
    let tag = ring::hmac::sign(&key, &documented["proof-input"]);
    assert_eq!(hex(tag.as_ref()), hex(&documented["proof"]));
    assert!(resume_auth::verify(
        &secret(),
        &SESSION,
        &binding(),
        &documented["proof"].clone().try_into().expect("32 bytes")
    ));
}

/// The type byte the encoder writes for each message name.
fn type_bytes() -> BTreeMap<String, u8> {
    let first = |message: Message| encode(&message)[0];
    let mut out = BTreeMap::new();
    for (name, message) in messages() {
        let kind = match &message {
            Message::Hello(_) => "Hello",
            Message::Reply(_) => "Reply",
            Message::Frame(Frame::Data { .. }) => "Data",
            Message::Frame(Frame::Ack { .. }) => "Ack",
            Message::Frame(Frame::Ping { .. }) => "Ping",
            Message::Frame(Frame::Pong { .. }) => "Pong",
            Message::Frame(Frame::End { .. }) => "End",
            Message::Frame(Frame::Close { .. }) => "Close",
        };
        let byte = first(message);
        let before = out.insert(kind.to_owned(), byte);
        assert!(before.is_none() || before == Some(byte), "{name}");
    }
    out
}

#[test]
fn the_message_type_table_is_the_codecs() {
    let rows = table(&document(), "type");
    let documented: BTreeMap<String, u8> = rows
        .iter()
        .map(|row| {
            (
                row[1].clone(),
                u8::try_from(number(&row[0])).expect("a byte"),
            )
        })
        .collect();
    assert_eq!(documented, type_bytes());
    // Nothing else decodes: every other type byte is refused.
    let known: Vec<u8> = documented.values().copied().collect();
    for kind in (0..=u8::MAX).filter(|k| !known.contains(k)) {
        let payload = Bytes::from_static(&[0; 16]);
        assert!(Frame::decode(kind, payload.clone()).is_err(), "{kind:#04x}");
        assert!(Hello::decode(kind, payload.clone()).is_err(), "{kind:#04x}");
        assert!(Reply::decode(kind, payload).is_err(), "{kind:#04x}");
    }
}

#[test]
fn the_code_table_is_the_codecs() {
    let rows = table(&document(), "code");
    let documented: BTreeMap<u8, String> = rows
        .iter()
        .map(|row| {
            (
                u8::try_from(number(&row[0])).expect("a byte"),
                row[1].clone(),
            )
        })
        .collect();
    let mut known = BTreeMap::new();
    for n in 0..=u8::MAX {
        let Ok(Frame::Close { code, .. }) = Frame::decode(0x15, Bytes::from(vec![n, 0, 0])) else {
            panic!("a close with code {n} does not decode");
        };
        if code != Code::Other(n) {
            known.insert(n, format!("{code:?}"));
        }
    }
    assert_eq!(documented, known);
}

#[test]
fn the_constants_table_is_the_codes() {
    let code: BTreeMap<&str, u64> = [
        ("version", u64::from(wire::PROTOCOL_VERSION)),
        ("largest data payload", wire::MAX_DATA_LEN as u64),
        ("smallest max_data", wire::MIN_DATA_LEN as u64),
        ("largest handshake payload", wire::MAX_HANDSHAKE_LEN as u64),
        ("largest reason", wire::MAX_REASON_LEN as u64),
        ("largest host", wire::MAX_HOST_LEN as u64),
        ("largest instance name", MAX_NAME_LEN as u64),
        ("shortest dead_after_ms", MIN_DEAD_AFTER.as_millis() as u64),
        ("longest dead_after_ms", MAX_DEAD_AFTER.as_millis() as u64),
        (
            "failed resumes per source",
            u64::from(resume_auth::MAX_FAILURES),
        ),
        (
            "failure window",
            resume_auth::FAILURE_WINDOW.as_millis() as u64,
        ),
        (
            "largest PROXY header body",
            proxy_header::MAX_VARIABLE_LEN as u64,
        ),
        ("longest PROXY v1 line", proxy_header::V1_MAX_LEN as u64),
    ]
    .into_iter()
    .collect();
    let rows = table(&document(), "constant");
    let documented: BTreeMap<&str, u64> = rows
        .iter()
        .map(|row| (row[0].as_str(), number(&row[1])))
        .collect();
    assert_eq!(documented, code);
}

#[test]
fn the_documented_names_are_the_transports() {
    let doc = document();
    let alpn = std::str::from_utf8(ALPN).expect("ASCII");
    let label = std::str::from_utf8(BINDING_LABEL).expect("ASCII");
    for needle in [format!("`{alpn}`"), format!("`{label}`")] {
        assert!(
            doc.contains(&needle),
            "docs/protocol.md does not say {needle}"
        );
    }
    assert_eq!(BINDING_LEN, 32);
}
