//! Every source can be tried with laneway's own tools: `laneway simulate`
//! feeds the AMQP 1.0 source (through RabbitMQ's AMQP 1.0 plugin), the
//! Pulsar source (pulsar-lite) and the Kafka source (a `laneway kafka-mock`
//! process, the topic created by `simulate --partitions`), and a `laneway
//! run` process delivers every message. What arrives is compared byte for
//! byte (topic, id, generate time, payload) with what simulate sent, as
//! `--record` wrote it; one payload in five is random bytes that are not
//! JSON nor UTF-8 and hold a NUL (`--binary-every 5`, delivered by a group
//! with `validate_json = false`). Each test needs its source's cargo
//! feature (and the AMQP 1.0 one `rabbitmq-tests`).

#![cfg(any(
    all(feature = "amqp1", feature = "rabbitmq-tests"),
    feature = "kafka",
    feature = "pulsar"
))]

use crate::support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

#[cfg(all(feature = "amqp1", feature = "rabbitmq-tests"))]
use support::broker::{broker_lock, rabbitmqctl};
#[cfg(any(all(feature = "amqp1", feature = "rabbitmq-tests"), feature = "pulsar"))]
use support::names::unique;
#[cfg(feature = "kafka")]
use support::process::Watched;
use support::process::wait_or_kill;
#[cfg(feature = "pulsar")]
use support::pulsar::{FrameProxy, PulsarLite};
use support::records::{Copies, assert_delivered, records_in_jsonl};

const COUNT: u64 = 2_000;
/// Every this many messages, simulate sends a payload that is not JSON.
const BINARY_EVERY: u64 = 5;

fn laneway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laneway"))
}

/// Runs `laneway simulate ARGS --count COUNT --binary-every BINARY_EVERY
/// --record sent` to its end.
fn simulate(args: &[&str], sent: &Path) -> Output {
    let out = wait_or_kill(
        laneway()
            .arg("simulate")
            .args(args)
            .args(["--count", &COUNT.to_string(), "-q"])
            .args(["--binary-every", &BINARY_EVERY.to_string(), "--record"])
            .arg(sent)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {stderr}");
    assert!(
        !stderr.contains("guest:guest"),
        "simulate printed the password: {stderr}"
    );
    out
}

/// Runs `laneway run` on a config whose source is `source` (a TOML table
/// body) and one group writing `out`; the run ends by itself (idle_exit).
fn run_to_idle(dir: &Path, source: &str, out: &Path) -> Output {
    let config = dir.join("laneway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n[[sources]]\n{source}\n[[groups]]\nname = \"all\"\nvalidate_json = false\nsink = {{ type = \"jsonl\", path = \"{out}\", sync = true }}\n",
            data = dir.join("data").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let out = wait_or_kill(
        laneway()
            .args(["run", "-q", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(180),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "laneway run failed: {stderr}");
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("dead letter")),
        "dead letters: simulate did not send as the source reads: {stderr}"
    );
    out
}

fn compare(sent: &Path, delivered: &Path, copies: Copies) {
    // Line for line as the JSONL sink writes (no blank line between), so
    // that a byte comparison of whole files works.
    let text = std::fs::read(sent).unwrap();
    assert!(
        text.ends_with(b"\n") && !text.windows(2).any(|w| w == b"\n\n"),
        "--record wrote a blank line"
    );
    let sent = records_in_jsonl(sent);
    assert_eq!(
        sent.len() as u64,
        COUNT,
        "--record holds every message sent"
    );
    let binary = sent
        .iter()
        .filter(|r| std::str::from_utf8(&r.payload).is_err() && r.payload.contains(&0))
        .count() as u64;
    assert_eq!(
        binary,
        COUNT / BINARY_EVERY,
        "one payload in {BINARY_EVERY} is bytes that are not UTF-8, with a NUL"
    );
    let tally = assert_delivered(&sent, &records_in_jsonl(delivered), copies);
    eprintln!(
        "{} sent, {} copies delivered, {} duplicates",
        sent.len(),
        tally.copies,
        tally.duplicates
    );
}

#[cfg(all(feature = "amqp1", feature = "rabbitmq-tests"))]
#[test]
fn simulate_amqp1_feeds_the_amqp1_source_byte_for_byte() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("simulate-amqp1");
    let url = support::broker::url1();
    let (sent, out) = (dir.path().join("sent.jsonl"), dir.path().join("out.jsonl"));
    // `/queue/NAME` makes RabbitMQ declare the durable queue.
    let address = format!("/queue/{queue}");
    let published = simulate(&["--amqp1", &url, "--address", &address], &sent);
    let stderr = String::from_utf8_lossy(&published.stderr);
    assert!(
        stderr.contains(&format!("accepted {COUNT}, not accepted 0")),
        "{stderr}"
    );
    run_to_idle(
        dir.path(),
        &format!(
            "type = \"amqp1\"\nurl = \"{url}\"\naddress = \"/amq/queue/{queue}\"\nidle_exit = \"2s\"\n"
        ),
        &out,
    );
    rabbitmqctl(&["delete_queue", &queue]);
    compare(&sent, &out, Copies::ExactlyOnce);
}

#[cfg(feature = "pulsar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_pulsar_feeds_the_pulsar_source_byte_for_byte() {
    let broker = PulsarLite::start();
    let proxy = FrameProxy::start(broker.addr);
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("simulate-pulsar");
    let (sent, out) = (dir.path().join("sent.jsonl"), dir.path().join("out.jsonl"));
    // Producing needs no proxy: only the broker's MESSAGE frames need it.
    let published = simulate(&["--pulsar", &broker.url(), "--topic", &topic], &sent);
    let stderr = String::from_utf8_lossy(&published.stderr);
    assert!(
        stderr.contains(&format!("acknowledged {COUNT}, failed 0")),
        "{stderr}"
    );
    run_to_idle(
        dir.path(),
        &format!(
            "type = \"pulsar\"\nurl = \"{}\"\ntopic = \"{topic}\"\nidle_exit = \"2s\"\n",
            proxy.url()
        ),
        &out,
    );
    // pulsar-lite sends some messages twice to a connected consumer.
    compare(&sent, &out, Copies::AtLeastOnce);
}

/// A `laneway kafka-mock` process with no topic; its bootstrap servers.
#[cfg(feature = "kafka")]
fn kafka_mock() -> (Watched, String) {
    let mut mock = Watched::spawn(laneway().arg("kafka-mock"));
    let line = mock.wait_for_line(Duration::from_secs(30), "the mock's address", |l| {
        l.starts_with("kafka-mock:")
    });
    let brokers = line
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("an address in the kafka-mock line")
        .to_string();
    (mock, brokers)
}

#[cfg(feature = "kafka")]
#[test]
fn simulate_kafka_creates_its_topic_when_asked_and_feeds_the_kafka_source() {
    let (mock, brokers) = kafka_mock();
    assert_eq!(
        brokers.split(',').count(),
        3,
        "the mock has three brokers: {brokers}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (sent, out) = (dir.path().join("sent.jsonl"), dir.path().join("out.jsonl"));
    let topic = "simulate.created";
    let produced = simulate(
        &["--kafka", &brokers, "--topic", topic, "--partitions", "3"],
        &sent,
    );
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(
        stderr.contains(&format!("acknowledged {COUNT}, failed 0")),
        "{stderr}"
    );
    run_to_idle(
        dir.path(),
        &format!(
            "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup_id = \"simulate-test\"\nidle_exit = \"3s\"\n"
        ),
        &out,
    );
    compare(&sent, &out, Copies::AtLeastOnce);
    mock.interrupt();
    mock.finish(Duration::from_secs(30));
}
