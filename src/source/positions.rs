//! Where each of a source's batches ends, settled in order: the one shape
//! behind every acknowledging source (a delivery tag to ack, an offset to
//! commit or checkpoint, the message ids to accept or acknowledge).
//!
//! A source registers each batch it hands to the engine with its position
//! (whatever the source must later acknowledge for it) and gets the
//! [`AckRef`] to hand in with the batch. Positions come back out, oldest
//! first, once the [`AckTracker`]'s watermark has passed their batch.
//!
//! Invariants: a position is given back as done only when its batch and
//! every batch registered before it are done (the tracker's contiguous
//! watermark), so acknowledging it (or anything up to it) never covers an
//! undone message; each position is given back once, either as done or,
//! by [`Positions::drain_undone`], as never done.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ack::{AckRef, AckTracker};

/// A source's registered batches and their positions (see the module docs).
pub struct Positions<P> {
    tracker: Arc<AckTracker>,
    /// Each registered batch's sequence number and position, in order.
    pending: VecDeque<(u64, P)>,
}

impl<P> Default for Positions<P> {
    fn default() -> Self {
        Positions {
            tracker: AckTracker::new(),
            pending: VecDeque::new(),
        }
    }
}

impl<P> std::fmt::Debug for Positions<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Positions")
            .field("pending", &self.pending.len())
            .field("watermark", &self.tracker.watermark())
            .finish()
    }
}

impl<P> Positions<P> {
    /// Nothing registered yet, with a tracker of its own.
    pub fn new() -> Positions<P> {
        Positions::default()
    }

    /// Registers a batch ending at `position`; hand the reference to the
    /// engine with the batch.
    pub fn register(&mut self, position: P) -> AckRef {
        let ack = self.tracker.register();
        if let Some(seq) = ack.seq() {
            self.pending.push_back((seq, position));
        }
        ack
    }

    /// Takes the positions of the batches now done, oldest first.
    pub fn take_done(&mut self) -> Vec<P> {
        let done = self.done_count();
        self.pending.drain(..done).map(|(_, p)| p).collect()
    }

    /// Takes the positions of the batches now done and returns the newest
    /// (for a source that acknowledges cumulatively: an offset, a tag).
    pub fn take_last_done(&mut self) -> Option<P> {
        let done = self.done_count();
        self.pending.drain(..done).map(|(_, p)| p).last()
    }

    /// The newest done position, left in place (to decide whether an
    /// acknowledgement is worth sending yet).
    pub fn last_done(&self) -> Option<&P> {
        let done = self.done_count();
        done.checked_sub(1)
            .and_then(|i| self.pending.get(i))
            .map(|(_, p)| p)
    }

    /// Takes every position not yet given back as done (at shutdown, or
    /// when the connection they belong to is gone).
    pub fn drain_undone(&mut self) -> impl Iterator<Item = P> + '_ {
        self.pending.drain(..).map(|(_, p)| p)
    }

    /// Whether every registered batch was given back.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The tracker, to wait on ([`AckTracker::changed`]) or to ask whether
    /// a batch was abandoned ([`AckTracker::is_stuck`]).
    pub fn tracker(&self) -> &Arc<AckTracker> {
        &self.tracker
    }

    fn done_count(&self) -> usize {
        let watermark = self.tracker.watermark();
        self.pending
            .iter()
            .take_while(|(seq, _)| *seq < watermark)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_come_back_in_order_once_every_earlier_batch_is_done() {
        let mut positions = Positions::new();
        let a = positions.register(10);
        let b = positions.register(20);
        let c = positions.register(30);
        b.complete();
        assert_eq!(positions.last_done(), None, "a is not done");
        assert!(positions.take_done().is_empty());
        a.complete();
        assert_eq!(positions.last_done(), Some(&20));
        assert_eq!(positions.take_done(), vec![10, 20]);
        assert!(positions.take_done().is_empty(), "given back once");
        drop(c);
        assert!(positions.tracker().is_stuck());
        assert_eq!(positions.take_last_done(), None);
        assert_eq!(positions.drain_undone().collect::<Vec<_>>(), vec![30]);
        assert!(positions.is_empty());
    }

    #[test]
    fn take_last_done_gives_the_newest_and_drops_the_rest() {
        let mut positions: Positions<u64> = Positions::new();
        positions.register(1).complete();
        positions.register(2).complete();
        assert_eq!(positions.take_last_done(), Some(2));
        assert!(positions.is_empty());
    }
}
