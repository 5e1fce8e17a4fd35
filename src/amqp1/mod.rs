//! AMQP 1.0 through `fe2o3-amqp`: a source that reads one node with a
//! receiver link in manual credit mode and accepts each message only once
//! the engine is done with it, and the `aliyun` preset that logs in to the
//! Alibaba Cloud IoT Platform's server-side subscription.
//!
//! - [`config`]: the `type = "amqp1"` source entry;
//! - [`aliyun`]: the platform's endpoint and signed SASL login;
//! - [`login`]: opening one connection (TCP, TLS, SASL PLAIN);
//! - [`bounds`]: how long each later step waits for the peer;
//! - [`mapping`]: application properties and body → a message;
//! - [`publisher`]: sending messages as the platform does (the simulator's
//!   AMQP 1.0 output, so the source can be tried without the platform);
//! - `pacing`: the cap on connection attempts per minute;
//! - [`source`]: the source, [`Amqp1Source`].
//!
//! Invariant across the module: no secret (a password, an AccessKey
//! secret, an STS token, a signed user name) appears in a log line, an
//! error or `Debug` output.

pub mod aliyun;
pub mod bounds;
pub mod config;
pub mod login;
pub mod mapping;
mod pacing;
pub mod publisher;
pub mod source;

pub use aliyun::{AliyunConfig, SignMethod};
pub use config::Amqp1SourceConfig;
pub use publisher::{Amqp1PublishError, Amqp1Publisher};
pub use source::Amqp1Source;
