//! At-least-once acknowledgement to a source: a contiguous watermark over
//! source batches.
//!
//! A source registers each batch it reads with its [`AckTracker`] and gets an
//! [`AckRef`]. The engine clones that reference once per (message, group)
//! routing; each clone is completed when its group has delivered the message,
//! holds it durably in its backlog, or has recorded it as a dead letter.
//!
//! Invariants:
//! - the watermark only moves over batches whose every reference completed,
//!   in order: a batched ack never covers an undone message;
//! - a reference dropped without [`AckRef::complete`] (a task that died, a
//!   shutdown that abandoned a live lane) marks its batch abandoned, and the
//!   watermark never passes it: the broker keeps and redelivers it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Tracks which of a source's batches are done, as a contiguous watermark.
#[derive(Default)]
pub struct AckTracker {
    state: Mutex<TrackerState>,
    changed: Notify,
}

#[derive(Default)]
struct TrackerState {
    /// Every sequence number below this one is done.
    watermark: u64,
    /// The status of sequence numbers `watermark..watermark + len`.
    window: VecDeque<BatchStatus>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BatchStatus {
    Pending,
    Done,
    Abandoned,
}

impl AckTracker {
    /// A tracker with nothing registered.
    pub fn new() -> Arc<AckTracker> {
        Arc::new(AckTracker::default())
    }

    /// Registers the next batch; its sequence number is returned by
    /// [`AckRef::seq`]. The reference starts with one holder (the source).
    pub fn register(self: &Arc<Self>) -> AckRef {
        let seq = {
            let mut state = self.state.lock();
            let seq = state.watermark + state.window.len() as u64;
            state.window.push_back(BatchStatus::Pending);
            seq
        };
        AckRef {
            batch: Some(Arc::new(AckBatch {
                holders: AtomicUsize::new(1),
                abandoned: AtomicBool::new(false),
                seq,
                tracker: Arc::clone(self),
            })),
        }
    }

    /// Every batch with a sequence number below this is done.
    pub fn watermark(&self) -> u64 {
        self.state.lock().watermark
    }

    /// Whether a batch at the watermark was abandoned, so it can never advance
    /// again until the source resets (for AMQP: reconnects).
    pub fn is_stuck(&self) -> bool {
        self.state.lock().window.front() == Some(&BatchStatus::Abandoned)
    }

    /// Batches registered and not yet behind the watermark.
    pub fn outstanding(&self) -> usize {
        self.state.lock().window.len()
    }

    /// Resolves after the watermark may have moved (or a batch was abandoned).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn settle(&self, seq: u64, status: BatchStatus) {
        let mut state = self.state.lock();
        let Some(offset) = seq.checked_sub(state.watermark) else {
            return;
        };
        if let Some(slot) = state.window.get_mut(offset as usize) {
            *slot = status;
        }
        let mut moved = status == BatchStatus::Abandoned;
        while state.window.front() == Some(&BatchStatus::Done) {
            state.window.pop_front();
            state.watermark += 1;
            moved = true;
        }
        drop(state);
        if moved {
            self.changed.notify_waiters();
        }
    }
}

struct AckBatch {
    holders: AtomicUsize,
    abandoned: AtomicBool,
    seq: u64,
    tracker: Arc<AckTracker>,
}

/// One holder's share of a source batch. Complete it when the work it stands
/// for is safe; dropping it instead abandons the batch (never acked).
///
/// Sources that need no acks (the simulator, files) use [`AckRef::none`],
/// which costs nothing.
pub struct AckRef {
    batch: Option<Arc<AckBatch>>,
}

impl AckRef {
    /// A reference that tracks nothing.
    pub const fn none() -> AckRef {
        AckRef { batch: None }
    }

    /// The batch's sequence number in its tracker, if it has one.
    pub fn seq(&self) -> Option<u64> {
        self.batch.as_ref().map(|b| b.seq)
    }

    /// A handle that tells whether this batch may still be done, without
    /// holding it: something that waits on the batch (a copy of one of
    /// its messages) must not keep it pending if its holders abandon it.
    /// `None` for a reference that tracks nothing.
    pub fn watch(&self) -> Option<AckWatch> {
        self.batch.as_ref().map(|b| AckWatch(Arc::downgrade(b)))
    }

    /// This holder is done: the work is delivered or durably stored.
    pub fn complete(mut self) {
        if let Some(batch) = self.batch.take() {
            release(batch, false);
        }
    }
}

fn release(batch: Arc<AckBatch>, abandon: bool) {
    if abandon {
        batch.abandoned.store(true, Ordering::Release);
    }
    if batch.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
        let status = if batch.abandoned.load(Ordering::Acquire) {
            BatchStatus::Abandoned
        } else {
            BatchStatus::Done
        };
        batch.tracker.settle(batch.seq, status);
    }
}

impl Clone for AckRef {
    fn clone(&self) -> AckRef {
        if let Some(batch) = &self.batch {
            batch.holders.fetch_add(1, Ordering::AcqRel);
        }
        AckRef {
            batch: self.batch.clone(),
        }
    }
}

impl Drop for AckRef {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            release(batch, true);
        }
    }
}

/// Watches a batch without holding it (see [`AckRef::watch`]).
#[derive(Clone)]
pub struct AckWatch(Weak<AckBatch>);

impl AckWatch {
    /// Whether the batch still has holders and none of them abandoned it:
    /// its messages are still on their way to being done.
    pub fn is_pending(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|b| !b.abandoned.load(Ordering::Acquire))
    }
}

impl std::fmt::Debug for AckWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckWatch(pending: {})", self.is_pending())
    }
}

impl std::fmt::Debug for AckRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckRef({:?})", self.seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_moves_only_over_contiguous_done_batches() {
        let tracker = AckTracker::new();
        let a = tracker.register();
        let b = tracker.register();
        let c = tracker.register();
        let b2 = b.clone();
        c.complete();
        assert_eq!(tracker.watermark(), 0, "batch 2 done but 0 and 1 are not");
        b.complete();
        assert_eq!(tracker.watermark(), 0, "batch 1 still has a holder");
        a.complete();
        assert_eq!(tracker.watermark(), 1);
        b2.complete();
        assert_eq!(tracker.watermark(), 3);
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn a_watch_sees_a_batch_pending_until_it_is_done_or_abandoned() {
        let tracker = AckTracker::new();
        let a = tracker.register();
        let watch = a.watch().unwrap();
        let a2 = a.clone();
        assert!(watch.is_pending());
        a.complete();
        assert!(watch.is_pending(), "one holder is left");
        a2.complete();
        assert!(!watch.is_pending(), "done");
        let b = tracker.register();
        let watch = b.watch().unwrap();
        let b2 = b.clone();
        drop(b);
        assert!(!watch.is_pending(), "a holder abandoned it");
        b2.complete();
        assert!(AckRef::none().watch().is_none());
    }

    #[test]
    fn a_dropped_reference_abandons_its_batch_for_good() {
        let tracker = AckTracker::new();
        let a = tracker.register();
        let b = tracker.register();
        let a2 = a.clone();
        a.complete();
        drop(a2);
        b.complete();
        assert_eq!(tracker.watermark(), 0);
        assert!(tracker.is_stuck());
    }

    #[test]
    fn none_references_cost_nothing_and_track_nothing() {
        let r = AckRef::none();
        assert_eq!(r.seq(), None);
        r.clone().complete();
        drop(r);
    }
}
