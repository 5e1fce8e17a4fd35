//! Keeping the stored offset: written when it moves, at most every
//! `store_every` while a session runs, and once more when it ends.
//!
//! Invariants: the offset written never moves back; writes are serialised
//! (one at a time, each atomic and durable, off the runtime's worker
//! threads); a failed write is logged and retried at the next turn, never
//! fatal (a restart then replays a little more, it loses nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::offset_file::OffsetFile;
use super::offsets::StreamOffsets;
use crate::source::SourceHealth;

/// The stream's stored offset and where it is written.
pub(super) struct Keeper {
    file: OffsetFile,
    /// The offset last written, if any.
    written: tokio::sync::Mutex<Option<u64>>,
    health: SourceHealth,
}

impl Keeper {
    /// A keeper for `file`, which holds `loaded` now.
    pub fn new(file: OffsetFile, health: SourceHealth, loaded: Option<u64>) -> Arc<Keeper> {
        Arc::new(Keeper {
            file,
            written: tokio::sync::Mutex::new(loaded),
            health,
        })
    }

    /// Writes `offset` unless it is not past the offset already written;
    /// counts the records it moves over as acknowledged.
    pub async fn store(&self, offset: u64) {
        let mut written = self.written.lock().await;
        if written.is_some_and(|w| offset <= w) {
            return;
        }
        let file = self.file.clone();
        match tokio::task::spawn_blocking(move || file.store(offset)).await {
            Ok(Ok(())) => {
                if let Some(before) = *written {
                    self.health.acked(offset - before);
                }
                *written = Some(offset);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, offset, "storing the stream offset failed; retrying at the next turn");
            }
            Err(e) => {
                tracing::warn!(error = %e, offset, "storing the stream offset failed; retrying at the next turn");
            }
        }
    }
}

/// Follows a session's offsets until `end`: stores the done watermark
/// every `every` when it moved, updates the lag shown on the status line
/// (`read_end`, the offset after the last record read, less the watermark),
/// and raises `stuck` when a batch was abandoned.
pub(super) async fn follow(
    keeper: Arc<Keeper>,
    offsets: Arc<StreamOffsets>,
    every: Duration,
    read_end: Arc<AtomicU64>,
    stuck: CancellationToken,
    end: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = end.cancelled() => return,
            _ = tick.tick() => {}
        }
        if offsets.is_stuck() {
            stuck.cancel();
        }
        let done = offsets.stored();
        keeper.store(done).await;
        keeper
            .health
            .lag(read_end.load(Ordering::Relaxed).saturating_sub(done));
    }
}
