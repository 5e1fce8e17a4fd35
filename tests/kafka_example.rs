//! The Kafka acceptance, as README gives it to a newcomer, with real
//! processes: `laneway kafka-mock` starts a broker, `laneway simulate
//! --kafka ... --count 50000 --age 1h` fills a topic, and `laneway run
//! --config examples/kafka.toml` delivers all 50,000 (a stale pile: live-first
//! catch-up reads it) and exits by itself. What lands in the example's JSONL
//! output is compared, byte for byte, with the records read back from the
//! topic.

#![cfg(feature = "kafka")]

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::kafka::read_back;
use support::process::{Watched, wait_or_kill};
use support::records::{Copies, assert_delivered, records_in_jsonl};

const COUNT: usize = 50_000;

fn laneway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laneway"))
}

#[test]
fn simulate_then_run_the_kafka_example_delivers_all_50000() {
    let mut mock = Watched::spawn(laneway().args([
        "kafka-mock",
        "--topic",
        "laneway.in",
        "--topic",
        "laneway.alarms",
    ]));
    let line = mock.wait_for_line(Duration::from_secs(30), "the mock's address", |l| {
        l.starts_with("kafka-mock:")
    });
    let brokers = line
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("an address in the kafka-mock line")
        .to_string();

    let simulate = wait_or_kill(
        laneway()
            .args(["simulate", "--kafka", &brokers, "--topic", "laneway.in"])
            .args(["--count", &COUNT.to_string(), "--age", "1h"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    );
    assert!(simulate.status.success(), "simulate failed");

    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kafka.toml");
    let run = wait_or_kill(
        laneway()
            .args(["run", "--config"])
            .arg(&example)
            .env("KAFKA_BROKERS", &brokers)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(300),
    );
    assert!(
        run.status.success(),
        "laneway run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let sent: Vec<_> = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(read_back(
            &brokers,
            "laneway.in",
            COUNT,
            Duration::from_secs(120),
        ))
        .into_iter()
        .map(|r| r.record)
        .collect();
    let delivered = records_in_jsonl(&dir.path().join("kafka-out.jsonl"));
    assert_delivered(&sent, &delivered, Copies::ExactlyOnce);
    drop(mock);
}
