//! Tests of the batching socket and the turns that end by sending.

use super::*;
use quinn::AsyncUdpSocket;
use std::net::Ipv4Addr;
use std::task::Waker;
use std::time::Duration;
use tokio::sync::Notify;

const SIZE: usize = 1452;
const MAX: usize = 64;

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A batch of `n` datagrams of `SIZE` (the last `last` bytes long)
/// to `port`, each byte `fill`.
fn batch(port: u16, n: usize, last: usize, fill: u8) -> (SocketAddr, Vec<u8>, Option<usize>) {
    let contents = vec![fill; SIZE * (n - 1) + last];
    (peer(port), contents, (n > 1).then_some(SIZE))
}

fn transmit(b: &(SocketAddr, Vec<u8>, Option<usize>)) -> Transmit<'_> {
    Transmit {
        destination: b.0,
        ecn: None,
        contents: &b.1,
        segment_size: b.2,
        src_ip: None,
    }
}

#[test]
fn only_a_full_batch_with_room_for_another_is_held() {
    let full = batch(1, FULL_BATCH, SIZE, 0);
    assert!(Held::worth_holding(&transmit(&full), MAX));
    assert!(!Held::worth_holding(&transmit(&full), 2 * FULL_BATCH - 1));
    for other in [
        batch(1, FULL_BATCH - 1, SIZE, 0),
        batch(1, FULL_BATCH, SIZE - 1, 0),
        batch(1, 1, 40, 0),
    ] {
        assert!(!Held::worth_holding(&transmit(&other), MAX));
    }
}

#[test]
fn only_what_can_go_in_one_send_is_added() {
    let first = batch(1, FULL_BATCH, SIZE, 0);
    let mut held = Held::default();
    assert!(!held.takes(&transmit(&first), MAX));
    held.hold(&transmit(&first));
    assert!(held.takes(&transmit(&batch(1, FULL_BATCH, 100, 0)), MAX));
    assert!(held.takes(&transmit(&batch(1, 1, 40, 0)), MAX));
    assert!(!held.takes(&transmit(&batch(2, FULL_BATCH, SIZE, 0)), MAX));
    assert!(!held.takes(&transmit(&batch(1, FULL_BATCH, SIZE, 0)), 19));
    let larger = (peer(1), vec![0; 2 * (SIZE + 8)], Some(SIZE + 8));
    assert!(!held.takes(&transmit(&larger), MAX));
    let mut marked = transmit(&first);
    marked.ecn = Some(EcnCodepoint::Ce);
    assert!(!held.takes(&marked, MAX));
    let mut sourced = transmit(&first);
    sourced.src_ip = Some(Ipv4Addr::LOCALHOST.into());
    assert!(!held.takes(&sourced, MAX));
    // Within one IPv4 datagram's payload.
    let big = (peer(1), vec![0; 30 * 1200], Some(1200));
    held.hold(&transmit(&big));
    assert!(held.takes(&transmit(&(peer(1), vec![0; 24 * 1200], Some(1200))), MAX));
    assert!(!held.takes(&transmit(&(peer(1), vec![0; 25 * 1200], Some(1200))), MAX));
}

/// A socket that records what it is given to send, and is full while
/// told so.
#[derive(Debug, Default)]
struct Recorder {
    state: Mutex<RecorderState>,
    sent: Notify,
}

#[derive(Debug, Default)]
struct RecorderState {
    /// Each send: peer, bytes (the fill of each datagram), size.
    sends: Vec<(SocketAddr, Vec<u8>, Option<usize>)>,
    full: bool,
    writable: Vec<Waker>,
}

impl Recorder {
    fn set_full(&self, full: bool) {
        let mut state = lock(&self.state);
        state.full = full;
        if !full {
            state.writable.drain(..).for_each(Waker::wake);
        }
    }

    fn sends(&self) -> Vec<(SocketAddr, Vec<u8>, Option<usize>)> {
        lock(&self.state).sends.clone()
    }

    async fn sent(&self, n: usize) -> Vec<(SocketAddr, Vec<u8>, Option<usize>)> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let told = self.sent.notified();
                if self.sends().len() >= n {
                    return self.sends();
                }
                told.await;
            }
        })
        .await
        .expect("sent in time")
    }
}

#[derive(Debug)]
struct RecorderPoller(Arc<Recorder>);

impl quinn::UdpPoller for RecorderPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = lock(&self.0.state);
        if state.full {
            state.writable.push(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for Recorder {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(RecorderPoller(self))
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let sent = (t.destination, t.contents.to_vec(), t.segment_size);
        state.sends.push(sent);
        self.sent.notify_waiters();
        Ok(())
    }

    fn poll_recv(
        &self,
        _: &mut Context<'_>,
        _: &mut [io::IoSliceMut<'_>],
        _: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(peer(0))
    }

    fn max_transmit_segments(&self) -> usize {
        MAX
    }
}

fn wrapped() -> (Arc<Recorder>, Arc<Batching>) {
    let recorder = Arc::new(Recorder::default());
    let socket = Batching::wrap(Arc::clone(&recorder) as Arc<dyn quinn::AsyncUdpSocket>);
    (recorder, socket)
}

/// Runs `f` as one turn of a driver under [`BatchingRuntime`] (the
/// test's runtime has one thread: the turn, and what ends it, is over
/// when this returns).
async fn turn(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = tokio::sync::oneshot::channel();
    quinn::Runtime::spawn(
        &BatchingRuntime,
        Box::pin(async move {
            f();
            let _ = done.send(());
        }),
    );
    tokio::time::timeout(Duration::from_secs(5), finished)
        .await
        .expect("the turn ran")
        .expect("the turn ended");
    tokio::task::yield_now().await;
}

#[tokio::test]
async fn two_full_batches_in_a_turn_go_in_one_send_in_order() {
    let (recorder, socket) = wrapped();
    let one = batch(1, FULL_BATCH, SIZE, 1);
    let two = batch(1, FULL_BATCH, 700, 2);
    let (r, expected) = (
        Arc::clone(&recorder),
        [one.1.clone(), two.1.clone()].concat(),
    );
    turn(move || {
        socket.try_send(&transmit(&one)).unwrap();
        assert!(r.sends().is_empty());
        socket.try_send(&transmit(&two)).unwrap();
    })
    .await;
    assert_eq!(recorder.sends(), [(peer(1), expected, Some(SIZE))]);
}

#[tokio::test]
async fn what_cannot_join_goes_after_what_is_held_and_is_not_held() {
    let (recorder, socket) = wrapped();
    let full = batch(1, FULL_BATCH, SIZE, 1);
    let other_peer = batch(2, FULL_BATCH, SIZE, 2);
    let ack = batch(1, 1, 40, 3);
    let expected = [full.clone(), other_peer.clone(), ack.clone()];
    let r = Arc::clone(&recorder);
    turn(move || {
        socket.try_send(&transmit(&full)).unwrap();
        socket.try_send(&transmit(&other_peer)).unwrap();
        assert_eq!(r.sends().len(), 1);
        socket.try_send(&transmit(&ack)).unwrap();
    })
    .await;
    assert_eq!(recorder.sends(), expected);
}

#[tokio::test]
async fn a_batch_left_held_goes_as_the_turn_ends_and_nothing_is_held_outside_one() {
    let (recorder, socket) = wrapped();
    let full = batch(1, FULL_BATCH, SIZE, 1);
    socket.try_send(&transmit(&full)).unwrap();
    assert_eq!(recorder.sends(), std::slice::from_ref(&full));
    let (r, s) = (Arc::clone(&recorder), Arc::clone(&socket));
    let again = full.clone();
    turn(move || {
        s.try_send(&transmit(&again)).unwrap();
        assert_eq!(r.sends().len(), 1);
    })
    .await;
    assert_eq!(recorder.sends(), [full.clone(), full]);
}

#[tokio::test]
async fn a_full_socket_keeps_the_order_and_loses_nothing() {
    let (recorder, socket) = wrapped();
    let one = batch(1, FULL_BATCH, SIZE, 1);
    let two = batch(1, FULL_BATCH, SIZE, 2);
    let three = batch(2, 1, 40, 3);
    let expected = (peer(1), [one.1.clone(), two.1.clone()].concat(), Some(SIZE));
    let (r, s, t) = (Arc::clone(&recorder), Arc::clone(&socket), three.clone());
    turn(move || {
        s.try_send(&transmit(&one)).unwrap();
        r.set_full(true);
        // Taken with what is held: it goes when the socket has room.
        s.try_send(&transmit(&two)).unwrap();
        // For another peer, not taken: quinn tries again later.
        let refused = s.try_send(&transmit(&t)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
    })
    .await;
    assert!(recorder.sends().is_empty());
    recorder.set_full(false);
    assert_eq!(recorder.sent(1).await, std::slice::from_ref(&expected));
    socket.try_send(&transmit(&three)).unwrap();
    assert_eq!(recorder.sends(), [expected, three]);
}
