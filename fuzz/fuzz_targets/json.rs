//! The JSON check's two readings on arbitrary bytes: the acceptor that
//! answers for valid payloads and the scanner that explains the others.
//! Whatever the bytes, the acceptor's answer is the scanner's: valid and
//! this deep exactly when the scanner says so (up to the acceptor's depth,
//! beyond which it leaves the answer to the scanner), and neither panics.

#![no_main]

use laneway::fuzzing::{ACCEPTED_DEPTH, acceptor_and_scanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (accepted, scanned) = acceptor_and_scanner(data);
    match (accepted, &scanned) {
        (Some(a), Ok(s)) if a == *s => {}
        (None, Ok(s)) if *s > ACCEPTED_DEPTH => {}
        (None, Err(_)) => {}
        _ => panic!(
            "the acceptor answered {accepted:?}, the scanner {scanned:?}: {}",
            String::from_utf8_lossy(data)
        ),
    }
});
