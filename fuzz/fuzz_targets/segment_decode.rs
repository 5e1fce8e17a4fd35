//! The disk backlog's decoders on arbitrary bytes (segment header, frame
//! header and checksum, record body, ledger): no panic, and their
//! invariants hold. Then the same bytes, read as a record, go through the
//! frame encoder and back unchanged.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use laneway::backlog::BacklogRecord;
use laneway::fuzzing::{decode_all, frame_round_trip};
use laneway::message::Message;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Record {
    topic: String,
    message_id: String,
    generate_time_ms: i64,
    payload: Vec<u8>,
    attempts: u32,
    not_before_ms: i64,
    id: u64,
    appended_ms: i64,
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    let Ok(r) = Record::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let Ok(message) = Message::new(r.topic, r.message_id, r.generate_time_ms, r.payload) else {
        return;
    };
    let record = BacklogRecord {
        message,
        attempts: r.attempts,
        not_before_ms: r.not_before_ms,
    };
    frame_round_trip(&record, r.id, r.appended_ms);
});
