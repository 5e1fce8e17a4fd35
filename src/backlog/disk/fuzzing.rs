//! Entry points for the fuzz targets (`fuzz/`, cargo feature `fuzzing`):
//! the segment header, frame, record body and ledger decoders, and the
//! segment reader, run on arbitrary bytes; and encoders that build valid
//! segments and ledgers for the targets to damage. Each entry point checks
//! the decoders' invariants and panics (a fuzz finding) when one breaks.

// A broken invariant must panic here: that panic is what the fuzzer reports.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io;
use std::path::Path;

use super::format::{
    self, BodyView, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, encode_frame, seal_frame,
};
use super::ledger::{Ledger, RangeSet};
use super::segment::{SegmentReader, Step};
use crate::backlog::BacklogRecord;

/// Runs every decoder on `bytes`: as a segment header, as a frame (header,
/// checksum, body, record) and as a bare body, and as a ledger.
pub fn decode_all(bytes: &[u8]) {
    let _ = SegmentHeader::decode(bytes);
    if bytes.len() >= FRAME_HEADER_LEN {
        let h = format::FrameHeader::read(bytes);
        let _ = h.checksum_ok(bytes);
        if let Some(body) = h.body(bytes) {
            assert_eq!(body.len(), h.body_len, "a body is exactly body_len bytes");
            check_body(body);
        }
    }
    check_body(bytes);
    if let Ok(ledger) = Ledger::decode(bytes) {
        assert!(
            ledger.released.iter().all(|(_, e)| e <= ledger.next_id),
            "a decoded ledger names no id at or above next_id"
        );
        let again = Ledger::decode(&ledger.encode()).map_err(|e| e.to_string());
        assert_eq!(again.as_ref().ok(), Some(&ledger), "a ledger re-encodes");
    }
}

fn check_body(body: &[u8]) {
    let Ok(view) = BodyView::parse(body) else {
        return;
    };
    assert_eq!(
        format::BODY_FIXED_LEN
            + view.topic.len()
            + view.message_id.len()
            + view.extras.map_or(0, |e| 4 + e.len())
            + view.payload.len(),
        body.len(),
        "a body's fields cover it exactly"
    );
    if let Ok(record) = view.record() {
        assert_eq!(&record.message.payload()[..], view.payload);
        assert_eq!(record.message.topic().as_bytes(), view.topic);
        assert_eq!(record.message.message_id().as_bytes(), view.message_id);
    }
}

/// Encodes `record` as a frame with `id`, decodes it again, and checks
/// that what comes back is what went in, byte for byte.
pub fn frame_round_trip(record: &BacklogRecord, id: u64, appended_ms: i64) {
    let mut buf = Vec::new();
    let total = encode_frame(&mut buf, record, appended_ms);
    assert_eq!(total as usize, buf.len());
    assert_eq!(total % format::FRAME_ALIGN, 0, "frames are aligned");
    seal_frame(&mut buf, id);
    let h = format::FrameHeader::read(&buf);
    assert_eq!(h.id, id);
    assert_eq!(h.total(), total);
    assert!(h.checksum_ok(&buf), "a sealed frame passes its checksum");
    let body = h.body(&buf).expect("a frame holds its body");
    let view = BodyView::parse(body).expect("an encoded body parses");
    assert_eq!(view.appended_ms, appended_ms);
    let back = view.record().expect("an encoded record decodes");
    let (a, b) = (&record.message, &back.message);
    assert_eq!(a.topic(), b.topic());
    assert_eq!(a.message_id(), b.message_id());
    assert_eq!(a.generate_time_ms(), b.generate_time_ms());
    assert_eq!(a.payload(), b.payload(), "the payload comes back unchanged");
    assert_eq!(
        a.extras(),
        b.extras(),
        "the key and headers come back unchanged"
    );
    assert_eq!(record.attempts, back.attempts);
    assert_eq!(record.not_before_ms, back.not_before_ms);
}

/// The bytes of a valid segment `seq` whose records get ids from
/// `first_id` on.
pub fn segment_bytes(
    seq: u64,
    first_id: u64,
    created_ms: i64,
    records: &[BacklogRecord],
) -> Vec<u8> {
    let mut out = SegmentHeader {
        seq,
        first_id,
        created_ms,
    }
    .encode()
    .to_vec();
    for (i, r) in records.iter().enumerate() {
        let start = out.len();
        encode_frame(&mut out, r, created_ms);
        seal_frame(&mut out[start..], first_id.wrapping_add(i as u64));
    }
    out
}

/// The bytes of a valid ledger.
pub fn ledger_bytes(next_id: u64, released: &[(u64, u64)]) -> Vec<u8> {
    let mut set = RangeSet::default();
    for &(s, e) in released {
        if s < e && e <= next_id {
            set.insert_range(s, e);
        }
    }
    let head = set.iter().next().map(|(s, _)| s);
    Ledger {
        next_id,
        head,
        released: set,
    }
    .encode()
}

/// The segment file name for `seq`.
pub fn segment_file_name(seq: u64) -> String {
    super::segment::segment_path(Path::new(""), seq)
        .display()
        .to_string()
}

/// Reads the segment file at `path` to its end with the store's reader
/// (frames above `max_body` count as damage), checking that steps move
/// forward, stay inside the file and that every record's body parses;
/// returns how many records were read.
pub fn read_segment(path: &Path, max_body: usize) -> io::Result<u64> {
    let len = std::fs::metadata(path)?.len();
    let mut reader = SegmentReader::open(
        &crate::filesystem::RealFilesystem,
        path,
        None,
        64 * 1024,
        max_body,
    )?;
    let mut at = SEGMENT_HEADER_LEN;
    let mut records = 0;
    loop {
        match reader.next_step()? {
            Step::Record { offset, total, .. } => {
                assert!(
                    offset >= at && offset + total <= len.max(at),
                    "a frame inside the file"
                );
                at = offset + total;
                records += 1;
                let body = reader.body();
                assert!(body.len() <= max_body);
                check_body(body);
            }
            Step::Corrupt { offset, len: l } => {
                assert!(offset >= at && l > 0, "damage moves forward");
                at = offset + l;
            }
            Step::Tail { offset, len: l, .. } => {
                assert!(offset >= at);
                at = offset + l;
            }
            Step::End => return Ok(records),
        }
        assert!(
            at <= len.max(SEGMENT_HEADER_LEN),
            "reading stays inside the file"
        );
    }
}
