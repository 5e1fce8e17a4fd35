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

use super::audit::{AuditError, Damage, LedgerState, audit};
use super::format::{self, BodyView, FORMAT_VERSION};
use super::ledger::{Ledger, LedgerError, RangeSet};
use super::lock::LOCK_FILE;
use super::segment::{SegmentReader, Step, list_segments};
use crate::filesystem::RealFilesystem;
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
    /// Damaged places (headers, spans, tails that are not a torn write).
    pub corrupt: u64,
    /// Records lost to damage (ids assigned, neither on disk nor released).
    pub lost: u64,
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

/// What `verify` reports: the same audit recovery runs, plus a decode of
/// every record body.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The directory.
    pub dir: String,
    /// Segment files checked.
    pub segments: u64,
    /// Valid records (every checksum checked).
    pub records: u64,
    /// Records lost: ids that were assigned but are neither on disk nor
    /// released (a deleted or truncated segment, a damaged span).
    pub lost: u64,
    /// The first lost id ranges, `[start, end)`.
    pub lost_ids: Vec<(u64, u64)>,
    /// Every damaged place (a torn tail of the last segment is listed too,
    /// but it held writes that were never acknowledged and is not damage).
    pub damage: Vec<Damage>,
    /// The ledger's state.
    pub ledger: LedgerState,
    /// True when nothing is damaged or lost, the ledger included.
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
    /// A segment written whole by another format version.
    #[error("{0}")]
    Version(String),
}

fn from_audit(e: AuditError) -> InspectError {
    match e {
        AuditError::Io { action, source } => InspectError::Io {
            path: action,
            source,
        },
        AuditError::Version { .. } => InspectError::Version(e.to_string()),
    }
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
    let segs = list_segments(&RealFilesystem, dir).map_err(io(dir))?;
    if segs.is_empty() {
        return Err(InspectError::Empty(dir.display().to_string()));
    }
    Ok(segs)
}

/// Summarises the backlog in `dir`.
pub fn inspect_dir(dir: &Path) -> Result<Inspection, InspectError> {
    let segs = segments_of(dir)?;
    let (released, ledger): (RangeSet, &'static str) = match Ledger::load(&RealFilesystem, dir) {
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
        lost: 0,
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
    // The highest id read so far: where a segment with a damaged header
    // resumes, as recovery resumes it.
    let mut max_id = 0u64;
    for (seq, path) in segs {
        let mut r = SegmentReader::open(
            &RealFilesystem,
            &path,
            None,
            1 << 20,
            format::MAX_FRAME_BODY,
        )
        .map_err(io(&path))?
        .after_damaged_header(max_id);
        let mut s = SegmentSummary {
            file: path.display().to_string(),
            seq,
            bytes: r.limit(),
            records: 0,
            owed: 0,
        };
        out.disk_bytes += r.limit();
        loop {
            match r.next_step().map_err(io(&path))? {
                Step::Record { id, total, .. } => {
                    max_id = max_id.max(id);
                    s.records += 1;
                    if released.contains(id) {
                        out.released += 1;
                        continue;
                    }
                    s.owed += 1;
                    out.records += 1;
                    out.bytes += total;
                    if let Ok(b) = BodyView::parse(r.body()) {
                        oldest = oldest.min(b.appended_ms);
                        newest = newest.max(b.appended_ms);
                        if b.attempts > 0 {
                            out.retried += 1;
                        }
                        let kind = std::str::from_utf8(b.topic)
                            .map_or("other", |t| classify(t).kind.as_str());
                        *out.kinds.entry(kind.to_string()).or_default() += 1;
                    }
                }
                Step::Corrupt { .. } => {}
                Step::Tail { len, .. } => out.tail_bytes += len,
                Step::End => break,
            }
        }
        out.segments.push(s);
    }
    // Damage and losses as recovery would count them.
    let found = audit(&RealFilesystem, dir, format::MAX_FRAME_BODY, false).map_err(from_audit)?;
    out.lost = found.lost;
    out.corrupt = found.damage.iter().filter(|d| d.kind.is_damage()).count() as u64;
    if out.records > 0 {
        out.oldest_age_ms = Some(now - oldest);
        out.newest_age_ms = Some(now - newest);
    }
    Ok(out)
}

/// Checks every checksum in `dir`, accounts for every record id and checks
/// the ledger; changes nothing.
pub fn verify_dir(dir: &Path) -> Result<Verification, InspectError> {
    segments_of(dir)?;
    let found = audit(&RealFilesystem, dir, format::MAX_FRAME_BODY, true).map_err(from_audit)?;
    Ok(Verification {
        dir: dir.display().to_string(),
        segments: found.segment_files,
        records: found.valid,
        lost: found.lost,
        lost_ids: found.lost_ids.clone(),
        ok: !found.is_damaged(),
        ledger: found.ledger.clone().unwrap_or(LedgerState::Missing),
        damage: found.damage,
    })
}
