//! The `[[sources]]` entry of `type = "amqp-stream"`: which stream to read,
//! where to start without a stored offset, and when a lagging offset is
//! caught up with a second cursor.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::amqp::core::config::{debug_broker, resolve_url, short};
use crate::broker_url::BrokerUrl;
use crate::knob::KnobError;
use crate::source::LanePolicy;

/// Where a stream source starts when it has no stored offset (its first
/// run, or after its offset file was deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStart {
    /// The first record the stream still holds: everything retained is
    /// delivered (the catch-up cursor reads it, live records go first). The
    /// default, because laneway never drops a record it was not told to.
    #[default]
    First,
    /// The stream's last chunk (the last batch of records the broker
    /// wrote), then everything after it.
    Last,
    /// Only records written after the source attached.
    Next,
}

/// An `[[sources]]` entry of `type = "amqp-stream"`: one RabbitMQ stream
/// queue (`x-queue-type = stream`), read over AMQP 0-9-1 with laneway
/// storing how far it is done (see docs/streams.md).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpStreamConfig {
    /// Which lane the live cursor's records take: `auto` (fresh → live,
    /// stale → backlog), `live`, or `backlog`. Default `auto`. The catch-up
    /// cursor's records take the catch-up lane (see `catch_up`).
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
    /// The stream queue to read (required).
    pub stream: String,
    /// Declare the stream (durable, `x-queue-type = stream`) and the
    /// exchange if they do not exist. `false`: use existing ones, and fail
    /// if one is missing. Default `true`.
    pub declare: bool,
    /// An exchange to bind the stream to (declared as a durable topic
    /// exchange when `declare` is on). Default: none.
    pub exchange: Option<String>,
    /// The binding key used with `exchange`. Default `#` (everything).
    pub binding_key: String,
    /// Unacknowledged deliveries the broker may hand each cursor
    /// (`basic_qos`; on a stream, acks are credit and remove nothing).
    /// Default 1000.
    pub prefetch: u16,
    /// The most deliveries handed to the engine in one batch. Default 256.
    pub batch: usize,
    /// Where to start with no stored offset: `first`, `last` or `next`.
    /// Default `first`.
    pub start: StreamStart,
    /// Live-first catch-up: when the stored offset lags the stream's end by
    /// at least `catch_up_after` records, or the record there is at least
    /// `catch_up_after_age` old, the lagging range is read by a second
    /// cursor into the groups' catch-up lanes (served on the backlog's
    /// schedule, never copied to disk) while the live cursor reads from
    /// the end. `false`, or a smaller lag: that range takes lanes like live
    /// records (`lane`). Default true.
    pub catch_up: bool,
    /// The lag, in records, from which a range is caught up. Default 10000.
    pub catch_up_after: u64,
    /// The age of the first lagging record (by its generate time) from
    /// which a range is caught up, whatever its length. Default 10s, the
    /// groups' default `live_window`.
    #[serde(with = "crate::knob::duration")]
    pub catch_up_after_age: Duration,
    /// The file laneway stores the stream offset in. Default:
    /// `<data_dir>/sources/stream-<name>-<hash of broker and stream>.offset`.
    pub offset_file: Option<PathBuf>,
    /// How often the stored offset is written while it moves (it is always
    /// written at shutdown). A crash replays at most what was done since.
    /// Default 1s.
    #[serde(with = "crate::knob::duration")]
    pub store_every: Duration,
    /// The first wait before reconnecting; it doubles. Default 500ms.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_initial: Duration,
    /// The longest wait between reconnect attempts. Default 30s.
    #[serde(with = "crate::knob::duration")]
    pub reconnect_max: Duration,
}

impl Default for AmqpStreamConfig {
    fn default() -> Self {
        AmqpStreamConfig {
            lane: LanePolicy::Auto,
            name: None,
            url: None,
            url_env: None,
            allow_plaintext: false,
            stream: String::new(),
            declare: true,
            exchange: None,
            binding_key: "#".into(),
            prefetch: 1000,
            batch: 256,
            start: StreamStart::First,
            catch_up: true,
            catch_up_after: 10_000,
            catch_up_after_age: Duration::from_secs(10),
            offset_file: None,
            store_every: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

// By hand, so the URL (which may hold a password) is shown redacted.
impl std::fmt::Debug for AmqpStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("AmqpStreamConfig");
        debug.field("lane", &self.lane).field("name", &self.name);
        debug_broker(&mut debug, &self.url, &self.url_env, self.allow_plaintext)
            .field("stream", &self.stream)
            .field("declare", &self.declare)
            .field("exchange", &self.exchange)
            .field("binding_key", &self.binding_key)
            .field("prefetch", &self.prefetch)
            .field("batch", &self.batch)
            .field("start", &self.start)
            .field("catch_up", &self.catch_up)
            .field("catch_up_after", &self.catch_up_after)
            .field("catch_up_after_age", &self.catch_up_after_age)
            .field("offset_file", &self.offset_file)
            .field("store_every", &self.store_every)
            .field("reconnect_initial", &self.reconnect_initial)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl AmqpStreamConfig {
    /// Checks the knobs and resolves the URL.
    pub fn validate(&self) -> Result<BrokerUrl, KnobError> {
        let url = resolve_url(
            self.url.as_deref(),
            self.url_env.as_deref(),
            self.allow_plaintext,
        )?;
        if self.stream.is_empty() {
            return Err(KnobError::new(
                "stream",
                "an amqp-stream source needs a stream",
            ));
        }
        short("stream", &self.stream)?;
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
        if self.catch_up && self.catch_up_after == 0 {
            return Err(KnobError::new(
                "catch_up_after",
                "must be at least 1 (turn catch-up off with catch_up = false)",
            ));
        }
        if self.store_every.is_zero() {
            return Err(KnobError::new("store_every", "must be longer than 0s"));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_required_and_knobs_are_checked() {
        let base = AmqpStreamConfig {
            url: Some("amqp://u:secret@127.0.0.1/".into()),
            stream: "s".into(),
            ..AmqpStreamConfig::default()
        };
        assert!(base.validate().is_ok());
        for (config, knob) in [
            (
                AmqpStreamConfig {
                    stream: String::new(),
                    ..base.clone()
                },
                "stream",
            ),
            (
                AmqpStreamConfig {
                    prefetch: 0,
                    ..base.clone()
                },
                "prefetch",
            ),
            (
                AmqpStreamConfig {
                    catch_up_after: 0,
                    ..base.clone()
                },
                "catch_up_after",
            ),
            (
                AmqpStreamConfig {
                    store_every: Duration::ZERO,
                    ..base.clone()
                },
                "store_every",
            ),
        ] {
            assert_eq!(config.validate().unwrap_err().knob(), knob);
        }
        let shown = format!("{base:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
