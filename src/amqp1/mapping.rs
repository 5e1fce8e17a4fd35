//! One AMQP 1.0 message as what the engine ingests: the platform's
//! application properties `topic`, `messageId` and `generateTime`, and the
//! body's bytes as the payload.
//!
//! Invariants: the payload is the body's bytes exactly (one or more data
//! sections concatenated, or a binary or string amqp-value); a message
//! without a usable topic, or with a body that carries no bytes (an
//! amqp-sequence, a non-binary value), is malformed input with its reason
//! (a dead letter), never a message with an invented field; so is one
//! whose `topic` or `messageId` is binary that is not UTF-8 (the reason
//! gives its bytes as base64), since a converted id would not be the one
//! sent; a missing id is
//! the standard `message-id` property or empty; a missing generate time is
//! the `creation-time` property, else the receipt time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

use crate::message::{self, generate_time_of_text, now_epoch_ms};
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
        Err(reason) => return malformed(Bytes::new(), origin, reason),
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
    let generate_time_ms = get(GENERATE_TIME)
        .and_then(|v| {
            integer(v).or_else(|| text(v).and_then(|t| generate_time_of_text(t.as_bytes())))
        })
        .or_else(|| {
            properties
                .as_ref()
                .and_then(|p| p.creation_time.as_ref())
                .map(|t| t.milliseconds())
        })
        .unwrap_or_else(now_epoch_ms);
    match message::Message::new(topic, message_id, generate_time_ms, payload.clone()) {
        Ok(m) => Incoming::Message(m),
        Err(e) => malformed(payload, origin, format!("unusable topic: {e}")),
    }
}

/// The body's bytes.
fn payload(body: Body<Value>) -> Result<Bytes, String> {
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
            _ => Err("unusable body: an amqp-value that is not binary or a string".into()),
        },
        Body::Sequence(_) => Err("unusable body: an amqp-sequence, not bytes".into()),
    }
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
        MessageId::Uuid(u) => Some(format!("{u:?}")),
        MessageId::Binary(b) => std::str::from_utf8(b).ok().map(str::to_string),
    }
}
