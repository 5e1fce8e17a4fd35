//! Where a consumer group delivers: the [`Sink`] trait and the sinks laneway
//! ships (a Rust handler, JSONL to a file or stdout, null).

mod adapter;
mod delivery;
mod handler;
mod jsonl;
mod lane;
mod null;

use async_trait::async_trait;

pub use adapter::SinkAdapter;
pub use delivery::{BatchError, Delivery, DeliveryError};
pub use handler::{HandlerFn, SimulatedHandler, handler_fn};
pub use jsonl::JsonlSink;
pub use lane::Lane;
pub use null::NullSink;

/// A consumer group's destination.
///
/// `deliver` gets a batch (up to the group's `batch_size`) and resolves when
/// the batch is handled: `Ok` means every message in it is safe downstream
/// and will be released from laneway for good. A group calls `deliver` from
/// up to `slots` tasks at once, so a sink must tolerate concurrent batches.
/// A `deliver` that panics (a handler unwrapping a field a message lacks)
/// fails its batch as [`DeliveryError::RetryLater`] with the panic's
/// message: retried, and a dead letter once the group's `max_attempts` run
/// out; the run goes on.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers a batch; see the trait's contract.
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError>;

    /// Flushes and closes whatever the sink holds open, at shutdown (waited
    /// for at most the engine's shutdown grace).
    async fn close(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
}
