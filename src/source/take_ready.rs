//! Taking what a client already holds: after a source's first record of a
//! batch arrives, the records its client has buffered join it without a
//! wait. Shared by the AMQP sources and the Kafka source and catch-up
//! reader, whose clients are streams.
//!
//! Invariants: never waits; never takes more than the batch's room; the
//! items stay in the stream's order; a failure or the stream's end stops
//! the gathering and is handed to the caller, the items before it kept.

use futures_util::{FutureExt, Stream, StreamExt};

/// Why gathering stopped before the client ran out of held items.
pub(crate) enum Ended<E> {
    /// The stream yielded this error (consumed: the caller reports it).
    Failed(E),
    /// The stream ended.
    Closed,
}

/// Moves the items `stream` yields without waiting into `into`, up to
/// `max` in all; why it stopped, if the stream failed or ended first.
pub(crate) fn take_ready<T, E>(
    stream: &mut (impl Stream<Item = Result<T, E>> + Unpin),
    into: &mut Vec<T>,
    max: usize,
) -> Option<Ended<E>> {
    while into.len() < max {
        match stream.next().now_or_never() {
            Some(Some(Ok(item))) => into.push(item),
            Some(Some(Err(e))) => return Some(Ended::Failed(e)),
            Some(None) => return Some(Ended::Closed),
            None => break,
        }
    }
    None
}
