//! Log lines are plain text unless stderr is a terminal, and `NO_COLOR`
//! turns colour off even on a terminal. Runs the real binary.

use std::fs::File;
use std::process::{Command, Stdio};

const ESC: u8 = 0x1b;

#[test]
fn a_log_redirected_to_a_file_has_no_escape_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.txt");
    // `-v`: info lines, so the file is not empty and the test can fail.
    let status = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-v", "--duration", "3s", "--data-dir", "data"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(" INFO "), "no log line in:\n{text}");
    assert!(!bytes.contains(&ESC), "an escape byte in:\n{text}");
}

/// Runs a short `laneway run -v` on a pseudo-terminal (through `script`),
/// so that stderr is a terminal; returns what the terminal showed, or
/// `None` when `script` is not there.
fn run_on_a_terminal(no_color: Option<&str>) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_laneway");
    let mut cmd = Command::new("script");
    cmd.args([
        "-qefc",
        &format!("{bin} run -v -q --duration 1s --data-dir data"),
        "/dev/null",
    ])
    .current_dir(dir.path())
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stderr(Stdio::null());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().ok()?;
    out.status.success().then_some(out.stdout)
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    let Some(coloured) = run_on_a_terminal(None) else {
        eprintln!("skipped: `script` cannot give the run a terminal here");
        return;
    };
    let text = String::from_utf8_lossy(&coloured);
    assert!(text.contains("INFO"), "{text}");
    assert!(coloured.contains(&ESC), "no colour on a terminal:\n{text}");

    let plain = run_on_a_terminal(Some("1")).unwrap();
    let text = String::from_utf8_lossy(&plain);
    assert!(text.contains("INFO"), "{text}");
    assert!(!plain.contains(&ESC), "colour despite NO_COLOR:\n{text}");

    // An empty NO_COLOR does not count (https://no-color.org).
    let empty = run_on_a_terminal(Some("")).unwrap();
    assert!(empty.contains(&ESC));
}

#[test]
fn json_log_lines_are_one_object_each() {
    use simd_json::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    let status = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args([
            "run",
            "-q",
            "-v",
            "--log-format",
            "json",
            "--duration",
            "2s",
            "--data-dir",
            "data",
        ])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "no log line at all");
    for line in lines {
        let mut bytes = line.as_bytes().to_vec();
        let value = simd_json::to_owned_value(&mut bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(
                value.get(key).and_then(|v| v.as_str()).is_some(),
                "{key}: {line}"
            );
        }
        let message = value.get("fields").and_then(|f| f.get("message"));
        assert!(message.and_then(|m| m.as_str()).is_some(), "{line}");
    }
    assert!(text.contains(r#""level":"INFO""#), "{text}");
}
