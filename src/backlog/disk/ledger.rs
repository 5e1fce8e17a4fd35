//! The ledger: which records are released, and the next id to assign.
//!
//! Releases come back out of order (deliveries run in parallel, retries wait
//! for their backoff), so the ledger keeps the released ids as ranges. Only
//! ids inside live segments matter; ranges below the oldest segment are
//! pruned when segments are deleted, so the ledger stays as small as the
//! number of gaps (records handed out or deferred, not yet released).
//!
//! Invariants:
//! - the ledger never claims an id is released that was not: a lost, stale
//!   or damaged ledger only makes released records come back (duplicates);
//! - `next_id` in a saved ledger is above every id it names, so a restart
//!   never reuses an id the ledger calls released;
//! - `head` is the first id of the oldest segment when the ledger was saved:
//!   ids from `head` to `next_id` were all assigned, so recovery can count
//!   exactly the records that went missing (a deleted or truncated segment);
//! - the file is replaced atomically (write a temporary file, fsync, rename,
//!   fsync the directory), is readable by its owner only, and carries a
//!   CRC32C; a ledger that fails its check is ignored and reported.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::filesystem::{Filesystem, replace_durably};

/// The ledger's file name in a backlog directory.
pub const LEDGER_FILE: &str = "ledger";
const LEDGER_MAGIC: [u8; 8] = *b"LNWYLDG\0";
/// The version written; version 1 (no `head`) is still read.
const LEDGER_VERSION: u8 = 2;

/// A set of ids stored as disjoint half-open ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: u64) -> bool {
        self.ranges
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &end)| id < end)
    }

    /// Adds one id.
    pub fn insert(&mut self, id: u64) {
        self.insert_range(id, id + 1);
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                return;
            }
            start = s;
        }
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Forgets every id below `floor`.
    pub fn prune_below(&mut self, floor: u64) {
        let below: Vec<(u64, u64)> = self.ranges.range(..floor).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in below {
            self.ranges.remove(&s);
            if e > floor {
                self.ranges.insert(floor, e);
            }
        }
    }

    /// How many ranges (the ledger's size).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// The ranges of `[start, end)` that the set does not hold, in order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        // A range that begins below `start` may still cover it.
        let first = self.ranges.range(..=start).next_back().map(|(&s, _)| s);
        for (s, e) in self.ranges.range(first.unwrap_or(start)..end) {
            if *s > at {
                out.push((at, (*s).min(end)));
            }
            at = at.max(*e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end));
        }
        out
    }
}

/// What a ledger file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The next id to assign (above every id ever assigned when saved).
    pub next_id: u64,
    /// The first id of the oldest segment when saved (`None` in a version 1
    /// ledger): every id from here to `next_id` was assigned.
    pub head: Option<u64>,
    /// Released ids.
    pub released: RangeSet,
}

/// Why a ledger file was not used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// There is no ledger file.
    #[error("no ledger file")]
    Missing,
    /// The file could not be read.
    #[error("cannot read the ledger: {0}")]
    Io(#[from] io::Error),
    /// The file is not a valid ledger (damaged, truncated, other version).
    #[error("the ledger is damaged: {0}")]
    Damaged(&'static str),
}

impl Ledger {
    /// The size of a ledger holding `ranges` released ranges, in bytes.
    pub fn encoded_len(ranges: usize) -> u64 {
        44 + 16 * ranges as u64
    }

    /// The ledger's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Ledger::encoded_len(self.released.len()) as usize);
        b.extend_from_slice(&LEDGER_MAGIC);
        b.push(LEDGER_VERSION);
        b.extend_from_slice(&[0u8; 7]);
        b.extend_from_slice(&self.next_id.to_le_bytes());
        b.extend_from_slice(&self.head.unwrap_or(self.next_id).to_le_bytes());
        b.extend_from_slice(&(self.released.len() as u64).to_le_bytes());
        for (s, e) in self.released.iter() {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads ledger bytes, checking everything.
    pub fn decode(b: &[u8]) -> Result<Ledger, LedgerError> {
        if b.len() < 36 {
            return Err(LedgerError::Damaged("too short"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(LedgerError::Damaged("checksum mismatch"));
        }
        if body[0..8] != LEDGER_MAGIC {
            return Err(LedgerError::Damaged("bad magic"));
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let next_id = u64_at(16);
        // Version 2 put `head` before the range count.
        let (head, ranges_at) = match body[8] {
            1 => (None, 32),
            2 if body.len() >= 40 => (Some(u64_at(24)), 40),
            2 => return Err(LedgerError::Damaged("too short")),
            _ => return Err(LedgerError::Damaged("unsupported version")),
        };
        if head.is_some_and(|h| h > next_id) {
            return Err(LedgerError::Damaged("head is above next_id"));
        }
        let n = u64_at(ranges_at - 8);
        if (body.len() - ranges_at) as u64 != n.saturating_mul(16) {
            return Err(LedgerError::Damaged("range count does not match its size"));
        }
        let mut released = RangeSet::default();
        for i in 0..n as usize {
            let (s, e) = (u64_at(ranges_at + i * 16), u64_at(ranges_at + 8 + i * 16));
            if e > next_id {
                return Err(LedgerError::Damaged("a released range is above next_id"));
            }
            released.insert_range(s, e);
        }
        Ok(Ledger {
            next_id,
            head,
            released,
        })
    }

    /// Loads the ledger of `dir`, read through `fs` (a read that fails is
    /// [`LedgerError::Io`]: the ledger is then rebuilt from the segments,
    /// as a damaged one is).
    pub fn load(fs: &dyn Filesystem, dir: &Path) -> Result<Ledger, LedgerError> {
        match fs.read(&dir.join(LEDGER_FILE)) {
            Ok(b) => Ledger::decode(&b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LedgerError::Missing),
            Err(e) => Err(LedgerError::Io(e)),
        }
    }

    /// Replaces the ledger of `dir` atomically and durably: once this
    /// returns, a crash brings back this ledger or a later one.
    /// Its file operations go through `fs`, like the segments', so that a
    /// full disk is met (and tested) the same way.
    pub fn save(&self, fs: &dyn Filesystem, dir: &Path) -> io::Result<()> {
        replace_durably(fs, &dir.join(LEDGER_FILE), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_prune() {
        let mut s = RangeSet::default();
        for id in [5, 7, 6, 1, 2, 10] {
            s.insert(id);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), [(1, 3), (5, 8), (10, 11)]);
        assert!(s.contains(6) && !s.contains(8) && !s.contains(0) && s.contains(10));
        s.insert_range(2, 6);
        assert_eq!(s.iter().collect::<Vec<_>>(), [(1, 8), (10, 11)]);
        s.insert_range(3, 4);
        assert_eq!(s.len(), 2);
        s.prune_below(4);
        assert_eq!(s.iter().collect::<Vec<_>>(), [(4, 8), (10, 11)]);
        assert_eq!(s.gaps(0, 12), [(0, 4), (8, 10), (11, 12)]);
        assert_eq!(s.gaps(5, 7), []);
        assert_eq!(s.gaps(6, 11), [(8, 10)]);
        s.prune_below(100);
        assert_eq!(s.len(), 0);
        assert_eq!(s.gaps(3, 5), [(3, 5)]);
    }

    #[test]
    fn a_ledger_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Ledger::load(&crate::backlog::disk::RealFilesystem, dir.path()),
            Err(LedgerError::Missing)
        ));
        let mut l = Ledger {
            next_id: 50,
            head: Some(2),
            ..Ledger::default()
        };
        l.released.insert_range(3, 9);
        l.released.insert(20);
        l.save(&crate::backlog::disk::RealFilesystem, dir.path())
            .unwrap();
        assert_eq!(
            Ledger::load(&crate::backlog::disk::RealFilesystem, dir.path()).unwrap(),
            l
        );
        let mut bytes = l.encode();
        bytes[33] ^= 1;
        assert!(matches!(
            Ledger::decode(&bytes),
            Err(LedgerError::Damaged(_))
        ));
        assert!(Ledger::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn a_version_1_ledger_still_loads_without_a_head() {
        let mut b = Vec::new();
        b.extend_from_slice(&LEDGER_MAGIC);
        b.push(1);
        b.extend_from_slice(&[0u8; 7]);
        b.extend_from_slice(&9u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let l = Ledger::decode(&b).unwrap();
        assert_eq!((l.next_id, l.head), (9, None));
        assert!(l.released.contains(3) && l.released.contains(4) && !l.released.contains(5));
    }
}
