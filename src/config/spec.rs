//! The pieces of a config file that name objects to build: sources, sinks
//! and backlog stores. Pure data; [`super::build`] turns them into objects.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::amqp::{AmqpBacklogConfig, AmqpSinkConfig, AmqpSourceConfig, AmqpStreamConfig};
use crate::amqp1::Amqp1SourceConfig;
use crate::backlog::DiskBacklogConfig;
use crate::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use crate::pulsar::PulsarSourceConfig;
use crate::source::LanePolicy;
use crate::source::SimulatorConfig;

/// One `[[sources]]` entry; `type` says which kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    /// The device simulator.
    Simulator(SimulatorConfig),
    /// JSONL envelopes from a file, or from stdin with `path = "-"`.
    Jsonl(JsonlSpec),
    /// AMQP queues on a broker (RabbitMQ), consumed with manual acks.
    Amqp(AmqpSourceConfig),
    /// Kafka topics, consumed in a consumer group with manual commits.
    Kafka(KafkaSourceConfig),
    /// A RabbitMQ stream queue, with laneway storing the offset and
    /// catching up a lagging one live-first (docs/streams.md).
    #[serde(rename = "amqp-stream")]
    AmqpStream(AmqpStreamConfig),
    /// An AMQP 1.0 node (the Alibaba Cloud IoT Platform's server-side
    /// subscription with `[sources.aliyun]`, RabbitMQ's AMQP 1.0 plugin),
    /// accepted only when done (docs/amqp1.md).
    Amqp1(Box<Amqp1SourceConfig>),
    /// A Pulsar topic on a failover subscription (Tuya's message service
    /// with `[sources.tuya]`), acknowledged only when done (docs/pulsar.md).
    Pulsar(Box<PulsarSourceConfig>),
}

impl SourceSpec {
    /// The name its `name` knob gives it, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            SourceSpec::Simulator(s) => s.name.as_deref(),
            SourceSpec::Jsonl(s) => s.name.as_deref(),
            SourceSpec::Amqp(s) => s.name.as_deref(),
            SourceSpec::Kafka(s) => s.name.as_deref(),
            SourceSpec::AmqpStream(s) => s.name.as_deref(),
            SourceSpec::Amqp1(s) => s.name.as_deref(),
            SourceSpec::Pulsar(s) => s.name.as_deref(),
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

/// A group's `sink` table; `type` says which kind.
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
    Amqp(AmqpSinkConfig),
    /// Produce to a Kafka topic with an idempotent producer.
    Kafka(KafkaSinkConfig),
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

/// A group's `backlog` table; `store` says which kind (`disk` by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "store", rename_all = "lowercase", deny_unknown_fields)]
pub enum BacklogSpec {
    /// On disk, durable: survives crashes; the default, because the
    /// backlog is where undeliverable messages wait and none may be lost.
    Disk(DiskBacklogConfig),
    /// On a RabbitMQ quorum queue shared by every instance of the group
    /// (`store = "amqp"`): what one instance accumulated survives it and is
    /// delivered by the others.
    Amqp(AmqpBacklogConfig),
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

impl Default for BacklogSpec {
    fn default() -> Self {
        BacklogSpec::Disk(DiskBacklogConfig::default())
    }
}
