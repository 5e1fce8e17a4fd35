//! Reading the platform's fields from a Kafka record, and writing them.
//!
//! A raw record carries the payload as its value and `topic`, `messageId`
//! and `generateTime` (epoch milliseconds, as text) as headers; the record
//! timestamp stands in for a missing generate time (one that is there but
//! is not epoch milliseconds makes the record malformed). An envelope record
//! carries all four in a JSON envelope.
//!
//! The record key and every header beyond the platform's three are kept on
//! the message ([`Message::key`], [`Message::headers`]) and written again
//! by the sink.
//!
//! Invariants: a record without a usable topic never becomes a message: it
//! is malformed input with a reason and its `topic[partition]@offset` (a
//! dead letter); a `topic` or `messageId` header that is not UTF-8 is
//! malformed too, its bytes given in the reason (as base64), since a
//! message's topic and id are text and converting them would change them;
//! payload, key and header bytes are taken as they are, never re-encoded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::time::Instant;

use bytes::Bytes;
use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};

use super::ValueFormat;
use crate::message::{
    self, Extras, Message, generate_time_of_text, now_epoch_ms, parse_envelope,
    unusable_generate_time,
};
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

/// Whether two records of one consumer come from the same partition
/// (batches are handed to the engine one run of one partition at a time).
/// A consumer holds one topic handle per topic, so comparing the handles
/// compares the topics without reading their names, which the client
/// would measure and check as UTF-8 on every call: twice a record.
pub(super) fn same_partition(a: &BorrowedMessage<'_>, b: &BorrowedMessage<'_>) -> bool {
    a.partition() == b.partition() && std::ptr::eq(a.topic_ptr(), b.topic_ptr())
}

/// A record's headers, read in one pass: the value of the first header
/// of each of the platform's three (`Some(None)`: that header has no
/// value), and every other header, in its order.
#[derive(Default)]
struct Fields<'a> {
    topic: Option<Option<&'a [u8]>>,
    message_id: Option<Option<&'a [u8]>>,
    generate_time: Option<Option<&'a [u8]>>,
    extra: Vec<message::Header>,
}

impl<'a> Fields<'a> {
    /// Reads the headers of `record`. Panics where the client does (a
    /// header name that is not UTF-8): callers run it under [`guarded`].
    fn of<M: rdkafka::Message>(record: &'a M) -> Fields<'a> {
        let mut fields = Fields::default();
        let Some(headers) = record.headers() else {
            return fields;
        };
        for h in headers.iter() {
            let first = match h.key {
                TOPIC => &mut fields.topic,
                MESSAGE_ID => &mut fields.message_id,
                GENERATE_TIME => &mut fields.generate_time,
                name => {
                    fields.extra.push(message::Header {
                        name: name.into(),
                        value: h.value.map(Bytes::copy_from_slice),
                    });
                    continue;
                }
            };
            if first.is_none() {
                *first = Some(h.value);
            }
        }
        fields
    }

    /// The record's key and the headers beyond the platform's three.
    fn extras(self, record: &impl rdkafka::Message) -> Extras {
        Extras {
            key: record.key().map(Bytes::copy_from_slice),
            headers: self.extra,
        }
    }
}

/// Turns one record into what the engine ingests; a message's live
/// latency counts from `received_at` (one clock read for a whole batch).
/// A record the Kafka client cannot read is a dead letter, never a crash:
/// the client panics on a header name that is not UTF-8 (it reads names as
/// C strings and unwraps their UTF-8), and no safe call reads them as
/// bytes instead.
pub(super) fn to_incoming(
    record: &impl rdkafka::Message,
    format: ValueFormat,
    received_at: Instant,
) -> Incoming {
    guarded(
        || read_record(record, format, received_at),
        || {
            malformed(
                record.payload().unwrap_or_default(),
                record,
                "unreadable headers: a header name is not UTF-8".into(),
            )
        },
    )
}

/// `read()`, or `unreadable()` when reading panics.
fn guarded(read: impl FnOnce() -> Incoming, unreadable: impl FnOnce() -> Incoming) -> Incoming {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| unreadable())
}

fn read_record(
    record: &impl rdkafka::Message,
    format: ValueFormat,
    received_at: Instant,
) -> Incoming {
    let value = record.payload().unwrap_or_default();
    match format {
        ValueFormat::Envelope => match parse_envelope(value) {
            // An envelope that carries its own key and headers keeps them;
            // else the record's are the message's.
            Ok(m) if m.extras().is_some() => Incoming::Message(m),
            Ok(m) => Incoming::Message(m.with_extras(Fields::of(record).extras(record))),
            Err(e) => malformed(value, record, format!("not an envelope: {e}")),
        },
        ValueFormat::Raw => {
            let fields = Fields::of(record);
            let Some(topic) = fields.topic.flatten() else {
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
                    format!(
                        "unusable topic: the `topic` header is not UTF-8 (base64 {})",
                        BASE64.encode(topic)
                    ),
                );
            };
            let message_id = match fields.message_id.flatten() {
                None => "",
                Some(id) => match std::str::from_utf8(id) {
                    Ok(id) => id,
                    Err(_) => {
                        return malformed(
                            value,
                            record,
                            format!(
                                "unusable message id: the `messageId` header is not UTF-8 (base64 {})",
                                BASE64.encode(id)
                            ),
                        );
                    }
                },
            };
            let generate_time_ms = match fields.generate_time.flatten() {
                Some(text) => match generate_time_of_text(text) {
                    Some(t) => t,
                    None => return malformed(value, record, unusable_generate_time(text)),
                },
                None => record.timestamp().to_millis().unwrap_or_else(now_epoch_ms),
            };
            match Message::received_with_extras(
                topic,
                message_id,
                generate_time_ms,
                Bytes::copy_from_slice(value),
                received_at,
                fields.extras(record),
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
/// a raw record, then the message's extra headers in their order.
pub fn headers_of(message: &Message) -> OwnedHeaders {
    let time = message.generate_time_ms().to_string();
    let extra = message.headers();
    let platform = OwnedHeaders::new_with_capacity(3 + extra.len())
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
        });
    extra.iter().fold(platform, |headers, h| {
        headers.insert(Header {
            key: &h.name,
            value: h.value.as_deref(),
        })
    })
}

/// The header a superseded delivery carries, with the value `true`: a
/// newer message of the same device and kind was already delivered by the
/// producing group.
pub const SUPERSEDED: &str = "superseded";

/// Adds the [`SUPERSEDED`] header.
pub fn mark_superseded(headers: OwnedHeaders) -> OwnedHeaders {
    headers.insert(Header {
        key: SUPERSEDED,
        value: Some(b"true".as_slice()),
    })
}

/// The device key: `productKey/deviceName`, so one device's messages land in
/// one partition and keep their order; the topic when it names no device.
pub fn key_of(message: &Message) -> String {
    match (message.product_key(), message.device_name()) {
        (Some(p), Some(d)) => format!("{p}/{d}"),
        _ => message.topic().to_string(),
    }
}

/// The record key the sink gives a message, as its `key` knob says: the
/// key the message came with, or the device key.
pub fn record_key(message: &Message, choice: super::KeyChoice) -> Bytes {
    match (choice, message.key()) {
        (super::KeyChoice::Original, Some(key)) => key.clone(),
        _ => Bytes::from(key_of(message)),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    #[test]
    fn a_superseded_record_carries_the_header_after_the_others() {
        let m = Message::new("/as/mqtt/status/pk/dn", "7", 5, "{}").unwrap();
        let headers = mark_superseded(headers_of(&m));
        let last = headers.get(headers.count() - 1);
        assert_eq!(
            (last.key, last.value),
            (SUPERSEDED, Some(b"true".as_slice()))
        );
        assert_eq!(headers.count(), headers_of(&m).count() + 1);
    }

    #[test]
    fn a_record_whose_reading_panics_is_a_dead_letter_not_a_crash() {
        let dead = || Incoming::Malformed {
            raw: Bytes::from_static(b"\xff"),
            origin: "t[0]@7".into(),
            reason: "unreadable headers: a header name is not UTF-8".into(),
        };
        let got = guarded(|| panic!("invalid utf-8 in a header name"), dead);
        let Incoming::Malformed { reason, raw, .. } = got else {
            panic!("not a dead letter")
        };
        assert_eq!(
            (reason.as_str(), &raw[..]),
            (
                "unreadable headers: a header name is not UTF-8",
                &b"\xff"[..]
            )
        );
        let read = guarded(dead, || panic!("not called"));
        assert!(matches!(read, Incoming::Malformed { .. }));
    }

    fn raw(key: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header { key: k, value: *v })
        });
        OwnedMessage::new(
            Some(b"\xff\0payload".to_vec()),
            key.map(<[u8]>::to_vec),
            "in".into(),
            Timestamp::CreateTime(5),
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn the_key_and_every_extra_header_are_kept_and_written_again() {
        let record = raw(
            Some(b"\x80key"),
            &[
                ("trace", Some(b"\xff")),
                (TOPIC, Some(b"/pk/dn/thing/lifecycle")),
                ("empty", None),
                (MESSAGE_ID, Some(b"m1")),
                ("trace", Some(b"")),
            ],
        );
        let Incoming::Message(m) = to_incoming(&record, ValueFormat::Raw, Instant::now()) else {
            panic!("not a message")
        };
        assert_eq!(
            (m.topic(), m.message_id(), m.generate_time_ms()),
            ("/pk/dn/thing/lifecycle", "m1", 5)
        );
        assert_eq!(m.key().map(|k| &k[..]), Some(&b"\x80key"[..]));
        let names: Vec<(&str, Option<&[u8]>)> = m
            .headers()
            .iter()
            .map(|h| (&*h.name, h.value.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("trace", Some(&b"\xff"[..])),
                ("empty", None),
                ("trace", Some(&b""[..]))
            ]
        );
        let out = headers_of(&m);
        let written: Vec<(&str, Option<&[u8]>)> = out.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(written.len(), 6);
        assert_eq!(&written[3..], &names[..]);
        assert_eq!(
            &record_key(&m, super::super::KeyChoice::Original)[..],
            b"\x80key"
        );
        assert_eq!(
            &record_key(&m, super::super::KeyChoice::Device)[..],
            b"pk/dn"
        );
    }

    #[test]
    fn a_generate_time_that_is_not_epoch_milliseconds_is_a_dead_letter_not_replaced() {
        for (time, want) in [
            (
                &b"2024-01-01T00:00:00Z"[..],
                "unusable generateTime \"2024-01-01T00:00:00Z\": not epoch milliseconds",
            ),
            (
                &b"\xff1"[..],
                "unusable generateTime (base64 /zE=): not epoch milliseconds",
            ),
        ] {
            let headers = [
                (TOPIC, Some(&b"/pk/dn/thing/lifecycle"[..])),
                (GENERATE_TIME, Some(time)),
            ];
            match to_incoming(&raw(None, &headers), ValueFormat::Raw, Instant::now()) {
                Incoming::Malformed { raw, reason, .. } => {
                    assert_eq!(reason, want);
                    assert_eq!(&raw[..], b"\xff\0payload");
                }
                _ => panic!("accepted with another time"),
            }
        }
        // Missing, or without a value: the record's timestamp stands in.
        for headers in [
            vec![(TOPIC, Some(&b"/pk/dn/thing/lifecycle"[..]))],
            vec![
                (TOPIC, Some(&b"/pk/dn/thing/lifecycle"[..])),
                (GENERATE_TIME, None),
            ],
        ] {
            match to_incoming(&raw(None, &headers), ValueFormat::Raw, Instant::now()) {
                Incoming::Message(m) => assert_eq!(m.generate_time_ms(), 5),
                _ => panic!("refused"),
            }
        }
    }

    #[test]
    fn an_id_or_topic_that_is_not_utf8_is_a_dead_letter_that_keeps_its_bytes() {
        for (headers, want) in [
            (
                [
                    (TOPIC, Some(&b"/pk/dn/thing/lifecycle"[..])),
                    (MESSAGE_ID, Some(&b"\xff\xfe"[..])),
                ],
                "unusable message id: the `messageId` header is not UTF-8 (base64 //4=)",
            ),
            (
                [
                    (TOPIC, Some(&b"/pk/\xc0/x"[..])),
                    (MESSAGE_ID, Some(&b"m"[..])),
                ],
                "unusable topic: the `topic` header is not UTF-8 (base64 L3BrL8AveA==)",
            ),
        ] {
            match to_incoming(&raw(None, &headers), ValueFormat::Raw, Instant::now()) {
                Incoming::Malformed {
                    raw,
                    reason,
                    origin,
                } => {
                    assert_eq!(reason, want);
                    assert_eq!(&raw[..], b"\xff\0payload");
                    assert_eq!(origin, "in[0]@7");
                }
                _ => panic!("accepted"),
            }
        }
    }
}
