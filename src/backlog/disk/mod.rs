//! The durable disk backlog store: a segment log per group, group-committed
//! appends, ordered reads with per-record not-before times, and crash
//! recovery. The on-disk format is described in `docs/backlog-format.md`.
//!
//! Invariants this store keeps (on top of those of [`BacklogStore`]):
//! - `append` resolves `Ok` only after the first fsync that began after its
//!   records were written has succeeded (group commit, pipelined: one fsync
//!   for everything written while the previous one ran), and a failed fsync
//!   fails every append written since the last good one;
//! - a record is released only by `release` (delivered), `retry` (stored
//!   again under a new id first), `max_age` expiry or a `drop_oldest` drop,
//!   the last two counted; a segment file is deleted only when it holds no
//!   owed record;
//! - a process crash loses no appended record; it may deliver again the
//!   records released since the ledger was last saved (at most
//!   `ledger_interval` worth of releases), those in flight, and appends
//!   whose answer the caller never saw (see `docs/backlog-format.md`);
//! - resident memory is bounded by the knobs (`commit_max_bytes`,
//!   `read_chunk_bytes`, `max_deferred`), not by the size of the backlog;
//! - one process at a time: a lock file guards the directory.

mod audit;
mod format;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod inspect;
mod ledger;
mod lock;
mod reader;
mod recovery;
mod reserve;
mod segment;
mod state;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{BacklogDepth, BacklogError, BacklogRecord, BacklogStore, RecordId, StoredRecord};
pub use crate::filesystem::{Filesystem, RealFilesystem, SegmentFile};
use crate::knob::KnobError;
use crate::message::now_epoch_ms;
pub use audit::{Damage, DamageKind, LedgerState};
pub use inspect::{
    InspectError, Inspection, SegmentSummary, Verification, inspect_dir, verify_dir,
};
use lock::DirLock;
use reader::Reader;
pub use recovery::RecoveryReport;
use state::{Counters, Gone, Index, Shared};
use writer::{Request, Writer};

/// What a full backlog does with new records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse them ([`BacklogError::Full`]): the source stops being
    /// acknowledged and the broker keeps the rest. Nothing is lost.
    #[default]
    Backpressure,
    /// Drop the oldest records to make room, counting each drop.
    DropOldest,
}

/// The knobs of a [`DiskBacklog`]; every one has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskBacklogConfig {
    /// The backlog directory; default `<data_dir>/backlog/<group name>`.
    pub dir: Option<PathBuf>,
    /// Size of one segment file (default 64 MiB); a record never spans two,
    /// so it must exceed the largest record.
    pub segment_bytes: u64,
    /// The most bytes of owed records (default 8 GiB); then the store is full.
    pub max_bytes: u64,
    /// The most owed records (default: no limit besides `max_bytes`).
    pub max_records: Option<u64>,
    /// Records stored longer than this expire, counted (default: never),
    /// like a platform's retention period.
    #[serde(with = "crate::knob::duration")]
    pub max_age: Option<Duration>,
    /// What a full store does (default `backpressure`).
    pub when_full: WhenFull,
    /// How long the writer waits for more appends before writing a group
    /// while fewer than `commit_max_bytes / 8` are gathered and no fsync
    /// runs (default 2 ms; appends arriving while an fsync runs are written
    /// at once and join the next one anyway).
    #[serde(with = "crate::knob::duration")]
    pub commit_interval: Duration,
    /// The most bytes one group gathers, and about the most written ahead
    /// of a running fsync (default 8 MiB).
    pub commit_max_bytes: u64,
    /// How often released positions are saved to the ledger (default
    /// 200 ms): a crash re-delivers at most this much of releases.
    #[serde(with = "crate::knob::duration")]
    pub ledger_interval: Duration,
    /// Bytes read from a segment at once (default 1 MiB): the read-ahead.
    pub read_chunk_bytes: u64,
    /// Passed-over records (not yet due) remembered by location (default
    /// 65,536, about 3 MiB); beyond that, reading pauses until one is due.
    pub max_deferred: usize,
}

impl Default for DiskBacklogConfig {
    fn default() -> Self {
        DiskBacklogConfig {
            dir: None,
            segment_bytes: 64 << 20,
            max_bytes: 8 << 30,
            max_records: None,
            max_age: None,
            when_full: WhenFull::Backpressure,
            commit_interval: Duration::from_millis(2),
            commit_max_bytes: 8 << 20,
            ledger_interval: Duration::from_millis(200),
            read_chunk_bytes: 1 << 20,
            max_deferred: 65_536,
        }
    }
}

/// The smallest segment accepted: a header and a little room.
const MIN_SEGMENT_BYTES: u64 = 4096;

impl DiskBacklogConfig {
    /// The largest record body a segment can hold.
    fn max_body(&self) -> usize {
        (self.segment_bytes - format::SEGMENT_HEADER_LEN - format::FRAME_HEADER_LEN as u64) as usize
    }

    /// Checks the knobs; the error names the knob and its bad value.
    pub fn validate(&self) -> Result<(), KnobError> {
        let bad = |knob, value: String, rule: String| {
            Err(KnobError::said(
                knob,
                format!("backlog.{knob} {rule} (it is {value})"),
            ))
        };
        if self.segment_bytes < MIN_SEGMENT_BYTES || self.segment_bytes > u32::MAX as u64 {
            let rule = format!("must be between {MIN_SEGMENT_BYTES} and {}", u32::MAX);
            return bad("segment_bytes", self.segment_bytes.to_string(), rule);
        }
        if self.max_bytes == 0 {
            return bad("max_bytes", "0".into(), "must be at least 1".into());
        }
        if self.max_records == Some(0) {
            return bad("max_records", "0".into(), "must be at least 1".into());
        }
        if self.commit_max_bytes == 0 {
            return bad("commit_max_bytes", "0".into(), "must be at least 1".into());
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            let rule = "must be longer than 0s (leave it out to keep records forever)";
            return bad("max_age", "0s".into(), rule.into());
        }
        Ok(())
    }

    /// The largest message payload a segment of this size can hold.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_body()
            .saturating_sub(format::BODY_FIXED_LEN + crate::message::MAX_TOPIC_LEN + 1024)
    }
}

/// The durable disk backlog store (see the module documentation).
pub struct DiskBacklog {
    shared: Arc<Shared>,
    reader: Arc<tokio::sync::Mutex<Reader>>,
    tx: Option<Sender<Request>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    report: RecoveryReport,
    _lock: DirLock,
}

impl DiskBacklog {
    /// Opens (creating if needed) the backlog in `dir`, recovering what a
    /// previous run left. Blocks while recovering: call it at start-up, off
    /// the async runtime for large backlogs.
    pub fn open(dir: &Path, config: DiskBacklogConfig) -> Result<DiskBacklog, BacklogError> {
        DiskBacklog::open_with(dir, config, Arc::new(RealFilesystem))
    }

    /// Opens the backlog in `dir` with every file operation going through
    /// `fs`: recovery's reads and repairs, the writer's segments, ledger and
    /// reserve, and the reader's. It is the seam that fault-injection tests
    /// use to make reads, writes, fsyncs and segment creation fail as real
    /// disks do.
    pub fn open_with(
        dir: &Path,
        config: DiskBacklogConfig,
        fs: Arc<dyn Filesystem>,
    ) -> Result<DiskBacklog, BacklogError> {
        config
            .validate()
            .map_err(|e| BacklogError::Unavailable(e.to_string()))?;
        fs.create_dir_all(dir).map_err(|source| BacklogError::Io {
            action: format!("creating the backlog directory {}", dir.display()),
            source,
        })?;
        let lock = DirLock::acquire(dir)?;
        let mut recovered = recovery::recover(fs.as_ref(), dir, format::MAX_FRAME_BODY)?;
        let report = recovered.report.clone();
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            bytes = report.bytes,
            released = report.released,
            lost = report.lost,
            damaged = report.damaged,
            cut = report.cut,
            cut_bytes = report.cut_bytes,
            quarantined = report.quarantined,
            delivered_files = report.delivered_files,
            ledger = report.ledger,
            took_ms = report.took.as_secs_f64() * 1e3,
            "backlog recovered"
        );
        if report.lost > 0 || report.damaged > 0 || report.quarantined > 0 {
            tracing::warn!(
                dir = %dir.display(),
                lost = report.lost,
                lost_ids = ?report.lost_ids,
                damaged = report.damaged,
                quarantined = report.quarantined,
                "backlog recovery found damage: the records named were lost, the rest is intact"
            );
        }
        let active = match recovered.segments.iter().next_back() {
            Some((&seq, s)) => (seq, s.end),
            None => {
                let seq = 1;
                let created_ms = now_epoch_ms();
                segment::create_segment(fs.as_ref(), dir, seq, recovered.next_id, created_ms)
                    .map_err(|source| BacklogError::Io {
                        action: format!("creating the first segment in {}", dir.display()),
                        source,
                    })?;
                recovered.segments.insert(
                    seq,
                    state::SegMeta {
                        path: segment::segment_path(dir, seq),
                        first_id: recovered.next_id,
                        end: format::SEGMENT_HEADER_LEN,
                        created_ms,
                        ..Default::default()
                    },
                );
                (seq, format::SEGMENT_HEADER_LEN)
            }
        };
        let saved = std::mem::take(&mut recovered.saved);
        let counters = Counters::default();
        counters.records.store(report.records, Ordering::Relaxed);
        counters.bytes.store(report.bytes, Ordering::Relaxed);
        counters.corrupt.store(report.lost, Ordering::Relaxed);
        counters.cut.store(report.cut, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            index: Mutex::new(Index {
                segments: recovered.segments,
                released: recovered.released,
                // Losses just counted are settled in the next ledger.
                ledger_dirty: report.lost > 0,
                ..Index::default()
            }),
            counters,
            closed: AtomicBool::new(false),
            fs,
        });
        let writer = Writer::new(
            Arc::clone(&shared),
            active.0,
            active.1,
            recovered.next_id,
            saved,
        )
        .map_err(|source| BacklogError::Io {
            action: format!("opening the active segment in {}", dir.display()),
            source,
        })?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("laneway-backlog-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| BacklogError::Io {
                action: "starting the backlog writer thread".into(),
                source,
            })?;
        Ok(DiskBacklog {
            shared,
            reader: Arc::new(tokio::sync::Mutex::new(Reader::default())),
            tx: Some(tx),
            thread: Mutex::new(Some(thread)),
            report,
            _lock: lock,
        })
    }

    /// What recovery found when the store opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    /// The backlog directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Saves the ledger now, so releases so far survive a crash (they are
    /// saved every `ledger_interval` anyway).
    pub async fn checkpoint(&self) -> Result<(), BacklogError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Checkpoint(reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Segment files on disk now.
    pub fn segment_count(&self) -> usize {
        self.shared.index.lock().segments.len()
    }

    fn send(&self, request: Request) -> Result<(), BacklogError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(BacklogError::Unavailable(format!(
                "backlog {} is closed",
                self.shared.dir.display()
            )));
        }
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(request)
            .map_err(|_| gone())
    }

    async fn store(
        &self,
        records: &[BacklogRecord],
        appended: impl Fn(usize) -> i64,
        bypass: bool,
    ) -> Result<writer::Appended, BacklogError> {
        let mut frames = Vec::with_capacity(records.len() * 128);
        let mut sizes = Vec::with_capacity(records.len());
        let max_body = self.shared.config.max_body() as u64;
        for (i, r) in records.iter().enumerate() {
            let total = format::encode_frame(&mut frames, r, appended(i));
            if total > max_body {
                return Err(BacklogError::TooLarge {
                    index: i,
                    reason: format!(
                        "a record of {total} bytes does not fit a backlog segment of {} bytes (raise backlog.segment_bytes)",
                        self.shared.config.segment_bytes
                    ),
                });
            }
            sizes.push((total, r.not_before_ms));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append {
            frames,
            sizes,
            bypass,
            want_locs: bypass,
            reply,
        })?;
        rx.await.map_err(|_| gone())?
    }
}

fn gone() -> BacklogError {
    BacklogError::Unavailable("the backlog writer has stopped".into())
}

#[async_trait]
impl BacklogStore for DiskBacklog {
    async fn append(&self, records: &[BacklogRecord]) -> Result<(), BacklogError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = now_epoch_ms();
        self.store(records, |_| now, false).await.map(|_| ())
    }

    async fn retry(&self, records: &[StoredRecord]) -> Result<(), BacklogError> {
        let now = now_epoch_ms();
        let (owned, appended): (Vec<_>, Vec<_>) = {
            let idx = self.shared.index.lock();
            records
                .iter()
                .filter_map(|r| idx.in_flight.get(&r.id).map(|f| (r, f.appended_ms)))
                .unzip()
        };
        if owned.is_empty() {
            return Ok(());
        }
        let copies: Vec<BacklogRecord> = owned.iter().map(|r| r.record.clone()).collect();
        let stored = self
            .store(&copies, |i| appended.get(i).copied().unwrap_or(now), true)
            .await?;
        {
            let mut idx = self.shared.index.lock();
            for r in &owned {
                if let Some(f) = idx.in_flight.get(&r.id).copied() {
                    idx.forget(&self.shared.counters, f.seq, r.id, f.bytes, Gone::Released);
                }
            }
        }
        self.reader
            .lock()
            .await
            .index_retries(&self.shared, &stored.locs);
        Ok(())
    }

    async fn take_ready(&self, max: usize, now_ms: i64) -> Result<Vec<StoredRecord>, BacklogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let shared = Arc::clone(&self.shared);
        let mut reader = Arc::clone(&self.reader).lock_owned().await;
        tokio::task::spawn_blocking(move || reader.take_ready(&shared, max, now_ms))
            .await
            .map_err(|e| BacklogError::Unavailable(format!("backlog reader failed: {e}")))?
    }

    async fn release(&self, ids: &[RecordId]) -> Result<(), BacklogError> {
        let mut idx = self.shared.index.lock();
        for id in ids {
            if let Some(f) = idx.in_flight.get(id).copied() {
                idx.forget(&self.shared.counters, f.seq, *id, f.bytes, Gone::Released);
            }
        }
        Ok(())
    }

    fn depth(&self) -> BacklogDepth {
        self.shared.counters.depth()
    }

    /// The creation time of the oldest segment that still holds an owed
    /// record: a segment's records are all younger than the segment, so
    /// this overstates the age by at most the time the segment took to
    /// fill. One short lock and a walk to the first such segment.
    fn oldest_ms(&self) -> Option<i64> {
        let idx = self.shared.index.lock();
        idx.segments
            .values()
            .find(|s| s.live > 0 || s.in_flight > 0)
            .map(|s| s.created_ms)
            .filter(|&ms| ms > 0)
    }

    async fn close(&self) -> Result<(), BacklogError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Close(reply))?;
        self.shared.closed.store(true, Ordering::Release);
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for DiskBacklog {
    fn drop(&mut self) {
        // Disconnecting makes the writer save the ledger and stop; wait for
        // it so the directory is free once the store is gone.
        self.tx.take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
