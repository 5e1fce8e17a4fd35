//! A backlog record as an AMQP message: the platform's three headers
//! (`topic`, `messageId`, `generateTime`, as the sink writes them), the
//! payload as the body, and laneway's own headers for what the store needs
//! across instances: the attempts made, the not-before time and when the
//! record was first stored; and, for a message that has a key or extra
//! headers, both in one `x-laneway-extras` header (the binary form of
//! [`Extras::encode`], byte for byte). A record without that header (all
//! those stored before it existed) reads as a message without extras.
//!
//! Invariants: decoding what [`encode`] wrote gives back the same topic,
//! id, generate time, payload, key, headers, attempts and not-before time;
//! a record whose extras header is damaged is not a record (its reason
//! says so), never a message without them; the broker's
//! own `x-death` history is never copied into a republished record (a
//! record carrying it back into the wait queue would look like a
//! dead-letter cycle to the broker, which drops such messages).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString, ShortString};

use crate::amqp::core::headers;
use crate::backlog::BacklogRecord;
use crate::message::{Extras, Message};
use crate::source::Incoming;

/// Delivery attempts already made.
pub const ATTEMPTS: &str = "x-laneway-attempts";
/// Epoch milliseconds before which the record must not be delivered.
pub const NOT_BEFORE: &str = "x-laneway-not-before";
/// Epoch milliseconds when the record first entered the backlog.
pub const STORED_AT: &str = "x-laneway-stored-at";
/// The message's key and extra headers, in [`Extras::encode`]'s form.
pub const EXTRAS: &str = "x-laneway-extras";

/// The properties of a record first stored at `stored_at_ms`; with
/// `expiration_ms`, a per-message TTL (for the wait queue).
pub fn encode(
    record: &BacklogRecord,
    stored_at_ms: i64,
    expiration_ms: Option<i64>,
) -> BasicProperties {
    let m = &record.message;
    let mut props = headers::properties(m.topic(), m.message_id(), m.generate_time_ms(), true);
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(ATTEMPTS.into(), AMQPValue::LongUInt(record.attempts));
    table.insert(
        NOT_BEFORE.into(),
        AMQPValue::LongLongInt(record.not_before_ms),
    );
    table.insert(STORED_AT.into(), AMQPValue::LongLongInt(stored_at_ms));
    if let Some(extras) = m.extras() {
        let mut encoded = Vec::with_capacity(extras.size_bytes());
        extras.encode(&mut encoded);
        table.insert(
            EXTRAS.into(),
            AMQPValue::LongString(LongString::from(encoded)),
        );
    }
    props = props.with_headers(table);
    if let Some(ms) = expiration_ms {
        props = props.with_expiration(ShortString::from(ms.max(0).to_string()));
    }
    props
}

/// A record read back, with when it was first stored.
pub struct Decoded {
    /// The record.
    pub record: BacklogRecord,
    /// Epoch milliseconds when it first entered the backlog.
    pub stored_at_ms: i64,
}

/// Reads a record back; `Err` with the reason for a message that is not a
/// laneway record (no usable topic).
pub fn decode(properties: &BasicProperties, body: Vec<u8>) -> Result<Decoded, String> {
    let message: Message = match headers::to_incoming(properties, body, String::new) {
        Incoming::Message(m) | Incoming::MessageAt { message: m, .. } => m,
        Incoming::Malformed { reason, .. } => return Err(reason),
    };
    let table = properties.headers().as_ref();
    let message = match table.and_then(|t| t.inner().get(EXTRAS)) {
        None => message,
        Some(AMQPValue::LongString(encoded)) => message.with_extras(
            Extras::decode(encoded.as_bytes())
                .map_err(|e| format!("damaged record: the `{EXTRAS}` header: {e}"))?,
        ),
        Some(_) => {
            return Err(format!(
                "damaged record: the `{EXTRAS}` header is not bytes"
            ));
        }
    };
    let int = |key: &str| table.and_then(|t| t.inner().get(key)).and_then(integer);
    let attempts = int(ATTEMPTS)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(0);
    let not_before_ms = int(NOT_BEFORE).unwrap_or(0);
    let stored_at_ms = int(STORED_AT).unwrap_or_else(|| message.generate_time_ms());
    Ok(Decoded {
        record: BacklogRecord {
            message,
            attempts,
            not_before_ms,
        },
        stored_at_ms,
    })
}

/// When the record was first stored, read from the header alone (for
/// inspection).
pub fn stored_at(properties: &BasicProperties) -> Option<i64> {
    properties
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(STORED_AT))
        .and_then(integer)
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::LongUInt(i) => Some(i.into()),
        AMQPValue::LongInt(i) => Some(i.into()),
        AMQPValue::LongLongInt(i) => Some(i),
        AMQPValue::ShortInt(i) => Some(i.into()),
        AMQPValue::ShortUInt(i) => Some(i.into()),
        AMQPValue::ShortShortInt(i) => Some(i.into()),
        AMQPValue::ShortShortUInt(i) => Some(i.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let record = BacklogRecord {
            message: Message::new(
                "/pk/dn/thing/event/property/post",
                "m-7",
                1_700_000_000_123,
                vec![0u8, 1, 255],
            )
            .unwrap(),
            attempts: 3,
            not_before_ms: 1_700_000_009_000,
        };
        let props = encode(&record, 1_700_000_000_500, Some(250));
        assert_eq!(props.expiration().as_ref().map(|e| e.as_str()), Some("250"));
        let back = decode(&props, vec![0u8, 1, 255]).unwrap();
        let (m, w) = (&back.record.message, &record.message);
        assert_eq!(
            (m.topic(), m.message_id(), m.generate_time_ms(), m.payload()),
            (w.topic(), w.message_id(), w.generate_time_ms(), w.payload())
        );
        assert_eq!(back.record.attempts, 3);
        assert_eq!(back.record.not_before_ms, 1_700_000_009_000);
        assert_eq!(back.stored_at_ms, 1_700_000_000_500);
        assert_eq!(stored_at(&props), Some(1_700_000_000_500));
    }

    #[test]
    fn a_key_and_headers_read_back_byte_for_byte() {
        use crate::message::Header;
        let extras = Extras {
            key: Some(bytes::Bytes::from_static(b"\xff\0key")),
            headers: vec![
                Header::new("h", &b"\x80"[..]),
                Header {
                    name: "h".into(),
                    value: None,
                },
            ],
        };
        let record = BacklogRecord::fresh(
            Message::new("/pk/dn/thing/lifecycle", "m", 1, vec![0xffu8])
                .unwrap()
                .with_extras(extras.clone()),
        );
        let props = encode(&record, 5, None);
        let back = decode(&props, vec![0xff]).unwrap();
        assert_eq!(back.record.message.extras(), Some(&extras));
        // Damaged extras are not a record without them.
        let mut table = props.headers().clone().unwrap();
        table.insert(EXTRAS.into(), AMQPValue::LongString(vec![9u8].into()));
        assert!(decode(&props.clone().with_headers(table), vec![0xff]).is_err());
    }

    #[test]
    fn a_message_without_a_topic_is_not_a_record() {
        assert!(decode(&BasicProperties::default(), b"{}".to_vec()).is_err());
    }
}
