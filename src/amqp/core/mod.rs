//! The shared core of the AMQP 0-9-1 family: what the products (the queue
//! source, the stream source, the sink and the broker backlog store) need
//! to talk to the broker, and nothing that belongs to one of them.
//!
//! - [`config`]: the configuration error, the limit on broker names, and
//!   the broker knobs every config has (resolved, and shown redacted);
//! - [`connect`]: connections, reconnect backoff and classified, redacted
//!   errors;
//! - [`declare`]: declaring (or checking) a queue, an exchange and their
//!   binding, and reading a queue's counts without declaring anything;
//! - [`headers`]: the platform's `topic` / `messageId` / `generateTime`
//!   headers, read (with fallbacks) and written;
//! - [`batch`]: gathering a consumer's deliveries into batches.
//!
//! Invariants: the core imports no product (only the leaves and the
//! modules before `amqp` in the flow of a message); every error that leaves
//! it is redacted and classified, so no text it logs or returns contains a
//! broker password.

pub(crate) mod batch;
pub(crate) mod config;
pub mod connect;
pub(crate) mod declare;
pub mod headers;
