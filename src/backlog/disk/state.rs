//! The state shared by the writer thread, the reader and `release`: which
//! segments exist, what in them is still owed, and the cheap counters the
//! scheduler reads.
//!
//! Invariants (all changed under the one `Index` lock):
//! - a segment's `live` counts its valid records neither released nor lost;
//!   the store's `records` counter is the sum of `live` over segments;
//! - a record id is in `in_flight` exactly while it is handed out; it is
//!   released only once, through [`Index::release`];
//! - `released` holds every released id at or above the oldest segment's
//!   first id, and no id that was not released.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::DiskBacklogConfig;
use super::ledger::RangeSet;
use crate::backlog::BacklogDepth;
use crate::filesystem::Filesystem;

/// One segment as the store tracks it.
#[derive(Debug, Clone, Default)]
pub struct SegMeta {
    /// Its path.
    pub path: PathBuf,
    /// The first id it holds (or would hold).
    pub first_id: u64,
    /// The durable end: frames before it may be read.
    pub end: u64,
    /// No more records will be written to it.
    pub sealed: bool,
    /// When it was created (epoch ms, from its header; 0 when unknown),
    /// which bounds the age of its oldest record from above.
    pub created_ms: i64,
    /// Valid records in it not yet released.
    pub live: u64,
    /// Their bytes on disk.
    pub live_bytes: u64,
    /// Of those, handed out now.
    pub in_flight: u64,
    /// Bumped each time the (active) segment is recycled in place on a full
    /// disk: a reader that opened an older generation must reopen it.
    pub generation: u64,
}

/// A handed-out record.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// Its segment.
    pub seq: u64,
    /// Its frame size.
    pub bytes: u64,
    /// When it was first stored (kept across retries, for `max_age`).
    pub appended_ms: i64,
}

/// The shared index.
#[derive(Debug, Default)]
pub struct Index {
    /// Segments by sequence number.
    pub segments: BTreeMap<u64, SegMeta>,
    /// Released ids (see the module invariants).
    pub released: RangeSet,
    /// Records handed out and not released, by id.
    pub in_flight: HashMap<u64, InFlight, IdHash>,
    /// Releases happened since the ledger was last saved.
    pub ledger_dirty: bool,
}

/// A hasher for record ids: they are unique integers chosen by the store,
/// not by anyone who could aim for collisions, so a multiply is enough (and
/// much cheaper than SipHash on the hand-out/release path).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ self.0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

/// Builds [`IdHasher`]s.
pub type IdHash = BuildHasherDefault<IdHasher>;

/// Why a stored record stops being owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Delivered (or retried under a new id).
    Released,
    /// Dropped to make room (`when_full = "drop_oldest"`).
    Dropped,
    /// Older than `max_age`.
    Expired,
    /// Damaged on disk.
    Corrupt,
}

/// The cheap counters behind `depth()`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records owed.
    pub records: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Handed out now.
    pub in_flight: AtomicU64,
    /// Dropped for room.
    pub dropped: AtomicU64,
    /// Expired.
    pub expired: AtomicU64,
    /// Found damaged.
    pub corrupt: AtomicU64,
    /// Torn tails cut off at recovery.
    pub cut: AtomicU64,
}

impl Counters {
    /// A snapshot.
    pub fn depth(&self) -> BacklogDepth {
        BacklogDepth {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            cut: self.cut.load(Ordering::Relaxed),
        }
    }

    fn sub(counter: &AtomicU64, n: u64) {
        // Never wraps, even if an accounting slip would ask it to.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

/// What the writer thread, the reader and the async methods share.
pub struct Shared {
    /// The backlog directory.
    pub dir: PathBuf,
    /// The knobs.
    pub config: DiskBacklogConfig,
    /// The index.
    pub index: Mutex<Index>,
    /// The counters.
    pub counters: Counters,
    /// Set once `close` ran: the store takes no more work.
    pub closed: AtomicBool,
    /// The writer's file operations (the real file system, or a test's).
    pub fs: Arc<dyn Filesystem>,
}

impl Index {
    /// Marks a record (not in flight, or in flight when `Released`) as no
    /// longer owed. Returns false if it was already gone.
    pub fn forget(
        &mut self,
        counters: &Counters,
        seq: u64,
        id: u64,
        bytes: u64,
        why: Gone,
    ) -> bool {
        if self.released.contains(id) {
            return false;
        }
        let was_in_flight = self.in_flight.remove(&id).is_some();
        self.released.insert(id);
        self.ledger_dirty = true;
        if let Some(seg) = self.segments.get_mut(&seq) {
            seg.live = seg.live.saturating_sub(1);
            seg.live_bytes = seg.live_bytes.saturating_sub(bytes);
            if was_in_flight {
                seg.in_flight = seg.in_flight.saturating_sub(1);
            }
        }
        if was_in_flight {
            Counters::sub(&counters.in_flight, 1);
        }
        Counters::sub(&counters.records, 1);
        Counters::sub(&counters.bytes, bytes);
        let lost = match why {
            Gone::Released => None,
            Gone::Dropped => Some(&counters.dropped),
            Gone::Expired => Some(&counters.expired),
            Gone::Corrupt => Some(&counters.corrupt),
        };
        if let Some(c) = lost {
            c.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Hands a record out.
    pub fn hand_out(&mut self, counters: &Counters, id: u64, flight: InFlight) {
        if let Some(seg) = self.segments.get_mut(&flight.seq) {
            seg.in_flight += 1;
        }
        self.in_flight.insert(id, flight);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a record read from `seq` is still owed and not handed out.
    /// A record below its segment's first id is a leftover of a segment
    /// recycled since it was read, never owed.
    pub fn owed(&self, seq: u64, id: u64) -> bool {
        self.segments.get(&seq).is_some_and(|s| id >= s.first_id)
            && !self.released.contains(id)
            && !self.in_flight.contains_key(&id)
    }

    /// Takes `n` records of `bytes` that vanished from `seq` without being
    /// read (damage found after recovery) off the books.
    pub fn lose(&mut self, counters: &Counters, seq: u64, n: u64, bytes: u64) {
        if n == 0 {
            return;
        }
        if let Some(seg) = self.segments.get_mut(&seq) {
            seg.live = seg.live.saturating_sub(n);
            seg.live_bytes = seg.live_bytes.saturating_sub(bytes);
        }
        Counters::sub(&counters.records, n);
        Counters::sub(&counters.bytes, bytes);
        counters.corrupt.fetch_add(n, Ordering::Relaxed);
    }
}
