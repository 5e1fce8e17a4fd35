//! Where a consumer group delivers: the [`Sink`] trait and the sinks laneway
//! ships (a Rust handler, JSONL to a file or stdout, null).

mod handler;
mod jsonl;
mod null;

use async_trait::async_trait;

use crate::lane::Lane;
use crate::message::Message;

pub use handler::{HandlerFn, SimulatedHandler, handler_fn};
pub use jsonl::JsonlSink;
pub use null::NullSink;

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
}

/// Why a delivery failed, and for which messages of the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    /// What went wrong, as it will appear in a dead letter.
    pub reason: String,
    /// Indices into the batch of the messages that failed; `None` means all.
    pub failed: Option<Vec<usize>>,
    /// A failure that retrying cannot fix (for example an unroutable
    /// message): those go straight to the dead letters.
    pub permanent: bool,
    /// "Push limited": the destination is fine but refuses more for now (a
    /// full queue's nack, a full in-flight window). The messages wait in the
    /// backlog and are retried after `retry_initial` without using up an
    /// attempt, so a consumer that stays away for long loses nothing.
    pub limited: bool,
}

impl DeliveryError {
    /// The whole batch failed, and a retry may succeed.
    pub fn all(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            reason: reason.into(),
            failed: None,
            permanent: false,
            limited: false,
        }
    }

    /// Only these messages of the batch failed, and a retry may succeed.
    pub fn some(reason: impl Into<String>, failed: Vec<usize>) -> DeliveryError {
        DeliveryError {
            reason: reason.into(),
            failed: Some(failed),
            permanent: false,
            limited: false,
        }
    }

    /// Marks the failure as one no retry can fix.
    pub fn permanent(mut self) -> DeliveryError {
        self.permanent = true;
        self
    }

    /// Marks the failure as "push limited" (see [`DeliveryError::limited`]).
    pub fn limited(mut self) -> DeliveryError {
        self.limited = true;
        self
    }
}

/// A consumer group's destination.
///
/// `deliver` gets a batch (up to the group's `batch_size`) and resolves when
/// the batch is handled: `Ok` means every message in it is safe downstream
/// and will be released from laneway for good. A group calls `deliver` from
/// up to `slots` tasks at once, so a sink must tolerate concurrent batches.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch; see the trait's contract.
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), DeliveryError>;

    /// Flushes and closes whatever the sink holds open, at shutdown.
    async fn close(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
}
