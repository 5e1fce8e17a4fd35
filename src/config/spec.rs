//! The pieces of a config file that name objects to build: sources, sinks
//! and backlog stores. Pure data; [`super::build`] turns them into objects.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(feature = "amqp")]
use crate::amqp::{AmqpBacklogConfig, AmqpSinkConfig, AmqpSourceConfig, AmqpStreamConfig};
#[cfg(feature = "amqp1")]
use crate::amqp1::Amqp1SourceConfig;
use crate::backlog::DiskBacklogConfig;
#[cfg(feature = "http")]
use crate::http::HttpSinkConfig;
#[cfg(feature = "kafka")]
use crate::kafka::{KafkaSinkConfig, KafkaSourceConfig};
#[cfg(feature = "pulsar")]
use crate::pulsar::PulsarSourceConfig;
use crate::source::LanePolicy;
use crate::source::SimulatorConfig;

/// What an entry naming an adapter this laneway was built without holds:
/// its table, read and dropped. The file still parses, so that
/// [`FileConfig::parse`](super::FileConfig::parse) can refuse the entry at
/// its `type` (or `store`) key, naming the cargo feature, instead of
/// serde's bare "unknown variant".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Disabled;

impl<'de> Deserialize<'de> for Disabled {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Disabled)
    }
}

impl Serialize for Disabled {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit_struct("Disabled")
    }
}

/// The adapter features this laneway was built with.
const BUILT: &[&str] = &[
    #[cfg(feature = "amqp")]
    "amqp",
    #[cfg(feature = "amqp1")]
    "amqp1",
    #[cfg(feature = "kafka")]
    "kafka",
    #[cfg(feature = "pulsar")]
    "pulsar",
    #[cfg(feature = "http")]
    "http",
    #[cfg(feature = "admin")]
    "admin",
];

/// An adapter a config entry needs: what the file says and the cargo
/// feature that builds it. Shown (when missing) as ``type = "pulsar": this
/// laneway was built without the `pulsar` feature (cargo build --release
/// --features pulsar; it needs protoc)``.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingFeature {
    /// What the file (or the command line) says, such as `type = "kafka"`,
    /// `store = "amqp"` or `--admin`.
    pub what: &'static str,
    /// The cargo feature, such as `kafka`.
    pub feature: &'static str,
}

impl MissingFeature {
    pub(super) const AMQP_SOURCE: MissingFeature = MissingFeature::new("type = \"amqp\"", "amqp");
    pub(super) const AMQP_STREAM_SOURCE: MissingFeature =
        MissingFeature::new("type = \"amqp-stream\"", "amqp");
    pub(super) const AMQP1_SOURCE: MissingFeature =
        MissingFeature::new("type = \"amqp1\"", "amqp1");
    pub(super) const KAFKA_SOURCE: MissingFeature =
        MissingFeature::new("type = \"kafka\"", "kafka");
    pub(super) const PULSAR_SOURCE: MissingFeature =
        MissingFeature::new("type = \"pulsar\"", "pulsar");
    pub(super) const HTTP_SINK: MissingFeature = MissingFeature::new("type = \"http\"", "http");
    pub(super) const AMQP_BACKLOG: MissingFeature = MissingFeature::new("store = \"amqp\"", "amqp");
    pub(super) const ADMIN_LISTEN: MissingFeature = MissingFeature::new("[admin] listen", "admin");

    const fn new(what: &'static str, feature: &'static str) -> MissingFeature {
        MissingFeature { what, feature }
    }

    /// Whether this laneway was built with the feature.
    pub fn is_built(&self) -> bool {
        BUILT.contains(&self.feature)
    }

    /// `Some(self)` when this build lacks the feature.
    pub(super) fn if_missing(self) -> Option<MissingFeature> {
        (!self.is_built()).then_some(self)
    }
}

impl std::fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let feature = self.feature;
        write!(
            f,
            "{}: this laneway was built without the `{feature}` feature (cargo build --release --features {feature}",
            self.what
        )?;
        if feature == "pulsar" {
            // The Pulsar client's build script compiles its protocol files.
            f.write_str("; it needs protoc")?;
        }
        f.write_str(")")
    }
}

/// One `[[sources]]` entry; `type` says which kind.
///
/// An adapter this laneway was built without keeps its variant, holding
/// [`Disabled`]: see [`SourceSpec::missing_feature`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    /// The device simulator.
    Simulator(SimulatorConfig),
    /// JSONL envelopes from a file, or from stdin with `path = "-"`.
    Jsonl(JsonlSpec),
    /// AMQP queues on a broker (RabbitMQ), consumed with manual acks.
    #[cfg(feature = "amqp")]
    Amqp(AmqpSourceConfig),
    /// AMQP queues (this build lacks the `amqp` feature).
    #[cfg(not(feature = "amqp"))]
    Amqp(Disabled),
    /// Kafka topics, consumed in a consumer group with manual commits.
    #[cfg(feature = "kafka")]
    Kafka(KafkaSourceConfig),
    /// Kafka topics (this build lacks the `kafka` feature).
    #[cfg(not(feature = "kafka"))]
    Kafka(Disabled),
    /// A RabbitMQ stream queue, with laneway storing the offset and
    /// catching up a lagging one live-first (docs/streams.md).
    #[cfg(feature = "amqp")]
    #[serde(rename = "amqp-stream")]
    AmqpStream(AmqpStreamConfig),
    /// A RabbitMQ stream queue (this build lacks the `amqp` feature).
    #[cfg(not(feature = "amqp"))]
    #[serde(rename = "amqp-stream")]
    AmqpStream(Disabled),
    /// An AMQP 1.0 node (the Alibaba Cloud IoT Platform's server-side
    /// subscription with `[sources.aliyun]`, RabbitMQ's AMQP 1.0 plugin),
    /// accepted only when done (docs/amqp1.md).
    #[cfg(feature = "amqp1")]
    Amqp1(Box<Amqp1SourceConfig>),
    /// An AMQP 1.0 node (this build lacks the `amqp1` feature).
    #[cfg(not(feature = "amqp1"))]
    Amqp1(Disabled),
    /// A Pulsar topic on a failover subscription (Tuya's message service
    /// with `[sources.tuya]`), acknowledged only when done (docs/pulsar.md).
    #[cfg(feature = "pulsar")]
    Pulsar(Box<PulsarSourceConfig>),
    /// A Pulsar topic (this build lacks the `pulsar` feature).
    #[cfg(not(feature = "pulsar"))]
    Pulsar(Disabled),
}

impl SourceSpec {
    /// The cargo feature this entry needs and this build lacks, if any.
    pub fn missing_feature(&self) -> Option<MissingFeature> {
        match self {
            SourceSpec::Simulator(_) | SourceSpec::Jsonl(_) => None,
            SourceSpec::Amqp(_) => MissingFeature::AMQP_SOURCE.if_missing(),
            SourceSpec::Kafka(_) => MissingFeature::KAFKA_SOURCE.if_missing(),
            SourceSpec::AmqpStream(_) => MissingFeature::AMQP_STREAM_SOURCE.if_missing(),
            SourceSpec::Amqp1(_) => MissingFeature::AMQP1_SOURCE.if_missing(),
            SourceSpec::Pulsar(_) => MissingFeature::PULSAR_SOURCE.if_missing(),
        }
    }

    /// The name its `name` knob gives it, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            SourceSpec::Simulator(s) => s.name.as_deref(),
            SourceSpec::Jsonl(s) => s.name.as_deref(),
            #[cfg(feature = "amqp")]
            SourceSpec::Amqp(s) => s.name.as_deref(),
            #[cfg(feature = "kafka")]
            SourceSpec::Kafka(s) => s.name.as_deref(),
            #[cfg(feature = "amqp")]
            SourceSpec::AmqpStream(s) => s.name.as_deref(),
            #[cfg(feature = "amqp1")]
            SourceSpec::Amqp1(s) => s.name.as_deref(),
            #[cfg(feature = "pulsar")]
            SourceSpec::Pulsar(s) => s.name.as_deref(),
            // An adapter this build lacks is refused before its name counts.
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// A JSONL source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSpec {
    /// Which lane its messages take.
    #[serde(default)]
    pub lane: LanePolicy,
    /// The source's name in `/status`, the dashboard, metric labels and
    /// the run summary. Default: what it reads (a path, a queue, a topic),
    /// numbered when two sources share it. Two sources may not be given
    /// one name.
    pub name: Option<String>,
    /// The file to read; `-` reads standard input.
    pub path: PathBuf,
}

/// A group's `sink` table; `type` says which kind (an adapter this build
/// lacks holds [`Disabled`]: see [`SinkSpec::missing_feature`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSpec {
    /// A stand-in for business logic that spends `cost` per message.
    Simulated {
        /// Time spent per message.
        #[serde(with = "humantime_serde", default = "default_cost")]
        cost: Duration,
    },
    /// Accept and discard (benchmarks).
    Null,
    /// JSONL envelopes on standard output.
    Stdout,
    /// JSONL envelopes appended to a file.
    Jsonl {
        /// The file to append to.
        path: PathBuf,
        /// fsync every batch before it counts as delivered.
        #[serde(default = "yes")]
        sync: bool,
        /// The permission bits the file is created with (before the
        /// umask), for example `0o640`. Default `0o600`: the lines hold
        /// device data, as dead letters do.
        #[serde(default = "private_mode")]
        mode: u32,
    },
    /// Publish to an AMQP exchange with publisher confirms.
    #[cfg(feature = "amqp")]
    Amqp(AmqpSinkConfig),
    /// An AMQP exchange (this build lacks the `amqp` feature).
    #[cfg(not(feature = "amqp"))]
    Amqp(Disabled),
    /// Produce to a Kafka topic with an idempotent producer.
    #[cfg(feature = "kafka")]
    Kafka(KafkaSinkConfig),
    /// A Kafka topic (this build lacks the `kafka` feature).
    #[cfg(not(feature = "kafka"))]
    Kafka(Disabled),
    /// POST each batch to a service (JSON array or NDJSON of envelopes).
    #[cfg(feature = "http")]
    Http(Box<HttpSinkConfig>),
    /// An HTTP service (this build lacks the `http` feature).
    #[cfg(not(feature = "http"))]
    Http(Disabled),
}

impl SinkSpec {
    /// The cargo feature this sink needs and this build lacks, if any.
    pub fn missing_feature(&self) -> Option<MissingFeature> {
        match self {
            SinkSpec::Amqp(_) => MissingFeature::AMQP_SOURCE.if_missing(),
            SinkSpec::Kafka(_) => MissingFeature::KAFKA_SOURCE.if_missing(),
            SinkSpec::Http(_) => MissingFeature::HTTP_SINK.if_missing(),
            SinkSpec::Simulated { .. }
            | SinkSpec::Null
            | SinkSpec::Stdout
            | SinkSpec::Jsonl { .. } => None,
        }
    }
}

fn private_mode() -> u32 {
    crate::sink::JsonlSink::DEFAULT_MODE
}

fn default_cost() -> Duration {
    Duration::from_micros(50)
}

fn yes() -> bool {
    true
}

impl Default for SinkSpec {
    fn default() -> Self {
        SinkSpec::Simulated {
            cost: default_cost(),
        }
    }
}

/// A group's `backlog` table; `store` says which kind (`disk` by default;
/// `amqp` in a build without that feature holds [`Disabled`]: see
/// [`BacklogSpec::missing_feature`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "store", rename_all = "lowercase", deny_unknown_fields)]
pub enum BacklogSpec {
    /// On disk, durable: survives crashes; the default, because the
    /// backlog is where undeliverable messages wait and none may be lost.
    Disk(DiskBacklogConfig),
    /// On a RabbitMQ quorum queue shared by every instance of the group
    /// (`store = "amqp"`): what one instance accumulated survives it and is
    /// delivered by the others.
    #[cfg(feature = "amqp")]
    Amqp(AmqpBacklogConfig),
    /// On a RabbitMQ quorum queue (this build lacks the `amqp` feature).
    #[cfg(not(feature = "amqp"))]
    Amqp(Disabled),
    /// In memory: fast, bounded, lost with the process (tests, benchmarks).
    Memory {
        /// The most records held.
        #[serde(default = "default_memory_records")]
        max_records: u64,
        /// The most bytes held.
        #[serde(default = "default_memory_bytes")]
        max_bytes: u64,
    },
}

fn default_memory_records() -> u64 {
    crate::backlog::MemoryLimits::default().max_records
}

fn default_memory_bytes() -> u64 {
    crate::backlog::MemoryLimits::default().max_bytes
}

impl BacklogSpec {
    /// The cargo feature this store needs and this build lacks, if any.
    pub fn missing_feature(&self) -> Option<MissingFeature> {
        match self {
            BacklogSpec::Amqp(_) => MissingFeature::AMQP_BACKLOG.if_missing(),
            BacklogSpec::Disk(_) | BacklogSpec::Memory { .. } => None,
        }
    }
}

impl Default for BacklogSpec {
    fn default() -> Self {
        BacklogSpec::Disk(DiskBacklogConfig::default())
    }
}
