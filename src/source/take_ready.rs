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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    /// A stream that yields `items` at once and then has nothing ready
    /// (a client whose buffer is empty), never ending.
    fn held_then_pending(
        items: Vec<Result<u32, &'static str>>,
    ) -> impl Stream<Item = Result<u32, &'static str>> + Unpin {
        stream::iter(items).chain(stream::pending())
    }

    #[test]
    fn takes_what_is_held_in_order_and_stops_without_waiting_when_nothing_is_ready() {
        let mut s = held_then_pending(vec![Ok(1), Ok(2), Ok(3)]);
        let mut into = vec![0];
        // A wait would never return: the stream is pending after three.
        assert!(take_ready(&mut s, &mut into, 10).is_none());
        assert_eq!(into, [0, 1, 2, 3]);
    }

    #[test]
    fn never_takes_more_than_the_room_left_and_leaves_the_rest_in_the_stream() {
        let mut s = held_then_pending((1..=5).map(Ok).collect());
        let mut into = vec![0, 0];
        assert!(take_ready(&mut s, &mut into, 4).is_none());
        assert_eq!(into, [0, 0, 1, 2]);
        let mut rest = Vec::new();
        assert!(take_ready(&mut s, &mut rest, 10).is_none());
        assert_eq!(rest, [3, 4, 5], "nothing skipped, nothing taken twice");
        // A batch already full takes nothing.
        let mut full = vec![9; 3];
        let mut s = held_then_pending(vec![Ok(1)]);
        assert!(take_ready(&mut s, &mut full, 3).is_none());
        assert_eq!(full, [9, 9, 9]);
    }

    #[test]
    fn an_error_stops_the_gathering_keeps_the_items_before_it_and_is_handed_over() {
        let mut s = held_then_pending(vec![Ok(1), Ok(2), Err("broker down"), Ok(3)]);
        let mut into = Vec::new();
        match take_ready(&mut s, &mut into, 10) {
            Some(Ended::Failed(e)) => assert_eq!(e, "broker down"),
            _ => panic!("the error is handed over"),
        }
        assert_eq!(into, [1, 2]);
        // The error was consumed: the next gathering starts after it.
        let mut next = Vec::new();
        assert!(take_ready(&mut s, &mut next, 10).is_none());
        assert_eq!(next, [3]);
    }

    #[test]
    fn the_stream_s_end_is_handed_over_after_what_it_held() {
        let mut s = stream::iter(vec![Ok::<u32, &str>(1), Ok(2)]);
        let mut into = Vec::new();
        assert!(matches!(
            take_ready(&mut s, &mut into, 10),
            Some(Ended::Closed)
        ));
        assert_eq!(into, [1, 2]);
    }
}
