//! Reading the platform's fields from a Kafka record, and writing them.
//!
//! A raw record carries the payload as its value and `topic`, `messageId`
//! and `generateTime` (epoch milliseconds, as text) as headers; the record
//! timestamp stands in for a missing generate time. An envelope record
//! carries all four in a JSON envelope.
//!
//! Invariants: a record without a usable topic never becomes a message: it
//! is malformed input with a reason and its `topic[partition]@offset` (a
//! dead letter); payload bytes are taken as they are, never re-encoded.

use bytes::Bytes;
use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::ValueFormat;
use crate::message::{Message, now_epoch_ms, parse_envelope};
use crate::source::Incoming;

/// The header carrying the platform topic.
pub const TOPIC: &str = "topic";
/// The header carrying the platform message id.
pub const MESSAGE_ID: &str = "messageId";
/// The header carrying the generate time, epoch milliseconds as text.
pub const GENERATE_TIME: &str = "generateTime";

/// Where a record sits, for dead letters: `topic[partition]@offset`.
pub(super) fn origin(record: &impl rdkafka::Message) -> String {
    format!(
        "{}[{}]@{}",
        record.topic(),
        record.partition(),
        record.offset()
    )
}

/// Whether two records come from the same partition (batches are handed
/// to the engine one run of one partition at a time).
pub(super) fn same_partition(a: &impl rdkafka::Message, b: &impl rdkafka::Message) -> bool {
    a.partition() == b.partition() && a.topic() == b.topic()
}

/// Turns one record into what the engine ingests.
pub(super) fn to_incoming(record: &impl rdkafka::Message, format: ValueFormat) -> Incoming {
    let value = record.payload().unwrap_or_default();
    match format {
        ValueFormat::Envelope => match parse_envelope(value) {
            Ok(m) => Incoming::Message(m),
            Err(e) => malformed(value, record, format!("not an envelope: {e}")),
        },
        ValueFormat::Raw => {
            let header = |name: &str| -> Option<&[u8]> {
                record
                    .headers()?
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
            };
            let Some(topic) = header(TOPIC) else {
                return malformed(
                    value,
                    record,
                    "no topic: the record has no `topic` header".into(),
                );
            };
            let Ok(topic) = std::str::from_utf8(topic) else {
                return malformed(
                    value,
                    record,
                    "unusable topic: the `topic` header is not UTF-8".into(),
                );
            };
            let message_id = header(MESSAGE_ID)
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .unwrap_or_default();
            let generate_time_ms = header(GENERATE_TIME)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.trim().parse::<i64>().ok())
                .or_else(|| record.timestamp().to_millis())
                .unwrap_or_else(now_epoch_ms);
            match Message::new(
                topic,
                message_id,
                generate_time_ms,
                Bytes::copy_from_slice(value),
            ) {
                Ok(m) => Incoming::Message(m),
                Err(e) => malformed(value, record, format!("unusable topic: {e}")),
            }
        }
    }
}

fn malformed(value: &[u8], record: &impl rdkafka::Message, reason: String) -> Incoming {
    Incoming::Malformed {
        raw: Bytes::copy_from_slice(value),
        origin: origin(record),
        reason,
    }
}

/// The headers the platform (and so laneway's sink and simulator) puts on
/// a raw record.
pub fn headers_of(message: &Message) -> OwnedHeaders {
    let time = message.generate_time_ms().to_string();
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: TOPIC,
            value: Some(message.topic().as_bytes()),
        })
        .insert(Header {
            key: MESSAGE_ID,
            value: Some(message.message_id().as_bytes()),
        })
        .insert(Header {
            key: GENERATE_TIME,
            value: Some(time.as_bytes()),
        })
}

/// The record key: `productKey/deviceName`, so one device's messages land in
/// one partition and keep their order; the topic when it names no device.
pub fn key_of(message: &Message) -> String {
    match (message.product_key(), message.device_name()) {
        (Some(p), Some(d)) => format!("{p}/{d}"),
        _ => message.topic().to_string(),
    }
}
