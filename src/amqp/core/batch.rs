//! Gathering deliveries into batches: after the first delivery of a batch
//! arrives, whatever the client already holds is taken with it, up to a
//! maximum, without waiting for more. Shared by the queue and stream
//! sources.
//!
//! Invariant: a batch never waits for a delivery that has not arrived, so
//! a quiet queue costs no latency; a broken consumer ends the batch, and the
//! deliveries gathered before the break are still returned.

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;

use super::connect::AmqpError;
use crate::broker_url::BrokerUrl;

/// `first` and the deliveries the client already holds, up to `max` in all;
/// with the reason the consumer broke, if it did while gathering.
pub(crate) fn gather(
    consumer: &mut lapin::Consumer,
    first: Delivery,
    max: usize,
    url: &BrokerUrl,
) -> (Vec<Delivery>, Option<String>) {
    let mut deliveries = vec![first];
    while deliveries.len() < max {
        match consumer.next().now_or_never() {
            Some(Some(Ok(d))) => deliveries.push(d),
            Some(Some(Err(e))) => {
                let why = AmqpError::new(url, "consuming", e).to_string();
                return (deliveries, Some(why));
            }
            Some(None) => return (deliveries, Some(CANCELLED.into())),
            None => break,
        }
    }
    (deliveries, None)
}

/// Why a consumer stream ended without an error.
pub(crate) const CANCELLED: &str = "the broker cancelled the consumer";
