//! The one support tree of the integration tests (and the benches): each
//! test file declares `mod support;` and uses what it needs.
//!
//! - [`records`]: what was sent and what came out, compared byte for byte;
//! - [`engine`]: a recording sink and an engine run in the background;
//! - [`wait`]: waiting for a condition, bounded, with a clear failure;
//! - [`process`]: the `laneway` binary run as a child (a config written,
//!   the run spawned, its status lines waited on);
//! - [`broker`]: the RabbitMQ the broker tests share (`AMQP_URL`);
//! - [`kafka`], [`pulsar`]: the Kafka mock cluster and the Pulsar peer,
//!   with their features;
//! - [`tls`]: a TLS server config for `localhost` signed by a test CA;
//! - [`backlog_files`]: a backlog directory read by its documented format.

// Every test binary compiles the whole tree and uses only part of it, so
// what one binary leaves unused is no dead code.
#![allow(dead_code)]

pub mod backlog_files;
pub mod broker;
pub mod disk;
pub mod engine;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod process;
#[cfg(feature = "pulsar")]
pub mod pulsar;
pub mod records;
pub mod tls;
pub mod wait;

/// A name no other test (or run) uses, for a queue, exchange, stream,
/// topic, user or vhost: the tag, this process and the current time.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("laneway-test.{tag}.{}.{nanos}", std::process::id())
}
