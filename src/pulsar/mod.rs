//! Pulsar: a source for Apache Pulsar topics, with the `tuya` preset for
//! Tuya's message service (docs/pulsar.md).
//!
//! - `config`: the `[[sources]]` entry and its checks;
//! - [`source`](PulsarSource): one consumer on a failover subscription,
//!   acknowledging only what the engine is done with;
//! - `mapping`: a Pulsar message as what the engine ingests (plain, or
//!   Tuya's encrypted envelope);
//! - `tuya`, `decrypt`: the preset's endpoints, names, `auth1` login and
//!   payload decryption.
//!
//! Invariants:
//! - a message is acknowledged only once it is done; an undone one is
//!   negatively acknowledged at shutdown or left to the broker's
//!   redelivery when the connection is lost;
//! - a payload that cannot be decrypted is a dead letter naming the
//!   reason, never a panic;
//! - no secret (the access key, the derived password, the AES key)
//!   appears in an error, a log line or Debug output.

mod batch_acks;
mod config;
mod decrypt;
mod mapping;
mod source;
mod tuya;

pub use config::{DEFAULT_URL, DEFAULT_URL_ENV, PulsarSourceConfig, Resolved, TuyaConfig};
pub use decrypt::{DecryptError, EncryptMode, decrypt};
pub use mapping::{ENCRYPT_MODE, GENERATE_TIME, MESSAGE_ID, TOPIC};
pub use source::PulsarSource;
pub use tuya::{Region, TuyaCredentials, laneway_topic, subscription_name, topic_name};
