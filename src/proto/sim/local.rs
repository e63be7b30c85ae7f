//! A local end of the simulation (ssh on the client, sshd on the relay): it
//! writes its whole input, then closes, and checks every byte it reads
//! against what the other local end wrote — in order, exactly once, the end
//! of the stream only after its last byte.

use crate::proto::session::Session;
use bytes::Bytes;
use std::rc::Rc;

/// One local end.
pub(super) struct Local {
    /// What it writes, all of it eventually.
    input: Rc<Vec<u8>>,
    /// How much of `input` the session took.
    pushed: usize,
    /// What the other local end writes: what this one must read.
    expected: Rc<Vec<u8>>,
    /// How much of `expected` it read.
    pub(super) read: usize,
    /// It was told the other's stream ended.
    pub(super) end_taken: bool,
}

impl Local {
    pub(super) fn new(input: Rc<Vec<u8>>, expected: Rc<Vec<u8>>) -> Local {
        Local {
            input,
            pushed: 0,
            expected,
            read: 0,
            end_taken: false,
        }
    }

    /// Writes up to `n` more bytes, as many as the session takes; closes
    /// its output once all are written.
    pub(super) fn write(&mut self, session: &mut Session, n: usize) {
        let n = n
            .min(session.local_room())
            .min(self.input.len() - self.pushed);
        if n > 0 {
            let chunk = Bytes::copy_from_slice(&self.input[self.pushed..self.pushed + n]);
            session.push_local(chunk);
            self.pushed += n;
        }
        if self.pushed == self.input.len() && !session.is_local_eof() {
            session.local_eof();
        }
    }

    /// Reads up to `n` bytes the session delivers, and the end of the
    /// stream once everything before it was read.
    pub(super) fn read(&mut self, session: &mut Session, mut n: usize) -> Result<(), String> {
        while n > 0 {
            let Some(chunk) = session.pending_delivery() else {
                break;
            };
            let take = chunk.len().min(n);
            let want = self.expected.get(self.read..self.read + take);
            if want != Some(&chunk[..take]) {
                return Err(format!(
                    "the local end read {take} bytes at offset {} that the other end did not write there (it wrote {})",
                    self.read,
                    self.expected.len()
                ));
            }
            session.delivered(take);
            self.read += take;
            n -= take;
        }
        if session.deliver_finished() && !self.end_taken {
            if self.read != self.expected.len() {
                return Err(format!(
                    "the end of the stream after {} of {} bytes",
                    self.read,
                    self.expected.len()
                ));
            }
            session.local_output_shut();
            self.end_taken = true;
        }
        Ok(())
    }

    /// It read everything the other end wrote, and the end of the stream.
    pub(super) fn complete(&self) -> bool {
        self.end_taken && self.read == self.expected.len()
    }
}
