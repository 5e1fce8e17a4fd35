//! An in-memory backlog store: bounded, fast, and gone when the process ends.
//!
//! For tests, benchmarks and pipelines that accept losing the backlog on a
//! crash. Invariants: holds at most `max_records` records (in flight
//! included) and `max_bytes` bytes of records waiting (in flight records are
//! in the sink's hands, bounded by the group's slots); never drops a record (a full store answers
//! [`BacklogError::Full`], and a record larger than `max_bytes`, which no
//! amount of draining makes room for, [`BacklogError::TooLarge`]); hands records out in order, passing over those
//! whose not-before time has not come.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{BacklogDepth, BacklogError, BacklogRecord, BacklogStore, RecordId, StoredRecord};

/// Limits of a [`MemoryBacklog`].
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    /// The most records held at once.
    pub max_records: u64,
    /// The most message bytes held at once.
    pub max_bytes: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_records: 10_000_000,
            max_bytes: 4 << 30,
        }
    }
}

/// The in-memory backlog store.
pub struct MemoryBacklog {
    limits: MemoryLimits,
    state: Mutex<State>,
    records: AtomicU64,
    in_flight: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
struct State {
    next_id: RecordId,
    queue: VecDeque<StoredRecord>,
    /// Records passed over for their not-before time, soonest first.
    deferred: BinaryHeap<Reverse<(i64, RecordId)>>,
    deferred_records: HashMap<RecordId, StoredRecord>,
}

impl MemoryBacklog {
    /// An empty store with these limits.
    pub fn new(limits: MemoryLimits) -> MemoryBacklog {
        MemoryBacklog {
            limits,
            state: Mutex::new(State::default()),
            records: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl Default for MemoryBacklog {
    fn default() -> Self {
        MemoryBacklog::new(MemoryLimits::default())
    }
}

fn size_of(record: &BacklogRecord) -> u64 {
    record.message.size_bytes() as u64
}

#[async_trait]
impl BacklogStore for MemoryBacklog {
    async fn append(&self, records: &[BacklogRecord]) -> Result<(), BacklogError> {
        if let Some((index, size)) = records
            .iter()
            .map(size_of)
            .enumerate()
            .find(|&(_, size)| size > self.limits.max_bytes)
        {
            return Err(BacklogError::TooLarge {
                index,
                reason: format!(
                    "a record of {size} bytes is larger than the whole memory backlog ({} bytes)",
                    self.limits.max_bytes
                ),
            });
        }
        let mut state = self.state.lock();
        let (count_before, bytes_before) = (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        let (mut count, mut bytes) = (count_before, bytes_before);
        let mut result = Ok(());
        for (stored, record) in records.iter().enumerate() {
            let size = size_of(record);
            if count + 1 > self.limits.max_records || bytes + size > self.limits.max_bytes {
                result = Err(BacklogError::Full { stored });
                break;
            }
            let id = state.next_id;
            state.next_id += 1;
            state.queue.push_back(StoredRecord {
                id,
                record: record.clone(),
            });
            count += 1;
            bytes += size;
        }
        // Deltas, not stores: take_ready and retry adjust the counters
        // outside the lock.
        self.records
            .fetch_add(count - count_before, Ordering::Relaxed);
        self.bytes
            .fetch_add(bytes - bytes_before, Ordering::Relaxed);
        result
    }

    async fn retry(&self, records: &[StoredRecord]) -> Result<(), BacklogError> {
        let mut state = self.state.lock();
        for r in records {
            state.deferred.push(Reverse((r.record.not_before_ms, r.id)));
            state.deferred_records.insert(r.id, r.clone());
        }
        drop(state);
        let bytes: u64 = records.iter().map(|r| size_of(&r.record)).sum();
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.in_flight
            .fetch_sub(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn take_ready(&self, max: usize, now_ms: i64) -> Result<Vec<StoredRecord>, BacklogError> {
        let mut state = self.state.lock();
        let mut out = Vec::with_capacity(max.min(state.queue.len() + state.deferred.len()));
        while out.len() < max {
            match state.deferred.peek() {
                Some(Reverse((not_before, id))) if *not_before <= now_ms => {
                    let id = *id;
                    state.deferred.pop();
                    if let Some(r) = state.deferred_records.remove(&id) {
                        out.push(r);
                    }
                }
                _ => break,
            }
        }
        while out.len() < max {
            let Some(r) = state.queue.pop_front() else {
                break;
            };
            if r.record.not_before_ms > now_ms {
                state.deferred.push(Reverse((r.record.not_before_ms, r.id)));
                state.deferred_records.insert(r.id, r);
            } else {
                out.push(r);
            }
        }
        drop(state);
        let bytes: u64 = out.iter().map(|r| size_of(&r.record)).sum();
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.in_flight
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    async fn release(&self, ids: &[RecordId]) -> Result<(), BacklogError> {
        // The engine releases each handed-out record exactly once.
        let n = ids.len() as u64;
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
        self.records.fetch_sub(n, Ordering::Relaxed);
        Ok(())
    }

    /// A crash loses what this store holds.
    fn survives_crash(&self) -> bool {
        false
    }

    fn depth(&self) -> BacklogDepth {
        BacklogDepth {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ..BacklogDepth::default()
        }
    }
}

// The store contract is tested for every store, this one included, by
// tests/backlog_conformance.rs.
