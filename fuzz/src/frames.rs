//! The `frames` target: the frame decoder, fed in arbitrary chunkings.
//!
//! Input: one byte choosing the payload limit (0: [`split_message`], the
//! handshake's; otherwise a u32 for [`split_message_within`], the session's),
//! one byte for how many chunk sizes follow (1 to [`MAX_CHUNK_SIZES`]), the
//! chunk sizes (u16 each, plus one), then the byte stream. The stream is fed
//! to the decoder in chunks of those sizes, in turn.
//!
//! Asserts:
//! * nothing panics;
//! * chunking changes nothing: the messages split off, and the error or the
//!   bytes left waiting, are those of a plain reference parse of the whole
//!   stream, and a header announcing more than the limit is refused as soon
//!   as it is complete;
//! * the decoder never waits with more than one message's worth buffered,
//!   and the heap it uses stays within [`heap_bound`], which depends on the
//!   limit and the read size but not on the stream's length;
//! * every message that decodes as a [`Frame`], [`Hello`] or [`Reply`]
//!   encodes back to exactly the bytes it came from (a [`Frame::Close`]
//!   read as [`Reply::Refused`] excepted: it carries the same code and reason).

use crate::alloc;
use crate::input::Input;
use bytes::{BufMut, Bytes, BytesMut};
use resumeproxy::proto::wire::{
    split_message, split_message_within, Code, DecodeError, Frame, Hello, Reply, HEADER_LEN,
    MAX_DATA_LEN, MAX_PAYLOAD_LEN, MIN_DATA_LEN,
};

/// Most chunk sizes one input names.
pub const MAX_CHUNK_SIZES: u8 = 8;

/// How the decoder ended: the messages it split off, then what stopped it.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Each message's type and payload, in order.
    pub messages: Vec<(u8, Bytes)>,
    /// Why no further message came.
    pub end: End,
}

/// What stopped the decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// It waits for more bytes, holding these.
    Waiting(Bytes),
    /// It refused the stream.
    Failed(DecodeError),
}

/// Writes a `frames` input: `limit` (`None`: [`split_message`]), chunk
/// sizes (1 to 65536 each, at most [`MAX_CHUNK_SIZES`]), then `stream`.
pub fn seed(limit: Option<u32>, chunks: &[usize], stream: &[u8]) -> Vec<u8> {
    assert!(!chunks.is_empty() && chunks.len() <= usize::from(MAX_CHUNK_SIZES));
    let mut out = Vec::new();
    match limit {
        None => out.push(0),
        Some(limit) => {
            out.push(1);
            out.extend_from_slice(&limit.to_be_bytes());
        }
    }
    out.push(chunks.len() as u8 - 1);
    for &c in chunks {
        let c = u16::try_from(c - 1).expect("chunk size 1..=65536");
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(stream);
    out
}

/// Runs one `frames` input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = match input.u8() {
        0 => None,
        _ => Some(input.u32() as usize % (2 * MAX_PAYLOAD_LEN)),
    };
    let count = usize::from(input.u8() % MAX_CHUNK_SIZES) + 1;
    let chunks: Vec<usize> = (0..count).map(|_| usize::from(input.u16()) + 1).collect();
    let stream = input.rest();
    let max = limit.unwrap_or(MAX_PAYLOAD_LEN).min(MAX_PAYLOAD_LEN);

    let expected = reference(stream, max);
    let (end, peak) = alloc::measure(|| decode_chunked(stream, limit, &chunks, &expected));
    assert_eq!(end, expected.end, "chunking changed the result");
    let largest_chunk = chunks.iter().copied().max().unwrap_or(1).min(stream.len());
    let bound = heap_bound(max, largest_chunk);
    assert!(
        peak <= bound,
        "decoding {} bytes in chunks of up to {largest_chunk} with a limit of {max} \
         used {peak} bytes of heap, more than {bound}",
        stream.len()
    );
    for (kind, payload) in &expected.messages {
        check_message(*kind, payload);
    }
}

/// Most heap the decoder may use with a payload limit of `max`, fed reads of
/// at most `largest_read` bytes, when each message is dropped once handled:
/// it buffers less than one message and one read, growth may double the
/// buffer, and the old buffer lives until the new one has been filled. It
/// does not grow with the length of the stream.
pub fn heap_bound(max: usize, largest_read: usize) -> usize {
    4 * (HEADER_LEN + max + largest_read) + 4096
}

/// Feeds `stream` to the decoder in chunks of the given sizes, as a reader
/// of a socket would, checks each message it splits off against `expected`
/// and drops it, and returns what stopped it.
fn decode_chunked(
    stream: &[u8],
    limit: Option<usize>,
    chunks: &[usize],
    expected: &Outcome,
) -> End {
    let max = limit.unwrap_or(MAX_PAYLOAD_LEN).min(MAX_PAYLOAD_LEN);
    let mut buf = BytesMut::new();
    let mut expected_messages = expected.messages.iter();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let split = match limit {
                None => split_message(&mut buf),
                Some(limit) => split_message_within(&mut buf, limit),
            };
            match split {
                Ok(Some((kind, payload))) => {
                    assert!(payload.len() <= max, "payload over the limit");
                    assert_eq!(buf.len(), before - HEADER_LEN - payload.len());
                    assert_eq!(
                        Some(&(kind, payload)),
                        expected_messages.next(),
                        "chunking changed a message"
                    );
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting consumed bytes");
                    assert!(
                        buf.len() < HEADER_LEN + max,
                        "waiting with {} bytes buffered, a whole message's worth",
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    assert_eq!(expected_messages.next(), None, "a message was missed");
                    return End::Failed(e);
                }
            }
        }
    }
    assert_eq!(expected_messages.next(), None, "a message was missed");
    End::Waiting(buf.freeze())
}

/// The plain reading of the message format, all at once.
fn reference(stream: &[u8], max: usize) -> Outcome {
    let mut messages = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < HEADER_LEN {
            break;
        }
        let kind = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > max {
            return Outcome {
                messages,
                end: End::Failed(DecodeError::TooLong { kind, len, max }),
            };
        }
        if rest.len() < HEADER_LEN + len {
            break;
        }
        messages.push((
            kind,
            Bytes::copy_from_slice(&rest[HEADER_LEN..HEADER_LEN + len]),
        ));
        rest = &rest[HEADER_LEN + len..];
    }
    Outcome {
        messages,
        end: End::Waiting(Bytes::copy_from_slice(rest)),
    }
}

/// The message type of a [`Frame::Close`].
fn close_kind() -> u8 {
    let mut buf = BytesMut::new();
    Frame::Close {
        code: Code::Done,
        reason: String::new(),
    }
    .encode(&mut buf);
    buf[0]
}

/// Decodes one message every way the programs do, and checks that whatever
/// decodes encodes back to the same bytes.
pub fn check_message(kind: u8, payload: &Bytes) {
    let mut original = BytesMut::with_capacity(HEADER_LEN + payload.len());
    original.put_u8(kind);
    original.put_u32(payload.len() as u32);
    original.put_slice(payload);

    let frame = Frame::decode(kind, payload.clone());
    match &frame {
        Ok(frame) => {
            let mut again = BytesMut::new();
            frame.encode(&mut again);
            assert_eq!(again, original, "{frame:?} re-encodes differently");
            let mut head = BytesMut::new();
            frame.encode_head(&mut head);
            if let Frame::Data { bytes, .. } = frame {
                assert!(bytes.len() <= MAX_DATA_LEN);
                head.put_slice(bytes);
            }
            assert_eq!(
                head, original,
                "{frame:?}: head and payload differ from encode"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    match Hello::decode(kind, payload.clone()) {
        Ok(hello) => {
            let mut again = BytesMut::new();
            hello.encode(&mut again).expect("a decoded hello encodes");
            assert_eq!(again, original, "{hello:?} re-encodes differently");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    match Reply::decode(kind, payload.clone()) {
        Ok(reply) if kind == close_kind() => match (frame, &reply) {
            (Ok(Frame::Close { code, reason }), Reply::Refused { code: c, reason: r }) => {
                assert_eq!((code, &reason), (*c, r));
            }
            other => panic!("a close read as a reply: {other:?}"),
        },
        Ok(reply) => {
            if let Reply::Created { max_data, .. } = reply {
                assert!((MIN_DATA_LEN..=MAX_DATA_LEN).contains(&(max_data as usize)));
            }
            let mut again = BytesMut::new();
            reply.encode(&mut again);
            assert_eq!(again, original, "{reply:?} re-encodes differently");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
