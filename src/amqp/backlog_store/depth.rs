//! Counting the backlog: this instance's view of the depth (see "What the
//! counts mean" in the module docs of [`super`]), kept by its own appends
//! and takes and refreshed from the broker.
//!
//! Invariants: the counters never wrap below zero ([`saturating_sub`]); a
//! recount from the broker is stored only when no publish overlapped it,
//! so it never counts a record that a publish is about to count again; a
//! background refresh that finds fewer records raises `recheck`, so the
//! engine takes once more and learns the new depth.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::read::Reader;
use super::{Inner, unavailable};
use crate::amqp::core::connect::AmqpError;
use crate::amqp::core::declare;
use crate::backlog::{BacklogDepth, BacklogError};

/// Lowers `counter` by `n`, stopping at zero.
pub(super) fn saturating_sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

impl Inner {
    /// Refreshes the depth from the broker every `refresh_interval` (not
    /// at all when it is zero) until `stop`.
    pub(super) fn refresh_every(self: &Arc<Self>, stop: &CancellationToken) {
        let interval = self.config.refresh_interval;
        if interval.is_zero() {
            return;
        }
        let (inner, stop) = (Arc::clone(self), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                if let Err(e) = inner.refresh().await {
                    tracing::debug!(error = %e, "refreshing the broker backlog's depth failed");
                }
            }
        });
    }

    /// Re-reads the ready counts of the backlog and wait queues (the
    /// background refresh).
    pub(super) async fn refresh(&self) -> Result<(), BacklogError> {
        let link = self.link().await?;
        let mut reader = self.reader.lock().await;
        self.sync(&mut reader, &link);
        self.recount(&mut reader, &link, true).await
    }

    /// Re-reads the ready counts of the backlog and wait queues. With
    /// `flag_drop`, a count that fell raises `recheck` (see
    /// [`Inner::recheck`]).
    pub(super) async fn recount(
        &self,
        reader: &mut Reader,
        link: &Link,
        flag_drop: bool,
    ) -> Result<(), BacklogError> {
        self.drain(reader, true).await;
        let (busy, epoch) = (
            self.publishing.load(Ordering::SeqCst),
            self.published.load(Ordering::SeqCst),
        );
        let mut ready = 0u64;
        for queue in [&self.names.backlog, &self.names.wait] {
            let q = declare::counts(&link.consume, queue).await.map_err(|e| {
                unavailable(AmqpError::classify(
                    &self.url,
                    &format!("checking queue {queue}"),
                    &e,
                    false,
                ))
            })?;
            ready += u64::from(q.message_count());
        }
        // Deliveries pushed before the answer are not in the count; after
        // one more round trip they have all arrived.
        self.settle_channel(link, reader.prefetch).await?;
        self.drain(reader, false).await;
        if busy > 0
            || self.publishing.load(Ordering::SeqCst) > 0
            || self.published.load(Ordering::SeqCst) != epoch
        {
            // A publish overlapped the count: keep the running count.
            return Ok(());
        }
        let before = self.ready.swap(ready, Ordering::Relaxed);
        if flag_drop && ready < before {
            self.recheck.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether records may be ready (or a take should look again).
    pub(super) fn has_waiting(&self) -> bool {
        self.ready.load(Ordering::Relaxed) + self.held.load(Ordering::Relaxed) > 0
            || self.recheck.load(Ordering::Relaxed)
    }

    /// This instance's view of the depth (see the module docs of [`super`]).
    pub(super) fn depth(&self) -> BacklogDepth {
        let (ready, held, in_flight) = (
            self.ready.load(Ordering::Relaxed),
            self.held.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        );
        BacklogDepth {
            records: ready + held + in_flight,
            in_flight,
            ..BacklogDepth::default()
        }
    }
}
