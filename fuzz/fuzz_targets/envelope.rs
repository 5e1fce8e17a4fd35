//! The JSONL envelope parser on arbitrary bytes: it never panics, and a
//! message it accepts, written back out as laneway writes envelopes, parses
//! again to the same topic, id, generate time and payload bytes.

#![no_main]

use laneway::fuzzing::{parse_envelope, write_envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse_envelope(data) else {
        return;
    };
    let mut line = Vec::new();
    write_envelope(&mut line, &m);
    assert_eq!(line.last(), Some(&b'\n'));
    let again = parse_envelope(line.trim_ascii_end()).unwrap_or_else(|e| {
        panic!(
            "a written envelope does not parse ({e}): {}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(again.topic(), m.topic());
    assert_eq!(again.message_id(), m.message_id());
    assert_eq!(again.generate_time_ms(), m.generate_time_ms());
    assert_eq!(
        again.payload(),
        m.payload(),
        "the payload survives a round trip"
    );
    assert_eq!(again.kind(), m.kind());
});
