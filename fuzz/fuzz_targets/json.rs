//! The JSON check's two readings on arbitrary bytes: the acceptor that
//! answers for valid payloads and the scanner that explains the others.
//! Whatever the bytes, the acceptor's answer is the scanner's: valid and
//! this deep exactly when the scanner says so, and neither panics.

#![no_main]

use laneway::fuzzing::acceptor_and_scanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (accepted, scanned) = acceptor_and_scanner(data);
    assert_eq!(
        accepted,
        scanned.as_ref().ok().copied(),
        "the acceptor answered {accepted:?}, the scanner {scanned:?}: {}",
        String::from_utf8_lossy(data)
    );
});
