//! AMQP 0-9-1 (RabbitMQ) through `lapin`: four products around a small
//! shared core.
//!
//! The core (`core`), which every product builds on:
//! - [`connect`]: connections, reconnect backoff and redacted errors;
//! - [`headers`]: the platform's `topic` / `messageId` / `generateTime`
//!   headers, read (with fallbacks) and written;
//! - what configs share (the broker knobs), declaring
//!   queues and exchanges, and gathering deliveries into batches.
//!
//! The products, one folder each:
//! - [`queue`]: the queue source, [`AmqpSource`], which consumes queues
//!   with manual, batched acks;
//! - [`stream`]: the stream source, [`AmqpStreamSource`], which stores its
//!   own offset and catches up a lagging one live-first;
//! - [`sink`]: the sink, [`AmqpSink`], which publishes with publisher
//!   confirms;
//! - [`backlog_store`]: a group's backlog on a shared quorum queue,
//!   [`AmqpBacklog`], implementing [`crate::backlog::BacklogStore`] here so
//!   that `backlog` keeps importing only `message`.
//!
//! Broker URLs (from the config or the environment, always shown with the
//! password redacted) are the neutral leaf [`crate::broker_url`], which the
//! AMQP 1.0 source shares; re-exported here as [`url`] under its old path.
//!
//! Invariants across the module: products import the core, never each
//! other, and the core imports no product; no text it logs or returns
//! contains a broker password.

mod adapter;
pub mod backlog_store;
mod core;
pub mod queue;
pub mod sink;
pub mod stream;

pub use self::core::connect::AmqpError;
pub use self::core::{connect, headers};
pub use crate::broker_url as url;
pub use crate::broker_url::{BrokerUrl, redact};
pub use backlog_store::{AmqpBacklog, AmqpBacklogConfig};
pub use queue::{AmqpSource, AmqpSourceConfig};
pub use sink::{AmqpSink, AmqpSinkConfig, RoutingKey};
pub use stream::{AmqpStreamConfig, AmqpStreamSource, StreamStart};
