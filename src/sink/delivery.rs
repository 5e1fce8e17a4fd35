//! What a sink is handed and what it answers: a [`Delivery`], and when it
//! fails, a [`DeliveryError`] that tells the group what to do next.

use super::Lane;
use crate::message::Message;

/// One message handed to a sink, with what the sink may want to know about
/// its history.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Attempts made before this one (0 on the first try).
    pub attempts: u32,
    /// The lane it was taken from.
    pub lane: Lane,
    /// Whether this group already delivered a newer message (by generate
    /// time) of the same device and kind, or hands one over earlier in this
    /// batch. Live-first delivers a device's stale messages after its fresh
    /// ones; a handler that keeps device state (a shadow, an online flag)
    /// must not let this message overwrite what it has. Best effort in one
    /// direction only: `true` is always right, `false` may miss a newer
    /// message delivered long ago (the memory behind it is bounded) or one
    /// in flight in another slot at the same moment. When the newer one is
    /// in the same call and fails there, it is tried again later, so the
    /// handler still gets it (or it becomes a dead letter, which keeps it):
    /// a handler that keeps this message out of its state loses nothing
    /// the group will not hand it again.
    pub superseded: bool,
}

/// Why a message was not delivered; the kind decides what the group does
/// with it, the reason is what a dead letter will say.
///
/// A bare string converts into [`DeliveryError::RetryLater`], so a handler
/// can return `Err(format!(...))` for the common case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// May succeed later (a timeout, a broken connection): retried from the
    /// backlog with backoff, counted against the group's `max_attempts`.
    #[error("{0}")]
    RetryLater(String),
    /// No retry can fix it (an unroutable message, a payload the consumer
    /// rejects): a dead letter at once.
    #[error("{0}")]
    Permanent(String),
    /// "Push limited": the destination is fine but refuses more for now (a
    /// full queue's nack, a full in-flight window). The message waits in the
    /// backlog and is retried after the group's `retry_initial` without using
    /// up an attempt, so a consumer that stays away for long loses nothing.
    #[error("{0}")]
    PushLimited(String),
}

impl DeliveryError {
    /// What went wrong, as a dead letter will say it.
    pub fn reason(&self) -> &str {
        match self {
            DeliveryError::RetryLater(r)
            | DeliveryError::Permanent(r)
            | DeliveryError::PushLimited(r) => r,
        }
    }
}

impl From<String> for DeliveryError {
    fn from(reason: String) -> Self {
        DeliveryError::RetryLater(reason)
    }
}

impl From<&str> for DeliveryError {
    fn from(reason: &str) -> Self {
        DeliveryError::RetryLater(reason.to_string())
    }
}

/// A sink's answer for a batch that did not all go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Every message of the batch failed this way.
    #[error("{0}")]
    All(DeliveryError),
    /// These messages failed (index into the batch, and why); every other
    /// message of the batch was delivered.
    #[error("{} of the batch failed", .0.len())]
    Some(Vec<(usize, DeliveryError)>),
}

impl From<DeliveryError> for BatchError {
    fn from(error: DeliveryError) -> Self {
        BatchError::All(error)
    }
}

impl BatchError {
    /// The messages at `indices` failed, all for the same reason.
    pub fn some(indices: impl IntoIterator<Item = usize>, error: DeliveryError) -> BatchError {
        BatchError::Some(indices.into_iter().map(|i| (i, error.clone())).collect())
    }

    /// Spreads the answer over a batch of `len` messages: `None` for each
    /// message delivered, its error for each that failed. An index past the
    /// batch is ignored.
    pub fn per_message(self, len: usize) -> Vec<Option<DeliveryError>> {
        match self {
            BatchError::All(e) => vec![Some(e); len],
            BatchError::Some(failed) => {
                let mut out = vec![None; len];
                for (i, e) in failed {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(e);
                    }
                }
                out
            }
        }
    }
}
