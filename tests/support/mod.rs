//! The one support tree of the integration tests (and the benches). A
//! test file declares the part it uses, so that no test binary compiles
//! helpers it does not need:
//!
//! ```ignore
//! #[path = "support"]
//! #[allow(dead_code)]
//! mod support {
//!     pub mod records;
//!     pub mod wait;
//! }
//! ```
//!
//! The benches take the whole tree through this file.
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
//! - [`backlog_files`]: a backlog directory read by its documented format;
//! - [`disk`]: the disk backlog as the fault tests drive it;
//! - [`names`]: names no other test uses;
//! - [`measure`]: CPU time and medians for the comparative benchmarks.

// The benches compile the whole tree and use only part of it, so what
// they leave unused is no dead code.
#![allow(dead_code)]

pub mod backlog_files;
pub mod broker;
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
