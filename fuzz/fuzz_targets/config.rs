//! The config loader on arbitrary text: a clear error or a config, never a
//! panic.
#![no_main]

use laneway::config::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = FileConfig::parse(text, "fuzz.toml");
});
