//! The audit: one read-only pass over a backlog directory that accounts for
//! every record id. Recovery acts on it (cuts, removals, quarantine) and
//! `laneway backlog verify` reports it, so the two can never disagree about
//! what is damaged or how much was lost.
//!
//! Invariants:
//! - nothing here writes to the directory;
//! - ids are assigned densely (the writer reuses the ids of a failed write),
//!   so every id from the log's first id to its next id was once a record;
//!   an id in that range that is neither found valid on disk nor released
//!   in the ledger is **lost**, and is counted and named by range. A deleted
//!   or truncated segment, a damaged span of any size or a damaged header is
//!   therefore counted record by record, never as "1";
//! - records written after the ledger was last saved and cut off by a crash
//!   before their fsync were never acknowledged: they lie past every id the
//!   ledger and the segment headers vouch for and are not counted as lost
//!   (a torn tail);
//! - a file is judged by its content, not its name: a segment whose header
//!   names another segment that is present (a copy under another name) is
//!   set aside, whatever its name sorts as, so the genuine one is read; a
//!   segment whose ids all lie below the ledger's head (an old segment,
//!   delivered and deleted, restored from a backup) is set aside as
//!   delivered, neither owed nor counted as lost; any other segment whose
//!   ids repeat ids of an earlier segment is set aside too, never read as
//!   owed records: two records under one id could not be released apart;
//! - records the ledger vouches for (below its `next_id`) were acknowledged:
//!   a cut or zeroed tail that took any of them is damage and each is
//!   counted, never called a torn tail;
//! - memory is one read chunk plus one entry per segment and per damaged
//!   range, whatever the size of the backlog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::format::{BodyView, FormatError, SEGMENT_HEADER_LEN, SegmentHeader};
use super::ledger::{Ledger, LedgerError, RangeSet};
use super::segment::{SegmentReader, Step, list_segments};
use super::state::SegMeta;
use crate::filesystem::{Filesystem, read_at_most};

/// How many lost id ranges a report names (the count is always exact).
pub const MAX_NAMED_RANGES: usize = 32;

/// What the ledger file was found to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "problem")]
pub enum LedgerState {
    /// Read and checked.
    Loaded,
    /// There is none (a store that never saved one, or it was deleted):
    /// released records come back, nothing is lost.
    Missing,
    /// It fails its checks; it is rebuilt from the segments (released
    /// records come back, nothing is lost).
    Damaged(String),
}

/// What kind of damage a [`Damage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// A segment header that fails its checksum (its records are still read).
    Header,
    /// Bytes between two valid records that are no valid record.
    Span,
    /// Bytes at the end of a segment that are no valid record and do not
    /// look like a write cut short.
    Tail,
    /// The end of the last segment, cut short by a crash mid-write.
    TornTail,
    /// The last segment, whose creation was cut short (no header).
    Interrupted,
    /// A segment whose ids repeat an earlier segment's, or a copy of a
    /// segment under another name.
    Duplicate,
    /// An old segment whose records were all delivered (and the segment
    /// deleted) before it came back, restored from a backup: set aside,
    /// nothing owed, nothing lost.
    Delivered,
}

impl DamageKind {
    /// Whether this is damage: a torn tail and an interrupted segment
    /// creation are what a crash leaves of writes never acknowledged, cut
    /// on the next open, and cost nothing.
    pub fn is_damage(self) -> bool {
        !matches!(
            self,
            DamageKind::TornTail | DamageKind::Interrupted | DamageKind::Delivered
        )
    }
}

/// One damaged place, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// The segment file.
    pub segment: String,
    /// Byte offset of the damage in the file.
    pub offset: u64,
    /// Bytes affected.
    pub len: u64,
    /// What it is.
    pub kind: DamageKind,
    /// In words.
    pub problem: String,
}

impl Damage {
    /// Damage that makes the whole file `len` bytes long what it is (a
    /// copy, an interrupted creation, an old delivered segment).
    fn whole_file(segment: String, len: u64, kind: DamageKind, problem: String) -> Damage {
        Damage {
            segment,
            offset: 0,
            len,
            kind,
            problem,
        }
    }
}

/// Everything one pass over a backlog directory found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Segments that hold records to serve, by sequence number (the last
    /// one is the active one and is not sealed).
    pub segments: BTreeMap<u64, SegMeta>,
    /// Ids owed no more: released per the ledger, and the lost ones (so a
    /// loss is counted by the recovery that finds it, not at every start).
    pub released: RangeSet,
    /// Ids the ledger file itself calls released (what is durable now).
    pub ledger_released: RangeSet,
    /// The next id to assign: above every id seen or vouched for.
    pub next_id: u64,
    /// The ledger's state.
    pub ledger: Option<LedgerState>,
    /// Segment files found.
    pub segment_files: u64,
    /// Valid records found.
    pub valid: u64,
    /// Of those, owed (not released).
    pub owed: u64,
    /// Their bytes on disk.
    pub owed_bytes: u64,
    /// Valid records the ledger calls released.
    pub released_found: u64,
    /// Valid records whose body does not decode (counted in `valid`, owed
    /// ones among them are also lost once read); checked only when asked.
    pub undecodable: u64,
    /// Records lost: ids assigned but neither on disk nor released.
    pub lost: u64,
    /// The first [`MAX_NAMED_RANGES`] lost id ranges, `[start, end)`.
    pub lost_ids: Vec<(u64, u64)>,
    /// Every damaged place, in log order.
    pub damage: Vec<Damage>,
    /// Where the last segment's unusable tail starts, if it has one (cut on
    /// open).
    pub cut_at: Option<(PathBuf, u64, u64)>,
    /// The last segment's file if its creation was cut short (removed on open).
    pub interrupted: Option<PathBuf>,
    /// Segment files to set aside (their ids repeat earlier ones).
    pub duplicates: Vec<PathBuf>,
    /// Segment files to set aside as delivered long ago (restored files).
    pub delivered: Vec<PathBuf>,
}

impl Audit {
    /// Whether anything is damaged or lost (a torn tail is neither: it held
    /// writes that were never acknowledged).
    pub fn is_damaged(&self) -> bool {
        self.lost > 0
            || self.undecodable > 0
            || matches!(self.ledger, Some(LedgerState::Damaged(_)))
            || self.damage.iter().any(|d| d.kind.is_damage())
    }
}

/// Why a directory could not be audited at all.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being read.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A segment written by another version of the format, whole (its
    /// header's checksum holds): reading on could misread data that is not
    /// damaged.
    #[error("{path}: {source}")]
    Version {
        /// The segment.
        path: String,
        /// The version found.
        #[source]
        source: FormatError,
    },
}

/// An I/O error with what was being done, formatted only when there is an
/// error (reading runs once per record).
fn io_error(action: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> AuditError {
    move |source| AuditError::Io {
        action: action(),
        source,
    }
}

/// Audits `dir`, reading through `fs`; `check_bodies` also decodes every
/// record body (for `verify`; recovery leaves that to the reader). A read
/// that fails is [`AuditError::Io`], naming the file.
pub fn audit(
    fs: &dyn Filesystem,
    dir: &Path,
    max_body: usize,
    check_bodies: bool,
) -> Result<Audit, AuditError> {
    let mut out = Audit::default();
    let ledger = match Ledger::load(fs, dir) {
        Ok(l) => {
            out.ledger = Some(LedgerState::Loaded);
            l
        }
        Err(LedgerError::Missing) => {
            out.ledger = Some(LedgerState::Missing);
            Ledger::default()
        }
        Err(e) => {
            out.ledger = Some(LedgerState::Damaged(e.to_string()));
            Ledger::default()
        }
    };
    let listed =
        list_segments(fs, dir).map_err(io_error(|| format!("listing {}", dir.display())))?;
    out.segment_files = listed.len() as u64;
    let files = judge_by_content(fs, listed, ledger.head, &mut out)?;
    // Ids seen valid, as ranges; the run being extended is kept apart so a
    // healthy log costs one comparison per record, not a map update.
    let mut found = RangeSet::default();
    let mut run: Option<(u64, u64)> = None;
    let mut max_id = 0u64;
    let mut vouched = ledger.next_id;
    // The log's first id: the lowest the ledger, a header or a record vouches for.
    let mut first_id: Option<u64> = ledger.head;
    let lower = |first_id: &mut Option<u64>, id: u64| {
        *first_id = Some(first_id.map_or(id, |f| f.min(id)));
    };
    let count = files.len();
    let mut last_cut: Option<(usize, u64)> = None;
    for (i, (seq, path)) in files.into_iter().enumerate() {
        let last = i + 1 == count;
        let name = path.display().to_string();
        let mut reader = SegmentReader::open(fs, &path, None, 1 << 20, max_body)
            .map_err(io_error(|| format!("opening {name}")))?;
        let header_created = reader.header.as_ref().map_or(0, |h| h.created_ms);
        let header_first = match &reader.header {
            Ok(h) => {
                if h.first_id <= max_id {
                    out.damage.push(Damage::whole_file(
                        name.clone(),
                        reader.limit(),
                        DamageKind::Duplicate,
                        format!(
                            "its ids start at {} but an earlier segment already holds ids up to {max_id} (a copied or restored file?)",
                            h.first_id
                        ),
                    ));
                    out.duplicates.push(path);
                    continue;
                }
                vouched = vouched.max(h.first_id);
                Some(h.first_id)
            }
            Err(FormatError::UnsupportedVersion(v)) => {
                return Err(AuditError::Version {
                    path: name,
                    source: FormatError::UnsupportedVersion(*v),
                });
            }
            Err(e) => {
                if last && reader.limit() <= SEGMENT_HEADER_LEN {
                    out.damage.push(Damage::whole_file(
                        name,
                        reader.limit(),
                        DamageKind::Interrupted,
                        "the segment's creation was cut short (no header)".into(),
                    ));
                    out.interrupted = Some(path);
                    out.segment_files -= 1;
                    continue;
                }
                out.damage.push(Damage {
                    segment: name.clone(),
                    offset: 0,
                    len: SEGMENT_HEADER_LEN,
                    kind: DamageKind::Header,
                    problem: format!("segment header: {e} (its records are read anyway)"),
                });
                reader.seek(SEGMENT_HEADER_LEN, max_id);
                None
            }
        };
        if let Some(h) = header_first {
            lower(&mut first_id, h);
        }
        let mut meta = SegMeta {
            path: path.clone(),
            first_id: header_first.unwrap_or(max_id + 1),
            end: reader.limit(),
            sealed: !last,
            created_ms: header_created,
            ..SegMeta::default()
        };
        loop {
            match reader
                .next_step()
                .map_err(io_error(|| format!("reading {name}")))?
            {
                Step::Record { id, offset, total } => {
                    max_id = max_id.max(id);
                    lower(&mut first_id, id);
                    run = match run {
                        Some((s, e)) if e == id => Some((s, id + 1)),
                        Some((s, e)) => {
                            found.insert_range(s, e);
                            Some((id, id + 1))
                        }
                        None => Some((id, id + 1)),
                    };
                    out.valid += 1;
                    if check_bodies
                        && let Err(e) = BodyView::parse(reader.body()).and_then(|b| b.record())
                    {
                        out.undecodable += 1;
                        out.damage.push(Damage {
                            segment: name.clone(),
                            offset,
                            len: total,
                            kind: DamageKind::Span,
                            problem: format!("record {id}: {e}"),
                        });
                    }
                    if ledger.released.contains(id) {
                        out.released_found += 1;
                    } else {
                        meta.live += 1;
                        meta.live_bytes += total;
                    }
                }
                Step::Corrupt { offset, len } => out.damage.push(Damage {
                    segment: name.clone(),
                    offset,
                    len,
                    kind: DamageKind::Span,
                    problem: "bytes that are no valid record (checksum mismatch)".into(),
                }),
                Step::Tail { offset, len, torn } => {
                    let torn = torn && last;
                    out.damage.push(Damage {
                        segment: name.clone(),
                        offset,
                        len,
                        kind: if torn {
                            DamageKind::TornTail
                        } else {
                            DamageKind::Tail
                        },
                        problem: if torn {
                            "a write cut short by a crash (never acknowledged; cut on open)".into()
                        } else {
                            "bytes at the end of the segment that are no valid record".into()
                        },
                    });
                    if last {
                        out.cut_at = Some((path.clone(), offset, len));
                        meta.end = offset;
                        if torn {
                            last_cut = Some((out.damage.len() - 1, max_id));
                        }
                    }
                }
                Step::End => break,
            }
        }
        out.owed += meta.live;
        out.owed_bytes += meta.live_bytes;
        out.segments.insert(seq, meta);
    }
    if let Some((s, e)) = run {
        found.insert_range(s, e);
    }
    // The newest usable segment is the active one, even when a later file
    // was set aside or removed.
    if let Some((_, active)) = out.segments.iter_mut().next_back() {
        active.sealed = false;
    }
    let end = vouched.max(max_id + 1).max(1);
    // A tail that looked torn but took records the ledger or a header
    // vouches for held acknowledged records: damage, counted below.
    if let Some((at, last_id)) = last_cut
        && vouched > last_id + 1
        && let Some(d) = out.damage.get_mut(at)
    {
        d.kind = DamageKind::Tail;
        d.problem = format!(
            "the end of the last segment is cut or zeroed, and with it acknowledged records up to id {} (the ledger vouches for them)",
            vouched - 1
        );
    }
    let start = first_id.unwrap_or(end).min(end);
    let mut covered = found;
    for (s, e) in ledger.released.iter() {
        covered.insert_range(s, e);
    }
    out.ledger_released = ledger.released.clone();
    let mut settled = ledger.released;
    for (s, e) in covered.gaps(start, end) {
        out.lost += e - s;
        if out.lost_ids.len() < MAX_NAMED_RANGES {
            out.lost_ids.push((s, e));
        }
        // Counted once: a store opened on this audit owes them no more.
        settled.insert_range(s, e);
    }
    out.next_id = end;
    out.released = settled;
    if let Some(first) = out.segments.values().next() {
        out.released.prune_below(first.first_id.min(start));
    } else {
        out.released = RangeSet::default();
    }
    Ok(out)
}

/// Reads only the header of a segment file (a short or unparsable one is
/// an error value, judged later with the rest of the file), and its size.
fn read_header(
    fs: &dyn Filesystem,
    path: &Path,
) -> Result<(Result<SegmentHeader, FormatError>, u64), AuditError> {
    let file = fs
        .open_read(path)
        .map_err(io_error(|| format!("opening {}", path.display())))?;
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = read_at_most(file.as_ref(), &mut head, 0)
        .map_err(io_error(|| format!("reading {}", path.display())))?;
    let size = file.size().map_err(io_error(|| {
        format!("reading the size of {}", path.display())
    }))?;
    Ok((
        SegmentHeader::decode(head.get(..got).unwrap_or_default()),
        size,
    ))
}

/// Sets aside, before any record is read, the files whose content says they
/// are not the segment their name claims: a copy of a segment that is
/// present under its own name, and an old segment restored from below the
/// ledger's `head` (everything below it was delivered and its segments
/// deleted). Returns the rest, in log order.
fn judge_by_content(
    fs: &dyn Filesystem,
    listed: Vec<(u64, PathBuf)>,
    head: Option<u64>,
    out: &mut Audit,
) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let names: std::collections::HashSet<u64> = listed.iter().map(|(seq, _)| *seq).collect();
    let mut kept = Vec::with_capacity(listed.len());
    for (seq, path) in listed {
        let (header, size) = read_header(fs, &path)?;
        match header {
            Ok(h) if h.seq != seq && names.contains(&h.seq) => {
                out.damage.push(Damage::whole_file(
                    path.display().to_string(),
                    size,
                    DamageKind::Duplicate,
                    format!(
                        "its header says it is segment {} (first id {}), which is present under its own name: a copy",
                        h.seq, h.first_id
                    ),
                ));
                out.duplicates.push(path);
            }
            Ok(h) if head.is_some_and(|head| h.first_id < head) => {
                out.damage.push(Damage::whole_file(
                    path.display().to_string(),
                    size,
                    DamageKind::Delivered,
                    format!(
                        "its ids start at {}, below the ledger's head {}: an old segment whose records were all delivered, restored (set aside, nothing owed)",
                        h.first_id,
                        head.unwrap_or_default()
                    ),
                ));
                out.delivered.push(path);
            }
            _ => kept.push((seq, path)),
        }
    }
    Ok(kept)
}
