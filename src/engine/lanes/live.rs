//! The live lane: a bounded queue of fresh messages for one group. A
//! second instance is the group's catch-up lane: messages a source still
//! holds (a lagging Kafka partition's pile), read on the backlog lane's
//! schedule.
//!
//! Invariants: it never holds more than its capacity (what does not fit is
//! handed back, which is the "push limited" signal that sends a message to
//! the backlog, or waits for room with [`LiveLane::push_all`]); items leave
//! in the order they came; each item carries the source ack it must settle.
//! Items move in and out in batches, one short lock per batch, and the depth
//! is readable without the lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ack::AckRef;
use crate::message::Message;

/// A fresh message waiting for delivery, with its share of the source ack.
#[derive(Debug)]
pub struct LiveItem {
    /// The message.
    pub message: Message,
    /// Completed when the message is delivered or durably moved elsewhere.
    pub ack: AckRef,
}

/// A bounded queue plus a wake-up for the group's dispatcher. Public so that
/// benchmarks and embedders can measure it; the engine owns one per group.
pub struct LiveLane {
    queue: Mutex<VecDeque<LiveItem>>,
    capacity: usize,
    len: AtomicUsize,
    arrived: Notify,
    /// Notified when items were taken (room for [`LiveLane::push_all`]).
    room: Notify,
}

impl LiveLane {
    /// A lane holding at most `capacity` items.
    pub fn new(capacity: usize) -> LiveLane {
        let capacity = capacity.max(1);
        LiveLane {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            capacity,
            len: AtomicUsize::new(0),
            arrived: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Appends as many items as fit, in order; returns those that did not.
    pub fn push_batch(&self, items: Vec<LiveItem>) -> Vec<LiveItem> {
        let mut queue = self.queue.lock();
        let room = self.capacity.saturating_sub(queue.len());
        let mut items = items.into_iter();
        queue.extend(items.by_ref().take(room));
        self.len.store(queue.len(), Ordering::Release);
        drop(queue);
        items.collect()
    }

    /// Appends every item, in order, waiting for room as the dispatcher
    /// takes items (backpressure for a source that holds its messages
    /// itself). `pushed` is notified (all waiters) after each push that
    /// got items in. If `closed` is cancelled first, returns the items that
    /// did not get in.
    pub async fn push_all(
        &self,
        mut items: Vec<LiveItem>,
        closed: &CancellationToken,
        pushed: &Notify,
    ) -> Result<(), Vec<LiveItem>> {
        loop {
            // Registered before the push, so a take in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let offered = items.len();
            items = self.push_batch(items);
            if items.len() < offered {
                self.wake();
                pushed.notify_waiters();
            }
            if items.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = room => {}
                _ = closed.cancelled() => return Err(items),
            }
        }
    }

    /// Wakes the dispatcher after a run of pushes.
    pub fn wake(&self) {
        self.arrived.notify_one();
    }

    /// Resolves when items may have arrived since the last wait.
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }

    /// Takes up to `max` items, oldest first.
    pub fn pop_batch(&self, max: usize) -> Vec<LiveItem> {
        let mut queue = self.queue.lock();
        let n = queue.len().min(max);
        let out: Vec<LiveItem> = queue.drain(..n).collect();
        self.len.store(queue.len(), Ordering::Release);
        drop(queue);
        if !out.is_empty() {
            self.room.notify_waiters();
        }
        out
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
