//! One AMQP 1.0 message as what the engine ingests: the platform's
//! application properties `topic`, `messageId` and `generateTime`, and the
//! body's bytes as the payload.
//!
//! Invariants: the payload is the body's bytes exactly (one or more data
//! sections concatenated, or a binary or string amqp-value); a message
//! without a usable topic, or with a body that carries no bytes (an
//! amqp-sequence, a non-binary value), is malformed input with its reason
//! (a dead letter, keeping such a body as its AMQP encoding, since the
//! broker forgets the message once it is settled), never a message with
//! an invented field; a UUID `message-id` is its standard text; so is one
//! whose `topic` or `messageId` is binary that is not UTF-8 (the reason
//! gives its bytes as base64), since a converted id would not be the one
//! sent; a missing id is
//! the standard `message-id` property or empty; a missing generate time is
//! the `creation-time` property, else the receipt time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt::Write as _;

use bytes::Bytes;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

use crate::message::{self, generate_time_of_text, now_epoch_ms, unusable_generate_time};
use crate::source::Incoming;

/// The application property carrying the platform topic.
pub const TOPIC: &str = "topic";
/// The application property carrying the platform message id.
pub const MESSAGE_ID: &str = "messageId";
/// The application property carrying the generate time, epoch milliseconds.
pub const GENERATE_TIME: &str = "generateTime";

/// Turns one received message into what the engine ingests; `origin`
/// (such as `amqp1 /amq/queue/q delivery 17`) is only computed for
/// malformed input.
pub fn to_incoming(message: Message<Body<Value>>, origin: impl FnOnce() -> String) -> Incoming {
    let Message {
        properties,
        application_properties,
        body,
        ..
    } = message;
    let payload = match payload(body) {
        Ok(p) => p,
        Err((raw, reason)) => return malformed(raw, origin, reason),
    };
    let props = application_properties.map(|a| a.0);
    let get = |key: &str| props.as_ref().and_then(|p| p.get(key));
    let topic = match get(TOPIC) {
        None => {
            return malformed(
                payload,
                origin,
                "no topic: the message has no `topic` application property".into(),
            );
        }
        Some(value) => match text(value) {
            Some(t) => t,
            None => {
                return malformed(
                    payload,
                    origin,
                    format!(
                        "unusable topic: the `topic` application property is not a string{}",
                        shown_binary(value)
                    ),
                );
            }
        },
    };
    if let Some(value) = get(MESSAGE_ID)
        && let SimpleValue::Binary(b) = value
        && std::str::from_utf8(b).is_err()
    {
        return malformed(
            payload,
            origin,
            format!(
                "unusable message id: the `messageId` application property is not UTF-8{}",
                shown_binary(value)
            ),
        );
    }
    let message_id = get(MESSAGE_ID)
        .and_then(|v| text(v).or_else(|| integer(v).map(|i| i.to_string())))
        .or_else(|| {
            properties
                .as_ref()
                .and_then(|p| p.message_id.as_ref())
                .and_then(id_text)
        })
        .unwrap_or_default();
    let generate_time_ms = match get(GENERATE_TIME).filter(|v| !matches!(v, SimpleValue::Null)) {
        Some(v) => {
            let time =
                integer(v).or_else(|| text(v).and_then(|t| generate_time_of_text(t.as_bytes())));
            match time {
                Some(t) => t,
                None => return malformed(payload, origin, unusable_time(v)),
            }
        }
        None => properties
            .as_ref()
            .and_then(|p| p.creation_time.as_ref())
            .map(|t| t.milliseconds())
            .unwrap_or_else(now_epoch_ms),
    };
    match message::Message::new(topic, message_id, generate_time_ms, payload.clone()) {
        Ok(m) => Incoming::Message(m),
        Err(e) => malformed(payload, origin, format!("unusable topic: {e}")),
    }
}

/// The body's bytes.
/// The body's bytes; for a body that carries none, its AMQP encoding
/// (what the dead letter keeps) and the reason.
fn payload(body: Body<Value>) -> Result<Bytes, (Bytes, String)> {
    match body {
        Body::Data(sections) => {
            let mut sections: Vec<_> = sections.into_iter().collect();
            if sections.len() == 1 {
                return Ok(Bytes::from(sections.remove(0).0.into_vec()));
            }
            let mut all = Vec::new();
            for s in sections {
                all.extend_from_slice(&s.0);
            }
            Ok(Bytes::from(all))
        }
        Body::Empty => Ok(Bytes::new()),
        Body::Value(v) => match v.0 {
            Value::Binary(b) => Ok(Bytes::from(b.into_vec())),
            Value::String(s) => Ok(Bytes::from(s.into_bytes())),
            Value::Null => Ok(Bytes::new()),
            other => Err((
                encoded(&other),
                "unusable body: an amqp-value that is not binary or a string (kept as its AMQP encoding)".into(),
            )),
        },
        Body::Sequence(sections) => {
            let values: Vec<Vec<Value>> = sections.into_iter().map(|s| s.0).collect();
            Err((
                encoded(&values),
                "unusable body: an amqp-sequence, not bytes (kept as its AMQP encoding)".into(),
            ))
        }
    }
}

/// A value's AMQP encoding; empty in the (unreached) case it cannot be
/// encoded, since a decoded value always can.
fn encoded(value: &impl serde::Serialize) -> Bytes {
    serde_amqp::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_default()
}

fn malformed(raw: Bytes, origin: impl FnOnce() -> String, reason: String) -> Incoming {
    Incoming::Malformed {
        raw,
        origin: origin(),
        reason,
    }
}

fn text(value: &SimpleValue) -> Option<String> {
    match value {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        SimpleValue::Binary(b) => std::str::from_utf8(b).ok().map(str::to_string),
        _ => None,
    }
}

/// Why a `generateTime` that is there is unusable: its text or bytes, or
/// its type (a double, a boolean, a ulong past `i64`).
fn unusable_time(value: &SimpleValue) -> String {
    match value {
        SimpleValue::String(s) => unusable_generate_time(s.as_bytes()),
        SimpleValue::Symbol(s) => unusable_generate_time(s.0.as_bytes()),
        SimpleValue::Binary(b) => unusable_generate_time(b),
        other => format!("unusable generateTime {other:?}: not epoch milliseconds"),
    }
}

/// ` (base64 ...)` with a binary value's exact bytes, so that the dead
/// letter keeps them; empty for any other type.
fn shown_binary(value: &SimpleValue) -> String {
    match value {
        SimpleValue::Binary(b) => format!(" (base64 {})", BASE64.encode(&b[..])),
        _ => String::new(),
    }
}

fn integer(value: &SimpleValue) -> Option<i64> {
    match value {
        SimpleValue::Ubyte(i) => Some((*i).into()),
        SimpleValue::Ushort(i) => Some((*i).into()),
        SimpleValue::Uint(i) => Some((*i).into()),
        SimpleValue::Ulong(i) => i64::try_from(*i).ok(),
        SimpleValue::Byte(i) => Some((*i).into()),
        SimpleValue::Short(i) => Some((*i).into()),
        SimpleValue::Int(i) => Some((*i).into()),
        SimpleValue::Long(i) => Some(*i),
        SimpleValue::Timestamp(t) => Some(t.milliseconds()),
        _ => None,
    }
}

fn id_text(id: &MessageId) -> Option<String> {
    match id {
        MessageId::String(s) => Some(s.clone()),
        MessageId::Ulong(u) => Some(u.to_string()),
        MessageId::Uuid(u) => Some(uuid_text(u.as_inner())),
        MessageId::Binary(b) => std::str::from_utf8(b).ok().map(str::to_string),
    }
}

/// A UUID as its standard text: 8-4-4-4-12 lowercase hex digits.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use fe2o3_amqp::types::messaging::{
        AmqpSequence, AmqpValue, ApplicationProperties, Data, Properties,
    };
    use serde_amqp::primitives::Uuid;

    fn message(body: Body<Value>, id: Option<MessageId>) -> Message<Body<Value>> {
        let properties = ApplicationProperties::builder()
            .insert(TOPIC, "/pk/dn/thing/event/property/post")
            .build();
        let mut builder = Message::builder()
            .application_properties(properties)
            .body(body);
        if let Some(id) = id {
            builder = builder.properties(Properties::builder().message_id(id).build());
        }
        builder.build()
    }

    /// A body that carries no bytes is a dead letter that keeps it, as its
    /// AMQP encoding (it decodes back to the very value): the broker
    /// forgets the message once it is settled.
    #[test]
    fn a_body_without_bytes_is_a_dead_letter_that_keeps_its_encoding() {
        let values = vec![Value::Int(1), Value::String("a".into())];
        let sequence = Body::Sequence(vec![AmqpSequence(values.clone())].into());
        match to_incoming(message(sequence, None), || "here".into()) {
            Incoming::Malformed { raw, reason, .. } => {
                assert!(reason.contains("amqp-sequence"), "{reason}");
                let back: Vec<Vec<Value>> = serde_amqp::from_slice(&raw).unwrap();
                assert_eq!(back, vec![values]);
            }
            _ => panic!("a sequence body was taken as a message"),
        }
        let value = Value::Long(-7);
        match to_incoming(message(Body::Value(AmqpValue(value.clone())), None), || {
            "here".into()
        }) {
            Incoming::Malformed { raw, .. } => {
                assert_eq!(serde_amqp::from_slice::<Value>(&raw).unwrap(), value);
            }
            _ => panic!("a long value body was taken as a message"),
        }
    }

    /// A `generateTime` that is there but is not epoch milliseconds makes
    /// the message a dead letter that names it; a missing or null one
    /// takes `creation-time`.
    #[test]
    fn a_generate_time_that_is_not_epoch_milliseconds_is_a_dead_letter_not_replaced() {
        let with_time = |time: Option<SimpleValue>| {
            let mut properties = ApplicationProperties::builder()
                .insert(TOPIC, "/pk/dn/thing/event/property/post")
                .build();
            if let Some(time) = time {
                properties.0.insert(GENERATE_TIME.into(), time);
            }
            Message::builder()
                .application_properties(properties)
                .properties(
                    Properties::builder()
                        .creation_time(serde_amqp::primitives::Timestamp::from_milliseconds(9))
                        .build(),
                )
                .body(Body::Data(vec![Data(b"\xff\0".to_vec().into())].into()))
                .build()
        };
        for (time, want) in [
            (
                SimpleValue::String("soon".into()),
                "unusable generateTime \"soon\": not epoch milliseconds",
            ),
            (
                SimpleValue::Bool(true),
                "unusable generateTime Bool(true): not epoch milliseconds",
            ),
            (
                SimpleValue::Ulong(u64::MAX),
                "unusable generateTime Ulong(18446744073709551615): not epoch milliseconds",
            ),
        ] {
            match to_incoming(with_time(Some(time)), || "here".into()) {
                Incoming::Malformed { raw, reason, .. } => {
                    assert_eq!(reason, want);
                    assert_eq!(&raw[..], b"\xff\0");
                }
                _ => panic!("accepted with another time: {want}"),
            }
        }
        for time in [None, Some(SimpleValue::Null)] {
            match to_incoming(with_time(time), || "here".into()) {
                Incoming::Message(m) => assert_eq!(m.generate_time_ms(), 9),
                _ => panic!("refused"),
            }
        }
    }

    /// A UUID `message-id` is the message's id as its standard text.
    #[test]
    fn a_uuid_message_id_is_its_standard_text() {
        let bytes = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        let body = Body::Value(AmqpValue(Value::Binary(b"{}".to_vec().into())));
        let id = MessageId::Uuid(Uuid::from(bytes));
        match to_incoming(message(body, Some(id)), || "here".into()) {
            Incoming::Message(m) => {
                assert_eq!(m.message_id(), "12345678-9abc-def0-0123-456789abcdef");
            }
            _ => panic!("not a message"),
        }
    }
}
