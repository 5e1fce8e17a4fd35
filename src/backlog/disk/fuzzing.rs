//! Entry points for the fuzz targets in `fuzz/` (built only with the
//! `fuzzing` feature): the decoders of the on-disk format, fed arbitrary
//! bytes. Each must return (an error value at most) and never panic, hang
//! or read out of bounds, whatever the input.

use super::format::{BodyView, FRAME_HEADER_LEN, FrameHeader, SegmentHeader};

/// Decodes `data` as a segment header, then as a run of frames (each
/// checked by its checksum, its body split into fields and rebuilt as a
/// record), as the reader does with bytes from a damaged disk.
pub fn decode_segment_bytes(data: &[u8]) {
    let _ = SegmentHeader::decode(data);
    let mut at = 0usize;
    while let Some(rest) = data.get(at..) {
        if rest.len() < FRAME_HEADER_LEN {
            break;
        }
        let header = FrameHeader::read(rest);
        if header.checksum_ok(rest)
            && let Some(body) = header.body(rest)
            && let Ok(view) = BodyView::parse(body)
        {
            let _ = view.record();
        }
        // Bodies are also parsed without a valid checksum: a bad length
        // must be an error, never a slice out of bounds.
        if let Some(body) = header.body(rest) {
            let _ = BodyView::parse(body).map(|v| v.record());
        }
        at += 8;
    }
}
