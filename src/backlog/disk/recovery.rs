//! Start-up recovery: audit the directory (see [`super::audit`]), then
//! repair what a crash or a bad disk left behind, and report it.
//!
//! Invariants:
//! - recovery never refuses to start because of damage: a damaged record,
//!   span or header costs the records in it, each counted (and named by id
//!   range); a missing or damaged ledger is rebuilt from the segments
//!   (released records then come back: at least once, never lost);
//! - only a segment written whole by another format version stops the
//!   store from opening (reading it could misread data that is not damaged);
//! - repairs: the last segment's unusable tail is cut (truncated), a last
//!   segment whose creation was cut short is removed, and a copy of a
//!   segment, a segment whose ids repeat an earlier one's and an old
//!   delivered segment restored from a backup are moved to `quarantine/` for
//!   an operator;
//!   nothing else is written;
//! - the next id is above every id in the segments, their headers and the
//!   ledger;
//! - every read and every repair goes through the store's [`Filesystem`]: a
//!   read that fails (EIO) stops the store from opening with an error naming
//!   the file, before anything is repaired; nothing is guessed from a file
//!   that could not be read.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::audit::{AuditError, DamageKind, audit};
use super::ledger::RangeSet;
use super::state::SegMeta;
use crate::backlog::BacklogError;
use crate::filesystem::Filesystem;

/// The folder inside a backlog directory where duplicate segments are put.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What recovery found; logged at start-up and kept by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Segment files found (quarantined ones included).
    pub segments: u64,
    /// Records owed (valid and not released).
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Valid records the ledger says were released already.
    pub released: u64,
    /// Records lost to damage: assigned ids neither on disk nor released.
    pub lost: u64,
    /// The first lost id ranges, `[start, end)` (the count above is exact).
    pub lost_ids: Vec<(u64, u64)>,
    /// Damaged places (headers, spans, tails) skipped.
    pub damaged: u64,
    /// Torn tails cut off (writes a crash cut short: never acknowledged).
    pub cut: u64,
    /// Bytes cut off.
    pub cut_bytes: u64,
    /// Segment files moved to `quarantine/`: copies of a segment under
    /// another name, or files whose ids repeat earlier ones.
    pub quarantined: u64,
    /// Old segments, all delivered before, found restored and moved to
    /// `quarantine/` (not damage: nothing owed, nothing lost).
    pub delivered_files: u64,
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
    pub segments: std::collections::BTreeMap<u64, SegMeta>,
    /// Released ids.
    pub released: RangeSet,
    /// Released ids as the ledger on disk says (lost ids are not in it).
    pub saved: RangeSet,
    /// The next id to assign.
    pub next_id: u64,
    /// What was found.
    pub report: RecoveryReport,
}

fn io_err(action: String) -> impl FnOnce(std::io::Error) -> BacklogError {
    move |source| BacklogError::Io { action, source }
}

/// Recovers the backlog in `dir` (which exists and is locked by the
/// caller), reading and repairing through `fs`.
pub fn recover(
    fs: &dyn Filesystem,
    dir: &Path,
    max_body: usize,
) -> Result<Recovered, BacklogError> {
    let started = Instant::now();
    let found = audit(fs, dir, max_body, false).map_err(|e| match e {
        AuditError::Io { action, source } => BacklogError::Io { action, source },
        AuditError::Version { .. } => BacklogError::Unavailable(e.to_string()),
    })?;
    for d in &found.damage {
        tracing::warn!(segment = %d.segment, offset = d.offset, len = d.len, kind = ?d.kind, "{}", d.problem);
    }
    let mut report = RecoveryReport {
        segments: found.segment_files,
        records: found.owed,
        bytes: found.owed_bytes,
        released: found.released_found,
        lost: found.lost,
        lost_ids: found.lost_ids.clone(),
        damaged: found.damage.iter().filter(|d| d.kind.is_damage()).count() as u64,
        ledger: match found.ledger {
            Some(super::audit::LedgerState::Loaded) => "loaded",
            Some(super::audit::LedgerState::Missing) | None => "missing",
            Some(super::audit::LedgerState::Damaged(_)) => "damaged",
        },
        ..RecoveryReport::default()
    };
    if let Some(path) = &found.interrupted {
        tracing::warn!(segment = %path.display(), "removing a segment whose creation was interrupted");
        fs.remove_file(path)
            .map_err(io_err(format!("removing {}", path.display())))?;
        report.cut += 1;
    }
    if let Some((path, offset, len)) = &found.cut_at {
        tracing::warn!(segment = %path.display(), offset, len, "cutting the unusable tail of the last segment");
        let f = fs
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        f.set_len(*offset)
            .and_then(|()| f.sync_data())
            .map_err(io_err(format!("truncating {}", path.display())))?;
        if found.damage.iter().any(|d| d.kind == DamageKind::TornTail) {
            report.cut += 1;
        }
        report.cut_bytes += len;
    }
    if !found.duplicates.is_empty() || !found.delivered.is_empty() {
        let quarantine = dir.join(QUARANTINE_DIR);
        fs.create_dir_all(&quarantine)
            .map_err(io_err(format!("creating {}", quarantine.display())))?;
        for (path, delivered) in found
            .duplicates
            .iter()
            .map(|p| (p, false))
            .chain(found.delivered.iter().map(|p| (p, true)))
        {
            let Some(name) = path.file_name() else {
                continue;
            };
            let mut to = quarantine.join(name);
            if to.exists() {
                // Never overwrite what an earlier recovery set aside.
                to = quarantine.join(format!(
                    "{}.{}",
                    name.to_string_lossy(),
                    crate::message::now_epoch_ms()
                ));
            }
            if delivered {
                tracing::info!(segment = %path.display(), to = %to.display(), "moving an old segment whose records were all delivered (restored from a backup?) to quarantine");
                report.delivered_files += 1;
            } else {
                tracing::warn!(segment = %path.display(), to = %to.display(), "moving a copy of a segment, or a segment whose ids repeat an earlier segment's, to quarantine");
                report.quarantined += 1;
            }
            fs.rename(path, &to)
                .map_err(io_err(format!("moving {}", path.display())))?;
        }
        fs.sync_dir(dir)
            .map_err(io_err(format!("syncing {}", dir.display())))?;
    }
    report.took = started.elapsed();
    Ok(Recovered {
        segments: found.segments,
        released: found.released,
        saved: found.ledger_released,
        next_id: found.next_id,
        report,
    })
}
