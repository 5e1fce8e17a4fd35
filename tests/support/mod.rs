//! The one support tree of the integration tests (and the benches).
//! `tests/main.rs` declares it once for every test file, which reaches it
//! as `crate::support`; a bench declares the part it uses with
//! `#[path]`, or the whole tree through this file.
//!
//! - [`records`]: what was sent and what came out, compared byte for byte;
//! - [`engine`]: a recording sink and an engine run in the background;
//! - [`wait`]: waiting for a condition, bounded, with a clear failure;
//! - [`process`]: the `laneway` binary run as a child (a config written,
//!   the run spawned, its status lines waited on);
//! - [`broker`]: the RabbitMQ the broker tests share (`AMQP_URL`);
//! - [`amqp1`]: the turn the tests driving AMQP 1.0 clients in process take;
//! - [`kafka`], [`pulsar`]: the Kafka mock cluster and the Pulsar peer,
//!   with their features;
//! - [`tls`]: a TLS server config for `localhost` signed by a test CA;
//! - [`backlog_files`]: a backlog directory read by its documented format;
//! - [`disk`]: the disk backlog as the fault tests drive it;
//! - [`names`]: names no other test uses;
//! - [`measure`]: CPU time and medians for the comparative benchmarks;
//! - [`counting_sink`]: a null sink that says when a benchmark's run is done.

// A build without some features, and the benches, use only part of the
// tree, so what they leave unused is no dead code.
#![allow(dead_code)]

pub mod amqp1;
pub mod backlog_files;
pub mod broker;
pub mod counting_sink;
pub mod disk;
pub mod engine;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod measure;
pub mod names;
pub mod process;
#[cfg(feature = "pulsar")]
pub mod pulsar;
pub mod records;
pub mod tls;
pub mod wait;
