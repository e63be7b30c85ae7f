//! A blocking reader or writer on a thread of its own, as an async handle:
//! how the client reads and writes ssh's pipes where they cannot be made
//! non-blocking (Windows' anonymous pipes).
//!
//! Each direction has one plain thread (not tokio's blocking pool, whose
//! threads the runtime waits for when it shuts down: a read of ssh's pipe
//! may never return). Between the thread and the task is a queue bounded
//! at [`QUEUE_LIMIT`] bytes: a full queue stops the reading thread, and
//! makes `poll_write` wait, so backpressure reaches the other side as with
//! the pipes themselves. A write error is reported at the next write, flush
//! or shutdown, as a buffered writer does. Shutting the writer down waits
//! until the thread has written what was queued and closed the pipe.
//!
//! Plain std (a mutex, a condition variable, the task's waker): it is
//! tested on every platform with pipes, though only Windows uses it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes queued each way, at most (plus one read's chunk).
pub const QUEUE_LIMIT: usize = 256 * 1024;
/// What one read asks for.
const READ_CHUNK: usize = 64 * 1024;

/// The state both sides of a queue share, and the condition the thread
/// waits on.
struct Shared<S> {
    state: Mutex<S>,
    changed: Condvar,
}

impl<S> Shared<S> {
    fn new(state: S) -> Arc<Shared<S>> {
        Arc::new(Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
        })
    }

    /// The state; a thread that panicked holding it left it usable.
    fn lock(&self) -> MutexGuard<'_, S> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, S>) -> MutexGuard<'a, S> {
        self.changed
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The reading side's state.
#[derive(Default)]
struct ReadState {
    /// Chunks read and not yet taken, and how far into the first one.
    chunks: VecDeque<Vec<u8>>,
    taken: usize,
    /// Bytes in `chunks` not yet taken.
    queued: usize,
    /// The source ended (`Ok`) or failed; after what is queued.
    end: Option<io::Result<()>>,
    /// The handle was dropped: the thread stops at its next turn.
    dropped: bool,
    /// The task waiting for bytes.
    waker: Option<Waker>,
}

/// Reads `R` on a thread; see the module's doc.
pub struct ThreadedReader {
    shared: Arc<Shared<ReadState>>,
}

impl ThreadedReader {
    /// Starts the thread that reads `source`.
    pub fn spawn<R: Read + Send + 'static>(source: R) -> io::Result<ThreadedReader> {
        let shared = Shared::new(ReadState::default());
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || read_loop(source, &theirs))?;
        Ok(ThreadedReader { shared })
    }
}

fn read_loop<R: Read>(mut source: R, shared: &Shared<ReadState>) {
    loop {
        {
            let mut state = shared.lock();
            while state.queued >= QUEUE_LIMIT && !state.dropped {
                state = shared.wait(state);
            }
            if state.dropped {
                return;
            }
        }
        let mut chunk = vec![0; READ_CHUNK];
        let result = source.read(&mut chunk);
        let mut state = shared.lock();
        match result {
            Ok(0) => state.end = Some(Ok(())),
            Ok(n) => {
                chunk.truncate(n);
                state.queued += n;
                state.chunks.push_back(chunk);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => state.end = Some(Err(e)),
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        if state.end.is_some() {
            return;
        }
    }
}

impl AsyncRead for ThreadedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        if let Some(chunk) = state.chunks.front() {
            let rest = &chunk[state.taken..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            state.taken += n;
            state.queued -= n;
            if state.taken == chunk.len() {
                state.chunks.pop_front();
                state.taken = 0;
            }
            self.shared.changed.notify_one();
            return Poll::Ready(Ok(()));
        }
        match &mut state.end {
            Some(Ok(())) => Poll::Ready(Ok(())),
            Some(Err(e)) => {
                let e = std::mem::replace(e, io::ErrorKind::BrokenPipe.into());
                Poll::Ready(Err(e))
            }
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ThreadedReader {
    fn drop(&mut self) {
        self.shared.lock().dropped = true;
        self.shared.changed.notify_one();
    }
}

/// The writing side's state.
#[derive(Default)]
struct WriteState {
    /// Chunks accepted and not yet written.
    chunks: VecDeque<Vec<u8>>,
    /// Bytes accepted and not yet written (the thread's current chunk too).
    queued: usize,
    /// No more chunks: the thread writes what is queued, then closes.
    closing: bool,
    /// The thread has stopped (and closed the sink).
    done: bool,
    /// Why the last write failed.
    error: Option<io::Error>,
    /// The task waiting for room, a flush or the close.
    waker: Option<Waker>,
}

impl WriteState {
    /// The error to report, if a write failed (reported once in full,
    /// then by its kind).
    fn failed(&mut self) -> Option<io::Error> {
        let e = self.error.take()?;
        self.error = Some(e.kind().into());
        Some(e)
    }
}

/// Writes to `W` on a thread; see the module's doc.
pub struct ThreadedWriter {
    shared: Arc<Shared<WriteState>>,
}

impl ThreadedWriter {
    /// Starts the thread that writes to `sink`, and drops it (closing it)
    /// at shutdown.
    pub fn spawn<W: Write + Send + 'static>(sink: W) -> io::Result<ThreadedWriter> {
        let shared = Shared::new(WriteState::default());
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || write_loop(sink, &theirs))?;
        Ok(ThreadedWriter { shared })
    }
}

fn write_loop<W: Write>(mut sink: W, shared: &Shared<WriteState>) {
    let error = loop {
        let chunk = {
            let mut state = shared.lock();
            while state.chunks.is_empty() && !state.closing {
                state = shared.wait(state);
            }
            match state.chunks.pop_front() {
                Some(chunk) => chunk,
                None => break None,
            }
        };
        let result = sink.write_all(&chunk).and_then(|()| sink.flush());
        let mut state = shared.lock();
        state.queued -= chunk.len();
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        if let Err(e) = result {
            break Some(e);
        }
    };
    // Closed before `done` is seen: after a shutdown, the reader of the
    // pipe has its end of file.
    drop(sink);
    let mut state = shared.lock();
    state.done = true;
    if error.is_some() {
        state.error = error;
    }
    state.chunks.clear();
    state.queued = 0;
    if let Some(waker) = state.waker.take() {
        waker.wake();
    }
}

impl AsyncWrite for ThreadedWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        if let Some(e) = state.failed() {
            return Poll::Ready(Err(e));
        }
        if state.closing || state.done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = QUEUE_LIMIT.saturating_sub(state.queued);
        if room == 0 {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(room);
        state.chunks.push_back(data[..n].to_vec());
        state.queued += n;
        self.shared.changed.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if let Some(e) = state.failed() {
            return Poll::Ready(Err(e));
        }
        if state.queued == 0 || state.done {
            return Poll::Ready(Ok(()));
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if state.done {
            return Poll::Ready(state.failed().map_or(Ok(()), Err));
        }
        state.closing = true;
        state.waker = Some(cx.waker().clone());
        self.shared.changed.notify_one();
        Poll::Pending
    }
}

impl Drop for ThreadedWriter {
    fn drop(&mut self) {
        // What was queued is still written; then the sink is closed.
        self.shared.lock().closing = true;
        self.shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BOUND: Duration = Duration::from_secs(20);

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A pipe, read and written by threads.
    fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
        std::io::pipe().expect("pipe")
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_whole_and_in_order_with_the_end() {
        // stdout: the task writes through a ThreadedWriter into a pipe; a
        // plain thread reads the other end to its end of file.
        let len = 3 * QUEUE_LIMIT + 12_345;
        let data = pattern(len);
        let (out_read, out_write) = pipe();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::BufReader::new(out_read)
                .read_to_end(&mut all)
                .map(|_| all)
        });
        let mut writer = ThreadedWriter::spawn(out_write).expect("writer");
        tokio::time::timeout(BOUND, async {
            for piece in data.chunks(10_000) {
                writer.write_all(piece).await.expect("write");
            }
            writer.flush().await.expect("flush");
            writer.shutdown().await.expect("shutdown");
        })
        .await
        .expect("the writes are done in time");
        // Shut down: the pipe is closed, so the reader has its end already.
        let got = reader.join().expect("reader thread").expect("read");
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
        assert!(writer.write(b"x").await.is_err(), "a write after shutdown");

        // stdin: a plain thread writes into a pipe, the task reads it
        // through a ThreadedReader until the end.
        let (in_read, in_write) = pipe();
        let sent = data.clone();
        let feeder = std::thread::spawn(move || {
            let mut in_write = in_write;
            in_write.write_all(&sent)
        });
        let mut input = ThreadedReader::spawn(in_read).expect("reader");
        let mut got = Vec::new();
        tokio::time::timeout(BOUND, input.read_to_end(&mut got))
            .await
            .expect("the reads are done in time")
            .expect("read");
        feeder.join().expect("feeder thread").expect("write");
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    }

    #[tokio::test]
    async fn a_full_queue_holds_back_the_reader_thread() {
        let (in_read, in_write) = pipe();
        let total = QUEUE_LIMIT + 4 * READ_CHUNK + 8 * 65_536;
        let feeder = std::thread::spawn(move || {
            let mut in_write = in_write;
            in_write.write_all(&pattern(total))
        });
        let input = ThreadedReader::spawn(in_read).expect("reader");
        // Nobody reads: the thread stops once the queue is full, and the
        // rest stays in the pipe (so the feeder blocks, unfinished).
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let queued = input.shared.lock().queued;
            if queued >= QUEUE_LIMIT {
                assert!(queued < QUEUE_LIMIT + READ_CHUNK, "queued {queued}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "queue never filled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!feeder.is_finished(), "the pipe took everything");
        // Reading drains it all.
        let mut input = input;
        let mut got = Vec::new();
        tokio::time::timeout(BOUND, input.read_to_end(&mut got))
            .await
            .expect("drained in time")
            .expect("read");
        assert_eq!(got.len(), total);
        feeder.join().expect("feeder").expect("write");
    }

    #[tokio::test]
    async fn a_write_error_is_reported_at_the_next_call() {
        // The pipe's reader is gone: writing fails (EPIPE).
        let (out_read, out_write) = pipe();
        drop(out_read);
        let mut writer = ThreadedWriter::spawn(out_write).expect("writer");
        let result = tokio::time::timeout(BOUND, async {
            loop {
                if let Err(e) = writer.write_all(&[0; 4096]).await {
                    return e;
                }
                if let Err(e) = writer.flush().await {
                    return e;
                }
            }
        })
        .await
        .expect("the error is seen in time");
        assert_eq!(result.kind(), io::ErrorKind::BrokenPipe);
        assert!(writer.shutdown().await.is_err());
    }
}
