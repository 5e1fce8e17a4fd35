//! Gathering deliveries into batches: after the first delivery of a batch
//! arrives, whatever the client already holds is taken with it, up to a
//! maximum. Shared by the queue and stream sources.
//!
//! A source reading a pile (its last batch put no message in a live lane:
//! stale, or for a backlog lane) lets a small batch wait [`LINGER`] once
//! for more. Without it the client hands over a pile a few deliveries at a
//! time, and each handful costs the runtime's threads a park and a wake-up:
//! on the disk backlog path, waiting cut laneway's CPU per message by
//! 28–32 % (docs/benchmarks.md). Messages bound for a disk backlog wait
//! longer than that for their durable write anyway; those pushed out of a
//! full live lane wait for a sink that is behind. The first live batch
//! after a pile waits at most once.
//!
//! Invariants: a batch that follows live traffic never waits for a
//! delivery that has not arrived, so a quiet queue or a live stream costs
//! no latency; a broken consumer ends the batch, and the deliveries
//! gathered before the break are still returned.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;

use super::connect::AmqpError;
use crate::broker_url::BrokerUrl;
use crate::source::Routed;

/// How long a small batch read from a pile waits for more deliveries. The
/// runtime's timer counts whole milliseconds. Two milliseconds gather
/// about 70 deliveries at 35,000 a second, and are shorter than the disk
/// backlog's cycle of write and fsync (about 4 ms: appends average 128
/// records at 33,000 messages a second). Measured: 1 ms saved 21 % of the
/// CPU per message, 2 ms about 4 % more, 3 ms little beyond that.
pub(crate) const LINGER: Duration = Duration::from_millis(2);

/// `first` and the deliveries the client already holds, up to `max` in all;
/// with the reason the consumer broke, if it did while gathering. After a
/// batch that took no live lane (`last`), a batch of fewer than a quarter
/// of `max` waits [`LINGER`] once and takes what arrived meanwhile.
pub(crate) async fn gather(
    consumer: &mut lapin::Consumer,
    first: Delivery,
    max: usize,
    last: Routed,
    url: &BrokerUrl,
) -> (Vec<Delivery>, Option<String>) {
    let mut deliveries = vec![first];
    let broken = take_held(consumer, &mut deliveries, max, url);
    if broken.is_some() || last == Routed::Live || deliveries.len() >= max / 4 {
        return (deliveries, broken);
    }
    tokio::time::sleep(LINGER).await;
    let broken = take_held(consumer, &mut deliveries, max, url);
    (deliveries, broken)
}

/// Moves the deliveries the client already holds into `deliveries`, up to
/// `max` in all, without waiting; the reason the consumer broke, if it did.
fn take_held(
    consumer: &mut lapin::Consumer,
    deliveries: &mut Vec<Delivery>,
    max: usize,
    url: &BrokerUrl,
) -> Option<String> {
    while deliveries.len() < max {
        match consumer.next().now_or_never() {
            Some(Some(Ok(d))) => deliveries.push(d),
            Some(Some(Err(e))) => return Some(AmqpError::new(url, "consuming", e).to_string()),
            Some(None) => return Some(CANCELLED.into()),
            None => break,
        }
    }
    None
}

/// Why a consumer stream ended without an error.
pub(crate) const CANCELLED: &str = "the broker cancelled the consumer";
