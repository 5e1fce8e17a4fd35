//! The JSONL envelope: `{"topic","messageId","generateTime","payload"}`, the
//! form messages take in files, on stdin and in Kafka records.
//!
//! Invariant: [`parse_envelope`] either returns a message whose payload is
//! valid JSON, or an [`EnvelopeError`] that says what was wrong; it never
//! panics on any input bytes.

use std::io::Write;

use bytes::Bytes;
use simd_json::BorrowedValue;
use simd_json::prelude::*;

use super::{Message, MessageError};

/// Why one JSONL line is not a message. Each becomes a dead letter's reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// The line is not JSON at all.
    #[error("line is not valid JSON: {0}")]
    NotJson(String),
    /// The line is JSON but not an object.
    #[error("envelope is not a JSON object")]
    NotObject,
    /// A required field is absent.
    #[error("envelope has no {0:?} field")]
    MissingField(&'static str),
    /// A field is present with the wrong JSON type.
    #[error("envelope field {field:?} must be {expected}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// The fields are there, but they do not make a message.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Parses one envelope line into a message.
///
/// `messageId` may be a string or an integer; `generateTime` an integer or a
/// string of digits (both occur in the wild). The payload is re-encoded from
/// the parsed value, so what is stored is always well-formed JSON.
pub fn parse_envelope(line: &[u8]) -> Result<Message, EnvelopeError> {
    let mut scratch = line.to_vec();
    let value = simd_json::to_borrowed_value(&mut scratch)
        .map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or(EnvelopeError::NotObject)?;
    let field = |name: &'static str| object.get(name).ok_or(EnvelopeError::MissingField(name));

    let topic = field("topic")?.as_str().ok_or(EnvelopeError::WrongType {
        field: "topic",
        expected: "a string",
    })?;
    let message_id = scalar_text(field("messageId")?).ok_or(EnvelopeError::WrongType {
        field: "messageId",
        expected: "a string or an integer",
    })?;
    let generate_time = epoch_ms(field("generateTime")?).ok_or(EnvelopeError::WrongType {
        field: "generateTime",
        expected: "epoch milliseconds (an integer)",
    })?;
    let payload = field("payload")?;
    let payload = Bytes::from(payload.encode());
    Ok(Message::new(topic, message_id, generate_time, payload)?)
}

fn scalar_text(value: &BorrowedValue<'_>) -> Option<String> {
    if let Some(s) = value.as_str() {
        return Some(s.to_string());
    }
    value
        .as_u64()
        .map(|n| n.to_string())
        .or_else(|| value.as_i64().map(|n| n.to_string()))
}

fn epoch_ms(value: &BorrowedValue<'_>) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Writes a message as one envelope line (with the trailing newline).
///
/// A payload that is valid JSON is written as is; any other payload (from a
/// group that turned validation off) is written as a JSON string, so the line
/// stays parseable.
pub fn write_envelope(out: &mut Vec<u8>, message: &Message) {
    out.extend_from_slice(b"{\"topic\":");
    write_json_string(out, message.topic());
    out.extend_from_slice(b",\"messageId\":");
    write_json_string(out, message.message_id());
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        ",\"generateTime\":{},\"payload\":",
        message.generate_time_ms()
    );
    if message.payload_is_json() {
        out.extend_from_slice(message.payload());
    } else {
        write_json_string(out, &String::from_utf8_lossy(message.payload()));
    }
    out.extend_from_slice(b"}\n");
}

/// Appends `text` as a JSON string literal, escaped.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = simd_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Kind;

    #[test]
    fn round_trips_through_write_and_parse() {
        let line = br#"{"topic":"/pk/dn/thing/event/alarm/post","messageId":"42","generateTime":1700000000000,"payload":{"v":"a\"b"}}"#;
        let m = parse_envelope(line).unwrap();
        assert_eq!(m.kind(), Kind::Event);
        assert_eq!(m.event_identifier(), Some("alarm"));
        assert_eq!(m.message_id(), "42");
        assert_eq!(m.generate_time_ms(), 1_700_000_000_000);
        let mut out = Vec::new();
        write_envelope(&mut out, &m);
        let again = parse_envelope(out.trim_ascii_end()).unwrap();
        assert_eq!(again.topic(), m.topic());
        assert_eq!(again.payload(), m.payload());
    }

    #[test]
    fn numeric_ids_and_string_times_are_accepted() {
        let m = parse_envelope(
            br#"{"topic":"/a/b/thing/lifecycle","messageId":7,"generateTime":"12","payload":[]}"#,
        )
        .unwrap();
        assert_eq!(m.message_id(), "7");
        assert_eq!(m.generate_time_ms(), 12);
    }

    #[test]
    fn malformed_lines_say_why() {
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "not valid JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"messageId":"1","generateTime":1,"payload":{}}"#, "\"topic\""),
            (br#"{"topic":1,"messageId":"1","generateTime":1,"payload":{}}"#, "\"topic\" must be"),
            (br#"{"topic":"/a/b/thing/lifecycle","messageId":"1","generateTime":"soon","payload":{}}"#, "generateTime"),
            (br#"{"topic":"","messageId":"1","generateTime":1,"payload":{}}"#, "no topic"),
        ];
        for (line, why) in cases {
            let err = parse_envelope(line).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
    }

    #[test]
    fn non_json_payloads_are_written_as_strings() {
        let m = Message::new(
            "/a/b/thing/lifecycle",
            "1",
            1,
            Bytes::from_static(b"raw \"bytes\""),
        )
        .unwrap();
        let mut out = Vec::new();
        write_envelope(&mut out, &m);
        let again = parse_envelope(out.trim_ascii_end()).unwrap();
        assert_eq!(&again.payload()[..], br#""raw \"bytes\"""#);
    }
}
