//! Kafka: a source that consumes topics in a consumer group and commits
//! only what is done, and a sink that produces with an idempotent producer.
//!
//! Invariants:
//! - a partition's committed offset is the contiguous watermark of records
//!   that are done (delivered, held durably by every group's backlog, or a
//!   dead letter); it never passes an undone record, so a crash, a kill or
//!   a rebalance replays from it and loses nothing (duplicates are bounded
//!   by what was in flight);
//! - offsets are committed on a timer while they move, on partition
//!   revoke (for the partitions going away), and on shutdown;
//! - `idle_exit` ends a run only once the consumer holds partitions and has
//!   read each to its end, catch-up ranges included (a restart while a
//!   killed member still holds the partitions waits for its session to
//!   time out); a run that stops reports the records its group has left;
//! - a record that cannot become a message is a dead letter naming its
//!   topic, partition and offset;
//! - a record's key and its headers beyond `topic`, `messageId` and
//!   `generateTime` travel with its message, through both lanes and both
//!   backlog stores, and the sink writes them again (the key as its `key`
//!   knob says);
//! - the sink reports a full producer queue or a failed delivery as "push
//!   limited" (the message waits in the backlog), and only errors no retry
//!   can fix (an unknown topic, a record too large) as permanent.

mod catch_up;
mod config;
mod error_pacer;
mod lag;
mod offsets;
mod record;
mod sink;
mod source;
mod split;

pub use config::{BROKERS_ENV, KafkaSinkConfig, KafkaSourceConfig, KeyChoice, ValueFormat};
pub use record::{headers_of, key_of, record_key};
pub use sink::KafkaSink;
pub use source::KafkaSource;
