//! The reader: hands records out from the head of the log, in order,
//! passing over those whose not-before time has not come.
//!
//! Invariants:
//! - it reads only what the writer made durable (each segment's `end`);
//! - memory is bounded: one read chunk, plus at most `max_deferred` small
//!   location entries for passed-over records (a record itself is re-read
//!   from disk when its time comes); when that many are waiting, reading
//!   pauses until one is due, so a retry storm slows the backlog instead of
//!   growing memory;
//! - a record is handed out only if, under the index lock, it is still owed
//!   and not already out (a concurrent drop, expiry or release wins);
//! - it reads through the store's [`crate::filesystem::Filesystem`]; a read
//!   that fails is an error naming the segment file, and skips nothing: the
//!   next take reads the same records again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use super::format::{self, BodyView, FrameHeader};
use super::segment::{SegmentReader, Step, segment_path};
use super::state::{Gone, IdHash, InFlight, Shared};
use super::writer::Loc;
use crate::backlog::{BacklogError, StoredRecord};
use crate::filesystem::{SegmentFile, read_at_most};

/// A passed-over record: where it is and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Deferred {
    not_before_ms: i64,
    id: u64,
    seq: u64,
    offset: u64,
    total: u64,
}

/// The reader's state (one per store, behind an async mutex).
#[derive(Default)]
pub struct Reader {
    cur: Option<(u64, SegmentReader)>,
    /// The generation of the segment `cur` reads (see `SegMeta::generation`).
    cur_generation: u64,
    /// The next segment to read is the first at or after this one.
    next_seq: u64,
    deferred: BinaryHeap<Reverse<Deferred>>,
    /// Retried records already in `deferred` that the reader has not reached.
    indexed: HashSet<u64, IdHash>,
    /// The highest id read sequentially.
    last_read_id: u64,
    file_cache: Option<(u64, Box<dyn SegmentFile>)>,
}

impl Reader {
    /// Remembers retried copies (just stored at `locs`) so they come back
    /// when due without waiting for the reader to reach the tail.
    pub fn index_retries(&mut self, shared: &Shared, locs: &[Loc]) {
        for l in locs {
            if l.id > self.last_read_id && self.deferred.len() < shared.config.max_deferred {
                self.indexed.insert(l.id);
                self.deferred.push(Reverse(Deferred {
                    not_before_ms: l.not_before_ms,
                    id: l.id,
                    seq: l.seq,
                    offset: l.offset,
                    total: l.total,
                }));
            }
        }
    }

    /// Hands out up to `max` records due at `now_ms`.
    ///
    /// A read that fails after some records were handed out returns those
    /// (they are in flight now: dropping them would strand them until a
    /// restart); the failed read is met again, and reported, by the next
    /// take.
    pub fn take_ready(
        &mut self,
        shared: &Shared,
        max: usize,
        now_ms: i64,
    ) -> Result<Vec<StoredRecord>, BacklogError> {
        let mut out = Vec::new();
        match self.take_into(shared, max, now_ms, &mut out) {
            Ok(()) => Ok(out),
            Err(e) if !out.is_empty() => {
                tracing::debug!(error = %e, handed = out.len(), "a backlog read failed after records were handed out; the next take tries it again");
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    /// [`Reader::take_ready`]'s work: adds to `out` what it hands out.
    fn take_into(
        &mut self,
        shared: &Shared,
        max: usize,
        now_ms: i64,
        out: &mut Vec<StoredRecord>,
    ) -> Result<(), BacklogError> {
        while out.len() < max {
            match self.deferred.peek() {
                Some(Reverse(d)) if d.not_before_ms <= now_ms => {
                    let d = *d;
                    self.deferred.pop();
                    match self.reread(shared, d, now_ms) {
                        Ok(Some(r)) => out.push(r),
                        Ok(None) => {}
                        // Still owed: the next take reads it again, as it
                        // does a record the reader meets in order.
                        Err(e) => {
                            self.deferred.push(Reverse(d));
                            return Err(e);
                        }
                    }
                }
                _ => break,
            }
        }
        while out.len() < max {
            if self.cur.is_none() && !self.open_next(shared)? {
                break;
            }
            let Some((seq, reader)) = self.cur.as_mut() else {
                break;
            };
            let seq = *seq;
            let step = reader.next_step().map_err(|source| BacklogError::Io {
                action: format!("reading {}", segment_path(&shared.dir, seq).display()),
                source,
            })?;
            match step {
                Step::Record { id, offset, total } => {
                    self.last_read_id = self.last_read_id.max(id);
                    if self.indexed.remove(&id) {
                        continue;
                    }
                    let outcome = decide(
                        shared,
                        reader.body(),
                        seq,
                        id,
                        total,
                        now_ms,
                        self.deferred.len(),
                    );
                    match outcome {
                        Decision::Hand(r) => out.push(r),
                        Decision::Skip => {}
                        Decision::Defer(not_before_ms) => self.deferred.push(Reverse(Deferred {
                            not_before_ms,
                            id,
                            seq,
                            offset,
                            total,
                        })),
                        Decision::Pause => {
                            reader.seek(offset, id - 1);
                            break;
                        }
                    }
                }
                Step::Corrupt { offset, len } => {
                    tracing::warn!(
                        segment = seq,
                        offset,
                        len,
                        "skipping a damaged backlog record"
                    );
                }
                Step::Tail { offset, len, .. } => {
                    tracing::warn!(
                        segment = seq,
                        offset,
                        len,
                        "skipping a damaged backlog segment tail"
                    );
                }
                Step::End => {
                    if !self.at_end(shared, seq)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the next segment to read; false if there is none.
    fn open_next(&mut self, shared: &Shared) -> Result<bool, BacklogError> {
        let (seq, path, end, first_id) = {
            let idx = shared.index.lock();
            match idx.segments.range(self.next_seq..).next() {
                Some((&seq, s)) => {
                    self.cur_generation = s.generation;
                    (seq, s.path.clone(), s.end, s.first_id)
                }
                None => return Ok(false),
            }
        };
        let reader = SegmentReader::open(
            shared.fs.as_ref(),
            &path,
            Some(end),
            shared.config.read_chunk_bytes as usize,
            format::MAX_FRAME_BODY,
        )
        .map_err(|source| BacklogError::Io {
            action: format!("opening {}", path.display()),
            source,
        })?
        .after_damaged_header(first_id.saturating_sub(1));
        self.next_seq = seq;
        self.cur = Some((seq, reader));
        Ok(true)
    }

    /// At the readable end of `seq`: grows the limit if the writer added
    /// more, moves on if the segment is sealed. Returns whether reading can
    /// continue now.
    fn at_end(&mut self, shared: &Shared, seq: u64) -> Result<bool, BacklogError> {
        let Some((_, reader)) = self.cur.as_mut() else {
            return Ok(false);
        };
        let mut idx = shared.index.lock();
        let Some(seg) = idx.segments.get(&seq) else {
            // Deleted (everything in it released, dropped or expired).
            drop(idx);
            self.cur = None;
            self.next_seq = seq + 1;
            return Ok(true);
        };
        if seg.generation != self.cur_generation {
            // Recycled in place since it was opened: read it afresh.
            drop(idx);
            self.cur = None;
            self.next_seq = seq;
            return Ok(true);
        }
        if seg.end > reader.limit() {
            reader.extend_limit(seg.end);
            return Ok(true);
        }
        if !seg.sealed {
            return Ok(false);
        }
        // Every record of a sealed segment read to its end is released,
        // handed out or deferred; anything else owed was lost to damage
        // found after recovery.
        let (mut n, mut bytes) = (seg.in_flight, 0u64);
        bytes += idx
            .in_flight
            .values()
            .filter(|f| f.seq == seq)
            .map(|f| f.bytes)
            .sum::<u64>();
        for Reverse(d) in self.deferred.iter().filter(|d| d.0.seq == seq) {
            if !idx.released.contains(d.id) {
                n += 1;
                bytes += d.total;
            }
        }
        let (live, live_bytes) = (seg.live, seg.live_bytes);
        if live > n {
            tracing::warn!(segment = %seg.path.display(), lost = live - n, "backlog records lost to damage found while reading");
            idx.lose(
                &shared.counters,
                seq,
                live - n,
                live_bytes.saturating_sub(bytes),
            );
        }
        drop(idx);
        self.cur = None;
        self.next_seq = seq + 1;
        Ok(true)
    }

    /// Reads a deferred record again now that it is due.
    fn reread(
        &mut self,
        shared: &Shared,
        d: Deferred,
        now_ms: i64,
    ) -> Result<Option<StoredRecord>, BacklogError> {
        let path = {
            let idx = shared.index.lock();
            match idx.segments.get(&d.seq) {
                Some(s) if idx.owed(d.seq, d.id) => s.path.clone(),
                _ => return Ok(None),
            }
        };
        if self.file_cache.as_ref().is_none_or(|(s, _)| *s != d.seq) {
            let f = shared
                .fs
                .open_read(&path)
                .map_err(|source| BacklogError::Io {
                    action: format!("opening {}", path.display()),
                    source,
                })?;
            self.file_cache = Some((d.seq, f));
        }
        let Some((_, file)) = self.file_cache.as_ref() else {
            return Ok(None);
        };
        let mut frame = vec![0u8; d.total as usize];
        let got = read_at_most(file.as_ref(), &mut frame, d.offset).map_err(|source| {
            BacklogError::Io {
                action: format!("reading {} at offset {}", path.display(), d.offset),
                source,
            }
        })?;
        let h = FrameHeader::read(&frame);
        let body = h.body(&frame).filter(|_| {
            got == frame.len() && h.id == d.id && h.total() == d.total && h.checksum_ok(&frame)
        });
        let Some(body) = body else {
            tracing::warn!(segment = %path.display(), offset = d.offset, "a deferred backlog record is damaged");
            shared
                .index
                .lock()
                .forget(&shared.counters, d.seq, d.id, d.total, Gone::Corrupt);
            return Ok(None);
        };
        // Its time has come: deciding again only checks expiry and ownership.
        let now_ms = now_ms.max(d.not_before_ms);
        match decide(shared, body, d.seq, d.id, d.total, now_ms, 0) {
            Decision::Hand(r) => Ok(Some(r)),
            _ => Ok(None),
        }
    }
}

enum Decision {
    Hand(StoredRecord),
    Skip,
    Defer(i64),
    Pause,
}

/// What to do with a record read at `now_ms`, with `deferred` records
/// already waiting.
fn decide(
    shared: &Shared,
    body: &[u8],
    seq: u64,
    id: u64,
    total: u64,
    now_ms: i64,
    deferred: usize,
) -> Decision {
    let view = BodyView::parse(body);
    let mut idx = shared.index.lock();
    if !idx.owed(seq, id) {
        return Decision::Skip;
    }
    let Ok(view) = view else {
        idx.forget(&shared.counters, seq, id, total, Gone::Corrupt);
        return Decision::Skip;
    };
    if let Some(max_age) = shared.config.max_age
        && view.appended_ms.saturating_add(max_age.as_millis() as i64) < now_ms
    {
        idx.forget(&shared.counters, seq, id, total, Gone::Expired);
        return Decision::Skip;
    }
    if view.not_before_ms > now_ms {
        return if deferred < shared.config.max_deferred {
            Decision::Defer(view.not_before_ms)
        } else {
            Decision::Pause
        };
    }
    let record = match view.record() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(segment = seq, id, error = %e, "a backlog record does not decode");
            idx.forget(&shared.counters, seq, id, total, Gone::Corrupt);
            return Decision::Skip;
        }
    };
    idx.hand_out(
        &shared.counters,
        id,
        InFlight {
            seq,
            bytes: total,
            appended_ms: view.appended_ms,
        },
    );
    Decision::Hand(StoredRecord { id, record })
}
