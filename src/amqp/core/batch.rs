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

use futures_util::Stream;

use super::connect::AmqpError;
use crate::broker_url::BrokerUrl;
use crate::source::Routed;
use crate::source::take_ready::{Ended, take_ready};

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
/// `consumer` is a lapin consumer (any stream of deliveries, for tests).
pub(crate) async fn gather<D, E: std::fmt::Display>(
    consumer: &mut (impl Stream<Item = Result<D, E>> + Unpin),
    first: D,
    max: usize,
    last: Routed,
    url: &BrokerUrl,
) -> (Vec<D>, Option<String>) {
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
fn take_held<D, E: std::fmt::Display>(
    consumer: &mut (impl Stream<Item = Result<D, E>> + Unpin),
    deliveries: &mut Vec<D>,
    max: usize,
    url: &BrokerUrl,
) -> Option<String> {
    take_ready(consumer, deliveries, max).map(|end| match end {
        Ended::Failed(e) => AmqpError::new(url, "consuming", e).to_string(),
        Ended::Closed => CANCELLED.into(),
    })
}

/// Why a consumer stream ended without an error.
pub(crate) const CANCELLED: &str = "the broker cancelled the consumer";

#[cfg(test)]
mod tests {
    //! The batching policy on the runtime's paused clock: whether a batch
    //! waited is read off the clock, which moves only when something sleeps.

    use futures_util::StreamExt;
    use tokio::sync::mpsc;
    use tokio::time::{Duration, Instant};

    use super::*;

    /// A consumer the test feeds: what is sent is held by the "client".
    fn consumer() -> (
        mpsc::UnboundedSender<Result<u32, String>>,
        impl Stream<Item = Result<u32, String>> + Unpin,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        (
            tx,
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        )
    }

    fn url() -> BrokerUrl {
        BrokerUrl::parse("amqp://guest:secret@localhost:5672/%2f").expect("a test URL")
    }

    /// Sends `items` after `after` on the paused clock.
    fn send_later(tx: &mpsc::UnboundedSender<Result<u32, String>>, after: Duration, items: &[u32]) {
        let (tx, items) = (tx.clone(), items.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            for i in items {
                let _ = tx.send(Ok(i));
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn after_live_traffic_a_small_batch_takes_what_is_held_and_does_not_wait() {
        let (tx, mut consumer) = consumer();
        tx.send(Ok(1)).unwrap();
        send_later(&tx, Duration::from_millis(1), &[2]);
        let start = Instant::now();
        let (batch, broken) = gather(&mut consumer, 0, 256, Routed::Live, &url()).await;
        assert_eq!(batch, vec![0, 1]);
        assert_eq!(broken, None);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a batch after live traffic waited"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pile_a_small_batch_waits_once_for_more() {
        let (tx, mut consumer) = consumer();
        tx.send(Ok(1)).unwrap();
        send_later(&tx, LINGER / 2, &[2, 3, 4]);
        // Arrives after the one wait: left for the next batch.
        send_later(&tx, LINGER * 2, &[5]);
        let start = Instant::now();
        let (batch, broken) = gather(&mut consumer, 0, 256, Routed::NotLive, &url()).await;
        assert_eq!(batch, vec![0, 1, 2, 3, 4]);
        assert_eq!(broken, None);
        assert_eq!(start.elapsed(), LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pile_a_batch_of_a_quarter_of_the_maximum_does_not_wait() {
        let (tx, mut consumer) = consumer();
        tx.send(Ok(1)).unwrap();
        send_later(&tx, LINGER / 2, &[2]);
        let start = Instant::now();
        let (batch, _) = gather(&mut consumer, 0, 8, Routed::NotLive, &url()).await;
        assert_eq!(batch, vec![0, 1], "two of at most eight: a quarter");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_never_exceeds_the_maximum() {
        let (tx, mut consumer) = consumer();
        for i in 1..10 {
            tx.send(Ok(i)).unwrap();
        }
        let (batch, _) = gather(&mut consumer, 0, 4, Routed::NotLive, &url()).await;
        assert_eq!(batch, vec![0, 1, 2, 3]);
        let first = consumer.next().await.expect("held").expect("a delivery");
        let (batch, _) = gather(&mut consumer, first, 4, Routed::Live, &url()).await;
        assert_eq!(
            batch,
            vec![4, 5, 6, 7],
            "the rest stays with the client, in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_consumer_ends_the_batch_and_keeps_what_was_gathered() {
        let (tx, mut consumer) = consumer();
        tx.send(Ok(1)).unwrap();
        tx.send(Err("connection reset".into())).unwrap();
        tx.send(Ok(2)).unwrap();
        let start = Instant::now();
        let (batch, broken) = gather(&mut consumer, 0, 256, Routed::NotLive, &url()).await;
        assert_eq!(batch, vec![0, 1]);
        let broken = broken.expect("the break reported");
        assert!(broken.contains("connection reset"), "{broken}");
        assert!(!broken.contains("secret"), "the password leaked: {broken}");
        assert_eq!(start.elapsed(), Duration::ZERO, "a broken consumer waited");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_consumer_ends_the_batch_with_the_reason() {
        let (tx, mut consumer) = consumer();
        tx.send(Ok(1)).unwrap();
        drop(tx);
        let (batch, broken) = gather(&mut consumer, 0, 256, Routed::NotLive, &url()).await;
        assert_eq!(batch, vec![0, 1]);
        assert_eq!(broken.as_deref(), Some(CANCELLED));
    }
}
