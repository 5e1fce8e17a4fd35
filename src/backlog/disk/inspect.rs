//! Read-only views of a backlog directory for `laneway backlog inspect` and
//! `laneway backlog verify`.
//!
//! Invariants: nothing here writes to the directory or takes its lock, so
//! both can run beside the process that owns the backlog; damage is
//! reported with the segment file and byte offset, never "fixed".

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::path::Path;

use serde::Serialize;

use super::format::{BodyView, FORMAT_VERSION};
use super::ledger::{Ledger, LedgerError, RangeSet};
use super::lock::LOCK_FILE;
use super::segment::{SegmentReader, Step, list_segments};
use crate::message::{classify, now_epoch_ms};

/// One segment in an [`Inspection`].
#[derive(Debug, Clone, Serialize)]
pub struct SegmentSummary {
    /// The file.
    pub file: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its size on disk.
    pub bytes: u64,
    /// Valid records in it.
    pub records: u64,
    /// Of those, not yet released.
    pub owed: u64,
}

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The directory.
    pub dir: String,
    /// The format version this laneway reads.
    pub format_version: u8,
    /// Whether a process holds the directory's lock now.
    pub in_use: bool,
    /// How the ledger was: `loaded`, `missing` or `damaged`.
    pub ledger: &'static str,
    /// Records owed (valid, not released per the ledger).
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Valid records already released (awaiting segment deletion).
    pub released: u64,
    /// Damaged records or spans.
    pub corrupt: u64,
    /// Bytes of unusable tails (cut on the next open).
    pub tail_bytes: u64,
    /// Segment files.
    pub segment_count: u64,
    /// Bytes of all segment files.
    pub disk_bytes: u64,
    /// Age of the oldest owed record (since it was stored), milliseconds.
    pub oldest_age_ms: Option<i64>,
    /// Age of the newest owed record, milliseconds.
    pub newest_age_ms: Option<i64>,
    /// Owed records that were tried and failed at least once.
    pub retried: u64,
    /// Owed records per kind.
    pub kinds: BTreeMap<String, u64>,
    /// Every segment.
    pub segments: Vec<SegmentSummary>,
}

/// One damaged place found by `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptRecord {
    /// The segment file.
    pub segment: String,
    /// Byte offset of the damage.
    pub offset: u64,
    /// Bytes affected.
    pub len: u64,
    /// What is wrong.
    pub problem: String,
}

/// What `verify` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The directory.
    pub dir: String,
    /// Segment files checked.
    pub segments: u64,
    /// Valid records (every checksum checked).
    pub records: u64,
    /// Damaged records, spans and headers.
    pub corrupt: Vec<CorruptRecord>,
    /// A torn tail of the last segment (an interrupted write: it is cut on
    /// the next open and is not damage).
    pub torn_tail: Option<CorruptRecord>,
    /// The ledger's state: `loaded`, `missing` or a description of damage.
    pub ledger: String,
    /// True when nothing is damaged.
    pub ok: bool,
}

/// Why a directory could not be examined.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The path is not a readable directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no backlog.
    #[error("{0}: no backlog segments here (expected files like 00000000000000000001.seg)")]
    Empty(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InspectError + '_ {
    move |source| InspectError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn in_use(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

fn segments_of(dir: &Path) -> Result<Vec<(u64, std::path::PathBuf)>, InspectError> {
    let segs = list_segments(dir).map_err(io(dir))?;
    if segs.is_empty() {
        return Err(InspectError::Empty(dir.display().to_string()));
    }
    Ok(segs)
}

/// Summarises the backlog in `dir`.
pub fn inspect_dir(dir: &Path) -> Result<Inspection, InspectError> {
    let segs = segments_of(dir)?;
    let (released, ledger): (RangeSet, &'static str) = match Ledger::load(dir) {
        Ok(l) => (l.released, "loaded"),
        Err(LedgerError::Missing) => (RangeSet::default(), "missing"),
        Err(_) => (RangeSet::default(), "damaged"),
    };
    let now = now_epoch_ms();
    let mut out = Inspection {
        dir: dir.display().to_string(),
        format_version: FORMAT_VERSION,
        in_use: in_use(dir),
        ledger,
        records: 0,
        bytes: 0,
        released: 0,
        corrupt: 0,
        tail_bytes: 0,
        segment_count: segs.len() as u64,
        disk_bytes: 0,
        oldest_age_ms: None,
        newest_age_ms: None,
        retried: 0,
        kinds: BTreeMap::new(),
        segments: Vec::new(),
    };
    let (mut oldest, mut newest) = (i64::MAX, i64::MIN);
    for (seq, path) in segs {
        let mut r =
            SegmentReader::open(&path, None, 1 << 20, u32::MAX as usize).map_err(io(&path))?;
        let mut s = SegmentSummary {
            file: path.display().to_string(),
            seq,
            bytes: r.limit(),
            records: 0,
            owed: 0,
        };
        out.disk_bytes += r.limit();
        if r.header.is_err() {
            out.corrupt += 1;
        }
        loop {
            match r.next_step().map_err(io(&path))? {
                Step::Record { id, total, .. } => {
                    s.records += 1;
                    if released.contains(id) {
                        out.released += 1;
                        continue;
                    }
                    s.owed += 1;
                    out.records += 1;
                    out.bytes += total;
                    match BodyView::parse(r.body()) {
                        Ok(b) => {
                            oldest = oldest.min(b.appended_ms);
                            newest = newest.max(b.appended_ms);
                            if b.attempts > 0 {
                                out.retried += 1;
                            }
                            let kind = std::str::from_utf8(b.topic)
                                .map_or("other", |t| classify(t).kind.as_str());
                            *out.kinds.entry(kind.to_string()).or_default() += 1;
                        }
                        Err(_) => out.corrupt += 1,
                    }
                }
                Step::Corrupt { .. } => out.corrupt += 1,
                Step::Tail { len, torn, .. } => {
                    if !torn {
                        out.corrupt += 1;
                    }
                    out.tail_bytes += len;
                }
                Step::End => break,
            }
        }
        out.segments.push(s);
    }
    if out.records > 0 {
        out.oldest_age_ms = Some(now - oldest);
        out.newest_age_ms = Some(now - newest);
    }
    Ok(out)
}

/// Checks every checksum in `dir`.
pub fn verify_dir(dir: &Path) -> Result<Verification, InspectError> {
    let segs = segments_of(dir)?;
    let ledger = match Ledger::load(dir) {
        Ok(_) => "loaded".to_string(),
        Err(LedgerError::Missing) => "missing".to_string(),
        Err(e) => e.to_string(),
    };
    let mut out = Verification {
        dir: dir.display().to_string(),
        segments: segs.len() as u64,
        records: 0,
        corrupt: Vec::new(),
        torn_tail: None,
        ledger,
        ok: true,
    };
    let count = segs.len();
    for (i, (_, path)) in segs.into_iter().enumerate() {
        let last = i + 1 == count;
        let file = path.display().to_string();
        let mut r =
            SegmentReader::open(&path, None, 1 << 20, u32::MAX as usize).map_err(io(&path))?;
        if let Err(e) = &r.header {
            out.corrupt.push(CorruptRecord {
                segment: file.clone(),
                offset: 0,
                len: super::format::SEGMENT_HEADER_LEN,
                problem: format!("segment header: {e}"),
            });
        }
        loop {
            match r.next_step().map_err(io(&path))? {
                Step::Record { offset, total, .. } => {
                    out.records += 1;
                    if let Err(e) = BodyView::parse(r.body()).and_then(|b| b.record().map(|_| ()))
                    {
                        out.corrupt.push(CorruptRecord {
                            segment: file.clone(),
                            offset,
                            len: total,
                            problem: e.to_string(),
                        });
                    }
                }
                Step::Corrupt { offset, len } => out.corrupt.push(CorruptRecord {
                    segment: file.clone(),
                    offset,
                    len,
                    problem: "checksum mismatch (record skipped)".into(),
                }),
                Step::Tail { offset, len, torn } => {
                    let c = CorruptRecord {
                        segment: file.clone(),
                        offset,
                        len,
                        problem: if torn {
                            "torn tail (an interrupted write)".into()
                        } else {
                            "checksum mismatch at the end of the segment".into()
                        },
                    };
                    if torn && last {
                        out.torn_tail = Some(c);
                    } else {
                        out.corrupt.push(c);
                    }
                }
                Step::End => break,
            }
        }
    }
    out.ok = out.corrupt.is_empty();
    Ok(out)
}
