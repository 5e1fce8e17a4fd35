//! The Tuya preset: regional endpoints, topic and subscription names, the
//! `auth1` credentials, and the laneway topic a decrypted message maps to.
//!
//! Invariants: the access key and the derived password never appear in
//! Debug output or errors ([`TuyaCredentials`] redacts both); the topic a
//! message maps to always classifies (src/message/topic.rs) into the kind
//! its Tuya content names.

use std::fmt;

use md5::{Digest, Md5};

use crate::secret::Secret;

/// A Tuya data centre, which decides the broker endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// China.
    Cn,
    /// Western America.
    Us,
    /// Central Europe.
    Eu,
    /// India.
    In,
}

impl Region {
    /// The TLS endpoint Tuya documents for this region.
    pub fn url(self) -> &'static str {
        match self {
            Region::Cn => "pulsar+ssl://mqe.tuyacn.com:7285",
            Region::Us => "pulsar+ssl://mqe.tuyaus.com:7285",
            Region::Eu => "pulsar+ssl://mqe.tuyaeu.com:7285",
            Region::In => "pulsar+ssl://mqe.tuyain.com:7285",
        }
    }
}

/// The topic Tuya publishes an application's messages on; `test` picks
/// the test environment's topic.
pub fn topic_name(access_id: &str, test: bool) -> String {
    if test {
        format!("{access_id}/out/event-test")
    } else {
        format!("{access_id}/out/event")
    }
}

/// The subscription name Tuya expects (one per application: two consumers
/// of it split the messages between them).
pub fn subscription_name(access_id: &str) -> String {
    format!("{access_id}-sub")
}

/// An access ID and key; Debug shows the ID only.
#[derive(Clone)]
pub struct TuyaCredentials {
    access_id: String,
    access_key: Secret,
}

impl fmt::Debug for TuyaCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TuyaCredentials")
            .field("access_id", &self.access_id)
            .field("access_key", &self.access_key)
            .finish()
    }
}

impl TuyaCredentials {
    /// Credentials from an access ID and key (the key read from the
    /// environment variable the config names).
    pub fn new(access_id: String, access_key: Secret) -> Self {
        TuyaCredentials {
            access_id,
            access_key,
        }
    }

    /// The access ID (not a secret).
    pub fn access_id(&self) -> &str {
        &self.access_id
    }

    /// The access key, for decryption.
    pub fn access_key(&self) -> &str {
        self.access_key.expose()
    }

    /// The `auth1` password: `md5hex(accessId + md5hex(accessKey))[8..24]`.
    pub fn password(&self) -> String {
        let inner = hex(&Md5::digest(self.access_key.expose().as_bytes()));
        let outer = hex(&Md5::digest(
            format!("{}{inner}", self.access_id).as_bytes(),
        ));
        outer[8..24].to_string()
    }

    /// The `auth1` authentication data: `{"username":…,"password":…}`.
    pub fn auth_data(&self) -> Vec<u8> {
        let mut out = String::from("{\"username\":\"");
        json_escape(&self.access_id, &mut out);
        out.push_str("\",\"password\":\"");
        out.push_str(&self.password());
        out.push_str("\"}");
        out.into_bytes()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

/// The laneway topic for a decrypted Tuya message, so it classifies into
/// laneway's kinds: `protocol` 4 (a data report) is a property report;
/// `bizCode` online/offline is a status change; delete, bindUser and
/// nameUpdate are lifecycle; anything else is an event named by its
/// bizCode (or `other`). `product` is the product key (or `tuya`).
pub fn laneway_topic(product: &str, dev_id: &str, protocol: u32, biz_code: Option<&str>) -> String {
    match (protocol, biz_code) {
        (4, _) => format!("/{product}/{dev_id}/thing/event/property/post"),
        (_, Some("online" | "offline")) => format!("/as/mqtt/status/{product}/{dev_id}"),
        (_, Some("delete" | "bindUser" | "nameUpdate")) => {
            format!("/{product}/{dev_id}/thing/lifecycle")
        }
        (_, Some(code)) if !code.is_empty() && !code.contains('/') => {
            format!("/{product}/{dev_id}/thing/event/{code}/post")
        }
        _ => format!("/{product}/{dev_id}/tuya/other"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::message::Kind;

    fn creds() -> TuyaCredentials {
        TuyaCredentials::new(
            "testaccessid01".into(),
            "0123456789abcdef0123456789abcdef".into(),
        )
    }

    #[test]
    fn password_matches_a_hand_computed_vector() {
        // python3: hashlib.md5((ak + hashlib.md5(sk).hexdigest()).encode()).hexdigest()[8:24]
        assert_eq!(creds().password(), "1e7ba5dfd443fca1");
        assert_eq!(
            creds().auth_data(),
            br#"{"username":"testaccessid01","password":"1e7ba5dfd443fca1"}"#
        );
    }

    #[test]
    fn debug_never_shows_the_key_or_password() {
        let shown = format!("{:?}", creds());
        assert!(shown.contains("testaccessid01"));
        assert!(!shown.contains("0123456789abcdef") && !shown.contains("1e7ba5dfd443fca1"));
    }

    #[test]
    fn names_and_endpoints() {
        assert_eq!(topic_name("abc", false), "abc/out/event");
        assert_eq!(topic_name("abc", true), "abc/out/event-test");
        assert_eq!(subscription_name("abc"), "abc-sub");
        assert_eq!(Region::Eu.url(), "pulsar+ssl://mqe.tuyaeu.com:7285");
    }

    #[test]
    fn tuya_content_maps_onto_laneway_kinds() {
        let kind = |p, b| crate::message::classify(&laneway_topic("pk", "dev1", p, b)).kind;
        assert_eq!(kind(4, None), Kind::Property);
        assert_eq!(kind(20, Some("online")), Kind::Status);
        assert_eq!(kind(20, Some("offline")), Kind::Status);
        assert_eq!(kind(20, Some("delete")), Kind::Lifecycle);
        assert_eq!(kind(20, Some("bindUser")), Kind::Lifecycle);
        assert_eq!(kind(20, Some("nameUpdate")), Kind::Lifecycle);
        assert_eq!(kind(20, Some("upgradeStatus")), Kind::Event);
        assert_eq!(kind(20, None), Kind::Other);
    }
}
