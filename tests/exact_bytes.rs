//! Any bytes come out as they went in: a binary corpus (random bytes of
//! every length from 0 to 300, bytes that are not UTF-8, NULs, valid JSON
//! with garbage behind it) through real `laneway run` processes, from a
//! JSONL file, from a RabbitMQ queue (AMQP 0-9-1 and AMQP 1.0) and from a
//! Pulsar topic, into the JSONL sink, the AMQP sink and the dead letters, a
//! third of it stale so that it goes through the disk or the broker backlog
//! (Kafka's sources and sinks walk the same corpus in tests/kafka_keys.rs). Every line written is read back here with a
//! JSON parser and a base64 decoder of its own, not with laneway's.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use laneway::message::{now_epoch_ms, write_envelope};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use simd_json::prelude::*;
use support::broker::*;
use support::names::unique;
use support::process::wait_or_kill;
use support::records::{self, Copies, Record, assert_delivered, envelope_record};

const HANG: Duration = Duration::from_secs(180);

fn is_json(r: &Record) -> bool {
    r.message().payload_is_json()
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn envelopes(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap_or_default();
    lines(&bytes).into_iter().map(envelope_record).collect()
}

/// A dead letter: its group, message id, reason and exact body.
struct Letter {
    group: Option<String>,
    topic: Option<String>,
    id: Option<String>,
    reason: String,
    body: Vec<u8>,
}

fn dead_letters(path: &Path) -> Vec<Letter> {
    let bytes = std::fs::read(path).unwrap_or_default();
    lines(&bytes)
        .into_iter()
        .map(|line| {
            let v = simd_json::to_owned_value(&mut line.to_vec()).unwrap();
            let text = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
            let body = match (v.get("body"), v.get("bodyBase64")) {
                (Some(b), None) => b.as_str().unwrap().as_bytes().to_vec(),
                (None, Some(b)) => BASE64.decode(b.as_str().unwrap()).unwrap(),
                _ => panic!("one body form: {}", line.escape_ascii()),
            };
            Letter {
                group: text("group"),
                topic: text("topic"),
                id: text("messageId"),
                reason: text("reason").unwrap(),
                body,
            }
        })
        .collect()
}

/// The dead letters of `group` must be exactly the non-JSON records, each
/// once, with their exact bodies.
fn assert_dead_letters_exact(letters: &[Letter], group: &str, expected: &[&Record]) {
    let mine: Vec<&Letter> = letters
        .iter()
        .filter(|l| l.group.as_deref() == Some(group))
        .collect();
    assert_eq!(mine.len(), expected.len(), "dead letters of {group}");
    let by_id: HashMap<&str, &Letter> = mine
        .iter()
        .map(|l| (l.id.as_deref().unwrap(), *l))
        .collect();
    for r in expected {
        let l = by_id
            .get(r.id.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {r:?}"));
        assert_eq!(l.topic.as_deref(), Some(r.topic.as_str()));
        assert_eq!(l.body, r.payload, "{}: {}", r.id, l.reason);
    }
}

fn run(dir: &Path, envs: &[(&str, String)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laneway"));
    cmd.args(["run", "-q", "-c", "laneway.toml"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = wait_or_kill(cmd.spawn().unwrap(), HANG);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_binary_corpus_goes_file_to_file_unchanged_and_its_dead_letters_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sent = records::corpus_records("f");
    let mut input = Vec::new();
    for r in &sent {
        write_envelope(&mut input, &r.message());
    }
    std::fs::write(dir.path().join("in.jsonl"), &input).unwrap();
    std::fs::write(
        dir.path().join("laneway.toml"),
        format!("data_dir = \"data\"\n\n[[sources]]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n{CORPUS_GROUPS}"),
    )
    .unwrap();
    run(dir.path(), &[]);

    // file -> run -> file is the identity, line for line.
    let out = std::fs::read(dir.path().join("raw.jsonl")).unwrap();
    let (mut want, mut got) = (lines(&input), lines(&out));
    want.sort();
    got.sort();
    assert!(want == got, "the output lines are not the input lines");
    let json = sent.iter().filter(|r| is_json(r)).count();
    assert!(json >= 5 && sent.len() - json >= 290, "{json} JSON");
    assert_corpus_out(dir.path(), &sent, Copies::ExactlyOnce);
}

fn platform_properties(topic: &[u8], id: &[u8], time: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "topic".into(),
        AMQPValue::LongString(LongString::from(topic.to_vec())),
    );
    headers.insert(
        "messageId".into(),
        AMQPValue::LongString(LongString::from(id.to_vec())),
    );
    headers.insert("generateTime".into(), AMQPValue::LongLongInt(time));
    BasicProperties::default().with_headers(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_corpus_from_a_queue_comes_out_exact_in_every_sink_and_dead_letter() {
    let _lock = broker_lock(false);
    let name = unique("exact");
    let (out_exchange, out_queue) = (format!("{name}.out"), format!("{name}.out-copy"));
    let backlogs = [
        format!("{name}.checked-backlog"),
        format!("{name}.fwd-backlog"),
    ];
    let conn = connection().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, &name, FieldTable::default()).await;
    declare_exchange(&ch, &out_exchange).await;
    declare_queue(&ch, &out_queue, FieldTable::default()).await;
    bind_all(&ch, &out_queue, &out_exchange).await;

    let sent = records::corpus_records("q");
    for r in &sent {
        let props = platform_properties(r.topic.as_bytes(), r.id.as_bytes(), r.generate_time_ms);
        publish_raw(&ch, &name, &r.payload, props).await;
    }
    // A topic and an id that are not UTF-8: dead letters whose reason
    // keeps the header's bytes, and whose body is exact.
    let bad_id = b"q-id-\xff\xfe\0";
    publish_raw(
        &ch,
        &name,
        b"\xffbody-1",
        platform_properties(b"/pk/d/thing/lifecycle", bad_id, now_epoch_ms()),
    )
    .await;
    let bad_topic = b"/pk/\xc0\xaf/thing/lifecycle";
    publish_raw(
        &ch,
        &name,
        b"\xffbody-2",
        platform_properties(bad_topic, b"q-topic", now_epoch_ms()),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let url = url();
    std::fs::write(
        dir.path().join("laneway.toml"),
        format!(
            r#"data_dir = "data"

[[sources]]
type = "amqp"
url_env = "LANEWAY_TEST_AMQP_URL"
queues = ["{name}"]
idle_exit = "3s"

[[groups]]
name = "raw"
validate_json = false
sink = {{ type = "jsonl", path = "raw.jsonl" }}

[[groups]]
name = "checked"
backlog = {{ store = "amqp", url_env = "LANEWAY_TEST_AMQP_URL", queue = "{checked}" }}
sink = {{ type = "jsonl", path = "checked.jsonl" }}

[[groups]]
name = "fwd"
validate_json = false
backlog = {{ store = "amqp", url_env = "LANEWAY_TEST_AMQP_URL", queue = "{fwd}" }}
sink = {{ type = "amqp", url_env = "LANEWAY_TEST_AMQP_URL", exchange = "{out_exchange}" }}
"#,
            checked = backlogs[0],
            fwd = backlogs[1],
        ),
    )
    .unwrap();
    let run_dir = dir.path().to_path_buf();
    let env_url = url.clone();
    tokio::task::spawn_blocking(move || run(&run_dir, &[("LANEWAY_TEST_AMQP_URL", env_url)]))
        .await
        .unwrap();

    assert_delivered(
        &sent,
        &envelopes(&dir.path().join("raw.jsonl")),
        Copies::ExactlyOnce,
    );
    let (json, not_json): (Vec<&Record>, Vec<&Record>) = sent.iter().partition(|r| is_json(r));
    let json: Vec<Record> = json.into_iter().cloned().collect();
    assert_delivered(
        &json,
        &envelopes(&dir.path().join("checked.jsonl")),
        Copies::ExactlyOnce,
    );
    let forwarded = read_records(&conn, &out_queue, sent.len()).await;
    assert_delivered(&sent, &forwarded, Copies::ExactlyOnce);

    let letters = dead_letters(&dir.path().join("data/dead-letters.jsonl"));
    assert_dead_letters_exact(&letters, "checked", &not_json);
    let at_ingest: Vec<&Letter> = letters.iter().filter(|l| l.group.is_none()).collect();
    assert_eq!(at_ingest.len(), 2, "the two unusable deliveries");
    for (body, header) in [
        (&b"\xffbody-1"[..], &bad_id[..]),
        (b"\xffbody-2", bad_topic),
    ] {
        let l = at_ingest
            .iter()
            .find(|l| l.body == body)
            .unwrap_or_else(|| panic!("no dead letter with body {}", body.escape_ascii()));
        let shown = format!("(base64 {})", BASE64.encode(header));
        assert!(l.reason.contains(&shown), "{} lacks {shown}", l.reason);
    }
    assert_eq!(ready(&ch, &name).await, 0, "everything was acknowledged");
    let mut queues: Vec<&str> = vec![&name, &out_queue];
    let waits: Vec<String> = backlogs
        .iter()
        .flat_map(|b| [format!("{b}.wait"), format!("{b}.poison")])
        .collect();
    queues.extend(backlogs.iter().map(String::as_str));
    queues.extend(waits.iter().map(String::as_str));
    cleanup(&ch, &queues, &[&out_exchange]).await;
}

/// The groups every source-side corpus run feeds: `raw` forwards any bytes
/// (`validate_json = false`), `checked` delivers the JSON and dead-letters
/// the rest; both to JSONL files, the stale third through the disk backlog
/// (the default store).
const CORPUS_GROUPS: &str = r#"
[[groups]]
name = "raw"
validate_json = false
sink = { type = "jsonl", path = "raw.jsonl" }

[[groups]]
name = "checked"
sink = { type = "jsonl", path = "checked.jsonl" }
"#;

/// What a corpus run must have written in `dir`: every record in `raw`
/// (`copies` times), the JSON ones in `checked`, and the others as exact
/// dead letters of `checked`.
fn assert_corpus_out(dir: &Path, sent: &[Record], copies: Copies) {
    assert_delivered(sent, &envelopes(&dir.join("raw.jsonl")), copies);
    let (json, not_json): (Vec<&Record>, Vec<&Record>) = sent.iter().partition(|r| is_json(r));
    let json: Vec<Record> = json.into_iter().cloned().collect();
    assert_delivered(&json, &envelopes(&dir.join("checked.jsonl")), copies);
    let letters = dead_letters(&dir.join("data/dead-letters.jsonl"));
    if copies == Copies::ExactlyOnce {
        assert_dead_letters_exact(&letters, "checked", &not_json);
        assert_eq!(letters.len(), not_json.len(), "no other dead letter");
    } else {
        // Redelivered copies may be dead-lettered again: each body exact.
        for r in not_json {
            assert!(
                letters
                    .iter()
                    .any(|l| l.id.as_deref() == Some(r.id.as_str()) && l.body == r.payload),
                "no exact dead letter for {r:?}"
            );
        }
    }
}

#[cfg(feature = "amqp1")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_corpus_over_amqp_1_0_comes_out_exact() {
    let _turn = support::amqp1::turn().await;
    let _lock = broker_lock(false);
    let name = unique("exact1");
    let conn = connection().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, &name, FieldTable::default()).await;
    let sent = records::corpus_records("a1");
    publish1(&name, &sent).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("laneway.toml"),
        format!(
            "data_dir = \"data\"\n\n[[sources]]\ntype = \"amqp1\"\naddress = \"/amq/queue/{name}\"\nidle_exit = \"3s\"\n{CORPUS_GROUPS}"
        ),
    )
    .unwrap();
    let run_dir = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || run(&run_dir, &[]))
        .await
        .unwrap();
    assert_corpus_out(dir.path(), &sent, Copies::ExactlyOnce);
    assert_eq!(ready(&ch, &name).await, 0, "everything was accepted");
    cleanup(&ch, &[&name], &[]).await;
}

#[cfg(feature = "pulsar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_corpus_from_a_pulsar_topic_comes_out_exact() {
    use support::pulsar::{FrameProxy, PulsarLite, platform_message, producer, send_all};
    let broker = PulsarLite::start();
    let proxy = FrameProxy::start(broker.addr);
    let topic = unique("exact-pulsar");
    let sent = records::corpus_records("p");
    let outgoing = sent
        .iter()
        .map(|r| platform_message(&r.topic, &r.id, r.generate_time_ms, &r.payload))
        .collect();
    send_all(&mut producer(&broker, &topic).await, outgoing).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("laneway.toml"),
        format!(
            "data_dir = \"data\"\n\n[[sources]]\ntype = \"pulsar\"\nurl = \"{}\"\ntopic = \"{topic}\"\nidle_exit = \"3s\"\n{CORPUS_GROUPS}",
            proxy.url()
        ),
    )
    .unwrap();
    let run_dir = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || run(&run_dir, &[]))
        .await
        .unwrap();
    // Pulsar may redeliver (at least once); every copy is exact.
    assert_corpus_out(dir.path(), &sent, Copies::AtLeastOnce);
}
