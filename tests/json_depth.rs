//! `validate_json` limits nesting: a payload nested deeper than
//! `max_json_depth` (default 512) is a dead letter with that reason, since
//! recursive parsers downstream crash on it; one at the limit is
//! delivered byte for byte. Through the real binary, a JSONL file in and a
//! JSONL sink out; the run ends when the file is exhausted.

use crate::support;

use std::process::Command;
use std::time::Duration;

use support::records::{Copies, Record, assert_delivered, records_in_jsonl};

fn nested(depth: usize) -> Vec<u8> {
    // Objects and arrays in turn, with a string holding brackets inside.
    let mut open = String::new();
    let mut close = String::new();
    for i in 0..depth {
        if i % 2 == 0 {
            open.push_str("{\"k\":");
            close.insert(0, '}');
        } else {
            open.push('[');
            close.insert(0, ']');
        }
    }
    format!("{open}\"[{{]}}\\u0000\"{close}").into_bytes()
}

fn record(id: &str, payload: Vec<u8>) -> Record {
    let now = laneway::message::now_epoch_ms();
    Record::new("/pk/dev/thing/event/property/post", id, now, payload)
}

/// Runs a file of `records` through one group with `group_extra` knobs;
/// what it delivered and its dead-letter lines.
fn run(records: &[Record], group_extra: &str) -> (Vec<Record>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, config) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("l.toml"),
    );
    let mut text = String::new();
    for r in records {
        text.push_str(&r.envelope_line());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[[sources]]\ntype = \"jsonl\"\npath = {input:?}\n\
             [[groups]]\nname = \"g\"\n{group_extra}\nsink = {{ type = \"jsonl\", path = {out:?} }}\n",
            data = dir.path().join("data"),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-q", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = support::process::wait_or_kill(child, Duration::from_secs(120));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let letters = std::fs::read_to_string(dir.path().join("data/dead-letters.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    (records_in_jsonl(&out), letters)
}

#[test]
fn payloads_deeper_than_the_limit_are_dead_letters_and_the_rest_arrive_unchanged() {
    let at_limit = record("at-limit", nested(512));
    let plain = record("plain", b"{\"temp\":21.5}".to_vec());
    let sent = vec![
        at_limit.clone(),
        record("one-deeper", nested(513)),
        record("very-deep", nested(100_000)),
        plain.clone(),
    ];
    let (delivered, letters) = run(&sent, "");
    assert_delivered(&[at_limit, plain.clone()], &delivered, Copies::ExactlyOnce);
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (id, depth) in [("one-deeper", 513), ("very-deep", 100_000)] {
        let line = letters
            .iter()
            .find(|l| l.contains(&format!("\"{id}\"")))
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert!(
            line.contains(&format!(
                "nests {depth} deep, deeper than max_json_depth (512)"
            )),
            "{line}"
        );
    }

    // The knob: a limit of 3 lets `{"k":[{"k":"..."}]}` through, not 4 deep.
    let three = record("three", nested(3));
    let four = record("four", nested(4));
    let (delivered, letters) = run(&[three.clone(), four, plain.clone()], "max_json_depth = 3");
    assert_delivered(&[three, plain], &delivered, Copies::ExactlyOnce);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].contains("max_json_depth (3)"), "{letters:?}");
}
