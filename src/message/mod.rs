//! Device messages: the type, its kind, topic classification, the key and
//! headers some carry, and the JSONL envelope.

mod device_message;
mod envelope;
mod extras;
pub mod json;
mod kind;
#[cfg(test)]
mod near_miss;
mod topic;

pub(crate) use device_message::generate_time_of_text;
#[cfg(any(
    feature = "amqp",
    feature = "amqp1",
    feature = "kafka",
    feature = "pulsar"
))]
pub(crate) use device_message::unusable_generate_time;
pub use device_message::{MAX_TOPIC_LEN, Message, MessageError, now_epoch_ms};
pub use envelope::{
    EnvelopeError, parse_envelope, write_base64, write_delivery_envelope, write_envelope,
    write_extras, write_json_string,
};
pub use extras::{Extras, ExtrasError, Header};
pub use json::{JsonError, JsonProblem};
pub use kind::{Kind, UnknownKind};
pub use topic::{TopicParts, classify};
