//! An `[[sources]]` entry of `type = "amqp"`: which queues the queue
//! source consumes, and how.
//!
//! Invariant: a checked config ([`AmqpSourceConfig::validate`]) names a
//! broker URL that parses (and sends no password in clear unless allowed),
//! at least one queue, names the broker accepts (at most 255 bytes), and a
//! prefetch and batch of at least one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::amqp::core::config::{debug_broker, resolve_url, short};
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;
use crate::source::LanePolicy;

/// An `[[sources]]` entry of `type = "amqp"`: which queues to consume and how.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// Which lane its messages take: `auto` (fresh → live, stale → backlog),
    /// `live`, or `backlog` (a separate accumulation queue). Default `auto`.
    pub lane: LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// The broker URL (`amqp://` or `amqps://`, credentials included). When
    /// absent, the variable named by `url_env` is read. Never printed whole.
    pub url: Option<String>,
    /// The environment variable holding the URL when `url` is absent.
    /// Default: `AMQP_URL`, and when that is unset too,
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url_env: Option<String>,
    /// Allow a plain `amqp://` URL that holds a password to a host that is
    /// not this machine: the password then crosses the network in clear (a
    /// WARN at start). Default false: such a URL is refused; use `amqps://`.
    pub allow_plaintext: bool,
    /// The queues to consume (at least one).
    pub queues: Vec<String>,
    /// Declare the queues (durable) and the exchange if they do not exist.
    /// `false`: use existing ones, and fail if one is missing. Default `true`.
    pub declare: bool,
    /// An exchange to bind every queue to (declared as a durable topic
    /// exchange when `declare` is on). Default: none.
    pub exchange: Option<String>,
    /// The binding key used with `exchange`. Default `#` (everything).
    pub binding_key: String,
    /// Unacknowledged deliveries the broker may hand each consumer
    /// (`basic_qos`). Also the bound on duplicates after a reconnect.
    /// Default 1000.
    pub prefetch: u16,
    /// The most deliveries handed to the engine in one batch. Default 256.
    pub batch: usize,
    /// The first wait before reconnecting; it doubles. Default 500ms.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_initial: Duration,
    /// The longest wait between reconnect attempts. Default 30s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_max: Duration,
    /// Finish once no delivery has arrived for this long and everything
    /// consumed is acknowledged (drain a queue, then exit). Default: never.
    #[serde(with = "crate::knob::duration")]
    pub idle_exit: Option<Duration>,
}

impl Default for AmqpSourceConfig {
    fn default() -> Self {
        AmqpSourceConfig {
            lane: LanePolicy::Auto,
            name: None,
            url: None,
            url_env: None,
            allow_plaintext: false,
            queues: Vec::new(),
            declare: true,
            exchange: None,
            binding_key: "#".into(),
            prefetch: 1000,
            batch: 256,
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            idle_exit: None,
        }
    }
}

// By hand, so the URL (which may hold a password) is shown redacted.
impl std::fmt::Debug for AmqpSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("AmqpSourceConfig");
        debug.field("lane", &self.lane).field("name", &self.name);
        debug_broker(&mut debug, &self.url, &self.url_env, self.allow_plaintext)
            .field("queues", &self.queues)
            .field("declare", &self.declare)
            .field("exchange", &self.exchange)
            .field("binding_key", &self.binding_key)
            .field("prefetch", &self.prefetch)
            .field("batch", &self.batch)
            .field("reconnect_initial", &self.reconnect_initial)
            .field("reconnect_max", &self.reconnect_max)
            .field("idle_exit", &self.idle_exit)
            .finish()
    }
}

impl AmqpSourceConfig {
    /// Checks the knobs and resolves the URL.
    pub fn validate(&self) -> Result<BrokerUrl, KnobError> {
        let url = resolve_url(
            self.url.as_deref(),
            self.url_env.as_deref(),
            self.allow_plaintext,
        )?;
        if self.queues.is_empty() {
            return Err(KnobError::new(
                "queues",
                "an amqp source needs at least one queue",
            ));
        }
        for q in &self.queues {
            if q.is_empty() {
                return Err(KnobError::new("queues", "a queue name is empty"));
            }
            short("queues", q)?;
        }
        if let Some(x) = &self.exchange {
            short("exchange", x)?;
        }
        short("binding_key", &self.binding_key)?;
        if self.prefetch == 0 {
            return Err(KnobError::new("prefetch", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(KnobError::new("batch", "must be at least 1"));
        }
        Ok(url)
    }
}
