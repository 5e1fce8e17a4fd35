//! An `[[sources]]` entry of `type = "pulsar"`: where to connect (a URL, or
//! the `tuya` preset), what to subscribe to, and the flow-control knobs.
//!
//! Invariant: a checked config ([`PulsarSourceConfig::validate`]) has
//! exactly one way to connect (a URL with a topic, or the `tuya` preset), a
//! non-empty subscription, and a receive queue and batch of at least one.
//! Nothing here holds a secret: the Tuya access key is read from the
//! environment (or a file) when connecting.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tuya::{Region, TuyaCredentials, subscription_name, topic_name};
use crate::knob::KnobError;
use crate::source::LanePolicy;

/// A Pulsar source: one consumer on a failover subscription, acknowledging
/// a message only once the engine is done with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PulsarSourceConfig {
    /// Which lane its messages take. Default `auto`.
    pub lane: LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// The service URL, `pulsar://host:6650` or `pulsar+ssl://host:6651`.
    /// When absent and no preset is set, the variable named by `url_env`
    /// is read.
    pub url: Option<String>,
    /// The environment variable holding the URL. Default `PULSAR_URL`, and
    /// when that is unset too, `pulsar://127.0.0.1:6650`.
    pub url_env: Option<String>,
    /// The topic to consume (`persistent://tenant/ns/name` or a short
    /// name). Required without a preset; the `tuya` preset names its own.
    pub topic: Option<String>,
    /// The subscription name. Default `laneway`; the `tuya` preset uses
    /// `${access_id}-sub`, as the platform expects.
    pub subscription: Option<String>,
    /// The consumer's receive queue: how many messages the broker may push
    /// ahead of what the engine has taken. Default 1,000.
    pub receive_queue: u32,
    /// The most messages handed to the engine in one batch. Default 256.
    pub batch: usize,
    /// The first wait before reconnecting; it doubles, with full jitter.
    /// Default 1 s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_initial: Duration,
    /// The longest wait between reconnect attempts. Default 60 s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_max: Duration,
    /// Finish once no message has arrived for this long and every one
    /// received is acknowledged (drain a topic, then exit). Default: never.
    #[serde(with = "crate::knob::duration")]
    pub idle_exit: Option<Duration>,
    /// A PEM file of certificate authorities to trust for TLS, instead of
    /// the bundled web roots (a private endpoint, a test peer).
    pub ca_file: Option<PathBuf>,
    /// Connect to Tuya's message service (`[sources.tuya]`): the endpoint,
    /// topic, subscription, `auth1` login and payload decryption come from
    /// it, and `url` and `topic` must not be set.
    pub tuya: Option<TuyaConfig>,
}

impl Default for PulsarSourceConfig {
    fn default() -> Self {
        PulsarSourceConfig {
            lane: LanePolicy::Auto,
            name: None,
            url: None,
            url_env: None,
            topic: None,
            subscription: None,
            receive_queue: 1_000,
            batch: 256,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            idle_exit: None,
            ca_file: None,
            tuya: None,
        }
    }
}

/// Tuya's message service: an application's access ID and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuyaConfig {
    /// The application's access ID (not a secret).
    pub access_id: String,
    /// The environment variable holding the access key. Default
    /// `TUYA_ACCESS_KEY`.
    pub access_key_env: String,
    /// A file holding the access key instead (trailing whitespace is
    /// ignored).
    pub access_key_file: Option<PathBuf>,
    /// The data centre: `cn`, `us`, `eu` or `in`. Default `cn`.
    pub region: Region,
    /// A service URL replacing the region's endpoint (a private endpoint,
    /// a test peer).
    pub endpoint: Option<String>,
    /// Read the test environment's topic `${access_id}/out/event-test`.
    /// Default false.
    pub test_environment: bool,
    /// Accept a `pulsar://` (non-TLS) `endpoint`. The login sends the
    /// access ID and a password derived from the access key that stays
    /// valid as long as the key: in clear, anyone on the path could replay
    /// it. Off by default; when on, the start logs a warning. For a test
    /// peer on loopback only.
    pub allow_plaintext: bool,
}

impl Default for TuyaConfig {
    fn default() -> Self {
        TuyaConfig {
            access_id: String::new(),
            access_key_env: "TUYA_ACCESS_KEY".into(),
            access_key_file: None,
            region: Region::Cn,
            endpoint: None,
            test_environment: false,
            allow_plaintext: false,
        }
    }
}

impl TuyaConfig {
    /// The access ID and the access key, read now from where the config
    /// says. The error names the variable or file, never the key.
    pub fn credentials(&self) -> Result<TuyaCredentials, String> {
        let key = crate::env::read_secret(
            self.access_key_file.as_deref(),
            &self.access_key_env,
            "Tuya access key",
        )?;
        if key.expose().len() < 24 {
            return Err(format!(
                "the Tuya access key is {} characters; it must have at least 24 (its characters 8..24 are the AES key)",
                key.expose().len()
            ));
        }
        Ok(TuyaCredentials::new(self.access_id.clone(), key))
    }
}

/// The environment variable read for the URL when neither `url` nor
/// `url_env` is set.
pub const DEFAULT_URL_ENV: &str = "PULSAR_URL";
/// The URL used when nothing names one: a local broker.
pub const DEFAULT_URL: &str = "pulsar://127.0.0.1:6650";

/// Where and how to connect, resolved from a checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The service URL (no credentials: Pulsar URLs carry none).
    pub url: String,
    /// The topic to subscribe to.
    pub topic: String,
    /// The subscription name.
    pub subscription: String,
    /// A static password crosses the connection in clear (a `tuya` preset
    /// allowed onto a `pulsar://` endpoint): the start warns about it.
    pub plaintext_login: bool,
}

impl PulsarSourceConfig {
    /// Checks the knobs and resolves the URL, topic and subscription. The
    /// Tuya access key is read when connecting (so a rotated key is picked
    /// up on the next reconnect), not here.
    pub fn validate(&self) -> Result<Resolved, KnobError> {
        for (knob, value) in [
            ("receive_queue", self.receive_queue as usize),
            ("batch", self.batch),
        ] {
            if value == 0 {
                return Err(KnobError::new(knob, "must be at least 1"));
            }
        }
        let resolved = match &self.tuya {
            Some(tuya) => {
                if self.url.is_some() || self.url_env.is_some() || self.topic.is_some() {
                    return Err(KnobError::new(
                        "url",
                        "`url`, `url_env` and `topic` do not go with [sources.tuya], which names the endpoint and the topic itself (use tuya.endpoint for another endpoint)",
                    ));
                }
                if tuya.access_id.is_empty() {
                    return Err(KnobError::new("tuya.access_id", "the access ID is empty"));
                }
                if tuya.access_id.contains('/') {
                    return Err(KnobError::new(
                        "tuya.access_id",
                        format!("{:?} contains '/'", tuya.access_id),
                    ));
                }
                if tuya.access_key_env.is_empty() && tuya.access_key_file.is_none() {
                    return Err(KnobError::new(
                        "tuya.access_key_env",
                        "name the variable (or tuya.access_key_file) that holds the access key",
                    ));
                }
                let url = tuya
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| tuya.region.url().to_string());
                let plaintext_login = url.starts_with("pulsar://");
                if plaintext_login && !tuya.allow_plaintext {
                    return Err(KnobError::new(
                        "tuya.endpoint",
                        format!(
                            "{} is not TLS: the login would send the access ID and a replayable password in clear; use pulsar+ssl://, or set tuya.allow_plaintext = true (for a test peer)",
                            crate::broker_url::redact(&url)
                        ),
                    ));
                }
                Resolved {
                    url,
                    plaintext_login,
                    topic: topic_name(&tuya.access_id, tuya.test_environment),
                    subscription: self
                        .subscription
                        .clone()
                        .unwrap_or_else(|| subscription_name(&tuya.access_id)),
                }
            }
            None => {
                if self.url.is_some() && self.url_env.is_some() {
                    return Err(KnobError::new("url", "set `url` or `url_env`, not both"));
                }
                let url = crate::env::url_text(
                    self.url.as_deref(),
                    self.url_env.as_deref(),
                    DEFAULT_URL_ENV,
                    DEFAULT_URL,
                )
                .map_err(|var| {
                    KnobError::new("url_env", format!("environment variable {var} is not set"))
                })?;
                let topic = match &self.topic {
                    Some(t) if !t.is_empty() => t.clone(),
                    _ => return Err(KnobError::new("topic", "name the topic to consume")),
                };
                Resolved {
                    url,
                    plaintext_login: false,
                    topic,
                    subscription: self
                        .subscription
                        .clone()
                        .unwrap_or_else(|| "laneway".into()),
                }
            }
        };
        // The URL comes from the preset's endpoint, or from `url`.
        let url_knob = if self.tuya.is_some() {
            "tuya.endpoint"
        } else {
            "url"
        };
        let shown = crate::broker_url::redact(&resolved.url);
        if !(resolved.url.starts_with("pulsar://") || resolved.url.starts_with("pulsar+ssl://")) {
            return Err(KnobError::new(
                url_knob,
                format!("{shown} is not a pulsar:// or pulsar+ssl:// URL"),
            ));
        }
        if resolved
            .url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('@'))
        {
            return Err(KnobError::new(
                url_knob,
                format!(
                    "{shown}: a Pulsar service URL carries no user or password (the tuya preset logs in with its access key)"
                ),
            ));
        }
        if resolved.subscription.is_empty() {
            return Err(KnobError::new(
                "subscription",
                "the subscription name is empty",
            ));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tuya() -> PulsarSourceConfig {
        PulsarSourceConfig {
            tuya: Some(TuyaConfig {
                access_id: "abc".into(),
                region: Region::Eu,
                ..TuyaConfig::default()
            }),
            ..PulsarSourceConfig::default()
        }
    }

    #[test]
    fn the_tuya_preset_names_endpoint_topic_and_subscription() {
        let r = tuya().validate().unwrap();
        assert_eq!(r.url, "pulsar+ssl://mqe.tuyaeu.com:7285");
        assert_eq!(r.topic, "abc/out/event");
        assert_eq!(r.subscription, "abc-sub");
    }

    #[test]
    fn a_preset_refuses_a_url_and_a_plain_source_needs_a_topic() {
        let mut c = tuya();
        c.url = Some("pulsar://x:6650".into());
        assert_eq!(c.validate().unwrap_err().knob(), "url");
        let plain = PulsarSourceConfig {
            url: Some("pulsar://127.0.0.1:6650".into()),
            ..PulsarSourceConfig::default()
        };
        assert_eq!(plain.validate().unwrap_err().knob(), "topic");
        let bad = PulsarSourceConfig {
            url: Some("http://x".into()),
            topic: Some("t".into()),
            ..PulsarSourceConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().knob(), "url");
    }

    #[test]
    fn the_tuya_preset_refuses_a_plaintext_endpoint_unless_allowed() {
        let mut c = tuya();
        if let Some(t) = c.tuya.as_mut() {
            t.endpoint = Some("pulsar://127.0.0.1:6650".into());
        }
        let e = c.validate().unwrap_err();
        assert_eq!(e.knob(), "tuya.endpoint");
        assert!(e.to_string().contains("allow_plaintext"), "{e}");
        if let Some(t) = c.tuya.as_mut() {
            t.allow_plaintext = true;
        }
        assert!(c.validate().unwrap().plaintext_login);
        assert!(!tuya().validate().unwrap().plaintext_login);
    }

    #[test]
    fn a_short_access_key_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "shortsecret\n").unwrap();
        let c = TuyaConfig {
            access_id: "abc".into(),
            access_key_file: Some(file),
            ..TuyaConfig::default()
        };
        let e = c.credentials().unwrap_err();
        assert!(
            e.contains("11 characters") && !e.contains("shortsecret"),
            "{e}"
        );
    }
}
