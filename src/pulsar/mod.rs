//! Pulsar: the pieces of a Pulsar source for Tuya's message service.
//!
//! Built so far: the Tuya preset's pure parts (the `auth1` credentials,
//! the regional endpoints and topic names) and the decryption of its
//! payloads. The consuming source itself is not built yet.
//!
//! Invariants:
//! - a payload that cannot be decrypted is an error naming the reason,
//!   never a panic, so it can become a dead letter;
//! - no secret (the access key, the derived password, the AES key)
//!   appears in an error, a log line or Debug output.

mod decrypt;
mod tuya;

pub use decrypt::{DecryptError, EncryptMode, decrypt};
pub use tuya::{Region, TuyaCredentials, laneway_topic, subscription_name, topic_name};
