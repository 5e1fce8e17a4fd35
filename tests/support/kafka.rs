//! Shared by the Kafka tests: producing records as the platform does and
//! reading a topic back straight from the wire (headers and value, read
//! here independently of laneway's own parsing), against librdkafka's mock
//! cluster, which each test starts for itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::records::Record;

/// A mock cluster of three brokers with the given topics, each of
/// `partitions` partitions.
pub fn cluster(
    topics: &[&str],
    partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("a mock cluster");
    for t in topics {
        cluster.create_topic(t, partitions, 1).expect("a topic");
    }
    cluster
}

/// The key laneway's sink and simulator give a record.
pub fn expected_key(r: &Record) -> String {
    let mut parts = r.topic.trim_start_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some(p), Some(d)) => format!("{p}/{d}"),
        _ => r.topic.clone(),
    }
}

/// Produces `records` to `topic` as raw records with the platform's
/// headers, keyed like laneway keys them, and waits for every ack.
pub async fn produce(brokers: &str, topic: &str, records: &[Record]) {
    produce_with(&producer(brokers), topic, records).await
}

/// An idempotent producer, acks from all replicas, as the platform's.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("a producer")
}

/// [`produce`] with a producer made before (one already connected sends
/// without waiting for its connections).
pub async fn produce_with(producer: &FutureProducer, topic: &str, records: &[Record]) {
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let time = r.generate_time_ms.to_string();
        let key = expected_key(r);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "topic",
                value: Some(r.topic.as_bytes()),
            })
            .insert(Header {
                key: "messageId",
                value: Some(r.id.as_bytes()),
            })
            .insert(Header {
                key: "generateTime",
                value: Some(time.as_bytes()),
            });
        let mut record = FutureRecord::to(topic)
            .payload(&r.payload[..])
            .key(key.as_bytes())
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((_, back)) => {
                    // The local queue is full: let the oldest finish first.
                    record = back;
                    let oldest = pending.remove(0);
                    oldest.await.expect("delivered").expect("acknowledged");
                }
            }
        }
    }
    for f in pending {
        f.await.expect("delivered").expect("acknowledged");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// A record read back from a topic, with its key.
pub struct ReadBack {
    pub record: Record,
    pub key: String,
}

/// Reads `n` records from `topic` (from the start, in a fresh group),
/// failing after `limit`.
pub async fn read_back(brokers: &str, topic: &str, n: usize, limit: Duration) -> Vec<ReadBack> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribed");
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m.expect("a record"),
            Err(_) => panic!(
                "read {} of {n} records from {topic} before the deadline",
                out.len()
            ),
        };
        let header = |name: &str| -> Vec<u8> {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .unwrap_or_else(|| panic!("header {name} missing"))
                .to_vec()
        };
        let text = |name: &str| String::from_utf8(header(name)).expect("UTF-8 header");
        out.push(ReadBack {
            record: Record::new(
                text("topic"),
                text("messageId"),
                text("generateTime").parse::<i64>().expect("a time"),
                m.payload().unwrap_or_default().to_vec(),
            ),
            key: String::from_utf8(m.key().unwrap_or_default().to_vec()).expect("UTF-8 key"),
        });
    }
    out
}

/// The committed offset of every partition of `topic` for `group`, and
/// each partition's log end, as (partition, committed, end).
pub fn committed_and_ends(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("a consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    let mut by_partition: HashMap<i32, i64> = HashMap::new();
    for e in committed.elements() {
        let o = match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        };
        by_partition.insert(e.partition(), o);
    }
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, by_partition.get(&p).copied().unwrap_or(-1), high)
        })
        .collect()
}
