//! The outgoing byte queue of one transport: encoded frames waiting to be written.
//!
//! Small frames (acks, heartbeats, data headers) are encoded together into one
//! buffer; data payloads stay where they are (shared [`Bytes`] from the replay
//! buffer) and are written with vectored writes, so no payload is copied on
//! its way to the socket. Pure: the driver hands out [`IoSlice`]s and reports
//! how much was written.

use crate::proto::wire::Frame;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Most slices handed to one vectored write.
pub const MAX_IO_SLICES: usize = 64;

/// Encoded frames waiting for the transport.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Sealed segments, in order.
    segments: VecDeque<Bytes>,
    /// Small encodings not yet sealed into a segment.
    open: BytesMut,
    /// Total bytes queued.
    len: usize,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> WriteQueue {
        WriteQueue::default()
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues one frame.
    pub fn push(&mut self, frame: &Frame) {
        let before = self.open.len();
        frame.encode_head(&mut self.open);
        self.len += self.open.len() - before;
        if let Frame::Data { bytes, .. } = frame {
            if !bytes.is_empty() {
                self.seal();
                self.len += bytes.len();
                self.segments.push_back(bytes.clone());
            }
        }
    }

    /// Queues bytes encoded elsewhere (a preamble, a handshake message).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.open.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn seal(&mut self) {
        if !self.open.is_empty() {
            self.segments.push_back(self.open.split().freeze());
        }
    }

    /// Fills `slices` with the queued bytes, front first; returns how many
    /// slices were filled.
    pub fn io_slices<'a>(&'a mut self, slices: &mut [IoSlice<'a>]) -> usize {
        self.seal();
        let mut n = 0;
        for (slot, segment) in slices.iter_mut().zip(self.segments.iter()) {
            *slot = IoSlice::new(segment);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes, which were written.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                // Only sealed bytes are ever handed out, so this is unreachable;
                // stay consistent rather than panic.
                self.open.advance(n.min(self.open.len()));
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.segments.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Drops everything (nothing more goes to the peer).
    pub fn clear(&mut self) {
        self.segments.clear();
        self.open.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{split_message, Frame};

    #[test]
    fn vectored_writes_in_any_sizes_reproduce_the_encoding() {
        let frames = vec![
            Frame::Ack { position: 7 },
            Frame::Data {
                offset: 0,
                bytes: Bytes::from(vec![1u8; 1000]),
            },
            Frame::Ping { token: 1 },
            Frame::Data {
                offset: 1000,
                bytes: Bytes::from(vec![2u8; 10]),
            },
            Frame::End { offset: 1010 },
        ];
        for step in [1usize, 3, 17, 1000, 5000] {
            let mut q = WriteQueue::new();
            for f in &frames {
                q.push(f);
            }
            let mut wire = BytesMut::new();
            while !q.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
                let n = q.io_slices(&mut slices);
                let mut budget = step;
                let mut written = 0;
                for s in &slices[..n] {
                    let take = s.len().min(budget);
                    wire.extend_from_slice(&s[..take]);
                    budget -= take;
                    written += take;
                }
                q.advance(written);
            }
            let mut decoded = Vec::new();
            while let Some((k, p)) = split_message(&mut wire).unwrap() {
                decoded.push(Frame::decode(k, p).unwrap());
            }
            assert_eq!(decoded, frames, "step {step}");
        }
    }
}
