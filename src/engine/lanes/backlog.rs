//! The backlog lane's read-ahead: a small buffer of ready backlog records, filled
//! by its own task, so that the dispatcher never waits on the store (a disk
//! read) while a live message waits for a slot.
//!
//! Invariants: the buffer holds at most `target` records; every record in
//! it was handed out by the store and is either taken by the dispatcher or,
//! at shutdown, given back to the store with [`ReadAhead::give_back`] — none
//! is ever dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::backlog::{BacklogStore, StoredRecord};
use crate::message::now_epoch_ms;
use tokio_util::sync::CancellationToken;

/// How long to wait before asking the store again when nothing was ready
/// (records waiting for their retry time); new appends wake it sooner.
const RECHECK: Duration = Duration::from_millis(20);

/// A bounded buffer of backlog records ready for delivery.
pub(crate) struct ReadAhead {
    buffer: Mutex<VecDeque<StoredRecord>>,
    len: AtomicUsize,
    target: usize,
    /// The dispatcher took records: there is room to fill.
    taken: Notify,
    /// Records arrived in the buffer.
    pub filled: Notify,
}

impl ReadAhead {
    pub fn new(target: usize) -> ReadAhead {
        ReadAhead {
            buffer: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            target: target.max(1),
            taken: Notify::new(),
            filled: Notify::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Takes up to `max` records, oldest first, without waiting.
    pub fn take(&self, max: usize) -> Vec<StoredRecord> {
        let mut buffer = self.buffer.lock();
        let n = buffer.len().min(max);
        let out: Vec<_> = buffer.drain(..n).collect();
        self.len.store(buffer.len(), Ordering::Release);
        drop(buffer);
        if !out.is_empty() {
            self.taken.notify_one();
        }
        out
    }

    /// Keeps the buffer filled from `store` until `stop` is cancelled.
    /// `appended` is notified whenever the store got new records;
    /// `progress` is notified after each take from the store (a take may
    /// drop expired records, which can leave the group idle).
    pub async fn fill(
        self: Arc<Self>,
        store: Arc<dyn BacklogStore>,
        appended: Arc<Notify>,
        progress: Arc<Notify>,
        stop: CancellationToken,
        group: String,
    ) {
        loop {
            let have = self.len.load(Ordering::Acquire);
            let wait_for_room = have >= self.target;
            let nothing_waiting = !wait_for_room && !store.has_waiting();
            if wait_for_room || nothing_waiting {
                tokio::select! {
                    _ = self.taken.notified(), if wait_for_room => {}
                    _ = appended.notified(), if nothing_waiting => {}
                    _ = tokio::time::sleep(RECHECK), if nothing_waiting => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let taken = store.take_ready(self.target - have, now_epoch_ms()).await;
            progress.notify_waiters();
            match taken {
                Ok(records) if !records.is_empty() => {
                    let mut buffer = self.buffer.lock();
                    buffer.extend(records);
                    self.len.store(buffer.len(), Ordering::Release);
                    drop(buffer);
                    self.filled.notify_one();
                }
                Ok(_) => {
                    tokio::select! {
                        _ = appended.notified() => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(group, error = %e, "reading the backlog failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Returns whatever is still buffered to the store, unchanged, so it is
    /// handed out again (now, or after a restart).
    pub async fn give_back(
        &self,
        store: &dyn BacklogStore,
    ) -> Result<(), crate::backlog::BacklogError> {
        let rest = self.take(usize::MAX);
        if rest.is_empty() {
            return Ok(());
        }
        store.retry(&rest).await
    }
}
