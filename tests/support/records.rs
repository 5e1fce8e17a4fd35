//! "Nothing lost, nothing changed", checked byte for byte: what a test sent
//! and what came out, compared as whole records (topic, message id,
//! generate time, payload bytes), never as ids alone.
//!
//! Shared by the engine, backlog, CLI, broker and process tests (and the
//! benches), so every one of them checks deliveries the same way.

use std::collections::HashMap;
use std::fmt;

use laneway::message::Message;

/// A message as sent or as delivered: the four fields that must survive
/// every path unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub id: String,
    pub generate_time_ms: i64,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn new(
        topic: impl Into<String>,
        id: impl Into<String>,
        generate_time_ms: i64,
        payload: impl Into<Vec<u8>>,
    ) -> Record {
        Record {
            topic: topic.into(),
            id: id.into(),
            generate_time_ms,
            payload: payload.into(),
        }
    }

    /// The record a message carries.
    pub fn of(message: &Message) -> Record {
        Record::new(
            message.topic(),
            message.message_id(),
            message.generate_time_ms(),
            message.payload().to_vec(),
        )
    }

    /// The message for this record (for submitting it).
    pub fn message(&self) -> Message {
        Message::new(
            self.topic.as_str(),
            self.id.as_str(),
            self.generate_time_ms,
            self.payload.clone(),
        )
        .expect("a valid test record")
    }

    /// This record as the platforms send it over AMQP 1.0: topic, message
    /// id and generate time as application properties, the payload as one
    /// data section, byte for byte.
    pub fn amqp1_message(
        &self,
    ) -> fe2o3_amqp::types::messaging::Message<fe2o3_amqp::types::messaging::Data> {
        use fe2o3_amqp::types::messaging::{ApplicationProperties, Message};
        let props = ApplicationProperties::builder()
            .insert("topic", self.topic.clone())
            .insert("messageId", self.id.clone())
            .insert("generateTime", self.generate_time_ms)
            .build();
        Message::builder()
            .application_properties(props)
            .data(fe2o3_amqp::types::primitives::Binary::from(
                self.payload.clone(),
            ))
            .build()
    }

    /// This record as one JSONL envelope line (no newline). The payload
    /// must be JSON; it is written verbatim.
    pub fn envelope_line(&self) -> String {
        let payload = std::str::from_utf8(&self.payload).expect("a JSON payload is UTF-8");
        format!(
            "{{\"topic\":{},\"messageId\":{},\"generateTime\":{},\"payload\":{payload}}}",
            json_string(&self.topic),
            json_string(&self.id),
            self.generate_time_ms
        )
    }

    /// Reads one envelope line as laneway's JSONL sink writes it: topic,
    /// id and time parsed, the payload taken as the raw bytes that follow
    /// `"payload":` up to the closing brace (so a payload that came out as
    /// a JSON string, or with bytes added, is seen as it is), or decoded
    /// from `"payloadBase64"`.
    pub fn from_envelope_line(line: &[u8]) -> Result<Record, String> {
        let shown = || String::from_utf8_lossy(line).into_owned();
        let m = laneway::message::parse_envelope(line)
            .map_err(|e| format!("not an envelope ({e}): {}", shown()))?;
        if line.windows(17).any(|w| w == b",\"payloadBase64\":") {
            return Ok(Record::of(&m));
        }
        let key = b",\"payload\":";
        let start = line
            .windows(key.len())
            .position(|w| w == key)
            .ok_or_else(|| format!("no payload field: {}", shown()))?
            + key.len();
        let end = line
            .iter()
            .rposition(|&b| b == b'}')
            .filter(|&e| e >= start)
            .ok_or_else(|| format!("no closing brace: {}", shown()))?;
        Ok(Record::new(
            m.topic(),
            m.message_id(),
            m.generate_time_ms(),
            line[start..end].to_vec(),
        ))
    }
}

fn json_string(s: &str) -> String {
    let mut out = Vec::new();
    laneway::message::write_json_string(&mut out, s);
    String::from_utf8(out).expect("JSON text is UTF-8")
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{topic {:?}, id {:?}, generateTime {}, payload {} bytes b\"{}\"}}",
            self.topic,
            self.id,
            self.generate_time_ms,
            self.payload.len(),
            shown_bytes(&self.payload)
        )
    }
}

/// At most 120 bytes, escaped, and the last 16 when longer (padding shows
/// at the end).
fn shown_bytes(bytes: &[u8]) -> String {
    if bytes.len() <= 136 {
        return bytes.escape_ascii().to_string();
    }
    format!(
        "{}...{}",
        bytes[..120].escape_ascii(),
        bytes[bytes.len() - 16..].escape_ascii()
    )
}

/// How many copies of each sent record a test expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    /// Every sent record exactly once.
    ExactlyOnce,
    /// Every sent record at least once (at-least-once delivery).
    AtLeastOnce,
    /// Any number, none included: only "every copy that came out is one
    /// that was sent, unchanged" is checked (a run stopped part way).
    Unchanged,
}

/// What a successful check counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Copies delivered.
    pub copies: usize,
    /// Distinct records delivered.
    pub distinct: usize,
    /// Copies beyond the first of each record.
    pub duplicates: usize,
}

/// Checks `delivered` against `sent` (ids unique in `sent`): every
/// delivered copy is byte-equal to the record sent with its id, nothing
/// delivered was never sent, and each sent record arrived as often as
/// `copies` says. On failure, says how many records were changed, lost,
/// duplicated and unknown, with examples.
pub fn check_delivered(
    sent: &[Record],
    delivered: &[Record],
    copies: Copies,
) -> Result<Tally, String> {
    let mut by_id: HashMap<&str, &Record> = HashMap::with_capacity(sent.len());
    for r in sent {
        if by_id.insert(r.id.as_str(), r).is_some() {
            return Err(format!(
                "the test sent id {:?} twice: ids must be unique",
                r.id
            ));
        }
    }
    let mut counts: HashMap<&str, usize> = HashMap::with_capacity(sent.len());
    let (mut changed, mut unknown) = (Vec::new(), Vec::new());
    let mut changed_count = 0usize;
    for d in delivered {
        match by_id.get(d.id.as_str()) {
            None => unknown.push(d),
            Some(s) => {
                *counts.entry(s.id.as_str()).or_default() += 1;
                if *s != d {
                    changed_count += 1;
                    if changed.len() < 5 {
                        changed.push(format!(
                            "  id {:?}: {}\n    sent      {s:?}\n    delivered {d:?}",
                            d.id,
                            differences(s, d)
                        ));
                    }
                }
            }
        }
    }
    let lost: Vec<&str> = match copies {
        Copies::Unchanged => Vec::new(),
        _ => sent
            .iter()
            .map(|r| r.id.as_str())
            .filter(|id| !counts.contains_key(id))
            .collect(),
    };
    let mut twice: Vec<(&str, usize)> = match copies {
        Copies::ExactlyOnce => counts
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&id, &n)| (id, n))
            .collect(),
        _ => Vec::new(),
    };
    twice.sort();
    let tally = Tally {
        copies: delivered.len() - unknown.len(),
        distinct: counts.len(),
        duplicates: counts.values().map(|n| n - 1).sum(),
    };
    if changed_count == 0 && unknown.is_empty() && lost.is_empty() && twice.is_empty() {
        return Ok(tally);
    }
    let mut report = format!(
        "delivery check failed ({copies:?}): {} sent, {} copies delivered; {changed_count} changed, {} lost, {} delivered more than once, {} never sent",
        sent.len(),
        delivered.len(),
        lost.len(),
        twice.len(),
        unknown.len()
    );
    if !changed.is_empty() {
        report.push_str("\nchanged (first 5):\n");
        report.push_str(&changed.join("\n"));
    }
    if !lost.is_empty() {
        report.push_str(&format!(
            "\nlost (first 10): {:?}",
            &lost[..lost.len().min(10)]
        ));
    }
    if !twice.is_empty() {
        report.push_str(&format!(
            "\nmore than once (first 10, id and copies): {:?}",
            &twice[..twice.len().min(10)]
        ));
    }
    if !unknown.is_empty() {
        report.push_str(&format!(
            "\nnever sent (first 5): {:?}",
            &unknown[..unknown.len().min(5)]
        ));
    }
    Err(report)
}

/// [`check_delivered`], panicking with its report.
#[track_caller]
pub fn assert_delivered(sent: &[Record], delivered: &[Record], copies: Copies) -> Tally {
    check_delivered(sent, delivered, copies).unwrap_or_else(|report| panic!("{report}"))
}

fn differences(sent: &Record, got: &Record) -> String {
    let mut d = Vec::new();
    if sent.topic != got.topic {
        d.push("topic".to_string());
    }
    if sent.generate_time_ms != got.generate_time_ms {
        d.push("generateTime".to_string());
    }
    if sent.payload != got.payload {
        let common = sent
            .payload
            .iter()
            .zip(&got.payload)
            .take_while(|(a, b)| a == b)
            .count();
        d.push(format!(
            "payload ({} bytes sent, {} delivered, first difference at byte {common})",
            sent.payload.len(),
            got.payload.len()
        ));
    }
    format!("{} differ", d.join(", "))
}

/// A JSON object payload whose length varies with `i` over every value
/// mod 8 (and more): `{"n":i,"pad":"..."}` with 0 to 22 pad characters.
/// Written compactly with two keys, it is exactly what laneway stores for
/// it after parsing an envelope.
pub fn json_payload(i: u64) -> Vec<u8> {
    let pad: String = (0..(i % 23))
        .map(|k| (b'a' + ((i + k) % 26) as u8) as char)
        .collect();
    format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into_bytes()
}

/// Arbitrary payload bytes (every byte value, NULs included) whose length
/// runs 0, 1, 2, ... 300 with `i` (every length mod 8).
pub fn binary_payload(i: u64) -> Vec<u8> {
    let len = (i % 301) as usize;
    (0..len)
        .map(|k| (i as usize).wrapping_mul(31).wrapping_add(k * 7) as u8)
        .collect()
}

/// `n` records with ids `{prefix}{i}`, topics over a few products and
/// devices, generate time `time(i)` and JSON payloads of every length mod 8.
pub fn json_records(prefix: &str, n: u64, time: impl Fn(u64) -> i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::new(
                format!("/pk{}/dev{}/thing/event/property/post", i % 3, i % 97),
                format!("{prefix}{i}"),
                time(i),
                json_payload(i),
            )
        })
        .collect()
}

/// How many lines a file has so far (0 when it does not exist yet): a
/// running process's own progress, for a test to poll with a bound.
pub fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The whole envelope lines of a JSONL file, as records. A last line cut
/// short (no newline: a process killed mid-write) is left out.
pub fn records_in_jsonl(path: &std::path::Path) -> Vec<Record> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[][..],
    };
    whole
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .map(|l| {
            Record::from_envelope_line(l).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// The record with the numeric id `id` in the crash tests (what the child
/// process of `tests/backlog_crash.rs` stores): topic, generate time and payload
/// ([`binary_payload`]) all follow from the id.
pub fn numbered(id: u64) -> Record {
    Record::new(
        format!("/pk{}/dn{}/thing/event/property/post", id % 3, id % 11),
        id.to_string(),
        id as i64,
        binary_payload(id),
    )
}

/// The binary corpus every sink's exact-bytes test walks (tests/exact_bytes.rs,
/// tests/http_sink.rs): random bytes of every length 0..=300, then the
/// shapes most likely to be mangled.
pub fn corpus_payloads() -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x20);
    let mut all: Vec<Vec<u8>> = (0..=300)
        .map(|len| (0..len).map(|_| rng.random::<u8>()).collect())
        .collect();
    let shapes: [&[u8]; 16] = [
        b"\xff\xfe\xfd",
        b"\0",
        b"\0\0\0{}",
        b"{\"a\":1}garbage",
        b"{\"a\":1}\0",
        b"[1,2,3] ",
        b" {\"a\":1}",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xf4\x90\x80\x80",
        b"{\"a\":\"\xff\"}",
        b"{\"a\":1}",
        b"\"text \\u0000\"",
        b"12345",
        "{\"t\":\"caf\u{e9}\"}".as_bytes(),
        b"",
    ];
    all.extend(shapes.iter().map(|s| s.to_vec()));
    all
}

/// The corpus as records with ids `{prefix}-{i}` (every seventh with a NUL,
/// an `é` and a quote in it); every third is an hour old (the backlog lane).
pub fn corpus_records(prefix: &str) -> Vec<Record> {
    let now = laneway::message::now_epoch_ms();
    corpus_payloads()
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let time = if i.is_multiple_of(3) {
                now - 3_600_000
            } else {
                now
            };
            let id = if i.is_multiple_of(7) {
                format!("{prefix}-{i}-\u{0}\u{e9}\"")
            } else {
                format!("{prefix}-{i}")
            };
            Record::new(
                format!("/pk{}/dev{i}/thing/event/property/post", i % 3),
                id,
                time,
                payload,
            )
        })
        .collect()
}

/// One envelope line, read with simd-json and base64 (not laneway's
/// parser): the payload is the base64 of `payloadBase64`, or the exact
/// bytes of the `payload` value (the last member).
pub fn envelope_record(line: &[u8]) -> Record {
    use base64::Engine as _;
    use simd_json::prelude::*;
    let shown = || line.escape_ascii().to_string();
    let v = simd_json::to_owned_value(&mut line.to_vec())
        .unwrap_or_else(|e| panic!("{e}: {}", shown()));
    let payload = match v.get("payloadBase64") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap(),
        None => {
            let key = b",\"payload\":";
            let start = line
                .windows(key.len())
                .position(|w| w == key)
                .unwrap_or_else(|| panic!("no payload: {}", shown()))
                + key.len();
            line[start..line.len() - 1].to_vec()
        }
    };
    Record::new(
        v["topic"].as_str().unwrap(),
        v["messageId"].as_str().unwrap(),
        v["generateTime"].as_i64().unwrap(),
        payload,
    )
}

/// A delivered envelope line as it was sent: without the delivery's own
/// member `"superseded":true`, which the JSONL and HTTP sinks write just
/// before the payload when this group had already delivered a newer
/// message of the device (it says something of the delivery, not of the
/// message). The member's place is fixed and a string's quotes are
/// escaped, so the sequence cannot come from a topic or an id.
pub fn as_sent(line: &[u8]) -> Vec<u8> {
    const FLAG: &[u8] = b",\"superseded\":true,\"payload";
    match line.windows(FLAG.len()).position(|w| w == FLAG) {
        Some(at) => [&line[..at], b",\"payload", &line[at + FLAG.len()..]].concat(),
        None => line.to_vec(),
    }
}

/// Sends `records` one by one on an AMQP 1.0 link, as a platform's peer
/// does, and tells for each, in order, whether the client accepted it.
pub async fn send_amqp1(sender: &mut fe2o3_amqp::Sender, records: &[Record]) -> Vec<bool> {
    let mut accepted = Vec::with_capacity(records.len());
    for r in records {
        let outcome = sender.send(r.amqp1_message()).await.unwrap();
        accepted.push(matches!(
            outcome,
            fe2o3_amqp::types::messaging::Outcome::Accepted(_)
        ));
    }
    accepted
}
