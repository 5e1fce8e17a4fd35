//! Start-up recovery: from the ledger and the segments, rebuild what the
//! store owes, repairing what a crash or a bad disk left behind.
//!
//! Invariants:
//! - recovery never refuses to start because of damaged records: a record
//!   that fails its checksum is skipped and counted, a torn tail of the last
//!   segment is cut off (truncated) and counted, a missing or damaged ledger
//!   is rebuilt from the segments (released records then come back: at
//!   least once, never lost);
//! - only a segment from a newer format version stops the store from opening
//!   (reading it could misinterpret data that is not damaged);
//! - memory used is one read chunk plus one entry per segment, whatever the
//!   size of the backlog;
//! - the next id is above every id in the segments and in the ledger.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::format::{FormatError, SEGMENT_HEADER_LEN};
use super::ledger::{Ledger, LedgerError, RangeSet};
use super::segment::{SegmentReader, Step, list_segments};
use super::state::SegMeta;
use crate::backlog::BacklogError;

/// What recovery found; logged at start-up and kept by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: u64,
    /// Records owed (valid and not released).
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Valid records the ledger says were released already.
    pub released: u64,
    /// Damaged records (or damaged spans) skipped.
    pub corrupt: u64,
    /// Torn tails cut off.
    pub cut: u64,
    /// Bytes cut off.
    pub cut_bytes: u64,
    /// How the ledger was: `loaded`, `missing` or `damaged` (the last two
    /// mean it was rebuilt from the segments).
    pub ledger: &'static str,
    /// How long recovery took.
    #[serde(serialize_with = "millis")]
    pub took: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// The recovered state, ready to run.
pub struct Recovered {
    /// The segments (the last one is the active one and is not sealed).
    pub segments: BTreeMap<u64, SegMeta>,
    /// Released ids.
    pub released: RangeSet,
    /// The next id to assign.
    pub next_id: u64,
    /// What was found.
    pub report: RecoveryReport,
}

fn io_err(action: String) -> impl FnOnce(std::io::Error) -> BacklogError {
    move |source| BacklogError::Io { action, source }
}

/// Recovers the backlog in `dir` (which exists and is locked by the caller).
pub fn recover(dir: &Path, max_body: usize) -> Result<Recovered, BacklogError> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let (ledger, ledger_state) = match Ledger::load(dir) {
        Ok(l) => (l, "loaded"),
        Err(LedgerError::Missing) => (Ledger::default(), "missing"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "backlog ledger unusable; rebuilding it from the segments (released records will be delivered again)");
            (Ledger::default(), "damaged")
        }
    };
    report.ledger = ledger_state;
    let released = ledger.released;
    let files = list_segments(dir).map_err(|e| io_err(format!("listing {}", dir.display()))(e))?;
    report.segments = files.len() as u64;
    let mut segments = BTreeMap::new();
    let mut max_id = 0u64;
    let mut next_from_headers = 0u64;
    let count = files.len();
    for (i, (seq, path)) in files.into_iter().enumerate() {
        let last = i + 1 == count;
        let mut reader = SegmentReader::open(&path, None, 1 << 20, max_body)
            .map_err(|e| io_err(format!("opening {}", path.display()))(e))?;
        let first_id = match &reader.header {
            Ok(h) => {
                next_from_headers = next_from_headers.max(h.first_id);
                h.first_id
            }
            Err(FormatError::UnsupportedVersion(v)) => {
                return Err(BacklogError::Unavailable(format!(
                    "{}: {}",
                    path.display(),
                    FormatError::UnsupportedVersion(*v)
                )));
            }
            Err(e) => {
                if last && reader.limit() <= SEGMENT_HEADER_LEN {
                    // A segment whose creation was cut short: nothing in it.
                    tracing::warn!(segment = %path.display(), error = %e, "removing a segment whose creation was interrupted");
                    std::fs::remove_file(&path)
                        .map_err(|e| io_err(format!("removing {}", path.display()))(e))?;
                    report.cut += 1;
                    report.cut_bytes += reader.limit();
                    report.segments -= 1;
                    continue;
                }
                tracing::warn!(segment = %path.display(), error = %e, "segment header is damaged; reading its records anyway");
                report.corrupt += 1;
                reader.seek(SEGMENT_HEADER_LEN, max_id);
                max_id + 1
            }
        };
        let mut meta = SegMeta {
            path: path.clone(),
            first_id,
            end: reader.limit(),
            sealed: !last,
            ..SegMeta::default()
        };
        loop {
            match reader
                .next_step()
                .map_err(|e| io_err(format!("reading {}", path.display()))(e))?
            {
                Step::Record { id, total, .. } => {
                    max_id = max_id.max(id);
                    if released.contains(id) {
                        report.released += 1;
                    } else {
                        meta.live += 1;
                        meta.live_bytes += total;
                    }
                }
                Step::Corrupt { offset, len } => {
                    tracing::warn!(segment = %path.display(), offset, len, "skipping a damaged record");
                    report.corrupt += 1;
                }
                Step::Tail { offset, len, torn } => {
                    if torn {
                        report.cut += 1;
                    } else {
                        tracing::warn!(segment = %path.display(), offset, len, "damaged record at the end of a segment");
                        report.corrupt += 1;
                    }
                    if last {
                        tracing::warn!(segment = %path.display(), offset, len, torn, "cutting the unusable tail of the last segment");
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| io_err(format!("opening {}", path.display()))(e))?;
                        f.set_len(offset)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| io_err(format!("truncating {}", path.display()))(e))?;
                        report.cut_bytes += len;
                        meta.end = offset;
                    }
                }
                Step::End => break,
            }
        }
        report.records += meta.live;
        report.bytes += meta.live_bytes;
        segments.insert(seq, meta);
    }
    let next_id = ledger.next_id.max(max_id + 1).max(next_from_headers).max(1);
    let mut released = released;
    if let Some(first) = segments.values().next() {
        released.prune_below(first.first_id);
    } else {
        released = RangeSet::default();
    }
    report.took = started.elapsed();
    Ok(Recovered {
        segments,
        released,
        next_id,
        report,
    })
}
