//! The JSONL envelope: `{"topic","messageId","generateTime","payload"}`, the
//! form messages take in files, on stdin and in Kafka records; a payload
//! that is not JSON travels as `"payloadBase64"` instead of `"payload"`, and
//! a message that came with a record key and extra headers carries them as
//! `"key"` (or `"keyBase64"`) and `"headers"` (see README, "JSONL").
//!
//! Invariants: [`parse_envelope`] either returns a message, or an
//! [`EnvelopeError`] that says what was wrong and where; it never panics on
//! any input bytes. A `payload` is the exact bytes of its value in the line
//! (whitespace, key order, number spelling and escapes untouched) and is
//! valid JSON; a `payloadBase64` is any bytes. [`write_envelope`] writes a
//! line that [`parse_envelope`] reads back to the same topic, id, time,
//! payload, key and headers, byte for byte, whatever the bytes: what goes
//! out is what came in.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use simd_json::{OwnedValue, StaticNode};

use super::json::{self, JsonError, Member, TopLevel};
use super::{Extras, Header, Message, MessageError, generate_time_of_text};

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
    /// Two fields that say the same thing two ways (`payload` and
    /// `payloadBase64`, `key` and `keyBase64`) are both present.
    #[error("envelope has both {0:?} and {1:?}: only one may be given")]
    BothForms(&'static str, &'static str),
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
const FIELDS: [&str; 8] = [
    "topic",
    "messageId",
    "generateTime",
    "payload",
    "payloadBase64",
    "key",
    "keyBase64",
    "headers",
];
const PAYLOAD: usize = 3;
const PAYLOAD_BASE64: usize = 4;
const KEY: usize = 5;
const KEY_BASE64: usize = 6;
const HEADERS: usize = 7;

/// Parses one envelope line into a message.
///
/// `messageId` may be a string or an integer (kept as written, whatever its
/// size); `generateTime` an integer or a string of digits (both occur in the
/// wild). A UTF-8 byte order mark before the line is skipped. The payload is
/// the value's exact bytes, checked to be JSON of any size (a 30-digit
/// integer included), or the bytes `payloadBase64` holds (any bytes). An
/// optional `key` (text) or `keyBase64` (bytes) and `headers` (an array of
/// `[name, value]` pairs, the value a string, `null`, or `{"base64": ...}`)
/// become the message's [`Extras`].
pub fn parse_envelope(line: &[u8]) -> Result<Message, EnvelopeError> {
    let line = line.strip_prefix(BOM).unwrap_or(line);
    let members = match json::scan_object(line)? {
        TopLevel::Object(members) => members,
        TopLevel::Other => return Err(EnvelopeError::NotObject),
    };
    let mut found: [Option<&Member>; FIELDS.len()] = [None; FIELDS.len()];
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
        Some(s) => generate_time_of_text(s.as_bytes()),
        None if is_integer(raw) => generate_time_of_text(raw),
        None => None,
    }
    .ok_or_else(|| {
        wrong(
            "generateTime",
            "epoch milliseconds (an integer, or a string of digits, that fits in 64 bits)",
            raw,
        )
    })?;
    let payload = match (found[PAYLOAD], found[PAYLOAD_BASE64]) {
        (Some(_), Some(_)) => {
            return Err(EnvelopeError::BothForms("payload", "payloadBase64"));
        }
        (None, Some(_)) => {
            let (raw, at) = field(PAYLOAD_BASE64)?;
            base64_value(raw, at, "payloadBase64")?
        }
        _ => Bytes::copy_from_slice(field(PAYLOAD)?.0),
    };
    let key = match (found[KEY], found[KEY_BASE64]) {
        (Some(_), Some(_)) => return Err(EnvelopeError::BothForms("key", "keyBase64")),
        (Some(_), None) => {
            let (raw, at) = field(KEY)?;
            let text = string_value(raw, at)?.ok_or_else(|| wrong("key", "a string", raw))?;
            Some(Bytes::from(text))
        }
        (None, Some(_)) => {
            let (raw, at) = field(KEY_BASE64)?;
            Some(base64_value(raw, at, "keyBase64")?)
        }
        (None, None) => None,
    };
    let headers = match found[HEADERS] {
        Some(_) => headers_value(field(HEADERS)?.0)?,
        None => Vec::new(),
    };
    let message = Message::new(topic, message_id, generate_time, payload)?;
    Ok(if key.is_some() || !headers.is_empty() {
        message.with_extras(Extras { key, headers })
    } else {
        message
    })
}

/// The bytes a base64 string member holds.
fn base64_value(raw: &[u8], at: usize, field: &'static str) -> Result<Bytes, EnvelopeError> {
    let text = string_value(raw, at)?.ok_or_else(|| wrong(field, "a base64 string", raw))?;
    BASE64
        .decode(text.as_bytes())
        .map(Bytes::from)
        .map_err(|_| wrong(field, "a base64 string", raw))
}

/// The `headers` member: `[[name, value], ...]`, each value a string,
/// `null`, or `{"base64": "..."}` for bytes that are not UTF-8.
fn headers_value(raw: &[u8]) -> Result<Vec<Header>, EnvelopeError> {
    const EXPECTED: &str =
        "an array of [name, value] pairs (value a string, null or {\"base64\": ...})";
    let bad = || wrong("headers", EXPECTED, raw);
    // The line was checked as JSON already; this parses one member of it.
    let mut scratch = raw.to_vec();
    let OwnedValue::Array(pairs) = simd_json::to_owned_value(&mut scratch).map_err(|_| bad())?
    else {
        return Err(bad());
    };
    let mut headers = Vec::with_capacity(pairs.len());
    for pair in *pairs {
        let OwnedValue::Array(pair) = pair else {
            return Err(bad());
        };
        let mut pair = (*pair).into_iter();
        let (Some(OwnedValue::String(name)), Some(value), None) =
            (pair.next(), pair.next(), pair.next())
        else {
            return Err(bad());
        };
        let value = match value {
            OwnedValue::String(text) => Some(Bytes::from(text)),
            OwnedValue::Static(StaticNode::Null) => None,
            OwnedValue::Object(object) if object.len() == 1 => match object.get("base64") {
                Some(OwnedValue::String(text)) => Some(Bytes::from(
                    BASE64.decode(text.as_bytes()).map_err(|_| bad())?,
                )),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        headers.push(Header {
            name: name.into(),
            value,
        });
    }
    Ok(headers)
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
/// A payload that is valid JSON (with no whitespace around it, which the
/// envelope could not keep) is written as is, as `payload`; any other
/// payload (from a group that turned validation off, or a dead letter) is
/// written as `payloadBase64`, so that its exact bytes come back. A key is
/// written as `key` when it is UTF-8 and `keyBase64` otherwise; extra
/// headers as `headers`. The payload member comes last.
pub fn write_envelope(out: &mut Vec<u8>, message: &Message) {
    write_delivery_envelope(out, message, false);
}

/// Writes a delivered message's envelope line: [`write_envelope`]'s, with
/// `"superseded":true` before the payload when a newer message of the same
/// device and kind was already delivered (the member is absent otherwise,
/// so an envelope without it reads as it always did).
pub fn write_delivery_envelope(out: &mut Vec<u8>, message: &Message, superseded: bool) {
    out.extend_from_slice(b"{\"topic\":");
    write_json_string(out, message.topic());
    out.extend_from_slice(b",\"messageId\":");
    write_json_string(out, message.message_id());
    // Writing to a Vec cannot fail.
    let _ = write!(out, ",\"generateTime\":{}", message.generate_time_ms());
    if let Some(extras) = message.extras() {
        write_extras(out, extras);
    }
    if superseded {
        out.extend_from_slice(b",\"superseded\":true");
    }
    let payload = message.payload();
    if payload_fits_as_json(message) {
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(b",\"payloadBase64\":");
        write_base64(out, payload);
    }
    out.extend_from_slice(b"}\n");
}

/// Whether the payload can be written as a JSON value and read back as the
/// same bytes on one line: it is JSON, neither starts nor ends with
/// whitespace (which a member's value does not keep), and holds no line
/// break (pretty-printed JSON would split its envelope into lines; inside
/// a JSON string a raw one is invalid, so each is whitespace between
/// tokens).
fn payload_fits_as_json(message: &Message) -> bool {
    let payload = message.payload();
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    match (payload.first(), payload.last()) {
        (Some(first), Some(last)) => {
            !is_space(first)
                && !is_space(last)
                && message.payload_is_json()
                && !payload.iter().any(|&b| b == b'\n' || b == b'\r')
        }
        _ => false,
    }
}

/// Appends a message's key and headers as envelope members (each with its
/// leading comma): `key` or `keyBase64`, then `headers` when there are any.
pub fn write_extras(out: &mut Vec<u8>, extras: &Extras) {
    if let Some(key) = &extras.key {
        match std::str::from_utf8(key) {
            Ok(text) => {
                out.extend_from_slice(b",\"key\":");
                write_json_string(out, text);
            }
            Err(_) => {
                out.extend_from_slice(b",\"keyBase64\":");
                write_base64(out, key);
            }
        }
    }
    if !extras.headers.is_empty() {
        out.extend_from_slice(b",\"headers\":[");
        for (i, h) in extras.headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            write_json_string(out, &h.name);
            out.push(b',');
            match h.value.as_deref().map(std::str::from_utf8) {
                None => out.extend_from_slice(b"null"),
                Some(Ok(text)) => write_json_string(out, text),
                Some(Err(_)) => {
                    out.extend_from_slice(b"{\"base64\":");
                    write_base64(out, h.value.as_deref().unwrap_or_default());
                    out.push(b'}');
                }
            }
            out.push(b']');
        }
        out.push(b']');
    }
}

/// Appends `bytes` as a JSON string of their standard base64 (padded).
pub fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let written = BASE64.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Appends `text` as a JSON string literal, escaped.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = simd_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Extras, Header, Kind};

    #[test]
    fn a_superseded_delivery_says_so_before_its_payload_and_reads_back_the_same() {
        let m = Message::new("/as/mqtt/status/pk/dn", "7", 5, &b"\xff\x00off"[..]).unwrap();
        let (mut flagged, mut plain) = (Vec::new(), Vec::new());
        write_delivery_envelope(&mut flagged, &m, true);
        write_delivery_envelope(&mut plain, &m, false);
        let text = String::from_utf8(flagged.clone()).unwrap();
        assert!(
            text.contains(",\"superseded\":true,\"payloadBase64\":"),
            "{text}"
        );
        let mut unmarked = Vec::new();
        write_envelope(&mut unmarked, &m);
        assert_eq!(plain, unmarked);
        let back = parse_envelope(flagged.trim_ascii_end()).unwrap();
        assert_eq!(back.payload(), m.payload());
        assert_eq!(back.topic(), m.topic());
    }

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
    fn non_json_payloads_are_written_as_base64_and_read_back_exactly() {
        let m = Message::new(
            "/a/b/thing/lifecycle",
            "1",
            1,
            Bytes::from_static(b"raw \"bytes\" \xff\0"),
        )
        .unwrap();
        let mut out = Vec::new();
        write_envelope(&mut out, &m);
        assert!(
            out.ends_with(b",\"payloadBase64\":\"cmF3ICJieXRlcyIg/wA=\"}\n"),
            "{}",
            out.escape_ascii()
        );
        let again = parse_envelope(out.trim_ascii_end()).unwrap();
        assert_eq!(&again.payload()[..], b"raw \"bytes\" \xff\0");
    }

    /// Writes `m` and reads it back, checking every field came back equal.
    fn round_trip(m: &Message) {
        let mut out = Vec::new();
        write_envelope(&mut out, m);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let again = parse_envelope(out.trim_ascii_end())
            .unwrap_or_else(|e| panic!("{e}: {}", out.escape_ascii()));
        assert_eq!(again.topic(), m.topic());
        assert_eq!(again.message_id(), m.message_id());
        assert_eq!(again.generate_time_ms(), m.generate_time_ms());
        assert_eq!(again.payload(), m.payload(), "{}", out.escape_ascii());
        assert_eq!(again.extras(), m.extras());
    }

    #[test]
    fn any_bytes_come_back_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(20);
        let mut payloads: Vec<Vec<u8>> = (0..=300)
            .map(|len| (0..len).map(|_| rng.random::<u8>()).collect())
            .collect();
        for fixed in [
            &b""[..],
            b"\0",
            b"\xff\xfe",
            b"\xc3\x28",
            b"{\"a\":1}garbage",
            b"{\"a\":1}\0",
            b" {\"a\":1}",
            b"{\"a\":1}\n",
            // Pretty-printed JSON: its line breaks must not split the line.
            b"{\"a\":\n1}",
            b"{\r\n  \"a\": [1,\r2]\n}",
            b"1",
            b"\"text\"",
            b"\"\xff\"",
            b"[1,2",
            b"null",
            b"  ",
        ] {
            payloads.push(fixed.to_vec());
        }
        for (i, payload) in payloads.into_iter().enumerate() {
            let topic = format!("/pk/d\0n\u{1F600}{i}/thing/event/property/post");
            let m = Message::new(topic, format!("id\"\\{i}\u{7}"), -5, payload.clone()).unwrap();
            round_trip(&m);
            let key: Vec<u8> = payload.iter().rev().copied().collect();
            let keyed = m.with_extras(Extras {
                key: Some(Bytes::from(key)),
                headers: vec![
                    Header::new("bin", payload.clone()),
                    Header::new("text", &b"caf\xc3\xa9 \"q\""[..]),
                    Header {
                        name: "none".into(),
                        value: None,
                    },
                    Header::new("bin", Bytes::new()),
                ],
            });
            round_trip(&keyed);
        }
    }

    #[test]
    fn conflicting_or_bad_forms_say_why() {
        let head = r#"{"topic":"/a/b/thing/lifecycle","messageId":"1","generateTime":1,"#;
        let cases: [(&str, &str); 6] = [
            (
                r#""payload":{},"payloadBase64":"AA=="}"#,
                "both \"payload\" and",
            ),
            (
                r#""payloadBase64":"not base64!"}"#,
                "\"payloadBase64\" must be a base64 string",
            ),
            (r#""payloadBase64":7}"#, "\"payloadBase64\" must be"),
            (
                r#""key":"k","keyBase64":"AA==","payload":1}"#,
                "both \"key\" and",
            ),
            (
                r#""headers":{"a":"b"},"payload":1}"#,
                "\"headers\" must be an array",
            ),
            (
                r#""headers":[["a",{"hex":"00"}]],"payload":1}"#,
                "\"headers\" must be",
            ),
        ];
        for (tail, why) in cases {
            let line = format!("{head}{tail}");
            let err = parse_envelope(line.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
        let missing = format!("{head}\"key\":\"k\"}}");
        assert_eq!(
            parse_envelope(missing.as_bytes()).unwrap_err(),
            EnvelopeError::MissingField("payload")
        );
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
