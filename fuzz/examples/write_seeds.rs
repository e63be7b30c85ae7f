//! Writes the seed corpus, `fuzz/seeds/<target>/<name>`: real encodings of
//! every message type and a few scripted sessions. Run from `fuzz/`:
//!
//! ```text
//! cargo run --example write_seeds
//! ```
//!
//! The seeds are committed; run this again after changing the wire format
//! or a harness's input format, and commit the result.

use bytes::BytesMut;
use resumeproxy::proto::fleet::{Home, QuicRoute};
use resumeproxy::proto::proxy_header::SIGNATURE;
use resumeproxy::proto::resume_auth;
use resumeproxy::proto::wire::{
    Code, Frame, Hello, Preamble, Reply, SessionId, MAX_DATA_LEN, MIN_DATA_LEN, PREAMBLE_LEN,
    PROTOCOL_VERSION,
};
use resumeproxy_fuzz::handshake::{BINDING, SECRET};
use resumeproxy_fuzz::session::{Op, PeerFrame, Pick, Setup};
use resumeproxy_fuzz::{frames, proxy_header, session};
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut written = 0;
    for (target, seeds) in [
        ("frames", frame_seeds()),
        ("handshake", handshake_seeds()),
        ("session", session_seeds()),
        ("proxy_header", proxy_header_seeds()),
    ] {
        let dir = root.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            write(&dir, &name, &bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", root.display());
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::write(dir.join(name), bytes)
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.to_vec()
}

fn every_frame() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "data",
            Frame::Data {
                offset: 0,
                bytes: b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"[..].into(),
            },
        ),
        (
            "data-empty",
            Frame::Data {
                offset: 1 << 40,
                bytes: Default::default(),
            },
        ),
        (
            "data-min-limit",
            Frame::Data {
                offset: 77,
                bytes: vec![0xa5; MIN_DATA_LEN].into(),
            },
        ),
        ("ack", Frame::Ack { position: 4096 }),
        ("ping", Frame::Ping { token: 7 }),
        ("pong", Frame::Pong { token: 7 }),
        ("end", Frame::End { offset: 12345 }),
        (
            "close-done",
            Frame::Close {
                code: Code::Done,
                reason: "session complete".into(),
            },
        ),
        (
            "close-other",
            Frame::Close {
                code: Code::Other(200),
                reason: "réason ✓".into(),
            },
        ),
    ]
}

fn hellos() -> Vec<(&'static str, Hello)> {
    let session = SessionId([0x42; 16]);
    vec![
        (
            "hello-new-default",
            Hello::New {
                dead_after_ms: 5000,
                host: String::new(),
                port: 22,
            },
        ),
        (
            "hello-new-allowed",
            Hello::New {
                dead_after_ms: 500,
                host: "DB.internal".into(),
                port: 22,
            },
        ),
        (
            "hello-new-ipv6",
            Hello::New {
                dead_after_ms: 600_000,
                host: "[fd00::5]".into(),
                port: 2222,
            },
        ),
        (
            "hello-new-refused",
            Hello::New {
                dead_after_ms: u32::MAX,
                host: "evil.example".into(),
                port: 25,
            },
        ),
        (
            "hello-resume-good-proof",
            Hello::Resume {
                dead_after_ms: 5000,
                session,
                proof: resume_auth::proof(&SECRET, &session, &BINDING),
                received: 1 << 33,
            },
        ),
        (
            "hello-resume-bad-proof",
            Hello::Resume {
                dead_after_ms: 0,
                session,
                proof: [0; 32],
                received: 0,
            },
        ),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "reply-created",
            Reply::Created {
                session: SessionId([9; 16]),
                secret: [3; 32],
                grace_ms: 3_600_000,
                max_data: MAX_DATA_LEN as u32,
                home: Home {
                    instance: "relay-1".parse().expect("an instance name"),
                    quic: QuicRoute::Direct,
                },
            },
        ),
        (
            "reply-created-fleet-v4",
            Reply::Created {
                session: SessionId([9; 16]),
                secret: [3; 32],
                grace_ms: 60_000,
                max_data: MIN_DATA_LEN as u32,
                home: Home {
                    instance: "relay-2.bastion.example".parse().expect("an instance name"),
                    quic: QuicRoute::At("203.0.113.12:7022".parse().expect("an address")),
                },
            },
        ),
        (
            "reply-created-fleet-v6",
            Reply::Created {
                session: SessionId([9; 16]),
                secret: [3; 32],
                grace_ms: 60_000,
                max_data: MIN_DATA_LEN as u32,
                home: Home {
                    instance: "relay-3".parse().expect("an instance name"),
                    quic: QuicRoute::At("[2001:db8::13]:7022".parse().expect("an address")),
                },
            },
        ),
        (
            "reply-created-tcp-only",
            Reply::Created {
                session: SessionId([9; 16]),
                secret: [3; 32],
                grace_ms: 60_000,
                max_data: MIN_DATA_LEN as u32,
                home: Home {
                    instance: "relay-4".parse().expect("an instance name"),
                    quic: QuicRoute::TcpOnly,
                },
            },
        ),
        (
            "reply-refused-other-instance",
            Reply::Refused {
                code: Code::OtherInstance,
                reason:
                    "this is instance relay-3, not relay-2, which holds it: relay-2 is down or gone"
                        .into(),
            },
        ),
        (
            "reply-resumed",
            Reply::Resumed {
                received: 99,
                grace_ms: u64::MAX,
            },
        ),
        (
            "reply-refused",
            Reply::Refused {
                code: Code::UnknownSession,
                reason: "no such session on this relay".into(),
            },
        ),
    ]
}

fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut buf = BytesMut::new();
    hello.encode(&mut buf).expect("seed hellos are valid");
    buf.to_vec()
}

fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut buf = BytesMut::new();
    reply.encode(&mut buf);
    buf.to_vec()
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut all = Vec::new();
    for (name, frame) in every_frame() {
        let bytes = encoded(&frame);
        all.extend_from_slice(&bytes);
        seeds.push((
            format!("{name}-whole"),
            frames::seed(None, &[65536], &bytes),
        ));
        seeds.push((
            format!("{name}-bytewise"),
            frames::seed(Some((MIN_DATA_LEN + 8) as u32), &[1], &bytes),
        ));
    }
    for (name, hello) in hellos() {
        seeds.push((
            name.into(),
            frames::seed(None, &[7, 3], &encode_hello(&hello)),
        ));
    }
    for (name, reply) in replies() {
        seeds.push((
            name.into(),
            frames::seed(None, &[2, 64], &encode_reply(&reply)),
        ));
    }
    seeds.push((
        "all-chunked".into(),
        frames::seed(None, &[1, 5, 2, 9, 300], &all),
    ));
    seeds.push((
        "all-then-partial".into(),
        frames::seed(None, &[4096], &[&all[..], &all[..7]].concat()),
    ));
    // The session limit refuses a data frame one byte too long.
    let too_long = encoded(&Frame::Data {
        offset: 0,
        bytes: vec![1; MIN_DATA_LEN + 1].into(),
    });
    seeds.push((
        "data-over-limit".into(),
        frames::seed(Some((MIN_DATA_LEN + 8) as u32), &[5, 1000], &too_long),
    ));
    // A header announcing 4 GiB.
    seeds.push((
        "header-4gib".into(),
        frames::seed(None, &[1], &[0x10, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    ));
    seeds
}

fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
    let preamble = Preamble::CURRENT.encode();
    let mut seeds = Vec::new();
    for (name, hello) in hellos() {
        seeds.push((name.into(), [&preamble[..], &encode_hello(&hello)].concat()));
    }
    for (name, reply) in replies() {
        seeds.push((name.into(), [&preamble[..], &encode_reply(&reply)].concat()));
    }
    let refusal = encoded(&Frame::Close {
        code: Code::Version,
        reason: "peer speaks protocol version 3".into(),
    });
    seeds.push((
        "close-as-reply".into(),
        [&preamble[..], &refusal[..]].concat(),
    ));
    seeds.push((
        "ssh-banner".into(),
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n".to_vec(),
    ));
    let mut newer = Preamble::CURRENT.encode();
    newer[PREAMBLE_LEN - 2..].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    seeds.push(("newer-version".into(), newer.to_vec()));
    seeds.push((
        "tls-client-hello".into(),
        vec![0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc],
    ));
    seeds
}

fn session_seeds() -> Vec<(String, Vec<u8>)> {
    use Op::*;
    let small = Setup {
        replay: 4095,
        deliver: 8191,
        max_data: 0,
        dead_after_ms: 4500,
    };
    let ack_all = Frame(PeerFrame::Ack(Pick::Sent(0)));
    let data = |len| {
        Frame(PeerFrame::Data {
            offset: Pick::Received(0),
            len,
        })
    };
    let mut ping = BytesMut::new();
    resumeproxy::proto::wire::Frame::Ping { token: 1 }.encode(&mut ping);
    let scripts: Vec<(&str, Setup, Vec<Op>)> = vec![
        (
            "transfer",
            small,
            vec![
                Attach(Pick::Acked(0)),
                Push(3000),
                Transmit,
                ack_all.clone(),
                data(500),
                data(700),
                Pop,
                Transmit,
                Frame(PeerFrame::End(Pick::Received(0))),
                LocalEof,
                Transmit,
                ack_all.clone(),
                Pop,
                Transmit,
            ],
        ),
        (
            "break-and-resume",
            small,
            vec![
                Attach(Pick::Acked(0)),
                Push(5000),
                Transmit,
                Frame(PeerFrame::Ack(Pick::Sent(-100))),
                Detach,
                Push(5000),
                Attach(Pick::Acked(50)),
                Transmit,
                data(300),
                Detach,
                Attach(Pick::SentHigh(0)),
                LocalEof,
                Transmit,
                ack_all.clone(),
                Frame(PeerFrame::End(Pick::Received(0))),
                Pop,
            ],
        ),
        (
            "heartbeats",
            small,
            vec![
                Attach(Pick::Acked(0)),
                Tick(1500),
                Transmit,
                Frame(PeerFrame::Pong(None)),
                Frame(PeerFrame::Ping(42)),
                Transmit,
                Tick(6000),
                Attach(Pick::Acked(0)),
                Transmit,
            ],
        ),
        (
            "backpressure-and-close",
            Setup {
                replay: 100,
                deliver: 100,
                max_data: 1000,
                dead_after_ms: 0,
            },
            vec![
                Attach(Pick::Acked(0)),
                data(80),
                data(80),
                data(80),
                Pop,
                data(2000),
                CloseOutput,
                data(10),
                Raw(ping.to_vec()),
                Transmit,
                Frame(PeerFrame::Close(0, 12)),
                data(1),
            ],
        ),
        (
            "data-at-wrong-offset",
            small,
            vec![
                Attach(Pick::Acked(0)),
                Frame(PeerFrame::Data {
                    offset: Pick::Received(5),
                    len: 10,
                }),
            ],
        ),
        (
            "ack-beyond-sent",
            small,
            vec![
                Attach(Pick::Acked(0)),
                Push(10),
                Transmit,
                Frame(PeerFrame::Ack(Pick::Sent(1))),
            ],
        ),
        (
            "resume-beyond-sent",
            small,
            vec![Attach(Pick::Acked(0)), Push(10), Attach(Pick::SentHigh(1))],
        ),
        (
            "raw-garbage",
            small,
            vec![
                Attach(Pick::Acked(0)),
                Raw(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
            ],
        ),
    ];
    scripts
        .into_iter()
        .map(|(name, setup, ops)| (name.to_owned(), session::seed(setup, &ops)))
        .collect()
}

/// A version 2 header: `ver_cmd`, `family`, then `body`.
fn proxy_v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, family]);
    out.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Headers of both versions as nginx and HAProxy send them, each followed
/// by the start of a TLS ClientHello, whole and in small chunks; and what
/// is not a header.
fn proxy_header_seeds() -> Vec<(String, Vec<u8>)> {
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
    ];
    let mut v6 = vec![0u8; 36];
    v6[..16].copy_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6[32..34].copy_from_slice(&443u16.to_be_bytes());
    let mut v6_tlvs = v6.clone();
    v6_tlvs.extend_from_slice(&[0x04, 0x00, 0x02, 0xaa, 0xbb]);
    let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let headers: Vec<(&str, Vec<u8>)> = vec![
        (
            "v1-tcp4",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022\r\n".to_vec(),
        ),
        (
            "v1-tcp6",
            b"PROXY TCP6 2001:db8::7 2001:db8::1 443 7022\r\n".to_vec(),
        ),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec()),
        (
            "v1-longest",
            format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n").into_bytes(),
        ),
        (
            "v1-lf-only",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 36496 7022\n".to_vec(),
        ),
        (
            "v1-bad-port",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 7022\r\n".to_vec(),
        ),
        ("v1-no-end", [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat()),
        (
            "v2-tcp4",
            proxy_v2(
                0x21,
                0x11,
                &[203, 0, 113, 7, 192, 0, 2, 1, 0x8e, 0x90, 0x1b, 0x6e],
            ),
        ),
        ("v2-tcp6-tlvs", proxy_v2(0x21, 0x21, &v6_tlvs)),
        ("v2-local", proxy_v2(0x20, 0x00, &[])),
        ("v2-unspec", proxy_v2(0x21, 0x00, &[])),
        ("v2-truncated", proxy_v2(0x21, 0x11, &[1, 2, 3])),
        ("v2-bad-version", proxy_v2(0x11, 0x11, &[0; 12])),
        ("tls-hello", Vec::new()),
    ];
    let mut seeds = Vec::new();
    for (name, header) in headers {
        let mut stream = header;
        stream.extend_from_slice(&hello);
        seeds.push((format!("{name}-whole"), proxy_header::seed(&[256], &stream)));
        seeds.push((
            format!("{name}-chunked"),
            proxy_header::seed(&[1, 3, 7], &stream),
        ));
    }
    seeds
}
