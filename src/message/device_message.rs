//! The message type that flows through laneway.
//!
//! Invariants: a [`Message`] is immutable once shared (only
//! [`Message::with_extras`] on a message not yet cloned changes it in
//! place); cloning it is one reference-count increment, so fan-out to many
//! groups copies no bytes; its kind and parts always agree with its topic;
//! a message is at most three allocations of its own (its shared part, its
//! payload, and its topic and id only when together they are longer than
//! [`INLINE_TOPIC_AND_ID`] bytes: shorter ones sit in the shared part), and
//! a key or extra headers add only their own bytes: the extras sit in the
//! shared part too, whose topic ranges are kept in 16 bits (a topic is at
//! most [`MAX_TOPIC_LEN`] bytes) to make room for them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::{Extras, Header, Kind, TopicParts, classify};

/// The longest topic accepted; longer ones are malformed input, not messages.
pub const MAX_TOPIC_LEN: usize = 4096;

/// Why a message could not be built from its fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The topic was missing or empty: nothing can be routed without it.
    #[error("message has no topic")]
    MissingTopic,
    /// The topic is longer than [`MAX_TOPIC_LEN`].
    #[error("topic is {0} bytes, longer than the {MAX_TOPIC_LEN}-byte limit")]
    TopicTooLong(usize),
}

/// One device message: topic, message id, generate time and payload, and,
/// for a message that came with them (a Kafka record), its key and extra
/// headers.
///
/// Routing needs only the three header fields; the payload is carried as
/// shared bytes and parsed only when a group asks for JSON validation (and
/// then once, whatever the number of groups).
#[derive(Clone)]
pub struct Message {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    /// The topic, then the message id.
    topic_and_id: TopicAndId,
    /// Where the topic ends in `topic_and_id` (a character boundary).
    topic_len: u16,
    generate_time_ms: i64,
    parts: Parts,
    payload: Bytes,
    received_at: Instant,
    /// The payload's nesting depth when it is JSON, once found.
    payload_json_depth: JsonDepthCache,
    /// Empty for most messages: an empty key and vector allocate nothing.
    extras: Extras,
}

/// The bytes of topic and message id a message holds inside its shared
/// part; longer ones take an allocation of their own. A platform topic and
/// id are usually about 60 and 19 bytes, and 84 makes the shared part,
/// with its reference counts, 256 bytes: one of the allocator's size
/// classes.
const INLINE_TOPIC_AND_ID: usize = 84;

/// A message's topic, then its id: inside the shared part when they fit,
/// which saves a message an allocation and a free (the free on another
/// thread than the allocation, mimalloc's slow path: about 150
/// instructions a Kafka record together).
#[derive(Clone)]
enum TopicAndId {
    Inline(arrayvec::ArrayString<INLINE_TOPIC_AND_ID>),
    Heap(Box<str>),
}

impl TopicAndId {
    fn new(topic: &str, id: &str) -> TopicAndId {
        let mut both = arrayvec::ArrayString::new();
        if both.try_push_str(topic).is_ok() && both.try_push_str(id).is_ok() {
            return TopicAndId::Inline(both);
        }
        TopicAndId::Heap([topic, id].concat().into_boxed_str())
    }

    fn as_str(&self) -> &str {
        match self {
            TopicAndId::Inline(both) => both,
            TopicAndId::Heap(both) => both,
        }
    }
}

/// A payload's JSON nesting depth (`Some(None)`: not JSON), found at most
/// once per message by whichever group asks first. Two groups asking at
/// once both scan and store the same answer, a function of the immutable
/// payload, and nothing else is published through it: so a relaxed word is
/// enough, where a `OnceLock`'s protocol cost every message about 90
/// instructions. The word holds 0 for not yet known, 1 for not JSON, and a
/// depth `d` as `d + 2`.
#[derive(Default)]
struct JsonDepthCache(AtomicUsize);

impl JsonDepthCache {
    const UNKNOWN: usize = 0;
    const NOT_JSON: usize = 1;

    fn get(&self) -> Option<Option<usize>> {
        match self.0.load(Ordering::Relaxed) {
            Self::UNKNOWN => None,
            Self::NOT_JSON => Some(None),
            word => Some(Some(word - 2)),
        }
    }

    fn set(&self, depth: Option<usize>) {
        // A depth is at most the payload's length: `+ 2` cannot overflow,
        // and saturating keeps that true without a panic path.
        let word = depth.map_or(Self::NOT_JSON, |d| d.saturating_add(2));
        self.0.store(word, Ordering::Relaxed);
    }
}

impl Clone for JsonDepthCache {
    fn clone(&self) -> Self {
        JsonDepthCache(AtomicUsize::new(self.0.load(Ordering::Relaxed)))
    }
}

/// [`TopicParts`] in 16-bit ranges: a message keeps them for its life.
#[derive(Clone)]
struct Parts {
    kind: Kind,
    product_key: Option<(u16, u16)>,
    device_name: Option<(u16, u16)>,
    event_identifier: Option<(u16, u16)>,
}

impl Parts {
    /// The parts of a topic of at most [`MAX_TOPIC_LEN`] bytes, whose
    /// ranges all fit.
    fn of(topic: &str) -> Parts {
        let narrow = |r: Option<std::ops::Range<usize>>| {
            r.and_then(|r| Some((u16::try_from(r.start).ok()?, u16::try_from(r.end).ok()?)))
        };
        let parts: TopicParts = classify(topic);
        Parts {
            kind: parts.kind,
            product_key: narrow(parts.product_key),
            device_name: narrow(parts.device_name),
            event_identifier: narrow(parts.event_identifier),
        }
    }
}

impl Message {
    /// Builds a message, classifying its topic. `received_at` is now: live
    /// latency is measured from the moment laneway got the message.
    pub fn new(
        topic: impl AsRef<str>,
        message_id: impl AsRef<str>,
        generate_time_ms: i64,
        payload: impl Into<Bytes>,
    ) -> Result<Message, MessageError> {
        Self::received(topic, message_id, generate_time_ms, payload, Instant::now())
    }

    /// Like [`Message::new`], with the instant the message was received given
    /// explicitly (sources that stamp a whole batch at once, and tests).
    pub fn received(
        topic: impl AsRef<str>,
        message_id: impl AsRef<str>,
        generate_time_ms: i64,
        payload: impl Into<Bytes>,
        received_at: Instant,
    ) -> Result<Message, MessageError> {
        Self::received_with_extras(
            topic.as_ref(),
            message_id.as_ref(),
            generate_time_ms,
            payload.into(),
            received_at,
            Extras::default(),
        )
    }

    /// [`Message::received`] with a key and extra headers, for a source
    /// whose records carry them (Kafka): set as the message is built,
    /// where [`Message::with_extras`] after it must first make sure the new
    /// message is not shared, an atomic compare-and-swap every record.
    pub(crate) fn received_with_extras(
        topic: &str,
        message_id: &str,
        generate_time_ms: i64,
        payload: Bytes,
        received_at: Instant,
        extras: Extras,
    ) -> Result<Message, MessageError> {
        if topic.is_empty() {
            return Err(MessageError::MissingTopic);
        }
        let topic_len = match u16::try_from(topic.len()) {
            Ok(len) if usize::from(len) <= MAX_TOPIC_LEN => len,
            _ => return Err(MessageError::TopicTooLong(topic.len())),
        };
        let parts = Parts::of(topic);
        Ok(Message {
            inner: Arc::new(Inner {
                topic_and_id: TopicAndId::new(topic, message_id),
                topic_len,
                generate_time_ms,
                parts,
                payload,
                received_at,
                payload_json_depth: JsonDepthCache::default(),
                extras,
            }),
        })
    }

    /// This message with `extras` as its key and extra headers (empty
    /// extras: none). Sources call it on a message they just built, which
    /// is changed in place; on a message already cloned, the fields are
    /// copied once (the payload is shared either way).
    pub fn with_extras(mut self, extras: Extras) -> Message {
        Arc::make_mut(&mut self.inner).extras = extras;
        self
    }

    /// The key and extra headers, when the message has any.
    pub fn extras(&self) -> Option<&Extras> {
        Some(&self.inner.extras).filter(|e| !e.is_empty())
    }

    /// The key of the record the message came in (a Kafka record key), byte
    /// for byte; `None` when it had none. Sinks that key their output keep it.
    pub fn key(&self) -> Option<&Bytes> {
        self.extras().and_then(|e| e.key.as_ref())
    }

    /// The headers the message came with beyond the platform's `topic`,
    /// `messageId` and `generateTime` (a Kafka record's), in their order;
    /// empty for most messages.
    pub fn headers(&self) -> &[Header] {
        self.extras()
            .map(|e| e.headers.as_slice())
            .unwrap_or_default()
    }

    /// The platform topic the message was published on.
    pub fn topic(&self) -> &str {
        self.inner
            .topic_and_id
            .as_str()
            .get(..usize::from(self.inner.topic_len))
            .unwrap_or_default()
    }

    /// The platform's message id (unique per message, used for dedup downstream).
    pub fn message_id(&self) -> &str {
        self.inner
            .topic_and_id
            .as_str()
            .get(usize::from(self.inner.topic_len)..)
            .unwrap_or_default()
    }

    /// When the device message was generated, in epoch milliseconds.
    pub fn generate_time_ms(&self) -> i64 {
        self.inner.generate_time_ms
    }

    /// The kind the topic names.
    pub fn kind(&self) -> Kind {
        self.inner.parts.kind
    }

    /// The product key from the topic, when the topic carries one.
    pub fn product_key(&self) -> Option<&str> {
        self.part(&self.inner.parts.product_key)
    }

    /// The device name from the topic, when the topic carries one.
    pub fn device_name(&self) -> Option<&str> {
        self.part(&self.inner.parts.device_name)
    }

    /// The event identifier, for [`Kind::Event`] messages.
    pub fn event_identifier(&self) -> Option<&str> {
        self.part(&self.inner.parts.event_identifier)
    }

    /// The body bytes (JSON from the platform, but not checked unless asked).
    pub fn payload(&self) -> &Bytes {
        &self.inner.payload
    }

    /// When laneway received the message (the start of its live latency).
    pub fn received_at(&self) -> Instant {
        self.inner.received_at
    }

    /// The message's age at `now_ms` (epoch milliseconds), from its generate time.
    pub fn age_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.inner.generate_time_ms)
    }

    /// Whether the payload is JSON (any size of number included). Checked at
    /// most once per message, however many groups ask.
    pub fn payload_is_json(&self) -> bool {
        self.payload_json_depth().is_some()
    }

    /// How deeply the payload nests arrays and objects (`[[1]]`: 2; a
    /// scalar: 0) when it is JSON; `None` when it is not. Computed once.
    pub fn payload_json_depth(&self) -> Option<usize> {
        // One pass of the strict scanner, which checks and measures at once
        // and copies nothing: on device payloads (tens to thousands of
        // bytes) it is 2-5x faster than copying the payload for the
        // vectorised parser (whose buffers are allocated on every call) and
        // measuring the depth after it.
        let cache = &self.inner.payload_json_depth;
        cache.get().unwrap_or_else(|| {
            let depth = super::json::depth_of_valid(&self.inner.payload).ok();
            cache.set(depth);
            depth
        })
    }

    /// Bytes this message occupies in memory, roughly (for capacity accounting).
    pub fn size_bytes(&self) -> usize {
        self.inner.topic_and_id.as_str().len()
            + self.inner.payload.len()
            + self.extras().map_or(0, Extras::size_bytes)
            + 64
    }

    /// The product key and device name as the topic holds them, the slash
    /// between them included (every pattern puts them side by side), when
    /// it carries both: one slice that names the device, to hash.
    pub(crate) fn product_and_device(&self) -> Option<&str> {
        let (start, _) = self.inner.parts.product_key?;
        let (_, end) = self.inner.parts.device_name?;
        self.topic().get(usize::from(start)..usize::from(end))
    }

    fn part(&self, range: &Option<(u16, u16)>) -> Option<&str> {
        range.and_then(|(start, end)| self.topic().get(usize::from(start)..usize::from(end)))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("message_id", &self.message_id())
            .field("generate_time_ms", &self.generate_time_ms())
            .field("kind", &self.kind())
            .field("payload_len", &self.payload().len())
            .field("key", &self.key())
            .field("headers", &self.headers().len())
            .finish()
    }
}

/// Milliseconds since the Unix epoch, the unit of `generateTime`.
pub fn now_epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A generate time written as text (a Kafka or AMQP header, an envelope's
/// string or integer) as epoch milliseconds: what `str::trim` then
/// `str::parse::<i64>` accept; `None` for text they refuse (the message is
/// malformed: see `unusable_generate_time`). The usual text, digits with
/// an optional sign, is read straight from the bytes, eight digits to a
/// word: a UTF-8 pass and
/// the standard parser cost a Kafka record about 180 instructions, a digit
/// at a time about 210 (13 digits), a word at a time about 95. Anything
/// else takes the standard reading.
pub(crate) fn generate_time_of_text(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    match value_of_digits(digits) {
        Some(n) => Some(if negative { -n } else { n }),
        None => generate_time_of_other_text(text),
    }
}

/// Why a message whose `generateTime` is there but is not epoch
/// milliseconds (`"2024-01-01"`, `"soon"`, a boolean) is malformed, with
/// the value as it came (text quoted, other bytes as base64). Every source
/// says it the same way: a time put in its place (the record's, the
/// receipt's) would be a time the platform never sent, and it decides the
/// message's lane.
#[cold]
#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
pub(crate) fn unusable_generate_time(value: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(value) {
        Ok(text) => format!("unusable generateTime {text:?}: not epoch milliseconds"),
        Err(_) => format!(
            "unusable generateTime (base64 {}): not epoch milliseconds",
            base64::engine::general_purpose::STANDARD.encode(value)
        ),
    }
}

/// The standard reading, for text that is not just digits (kept out of
/// line: the usual path then saves no registers for it).
#[cold]
#[inline(never)]
fn generate_time_of_other_text(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// The value of 1 to 18 ASCII digits (18 always fit an i64); `None` for
/// any other text.
fn value_of_digits(digits: &[u8]) -> Option<i64> {
    const POWERS_OF_TEN: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];
    if digits.len() < 8 {
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        return Some(n);
    }
    if digits.len() > 18 {
        return None;
    }
    let mut n: u64 = 0;
    let mut words = digits.chunks_exact(8);
    for word in &mut words {
        n = n * 100_000_000 + eight_digits(u64::from_le_bytes(word.try_into().ok()?))?;
    }
    let rest = words.remainder().len();
    if rest > 0 {
        // The last eight digits, of which the first `8 - rest` were read
        // already: those read as zeros now.
        let last = digits.get(digits.len() - 8..)?;
        let read = u64::MAX >> (8 * rest);
        let word = u64::from_le_bytes(last.try_into().ok()?) & !read | 0x3030_3030_3030_3030 & read;
        n = n * POWERS_OF_TEN.get(rest)? + eight_digits(word)?;
    }
    i64::try_from(n).ok()
}

/// The value of eight ASCII digits read as a little-endian word (the
/// first digit, the most significant, in the lowest byte); `None` when a
/// byte is not a digit.
fn eight_digits(word: u64) -> Option<u64> {
    // A digit is 0x30..=0x39: its high nibble is 3, and adding 6 keeps it
    // 3 (no byte that passes can carry into the next).
    let high = word & 0xF0F0_F0F0_F0F0_F0F0;
    let plus_six = word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    if high | plus_six >> 4 != 0x3333_3333_3333_3333 {
        return None;
    }
    // Pairs, then fours, then the eight: each step a multiply and a shift.
    let w = word & 0x0F0F_0F0F_0F0F_0F0F;
    let w = (w * 10 + (w >> 8)) & 0x00FF_00FF_00FF_00FF;
    let w = (w * 100 + (w >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((w * 10_000 + (w >> 32)) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard reading of a generate time, the oracle of the fast one.
    fn standard(text: &[u8]) -> Option<i64> {
        std::str::from_utf8(text).ok()?.trim().parse().ok()
    }

    proptest::proptest! {
        /// The generate time reads as the standard parser reads it, for
        /// any text: digits, signs, blanks, too many digits, other bytes.
        #[test]
        fn the_generate_time_reads_as_the_standard_parser_reads_it(
            text in proptest::collection::vec(
                proptest::sample::select(
                    b"0123456789-+ \t\x0b\xa0x.9".to_vec()
                ),
                0..24,
            ),
            n in proptest::num::i64::ANY,
        ) {
            proptest::prop_assert_eq!(generate_time_of_text(&text), standard(&text));
            let written = n.to_string();
            proptest::prop_assert_eq!(generate_time_of_text(written.as_bytes()), Some(n));
        }
    }

    #[test]
    fn a_generate_time_of_any_usual_form_is_read() {
        for (text, want) in [
            (&b"1733550000000"[..], Some(1_733_550_000_000)),
            (b"-5", Some(-5)),
            (b"+7", Some(7)),
            (b" 12 ", Some(12)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-", None),
            (b"", None),
            (b"12a", None),
            (b"\xff1", None),
        ] {
            assert_eq!(generate_time_of_text(text), want, "{text:?}");
        }
    }

    #[test]
    fn product_and_device_is_the_two_parts_with_the_slash_between() {
        for topic in [
            "/pk1/dev1/thing/event/property/post",
            "/pk1/dev1/thing/event/alarm/post",
            "/as/mqtt/status/pk1/dev1",
            "/sys/pk1/dev1/thing/lifecycle",
            "/pk1/dev1/thing/topo/lifecycle",
            "/pk1/dev1/thing/list/found",
            "/pk1/dev1/user/update",
            "/sys/pk1/dev1/user/update",
        ] {
            let m = Message::new(topic, "1", 0, "{}").unwrap();
            assert_eq!(m.product_and_device(), Some("pk1/dev1"), "{topic}");
        }
        for topic in ["/pk1/dev1", "/pk1", "plain", "/pk1//thing/lifecycle"] {
            let m = Message::new(topic, "1", 0, "{}").unwrap();
            assert_eq!(m.product_and_device(), None, "{topic}");
        }
    }

    #[test]
    fn clone_shares_the_payload() {
        let m = Message::new("/pk/dn/thing/lifecycle", "1", 5, Bytes::from_static(b"{}")).unwrap();
        let c = m.clone();
        assert_eq!(m.payload().as_ptr(), c.payload().as_ptr());
        assert_eq!(c.product_key(), Some("pk"));
        assert_eq!(c.device_name(), Some("dn"));
    }

    #[test]
    fn extras_are_kept_and_a_message_without_them_stays_small() {
        // With its two reference counts, 256 bytes: an allocator size class.
        assert!(
            std::mem::size_of::<Inner>() <= 240,
            "the shared part grew: {} bytes",
            std::mem::size_of::<Inner>()
        );
        let m = Message::new("/pk/dn/thing/lifecycle", "1", 5, Bytes::from_static(b"{}")).unwrap();
        assert_eq!((m.key(), m.headers().len()), (None, 0));
        let shared = m.clone();
        let keyed = m.with_extras(Extras {
            key: Some(Bytes::from_static(b"\xff\0k")),
            headers: vec![Header::new("h", &b"\x80"[..])],
        });
        assert_eq!(keyed.key().map(|k| &k[..]), Some(&b"\xff\0k"[..]));
        assert_eq!(keyed.headers()[0].value.as_deref(), Some(&b"\x80"[..]));
        assert_eq!(keyed.payload().as_ptr(), shared.payload().as_ptr());
        assert_eq!(shared.key(), None, "a clone made before is not changed");
    }

    #[test]
    fn empty_and_huge_topics_are_rejected() {
        assert_eq!(
            Message::new("", "1", 0, Bytes::new()).unwrap_err(),
            MessageError::MissingTopic
        );
        let long = "/".repeat(MAX_TOPIC_LEN + 1);
        assert!(matches!(
            Message::new(long, "1", 0, Bytes::new()),
            Err(MessageError::TopicTooLong(_))
        ));
    }

    #[test]
    fn a_generate_time_with_any_byte_in_place_of_any_digit_reads_as_the_standard_parser_reads_it() {
        // 1 to 19 digits: each side of the word-at-a-time reading's 8 and
        // of the 18 that always fit.
        for len in 1..=19 {
            let digits: Vec<u8> = (0..len).map(|k| b"9876543210"[k % 10]).collect();
            for sign in [&b""[..], b"-", b"+"] {
                let text = [sign, &digits].concat();
                assert_eq!(generate_time_of_text(&text), standard(&text), "{text:?}");
                for at in sign.len()..text.len() {
                    for byte in 0..=255u8 {
                        let mut changed = text.clone();
                        changed[at] = byte;
                        assert_eq!(
                            generate_time_of_text(&changed),
                            standard(&changed),
                            "{changed:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn topic_and_id_read_back_whether_they_sit_inline_or_not() {
        // At most `bytes` bytes of `pattern` repeated, whole characters.
        let text = |pattern: &str, bytes: usize| {
            let mut t = String::new();
            for c in pattern.chars().cycle() {
                if t.len() + c.len_utf8() > bytes {
                    return t;
                }
                t.push(c);
            }
            t
        };
        // Around the inline limit, with characters of several bytes.
        let limit = INLINE_TOPIC_AND_ID;
        for total in [1, 2, limit - 1, limit, limit + 1, limit + 2, 3000] {
            for topic_bytes in [1, total / 2, total - 1, total] {
                let topic = text("/é", topic_bytes.max(1));
                let id = text("漢7", total - topic.len());
                let m = Message::new(&topic, &id, 1, "{}").unwrap();
                assert_eq!((m.topic(), m.message_id()), (topic.as_str(), id.as_str()));
                let copied = m.clone().with_extras(Extras {
                    key: Some(Bytes::from_static(b"k")),
                    headers: Vec::new(),
                });
                assert_eq!(
                    (copied.topic(), copied.message_id()),
                    (topic.as_str(), id.as_str())
                );
            }
        }
    }

    #[test]
    fn json_validation_is_cached_and_correct() {
        let good = Message::new(
            "/a/b/thing/lifecycle",
            "1",
            0,
            Bytes::from_static(b"{\"a\":1}"),
        )
        .unwrap();
        let bad = Message::new(
            "/a/b/thing/lifecycle",
            "2",
            0,
            Bytes::from_static(b"{\"a\":"),
        )
        .unwrap();
        assert!(good.payload_is_json());
        assert!(good.payload_is_json());
        assert!(!bad.payload_is_json());
        assert!(!bad.payload_is_json());
        // Each answer the cache can hold, asked twice (the second from the
        // cache), and kept by a copy of the shared part.
        for (payload, depth) in [
            (&b"5"[..], Some(0)),
            (b"[[1]]", Some(2)),
            (b"{\"a\":", None),
            (b"\xff", None),
        ] {
            let m =
                Message::new("/a/b/thing/lifecycle", "4", 0, Bytes::from_static(payload)).unwrap();
            assert_eq!(m.payload_json_depth(), depth);
            assert_eq!(m.payload_json_depth(), depth);
            let held = m.clone();
            let copied = m.with_extras(Extras {
                key: Some(Bytes::from_static(b"k")),
                headers: Vec::new(),
            });
            assert_eq!(copied.payload_json_depth(), depth);
            assert_eq!(held.payload_json_depth(), depth);
        }
        let big = Message::new(
            "/a/b/thing/lifecycle",
            "3",
            0,
            Bytes::from_static(b"{\"n\":123456789012345678901234567890}"),
        )
        .unwrap();
        assert!(big.payload_is_json());
    }
}
