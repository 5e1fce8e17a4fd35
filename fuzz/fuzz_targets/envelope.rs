//! The JSONL envelope parser on arbitrary bytes: it never panics, and a
//! line it accepts survives a write and a second parse unchanged (topic,
//! id, generate time and payload bytes).
#![no_main]

use laneway::message::{parse_envelope, write_envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = parse_envelope(data) else {
        return;
    };
    let mut line = Vec::new();
    write_envelope(&mut line, &message);
    let again = match parse_envelope(&line) {
        Ok(m) => m,
        Err(e) => panic!("a written envelope does not parse: {e}: {line:?}"),
    };
    assert_eq!(again.topic(), message.topic());
    assert_eq!(again.message_id(), message.message_id());
    assert_eq!(again.generate_time_ms(), message.generate_time_ms());
    assert_eq!(again.payload(), message.payload());
});
