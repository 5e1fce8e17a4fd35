//! One cursor on a stream: a consumer attached at an offset spec, read in
//! batches whose every delivery carries its offset.
//!
//! A stream consumer is an ordinary AMQP 0-9-1 consumer with the
//! `x-stream-offset` argument; every delivery carries its offset in the
//! `x-stream-offset` header. Acks are credit: they ask the broker for more
//! and remove nothing, so a cursor acks each batch once it is handed to the
//! engine (the stored offset, not the ack, is what makes progress durable).
//!
//! Invariant: a delivery without an offset header ends the session as a
//! configuration error (the queue is not a stream), never a guessed offset.

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio_util::sync::CancellationToken;

use crate::amqp::core::batch;
use crate::amqp::core::connect::{AmqpError, close_within};
use crate::amqp::core::headers;
use crate::broker_url::BrokerUrl;
use crate::source::{Incoming, Routed};

/// The header and consumer argument carrying a stream offset.
pub(super) const OFFSET: &str = "x-stream-offset";

/// Where a cursor attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attach {
    /// At this offset (or the first retained one after it).
    At(u64),
    /// At the start of the stream's last chunk.
    Last,
    /// At the next record written.
    Next,
}

/// How a session ends, as a cursor sees it.
#[derive(Debug)]
pub(super) enum End {
    /// Stopped on request.
    Stopped,
    /// The connection, channel or consumer broke: reconnect.
    Lost(String),
    /// A set-up the broker refused, or a queue that is not a stream:
    /// retrying cannot fix it.
    Fatal(String),
}

impl End {
    /// The end for a broker error: fatal when retrying cannot help.
    pub fn of(error: AmqpError) -> End {
        if error.is_fatal() {
            End::Fatal(error.message)
        } else {
            End::Lost(error.to_string())
        }
    }
}

/// A consumer attached to a stream.
pub(super) struct StreamCursor {
    channel: Channel,
    consumer: lapin::Consumer,
    tag: ShortString,
    url: BrokerUrl,
    stream: String,
    max_batch: usize,
    /// What became of the last batch handed in (see [`batch::gather`]).
    last: Routed,
}

/// A batch read by a cursor: each record with its offset, the delivery tag
/// to credit, and why the consumer broke, if it did after these.
pub(super) struct Read {
    pub records: Vec<(u64, Incoming)>,
    pub last_tag: u64,
    pub broken: Option<String>,
}

impl StreamCursor {
    /// Opens a consumer on `channel` for `stream` at `attach`, with
    /// `prefetch` credit; `name` tells the cursors apart in the consumer tag.
    pub async fn attach(
        channel: Channel,
        url: &BrokerUrl,
        stream: &str,
        attach: Attach,
        prefetch: u16,
        max_batch: usize,
        name: &str,
    ) -> Result<StreamCursor, End> {
        let failed =
            |what: &str, e: lapin::Error| End::of(AmqpError::classify(url, what, &e, false));
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| failed("setting the prefetch", e))?;
        let mut arguments = FieldTable::default();
        let spec = match attach {
            Attach::At(offset) => AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
            Attach::Last => AMQPValue::LongString(LongString::from("last")),
            Attach::Next => AMQPValue::LongString(LongString::from("next")),
        };
        arguments.insert(OFFSET.into(), spec);
        let tag = ShortString::try_new(format!(
            "laneway-stream-{}-{}-{name}",
            std::process::id(),
            crate::message::now_epoch_ms()
        ))
        .unwrap_or_default();
        let consumer = channel
            .basic_consume(
                stream.into(),
                tag.clone(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(|e| failed(&format!("consuming stream {stream}"), e))?;
        Ok(StreamCursor {
            channel,
            consumer,
            tag,
            url: url.clone(),
            stream: stream.to_string(),
            max_batch,
            last: Routed::Live,
        })
    }

    /// The next batch: waits for one delivery (or `stop`), then takes what
    /// the client already holds, up to the batch size.
    pub async fn next(&mut self, stop: &CancellationToken) -> Result<Read, End> {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(End::Stopped),
            next = self.consumer.next() => next,
        };
        let first = match next {
            None => return Err(End::Lost(batch::CANCELLED.into())),
            Some(Err(e)) => {
                return Err(End::Lost(
                    AmqpError::new(&self.url, "consuming", e).to_string(),
                ));
            }
            Some(Ok(d)) => d,
        };
        let (deliveries, broken) = batch::gather(
            &mut self.consumer,
            first,
            self.max_batch,
            self.last,
            &self.url,
        )
        .await;
        let last_tag = deliveries.last().map_or(0, |d| d.delivery_tag);
        let mut records = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let Some(offset) = offset_of(&d) else {
                return Err(End::Fatal(format!(
                    "queue {} is not a stream: its deliveries carry no {OFFSET} header (declare it with x-queue-type = stream)",
                    self.stream
                )));
            };
            let stream = &self.stream;
            let incoming = headers::to_incoming(&d.properties, d.data, || {
                format!("amqp stream {stream} offset {offset}")
            });
            records.push((offset, incoming));
        }
        Ok(Read {
            records,
            last_tag,
            broken,
        })
    }

    /// Tells the cursor what became of the batch it read last, which paces
    /// its next read (see [`batch::gather`]).
    pub fn routed(&mut self, routed: Routed) {
        self.last = routed;
    }

    /// Gives the broker credit for everything up to `tag` (removes nothing).
    pub async fn credit(&self, tag: u64) -> Result<(), End> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| {
                End::Lost(AmqpError::new(&self.url, "crediting the stream", e).to_string())
            })
    }

    /// Stops the consumer and closes its channel (best effort: the
    /// connection may be gone already).
    pub async fn close(self) {
        close_within(async {
            let _ = self
                .channel
                .basic_cancel(self.tag, BasicCancelOptions::default())
                .await;
            let _ = self.channel.close(200, "laneway closing".into()).await;
        })
        .await;
    }
}

/// The offset a stream delivery carries, if any.
pub(super) fn offset_of(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match *headers.inner().get(OFFSET)? {
        AMQPValue::LongLongInt(i) => u64::try_from(i).ok(),
        AMQPValue::LongInt(i) => u64::try_from(i).ok(),
        AMQPValue::LongUInt(i) => Some(i.into()),
        AMQPValue::Timestamp(t) => Some(t),
        _ => None,
    }
}
