//! A group's `backlog = { store = "amqp", ... }` table: where the shared
//! backlog queue lives and how the store reads it.
//!
//! Invariant: a checked config ([`AmqpBacklogConfig::validate`]) names a
//! broker URL that parses and queue names the broker accepts (at most 255
//! bytes, with the `.wait` and `.poison` suffixes).

use std::time::Duration;

use lapin::types::ShortString;
use serde::{Deserialize, Serialize};

use crate::amqp::core::config::{debug_broker, resolve_url};
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;

/// Where a group's broker backlog lives, and how this instance reads it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpBacklogConfig {
    /// The broker URL (`amqp://user:pass@host:5672/vhost`); shown redacted.
    pub url: Option<String>,
    /// An environment variable holding the URL instead (`AMQP_URL` when
    /// neither is set), so the password stays out of the file.
    pub url_env: Option<String>,
    /// Allow a plain `amqp://` URL that holds a password to a host that is
    /// not this machine: the password then crosses the network in clear (a
    /// WARN at start). Default false: such a URL is refused; use `amqps://`.
    pub allow_plaintext: bool,
    /// The backlog queue; `laneway.<group>.backlog` when not set. Its wait
    /// queue is `<queue>.wait` and its poison queue `<queue>.poison`.
    pub queue: Option<String>,
    /// Messages the broker pushes ahead to this instance beyond those it
    /// has handed out (the consumer's prefetch is this plus room for what
    /// the engine holds): the store's read-ahead, and part of what an
    /// instance that dies leaves to be redelivered.
    pub read_ahead: u16,
    /// The most records ready in the backlog queue (`x-max-length` with
    /// `x-overflow = reject-publish`): a full queue refuses appends, which
    /// is backpressure on the source, never a drop (the disk store's
    /// `when_full = "drop_oldest"` has no counterpart here). A quorum queue
    /// applies the limit after the fact: publishes already on their way
    /// when it crosses it get in. Each instance also keeps to it by its own
    /// count. `None`: unbounded.
    pub max_records: Option<u64>,
    /// Deliveries of one message before the broker moves it to the poison
    /// queue (`x-delivery-limit`): a message that kills every instance that
    /// takes it cannot wedge the queue.
    pub delivery_limit: u32,
    /// A record taken before its retry time by more than this is sent back
    /// to the wait queue rather than held by this instance.
    #[serde(with = "crate::knob::duration")]
    pub park_after: Duration,
    /// How often the cached depth is refreshed from the broker (other
    /// instances append and take too). Zero: never (a single instance's own
    /// counts stay exact).
    #[serde(with = "crate::knob::duration")]
    pub refresh_interval: Duration,
    /// A publish not confirmed within this long has failed.
    #[serde(with = "crate::knob::duration")]
    pub confirm_timeout: Duration,
    /// The first wait before reconnecting after a failure.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_initial: Duration,
    /// The longest wait between reconnect attempts.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_max: Duration,
}

impl Default for AmqpBacklogConfig {
    fn default() -> Self {
        AmqpBacklogConfig {
            url: None,
            url_env: None,
            allow_plaintext: false,
            queue: None,
            read_ahead: 256,
            max_records: None,
            delivery_limit: 20,
            park_after: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(1),
            confirm_timeout: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

// By hand, so the URL (which may hold a password) is shown redacted.
impl std::fmt::Debug for AmqpBacklogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("AmqpBacklogConfig");
        debug_broker(&mut debug, &self.url, &self.url_env, self.allow_plaintext)
            .field("queue", &self.queue)
            .field("read_ahead", &self.read_ahead)
            .field("max_records", &self.max_records)
            .field("delivery_limit", &self.delivery_limit)
            .field("park_after", &self.park_after)
            .field("refresh_interval", &self.refresh_interval)
            .finish_non_exhaustive()
    }
}

/// The three queues of one broker backlog.
#[derive(Debug, Clone)]
pub(crate) struct QueueNames {
    /// Where records wait for delivery.
    pub backlog: ShortString,
    /// Where retries wait out their backoff (per-message TTL), dead-lettered
    /// back into `backlog` when it ends.
    pub wait: ShortString,
    /// Where the broker puts messages past the delivery limit, and messages
    /// in the backlog queue that are not laneway records.
    pub poison: ShortString,
}

impl AmqpBacklogConfig {
    /// The default queue name for a group.
    pub fn default_queue(group: &str) -> String {
        format!("laneway.{group}.backlog")
    }

    /// Checks the config for `group` (the URL, the queue names, the knobs)
    /// without connecting.
    pub fn check(&self, group: &str) -> Result<(), KnobError> {
        self.validate(group).map(|_| ())
    }

    /// The broker URL and the queue names, or what is wrong.
    pub(crate) fn validate(&self, group: &str) -> Result<(BrokerUrl, QueueNames), KnobError> {
        let url = resolve_url(
            self.url.as_deref(),
            self.url_env.as_deref(),
            self.allow_plaintext,
        )?;
        let queue = self
            .queue
            .clone()
            .unwrap_or_else(|| Self::default_queue(group));
        if queue.is_empty() {
            return Err(KnobError::new("queue", "the backlog queue name is empty"));
        }
        let name = |n: String| {
            ShortString::try_new(n).map_err(|_| {
                KnobError::new(
                    "queue",
                    format!("{queue:?} (with its .wait / .poison suffix) is longer than 255 bytes"),
                )
            })
        };
        if self.read_ahead == 0 {
            return Err(KnobError::new("read_ahead", "must be at least 1"));
        }
        Ok((
            url,
            QueueNames {
                backlog: name(queue.clone())?,
                wait: name(format!("{queue}.wait"))?,
                poison: name(format!("{queue}.poison"))?,
            },
        ))
    }
}
