//! The JSONL envelope: `{"topic","messageId","generateTime","payload"}`, the
//! form messages take in files, on stdin and in Kafka records.
//!
//! Invariants: [`parse_envelope`] either returns a message whose payload is
//! valid JSON, or an [`EnvelopeError`] that says what was wrong and where;
//! it never panics on any input bytes. The payload is the exact bytes of the
//! `payload` value in the line (whitespace, key order, number spelling and
//! escapes untouched): what goes out is what came in.

use std::io::Write;

use bytes::Bytes;

use super::json::{self, JsonError, Member, TopLevel};
use super::{Message, MessageError};

/// The UTF-8 byte order mark some editors put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why one JSONL line is not a message. Each becomes a dead letter's reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The line is not JSON at all; says what is wrong and at which byte.
    #[error("line is not valid JSON: {0}")]
    NotJson(#[from] JsonError),
    /// The line is JSON but not an object.
    #[error("envelope is not a JSON object")]
    NotObject,
    /// A required field is absent.
    #[error("envelope has no {0:?} field")]
    MissingField(&'static str),
    /// A field appears twice: which one is meant is ambiguous.
    #[error("envelope has the field {0:?} twice")]
    DuplicateField(&'static str),
    /// A field is present with the wrong JSON type or value.
    #[error("envelope field {field:?} must be {expected}, not {found}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
        /// What it was (the JSON type, or the value when it is short).
        found: String,
    },
    /// The fields are there, but they do not make a message.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// The envelope fields laneway reads; any other field is ignored.
const FIELDS: [&str; 4] = ["topic", "messageId", "generateTime", "payload"];

/// Parses one envelope line into a message.
///
/// `messageId` may be a string or an integer (kept as written, whatever its
/// size); `generateTime` an integer or a string of digits (both occur in the
/// wild). A UTF-8 byte order mark before the line is skipped. The payload is
/// the value's exact bytes, checked to be JSON of any size (a 30-digit
/// integer included).
pub fn parse_envelope(line: &[u8]) -> Result<Message, EnvelopeError> {
    let line = line.strip_prefix(BOM).unwrap_or(line);
    let members = match json::scan_object(line)? {
        TopLevel::Object(members) => members,
        TopLevel::Other => return Err(EnvelopeError::NotObject),
    };
    let mut found: [Option<&Member>; 4] = [None; 4];
    for member in &members {
        let key = key_text(line, member)?;
        if let Some(i) = FIELDS.iter().position(|f| *f == key) {
            if found[i].is_some() {
                return Err(EnvelopeError::DuplicateField(FIELDS[i]));
            }
            found[i] = Some(member);
        }
    }
    let field = |i: usize| {
        found[i]
            .map(|m| (&line[m.value.clone()], m.value.start))
            .ok_or(EnvelopeError::MissingField(FIELDS[i]))
    };

    let (raw, at) = field(0)?;
    let topic = string_value(raw, at)?.ok_or_else(|| wrong("topic", "a string", raw))?;
    let (raw, at) = field(1)?;
    let message_id = match string_value(raw, at)? {
        Some(s) => s,
        None if is_integer(raw) => String::from_utf8_lossy(raw).into_owned(),
        None => return Err(wrong("messageId", "a string or an integer", raw)),
    };
    let (raw, at) = field(2)?;
    let generate_time = match string_value(raw, at)? {
        Some(s) => s.trim().parse::<i64>().ok(),
        None if is_integer(raw) => std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()),
        None => None,
    }
    .ok_or_else(|| {
        wrong(
            "generateTime",
            "epoch milliseconds (an integer, or a string of digits, that fits in 64 bits)",
            raw,
        )
    })?;
    let (payload, _) = field(3)?;
    Ok(Message::new(
        topic,
        message_id,
        generate_time,
        Bytes::copy_from_slice(payload),
    )?)
}

/// A member's key as text (decoded only when it holds escapes).
fn key_text<'a>(line: &'a [u8], member: &Member) -> Result<std::borrow::Cow<'a, str>, JsonError> {
    let raw = &line[member.key.clone()];
    if member.key_escaped {
        let quoted = &line[member.key.start - 1..member.key.end + 1];
        json::decode_string(quoted, member.key.start - 1).map(std::borrow::Cow::Owned)
    } else {
        // The scanner checked the whole line is UTF-8.
        Ok(String::from_utf8_lossy(raw))
    }
}

/// The decoded text when `raw` is a JSON string, `None` when it is another type.
fn string_value(raw: &[u8], at: usize) -> Result<Option<String>, JsonError> {
    if raw.first() == Some(&b'"') {
        json::decode_string(raw, at).map(Some)
    } else {
        Ok(None)
    }
}

/// Whether a (valid) JSON number is an integer: no fraction, no exponent.
fn is_integer(raw: &[u8]) -> bool {
    matches!(raw.first(), Some(b'-' | b'0'..=b'9'))
        && !raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

fn wrong(field: &'static str, expected: &'static str, raw: &[u8]) -> EnvelopeError {
    let found = match raw.first() {
        Some(b'{') => "an object".to_string(),
        Some(b'[') => "an array".to_string(),
        Some(b'"') if raw.len() > 40 => "a long string".to_string(),
        _ if raw.len() <= 40 => String::from_utf8_lossy(raw).into_owned(),
        Some(b'-' | b'0'..=b'9') => "a long number".to_string(),
        _ => "another value".to_string(),
    };
    EnvelopeError::WrongType {
        field,
        expected,
        found,
    }
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

    #[test]
    fn the_payload_comes_out_byte_for_byte() {
        let payloads: [&[u8]; 8] = [
            br#"{"a":1}"#,
            br#"{ "z" : 1 , "a" : [ 2 ,3 ] }"#,
            b"123456789012345678901234567890",
            br#"{"big":-123456789012345678901234567890.50e-3,"x":1.0}"#,
            br#""caf\u00e9 \ud83d\ude00 \/""#,
            "{\"t\":\"caf\u{e9} \u{1F600}\"}".as_bytes(),
            br#"{"dup":1,"dup":2}"#,
            b"null",
        ];
        for payload in payloads {
            let mut line = br#"{"topic":"/pk/dn/thing/event/property/post","messageId":"1","generateTime":5,"payload":"#.to_vec();
            line.extend_from_slice(payload);
            line.push(b'}');
            let m = parse_envelope(&line).unwrap();
            assert_eq!(
                &m.payload()[..],
                payload,
                "{}",
                String::from_utf8_lossy(payload)
            );
            assert!(m.payload_is_json());
            let mut out = Vec::new();
            write_envelope(&mut out, &m);
            let again = parse_envelope(out.trim_ascii_end()).unwrap();
            assert_eq!(&again.payload()[..], payload);
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_big_integer_ids_kept_as_written() {
        let line = b"\xEF\xBB\xBF{\"topic\":\"/pk/dn/thing/lifecycle\",\"messageId\":123456789012345678901234567890,\"generateTime\":7,\"payload\":{}}";
        let m = parse_envelope(line).unwrap();
        assert_eq!(m.message_id(), "123456789012345678901234567890");
        assert_eq!(m.generate_time_ms(), 7);
        assert_eq!(&m.payload()[..], b"{}");
    }

    #[test]
    fn reasons_say_what_is_wrong_and_where() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"topic":"/a","messageId":"1","generateTime":1,"payload":{"a":1,}}"#,
                "expected a string key but found '}' at byte 64"),
            (br#"{"topic":"/a","messageId":"1","generateTime":1,"payload":{}"#,
                "the input ends where ',' or '}' was expected at byte 59"),
            (br#"{"topic":"/a","messageId":1.5,"generateTime":1,"payload":{}}"#,
                "\"messageId\" must be a string or an integer, not 1.5"),
            (br#"{"topic":"/a","messageId":"1","generateTime":123456789012345678901234567890,"payload":{}}"#,
                "fits in 64 bits"),
            (br#"{"topic":"/a","topic":"/b","messageId":"1","generateTime":1,"payload":{}}"#,
                "\"topic\" twice"),
            (b"{\"topic\":\"/a\xff\"}", "invalid UTF-8 at byte 12"),
        ];
        for (line, why) in cases {
            let err = parse_envelope(line).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
    }
}
