//! The live lane: a bounded lock-free ring of fresh messages for one group.
//!
//! Invariants: it never holds more than its capacity (a push into a full
//! lane hands the item back, which is the "push limited" signal that sends a
//! message to the backlog); each item carries the source ack it must settle.

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

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

/// A bounded ring plus a wake-up for the group's dispatcher. Public so that
/// benchmarks and embedders can measure it; the engine owns one per group.
pub struct LiveLane {
    ring: ArrayQueue<LiveItem>,
    arrived: Notify,
}

impl LiveLane {
    /// A lane holding at most `capacity` items.
    pub fn new(capacity: usize) -> LiveLane {
        LiveLane {
            ring: ArrayQueue::new(capacity.max(1)),
            arrived: Notify::new(),
        }
    }

    /// Pushes an item, or hands it back when the lane is full.
    pub fn push(&self, item: LiveItem) -> Result<(), LiveItem> {
        self.ring.push(item)
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
        let mut out = Vec::with_capacity(max.min(self.ring.len()));
        while out.len() < max {
            match self.ring.pop() {
                Some(item) => out.push(item),
                None => break,
            }
        }
        out
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}
