//! The queue source (`type = "amqp"`): consumes one or more queues with
//! manual, batched acks.
//!
//! - `config`: its `[[sources]]` entry, [`AmqpSourceConfig`];
//! - `source`: the source itself, [`AmqpSource`], one consumer per queue
//!   with its own connection, prefetch and ack tracker.
//!
//! Invariant: it builds on the family's core only (never on another
//! product); a message is acked only once the engine has finished with it.

mod config;
mod source;

pub use config::AmqpSourceConfig;
pub use source::AmqpSource;
