//! Kafka in, Kafka out, against librdkafka's mock cluster (and RabbitMQ for
//! the broker backlog): every record's key and every header beyond the
//! platform's three come out byte for byte (binary keys and values, a
//! header without a value, a name given twice), live and through the
//! catch-up lane into the disk backlog and the broker backlog; and the JSONL
//! sink writes them so that they read back exactly. The `key = "device"`
//! knob keys by product and device instead. Records are read back from the
//! wire here, independently of laneway's own parsing.

#![cfg(all(feature = "kafka", feature = "amqp", feature = "rabbitmq-tests"))]

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use laneway::amqp::{AmqpBacklog, AmqpBacklogConfig};
use laneway::backlog::{BacklogStore, DiskBacklog, DiskBacklogConfig};
use laneway::engine::{Engine, GroupConfig};
use laneway::kafka::{KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig, KeyChoice};
use laneway::message::now_epoch_ms;
use laneway::sink::{JsonlSink, Sink};
use laneway::source::LanePolicy;
use rand::{Rng, SeedableRng};
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use simd_json::prelude::*;
use support::engine::spawn_engine;
use support::kafka::cluster;

/// How many records; the first two thirds are an hour old.
const N: usize = 600;
const STALE: usize = N * 2 / 3;

/// A record as it is on the wire: key, headers in order, value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wire {
    key: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    value: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> &[u8] {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .unwrap_or_else(|| panic!("no {name} header: {self:?}"))
    }

    fn id(&self) -> String {
        String::from_utf8(self.header("messageId").to_vec()).unwrap()
    }

    /// The headers beyond the platform's three.
    fn extra(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "topic" | "messageId" | "generateTime"))
            .cloned()
            .collect()
    }
}

/// Record `i`: a binary, a text or no key; binary and text headers, one
/// without a value, one name twice; a binary payload.
fn record(i: usize, rng: &mut impl Rng) -> Wire {
    let now = now_epoch_ms();
    let time = if i < STALE { now - 3_600_000 } else { now };
    let key = match i % 3 {
        // Never empty: Kafka need not tell an empty key from none.
        0 => Some(random(rng, 1 + i % 40)),
        1 => Some(format!("text-key-{i}").into_bytes()),
        _ => None,
    };
    let mut headers = vec![
        (
            "topic".to_string(),
            Some(format!("/pk{}/dev{i}/thing/event/property/post", i % 4).into_bytes()),
        ),
        ("messageId".into(), Some(format!("kk-{i}").into_bytes())),
        ("generateTime".into(), Some(time.to_string().into_bytes())),
        ("trace".into(), Some(random(rng, 1 + i % 30))),
        ("dup".into(), Some(b"first".to_vec())),
        ("empty".into(), None),
        ("dup".into(), Some(b"\xff\0second".to_vec())),
    ];
    if i.is_multiple_of(5) {
        headers.push(("blank".into(), Some(Vec::new())));
    }
    Wire {
        key,
        headers,
        value: random(rng, i % 301),
    }
}

fn random(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).collect()
}

/// Produces `records` to `topic`, the stale ones with their old timestamp
/// (so that catch-up splits the partition), and waits for every ack.
async fn produce(brokers: &str, topic: &str, records: &[Wire]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for r in records {
        let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            })
        });
        let time: i64 = std::str::from_utf8(r.header("generateTime"))
            .unwrap()
            .parse()
            .unwrap();
        let mut record = FutureRecord::to(topic)
            .payload(&r.value[..])
            .headers(headers)
            .timestamp(time);
        if let Some(k) = &r.key {
            record = record.key(&k[..]);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("acknowledged");
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Reads `n` records from `topic` from the start, failing after `limit`.
async fn read_all(brokers: &str, topic: &str, n: usize, limit: Duration) -> Vec<Wire> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(m) = tokio::time::timeout(left, consumer.recv()).await else {
            panic!("read {} of {n} records from {topic}", out.len());
        };
        let m = m.unwrap();
        out.push(Wire {
            key: m.key().map(<[u8]>::to_vec),
            headers: m.headers().map_or_else(Vec::new, |h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            }),
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

fn by_id(records: Vec<Wire>) -> HashMap<String, Wire> {
    let map: HashMap<String, Wire> = records.into_iter().map(|r| (r.id(), r)).collect();
    map
}

fn device_key(r: &Wire) -> Vec<u8> {
    let topic = std::str::from_utf8(r.header("topic")).unwrap();
    let mut parts = topic.trim_start_matches('/').split('/');
    format!("{}/{}", parts.next().unwrap(), parts.next().unwrap()).into_bytes()
}

fn kafka_sink(brokers: &str, topic: &str, key: KeyChoice) -> Arc<dyn Sink> {
    Arc::new(
        KafkaSink::new(KafkaSinkConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            key,
            ..KafkaSinkConfig::default()
        })
        .unwrap(),
    )
}

fn group(name: &str) -> GroupConfig {
    GroupConfig {
        validate_json: false,
        ..GroupConfig::named(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_headers_survive_live_catch_up_and_both_backlog_stores() {
    let _lock = support::broker::broker_lock(false);
    let cluster = cluster(&["in", "out-disk", "out-amqp", "out-device"], 1);
    let brokers = cluster.bootstrap_servers();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
    let sent: Vec<Wire> = (0..N).map(|i| record(i, &mut rng)).collect();
    produce(&brokers, "in", &sent).await;

    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn BacklogStore> = Arc::new(
        DiskBacklog::open(&dir.path().join("disk"), DiskBacklogConfig::default()).unwrap(),
    );
    let queue = support::names::unique("kafka-keys");
    let broker: Arc<dyn BacklogStore> = Arc::new(
        AmqpBacklog::open(
            AmqpBacklogConfig {
                url: Some(support::broker::url()),
                queue: Some(queue.clone()),
                refresh_interval: Duration::ZERO,
                ..AmqpBacklogConfig::default()
            },
            "amqp",
        )
        .await
        .unwrap(),
    );
    let jsonl_path = dir.path().join("out.jsonl");
    let jsonl: Arc<dyn Sink> = Arc::new(JsonlSink::file(&jsonl_path, false).await.unwrap());
    let source = KafkaSource::new(KafkaSourceConfig {
        brokers: brokers.clone(),
        topics: vec!["in".into()],
        group_id: "keys".into(),
        catch_up_after: 100,
        ..KafkaSourceConfig::default()
    })
    .unwrap();
    let engine = Engine::builder()
        .group_with(
            group("disk"),
            kafka_sink(&brokers, "out-disk", KeyChoice::Original),
            Some(disk),
        )
        .group_with(
            group("amqp"),
            kafka_sink(&brokers, "out-amqp", KeyChoice::Original),
            Some(broker),
        )
        .group_with(
            group("device"),
            kafka_sink(&brokers, "out-device", KeyChoice::Device),
            None,
        )
        .group_with(group("jsonl"), jsonl, None)
        .source(source, LanePolicy::Auto)
        .build()
        .unwrap();
    let (monitor, stop, task) = spawn_engine(engine);

    let limit = Duration::from_secs(120);
    for topic in ["out-disk", "out-amqp"] {
        let got = by_id(read_all(&brokers, topic, N, limit).await);
        assert_eq!(got.len(), N, "{topic}: every record once");
        for s in &sent {
            let g = &got[&s.id()];
            let want_key = s.key.clone().unwrap_or_else(|| device_key(s));
            assert_eq!(g.key.as_ref(), Some(&want_key), "{topic} {}: key", s.id());
            assert_eq!(g.extra(), s.extra(), "{topic} {}: headers", s.id());
            assert_eq!(g.value, s.value, "{topic} {}: value", s.id());
            for h in ["topic", "generateTime"] {
                assert_eq!(g.header(h), s.header(h), "{topic} {}: {h}", s.id());
            }
        }
    }
    let device = by_id(read_all(&brokers, "out-device", N, limit).await);
    for s in &sent {
        let g = &device[&s.id()];
        assert_eq!(g.key.as_ref(), Some(&device_key(s)), "key = device");
        assert_eq!(g.extra(), s.extra());
    }

    let jsonl_lines = || {
        std::fs::read(&jsonl_path)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    };
    assert!(
        support::wait::wait_until(&monitor, limit, |_| jsonl_lines() >= N).await,
        "every record in JSONL: {} lines",
        jsonl_lines()
    );
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(summary.dead_letter, 0, "{summary:?}");
    assert!(
        summary.delivered_backlog >= 3 * STALE as u64,
        "the stale records went through the backlogs: {summary:?}"
    );

    // The JSONL sink: `key` or `keyBase64`, and `headers`, exact.
    let bytes = std::fs::read(&jsonl_path).unwrap();
    let mut lines = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        let v = simd_json::to_owned_value(&mut line.to_vec()).unwrap();
        let id = v["messageId"].as_str().unwrap();
        let s = sent.iter().find(|s| s.id() == id).unwrap();
        let key = match (v.get("key"), v.get("keyBase64")) {
            (Some(k), None) => Some(k.as_str().unwrap().as_bytes().to_vec()),
            (None, Some(k)) => Some(BASE64.decode(k.as_str().unwrap()).unwrap()),
            (None, None) => None,
            _ => panic!("two key forms: {}", line.escape_ascii()),
        };
        assert_eq!(key, s.key, "{id}: key in JSONL");
        let headers: Vec<(String, Option<Vec<u8>>)> = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                let name = pair[0].as_str().unwrap().to_string();
                let value = &pair[1];
                let value = if value.is_null() {
                    None
                } else if let Some(text) = value.as_str() {
                    Some(text.as_bytes().to_vec())
                } else {
                    Some(BASE64.decode(value["base64"].as_str().unwrap()).unwrap())
                };
                (name, value)
            })
            .collect();
        assert_eq!(headers, s.extra(), "{id}: headers in JSONL");
    }
    assert!(lines >= N, "{lines} lines in JSONL");

    let ch = support::broker::connection()
        .await
        .create_channel()
        .await
        .unwrap();
    support::broker::cleanup(
        &ch,
        &[&queue, &format!("{queue}.wait"), &format!("{queue}.poison")],
        &[],
    )
    .await;
}
