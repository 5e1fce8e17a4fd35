//! Which offset of each partition is done: the contiguous watermark over
//! the batches read from it, as the engine settles them.
//!
//! Invariants: a partition's done offset is the offset after the last
//! record of the last batch below its tracker's watermark, so it never
//! passes an undone record; it never moves back; a revoked partition's
//! state is dropped (what its late acks settle is never committed by this
//! process), and a partition assigned again starts afresh from what the
//! group committed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ack::{AckRef, AckTracker};

type PartitionKey = (String, i32);

/// One partition's batches and how far they are done.
struct Partition {
    tracker: Arc<AckTracker>,
    /// Each registered batch's sequence number and the offset after it.
    ends: VecDeque<(u64, i64)>,
    /// The offset after the last done record (what to commit), if any.
    done: Option<i64>,
    /// The offset last committed by this process.
    committed: Option<i64>,
    /// The first offset this process read (where its acknowledged count
    /// starts).
    start: i64,
}

impl Partition {
    fn new(start: i64) -> Partition {
        Partition {
            tracker: AckTracker::new(),
            ends: VecDeque::new(),
            done: None,
            committed: None,
            start,
        }
    }

    /// Moves `done` over the batches below the watermark.
    fn settle(&mut self) {
        let watermark = self.tracker.watermark();
        while self.ends.front().is_some_and(|(seq, _)| *seq < watermark) {
            if let Some((_, end)) = self.ends.pop_front() {
                self.done = Some(self.done.map_or(end, |d| d.max(end)));
            }
        }
    }
}

/// Done offsets of every partition this process consumes.
#[derive(Default)]
pub(super) struct Offsets {
    partitions: Mutex<HashMap<PartitionKey, Partition>>,
}

impl Offsets {
    /// Registers a batch of `topic[partition]` from `first_offset` to
    /// `last_offset`, and returns the reference the engine settles.
    pub fn register(
        &self,
        topic: &str,
        partition: i32,
        first_offset: i64,
        last_offset: i64,
    ) -> AckRef {
        let mut partitions = self.partitions.lock();
        let p = partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Partition::new(first_offset));
        let ack = p.tracker.register();
        if let Some(seq) = ack.seq() {
            p.ends.push_back((seq, last_offset + 1));
        }
        ack
    }

    /// The done offsets that moved past what was committed: what to commit
    /// now. Call [`Offsets::committed`] once the commit went through.
    pub fn due(&self) -> Vec<(String, i32, i64)> {
        let mut partitions = self.partitions.lock();
        partitions
            .iter_mut()
            .filter_map(|((topic, partition), p)| {
                p.settle();
                let done = p.done?;
                (p.committed < Some(done)).then(|| (topic.clone(), *partition, done))
            })
            .collect()
    }

    /// Records a commit that went through; returns by how many records
    /// the commits moved (the acknowledged count).
    pub fn committed(&self, offsets: &[(String, i32, i64)]) -> u64 {
        let mut partitions = self.partitions.lock();
        let mut advanced = 0;
        for (topic, partition, offset) in offsets {
            if let Some(p) = partitions.get_mut(&(topic.clone(), *partition)) {
                let from = p.committed.unwrap_or(p.start);
                advanced += u64::try_from(offset - from).unwrap_or(0);
                p.committed = Some(p.committed.map_or(*offset, |c| c.max(*offset)));
            }
        }
        advanced
    }

    /// Batches registered and not yet done, over every partition.
    pub fn outstanding(&self) -> usize {
        self.partitions
            .lock()
            .values()
            .map(|p| p.tracker.outstanding())
            .sum()
    }

    /// Drops the state of partitions going away, returning the done offsets
    /// among them that are not committed yet (to commit before they go).
    pub fn revoke(&self, going: &[(String, i32)]) -> Vec<(String, i32, i64)> {
        let mut partitions = self.partitions.lock();
        let mut due = Vec::new();
        for key in going {
            if let Some(mut p) = partitions.remove(key) {
                p.settle();
                if let Some(done) = p.done.filter(|d| p.committed < Some(*d)) {
                    due.push((key.0.clone(), key.1, done));
                }
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_done_offset_never_passes_an_undone_batch() {
        let offsets = Offsets::default();
        let a = offsets.register("t", 0, 0, 9); // offsets 0..=9
        let b = offsets.register("t", 0, 10, 19); // 10..=19
        let c = offsets.register("t", 1, 0, 4);
        b.complete();
        assert!(offsets.due().is_empty(), "b is done but a is not");
        a.complete();
        assert_eq!(offsets.due(), [("t".to_string(), 0, 20)]);
        assert_eq!(offsets.committed(&[("t".to_string(), 0, 20)]), 20);
        assert!(offsets.due().is_empty(), "nothing new to commit");
        c.complete();
        assert_eq!(offsets.due(), [("t".to_string(), 1, 5)]);
    }

    #[test]
    fn a_dropped_reference_holds_the_partition_back() {
        let offsets = Offsets::default();
        let a = offsets.register("t", 0, 0, 9);
        let b = offsets.register("t", 0, 10, 19);
        drop(a); // abandoned: never done
        b.complete();
        assert!(offsets.due().is_empty());
        assert_eq!(
            offsets.outstanding(),
            2,
            "the abandoned batch holds the window"
        );
    }

    #[test]
    fn a_revoked_partition_hands_back_its_uncommitted_done_offset_and_forgets() {
        let offsets = Offsets::default();
        offsets.register("t", 0, 0, 9).complete();
        let late = offsets.register("t", 0, 10, 19);
        let due = offsets.revoke(&[("t".to_string(), 0)]);
        assert_eq!(due, [("t".to_string(), 0, 10)]);
        late.complete();
        assert!(
            offsets.due().is_empty(),
            "a revoked partition commits nothing more"
        );
        // Assigned again: it starts afresh.
        offsets.register("t", 0, 20, 29).complete();
        assert_eq!(offsets.due(), [("t".to_string(), 0, 30)]);
    }
}
