//! Files laneway creates and the errors it gives about files: the JSONL
//! sink's output is created owner-only (0600, like dead letters) whatever
//! the umask, unless `mode` says otherwise; a `data_dir` that is a regular
//! file is "not a directory"; a config that is not UTF-8, or nests past
//! the parser's limit, is refused at the right line and column.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::records::{Copies, Record, assert_delivered, json_records, records_in_jsonl};

/// Runs `laneway ARGS` under `umask 022` in `dir`, bounded.
fn laneway(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_laneway"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    support::process::wait_or_kill(child, Duration::from_secs(120))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pile(n: u64) -> (Vec<Record>, Vec<u8>) {
    let now = laneway::message::now_epoch_ms();
    let sent = json_records("m", n, |i| now + i as i64);
    let mut input = Vec::new();
    for r in &sent {
        input.extend_from_slice(r.envelope_line().as_bytes());
        input.push(b'\n');
    }
    (sent, input)
}

#[test]
fn the_jsonl_sink_creates_its_file_owner_only_unless_mode_says_otherwise() {
    for (knob, expected) in [("", 0o600), ("mode = 0o640", 0o640)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("l.toml"),
            format!(
                "data_dir = \"data\"\n[[sources]]\ntype = \"jsonl\"\npath = \"-\"\n\
                 [[groups]]\nname = \"g\"\n[groups.sink]\ntype = \"jsonl\"\npath = \"out.jsonl\"\n{knob}\n"
            ),
        )
        .unwrap();
        let (sent, input) = pile(50);
        let out = laneway(dir.path(), &["run", "-q", "-c", "l.toml"], Some(&input));
        assert!(out.status.success(), "{}", text(&out));
        let file = dir.path().join("out.jsonl");
        assert_delivered(&sent, &records_in_jsonl(&file), Copies::ExactlyOnce);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, expected, "{knob:?}: the output is {mode:o}");
    }
}

#[test]
fn a_data_dir_that_is_a_file_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain-file"), "x").unwrap();
    let out = laneway(
        dir.path(),
        &["run", "-q", "--duration", "1s", "--data-dir", "plain-file"],
        None,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("plain-file: not a directory"), "{all}");
    assert!(!all.contains("os error 17"), "{all}");
}

#[test]
fn config_errors_for_invalid_utf8_and_deep_nesting_carry_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = b"[[groups]]\nname = \"g\"\n# caf".to_vec();
    bad.extend_from_slice(&[0xe9, b'\n']);
    std::fs::write(dir.path().join("latin1.toml"), &bad).unwrap();
    let out = laneway(dir.path(), &["check-config", "latin1.toml"], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("latin1.toml:3:6: invalid UTF-8"), "{all}");

    // A dotted table nested past the parser's limit, on line 13.
    let mut deep = String::from("[[groups]]\nname = \"g\"\n");
    for i in 0..10 {
        deep.push_str(&format!("# filler {i}\n"));
    }
    deep.push_str(&format!("[{}]\n", vec!["t"; 2_000].join(".")));
    assert_eq!(deep.lines().count(), 13);
    std::fs::write(dir.path().join("deep.toml"), &deep).unwrap();
    let out = laneway(dir.path(), &["check-config", "deep.toml"], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("deep.toml:13:"), "{all}");
}
