//! Valid input that used to be refused or changed: a leading byte order
//! mark, integers of any size, key order and whitespace inside the payload,
//! `/sys/` topics; and dead letters that name their file and line with a
//! precise reason, in a file only its owner can read. Runs the real binary
//! on a real JSONL file and compares the delivered lines byte for byte.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support;
use support::process::wait_or_kill;

const HANG: Duration = Duration::from_secs(120);

/// Far in the future: every message is fresh and takes the live lane.
const FRESH: i64 = 32_503_680_000_000;

const CONFIG: &str = r#"data_dir = "data"

[[sources]]
type = "jsonl"
path = "in.jsonl"

[[groups]]
name = "all"
backlog = { store = "memory" }
sink = { type = "jsonl", path = "all.jsonl" }

[[groups]]
name = "props"
kinds = ["property"]
products = ["pk1"]
backlog = { store = "memory" }
sink = { type = "jsonl", path = "props.jsonl" }
"#;

fn run(dir: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "-q", "-c", "laneway.toml"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_or_kill(child, HANG)
}

/// One envelope line as the JSONL sink writes it (compact, this field order).
fn envelope(topic: &str, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut line =
        format!(r#"{{"topic":"{topic}","messageId":"{id}","generateTime":{FRESH},"payload":"#)
            .into_bytes();
    line.extend_from_slice(payload);
    line.push(b'}');
    line
}

/// The lines of a sink file, by message id.
fn delivered(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let text = String::from_utf8_lossy(l);
            let id = text
                .split(r#""messageId":""#)
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string();
            (id, l.to_vec())
        })
        .collect()
}

#[test]
fn valid_input_arrives_byte_for_byte_and_bad_input_is_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("laneway.toml"), CONFIG).unwrap();
    let property = "/pk1/dev1/thing/event/property/post";
    let sys = "/sys/pk1/dev2/thing/event/property/post";
    let kept: [(&str, &str, &[u8]); 5] = [
        ("bom", property, br#"{"a":1}"#),
        (
            "big",
            property,
            br#"{"n":123456789012345678901234567890,"m":-0.000000000000000000000000000001e-400}"#,
        ),
        (
            "order",
            property,
            "{ \"z\" : 1 ,\t\"a\":[ 1.50 , 2E3 ] , \"s\":\"caf\\u00e9 \u{e9} \\/\" }".as_bytes(),
        ),
        ("sys", sys, br#"{"temperature":21.5}"#),
        (
            "other-product",
            "/pk2/dev1/thing/event/property/post",
            b"[]",
        ),
    ];
    let mut input = Vec::new();
    for (i, (id, topic, payload)) in kept.iter().enumerate() {
        if i == 0 {
            input.extend_from_slice(b"\xEF\xBB\xBF");
        }
        input.extend_from_slice(&envelope(topic, id, payload));
        input.push(b'\n');
    }
    // Line 6: a payload over the 1 MiB limit but a line under the 2 MiB one.
    let huge = format!("\"{}\"", "x".repeat(1_500_000));
    input.extend_from_slice(&envelope(property, "huge", huge.as_bytes()));
    input.push(b'\n');
    // Line 7: a trailing comma inside the payload.
    input.extend_from_slice(&envelope(property, "bad", br#"{"a":1,}"#));
    input.push(b'\n');
    std::fs::write(dir.path().join("in.jsonl"), &input).unwrap();

    let out = run(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let all = delivered(&dir.path().join("all.jsonl"));
    assert_eq!(all.len(), kept.len(), "{:?}", all.keys());
    for (id, topic, payload) in kept {
        let line = all.get(id).unwrap_or_else(|| panic!("{id} not delivered"));
        assert_eq!(
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&envelope(topic, id, payload)),
            "{id}"
        );
        assert_eq!(line, &envelope(topic, id, payload), "{id}: bytes differ");
    }

    // The /sys/ topic is a property of product pk1, like the topic without the prefix.
    let props = delivered(&dir.path().join("props.jsonl"));
    let ids: Vec<&str> = props.keys().map(String::as_str).collect();
    assert_eq!(ids, ["big", "bom", "order", "sys"]);

    let dead_path = dir.path().join("data/dead-letters.jsonl");
    let dead = std::fs::read_to_string(&dead_path).unwrap();
    let letters: Vec<&str> = dead.lines().collect();
    assert_eq!(letters.len(), 2, "{dead:.2000}");
    let huge_letter = letters
        .iter()
        .find(|l| l.contains(r#""messageId":"huge""#))
        .unwrap();
    assert!(
        huge_letter.contains(r#""origin":"in.jsonl:6""#),
        "{huge_letter:.300}"
    );
    assert!(
        huge_letter.contains("oversize: payload is 1500002 bytes"),
        "{huge_letter:.300}"
    );
    let bad_letter = letters
        .iter()
        .find(|l| l.contains(r#""origin":"in.jsonl:7""#))
        .unwrap();
    assert!(
        bad_letter.contains("expected a string key but found '}' at byte"),
        "{bad_letter}"
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dead_path), 0o600);
    assert_eq!(mode(&dir.path().join("data")), 0o700);
}
