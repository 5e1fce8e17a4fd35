//! The on-disk format of a disk backlog: the versioned segment header and the
//! record frame (see `docs/backlog-format.md`, which this module implements).
//!
//! Invariants:
//! - every integer is little-endian;
//! - a segment file starts with a [`SEGMENT_HEADER_LEN`]-byte header carrying
//!   [`SEGMENT_MAGIC`], [`FORMAT_VERSION`] and its own CRC32C;
//! - a frame starts on an 8-byte boundary, is `16 + body length` bytes rounded
//!   up to 8, and its CRC32C covers the id and the body, so any flipped bit
//!   in either is caught;
//! - a record body says in its flags what it holds beyond the version 1
//!   fields (a message's key and extra headers); version 1 wrote the flags
//!   as zero, so its segments read as they always did;
//! - decoding never panics on any input: a bad frame is an error value.

use bytes::Bytes;

use crate::backlog::BacklogRecord;
use crate::message::{Extras, MAX_TOPIC_LEN, Message};

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LNWYSEG\0";
/// The format version this code writes (version 2 added the record flags
/// and a message's key and extra headers).
pub const FORMAT_VERSION: u8 = 2;
/// The oldest format version this code still reads.
pub const OLDEST_READ_VERSION: u8 = 1;
/// Record flag: the body holds the message's key and extra headers (a
/// `u32` length and [`Extras::encode`]'s bytes) between its id and payload.
pub const FLAG_EXTRAS: u32 = 1;
/// Bytes of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Bytes of a frame header: length, checksum, id.
pub const FRAME_HEADER_LEN: usize = 16;
/// The longest body a frame can declare (its length is 32 bits). Readers
/// bound a frame by this and by its file's size, never by the configured
/// `segment_bytes`, which bounds only what is written: a backlog reopened
/// with smaller segments than it was written with keeps its longer records.
pub const MAX_FRAME_BODY: usize = u32::MAX as usize;
/// Bytes of the fixed part of a record body, before topic, id and payload.
pub const BODY_FIXED_LEN: usize = 40;
/// Frames start on multiples of this (it lets a reader resynchronise after
/// a damaged frame by trying each aligned offset).
pub const FRAME_ALIGN: u64 = 8;

/// A frame's total size on disk for a body of `body_len` bytes.
pub fn frame_len(body_len: usize) -> u64 {
    align((FRAME_HEADER_LEN + body_len) as u64)
}

/// Rounds up to [`FRAME_ALIGN`].
pub fn align(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// Why bytes on disk are not what the format says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The segment header's magic bytes are wrong: not a laneway segment.
    #[error("not a laneway backlog segment (bad magic)")]
    BadMagic,
    /// The segment was written by a newer laneway.
    #[error(
        "segment format version {0} is not supported (this laneway reads versions {OLDEST_READ_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    /// The segment header's checksum does not match.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// The header is shorter than [`SEGMENT_HEADER_LEN`].
    #[error("segment header is truncated")]
    ShortHeader,
    /// A record body's fields do not add up.
    #[error("record body is malformed: {0}")]
    BadBody(&'static str),
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's sequence number (also in its file name).
    pub seq: u64,
    /// The id the segment's first record gets.
    pub first_id: u64,
    /// When the segment was created, epoch milliseconds.
    pub created_ms: i64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        h[0..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8] = FORMAT_VERSION;
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.first_id.to_le_bytes());
        h[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads a header, checking checksum, magic and version, in that order.
    ///
    /// The checksum comes first so that damage is told from a newer format:
    /// a flipped bit in the version byte fails the checksum and reads as
    /// damage (that segment's header only), while a header whose checksum
    /// holds and whose version differs really was written by another
    /// version of the format.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        if bytes.len() < SEGMENT_HEADER_LEN as usize {
            return Err(FormatError::ShortHeader);
        }
        if crc32c::crc32c(&bytes[0..60]) != le_u32(bytes, 60) {
            return Err(FormatError::HeaderChecksum);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&bytes[8]) {
            return Err(FormatError::UnsupportedVersion(bytes[8]));
        }
        Ok(SegmentHeader {
            seq: le_u64(bytes, 16),
            first_id: le_u64(bytes, 24),
            created_ms: le_u64(bytes, 32) as i64,
        })
    }
}

/// Appends one record's frame to `buf` with id and checksum left blank
/// (see [`seal_frame`]); returns the frame's size.
pub fn encode_frame(buf: &mut Vec<u8>, record: &BacklogRecord, appended_ms: i64) -> u64 {
    let m = &record.message;
    let mut extras = Vec::new();
    if let Some(e) = m.extras() {
        e.encode(&mut extras);
    }
    let (flags, extras_len) = if m.extras().is_some() {
        (FLAG_EXTRAS, 4 + extras.len())
    } else {
        (0, 0)
    };
    let body_len =
        BODY_FIXED_LEN + m.topic().len() + m.message_id().len() + extras_len + m.payload().len();
    let start = buf.len();
    let total = frame_len(body_len);
    buf.reserve(total as usize);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 12]);
    buf.extend_from_slice(&record.attempts.to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&record.not_before_ms.to_le_bytes());
    buf.extend_from_slice(&appended_ms.to_le_bytes());
    buf.extend_from_slice(&m.generate_time_ms().to_le_bytes());
    buf.extend_from_slice(&(m.topic().len() as u32).to_le_bytes());
    buf.extend_from_slice(&(m.message_id().len() as u32).to_le_bytes());
    buf.extend_from_slice(m.topic().as_bytes());
    buf.extend_from_slice(m.message_id().as_bytes());
    if flags & FLAG_EXTRAS != 0 {
        buf.extend_from_slice(&(extras.len() as u32).to_le_bytes());
        buf.extend_from_slice(&extras);
    }
    buf.extend_from_slice(m.payload());
    buf.resize(start + total as usize, 0);
    total
}

/// Writes `id` into an encoded frame and computes its checksum.
pub fn seal_frame(frame: &mut [u8], id: u64) {
    frame[8..16].copy_from_slice(&id.to_le_bytes());
    let body_len = le_u32(frame, 0) as usize;
    let crc = crc32c::crc32c(&frame[8..FRAME_HEADER_LEN + body_len]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A frame header as read, before the checksum is checked.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    /// Body length.
    pub body_len: usize,
    /// Stored checksum.
    pub crc: u32,
    /// Record id.
    pub id: u64,
}

impl FrameHeader {
    /// Reads the 16 header bytes at the start of `bytes` (which must hold them).
    pub fn read(bytes: &[u8]) -> FrameHeader {
        FrameHeader {
            body_len: le_u32(bytes, 0) as usize,
            crc: le_u32(bytes, 4),
            id: le_u64(bytes, 8),
        }
    }

    /// The frame's size on disk.
    pub fn total(&self) -> u64 {
        frame_len(self.body_len)
    }

    /// The record body inside `frame` (the whole frame, header first):
    /// exactly `body_len` bytes, never the alignment padding behind them.
    /// `None` when `frame` is too short to hold it.
    ///
    /// This is the only way the store reads a body out of a frame: a
    /// payload runs to the end of its body, so a body slice that kept the
    /// padding would hand the padding out as payload bytes.
    pub fn body<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN.checked_add(self.body_len)?)
    }

    /// Whether the checksum matches `frame` (the whole frame, header first).
    pub fn checksum_ok(&self, frame: &[u8]) -> bool {
        frame.len() >= FRAME_HEADER_LEN + self.body_len
            && crc32c::crc32c(&frame[8..FRAME_HEADER_LEN + self.body_len]) == self.crc
    }
}

/// The fields of a record body without building a [`Message`] (for
/// inspection and age checks).
#[derive(Debug, Clone, Copy)]
pub struct BodyView<'a> {
    /// Delivery attempts made.
    pub attempts: u32,
    /// Not before this epoch millisecond.
    pub not_before_ms: i64,
    /// When the record was appended, epoch milliseconds.
    pub appended_ms: i64,
    /// The message's generate time.
    pub generate_time_ms: i64,
    /// The topic bytes (UTF-8 checked by [`BodyView::record`]).
    pub topic: &'a [u8],
    /// The message id bytes.
    pub message_id: &'a [u8],
    /// The encoded key and extra headers, when the record has them
    /// (decoded by [`BodyView::record`]).
    pub extras: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> BodyView<'a> {
    /// Splits a body into its fields.
    pub fn parse(body: &'a [u8]) -> Result<BodyView<'a>, FormatError> {
        if body.len() < BODY_FIXED_LEN {
            return Err(FormatError::BadBody("shorter than its fixed fields"));
        }
        let flags = le_u32(body, 4);
        if flags & !FLAG_EXTRAS != 0 {
            return Err(FormatError::BadBody("unknown record flags"));
        }
        let topic_len = le_u32(body, 32) as usize;
        let id_len = le_u32(body, 36) as usize;
        if topic_len > MAX_TOPIC_LEN {
            return Err(FormatError::BadBody("topic longer than the limit"));
        }
        let rest = body.len() - BODY_FIXED_LEN;
        if topic_len.saturating_add(id_len) > rest {
            return Err(FormatError::BadBody("field lengths exceed the body"));
        }
        let topic_end = BODY_FIXED_LEN + topic_len;
        let id_end = topic_end + id_len;
        let mut payload_start = id_end;
        let mut extras = None;
        if flags & FLAG_EXTRAS != 0 {
            let len_end = id_end
                .checked_add(4)
                .filter(|&e| e <= body.len())
                .ok_or(FormatError::BadBody("field lengths exceed the body"))?;
            let extras_len = le_u32(body, id_end) as usize;
            let extras_end = len_end
                .checked_add(extras_len)
                .filter(|&e| e <= body.len())
                .ok_or(FormatError::BadBody("field lengths exceed the body"))?;
            extras = Some(&body[len_end..extras_end]);
            payload_start = extras_end;
        }
        Ok(BodyView {
            attempts: le_u32(body, 0),
            not_before_ms: le_u64(body, 8) as i64,
            appended_ms: le_u64(body, 16) as i64,
            generate_time_ms: le_u64(body, 24) as i64,
            topic: &body[BODY_FIXED_LEN..topic_end],
            message_id: &body[topic_end..id_end],
            extras,
            payload: &body[payload_start..],
        })
    }

    /// Rebuilds the record (copying the payload out of the read buffer).
    pub fn record(&self) -> Result<BacklogRecord, FormatError> {
        let topic = std::str::from_utf8(self.topic)
            .map_err(|_| FormatError::BadBody("topic is not UTF-8"))?;
        let id = std::str::from_utf8(self.message_id)
            .map_err(|_| FormatError::BadBody("message id is not UTF-8"))?;
        let mut message = Message::new(
            topic,
            id,
            self.generate_time_ms,
            Bytes::copy_from_slice(self.payload),
        )
        .map_err(|_| FormatError::BadBody("topic is not a valid topic"))?;
        if let Some(extras) = self.extras {
            let extras = Extras::decode(extras)
                .map_err(|_| FormatError::BadBody("the key and headers are malformed"))?;
            message = message.with_extras(extras);
        }
        Ok(BacklogRecord {
            message,
            attempts: self.attempts,
            not_before_ms: self.not_before_ms,
        })
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BacklogRecord {
        BacklogRecord {
            message: Message::new("/pk/dn/thing/lifecycle", "m-1", 42, &b"{\"a\":1}"[..]).unwrap(),
            attempts: 3,
            not_before_ms: 77,
        }
    }

    #[test]
    fn a_frame_round_trips_and_is_aligned() {
        let mut buf = vec![1, 2, 3, 4, 5, 6, 7, 8];
        let total = encode_frame(&mut buf, &record(), 1234);
        assert_eq!(total % FRAME_ALIGN, 0);
        assert_eq!(buf.len() as u64, 8 + total);
        seal_frame(&mut buf[8..], 99);
        let h = FrameHeader::read(&buf[8..]);
        assert_eq!(h.id, 99);
        assert_eq!(h.total(), total);
        assert!(h.checksum_ok(&buf[8..]));
        let body =
            BodyView::parse(&buf[8 + FRAME_HEADER_LEN..8 + FRAME_HEADER_LEN + h.body_len]).unwrap();
        assert_eq!(body.appended_ms, 1234);
        let r = body.record().unwrap();
        assert_eq!(r.message.topic(), "/pk/dn/thing/lifecycle");
        assert_eq!(r.message.message_id(), "m-1");
        assert_eq!(r.message.generate_time_ms(), 42);
        assert_eq!(&r.message.payload()[..], b"{\"a\":1}");
        assert_eq!((r.attempts, r.not_before_ms), (3, 77));
    }

    #[test]
    fn a_key_and_headers_round_trip_and_a_record_without_them_keeps_the_old_layout() {
        use crate::message::Header;
        let extras = Extras {
            key: Some(Bytes::from_static(b"\xff\0k")),
            headers: vec![
                Header::new("trace", &b"\x80\x81"[..]),
                Header {
                    name: "none".into(),
                    value: None,
                },
            ],
        };
        let keyed = BacklogRecord {
            message: record().message.with_extras(extras.clone()),
            ..record()
        };
        let mut buf = Vec::new();
        encode_frame(&mut buf, &keyed, 1);
        seal_frame(&mut buf, 1);
        let h = FrameHeader::read(&buf);
        let r = BodyView::parse(h.body(&buf).unwrap())
            .unwrap()
            .record()
            .unwrap();
        assert_eq!(r.message.extras(), Some(&extras));
        assert_eq!(&r.message.payload()[..], b"{\"a\":1}");
        // Without extras the body is the version 1 body, flags zero.
        let mut plain = Vec::new();
        encode_frame(&mut plain, &record(), 1);
        assert_eq!(&plain[20..24], &[0u8; 4]);
        assert_eq!(
            FrameHeader::read(&plain).body_len,
            BODY_FIXED_LEN + 22 + 3 + 7
        );
        // An unknown flag, or extras running past the body, is an error.
        let body_at = FRAME_HEADER_LEN;
        let mut bad = buf.clone();
        bad[body_at + 4] = 0x02;
        assert!(BodyView::parse(FrameHeader::read(&bad).body(&bad).unwrap()).is_err());
        let mut bad = buf.clone();
        let extras_len_at = body_at + BODY_FIXED_LEN + 22 + 3;
        bad[extras_len_at..extras_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BodyView::parse(FrameHeader::read(&bad).body(&bad).unwrap()).is_err());
    }

    #[test]
    fn any_flipped_bit_in_id_or_body_fails_the_checksum() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, &record(), 0);
        seal_frame(&mut buf, 5);
        let h = FrameHeader::read(&buf);
        for byte in 8..FRAME_HEADER_LEN + h.body_len {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            let h = FrameHeader::read(&bad);
            assert!(!h.checksum_ok(&bad), "flip at {byte} went unnoticed");
        }
    }

    #[test]
    fn headers_check_magic_version_and_checksum() {
        let h = SegmentHeader {
            seq: 3,
            first_id: 1000,
            created_ms: 5,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), h);
        // The previous version still reads.
        let mut v1 = bytes;
        v1[8] = 1;
        let crc = crc32c::crc32c(&v1[0..60]);
        v1[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&v1), Ok(h));
        // A newer version, written whole (its checksum holds).
        let mut v = bytes;
        v[8] = 9;
        let crc = crc32c::crc32c(&v[0..60]);
        v[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&v),
            Err(FormatError::UnsupportedVersion(9))
        );
        // Any flipped bit anywhere in the header, the version byte
        // included, is damage, never "another version".
        for byte in 0..SEGMENT_HEADER_LEN as usize {
            for bit in 0..8 {
                let mut c = bytes;
                c[byte] ^= 1 << bit;
                assert_eq!(
                    SegmentHeader::decode(&c),
                    Err(FormatError::HeaderChecksum),
                    "byte {byte} bit {bit}"
                );
            }
        }
        // Zeros are damage too (the checksum of zeros is not zero).
        assert_eq!(
            SegmentHeader::decode(&[0u8; 64]),
            Err(FormatError::HeaderChecksum)
        );
        // A whole header with the wrong magic is not a laneway segment.
        let mut m = bytes;
        m[0] = b'X';
        let crc = crc32c::crc32c(&m[0..60]);
        m[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&m), Err(FormatError::BadMagic));
        assert_eq!(
            SegmentHeader::decode(&[0u8; 3]),
            Err(FormatError::ShortHeader)
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(BodyView::parse(&[0u8; 10]).is_err());
        let mut body = vec![0u8; BODY_FIXED_LEN];
        body[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BodyView::parse(&body).is_err());
        body[32..36].copy_from_slice(&0u32.to_le_bytes());
        body[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BodyView::parse(&body).is_err());
        body[36..40].copy_from_slice(&0u32.to_le_bytes());
        // An empty topic parses as fields but is not a message.
        assert!(BodyView::parse(&body).unwrap().record().is_err());
    }
}
