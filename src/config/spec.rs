//! The pieces of a config file that name objects to build: sources, sinks
//! and backlog stores. Pure data; [`super::build`] turns them into objects.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(feature = "amqp")]
use crate::amqp::{AmqpBacklogConfig, AmqpSinkConfig};
use crate::backlog::DiskBacklogConfig;
#[cfg(feature = "http")]
use crate::http::HttpSinkConfig;
#[cfg(feature = "kafka")]
use crate::kafka::KafkaSinkConfig;
use crate::sink::SinkAdapter;
use crate::source::{JsonlSpec, SimulatorConfig, SourceAdapter};

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

/// Lists the source adapters: one line each, `Variant(ConfigType) = "type"`,
/// with the cargo feature that builds it where it needs one. It makes
/// [`SourceSpec`] (one variant per adapter; one holding [`Disabled`] in a
/// build without its feature) and the lookups the config reader goes
/// through ([`SourceSpec::adapter`], [`SourceSpec::type_name`],
/// [`SourceSpec::missing_feature`]), so adding a source is its folder
/// plus its line here.
macro_rules! source_adapters {
    (
        always { $( $(#[doc = $doc:literal])* $variant:ident($config:ty) = $kind:literal; )* }
        features { $( $(#[doc = $fdoc:literal])* $fvariant:ident($fconfig:ty) = $fkind:literal, $feature:literal; )* }
    ) => {
        /// One `[[sources]]` entry; `type` says which kind.
        ///
        /// An adapter this laneway was built without keeps its variant,
        /// holding [`Disabled`]: see [`SourceSpec::missing_feature`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum SourceSpec {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $kind)]
                $variant($config),
            )*
            $(
                $(#[doc = $fdoc])*
                #[cfg(feature = $feature)]
                #[serde(rename = $fkind)]
                $fvariant($fconfig),
                #[doc = concat!("`type = \"", $fkind, "\"` in a build without the `", $feature, "` feature.")]
                #[cfg(not(feature = $feature))]
                #[serde(rename = $fkind)]
                $fvariant(Disabled),
            )*
        }

        impl SourceSpec {
            /// Its `type` in the config file.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( SourceSpec::$variant(_) => $kind, )*
                    $( SourceSpec::$fvariant(_) => $fkind, )*
                }
            }

            /// The adapter behind the entry (its checks and how it is
            /// built), or the feature this build lacks for it.
            pub fn adapter(&self) -> Result<&dyn SourceAdapter, MissingFeature> {
                match self {
                    $( SourceSpec::$variant(config) => Ok(config), )*
                    $(
                        #[cfg(feature = $feature)]
                        SourceSpec::$fvariant(config) => Ok(config),
                        #[cfg(not(feature = $feature))]
                        SourceSpec::$fvariant(_) => Err(MissingFeature::new(
                            concat!("type = \"", $fkind, "\""),
                            $feature,
                        )),
                    )*
                }
            }

            /// The cargo feature this entry needs and this build lacks, if any.
            pub fn missing_feature(&self) -> Option<MissingFeature> {
                self.adapter().err()
            }
        }
    };
}

source_adapters! {
    always {
        /// The device simulator.
        Simulator(SimulatorConfig) = "simulator";
        /// JSONL envelopes from a file, or from stdin with `path = "-"`.
        Jsonl(JsonlSpec) = "jsonl";
    }
    features {
        /// AMQP queues on a broker (RabbitMQ), consumed with manual acks.
        Amqp(crate::amqp::AmqpSourceConfig) = "amqp", "amqp";
        /// Kafka topics, consumed in a consumer group with manual commits.
        Kafka(crate::kafka::KafkaSourceConfig) = "kafka", "kafka";
        /// A RabbitMQ stream queue, with laneway storing the offset and
        /// catching up a lagging one live-first (docs/streams.md).
        AmqpStream(crate::amqp::AmqpStreamConfig) = "amqp-stream", "amqp";
        /// An AMQP 1.0 node (the Alibaba Cloud IoT Platform's server-side
        /// subscription with `[sources.aliyun]`, RabbitMQ's AMQP 1.0 plugin),
        /// accepted only when done (docs/amqp1.md).
        Amqp1(Box<crate::amqp1::Amqp1SourceConfig>) = "amqp1", "amqp1";
        /// A Pulsar topic on a failover subscription (Tuya's message service
        /// with `[sources.tuya]`), acknowledged only when done (docs/pulsar.md).
        Pulsar(Box<crate::pulsar::PulsarSourceConfig>) = "pulsar", "pulsar";
    }
}

impl SourceSpec {
    /// The name its `name` knob gives it, if any.
    pub fn name(&self) -> Option<&str> {
        self.adapter().ok().and_then(|adapter| adapter.name())
    }
}

/// A group's `sink` table; `type` says which kind (an adapter this build
/// lacks holds [`Disabled`]: see [`SinkSpec::missing_feature`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSpec {
    /// A stand-in for business logic that spends `cost` per message.
    Simulated {
        /// Time spent per message.
        #[serde(with = "crate::knob::duration", default = "default_cost")]
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
    /// Its `type` in the config file.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkSpec::Simulated { .. } => "simulated",
            SinkSpec::Null => "null",
            SinkSpec::Stdout => "stdout",
            SinkSpec::Jsonl { .. } => "jsonl",
            SinkSpec::Amqp(_) => "amqp",
            SinkSpec::Kafka(_) => "kafka",
            SinkSpec::Http(_) => "http",
        }
    }

    /// The adapter behind an adapter sink (its checks and how it is
    /// built): `None` for a built-in sink, the missing feature for an
    /// adapter this build lacks.
    pub fn adapter(&self) -> Result<Option<&dyn SinkAdapter>, MissingFeature> {
        match self {
            SinkSpec::Simulated { .. }
            | SinkSpec::Null
            | SinkSpec::Stdout
            | SinkSpec::Jsonl { .. } => Ok(None),
            #[cfg(feature = "amqp")]
            SinkSpec::Amqp(config) => Ok(Some(config)),
            #[cfg(not(feature = "amqp"))]
            SinkSpec::Amqp(_) => Err(MissingFeature::new("type = \"amqp\"", "amqp")),
            #[cfg(feature = "kafka")]
            SinkSpec::Kafka(config) => Ok(Some(config)),
            #[cfg(not(feature = "kafka"))]
            SinkSpec::Kafka(_) => Err(MissingFeature::new("type = \"kafka\"", "kafka")),
            #[cfg(feature = "http")]
            SinkSpec::Http(config) => Ok(Some(config)),
            #[cfg(not(feature = "http"))]
            SinkSpec::Http(_) => Err(MissingFeature::new("type = \"http\"", "http")),
        }
    }

    /// The cargo feature this sink needs and this build lacks, if any.
    pub fn missing_feature(&self) -> Option<MissingFeature> {
        self.adapter().err()
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
