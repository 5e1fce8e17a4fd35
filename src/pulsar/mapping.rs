//! One Pulsar message as what the engine ingests.
//!
//! - A plain topic: the message properties `topic`, `messageId` and
//!   `generateTime` (as on the AMQP 1.0 source), the payload bytes as they
//!   came. Without `messageId` the id is the Pulsar message id; without
//!   `generateTime` it is the event time, else the publish time.
//! - The `tuya` preset: the payload is Tuya's envelope
//!   `{protocol, pv, t, data, sign}` whose `data` is encrypted with the
//!   access key (mode from the `em` property). The message is the
//!   decrypted `data`, byte for byte; its topic classifies into laneway's
//!   kinds (see [`super::laneway_topic`]); its id is the content's
//!   `dataId`, else the Pulsar message id; its time is the envelope's `t`.
//!
//! Invariant: what cannot be mapped (no topic, an envelope that is not
//! JSON, data that does not decrypt) is malformed input with its reason
//! and the payload as received (a dead letter), never a message with an
//! invented field, and the reason never carries key material.

use bytes::Bytes;
use serde::Deserialize;

use super::decrypt::{EncryptMode, decrypt};
use super::tuya::laneway_topic;
use crate::message::{Message, generate_time_of_text, unusable_generate_time};
use crate::source::Incoming;

/// The message property carrying the platform topic.
pub const TOPIC: &str = "topic";
/// The message property carrying the platform message id.
pub const MESSAGE_ID: &str = "messageId";
/// The message property carrying the generate time, epoch milliseconds.
pub const GENERATE_TIME: &str = "generateTime";
/// The message property naming Tuya's encryption mode.
pub const ENCRYPT_MODE: &str = "em";

/// What the mapping needs of a received Pulsar message.
pub struct Received<'a> {
    /// The message properties, in order.
    pub properties: &'a [(String, String)],
    /// The payload.
    pub data: Vec<u8>,
    /// The producer's event time, epoch ms, when set.
    pub event_time_ms: Option<u64>,
    /// The broker's publish time, epoch ms.
    pub publish_time_ms: u64,
    /// The Pulsar message id, `ledger:entry` (and `:batch` in a batch).
    pub id: String,
}

impl Received<'_> {
    fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn time_ms(&self) -> i64 {
        let t = self
            .event_time_ms
            .filter(|t| *t > 0)
            .unwrap_or(self.publish_time_ms);
        i64::try_from(t).unwrap_or(i64::MAX)
    }
}

/// A message of a plain topic; `origin` (such as `pulsar t message 3:17`)
/// is only computed for malformed input.
pub fn plain(r: Received<'_>, origin: impl FnOnce() -> String) -> Incoming {
    let Some(topic) = r.property(TOPIC).map(str::to_string) else {
        return malformed(
            r.data,
            origin,
            "no topic: the message has no `topic` property".into(),
        );
    };
    let id = r
        .property(MESSAGE_ID)
        .map_or_else(|| r.id.clone(), str::to_string);
    // The text is copied only into a dead letter's reason: the property
    // borrows the record whose data the dead letter takes.
    let time = match r.property(GENERATE_TIME) {
        Some(t) => {
            generate_time_of_text(t.as_bytes()).ok_or_else(|| unusable_generate_time(t.as_bytes()))
        }
        None => Ok(r.time_ms()),
    };
    let time = match time {
        Ok(t) => t,
        Err(reason) => return malformed(r.data, origin, reason),
    };
    let payload = Bytes::from(r.data);
    match Message::new(topic, id, time, payload.clone()) {
        Ok(m) => Incoming::Message(m),
        Err(e) => malformed(payload.into(), origin, format!("unusable topic: {e}")),
    }
}

/// Tuya's envelope around an encrypted message.
#[derive(Deserialize)]
struct Envelope {
    protocol: u32,
    t: Option<i64>,
    data: String,
}

/// The fields of a decrypted Tuya message that name its device and kind.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Content {
    dev_id: Option<String>,
    product_key: Option<String>,
    biz_code: Option<String>,
    data_id: Option<String>,
    /// Some messages name the device inside `bizData`.
    biz_data: Option<BizData>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BizData {
    dev_id: Option<String>,
    product_key: Option<String>,
}

/// A message of Tuya's service, decrypted with `access_key`.
pub fn tuya(r: Received<'_>, access_key: &str, origin: impl FnOnce() -> String) -> Incoming {
    let Some(mode) = EncryptMode::from_property(r.property(ENCRYPT_MODE)) else {
        let em = r.property(ENCRYPT_MODE).unwrap_or_default().to_string();
        return malformed(
            r.data,
            origin,
            format!("unknown encryption mode em={em:?} (aes_ecb or aes_gcm)"),
        );
    };
    let mut scratch = r.data.clone();
    let envelope: Envelope = match simd_json::serde::from_slice(&mut scratch) {
        Ok(e) => e,
        Err(e) => {
            return malformed(
                r.data,
                origin,
                format!("not a Tuya envelope {{protocol, t, data}}: {e}"),
            );
        }
    };
    let plain = match decrypt(mode, access_key, &envelope.data) {
        Ok(p) => p,
        Err(e) => return malformed(r.data, origin, format!("undecryptable data: {e}")),
    };
    let mut scratch = plain.clone();
    let content: Content = match simd_json::serde::from_slice(&mut scratch) {
        Ok(c) => c,
        Err(e) => {
            return malformed(
                r.data,
                origin,
                format!("decrypted data is not a JSON object: {e}"),
            );
        }
    };
    let biz = content.biz_data.unwrap_or_default();
    let dev_id = content.dev_id.or(biz.dev_id);
    let Some(dev_id) = dev_id.filter(|d| !d.is_empty() && !d.contains('/')) else {
        return malformed(
            r.data,
            origin,
            "decrypted data names no usable devId".into(),
        );
    };
    let product = content
        .product_key
        .or(biz.product_key)
        .filter(|p| !p.is_empty() && !p.contains('/'))
        .unwrap_or_else(|| "tuya".into());
    let topic = laneway_topic(
        &product,
        &dev_id,
        envelope.protocol,
        content.biz_code.as_deref(),
    );
    let id = content.data_id.unwrap_or_else(|| r.id.clone());
    let time = envelope.t.unwrap_or_else(|| r.time_ms());
    match Message::new(topic, id, time, Bytes::from(plain)) {
        Ok(m) => Incoming::Message(m),
        Err(e) => malformed(r.data, origin, format!("unusable topic: {e}")),
    }
}

fn malformed(raw: Vec<u8>, origin: impl FnOnce() -> String, reason: String) -> Incoming {
    Incoming::Malformed {
        raw: Bytes::from(raw),
        origin: origin(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn received(props: &[(String, String)], data: &[u8]) -> Received<'static> {
        Received {
            properties: Box::leak(props.to_vec().into_boxed_slice()),
            data: data.to_vec(),
            event_time_ms: None,
            publish_time_ms: 1_700_000_000_000,
            id: "7:3".into(),
        }
    }

    fn props(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_plain_message_keeps_its_fields_and_bytes() {
        let p = props(&[
            ("topic", "/pk/d1/thing/event/property/post"),
            ("messageId", "m1"),
            ("generateTime", "42"),
        ]);
        let Incoming::Message(m) = plain(received(&p, b"\x00\xffraw"), || "o".into()) else {
            panic!("not a message");
        };
        assert_eq!(
            (m.topic(), m.message_id(), m.generate_time_ms()),
            ("/pk/d1/thing/event/property/post", "m1", 42)
        );
        assert_eq!(&m.payload()[..], b"\x00\xffraw");
    }

    #[test]
    fn a_plain_message_without_topic_is_a_dead_letter_with_its_bytes() {
        let Incoming::Malformed { raw, reason, .. } = plain(received(&[], b"abc"), || "o".into())
        else {
            panic!("not malformed");
        };
        assert_eq!(&raw[..], b"abc");
        assert!(reason.contains("no topic"), "{reason}");
        let p = props(&[("topic", "/a/b/thing/event/x/post")]);
        let Incoming::Message(m) = plain(received(&p, b"x"), || "o".into()) else {
            panic!("not a message");
        };
        assert_eq!(
            (m.message_id(), m.generate_time_ms()),
            ("7:3", 1_700_000_000_000)
        );
    }

    #[test]
    fn a_generate_time_is_read_as_text_with_unicode_blanks_and_a_sign_and_anything_else_is_a_dead_letter()
     {
        for (text, want) in [
            (" 42 ", 42),
            ("+7", 7),
            ("-1", -1),
            ("\t1700000000000\n", 1_700_000_000_000),
            ("\u{a0}42", 42),
        ] {
            let p = props(&[("topic", "/pk/d1/thing/lifecycle"), ("generateTime", text)]);
            let Incoming::Message(m) = plain(received(&p, b"x"), || "o".into()) else {
                panic!("{text:?} is not a message");
            };
            assert_eq!(m.generate_time_ms(), want, "{text:?}");
        }
        for text in ["", "soon", "4 2", "42ms", "99999999999999999999"] {
            let p = props(&[("topic", "/pk/d1/thing/lifecycle"), ("generateTime", text)]);
            let Incoming::Malformed { raw, reason, .. } = plain(received(&p, b"x"), || "o".into())
            else {
                panic!("{text:?} is not a dead letter");
            };
            assert_eq!(&raw[..], b"x");
            assert!(reason.contains("unusable generateTime"), "{reason}");
        }
    }

    #[test]
    fn an_undecryptable_tuya_message_is_a_dead_letter_without_the_key() {
        let key = "0123456789abcdefghijklmnopqrstuv";
        let body = br#"{"protocol":4,"pv":"2.0","t":5,"data":"bm90IGNpcGhlcnRleHQ=","sign":"x"}"#;
        let Incoming::Malformed { raw, reason, .. } = tuya(received(&[], body), key, || "o".into())
        else {
            panic!("not malformed");
        };
        assert_eq!(&raw[..], &body[..]);
        assert!(reason.starts_with("undecryptable data"), "{reason}");
        assert!(!reason.contains("89abcdef"), "{reason}");
        let p = props(&[("em", "rot13")]);
        let Incoming::Malformed { reason, .. } = tuya(received(&p, body), key, || "o".into())
        else {
            panic!("not malformed");
        };
        assert!(reason.contains("rot13"), "{reason}");
        let Incoming::Malformed { reason, .. } = tuya(received(&[], b"{nope"), key, || "o".into())
        else {
            panic!("not malformed");
        };
        assert!(reason.contains("envelope"), "{reason}");
    }
}
