//! The knobs of the Kafka source and sink, with their defaults, as
//! `[[sources]] type = "kafka"` and `sink = { type = "kafka", ... }` take them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::knob::KnobError;
use crate::secret::Secret;
use crate::source::LanePolicy;

/// How a record's value carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// The value is a JSONL-style envelope (`topic`, `messageId`,
    /// `generateTime`, `payload`), as `laneway`'s JSONL sink writes it.
    Envelope,
    /// The value is the raw payload; `topic`, `messageId` and
    /// `generateTime` are Kafka headers (the record timestamp stands in for
    /// a missing generate time), as the platform and `laneway`'s Kafka sink
    /// write it.
    #[default]
    Raw,
}

/// A Kafka source: topics consumed in a consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Which lane its messages take (`auto`, `live`, `backlog`). Default `auto`.
    pub lane: LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// The bootstrap servers (`host:port,...`); when empty, the
    /// `KAFKA_BROKERS` environment variable.
    pub brokers: String,
    /// The topics to consume (at least one).
    pub topics: Vec<String>,
    /// The consumer group: processes with the same `group_id` share the
    /// partitions, so capacity grows by adding machines. Default `laneway`.
    pub group_id: String,
    /// How record values carry messages. Default `raw`.
    pub format: ValueFormat,
    /// The most records handed to the engine in one batch. Default 256,
    /// at most 65,536.
    pub batch: usize,
    /// Where a group with no committed offset starts: `earliest` or
    /// `latest`. Default `earliest` (nothing already in the topic is skipped).
    pub start: String,
    /// The most kilobytes librdkafka pre-fetches per partition
    /// (`queued.max.messages.kbytes`): bounds memory however long the lag.
    /// Default 16384 (16 MiB).
    pub prefetch_kbytes: u32,
    /// How often done offsets are committed while they move. Default 1s.
    #[serde(with = "crate::knob::duration")]
    pub commit_every: Duration,
    /// Finish once no record has arrived for this long and the consumer is
    /// caught up: it holds partitions and has read each to its end,
    /// catch-up ranges included (read a topic to its end, then exit).
    /// Right after a member of the group died, that waits for its session
    /// to time out (`session.timeout.ms`, 45 s by default). Default: never.
    #[serde(with = "crate::knob::duration")]
    pub idle_exit: Option<Duration>,
    /// Live-first catch-up: a partition assigned with at least
    /// `catch_up_after` records before its live start is read with two
    /// cursors, live from the live start and catch-up from the committed
    /// offset, so fresh records flow at once while the pile drains on the
    /// backlog's schedule (see docs/kafka.md). Default true.
    pub catch_up: bool,
    /// How many records older than `catch_up_live_from` a partition must
    /// hold past its committed offset before it is split. Default 1000.
    pub catch_up_after: u64,
    /// Where the live cursor of a split partition starts: at the first
    /// record younger than this (offsets-for-times), or at the log end when
    /// there is none (or with `0s`). Default 10s, the groups' default
    /// `live_window`.
    #[serde(with = "crate::knob::duration")]
    pub catch_up_live_from: Duration,
    /// Extra librdkafka properties (for example `security.protocol`), set
    /// after laneway's own; never logged, since they may hold secrets.
    /// `enable.auto.commit` and `enable.auto.offset.store` other than
    /// `false` are refused: laneway commits only offsets whose records
    /// are all done.
    pub properties: BTreeMap<String, Secret>,
    /// Allow `sasl.mechanism = PLAIN` over `security.protocol =
    /// SASL_PLAINTEXT`, which sends the password in clear (a WARN at
    /// start). Default false: such a config is refused.
    pub allow_plaintext: bool,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        KafkaSourceConfig {
            lane: LanePolicy::Auto,
            name: None,
            brokers: String::new(),
            topics: Vec::new(),
            group_id: "laneway".into(),
            format: ValueFormat::Raw,
            batch: 256,
            start: "earliest".into(),
            prefetch_kbytes: 16 * 1024,
            commit_every: Duration::from_secs(1),
            idle_exit: None,
            catch_up: true,
            catch_up_after: 1_000,
            catch_up_live_from: Duration::from_secs(10),
            properties: BTreeMap::new(),
            allow_plaintext: false,
        }
    }
}

/// Which key the Kafka sink gives a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyChoice {
    /// The key the message came with (a Kafka record's), byte for byte;
    /// `productKey/deviceName` for a message that came without one.
    #[default]
    Original,
    /// Always `productKey/deviceName` (the topic when it names no device),
    /// so one device's messages share a partition whatever their origin.
    Device,
}

/// A Kafka sink: every delivered message produced to one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The bootstrap servers (`host:port,...`); when empty, the
    /// `KAFKA_BROKERS` environment variable.
    pub brokers: String,
    /// The topic to produce to.
    pub topic: String,
    /// How long a record may wait for its acknowledgement
    /// (`message.timeout.ms`); past it, the delivery is retried from the
    /// backlog. Default 30s.
    #[serde(with = "crate::knob::duration")]
    pub delivery_timeout: Duration,
    /// The record key: `original` (the message's own key when it has one,
    /// else `productKey/deviceName`) or `device` (always
    /// `productKey/deviceName`). Default `original`.
    pub key: KeyChoice,
    /// Extra librdkafka properties, set after laneway's own; never logged.
    /// `acks` other than `all` and `enable.idempotence` other than `true`
    /// are refused: they would count a record delivered that a broker
    /// failure can lose.
    pub properties: BTreeMap<String, Secret>,
    /// Allow a PLAIN login over SASL_PLAINTEXT (see the source's knob).
    pub allow_plaintext: bool,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: String::new(),
            topic: String::new(),
            delivery_timeout: Duration::from_secs(30),
            key: KeyChoice::Original,
            properties: BTreeMap::new(),
            allow_plaintext: false,
        }
    }
}

/// librdkafka refused its configuration (a property it does not know, a
/// value it cannot take): placed at `properties`. A refused property's
/// value is never quoted, since `properties` may hold a password (the
/// client's own message carries it, and may quote it in its text too).
pub(super) fn client_refused(e: rdkafka::error::KafkaError) -> KnobError {
    let said = match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, value) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "***")
            };
            format!("{description} (property {key})")
        }
        other => other.to_string(),
    };
    KnobError::said(
        "properties",
        format!("the Kafka client refused its configuration: {said}"),
    )
}

/// The most records one batch of the source may hold (`batch`): its
/// buffer is allocated up front.
pub const MAX_BATCH: usize = 1 << 16;

/// The environment variable read when `brokers` is left empty.
pub const BROKERS_ENV: &str = "KAFKA_BROKERS";

/// `brokers`, or the `KAFKA_BROKERS` environment variable when it is empty.
pub(super) fn resolve_brokers(brokers: &str) -> Result<String, KnobError> {
    if !brokers.trim().is_empty() {
        return Ok(brokers.trim().to_string());
    }
    match std::env::var(BROKERS_ENV) {
        Ok(b) if !b.trim().is_empty() => Ok(b.trim().to_string()),
        _ => Err(KnobError::new(
            "brokers",
            format!("no brokers: set `brokers` or ${BROKERS_ENV}"),
        )),
    }
}

/// Refuses properties that would send a static password in clear (SASL
/// PLAIN without TLS) unless `allowed`.
fn check_plaintext(properties: &BTreeMap<String, Secret>, allowed: bool) -> Result<(), KnobError> {
    if allowed || !sends_password_in_clear(properties) {
        return Ok(());
    }
    Err(KnobError::new(
        "properties",
        "sasl.mechanism PLAIN over security.protocol SASL_PLAINTEXT sends the password in clear: use SASL_SSL (or SCRAM), or set allow_plaintext = true",
    ))
}

/// Sets the user's `properties` on a client, after laneway's own; says at
/// WARN when they send a password in clear (allowed by `allow_plaintext`,
/// or `validate` would have refused them). `what` names the client.
pub(super) fn apply_properties(
    client: &mut rdkafka::config::ClientConfig,
    properties: &BTreeMap<String, Secret>,
    what: &str,
) {
    if sends_password_in_clear(properties) {
        tracing::warn!(
            "{what}: allow_plaintext is set: the SASL PLAIN password crosses the network in clear"
        );
    }
    for (key, value) in properties {
        client.set(key, value.expose());
    }
}

/// Refuses a property that would undo what laneway sets to keep its
/// delivery promise: `held` pairs each such key with the value laneway
/// sets and why. A property giving that same value is let through.
fn check_held(
    properties: &BTreeMap<String, Secret>,
    held: &[(&str, &[&str], &str)],
) -> Result<(), KnobError> {
    for (key, value) in properties {
        let Some((name, allowed, why)) = held.iter().find(|(k, _, _)| k.eq_ignore_ascii_case(key))
        else {
            continue;
        };
        let value = value.expose().trim();
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
            return Err(KnobError::new(
                "properties",
                format!("{name:?} is set by laneway to {:?}: {why}", allowed[0]),
            ));
        }
    }
    Ok(())
}

/// Whether these properties log in with SASL PLAIN over a plain TCP
/// connection.
fn sends_password_in_clear(properties: &BTreeMap<String, Secret>) -> bool {
    let value = |key: &str| {
        properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.expose().trim().to_ascii_uppercase())
    };
    let plain_protocol = value("security.protocol").as_deref() == Some("SASL_PLAINTEXT");
    let mechanism = value("sasl.mechanism").or_else(|| value("sasl.mechanisms"));
    plain_protocol && mechanism.as_deref() == Some("PLAIN")
}

impl KafkaSourceConfig {
    /// Checks the knobs (the brokers are resolved when the source is made,
    /// so a config naming none checks fine wherever `KAFKA_BROKERS` is unset).
    pub fn validate(&self) -> Result<(), KnobError> {
        if self.topics.is_empty() || self.topics.iter().any(|t| t.is_empty()) {
            return Err(KnobError::new(
                "topics",
                "a kafka source needs at least one topic, and no empty name",
            ));
        }
        if self.group_id.is_empty() {
            return Err(KnobError::new("group_id", "must not be empty"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(KnobError::new("batch", "must be between 1 and 65536"));
        }
        if self.start != "earliest" && self.start != "latest" {
            return Err(KnobError::new(
                "start",
                format!("{:?}: use earliest or latest", self.start),
            ));
        }
        if self.prefetch_kbytes == 0 {
            return Err(KnobError::new("prefetch_kbytes", "must be at least 1"));
        }
        if self.catch_up && self.catch_up_after == 0 {
            return Err(KnobError::new(
                "catch_up_after",
                "must be at least 1 (turn catch-up off with catch_up = false)",
            ));
        }
        if self.commit_every.is_zero() {
            return Err(KnobError::new("commit_every", "must be longer than zero"));
        }
        let offsets = "laneway commits an offset only once every record before it is done; librdkafka's own would pass undone ones";
        check_held(
            &self.properties,
            &[
                ("enable.auto.commit", &["false"], offsets),
                ("enable.auto.offset.store", &["false"], offsets),
            ],
        )?;
        check_plaintext(&self.properties, self.allow_plaintext)
    }
}

impl KafkaSinkConfig {
    /// Checks the knobs (the brokers are resolved when the sink is made).
    pub fn validate(&self) -> Result<(), KnobError> {
        if self.topic.is_empty() {
            return Err(KnobError::new("topic", "a kafka sink needs a topic"));
        }
        if self.delivery_timeout < Duration::from_millis(1) {
            return Err(KnobError::new(
                "delivery_timeout",
                "must be at least 1ms (librdkafka counts it in milliseconds, and 0 means no timeout)",
            ));
        }
        check_held(
            &self.properties,
            &[
                (
                    "acks",
                    &["all", "-1"],
                    "a record counts as delivered only once every in-sync replica has it",
                ),
                (
                    "enable.idempotence",
                    &["true"],
                    "a retried send is written once and in order",
                ),
            ],
        )?;
        check_plaintext(&self.properties, self.allow_plaintext)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The source allocates its batch up front: a batch beyond the ceiling
    /// is a config error, not a capacity overflow when the source starts.
    #[test]
    fn a_batch_beyond_the_ceiling_is_refused() {
        for batch in [0, MAX_BATCH + 1, 1 << 60] {
            let config = KafkaSourceConfig {
                topics: vec!["t".into()],
                batch,
                ..KafkaSourceConfig::default()
            };
            let e = config.validate().unwrap_err();
            assert_eq!(e.knob(), "batch", "{e}");
        }
    }
    /// What laneway sets to keep its delivery promise cannot be undone by
    /// `properties`, and a delivery timeout librdkafka would read as "no
    /// timeout" (under a millisecond is 0 ms) is refused.
    #[test]
    fn properties_that_would_break_the_delivery_promise_are_refused() {
        for (key, value) in [
            ("acks", "0"),
            ("ACKS", "1"),
            ("enable.idempotence", "false"),
        ] {
            let text = format!("topic = \"t\"\n[properties]\n\"{key}\" = \"{value}\"\n");
            let sink: KafkaSinkConfig = toml::from_str(&text).unwrap();
            let e = sink.validate().unwrap_err();
            assert_eq!(e.knob(), "properties", "{key}: {e}");
        }
        for (key, value) in [
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "true"),
        ] {
            let text = format!("topics = [\"t\"]\n[properties]\n\"{key}\" = \"{value}\"\n");
            let source: KafkaSourceConfig = toml::from_str(&text).unwrap();
            let e = source.validate().unwrap_err();
            assert_eq!(e.knob(), "properties", "{key}: {e}");
        }
        let sink = KafkaSinkConfig {
            topic: "t".into(),
            delivery_timeout: Duration::from_micros(500),
            ..KafkaSinkConfig::default()
        };
        assert_eq!(sink.validate().unwrap_err().knob(), "delivery_timeout");
    }

    #[test]
    fn a_printed_config_never_shows_a_property_value() {
        let text = "topics = [\"t\"]\n[properties]\n\"sasl.password\" = \"Zq9-MARK\"\n";
        let source: KafkaSourceConfig = toml::from_str(text).unwrap();
        let sink: KafkaSinkConfig =
            toml::from_str("topic = \"t\"\n[properties]\n\"sasl.password\" = \"Zq9-MARK\"\n")
                .unwrap();
        for printed in [
            format!("{source:?}"),
            format!("{sink:?}"),
            format!("{source:#?}"),
        ] {
            assert!(printed.contains("sasl.password"), "{printed}");
            assert!(!printed.contains("Zq9-MARK"), "{printed}");
        }
        assert_eq!(source.properties["sasl.password"].expose(), "Zq9-MARK");
    }

    #[test]
    fn a_plain_login_in_clear_is_refused_unless_allowed() {
        let text = "topics = [\"t\"]\n[properties]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \"PLAIN\"\n\"sasl.password\" = \"Zq9-MARK\"\n";
        let mut source: KafkaSourceConfig = toml::from_str(text).unwrap();
        let e = source.validate().unwrap_err().to_string();
        assert!(e.contains("in clear") && !e.contains("Zq9-MARK"), "{e}");
        source.allow_plaintext = true;
        source.validate().unwrap();
        let tls = text.replace("sasl_plaintext", "SASL_SSL");
        let source: KafkaSourceConfig = toml::from_str(&tls).unwrap();
        source.validate().unwrap();
        let mut sink: KafkaSinkConfig =
            toml::from_str(&text.replace("topics = [\"t\"]", "topic = \"t\"")).unwrap();
        assert!(sink.validate().is_err());
        sink.allow_plaintext = true;
        sink.validate().unwrap();
    }
}
