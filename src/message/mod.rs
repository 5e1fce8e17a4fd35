//! Device messages: the type, its kind, topic classification and the JSONL
//! envelope.

mod envelope;
mod kind;
#[allow(clippy::module_inception)]
mod message;
mod topic;

pub use envelope::{EnvelopeError, parse_envelope, write_envelope, write_json_string};
pub use kind::{Kind, UnknownKind};
pub use message::{MAX_TOPIC_LEN, Message, MessageError, now_epoch_ms};
pub use topic::{TopicParts, classify};
