//! The writer thread: group commit, pipelined with its fsyncs, segment
//! rotation, capacity, and the housekeeping that frees disk (expiry, drops,
//! deleting released segments, saving the ledger).
//!
//! Appends are gathered into groups; a group's frames are given their ids
//! and checksums and written to the active segment, and then fsync'd by a
//! second thread (`laneway-backlog-fsync`) while the writer goes on writing
//! the next group. At most one fsync runs at a time; when it ends, one fsync
//! begins for everything written meanwhile.
//!
//! Invariants:
//! - an append is answered `Ok` only after an fsync that began after all
//!   its records were written has succeeded (the first fsync to begin after
//!   the write); a record is published to readers (index, counters) only
//!   after that fsync;
//! - the fsync thread syncs its own handle on the active segment, opened
//!   before any record was written to it, so it is told of every write
//!   error (the kernel reports a writeback error to each descriptor that was
//!   open when it happened);
//! - a failed write or fsync fails every append not yet answered and is
//!   rolled back: the segment is cut to its durable end (the end the last
//!   good fsync covered) and the ids written since are reused, so a failed
//!   fsync fails every group written since the last good one, a full disk
//!   never leaves a torn record behind, and ids stay dense within a segment.
//!   A failed write first waits for the running fsync, so the groups that
//!   fsync covers are answered by its own result;
//! - bytes written and not yet fsync'd stay below `commit_max_bytes` plus one
//!   group: past that the writer waits for the running fsync;
//! - the ledger is saved within `ledger_interval` of any release and of
//!   any append, so its next id vouches for every record acknowledged
//!   before then (a cut tail that takes such records is counted as loss);
//!   it is the durable next id, never one of a record written and not yet
//!   fsync'd;
//! - a record never spans two segments; a segment is sealed, and the next
//!   one created, only once everything written to it is durable; the
//!   active segment is never deleted (its header keeps the next id known
//!   even when everything is released);
//! - a segment is deleted only when sealed and holding no owed record, and
//!   only once a durable ledger names its records released, so recovery can
//!   tell a deleted segment from a lost one: a fresh ledger is saved first,
//!   or, when none can be saved, only segments the last saved ledger already
//!   covers are deleted;
//! - saving the ledger on a full disk gives up the space reserve (see
//!   [`super::reserve`]) rather than fail, and the reserve is taken back once
//!   there is room, so deleting delivered segments never waits for space
//!   that only deleting could free;
//! - new records (not retries) are taken only while the reserve is held: a
//!   reserve that could not be made for want of space is backpressure, like
//!   a full disk, until deliveries free enough for it, so appends never take
//!   the pages it needs (a reserve that fails for another reason is warned
//!   about and done without);
//! - on a full disk, an active segment holding no owed record is recycled
//!   in place (the ledger saved, its header rewritten to start at the next
//!   id, its records cut), so space held only by released records is always
//!   reclaimed and a full disk always recovers once records are delivered.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, Sender, select};
use tokio::sync::oneshot;

use super::WhenFull;
use super::format::{self, BodyView, SEGMENT_HEADER_LEN, SegmentHeader, seal_frame};
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

/// One append, from the moment the writer takes it until it is answered.
struct Job {
    frames: Vec<u8>,
    sizes: Vec<(u64, i64)>,
    bypass: bool,
    want_locs: bool,
    reply: oneshot::Sender<Result<Appended, BacklogError>>,
    /// Records of this job written so far (durable or not).
    written: usize,
    /// Records of this job durably stored so far (a prefix of them).
    stored: usize,
    /// Every record that will be written has been: the job is answered
    /// once they are durable.
    done_writing: bool,
    /// The job stopped at a full store at record `written`.
    full: bool,
    locs: Vec<Loc>,
}

/// A record written (or in the buffer), not yet durable.
struct PendingRec {
    /// The number of its job (see [`Writer::first_job`]).
    job: u64,
    id: u64,
    offset: u64,
    total: u64,
    not_before_ms: i64,
}

/// An fsync for the fsync thread: the handle to sync, handed back when done.
struct SyncOrder(Box<dyn SegmentFile>);

/// An fsync done: the handle back, and how it went.
struct SyncDone(Box<dyn SegmentFile>, io::Result<()>);

/// The fsync that runs now: what it covers.
#[derive(Clone, Copy)]
struct Syncing {
    /// The first `records` of [`Writer::pending`].
    records: usize,
    /// Up to this offset of the active segment.
    end: u64,
}

/// The writer thread's state.
pub struct Writer {
    shared: Arc<Shared>,
    /// The active segment, to write to.
    file: Box<dyn SegmentFile>,
    /// The active segment again, to fsync with (away at the fsync thread
    /// while an fsync runs).
    sync_file: Option<Box<dyn SegmentFile>>,
    seq: u64,
    /// Durable end of the active segment: what the last good fsync covered.
    end: u64,
    /// End of what was written to the active segment (from `end` on, not
    /// yet durable).
    written: u64,
    next_id: u64,
    /// Frames of the group being gathered, sealed, not yet written.
    buf: Vec<u8>,
    /// Records in the buffer or written, not yet durable, in id order.
    pending: Vec<PendingRec>,
    pending_bytes: u64,
    /// Appends not yet answered, in arrival order.
    jobs: VecDeque<Job>,
    /// The number of `jobs[0]`.
    first_job: u64,
    /// The fsync running now, if one is.
    syncing: Option<Syncing>,
    to_syncer: Option<Sender<SyncOrder>>,
    from_syncer: Receiver<SyncDone>,
    syncer: Option<std::thread::JoinHandle<()>>,
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
    /// How the last attempt to take the reserve failed, while it is not
    /// held: for want of space (new records wait for it) or otherwise (the
    /// store goes on without it).
    reserve_failure: Option<ReserveFailure>,
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

/// The fsync thread: fsyncs each handle it is given and hands it back.
fn syncer(orders: Receiver<SyncOrder>, done: Sender<SyncDone>) {
    for SyncOrder(file) in orders {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| file.sync_data()))
            .unwrap_or_else(|_| Err(io::Error::other("the fsync panicked")));
        if done.send(SyncDone(file, result)).is_err() {
            return;
        }
    }
}

impl Writer {
    /// A writer appending to segment `seq` (already in the index) from
    /// `end`; `saved` is what the ledger on disk calls released. Starts the
    /// fsync thread.
    pub fn new(
        shared: Arc<Shared>,
        seq: u64,
        end: u64,
        next_id: u64,
        saved: RangeSet,
    ) -> io::Result<Writer> {
        let path = segment_path(&shared.dir, seq);
        let file = shared.fs.open(&path)?;
        let sync_file = shared.fs.open(&path)?;
        let reserve = Reserve::find(shared.fs.as_ref(), &shared.dir);
        let (to_syncer, orders) = crossbeam_channel::bounded(1);
        let (done, from_syncer) = crossbeam_channel::bounded(1);
        let syncer = std::thread::Builder::new()
            .name("laneway-backlog-fsync".into())
            .spawn(move || syncer(orders, done))?;
        Ok(Writer {
            shared,
            file,
            sync_file: Some(sync_file),
            seq,
            end,
            written: end,
            next_id,
            buf: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            jobs: VecDeque::new(),
            first_job: 0,
            syncing: None,
            to_syncer: Some(to_syncer),
            from_syncer,
            syncer: Some(syncer),
            head: None,
            head_hint: 0,
            last_ledger_save: Instant::now(),
            disk_full: false,
            full_said: Instant::now(),
            ledger_failure_said: None,
            saved,
            reserve,
            reserve_failure: None,
            saved_next_id: 0,
        })
    }

    /// Runs until the store closes (or is dropped).
    pub fn run(mut self, rx: Receiver<Request>) {
        let cfg = self.shared.config.clone();
        let tick = cfg
            .ledger_interval
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut from_syncer = self.from_syncer.clone();
        if !self.reserve.is_held() {
            self.retake_reserve();
        }
        loop {
            if self.syncing.is_some() && self.written - self.end >= cfg.commit_max_bytes {
                // Far enough ahead: let the running fsync end first.
                if let Err(e) = self.wait_sync().and_then(|()| self.start_sync()) {
                    self.fail_outstanding(e);
                }
                self.answer_ready();
                continue;
            }
            let first = select! {
                recv(rx) -> request => match request {
                    Ok(r) => r,
                    Err(_) => {
                        self.settle();
                        self.housekeeping(true);
                        return;
                    }
                },
                recv(from_syncer) -> done => {
                    if done.is_err() {
                        from_syncer = crossbeam_channel::never();
                    }
                    let result = self.sync_result(done);
                    if let Err(e) = self.sync_ended(result).and_then(|()| self.start_sync()) {
                        self.fail_outstanding(e);
                    }
                    self.answer_ready();
                    continue;
                },
                default(tick) => {
                    self.housekeeping(false);
                    continue;
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
                // Waiting only pays while the group is small and no fsync
                // runs: a big group already amortises its fsync, and one
                // written while an fsync runs waits for it anyway (what
                // comes meanwhile joins the next group).
                let linger_below = cfg.commit_max_bytes / 8;
                while bytes < cfg.commit_max_bytes {
                    let linger = !cfg.commit_interval.is_zero()
                        && bytes < linger_below
                        && self.syncing.is_none();
                    let next = if linger {
                        rx.recv_deadline(deadline).ok()
                    } else {
                        rx.try_recv().ok()
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
                self.write_group(jobs);
            }
            match control {
                Some(Request::Checkpoint(reply)) => {
                    let _ = reply.send(self.save_ledger());
                }
                Some(Request::Close(reply)) => {
                    self.settle();
                    self.housekeeping(true);
                    let _ = reply.send(self.save_ledger());
                    return;
                }
                _ => self.housekeeping(false),
            }
        }
    }

    /// Makes everything written durable and answers every append (at a
    /// close).
    fn settle(&mut self) {
        if let Err(e) = self.drain() {
            self.fail_outstanding(e);
        }
        self.answer_ready();
    }

    /// Gives each record of `jobs` its id and checksum and writes them
    /// (rotating segments and making room on the way), then starts their
    /// fsync unless one runs already (the next one will cover them).
    fn write_group(&mut self, jobs: Vec<Job>) {
        let first = self.first_job + self.jobs.len() as u64;
        self.jobs.extend(jobs);
        if let Err(e) = self.write_jobs(first).and_then(|()| self.start_sync()) {
            self.fail_outstanding(e);
        }
        self.answer_ready();
    }

    fn write_jobs(&mut self, first: u64) -> Result<(), CycleError> {
        let cfg = self.shared.config.clone();
        let now = now_epoch_ms();
        let end = self.first_job + self.jobs.len() as u64;
        let waits_for_reserve = self.waits_for_reserve();
        for number in first..end {
            let j = (number - self.first_job) as usize;
            if waits_for_reserve && !self.jobs[j].bypass {
                self.jobs[j].full = true;
                self.jobs[j].done_writing = true;
                continue;
            }
            let mut at = 0usize;
            for k in 0..self.jobs[j].sizes.len() {
                let (total, not_before_ms) = self.jobs[j].sizes[k];
                if !self.jobs[j].bypass && !self.has_room(total) {
                    if cfg.when_full == WhenFull::DropOldest {
                        // Records of this group may be the oldest left:
                        // make them durable first so they can be dropped.
                        self.write_buf()?;
                        self.drain()?;
                        self.make_room(total);
                    }
                    if !self.has_room(total) {
                        self.jobs[j].full = true;
                        break;
                    }
                }
                if self.written + self.buf.len() as u64 + total > cfg.segment_bytes {
                    self.write_buf()?;
                    self.drain()?;
                    self.rotate(now)?;
                }
                let id = self.next_id;
                self.next_id += 1;
                let start = self.buf.len();
                self.buf
                    .extend_from_slice(&self.jobs[j].frames[at..at + total as usize]);
                seal_frame(&mut self.buf[start..], id);
                self.pending.push(PendingRec {
                    job: number,
                    id,
                    offset: self.written + start as u64,
                    total,
                    not_before_ms,
                });
                at += total as usize;
                self.pending_bytes += total;
                self.jobs[j].written += 1;
            }
            self.jobs[j].done_writing = true;
            // The frames are copied: let their memory go now.
            self.jobs[j].frames = Vec::new();
        }
        self.write_buf()
    }

    /// Whether new records must wait because the space reserve is not in
    /// place for want of space; says so once when it starts (the full-disk
    /// reminder repeats it).
    fn waits_for_reserve(&mut self) -> bool {
        if self.reserve.is_held() || self.reserve_failure == Some(ReserveFailure::Other) {
            return false;
        }
        if !self.disk_full {
            self.disk_full = true;
            self.full_said = Instant::now();
            tracing::error!(dir = %self.shared.dir.display(), bytes = Reserve::needed(self.ledger_len()), "backlog disk too full for its space reserve: holding new messages (backpressure) until deliveries free room for it");
        }
        true
    }

    fn has_room(&self, total: u64) -> bool {
        room(
            &self.shared,
            self.pending.len() as u64,
            self.pending_bytes,
            total,
        )
    }

    /// Writes the buffer to the active segment (not yet durable).
    fn write_buf(&mut self) -> Result<(), CycleError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = write_all_at(self.file.as_ref(), &self.buf, self.written) {
            // What the running fsync covers is answered by its result;
            // everything after it is rolled back.
            self.wait_sync()?;
            self.rollback();
            return Err(self.classify(e, "writing"));
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Starts an fsync of everything written, unless one runs already or
    /// nothing waits for one. Without an fsync thread (it stopped), fsyncs
    /// here and now.
    fn start_sync(&mut self) -> Result<(), CycleError> {
        if self.syncing.is_some() || self.written == self.end {
            return Ok(());
        }
        let covers = Syncing {
            records: self.pending.len(),
            end: self.written,
        };
        if let Some(to_syncer) = &self.to_syncer
            && let Some(file) = self.sync_file.take()
        {
            match to_syncer.send(SyncOrder(file)) {
                Ok(()) => {
                    self.syncing = Some(covers);
                    return Ok(());
                }
                Err(crossbeam_channel::SendError(SyncOrder(file))) => {
                    self.sync_file = Some(file);
                    self.syncer_gone();
                }
            }
        }
        let result = self.file.sync_data();
        self.syncing = Some(covers);
        self.sync_ended(result)
    }

    /// The fsync thread stopped (it cannot, short of a bug): from now on
    /// fsyncs run on the writer thread.
    fn syncer_gone(&mut self) {
        if self.to_syncer.take().is_some() {
            tracing::error!(dir = %self.shared.dir.display(), "the backlog fsync thread stopped; fsyncing on the writer thread from now on");
        }
    }

    /// Takes back the handle of an fsync that ended; its result.
    fn sync_result(&mut self, done: Result<SyncDone, RecvError>) -> io::Result<()> {
        match done {
            Ok(SyncDone(file, result)) => {
                self.sync_file = Some(file);
                result
            }
            Err(RecvError) => {
                self.syncer_gone();
                Err(io::Error::other("the backlog fsync thread stopped"))
            }
        }
    }

    /// Waits for the running fsync, if one runs, and settles what it covered.
    fn wait_sync(&mut self) -> Result<(), CycleError> {
        if self.syncing.is_none() {
            return Ok(());
        }
        let done = self.from_syncer.recv();
        let result = self.sync_result(done);
        self.sync_ended(result)
    }

    /// Makes everything written durable: waits for the running fsync, then
    /// fsyncs what was written meanwhile.
    fn drain(&mut self) -> Result<(), CycleError> {
        self.wait_sync()?;
        self.start_sync()?;
        self.wait_sync()
    }

    /// The running fsync ended with `result`: publishes what it covered,
    /// or, when it failed, rolls back everything not durable and returns
    /// the error.
    fn sync_ended(&mut self, result: io::Result<()>) -> Result<(), CycleError> {
        let Some(covers) = self.syncing.take() else {
            return Ok(());
        };
        if let Err(e) = result {
            self.rollback();
            return Err(self.classify(e, "fsyncing"));
        }
        self.publish(covers);
        Ok(())
    }

    /// Publishes the records an fsync made durable.
    fn publish(&mut self, covers: Syncing) {
        let added = covers.records as u64;
        let added_bytes = covers.end - self.end;
        self.end = covers.end;
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
        for p in self.pending.drain(..covers.records) {
            self.pending_bytes -= p.total;
            let Some(job) = self.jobs.get_mut((p.job - self.first_job) as usize) else {
                continue;
            };
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
        if self.disk_full {
            self.disk_full = false;
            tracing::info!(dir = %self.shared.dir.display(), "backlog disk has room again");
        }
    }

    /// Answers the appends at the front whose records are all durable.
    fn answer_ready(&mut self) {
        while self
            .jobs
            .front()
            .is_some_and(|j| j.done_writing && j.stored == j.written)
        {
            let Some(job) = self.jobs.pop_front() else {
                return;
            };
            self.first_job += 1;
            let result = if job.full && job.stored < job.sizes.len() {
                Err(BacklogError::Full { stored: job.stored })
            } else {
                Ok(Appended { locs: job.locs })
            };
            let _ = job.reply.send(result);
        }
    }

    /// Answers every append not yet answered with the failure `e` (the
    /// records not durable were rolled back): a full disk is backpressure
    /// for appends (what was stored is said) and an error for retries.
    fn fail_outstanding(&mut self, e: CycleError) {
        self.answer_ready();
        self.first_job += self.jobs.len() as u64;
        for job in self.jobs.drain(..) {
            let result = match &e {
                _ if job.stored == job.sizes.len() => Ok(Appended { locs: job.locs }),
                CycleError::Full if !job.bypass => Err(BacklogError::Full { stored: job.stored }),
                CycleError::Full => Err(BacklogError::Io {
                    action: "storing a retry (disk full)".into(),
                    source: io::Error::from(io::ErrorKind::StorageFull),
                }),
                CycleError::Io(action, e) => Err(BacklogError::Io {
                    action: action.clone(),
                    source: io::Error::new(e.kind(), e.to_string()),
                }),
            };
            let _ = job.reply.send(result);
        }
    }

    /// Forgets every record not durable and cuts the segment back to its
    /// durable end; their ids are given again. No fsync may be running.
    fn rollback(&mut self) {
        self.buf.clear();
        if let Some(p) = self.pending.first() {
            self.next_id = p.id;
        }
        self.pending.clear();
        self.pending_bytes = 0;
        self.written = self.end;
        if let Err(e) = self.file.set_len(self.end) {
            tracing::error!(segment = %segment_path(&self.shared.dir, self.seq).display(), error = %e, "cannot cut a failed write back; it will be cut at the next start");
        }
    }

    /// The next id as durable records have it: the first id not yet
    /// fsync'd.
    fn durable_next_id(&self) -> u64 {
        self.pending.first().map_or(self.next_id, |p| p.id)
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

    /// Seals the active segment (everything written to it is durable) and
    /// starts the next one.
    fn rotate(&mut self, now: i64) -> Result<(), CycleError> {
        let seq = self.seq + 1;
        let fs = Arc::clone(&self.shared.fs);
        let (file, sync_file) =
            match create_segment(fs.as_ref(), &self.shared.dir, seq, self.next_id, now) {
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
        self.sync_file = Some(sync_file);
        self.end = SEGMENT_HEADER_LEN;
        self.written = SEGMENT_HEADER_LEN;
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
        let max_body = format::MAX_FRAME_BODY;
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
        let stale =
            self.durable_next_id() != self.saved_next_id || self.shared.index.lock().ledger_dirty;
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
                self.reserve_failure = None;
                tracing::debug!(dir = %self.shared.dir.display(), bytes = want, "backlog space reserve in place");
            }
            Err(e) if is_space_error(&e) => {
                self.reserve_failure = Some(ReserveFailure::Space);
                tracing::debug!(dir = %self.shared.dir.display(), error = %e, "backlog space reserve not taken yet");
            }
            Err(e) => {
                if self.reserve_failure != Some(ReserveFailure::Other) {
                    tracing::warn!(dir = %self.shared.dir.display(), error = %e, "cannot make the backlog space reserve; going on without it (a full disk may then need space freed by hand)");
                }
                self.reserve_failure = Some(ReserveFailure::Other);
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
        if !idle
            || self.end <= SEGMENT_HEADER_LEN
            || !self.pending.is_empty()
            || self.syncing.is_some()
        {
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
        self.written = SEGMENT_HEADER_LEN;
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
                next_id: self.durable_next_id(),
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

/// Why the space reserve could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReserveFailure {
    /// No room for it: new records wait.
    Space,
    /// Anything else: the store goes on without it.
    Other,
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
            written: 0,
            stored: 0,
            done_writing: false,
            full: false,
            locs: Vec::new(),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the orders ends the fsync thread; wait for it, so no
        // handle on a segment outlives the store.
        self.to_syncer = None;
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}
