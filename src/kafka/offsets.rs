//! Which offset of each partition is done: the contiguous watermark over
//! the batches read from it, as the engine settles them. A partition split
//! for live-first catch-up has two cursors: the catch-up range
//! `[from, to)` read by the catch-up reader, then the live range from `to`
//! read by the group consumer; its done offset walks the catch-up range
//! first and enters the live range only once the whole catch-up range is
//! done.
//!
//! Invariants: a partition's done offset is the offset after the last
//! record of the last batch below its cursor's watermark, so it never
//! passes an undone record; while a catch-up range is not wholly read and
//! done, the done offset stays inside it (the live range's progress waits);
//! it never moves back; a revoked partition's state is dropped (what its
//! late acks settle is never committed by this process, a live batch read
//! before the revoke and registered after it is refused until the
//! partition is assigned again, and a catch-up batch of an earlier
//! assignment is refused by its epoch), and a partition assigned again
//! starts afresh from what the group committed.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

use crate::ack::AckRef;
use crate::source::Positions;

type PartitionKey = (String, i32);

/// One cursor's batches and how far they are done.
struct Cursor {
    /// Each registered batch's offset after its last record.
    ends: Positions<i64>,
    /// The offset after the last registered record, if any.
    read: Option<i64>,
    /// The offset after the last done record, if any.
    done: Option<i64>,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor {
            ends: Positions::new(),
            read: None,
            done: None,
        }
    }

    fn register(&mut self, last_offset: i64) -> AckRef {
        self.read = Some(last_offset + 1);
        self.ends.register(last_offset + 1)
    }

    /// Moves `done` over the batches below the watermark.
    fn settle(&mut self) {
        if let Some(end) = self.ends.take_last_done() {
            self.done = Some(self.done.map_or(end, |d| d.max(end)));
        }
    }

    fn outstanding(&self) -> usize {
        self.ends.tracker().outstanding()
    }
}

/// A split partition's catch-up range, `[from, to)`.
struct CatchUp {
    cursor: Cursor,
    to: i64,
    epoch: u64,
    /// The reader has read every record below `to`.
    read_all: bool,
}

impl CatchUp {
    /// Whether every record of the range is read and done.
    fn complete(&self) -> bool {
        self.read_all && self.cursor.outstanding() == 0
    }
}

/// One partition's cursors and commits.
struct Partition {
    live: Cursor,
    catch_up: Option<CatchUp>,
    /// The offset last committed by this process.
    committed: Option<i64>,
    /// The first offset this process read (where its acknowledged count
    /// starts).
    start: i64,
}

impl Partition {
    fn new(start: i64) -> Partition {
        Partition {
            live: Cursor::new(),
            catch_up: None,
            committed: None,
            start,
        }
    }

    /// The offset to commit: through the catch-up range first, then the
    /// live range.
    fn done(&mut self) -> Option<i64> {
        self.live.settle();
        let Some(c) = &mut self.catch_up else {
            return self.live.done;
        };
        c.cursor.settle();
        if !c.complete() {
            return c.cursor.done;
        }
        let to = c.to;
        // Wholly done: the live range takes over from where it starts.
        self.catch_up = None;
        self.live.done = Some(self.live.done.map_or(to, |d| d.max(to)));
        self.live.done
    }
}

/// A catch-up range the reader has to read: `topic[partition]` from
/// `from` up to (not including) `to`, under `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CatchUpPlan {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    pub epoch: u64,
}

/// Done offsets of every partition this process consumes.
#[derive(Default)]
pub(super) struct Offsets {
    partitions: Mutex<HashMap<PartitionKey, Partition>>,
    /// Partitions revoked and not assigned again: a batch of theirs read
    /// before the revoke must not start a new cursor (taken under the
    /// `partitions` lock).
    revoked: Mutex<HashSet<PartitionKey>>,
    /// The catch-up ranges not yet wholly read, for the reader.
    plans: Mutex<Vec<CatchUpPlan>>,
    /// Notified when `plans` changes (a split, a revoke).
    pub plans_changed: tokio::sync::Notify,
    epochs: std::sync::atomic::AtomicU64,
}

impl Offsets {
    /// Registers a batch of `topic[partition]` from `first_offset` to
    /// `last_offset` read by the live (group) cursor, and returns the
    /// reference the engine settles; `None` when the partition was revoked
    /// since (the client reads a batch, then runs the revoke inside the
    /// same poll): the batch must not be submitted, its new owner reads it
    /// from the group's commit.
    pub fn register(
        &self,
        topic: &str,
        partition: i32,
        first_offset: i64,
        last_offset: i64,
    ) -> Option<AckRef> {
        let mut partitions = self.partitions.lock();
        let key = (topic.to_string(), partition);
        if self.revoked.lock().contains(&key) {
            return None;
        }
        Some(
            partitions
                .entry(key)
                .or_insert_with(|| Partition::new(first_offset))
                .live
                .register(last_offset),
        )
    }

    /// Partitions assigned to this process (again): their batches are
    /// taken from now on.
    pub fn assign(&self, coming: &[(String, i32)]) {
        let _partitions = self.partitions.lock();
        let mut revoked = self.revoked.lock();
        for key in coming {
            revoked.remove(key);
        }
    }

    /// Splits `topic[partition]`: its records `[from, to)` are read by the
    /// catch-up reader, the group cursor starts at `to`. Replaces whatever
    /// this process held of the partition.
    pub fn split(&self, topic: &str, partition: i32, from: i64, to: i64) {
        let epoch = self
            .epochs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut p = Partition::new(from);
        p.catch_up = Some(CatchUp {
            cursor: Cursor::new(),
            to,
            epoch,
            read_all: false,
        });
        self.partitions
            .lock()
            .insert((topic.to_string(), partition), p);
        let mut plans = self.plans.lock();
        plans.retain(|c| (c.topic.as_str(), c.partition) != (topic, partition));
        plans.push(CatchUpPlan {
            topic: topic.to_string(),
            partition,
            from,
            to,
            epoch,
        });
        drop(plans);
        self.plans_changed.notify_waiters();
    }

    /// The catch-up ranges still to read.
    pub fn plans(&self) -> Vec<CatchUpPlan> {
        self.plans.lock().clone()
    }

    /// Registers a batch the catch-up reader read under `epoch`; `None`
    /// when that split is gone (revoked, or split again): the batch must
    /// not be submitted.
    pub fn register_catch_up(&self, plan: &CatchUpPlan, last_offset: i64) -> Option<AckRef> {
        let mut partitions = self.partitions.lock();
        let p = partitions.get_mut(&(plan.topic.clone(), plan.partition))?;
        let c = p.catch_up.as_mut().filter(|c| c.epoch == plan.epoch)?;
        Some(c.cursor.register(last_offset))
    }

    /// The reader has read every record of `plan`'s range.
    pub fn read_all(&self, plan: &CatchUpPlan) {
        if let Some(c) = self
            .partitions
            .lock()
            .get_mut(&(plan.topic.clone(), plan.partition))
            .and_then(|p| p.catch_up.as_mut())
            .filter(|c| c.epoch == plan.epoch)
        {
            c.read_all = true;
        }
        self.plans.lock().retain(|c| c.epoch != plan.epoch);
        self.plans_changed.notify_waiters();
    }

    /// Records of the catch-up ranges not yet submitted, roughly (for the
    /// lag shown on the status page).
    pub fn catch_up_left(&self) -> u64 {
        let partitions = self.partitions.lock();
        self.plans
            .lock()
            .iter()
            .map(|plan| {
                let read = partitions
                    .get(&(plan.topic.clone(), plan.partition))
                    .and_then(|p| p.catch_up.as_ref())
                    .and_then(|c| c.cursor.read)
                    .unwrap_or(plan.from);
                u64::try_from(plan.to - read.max(plan.from)).unwrap_or(0)
            })
            .sum()
    }

    /// Whether a catch-up range is still being read.
    pub fn catching_up(&self) -> bool {
        !self.plans.lock().is_empty()
    }

    /// The done offsets that moved past what was committed: what to commit
    /// now. Call [`Offsets::committed`] once the commit went through.
    pub fn due(&self) -> Vec<(String, i32, i64)> {
        let mut partitions = self.partitions.lock();
        partitions
            .iter_mut()
            .filter_map(|((topic, partition), p)| {
                let done = p.done()?;
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

    /// Batches registered and not yet done, over every partition and
    /// cursor.
    pub fn outstanding(&self) -> usize {
        self.partitions
            .lock()
            .values()
            .map(|p| {
                p.live.outstanding() + p.catch_up.as_ref().map_or(0, |c| c.cursor.outstanding())
            })
            .sum()
    }

    /// Drops the state of partitions going away, returning the done offsets
    /// among them that are not committed yet (to commit before they go).
    /// Their catch-up ranges are dropped too: the reader stops reading them.
    pub fn revoke(&self, going: &[(String, i32)]) -> Vec<(String, i32, i64)> {
        let mut partitions = self.partitions.lock();
        self.revoked.lock().extend(going.iter().cloned());
        let mut due = Vec::new();
        for key in going {
            if let Some(mut p) = partitions.remove(key)
                && let Some(done) = p.done().filter(|d| p.committed < Some(*d))
            {
                due.push((key.0.clone(), key.1, done));
            }
        }
        drop(partitions);
        let mut plans = self.plans.lock();
        let before = plans.len();
        plans.retain(|c| !going.contains(&(c.topic.clone(), c.partition)));
        let changed = plans.len() != before;
        drop(plans);
        if changed {
            self.plans_changed.notify_waiters();
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
        let a = offsets.register("t", 0, 0, 9).unwrap(); // offsets 0..=9
        let b = offsets.register("t", 0, 10, 19).unwrap(); // 10..=19
        let c = offsets.register("t", 1, 0, 4).unwrap();
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
        let a = offsets.register("t", 0, 0, 9).unwrap();
        let b = offsets.register("t", 0, 10, 19).unwrap();
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
        offsets.register("t", 0, 0, 9).unwrap().complete();
        let late = offsets.register("t", 0, 10, 19).unwrap();
        let due = offsets.revoke(&[("t".to_string(), 0)]);
        assert_eq!(due, [("t".to_string(), 0, 10)]);
        late.complete();
        assert!(
            offsets.due().is_empty(),
            "a revoked partition commits nothing more"
        );
        // Assigned again: it starts afresh.
        offsets.assign(&[("t".to_string(), 0)]);
        offsets.register("t", 0, 20, 29).unwrap().complete();
        assert_eq!(offsets.due(), [("t".to_string(), 0, 30)]);
    }

    /// The client runs a revoke inside the poll that read a batch: that
    /// batch, registered after the revoke, must not start a cursor whose
    /// done offset passes the batches before it, still undone, once the
    /// partition comes back and is read again from the group's commit.
    #[test]
    fn a_batch_read_before_a_revoke_is_refused_until_the_partition_is_assigned_again() {
        let offsets = Offsets::default();
        let _in_flight = offsets.register("t", 0, 0, 9).unwrap();
        assert!(offsets.revoke(&[("t".to_string(), 0)]).is_empty());
        assert!(offsets.register("t", 0, 10, 19).is_none());
        offsets.assign(&[("t".to_string(), 0)]);
        let again = offsets.register("t", 0, 0, 9).unwrap();
        assert!(offsets.due().is_empty(), "nothing is done yet");
        again.complete();
        assert_eq!(offsets.due(), [("t".to_string(), 0, 10)]);
    }

    #[test]
    fn a_split_partition_commits_through_catch_up_before_live() {
        let offsets = Offsets::default();
        offsets.split("t", 0, 100, 200);
        let plan = offsets.plans().pop().unwrap();
        assert_eq!((plan.from, plan.to), (100, 200));
        // Live records beyond the split are done first: nothing to commit.
        offsets.register("t", 0, 200, 209).unwrap().complete();
        assert!(offsets.due().is_empty(), "the catch-up range is not done");
        let a = offsets.register_catch_up(&plan, 149).unwrap(); // 100..=149
        let b = offsets.register_catch_up(&plan, 199).unwrap(); // 150..=199
        b.complete();
        assert!(offsets.due().is_empty(), "a is not done");
        a.complete();
        assert_eq!(
            offsets.due(),
            [("t".to_string(), 0, 200)],
            "not read to its end yet: the live range waits"
        );
        offsets.read_all(&plan);
        assert!(!offsets.catching_up());
        assert_eq!(offsets.due(), [("t".to_string(), 0, 210)]);
        assert_eq!(offsets.committed(&[("t".to_string(), 0, 210)]), 110);
    }

    #[test]
    fn a_catch_up_range_read_to_its_end_with_nothing_left_commits_its_end() {
        // A compacted range: its last record lies before `to`.
        let offsets = Offsets::default();
        offsets.split("t", 0, 0, 50);
        let plan = offsets.plans().pop().unwrap();
        offsets.register_catch_up(&plan, 40).unwrap().complete();
        assert_eq!(offsets.due(), [("t".to_string(), 0, 41)]);
        offsets.read_all(&plan);
        assert_eq!(offsets.due(), [("t".to_string(), 0, 50)]);
    }

    #[test]
    fn a_revoke_mid_catch_up_commits_only_the_done_part_and_refuses_late_batches() {
        let offsets = Offsets::default();
        offsets.split("t", 0, 0, 1000);
        let plan = offsets.plans().pop().unwrap();
        offsets.register_catch_up(&plan, 99).unwrap().complete();
        let late = offsets.register_catch_up(&plan, 199).unwrap();
        offsets.register("t", 0, 1000, 1099).unwrap().complete();
        let due = offsets.revoke(&[("t".to_string(), 0)]);
        assert_eq!(
            due,
            [("t".to_string(), 0, 100)],
            "never past the undone batch"
        );
        assert!(!offsets.catching_up(), "the reader stops reading it");
        late.complete();
        assert!(offsets.due().is_empty());
        // Assigned again and split again: the old epoch's batches are refused.
        offsets.split("t", 0, 100, 1100);
        assert!(offsets.register_catch_up(&plan, 299).is_none());
        let again = offsets.plans().pop().unwrap();
        assert!(offsets.register_catch_up(&again, 299).is_some());
    }
}
