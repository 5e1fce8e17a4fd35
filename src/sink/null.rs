//! The null sink: accepts everything and keeps nothing, for benchmarks and
//! for measuring laneway itself.

use async_trait::async_trait;

use super::{BatchError, Delivery, Sink};

/// A sink that accepts every batch at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

#[async_trait]
impl Sink for NullSink {
    async fn deliver(&self, _batch: &[Delivery]) -> Result<(), BatchError> {
        Ok(())
    }
}
