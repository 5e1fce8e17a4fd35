//! AMQP 0-9-1 (RabbitMQ) through `lapin`: a source that consumes queues
//! with manual, batched acks, a sink that publishes with publisher
//! confirms, and the pieces they share.
//!
//! - [`url`]: broker URLs from the config or the environment, always shown
//!   with the password redacted (kept in [`crate::broker_url`], which the
//!   AMQP 1.0 source shares; re-exported here under its old path);
//! - [`headers`]: the platform's `topic` / `messageId` / `generateTime`
//!   headers, read (with fallbacks) and written;
//! - [`connect`]: connections, reconnect backoff and redacted errors;
//! - [`consumer`]: the queue source, [`AmqpSource`];
//! - [`stream`]: the stream source, [`AmqpStreamSource`], which stores its
//!   own offset and catches up a lagging one live-first;
//! - [`publisher`]: the sink, [`AmqpSink`];
//! - [`backlog_store`]: a group's backlog on a shared quorum queue,
//!   [`AmqpBacklog`], implementing [`crate::backlog::BacklogStore`] here so
//!   that `backlog` keeps importing only `message`.
//!
//! Invariant across the module: no text it logs or returns contains a
//! broker password.

mod adapter;
pub mod backlog_store;
mod batch;
pub mod connect;
pub mod consumer;
mod declare;
pub mod headers;
pub mod publisher;
pub mod stream;

pub use crate::broker_url as url;
pub use crate::broker_url::{BrokerUrl, redact};
pub use backlog_store::{AmqpBacklog, AmqpBacklogConfig};
pub use connect::AmqpError;
pub use consumer::{AmqpConfigError, AmqpSource, AmqpSourceConfig};
pub use publisher::{AmqpSink, AmqpSinkConfig, RoutingKey};
pub use stream::{AmqpStreamConfig, AmqpStreamSource, StreamStart};
