//! A group's `sink` table with `type = "amqp"`: the exchange the sink
//! publishes to, and how.
//!
//! Invariant: a checked config ([`AmqpSinkConfig::validate`]) names a
//! broker URL that parses (and sends no password in clear unless allowed),
//! an exchange the broker accepts, a routing-key template with known
//! placeholders only, an in-flight window of at least one and a confirm
//! timeout longer than zero.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::routing_key::RoutingKey;
use crate::amqp::core::config::{debug_broker, resolve_url, short};
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;

/// A group's `sink` table with `type = "amqp"`: where and how to publish.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSinkConfig {
    /// The broker URL (`amqp://` or `amqps://`). When absent, the variable
    /// named by `url_env` is read. Never printed whole.
    pub url: Option<String>,
    /// The environment variable holding the URL when `url` is absent.
    /// Default: `AMQP_URL`, then `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url_env: Option<String>,
    /// Allow a plain `amqp://` URL that holds a password to a host that is
    /// not this machine: the password then crosses the network in clear (a
    /// WARN at start). Default false: such a URL is refused; use `amqps://`.
    pub allow_plaintext: bool,
    /// The exchange to publish to (required).
    pub exchange: String,
    /// Declare the exchange (durable, `topic`) if it does not exist.
    /// `false`: it must exist. Default `true`.
    pub declare_exchange: bool,
    /// The routing key, from the placeholders `{kind}`, `{product}`,
    /// `{device}` (`_` when the topic has none; dots inside a value become
    /// `_`). Default `{kind}.{product}.{device}`.
    pub routing_key: String,
    /// Publish persistent messages (delivery mode 2). Default `true`.
    pub persistent: bool,
    /// Publish `mandatory`: a message no queue is bound for comes back and
    /// becomes a dead letter ("unroutable"). Default `true`.
    pub mandatory: bool,
    /// Published but unconfirmed messages allowed at once, over every
    /// delivery slot of the group; past it a message is "push limited" and
    /// waits in the backlog. Default 10000.
    pub max_in_flight: usize,
    /// A publish not confirmed within this long has failed ("push failed").
    /// Default 10s.
    #[serde(with = "crate::knob::duration")]
    pub confirm_timeout: Duration,
    /// The first wait before reconnecting after a failure; it doubles.
    /// Default 500ms.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_initial: Duration,
    /// The longest wait between reconnect attempts. Default 30s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_max: Duration,
}

impl Default for AmqpSinkConfig {
    fn default() -> Self {
        AmqpSinkConfig {
            url: None,
            url_env: None,
            allow_plaintext: false,
            exchange: String::new(),
            declare_exchange: true,
            routing_key: "{kind}.{product}.{device}".into(),
            persistent: true,
            mandatory: true,
            max_in_flight: 10_000,
            confirm_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

// By hand, so the URL (which may hold a password) is shown redacted.
impl std::fmt::Debug for AmqpSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("AmqpSinkConfig");
        debug_broker(&mut debug, &self.url, &self.url_env, self.allow_plaintext)
            .field("exchange", &self.exchange)
            .field("declare_exchange", &self.declare_exchange)
            .field("routing_key", &self.routing_key)
            .field("persistent", &self.persistent)
            .field("mandatory", &self.mandatory)
            .field("max_in_flight", &self.max_in_flight)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("reconnect_initial", &self.reconnect_initial)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl AmqpSinkConfig {
    /// Checks the knobs and resolves the URL.
    pub fn validate(&self) -> Result<(BrokerUrl, RoutingKey), KnobError> {
        let url = resolve_url(
            self.url.as_deref(),
            self.url_env.as_deref(),
            self.allow_plaintext,
        )?;
        if self.exchange.is_empty() {
            return Err(KnobError::new("exchange", "an amqp sink needs an exchange"));
        }
        short("exchange", &self.exchange)?;
        if self.max_in_flight == 0 {
            return Err(KnobError::new("max_in_flight", "must be at least 1"));
        }
        if self.confirm_timeout.is_zero() {
            return Err(KnobError::new(
                "confirm_timeout",
                "must be longer than zero",
            ));
        }
        Ok((url, RoutingKey::parse(&self.routing_key)?))
    }
}
