//! How a peer can break the session's rules.

/// The peer broke the session's rules; the session cannot go on on this
/// transport. Each variant says what was expected and what arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A resume position outside what this side still holds.
    #[error("protocol error: peer resumes from position {peer_received}, but this side holds {acked}..={sent_high}")]
    ResumeOutOfRange {
        /// The position the peer says it has received up to.
        peer_received: u64,
        /// What the peer had already acknowledged.
        acked: u64,
        /// The highest position ever sent.
        sent_high: u64,
    },
    /// Data after the peer's end marker.
    #[error("protocol error: data at offset {offset} after end")]
    DataAfterEnd {
        /// The data's offset.
        offset: u64,
    },
    /// Data (or an end marker) not at the next offset.
    #[error("protocol error: {what} at offset {offset}, expected {expected}")]
    OutOfOrder {
        /// `"data"` or `"end"`.
        what: &'static str,
        /// The offset it came at.
        offset: u64,
        /// The next offset.
        expected: u64,
    },
    /// An acknowledgement of more than was sent.
    #[error("protocol error: ack of position {position}, but only {sent} was sent")]
    AckBeyondSent {
        /// The position acknowledged.
        position: u64,
        /// The position sent up to.
        sent: u64,
    },
    /// A second end marker.
    #[error("protocol error: second end marker")]
    SecondEnd,
}
