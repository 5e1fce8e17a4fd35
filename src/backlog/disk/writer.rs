//! The writer thread: group commit, segment rotation, capacity, and the
//! housekeeping that frees disk (expiry, drops, deleting released segments,
//! saving the ledger).
//!
//! Invariants:
//! - an append is answered only after the fsync covering its records; a
//!   record is published to readers (index, counters) only after that fsync;
//! - a failed write or fsync is rolled back (the segment is truncated to its
//!   durable end and unpublished ids are reused), so a full disk never leaves
//!   a torn record behind, and ids stay dense within a segment;
//! - the ledger is saved within `ledger_interval` of any release and of
//!   any append, so its next id vouches for every record acknowledged
//!   before then (a cut tail that takes such records is counted as loss);
//! - a record never spans two segments; the active segment is never deleted
//!   (its header keeps the next id known even when everything is released);
//! - a segment is deleted only when sealed and holding no owed record, and
//!   only once a durable ledger names its records released, so recovery can
//!   tell a deleted segment from a lost one: a fresh ledger is saved first,
//!   or, when none can be saved, only segments the last saved ledger already
//!   covers are deleted;
//! - saving the ledger on a full disk gives up the space reserve (see
//!   [`super::reserve`]) rather than fail, and the reserve is taken back once
//!   there is room, so deleting delivered segments never waits for space
//!   that only deleting could free;
//! - on a full disk, an active segment holding no owed record is recycled
//!   in place (the ledger saved, its header rewritten to start at the next
//!   id, its records cut), so space held only by released records is always
//!   reclaimed and a full disk always recovers once records are delivered.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use super::WhenFull;
use super::format::{BodyView, SEGMENT_HEADER_LEN, SegmentHeader, seal_frame};
use super::ledger::{Ledger, RangeSet};
use super::reserve::Reserve;
use super::segment::{SegmentReader, Step, create_segment, segment_path};
use super::state::{Gone, SegMeta, Shared};
use crate::backlog::BacklogError;
use crate::filesystem::{SegmentFile, write_all_at};
use crate::message::now_epoch_ms;

/// Where a stored record sits (returned for retried records, so the reader
/// can find them again without scanning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Record id.
    pub id: u64,
    /// Segment.
    pub seq: u64,
    /// Frame offset.
    pub offset: u64,
    /// Frame size.
    pub total: u64,
    /// Not before.
    pub not_before_ms: i64,
}

/// What an append achieved.
#[derive(Debug, Default)]
pub struct Appended {
    /// Where each stored record went (only when asked for).
    pub locs: Vec<Loc>,
}

/// Work for the writer thread.
pub enum Request {
    /// Store encoded frames (ids and checksums are filled in here).
    Append {
        /// The frames, back to back.
        frames: Vec<u8>,
        /// Each frame's size and not-before time.
        sizes: Vec<(u64, i64)>,
        /// Ignore capacity (retries re-store records already counted).
        bypass: bool,
        /// Report each record's location.
        want_locs: bool,
        /// The answer.
        reply: oneshot::Sender<Result<Appended, BacklogError>>,
    },
    /// Save the ledger now.
    Checkpoint(oneshot::Sender<Result<(), BacklogError>>),
    /// Save everything and stop.
    Close(oneshot::Sender<Result<(), BacklogError>>),
}

struct Job {
    frames: Vec<u8>,
    sizes: Vec<(u64, i64)>,
    bypass: bool,
    want_locs: bool,
    reply: oneshot::Sender<Result<Appended, BacklogError>>,
    /// Records of this job durably stored so far.
    stored: usize,
    /// The job stopped at a full store at record `stored`.
    full: bool,
    error: Option<BacklogError>,
    locs: Vec<Loc>,
}

/// A record written to the buffer, not yet durable.
struct PendingRec {
    job: usize,
    id: u64,
    offset: u64,
    total: u64,
    not_before_ms: i64,
}

/// The writer thread's state.
pub struct Writer {
    shared: Arc<Shared>,
    file: Box<dyn SegmentFile>,
    seq: u64,
    /// Durable end of the active segment.
    end: u64,
    next_id: u64,
    buf: Vec<u8>,
    pending: Vec<PendingRec>,
    pending_bytes: u64,
    head: Option<(u64, SegmentReader)>,
    /// The head scan resumes at the first segment at or after this one.
    head_hint: u64,
    last_ledger_save: Instant,
    disk_full: bool,
    /// When a full disk was last reported (it is reported again every
    /// [`FULL_REMINDER`] while it lasts).
    full_said: Instant,
    /// When a failed ledger save was last reported (at most once per
    /// [`FULL_REMINDER`], however often it is retried).
    ledger_failure_said: Option<Instant>,
    /// The released ids of the last ledger made durable: segments wholly in
    /// it may be deleted even when no newer ledger can be saved.
    saved: RangeSet,
    /// Space given up to save a ledger on a full disk.
    reserve: Reserve,
    /// The next id as the ledger on disk has it (0: not saved yet): the
    /// ledger is due again once appends move past it, so it always knows
    /// the acknowledged tail to within `ledger_interval`.
    saved_next_id: u64,
}

/// How often a disk that stays full is reported again.
const FULL_REMINDER: Duration = Duration::from_secs(10);

fn is_space_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.kind() == io::ErrorKind::FileTooLarge
        || matches!(e.raw_os_error(), Some(28 | 27 | 122))
}

enum CycleError {
    Full,
    Io(String, io::Error),
}

impl Writer {
    /// A writer appending to segment `seq` (already in the index) from
    /// `end`; `saved` is what the ledger on disk calls released.
    pub fn new(
        shared: Arc<Shared>,
        seq: u64,
        end: u64,
        next_id: u64,
        saved: RangeSet,
    ) -> io::Result<Writer> {
        let path = segment_path(&shared.dir, seq);
        let file = shared.fs.open(&path)?;
        let reserve = Reserve::find(shared.fs.as_ref(), &shared.dir);
        Ok(Writer {
            shared,
            file,
            seq,
            end,
            next_id,
            buf: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            head: None,
            head_hint: 0,
            last_ledger_save: Instant::now(),
            disk_full: false,
            full_said: Instant::now(),
            ledger_failure_said: None,
            saved,
            reserve,
            saved_next_id: 0,
        })
    }

    /// Runs until the store closes (or is dropped).
    pub fn run(mut self, rx: Receiver<Request>) {
        let cfg = self.shared.config.clone();
        let tick = cfg
            .ledger_interval
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    self.housekeeping(false);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.housekeeping(true);
                    return;
                }
            };
            let mut jobs = Vec::new();
            let mut control = None;
            match first {
                Request::Append {
                    frames,
                    sizes,
                    bypass,
                    want_locs,
                    reply,
                } => jobs.push(Job::new(frames, sizes, bypass, want_locs, reply)),
                other => control = Some(other),
            }
            if control.is_none() {
                let deadline = Instant::now() + cfg.commit_interval;
                let mut bytes = jobs.iter().map(|j| j.frames.len() as u64).sum::<u64>();
                // Waiting only pays while the batch is small: a big one
                // already amortises its fsync, and waiting would only delay
                // a caller that has nothing more to send until answered.
                let linger_below = cfg.commit_max_bytes / 8;
                while bytes < cfg.commit_max_bytes {
                    let next = if cfg.commit_interval.is_zero() || bytes >= linger_below {
                        rx.try_recv().ok()
                    } else {
                        rx.recv_deadline(deadline).ok()
                    };
                    match next {
                        Some(Request::Append {
                            frames,
                            sizes,
                            bypass,
                            want_locs,
                            reply,
                        }) => {
                            bytes += frames.len() as u64;
                            jobs.push(Job::new(frames, sizes, bypass, want_locs, reply));
                        }
                        Some(other) => {
                            control = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
            }
            if !jobs.is_empty() {
                self.commit(jobs);
            }
            match control {
                Some(Request::Checkpoint(reply)) => {
                    let _ = reply.send(self.save_ledger());
                }
                Some(Request::Close(reply)) => {
                    self.housekeeping(true);
                    let _ = reply.send(self.save_ledger());
                    return;
                }
                _ => self.housekeeping(false),
            }
        }
    }

    /// One group commit over `jobs`.
    fn commit(&mut self, mut jobs: Vec<Job>) {
        let cfg = self.shared.config.clone();
        let now = now_epoch_ms();
        let mut failure: Option<CycleError> = None;
        'jobs: for j in 0..jobs.len() {
            let mut at = 0usize;
            for k in 0..jobs[j].sizes.len() {
                let (total, not_before_ms) = jobs[j].sizes[k];
                if !jobs[j].bypass && !self.has_room(total) {
                    if cfg.when_full == WhenFull::DropOldest {
                        // Records of this cycle may be the oldest left:
                        // make them durable first so they can be dropped.
                        if let Err(e) = self.flush(&mut jobs) {
                            failure = Some(e);
                            break 'jobs;
                        }
                        self.make_room(total);
                    }
                    if !self.has_room(total) {
                        jobs[j].full = true;
                        continue 'jobs;
                    }
                }
                if self.end + self.buf.len() as u64 + total > cfg.segment_bytes
                    && let Err(e) = self.flush(&mut jobs).and_then(|()| self.rotate(now))
                {
                    failure = Some(e);
                    break 'jobs;
                }
                let id = self.next_id;
                self.next_id += 1;
                let start = self.buf.len();
                self.buf
                    .extend_from_slice(&jobs[j].frames[at..at + total as usize]);
                seal_frame(&mut self.buf[start..], id);
                self.pending.push(PendingRec {
                    job: j,
                    id,
                    offset: self.end + start as u64,
                    total,
                    not_before_ms,
                });
                at += total as usize;
                self.pending_bytes += total;
            }
        }
        if failure.is_none()
            && let Err(e) = self.flush(&mut jobs)
        {
            failure = Some(e);
        }
        match failure {
            None => {
                if self.disk_full {
                    self.disk_full = false;
                    tracing::info!(dir = %self.shared.dir.display(), "backlog disk has room again");
                }
            }
            Some(CycleError::Full) => {
                for job in &mut jobs {
                    job.full |= job.stored < job.sizes.len() && !job.bypass;
                    if job.bypass && job.stored < job.sizes.len() {
                        job.error = Some(BacklogError::Io {
                            action: "storing a retry (disk full)".into(),
                            source: io::Error::from(io::ErrorKind::StorageFull),
                        });
                    }
                }
            }
            Some(CycleError::Io(action, e)) => {
                for job in &mut jobs {
                    if job.stored < job.sizes.len() {
                        job.error = Some(BacklogError::Io {
                            action: action.clone(),
                            source: io::Error::new(e.kind(), e.to_string()),
                        });
                    }
                }
            }
        }
        for job in jobs {
            let result = if let Some(e) = job.error {
                Err(e)
            } else if job.full && job.stored < job.sizes.len() {
                Err(BacklogError::Full { stored: job.stored })
            } else {
                Ok(Appended { locs: job.locs })
            };
            let _ = job.reply.send(result);
        }
    }

    fn has_room(&self, total: u64) -> bool {
        room(
            &self.shared,
            self.pending.len() as u64,
            self.pending_bytes,
            total,
        )
    }

    /// Writes and fsyncs the buffer, then publishes its records.
    fn flush(&mut self, jobs: &mut [Job]) -> Result<(), CycleError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = write_all_at(self.file.as_ref(), &self.buf, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let first_unpublished = self.pending.first().map_or(self.next_id, |p| p.id);
            self.rollback(first_unpublished);
            return Err(self.classify(e, "writing"));
        }
        let added_bytes = self.buf.len() as u64;
        let added = self.pending.len() as u64;
        self.end += added_bytes;
        {
            let mut idx = self.shared.index.lock();
            if let Some(seg) = idx.segments.get_mut(&self.seq) {
                seg.end = self.end;
                seg.live += added;
                seg.live_bytes += added_bytes;
            }
            self.shared
                .counters
                .records
                .fetch_add(added, Ordering::Relaxed);
            self.shared
                .counters
                .bytes
                .fetch_add(added_bytes, Ordering::Relaxed);
        }
        for p in self.pending.drain(..) {
            let job = &mut jobs[p.job];
            job.stored += 1;
            if job.want_locs {
                job.locs.push(Loc {
                    id: p.id,
                    seq: self.seq,
                    offset: p.offset,
                    total: p.total,
                    not_before_ms: p.not_before_ms,
                });
            }
        }
        self.buf.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    fn rollback(&mut self, first_unpublished: u64) {
        self.buf.clear();
        self.pending.clear();
        self.pending_bytes = 0;
        self.next_id = first_unpublished;
        if let Err(e) = self.file.set_len(self.end) {
            tracing::error!(segment = %segment_path(&self.shared.dir, self.seq).display(), error = %e, "cannot cut a failed write back; it will be cut at the next start");
        }
    }

    fn classify(&mut self, e: io::Error, what: &str) -> CycleError {
        if is_space_error(&e) {
            if !self.disk_full {
                self.disk_full = true;
                self.full_said = Instant::now();
                tracing::error!(dir = %self.shared.dir.display(), error = %e, "backlog disk is full: holding new messages (backpressure) until space frees");
            }
            CycleError::Full
        } else {
            let action = format!(
                "{what} {}",
                segment_path(&self.shared.dir, self.seq).display()
            );
            tracing::error!(error = %e, "backlog {action} failed");
            CycleError::Io(action, e)
        }
    }

    /// Seals the active segment and starts the next one.
    fn rotate(&mut self, now: i64) -> Result<(), CycleError> {
        let seq = self.seq + 1;
        let fs = Arc::clone(&self.shared.fs);
        let file = match create_segment(fs.as_ref(), &self.shared.dir, seq, self.next_id, now) {
            Ok(f) => f,
            Err(e) => return Err(self.classify(e, "creating the segment after")),
        };
        let mut idx = self.shared.index.lock();
        if let Some(old) = idx.segments.get_mut(&self.seq) {
            old.sealed = true;
            old.end = self.end;
        }
        idx.segments.insert(
            seq,
            SegMeta {
                path: segment_path(&self.shared.dir, seq),
                first_id: self.next_id,
                end: SEGMENT_HEADER_LEN,
                created_ms: now,
                ..SegMeta::default()
            },
        );
        drop(idx);
        self.seq = seq;
        self.file = file;
        self.end = SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// Drops owed records from the head until `need` more bytes fit.
    fn make_room(&mut self, need: u64) {
        let before = self.shared.counters.dropped.load(Ordering::Relaxed);
        let mut this = HeadScan::Drop { need };
        self.scan_head(&mut this);
        let dropped = self.shared.counters.dropped.load(Ordering::Relaxed) - before;
        if dropped > 0 {
            tracing::warn!(dir = %self.shared.dir.display(), dropped, "backlog full: dropped the oldest records (when_full = \"drop_oldest\")");
        }
    }

    /// Walks owed records from the head of the log, discarding per `scan`.
    fn scan_head(&mut self, scan: &mut HeadScan) {
        let shared = Arc::clone(&self.shared);
        let max_body = shared.config.max_body();
        let (pending_records, pending_bytes) = (self.pending.len() as u64, self.pending_bytes);
        loop {
            if self.head.is_none() {
                let idx = shared.index.lock();
                let Some((&seq, seg)) = idx.segments.range(self.head_hint..).next() else {
                    return;
                };
                let (path, end, first_id) = (seg.path.clone(), seg.end, seg.first_id);
                drop(idx);
                match SegmentReader::open(
                    shared.fs.as_ref(),
                    &path,
                    Some(end),
                    256 * 1024,
                    max_body,
                ) {
                    Ok(r) => {
                        let r = r.after_damaged_header(first_id.saturating_sub(1));
                        self.head = Some((seq, r));
                    }
                    Err(e) => {
                        tracing::warn!(segment = %path.display(), error = %e, "cannot read the backlog head");
                        return;
                    }
                }
            }
            let Some((seq, reader)) = self.head.as_mut() else {
                return;
            };
            let seq = *seq;
            let step = match reader.next_step() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the backlog head");
                    self.head = None;
                    return;
                }
            };
            match step {
                Step::Record { id, offset, total } => {
                    let appended_ms = BodyView::parse(reader.body()).map_or(0, |b| b.appended_ms);
                    let mut idx = shared.index.lock();
                    if !idx.owed(seq, id) {
                        continue;
                    }
                    let why = match scan {
                        HeadScan::Drop { need } => {
                            if room(&shared, pending_records, pending_bytes, *need) {
                                drop(idx);
                                reader.seek(offset, id - 1);
                                return;
                            }
                            Gone::Dropped
                        }
                        HeadScan::Expire { before_ms } => {
                            if appended_ms >= *before_ms {
                                drop(idx);
                                reader.seek(offset, id - 1);
                                return;
                            }
                            Gone::Expired
                        }
                    };
                    idx.forget(&shared.counters, seq, id, total, why);
                }
                Step::Corrupt { .. } | Step::Tail { .. } => {}
                Step::End => {
                    let idx = shared.index.lock();
                    let next = idx.segments.range(seq + 1..).next().map(|(&s, _)| s);
                    match idx.segments.get(&seq) {
                        Some(seg) if !seg.sealed || seg.end > reader.limit() => {
                            let end = seg.end;
                            drop(idx);
                            if end > reader.limit() {
                                reader.extend_limit(end);
                                continue;
                            }
                            return;
                        }
                        _ => {
                            drop(idx);
                            let Some(next) = next else {
                                return;
                            };
                            self.head_hint = next;
                            self.head = None;
                        }
                    }
                }
            }
        }
    }

    /// Expiry, segment deletion, and (when due or `force`d) the ledger.
    fn housekeeping(&mut self, force: bool) {
        if let Some(max_age) = self.shared.config.max_age {
            let before_ms = now_epoch_ms() - max_age.as_millis() as i64;
            let before = self.shared.counters.expired.load(Ordering::Relaxed);
            self.scan_head(&mut HeadScan::Expire { before_ms });
            let expired = self.shared.counters.expired.load(Ordering::Relaxed) - before;
            if expired > 0 {
                tracing::warn!(dir = %self.shared.dir.display(), expired, "backlog records older than max_age expired");
            }
        }
        self.delete_released_segments();
        if self.disk_full {
            self.recycle_idle_active_segment();
            if self.disk_full && self.full_said.elapsed() >= FULL_REMINDER {
                self.full_said = Instant::now();
                let depth = self.shared.counters.depth();
                tracing::warn!(
                    dir = %self.shared.dir.display(),
                    owed = depth.records,
                    owed_bytes = depth.bytes,
                    "backlog disk still full: new messages wait at the source; space frees as owed records are delivered"
                );
            }
        }
        let due = self.last_ledger_save.elapsed() >= self.shared.config.ledger_interval;
        let stale = self.next_id != self.saved_next_id || self.shared.index.lock().ledger_dirty;
        if (force || (due && stale))
            && let Err(e) = self.save_ledger()
        {
            self.ledger_failed(&e, "saving the backlog ledger failed; will retry");
        }
        if !self.reserve.is_held() && !force {
            self.retake_reserve();
        }
    }

    /// Takes the space reserve back (after it was given up, or when a
    /// store opens without one); a disk still full leaves it for later.
    fn retake_reserve(&mut self) {
        let fs = Arc::clone(&self.shared.fs);
        let want = Reserve::needed(self.ledger_len());
        match self.reserve.take(fs.as_ref(), want) {
            Ok(()) => {
                tracing::debug!(dir = %self.shared.dir.display(), bytes = want, "backlog space reserve in place");
            }
            Err(e) => {
                tracing::debug!(dir = %self.shared.dir.display(), error = %e, "backlog space reserve not taken yet");
            }
        }
    }

    /// The size of the ledger as it would be saved now.
    fn ledger_len(&self) -> u64 {
        Ledger::encoded_len(self.shared.index.lock().released.len())
    }

    /// Reports a failed ledger save, at most once per [`FULL_REMINDER`]
    /// (it is retried at every tick while the disk stays full).
    fn ledger_failed(&mut self, e: &BacklogError, what: &str) {
        if self
            .ledger_failure_said
            .is_none_or(|t| t.elapsed() >= FULL_REMINDER)
        {
            self.ledger_failure_said = Some(Instant::now());
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "{what}");
        }
    }

    fn delete_released_segments(&mut self) {
        // Each doomed segment with the ids it held: from its first id to
        // the next segment's.
        let mut doomed: Vec<(u64, std::path::PathBuf, u64, u64)> = {
            let idx = self.shared.index.lock();
            let mut out = Vec::new();
            let mut segs = idx.segments.iter().peekable();
            while let Some((&seq, s)) = segs.next() {
                let next_first = segs.peek().map_or(self.next_id, |(_, n)| n.first_id);
                if s.sealed && s.live == 0 && s.in_flight == 0 {
                    out.push((seq, s.path.clone(), s.first_id, next_first));
                }
            }
            out
        };
        if doomed.is_empty() {
            return;
        }
        // The ledger must say these records were released before they
        // vanish, or recovery would count them as lost. When no ledger can
        // be saved, the one on disk may already say so for some of them.
        if self.shared.index.lock().ledger_dirty
            && let Err(e) = self.save_ledger()
        {
            doomed.retain(|(_, _, first, end)| self.saved.gaps(*first, *end).is_empty());
            if doomed.is_empty() {
                self.ledger_failed(
                    &e,
                    "saving the backlog ledger before deleting delivered segments failed; will retry",
                );
                return;
            }
        }
        let doomed: Vec<(u64, std::path::PathBuf)> = doomed
            .into_iter()
            .map(|(seq, path, ..)| (seq, path))
            .collect();
        let mut removed = Vec::new();
        for (seq, path) in doomed {
            match self.shared.fs.remove_file(&path) {
                Ok(()) => removed.push(seq),
                Err(e) if e.kind() == io::ErrorKind::NotFound => removed.push(seq),
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete a released segment")
                }
            }
        }
        let mut idx = self.shared.index.lock();
        for seq in &removed {
            idx.segments.remove(seq);
        }
        if let Some(first) = idx.segments.values().next().map(|s| s.first_id) {
            idx.released.prune_below(first);
        }
        idx.ledger_dirty = true;
        drop(idx);
        if self
            .head
            .as_ref()
            .is_some_and(|(seq, _)| removed.contains(seq))
        {
            self.head = None;
        }
        tracing::debug!(dir = %self.shared.dir.display(), count = removed.len(), "deleted released backlog segments");
    }

    /// On a full disk, reclaims the active segment when every record in it
    /// is gone (delivered, dropped or expired): it cannot be deleted (it
    /// carries the next id) nor appended to (no room), so it is started
    /// afresh in place. Order matters for a crash in between: the ledger
    /// first (the records are known released), then the header (the next id
    /// is known), then the cut that frees the space.
    fn recycle_idle_active_segment(&mut self) {
        let idle = {
            let idx = self.shared.index.lock();
            idx.segments
                .get(&self.seq)
                .is_some_and(|s| s.live == 0 && s.in_flight == 0)
        };
        if !idle || self.end <= SEGMENT_HEADER_LEN || !self.pending.is_empty() {
            return;
        }
        let path = segment_path(&self.shared.dir, self.seq);
        let saved = self.save_ledger();
        let header = SegmentHeader {
            seq: self.seq,
            first_id: self.next_id,
            created_ms: now_epoch_ms(),
        };
        let result = write_all_at(self.file.as_ref(), &header.encode(), 0)
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.file.set_len(SEGMENT_HEADER_LEN))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            tracing::warn!(segment = %path.display(), error = %e, "cannot recycle the fully delivered active backlog segment; will retry");
            return;
        }
        let freed = self.end - SEGMENT_HEADER_LEN;
        self.end = SEGMENT_HEADER_LEN;
        {
            let mut idx = self.shared.index.lock();
            if let Some(seg) = idx.segments.get_mut(&self.seq) {
                seg.first_id = self.next_id;
                seg.end = SEGMENT_HEADER_LEN;
                seg.live_bytes = 0;
                seg.created_ms = header.created_ms;
                seg.generation += 1;
            }
            if let Some(first) = idx.segments.values().next().map(|s| s.first_id) {
                idx.released.prune_below(first);
            }
            idx.ledger_dirty = true;
        }
        if self.head.as_ref().is_some_and(|(seq, _)| *seq == self.seq) {
            self.head = None;
        }
        if saved.is_err() {
            // The space is free now: the ledger fits.
            let _ = self.save_ledger();
        }
        self.disk_full = false;
        tracing::info!(segment = %path.display(), freed_bytes = freed, "backlog disk full: recycled the fully delivered active segment; taking messages again");
    }

    /// Saves the ledger; on a full disk, gives up the space reserve to do
    /// it (the reserve is taken back at a later tick, once there is room).
    fn save_ledger(&mut self) -> Result<(), BacklogError> {
        let ledger = {
            let mut idx = self.shared.index.lock();
            idx.ledger_dirty = false;
            Ledger {
                next_id: self.next_id,
                head: idx.segments.values().next().map(|s| s.first_id),
                released: idx.released.clone(),
            }
        };
        self.last_ledger_save = Instant::now();
        let fs = Arc::clone(&self.shared.fs);
        let mut saved = ledger.save(fs.as_ref(), &self.shared.dir);
        if let Err(e) = &saved
            && is_space_error(e)
            && self.reserve.give_up(fs.as_ref())
        {
            tracing::info!(dir = %self.shared.dir.display(), "backlog disk full: gave up the space reserve to save the ledger");
            saved = ledger.save(fs.as_ref(), &self.shared.dir);
        }
        match saved {
            Ok(()) => {
                self.saved = ledger.released;
                self.saved_next_id = ledger.next_id;
                Ok(())
            }
            Err(source) => {
                self.shared.index.lock().ledger_dirty = true;
                Err(BacklogError::Io {
                    action: format!("saving the ledger in {}", self.shared.dir.display()),
                    source,
                })
            }
        }
    }
}

/// Whether `total` more bytes (one more record) fit, counting what this
/// cycle has written but not yet published.
fn room(shared: &Shared, pending_records: u64, pending_bytes: u64, total: u64) -> bool {
    let cfg = &shared.config;
    let c = &shared.counters;
    let records = c.records.load(Ordering::Relaxed) + pending_records;
    let bytes = c.bytes.load(Ordering::Relaxed) + pending_bytes;
    bytes + total <= cfg.max_bytes && cfg.max_records.is_none_or(|m| records < m)
}

enum HeadScan {
    Drop { need: u64 },
    Expire { before_ms: i64 },
}

impl Job {
    fn new(
        frames: Vec<u8>,
        sizes: Vec<(u64, i64)>,
        bypass: bool,
        want_locs: bool,
        reply: oneshot::Sender<Result<Appended, BacklogError>>,
    ) -> Job {
        Job {
            frames,
            sizes,
            bypass,
            want_locs,
            reply,
            stored: 0,
            full: false,
            error: None,
            locs: Vec::new(),
        }
    }
}
