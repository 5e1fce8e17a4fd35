//! An `[[sources]]` entry of `type = "amqp1"`: where to connect (a URL, or
//! a platform preset), what to read, and the flow-control knobs.
//!
//! Invariant: a checked config ([`Amqp1SourceConfig::validate`]) has
//! exactly one way to log in (a URL or the `aliyun` preset), a non-empty
//! address, and a credit window, batch size and connection count of at
//! least one. Nothing here holds a secret but an explicit `url`, which is
//! only ever shown redacted.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::aliyun::AliyunConfig;
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;
use crate::source::LanePolicy;

/// An AMQP 1.0 source: a receiver link on each of `connections`
/// connections, settled only once the engine is done with a message.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Amqp1SourceConfig {
    /// Which lane its messages take. Default `auto`.
    pub lane: LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// The peer's URL, `amqp://user:password@host:5672` or `amqps://…`
    /// (TLS). When absent and no preset is set, the variable named by
    /// `url_env` is read. Never printed whole.
    pub url: Option<String>,
    /// The environment variable holding the URL. Default `AMQP1_URL`, and
    /// when that is unset too, `amqp://guest:guest@127.0.0.1:5672`.
    pub url_env: Option<String>,
    /// Allow a plain `amqp://` URL that holds a password to a host that is
    /// not this machine: the password then crosses the network in clear (a
    /// WARN at start). Default false: such a URL is refused; use `amqps://`.
    pub allow_plaintext: bool,
    /// The node the receiver link attaches to: for RabbitMQ's AMQP 1.0
    /// plugin `/amq/queue/NAME` (a queue declared beforehand). Default
    /// `default` (what the Alibaba Cloud preset attaches to).
    pub address: String,
    /// Link credit: the most messages the peer may send that are not yet
    /// settled. Credit is given back only as messages are done, so this is
    /// also the most that come back as redeliveries after a crash. Default 500.
    pub credit: u32,
    /// The most deliveries handed to the engine in one batch. Default 256.
    pub batch: usize,
    /// Connections to open, each with one session and one receiver link
    /// (the platform pushes at most about 1,000 messages/s per connection).
    /// Default 1.
    pub connections: usize,
    /// The idle time-out announced to the peer; heartbeats keep the
    /// connection up. The platform accepts 30 s to 300 s. Default 60 s.
    #[serde(with = "crate::knob::duration")]
    pub idle_timeout: Duration,
    /// The first wait before reconnecting; it doubles, with full jitter.
    /// Default 1 s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_initial: Duration,
    /// The longest wait between reconnect attempts. Default 60 s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_max: Duration,
    /// The most connection attempts this process makes in any minute, over
    /// all its connections. The platform allows 100 per consumer group per
    /// minute; with the default 10, ten instances restarting together stay
    /// within it. Default 10.
    pub connects_per_minute: u32,
    /// Finish once no message has arrived for this long and every one
    /// received is accepted (drain a node, then exit). Default: never.
    #[serde(with = "crate::knob::duration")]
    pub idle_exit: Option<Duration>,
    /// A PEM file of certificate authorities to trust for TLS, instead of
    /// the system's (a private endpoint, a test peer).
    pub ca_file: Option<PathBuf>,
    /// Connect to the Alibaba Cloud IoT Platform's server-side
    /// subscription (`[sources.aliyun]`): the endpoint, TLS and the signed
    /// login are built from it, and `url` must not be set.
    pub aliyun: Option<AliyunConfig>,
}

impl Default for Amqp1SourceConfig {
    fn default() -> Self {
        Amqp1SourceConfig {
            lane: LanePolicy::Auto,
            name: None,
            url: None,
            url_env: None,
            allow_plaintext: false,
            address: "default".into(),
            credit: 500,
            batch: 256,
            connections: 1,
            idle_timeout: Duration::from_secs(60),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            connects_per_minute: 10,
            idle_exit: None,
            ca_file: None,
            aliyun: None,
        }
    }
}

// By hand, so that an explicit URL's password never shows.
impl std::fmt::Debug for Amqp1SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp1SourceConfig")
            .field("lane", &self.lane)
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(crate::broker_url::redact))
            .field("url_env", &self.url_env)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("address", &self.address)
            .field("credit", &self.credit)
            .field("batch", &self.batch)
            .field("connections", &self.connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("connects_per_minute", &self.connects_per_minute)
            .field("idle_exit", &self.idle_exit)
            .field("ca_file", &self.ca_file)
            .field("aliyun", &self.aliyun)
            .finish_non_exhaustive()
    }
}

/// The environment variable read for the URL when neither `url` nor
/// `url_env` is set.
pub const DEFAULT_URL_ENV: &str = "AMQP1_URL";
/// The URL used when nothing names one: a local RabbitMQ with its AMQP 1.0
/// plugin.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672";

impl Amqp1SourceConfig {
    /// Checks the knobs; with no preset, resolves the URL (from the
    /// environment when so configured). Secrets a preset reads from the
    /// environment are read when connecting, so that a rotated secret is
    /// picked up on the next reconnect.
    pub fn validate(&self) -> Result<Option<BrokerUrl>, KnobError> {
        if self.address.is_empty() {
            return Err(KnobError::new("address", "the address is empty"));
        }
        for (knob, value) in [
            ("credit", self.credit as usize),
            ("batch", self.batch),
            ("connections", self.connections),
            ("connects_per_minute", self.connects_per_minute as usize),
        ] {
            if value == 0 {
                return Err(KnobError::new(knob, "must be at least 1"));
            }
        }
        match &self.aliyun {
            Some(aliyun) => {
                if self.url.is_some() || self.url_env.is_some() {
                    return Err(KnobError::new(
                        "url",
                        "`url` and `url_env` do not go with [sources.aliyun], which builds the endpoint and the login itself",
                    ));
                }
                let secs = self.idle_timeout.as_secs();
                if !(30..=300).contains(&secs) {
                    return Err(KnobError::new(
                        "idle_timeout",
                        format!(
                            "the platform accepts 30s to 300s (it is {:?})",
                            self.idle_timeout
                        ),
                    ));
                }
                aliyun.validate()?;
                Ok(None)
            }
            None => {
                let url = BrokerUrl::resolve_or(
                    self.url.as_deref(),
                    self.url_env.as_deref(),
                    DEFAULT_URL_ENV,
                    DEFAULT_URL,
                )?;
                url.check_plaintext(self.allow_plaintext)?;
                Ok(Some(url))
            }
        }
    }
}
