//! Round trip through the real binary and a real RabbitMQ: `laneway
//! simulate` publishes 100,000 messages, `laneway run` consumes the queue
//! into a JSONL file; every message id arrives, none twice.

#![cfg(all(feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::process::Command;

use support::broker::*;
use support::names::unique;
use support::records::{self, Copies, assert_delivered};

const COUNT: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_exactly_once_in_a_failure_free_run() {
    let _lock = broker_lock(false);
    let name = unique("roundtrip");
    let conn = connection().await;
    let ch = conn.create_channel().await.unwrap();
    let mirror = mirror(&ch, &name).await;
    simulate(&name, COUNT, &[]);
    let sent = read_records(&conn, &mirror, COUNT as usize).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = dir.path().join("laneway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"
[[sources]]
type = "amqp"
url_env = "LANEWAY_TEST_AMQP_URL"
queues = ["{name}"]
exchange = "{name}"
idle_exit = "2s"

[[groups]]
name = "all"
sink = {{ type = "jsonl", path = "{out}", sync = false }}
"#,
            data = dir.path().join("data").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--json", "-q", "--config"])
        .arg(&config)
        .env("LANEWAY_TEST_AMQP_URL", url())
        .output()
        .expect("run laneway");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "laneway run failed: {stderr}");
    assert!(
        !stderr.contains("guest:guest"),
        "a password was printed: {stderr}"
    );
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(
        summary.contains(&format!("\"delivered\":{COUNT},")),
        "{summary}"
    );

    let delivered = records::records_in_jsonl(&out);
    assert_delivered(&sent, &delivered, Copies::ExactlyOnce);

    assert_eq!(ready(&ch, &name).await, 0, "everything was acknowledged");
    cleanup(&ch, &[&name, &mirror], &[&name]).await;
}
