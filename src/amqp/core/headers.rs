//! Reading the platform's fields from an AMQP message, and writing them.
//!
//! The platform puts `topic`, `messageId` and `generateTime` (epoch
//! milliseconds; a header of the AMQP timestamp type is seconds, as the
//! type says) in the application headers. When a header is missing, the
//! standard properties stand in: `message_id` for the id and `timestamp` for
//! the generate time.
//!
//! Invariants: a delivery without a usable topic never becomes a message: it
//! is malformed input with a reason (a dead letter); so is one whose
//! `topic` or `messageId` header is bytes that are not UTF-8 (the reason
//! gives them as base64): a message's topic and id are text, and neither
//! a converted id nor a stand-in would be the one sent; a delivery without
//! any generate time is stamped with its receipt time (it counts as
//! fresh), and one whose `generateTime` is there but is not epoch
//! milliseconds is malformed (a time put in its place would be one the
//! platform never sent); a missing id is the empty string, never an
//! invented one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::message::{Message, generate_time_of_text, now_epoch_ms, unusable_generate_time};
use crate::source::Incoming;

/// The header carrying the platform topic.
pub const TOPIC: &str = "topic";
/// The header carrying the platform message id.
pub const MESSAGE_ID: &str = "messageId";
/// The header carrying the generate time, epoch milliseconds.
pub const GENERATE_TIME: &str = "generateTime";

/// Turns one delivery into what the engine ingests: a message, or malformed
/// input when it has no usable topic; `origin` (such as `queue q delivery
/// 17`) is only computed for malformed input.
pub fn to_incoming(
    properties: &BasicProperties,
    body: Vec<u8>,
    origin: impl FnOnce() -> String,
) -> Incoming {
    let headers = properties.headers().as_ref();
    let topic = match headers.and_then(|h| h.inner().get(TOPIC)) {
        None => {
            return malformed(
                body,
                origin,
                "no topic: the message has no `topic` header".into(),
            );
        }
        Some(value) => match text(value) {
            Some(t) => t,
            None => {
                return malformed(
                    body,
                    origin,
                    format!(
                        "unusable topic: the `topic` header is {}, not UTF-8 text{}",
                        type_name(value),
                        shown_bytes(value)
                    ),
                );
            }
        },
    };
    let id_header = headers.and_then(|h| h.inner().get(MESSAGE_ID));
    if let Some(value) = id_header.filter(|v| text(v).is_none() && !bytes(v).is_empty()) {
        return malformed(
            body,
            origin,
            format!(
                "unusable message id: the `messageId` header is not UTF-8 text{}",
                shown_bytes(value)
            ),
        );
    }
    let message_id = id_header
        .and_then(|v| text(v).or_else(|| integer(v).map(|i| i.to_string())))
        .or_else(|| {
            properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_string())
        })
        .unwrap_or_default();
    let time_header = headers
        .and_then(|h| h.inner().get(GENERATE_TIME))
        .filter(|v| !matches!(v, AMQPValue::Void));
    let generate_time_ms = match time_header {
        Some(value) => match generate_time_of(value) {
            Some(t) => t,
            None => return malformed(body, origin, unusable_time(value)),
        },
        None => properties
            .timestamp()
            .map(timestamp_ms)
            .unwrap_or_else(now_epoch_ms),
    };
    let body = Bytes::from(body);
    // Cloning `Bytes` shares the buffer: the dead letter path costs no copy.
    match Message::new(topic, message_id, generate_time_ms, body.clone()) {
        Ok(m) => Incoming::Message(m),
        Err(e) => malformed(body, origin, format!("unusable topic: {e}")),
    }
}

fn malformed(body: impl Into<Bytes>, origin: impl FnOnce() -> String, reason: String) -> Incoming {
    Incoming::Malformed {
        raw: body.into(),
        origin: origin(),
        reason,
    }
}

/// The standard `timestamp` property is seconds by the AMQP spec, but many
/// publishers put milliseconds there: a value too large to be seconds
/// (after the year 5138) is read as milliseconds.
fn timestamp_ms(ts: u64) -> i64 {
    const SECONDS_LIMIT: u64 = 100_000_000_000;
    let ms = if ts >= SECONDS_LIMIT {
        ts
    } else {
        ts.saturating_mul(1000)
    };
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A `generateTime` header's epoch milliseconds: a number, digits, or an
/// AMQP timestamp, which is seconds (as a Java `Date` header is sent, and
/// as RabbitMQ converts an AMQP 1.0 timestamp), read as the standard
/// property is.
fn generate_time_of(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::Timestamp(t) => Some(timestamp_ms(t)),
        _ => {
            integer(value).or_else(|| text(value).and_then(|t| generate_time_of_text(t.as_bytes())))
        }
    }
}

/// Why a `generateTime` header that is there is unusable: its text or
/// bytes, or its type (a boolean, a table).
fn unusable_time(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) | AMQPValue::ByteArray(_) => {
            unusable_generate_time(bytes(value))
        }
        other => format!(
            "unusable generateTime of type {}: not epoch milliseconds",
            type_name(other)
        ),
    }
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_string),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => std::str::from_utf8(b.as_slice()).ok().map(str::to_string),
        _ => None,
    }
}

/// The bytes of a string-like header value (empty for any other type).
fn bytes(value: &AMQPValue) -> &[u8] {
    match value {
        AMQPValue::LongString(s) => s.as_bytes(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes(),
        AMQPValue::ByteArray(b) => b.as_slice(),
        _ => &[],
    }
}

/// ` (base64 ...)` with a string-like value's exact bytes, so that the
/// dead letter keeps them; empty for any other type.
fn shown_bytes(value: &AMQPValue) -> String {
    match bytes(value) {
        [] => String::new(),
        b => format!(" (base64 {})", BASE64.encode(b)),
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(i) => Some(i.into()),
        AMQPValue::ShortShortUInt(i) => Some(i.into()),
        AMQPValue::ShortInt(i) => Some(i.into()),
        AMQPValue::ShortUInt(i) => Some(i.into()),
        AMQPValue::LongInt(i) => Some(i.into()),
        AMQPValue::LongUInt(i) => Some(i.into()),
        AMQPValue::LongLongInt(i) => Some(i),
        AMQPValue::Timestamp(t) => i64::try_from(t).ok(),
        AMQPValue::Double(d) if d.is_finite() => Some(d as i64),
        AMQPValue::Float(f) if f.is_finite() => Some(f as i64),
        _ => None,
    }
}

fn type_name(value: &AMQPValue) -> String {
    format!("{:?}", value.get_type())
}

/// The properties the platform (and so laneway's sink and simulator) puts on
/// a message: the three headers, the standard `message_id` and `timestamp`,
/// a JSON content type, and, when `persistent`, delivery mode 2.
pub fn properties(
    topic: &str,
    message_id: &str,
    generate_time_ms: i64,
    persistent: bool,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(TOPIC.into(), AMQPValue::LongString(LongString::from(topic)));
    headers.insert(
        MESSAGE_ID.into(),
        AMQPValue::LongString(LongString::from(message_id)),
    );
    headers.insert(
        GENERATE_TIME.into(),
        AMQPValue::LongLongInt(generate_time_ms),
    );
    let mut props = BasicProperties::default()
        .with_headers(headers)
        .with_content_type(ShortString::from("application/json"))
        .with_timestamp((generate_time_ms.max(0) / 1000) as u64);
    if let Ok(id) = ShortString::try_new(message_id) {
        props = props.with_message_id(id);
    }
    if persistent {
        props = props.with_delivery_mode(2);
    }
    props
}

/// The header carrying a message's record key (a Kafka record's), when it
/// came with one.
pub const RECORD_KEY: &str = "recordKey";

/// Adds the `superseded` header (`true`): a newer message of the same
/// device and kind was already delivered by the publishing group.
pub fn mark_superseded(props: BasicProperties) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(SUPERSEDED.into(), AMQPValue::Boolean(true));
    props.with_headers(table)
}

/// The header a superseded delivery carries (see [`mark_superseded`]).
pub const SUPERSEDED: &str = "superseded";

/// The properties the sink publishes a message with: [`properties`], then
/// the message's key as `recordKey` and its extra headers under their own
/// names (each value its bytes as a long string, a header without a value
/// as void, a name given more than once as an array of its values).
/// `Err` names what AMQP cannot carry: a header name longer than 255 bytes,
/// or an extra header named as one the sink writes itself (`topic`,
/// `messageId`, `generateTime`, `recordKey`, `superseded`): one table
/// cannot hold both, and either way a field would arrive changed.
pub fn properties_of(message: &Message, persistent: bool) -> Result<BasicProperties, String> {
    let props = properties(
        message.topic(),
        message.message_id(),
        message.generate_time_ms(),
        persistent,
    );
    let Some(extras) = message.extras() else {
        return Ok(props);
    };
    const OWN: [&str; 5] = [TOPIC, MESSAGE_ID, GENERATE_TIME, RECORD_KEY, SUPERSEDED];
    if let Some(h) = extras.headers.iter().find(|h| OWN.contains(&&*h.name)) {
        return Err(format!(
            "an extra header is named `{}`, a header the sink writes itself",
            h.name
        ));
    }
    let mut table = props.headers().clone().unwrap_or_default();
    if let Some(key) = &extras.key {
        table.insert(
            RECORD_KEY.into(),
            AMQPValue::LongString(LongString::from(key.to_vec())),
        );
    }
    for h in &extras.headers {
        let name = ShortString::try_new(h.name.to_string()).map_err(|_| {
            format!(
                "a header name is {} bytes, longer than AMQP's 255",
                h.name.len()
            )
        })?;
        let value = match &h.value {
            Some(v) => AMQPValue::LongString(LongString::from(v.to_vec())),
            None => AMQPValue::Void,
        };
        let repeated = extras.headers.iter().filter(|o| o.name == h.name).count() > 1;
        if !repeated {
            table.insert(name, value);
            continue;
        }
        let mut values = match table.inner().get(name.as_str()) {
            Some(AMQPValue::FieldArray(a)) => a.clone(),
            _ => FieldArray::default(),
        };
        values.push(value);
        table.insert(name, AMQPValue::FieldArray(values));
    }
    Ok(props.with_headers(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_superseded_delivery_carries_a_true_header_beside_the_others() {
        let m = Message::new("/as/mqtt/status/pk/dn", "7", 5, "{}").unwrap();
        let props = mark_superseded(properties_of(&m, true).unwrap());
        let table = props.headers().clone().unwrap();
        assert_eq!(
            table.inner().get(SUPERSEDED),
            Some(&AMQPValue::Boolean(true))
        );
        let plain = properties_of(&m, true).unwrap().headers().clone().unwrap();
        assert_eq!(table.inner().len(), plain.inner().len() + 1);
    }

    fn props_with(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn written_properties_read_back() {
        let p = properties(
            "/pk/dn/thing/event/property/post",
            "42",
            1_700_000_000_123,
            true,
        );
        let Incoming::Message(m) = to_incoming(&p, b"{}".to_vec(), || "q".into()) else {
            panic!("not a message")
        };
        assert_eq!(m.topic(), "/pk/dn/thing/event/property/post");
        assert_eq!(m.message_id(), "42");
        assert_eq!(m.generate_time_ms(), 1_700_000_000_123);
        assert_eq!(p.delivery_mode(), &Some(2));
    }

    #[test]
    fn standard_properties_stand_in_for_missing_headers() {
        let p = props_with(&[(
            "topic",
            AMQPValue::ShortString("/a/b/thing/lifecycle".into()),
        )])
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000);
        let Incoming::Message(m) = to_incoming(&p, b"{}".to_vec(), || "q".into()) else {
            panic!("not a message")
        };
        assert_eq!(m.message_id(), "m-1");
        assert_eq!(m.generate_time_ms(), 1_700_000_000_000);
        // A millisecond timestamp is recognised as such.
        let p = p.with_timestamp(1_700_000_000_555);
        let Incoming::Message(m) = to_incoming(&p, b"{}".to_vec(), || "q".into()) else {
            panic!("not a message")
        };
        assert_eq!(m.generate_time_ms(), 1_700_000_000_555);
    }

    /// A `generateTime` header that is there but is not epoch milliseconds
    /// makes the delivery a dead letter that names it; a void one is
    /// missing, and the standard `timestamp` stands in.
    #[test]
    fn a_generate_time_that_is_not_epoch_milliseconds_is_a_dead_letter_not_replaced() {
        let topic = (
            "topic",
            AMQPValue::LongString("/a/b/thing/lifecycle".into()),
        );
        for (time, want) in [
            (
                AMQPValue::LongString("2024-01-01".into()),
                "unusable generateTime \"2024-01-01\": not epoch milliseconds",
            ),
            (
                AMQPValue::Boolean(true),
                "unusable generateTime of type Boolean: not epoch milliseconds",
            ),
        ] {
            let p = props_with(&[topic.clone(), ("generateTime", time)]).with_timestamp(9);
            match to_incoming(&p, b"\xff\0".to_vec(), || "q".into()) {
                Incoming::Malformed { raw, reason, .. } => {
                    assert_eq!(reason, want);
                    assert_eq!(&raw[..], b"\xff\0");
                }
                _ => panic!("accepted with another time: {want}"),
            }
        }
        let p = props_with(&[topic, ("generateTime", AMQPValue::Void)]).with_timestamp(9);
        let Incoming::Message(m) = to_incoming(&p, b"{}".to_vec(), || "q".into()) else {
            panic!("refused")
        };
        assert_eq!(m.generate_time_ms(), 9_000);
    }

    #[test]
    fn numeric_ids_and_textual_times_are_accepted() {
        let p = props_with(&[
            (
                "topic",
                AMQPValue::LongString("/a/b/thing/lifecycle".into()),
            ),
            ("messageId", AMQPValue::LongLongInt(7)),
            (
                "generateTime",
                AMQPValue::LongString("1700000000001".into()),
            ),
        ]);
        let Incoming::Message(m) = to_incoming(&p, b"{}".to_vec(), || "q".into()) else {
            panic!("not a message")
        };
        assert_eq!(
            (m.message_id(), m.generate_time_ms()),
            ("7", 1_700_000_000_001)
        );
    }

    /// An AMQP timestamp is seconds: a `generateTime` header of that type
    /// is read as the standard property is (milliseconds only when too
    /// large to be seconds), not taken as milliseconds.
    #[test]
    fn a_timestamp_generate_time_header_is_seconds() {
        for (stamp, want) in [
            (1_700_000_000, 1_700_000_000_000),
            (1_700_000_000_123, 1_700_000_000_123),
        ] {
            let p = props_with(&[
                (
                    "topic",
                    AMQPValue::LongString("/a/b/thing/lifecycle".into()),
                ),
                ("generateTime", AMQPValue::Timestamp(stamp)),
            ]);
            let Incoming::Message(m) = to_incoming(&p, b"{}".to_vec(), || "q".into()) else {
                panic!("not a message")
            };
            assert_eq!(m.generate_time_ms(), want);
        }
    }

    #[test]
    fn no_usable_topic_is_malformed_with_a_reason() {
        for (p, want) in [
            (BasicProperties::default(), "no topic"),
            (
                props_with(&[("topic", AMQPValue::LongLongInt(3))]),
                "unusable topic",
            ),
            (
                props_with(&[("topic", AMQPValue::LongString("".into()))]),
                "unusable topic",
            ),
            (
                props_with(&[("topic", AMQPValue::LongString(vec![0xff, 0xfe].into()))]),
                "unusable topic: the `topic` header is LongString, not UTF-8 text (base64 //4=)",
            ),
            (
                props_with(&[
                    (
                        "topic",
                        AMQPValue::LongString("/a/b/thing/lifecycle".into()),
                    ),
                    ("messageId", AMQPValue::LongString(vec![0xff, 0xfe].into())),
                ])
                .with_message_id("stand-in".into()),
                "unusable message id: the `messageId` header is not UTF-8 text (base64 //4=)",
            ),
        ] {
            match to_incoming(&p, b"x".to_vec(), || "queue q".into()) {
                Incoming::Malformed {
                    reason,
                    origin,
                    raw,
                } => {
                    assert!(reason.starts_with(want), "{reason}");
                    assert_eq!(origin, "queue q");
                    assert_eq!(&raw[..], b"x");
                }
                Incoming::Message(m) | Incoming::MessageAt { message: m, .. } => {
                    panic!("accepted {m:?}")
                }
            }
        }
    }

    /// An extra header named as one of the sink's own would replace it
    /// (the topic, the id, the time, the key or the superseded flag would
    /// arrive changed): the message is refused with the name instead.
    #[test]
    fn an_extra_header_named_as_the_sinks_own_is_refused_not_written_over_it() {
        use crate::message::{Extras, Header};
        for name in [TOPIC, MESSAGE_ID, GENERATE_TIME, RECORD_KEY, SUPERSEDED] {
            let m = Message::new("/pk/dn/thing/lifecycle", "1", 2, &b"x"[..])
                .unwrap()
                .with_extras(Extras {
                    key: Some(Bytes::from_static(b"k")),
                    headers: vec![Header::new(name, &b"/x/y/thing/lifecycle"[..])],
                });
            let why = properties_of(&m, true).unwrap_err();
            assert!(why.contains(&format!("`{name}`")), "{why}");
        }
    }

    #[test]
    fn the_sink_writes_the_key_and_extra_headers_as_headers() {
        use crate::message::{Extras, Header};
        let m = Message::new("/pk/dn/thing/lifecycle", "1", 2, &b"x"[..])
            .unwrap()
            .with_extras(Extras {
                key: Some(Bytes::from_static(b"\xffk")),
                headers: vec![
                    Header::new("a", &b"\x80"[..]),
                    Header {
                        name: "none".into(),
                        value: None,
                    },
                    Header::new("a", &b"2"[..]),
                ],
            });
        let props = properties_of(&m, true).unwrap();
        let table = props.headers().clone().unwrap();
        let get = |k: &str| table.inner().get(k).cloned();
        assert_eq!(
            get(RECORD_KEY),
            Some(AMQPValue::LongString(vec![0xff, b'k'].into()))
        );
        assert_eq!(get("none"), Some(AMQPValue::Void));
        assert_eq!(
            get("a"),
            Some(AMQPValue::FieldArray(
                vec![
                    AMQPValue::LongString(vec![0x80].into()),
                    AMQPValue::LongString(b"2".to_vec().into())
                ]
                .into()
            ))
        );
        assert!(get(TOPIC).is_some());
        let long = Message::new("/pk/dn/thing/lifecycle", "1", 2, &b"x"[..])
            .unwrap()
            .with_extras(Extras {
                key: None,
                headers: vec![Header::new("n".repeat(256), &b""[..])],
            });
        assert!(
            properties_of(&long, true)
                .unwrap_err()
                .contains("256 bytes")
        );
    }
}
