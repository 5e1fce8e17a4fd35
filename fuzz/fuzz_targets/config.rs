//! The config loader on arbitrary text: it accepts or explains (with a
//! line number), never panics; an accepted config yields its engine
//! options and backlog directories.

#![no_main]

use laneway::fuzzing::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FileConfig::parse(text, "fuzz.toml") {
        Ok(config) => {
            let _ = config.engine_options();
            for g in &config.groups {
                let _ = config.backlog_dir(g);
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with("fuzz.toml"),
                "an error names the file: {shown}"
            );
        }
    }
});
