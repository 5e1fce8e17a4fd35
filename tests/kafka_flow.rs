//! Kafka in, Kafka out, through the engine, against librdkafka's mock
//! cluster: every message exactly once and byte-equal (topic, id, time,
//! payload, key), a stale share through the backlog, and the group's
//! committed offsets at the log end afterwards.

#![cfg(feature = "kafka")]

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use laneway::engine::{Engine, EngineBuilder, GroupConfig};
use laneway::kafka::{KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig};
use laneway::message::now_epoch_ms;
use laneway::source::LanePolicy;
use support::engine::spawn_engine;
use support::kafka::{cluster, committed_and_ends, expected_key, produce, read_back};
use support::records::{Copies, assert_delivered, json_records};
use support::wait::wait_until;

const N: u64 = 100_000;

/// An engine builder with one group, "out", delivering to `sink` with no
/// JSON check (the payloads are checked byte for byte instead).
fn to_sink(sink: KafkaSink) -> EngineBuilder {
    Engine::builder().group_with(
        GroupConfig {
            validate_json: false,
            ..GroupConfig::named("out")
        },
        Arc::new(sink),
        None,
    )
}
const PARTITIONS: i32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_goes_through_kafka_exactly_once_and_unchanged() {
    let cluster = cluster(&["in", "out"], PARTITIONS);
    let brokers = cluster.bootstrap_servers();
    let now = now_epoch_ms();
    // Every fourth is an hour old: it goes through the backlog lane.
    let sent = json_records("k", N, |i| {
        if i % 4 == 0 {
            now - 3_600_000
        } else {
            now + i as i64
        }
    });
    produce(&brokers, "in", &sent).await;

    let source = KafkaSource::new(KafkaSourceConfig {
        brokers: brokers.clone(),
        topics: vec!["in".into()],
        group_id: "flow".into(),
        ..KafkaSourceConfig::default()
    })
    .unwrap();
    let sink = KafkaSink::new(KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: "out".into(),
        ..KafkaSinkConfig::default()
    })
    .unwrap();
    let engine = to_sink(sink)
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);
    assert!(
        wait_until(&monitor, Duration::from_secs(300), |m| m.delivered() >= N).await,
        "every message delivered: {:?}",
        monitor.summary()
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(summary.delivered, N);
    assert_eq!(summary.dead_letter, 0);
    assert!(
        summary.delivered_backlog >= N / 4,
        "the stale quarter went through the backlog: {summary:?}"
    );

    let back = read_back(&brokers, "out", N as usize, Duration::from_secs(120)).await;
    for b in &back {
        assert_eq!(b.key, expected_key(&b.record), "keyed by product/device");
    }
    let records: Vec<_> = back.into_iter().map(|b| b.record).collect();
    assert_delivered(&sent, &records, Copies::ExactlyOnce);

    // The shutdown committed everything that was done: the log end.
    for (p, committed, end) in committed_and_ends(&brokers, "flow", "in", PARTITIONS) {
        assert_eq!(
            committed, end,
            "partition {p}: committed {committed}, log end {end}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_does_not_exist_fails_the_run_naming_the_source() {
    let cluster = cluster(&["in"], 2);
    let source = KafkaSource::new(KafkaSourceConfig {
        brokers: cluster.bootstrap_servers(),
        topics: vec!["no.such.topic".into()],
        group_id: "missing".into(),
        ..KafkaSourceConfig::default()
    })
    .unwrap();
    let engine = Engine::builder()
        .group(GroupConfig::named("g"), laneway::sink::NullSink)
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap();
    // The run ends by itself: a failed source stops it.
    let summary = tokio::time::timeout(Duration::from_secs(60), engine.run(std::future::pending()))
        .await
        .expect("the run stops on the failure");
    assert_eq!(summary.failures.len(), 1, "{summary:?}");
    let failure = &summary.failures[0];
    assert!(failure.source.contains("no.such.topic"), "{failure:?}");
    assert!(
        failure.error.contains("UnknownTopicOrPartition"),
        "{failure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_producer_is_a_dead_letter_and_the_rest_go_through() {
    let cluster = cluster(&["out"], 2);
    let brokers = cluster.bootstrap_servers();
    let mut properties = std::collections::BTreeMap::new();
    // The producer refuses records above this size: a permanent failure.
    properties.insert("message.max.bytes".to_string(), "20000".into());
    let sink = KafkaSink::new(KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: "out".into(),
        properties,
        ..KafkaSinkConfig::default()
    })
    .unwrap();
    let engine = to_sink(sink).build().unwrap();
    let dead = engine.dead_letters();
    let ingest = engine.ingest(LanePolicy::Live);
    let now = now_epoch_ms();
    let sent = json_records("s", 10, |_| now);
    let big = support::records::Record::new(
        "/pk1/dev1/thing/event/property/post",
        "big",
        now,
        vec![b'x'; 50_000],
    );
    let (monitor, stop, task) = spawn_engine(engine);
    let mut batch: Vec<_> = sent
        .iter()
        .map(|r| laneway::source::Incoming::Message(r.message()))
        .collect();
    batch.push(laneway::source::Incoming::Message(big.message()));
    ingest.submit(batch, laneway::ack::AckRef::none()).await;
    assert!(
        wait_until(&monitor, Duration::from_secs(60), |m| {
            let s = m.summary();
            s.delivered == 10 && s.dead_letter == 1
        })
        .await,
        "{:?}",
        monitor.summary()
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    let letters = dead.recent();
    assert_eq!(letters[0].message_id.as_deref(), Some("big"));
    assert!(
        letters[0].reason.contains("permanently"),
        "{}",
        letters[0].reason
    );
    let back = read_back(&brokers, "out", 10, Duration::from_secs(60)).await;
    let records: Vec<_> = back.into_iter().map(|b| b.record).collect();
    assert_delivered(&sent, &records, Copies::ExactlyOnce);
}
