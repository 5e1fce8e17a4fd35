//! The disk backlog's decoders (segment header, frame header, record body)
//! on arbitrary bytes: errors, never panics or reads out of bounds.
#![no_main]

use laneway::backlog::disk::fuzzing::decode_segment_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| decode_segment_bytes(data));
