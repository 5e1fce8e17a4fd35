//! Segment files: naming, creation, and a sequential frame reader that
//! survives damage.
//!
//! Invariants:
//! - a segment is named `{seq:020}.seg`, so names sort in log order;
//! - a new segment's header is fsync'd, and the directory with it, before
//!   any record is written to it;
//! - [`SegmentReader`] never reads past the limit it is given (the durable
//!   end of the segment), holds at most one chunk plus one frame in memory,
//!   and after a damaged frame resumes at the next valid frame, reporting
//!   the damaged span instead of giving up on the segment;
//! - a read that fails (EIO) is returned and changes nothing: the next step
//!   reads the same bytes again (a failed read is never taken for damage).

use std::io;
use std::path::{Path, PathBuf};

use super::format::{
    FRAME_ALIGN, FRAME_HEADER_LEN, FormatError, FrameHeader, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::filesystem::{Filesystem, SegmentFile, read_at_most, write_all_at};

/// The file name extension of segments.
pub const SEGMENT_EXT: &str = "seg";

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

/// The sequence number a segment file name carries, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Every segment in `dir`, in log order (listed through `fs`).
pub fn list_segments(fs: &dyn Filesystem, dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for path in fs.read_dir(dir)? {
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_name);
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Creates segment `seq` whose first record will be `first_id`, durably:
/// the header and the directory entry are fsync'd before it returns.
/// Returns two handles on it, both open before anything is written: one to
/// write records with, one to fsync them with (the writer fsyncs on another
/// thread while it writes the next group).
pub fn create_segment(
    fs: &dyn Filesystem,
    dir: &Path,
    seq: u64,
    first_id: u64,
    now_ms: i64,
) -> io::Result<(Box<dyn SegmentFile>, Box<dyn SegmentFile>)> {
    let path = segment_path(dir, seq);
    let file = fs.create_new(&path)?;
    let header = SegmentHeader {
        seq,
        first_id,
        created_ms: now_ms,
    };
    let written = fs.open(&path).and_then(|sync_file| {
        write_all_at(file.as_ref(), &header.encode(), 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| fs.sync_dir(dir))
            .map(|()| sync_file)
    });
    match written {
        Ok(sync_file) => Ok((file, sync_file)),
        Err(e) => {
            // Leave no half-made segment behind (a full disk, typically):
            // the next roll makes it again, and finds its name free.
            drop(file);
            let _ = fs.remove_file(&path);
            Err(e)
        }
    }
}

/// One step of reading a segment.
#[derive(Debug)]
pub enum Step {
    /// A valid frame at `offset`; its bytes are [`SegmentReader::frame`].
    Record {
        /// Record id.
        id: u64,
        /// Frame offset in the file.
        offset: u64,
        /// Frame size on disk.
        total: u64,
    },
    /// A damaged span at `offset`, `len` bytes; reading resumes after it.
    Corrupt {
        /// Where the damage starts.
        offset: u64,
        /// How many bytes were skipped.
        len: u64,
    },
    /// The rest of the segment (from `offset` to the limit) holds no valid
    /// frame. `torn` says it looks like an interrupted write (a frame cut
    /// short by the end of the file, or zeros) rather than damage.
    Tail {
        /// Where the unusable tail starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// Whether it looks like a write cut short rather than damage.
        torn: bool,
    },
    /// The limit was reached exactly.
    End,
}

/// Reads frames from one segment, in order, in chunks.
pub struct SegmentReader {
    file: Box<dyn SegmentFile>,
    /// The segment's header, when it was readable.
    pub header: Result<SegmentHeader, FormatError>,
    limit: u64,
    buf: Vec<u8>,
    buf_off: u64,
    pos: u64,
    last_id: u64,
    chunk: usize,
    max_body: usize,
    /// The last record's frame: offset and header.
    frame_at: (u64, FrameHeader),
}

impl SegmentReader {
    /// Opens `path` through `fs` for reading up to `limit` bytes (`None`:
    /// the file's length), with reads of `chunk` bytes; frames with a body
    /// above `max_body` are treated as damage.
    pub fn open(
        fs: &dyn Filesystem,
        path: &Path,
        limit: Option<u64>,
        chunk: usize,
        max_body: usize,
    ) -> io::Result<SegmentReader> {
        let file = fs.open_read(path)?;
        let len = file.size()?;
        let limit = limit.unwrap_or(len).min(len);
        let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
        let got = read_at_most(file.as_ref(), &mut head, 0)?;
        let header = SegmentHeader::decode(&head[..got]);
        let last_id = header.as_ref().map_or(0, |h| h.first_id.saturating_sub(1));
        Ok(SegmentReader {
            file,
            header,
            limit,
            buf: Vec::new(),
            buf_off: SEGMENT_HEADER_LEN,
            pos: SEGMENT_HEADER_LEN,
            last_id,
            chunk: chunk.max(64 * 1024),
            max_body,
            frame_at: (
                0,
                FrameHeader {
                    body_len: 0,
                    crc: 0,
                    id: 0,
                },
            ),
        })
    }

    /// The readable end.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Lets reading go further (the writer made more of the segment durable).
    pub fn extend_limit(&mut self, limit: u64) {
        self.limit = self.limit.max(limit);
    }

    /// When this segment's header is damaged, reads its records as coming
    /// after `last_id` (the last id before the segment, as recovery knew
    /// it), so that damage right after the header is stepped over the same
    /// way recovery stepped over it: the dense-id bound of the resync then
    /// starts from the right id, not from 0. A sound header already says.
    pub fn after_damaged_header(mut self, last_id: u64) -> SegmentReader {
        if self.header.is_err() {
            self.seek(SEGMENT_HEADER_LEN, last_id);
        }
        self
    }

    /// Continues from `pos` (a frame boundary found earlier), with `last_id`
    /// the id of the frame before it.
    pub fn seek(&mut self, pos: u64, last_id: u64) {
        self.pos = pos.max(SEGMENT_HEADER_LEN);
        self.last_id = last_id;
    }

    /// The body of the record returned by the last [`Step::Record`]:
    /// exactly the bytes that were appended, without the frame's header or
    /// its alignment padding.
    pub fn body(&self) -> &[u8] {
        let (off, header) = self.frame_at;
        let start = (off - self.buf_off) as usize;
        self.buf
            .get(start..)
            .and_then(|frame| header.body(frame))
            .unwrap_or_default()
    }

    /// Makes `[from, to)` (clamped to the limit) available in the buffer;
    /// returns false if the limit cuts it short.
    fn fill(&mut self, from: u64, to: u64) -> io::Result<bool> {
        let to_clamped = to.min(self.limit);
        if from >= self.buf_off && to_clamped <= self.buf_off + self.buf.len() as u64 {
            return Ok(to <= self.limit);
        }
        if from < self.buf_off || from > self.buf_off + self.buf.len() as u64 {
            self.buf.clear();
            self.buf_off = from;
        } else {
            let drop = (from - self.buf_off) as usize;
            self.buf.drain(..drop);
            self.buf_off = from;
        }
        let want_end = to_clamped.max((from + self.chunk as u64).min(self.limit));
        let have_end = self.buf_off + self.buf.len() as u64;
        if want_end > have_end {
            let old = self.buf.len();
            self.buf.resize(old + (want_end - have_end) as usize, 0);
            let got = match read_at_most(self.file.as_ref(), &mut self.buf[old..], have_end) {
                Ok(got) => got,
                Err(e) => {
                    // Keep only what was read: a failed read must not leave
                    // zeros that the next step would take for a torn tail.
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            self.buf.truncate(old + got);
            if (got as u64) < want_end - have_end {
                // The file is shorter than the limit said: lower the limit.
                self.limit = self.buf_off + self.buf.len() as u64;
            }
        }
        Ok(to <= self.limit)
    }

    fn slice(&self, from: u64, len: usize) -> &[u8] {
        let start = (from - self.buf_off) as usize;
        &self.buf[start..start + len]
    }

    /// Checks for a valid frame at `at` whose id is above `last_id` and at
    /// most `max_id`; returns its header.
    fn valid_at(&mut self, at: u64, max_id: u64) -> io::Result<Option<FrameHeader>> {
        if !self.fill(at, at + FRAME_HEADER_LEN as u64)? {
            return Ok(None);
        }
        let h = FrameHeader::read(self.slice(at, FRAME_HEADER_LEN));
        if h.id <= self.last_id || h.id > max_id || h.body_len > self.max_body {
            return Ok(None);
        }
        if !self.fill(at, at + h.total())? {
            return Ok(None);
        }
        let ok = h.checksum_ok(self.slice(at, h.total() as usize));
        Ok(ok.then_some(h))
    }

    /// Reads the next step.
    pub fn next_step(&mut self) -> io::Result<Step> {
        let pos = self.pos;
        if pos >= self.limit {
            return Ok(Step::End);
        }
        if let Some(h) = self.valid_at(pos, u64::MAX)? {
            self.pos = pos + h.total();
            self.last_id = h.id;
            self.frame_at = (pos, h);
            return Ok(Step::Record {
                id: h.id,
                offset: pos,
                total: h.total(),
            });
        }
        // Damage, or the end of what was written. Look for the next valid
        // frame: ids are dense, so one can be at most one id per header's
        // worth of bytes further on.
        let mut at = pos + FRAME_ALIGN;
        while at + FRAME_HEADER_LEN as u64 <= self.limit {
            let max_id = self
                .last_id
                .saturating_add(1 + (at - pos) / FRAME_HEADER_LEN as u64);
            if self.valid_at(at, max_id)?.is_some() {
                self.pos = at;
                return Ok(Step::Corrupt {
                    offset: pos,
                    len: at - pos,
                });
            }
            at += FRAME_ALIGN;
        }
        let len = self.limit - pos;
        let torn = self.looks_torn(pos)?;
        self.pos = self.limit;
        Ok(Step::Tail {
            offset: pos,
            len,
            torn,
        })
    }

    /// A write cut short leaves a frame that runs past the end, a partial
    /// header, or zeros; anything else in a tail is damage.
    fn looks_torn(&mut self, pos: u64) -> io::Result<bool> {
        if self.limit - pos < FRAME_HEADER_LEN as u64 {
            return Ok(true);
        }
        self.fill(pos, pos + FRAME_HEADER_LEN as u64)?;
        let h = FrameHeader::read(self.slice(pos, FRAME_HEADER_LEN));
        if h.id == self.last_id + 1 && h.body_len <= self.max_body && pos + h.total() > self.limit {
            return Ok(true);
        }
        let mut at = pos;
        while at < self.limit {
            let end = (at + self.chunk as u64).min(self.limit);
            self.fill(at, end)?;
            if self.slice(at, (end - at) as usize).iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at = end;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog::BacklogRecord;
    use crate::backlog::disk::format::{encode_frame, seal_frame};
    use crate::filesystem::RealFilesystem;
    use crate::message::Message;

    fn write_segment(dir: &Path, ids: std::ops::Range<u64>) -> (PathBuf, Vec<u64>) {
        let (file, _) =
            create_segment(&crate::backlog::disk::RealFilesystem, dir, 1, ids.start, 0).unwrap();
        let mut buf = Vec::new();
        let mut offsets = Vec::new();
        for id in ids {
            let r = BacklogRecord::fresh(
                Message::new("/p/d/thing/lifecycle", format!("m{id}"), 0, &b"{}"[..]).unwrap(),
            );
            let start = buf.len();
            offsets.push(SEGMENT_HEADER_LEN + start as u64);
            encode_frame(&mut buf, &r, 0);
            seal_frame(&mut buf[start..], id);
        }
        write_all_at(file.as_ref(), &buf, SEGMENT_HEADER_LEN).unwrap();
        (segment_path(dir, 1), offsets)
    }

    fn steps(path: &Path) -> Vec<String> {
        let mut r = SegmentReader::open(&RealFilesystem, path, None, 64 * 1024, 1 << 20).unwrap();
        let mut out = Vec::new();
        loop {
            match r.next_step().unwrap() {
                Step::Record { id, .. } => out.push(format!("r{id}")),
                Step::Corrupt { offset, .. } => out.push(format!("corrupt@{offset}")),
                Step::Tail { torn, .. } => out.push(format!("tail torn={torn}")),
                Step::End => return out,
            }
        }
    }

    #[test]
    fn reads_every_frame_and_names_sort_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), 10..13);
        assert_eq!(steps(&path), ["r10", "r11", "r12"]);
        assert_eq!(parse_segment_name("00000000000000000001.seg"), Some(1));
        assert_eq!(parse_segment_name("1.seg"), None);
        assert_eq!(list_segments(&RealFilesystem, dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_frame_is_skipped_and_reading_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1..5);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] as usize + 30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            steps(&path),
            [
                "r1".to_string(),
                format!("corrupt@{}", offsets[1]),
                "r3".into(),
                "r4".into()
            ]
        );
        // A damaged length field: the same.
        let (path, offsets) = {
            let d = tempfile::tempdir().unwrap();
            let (p, o) = write_segment(d.path(), 1..5);
            let target = dir.path().join("b.seg");
            std::fs::copy(&p, &target).unwrap();
            (target, o)
        };
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[2] as usize] ^= 0x41;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            steps(&path),
            [
                "r1".to_string(),
                "r2".into(),
                format!("corrupt@{}", offsets[2]),
                "r4".into()
            ]
        );
    }

    #[test]
    fn tails_are_torn_when_cut_short_or_zero_and_damage_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1..4);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        assert_eq!(steps(&path), ["r1", "r2", "tail torn=true"]);
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &zeros).unwrap();
        assert_eq!(steps(&path), ["r1", "r2", "r3", "tail torn=true"]);
        let mut flipped = full.clone();
        flipped[offsets[2] as usize + 40] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(steps(&path), ["r1", "r2", "tail torn=false"]);
    }
}
