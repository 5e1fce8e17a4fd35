//! The AMQP sink (a group's `sink` with `type = "amqp"`): publishes
//! deliveries to an exchange with publisher confirms.
//!
//! - `config`: its table, [`AmqpSinkConfig`];
//! - `routing_key`: the routing-key template, [`RoutingKey`];
//! - `publisher`: the sink itself, [`AmqpSink`], its connection, in-flight
//!   window and the outcome of each message.
//!
//! Invariant: it builds on the family's core only (never on another
//! product); a delivery is reported done only when the broker confirmed
//! every message of it.

mod config;
mod publisher;
mod routing_key;

pub use config::AmqpSinkConfig;
pub use publisher::AmqpSink;
pub use routing_key::RoutingKey;
